//! hnsw_rs's own search against ours (`index/descent.rs`) on one graph:
//! recall@10 (against f32 exact search) of the candidates a daemon search
//! fetches, queries that found
//! none of their true neighbours, and time per search, for text-like
//! (off the data) and image-like queries of `dualsight-bench`'s mixture.
//!
//! cargo run --release -p dualsight-bench --example descent -- <vectors> <queries> <ef>...
//!
//! At 1M the build takes ~30–55 min on 2 cores.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result};
use dualsight::engine::search::candidates_for;
use dualsight::index::IndexParams;
use dualsight_bench::search::{build_index, exact_all};
use dualsight_bench::synth::{DATA, Mixture, QUERIES, TEXT_QUERIES};

const DIM: usize = 512;
const K: usize = 10;

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are counts"))
        .collect::<Result<_>>()?;
    let [n, nq, ref efs @ ..] = args[..] else {
        anyhow::bail!("usage: descent <vectors> <queries> <ef>...");
    };
    let mix = Mixture::for_size(n, DIM, 42);
    let data = mix.points(DATA, 0, n, 2);
    let t = Instant::now();
    let idx = build_index(&data, DIM, IndexParams::default())?;
    println!("{n} vectors: build {:.0} s", t.elapsed().as_secs_f64());
    let fetch = candidates_for(K);
    for (kind, stream) in [("text-like", TEXT_QUERIES), ("image-like", QUERIES)] {
        let queries = mix.points(stream, 0, nq, 2);
        let exact: Vec<HashSet<u64>> = exact_all(&data, &queries, DIM, K, 2)
            .into_iter()
            .map(HashSet::from_iter)
            .collect();
        for &ef in efs {
            idx.set_ef_search(ef)?;
            for ours in [false, true] {
                let t = Instant::now();
                let (mut found, mut lost) = (0, 0);
                for (q, want) in queries.chunks_exact(DIM).zip(&exact) {
                    let got = if ours {
                        idx.search(q, fetch)?
                    } else {
                        idx.hnsw_rs_search(q, fetch)?
                    };
                    let hits = got.iter().filter(|h| want.contains(&h.0)).count();
                    found += hits;
                    lost += usize::from(hits == 0);
                }
                let ms = t.elapsed().as_secs_f64() * 1e3 / nq as f64;
                println!(
                    "{kind} ef {ef} {}: recall@{K} of {fetch} candidates {:.3}, {lost} of {nq} found none, {ms:.2} ms/search",
                    if ours { "ours   " } else { "hnsw_rs" },
                    found as f64 / (K * nq) as f64
                );
            }
        }
    }
    Ok(())
}
