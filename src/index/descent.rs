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
//! The walk reads the graph from a copy of its links in flat arrays: every
//! point gets a dense index in the order it arrived, layer 0's links are
//! one fixed-width row of dense indices per point, the visited set is a
//! stamp per point, and each vector is read where hnsw_rs stores it through
//! a pointer kept beside the row. hnsw_rs hands neighbours out only as a
//! fresh copy of all sixteen layer lists under a lock (~1 µs an
//! expansion) and each point is three pointer hops from its vector, which
//! made the walk several times hnswlib's time per visited point.
//!
//! The copy is brought up to date ([`Mirror::refresh`]) with the new
//! points' links, and those of their neighbours (the only lists an insert
//! changes, by its reverse updates). A neighbour an insert linked and a
//! later insert of the same refresh unlinked again is missed until the next
//! full re-read, which comes each time the graph has doubled since the last
//! (and at every load), so the copy never drifts far.
//!
//! hnsw_rs hands out its new points only by iterating a layer from its
//! first point (an `Arc` clone each), so a refresh costs a pass over the
//! whole of layer 0. Refreshing after every insert batch made a first
//! indexing quadratic: at 300k points a third of the committer's time.
//! So inserted points first join a tail ([`Mirror::inserted`]) that every
//! walk scores exactly, and the copy is refreshed once the tail holds
//! [`TAIL_SHARE`]th of the copy (at most [`TAIL_MAX`] points): about 256
//! `Arc` clones per insert, and a new photo is found from the moment its
//! batch is in. While a batch is being inserted its points are in hnsw_rs's
//! graph but in neither: the walk sees them once the batch is in.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

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
/// Points whose links one refresh step re-reads before it applies them, so
/// that a full re-read at 1M holds a small copy at a time.
const RELINK_CHUNK: usize = 4096;
/// The tail is refreshed into the copy once it holds this share of the
/// copy's points (see the module notes)...
pub const TAIL_SHARE: usize = 256;
/// ... or this many, whichever is fewer: the tail's exact scan stays a small
/// part of a query (4096 8-bit rows).
pub const TAIL_MAX: usize = 4096;
/// Points per block of layer-0 link rows: the rows grow a block at a time,
/// never by copying the whole table into one twice its size.
const BLOCK: usize = 1024;

type Node = Arc<Point<'static, Q8>>;

/// Where a point's stored vector lives: inside its hnsw_rs `Point`, which
/// the same mirror keeps alive in `nodes` (hnsw_rs never frees or moves a
/// point's data). Null when the point's vector had another length.
#[derive(Clone, Copy)]
struct VecPtr(*const Q8);

// SAFETY: the pointer is only read through, as a shared slice of data that
// nothing mutates, while the mirror holding its `Arc<Point>` is borrowed.
unsafe impl Send for VecPtr {}
// SAFETY: as above; shared reads from many threads are what the data
// allows.
unsafe impl Sync for VecPtr {}

/// The copy of hnsw_rs's graph the walk reads (see the module notes).
#[derive(Default)]
pub struct Mirror {
    /// Dense index of each point, by hnsw_rs layer and rank (each point is
    /// listed in its top layer only, as `PointId` addresses it).
    dense: Vec<Vec<u32>>,
    /// By dense index: the point, and its vector.
    nodes: Vec<Node>,
    vecs: Vec<VecPtr>,
    /// Elements of one stored vector (its dimension).
    row: usize,
    /// Layer 0's links: `stride` u32 per point, the count then the dense
    /// indices (hnsw_rs keeps at most 2·M there), in blocks of [`BLOCK`]
    /// points.
    stride: usize,
    links: Vec<Box<[u32]>>,
    /// The links above layer 0 (entry `l - 1` for layer `l`), by dense index.
    upper: Vec<HashMap<u32, Box<[u32]>>>,
    /// Points when every point's links were last re-read.
    relinked: usize,
    /// Which points the pool holds, their dense indices, and their vectors
    /// side by side.
    plan: PoolPlan,
    pool_points: Vec<u32>,
    pool: Vec<Q8>,
    /// Visited tables, one per search in flight, reused.
    visited: Mutex<Vec<Visited>>,
    /// Points inserted since the last refresh: their ids, and their vectors
    /// row after row (see the module notes).
    tail_ids: Vec<u64>,
    tail: Vec<Q8>,
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

/// One point's links as dense indices: entry `l` for layer `l`.
type Links = Vec<Vec<u32>>;

impl Mirror {
    /// Records points just inserted into `h` (ids with their stored
    /// vectors): they join the tail, and the copy is refreshed once the tail
    /// is due ([`TAIL_SHARE`], [`TAIL_MAX`]). Callers serialise it with
    /// [`Mirror::refresh`].
    pub fn inserted(
        mirror: &RwLock<Mirror>,
        h: &Hnsw<'static, Q8, DualsightDot>,
        points: &[(u64, Vec<Q8>)],
    ) {
        let due = {
            let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
            let limit = (m.len() / TAIL_SHARE).min(TAIL_MAX);
            // An empty copy has no row width yet: it is refreshed at once.
            if m.row == 0 || m.tail_ids.len() + points.len() > limit {
                true
            } else {
                let row = m.row;
                for (id, v) in points.iter().filter(|(_, v)| v.len() == row) {
                    m.tail_ids.push(*id);
                    m.tail.extend_from_slice(v);
                }
                false
            }
        };
        if due {
            Self::refresh(mirror, h);
        }
    }

    /// Brings `mirror` up to the graph `h` holds now: appends the new
    /// points, then re-reads the links that can have changed (every point's
    /// when the graph has doubled since the last full re-read). The reading
    /// is done under a read lock, so searches go on meanwhile. Callers
    /// serialise refreshes (the index's writer lock, or the load before the
    /// graph is published).
    pub fn refresh(mirror: &RwLock<Mirror>, h: &Hnsw<'static, Q8, DualsightDot>) {
        let pi = h.get_point_indexation();
        let (known, old) = {
            let m = read(mirror);
            let known: Vec<usize> = m.dense.iter().map(Vec::len).collect();
            (known, m.nodes.len())
        };
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
        let added: usize = fresh.iter().map(Vec::len).sum();
        if added == 0 {
            mirror
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear_tail();
            return;
        }
        let stride = 1 + 2 * usize::from(h.get_max_nb_connection());
        let full = {
            let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
            m.append(fresh, stride);
            m.nodes.len() >= 2 * m.relinked
        };
        // Whose links to re-read: everyone's, or the new points' and then
        // their neighbours' (on the new points' own layers: the lists their
        // inserts' reverse updates touched).
        let todo: Vec<u32> = if full {
            (0..(old + added) as u32).collect()
        } else {
            let new: Vec<(u32, Links)> = {
                let m = read(mirror);
                (old as u32..(old + added) as u32)
                    .map(|d| (d, m.links_of(d)))
                    .collect()
            };
            let mut todo: Vec<u32> = new
                .iter()
                .flat_map(|(_, links)| links.iter().flatten().copied())
                .filter(|&d| (d as usize) < old)
                .collect();
            todo.sort_unstable();
            todo.dedup();
            let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
            for (d, links) in new {
                m.set_links(d, links);
            }
            todo
        };
        for chunk in todo.chunks(RELINK_CHUNK) {
            let read_links: Vec<(u32, Links)> = {
                let m = read(mirror);
                chunk.iter().map(|&d| (d, m.links_of(d))).collect()
            };
            let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
            for (d, links) in read_links {
                m.set_links(d, links);
            }
        }
        let mut m = mirror.write().unwrap_or_else(PoisonError::into_inner);
        if full {
            m.relinked = m.nodes.len();
        }
        // Only now: until the new points' neighbours are relinked, the walk
        // may not reach them, and the tail still finds them (a point in both
        // is returned once, see `search`).
        m.clear_tail();
    }

    fn clear_tail(&mut self) {
        self.tail_ids.clear();
        self.tail.clear();
        // A refresh at 1M empties up to TAIL_MAX rows; keep that room
        // rather than regrow it, but give back a large one-off batch's.
        if self.tail.capacity() > 2 * TAIL_MAX * self.row.max(1) {
            self.tail_ids.shrink_to(TAIL_MAX);
            self.tail.shrink_to(TAIL_MAX * self.row);
        }
    }

    /// Points waiting in the tail.
    #[cfg(test)]
    pub fn tail_len(&self) -> usize {
        self.tail_ids.len()
    }

    /// Gives the new points dense indices, their vectors' places and empty
    /// link rows, and recomputes the pool.
    fn append(&mut self, fresh: Vec<Vec<Node>>, stride: usize) {
        if self.stride == 0 {
            self.stride = stride;
        }
        if self.row == 0 {
            self.row = fresh
                .iter()
                .find_map(|l| l.first())
                .map_or(0, |n| n.get_v().len());
        }
        if self.dense.len() < fresh.len() {
            self.dense.resize_with(fresh.len(), Vec::new);
        }
        for (layer, new) in fresh.into_iter().enumerate() {
            for n in new {
                let d = self.nodes.len() as u32;
                self.dense[layer].push(d);
                let v = n.get_v();
                self.vecs.push(VecPtr(if v.len() == self.row {
                    v.as_ptr()
                } else {
                    std::ptr::null()
                }));
                self.nodes.push(n);
            }
        }
        while self.links.len() * BLOCK < self.nodes.len() {
            self.links
                .push(vec![0; BLOCK * self.stride].into_boxed_slice());
        }
        let plan = self.plan();
        if plan != self.plan {
            let points: Vec<u32> = if plan.stride > 1 {
                self.dense[0].iter().step_by(plan.stride).copied().collect()
            } else {
                self.dense[plan.from..].iter().flatten().copied().collect()
            };
            // Points of another length are never scored, so not pooled.
            let points: Vec<u32> = points
                .into_iter()
                .filter(|&d| self.vec(d).is_some())
                .collect();
            let mut pool = Vec::with_capacity(points.len() * self.row);
            for v in points.iter().filter_map(|&d| self.vec(d)) {
                pool.extend_from_slice(v);
            }
            (self.plan, self.pool_points, self.pool) = (plan, points, pool);
        }
    }

    /// The dense index of the point hnsw_rs calls `p`, if the mirror has it.
    fn dense_of(&self, p: PointId) -> Option<u32> {
        let rank = usize::try_from(p.1).ok()?;
        self.dense.get(usize::from(p.0))?.get(rank).copied()
    }

    /// Point `d`'s links now, as dense indices (neighbours the mirror does
    /// not hold yet are left out).
    fn links_of(&self, d: u32) -> Links {
        let node = &self.nodes[d as usize];
        // hnsw_rs lists every possible layer, and above a point's own level
        // keeps the entry points its insert passed: links no walk follows,
        // since only points of a layer are ever reached on it.
        let level = usize::from(node.get_point_id().0);
        node.get_neighborhood_id()
            .iter()
            .take(level + 1)
            .map(|layer| layer.iter().filter_map(|n| self.dense_of(n.p_id)).collect())
            .collect()
    }

    fn set_links(&mut self, d: u32, links: Links) {
        let mut layers = links.into_iter();
        let zero = layers.next().unwrap_or_default();
        let (block, at) = (d as usize / BLOCK, d as usize % BLOCK * self.stride);
        let row = &mut self.links[block][at..at + self.stride];
        let n = zero.len().min(self.stride - 1);
        row[0] = n as u32;
        row[1..=n].copy_from_slice(&zero[..n]);
        for (i, l) in layers.enumerate() {
            if l.is_empty() {
                if let Some(map) = self.upper.get_mut(i) {
                    map.remove(&d);
                }
                continue;
            }
            if self.upper.len() <= i {
                self.upper.resize_with(i + 1, HashMap::new);
            }
            self.upper[i].insert(d, l.into_boxed_slice());
        }
    }

    /// Point `d`'s links on `layer`.
    fn links(&self, d: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let (block, at) = (d as usize / BLOCK, d as usize % BLOCK * self.stride);
            let row = &self.links[block][at..at + self.stride];
            &row[1..1 + row[0] as usize]
        } else {
            self.upper
                .get(layer - 1)
                .and_then(|m| m.get(&d))
                .map_or(&[], |l| l)
        }
    }

    /// Point `d`'s stored vector (`None` for one of another length).
    fn vec(&self, d: u32) -> Option<&[Q8]> {
        let p = self.vecs.get(d as usize)?.0;
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` points at the `row` elements of `nodes[d]`'s vector
        // (checked when it was appended), which that `Arc` keeps alive and
        // unchanged for as long as `self` is borrowed.
        Some(unsafe { std::slice::from_raw_parts(p, self.row) })
    }

    /// Heap bytes of the copy (capacities; hash tables by their entries).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let upper: usize = self
            .upper
            .iter()
            .map(|m| {
                m.capacity() * (size_of::<u32>() + size_of::<Box<[u32]>>() + 1)
                    + m.values().map(|l| l.len() * 4).sum::<usize>()
            })
            .sum();
        let visited: usize = self
            .visited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|v| v.stamps.capacity() * 2)
            .sum();
        self.dense.iter().map(|l| l.capacity() * 4).sum::<usize>()
            + self.nodes.capacity() * size_of::<Node>()
            + self.vecs.capacity() * size_of::<VecPtr>()
            + self.links.len() * BLOCK * self.stride * 4
            + upper
            + self.pool.capacity()
            + self.pool_points.capacity() * 4
            + visited
            + self.tail_ids.capacity() * 8
            + self.tail.capacity()
    }

    /// Points held.
    fn len(&self) -> usize {
        self.nodes.len()
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
        let (mut from, mut points) = (self.dense.len(), 0);
        while from > 1 && points < POOL {
            from -= 1;
            points += self.dense[from].len();
        }
        if points > 0 {
            return PoolPlan {
                from,
                points,
                stride: 1,
            };
        }
        let stride = self.dense[0].len().div_ceil(POOL);
        PoolPlan {
            from: 0,
            points: self.dense[0].len().div_ceil(stride),
            stride,
        }
    }

    /// The `k` points nearest to `q` as (id, distance), nearest first; `ef`
    /// is the layer-0 beam width (raised to `k`).
    pub fn search(&self, q: &[Q8], k: usize, ef: usize) -> Vec<(u64, f32)> {
        // A query of another length would be scored misaligned: the caller
        // checks dimensions, so this only guards a graph that disagrees.
        if k == 0 || self.len() == 0 || q.len() != self.row {
            return Vec::new();
        }
        let mut out = self.walk(q, k, ef);
        if !self.tail_ids.is_empty() {
            let walked: HashSet<u64> = out.iter().map(|&(id, _)| id).collect();
            out.extend(
                self.tail
                    .chunks_exact(self.row)
                    .zip(&self.tail_ids)
                    .filter(|(_, id)| !walked.contains(id))
                    .map(|(v, &id)| (id, DualsightDot.eval(q, v))),
            );
        }
        out.sort_unstable_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        out.truncate(k);
        out
    }

    /// The copy's part of [`Mirror::search`] (the tail left out), unsorted.
    fn walk(&self, q: &[Q8], k: usize, ef: usize) -> Vec<(u64, f32)> {
        let plan = self.plan;
        let mut scored: Vec<Cand> = self
            .pool
            .chunks_exact(self.row)
            .zip(&self.pool_points)
            .map(|(v, &d)| Cand {
                dist: DualsightDot.eval(q, v),
                d,
            })
            .collect();
        let keep = if plan.exact() { k } else { UPPER_EF };
        if scored.len() > keep {
            scored.select_nth_unstable(keep);
            scored.truncate(keep);
        }
        let mut beam = if plan.exact() {
            scored
        } else {
            let mut visited = self.visited_table();
            let mut pool = scored;
            for layer in (1..plan.from).rev() {
                pool = self.search_layer(q, pool, UPPER_EF, layer, &mut visited);
            }
            let beam = self.search_layer(q, pool, ef.max(k), 0, &mut visited);
            self.visited
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(visited);
            beam
        };
        if beam.len() > k {
            beam.select_nth_unstable(k);
            beam.truncate(k);
        }
        beam.iter()
            .map(|c| (self.nodes[c.d as usize].get_origin_id() as u64, c.dist))
            .collect()
    }

    /// A visited table for one search, sized for every point.
    fn visited_table(&self) -> Visited {
        let mut v = self
            .visited
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        if v.stamps.len() < self.len() {
            v.stamps.resize(self.len(), 0);
        }
        v
    }

    /// Best-first search of one layer from `entries`, keeping the `ef`
    /// nearest (HNSW's SEARCH-LAYER); returns them in no particular order.
    fn search_layer(
        &self,
        q: &[Q8],
        entries: Vec<Cand>,
        ef: usize,
        layer: usize,
        visited: &mut Visited,
    ) -> Vec<Cand> {
        visited.clear();
        let mut todo = BinaryHeap::with_capacity((ef * 4).min(1 << 14));
        let mut kept = BinaryHeap::with_capacity((ef + 1).min(1 << 14));
        for c in entries {
            if visited.insert(c.d) {
                todo.push(Reverse(c));
                kept.push(c);
            }
        }
        while kept.len() > ef {
            kept.pop();
        }
        let mut fresh: Vec<(u32, &[Q8])> = Vec::with_capacity(self.stride);
        while let Some(Reverse(c)) = todo.pop() {
            if kept.len() >= ef && kept.peek().is_some_and(|w: &Cand| c.dist > w.dist) {
                break;
            }
            // Unvisited neighbours first, their vectors fetched ahead, then
            // scored: the misses overlap instead of queueing.
            fresh.clear();
            for &n in self.links(c.d, layer) {
                if (n as usize) < self.len()
                    && visited.insert(n)
                    && let Some(v) = self.vec(n)
                {
                    prefetch(v);
                    fresh.push((n, v));
                }
            }
            for &(n, v) in &fresh {
                let dist = DualsightDot.eval(q, v);
                if kept.len() < ef || kept.peek().is_some_and(|w| dist < w.dist) {
                    let s = Cand { dist, d: n };
                    todo.push(Reverse(s));
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

/// Asks for a stored vector's first cache lines (most of a 512-d one).
fn prefetch(v: &[Q8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = v.as_ptr().cast::<i8>();
        for line in (0..v.len()).step_by(64).take(8) {
            // SAFETY: SSE is part of the x86-64 baseline; a prefetch reads
            // and writes nothing, and the address lies inside `v`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(line)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Which points one search has scored: a stamp per point, so starting a
/// search is one increment, not a clear.
#[derive(Default)]
struct Visited {
    stamps: Vec<u16>,
    stamp: u16,
}

impl Visited {
    fn clear(&mut self) {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.stamps.fill(0);
            self.stamp = 1;
        }
    }

    /// True the first time `d` is seen since the last clear.
    fn insert(&mut self, d: u32) -> bool {
        let s = &mut self.stamps[d as usize];
        let new = *s != self.stamp;
        *s = self.stamp;
        new
    }
}

/// A point (dense index) and its distance to the query; ordered nearest
/// first, then by dense index.
#[derive(Clone, Copy, PartialEq)]
struct Cand {
    dist: f32,
    d: u32,
}

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Cand {
    fn cmp(&self, o: &Self) -> Ordering {
        self.dist.total_cmp(&o.dist).then(self.d.cmp(&o.d))
    }
}

#[cfg(test)]
impl Mirror {
    /// Every point's copied links, as origin ids by layer, against what
    /// hnsw_rs holds now; the first point that differs, if any.
    pub(super) fn differs_from(&self, h: &Hnsw<'static, Q8, DualsightDot>) -> Option<String> {
        if self.len() != h.get_nb_point() {
            return Some(format!(
                "{} points against hnsw_rs's {}",
                self.len(),
                h.get_nb_point()
            ));
        }
        let id = |d: &u32| self.nodes[*d as usize].get_origin_id();
        for (d, node) in self.nodes.iter().enumerate() {
            let theirs = node.get_neighborhood_id();
            let level = usize::from(node.get_point_id().0);
            for (layer, links) in theirs.iter().enumerate().take(level + 1) {
                let mut want: Vec<usize> = links.iter().map(|n| n.d_id).collect();
                let mut got: Vec<usize> = self.links(d as u32, layer).iter().map(id).collect();
                want.sort_unstable();
                got.sort_unstable();
                if want != got {
                    return Some(format!(
                        "point {} layer {layer}: copied {got:?}, hnsw_rs {want:?}",
                        node.get_origin_id()
                    ));
                }
            }
        }
        None
    }
}
