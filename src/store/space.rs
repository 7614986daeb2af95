//! A vector space: the embeddings of one model (fingerprint + dimension).
//! Reads only; every write goes through [`SledStore`](super::SledStore) so it can be
//! one transaction with the file records and counters.

use std::fmt;
use std::sync::Arc;

use sled::Tree;

use super::codec::{self, SPACE_LAST_ID, SPACE_PATHS, SPACE_VECTORS};
use super::segment::{Segment, SegmentError};
use super::{ContentHash, Result, StoreError};

/// Vectors whose norm is below this are refused: they carry no direction, and
/// normalising them would amplify noise (and hnsw_rs panics on NaN distances).
pub const MIN_NORM: f32 = 1e-6;

/// Handle on one space's trees and vector segment. Cheap to clone (sled
/// trees are `Arc`s).
///
/// Trees: `hash_id` (content hash → id, u64 BE), `vectors` (id BE → hash:
/// which ids are live), `meta` (`last_id`, `vectors`, `paths` counters, u64
/// BE). The f32 payloads are in the segment file (`segment.rs`).
#[derive(Clone)]
pub struct SledSpace {
    pub(super) fingerprint: Arc<str>,
    pub(super) dim: usize,
    /// Number in the tree names (`space/{no}/...`); never reused.
    pub(super) no: u64,
    pub(super) hash_id: Tree,
    pub(super) vectors: Tree,
    pub(super) meta: Tree,
    /// The store's `hash_paths` tree, for [`SledSpace::paths_for_vector`].
    pub(super) hash_paths: Tree,
    pub(super) segment: Arc<Segment>,
}

/// One stored embedding.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredVector {
    pub id: u64,
    pub hash: ContentHash,
    pub vector: Vec<f32>,
}

impl fmt::Debug for SledSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledSpace")
            .field("fingerprint", &self.fingerprint)
            .field("dim", &self.dim)
            .field("no", &self.no)
            .finish()
    }
}

impl SledSpace {
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Refuses what must never enter the space: another model's dimension,
    /// NaN/inf components, a (near-)zero vector. Callers may check early;
    /// [`SledStore::commit`](super::SledStore::commit) checks again.
    pub fn check_vector(&self, v: &[f32]) -> Result<()> {
        super::check_vector(&self.fingerprint, self.dim, v)
    }

    pub fn vector_id_for_hash(&self, hash: &ContentHash) -> Result<Option<u64>> {
        match self.hash_id.get(hash.0)? {
            None => Ok(None),
            Some(v) => codec::read_u64_be(&v)
                .map(Some)
                .ok_or_else(|| self.corrupt(format!("hash_id {hash}: bad id"))),
        }
    }

    /// The vector `id`, `None` when it is not (or no longer) in the space.
    /// A record whose checksum fails is [`StoreError::Segment`], never a
    /// wrong vector.
    pub fn vector(&self, id: u64) -> Result<Option<StoredVector>> {
        match self.vectors.get(codec::u64_be(id))? {
            None => Ok(None),
            Some(b) => match self.decode(id, &b) {
                // Deleted (and its blocks given back) since the lookup above:
                // gone, not damaged.
                Err(StoreError::Segment(SegmentError::Damaged { .. }))
                    if !self.has_vector(id)? =>
                {
                    Ok(None)
                }
                r => r.map(Some),
            },
        }
    }

    /// A search candidate's vector as its segment record holds it, without
    /// asking sled for the id's hash: a search reads ~200 candidates, and
    /// each sled read misses its cache once the store outgrows it. The index
    /// only holds committed ids; one deleted as it answered may still read
    /// back, and whether its content is still held is its paths' to say.
    /// `None` when the record is gone (its blocks given back).
    pub fn candidate(&self, id: u64) -> Result<Option<StoredVector>> {
        match self.segment.record(id) {
            Ok((hash, vector)) => Ok(Some(StoredVector { id, hash, vector })),
            Err(SegmentError::Damaged { .. }) if !self.has_vector(id)? => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn has_vector(&self, id: u64) -> Result<bool> {
        Ok(self.vectors.contains_key(codec::u64_be(id))?)
    }

    /// Vectors with id ≥ `from`, ascending: replay into the index after the
    /// id its checkpoint covers (`iter_vectors_from(last_id + 1)`).
    pub fn iter_vectors_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<StoredVector>> + use<> {
        let this = self.clone();
        self.vectors.range(codec::u64_be(from)..).map(move |kv| {
            let (k, v) = kv?;
            let id =
                codec::read_u64_be(&k).ok_or_else(|| this.corrupt("vectors: bad key".into()))?;
            this.decode(id, &v)
        })
    }

    /// Highest id ever assigned in this space (ids start at 1, are never
    /// reused, and survive the deletion of their vector); 0 when none.
    pub fn last_vector_id(&self) -> Result<u64> {
        self.counter(SPACE_LAST_ID)
    }

    /// Vectors stored in this space (persisted counter: O(1)).
    pub fn vector_count(&self) -> Result<u64> {
        self.counter(SPACE_VECTORS)
    }

    /// File paths whose content has a vector in this space (persisted
    /// counter: O(1)).
    pub fn indexed_path_count(&self) -> Result<u64> {
        self.counter(SPACE_PATHS)
    }

    /// Every path whose content is this vector (duplicates share one vector),
    /// in byte order; empty when the id is unknown.
    pub fn paths_for_vector(&self, id: u64) -> Result<Vec<String>> {
        let Some(sv) = self.vectors.get(codec::u64_be(id))? else {
            return Ok(Vec::new());
        };
        self.paths_for_hash(&self.live_hash(id, &sv)?)
    }

    /// Every path whose content is `hash` (none once the last is gone).
    pub fn paths_for_hash(&self, hash: &ContentHash) -> Result<Vec<String>> {
        let mut paths = Vec::new();
        for kv in self.hash_paths.scan_prefix(hash.0) {
            let (k, _) = kv?;
            let p = std::str::from_utf8(&k[32..]).map_err(|_| {
                StoreError::Corrupt(format!("hash_paths {hash}: path is not UTF-8"))
            })?;
            paths.push(p.to_owned());
        }
        Ok(paths)
    }

    fn counter(&self, key: &[u8]) -> Result<u64> {
        match self.meta.get(key)? {
            None => Ok(0),
            Some(v) => codec::read_u64_be(&v).ok_or_else(|| {
                self.corrupt(format!(
                    "counter {}: bad value",
                    String::from_utf8_lossy(key)
                ))
            }),
        }
    }

    /// Where the f32 payloads are (for messages and operators).
    pub fn segment_path(&self) -> &std::path::Path {
        self.segment.path()
    }

    fn live_hash(&self, id: u64, b: &[u8]) -> Result<ContentHash> {
        codec::decode_hash(b).ok_or_else(|| {
            self.corrupt(format!(
                "vectors {id}: {} bytes, expected a 32-byte hash",
                b.len()
            ))
        })
    }

    fn decode(&self, id: u64, b: &[u8]) -> Result<StoredVector> {
        let hash = self.live_hash(id, b)?;
        let vector = self.segment.read(id, &hash)?;
        Ok(StoredVector { id, hash, vector })
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt(format!("space {}: {what}", self.fingerprint))
    }
}
