//! What searches read: a space's nearest vectors through its pgvector index
//! (HNSW, or IVFFlat: `ann.rs`), and the files of every node holding them.
//! Both run on a healthy standby when one is configured, else on the
//! primary.
//!
//! Filters go into the SQL with pgvector's iterative index scans
//! (`hnsw.iterative_scan`, `ivfflat.iterative_scan`), so a filter walks on
//! until enough vectors pass instead of stopping at `ef_search` rows (or
//! the probed lists); when the walk still ends short
//! (`hnsw.max_scan_tuples`), the same query runs without the index, exactly.
//! A filter therefore never returns fewer hits than exist.
//!
//! A selective filter (fewer than [`EXACT_BELOW`] files pass) skips the walk
//! and ranks exactly the vectors of the files that pass: the walk would
//! spend its tuple budget on vectors the filter rejects and return whichever
//! passing ones it met first (recall@10 0.74 with a 1% filter at 1M,
//! BENCHMARKS.md), where reading the few passing vectors is exact and cheap.

use pgvector::Vector;
use postgres::types::ToSql;

use super::super::{ContentHash, Result};
use super::pool::Conn;
use super::{Ann, PathRange, PgSpace, PgStore, hash_of, q};

pub use super::replicas::ReplicaState;

/// Filters on the files holding a vector (any node's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilters {
    /// Only files under this folder (whole components).
    pub path_prefix: Option<String>,
    /// Only photos taken at or after / at or before (Unix seconds).
    pub taken_after: Option<i64>,
    pub taken_before: Option<i64>,
}

impl SearchFilters {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.path_prefix.is_none() && self.taken_after.is_none() && self.taken_before.is_none()
    }
}

/// Filters passing fewer files than this are ranked exactly: pgvector's own
/// default `hnsw.max_scan_tuples`, the most tuples an iterative walk visits,
/// so below it a walk could not even see every passing vector.
pub const EXACT_BELOW: u64 = 20_000;

/// How a filtered search finds its candidates, from the planner's estimate
/// of the files passing (see [`route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Rank the passing files' vectors exactly.
    Exact,
    /// Walk the HNSW graph with the filter.
    Walk,
    /// Too close to call from an estimate: count the passing files.
    Count,
}

/// How far the planner's estimate must be from the threshold to be trusted
/// without a count. Its row estimates for path ranges and dates come from
/// column histograms and are usually within a few percent (10,131 estimated
/// for 10,000 at 1M files); either route returns correct hits, a wrong one
/// costs time (an exact ranking of many) or recall (a walk for few).
const ESTIMATE_MARGIN: f64 = 1.5;

fn route(estimate: f64, cap: u64) -> Route {
    let cap = cap as f64;
    if estimate * ESTIMATE_MARGIN < cap {
        Route::Exact
    } else if estimate > cap * ESTIMATE_MARGIN {
        Route::Walk
    } else {
        Route::Count
    }
}

/// The estimated rows of an `EXPLAIN`'s top node, from its first line:
/// `Seq Scan on files f  (cost=0.00..34742.00 rows=999800 width=4)`.
fn plan_rows(top: &str) -> Option<f64> {
    let (_, rest) = top.split_once(" rows=")?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// How many times the rows a fetch asks for the table (HNSW) or the probed
/// lists (IVFFlat, on average) must hold for fetches to nest: k-means lists
/// differ in size, and deleted rows count until VACUUM.
const NEST_SLACK: f64 = 4.0;

/// The `hnsw.ef_search` sessions start with: the configured one, within
/// pgvector's 1..=1000.
pub(super) fn session_ef_search(hnsw: &crate::index::IndexParams) -> usize {
    hnsw.ef_search.clamp(1, 1000)
}

/// A candidate: its id, content and exact vector.
#[derive(Debug, Clone)]
pub struct Nearest {
    pub id: u64,
    pub hash: ContentHash,
    pub vector: Vec<f32>,
}

/// A file holding a candidate's content.
#[derive(Debug, Clone)]
pub struct Holder {
    pub hash: ContentHash,
    pub node: String,
    pub path: String,
}

/// A candidate with the files (of any node) holding its content that pass
/// the search's filters, by node and path: read in the statement that
/// found it, so a page costs one round trip, not two.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub nearest: Nearest,
    pub files: Vec<Holder>,
}

/// The SQL condition on `files f` for a filter, with its parameters
/// numbered from `first`.
fn file_condition(filters: &SearchFilters, first: usize) -> (String, Vec<Box<dyn ToSql + Sync>>) {
    let mut sql = String::from("TRUE");
    let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let next = |p: Box<dyn ToSql + Sync>, params: &mut Vec<Box<dyn ToSql + Sync>>| {
        params.push(p);
        format!("${}", first + params.len() - 1)
    };
    if let Some(prefix) = &filters.path_prefix {
        let r = PathRange::under(prefix);
        let (a, b, c) = (
            next(Box::new(r.exact), &mut params),
            next(Box::new(r.from), &mut params),
            next(Box::new(r.to), &mut params),
        );
        sql.push_str(&format!(
            " AND (f.path = {a} OR (f.path >= {b} AND f.path < {c}))"
        ));
    }
    if let Some(t) = filters.taken_after {
        let a = next(Box::new(t), &mut params);
        sql.push_str(&format!(" AND f.taken_at >= {a}"));
    }
    if let Some(t) = filters.taken_before {
        let a = next(Box::new(t), &mut params);
        sql.push_str(&format!(" AND f.taken_at <= {a}"));
    }
    (sql, params)
}

impl PgSpace {
    /// Up to `n` vectors nearest to `query` by cosine distance, roughly best
    /// first, of contents some file passing `filters` holds.
    pub fn nearest(
        &self,
        query: &[f32],
        n: usize,
        filters: &SearchFilters,
    ) -> Result<Vec<Nearest>> {
        let exact = self.ranks_exactly(filters)?;
        Ok(self
            .nearest_routed(query, n, filters, exact)?
            .into_iter()
            .map(|c| c.nearest)
            .collect())
    }

    /// [`PgSpace::nearest`] with each candidate's files, and the route
    /// already chosen by [`PgSpace::ranks_exactly`], so that a search
    /// widening its candidates decides once.
    pub fn nearest_routed(
        &self,
        query: &[f32],
        n: usize,
        filters: &SearchFilters,
        exact: bool,
    ) -> Result<Vec<Candidate>> {
        if exact {
            return self.nearest_by(query, n, filters, true);
        }
        let found = self.nearest_by(query, n, filters, false)?;
        if found.len() >= n {
            return Ok(found);
        }
        // Fewer than asked: either that is all there is, or the index walk
        // gave up (max_scan_tuples) before the filter let enough through.
        self.nearest_by(query, n, filters, true)
    }

    fn nearest_by(
        &self,
        query: &[f32],
        n: usize,
        filters: &SearchFilters,
        exact: bool,
    ) -> Result<Vec<Candidate>> {
        let rows = self.run_nearest("searching vectors", query, n, filters, exact, "")?;
        candidates_of(&rows)
    }

    /// Whether an unfiltered search for fewer than `n` nearest returns the
    /// first of a search for `n`, sorted through its `n`th. HNSW's walk is
    /// the same for any `n` up to the session's `ef_search` (past it, the
    /// walk widens); an IVFFlat scan sorts the rows of its probed lists
    /// whatever the limit, but reads further lists, in a batch of their
    /// own, once those run out; without an index the scan is exact. Either
    /// index needs the table to hold well over `n` rows: a search that
    /// comes back short is ranked again exactly.
    pub fn fetches_nest(&self, n: usize) -> Result<bool> {
        let shape = self.shape()?;
        let Some(rows) = shape.rows else {
            return Ok(shape.ann == Ann::None);
        };
        let n = n as f64;
        Ok(match shape.ann {
            Ann::None => true,
            Ann::Hnsw => n <= session_ef_search(&self.inner.hnsw) as f64 && rows >= NEST_SLACK * n,
            Ann::IvfFlat { lists } => {
                rows * self.probes_of(lists) as f64 / lists as f64 >= NEST_SLACK * n
            }
        })
    }

    /// The plan PostgreSQL picks for a search's first candidates (EXPLAIN),
    /// for operators and tests: an `Index Scan using vectors_<id>_hnsw`
    /// walks the HNSW graph, `vectors_<id>_ivf<lists>` reads IVFFlat lists.
    pub fn nearest_plan(&self, query: &[f32], n: usize, filters: &SearchFilters) -> Result<String> {
        let rows = self.run_nearest(
            "explaining a search",
            query,
            n,
            filters,
            self.ranks_exactly(filters)?,
            "EXPLAIN (COSTS OFF) ",
        )?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// Whether `filters` pass so few files that their vectors are ranked
    /// exactly rather than walked to. The planner's estimate decides
    /// (EXPLAIN reads no rows); only an estimate near the threshold is
    /// checked by counting, which at 1M files costs tens of milliseconds.
    pub fn ranks_exactly(&self, filters: &SearchFilters) -> Result<bool> {
        let cap = self.inner.exact_below;
        if filters.is_empty() || cap == 0 {
            return Ok(false);
        }
        let estimate = self.estimated_files(filters)?;
        Ok(match estimate.map_or(Route::Count, |e| route(e, cap)) {
            Route::Exact => true,
            Route::Walk => false,
            Route::Count => {
                let cap = cap.min(i64::MAX as u64) as i64;
                self.passing_files(filters, cap)? < cap
            }
        })
    }

    /// The planner's estimate of the files (of any node) passing `filters`;
    /// `None` if its answer has no row estimate where we look for it.
    pub fn estimated_files(&self, filters: &SearchFilters) -> Result<Option<f64>> {
        let (cond, extra) = file_condition(filters, 1);
        let sql = format!("EXPLAIN SELECT 1 FROM files f WHERE {cond}");
        let params: Vec<&(dyn ToSql + Sync)> = extra
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let lines = self
            .store()
            .read("estimating the files a filter passes", |c| {
                c.query(&sql, &params)
            })?;
        let top = lines.first().and_then(|r| r.try_get::<_, String>(0).ok());
        Ok(top.and_then(|top| plan_rows(&top)))
    }

    /// Files (of any node) passing `filters`, counted up to `cap`.
    fn passing_files(&self, filters: &SearchFilters, cap: i64) -> Result<i64> {
        let (cond, extra) = file_condition(filters, 2);
        let sql = format!("SELECT count(*) FROM (SELECT 1 FROM files f WHERE {cond} LIMIT $1) s");
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&cap];
        params.extend(extra.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        let row = self
            .store()
            .read("counting the files a filter passes", |c| {
                c.query_one(&sql, &params)
            })?;
        Ok(row.get(0))
    }

    fn run_nearest(
        &self,
        what: &'static str,
        query: &[f32],
        n: usize,
        filters: &SearchFilters,
        exact: bool,
        prefix: &str,
    ) -> Result<Vec<postgres::Row>> {
        let (cond, extra) = file_condition(filters, 3);
        let filter = match (filters.is_empty(), exact) {
            (true, _) => String::new(),
            // From the passing files to their vectors (the hash index).
            (false, true) => format!("WHERE v.hash IN (SELECT f.hash FROM files f WHERE {cond})"),
            (false, false) => {
                format!("WHERE EXISTS (SELECT 1 FROM files f WHERE f.hash = v.hash AND {cond})")
            }
        };
        // `+ 0` is an order the HNSW index cannot give, so an exact search
        // computes the distance of every row it reads instead of walking.
        let order = if exact {
            "(v.embedding <=> $1) + 0"
        } else {
            "v.embedding <=> $1"
        };
        // The files come from a lateral join, one index lookup per candidate
        // after the limit (the candidates' own scan is the same as alone),
        // as arrays: one row per candidate, its vector sent once however
        // many files hold it. Grouped by the hash, so that a content no
        // passing file holds gives no row there and the outer join keeps
        // it, with none.
        let sql = format!(
            "{prefix}SELECT n.id, n.hash, n.embedding, h.nodes, h.paths FROM
             (SELECT v.id, v.hash, v.embedding, {order} AS d FROM {} v {filter}
              ORDER BY {order} LIMIT $2) n
             LEFT JOIN LATERAL (SELECT array_agg(f.node ORDER BY f.node, f.path) nodes,
              array_agg(f.path ORDER BY f.node, f.path) paths FROM files f
              WHERE f.hash = n.hash AND {cond} GROUP BY f.hash) h ON TRUE
             ORDER BY n.d",
            self.table()
        );
        let v = Vector::from(query.to_vec());
        let limit = n as i64;
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&v, &limit];
        params.extend(extra.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        // ef_search bounds what one walk returns (and its recall): the
        // session's, set when the connection opened, unless more
        // candidates are asked for. IVFFlat's probes follow the space's
        // lists, which grow with it: a session setting, run again only when
        // they change. One statement, one round trip, then.
        let probes = if exact { None } else { self.probes()? };
        let session = probes.map(|p| format!("SET ivfflat.probes = {p}"));
        let settle = |c: &mut Conn<'_>| match &session {
            Some(s) => c.settle(s),
            None => Ok(()),
        };
        if exact || n <= session_ef_search(&self.inner.hnsw) {
            return self.store().read(what, |c| {
                settle(c)?;
                c.query_prepared(&sql, &params)
            });
        }
        let more = format!("SET LOCAL hnsw.ef_search = {};", n.min(1000));
        self.store().read(what, |c| {
            settle(c)?;
            let mut tx = c.build_transaction().read_only(true).start()?;
            tx.batch_execute(&more)?;
            let rows = tx.query(&sql, &params)?;
            tx.commit()?;
            Ok(rows)
        })
    }

    /// The files of any node holding these contents that pass `filters`,
    /// by node and path.
    pub fn holders(&self, hashes: &[ContentHash], filters: &SearchFilters) -> Result<Vec<Holder>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let (cond, extra) = file_condition(filters, 2);
        let sql = format!(
            "SELECT f.hash, f.node, f.path FROM files f WHERE f.hash = ANY($1) AND {cond}
             ORDER BY f.node, f.path"
        );
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&keys];
        params.extend(extra.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)));
        let rows = self.store().read("reading the files of hits", |c| {
            c.query_prepared(&sql, &params)
        })?;
        rows.iter()
            .map(|r| {
                Ok(Holder {
                    hash: hash_of(r.get(0), "files")?,
                    node: r.get(1),
                    path: r.get(2),
                })
            })
            .collect()
    }
}

/// Candidates from a search's rows, in their order, each with its files; a
/// candidate no passing file holds (deleted as the search ran) has none.
fn candidates_of(rows: &[postgres::Row]) -> Result<Vec<Candidate>> {
    rows.iter()
        .map(|r| {
            let id = r.get::<_, i64>(0) as u64;
            let hash = hash_of(r.get(1), &format!("vector {id}"))?;
            let nodes: Option<Vec<String>> = r.get(3);
            let paths: Option<Vec<String>> = r.get(4);
            let files = nodes
                .unwrap_or_default()
                .into_iter()
                .zip(paths.unwrap_or_default())
                .map(|(node, path)| Holder { hash, node, path })
                .collect();
            Ok(Candidate {
                nearest: Nearest {
                    id,
                    hash,
                    vector: r.get::<_, Vector>(2).to_vec(),
                },
                files,
            })
        })
        .collect()
}

impl PgStore {
    /// Runs a read on a healthy standby, else (or when it breaks there) on
    /// the primary.
    pub(super) fn read<T>(
        &self,
        what: &'static str,
        mut f: impl FnMut(&mut Conn<'_>) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let inner = &self.inner;
        if let Some(mut c) = inner.replicas.pick(&inner.primary) {
            // Any failure there (gone, or a query cancelled by replay) is the
            // standby's: the primary answers this one.
            match f(&mut c) {
                Ok(v) => return Ok(v),
                Err(e) => inner.replicas.failed_on(c.target(), &e.to_string()),
            }
        }
        let mut c = inner.primary.get()?;
        f(&mut c).map_err(q(what))
    }

    /// The standbys and whether each serves searches now.
    pub fn replicas(&self) -> Vec<ReplicaState> {
        self.inner.replicas.states()
    }
}

/// Bytes a space's tables take on disk.
#[derive(Debug, Clone, Copy)]
pub struct RelationSizes {
    /// The vector table with its TOAST and unique index, without the
    /// vector index.
    pub vectors: u64,
    /// The space's vector index (HNSW or IVFFlat).
    pub index: u64,
    /// Every node's file rows and their indexes.
    pub files: u64,
}

impl PgStore {
    pub fn relation_sizes(&self, space: &PgSpace) -> Result<RelationSizes> {
        let mut c = self.inner.primary.get()?;
        let what = "reading table sizes";
        let table = space.table();
        let indexes = super::ann::index_names(&mut c, &table).map_err(q(what))?;
        let row = c
            .query_one(
                "SELECT pg_total_relation_size($1::text::regclass), pg_total_relation_size('files'),
                        (SELECT coalesce(sum(pg_relation_size(n::regclass)), 0)::bigint
                         FROM unnest($2::text[]) n)",
                &[&table, &indexes],
            )
            .map_err(q(what))?;
        let (total, index): (i64, i64) = (row.get(0), row.get(2));
        Ok(RelationSizes {
            vectors: (total - index) as u64,
            index: index as u64,
            files: row.get::<_, i64>(1) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_far_from_the_threshold_decide_and_near_ones_are_counted() {
        assert_eq!(route(0.0, 20_000), Route::Exact);
        assert_eq!(route(13_333.0, 20_000), Route::Exact);
        assert_eq!(route(13_334.0, 20_000), Route::Count);
        assert_eq!(route(20_000.0, 20_000), Route::Count);
        assert_eq!(route(30_000.0, 20_000), Route::Count);
        assert_eq!(route(30_001.0, 20_000), Route::Walk);
        assert_eq!(route(1e9, 20_000), Route::Walk);
    }

    #[test]
    fn plan_rows_come_from_the_top_node() {
        let top = "Bitmap Heap Scan on files f  (cost=556.08..16224.74 rows=10131 width=4)";
        assert_eq!(plan_rows(top), Some(10131.0));
        assert_eq!(
            plan_rows("Seq Scan on files f  (cost=0.00..1.00 rows=0 width=4)"),
            Some(0.0)
        );
        assert_eq!(plan_rows("Result  (cost=0.00..0.01 width=4)"), None);
        assert_eq!(plan_rows("rows= width=4"), None);
    }
}
