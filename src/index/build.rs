//! A whole graph built at once from a table of stored vectors, for the
//! rebuilds from the store (compaction, an unreadable checkpoint, a first
//! start on a filled store), which hnsw_rs's insert made several times
//! slower than hnswlib: its layer search allocates an `Arc` per candidate
//! and hashes every visited point (BENCHMARKS.md, session 23).
//!
//! The graph is the kind hnsw_rs's insert makes: each point draws its level
//! from hnsw_rs's distribution, descends greedily to it, and on each layer
//! from there down searches `ef_construction` candidates and keeps hnsw_rs's
//! heuristic selection of them (2·M on layer 0, M above); each chosen
//! neighbour then takes the point into its own list, which keeps its nearest
//! (hnsw_rs's "simple" reverse update). Two differences, neither seen by a
//! search: hnsw_rs also keeps, in a point's lists on the layers above its
//! own level, the point its greedy descent stopped at there (no search
//! reads those lists); and a point drawing a level above the graph's top
//! is linked here to nothing on the new layers until later points reach
//! them (hnsw_rs links it to the entry point, which is not on them). When
//! two such points race, the one that does not become the entry point
//! may stay so (hnswlib holds a global lock for them; here they are a
//! handful, at the start of a build, and linked on their lower layers).
//! It is built in parallel as hnswlib builds: workers claim points in order
//! from a counter and lock one neighbour list at a time, never two.
//! `dump.rs` writes the result as an hnsw_rs dump, which hnsw_rs loads as
//! its own.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use super::dist::{DualsightDot, Q8};
use hnsw_rs::prelude::Distance;

/// Points a worker claims at a time: few enough that the early graph
/// grows in order, many enough that the counter is not contended.
const CLAIM: usize = 16;

/// One link: the neighbour's index in the table and its distance to the
/// point whose list holds it (what hnsw_rs keeps and dumps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub to: u32,
    pub dist: f32,
}

/// A built graph over the table's points, by their index in it.
pub struct Built {
    /// Each point's top layer.
    pub levels: Vec<u8>,
    /// Each point's links on layers `0..=level`, nearest first.
    pub links: Vec<Vec<Vec<Link>>>,
    /// The point search starts from: one on the top layer.
    pub entry: u32,
}

/// The settings a build follows (hnsw_rs's meaning for each), which its
/// dump's description carries too.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub m: usize,
    pub ef_construction: usize,
    /// Layers `0..max_layer`.
    pub max_layer: usize,
}

impl From<super::IndexParams> for Shape {
    fn from(p: super::IndexParams) -> Shape {
        Shape {
            m: p.max_nb_connection,
            ef_construction: p.ef_construction,
            max_layer: p.max_layer,
        }
    }
}

impl Shape {
    /// The most links a point keeps on `layer`.
    fn width(&self, layer: usize) -> usize {
        if layer == 0 { 2 * self.m } else { self.m }
    }

    /// hnsw_rs's level scale, `1 / ln M`: a point reaches layer `l` with
    /// probability `M^-l`.
    fn level_scale(&self) -> f64 {
        1.0 / (self.m as f64).ln()
    }
}

/// Stored vectors and their ids, by index.
pub trait Table: Sync {
    fn len(&self) -> usize;
    /// Bytes of every stored vector.
    fn dim(&self) -> usize;
    fn row(&self, p: usize) -> &[Q8];
    fn id(&self, p: usize) -> u64;
}

/// A table of its own: ids, and their vectors end to end.
pub struct Rows {
    pub dim: usize,
    pub ids: Vec<u64>,
    pub vectors: Vec<Q8>,
}

impl Table for Rows {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn row(&self, p: usize) -> &[Q8] {
        &self.vectors[p * self.dim..(p + 1) * self.dim]
    }

    fn id(&self, p: usize) -> u64 {
        self.ids[p]
    }
}

/// The graph over `table`, built on the current rayon pool's threads.
/// `seed` fixes the levels; the links depend on the order the threads take
/// points in, as in any parallel HNSW build.
pub fn build<T: Table>(table: &T, shape: Shape, seed: u64) -> Built {
    let n = table.len();
    let levels: Vec<u8> = (0..n as u64).map(|i| level(shape, seed, i)).collect();
    if n == 0 {
        return Built {
            levels,
            links: Vec::new(),
            entry: 0,
        };
    }
    let graph = Graph {
        table,
        shape,
        links: levels
            .iter()
            .map(|&l| (0..=l).map(|_| Mutex::new(Vec::new())).collect())
            .collect(),
        entry: RwLock::new((0, levels[0])),
        levels: &levels,
    };
    let next = AtomicUsize::new(1);
    let threads = rayon::current_num_threads().max(1);
    let scratch = Mutex::new(Vec::new());
    rayon::scope(|s| {
        for _ in 0..threads {
            s.spawn(|_| {
                let mut mine = scratch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop()
                    .unwrap_or_else(|| Scratch::new(n));
                loop {
                    let from = next.fetch_add(CLAIM, Ordering::Relaxed);
                    if from >= n {
                        break;
                    }
                    for p in from..(from + CLAIM).min(n) {
                        graph.insert(p as u32, &mut mine);
                    }
                }
                scratch
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(mine);
            });
        }
    });
    let entry = graph.entry.read().unwrap_or_else(PoisonError::into_inner).0;
    let links = graph
        .links
        .into_iter()
        .map(|layers| {
            layers
                .into_iter()
                .map(|l| l.into_inner().unwrap_or_else(PoisonError::into_inner))
                .collect()
        })
        .collect();
    Built {
        levels,
        links,
        entry,
    }
}

/// Point `i`'s level: hnsw_rs's draw, `floor(-ln(u) / ln M)`, with a level
/// past the top redrawn uniformly below it as hnsw_rs does; `u` comes from
/// a hash of the seed and the index, so a build is the same whatever the
/// threads.
fn level(shape: Shape, seed: u64, i: u64) -> u8 {
    let top = shape.max_layer.clamp(1, usize::from(u8::MAX));
    let h = mix(seed ^ mix(i));
    // 53 random bits in (0, 1): never 0, whose logarithm is infinite.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let l = (-u.ln() * shape.level_scale()).floor();
    if l < top as f64 {
        l as u8
    } else {
        (mix(h) % top as u64) as u8
    }
}

/// SplitMix64's finaliser: a well-spread hash of a counter.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The graph while it is built.
struct Graph<'a, T> {
    table: &'a T,
    shape: Shape,
    levels: &'a [u8],
    /// By point and layer, each list nearest first.
    links: Vec<Box<[Mutex<Vec<Link>>]>>,
    /// The entry point and its level.
    entry: RwLock<(u32, u8)>,
}

/// A worker's reusable search state.
struct Scratch {
    /// A point was visited by this search when its stamp is `stamp`.
    seen: Vec<u32>,
    stamp: u32,
    /// Min-heap of candidates to expand and max-heap of the best found,
    /// keyed by [`key`].
    todo: BinaryHeap<std::cmp::Reverse<u64>>,
    best: BinaryHeap<u64>,
    /// A copy of the list being expanded (its lock is not held meanwhile).
    list: Vec<u32>,
}

impl Scratch {
    fn new(n: usize) -> Scratch {
        Scratch {
            seen: vec![0; n],
            stamp: 0,
            todo: BinaryHeap::new(),
            best: BinaryHeap::new(),
            list: Vec::new(),
        }
    }

    /// Starts a new search: every point unvisited.
    fn clear(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.fill(0);
            self.stamp = 1;
        }
        self.todo.clear();
        self.best.clear();
    }

    /// Marks `p` visited; false when it already was.
    fn visit(&mut self, p: u32) -> bool {
        let s = &mut self.seen[p as usize];
        let fresh = *s != self.stamp;
        *s = self.stamp;
        fresh
    }
}

/// A distance and a point in one sortable word: distances are never
/// negative (`DualsightDot` clamps at 0), and non-negative floats order as
/// their bits do.
fn key(dist: f32, p: u32) -> u64 {
    (u64::from(dist.to_bits()) << 32) | u64::from(p)
}

fn unkey(k: u64) -> Link {
    Link {
        to: k as u32,
        dist: f32::from_bits((k >> 32) as u32),
    }
}

impl<T: Table> Graph<'_, T> {
    fn row(&self, p: u32) -> &[Q8] {
        self.table.row(p as usize)
    }

    fn dist(&self, a: &[Q8], p: u32) -> f32 {
        DualsightDot.eval(a, self.row(p))
    }

    fn list(&self, p: u32, layer: usize) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links[p as usize][layer]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies `p`'s links on `layer` into `out`, holding the lock no longer.
    fn read_list(&self, p: u32, layer: usize, out: &mut Vec<u32>) {
        out.clear();
        out.extend(self.list(p, layer).iter().map(|l| l.to));
    }

    fn insert(&self, p: u32, s: &mut Scratch) {
        let level = usize::from(self.levels[p as usize]);
        let (mut ep, top) = *self.entry.read().unwrap_or_else(PoisonError::into_inner);
        let top = usize::from(top);
        let q = self.row(p);
        let mut ep_dist = self.dist(q, ep);
        // Greedy through the layers above the point's own.
        for layer in (level + 1..=top).rev() {
            loop {
                self.read_list(ep, layer, &mut s.list);
                let before = ep;
                for i in 0..s.list.len() {
                    let c = s.list[i];
                    let d = self.dist(q, c);
                    if d < ep_dist {
                        (ep, ep_dist) = (c, d);
                    }
                }
                if ep == before {
                    break;
                }
            }
        }
        for layer in (0..=level.min(top)).rev() {
            let found = self.search(q, ep, ep_dist, layer, s);
            let chosen = self.select(&found, self.shape.width(layer));
            if let Some(first) = chosen.first() {
                (ep, ep_dist) = (first.to, first.dist);
            }
            *self.list(p, layer) = chosen.clone();
            for c in chosen {
                self.link_back(
                    c.to,
                    layer,
                    Link {
                        to: p,
                        dist: c.dist,
                    },
                );
            }
        }
        if level > top {
            let mut entry = self.entry.write().unwrap_or_else(PoisonError::into_inner);
            if level > usize::from(entry.1) {
                *entry = (p, level as u8);
            }
        }
    }

    /// The `ef_construction` nearest points to `q` on `layer` that a best-first
    /// search from `ep` finds, nearest first.
    fn search(&self, q: &[Q8], ep: u32, ep_dist: f32, layer: usize, s: &mut Scratch) -> Vec<Link> {
        let ef = self.shape.ef_construction.max(1);
        s.clear();
        s.visit(ep);
        s.todo.push(std::cmp::Reverse(key(ep_dist, ep)));
        s.best.push(key(ep_dist, ep));
        while let Some(std::cmp::Reverse(c)) = s.todo.pop() {
            let worst = *s.best.peek().expect("never empty");
            if c > worst && s.best.len() >= ef {
                break;
            }
            self.read_list(unkey(c).to, layer, &mut s.list);
            for i in 0..s.list.len() {
                let e = s.list[i];
                if !s.visit(e) {
                    continue;
                }
                let k = key(self.dist(q, e), e);
                if s.best.len() < ef || k < *s.best.peek().expect("never empty") {
                    s.todo.push(std::cmp::Reverse(k));
                    s.best.push(k);
                    if s.best.len() > ef {
                        s.best.pop();
                    }
                }
            }
        }
        let mut found: Vec<u64> = s.best.drain().collect();
        found.sort_unstable();
        found.into_iter().map(unkey).collect()
    }

    /// hnsw_rs's heuristic: nearest first, a candidate is kept unless it is
    /// at least as close to one already kept as to the point; at most
    /// `width`. With no more candidates than `width`, all of them.
    fn select(&self, found: &[Link], width: usize) -> Vec<Link> {
        if found.len() <= width {
            return found.to_vec();
        }
        let mut kept: Vec<Link> = Vec::with_capacity(width);
        for &e in found {
            if kept.len() == width {
                break;
            }
            let v = self.row(e.to);
            if !kept.iter().any(|k| self.dist(v, k.to) <= e.dist) {
                kept.push(e);
            }
        }
        kept
    }

    /// `to` takes `link` into its list on `layer`, which keeps its nearest
    /// (hnsw_rs's reverse update, without a new selection).
    fn link_back(&self, to: u32, layer: usize, link: Link) {
        let width = self.shape.width(layer);
        let mut list = self.list(to, layer);
        if list.iter().any(|l| l.to == link.to) {
            return;
        }
        let at = list.partition_point(|l| key(l.dist, l.to) < key(link.dist, link.to));
        if at < width {
            list.insert(at, link);
            list.truncate(width);
        }
    }
}
