//! The HNSW over one space's vectors (hnsw_rs 0.3.5): a cache of the store
//! that can always be rebuilt from it. This is the only module that touches
//! hnsw_rs.
//!
//! - Ids are the store's u64 vector ids. hnsw_rs cannot delete, so
//!   [`VectorIndex::remove`] tombstones: searches skip tombstones, and when
//!   [`VectorIndex::needs_compaction`] says so the caller rebuilds from the store.
//! - Vectors are L2-normalised on the way in and compared with [`DualsightDot`]
//!   (`max(0, 1 - cos)` of the stored bytes), so scores are cosines. hnsw_rs's
//!   own `DistDot` panics when rounding makes `1 - dot` negative and any NaN
//!   distance panics, hence
//!   our clamped distance and the refusal of NaN/inf/zero vectors up front.
//! - [`VectorIndex::checkpoint`] / [`VectorIndex::load`] persist the graph with a
//!   manifest (fingerprint, dim, params, last store id covered, tombstones,
//!   file hashes). After a load the caller catches up from the store:
//!   tombstone every `live_ids()` id the space no longer has
//!   (`Space::has_vector`), then insert `space.iter_vectors_from(last_id + 1)`.
//!
//! - hnsw_rs holds the graph, inserts what arrives and persists it; searches
//!   walk it with our own descent ([`descent`]), which starts from the best
//!   of the top layers' points rather than hnsw_rs's single entry point, so
//!   text queries (off the image data) reach their region, and reads the
//!   links from a flat copy kept up to date after every insert batch.
//! - A graph rebuilt from the store ([`VectorIndex::bulk`]: compaction, a
//!   start without a usable checkpoint, a checkpoint whose graph cannot be
//!   read) is built here at once ([`build`]), several times faster than
//!   hnsw_rs's insert, and handed to hnsw_rs as its own dump ([`dump`],
//!   [`bulk`]).
//!
//! Memory: vectors are stored as one byte per component ([`dist::Q8`], 512
//! bytes at 512-d; hits are rescored from the store's f32 vectors by the
//! caller). The rest is the graph, where hnsw_rs allocates one 32-byte `Arc`
//! per edge (the binaries' mimalloc adds no header to it), layer 0 keeps up
//! to 2·M edges, and every point carries one layer `Vec` per possible level
//! whatever its own; the walk adds its copy of the links (a row of 2·M + 1
//! u32 per point, ~250 B at M = 24, counted by [`VectorIndex::walk_bytes`]),
//! a handle and a pointer per point, and a copy of the top layers' vectors.
//! BENCHMARKS.md ("Today's figures") has the measured bytes per vector.

mod build;
mod bulk;
mod checkpoint;
mod descent;
pub mod dist;
mod dump;
mod flat;
mod params;
mod search;
mod upgrade;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::time::Instant;

use flat::Flat;

use hnsw_rs::prelude::{AnnT, Hnsw, HnswIo};

pub use bulk::BulkLoad;
pub use dist::{DualsightDot, Q8};
pub use params::IndexParams;
use search::{TopK, score_of};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index parameters: {0}")]
    InvalidParams(String),
    #[error("index: vector has {got} dimensions, the index holds {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("index: vector rejected: {0}")]
    InvalidVector(&'static str),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: checkpoint is corrupt: {reason}", dir.display())]
    Corrupt { dir: PathBuf, reason: String },
    #[error("{}: hnsw dump failed: {reason}", dir.display())]
    Dump { dir: PathBuf, reason: String },
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

// Store ids (u64) travel through hnsw_rs as `usize`.
const _: () = assert!(usize::BITS >= 64, "vector ids need a 64-bit usize");

/// Batches at least this large go through hnsw_rs's rayon `parallel_insert`.
const PARALLEL_INSERT_MIN: usize = 64;
/// With tombstones, at most this many live vectors are searched by exact scan
/// (about as cheap as a graph walk, and exact).
const EXACT_SCAN_MAX: usize = 2048;
/// Tombstones above this fraction of the graph make a rebuild worthwhile.
const COMPACTION_FRACTION: f64 = 0.2;

struct Ids {
    /// Every id in the graph, tombstoned or not.
    present: HashSet<u64>,
    tombstones: HashSet<u64>,
    /// Highest id ever inserted.
    max_id: u64,
}

impl Ids {
    fn live(&self) -> usize {
        self.present.len() - self.tombstones.len()
    }
}

/// An HNSW over unit vectors keyed by store id. `Send + Sync`: one task
/// inserts while many search concurrently.
pub struct VectorIndex {
    dim: usize,
    params: IndexParams,
    ef_search: AtomicUsize,
    /// hnsw_rs locks internally and its insert/search take `&self`, so
    /// searches run in parallel with each other and with an insert. `'static`:
    /// a loaded graph borrows its `HnswIo`, which [`VectorIndex::load`] leaks.
    /// Unset while a checkpoint's graph loads in the background.
    hnsw: Arc<OnceLock<Hnsw<'static, Q8, DualsightDot>>>,
    /// Every point while the graph loads (searches scan it); `None` after.
    warm: Arc<RwLock<Option<Arc<Flat>>>>,
    /// Serialises inserts and checkpoint dumps (a dump must not see a half
    /// inserted point); searches never take it.
    writer: Mutex<()>,
    /// Read by every search (tombstone filter), written by insert/remove.
    ids: RwLock<Ids>,
    /// The graph's point handles for our walk ([`descent`]): refreshed by
    /// every insert and load, after hnsw_rs has the points (a search in
    /// between just does not walk the newest).
    mirror: Arc<RwLock<descent::Mirror>>,
    /// Set once a load's background half is done: the graph is in and the
    /// flat table freed (what a memory figure must wait for).
    settled: Arc<OnceLock<()>>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dim", &self.dim)
            .field("params", &self.params)
            .field("len", &self.len())
            .field("tombstones", &self.tombstone_count())
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

impl VectorIndex {
    /// An empty index for `dim`-dimensional vectors; `capacity_hint` sizes
    /// hnsw_rs's tables.
    pub fn new(dim: usize, params: IndexParams, capacity_hint: usize) -> Result<VectorIndex> {
        params.validate()?;
        if dim == 0 {
            return Err(IndexError::InvalidParams("dimension 0".into()));
        }
        let hnsw = Hnsw::new(
            params.max_nb_connection,
            capacity_hint.max(1),
            params.max_layer,
            params.ef_construction,
            DualsightDot,
        );
        Ok(Self::from_parts(
            dim,
            params,
            hnsw,
            Ids {
                present: HashSet::new(),
                tombstones: HashSet::new(),
                max_id: 0,
            },
        ))
    }

    fn from_parts(
        dim: usize,
        params: IndexParams,
        hnsw: Hnsw<'static, Q8, DualsightDot>,
        ids: Ids,
    ) -> Self {
        VectorIndex {
            dim,
            params,
            ef_search: AtomicUsize::new(params.ef_search),
            hnsw: Arc::new(OnceLock::from(hnsw)),
            warm: Arc::new(RwLock::new(None)),
            writer: Mutex::new(()),
            ids: RwLock::new(ids),
            mirror: Arc::default(),
            settled: Arc::new(OnceLock::from(())),
        }
    }

    /// The graph, waiting for it while a checkpoint loads.
    fn graph(&self) -> &Hnsw<'static, Q8, DualsightDot> {
        self.hnsw.wait()
    }

    /// True while the graph of a loaded checkpoint is still being read in
    /// the background: searches are exact scans meanwhile, inserts and
    /// checkpoints wait for it.
    pub fn is_warming(&self) -> bool {
        self.hnsw.get().is_none()
    }

    /// Blocks until the graph is in (benchmarks, tests, shutdown).
    pub fn wait_until_loaded(&self) {
        self.graph();
    }

    /// Blocks until the graph is in and the flat table a load searched
    /// meanwhile is freed: the index's steady state, which memory figures
    /// measure (the table is ~`dim` + 8 bytes per vector until then).
    pub fn wait_until_settled(&self) {
        self.settled.wait();
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The parameters the graph was built with (`ef_search` as currently set).
    pub fn params(&self) -> IndexParams {
        IndexParams {
            ef_search: self.ef_search.load(Ordering::Relaxed),
            ..self.params
        }
    }

    /// Changes the search width for later searches (recall vs latency).
    pub fn set_ef_search(&self, ef: usize) -> Result<()> {
        IndexParams {
            ef_search: ef,
            ..self.params
        }
        .validate()?;
        self.ef_search.store(ef, Ordering::Relaxed);
        Ok(())
    }

    /// Heap bytes of the walk's copy of the graph (its links and pointers,
    /// beside hnsw_rs's own graph): for memory figures.
    pub fn walk_bytes(&self) -> usize {
        read(&self.mirror).heap_bytes()
    }

    /// Live (not tombstoned) vectors.
    pub fn len(&self) -> usize {
        read(&self.ids).live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tombstone_count(&self) -> usize {
        read(&self.ids).tombstones.len()
    }

    /// More than 20% of the graph is tombstones: rebuild from the store.
    pub fn needs_compaction(&self) -> bool {
        let ids = read(&self.ids);
        !ids.tombstones.is_empty()
            && ids.tombstones.len() as f64 > COMPACTION_FRACTION * ids.present.len() as f64
    }

    /// Highest id ever inserted (0 when none): the `last_id` to checkpoint
    /// when ids are inserted in store order.
    pub fn max_id(&self) -> u64 {
        read(&self.ids).max_id
    }

    /// Live ids, ascending.
    pub fn live_ids(&self) -> Vec<u64> {
        let ids = read(&self.ids);
        let mut v: Vec<u64> = ids.present.difference(&ids.tombstones).copied().collect();
        v.sort_unstable();
        v
    }

    /// Ids removed but still in the graph, ascending.
    pub fn tombstoned_ids(&self) -> Vec<u64> {
        let ids = read(&self.ids);
        let mut v: Vec<u64> = ids.tombstones.iter().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn contains(&self, id: u64) -> bool {
        let ids = read(&self.ids);
        ids.present.contains(&id) && !ids.tombstones.contains(&id)
    }

    /// Adds one vector; false when the id is already in the graph (ids are
    /// never reused by the store, so this is a replay, not an update).
    pub fn insert(&self, id: u64, v: &[f32]) -> Result<bool> {
        Ok(self.insert_batch(&[(id, v)])? == 1)
    }

    /// Adds vectors (in parallel for large batches); returns how many were
    /// new. All are validated before any is inserted.
    pub fn insert_batch(&self, items: &[(u64, &[f32])]) -> Result<usize> {
        let mut normed = Vec::with_capacity(items.len());
        for (id, v) in items {
            normed.push((*id, self.normalised(v)?));
        }
        let _w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = HashSet::new();
        {
            let ids = read(&self.ids);
            normed.retain(|(id, _)| !ids.present.contains(id) && seen.insert(*id));
        }
        if normed.is_empty() {
            return Ok(0);
        }
        let data: Vec<(&[Q8], usize)> = normed
            .iter()
            .map(|(id, v)| (v.as_slice(), *id as usize))
            .collect();
        insert_points(self.graph(), data);
        descent::Mirror::inserted(&self.mirror, self.graph(), &normed);
        let mut ids = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        for (id, _) in &normed {
            ids.present.insert(*id);
            ids.max_id = ids.max_id.max(*id);
        }
        Ok(normed.len())
    }

    /// Tombstones an id (hnsw_rs has no delete); false when it was not live.
    pub fn remove(&self, id: u64) -> bool {
        let mut ids = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        ids.present.contains(&id) && ids.tombstones.insert(id)
    }

    /// `v` as the index stores it ([`normalised`]).
    fn normalised(&self, v: &[f32]) -> Result<Vec<Q8>> {
        normalised(self.dim, v)
    }

    // ---- checkpoints ----------------------------------------------------------
}

/// `v` checked, L2-normalised (in f64) and quantised to bytes:
/// stored vectors and queries alike, so the graph walk and the exact scan
/// compare the same numbers and give the same scores.
fn normalised(dim: usize, v: &[f32]) -> Result<Vec<Q8>> {
    if v.len() != dim {
        return Err(IndexError::Dimension {
            expected: dim,
            got: v.len(),
        });
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(IndexError::InvalidVector("NaN or infinite component"));
    }
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm < 1e-6 {
        return Err(IndexError::InvalidVector("zero norm"));
    }
    let unit: Vec<f32> = v.iter().map(|&x| (f64::from(x) / norm) as f32).collect();
    Ok(dist::quantise(&unit))
}

/// Inserts `data` into `h`, in parallel for large batches. Into an empty
/// graph the first point goes in alone: in hnsw_rs's insert, a point that
/// finds no entry point yet becomes it without links, and point number 1
/// returns without links once another has; in a parallel start a few points
/// could stay linked to nothing (found only by scans) and the entry point
/// could sit below the top layer.
fn insert_points(h: &Hnsw<'static, Q8, DualsightDot>, mut data: Vec<(&[Q8], usize)>) {
    if h.get_nb_point() == 0 && !data.is_empty() {
        // Shifted in place: hnsw_rs's parallel insert takes a `&Vec`, so
        // a sub-slice would need a copy of the whole batch.
        h.insert_slice(data.remove(0));
    }
    if data.len() >= PARALLEL_INSERT_MIN {
        h.parallel_insert_slice(&data);
    } else {
        for d in data {
            h.insert_slice(d);
        }
    }
}

/// Calls `f` with every point's id and vector until it returns false; true
/// when it never did. One layer at a time, each under one read guard
/// (hnsw_rs's all-layer iterator re-locks while holding a guard, which can
/// deadlock against a waiting insert). Each point lives in exactly one layer
/// list.
fn each_point(h: &Hnsw<'static, Q8, DualsightDot>, mut f: impl FnMut(u64, &[Q8]) -> bool) -> bool {
    let pi = h.get_point_indexation();
    for layer in 0..=usize::from(pi.get_max_level_observed()) {
        for p in pi.get_layer_iterator(layer) {
            if !f(p.get_origin_id() as u64, p.get_v()) {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests;
