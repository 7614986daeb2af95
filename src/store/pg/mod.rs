//! The store on PostgreSQL + pgvector: many daemons ("nodes") over one
//! library. Each node's files, failures and roots are rows under its name,
//! so equal paths on two machines never collide; a content hash has one
//! vector per model space whichever nodes hold it; any node searches every
//! node's photos through the space's pgvector HNSW index (`read.rs`).
//!
//! The contract is [`SledStore`](super::SledStore)'s: every method blocks
//! (call it from a blocking thread), and one that writes returns once its
//! transaction is committed, i.e. durable on the primary. Writes of one node
//! are serialised (its committer is one thread anyway); writes of different
//! nodes meet only on shared contents, which `write.rs` locks in one order.
//! The schema is in `migrations/`, applied by `schema.rs` at open. The
//! client is the `postgres` crate, tokio-postgres driven on a runtime of
//! its own: the blocking contract above, on the async client underneath.

mod ann;
mod import;
mod lookup;
mod pool;
mod read;
mod replicas;
mod schema;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pgvector::Vector;
use postgres::Row;

use super::paths::{check_path, dir_prefix, trim_dir};
use super::{ContentHash, FailureRecord, FileRecord, Result, SpaceInfo, StoreError, StoredVector};
use crate::preprocess::meta::{PhotoMeta, TakenFrom};
pub use ann::{Ann, IVF_FIRST, IndexKind, Shape, auto_probes, lists_for};
pub use pool::redact;
pub use read::{
    Candidate, EXACT_BELOW, Holder, Nearest, RelationSizes, ReplicaState, SearchFilters,
};
pub use schema::{SCHEMA_VERSION, migrate_with};

/// Rows per page when iterating files, failures or vectors: bounds what an
/// iteration holds whatever the library size.
const PAGE: i64 = 2048;

/// How long a count over all nodes' rows may be reused (own writes refresh
/// it at once): Status and every search ask for it.
const COUNT_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        source: postgres::Error,
    },
    #[error("PostgreSQL: {what}: {source}")]
    Query {
        what: &'static str,
        source: postgres::Error,
    },
    #[error(
        "PostgreSQL at {target}: schema version {found} is newer than this dualsight supports ({supported}): upgrade dualsight"
    )]
    NewerSchema {
        target: String,
        found: i32,
        supported: i32,
    },
    #[error("PostgreSQL: applying schema migration {version}: {source}")]
    Migration {
        version: i32,
        source: postgres::Error,
    },
    #[error(
        "PostgreSQL at {target} has no pgvector: {reason} (install pgvector 0.8 or newer on the server, then run `CREATE EXTENSION vector` as a superuser in this database)"
    )]
    NoPgvector { target: String, reason: String },
    #[error("node name {0:?}: {1}")]
    Node(String, &'static str),
    #[error("PostgreSQL: {0}")]
    Corrupt(String),
}

/// Where the store is and who this daemon is.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The primary: every write, and reads when no standby can serve.
    pub url: String,
    /// Hot standbys that serve searches.
    pub read_urls: Vec<String>,
    /// This daemon's name in the library.
    pub node: String,
    /// A standby further behind than this serves no search.
    pub max_lag: Duration,
    /// Local folder for what stays local (thumbnails); its free space is
    /// what the ingest reserve watches.
    pub data_dir: PathBuf,
    /// The HNSW settings (`[index]`), for pgvector's indexes: `m` and
    /// `ef_construction` when a space's index is created, `ef_search` for
    /// every search.
    pub hnsw: crate::index::IndexParams,
    /// Filters passing fewer files than this rank exactly instead of walking
    /// the index ([`EXACT_BELOW`] unless a test wants another size).
    pub exact_below: u64,
    /// The index every space should have (`[store] vector_index`); `None`
    /// keeps what each has (a new space: HNSW).
    pub vector_index: Option<IndexKind>,
    /// IVFFlat lists a search reads; `None`: [`auto_probes`] of the lists.
    pub ivfflat_probes: Option<usize>,
    /// Vectors a space holds before its first IVFFlat index ([`IVF_FIRST`]
    /// unless a test wants another size).
    pub ivf_first: u64,
}

/// Handle on the database. Clones share the connections.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    primary: pool::Pool,
    replicas: replicas::Replicas,
    node: String,
    data_dir: PathBuf,
    hnsw: crate::index::IndexParams,
    exact_below: u64,
    vector_index: Option<IndexKind>,
    ivfflat_probes: Option<usize>,
    ivf_first: u64,
    /// What each space's table is (its index, its rows), by space id, and
    /// when that was read.
    shapes: Mutex<HashMap<i32, (Instant, Shape)>>,
    /// Spaces whose index this process is building, each with whether a
    /// commit asked for a build meanwhile (looked at again once it ends).
    building: Mutex<HashMap<i32, bool>>,
    /// Spaces whose rows are not counted for a build before this (their
    /// ids outran their rows, or a build failed).
    not_before: Mutex<HashMap<i32, Instant>>,
    /// Held by every write of this node from start to commit.
    writer: Mutex<()>,
    counts: Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target())
            .field("node", &self.inner.node)
            .finish()
    }
}

/// A model's vector space in the database: the table `vectors_<id>`.
#[derive(Clone)]
pub struct PgSpace {
    inner: Arc<Inner>,
    id: i32,
    fingerprint: Arc<str>,
    dim: usize,
}

impl std::fmt::Debug for PgSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSpace")
            .field("fingerprint", &self.fingerprint)
            .field("dim", &self.dim)
            .field("id", &self.id)
            .finish()
    }
}

fn q(what: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    move |source| StoreError::Postgres(PgError::Query { what, source })
}

/// A node name: what `Hit.node` shows and files are kept under.
pub fn check_node(node: &str) -> std::result::Result<(), PgError> {
    if node.is_empty() || node.len() > 255 {
        return Err(PgError::Node(node.into(), "must be 1 to 255 bytes"));
    }
    if node.chars().any(char::is_control) {
        return Err(PgError::Node(
            node.into(),
            "must not hold control characters",
        ));
    }
    Ok(())
}

impl PgStore {
    /// Connects to the primary, applies the schema's migrations and
    /// registers the node. Standbys are connected when searches need them.
    pub fn open(options: &PgOptions) -> Result<Self> {
        check_node(&options.node)?;
        // Searches run as single statements: the walk's settings are the
        // sessions' (a search needing more sets them for its transaction).
        // Custom plans always: a search's statements are prepared once per
        // connection, and a generic plan, blind to the LIMIT and the
        // filter's values, could pass the vector index over.
        let init = format!(
            "SET hnsw.iterative_scan = relaxed_order; SET ivfflat.iterative_scan = relaxed_order;
             SET plan_cache_mode = force_custom_plan; SET hnsw.ef_search = {}",
            read::session_ef_search(&options.hnsw)
        );
        let primary = pool::Pool::new(&options.url, &init)?;
        let replicas = replicas::Replicas::new(&options.read_urls, options.max_lag, &init)?;
        {
            let mut c = primary.get()?;
            let found = schema::migrate(&mut c, primary.target())?;
            c.execute(
                "INSERT INTO nodes (node, seen_ms) VALUES ($1, $2)
                 ON CONFLICT (node) DO UPDATE SET seen_ms = EXCLUDED.seen_ms",
                &[&options.node, &now_ms()],
            )
            .map_err(q("registering the node"))?;
            tracing::info!(
                database = primary.target(),
                node = options.node,
                schema = found.max(SCHEMA_VERSION),
                standbys = options.read_urls.len(),
                "opened the PostgreSQL store"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                primary,
                replicas,
                node: options.node.clone(),
                data_dir: options.data_dir.clone(),
                hnsw: options.hnsw,
                exact_below: options.exact_below,
                vector_index: options.vector_index,
                ivfflat_probes: options.ivfflat_probes,
                ivf_first: options.ivf_first,
                shapes: Mutex::new(HashMap::new()),
                building: Mutex::new(HashMap::new()),
                not_before: Mutex::new(HashMap::new()),
                writer: Mutex::new(()),
                counts: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The primary as messages show it (`user@host:port/db`, no password).
    pub fn target(&self) -> &str {
        self.inner.primary.target()
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Bytes the database takes (all nodes).
    pub fn size_on_disk(&self) -> Result<u64> {
        let mut c = self.inner.primary.get()?;
        let n: i64 = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .map_err(q("reading the database size"))?
            .get(0);
        Ok(n as u64)
    }

    // ---- spaces -------------------------------------------------------------

    /// Opens a model's space, creating it (table, and an HNSW index unless
    /// this node asks for IVFFlat) when new.
    pub fn space(&self, fingerprint: &str, dim: usize) -> Result<PgSpace> {
        super::check_space_args(fingerprint, dim)?;
        let mut c = self.inner.primary.get()?;
        let mut tx = c.transaction().map_err(q("creating a space"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::SCHEMA_LOCK])
            .map_err(q("locking the spaces"))?;
        let found = tx
            .query_opt(
                "SELECT id, dim FROM spaces WHERE fingerprint = $1",
                &[&fingerprint],
            )
            .map_err(q("reading the spaces"))?;
        let id = match found {
            Some(row) => {
                let existing = row.get::<_, i32>(1) as usize;
                if existing != dim {
                    return Err(StoreError::SpaceDimension {
                        fingerprint: fingerprint.into(),
                        existing,
                        requested: dim,
                    });
                }
                let id: i32 = row.get(0);
                keep_vectors_inline(&mut tx, id)?;
                id
            }
            None => {
                let id: i32 = tx
                    .query_one(
                        "INSERT INTO spaces (fingerprint, dim, created_ms) VALUES ($1, $2, $3) RETURNING id",
                        &[&fingerprint, &(dim as i32), &now_ms()],
                    )
                    .map_err(q("creating a space"))?
                    .get(0);
                // IVFFlat learns its lists from rows: built once there are some.
                let index = match self.inner.vector_index {
                    Some(IndexKind::IvfFlat) => String::new(),
                    _ => format!(
                        "CREATE INDEX vectors_{id}_hnsw ON vectors_{id} USING {};",
                        self.hnsw_method()
                    ),
                };
                tx.batch_execute(&format!(
                    "CREATE TABLE vectors_{id} (
                         id bigserial PRIMARY KEY,
                         hash bytea NOT NULL UNIQUE,
                         embedding vector({dim}) NOT NULL);
                     ALTER TABLE vectors_{id} {INLINE};
                     {index}"
                ))
                .map_err(q("creating a space's vector table"))?;
                tracing::info!(fingerprint, dim, id, "created vector space");
                id
            }
        };
        tx.commit().map_err(q("creating a space"))?;
        Ok(self.space_handle(id, fingerprint, dim))
    }

    fn space_handle(&self, id: i32, fingerprint: &str, dim: usize) -> PgSpace {
        PgSpace {
            inner: self.inner.clone(),
            id,
            fingerprint: fingerprint.into(),
            dim,
        }
    }

    fn all_spaces(&self) -> Result<Vec<PgSpace>> {
        let mut c = self.inner.primary.get()?;
        let rows = c
            .query(
                "SELECT id, fingerprint, dim FROM spaces ORDER BY fingerprint",
                &[],
            )
            .map_err(q("reading the spaces"))?;
        Ok(rows
            .iter()
            .map(|r| self.space_handle(r.get(0), r.get(1), r.get::<_, i32>(2) as usize))
            .collect())
    }

    pub fn spaces(&self) -> Result<Vec<SpaceInfo>> {
        let active = self.active_space()?.map(|s| s.id);
        self.all_spaces()?
            .into_iter()
            .map(|s| {
                Ok(SpaceInfo {
                    fingerprint: s.fingerprint.to_string(),
                    dim: s.dim,
                    vectors: s.vector_count()?,
                    indexed_paths: s.indexed_path_count()?,
                    active: active == Some(s.id),
                })
            })
            .collect()
    }

    /// The space this node serves searches from.
    pub fn active_space(&self) -> Result<Option<PgSpace>> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                "SELECT s.id, s.fingerprint, s.dim FROM nodes n JOIN spaces s ON s.id = n.active_space
                 WHERE n.node = $1",
                &[&self.inner.node],
            )
            .map_err(q("reading the active space"))?;
        Ok(row.map(|r| self.space_handle(r.get(0), r.get(1), r.get::<_, i32>(2) as usize)))
    }

    pub fn set_active(&self, fingerprint: &str) -> Result<()> {
        let mut c = self.inner.primary.get()?;
        let n = c
            .execute(
                "INSERT INTO nodes (node, active_space, seen_ms)
                 SELECT $1, id, $3 FROM spaces WHERE fingerprint = $2
                 ON CONFLICT (node) DO UPDATE SET active_space = EXCLUDED.active_space, seen_ms = EXCLUDED.seen_ms",
                &[&self.inner.node, &fingerprint, &now_ms()],
            )
            .map_err(q("setting the active space"))?;
        if n == 0 {
            return Err(StoreError::UnknownSpace(fingerprint.into()));
        }
        Ok(())
    }

    /// Drops a space no node serves from; false when there is none.
    pub fn drop_space(&self, fingerprint: &str) -> Result<bool> {
        let mut c = self.inner.primary.get()?;
        let mut tx = c.transaction().map_err(q("dropping a space"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::SCHEMA_LOCK])
            .map_err(q("locking the spaces"))?;
        let Some(row) = tx
            .query_opt(
                "SELECT id, EXISTS (SELECT 1 FROM nodes WHERE active_space = spaces.id)
                 FROM spaces WHERE fingerprint = $1",
                &[&fingerprint],
            )
            .map_err(q("reading the spaces"))?
        else {
            return Ok(false);
        };
        if row.get::<_, bool>(1) {
            return Err(StoreError::DropActive(fingerprint.into()));
        }
        let id: i32 = row.get(0);
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS vectors_{id}; DELETE FROM spaces WHERE id = {id};"
        ))
        .map_err(q("dropping a space"))?;
        tx.commit().map_err(q("dropping a space"))?;
        tracing::info!(fingerprint, "dropped vector space");
        Ok(true)
    }

    // ---- files --------------------------------------------------------------

    pub fn file(&self, path: &str) -> Result<Option<FileRecord>> {
        self.file_at(&self.inner.node, path)
    }

    /// A file of any node.
    pub fn file_at(&self, node: &str, path: &str) -> Result<Option<FileRecord>> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                &format!("SELECT {FILE_COLS} FROM files WHERE node = $1 AND path = $2"),
                &[&node, &path],
            )
            .map_err(q("reading a file record"))?;
        row.map(|r| file_record(&r).map(|(_, rec)| rec)).transpose()
    }

    /// This node's files under `dir` (whole components; "" for all), in
    /// byte order, a page at a time.
    pub fn iter_files_under(
        &self,
        dir: &str,
    ) -> impl Iterator<Item = Result<(String, FileRecord)>> + use<> {
        let this = self.clone();
        let range = PathRange::under(dir);
        paged(move |after| {
            let mut c = this.inner.primary.get()?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {FILE_COLS} FROM files WHERE node = $1 AND path > $2
                         AND ($3 OR path = $4 OR (path >= $5 AND path < $6))
                         ORDER BY path LIMIT $7"
                    ),
                    &[
                        &this.inner.node,
                        &after,
                        &range.all,
                        &range.exact,
                        &range.from,
                        &range.to,
                        &PAGE,
                    ],
                )
                .map_err(q("reading file records"))?;
            rows.iter().map(file_record).collect()
        })
    }

    // ---- failures -----------------------------------------------------------

    pub fn record_failure(&self, path: &str, error: &str, size: u64, mtime_ns: i64) -> Result<()> {
        check_path(path)?;
        let _writer = self.lock_writer();
        let mut c = self.inner.primary.get()?;
        c.execute(
            "INSERT INTO failures (node, path, error, size, mtime_ns, attempts, last_failed_ms)
             VALUES ($1, $2, $3, $4, $5, 1, $6)
             ON CONFLICT (node, path) DO UPDATE SET error = EXCLUDED.error, size = EXCLUDED.size,
                 mtime_ns = EXCLUDED.mtime_ns, attempts = failures.attempts + 1,
                 last_failed_ms = EXCLUDED.last_failed_ms",
            &[
                &self.inner.node,
                &path,
                &error,
                &(size as i64),
                &mtime_ns,
                &now_ms(),
            ],
        )
        .map_err(q("recording a failure"))?;
        self.counts_changed();
        Ok(())
    }

    pub fn failure(&self, path: &str) -> Result<Option<FailureRecord>> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                &format!("SELECT {FAILURE_COLS} FROM failures WHERE node = $1 AND path = $2"),
                &[&self.inner.node, &path],
            )
            .map_err(q("reading a failure"))?;
        Ok(row.map(|r| failure_record(&r).1))
    }

    pub fn clear_failure(&self, path: &str) -> Result<bool> {
        let _writer = self.lock_writer();
        let mut c = self.inner.primary.get()?;
        let n = c
            .execute(
                "DELETE FROM failures WHERE node = $1 AND path = $2",
                &[&self.inner.node, &path],
            )
            .map_err(q("clearing a failure"))?;
        self.counts_changed();
        Ok(n > 0)
    }

    pub fn failure_count(&self) -> Result<u64> {
        self.count(
            "failures",
            "SELECT count(*) FROM failures WHERE node = $1",
            true,
        )
    }

    pub fn iter_failures(&self) -> impl Iterator<Item = Result<(String, FailureRecord)>> + use<> {
        let this = self.clone();
        paged(move |after| {
            let mut c = this.inner.primary.get()?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {FAILURE_COLS} FROM failures WHERE node = $1 AND path > $2
                         ORDER BY path LIMIT $3"
                    ),
                    &[&this.inner.node, &after, &PAGE],
                )
                .map_err(q("reading failures"))?;
            Ok(rows.iter().map(failure_record).collect())
        })
    }

    // ---- counters -----------------------------------------------------------

    /// This node's files with a record.
    pub fn file_count(&self) -> Result<u64> {
        self.count("files", "SELECT count(*) FROM files WHERE node = $1", true)
    }

    /// This node's files whose content has a vector in its active space.
    pub fn indexed_file_count(&self) -> Result<u64> {
        match self.active_space()? {
            None => Ok(0),
            Some(s) => s.indexed_path_count(),
        }
    }

    /// A count, reused for [`COUNT_TTL`]. `own`: it counts only this node's
    /// rows, which only this node's writes change, so it is exact until one
    /// of them (which forgets it).
    fn count(&self, key: &str, sql: &str, own: bool) -> Result<u64> {
        let fresh = |at: &Instant| own || at.elapsed() < COUNT_TTL;
        if let Some((at, n)) = self.counts().get(key)
            && fresh(at)
        {
            return Ok(*n);
        }
        let mut c = self.inner.primary.get()?;
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> = if sql.contains("$1") {
            vec![&self.inner.node]
        } else {
            vec![]
        };
        let n: i64 = c
            .query_one(sql, &params)
            .map_err(q("counting rows"))?
            .get(0);
        self.counts()
            .insert(key.to_owned(), (Instant::now(), n as u64));
        Ok(n as u64)
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Instant, u64)>> {
        self.inner
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn counts_changed(&self) {
        self.counts().clear();
    }

    // ---- roots --------------------------------------------------------------

    pub fn set_root_offline(&self, root: &str, offline: bool) -> Result<()> {
        check_path(root)?;
        let mut c = self.inner.primary.get()?;
        c.execute(
            "INSERT INTO roots (node, root, offline) VALUES ($1, $2, $3)
             ON CONFLICT (node, root) DO UPDATE SET offline = EXCLUDED.offline",
            &[&self.inner.node, &trim_dir(root), &offline],
        )
        .map_err(q("marking a root"))?;
        Ok(())
    }

    pub fn root_offline(&self, root: &str) -> Result<bool> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                "SELECT offline FROM roots WHERE node = $1 AND root = $2",
                &[&self.inner.node, &trim_dir(root)],
            )
            .map_err(q("reading a root"))?;
        Ok(row.is_some_and(|r| r.get(0)))
    }

    pub fn offline_roots(&self) -> Result<Vec<String>> {
        let mut c = self.inner.primary.get()?;
        let rows = c
            .query(
                "SELECT root FROM roots WHERE node = $1 AND offline ORDER BY root",
                &[&self.inner.node],
            )
            .map_err(q("reading the roots"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl PgSpace {
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The table holding this space's vectors (`vectors_<id>`).
    pub fn table(&self) -> String {
        format!("vectors_{}", self.id)
    }

    pub fn vector_id_for_hash(&self, hash: &ContentHash) -> Result<Option<u64>> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                &format!("SELECT id FROM {} WHERE hash = $1", self.table()),
                &[&&hash.0[..]],
            )
            .map_err(q("looking up a vector"))?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    pub fn vector(&self, id: u64) -> Result<Option<StoredVector>> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                &format!(
                    "SELECT id, hash, embedding FROM {} WHERE id = $1",
                    self.table()
                ),
                &[&(id as i64)],
            )
            .map_err(q("reading a vector"))?;
        row.map(|r| stored_vector(&r)).transpose()
    }

    pub fn has_vector(&self, id: u64) -> Result<bool> {
        let mut c = self.inner.primary.get()?;
        let row = c
            .query_opt(
                &format!("SELECT 1 FROM {} WHERE id = $1", self.table()),
                &[&(id as i64)],
            )
            .map_err(q("looking up a vector"))?;
        Ok(row.is_some())
    }

    /// Vectors with id ≥ `from`, ascending, a page at a time.
    pub fn iter_vectors_from(
        &self,
        from: u64,
    ) -> impl Iterator<Item = Result<StoredVector>> + use<> {
        let this = self.clone();
        let mut next = from as i64;
        let mut page: std::vec::IntoIter<StoredVector> = Vec::new().into_iter();
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(v) = page.next() {
                    return Some(Ok(v));
                }
                if done {
                    return None;
                }
                let fetched = off_runtime(|| -> Result<Vec<StoredVector>> {
                    let mut c = this.inner.primary.get()?;
                    let rows = c
                        .query(
                            &format!(
                                "SELECT id, hash, embedding FROM {} WHERE id >= $1 ORDER BY id LIMIT $2",
                                this.table()
                            ),
                            &[&next, &PAGE],
                        )
                        .map_err(q("reading vectors"))?;
                    rows.iter().map(stored_vector).collect()
                });
                match fetched {
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                    Ok(vs) => {
                        done = (vs.len() as i64) < PAGE;
                        if let Some(last) = vs.last() {
                            next = last.id as i64 + 1;
                        }
                        page = vs.into_iter();
                    }
                }
            }
        })
    }

    /// Highest id assigned in this space; 0 when none.
    pub fn last_vector_id(&self) -> Result<u64> {
        let mut c = self.inner.primary.get()?;
        let n: i64 = c
            .query_one(
                &format!("SELECT coalesce(max(id), 0) FROM {}", self.table()),
                &[],
            )
            .map_err(q("reading the last vector id"))?
            .get(0);
        Ok(n as u64)
    }

    /// Vectors of every node in this space (reused for a moment).
    pub fn vector_count(&self) -> Result<u64> {
        self.store().count(
            &format!("vectors {}", self.id),
            &format!("SELECT count(*) FROM {}", self.table()),
            false,
        )
    }

    /// This node's paths whose content has a vector in this space.
    pub fn indexed_path_count(&self) -> Result<u64> {
        self.store().count(
            &format!("paths {}", self.id),
            &format!(
                "SELECT count(*) FROM files f WHERE f.node = $1
                 AND EXISTS (SELECT 1 FROM {} v WHERE v.hash = f.hash)",
                self.table()
            ),
            true,
        )
    }

    /// This node's paths holding `hash`, in byte order.
    pub fn paths_for_hash(&self, hash: &ContentHash) -> Result<Vec<String>> {
        let mut c = self.inner.primary.get()?;
        let rows = c
            .query(
                "SELECT path FROM files WHERE node = $1 AND hash = $2 ORDER BY path",
                &[&self.inner.node, &&hash.0[..]],
            )
            .map_err(q("reading a content's paths"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub fn paths_for_vector(&self, id: u64) -> Result<Vec<String>> {
        match self.vector(id)? {
            None => Ok(Vec::new()),
            Some(v) => self.paths_for_hash(&v.hash),
        }
    }

    fn store(&self) -> PgStore {
        PgStore {
            inner: self.inner.clone(),
        }
    }
}

/// The columns [`file_record`] reads, in order.
const FILE_COLS: &str =
    "path, hash, size, mtime_ns, indexed_at_ms, taken_at, taken_from, width, height";
const FAILURE_COLS: &str = "path, error, size, mtime_ns, attempts, last_failed_ms";

fn file_record(r: &Row) -> Result<(String, FileRecord)> {
    let path: String = r.get(0);
    let hash = hash_of(r.get(1), &path)?;
    Ok((
        path,
        FileRecord {
            size: r.get::<_, i64>(2) as u64,
            mtime_ns: r.get(3),
            hash,
            indexed_at_ms: r.get::<_, i64>(4) as u64,
            meta: PhotoMeta {
                taken_at: r.get(5),
                taken_from: TakenFrom::from_u8(r.get::<_, i16>(6) as u8),
                width: r.get::<_, i32>(7) as u32,
                height: r.get::<_, i32>(8) as u32,
            },
        },
    ))
}

fn failure_record(r: &Row) -> (String, FailureRecord) {
    (
        r.get(0),
        FailureRecord {
            error: r.get(1),
            size: r.get::<_, i64>(2) as u64,
            mtime_ns: r.get(3),
            attempts: r.get::<_, i32>(4) as u32,
            last_failed_ms: r.get::<_, i64>(5) as u64,
        },
    )
}

fn stored_vector(r: &Row) -> Result<StoredVector> {
    let id = r.get::<_, i64>(0) as u64;
    Ok(StoredVector {
        id,
        hash: hash_of(r.get(1), &format!("vector {id}"))?,
        vector: r.get::<_, Vector>(2).to_vec(),
    })
}

fn hash_of(bytes: &[u8], whose: &str) -> Result<ContentHash> {
    <[u8; 32]>::try_from(bytes).map(ContentHash).map_err(|_| {
        StoreError::Postgres(PgError::Corrupt(format!("{whose}: hash is not 32 bytes")))
    })
}

/// A folder as SQL bounds on `path` (byte order): the folder itself, and
/// `[dir/, dir0)` for everything inside it (`0` follows `/`).
struct PathRange {
    all: bool,
    exact: String,
    from: String,
    to: String,
}

impl PathRange {
    fn under(dir: &str) -> Self {
        if dir.is_empty() {
            return Self {
                all: true,
                exact: String::new(),
                from: String::new(),
                to: String::new(),
            };
        }
        let dir = trim_dir(dir);
        let from = dir_prefix(dir);
        let mut to = from.clone();
        to.pop();
        to.push(char::from(std::path::MAIN_SEPARATOR as u8 + 1));
        Self {
            all: false,
            exact: dir.to_owned(),
            from,
            to,
        }
    }
}

/// Iterates pages keyed by path: `fetch(after)` returns the next rows with
/// a path greater than `after`, ascending, at most [`PAGE`] of them.
fn paged<T: Send + 'static>(
    mut fetch: impl FnMut(&str) -> Result<Vec<(String, T)>> + Send + 'static,
) -> impl Iterator<Item = Result<(String, T)>> {
    let mut after = String::new();
    let mut page: std::vec::IntoIter<(String, T)> = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || {
        loop {
            if let Some(item) = page.next() {
                return Some(Ok(item));
            }
            if done {
                return None;
            }
            match off_runtime(|| fetch(&after)) {
                Err(e) => {
                    done = true;
                    return Some(Err(e));
                }
                Ok(rows) => {
                    done = (rows.len() as i64) < PAGE;
                    if let Some((last, _)) = rows.last() {
                        after = last.clone();
                    }
                    page = rows.into_iter();
                }
            }
        }
    })
}

/// Runs `f`, which blocks on PostgreSQL, where blocking is allowed. The
/// synchronous client drives its connection with a runtime of its own,
/// which cannot start on a thread that drives async tasks: on a worker of
/// the daemon's runtime (or the thread in its `block_on`), `block_in_place`
/// hands that thread's tasks to others first. Elsewhere `f` just runs.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| {
            s.spawn(f)
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        }),
        Err(_) => f(),
    }
}

/// How a space's table keeps its rows whole ([`keep_vectors_inline`]).
const INLINE: &str = "ALTER COLUMN hash SET STORAGE PLAIN, ALTER COLUMN embedding SET STORAGE MAIN";

/// Keeps the vectors of space `id` in the table's own rows (`STORAGE MAIN`)
/// for a space created before they were: a 512-d vector is 2 KB, past
/// PostgreSQL's threshold for moving a value out of line (TOAST), and
/// every row read then also looks up the TOAST index and heap, which
/// doubled the time to read a search's rows at 1M (BENCHMARKS.md, session
/// 30). `MAIN`, unlike `PLAIN`, still moves a vector out of line when a row
/// would not fit a page (thousands of dimensions). Only rows written from
/// now on are inline; `VACUUM FULL` rewrites the rest. The hash is held
/// in line too (`PLAIN`): a row still past the threshold with its vector
/// inline would otherwise have its 32-byte hash moved out instead. The
/// change needs the table to itself for a moment: if a search or an index
/// build holds it for more than a second, the next start tries again.
fn keep_vectors_inline(tx: &mut postgres::Transaction<'_>, id: i32) -> Result<()> {
    let storage: Vec<(String, i8)> = tx
        .query(
            "SELECT attname::text, attstorage FROM pg_attribute
             WHERE attrelid = $1::text::regclass AND attname IN ('hash', 'embedding')",
            &[&format!("vectors_{id}")],
        )
        .map_err(q("reading a space's vector storage"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let inline = |(name, storage): &(String, i8)| match name.as_str() {
        "hash" => *storage == b'p' as i8,
        _ => *storage == b'm' as i8,
    };
    if storage.iter().all(inline) {
        return Ok(());
    }
    let mut sp = tx
        .savepoint("inline")
        .map_err(q("changing a space's vector storage"))?;
    let changed = sp.batch_execute(&format!(
        "SET LOCAL lock_timeout = '1s';
         ALTER TABLE vectors_{id} {INLINE}"
    ));
    match changed {
        Ok(()) => {
            sp.commit()
                .map_err(q("changing a space's vector storage"))?;
            tracing::info!(
                table = format!("vectors_{id}"),
                "new vectors are now stored inline; `VACUUM FULL` the table to move the older ones"
            );
        }
        Err(e) => {
            sp.rollback()
                .map_err(q("changing a space's vector storage"))?;
            tracing::info!(
                table = format!("vectors_{id}"),
                "vectors stay out of line for now (the table was busy): the next start tries again: {e}"
            );
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
