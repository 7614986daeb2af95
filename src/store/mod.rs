//! The durable truth: file records, content hashes, embedding vectors, failures,
//! model spaces and root status: records in one sled database (the per-file
//! ones as a journal, `journal.rs`), vectors in one segment file per space
//! (`segment.rs`). This is the only module that touches sled or the segments,
//! so the engine can change without touching the rest.
//!
//! A file counts as indexed only when its record and vector are committed
//! *and flushed*: a batch's new vectors are written and fsynced to the segment
//! first, then the sled transaction that names them commits, and every method
//! that writes returns only after `Db::flush` (fsync). All methods block: from
//! async code, call them through `tokio::task::spawn_blocking` (a [`SledStore`] is
//! a cheap `Clone`).
//!
//! # Layout (see `codec.rs` and `journal.rs` for the bytes)
//! - `journal`: sequence number → one write's operations on file records
//!   (path → [`FileRecord`]), failure records (path → [`FailureRecord`]) and
//!   each space's vectors (id ↔ content hash). Replayed into memory at open,
//!   where every lookup is answered; rewritten when mostly dead.
//! - `roots`: root → offline flag.
//! - `spaces`: fingerprint → `{no, dim}`; each space owns `space/{no}/meta`
//!   (its last id) and the file `segments/{no}.vec`. Models never share ids or
//!   a file, so two models' vectors cannot mix.
//! - `meta`: schema version, active space, next space number.
//!
//! Schema 1 kept the vectors inside sled, schema 2 one sled key per record;
//! [`SledStore::open`] moves them (`migrate.rs`), resumably, before anything
//! else reads the store.
//!
//! # Transactions and counts
//! Every write is one sled transaction over the journal and every space's
//! meta tree, because a change to one path can orphan a vector in any space.
//! Counts (files, failures, per space vectors and indexed paths) are kept in
//! memory as the journal is replayed and applied, so they are O(1) to read and
//! exact after a crash. [`SledStore::verify`] recounts everything and replays
//! the journal again (an fsck, for tests and operators). Writes hold one
//! writer lock, so there is no lost update; the store expects one writer task
//! anyway.
//!
//! Paths: keys are UTF-8; a non-UTF-8 path is refused ([`path_str`] says so
//! clearly) rather than stored lossily, so every path the store returns can be
//! opened again. Folder operations match whole path components (`/a/b` covers
//! `/a/b/c`, not `/a/bc`).
//!
//! # Space on disk and in memory
//! sled 0.34 is known for space amplification (log-structured pages, rewritten
//! on update; issues #1484, #1374), worst for many small keys: hence the
//! journal, whose entries hold a write's records together. Per file the
//! journal holds the path and a 73-byte record, plus per content 49 bytes per
//! space; the vector itself (4·dim + 48 B) is in the segment. Memory holds
//! the same records (about 300 B per file at 1M files).
//! [`SledStore::size_on_disk`] reports the real figure, and `dualsight-bench`'s
//! `store_bytes` example measures it (BENCHMARKS.md).

mod backend;
mod codec;
mod entry;
mod journal;
mod migrate;
mod paths;
pub mod pg;
mod records;
mod segment;
mod space;
mod transaction;
mod verify;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sled::Tree;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};

pub use backend::{Rows, Space, Store};
use backend::{check_space_args, check_vector};
use codec::*;
pub use paths::path_str;
use paths::*;
pub use records::*;
use segment::Segment;
pub use segment::SegmentError;
pub use space::{MIN_NORM, SledSpace, StoredVector};
use transaction::*;

/// On-disk layout version, in `meta`. A store written by a newer dualsight is
/// refused rather than misread; version 1 (vectors in sled) is migrated.
pub const SCHEMA_VERSION: u32 = 3;

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
    #[error(
        "store is corrupt: {0} (stop the daemon and run `dualsight fsck --data-dir DIR` to list every problem; a store it cannot mend can be moved aside, and the daemon then indexes its folders again)"
    )]
    Corrupt(String),
    #[error("store: {0}")]
    Segment(#[from] SegmentError),
    #[error(transparent)]
    Postgres(#[from] pg::PgError),
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle on the open store. Clones share one database.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: sled::Db,
    meta: Tree,
    /// The per-file records, one entry per write (`journal.rs`).
    journal: Tree,
    /// What the journal says, in memory; written only by the writer, after
    /// its transaction is flushed.
    state: journal::Shared,
    roots: Tree,
    spaces_tree: Tree,
    /// Open spaces by fingerprint. Every write transaction holds the read side
    /// for its whole run, because it spans every space's trees (the set must
    /// not change under it); creating or dropping a space takes the write side.
    spaces: RwLock<BTreeMap<String, SledSpace>>,
    /// Held by every write from before it assigns vector ids until its
    /// transaction is flushed: ids are dense in the segment only if no two
    /// batches assign them at once.
    writer: Mutex<()>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`. Fails clearly when
    /// another process holds it or when it was written by a newer schema.
    pub fn open(dir: impl AsRef<Path>) -> Result<SledStore> {
        let dir = dir.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&dir)
            // Every lookup is answered from memory (the journal's records and
            // the HNSW): sled's page cache only passes journal entries
            // through, so its 1 GiB default would be held for nothing.
            // Not compressed: zstd pages halve the store on disk, but sled's
            // recovery then decompresses its whole log at every open (24 s
            // instead of 0.7 s at 300k files; BENCHMARKS.md, "sled on disk").
            .cache_capacity(32 * 1024 * 1024)
            .open()
            .map_err(|e| open_error(&dir, e))?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_error(&dir, e));
        let meta = tree(TREE_META)?;
        let mut found = SCHEMA_VERSION;
        match meta.get(META_SCHEMA)? {
            None => {
                meta.insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            }
            Some(v) => {
                found = <[u8; 4]>::try_from(&v[..])
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
                if found == 0 {
                    return Err(StoreError::UnsupportedSchema {
                        dir,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
            }
        }
        let mut inner = Inner {
            journal: tree(TREE_JOURNAL)?,
            state: journal::Shared::default(),
            roots: tree(TREE_ROOTS)?,
            spaces_tree: tree(TREE_SPACES)?,
            meta,
            spaces: RwLock::new(BTreeMap::new()),
            writer: Mutex::new(()),
            db,
            dir,
        };
        let seg_dir = inner.segment_dir();
        std::fs::create_dir_all(&seg_dir).map_err(|source| StoreError::Io {
            path: seg_dir.clone(),
            what: "creating the segment folder",
            source,
        })?;
        let mut spaces = BTreeMap::new();
        for kv in inner.spaces_tree.iter() {
            let (k, v) = kv?;
            let fp = String::from_utf8(k.to_vec())
                .map_err(|_| StoreError::Corrupt("spaces: fingerprint is not UTF-8".into()))?;
            let rec: SpaceRecord = serde_json::from_slice(&v)
                .map_err(|e| StoreError::Corrupt(format!("spaces {fp}: {e}")))?;
            let space = inner.open_space(&fp, rec.no, rec.dim, found != 1)?;
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
        inner.remove_leftover_segments(&known)?;
        if found == 1 {
            migrate::vectors_out_of_sled(&inner, spaces.values())?;
        }
        if found <= 2 {
            migrate::records_into_journal(&inner, spaces.values())?;
        }
        migrate::drop_schema2_trees(&inner, spaces.values())?;
        let state = journal::replay(&inner.journal, known.iter().copied())?;
        *journal::write(&inner.state) = state;
        inner.spaces = RwLock::new(spaces);
        inner.db.flush()?;
        Ok(SledStore {
            inner: Arc::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Bytes the database's files take on disk (see the module docs on space
    /// amplification), segments included.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.sled_size_on_disk()? + self.segment_bytes())
    }

    /// Bytes sled's own files take on disk: the records without the vectors.
    pub fn sled_size_on_disk(&self) -> Result<u64> {
        Ok(self.inner.db.size_on_disk()?)
    }

    /// Bytes the vector segments take on disk (punched holes excluded).
    pub fn segment_bytes(&self) -> u64 {
        let spaces = self.inner.read_spaces();
        spaces.values().map(|s| s.segment.allocated_bytes()).sum()
    }

    /// Bytes free for us on the store's file system (statvfs `f_bavail`).
    pub fn free_bytes(&self) -> Result<u64> {
        free_bytes(&self.inner.dir).map_err(|source| StoreError::Io {
            path: self.inner.dir.clone(),
            what: "checking free space",
            source,
        })
    }

    pub fn flush(&self) -> Result<()> {
        self.inner.db.flush()?;
        Ok(())
    }

    // ---- spaces -------------------------------------------------------------

    /// Opens the space of a model, creating it (empty, not active) when new.
    /// A space that exists with another dimension is an error: a different
    /// model must have a different fingerprint.
    pub fn space(&self, fingerprint: &str, dim: usize) -> Result<SledSpace> {
        check_space_args(fingerprint, dim)?;
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
        // The number is not committed yet: a file under it is a leftover of
        // a creation that failed in this run, owned by nobody.
        let seg = inner.segment_path(no);
        if let Err(source) = std::fs::remove_file(&seg)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(StoreError::Io {
                path: seg,
                what: "removing a leftover segment",
                source,
            });
        }
        let space = inner.open_space(fingerprint, no, dim, true)?;
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
        journal::write(&inner.state)
            .spaces
            .insert(no, journal::SpaceState::default());
        tracing::info!(fingerprint, dim, no, "created vector space");
        spaces.insert(fingerprint.to_owned(), space.clone());
        Ok(space)
    }

    /// All spaces with their counts.
    pub fn spaces(&self) -> Result<Vec<SpaceInfo>> {
        let active = self.active_fingerprint()?;
        let spaces = self.inner.read_spaces();
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
    pub fn active_space(&self) -> Result<Option<SledSpace>> {
        let Some(fp) = self.active_fingerprint()? else {
            return Ok(None);
        };
        let spaces = self.inner.read_spaces();
        Ok(spaces.get(&fp).cloned())
    }

    /// Makes an existing space the one searches are served from (after a new
    /// model's space is complete; the old one keeps serving until then).
    pub fn set_active(&self, fingerprint: &str) -> Result<()> {
        let spaces = self.inner.read_spaces();
        if !spaces.contains_key(fingerprint) {
            return Err(StoreError::UnknownSpace(fingerprint.into()));
        }
        self.inner.meta.insert(META_ACTIVE, fingerprint)?;
        self.inner.db.flush()?;
        Ok(())
    }

    /// Deletes a space and all its vectors; false when there is none. The
    /// active space cannot be dropped. `SledSpace` handles on it go stale.
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
        journal::write(&inner.state).drop_space(space.no);
        for kind in ["hash_id", "vectors", "meta"] {
            inner.db.drop_tree(space_tree_name(space.no, kind))?;
        }
        inner.db.flush()?;
        // Readers holding the space keep the file open; unlinking is safe.
        if let Err(e) = std::fs::remove_file(space.segment.path()) {
            tracing::warn!(path = %space.segment.path().display(), error = %e, "cannot remove a dropped space's segment");
        }
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
    pub fn commit(&self, space: &SledSpace, items: &[Commit]) -> Result<CommitOutcome> {
        for it in items {
            check_path(&it.path)?;
            if let Embedding::New(v) = &it.embedding {
                space.check_vector(v)?;
            }
        }
        if items.is_empty() {
            return Ok(CommitOutcome::default());
        }
        let writer = self.lock_writer(space)?;
        // New contents get the next ids, and their vectors reach the disk
        // before the transaction that names them (module docs).
        let first = space.last_vector_id()? + 1;
        let mut fresh: Vec<(ContentHash, &[f32])> = Vec::new();
        let mut assigned: BTreeMap<ContentHash, u64> = BTreeMap::new();
        for it in items {
            let hash = it.record.hash;
            if let Embedding::New(v) = &it.embedding
                && !assigned.contains_key(&hash)
                && space.vector_id_for_hash(&hash)?.is_none()
            {
                assigned.insert(hash, first + fresh.len() as u64);
                fresh.push((hash, v));
            }
        }
        space.segment.append(first, &fresh)?;
        let last = first + fresh.len() as u64 - 1;
        let mut out = self.write_locked(&writer, |tx| {
            let target = tx.space_index(space)?;
            if !fresh.is_empty() {
                tx.set_last_id(target, last)?;
            }
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
                        let (id, created) = tx.add_vector(target, &hash, assigned.get(&hash))?;
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
        self.release(&out.orphaned);
        out.orphaned
            .retain(|o| !(o.fingerprint == fp && born_dead.contains(&o.id)));
        drop(writer);
        Ok(out)
    }

    /// Forgets vectors whose segment records are damaged. Their files keep
    /// their records but have no vector in the space any more, so the next
    /// scan embeds them again. Returns how many were forgotten.
    pub fn forget_vectors(&self, space: &SledSpace, ids: &[u64]) -> Result<u64> {
        let writer = self.lock_writer(space)?;
        self.write_locked(&writer, |tx| {
            let i = tx.space_index(space)?;
            let mut n = 0;
            for &id in ids {
                if let Some(hash) = tx.vector_hash(i, id)? {
                    tx.remove_vector(i, id, &hash)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Reads every vector of `space` and returns the ids whose records are
    /// damaged (checksum, id or hash wrong, or cut off): O(space).
    pub fn damaged_vectors(&self, space: &SledSpace) -> Result<Vec<u64>> {
        let mut damaged = Vec::new();
        for v in space.iter_vectors_from(0) {
            match v {
                Ok(_) => {}
                Err(StoreError::Segment(SegmentError::Damaged { id, .. })) => damaged.push(id),
                Err(e) => return Err(e),
            }
        }
        Ok(damaged)
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

    /// [`SledStore::remove_prefix`] for the paths `forget` agrees to.
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
        self.release(&total.orphaned);
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
        .inspect(|r| self.release(&r.orphaned))
    }

    /// [`SledStore::rename`] for every path under a folder that moved. Atomic per
    /// chunk of [`CHUNK`] paths.
    pub fn rename_prefix(&self, old_dir: &str, new_dir: &str) -> Result<Removal> {
        let moves = folder_moves(old_dir, new_dir, |d| self.paths_under(d))?;
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
        self.release(&total.orphaned);
        Ok(total)
    }

    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        Ok(journal::read(&self.inner.state).files.get(path).copied())
    }

    /// Every file record in path byte order (reconcile against the disk).
    /// Read a page at a time: a write between pages is seen from the next.
    pub fn iter_files(&self) -> impl Iterator<Item = Result<(String, FileRecord)>> + use<> {
        Pages::files(self.inner.state.clone(), String::new())
    }

    /// The file records under a folder (whole components), in byte order.
    pub fn iter_files_under(
        &self,
        dir: &str,
    ) -> impl Iterator<Item = Result<(String, FileRecord)>> + use<> {
        let dir = trim_dir(dir);
        let exact = self
            .file(dir)
            .ok()
            .flatten()
            .map(|r| Ok((dir.to_owned(), r)));
        exact
            .into_iter()
            .chain(Pages::files(self.inner.state.clone(), dir_prefix(dir)))
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
        Ok(journal::read(&self.inner.state).failures.get(path).cloned())
    }

    /// Forgets a failure record; false when there was none.
    pub fn clear_failure(&self, path: &str) -> Result<bool> {
        self.write(|tx| tx.clear_failure(path))
    }

    /// Files with a failure record (O(1)).
    pub fn failure_count(&self) -> Result<u64> {
        Ok(journal::read(&self.inner.state).failures.len() as u64)
    }

    pub fn iter_failures(&self) -> impl Iterator<Item = Result<(String, FailureRecord)>> + use<> {
        Pages::failures(self.inner.state.clone())
    }

    // ---- counters -----------------------------------------------------------

    /// Files with a record (O(1)).
    pub fn file_count(&self) -> Result<u64> {
        Ok(journal::read(&self.inner.state).files.len() as u64)
    }

    /// Paths whose content has a vector in the active space (0 without one).
    pub fn indexed_file_count(&self) -> Result<u64> {
        match self.active_space()? {
            None => Ok(0),
            Some(s) => s.indexed_path_count(),
        }
    }

    pub fn vector_count(&self, space: &SledSpace) -> Result<u64> {
        space.vector_count()
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

    // ---- internals ----------------------------------------------------------

    /// The writer lock, for a write to `space`, which must still be open.
    fn lock_writer(&self, space: &SledSpace) -> Result<std::sync::MutexGuard<'_, ()>> {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.is_open(space) {
            return Err(StoreError::StaleSpace(space.fingerprint().into()));
        }
        Ok(writer)
    }

    /// Whether `space` is still one of the store's (not dropped since).
    fn is_open(&self, space: &SledSpace) -> bool {
        let spaces = self.inner.read_spaces();
        spaces
            .get(space.fingerprint())
            .is_some_and(|s| s.no == space.no)
    }

    /// Gives the disk blocks of deleted vectors back (best effort; the
    /// records are dead whether or not this succeeds).
    fn release(&self, orphans: &[Orphan]) {
        if orphans.is_empty() {
            return;
        }
        let spaces = self.inner.read_spaces();
        for s in spaces.values() {
            let ids: Vec<u64> = orphans_in(orphans, s.fingerprint()).collect();
            if ids.is_empty() {
                continue;
            }
            let Ok(last) = s.last_vector_id() else {
                continue;
            };
            s.segment
                .release(&ids, last, |id| s.has_vector(id).unwrap_or(true));
        }
    }

    /// Paths with a file or failure record under `dir`, in byte order.
    fn paths_under(&self, dir: &str) -> Result<Vec<String>> {
        let dir = trim_dir(dir);
        check_path(dir)?;
        let prefix = dir_prefix(dir);
        let state = journal::read(&self.inner.state);
        let mut set = BTreeSet::new();
        set.extend(journal::keys_under(&state.files, dir, &prefix).map(|p| p.to_string()));
        set.extend(journal::keys_under(&state.failures, dir, &prefix).map(|p| p.to_string()));
        Ok(set.into_iter().collect())
    }
}

impl Inner {
    /// The open spaces, for reading (see the field's docs on who writes).
    fn read_spaces(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, SledSpace>> {
        self.spaces.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a space's trees and its segment, cutting the segment to the
    /// last id sled committed. `report` is false while migrating, when the
    /// segment is still being filled.
    fn open_space(
        &self,
        fingerprint: &str,
        no: u64,
        dim: usize,
        report: bool,
    ) -> Result<SledSpace> {
        let tree = |kind| self.db.open_tree(space_tree_name(no, kind));
        let meta = tree("meta")?;
        let last_id = match meta.get(SPACE_LAST_ID)? {
            None => 0,
            Some(v) => read_u64_be(&v)
                .ok_or_else(|| StoreError::Corrupt(format!("space {fingerprint}: bad last_id")))?,
        };
        let (segment, rep) = Segment::open(&self.segment_path(no), no, dim, last_id)?;
        if report && rep.torn_bytes > 0 {
            tracing::warn!(
                path = %self.segment_path(no).display(),
                bytes = rep.torn_bytes,
                "cut vectors written after the last commit (an interrupted batch)"
            );
        }
        if report && rep.missing > 0 {
            tracing::error!(
                path = %self.segment_path(no).display(),
                vectors = rep.missing,
                "the segment is shorter than the store: these vectors read as damaged"
            );
        }
        Ok(SledSpace {
            fingerprint: fingerprint.into(),
            dim,
            no,
            meta,
            state: self.state.clone(),
            segment: Arc::new(segment),
        })
    }

    fn segment_dir(&self) -> PathBuf {
        self.dir.join("segments")
    }

    fn segment_path(&self, no: u64) -> PathBuf {
        self.segment_dir().join(format!("{no}.vec"))
    }

    /// Removes segment files of spaces that do not exist (a creation or a
    /// drop cut short), like the trees above.
    fn remove_leftover_segments(&self, known: &BTreeSet<u64>) -> Result<()> {
        let dir = self.segment_dir();
        let io = |what| {
            let path = dir.clone();
            move |source| StoreError::Io { path, what, source }
        };
        for entry in std::fs::read_dir(&dir).map_err(io("listing"))? {
            let path = entry.map_err(io("listing"))?.path();
            let no = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".vec").or_else(|| n.strip_suffix(".tmp")))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(no) = no
                && !known.contains(&no)
            {
                tracing::warn!(path = %path.display(), "removing leftover segment");
                std::fs::remove_file(&path).map_err(io("removing a leftover segment"))?;
            }
        }
        Ok(())
    }
}

// ---- helpers --------------------------------------------------------------------

#[cfg(unix)]
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // Safety: `c` is a NUL-terminated path and `st` is a buffer of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: statvfs succeeded, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t and c_ulong are u32 on some targets.
    #[allow(clippy::useless_conversion)]
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

impl StoreError {
    /// Whether the file system ran out of space (ENOSPC or EDQUOT) under this
    /// error: the caller should wait for room and retry, not give up.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            StoreError::Segment(SegmentError::Io { source, .. })
            | StoreError::Io { source, .. } => source,
            StoreError::Db(sled::Error::Io(e))
            | StoreError::Open {
                source: sled::Error::Io(e),
                ..
            } => e,
            _ => return false,
        };
        matches!(
            io.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
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

/// Records read a page at a time from memory, so that an iteration over a
/// million files neither copies them all nor holds the lock throughout.
struct Pages<T> {
    state: journal::Shared,
    prefix: String,
    after: Option<String>,
    page: std::vec::IntoIter<(String, T)>,
    done: bool,
}

/// Records per page of [`Pages`].
const PAGE: usize = 4096;

impl Pages<FileRecord> {
    fn files(state: journal::Shared, prefix: String) -> Self {
        Pages {
            state,
            prefix,
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl Pages<FailureRecord> {
    fn failures(state: journal::Shared) -> Self {
        Pages {
            state,
            prefix: String::new(),
            after: None,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

trait PageOf: Sized {
    fn page(p: &Pages<Self>) -> Vec<(String, Self)>;
}

impl PageOf for FileRecord {
    fn page(p: &Pages<Self>) -> Vec<(String, Self)> {
        journal::read(&p.state).files_page(p.after.as_deref(), &p.prefix, PAGE)
    }
}

impl PageOf for FailureRecord {
    fn page(p: &Pages<Self>) -> Vec<(String, Self)> {
        journal::read(&p.state).failures_page(p.after.as_deref(), PAGE)
    }
}

impl<T: PageOf> Iterator for Pages<T> {
    type Item = Result<(String, T)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.page.next() {
            return Some(Ok(item));
        }
        if self.done {
            return None;
        }
        let page = T::page(self);
        self.done = page.len() < PAGE;
        self.after = page.last().map(|(p, _)| p.clone());
        self.page = page.into_iter();
        self.page.next().map(Ok)
    }
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
mod tests;
#[cfg(test)]
mod tests_journal;
