//! A vector space: the embeddings of one model (fingerprint + dimension).
//! Reads only; every write goes through [`SledStore`](super::SledStore) so it can be
//! one transaction with the file records and counters.

use std::fmt;
use std::sync::Arc;

use sled::Tree;

use super::codec::{self, SPACE_LAST_ID};
use super::journal::{self, SpaceState};
use super::segment::{Segment, SegmentError};
use super::{ContentHash, Result, StoreError};

/// Vectors whose norm is below this are refused: they carry no direction, and
/// normalising them would amplify noise (and hnsw_rs panics on NaN distances).
pub const MIN_NORM: f32 = 1e-6;

/// Handle on one space: its vectors by content (in the store's memory, from
/// the journal), its `meta` tree (`last_id`, u64 BE) and its segment, which
/// holds the f32 payloads (`segment.rs`). Cheap to clone. A handle on a
/// dropped space finds nothing.
#[derive(Clone)]
pub struct SledSpace {
    pub(super) fingerprint: Arc<str>,
    pub(super) dim: usize,
    /// Number in the tree names (`space/{no}/...`); never reused.
    pub(super) no: u64,
    pub(super) meta: Tree,
    /// The store's records in memory, where this space's vectors by content
    /// and the paths of each content are.
    pub(super) state: journal::Shared,
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
        Ok(self.with(|s| s.ids.get(hash).copied()).flatten())
    }

    /// `f` of this space's vectors by content; `None` once it is dropped.
    fn with<T>(&self, f: impl FnOnce(&SpaceState) -> T) -> Option<T> {
        journal::read(&self.state).spaces.get(&self.no).map(f)
    }

    /// The content of live vector `id`.
    fn hash_of(&self, id: u64) -> Option<ContentHash> {
        self.with(|s| s.hashes.get(&id).copied()).flatten()
    }

    /// The vector `id`, `None` when it is not (or no longer) in the space.
    /// A record whose checksum fails is [`StoreError::Segment`], never a
    /// wrong vector.
    pub fn vector(&self, id: u64) -> Result<Option<StoredVector>> {
        match self.hash_of(id) {
            None => Ok(None),
            Some(hash) => match self.decode(id, hash) {
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
        Ok(self.hash_of(id).is_some())
    }

    /// Vectors with id ≥ `from`, ascending: replay into the index after the
    /// id its checkpoint covers (`iter_vectors_from(last_id + 1)`).
    pub fn iter_vectors_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<StoredVector>> + use<> {
        // A page of ids at a time: the lock is not held while the segment
        // is read, nor the whole space copied.
        const PAGE: usize = 1024;
        let this = self.clone();
        let mut next = from;
        let mut page: std::vec::IntoIter<(u64, ContentHash)> = Vec::new().into_iter();
        std::iter::from_fn(move || {
            if page.len() == 0 && next != u64::MAX {
                let ids: Vec<(u64, ContentHash)> = this
                    .with(|s| {
                        s.hashes
                            .range(next..)
                            .take(PAGE)
                            .map(|(&i, &h)| (i, h))
                            .collect()
                    })
                    .unwrap_or_default();
                next = ids.last().map_or(u64::MAX, |(i, _)| i.saturating_add(1));
                page = ids.into_iter();
            }
            let (id, hash) = page.next()?;
            Some(this.decode(id, hash))
        })
    }

    /// Highest id ever assigned in this space (ids start at 1, are never
    /// reused, and survive the deletion of their vector); 0 when none.
    pub fn last_vector_id(&self) -> Result<u64> {
        self.counter(SPACE_LAST_ID)
    }

    /// Vectors stored in this space (O(1)).
    pub fn vector_count(&self) -> Result<u64> {
        Ok(self.with(|s| s.hashes.len() as u64).unwrap_or(0))
    }

    /// File paths whose content has a vector in this space (O(1)).
    pub fn indexed_path_count(&self) -> Result<u64> {
        Ok(self.with(|s| s.paths).unwrap_or(0))
    }

    /// Every path whose content is this vector (duplicates share one vector),
    /// in byte order; empty when the id is unknown.
    pub fn paths_for_vector(&self, id: u64) -> Result<Vec<String>> {
        match self.hash_of(id) {
            None => Ok(Vec::new()),
            Some(hash) => self.paths_for_hash(&hash),
        }
    }

    /// Every path whose content is `hash` (none once the last is gone), in
    /// byte order.
    pub fn paths_for_hash(&self, hash: &ContentHash) -> Result<Vec<String>> {
        Ok(journal::read(&self.state).paths_of(hash))
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

    fn decode(&self, id: u64, hash: ContentHash) -> Result<StoredVector> {
        let vector = self.segment.read(id, &hash)?;
        Ok(StoredVector { id, hash, vector })
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt(format!("space {}: {what}", self.fingerprint))
    }
}
