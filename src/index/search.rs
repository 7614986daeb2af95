//! Searching the index: our walk over hnsw_rs's graph, the exact scan while
//! a graph loads or past many tombstones, and the top-k order both return.
//! The routine above it (rescoring, filters, widening) is
//! [`crate::engine::search`].

use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;

use hnsw_rs::prelude::Distance;

use super::*;

/// Cosine score of an HNSW distance (`1 - cos` of the stored bytes, at least 0).
pub(super) fn score_of(distance: f32) -> f32 {
    1.0 - distance
}

impl VectorIndex {
    /// The `k` live vectors nearest to `query`, as (id, cosine) by score
    /// descending: the candidates of [`crate::engine::search`], which owns
    /// rescoring, filters and widening.
    ///
    /// Tombstones are skipped on an over-fetched plain graph walk
    /// (`k / live fraction`), widened 4× while too few come back, and
    /// replaced by an exact scan once the walk would cost more than scanning
    /// (about `ef·2M` distance evaluations against the graph size).
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>> {
        let q = self.normalised(query)?;
        if k == 0 {
            return Ok(Vec::new());
        }
        let ids = read(&self.ids);
        let live = ids.live();
        if live == 0 {
            return Ok(Vec::new());
        }
        let ef = self.ef_search.load(Ordering::Relaxed).max(k);
        let accept = |id: u64| !ids.tombstones.contains(&id);
        if self.is_warming() {
            return Ok(self.scan(&q, k, &accept));
        }
        if ids.tombstones.is_empty() {
            return Ok(self.walk(&q, k, ef));
        }
        if live <= EXACT_SCAN_MAX {
            return Ok(self.scan(&q, k, &accept));
        }
        let points = ids.present.len();
        let fraction = live as f64 / points as f64;
        let walk_cost = |fetch: usize| {
            fetch
                .max(ef)
                .saturating_mul(2 * self.params.max_nb_connection)
        };
        let mut fetch = (k as f64 / fraction * 1.5).ceil() as usize + 8;
        while fetch < points && walk_cost(fetch) < points {
            let hits: Vec<(u64, f32)> = self
                .walk(&q, fetch, fetch.max(ef))
                .into_iter()
                .filter(|(id, _)| accept(*id))
                .take(k)
                .collect();
            if hits.len() == k {
                return Ok(hits);
            }
            fetch = fetch.saturating_mul(4);
        }
        Ok(self.scan(&q, k, &accept))
    }

    /// Graph search ([`descent`]), best first.
    fn walk(&self, q: &[Q8], knbn: usize, ef: usize) -> Vec<(u64, f32)> {
        // Waits for a loading graph: its loader fills the mirror first.
        self.graph();
        sorted(
            read(&self.mirror)
                .search(q, knbn, ef)
                .into_iter()
                .map(|(id, d)| (id, score_of(d)))
                .collect(),
        )
    }

    /// hnsw_rs's own search (greedy through the upper layers, then `ef` on
    /// layer 0) over the whole graph, tombstones included: only for
    /// comparing it with ours (`bench/examples/descent.rs`).
    pub fn hnsw_rs_search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>> {
        let q = self.normalised(query)?;
        let ef = self.ef_search.load(Ordering::Relaxed).max(k);
        Ok(sorted(
            self.graph()
                .search(&q, k, ef)
                .into_iter()
                .map(|n| (n.d_id as u64, score_of(n.distance)))
                .collect(),
        ))
    }

    /// Brute force over every live vector: exact top `k` (recall checks,
    /// small indexes).
    pub fn exact_search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>> {
        let q = self.normalised(query)?;
        let ids = read(&self.ids);
        Ok(self.scan(&q, k, &|id| !ids.tombstones.contains(&id)))
    }

    fn scan(&self, q: &[Q8], k: usize, accept: &(dyn Fn(u64) -> bool + Sync)) -> Vec<(u64, f32)> {
        if k == 0 {
            return Vec::new();
        }
        // While the graph loads, the flat table holds every point.
        if let Some(flat) = read(&self.warm).clone() {
            return flat.scan(q, k, accept);
        }
        let graph = self.graph();
        if graph.get_nb_point() == 0 {
            return Vec::new();
        }
        let mut top = TopK::new(k);
        each_point(graph, |id, v| {
            if accept(id) {
                top.offer(id, score_of(DualsightDot.eval(q, v)));
            }
            true
        });
        top.into_sorted()
    }
}

/// Score-then-id order so equal scores come back in a stable order.
#[derive(Clone, Copy, PartialEq)]
struct Hit {
    score: f32,
    id: u64,
}

impl Eq for Hit {}

impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Hit {
    /// Greater = better: higher score, then lower id.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.id.cmp(&self.id))
    }
}

pub(super) fn sorted(mut v: Vec<(u64, f32)>) -> Vec<(u64, f32)> {
    v.sort_by(|a, b| {
        Hit {
            id: b.0,
            score: b.1,
        }
        .cmp(&Hit {
            id: a.0,
            score: a.1,
        })
    });
    v
}

/// The best `k` (id, score) offered, kept in a min-heap (worst on top).
pub(super) struct TopK {
    k: usize,
    heap: BinaryHeap<std::cmp::Reverse<Hit>>,
}

impl TopK {
    pub(super) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k + 1),
        }
    }

    pub(super) fn offer(&mut self, id: u64, score: f32) {
        let hit = Hit { score, id };
        if self.heap.len() < self.k {
            self.heap.push(std::cmp::Reverse(hit));
        } else if self.heap.peek().is_some_and(|w| hit > w.0) {
            self.heap.pop();
            self.heap.push(std::cmp::Reverse(hit));
        }
    }

    pub(super) fn into_sorted(self) -> Vec<(u64, f32)> {
        sorted(self.heap.into_iter().map(|r| (r.0.id, r.0.score)).collect())
    }
}
