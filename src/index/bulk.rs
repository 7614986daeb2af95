//! An index built at once from many vectors ([`BulkLoad`]): the graph is
//! built here (`build.rs`), written as hnsw_rs's dump into a scratch
//! directory (`dump.rs`), and read back by hnsw_rs, which holds it from
//! then on exactly as a graph it had built or loaded itself. The rebuilds
//! from the store use it; live inserts stay hnsw_rs's.

use std::collections::HashSet;
use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use hnsw_rs::prelude::Hnsw;

use super::build::{self, Rows, Shape, Table};
use super::checkpoint::{BASENAME, read_graph};
use super::dist::{DualsightDot, Q8};
use super::dump;
use super::{Ids, IndexError, IndexParams, Result, VectorIndex, insert_points, normalised};

/// The levels' seed: any fixed value, so that a rebuild of the same table
/// draws the same levels.
const SEED: u64 = 0x6475_616c_7369_6768;

/// Scratch directories of builds under way in this process, which a
/// checkpoint's clean-up of `.tmp-` entries and a new build leave alone
/// (any other is a crash's leftover).
static BUILDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// How scratch directories' names start (a `.tmp-` entry to checkpoints).
const PREFIX: &str = ".tmp-build-";

/// Tells scratch directories apart within one process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// True when `path` is the scratch directory of a build under way.
pub(super) fn in_use(path: &Path) -> bool {
    BUILDING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .any(|p| p == path)
}

/// A scratch directory, registered while it lives and removed on drop.
pub(super) struct Scratch {
    pub(super) dir: PathBuf,
}

impl Scratch {
    /// A new scratch directory under `parent`, after removing any other
    /// build's that no build of this process is using (a crash's, which
    /// no checkpoint may come to remove: a crash during the rebuild at
    /// startup leaves one per try). Under the registry's lock, so that a
    /// checkpoint's clean-up sees this one registered before it exists.
    pub(super) fn new(parent: &Path) -> Result<Scratch> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IndexError::Io { path, source }
        };
        let mut building = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(entries) = fs::read_dir(parent) {
            for e in entries.flatten() {
                let stale = e.file_name().to_string_lossy().starts_with(PREFIX)
                    && !building.iter().any(|p| *p == e.path());
                if stale && let Err(err) = fs::remove_dir_all(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot delete an old index build's scratch directory");
                }
            }
        }
        // The process id and the time as well as a counter: a crash's
        // leftover never has the same name.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{PREFIX}{}-{nanos}-{n}", std::process::id()));
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        building.push(dir.clone());
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot delete the index build's scratch directory");
        }
        BUILDING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| p != &self.dir);
    }
}

/// hnsw_rs's graph over `table` (at least one point), built here and read
/// back through a dump in a scratch directory under `parent`.
pub(super) fn graph_of<T: Table>(
    table: &T,
    params: IndexParams,
    parent: &Path,
) -> Result<Hnsw<'static, Q8, DualsightDot>> {
    let fail = |reason: String| IndexError::Dump {
        dir: parent.to_path_buf(),
        reason,
    };
    if table.len() == 0 {
        return Err(fail("no points to build a graph of".into()));
    }
    let shape = Shape::from(params);
    // hnsw_rs's dump holds M in one byte: checked before the build, not
    // after it.
    if shape.m > usize::from(u8::MAX) {
        return Err(fail(format!("M {} above 255", shape.m)));
    }
    let started = Instant::now();
    let built = catch_unwind(AssertUnwindSafe(|| build::build(table, shape, SEED)))
        .map_err(|_| fail("the graph build panicked".into()))?;
    let build_ms = started.elapsed().as_millis() as u64;
    let scratch = Scratch::new(parent)?;
    dump::write(&scratch.dir, BASENAME, &built, table, &shape).map_err(|e| fail(e.to_string()))?;
    drop(built);
    let graph = read_graph(&scratch.dir, BASENAME, table)
        .ok_or_else(|| fail("hnsw_rs did not read back the graph built here".into()))?;
    tracing::info!(
        points = table.len(),
        build_ms,
        handover_ms = started.elapsed().as_millis() as u64 - build_ms,
        "index graph built"
    );
    Ok(graph)
}

/// The graph over `table`: built here ([`graph_of`]), or inserted point by
/// point by hnsw_rs when that fails (a warning says why), so that a rebuild
/// always ends with a graph. Either runs on a thread pool of its own: the
/// workers run until every point is in, and a pool runs a queued job only
/// when a worker is free, so on the shared pool the searches (exact scans,
/// the CPU text tower) would wait for the whole rebuild.
pub(super) fn graph_over<T: Table>(
    table: &T,
    params: IndexParams,
    scratch: &Path,
) -> Hnsw<'static, Q8, DualsightDot> {
    let rebuild = || {
        if table.len() > 0 {
            match graph_of(table, params, scratch) {
                Ok(h) => return h,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the index graph at once: inserting point by point");
                }
            }
        }
        let h = Hnsw::new(
            params.max_nb_connection,
            table.len().max(1),
            params.max_layer,
            params.ef_construction,
            DualsightDot,
        );
        let rows: Vec<(&[Q8], usize)> = (0..table.len())
            .map(|p| (table.row(p), table.id(p) as usize))
            .collect();
        insert_points(&h, rows);
        h
    };
    match rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("index-rebuild-{i}"))
        .build()
    {
        Ok(pool) => pool.install(rebuild),
        Err(e) => {
            tracing::warn!(error = %e, "no thread pool for the index rebuild: sharing the search pool");
            rebuild()
        }
    }
}

/// Vectors gathered for an index built at once ([`VectorIndex::bulk`]).
pub struct BulkLoad {
    dim: usize,
    params: IndexParams,
    rows: Rows,
    seen: HashSet<u64>,
}

impl VectorIndex {
    /// Starts an index of `dim`-dimensional vectors that is built at once
    /// when they are all in: several times faster than inserting them
    /// (BENCHMARKS.md), for rebuilds from the store.
    pub fn bulk(dim: usize, params: IndexParams) -> Result<BulkLoad> {
        params.validate()?;
        if dim == 0 {
            return Err(IndexError::InvalidParams("dimension 0".into()));
        }
        Ok(BulkLoad {
            dim,
            params,
            rows: Rows {
                dim,
                ids: Vec::new(),
                vectors: Vec::new(),
            },
            seen: HashSet::new(),
        })
    }
}

impl BulkLoad {
    /// Adds a vector, checked and stored as the index stores it; false
    /// when its id is already in.
    pub fn push(&mut self, id: u64, v: &[f32]) -> Result<bool> {
        let q = normalised(self.dim, v)?;
        if !self.seen.insert(id) {
            return Ok(false);
        }
        self.rows.ids.push(id);
        self.rows.vectors.extend_from_slice(&q);
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.rows.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.ids.is_empty()
    }

    /// The index over every vector pushed, its graph built on a thread pool
    /// of its own; `scratch` is a directory the graph passes through on its
    /// way to hnsw_rs (a subdirectory is made there and removed). If that
    /// fails, hnsw_rs inserts the vectors instead.
    pub fn finish(self, scratch: &Path) -> Result<VectorIndex> {
        if self.rows.ids.is_empty() {
            return VectorIndex::new(self.dim, self.params, 1);
        }
        let graph = graph_over(&self.rows, self.params, scratch);
        let max_id = self.rows.ids.iter().copied().max().unwrap_or(0);
        let index = VectorIndex::from_parts(
            self.dim,
            self.params,
            graph,
            Ids {
                present: self.seen,
                tombstones: HashSet::new(),
                max_id,
            },
        );
        super::descent::Mirror::refresh(&index.mirror, index.graph());
        Ok(index)
    }
}
