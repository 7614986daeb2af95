//! The store the rest of the daemon sees: sled (embedded, the default) or
//! PostgreSQL (many daemons over one library). Both keep the same records
//! with the same contract; this file only dispatches, plus the checks both
//! make on what enters them.

use std::path::Path;

use super::pg::{PgOptions, PgSpace, PgStore, off_runtime};
use super::{
    Commit, CommitOutcome, ContentHash, FailureRecord, FileRecord, MIN_NORM, Removal, Result,
    SledSpace, SledStore, SpaceInfo, StoreError, StoredVector,
};

/// Handle on the open store. Clones share it.
#[derive(Clone, Debug)]
pub enum Store {
    Sled(SledStore),
    Postgres(PgStore),
}

/// A model's vector space in the store.
#[derive(Clone, Debug)]
pub enum Space {
    Sled(SledSpace),
    Postgres(PgSpace),
}

/// Rows of an iteration over the store.
pub type Rows<T> = Box<dyn Iterator<Item = Result<(String, T)>> + Send>;

// PostgreSQL's calls run through `off_runtime`: callers in async code
// (sled tolerates them) must not start its client's runtime on theirs.
macro_rules! each {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Sled($s) => $e,
            Store::Postgres($s) => off_runtime(|| $e),
        }
    };
}

macro_rules! each_space {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Space::Sled($s) => $e,
            Space::Postgres($s) => off_runtime(|| $e),
        }
    };
}

impl Store {
    /// Opens (creating if needed) the sled store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Store> {
        SledStore::open(dir).map(Store::Sled)
    }

    /// Connects to the PostgreSQL store, migrating its schema.
    pub fn open_postgres(options: &PgOptions) -> Result<Store> {
        off_runtime(|| PgStore::open(options)).map(Store::Postgres)
    }

    /// The sled store, for what only it has (fsck, segment sizes).
    pub fn as_sled(&self) -> Option<&SledStore> {
        match self {
            Store::Sled(s) => Some(s),
            Store::Postgres(_) => None,
        }
    }

    pub fn as_postgres(&self) -> Option<&PgStore> {
        match self {
            Store::Sled(_) => None,
            Store::Postgres(p) => Some(p),
        }
    }

    /// `"sled"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sled(_) => "sled",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The local folder: sled's database, or what PostgreSQL leaves local.
    pub fn dir(&self) -> &Path {
        match self {
            Store::Sled(s) => s.dir(),
            Store::Postgres(p) => p.data_dir(),
        }
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        each!(self, s => s.size_on_disk())
    }

    pub fn free_bytes(&self) -> Result<u64> {
        match self {
            Store::Sled(s) => s.free_bytes(),
            Store::Postgres(p) => {
                super::free_bytes(p.data_dir()).map_err(|source| StoreError::Io {
                    path: p.data_dir().to_path_buf(),
                    what: "checking free space",
                    source,
                })
            }
        }
    }

    /// Makes every write so far durable (PostgreSQL's commits already are).
    pub fn flush(&self) -> Result<()> {
        match self {
            Store::Sled(s) => s.flush(),
            Store::Postgres(_) => Ok(()),
        }
    }

    pub fn space(&self, fingerprint: &str, dim: usize) -> Result<Space> {
        match self {
            Store::Sled(s) => s.space(fingerprint, dim).map(Space::Sled),
            Store::Postgres(p) => off_runtime(|| p.space(fingerprint, dim)).map(Space::Postgres),
        }
    }

    pub fn spaces(&self) -> Result<Vec<SpaceInfo>> {
        each!(self, s => s.spaces())
    }

    pub fn active_space(&self) -> Result<Option<Space>> {
        match self {
            Store::Sled(s) => Ok(s.active_space()?.map(Space::Sled)),
            Store::Postgres(p) => Ok(off_runtime(|| p.active_space())?.map(Space::Postgres)),
        }
    }

    pub fn set_active(&self, fingerprint: &str) -> Result<()> {
        each!(self, s => s.set_active(fingerprint))
    }

    pub fn drop_space(&self, fingerprint: &str) -> Result<bool> {
        each!(self, s => s.drop_space(fingerprint))
    }

    pub fn commit(&self, space: &Space, items: &[Commit]) -> Result<CommitOutcome> {
        match (self, space) {
            (Store::Sled(s), Space::Sled(sp)) => s.commit(sp, items),
            (Store::Postgres(p), Space::Postgres(sp)) => off_runtime(|| p.commit(sp, items)),
            _ => Err(foreign(space)),
        }
    }

    pub fn forget_vectors(&self, space: &Space, ids: &[u64]) -> Result<u64> {
        match (self, space) {
            (Store::Sled(s), Space::Sled(sp)) => s.forget_vectors(sp, ids),
            (Store::Postgres(p), Space::Postgres(sp)) => off_runtime(|| p.forget_vectors(sp, ids)),
            _ => Err(foreign(space)),
        }
    }

    /// Ids whose vector records are damaged (sled's checksummed segments;
    /// PostgreSQL checks its own pages).
    pub fn damaged_vectors(&self, space: &Space) -> Result<Vec<u64>> {
        match (self, space) {
            (Store::Sled(s), Space::Sled(sp)) => s.damaged_vectors(sp),
            (Store::Postgres(_), Space::Postgres(_)) => Ok(Vec::new()),
            _ => Err(foreign(space)),
        }
    }

    pub fn remove_path(&self, path: &str) -> Result<Removal> {
        self.remove_paths(&[path.to_owned()])
    }

    pub fn remove_prefix(&self, dir: &str) -> Result<Removal> {
        self.remove_prefix_if(dir, |_| true)
    }

    pub fn remove_prefix_if(
        &self,
        dir: &str,
        forget: impl Fn(&str) -> bool + Send,
    ) -> Result<Removal> {
        each!(self, s => s.remove_prefix_if(dir, forget))
    }

    pub fn remove_paths(&self, paths: &[String]) -> Result<Removal> {
        each!(self, s => s.remove_paths(paths))
    }

    pub fn rename(&self, old: &str, new: &str) -> Result<Removal> {
        each!(self, s => s.rename(old, new))
    }

    pub fn rename_prefix(&self, old_dir: &str, new_dir: &str) -> Result<Removal> {
        each!(self, s => s.rename_prefix(old_dir, new_dir))
    }

    /// This daemon's record of a file.
    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        each!(self, s => s.file(path))
    }

    /// This daemon's records of `paths`, in their order: one statement on
    /// PostgreSQL, where a rescan would otherwise pay a round trip per file.
    pub fn files(&self, paths: &[&str]) -> Result<Vec<Option<FileRecord>>> {
        match self {
            Store::Sled(s) => paths.iter().map(|p| s.file(p)).collect(),
            Store::Postgres(p) => off_runtime(|| p.files(paths)),
        }
    }

    /// A file of `node` (PostgreSQL; sled has only its own node's).
    pub fn file_at(&self, node: Option<&str>, path: &str) -> Result<Option<FileRecord>> {
        match (self, node) {
            (Store::Postgres(p), Some(node)) => off_runtime(|| p.file_at(node, path)),
            _ => self.file(path),
        }
    }

    /// This daemon's file records, in path byte order.
    pub fn iter_files(&self) -> Rows<FileRecord> {
        match self {
            Store::Sled(s) => Box::new(s.iter_files()),
            Store::Postgres(p) => Box::new(p.iter_files_under("")),
        }
    }

    pub fn iter_files_under(&self, dir: &str) -> Rows<FileRecord> {
        match self {
            Store::Sled(s) => Box::new(s.iter_files_under(dir)),
            Store::Postgres(p) => Box::new(p.iter_files_under(dir)),
        }
    }

    pub fn record_failure(&self, path: &str, error: &str, size: u64, mtime_ns: i64) -> Result<()> {
        each!(self, s => s.record_failure(path, error, size, mtime_ns))
    }

    pub fn failure(&self, path: &str) -> Result<Option<FailureRecord>> {
        each!(self, s => s.failure(path))
    }

    /// This daemon's failure records of `paths`, in their order: one
    /// statement on PostgreSQL.
    pub fn failures(&self, paths: &[&str]) -> Result<Vec<Option<FailureRecord>>> {
        match self {
            Store::Sled(s) => paths.iter().map(|p| s.failure(p)).collect(),
            Store::Postgres(p) => off_runtime(|| p.failures(paths)),
        }
    }

    pub fn clear_failure(&self, path: &str) -> Result<bool> {
        each!(self, s => s.clear_failure(path))
    }

    pub fn failure_count(&self) -> Result<u64> {
        each!(self, s => s.failure_count())
    }

    pub fn iter_failures(&self) -> Rows<FailureRecord> {
        match self {
            Store::Sled(s) => Box::new(s.iter_failures()),
            Store::Postgres(p) => Box::new(p.iter_failures()),
        }
    }

    pub fn file_count(&self) -> Result<u64> {
        each!(self, s => s.file_count())
    }

    pub fn indexed_file_count(&self) -> Result<u64> {
        each!(self, s => s.indexed_file_count())
    }

    pub fn vector_count(&self, space: &Space) -> Result<u64> {
        space.vector_count()
    }

    pub fn set_root_offline(&self, root: &str, offline: bool) -> Result<()> {
        each!(self, s => s.set_root_offline(root, offline))
    }

    pub fn root_offline(&self, root: &str) -> Result<bool> {
        each!(self, s => s.root_offline(root))
    }

    pub fn offline_roots(&self) -> Result<Vec<String>> {
        each!(self, s => s.offline_roots())
    }
}

fn foreign(space: &Space) -> StoreError {
    StoreError::StaleSpace(space.fingerprint().to_owned())
}

impl Space {
    pub fn fingerprint(&self) -> &str {
        each_space!(self, s => s.fingerprint())
    }

    pub fn dim(&self) -> usize {
        each_space!(self, s => s.dim())
    }

    pub fn check_vector(&self, v: &[f32]) -> Result<()> {
        check_vector(self.fingerprint(), self.dim(), v)
    }

    pub fn vector_id_for_hash(&self, hash: &ContentHash) -> Result<Option<u64>> {
        each_space!(self, s => s.vector_id_for_hash(hash))
    }

    /// The vector id of each content, in their order: one statement on PostgreSQL.
    pub fn vector_ids_for_hashes(&self, hashes: &[ContentHash]) -> Result<Vec<Option<u64>>> {
        match self {
            Space::Sled(s) => hashes.iter().map(|h| s.vector_id_for_hash(h)).collect(),
            Space::Postgres(p) => off_runtime(|| p.vector_ids_for_hashes(hashes)),
        }
    }

    pub fn vector(&self, id: u64) -> Result<Option<StoredVector>> {
        each_space!(self, s => s.vector(id))
    }

    /// A search candidate's vector ([`SledSpace::candidate`]; PostgreSQL
    /// reads it as [`Space::vector`] does).
    pub fn candidate(&self, id: u64) -> Result<Option<StoredVector>> {
        match self {
            Space::Sled(s) => s.candidate(id),
            Space::Postgres(p) => p.vector(id),
        }
    }

    pub fn has_vector(&self, id: u64) -> Result<bool> {
        each_space!(self, s => s.has_vector(id))
    }

    pub fn iter_vectors_from(
        &self,
        from: u64,
    ) -> Box<dyn Iterator<Item = Result<StoredVector>> + Send> {
        match self {
            Space::Sled(s) => Box::new(s.iter_vectors_from(from)),
            Space::Postgres(p) => Box::new(p.iter_vectors_from(from)),
        }
    }

    pub fn last_vector_id(&self) -> Result<u64> {
        each_space!(self, s => s.last_vector_id())
    }

    pub fn vector_count(&self) -> Result<u64> {
        each_space!(self, s => s.vector_count())
    }

    pub fn indexed_path_count(&self) -> Result<u64> {
        each_space!(self, s => s.indexed_path_count())
    }

    pub fn paths_for_vector(&self, id: u64) -> Result<Vec<String>> {
        each_space!(self, s => s.paths_for_vector(id))
    }

    pub fn paths_for_hash(&self, hash: &ContentHash) -> Result<Vec<String>> {
        each_space!(self, s => s.paths_for_hash(hash))
    }

    /// Where sled keeps this space's vectors (`None` on PostgreSQL).
    pub fn segment_path(&self) -> Option<&Path> {
        match self {
            Space::Sled(s) => Some(s.segment_path()),
            Space::Postgres(_) => None,
        }
    }

    /// The PostgreSQL space, for what only it has (plans, index upkeep).
    pub fn as_postgres(&self) -> Option<&PgSpace> {
        match self {
            Space::Sled(_) => None,
            Space::Postgres(p) => Some(p),
        }
    }
}

/// Refuses what must never enter a space: another model's dimension,
/// NaN/inf components, a (near-)zero vector.
pub(super) fn check_vector(fingerprint: &str, dim: usize, v: &[f32]) -> Result<()> {
    if v.len() != dim {
        return Err(StoreError::Dimension {
            fingerprint: fingerprint.to_owned(),
            expected: dim,
            got: v.len(),
        });
    }
    let invalid = |reason| StoreError::InvalidVector {
        fingerprint: fingerprint.to_owned(),
        reason,
    };
    if v.iter().any(|x| !x.is_finite()) {
        return Err(invalid("NaN or infinite component"));
    }
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm < f64::from(MIN_NORM) {
        return Err(invalid("zero norm"));
    }
    Ok(())
}

/// What a space's fingerprint and dimension must be.
pub(super) fn check_space_args(fingerprint: &str, dim: usize) -> Result<()> {
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
    Ok(())
}
