//! The durable truth: file records, content hashes, embedding vectors, failures,
//! model spaces and root status, in one sled database. This is the only module
//! that touches sled, so the engine can change without touching the rest.
//!
//! A file counts as indexed only when its record and vector are committed
//! *and flushed*: every method that writes returns only after `Db::flush`
//! (fsync). All methods block (transaction + fsync): from async code, call
//! them through `tokio::task::spawn_blocking` (a [`Store`] is a cheap `Clone`).
//!
//! # Layout (see `codec.rs` for the bytes)
//! - `files`: path (UTF-8 bytes) → [`FileRecord`] (56 bytes).
//! - `hash_paths`: `hash ++ path` → ∅, so a content hash's paths are one prefix scan;
//!   `hash_refs`: hash → number of paths (lets a transaction, which cannot scan,
//!   see that the last path of a content is gone).
//! - `failures`: path → [`FailureRecord`] (JSON); `roots`: root → offline flag.
//! - `spaces`: fingerprint → `{no, dim}`; each space owns `space/{no}/hash_id`,
//!   `space/{no}/vectors`, `space/{no}/meta` (see [`Space`]). Models never share a
//!   tree, so two models' vectors cannot mix.
//! - `meta`: schema version, active space, counters.
//!
//! # Transactions and counters
//! Every write is one sled transaction over *all* the trees above (including
//! every space's), because a change to one path can orphan a vector in any
//! space. Counters (`file_count`, `failure_count`, per space `vectors` and
//! `paths`) are persisted and updated inside the same transactions, so they are
//! O(1) to read, exact after a crash, and opening costs no scan whatever the
//! library size. [`Store::verify`] recounts everything (an fsck, for tests and
//! operators). sled serialises transactions behind one global lock, so there is
//! no lost update; the store expects one writer task anyway.
//!
//! Paths: keys are UTF-8; a non-UTF-8 path is refused ([`path_str`] says so
//! clearly) rather than stored lossily, so every path the store returns can be
//! opened again. Folder operations match whole path components (`/a/b` covers
//! `/a/b/c`, not `/a/bc`).
//!
//! # Space on disk
//! sled 0.34 is known for space amplification (log-structured pages, rewritten
//! on update; issues #1484, #1374): a library's store can take several times
//! its logical size, more after heavy churn. Per file the logical data is about
//! 56 B record + 2×(32 B + path) links, plus per content one vector (4·dim +
//! 32 B, ~2.1 KB at 512-d). [`Store::size_on_disk`] reports the real figure.
//! Measured (`tests::space_amplification`, 5,000 fresh 512-d files, no churn):
//! 5.1 KB on disk per file against ≈2.3 KB logical, 2.2×; expect more after
//! heavy churn, until sled's segment cleaner catches up.

mod codec;
mod space;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{MAIN_SEPARATOR, Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sled::Tree;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};

use codec::*;
pub use space::{MIN_NORM, Space, StoredVector};

/// On-disk layout version, in `meta`. A store written by a newer dualsight is
/// refused rather than misread.
pub const SCHEMA_VERSION: u32 = 1;

/// Paths per transaction in folder-wide operations: bounds the transaction's
/// in-memory write set. Each chunk is atomic and leaves the store consistent.
const CHUNK: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: store is locked: another dualsight may be running on it", dir.display())]
    Locked { dir: PathBuf },
    #[error("{}: cannot open store: {source}", dir.display())]
    Open { dir: PathBuf, source: sled::Error },
    #[error(
        "{}: store schema version {found} is newer than this dualsight supports ({supported}): upgrade dualsight",
        dir.display()
    )]
    NewerSchema {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{}: store schema version {found} is not supported (expected {supported})", dir.display())]
    UnsupportedSchema {
        dir: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("store: {0}")]
    Db(#[from] sled::Error),
    #[error("space {fingerprint}: vector has {got} dimensions, the space holds {expected}")]
    Dimension {
        fingerprint: String,
        expected: usize,
        got: usize,
    },
    #[error("space {fingerprint}: vector rejected: {reason}")]
    InvalidVector {
        fingerprint: String,
        reason: &'static str,
    },
    #[error("space {fingerprint}: exists with dimension {existing}, asked for {requested}")]
    SpaceDimension {
        fingerprint: String,
        existing: usize,
        requested: usize,
    },
    #[error("space {0:?}: invalid: {1}")]
    InvalidSpace(String, &'static str),
    #[error("space {0}: no such space")]
    UnknownSpace(String),
    #[error("space {0}: is the active space: activate another before dropping it")]
    DropActive(String),
    #[error("space {0}: stale handle: the space was dropped")]
    StaleSpace(String),
    #[error("{path}: content {hash} has no vector in space {fingerprint}")]
    MissingVector {
        path: String,
        fingerprint: String,
        hash: ContentHash,
    },
    #[error("{}: path is not valid UTF-8 (dualsight stores paths as UTF-8)", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("{0:?}: invalid path: {1}")]
    InvalidPath(String, &'static str),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRecord {
    pub size: u64,
    pub mtime_ns: i64,
    pub hash: ContentHash,
    pub indexed_at_ms: u64,
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

    fn absorb(&mut self, other: Removal) {
        self.paths += other.paths;
        self.orphaned.extend(other.orphaned);
    }
}

fn orphans_in<'a>(o: &'a [Orphan], fp: &'a str) -> impl Iterator<Item = u64> + 'a {
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
struct SpaceRecord {
    no: u64,
    dim: usize,
    created_ms: u64,
}

/// The non-UTF-8 check the store applies to every path it is given, for
/// callers holding a `Path`.
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| StoreError::NonUtf8Path(p.to_path_buf()))
}

/// Handle on the open store. Clones share one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    meta: Tree,
    files: Tree,
    hash_paths: Tree,
    hash_refs: Tree,
    failures: Tree,
    roots: Tree,
    spaces_tree: Tree,
    /// Open spaces by fingerprint. Every write transaction holds the read side
    /// for its whole run, because it spans every space's trees (the set must
    /// not change under it); creating or dropping a space takes the write side.
    spaces: RwLock<BTreeMap<String, Space>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`. Fails clearly when
    /// another process holds it or when it was written by a newer schema.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&dir)
            // The HNSW already holds every vector in memory; sled's page cache
            // mostly serves file records, so its 1 GiB default is too generous.
            .cache_capacity(256 * 1024 * 1024)
            .open()
            .map_err(|e| open_error(&dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(&dir, e));
        let meta = tree(TREE_META)?;
        match meta.get(META_SCHEMA)? {
            None => {
                meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(&v[..])
                    .map(u32::from_be_bytes)
                    .map_err(|_| {
                        StoreError::Corrupt(format!("{}: bad schema version", dir.display()))
                    })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        dir,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                if found < SCHEMA_VERSION {
                    return Err(StoreError::UnsupportedSchema {
                        dir,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        let mut inner = Inner {
            files: tree(TREE_FILES)?,
            hash_paths: tree(TREE_HASH_PATHS)?,
            hash_refs: tree(TREE_HASH_REFS)?,
            failures: tree(TREE_FAILURES)?,
            roots: tree(TREE_ROOTS)?,
            spaces_tree: tree(TREE_SPACES)?,
            meta,
            spaces: RwLock::new(BTreeMap::new()),
            db,
            dir,
        };
        let mut spaces = BTreeMap::new();
        for kv in inner.spaces_tree.iter() {
            let (k, v) = kv?;
            let fp = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("spaces: fingerprint is not UTF-8".into()))?;
            let rec: SpaceRecord = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("spaces {fp}: {e}")))?;
            let space = inner.open_space(&fp, rec.no, rec.dim)?;
            spaces.insert(fp, space);
        }
        // Trees of a space whose creation or drop was cut short by a crash:
        // the `spaces` entry is the commit point, so these hold nothing we need.
        let known: BTreeSet<u64> = spaces.values().map(|s| s.no).collect();
        for name in inner.db.tree_names() {
            if let Some(no) = space_no_of_tree(&name)
                && !known.contains(&no)
            {
                tracing::warn!(tree = %String::from_utf8_lossy(&name), "dropping leftover space tree");
                inner.db.drop_tree(&name)?;
            }
        }
        inner.spaces = RwLock::new(spaces);
        inner.db.flush()?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes the database's files take on disk (see the module docs on space
    /// amplification).
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.inner.db.size_on_disk()?)
    }

    pub fn flush(&self) -> Result<()> {
        self.inner.db.flush()?;
        Ok(())
    }

    // ---- spaces -------------------------------------------------------------

    /// Opens the space of a model, creating it (empty, not active) when new.
    /// A space that exists with another dimension is an error: a different
    /// model must have a different fingerprint.
    pub fn space(&self, fingerprint: &str, dim: usize) -> Result<Space> {
        if fingerprint.is_empty() || fingerprint.len() > 1024 {
            return Err(StoreError::InvalidSpace(
                fingerprint.into(),
                "fingerprint must be 1..=1024 bytes",
            ));
        }
        if !(1..=65536).contains(&dim) {
            return Err(StoreError::InvalidSpace(
                fingerprint.into(),
                "dimension must be 1..=65536",
            ));
        }
        let inner = &self.inner;
        let mut spaces = inner.spaces.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = spaces.get(fingerprint) {
            if s.dim != dim {
                return Err(StoreError::SpaceDimension {
                    fingerprint: fingerprint.into(),
                    existing: s.dim,
                    requested: dim,
                });
            }
            return Ok(s.clone());
        }
        // Holding the write lock: no other creation can race for the number.
        let no = match inner.meta.get(META_NEXT_SPACE)? {
            None => 1,
            Some(v) => read_u64_be(&v)
                .ok_or_else(|| StoreError::Corrupt("meta: bad next_space_no".into()))?,
        };
        let space = inner.open_space(fingerprint, no, dim)?;
        let rec = serde_json::to_vec(&SpaceRecord {
            no,
            dim,
            created_ms: now_ms(),
        })
        .expect("space record serialises");
        (&inner.spaces_tree, &inner.meta)
            .transaction(|(st, meta)| {
                meta.insert(META_NEXT_SPACE, &u64_be(no + 1)[..])?;
                st.insert(fingerprint, rec.clone())?;
                Ok(())
            })
            .map_err(tx_error)?;
        inner.db.flush()?;
        tracing::info!(fingerprint, dim, no, "created vector space");
        spaces.insert(fingerprint.to_owned(), space.clone());
        Ok(space)
    }

    /// All spaces with their counts.
    pub fn spaces(&self) -> Result<Vec<SpaceInfo>> {
        let active = self.active_fingerprint()?;
        let spaces = self
            .inner
            .spaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        spaces
            .values()
            .map(|s| {
                Ok(SpaceInfo {
                    fingerprint: s.fingerprint().to_owned(),
                    dim: s.dim,
                    vectors: s.vector_count()?,
                    indexed_paths: s.indexed_path_count()?,
                    active: active.as_deref() == Some(s.fingerprint()),
                })
            })
            .collect()
    }

    /// The space searches are served from, if one was set.
    pub fn active_space(&self) -> Result<Option<Space>> {
        let Some(fp) = self.active_fingerprint()? else {
            return Ok(None);
        };
        let spaces = self
            .inner
            .spaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(spaces.get(&fp).cloned())
    }

    /// Makes an existing space the one searches are served from (after a new
    /// model's space is complete; the old one keeps serving until then).
    pub fn set_active(&self, fingerprint: &str) -> Result<()> {
        let spaces = self
            .inner
            .spaces
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if !spaces.contains_key(fingerprint) {
            return Err(StoreError::UnknownSpace(fingerprint.into()));
        }
        self.inner.meta.insert(META_ACTIVE, fingerprint)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Deletes a space and all its vectors; false when there is none. The
    /// active space cannot be dropped. `Space` handles on it go stale.
    pub fn drop_space(&self, fingerprint: &str) -> Result<bool> {
        let inner = &self.inner;
        let mut spaces = inner.spaces.write().unwrap_or_else(PoisonError::into_inner);
        let Some(space) = spaces.get(fingerprint).cloned() else {
            return Ok(false);
        };
        if self.active_fingerprint()?.as_deref() == Some(fingerprint) {
            return Err(StoreError::DropActive(fingerprint.into()));
        }
        // The `spaces` entry is the commit point; a crash after it leaves
        // trees that the next open drops.
        inner.spaces_tree.remove(fingerprint)?;
        inner.db.flush()?;
        spaces.remove(fingerprint);
        for kind in ["hash_id", "vectors", "meta"] {
            inner.db.drop_tree(space_tree_name(space.no, kind))?;
        }
        inner.db.flush()?;
        tracing::info!(fingerprint, "dropped vector space");
        Ok(true)
    }

    fn active_fingerprint(&self) -> Result<Option<String>> {
        match self.inner.meta.get(META_ACTIVE)? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| StoreError::Corrupt("meta: active space is not UTF-8".into())),
        }
    }

    // ---- files --------------------------------------------------------------

    /// Records files as indexed in `space`, atomically, and flushes before
    /// returning (only then may the caller report them indexed). Items are
    /// applied in order; a path may change content (its old content may be
    /// orphaned), and several paths may share content (one vector: a second
    /// `New` vector for a hash already in the space is ignored).
    pub fn commit(&self, space: &Space, items: &[Commit]) -> Result<CommitOutcome> {
        for it in items {
            check_path(&it.path)?;
            if let Embedding::New(v) = &it.embedding {
                space.check_vector(v)?;
            }
        }
        if items.is_empty() {
            return Ok(CommitOutcome::default());
        }
        let mut out = self.write(|tx| {
            let target = tx.space_index(space)?;
            let mut pending = BTreeSet::new();
            let mut out = CommitOutcome::default();
            for it in items {
                let hash = it.record.hash;
                match tx.file(&it.path)? {
                    Some(old) if old.hash == hash => tx.put_record(&it.path, &it.record)?,
                    Some(_) => {
                        tx.unlink(&it.path, &mut pending)?;
                        tx.link(&it.path, &it.record)?;
                    }
                    None => tx.link(&it.path, &it.record)?,
                }
                tx.clear_failure(&it.path)?;
                let id = match &it.embedding {
                    Embedding::New(v) => {
                        let (id, created) = tx.add_vector(target, &hash, v)?;
                        if created {
                            out.inserted.push((id, v.clone()));
                        }
                        id
                    }
                    Embedding::Existing => match tx.vector_id(target, &hash)? {
                        Some(id) => id,
                        None => {
                            return Err(ConflictableTransactionError::Abort(
                                StoreError::MissingVector {
                                    path: it.path.clone(),
                                    fingerprint: space.fingerprint().to_owned(),
                                    hash,
                                },
                            ));
                        }
                    },
                };
                out.vector_ids.push(id);
            }
            tx.finalize_orphans(&pending, &mut out.orphaned)?;
            Ok(out)
        })?;
        // A vector created and orphaned within this one commit (its path
        // changed content again) was never visible: report neither.
        let fp = space.fingerprint();
        let born_dead: BTreeSet<u64> = out
            .orphaned
            .iter()
            .filter(|o| o.fingerprint == fp && out.inserted.iter().any(|(id, _)| *id == o.id))
            .map(|o| o.id)
            .collect();
        out.inserted.retain(|(id, _)| !born_dead.contains(id));
        out.orphaned
            .retain(|o| !(o.fingerprint == fp && born_dead.contains(&o.id)));
        Ok(out)
    }

    /// Forgets a file (deleted or moved out of the roots) and any failure
    /// record of it.
    pub fn remove_path(&self, path: &str) -> Result<Removal> {
        self.remove_paths(&[path.to_owned()])
    }

    /// Forgets every file under a folder (by whole path components) and its
    /// failure records. Atomic per chunk of [`CHUNK`] paths.
    pub fn remove_prefix(&self, dir: &str) -> Result<Removal> {
        self.remove_prefix_if(dir, |_| true)
    }

    /// [`Store::remove_prefix`] for the paths `forget` agrees to.
    pub fn remove_prefix_if(&self, dir: &str, forget: impl Fn(&str) -> bool) -> Result<Removal> {
        let mut paths = self.paths_under(dir)?;
        paths.retain(|p| forget(p));
        self.remove_paths(&paths)
    }

    /// Forgets these files and their failure records. Atomic per chunk of
    /// [`CHUNK`] paths (one transaction each, not one per path).
    pub fn remove_paths(&self, paths: &[String]) -> Result<Removal> {
        for p in paths {
            check_path(p)?;
        }
        let mut total = Removal::default();
        for chunk in paths.chunks(CHUNK) {
            total.absorb(self.write(|tx| {
                let mut pending = BTreeSet::new();
                let mut r = Removal::default();
                for p in chunk {
                    if tx.unlink(p, &mut pending)?.is_some() {
                        r.paths += 1;
                    }
                    tx.clear_failure(p)?;
                }
                tx.finalize_orphans(&pending, &mut r.orphaned)?;
                Ok(r)
            })?);
        }
        Ok(total)
    }

    /// Moves a file's record (and failure record) to a new path: same content,
    /// same vector, nothing to embed. A record already at `new` is replaced.
    /// `paths` is 0 when `old` was unknown.
    pub fn rename(&self, old: &str, new: &str) -> Result<Removal> {
        check_path(old)?;
        check_path(new)?;
        self.write(|tx| {
            let mut pending = BTreeSet::new();
            let mut r = Removal::default();
            if tx.rename(old, new, &mut pending)? {
                r.paths = 1;
            }
            tx.finalize_orphans(&pending, &mut r.orphaned)?;
            Ok(r)
        })
    }

    /// [`Store::rename`] for every path under a folder that moved. Atomic per
    /// chunk of [`CHUNK`] paths.
    pub fn rename_prefix(&self, old_dir: &str, new_dir: &str) -> Result<Removal> {
        let old_dir = trim_dir(old_dir);
        let new_dir = trim_dir(new_dir);
        check_path(old_dir)?;
        check_path(new_dir)?;
        if is_under(old_dir, new_dir) {
            return Err(StoreError::InvalidPath(
                new_dir.into(),
                "cannot move a folder into itself",
            ));
        }
        let moves: Vec<(String, String)> = self
            .paths_under(old_dir)?
            .into_iter()
            .map(|p| {
                let n = format!("{new_dir}{}", &p[old_dir.len()..]);
                (p, n)
            })
            .collect();
        let mut total = Removal::default();
        for chunk in moves.chunks(CHUNK) {
            total.absorb(self.write(|tx| {
                let mut pending = BTreeSet::new();
                let mut r = Removal::default();
                for (o, n) in chunk {
                    if tx.rename(o, n, &mut pending)? {
                        r.paths += 1;
                    }
                }
                tx.finalize_orphans(&pending, &mut r.orphaned)?;
                Ok(r)
            })?);
        }
        Ok(total)
    }

    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        match self.inner.files.get(path)? {
            None => Ok(None),
            Some(b) => decode_file(&b)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt(format!("files {path}: bad record"))),
        }
    }

    /// Every file record in path byte order (reconcile against the disk).
    pub fn iter_files(&self) -> impl Iterator<Item = Result<(String, FileRecord)>> + use<> {
        self.inner.files.iter().map(decode_file_kv)
    }

    /// The file records under a folder (whole components), in byte order.
    pub fn iter_files_under(
        &self,
        dir: &str,
    ) -> impl Iterator<Item = Result<(String, FileRecord)>> + use<> {
        let dir = trim_dir(dir);
        let exact = dir.as_bytes();
        self.inner
            .files
            .range(exact..=exact)
            .chain(self.inner.files.scan_prefix(dir_prefix(dir)))
            .map(decode_file_kv)
    }

    // ---- failures -----------------------------------------------------------

    /// Records (or re-records) why a file could not be indexed, with the size
    /// and mtime it had then.
    pub fn record_failure(&self, path: &str, error: &str, size: u64, mtime_ns: i64) -> Result<()> {
        check_path(path)?;
        let now = now_ms();
        self.write(|tx| {
            let attempts = tx.failure(path)?.map_or(0, |f| f.attempts);
            let rec = FailureRecord {
                error: error.to_owned(),
                size,
                mtime_ns,
                attempts: attempts.saturating_add(1),
                last_failed_ms: now,
            };
            tx.put_failure(path, &rec)
        })
    }

    pub fn failure(&self, path: &str) -> Result<Option<FailureRecord>> {
        match self.inner.failures.get(path)? {
            None => Ok(None),
            Some(v) => decode_failure(path, &v).map(Some),
        }
    }

    /// Forgets a failure record; false when there was none.
    pub fn clear_failure(&self, path: &str) -> Result<bool> {
        self.write(|tx| tx.clear_failure(path))
    }

    /// Files with a failure record (persisted counter: O(1)).
    pub fn failure_count(&self) -> Result<u64> {
        self.counter(META_FAILURE_COUNT)
    }

    pub fn iter_failures(&self) -> impl Iterator<Item = Result<(String, FailureRecord)>> + use<> {
        self.inner.failures.iter().map(|kv| {
            let (k, v) = kv?;
            let path = key_path(&k)?;
            let rec = decode_failure(&path, &v)?;
            Ok((path, rec))
        })
    }

    // ---- counters -----------------------------------------------------------

    /// Files with a record (persisted counter: O(1)).
    pub fn file_count(&self) -> Result<u64> {
        self.counter(META_FILE_COUNT)
    }

    /// Paths whose content has a vector in the active space (0 without one).
    pub fn indexed_file_count(&self) -> Result<u64> {
        match self.active_space()? {
            None => Ok(0),
            Some(s) => s.indexed_path_count(),
        }
    }

    pub fn vector_count(&self, space: &Space) -> Result<u64> {
        space.vector_count()
    }

    fn counter(&self, key: &[u8]) -> Result<u64> {
        match self.inner.meta.get(key)? {
            None => Ok(0),
            Some(v) => {
                read_u64_be(&v).ok_or_else(|| StoreError::Corrupt("meta: bad counter".into()))
            }
        }
    }

    // ---- roots --------------------------------------------------------------

    /// Marks a root offline (unmounted: keep its records) or back online.
    pub fn set_root_offline(&self, root: &str, offline: bool) -> Result<()> {
        check_path(root)?;
        self.inner
            .roots
            .insert(trim_dir(root), &[u8::from(offline)][..])?;
        self.inner.db.flush()?;
        Ok(())
    }

    pub fn root_offline(&self, root: &str) -> Result<bool> {
        Ok(self
            .inner
            .roots
            .get(trim_dir(root))?
            .is_some_and(|v| v.first() == Some(&1)))
    }

    pub fn offline_roots(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.inner.roots.iter() {
            let (k, v) = kv?;
            if v.first() == Some(&1) {
                out.push(key_path(&k)?);
            }
        }
        Ok(out)
    }

    // ---- consistency --------------------------------------------------------

    /// Recounts everything and checks every cross-tree link and counter: an
    /// fsck, O(library). Run it with no writer active. Err names the first
    /// inconsistency found.
    pub fn verify(&self) -> Result<()> {
        let inner = &self.inner;
        let bad = |m: String| Err(StoreError::Corrupt(m));
        let mut refs: BTreeMap<ContentHash, u64> = BTreeMap::new();
        let mut files = 0u64;
        for kv in self.iter_files() {
            let (path, rec) = kv?;
            files += 1;
            *refs.entry(rec.hash).or_default() += 1;
            if !inner
                .hash_paths
                .contains_key(hash_path_key(&rec.hash, &path))?
            {
                return bad(format!("{path}: no hash_paths link"));
            }
        }
        if files != self.file_count()? {
            return bad(format!(
                "file_count {} but {files} records",
                self.file_count()?
            ));
        }
        let mut links = 0u64;
        for kv in inner.hash_paths.iter() {
            let (k, _) = kv?;
            links += 1;
            let hash = decode_hash(&k[..32.min(k.len())])
                .ok_or_else(|| StoreError::Corrupt("hash_paths: short key".into()))?;
            let path = key_path(&k[32..])?;
            if self.file(&path)?.map(|r| r.hash) != Some(hash) {
                return bad(format!("{path}: stale hash_paths link to {hash}"));
            }
        }
        if links != files {
            return bad(format!("{links} hash_paths links for {files} files"));
        }
        let mut ref_entries = 0usize;
        for kv in inner.hash_refs.iter() {
            let (k, v) = kv?;
            ref_entries += 1;
            let hash =
                decode_hash(&k).ok_or_else(|| StoreError::Corrupt("hash_refs: bad key".into()))?;
            let n = read_u64_be(&v).unwrap_or(u64::MAX);
            if refs.get(&hash) != Some(&n) {
                return bad(format!(
                    "hash_refs {hash}: {n}, counted {:?}",
                    refs.get(&hash)
                ));
            }
        }
        if ref_entries != refs.len() {
            return bad(format!(
                "{ref_entries} hash_refs entries for {} contents",
                refs.len()
            ));
        }
        let spaces: Vec<Space> = inner
            .spaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for s in &spaces {
            let (mut vectors, mut paths) = (0u64, 0u64);
            let last = s.last_vector_id()?;
            for kv in s.hash_id.iter() {
                let (k, v) = kv?;
                let hash = decode_hash(&k)
                    .ok_or_else(|| StoreError::Corrupt("hash_id: bad key".into()))?;
                let id =
                    read_u64_be(&v).ok_or_else(|| StoreError::Corrupt("hash_id: bad id".into()))?;
                let Some(sv) = s.vector(id)? else {
                    return bad(format!(
                        "space {}: hash {hash} → missing vector {id}",
                        s.fingerprint()
                    ));
                };
                if sv.hash != hash || id > last || id == 0 {
                    return bad(format!(
                        "space {}: vector {id} inconsistent",
                        s.fingerprint()
                    ));
                }
                let Some(&n) = refs.get(&hash) else {
                    return bad(format!("space {}: orphaned vector {id}", s.fingerprint()));
                };
                vectors += 1;
                paths += n;
            }
            let stored = s.iter_vectors_from(0).count() as u64;
            if vectors != s.vector_count()? || stored != vectors {
                return bad(format!(
                    "space {}: vectors counter {}, hash_id {vectors}, vectors tree {stored}",
                    s.fingerprint(),
                    s.vector_count()?
                ));
            }
            if paths != s.indexed_path_count()? {
                return bad(format!(
                    "space {}: paths counter {}, counted {paths}",
                    s.fingerprint(),
                    s.indexed_path_count()?
                ));
            }
        }
        let failures = self.iter_failures().count() as u64;
        if failures != self.failure_count()? {
            return bad(format!(
                "failure_count {} but {failures} records",
                self.failure_count()?
            ));
        }
        Ok(())
    }

    // ---- internals ----------------------------------------------------------

    /// Paths with a file or failure record under `dir`, in byte order.
    fn paths_under(&self, dir: &str) -> Result<Vec<String>> {
        let dir = trim_dir(dir);
        check_path(dir)?;
        let mut set = BTreeSet::new();
        for tree in [&self.inner.files, &self.inner.failures] {
            if tree.contains_key(dir)? {
                set.insert(dir.to_owned());
            }
            for kv in tree.scan_prefix(dir_prefix(dir)) {
                let (k, _) = kv?;
                set.insert(key_path(&k)?);
            }
        }
        Ok(set.into_iter().collect())
    }

    /// Runs `f` as one transaction over every tree (all spaces included), then
    /// flushes. `f` may run more than once (sled retries on conflict): it must
    /// only touch the transaction and its own locals.
    fn write<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A> {
        let inner = &self.inner;
        let guard = inner.spaces.read().unwrap_or_else(PoisonError::into_inner);
        let spaces: Vec<Space> = guard.values().cloned().collect();
        let mut trees: Vec<&Tree> = vec![
            &inner.files,
            &inner.hash_paths,
            &inner.hash_refs,
            &inner.failures,
            &inner.meta,
        ];
        for s in &spaces {
            trees.extend([&s.hash_id, &s.vectors, &s.meta]);
        }
        let out = trees[..]
            .transaction(|t| f(&Tx { t, spaces: &spaces }))
            .map_err(tx_error)?;
        drop(guard);
        inner.db.flush()?;
        Ok(out)
    }
}

impl Inner {
    fn open_space(&self, fingerprint: &str, no: u64, dim: usize) -> Result<Space> {
        let tree = |kind| self.db.open_tree(space_tree_name(no, kind));
        Ok(Space {
            fingerprint: fingerprint.into(),
            dim,
            no,
            hash_id: tree("hash_id")?,
            vectors: tree("vectors")?,
            meta: tree("meta")?,
            hash_paths: self.hash_paths.clone(),
        })
    }
}

// ---- the transaction view -----------------------------------------------------

type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// Positions of the trees in the transaction (see [`Store::write`]).
const T_FILES: usize = 0;
const T_HASH_PATHS: usize = 1;
const T_HASH_REFS: usize = 2;
const T_FAILURES: usize = 3;
const T_META: usize = 4;
const T_SPACES: usize = 5;
const S_HASH_ID: usize = 0;
const S_VECTORS: usize = 1;
const S_META: usize = 2;

/// The store's write primitives inside one transaction; each keeps links and
/// counters consistent.
struct Tx<'a> {
    t: &'a [TransactionalTree],
    spaces: &'a [Space],
}

fn corrupt<T>(msg: String) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
        msg,
    )))
}

impl Tx<'_> {
    fn sp(&self, i: usize, which: usize) -> &TransactionalTree {
        &self.t[T_SPACES + 3 * i + which]
    }

    fn space_index(&self, space: &Space) -> TxResult<usize> {
        match self.spaces.iter().position(|s| s.no == space.no) {
            Some(i) => Ok(i),
            None => Err(ConflictableTransactionError::Abort(StoreError::StaleSpace(
                space.fingerprint().into(),
            ))),
        }
    }

    fn get_u64(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
        match tree.get(key)? {
            None => Ok(0),
            Some(v) => match read_u64_be(&v) {
                Some(n) => Ok(n),
                None => corrupt(format!(
                    "counter {}: bad value",
                    String::from_utf8_lossy(key)
                )),
            },
        }
    }

    /// Adds `delta` to a u64 counter (absent = 0; removed at 0) and returns it.
    fn add_u64(tree: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<u64> {
        let cur = Self::get_u64(tree, key)?;
        let Some(new) = cur.checked_add_signed(delta) else {
            return corrupt(format!(
                "counter {} underflow",
                String::from_utf8_lossy(key)
            ));
        };
        if new == 0 {
            tree.remove(key)?;
        } else {
            tree.insert(key, &u64_be(new)[..])?;
        }
        Ok(new)
    }

    fn file(&self, path: &str) -> TxResult<Option<FileRecord>> {
        match self.t[T_FILES].get(path)? {
            None => Ok(None),
            Some(b) => match decode_file(&b) {
                Some(r) => Ok(Some(r)),
                None => corrupt(format!("files {path}: bad record")),
            },
        }
    }

    fn vector_id(&self, i: usize, hash: &ContentHash) -> TxResult<Option<u64>> {
        match self.sp(i, S_HASH_ID).get(hash.0)? {
            None => Ok(None),
            Some(v) => match read_u64_be(&v) {
                Some(id) => Ok(Some(id)),
                None => corrupt(format!("hash_id {hash}: bad id")),
            },
        }
    }

    /// Overwrites a record whose content (hash) is unchanged.
    fn put_record(&self, path: &str, rec: &FileRecord) -> TxResult<()> {
        self.t[T_FILES].insert(path, &encode_file(rec)[..])?;
        Ok(())
    }

    /// Adds a record for a path that has none.
    fn link(&self, path: &str, rec: &FileRecord) -> TxResult<()> {
        self.t[T_FILES].insert(path, &encode_file(rec)[..])?;
        self.t[T_HASH_PATHS].insert(hash_path_key(&rec.hash, path), &[][..])?;
        Self::add_u64(&self.t[T_HASH_REFS], &rec.hash.0, 1)?;
        for i in 0..self.spaces.len() {
            if self.vector_id(i, &rec.hash)?.is_some() {
                Self::add_u64(self.sp(i, S_META), SPACE_PATHS, 1)?;
            }
        }
        Self::add_u64(&self.t[T_META], META_FILE_COUNT, 1)?;
        Ok(())
    }

    /// Removes a path's record. A content left with no path goes into
    /// `pending`; [`Tx::finalize_orphans`] deletes its vectors at the end, so
    /// a content that another item of the same transaction links again (a
    /// rename, a swap) keeps its vector.
    fn unlink(
        &self,
        path: &str,
        pending: &mut BTreeSet<ContentHash>,
    ) -> TxResult<Option<FileRecord>> {
        let Some(rec) = self.file(path)? else {
            return Ok(None);
        };
        self.t[T_FILES].remove(path)?;
        self.t[T_HASH_PATHS].remove(hash_path_key(&rec.hash, path))?;
        if Self::add_u64(&self.t[T_HASH_REFS], &rec.hash.0, -1)? == 0 {
            pending.insert(rec.hash);
        }
        for i in 0..self.spaces.len() {
            if self.vector_id(i, &rec.hash)?.is_some() {
                Self::add_u64(self.sp(i, S_META), SPACE_PATHS, -1)?;
            }
        }
        Self::add_u64(&self.t[T_META], META_FILE_COUNT, -1)?;
        Ok(Some(rec))
    }

    /// The vector for `hash` in space `i`, created when absent: (id, created).
    fn add_vector(&self, i: usize, hash: &ContentHash, v: &[f32]) -> TxResult<(u64, bool)> {
        if let Some(id) = self.vector_id(i, hash)? {
            return Ok((id, false));
        }
        let id = Self::add_u64(self.sp(i, S_META), SPACE_LAST_ID, 1)?;
        self.sp(i, S_HASH_ID).insert(&hash.0[..], &u64_be(id)[..])?;
        self.sp(i, S_VECTORS)
            .insert(&u64_be(id)[..], encode_vector(hash, v))?;
        Self::add_u64(self.sp(i, S_META), SPACE_VECTORS, 1)?;
        // Every path already holding this content is now indexed in the space.
        let refs = Self::get_u64(&self.t[T_HASH_REFS], &hash.0)?;
        Self::add_u64(self.sp(i, S_META), SPACE_PATHS, refs as i64)?;
        Ok((id, true))
    }

    /// Deletes, in every space, the vectors of contents that ended the
    /// transaction with no path.
    fn finalize_orphans(
        &self,
        pending: &BTreeSet<ContentHash>,
        out: &mut Vec<Orphan>,
    ) -> TxResult<()> {
        for hash in pending {
            if Self::get_u64(&self.t[T_HASH_REFS], &hash.0)? != 0 {
                continue;
            }
            for (i, s) in self.spaces.iter().enumerate() {
                if let Some(id) = self.vector_id(i, hash)? {
                    self.sp(i, S_HASH_ID).remove(&hash.0[..])?;
                    self.sp(i, S_VECTORS).remove(&u64_be(id)[..])?;
                    Self::add_u64(self.sp(i, S_META), SPACE_VECTORS, -1)?;
                    out.push(Orphan {
                        fingerprint: s.fingerprint().to_owned(),
                        id,
                    });
                }
            }
        }
        Ok(())
    }

    fn rename(&self, old: &str, new: &str, pending: &mut BTreeSet<ContentHash>) -> TxResult<bool> {
        if old == new {
            return Ok(self.file(old)?.is_some());
        }
        if let Some(f) = self.failure(old)? {
            self.clear_failure(old)?;
            self.put_failure(new, &f)?;
        }
        let Some(rec) = self.file(old)? else {
            return Ok(false);
        };
        self.unlink(new, pending)?;
        self.clear_failure(new)?;
        self.unlink(old, pending)?;
        self.link(new, &rec)?;
        Ok(true)
    }

    fn failure(&self, path: &str) -> TxResult<Option<FailureRecord>> {
        match self.t[T_FAILURES].get(path)? {
            None => Ok(None),
            Some(v) => decode_failure(path, &v)
                .map(Some)
                .map_err(ConflictableTransactionError::Abort),
        }
    }

    fn put_failure(&self, path: &str, rec: &FailureRecord) -> TxResult<()> {
        let json = serde_json::to_vec(rec).expect("failure record serialises");
        if self.t[T_FAILURES].insert(path, json)?.is_none() {
            Self::add_u64(&self.t[T_META], META_FAILURE_COUNT, 1)?;
        }
        Ok(())
    }

    fn clear_failure(&self, path: &str) -> TxResult<bool> {
        if self.t[T_FAILURES].remove(path)?.is_some() {
            Self::add_u64(&self.t[T_META], META_FAILURE_COUNT, -1)?;
            return Ok(true);
        }
        Ok(false)
    }
}

// ---- helpers --------------------------------------------------------------------

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}

/// sled reports a held lock as an `Other` I/O error with this text (fs2's
/// `try_lock_exclusive` underneath); it has no dedicated variant.
fn open_error(dir: &Path, e: sled::Error) -> StoreError {
    if let sled::Error::Io(io) = &e
        && (io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock"))
    {
        return StoreError::Locked {
            dir: dir.to_path_buf(),
        };
    }
    StoreError::Open {
        dir: dir.to_path_buf(),
        source: e,
    }
}

fn check_path(p: &str) -> Result<()> {
    if p.is_empty() {
        return Err(StoreError::InvalidPath(p.into(), "empty"));
    }
    Ok(())
}

/// `dir` without trailing separators (the root stays itself).
fn trim_dir(dir: &str) -> &str {
    let t = dir.trim_end_matches(MAIN_SEPARATOR);
    if t.is_empty() && !dir.is_empty() {
        &dir[..1]
    } else {
        t
    }
}

/// The key prefix of everything strictly inside `dir` (already trimmed).
fn dir_prefix(dir: &str) -> String {
    if dir.ends_with(MAIN_SEPARATOR) {
        dir.to_owned()
    } else {
        format!("{dir}{MAIN_SEPARATOR}")
    }
}

/// Whether `path` is `dir` or inside it, by whole components.
fn is_under(dir: &str, path: &str) -> bool {
    path == dir || path.starts_with(&dir_prefix(dir))
}

fn key_path(k: &[u8]) -> Result<String> {
    String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("key is not UTF-8".into()))
}

fn decode_file_kv(kv: sled::Result<(sled::IVec, sled::IVec)>) -> Result<(String, FileRecord)> {
    let (k, v) = kv?;
    let path = key_path(&k)?;
    let rec =
        decode_file(&v).ok_or_else(|| StoreError::Corrupt(format!("files {path}: bad record")))?;
    Ok((path, rec))
}

fn decode_failure(path: &str, v: &[u8]) -> Result<FailureRecord> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("failures {path}: {e}")))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const FP: &str = "model-a";

    fn open() -> (TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("db")).unwrap();
        (dir, store)
    }

    fn hash(n: u8) -> ContentHash {
        ContentHash::of(&[n])
    }

    fn rec(n: u8) -> FileRecord {
        FileRecord {
            size: 100 + u64::from(n),
            mtime_ns: 7 * i64::from(n),
            hash: hash(n),
            indexed_at_ms: 1_000,
        }
    }

    fn vector(dim: usize, n: u8) -> Vec<f32> {
        (0..dim)
            .map(|i| ((i + 1) as f32) * (f32::from(n) + 1.0))
            .collect()
    }

    fn new(path: &str, n: u8, dim: usize) -> Commit {
        Commit {
            path: path.into(),
            record: rec(n),
            embedding: Embedding::New(vector(dim, n)),
        }
    }

    fn existing(path: &str, n: u8) -> Commit {
        Commit {
            path: path.into(),
            record: rec(n),
            embedding: Embedding::Existing,
        }
    }

    #[test]
    fn commit_flush_reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (id1, id2);
        {
            let store = Store::open(&path).unwrap();
            let space = store.space(FP, 4).unwrap();
            store.set_active(FP).unwrap();
            let out = store
                .commit(
                    &space,
                    &[
                        new("/p/a.jpg", 1, 4),
                        new("/p/b.jpg", 2, 4),
                        existing("/p/c.jpg", 2),
                    ],
                )
                .unwrap();
            assert_eq!(out.inserted.len(), 2);
            assert!(out.orphaned.is_empty());
            (id1, id2) = (out.vector_ids[0], out.vector_ids[1]);
            assert_eq!(out.vector_ids, vec![id1, id2, id2]);
            assert_eq!(out.inserted, vec![(id1, vector(4, 1)), (id2, vector(4, 2))]);
            store
                .record_failure("/p/bad.jpg", "truncated jpeg", 5, 6)
                .unwrap();
            store.set_root_offline("/mnt/usb", true).unwrap();
            store.verify().unwrap();
        }
        let store = Store::open(&path).unwrap();
        store.verify().unwrap();
        let space = store
            .active_space()
            .unwrap()
            .expect("active space survives");
        assert_eq!((space.fingerprint(), space.dim()), (FP, 4));
        assert_eq!(store.file("/p/a.jpg").unwrap(), Some(rec(1)));
        assert_eq!(store.file("/p/c.jpg").unwrap(), Some(rec(2)));
        assert_eq!(store.file("/p/nope.jpg").unwrap(), None);
        assert_eq!(space.vector_id_for_hash(&hash(1)).unwrap(), Some(id1));
        let sv = space.vector(id2).unwrap().unwrap();
        assert_eq!((sv.hash, sv.vector), (hash(2), vector(4, 2)));
        assert_eq!(
            space.paths_for_vector(id2).unwrap(),
            vec!["/p/b.jpg", "/p/c.jpg"]
        );
        assert_eq!(space.last_vector_id().unwrap(), id2);
        assert_eq!(store.file_count().unwrap(), 3);
        assert_eq!(store.indexed_file_count().unwrap(), 3);
        assert_eq!(store.vector_count(&space).unwrap(), 2);
        assert_eq!(store.failure_count().unwrap(), 1);
        assert_eq!(
            store.failure("/p/bad.jpg").unwrap().unwrap().error,
            "truncated jpeg"
        );
        assert!(store.root_offline("/mnt/usb/").unwrap());
        assert_eq!(store.offline_roots().unwrap(), vec!["/mnt/usb"]);
        let files: Vec<_> = store.iter_files().map(|r| r.unwrap().0).collect();
        assert_eq!(files, vec!["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]);
        // Ids keep growing after a reopen.
        let out = store.commit(&space, &[new("/p/d.jpg", 3, 4)]).unwrap();
        assert!(out.vector_ids[0] > id2);
    }

    #[test]
    fn second_open_is_refused_clearly() {
        let (dir, _store) = open();
        let err = Store::open(dir.path().join("db")).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("another dualsight may be running") && msg.contains("db"),
            "{msg}"
        );
    }

    #[test]
    fn newer_schema_is_refused_naming_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            store
                .inner
                .meta
                .insert(META_SCHEMA, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn rename_keeps_the_vector() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        let id = store
            .commit(&space, &[new("/p/a.jpg", 1, 4)])
            .unwrap()
            .vector_ids[0];
        store.record_failure("/p/f.jpg", "bad", 1, 2).unwrap();
        let r = store.rename("/p/a.jpg", "/q/a.jpg").unwrap();
        assert_eq!(
            r,
            Removal {
                paths: 1,
                orphaned: vec![]
            }
        );
        assert_eq!(store.file("/p/a.jpg").unwrap(), None);
        assert_eq!(store.file("/q/a.jpg").unwrap(), Some(rec(1)));
        assert_eq!(space.vector_id_for_hash(&hash(1)).unwrap(), Some(id));
        assert_eq!(space.paths_for_vector(id).unwrap(), vec!["/q/a.jpg"]);
        assert_eq!(
            (
                space.vector_count().unwrap(),
                space.last_vector_id().unwrap()
            ),
            (1, id)
        );
        // An unknown path renames nothing; a failure record moves with its file.
        assert_eq!(store.rename("/p/none.jpg", "/q/none.jpg").unwrap().paths, 0);
        store.rename("/p/f.jpg", "/q/f.jpg").unwrap();
        assert!(store.failure("/p/f.jpg").unwrap().is_none());
        assert_eq!(store.failure("/q/f.jpg").unwrap().unwrap().error, "bad");
        assert_eq!(store.failure_count().unwrap(), 1);
        // Renaming over another file replaces it; its content loses its last path.
        let other = store
            .commit(&space, &[new("/q/b.jpg", 2, 4)])
            .unwrap()
            .vector_ids[0];
        let r = store.rename("/q/a.jpg", "/q/b.jpg").unwrap();
        assert_eq!(
            r.orphaned,
            vec![Orphan {
                fingerprint: FP.into(),
                id: other
            }]
        );
        assert_eq!(store.file("/q/b.jpg").unwrap(), Some(rec(1)));
        assert_eq!(store.file_count().unwrap(), 1);
        store.verify().unwrap();
    }

    #[test]
    fn duplicates_share_one_vector() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        store.set_active(FP).unwrap();
        // Two new files with the same content in one batch: one vector.
        let out = store
            .commit(&space, &[new("/a.jpg", 1, 4), new("/b.jpg", 1, 4)])
            .unwrap();
        assert_eq!(out.inserted.len(), 1);
        assert_eq!(out.vector_ids[0], out.vector_ids[1]);
        let out2 = store.commit(&space, &[existing("/c.jpg", 1)]).unwrap();
        assert!(out2.inserted.is_empty());
        assert_eq!(out2.vector_ids, vec![out.vector_ids[0]]);
        assert_eq!(
            space.paths_for_vector(out.vector_ids[0]).unwrap(),
            vec!["/a.jpg", "/b.jpg", "/c.jpg"]
        );
        assert_eq!(
            (
                store.indexed_file_count().unwrap(),
                space.vector_count().unwrap()
            ),
            (3, 1)
        );
        store.verify().unwrap();
    }

    #[test]
    fn removing_the_last_path_orphans_the_vector() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        let id = store
            .commit(&space, &[new("/a.jpg", 1, 4), existing("/b.jpg", 1)])
            .unwrap()
            .vector_ids[0];
        assert_eq!(
            store.remove_path("/a.jpg").unwrap(),
            Removal {
                paths: 1,
                orphaned: vec![]
            }
        );
        assert_eq!(store.remove_path("/a.jpg").unwrap(), Removal::default());
        let r = store.remove_path("/b.jpg").unwrap();
        assert_eq!(r.paths, 1);
        assert_eq!(r.orphaned_in(FP).collect::<Vec<_>>(), vec![id]);
        assert_eq!(space.vector(id).unwrap(), None);
        assert_eq!(space.vector_id_for_hash(&hash(1)).unwrap(), None);
        assert_eq!(
            (space.vector_count().unwrap(), store.file_count().unwrap()),
            (0, 0)
        );
        // Ids are never reused.
        let again = store
            .commit(&space, &[new("/a.jpg", 1, 4)])
            .unwrap()
            .vector_ids[0];
        assert!(again > id);
        store.verify().unwrap();
    }

    #[test]
    fn changed_content_orphans_the_old_vector() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        let old = store
            .commit(&space, &[new("/a.jpg", 1, 4)])
            .unwrap()
            .vector_ids[0];
        let out = store.commit(&space, &[new("/a.jpg", 2, 4)]).unwrap();
        assert_eq!(
            out.orphaned,
            vec![Orphan {
                fingerprint: FP.into(),
                id: old
            }]
        );
        assert_eq!(out.inserted.len(), 1);
        // A swap inside one batch orphans nothing: both contents keep a path.
        let b = store
            .commit(&space, &[new("/b.jpg", 3, 4)])
            .unwrap()
            .vector_ids[0];
        let a = out.vector_ids[0];
        let swap = store
            .commit(&space, &[existing("/a.jpg", 3), existing("/b.jpg", 2)])
            .unwrap();
        assert!(swap.orphaned.is_empty());
        assert_eq!(swap.vector_ids, vec![b, a]);
        // Same content again (touch): the record updates, nothing else.
        let mut touched = rec(3);
        touched.mtime_ns = 99;
        let t = store
            .commit(
                &space,
                &[Commit {
                    path: "/a.jpg".into(),
                    record: touched,
                    embedding: Embedding::Existing,
                }],
            )
            .unwrap();
        assert!(t.orphaned.is_empty() && t.inserted.is_empty());
        assert_eq!(store.file("/a.jpg").unwrap().unwrap().mtime_ns, 99);
        store.verify().unwrap();
    }

    #[test]
    fn prefix_removal_is_by_component() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        store
            .commit(
                &space,
                &[
                    new("/a/b", 1, 4),
                    new("/a/b/x.jpg", 2, 4),
                    new("/a/b/y/z.jpg", 3, 4),
                    new("/a/bc/x.jpg", 4, 4),
                ],
            )
            .unwrap();
        store.record_failure("/a/b/bad.jpg", "e", 1, 1).unwrap();
        store.record_failure("/a/bcd.jpg", "e", 1, 1).unwrap();
        let r = store.remove_prefix("/a/b/").unwrap();
        assert_eq!(r.paths, 3);
        assert_eq!(r.orphaned.len(), 3);
        let left: Vec<_> = store.iter_files().map(|r| r.unwrap().0).collect();
        assert_eq!(left, vec!["/a/bc/x.jpg"]);
        assert!(store.failure("/a/b/bad.jpg").unwrap().is_none());
        assert!(store.failure("/a/bcd.jpg").unwrap().is_some());
        assert_eq!(store.failure_count().unwrap(), 1);
        let under: Vec<_> = store
            .iter_files_under("/a/bc/x.jpg")
            .chain(store.iter_files_under("/a/bc"))
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(under, vec!["/a/bc/x.jpg", "/a/bc/x.jpg"]);
        assert_eq!(store.iter_files_under("/a/b").count(), 0);
        store.verify().unwrap();
    }

    #[test]
    fn folder_rename_moves_records_by_component() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        let ids = store
            .commit(
                &space,
                &[
                    new("/a/b/x.jpg", 1, 4),
                    new("/a/b/y/z.jpg", 2, 4),
                    new("/a/bc/x.jpg", 3, 4),
                ],
            )
            .unwrap()
            .vector_ids;
        let r = store.rename_prefix("/a/b", "/c").unwrap();
        assert_eq!(
            r,
            Removal {
                paths: 2,
                orphaned: vec![]
            }
        );
        let all: Vec<_> = store.iter_files().map(|r| r.unwrap().0).collect();
        assert_eq!(all, vec!["/a/bc/x.jpg", "/c/x.jpg", "/c/y/z.jpg"]);
        assert_eq!(space.paths_for_vector(ids[1]).unwrap(), vec!["/c/y/z.jpg"]);
        assert!(matches!(
            store.rename_prefix("/c", "/c/d"),
            Err(StoreError::InvalidPath(..))
        ));
        store.verify().unwrap();
    }

    #[test]
    fn failures_are_recorded_and_cleared() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        store
            .record_failure("/x.jpg", "decode: bad huffman", 10, 20)
            .unwrap();
        store
            .record_failure("/x.jpg", "decode: bad huffman", 10, 20)
            .unwrap();
        store.record_failure("/y.jpg", "too large", 1, 2).unwrap();
        let f = store.failure("/x.jpg").unwrap().unwrap();
        assert_eq!((f.size, f.mtime_ns, f.attempts), (10, 20, 2));
        assert_eq!(store.failure_count().unwrap(), 2);
        assert_eq!(store.iter_failures().count(), 2);
        assert!(store.clear_failure("/y.jpg").unwrap());
        assert!(!store.clear_failure("/y.jpg").unwrap());
        // Indexing the file at last clears its failure.
        store.commit(&space, &[new("/x.jpg", 1, 4)]).unwrap();
        assert_eq!(store.failure("/x.jpg").unwrap(), None);
        assert_eq!(store.failure_count().unwrap(), 0);
        store.verify().unwrap();
    }

    #[test]
    fn bad_vectors_are_refused_and_nothing_is_written() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        let bad = |v: Vec<f32>| {
            store.commit(
                &space,
                &[
                    new("/ok.jpg", 1, 4),
                    Commit {
                        embedding: Embedding::New(v),
                        ..new("/x.jpg", 2, 4)
                    },
                ],
            )
        };
        assert!(matches!(
            bad(vec![1.0; 3]),
            Err(StoreError::Dimension {
                expected: 4,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            bad(vec![1.0, f32::NAN, 0.0, 0.0]),
            Err(StoreError::InvalidVector { .. })
        ));
        assert!(matches!(
            bad(vec![1.0, f32::INFINITY, 0.0, 0.0]),
            Err(StoreError::InvalidVector { .. })
        ));
        assert!(matches!(
            bad(vec![0.0; 4]),
            Err(StoreError::InvalidVector { .. })
        ));
        // `Existing` without a vector aborts the whole transaction.
        let err = store
            .commit(&space, &[new("/ok.jpg", 1, 4), existing("/x.jpg", 9)])
            .unwrap_err();
        assert!(matches!(err, StoreError::MissingVector { .. }), "{err:?}");
        assert_eq!(
            (store.file_count().unwrap(), space.vector_count().unwrap()),
            (0, 0)
        );
        assert_eq!(store.file("/ok.jpg").unwrap(), None);
        store.verify().unwrap();
    }

    #[test]
    fn two_spaces_never_mix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let a = store.space("a", 4).unwrap();
        let b = store.space("b", 8).unwrap();
        store.set_active("a").unwrap();
        assert!(matches!(
            store.space("a", 8),
            Err(StoreError::SpaceDimension { .. })
        ));
        assert!(matches!(
            store.commit(&b, &[new("/x.jpg", 1, 4)]),
            Err(StoreError::Dimension { .. })
        ));
        let ia = store.commit(&a, &[new("/x.jpg", 1, 4)]).unwrap().vector_ids[0];
        // Until b has its own vector for this content, /x.jpg is not in b.
        assert!(matches!(
            store.commit(&b, &[existing("/x.jpg", 1)]),
            Err(StoreError::MissingVector { .. })
        ));
        assert_eq!(
            (
                a.indexed_path_count().unwrap(),
                b.indexed_path_count().unwrap()
            ),
            (1, 0)
        );
        let ib = store.commit(&b, &[new("/x.jpg", 1, 8)]).unwrap().vector_ids[0];
        assert_eq!(a.vector(ia).unwrap().unwrap().vector.len(), 4);
        assert_eq!(b.vector(ib).unwrap().unwrap().vector.len(), 8);
        assert_eq!(
            (
                a.indexed_path_count().unwrap(),
                b.indexed_path_count().unwrap()
            ),
            (1, 1)
        );
        assert_eq!(store.file_count().unwrap(), 1);
        let infos = store.spaces().unwrap();
        assert_eq!(
            infos
                .iter()
                .map(|s| (s.fingerprint.as_str(), s.dim, s.vectors, s.active))
                .collect::<Vec<_>>(),
            vec![("a", 4, 1, true), ("b", 8, 1, false)]
        );
        // The last path going orphans the content in every space.
        let mut r = store.remove_path("/x.jpg").unwrap().orphaned;
        r.sort();
        assert_eq!(
            r,
            vec![
                Orphan {
                    fingerprint: "a".into(),
                    id: ia
                },
                Orphan {
                    fingerprint: "b".into(),
                    id: ib
                }
            ]
        );
        store.commit(&b, &[new("/y.jpg", 2, 8)]).unwrap();
        assert!(matches!(
            store.drop_space("a"),
            Err(StoreError::DropActive(_))
        ));
        assert!(store.drop_space("b").unwrap());
        assert!(!store.drop_space("b").unwrap());
        assert!(matches!(
            store.commit(&b, &[new("/z.jpg", 2, 8)]),
            Err(StoreError::StaleSpace(_))
        ));
        assert!(matches!(
            store.set_active("b"),
            Err(StoreError::UnknownSpace(_))
        ));
        store.verify().unwrap();
        drop((a, b, store));
        let store = Store::open(&path).unwrap();
        assert_eq!(store.spaces().unwrap().len(), 1);
        assert!(
            store
                .inner
                .db
                .tree_names()
                .iter()
                .all(|n| !n.starts_with(b"space/2/"))
        );
        // A new space never reuses a dropped space's number.
        let c = store.space("b", 8).unwrap();
        assert_eq!(c.no, 3);
        assert_eq!(c.vector_count().unwrap(), 0);
        store.verify().unwrap();
    }

    #[test]
    fn vectors_replay_in_id_order() {
        let (_d, store) = open();
        let space = store.space(FP, 4).unwrap();
        let items: Vec<Commit> = (0..20u8)
            .map(|n| new(&format!("/f{n:02}.jpg"), n, 4))
            .collect();
        let ids = store.commit(&space, &items).unwrap().vector_ids;
        assert_eq!(ids, (1..=20).collect::<Vec<u64>>());
        store.remove_path("/f03.jpg").unwrap(); // id 4
        let from: Vec<u64> = space.iter_vectors_from(3).map(|r| r.unwrap().id).collect();
        let want: Vec<u64> = [3].into_iter().chain(5..=20).collect();
        assert_eq!(from, want);
        assert!(!space.has_vector(4).unwrap());
        assert_eq!(space.last_vector_id().unwrap(), 20);
        assert_eq!(space.iter_vectors_from(21).count(), 0);
    }

    #[test]
    fn indexed_count_follows_the_active_space() {
        let (_d, store) = open();
        assert_eq!(store.indexed_file_count().unwrap(), 0);
        let a = store.space("a", 4).unwrap();
        store
            .commit(
                &a,
                &[
                    new("/1.jpg", 1, 4),
                    existing("/2.jpg", 1),
                    new("/3.jpg", 3, 4),
                ],
            )
            .unwrap();
        store.set_active("a").unwrap();
        assert_eq!(store.indexed_file_count().unwrap(), 3);
        let b = store.space("b", 4).unwrap();
        store.commit(&b, &[new("/1.jpg", 1, 4)]).unwrap();
        store.set_active("b").unwrap();
        // /2.jpg shares /1.jpg's content, so it is indexed in b too.
        assert_eq!(store.indexed_file_count().unwrap(), 2);
        store.verify().unwrap();
    }

    #[test]
    fn non_utf8_paths_are_refused_clearly() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/photos/caf\xe9.jpg"));
        let err = path_str(p).unwrap_err();
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        assert_eq!(
            path_str(Path::new("/photos/café.jpg")).unwrap(),
            "/photos/café.jpg"
        );
    }

    #[test]
    fn content_hash_hex_round_trips() {
        let h = ContentHash::of(b"hello");
        assert_eq!(h.to_hex(), blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ContentHash::from_hex("zz"), None);
    }

    /// Prints bytes on disk per file for a 512-d library (run with
    /// `--ignored --nocapture`); sled's space amplification shows here.
    #[test]
    #[ignore]
    fn space_amplification() {
        let (_d, store) = open();
        let space = store.space(FP, 512).unwrap();
        let n = 5000u32;
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let items: Vec<Commit> = chunk
                .iter()
                .map(|&i| Commit {
                    path: format!("/photos/2024/album-{:03}/IMG_{i:05}.jpg", i / 100),
                    record: FileRecord {
                        size: 1,
                        mtime_ns: 1,
                        hash: ContentHash::of(&i.to_le_bytes()),
                        indexed_at_ms: 1,
                    },
                    embedding: Embedding::New(
                        (0..512)
                            .map(|j| ((i * 512 + j) % 97) as f32 + 1.0)
                            .collect(),
                    ),
                })
                .collect();
            store.commit(&space, &items).unwrap();
        }
        let size = store.size_on_disk().unwrap();
        let logical = u64::from(n) * (56 + 2 * (32 + 40) + 8 + 32 + 8 + 32 + 2048);
        println!(
            "{n} files, 512-d: {size} bytes on disk, {} per file, logical ≈ {} per file ({:.1}x)",
            size / u64::from(n),
            logical / u64::from(n),
            size as f64 / logical as f64
        );
    }
}
