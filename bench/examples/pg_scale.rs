//! The PostgreSQL store beside the embedded one (sled + hnsw_rs), same
//! vectors, same machine, same search routine: build (ingest) time and rate,
//! bytes per vector, text-query p50/p99 and recall@10 against exact search,
//! unfiltered and with a path filter that keeps 1% of the library.
//!
//! Needs an empty database (the store creates its tables):
//! cargo run --release -p dualsight-bench --example pg_scale -- <database-url> <vectors> <queries>
//!
//! `PG_BULK=1` measures the other way to fill a space: the same commits
//! into the table without its index, then one `CREATE INDEX` (pgvector
//! builds the graph in memory, `PG_BUILD_MEMORY`, default 8GB), as
//! `dualsight migrate` does. `PG_INDEX=ivfflat` gives the space an IVFFlat
//! index instead of HNSW (`[store] vector_index`), `PG_PROBES=N` the lists a
//! search reads (default: the daemon's, `auto_probes`). `PG_SWEEP=1` then
//! times each IVFFlat index on the table alone (the others dropped in a
//! transaction rolled back) at each of `PG_SWEEP_PROBES` (a comma list),
//! with its recall: build indexes of other lists beside the daemon's to
//! choose between them.
//! `PG_ONLY=1` skips the embedded index (search settings on a filled
//! database). `PG_HALF=1` adds a `halfvec` expression index beside the
//! `vector` one and compares the two graphs' own top 10 (recall against
//! exact, p50/p99, index bytes) with the same queries and `ef_search`.
//! `PG_SHIFT=1` tries moving text queries toward the photos before the
//! walk (by a fraction of the mean photo vector minus the mean text vector,
//! from 2,000 other text-like draws), reranking the walk's candidates by
//! the query itself. `PAGED=1` searches both stores as the daemon
//! answers a first page of 10 (`search_page`: a block of 100 ranked, the
//! leading 10 returned; on PostgreSQL ~14 rows read, ~104 before 496bc54).
//! `ROUNDS=N` then alternates the two stores' query runs N more times and
//! prints each round's p50s and ratio. `EMBEDDED_DIR=DIR` keeps the
//! embedded index there between runs (a checkpoint, loaded as at a
//! daemon's restart) instead of building it each time.

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dualsight::engine::Filters;
use dualsight::engine::pg_source::PgSource;
use dualsight::engine::search::{Query, Rows, search, search_page};
use dualsight::index::{IndexParams, VectorIndex};
use dualsight::store::pg::{IndexKind, PgOptions};
use dualsight::store::{Commit, ContentHash, Embedding, FileRecord, Store};
use dualsight_bench::search::{build_index, exact_all};
use dualsight_bench::synth::{DATA, Mixture, TEXT_QUERIES};

const DIM: usize = 512;
const K: usize = 10;
/// Files per commit, as a busy daemon's batches grow under load.
const COMMIT: usize = 1000;
/// The synthetic library's seed.
const SEED: u64 = 42;
/// One photo in this many is under the filtered folder.
const SHARDS: usize = 100;

/// Row `i` (id `i + 1` in the embedded index) as a path: 100 folders.
fn path_of(i: usize) -> String {
    format!("/bench/{:02}/{i:07}.jpg", i % SHARDS)
}

fn row_of(path: &std::path::Path) -> usize {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// The `q` quantile of `v` in milliseconds; NaN when nothing was timed.
fn p(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.len()
        .checked_sub(1)
        .map_or(f64::NAN, |last| v[(last as f64 * q).round() as usize] * 1e3)
}

/// The embedded index of `data`: built at once, or with `EMBEDDED_DIR` set
/// loaded from the checkpoint an earlier run of this size left there (as the
/// daemon loads its index at a restart), so that repeated same-run pairs
/// need not rebuild it. Its "build" time is then the load's.
fn embedded_index(data: &[f32], n: usize) -> Result<VectorIndex> {
    let Some(dir) = std::env::var_os("EMBEDDED_DIR").filter(|_| !data.is_empty()) else {
        return build_index(data, DIM, IndexParams::default());
    };
    let dir = PathBuf::from(dir);
    // What the graph depends on: the size, the data's seed, the parameters.
    let p = IndexParams::default();
    let fingerprint = format!(
        "pg_scale-{n}x{DIM}-seed{SEED}-m{}-efc{}",
        p.max_nb_connection, p.ef_construction
    );
    if let Some((idx, _)) = VectorIndex::load(&dir, &fingerprint, DIM)? {
        idx.wait_until_settled();
        return Ok(idx);
    }
    let idx = build_index(data, DIM, p)?;
    idx.checkpoint(&dir, &fingerprint, idx.max_id())?;
    Ok(idx)
}

/// A number from the environment (the pgvector settings to try), else `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, n, nq] = &args[..] else {
        bail!("usage: pg_scale <database-url> <vectors> <queries>");
    };
    let n: usize = n.parse().context("vectors")?;
    let nq: usize = nq.parse().context("queries")?;
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let mix = Mixture::for_size(n, DIM, SEED);
    let data = mix.points(DATA, 0, n, threads);
    let queries = mix.points(TEXT_QUERIES, 0, nq, threads);
    let truth: Vec<HashSet<u64>> = exact_all(&data, &queries, DIM, K, threads)
        .into_iter()
        .map(|ids| ids.into_iter().collect())
        .collect();
    // Exact answers among the filtered folder only (ids of its rows).
    let kept: Vec<usize> = (0..n).filter(|i| i % SHARDS == 7).collect();
    let kept_data: Vec<f32> = kept
        .iter()
        .flat_map(|&i| data[i * DIM..(i + 1) * DIM].iter().copied())
        .collect();
    let truth_filtered: Vec<HashSet<u64>> = exact_all(&kept_data, &queries, DIM, K, threads)
        .into_iter()
        .map(|ids| {
            ids.into_iter()
                .map(|j| kept[j as usize - 1] as u64 + 1)
                .collect()
        })
        .collect();

    // The embedded index (skipped with `PG_ONLY=1`, to try pgvector's
    // search settings on a filled database without a long build).
    let pg_only = std::env::var_os("PG_ONLY").is_some();
    let paged = std::env::var_os("PAGED").is_some();
    let t = Instant::now();
    let idx = embedded_index(&data[..if pg_only { 0 } else { data.len() }], n)?;
    let sled_build = t.elapsed();
    let rows = Rows {
        data: &data,
        dim: DIM,
    };
    let embedded_run = |idx: &VectorIndex| {
        let queries = if pg_only { &[][..] } else { &queries[..] };
        timed(queries, &truth, paged, |query, page| {
            let hits = if page {
                search_page(idx, &rows, query, 0, K)?
            } else {
                search(idx, &rows, query)?
            };
            Ok(hits.into_iter().map(|(id, _)| id).collect())
        })
    };
    let (mut sled_lat, sled_found) = embedded_run(&idx)?;
    // Kept for the alternating rounds only: otherwise PostgreSQL runs
    // without the embedded index's memory beside it, as in earlier runs.
    let rounds = env_or("ROUNDS", 0);
    let idx = (rounds > 0).then_some(idx);

    // PostgreSQL: the daemon's own commits, then the daemon's own search.
    let ivf = std::env::var("PG_INDEX").is_ok_and(|k| k == "ivfflat");
    let options = |kind: Option<IndexKind>| PgOptions {
        url: url.clone(),
        read_urls: Vec::new(),
        node: "bench".into(),
        max_lag: Duration::ZERO,
        data_dir: std::env::temp_dir(),
        hnsw: IndexParams {
            max_nb_connection: env_or("PG_M", IndexParams::default().max_nb_connection),
            ef_construction: env_or("PG_EF_CONSTRUCTION", IndexParams::default().ef_construction),
            ef_search: env_or("PG_EF_SEARCH", IndexParams::default().ef_search),
            ..IndexParams::default()
        },
        exact_below: dualsight::store::pg::EXACT_BELOW,
        vector_index: kind,
        ivfflat_probes: std::env::var("PG_PROBES").ok().and_then(|p| p.parse().ok()),
        ivf_first: dualsight::store::pg::IVF_FIRST,
    };
    let kind = ivf.then_some(IndexKind::IvfFlat);
    // A bulk load builds its index once at the end, as `dualsight migrate`
    // does: filled by a node that leaves the space's index alone.
    let bulk_asked = std::env::var_os("PG_BULK").is_some();
    let store = Store::open_postgres(&options(if bulk_asked { None } else { kind }))?;
    let space = store.space(&format!("bench-{n}"), DIM)?;
    let Some(pg_space) = space.as_postgres() else {
        bail!("not a PostgreSQL store");
    };
    // A database filled by an earlier run is reused (to try search
    // settings); a partial one is refused.
    let have = space.vector_count()?;
    if have != 0 && have != n as u64 {
        bail!(
            "the database holds {have} vectors of this space: give the benchmark an empty database"
        );
    }
    let bulk = have == 0 && bulk_asked;
    let mut sql = postgres::Config::from_str(url)?.connect(postgres::NoTls)?;
    let table = format!(
        "vectors_{}",
        sql.query_one(
            "SELECT id FROM spaces WHERE fingerprint = $1",
            &[&format!("bench-{n}")]
        )?
        .get::<_, i32>(0)
    );
    let pg = store.as_postgres().context("postgres")?;
    if bulk {
        pg.drop_search_index(pg_space)?;
    }
    let t = Instant::now();
    for (c, chunk) in data.chunks(COMMIT * DIM).enumerate().filter(|_| have == 0) {
        let items: Vec<Commit> = chunk
            .chunks_exact(DIM)
            .enumerate()
            .map(|(j, v)| {
                let i = c * COMMIT + j;
                Commit {
                    path: path_of(i),
                    record: FileRecord {
                        size: 1,
                        mtime_ns: 1,
                        hash: ContentHash::of(&(i as u64).to_le_bytes()),
                        indexed_at_ms: 1,
                        meta: Default::default(),
                    },
                    embedding: Embedding::New(v.to_vec()),
                }
            })
            .collect();
        store.commit(&space, &items)?;
    }
    let pg_load = t.elapsed();
    let store = if bulk_asked && kind.is_some() {
        Store::open_postgres(&options(kind))?
    } else {
        store
    };
    let pg = store.as_postgres().context("postgres")?;
    if bulk {
        let memory = std::env::var("PG_BUILD_MEMORY").unwrap_or_else(|_| "8GB".into());
        pg.build_search_index(
            pg_space,
            &memory,
            Some(threads.saturating_sub(1)),
            &mut |_, _| {},
        )?;
        println!(
            "bulk: commits without the index {:.1} s, then CREATE INDEX {:.1} s ({})",
            pg_load.as_secs_f64(),
            (t.elapsed() - pg_load).as_secs_f64(),
            pg.vector_indexes(pg_space)?.join(", ")
        );
    }
    let pg_build = t.elapsed();
    let sizes = pg.relation_sizes(pg_space)?;

    let run = |filters: &Filters, truth: &[HashSet<u64>]| {
        timed(&queries, truth, paged, |query, page| {
            let source = PgSource::new(pg_space, filters);
            let hits = if page {
                search_page(&source, &source, query, 0, K)?
            } else {
                search(&source, &source, query)?
            };
            Ok(hits
                .iter()
                .map(|(f, _)| row_of(&f.path) as u64 + 1)
                .collect())
        })
    };
    run(&Filters::default(), &truth)?; // warm the page cache
    let (mut pg_lat, pg_found) = run(&Filters::default(), &truth)?;
    let filtered = Filters {
        path_prefix: Some(PathBuf::from("/bench/07")),
        ..Filters::default()
    };
    let (mut pgf_lat, pgf_found) = run(&filtered, &truth_filtered)?;
    let total = (K * nq) as f64;
    println!("{n} vectors of {DIM} dims, {nq} text-like queries, top {K}");
    println!(
        "embedded (sled + hnsw_rs): build {:.1} s; query p50 {:.2} ms p99 {:.2} ms; recall@10 {:.3}",
        sled_build.as_secs_f64(),
        p(&mut sled_lat, 0.5),
        p(&mut sled_lat, 0.99),
        sled_found as f64 / total
    );
    // A reused database was not filled by this run: no ingest to report.
    let ingest = if have == 0 {
        format!(
            "ingest {:.1} s ({:.0} vectors/s, commits of {COMMIT})",
            pg_build.as_secs_f64(),
            n as f64 / pg_build.as_secs_f64()
        )
    } else {
        "filled by an earlier run".to_string()
    };
    println!(
        "postgres (pgvector {}): {ingest}; query p50 {:.2} ms p99 {:.2} ms; recall@10 {:.3}",
        if ivf { "ivfflat" } else { "hnsw" },
        p(&mut pg_lat, 0.5),
        p(&mut pg_lat, 0.99),
        pg_found as f64 / total
    );
    println!(
        "postgres, path filter keeping 1%: query p50 {:.2} ms p99 {:.2} ms; recall@10 {:.3}",
        p(&mut pgf_lat, 0.5),
        p(&mut pgf_lat, 0.99),
        pgf_found as f64 / total
    );
    println!(
        "postgres bytes per vector: table {:.0}, vector index {:.0}, file rows {:.0}",
        sizes.vectors as f64 / n as f64,
        sizes.index as f64 / n as f64,
        sizes.files as f64 / n as f64
    );
    println!(
        "ratios postgres/embedded: build {:.2}x, p50 {:.2}x",
        pg_build.as_secs_f64() / sled_build.as_secs_f64(),
        p(&mut pg_lat, 0.5) / p(&mut sled_lat, 0.5)
    );
    // This machine's speed drifts within minutes: alternating the two
    // stores' query runs gives ratios from neighbouring minutes.
    for (round, idx) in (1..=rounds).zip(std::iter::repeat(&idx).flatten()) {
        let (mut e, _) = embedded_run(idx)?;
        let (mut g, _) = run(&Filters::default(), &truth)?;
        let (e, g) = (p(&mut e, 0.5), p(&mut g, 0.5));
        println!(
            "round {round}: embedded p50 {e:.2} ms, postgres p50 {g:.2} ms, ratio {:.2}x",
            g / e
        );
    }
    drop(idx);
    let asked = Asked {
        table: &table,
        queries: &queries,
        truth: &truth,
        row_of_hash: rows_by_hash(n),
    };
    if std::env::var_os("PG_HALF").is_some() {
        half_against_full(&mut sql, &asked)?;
    }
    if std::env::var_os("PG_SHIFT").is_some() {
        let calib = mix.points(TEXT_QUERIES, 1 << 40, 2000, threads);
        shifted_walk(&mut sql, &asked, &data, &calib)?;
    }
    if std::env::var_os("PG_SWEEP").is_some() {
        ivfflat_sweep(&mut sql, &asked)?;
    }
    Ok(())
}

/// Each query searched for its top `K` (a first page of `K` when `paged`)
/// by `search`, which answers row ids: latencies, and hits in the exact
/// top `K`.
fn timed<I>(
    queries: &[f32],
    truth: &[HashSet<u64>],
    paged: bool,
    search: impl Fn(&Query<'_, I>, bool) -> Result<Vec<u64>>,
) -> Result<(Vec<f64>, usize)> {
    let (mut lat, mut found) = (Vec::new(), 0usize);
    for (q, want) in queries.chunks_exact(DIM).zip(truth) {
        let query = Query {
            vector: q,
            limit: K,
            min_score: None,
            accept: None,
        };
        let t = Instant::now();
        let hits = search(&query, paged)?;
        lat.push(t.elapsed().as_secs_f64());
        found += hits.iter().filter(|id| want.contains(id)).count();
    }
    Ok((lat, found))
}

/// What the SQL-level experiments ask of a filled table: its queries,
/// their exact answers, and each row's id by its content hash (built once).
struct Asked<'a> {
    table: &'a str,
    queries: &'a [f32],
    truth: &'a [HashSet<u64>],
    row_of_hash: std::collections::HashMap<Vec<u8>, u64>,
}

impl Asked<'_> {
    /// Recall@`K` of `found` rows of the exact top `K`s over every query.
    fn recall(&self, found: usize) -> f64 {
        found as f64 / (K * self.truth.len()) as f64
    }
}

/// Row `i`'s id (`i + 1`) by its content hash, for answers read from SQL.
fn rows_by_hash(n: usize) -> std::collections::HashMap<Vec<u8>, u64> {
    (0..n)
        .map(|i| {
            (
                ContentHash::of(&(i as u64).to_le_bytes()).0.to_vec(),
                i as u64 + 1,
            )
        })
        .collect()
}

/// How many of `rows` (each a content hash first) are rows of `want`.
fn hits_in(
    rows: &[postgres::Row],
    row_of_hash: &std::collections::HashMap<Vec<u8>, u64>,
    want: &HashSet<u64>,
) -> usize {
    rows.iter()
        .filter(|r| {
            row_of_hash
                .get(&r.get::<_, Vec<u8>>(0))
                .is_some_and(|id| want.contains(id))
        })
        .count()
}

fn mean(rows: &[f32]) -> Vec<f32> {
    let mut m = vec![0f64; DIM];
    for r in rows.chunks_exact(DIM) {
        for (a, b) in m.iter_mut().zip(r) {
            *a += *b as f64;
        }
    }
    let n = (rows.len() / DIM) as f64;
    m.into_iter().map(|a| (a / n) as f32).collect()
}

/// pgvector's walk with the query moved by a fraction of the modality gap
/// (mean photo vector minus mean text vector), its `ef_search` candidates
/// reranked by the query itself: can a text query, moved onto the photos'
/// cloud, descend where its neighbours are?
fn shifted_walk(
    sql: &mut postgres::Client,
    asked: &Asked<'_>,
    data: &[f32],
    calib: &[f32],
) -> Result<()> {
    let (table, queries, truth, row_of_hash) =
        (asked.table, asked.queries, asked.truth, &asked.row_of_hash);
    let mi = mean(data);
    let mt = mean(calib);
    let ef = env_or("PG_EF_SEARCH", IndexParams::default().ef_search).min(1000);
    sql.batch_execute(&format!("SET hnsw.ef_search = {ef}"))?;
    let stmt = sql.prepare(&format!(
        "SELECT hash FROM (SELECT hash, embedding FROM {table} ORDER BY embedding <=> $1 LIMIT {ef}) c \
         ORDER BY embedding <=> $2 LIMIT {K}"
    ))?;
    for alpha in [0.0f32, 0.5, 1.0, 1.5] {
        let (mut lat, mut found) = (Vec::new(), 0usize);
        for pass in 0..2 {
            for (q, want) in queries.chunks_exact(DIM).zip(truth) {
                let mut s: Vec<f32> = q
                    .iter()
                    .zip(mi.iter().zip(&mt))
                    .map(|(q, (i, t))| q + alpha * (i - t))
                    .collect();
                let norm = s.iter().map(|x| x * x).sum::<f32>().sqrt();
                s.iter_mut().for_each(|x| *x /= norm);
                let (vs, vq) = (
                    pgvector::Vector::from(s),
                    pgvector::Vector::from(q.to_vec()),
                );
                let t = Instant::now();
                let rows = sql.query(&stmt, &[&vs, &vq])?;
                if pass == 1 {
                    lat.push(t.elapsed().as_secs_f64());
                    found += hits_in(&rows, row_of_hash, want);
                }
            }
        }
        println!(
            "shift {alpha}: ef {ef}: p50 {:.2} ms p99 {:.2} ms; recall@10 {:.3}",
            p(&mut lat, 0.5),
            p(&mut lat, 0.99),
            found as f64 / (K * truth.len()) as f64
        );
    }
    Ok(())
}

/// `stmt` (one vector parameter; content hashes out, then optionally the
/// rows' vectors) for every query, a warming pass and then a timed one:
/// latencies, and how many of each answer's first `K` rows are in its exact
/// top `K`, in the answer's order and (with vectors) ranked by them.
fn timed_top(
    sql: &mut impl postgres::GenericClient,
    stmt: &postgres::Statement,
    asked: &Asked<'_>,
) -> Result<(Vec<f64>, Found)> {
    let (queries, truth, row_of_hash) = (asked.queries, asked.truth, &asked.row_of_hash);
    let (mut lat, mut found) = (Vec::new(), Found::default());
    for pass in 0..2 {
        for (q, want) in queries.chunks_exact(DIM).zip(truth) {
            let v = pgvector::Vector::from(q.to_vec());
            let t = Instant::now();
            let mut rows = sql.query(stmt, &[&v])?;
            if pass == 1 {
                lat.push(t.elapsed().as_secs_f64());
                found.ordered += hits_in(&rows[..rows.len().min(K)], row_of_hash, want);
                if rows.first().is_some_and(|r| r.len() > 1) {
                    // As the daemon ranks a fetch: by each row's exact
                    // vector, each scored once.
                    let mut scored: Vec<(f32, postgres::Row)> = rows
                        .into_iter()
                        .map(|r| {
                            let e = r.get::<_, pgvector::Vector>(1);
                            (e.as_slice().iter().zip(q).map(|(a, b)| a * b).sum(), r)
                        })
                        .collect();
                    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                    rows = scored.into_iter().map(|(_, r)| r).collect();
                    found.reranked += hits_in(&rows[..rows.len().min(K)], row_of_hash, want);
                }
            }
        }
    }
    Ok((lat, found))
}

/// Rows of the exact top `K` a timed fetch found: in the index's order, and
/// re-ranked by the rows' exact vectors (when the fetch returns them).
#[derive(Default)]
struct Found {
    ordered: usize,
    reranked: usize,
}

/// Each IVFFlat index on the table alone (the others dropped inside a
/// transaction that is rolled back), at each of `PG_SWEEP_PROBES`: the
/// first page's fetch of 14 rows, its p50 and its top 10's recall against
/// exact. For choosing lists, probes and the stored type from one filled
/// table.
fn ivfflat_sweep(sql: &mut postgres::Client, asked: &Asked<'_>) -> Result<()> {
    let table = asked.table;
    let probes: Vec<usize> = std::env::var("PG_SWEEP_PROBES")
        .unwrap_or_else(|_| "4,6,8,10,13,16,20,26,32,40".into())
        .split(',')
        .map(|p| {
            p.trim().parse().with_context(|| {
                format!("PG_SWEEP_PROBES: `{p}` is not a list count (expected e.g. 8,10,13)")
            })
        })
        .collect::<Result<_>>()?;
    let indexes: Vec<(String, String)> = sql
        .query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1
             AND (indexdef LIKE '%USING ivfflat%' OR indexdef LIKE '%USING hnsw%')
             ORDER BY indexname",
            &[&table],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, def) in indexes.iter().filter(|(_, d)| d.contains("ivfflat")) {
        let order = if def.contains("halfvec") {
            format!("embedding::halfvec({DIM}) <=> $1::vector({DIM})::halfvec({DIM})")
        } else {
            "embedding <=> $1".to_owned()
        };
        let mut tx = sql.transaction()?;
        for (other, _) in indexes.iter().filter(|(o, _)| o != name) {
            tx.batch_execute(&format!("DROP INDEX {other}"))?;
        }
        let stmt = tx.prepare(&format!(
            "SELECT hash, embedding FROM {table} ORDER BY {order} LIMIT {}",
            K + 4
        ))?;
        for &probe in &probes {
            tx.batch_execute(&format!("SET LOCAL ivfflat.probes = {probe}"))?;
            let (mut lat, found) = timed_top(&mut tx, &stmt, asked)?;
            println!(
                "{name} ({}), probes {probe}: p50 {:.2} ms p99 {:.2} ms; recall@10 {:.3} \
                 in the index's order, {:.3} ranked by the rows' vectors",
                def.split("USING ").nth(1).unwrap_or(def),
                p(&mut lat, 0.5),
                p(&mut lat, 0.99),
                asked.recall(found.ordered),
                asked.recall(found.reranked)
            );
        }
        tx.rollback()?;
    }
    Ok(())
}

/// The `vector` graph against a `halfvec` one over the same rows: each
/// index's own top `K` (no rescoring), recall against exact and latency.
fn half_against_full(sql: &mut postgres::Client, asked: &Asked<'_>) -> Result<()> {
    let (table, row_of_hash) = (asked.table, &asked.row_of_hash);
    let params = IndexParams::default();
    let t = Instant::now();
    sql.batch_execute(&format!(
        "SET maintenance_work_mem = '{}';
         CREATE INDEX IF NOT EXISTS {table}_hnsw16 ON {table}
         USING hnsw ((embedding::halfvec({DIM})) halfvec_cosine_ops)
         WITH (m = {}, ef_construction = {})",
        std::env::var("PG_BUILD_MEMORY").unwrap_or_else(|_| "8GB".into()),
        env_or("PG_M", params.max_nb_connection),
        env_or("PG_EF_CONSTRUCTION", params.ef_construction)
    ))?;
    println!(
        "halfvec index: built (or found) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    sql.batch_execute(&format!(
        "SET hnsw.ef_search = {}",
        env_or("PG_EF_SEARCH", params.ef_search).min(1000)
    ))?;
    for (name, order) in [
        ("vector ", "embedding <=> $1".to_owned()),
        (
            "halfvec",
            format!("embedding::halfvec({DIM}) <=> $1::vector({DIM})::halfvec({DIM})"),
        ),
    ] {
        let stmt = sql.prepare(&format!(
            "SELECT hash FROM {table} ORDER BY {order} LIMIT {K}"
        ))?;
        let (mut lat, found) = timed_top(sql, &stmt, asked)?;
        let size: i64 = sql
            .query_one(
                "SELECT pg_relation_size($1::text::regclass)",
                &[&format!(
                    "{table}_hnsw{}",
                    if name == "halfvec" { "16" } else { "" }
                )],
            )?
            .get(0);
        println!(
            "{name} graph, its own top {K}: p50 {:.2} ms p99 {:.2} ms; recall@10 {:.3}; index {:.0} bytes per vector",
            p(&mut lat, 0.5),
            p(&mut lat, 0.99),
            asked.recall(found.ordered),
            size as f64 / row_of_hash.len() as f64
        );
    }
    Ok(())
}
