//! Checkpoints: the graph, the flat vector table and a manifest written to a
//! new generation directory (temp, fsync, rename, then `CURRENT`), and loaded
//! back with every file's checksum verified before hnsw_rs reads it. A load
//! answers from the flat table at once and reads the graph in the background.

use super::build::Table;
use super::upgrade::Unscaled;
use super::*;
use crate::durable;

/// 1: f32 vectors; 2: half-precision vectors; 3: 8-bit vectors ([`Q8`])
/// behind a 4-byte scale; 4: plus the flat vector table (`flat.rs`); 5: the
/// 8-bit vectors without the scale.
pub(super) const CHECKPOINT_FORMAT: u32 = 5;

/// The format before [`CHECKPOINT_FORMAT`], still read: its vectors are the
/// same bytes behind a 4-byte scale, so its table converts as it is read
/// and its graph's dump is rewritten without the scales before hnsw_rs
/// reads it (`upgrade.rs`): an upgraded daemon loads its graph as fast as
/// before instead of re-inserting every vector.
pub(super) const SCALED_FORMAT: u32 = 4;

pub(super) const FLAT_FILE: &str = "vectors.q8";

/// The background part of [`VectorIndex::load`].
pub(super) type Job = Box<dyn FnOnce() + Send>;

pub(super) const CURRENT: &str = "CURRENT";

pub(super) const MANIFEST: &str = "manifest.json";

pub(super) const GEN_PREFIX: &str = "gen-";

pub(super) const BASENAME: &str = "hnsw";

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    fingerprint: String,
    dim: usize,
    params: IndexParams,
    last_id: u64,
    max_id: u64,
    /// Points in the graph (live + tombstoned).
    points: usize,
    live: usize,
    tombstones: Vec<u64>,
    /// None for an empty index: nothing is dumped (see `checkpoint`).
    dump: Option<DumpFiles>,
}

#[derive(Serialize, Deserialize)]
struct DumpFiles {
    basename: String,
    graph: FileSum,
    data: FileSum,
    /// [`FLAT_FILE`]: every point's id and vector.
    flat: FileSum,
}

/// Length and blake3 of a dump file: hnsw_rs asserts (panics) on malformed
/// input, so damage must be caught before it reads anything.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub(super) struct FileSum {
    len: u64,
    blake3: String,
}

impl VectorIndex {
    /// Persists the graph under `dir`, replacing the previous checkpoint
    /// atomically. `last_id`: every store id ≤ it is in the graph or was
    /// removed (normally [`VectorIndex::max_id`]).
    ///
    /// Layout: `dir/gen-N/{hnsw.hnsw.graph, hnsw.hnsw.data, vectors.q8,
    /// manifest.json}` plus `dir/CURRENT` naming the live generation. A directory cannot be
    /// renamed over a non-empty one, so the generation is built as
    /// `dir/.tmp-gen-N`, fsynced, renamed to `gen-N`, and then `CURRENT` is
    /// replaced (temp file, fsync, rename, fsync dir): a crash at any point
    /// leaves the old or the new checkpoint whole. Old generations are then
    /// deleted.
    pub fn checkpoint(&self, dir: &Path, fingerprint: &str, last_id: u64) -> Result<()> {
        // Two checkpoints into one directory (this index twice, or an old
        // and a rebuilt index) would pick the same generation name. They are
        // rare, so one process-wide lock is enough.
        static CHECKPOINTS: Mutex<()> = Mutex::new(());
        let _one_at_a_time = CHECKPOINTS.lock().unwrap_or_else(PoisonError::into_inner);
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let gen_no = next_generation(dir)?;
        let gen_name = format!("{GEN_PREFIX}{gen_no}");
        let tmp = dir.join(format!(".tmp-{gen_name}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;

        let (manifest_ids, dump) = {
            let _w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let ids = read(&self.ids);
            let mut tombstones: Vec<u64> = ids.tombstones.iter().copied().collect();
            tombstones.sort_unstable();
            let snapshot = (ids.present.len(), ids.live(), ids.max_id, tombstones);
            drop(ids);
            // hnsw_rs 0.3.5's file_dump fails on a graph with no point (see
            // tests::hnsw_rs_empty_dump_reload), so an empty index is a
            // manifest alone.
            let dump = if snapshot.0 == 0 {
                None
            } else {
                let graph = self.graph();
                let r = catch_unwind(AssertUnwindSafe(|| graph.file_dump(&tmp, BASENAME)));
                match r {
                    Ok(Ok(basename)) => {
                        let graph_file = tmp.join(format!("{basename}.hnsw.graph"));
                        super::upgrade::unit_level_scale(&graph_file).map_err(|e| {
                            IndexError::Dump {
                                dir: tmp.clone(),
                                reason: e.to_string(),
                            }
                        })?;
                        self.write_flat(&tmp.join(FLAT_FILE))?;
                        Some(basename)
                    }
                    Ok(Err(e)) => {
                        return Err(IndexError::Dump {
                            dir: tmp,
                            reason: format!("{e:#}"),
                        });
                    }
                    Err(_) => {
                        return Err(IndexError::Dump {
                            dir: tmp,
                            reason: "hnsw_rs panicked".into(),
                        });
                    }
                }
            };
            (snapshot, dump)
        };
        let (points, live, max_id, tombstones) = manifest_ids;
        let dump = match dump {
            None => None,
            Some(basename) => {
                let graph = sync_and_sum(&tmp.join(format!("{basename}.hnsw.graph")))?;
                let data = sync_and_sum(&tmp.join(format!("{basename}.hnsw.data")))?;
                let flat = sync_and_sum(&tmp.join(FLAT_FILE))?;
                Some(DumpFiles {
                    basename,
                    graph,
                    data,
                    flat,
                })
            }
        };
        let manifest = Manifest {
            format: CHECKPOINT_FORMAT,
            fingerprint: fingerprint.to_owned(),
            dim: self.dim,
            params: self.params(),
            last_id,
            max_id,
            points,
            live,
            tombstones,
            dump,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        let manifest_path = tmp.join(MANIFEST);
        durable::write_synced(&manifest_path, &json).map_err(io_err(&manifest_path))?;
        durable::sync_dir(&tmp).map_err(io_err(&tmp))?;
        let gen_dir = dir.join(&gen_name);
        fs::rename(&tmp, &gen_dir).map_err(io_err(&gen_dir))?;
        durable::sync_dir(dir).map_err(io_err(dir))?;
        let current_tmp = dir.join(format!("{CURRENT}.tmp"));
        durable::write_synced(&current_tmp, format!("{gen_name}\n").as_bytes())
            .map_err(io_err(&current_tmp))?;
        let current = dir.join(CURRENT);
        fs::rename(&current_tmp, &current).map_err(io_err(&current))?;
        durable::sync_dir(dir).map_err(io_err(dir))?;
        tracing::info!(dir = %dir.display(), generation = gen_no, points, last_id, "index checkpoint written");
        // Best effort: a leftover generation only costs disk until the next one.
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let old_gen = name.starts_with(GEN_PREFIX) && name != gen_name;
                if (old_gen || name.starts_with(".tmp-"))
                    && !super::bulk::in_use(&e.path())
                    && let Err(err) = fs::remove_dir_all(e.path())
                {
                    tracing::warn!(path = %e.path().display(), error = %err, "cannot delete old checkpoint");
                }
            }
        }
        Ok(())
    }

    /// Every point of the graph (tombstoned ones too) into a flat table.
    /// Called under the writer lock, so no insert runs meanwhile.
    fn write_flat(&self, path: &Path) -> Result<()> {
        let graph = self.graph();
        let count = graph.get_nb_point();
        Flat::write(path, self.dim, count, |row| {
            each_point(graph, row);
        })
        .map_err(io_err(path))
    }

    /// The checkpoint in `dir` and the last store id it covers. `None` when
    /// there is none, it belongs to another model (fingerprint or dim) or it
    /// was written in a format before [`SCALED_FORMAT`] (which is converted);
    /// `Err` when it is damaged. Either way the caller rebuilds from the
    /// store.
    ///
    /// Returns once the files are verified and the flat table is read; the
    /// graph then loads on a thread of its own (see `flat.rs` for why), and
    /// searches scan the table until it is in.
    pub fn load(dir: &Path, fingerprint: &str, dim: usize) -> Result<Option<(VectorIndex, u64)>> {
        Self::load_with(dir, fingerprint, dim, |job| {
            // Shared so that the job can still run here if no thread starts.
            let job = Arc::new(Mutex::new(Some(job)));
            let theirs = Arc::clone(&job);
            let take =
                |j: &Mutex<Option<Job>>| j.lock().unwrap_or_else(PoisonError::into_inner).take();
            let spawned = std::thread::Builder::new()
                .name("index-load".into())
                .spawn(move || take(&theirs).map(|j| j()));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no thread for the index load: loading in place");
                if let Some(j) = take(&job) {
                    j();
                }
            }
        })
    }

    /// [`VectorIndex::load`] with the background load handed to `spawn`
    /// (tests run it when they choose).
    pub(super) fn load_with(
        dir: &Path,
        fingerprint: &str,
        dim: usize,
        spawn: impl FnOnce(Job),
    ) -> Result<Option<(VectorIndex, u64)>> {
        let current = dir.join(CURRENT);
        let gen_name = match fs::read_to_string(&current) {
            Ok(s) => s.trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(IndexError::Io {
                    path: current,
                    source: e,
                });
            }
        };
        let corrupt = |reason: String| IndexError::Corrupt {
            dir: dir.to_path_buf(),
            reason,
        };
        let valid_name = gen_name
            .strip_prefix(GEN_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !valid_name {
            return Err(corrupt(format!("{CURRENT} names {gen_name:?}")));
        }
        let gen_dir = dir.join(&gen_name);
        let manifest_path = gen_dir.join(MANIFEST);
        let bytes = match fs::read(&manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(format!("{gen_name}: {MANIFEST} missing")));
            }
            Err(e) => {
                return Err(IndexError::Io {
                    path: manifest_path,
                    source: e,
                });
            }
        };
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{MANIFEST}: {e}")))?;
        let scaled = match m.format {
            CHECKPOINT_FORMAT => false,
            SCALED_FORMAT => true,
            older if older < SCALED_FORMAT => {
                // Written by an older dualsight (format 1: f32, 2: f16
                // vectors, 3: no vector table): not converted, the caller
                // rebuilds from the store, which holds every vector in full
                // precision.
                tracing::info!(dir = %dir.display(), format = older, "index checkpoint in an older format: rebuilding");
                return Ok(None);
            }
            newer => {
                return Err(corrupt(format!(
                    "format {newer}, from a newer dualsight (this one reads {SCALED_FORMAT} and {CHECKPOINT_FORMAT})"
                )));
            }
        };
        if m.fingerprint != fingerprint || m.dim != dim {
            return Ok(None);
        }
        m.params.validate().map_err(|e| corrupt(e.to_string()))?;
        let Some(d) = &m.dump else {
            if m.points != 0 {
                return Err(corrupt(format!("{} points but no dump", m.points)));
            }
            let hnsw = Hnsw::new(
                m.params.max_nb_connection,
                1,
                m.params.max_layer,
                m.params.ef_construction,
                DualsightDot,
            );
            let ids = checked_ids(std::iter::empty(), &m).map_err(corrupt)?;
            return Ok(Some((
                VectorIndex::from_parts(dim, m.params, hnsw, ids),
                m.last_id,
            )));
        };
        // Everything is verified before anything is parsed: hnsw_rs asserts
        // (panics) on malformed input.
        let graph_file = format!("{}.hnsw.graph", d.basename);
        let data_file = format!("{}.hnsw.data", d.basename);
        for (name, want) in [
            (graph_file.as_str(), &d.graph),
            (&data_file, &d.data),
            (FLAT_FILE, &d.flat),
        ] {
            let path = gen_dir.join(name);
            let got = match sum_file(&path) {
                Ok(s) => s,
                Err(IndexError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Err(corrupt(format!("{} missing", path.display())));
                }
                Err(e) => return Err(e),
            };
            if &got != want {
                return Err(corrupt(format!("{}: checksum mismatch", path.display())));
            }
        }
        let flat_path = gen_dir.join(FLAT_FILE);
        let bytes = fs::read(&flat_path).map_err(io_err(&flat_path))?;
        let flat = Flat::parse(bytes, dim, scaled)
            .map_err(|e| corrupt(format!("{}: {e}", flat_path.display())))?;
        if scaled {
            tracing::info!(dir = %dir.display(), format = m.format, points = flat.len(), "index checkpoint with a scale per vector: its vector table converted, its graph rewritten without the scales in the background");
        }
        let ids = checked_ids(flat.iter().map(|(id, _)| id), &m).map_err(corrupt)?;
        let flat = Arc::new(flat);
        let index = VectorIndex {
            dim,
            params: m.params,
            ef_search: AtomicUsize::new(m.params.ef_search),
            hnsw: Arc::new(OnceLock::new()),
            warm: Arc::new(RwLock::new(Some(Arc::clone(&flat)))),
            writer: Mutex::new(()),
            ids: RwLock::new(ids),
            mirror: Arc::default(),
            settled: Arc::new(OnceLock::new()),
        };
        let (hnsw, warm) = (Arc::clone(&index.hnsw), Arc::clone(&index.warm));
        let settled = Arc::clone(&index.settled);
        let mirror = Arc::clone(&index.mirror);
        let (params, basename) = (m.params, d.basename.clone());
        let root = dir.to_path_buf();
        spawn(Box::new(move || {
            // A previous-format dump is read from a copy without its scales;
            // with no copy, the graph is rebuilt from the table.
            let unscaled = scaled.then(|| Unscaled::make(&gen_dir, &basename, dim));
            let read = match &unscaled {
                None => Some(gen_dir.as_path()),
                Some(copy) => copy.as_ref().map(|c| c.dir.as_path()),
            };
            load_graph(
                read.map(|d| (d, basename.as_str())),
                &root,
                params,
                &flat,
                &hnsw,
                &mirror,
            );
            drop(unscaled);
            *warm.write().unwrap_or_else(PoisonError::into_inner) = None;
            // The table and hnsw_rs's reader buffers are garbage now. Handing
            // gigabytes back takes the allocator a while and competes with
            // the first searches, so its end is logged: from there on the
            // daemon is in its steady state (what `dualsight-bench` times).
            let started = Instant::now();
            drop(flat);
            crate::heap::trim();
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "index load finished: vector table freed, heap trimmed"
            );
            let _ = settled.set(());
        }));
        Ok(Some((index, m.last_id)))
    }
}

/// The background half of a load (hnsw_rs's reader runs on one thread), run
/// once the files are verified: the graph dumped in `read` (generation dir,
/// basename), or `None` to rebuild it from the table. A graph that hnsw_rs
/// cannot read or that does not hold exactly the table's points is rebuilt
/// from the table too, so the index never ends up without a graph.
fn load_graph(
    read: Option<(&Path, &str)>,
    scratch: &Path,
    params: IndexParams,
    flat: &Flat,
    into: &OnceLock<Hnsw<'static, Q8, DualsightDot>>,
    mirror: &RwLock<descent::Mirror>,
) {
    let started = Instant::now();
    let loaded = read.and_then(|(gen_dir, basename)| read_graph(gen_dir, basename, flat));
    let rebuilt = loaded.is_none();
    // Off rayon's global pool, where searches scan the table meanwhile.
    let graph = loaded.unwrap_or_else(|| super::bulk::graph_over(flat, params, scratch));
    // Before the graph is published, so the first search finds it ready.
    descent::Mirror::refresh(mirror, &graph);
    if into.set(graph).is_err() {
        unreachable!("only this load sets the graph");
    }
    tracing::info!(
        points = flat.len(),
        rebuilt,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index graph loaded"
    );
}

/// The graph hnsw_rs dumped in `gen_dir`, if it reads and holds exactly the
/// table's points (a warning says why not otherwise).
pub(super) fn read_graph<T: Table>(
    gen_dir: &Path,
    basename: &str,
    flat: &T,
) -> Option<Hnsw<'static, Q8, DualsightDot>> {
    // The loaded graph borrows its loader for its whole life (hnsw_rs #19).
    // Without mmap the loader holds no data (paths and options, ~100
    // bytes), so leaking one per load is the simplest sound way to a
    // `'static` graph; loads happen at startup, not per request.
    let load = || {
        let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(gen_dir, basename)));
        loader.load_hnsw::<Q8, DualsightDot>()
    };
    match catch_unwind(AssertUnwindSafe(load)) {
        Ok(Ok(mut h)) => {
            // hnsw_rs turns candidate extension on for reloaded graphs; `new`
            // leaves it off. Off, as for a graph built in this process: later
            // inserts cost the same and build the same kind of graph.
            h.set_extend_candidates(false);
            if same_points(&h, flat) {
                Some(h)
            } else {
                tracing::warn!(dir = %gen_dir.display(), "index graph does not match its vector table: rebuilding it from the table");
                None
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(dir = %gen_dir.display(), error = %format!("{e:#}"), "hnsw_rs cannot read the index graph: rebuilding it from the vector table");
            None
        }
        Err(_) => {
            tracing::warn!(dir = %gen_dir.display(), "hnsw_rs panicked reading the index graph: rebuilding it from the vector table");
            None
        }
    }
}

/// True when `h` holds exactly the table's ids, each once, with vectors of
/// the table's length.
fn same_points<T: Table>(h: &Hnsw<'static, Q8, DualsightDot>, table: &T) -> bool {
    if h.get_nb_point() != table.len() {
        return false;
    }
    let dim = table.dim();
    let want: HashSet<u64> = (0..table.len()).map(|p| table.id(p)).collect();
    let mut seen = HashSet::with_capacity(want.len());
    each_point(h, |id, v| {
        v.len() == dim && want.contains(&id) && seen.insert(id)
    }) && seen.len() == want.len()
}

/// The ids a checkpoint's points carry, checked against its manifest.
fn checked_ids(points: impl Iterator<Item = u64>, m: &Manifest) -> Result<Ids, String> {
    let mut present = HashSet::with_capacity(m.points);
    for id in points {
        if !present.insert(id) {
            return Err(format!("id {id} twice in the checkpoint"));
        }
    }
    if present.len() != m.points {
        return Err(format!(
            "{} points in the checkpoint, manifest says {}",
            present.len(),
            m.points
        ));
    }
    let tombstones: HashSet<u64> = m.tombstones.iter().copied().collect();
    if !tombstones.is_subset(&present) || present.len() - tombstones.len() != m.live {
        return Err("tombstones do not match the graph".into());
    }
    let max_id = present.iter().copied().max().unwrap_or(0).max(m.max_id);
    Ok(Ids {
        present,
        tombstones,
        max_id,
    })
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One past the highest generation named by `CURRENT` or present on disk, so
/// a new checkpoint never reuses a leftover directory's name.
fn next_generation(dir: &Path) -> Result<u64> {
    let mut max = 0u64;
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let n = name
            .trim_start_matches(".tmp-")
            .strip_prefix(GEN_PREFIX)
            .and_then(|n| n.parse::<u64>().ok());
        max = max.max(n.unwrap_or(0));
    }
    if let Ok(s) = fs::read_to_string(dir.join(CURRENT))
        && let Some(n) = s
            .trim()
            .strip_prefix(GEN_PREFIX)
            .and_then(|n| n.parse::<u64>().ok())
    {
        max = max.max(n);
    }
    Ok(max + 1)
}

/// hnsw_rs's `file_dump` flushes its buffers but never fsyncs.
fn sync_and_sum(path: &Path) -> Result<FileSum> {
    durable::sync_file(path).map_err(io_err(path))?;
    sum_file(path)
}

/// Hashes through a mapping on every core: a checkpoint at a million
/// vectors is over a gigabyte, read at every start.
pub(super) fn sum_file(path: &Path) -> Result<FileSum> {
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).map_err(io_err(path))?;
    Ok(FileSum {
        len,
        blake3: h.finalize().to_hex().to_string(),
    })
}
