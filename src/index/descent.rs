//! Our search over hnsw_rs's graph: a wide descent for queries that lie off
//! the data.
//!
//! hnsw_rs's `search` descends the upper layers greedily, one point per layer,
//! from its single entry point, then widens to `ef` on layer 0 only. That is
//! right for a query drawn like the data (image-to-image), but a text query
//! sits off the image cloud (the modality gap): every query is pulled the same
//! way, the greedy descent ends in whichever region lies that way, and layer 0
//! (whose long links the insert's reverse updates prune first) seldom leads
//! back out, so recall at 1M falls well below 0.95 (BENCHMARKS.md history, the
//! evening run of 2026-11-27).
//!
//! So the descent starts wide instead: every point of the top layers (at
//! least [`POOL`] of them, a sample of the whole collection spread by the
//! level draw) is scored exactly, the best [`UPPER_EF`] seed a beam search on
//! each lower layer, and that beam, not one point, enters layer 0. The graph,
//! its inserts and its files are hnsw_rs's; only the walk is ours, over its
//! public accessors ([`Mirror`] holds the point handles that its
//! `get_point` keeps crate-private).
//!
//! While a batch is being inserted, its points are in hnsw_rs's graph but
//! not yet in the mirror: the walk skips them, and the links they took over
//! from older points, until the batch's refresh. Recall can dip for that
//! long (a 4096-point batch at 1M: a few seconds), never below what the
//! older points still reach.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, PoisonError, RwLock};

use hnsw_rs::prelude::{Distance, Hnsw, Point, PointId};

use super::dist::{DualsightDot, Q8};
use super::read;

/// Top-layer points scored exactly to seed the descent (whole layers above
/// layer 0, from the top down, until at least this many; fewer when the
/// upper layers hold fewer, as in small graphs): a fraction of a millisecond
/// of 8-bit dots. With no upper layers at all (`max_layer` 1), a strided
/// sample of layer 0 instead.
pub const POOL: usize = 1024;
/// Graphs up to this many points are scanned whole: exact, and as fast.
pub const EXACT_MAX: usize = 4 * POOL;
/// Beam width on the layers between the pool and layer 0, and the number of
/// points that enter layer 0: the narrowest width that keeps text-like
/// queries from losing their region at 1M (`bench/examples/descent.rs`;
/// BENCHMARKS.md history, the evening run of 2026-11-27).
pub const UPPER_EF: usize = 128;

type Node = Arc<Point<'static, Q8>>;

/// hnsw_rs's points by layer and rank, as their `PointId`s address them.
/// Each point lives in the list of its top layer only; lists only grow
/// (hnsw_rs never deletes), so a refresh appends what is new.
#[derive(Default)]
pub struct Mirror {
    layers: Vec<Vec<Node>>,
    /// Elements of one stored vector (dimension + scale).
    row: usize,
    /// Which points the pool holds, their handles, and their vectors side by
    /// side (scoring them through their scattered `Point`s cost ~0.6 µs
    /// each in cache misses, ten times the dot product).
    plan: PoolPlan,
    pool_nodes: Vec<Node>,
    pool: Vec<Q8>,
}

/// The pool: whole layers `from` and up, or (`stride` > 1) every
/// `stride`-th point of layer 0; `points` of them. `from` 0 with stride 1
/// is every point: an exact scan.
#[derive(Clone, Copy, Default, PartialEq)]
struct PoolPlan {
    from: usize,
    points: usize,
    stride: usize,
}

impl PoolPlan {
    fn exact(&self) -> bool {
        self.from == 0 && self.stride == 1
    }
}

impl Mirror {
    /// Brings `mirror` up to the points `h` holds now. The new points are
    /// gathered under a read lock, so searches go on meanwhile: hnsw_rs's
    /// layer iterator can only start at a layer's first point, so this walks
    /// past every known one (~10 ms at 1M), once per insert batch.
    pub fn refresh(mirror: &RwLock<Mirror>, h: &Hnsw<'static, Q8, DualsightDot>) {
        let pi = h.get_point_indexation();
        let known: Vec<usize> = read(mirror).layers.iter().map(Vec::len).collect();
        let top = usize::from(pi.get_max_level_observed());
        let fresh: Vec<Vec<Node>> = (0..=top)
            .map(|layer| {
                let have = known.get(layer).copied().unwrap_or(0);
                if pi.get_layer_nb_point(layer) > have {
                    pi.get_layer_iterator(layer).skip(have).collect()
                } else {
                    Vec::new()
                }
            })
            .collect();
        if fresh.iter().all(Vec::is_empty) {
            return;
        }
        let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
        if m.layers.len() < fresh.len() {
            m.layers.resize_with(fresh.len(), Vec::new);
        }
        for ((layer, new), &have) in m
            .layers
            .iter_mut()
            .zip(fresh)
            .zip(known.iter().chain(std::iter::repeat(&0)))
        {
            // Another refresh may have appended some of these meanwhile.
            let skip = layer.len() - have.min(layer.len());
            layer.extend(new.into_iter().skip(skip));
        }
        if m.row == 0 {
            m.row = m
                .layers
                .iter()
                .find_map(|l| l.first())
                .map_or(0, |n| n.get_v().len());
        }
        let plan = m.plan();
        if plan != m.plan {
            let nodes: Vec<Node> = if plan.stride > 1 {
                m.layers[0].iter().step_by(plan.stride).cloned().collect()
            } else {
                m.layers[plan.from..].iter().flatten().cloned().collect()
            };
            let mut pool = Vec::with_capacity(nodes.len() * m.row);
            for n in &nodes {
                pool.extend_from_slice(n.get_v());
            }
            (m.plan, m.pool_nodes, m.pool) = (plan, nodes, pool);
        }
    }

    /// Points held (each lives in one layer's list).
    fn len(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// The pool for the points held now (see [`POOL`], [`EXACT_MAX`]).
    fn plan(&self) -> PoolPlan {
        let len = self.len();
        if len <= EXACT_MAX {
            return PoolPlan {
                from: 0,
                points: len,
                stride: 1,
            };
        }
        let (mut from, mut points) = (self.layers.len(), 0);
        while from > 1 && points < POOL {
            from -= 1;
            points += self.layers[from].len();
        }
        if points > 0 {
            return PoolPlan {
                from,
                points,
                stride: 1,
            };
        }
        let stride = self.layers[0].len().div_ceil(POOL);
        PoolPlan {
            from: 0,
            points: self.layers[0].len().div_ceil(stride),
            stride,
        }
    }

    fn node(&self, p: PointId) -> Option<&Node> {
        let rank = usize::try_from(p.1).ok()?;
        self.layers.get(usize::from(p.0))?.get(rank)
    }

    /// The `k` points nearest to `q` as (id, distance), nearest first; `ef`
    /// is the layer-0 beam width (raised to `k`).
    pub fn search(&self, q: &[Q8], k: usize, ef: usize) -> Vec<(u64, f32)> {
        // A query of another length would be scored misaligned: the caller
        // checks dimensions, so this only guards a graph that disagrees.
        if k == 0 || self.len() == 0 || q.len() != self.row {
            return Vec::new();
        }
        let plan = self.plan;
        let mut scored: Vec<(f32, &Node)> = self
            .pool
            .chunks_exact(self.row)
            .zip(&self.pool_nodes)
            .map(|(v, n)| (DualsightDot.eval(q, v), n))
            .collect();
        let keep = if plan.exact() { k } else { UPPER_EF };
        if scored.len() > keep {
            scored.select_nth_unstable_by(keep, |a, b| a.0.total_cmp(&b.0));
            scored.truncate(keep);
        }
        let mut pool: Vec<Scored> = scored
            .into_iter()
            .map(|(dist, n)| Scored {
                dist,
                node: Arc::clone(n),
            })
            .collect();
        let mut beam = if plan.exact() {
            pool
        } else {
            for layer in (1..plan.from).rev() {
                pool = self.search_layer(q, pool, UPPER_EF, layer);
            }
            self.search_layer(q, pool, ef.max(k), 0)
        };
        best(&mut beam, k);
        beam.into_iter()
            .map(|s| (s.node.get_origin_id() as u64, s.dist))
            .collect()
    }

    /// Best-first search of one layer from `entries`, keeping the `ef`
    /// nearest (HNSW's SEARCH-LAYER); returns them in no particular order.
    fn search_layer(&self, q: &[Q8], entries: Vec<Scored>, ef: usize, layer: usize) -> Vec<Scored> {
        // A filtered search can ask for a beam of thousands; the tables grow
        // as needed, so the first allocation stays small.
        let mut seen: HashSet<(u8, i32), BuildHasherDefault<IdHasher>> =
            HashSet::with_capacity_and_hasher((ef * 32).min(1 << 16), Default::default());
        let mut todo = BinaryHeap::with_capacity((ef * 4).min(1 << 14));
        let mut kept = BinaryHeap::with_capacity((ef + 1).min(1 << 14));
        for s in entries {
            let p = s.node.get_point_id();
            if seen.insert((p.0, p.1)) {
                todo.push(Reverse(s.clone()));
                kept.push(s);
            }
        }
        while kept.len() > ef {
            kept.pop();
        }
        while let Some(Reverse(c)) = todo.pop() {
            if kept.len() >= ef && kept.peek().is_some_and(|w: &Scored| c.dist > w.dist) {
                break;
            }
            // One allocation per expansion: hnsw_rs hands neighbours out by copy.
            let around = c.node.get_neighborhood_id();
            let Some(links) = around.get(layer) else {
                continue;
            };
            for l in links {
                if !seen.insert((l.p_id.0, l.p_id.1)) {
                    continue;
                }
                // A point inserted since the last refresh: not walked this time.
                let Some(node) = self.node(l.p_id) else {
                    continue;
                };
                let dist = DualsightDot.eval(q, node.get_v());
                if kept.len() < ef || kept.peek().is_some_and(|w| dist < w.dist) {
                    let s = Scored {
                        dist,
                        node: Arc::clone(node),
                    };
                    todo.push(Reverse(s.clone()));
                    kept.push(s);
                    if kept.len() > ef {
                        kept.pop();
                    }
                }
            }
        }
        kept.into_vec()
    }
}

/// Keeps the `k` nearest of `v`, nearest first (ties by id).
fn best(v: &mut Vec<Scored>, k: usize) {
    if v.len() > k {
        v.select_nth_unstable(k);
        v.truncate(k);
    }
    v.sort_unstable();
}

/// A point and its distance to the query; ordered nearest first, then by id.
#[derive(Clone)]
struct Scored {
    dist: f32,
    node: Node,
}

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Scored {
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist
            .total_cmp(&o.dist)
            .then(self.node.get_origin_id().cmp(&o.node.get_origin_id()))
    }
}

/// Point ids are small sequential integers: one multiply spreads them over
/// the table's high bits (SipHash cost more than a distance here).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_i32(&mut self, v: i32) {
        self.write_u64(v as u32 as u64);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(26) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
