//! What paging costs a first page: the daemon's search of `K` hits as
//! before paging (`search`, limit 10) against the first page as now served
//! (`search_page`, cut from a search of `PAGE_BLOCK`), on one graph of the
//! benchmark's 512-d mixture, queries alternating between the two; and the
//! recall@10 of each against exact search.
//!
//! cargo run --release -p dualsight-bench --example page_cost -- <vectors> <queries>

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result};
use dualsight::engine::search::{Query, Rows, search, search_page};
use dualsight::index::IndexParams;
use dualsight_bench::search::{build_index, exact_all};
use dualsight_bench::synth::{DATA, Mixture, TEXT_QUERIES};

const DIM: usize = 512;
const K: usize = 10;

fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are counts"))
        .collect::<Result<_>>()?;
    let [n, nq] = args[..] else {
        anyhow::bail!("usage: page_cost <vectors> <queries>");
    };
    let mix = Mixture::for_size(n, DIM, 42);
    let data = mix.points(DATA, 0, n, 2);
    let idx = build_index(&data, DIM, IndexParams::default())?;
    let queries = mix.points(TEXT_QUERIES, 0, nq, 2);
    let exact: Vec<HashSet<u64>> = exact_all(&data, &queries, DIM, K, 2)
        .into_iter()
        .map(|ids| ids.into_iter().collect())
        .collect();
    let source = Rows {
        data: &data,
        dim: DIM,
    };
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let (mut recall_before, mut recall_after) = (0usize, 0usize);
    for (round, (q, truth)) in queries.chunks_exact(DIM).zip(&exact).enumerate() {
        let query = Query {
            vector: q,
            limit: K,
            min_score: None,
            accept: None,
        };
        // Alternate which runs first, so neither always finds warm caches.
        for first in [round % 2 == 0, round % 2 == 1] {
            let t = Instant::now();
            let hits = if first {
                search(&idx, &source, &query)?
            } else {
                search_page(&idx, &source, &query, 0, K)?
            };
            let secs = t.elapsed().as_secs_f64();
            let found = hits.iter().filter(|(id, _)| truth.contains(id)).count();
            if first {
                before.push(secs);
                recall_before += found;
            } else {
                after.push(secs);
                recall_after += found;
            }
        }
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let (b, a) = (p50(&mut before), p50(&mut after));
    let total = (K * exact.len()) as f64;
    println!(
        "{n} vectors, {nq} text-like queries: search(limit {K}) p50 {b:.3} ms, recall {:.3}; \
         first page p50 {a:.3} ms, recall {:.3}; page/search {:.2}x",
        recall_before as f64 / total,
        recall_after as f64 / total,
        a / b
    );
    Ok(())
}
