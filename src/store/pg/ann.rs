//! A space's approximate-nearest-neighbour index in pgvector: HNSW (what a
//! new space gets) or IVFFlat (`[store] vector_index = "ivfflat"`).
//!
//! Why IVFFlat: a text query lies off the photos' cloud, and pgvector's
//! HNSW walk, which descends greedily from one entry point, finds 0.87 of
//! the exact top 10 at 1M vectors, and 0.96 only at several times the
//! latency; IVFFlat, which ranks every list's centre by the query itself
//! and then reads the best lists whole, finds 0.95 in about a third of that
//! time (BENCHMARKS.md). IVFFlat learns its lists from the rows it is built
//! on, so the daemon builds it once a space holds enough vectors and
//! rebuilds it each time the space calls for twice the lists (rows / 500
//! up to 1M rows, 2√rows beyond: twice pgvector's rule of thumb). Builds
//! run in the background with `CREATE INDEX CONCURRENTLY`, so ingest and
//! searches go on, under an advisory lock, so that one node of a library
//! builds; the index they replace is dropped only once the new one is
//! valid.

use std::collections::hash_map::Entry;
use std::time::{Duration, Instant};

use postgres::Client;

use super::super::Result;
use super::{PgSpace, PgStore, q};

/// The kinds of index a space's vectors can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexKind {
    #[default]
    Hnsw,
    IvfFlat,
}

impl std::fmt::Display for IndexKind {
    /// The index's name as pgvector's documentation writes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexKind::Hnsw => "HNSW",
            IndexKind::IvfFlat => "IVFFlat",
        })
    }
}

impl std::str::FromStr for IndexKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "hnsw" => Ok(IndexKind::Hnsw),
            "ivfflat" => Ok(IndexKind::IvfFlat),
            other => Err(format!("`{other}`: expected \"hnsw\" or \"ivfflat\"")),
        }
    }
}

/// Vectors a space holds before its first IVFFlat index is built: below
/// it, searches scan the table exactly (a few milliseconds), and k-means
/// would have too few rows to place its lists.
pub const IVF_FIRST: u64 = 10_000;

/// Rows per list up to 1M rows: half pgvector's rule of thumb (1000). On
/// the benchmark's 1M library, 2000 lists with 10 probes found more of the
/// exact top 10 than 1000 lists with 13, in 0.55x the time (BENCHMARKS.md,
/// session 32); a build takes ~5 minutes there instead of ~2.
const ROWS_PER_LIST: u64 = 500;

/// How long what a space's index is may be reused: another node may
/// rebuild it, and a search that uses stale lists only probes fewer or
/// more of them than it should, for this long.
const ANN_TTL: Duration = Duration::from_secs(10);

/// How long after a failed build the next is tried.
const RETRY: Duration = Duration::from_secs(300);

/// Key class of the advisory lock a build holds, with the space id as the
/// second key ("ds" "ix").
const BUILD_LOCK: i32 = 0x6473_6978;

/// What a space's table has now (valid indexes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ann {
    /// No index: searches scan exactly.
    None,
    Hnsw,
    IvfFlat {
        lists: usize,
    },
}

/// The lists of `rows` vectors: [`ROWS_PER_LIST`] each up to 1M rows,
/// 2√rows beyond (pgvector's rule of thumb, doubled), where k-means' cost,
/// which grows with the square of the lists, would otherwise run away.
pub fn lists_for(rows: u64) -> usize {
    if rows <= 1_000_000 {
        (rows / ROWS_PER_LIST).max(1) as usize
    } else {
        (2.0 * (rows as f64).sqrt()) as usize
    }
}

/// Lists a search reads when none are configured: √lists / 6.4, at least
/// 2 (3 of 200 at 100k, 7 of 2000 at 1M). On the benchmark's libraries
/// that found 0.982 and 0.955–0.956 of the exact top 10 for text queries
/// (two k-means draws of the 1M lists), where 6 of 2000 found 0.946 on
/// one draw (BENCHMARKS.md, session 33); at 1M a first page then took
/// under 2x the embedded store's time. pgvector suggests √lists as a start.
pub fn auto_probes(lists: usize) -> usize {
    ((lists as f64).sqrt() / 6.4).ceil().max(2.0) as usize
}

/// What should be built for a space that has `ann` and `rows` vectors, for
/// a node configured with `kind` (`None`: the space keeps its kind).
pub fn plan(kind: Option<IndexKind>, ann: Ann, rows: u64, first: u64) -> Option<Build> {
    let want = kind.unwrap_or(match ann {
        Ann::IvfFlat { .. } => IndexKind::IvfFlat,
        Ann::None | Ann::Hnsw => IndexKind::Hnsw,
    });
    match (want, ann) {
        (IndexKind::Hnsw, Ann::Hnsw) => None,
        // A space left without an index (a migration cut short) is the
        // migration's to finish, unless this node asks for HNSW by name.
        (IndexKind::Hnsw, Ann::None) if kind.is_none() => None,
        (IndexKind::Hnsw, _) => Some(Build::Hnsw),
        (IndexKind::IvfFlat, Ann::IvfFlat { lists }) => {
            let now = lists_for(rows);
            (now >= 2 * lists).then_some(Build::IvfFlat { lists: now })
        }
        (IndexKind::IvfFlat, _) => (rows >= first).then_some(Build::IvfFlat {
            lists: lists_for(rows),
        }),
    }
}

/// An index to build (and then the others to drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Hnsw,
    IvfFlat { lists: usize },
}

/// What a background build came to.
#[derive(Debug)]
enum Outcome {
    Built(Build),
    /// The rows under the lock call for nothing.
    NotDue,
    /// Another node (or `dualsight migrate`) holds the space's build lock.
    Busy,
}

/// One index on a space's table, as the catalog has it.
#[derive(Debug)]
struct Found {
    name: String,
    method: String,
    valid: bool,
    lists: Option<usize>,
}

/// `lists=N` among an index's storage options.
fn lists_of(options: &[String]) -> Option<usize> {
    options
        .iter()
        .find_map(|o| o.strip_prefix("lists=")?.parse().ok())
}

/// The pgvector indexes on `table`.
fn indexes(c: &mut Client, table: &str) -> std::result::Result<Vec<Found>, postgres::Error> {
    let rows = c.query(
        "SELECT c.oid::regclass::text, a.amname::text, i.indisvalid, coalesce(c.reloptions, '{}')
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
         WHERE i.indrelid = $1::text::regclass AND a.amname IN ('hnsw', 'ivfflat')
         ORDER BY c.relname",
        &[&table],
    )?;
    Ok(rows
        .iter()
        .map(|r| Found {
            name: r.get(0),
            method: r.get(1),
            valid: r.get(2),
            // pgvector's own default when the index names none.
            lists: Some(lists_of(&r.get::<_, Vec<String>>(3)).unwrap_or(100)),
        })
        .collect())
}

/// The names of `table`'s pgvector indexes, valid or not (what they take
/// on disk counts either way).
pub(super) fn index_names(
    c: &mut Client,
    table: &str,
) -> std::result::Result<Vec<String>, postgres::Error> {
    Ok(indexes(c, table)?.into_iter().map(|f| f.name).collect())
}

/// What the valid indexes of a table make of it: IVFFlat whenever one is
/// valid (the most lists when a rebuild has not dropped the old one yet),
/// else HNSW, else none.
fn ann_of(found: &[Found]) -> Ann {
    let valid = || found.iter().filter(|f| f.valid);
    if let Some(lists) = valid()
        .filter(|f| f.method == "ivfflat")
        .filter_map(|f| f.lists)
        .max()
    {
        Ann::IvfFlat { lists }
    } else if valid().any(|f| f.method == "hnsw") {
        Ann::Hnsw
    } else {
        Ann::None
    }
}

/// What a space's table is now: its index, and the planner's estimate of
/// its rows (`None` until the table was first analysed or indexed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub ann: Ann,
    pub rows: Option<f64>,
}

impl PgSpace {
    /// The kind of index this space has now (reused for a few seconds).
    pub fn ann(&self) -> Result<Ann> {
        Ok(self.shape()?.ann)
    }

    /// The space's index and estimated rows (reused for a few seconds).
    pub fn shape(&self) -> Result<Shape> {
        let key = self.id;
        if let Some((at, shape)) = self.inner.shapes.lock_ok().get(&key)
            && at.elapsed() < ANN_TTL
        {
            return Ok(*shape);
        }
        let table = self.table();
        let (found, rows) = self.store().read("reading a space's index", |c| {
            let rows: f32 = c
                .query_one(
                    "SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass",
                    &[&table],
                )?
                .get(0);
            Ok((indexes(c, &table)?, rows))
        })?;
        // -1: never analysed or indexed.
        let shape = Shape {
            ann: ann_of(&found),
            rows: (rows >= 0.0).then_some(f64::from(rows)),
        };
        self.inner
            .shapes
            .lock_ok()
            .insert(key, (Instant::now(), shape));
        Ok(shape)
    }

    /// IVFFlat lists a search reads, when the space has that index.
    pub(super) fn probes(&self) -> Result<Option<usize>> {
        Ok(match self.ann()? {
            Ann::IvfFlat { lists } => Some(self.probes_of(lists)),
            _ => None,
        })
    }

    /// Lists a search reads of an IVFFlat index with `lists`.
    pub(super) fn probes_of(&self, lists: usize) -> usize {
        self.inner
            .ivfflat_probes
            .unwrap_or_else(|| auto_probes(lists))
            .clamp(1, lists)
    }
}

impl PgStore {
    /// Whether this node asks for IVFFlat, which it builds itself once a
    /// space holds enough vectors (a space without an index is then normal).
    pub fn builds_ivfflat(&self) -> bool {
        self.inner.vector_index == Some(IndexKind::IvfFlat)
    }

    /// Starts building the index `space` should have, in the background,
    /// when it lacks it: after a commit, and when the daemon opens its
    /// space. Cheap when there is nothing to do (a cached read and one
    /// index probe).
    pub fn tend_index(&self, space: &PgSpace) -> Result<()> {
        let inner = &self.inner;
        let ann = space.ann()?;
        let settled = match inner.vector_index {
            None => !matches!(ann, Ann::IvfFlat { .. }),
            Some(IndexKind::Hnsw) => ann == Ann::Hnsw,
            Some(IndexKind::IvfFlat) => false,
        };
        if settled {
            return Ok(());
        }
        // Ids only grow, so the last one bounds the rows from above and
        // costs one index probe; counting a large space's rows takes a
        // while, so it is done only when the bound says a build may be due,
        // and (when deletes made ids outrun rows, or another node holds
        // the build) at most once per TTL.
        let due = |rows| plan(inner.vector_index, ann, rows, inner.ivf_first).is_some();
        if !due(space.last_vector_id()?) {
            return Ok(());
        }
        if inner
            .not_before
            .lock_ok()
            .get(&space.id)
            .is_some_and(|until| Instant::now() < *until)
        {
            return Ok(());
        }
        // A build under way looks again once it ends: the rows it counted
        // may be short of the ones committed since.
        if let Some(again) = inner.building.lock_ok().get_mut(&space.id) {
            *again = true;
            return Ok(());
        }
        if !due(space.vector_count()?) {
            self.later(space.id, ANN_TTL);
            return Ok(());
        }
        match inner.building.lock_ok().entry(space.id) {
            Entry::Occupied(mut again) => {
                *again.get_mut() = true;
                return Ok(());
            }
            Entry::Vacant(slot) => {
                slot.insert(false);
            }
        }
        let (store, space, id) = (self.clone(), space.clone(), space.id);
        let spawned = std::thread::Builder::new()
            .name("pg-index".into())
            .spawn(move || {
                // Rows that arrived during a build may call for the next.
                loop {
                    let t = Instant::now();
                    match store.build_index(&space) {
                        Ok(Outcome::Built(built)) => tracing::info!(
                            space = %space.fingerprint,
                            index = ?built,
                            seconds = t.elapsed().as_secs_f64(),
                            "built a space's vector index"
                        ),
                        Ok(Outcome::NotDue) => break,
                        // Looked at again once that node is likely done.
                        Ok(Outcome::Busy) => {
                            store.later(space.id, ANN_TTL);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(
                                space = %space.fingerprint,
                                "building a space's vector index failed (tried again in {} s): {e}",
                                RETRY.as_secs()
                            );
                            store.later(space.id, RETRY);
                            break;
                        }
                    }
                }
                // A commit that found this build under way counted on it to
                // look again; that look goes the usual way, rate limits and
                // all, now that the space is free.
                let again = store.inner.building.lock_ok().remove(&space.id);
                if again == Some(true)
                    && let Err(e) = store.tend_index(&space)
                {
                    tracing::warn!(space = %space.fingerprint, "looking again at a space's index: {e}");
                }
            });
        if spawned.is_err() {
            inner.building.lock_ok().remove(&id);
        }
        Ok(())
    }

    /// No row count for `space`'s index for `wait`.
    fn later(&self, space: i32, wait: Duration) {
        let until = Instant::now() + wait;
        self.inner.not_before.lock_ok().insert(space, until);
    }

    /// Builds the index `space` should have on its own connection, as its
    /// rows under the space's build lock say (another node may hold the
    /// lock, or have built it meanwhile); then drops the space's other
    /// pgvector indexes.
    fn build_index(&self, space: &PgSpace) -> Result<Outcome> {
        let mut c = self.inner.primary.connect_alone()?;
        let what = "building a space's vector index";
        if !try_build_lock(&mut c, space.id)? {
            return Ok(Outcome::Busy);
        }
        let table = space.table();
        // Under the lock, what the space has and holds now decides.
        let found = indexes(&mut c, &table).map_err(q(what))?;
        let rows: i64 = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .map_err(q(what))?
            .get(0);
        let Some(build) = plan(
            self.inner.vector_index,
            ann_of(&found),
            rows as u64,
            self.inner.ivf_first,
        ) else {
            return Ok(Outcome::NotDue);
        };
        // A build cut short leaves an invalid index behind.
        for f in found.iter().filter(|f| !f.valid) {
            drop_concurrently(&mut c, &f.name)?;
        }
        let (name, method) = self.index_for(space, build);
        let memory = build_memory(
            build,
            rows as u64,
            space.dim,
            self.inner.hnsw.max_nb_connection,
        );
        // Separate statements: several in one message run as one
        // transaction, where CONCURRENTLY is refused. No statement timeout
        // a role may set: a build cut off would be redone in full.
        c.batch_execute(&format!("SET maintenance_work_mem = '{memory}'"))
            .map_err(q(what))?;
        c.batch_execute("SET statement_timeout = 0")
            .map_err(q(what))?;
        c.batch_execute(&format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} USING {method}"
        ))
        .map_err(q(what))?;
        for f in found.iter().filter(|f| f.valid && f.name != name) {
            drop_concurrently(&mut c, &f.name)?;
        }
        self.inner.shapes.lock_ok().remove(&space.id);
        Ok(Outcome::Built(build))
    }

    /// The name and `USING` part of the index `build` makes on `space`.
    pub(super) fn index_for(&self, space: &PgSpace, build: Build) -> (String, String) {
        let table = space.table();
        match build {
            Build::IvfFlat { lists } => (
                format!("{table}_ivf{lists}"),
                format!("ivfflat (embedding vector_cosine_ops) WITH (lists = {lists})"),
            ),
            Build::Hnsw => (format!("{table}_hnsw"), self.hnsw_method()),
        }
    }

    /// The `USING` part of a space's HNSW index: cosine distance, as the
    /// search layer scores, so the walk ranks candidates as the exact
    /// rescoring does. pgvector takes m in 2..=100 and ef_construction in
    /// 2m..=1000.
    pub(super) fn hnsw_method(&self) -> String {
        let m = self.inner.hnsw.max_nb_connection.clamp(2, 100);
        let ef_construction = self.inner.hnsw.ef_construction.clamp(2 * m, 1000);
        format!(
            "hnsw (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef_construction})"
        )
    }

    /// The index for a bulk load into `space` (`dualsight migrate`): this
    /// node's kind, IVFFlat sized to the rows the table holds. `None` for
    /// IVFFlat below [`PgOptions::ivf_first`] rows: the daemon builds it
    /// once the space has filled.
    ///
    /// [`PgOptions::ivf_first`]: super::PgOptions::ivf_first
    pub(super) fn bulk_build(&self, rows: u64) -> Option<Build> {
        let kind = self.inner.vector_index.unwrap_or_default();
        plan(Some(kind), Ann::None, rows, self.inner.ivf_first)
    }

    /// The valid pgvector indexes of `space`, by name (one, unless a
    /// build is replacing another).
    pub fn vector_indexes(&self, space: &PgSpace) -> Result<Vec<String>> {
        let mut c = self.inner.primary.get()?;
        let found = indexes(&mut c, &space.table()).map_err(q("reading a space's indexes"))?;
        Ok(found
            .into_iter()
            .filter(|f| f.valid)
            .map(|f| f.name)
            .collect())
    }

    /// Drops every pgvector index of `space` (before a bulk load).
    pub(super) fn drop_vector_indexes(&self, space: &PgSpace) -> Result<()> {
        self.drop_indexes(space, |_| true)
    }

    /// Drops the pgvector indexes of `space` but `keep` (after a bulk
    /// build: those a daemon built while the rows arrived).
    pub(super) fn drop_vector_indexes_but(&self, space: &PgSpace, keep: &str) -> Result<()> {
        self.drop_indexes(space, |f| f.name != keep)
    }

    /// Drops the pgvector indexes of `space` that are (or are not) valid.
    pub(super) fn drop_vector_indexes_where(&self, space: &PgSpace, valid: bool) -> Result<()> {
        self.drop_indexes(space, |f| f.valid == valid)
    }

    fn drop_indexes(&self, space: &PgSpace, drop: impl Fn(&Found) -> bool) -> Result<()> {
        let mut c = self.inner.primary.get()?;
        let found = indexes(&mut c, &space.table()).map_err(q("reading a space's indexes"))?;
        for f in found.iter().filter(|f| drop(f)) {
            c.batch_execute(&format!("DROP INDEX IF EXISTS {}", f.name))
                .map_err(q("dropping a space's index"))?;
        }
        self.inner.shapes.lock_ok().remove(&space.id);
        Ok(())
    }
}

/// Takes the space's build lock (session-level) if no one holds it. Never
/// waits inside a statement: a waiting statement holds a snapshot, which a
/// concurrent build in the holder's session waits for in turn.
pub(super) fn try_build_lock(c: &mut Client, space: i32) -> Result<bool> {
    Ok(c.query_one(
        "SELECT pg_try_advisory_lock($1, $2)",
        &[&BUILD_LOCK, &space],
    )
    .map_err(q("taking a space's index build lock"))?
    .get(0))
}

pub(super) fn release_build_lock(c: &mut Client, space: i32) -> Result<()> {
    c.query_one("SELECT pg_advisory_unlock($1, $2)", &[&BUILD_LOCK, &space])
        .map_err(q("releasing a space's index build lock"))?;
    Ok(())
}

/// `maintenance_work_mem` for a build: IVFFlat's k-means holds 50 sample
/// rows per list (pgvector refuses to start without room for them); HNSW
/// builds fastest with the whole graph in memory (the vector, 2m base-layer
/// links, tuple overhead), capped so that a background build cannot take
/// the server's memory.
pub(super) fn build_memory(build: Build, rows: u64, dim: usize, m: usize) -> String {
    let mb = match build {
        Build::IvfFlat { lists } => {
            ((lists as u64 * 50 * (dim as u64 * 4 + 64) * 2) >> 20).max(64) + 64
        }
        Build::Hnsw => {
            let per_vector = dim as u64 * 4 + 2 * m as u64 * 8 + 256;
            ((rows * per_vector * 11 / 10) >> 20).clamp(64, 4096)
        }
    };
    format!("{mb}MB")
}

fn drop_concurrently(c: &mut Client, name: &str) -> Result<()> {
    c.batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {name}"))
        .map_err(q("dropping a space's old vector index"))
}

/// A poisoned lock's data is still whole here (maps of plain values).
pub(super) trait LockOk<T> {
    fn lock_ok(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> LockOk<T> for std::sync::Mutex<T> {
    fn lock_ok(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_twice_pgvectors_rule_of_thumb() {
        assert_eq!(lists_for(0), 1);
        assert_eq!(lists_for(10_000), 20);
        assert_eq!(lists_for(100_000), 200);
        assert_eq!(lists_for(1_000_000), 2000);
        // No jump past 1M: 2√rows meets rows / 500 there.
        assert_eq!(lists_for(1_000_001), 2000);
        assert_eq!(lists_for(4_000_000), 4000);
        assert_eq!(auto_probes(1), 2);
        assert_eq!(auto_probes(20), 2);
        assert_eq!(auto_probes(200), 3);
        assert_eq!(auto_probes(1000), 5);
        assert_eq!(auto_probes(2000), 7);
    }

    #[test]
    fn a_space_is_built_once_full_and_rebuilt_when_it_has_doubled() {
        let ivf = Some(IndexKind::IvfFlat);
        assert_eq!(plan(ivf, Ann::None, 9_999, IVF_FIRST), None);
        assert_eq!(
            plan(ivf, Ann::None, 10_000, IVF_FIRST),
            Some(Build::IvfFlat { lists: 20 })
        );
        // Switching from HNSW waits for as many rows as a first build.
        assert_eq!(plan(ivf, Ann::Hnsw, 500, IVF_FIRST), None);
        assert_eq!(
            plan(ivf, Ann::Hnsw, 50_000, IVF_FIRST),
            Some(Build::IvfFlat { lists: 100 })
        );
        let built = Ann::IvfFlat { lists: 20 };
        assert_eq!(plan(ivf, built, 19_999, IVF_FIRST), None);
        assert_eq!(
            plan(ivf, built, 20_000, IVF_FIRST),
            Some(Build::IvfFlat { lists: 40 })
        );
        // A node configured with nothing keeps the space's kind.
        assert_eq!(
            plan(None, built, 20_000, IVF_FIRST),
            Some(Build::IvfFlat { lists: 40 })
        );
        assert_eq!(plan(None, Ann::Hnsw, 1 << 30, IVF_FIRST), None);
        assert_eq!(plan(None, Ann::None, 1 << 30, IVF_FIRST), None);
        // HNSW by name replaces IVFFlat or fills a space without an index.
        let hnsw = Some(IndexKind::Hnsw);
        assert_eq!(plan(hnsw, built, 10, IVF_FIRST), Some(Build::Hnsw));
        assert_eq!(plan(hnsw, Ann::None, 10, IVF_FIRST), Some(Build::Hnsw));
        assert_eq!(plan(hnsw, Ann::Hnsw, 10, IVF_FIRST), None);
    }

    #[test]
    fn the_valid_index_decides_and_lists_come_from_its_options() {
        let f = |name: &str, method: &str, valid: bool, lists: Option<usize>| Found {
            name: name.into(),
            method: method.into(),
            valid,
            lists,
        };
        assert_eq!(ann_of(&[]), Ann::None);
        assert_eq!(ann_of(&[f("v_hnsw", "hnsw", true, None)]), Ann::Hnsw);
        assert_eq!(
            ann_of(&[
                f("v_hnsw", "hnsw", true, None),
                f("v_ivf20", "ivfflat", false, Some(20))
            ]),
            Ann::Hnsw
        );
        assert_eq!(
            ann_of(&[
                f("v_hnsw", "hnsw", true, None),
                f("v_ivf20", "ivfflat", true, Some(20))
            ]),
            Ann::IvfFlat { lists: 20 }
        );
        assert_eq!(
            lists_of(&["fillfactor=90".into(), "lists=1000".into()]),
            Some(1000)
        );
        assert_eq!(lists_of(&["lists=x".into()]), None);
        assert_eq!("ivfflat".parse(), Ok(IndexKind::IvfFlat));
        assert!("ivf".parse::<IndexKind>().unwrap_err().contains("\"hnsw\""));
    }
}
