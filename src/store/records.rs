//! The records the store keeps and returns: content hashes, file records,
//! what a commit takes and what commits and removals report, failures and
//! vector spaces. Their bytes on disk are `codec.rs`'s.

use std::fmt;

use serde::{Deserialize, Serialize};

/// blake3 of a file's bytes: the identity of its content (invariant 3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        blake3::hash(bytes).into()
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Self(out))
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// What the store knows about one file; independent of any model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRecord {
    pub size: u64,
    pub mtime_ns: i64,
    pub hash: ContentHash,
    pub indexed_at_ms: u64,
    /// Capture time and displayed size; `TakenFrom::Unknown` in records
    /// written before they were kept (such files are read again once).
    pub meta: crate::preprocess::meta::PhotoMeta,
}

impl FileRecord {
    /// When the photo was taken (Unix seconds): its metadata's time, or the
    /// file's mtime in a record written before capture times were kept.
    pub fn taken_at(&self) -> i64 {
        match self.meta.taken_from {
            crate::preprocess::meta::TakenFrom::Unknown => self.mtime_ns.div_euclid(1_000_000_000),
            _ => self.meta.taken_at,
        }
    }
}

/// The vector side of a [`Commit`].
#[derive(Clone, Debug, PartialEq)]
pub enum Embedding {
    /// New content, embedded by the space's model.
    New(Vec<f32>),
    /// The content hash already has a vector in the space (rename, duplicate):
    /// nothing to embed. The commit fails if it does not.
    Existing,
}

/// One file to record as indexed in a space.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    pub path: String,
    pub record: FileRecord,
    pub embedding: Embedding,
}

/// A vector deleted from a space because no path has its content any more:
/// tombstone `id` in that space's index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Orphan {
    pub fingerprint: String,
    pub id: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitOutcome {
    /// The space's vector id of each committed item, in order (an id may be
    /// gone already if a later item of the same batch orphaned it).
    pub vector_ids: Vec<u64>,
    /// Vectors created by this commit: insert them into the index.
    pub inserted: Vec<(u64, Vec<f32>)>,
    /// Vectors deleted because a changed file was the last holder of the old
    /// content (any space).
    pub orphaned: Vec<Orphan>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Removal {
    /// File records removed (or, for renames, moved).
    pub paths: u64,
    /// Vectors deleted because their content lost its last path (any space).
    pub orphaned: Vec<Orphan>,
}

impl CommitOutcome {
    /// Orphaned ids of one space, for its index.
    pub fn orphaned_in<'a>(&'a self, fingerprint: &'a str) -> impl Iterator<Item = u64> + 'a {
        orphans_in(&self.orphaned, fingerprint)
    }
}

impl Removal {
    /// Orphaned ids of one space, for its index.
    pub fn orphaned_in<'a>(&'a self, fingerprint: &'a str) -> impl Iterator<Item = u64> + 'a {
        orphans_in(&self.orphaned, fingerprint)
    }

    pub(super) fn absorb(&mut self, other: Removal) {
        self.paths += other.paths;
        self.orphaned.extend(other.orphaned);
    }
}

pub(super) fn orphans_in<'a>(o: &'a [Orphan], fp: &'a str) -> impl Iterator<Item = u64> + 'a {
    o.iter().filter(move |o| o.fingerprint == fp).map(|o| o.id)
}

/// A file that could not be indexed. Retry it only when its size or mtime
/// differ from these (and back off by `attempts` / `last_failed_ms`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub error: String,
    pub size: u64,
    pub mtime_ns: i64,
    /// Consecutive failures recorded for this path.
    pub attempts: u32,
    pub last_failed_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceInfo {
    pub fingerprint: String,
    pub dim: usize,
    pub vectors: u64,
    pub indexed_paths: u64,
    pub active: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SpaceRecord {
    pub(super) no: u64,
    pub(super) dim: usize,
    pub(super) created_ms: u64,
}
