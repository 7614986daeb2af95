//! Where a first page of a text query's search goes at `n` vectors, through
//! the real store (sled + vector segments) and index, without the towers or
//! gRPC: the HNSW walk for the page's candidates, their rescoring (each
//! candidate's vector read back), the paths of the page's hits, each shown
//! hit's file record, and the whole page as the daemon serves it (`search_page` + the
//! records). The store and index are the restart benchmark's (the same
//! 512-d mixture and synthetic paths).
//!
//! cargo run --release -p dualsight-bench --example search_stages -- <dir> <vectors> <queries>
//!
//! `dir` is kept: a later run of the same size reuses its store and index
//! checkpoint instead of building them again (at 1M the build is ~25 min).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dualsight::engine::search::{self, Candidates, Query, VectorSource};
use dualsight::index::{IndexParams, VectorIndex};
use dualsight::store::{Commit, Store};
use dualsight_bench::restart::synthetic_commit;
use dualsight_bench::search::build_index;
use dualsight_bench::synth::{DATA, Mixture, TEXT_QUERIES};

const DIM: usize = 512;
const PAGE: usize = 10;
const FINGERPRINT: &str = "search-stages";
const FILL_CHUNK: usize = 4096;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, n, nq] = &args[..] else {
        bail!("usage: search_stages <dir> <vectors> <queries>");
    };
    let dir = PathBuf::from(dir);
    let n: usize = n.parse().context("vectors")?;
    let nq: usize = nq.parse().context("queries")?;
    let mix = Mixture::for_size(n, DIM, 42);
    let index_dir = dir.join("index");
    if !dir.join("built").exists() {
        if dir.exists() {
            bail!("{}: exists but was not finished; remove it", dir.display());
        }
        build(&dir, &mix, n)?;
    }
    let store = Store::open(dir.join("store"))?;
    let space = store.space(FINGERPRINT, DIM)?;
    let t = Instant::now();
    let (index, _) =
        VectorIndex::load(&index_dir, FINGERPRINT, DIM)?.context("no index checkpoint")?;
    index.wait_until_loaded();
    eprintln!("index loaded in {:.1} s", t.elapsed().as_secs_f64());

    let queries = mix.points(TEXT_QUERIES, 0, 2 * nq, 2);
    let fetch = search::candidates_for(search::PAGE_BLOCK);
    // Per pass: the first meets the store's caches as a new query does, the
    // second as the same query repeated (the daemon's cached-text figure).
    let mut stages: [[Vec<f64>; 5]; 2] = Default::default();
    for (round, q) in queries.chunks_exact(DIM).enumerate() {
        // Even queries go stage by stage, odd ones as the daemon serves
        // them, so that each first pass meets caches as a new query would.
        let staged = round % 2 == 0;
        for stages in stages.iter_mut() {
            if !staged {
                let t = Instant::now();
                let query = Query {
                    vector: q,
                    limit: PAGE,
                    min_score: None,
                    accept: None,
                };
                let page = search::search_page(&index, &space, &query, 0, PAGE)?;
                for (p, _) in &page {
                    store.file_at(None, &p.to_string_lossy())?;
                }
                stages[4].push(t.elapsed().as_secs_f64() * 1e3);
                if page.len() != PAGE.min(n) {
                    bail!("query {round}: {} hits", page.len());
                }
                continue;
            }
            let t = Instant::now();
            let found = index.candidates(q, fetch)?;
            let walk = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut keys = Vec::with_capacity(found.len());
            for &id in &found {
                if let Some(e) = VectorSource::vector(&space, id)? {
                    keys.push(e.key);
                }
            }
            let rescore = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut paths = Vec::new();
            for key in &keys {
                if paths.len() >= PAGE {
                    break;
                }
                paths.extend(space.items(key)?);
            }
            let items = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for p in paths.iter().take(PAGE) {
                store.file_at(None, &p.to_string_lossy())?;
            }
            let records = t.elapsed().as_secs_f64();
            for (s, v) in stages.iter_mut().zip([walk, rescore, items, records]) {
                s.push(v * 1e3);
            }
        }
    }
    for (pass, stages) in ["new query", "repeated"].into_iter().zip(stages) {
        println!("{pass}:");
        for (name, mut v) in [
            "walk (candidates)",
            "rescoring reads",
            "paths of the page",
            "records of 10 hits",
            "page as served",
        ]
        .into_iter()
        .zip(stages)
        {
            v.sort_by(f64::total_cmp);
            println!(
                "{name:>20}: p50 {:.3} ms, p90 {:.3} ms",
                v[v.len() / 2],
                v[v.len() * 9 / 10]
            );
        }
    }
    Ok(())
}

/// The store filled as the restart benchmark fills it, and the index
/// checkpoint a clean shutdown leaves; `built` marks them complete.
fn build(dir: &std::path::Path, mix: &Mixture, n: usize) -> Result<()> {
    let data = mix.points(DATA, 0, n, 2);
    let store = Store::open(dir.join("store"))?;
    let space = store.space(FINGERPRINT, DIM)?;
    store.set_active(FINGERPRINT)?;
    let t = Instant::now();
    for (c, chunk) in data.chunks(FILL_CHUNK * DIM).enumerate() {
        let items: Vec<Commit> = chunk
            .chunks_exact(DIM)
            .enumerate()
            .map(|(i, v)| synthetic_commit(c * FILL_CHUNK + i, v))
            .collect();
        store.commit(&space, &items)?;
    }
    eprintln!("store filled in {:.0} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let index = build_index(&data, DIM, IndexParams::default())?;
    eprintln!("index built in {:.0} s", t.elapsed().as_secs_f64());
    index.checkpoint(&dir.join("index"), FINGERPRINT, n as u64)?;
    std::fs::write(dir.join("built"), b"")?;
    Ok(())
}
