//! From changes to committed vectors. Stages, each bounded:
//!
//! ```text
//! watcher ─Change─▶ planner ─Job─▶ decode workers (N threads) ─Op─▶ committer (1 thread)
//!                      └──────── Remove (after a grace period) ──────▶┘
//! ```
//!
//! The planner skips files the store already has unchanged, and delays
//! removals so a rename's new path claims the vector before the old path
//! lets it go. Workers read and hash each file; content the space already
//! has is not decoded at all (rename, duplicate); the rest is decoded and
//! preprocessed. The committer is the store's only writer: it embeds a
//! batch, commits it (flushed) and only then inserts into the index, applies
//! removals, and writes index checkpoints between batches, so no write
//! ever races another.

mod planner;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc as tmpsc;

use super::feed::ChangeRx;
use crate::engine::Engine;
use crate::preprocess::Source;
use crate::store::{Commit, ContentHash, Embedding, FileRecord, path_str};

/// Tunables of the pipeline (from the daemon settings).
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub decode_threads: usize,
    pub queue: usize,
    pub remove_grace: Duration,
    pub checkpoint_every: Duration,
    /// Indexing pauses while the data dir's file system has less free.
    pub min_free_bytes: u64,
    /// Where thumbnails of new content go (none: not made).
    pub thumbs: Option<crate::thumbs::Thumbs>,
}

/// Counters for status and progress; shared with the query side.
#[derive(Debug, Default)]
pub struct Counters {
    /// Images run through the vision tower.
    pub embedded: AtomicU64,
    /// Files committed without embedding: their content already had a vector (renames, duplicates).
    pub reused: AtomicU64,
    /// Files committed (either way) since start.
    pub committed: AtomicU64,
    /// Files that failed to decode since start.
    pub failed: AtomicU64,
    /// How long each embedding batch took (exported as a metric).
    pub embed_batch: crate::metrics::BatchTimes,
    /// Paths seen but not committed, failed or dropped yet.
    pending: Mutex<HashSet<PathBuf>>,
    /// Changes sent on the feed and not yet taken up by the planner.
    in_feed: std::sync::OnceLock<Arc<AtomicU64>>,
    /// Removals and reconciles waiting out the removal grace.
    held: AtomicU64,
    /// Newer versions of files still in the pipeline, waiting for it to let
    /// them go (the planner's `later`).
    waiting: AtomicU64,
    /// Removals and reconciles past their grace, not yet applied.
    applying: AtomicU64,
    /// The watcher's own work ([`crate::ingest::watch::Watcher::busy`]).
    watching: Mutex<Option<Arc<AtomicU64>>>,
    /// Why indexing is paused; `None` while it runs.
    paused: Mutex<Option<Pause>>,
    /// Set when the change feed closed (shutdown): a paused committer gives
    /// up its batch instead of waiting for room forever.
    closing: std::sync::atomic::AtomicBool,
}

impl Counters {
    /// Work not yet done: files in the pipeline, removals waiting out their
    /// grace, and what the watcher still holds (debounce, stability checks,
    /// scans). 0 means the store has caught up with the folders: a caller
    /// that compares it with the store's counts reads it first.
    ///
    /// Each stage counts a change before the stage it came from lets it go,
    /// and the stages are read upstream first, so a change moving on while
    /// this runs is counted at least once, never missed.
    pub fn pending(&self) -> u64 {
        let watching = self
            .watching
            .lock()
            .expect("watching lock")
            .as_ref()
            .map_or(0, |w| w.load(Ordering::SeqCst));
        let in_feed = self.in_feed.get().map_or(0, |f| f.load(Ordering::SeqCst));
        let held = self.held.load(Ordering::SeqCst);
        let applying = self.applying.load(Ordering::SeqCst);
        let waiting = self.waiting.load(Ordering::SeqCst);
        watching + in_feed + held + applying + waiting + self.in_pipeline()
    }

    /// Files inside the pipeline (reading, decoding, embedding, committing).
    pub fn in_pipeline(&self) -> u64 {
        self.pending.lock().expect("pending lock").len() as u64
    }

    /// Why indexing is paused, for Status; `None` while it runs.
    pub fn ingest_error(&self) -> Option<String> {
        self.paused
            .lock()
            .expect("paused lock")
            .as_ref()
            .map(|p| p.why.clone())
    }

    /// Pauses indexing for this reason, unless a pause of the same kind is
    /// already on (logged once).
    fn pause(&self, kind: PauseKind, why: String) {
        let mut paused = self.paused.lock().expect("paused lock");
        if paused.as_ref().is_none_or(|p| p.kind != kind) {
            tracing::error!("{why}");
            *paused = Some(Pause { kind, why });
        }
    }

    /// Ends a pause of this kind, if one is on.
    fn resume(&self, kind: PauseKind) {
        let mut paused = self.paused.lock().expect("paused lock");
        if paused.as_ref().is_some_and(|p| p.kind == kind) {
            *paused = None;
            tracing::info!("indexing resumes: the disk has room again");
        }
    }

    /// Counts the watcher's work (see [`Self::pending`]); set once.
    /// Counts `busy` (a watcher's work) as pending; a reload's new watcher replaces the old.
    pub fn watch(&self, busy: Arc<AtomicU64>) {
        *self.watching.lock().expect("watching lock") = Some(busy);
    }
    fn start(&self, p: &Path) -> bool {
        self.pending
            .lock()
            .expect("pending lock")
            .insert(p.to_path_buf())
    }
    fn in_flight(&self, p: &Path) -> bool {
        self.pending.lock().expect("pending lock").contains(p)
    }
    fn finish(&self, p: &Path) {
        self.pending.lock().expect("pending lock").remove(p);
    }
}

/// A pause of indexing and what ends it.
#[derive(Debug)]
struct Pause {
    kind: PauseKind,
    why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseKind {
    /// Free space under `ingest.min_free_mb`: ends when the space is back.
    Reserve,
    /// A commit met ENOSPC: free space alone does not tell whether the next
    /// one fits, so only a commit that goes through ends it.
    DiskFull,
}

struct Job {
    path: PathBuf,
    size: u64,
    mtime_ns: i64,
}

/// What the committer is asked to do.
enum Op {
    /// A file read and hashed; `pixels` when its content needs embedding.
    Ready {
        path: PathBuf,
        record: FileRecord,
        pixels: Option<Vec<f32>>,
    },
    /// Forget this path and everything under it.
    Remove(PathBuf),
    /// Forget files under `root` that the last full scan did not see.
    Reconcile { root: PathBuf, seen: Vec<PathBuf> },
    /// Forget everything at or under a path that is no longer watched, but
    /// what lies under the roots in `keep`.
    Forget { path: PathBuf, keep: Vec<PathBuf> },
}

pub struct Pipeline {
    planner: tokio::task::JoinHandle<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
    committer: std::thread::JoinHandle<()>,
}

impl Pipeline {
    /// Starts the stages; they run until `changes` closes (the watcher stopped).
    pub fn spawn(
        engine: Arc<Engine>,
        counters: Arc<Counters>,
        cfg: PipelineConfig,
        changes: ChangeRx,
    ) -> Self {
        // One pipeline per Counters; a second one's feed would go uncounted.
        let _ = counters.in_feed.set(changes.in_flight());
        let (job_tx, job_rx) = tmpsc::channel::<Job>(cfg.queue);
        let (op_tx, op_rx) = mpsc::sync_channel::<Op>(cfg.queue);
        let job_rx = Arc::new(tokio::sync::Mutex::new(job_rx));
        let workers = (0..cfg.decode_threads.max(1))
            .map(|i| {
                let (engine, counters, job_rx, op_tx, thumbs) = (
                    engine.clone(),
                    counters.clone(),
                    job_rx.clone(),
                    op_tx.clone(),
                    cfg.thumbs.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("decode-{i}"))
                    .spawn(move || {
                        decode_worker(&engine, &counters, &job_rx, &op_tx, thumbs.as_ref())
                    })
                    .expect("spawn decode thread")
            })
            .collect();
        let committer = {
            let (engine, counters, cfg) = (engine.clone(), counters.clone(), cfg.clone());
            std::thread::Builder::new()
                .name("commit".into())
                .spawn(move || committer(&engine, &counters, &cfg, op_rx))
                .expect("spawn commit thread")
        };
        let planner = tokio::spawn(planner::planner(
            engine, counters, cfg, changes, job_tx, op_tx,
        ));
        Self {
            planner,
            workers,
            committer,
        }
    }

    /// Waits for every stage to drain and stop (after the change feed closed).
    pub async fn join(self) {
        let _ = self.planner.await;
        let handles = (self.workers, self.committer);
        let _ = tokio::task::spawn_blocking(move || {
            for w in handles.0 {
                let _ = w.join();
            }
            let _ = handles.1.join();
        })
        .await;
    }
}

fn decode_worker(
    engine: &Engine,
    counters: &Counters,
    jobs: &tokio::sync::Mutex<tmpsc::Receiver<Job>>,
    ops: &mpsc::SyncSender<Op>,
    thumbs: Option<&crate::thumbs::Thumbs>,
) {
    loop {
        let Some(job) = jobs.blocking_lock().blocking_recv() else {
            return;
        };
        match read_job(engine, &job, thumbs) {
            Ok(Some(op)) => {
                if ops.send(op).is_err() {
                    return;
                }
            }
            Ok(None) => counters.finish(&job.path),
            Err(error) => {
                tracing::warn!(path = %job.path.display(), %error, "cannot index file");
                if let Ok(p) = path_str(&job.path)
                    && let Err(e) = engine
                        .store
                        .record_failure(p, &error, job.size, job.mtime_ns)
                {
                    tracing::error!(path = %job.path.display(), error = %e, "cannot record failure");
                }
                counters.failed.fetch_add(1, Ordering::Relaxed);
                counters.finish(&job.path);
            }
        }
    }
}

/// The file's bytes, or its first `limit` + 1 if it has grown past `limit`
/// since it was looked at: never more than the limit allows in memory.
fn read_at_most(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads and hashes the file; decodes it only if its content is new to the space.
/// `Ok(None)`: the file vanished or changed since the event (a later event covers it).
fn read_job(
    engine: &Engine,
    job: &Job,
    thumbs: Option<&crate::thumbs::Thumbs>,
) -> Result<Option<Op>, String> {
    let limits = engine.encoder.limits();
    let meta = match std::fs::metadata(&job.path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", job.path.display())),
    };
    if meta.len() != job.size || mtime_ns(&meta) != Some(job.mtime_ns) {
        return Ok(None);
    }
    if meta.len() > limits.max_bytes {
        return Err(format!(
            "{}: file is {} bytes, over the limit of {} bytes",
            job.path.display(),
            meta.len(),
            limits.max_bytes
        ));
    }
    let bytes = match read_at_most(&job.path, limits.max_bytes) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", job.path.display())),
    };
    // Grown since the look above: the event of its growth covers it.
    if bytes.len() as u64 != job.size {
        return Ok(None);
    }
    let hash = ContentHash::of(&bytes);
    let record = FileRecord {
        size: job.size,
        mtime_ns: job.mtime_ns,
        hash,
        indexed_at_ms: now_ms(),
        meta: crate::preprocess::meta::read_meta(&bytes, job.mtime_ns),
    };
    let known = engine
        .space
        .vector_id_for_hash(&hash)
        .map_err(|e| e.to_string())?
        .is_some();
    let pixels = if known {
        None
    } else {
        // The thumbnail comes from the decode the embedding needs anyway,
        // unless that decode (reduced for a small model) is smaller than a
        // thumbnail; failing to write it costs only a later remake.
        let thumbs = thumbs.filter(|t| !t.has(&hash));
        let name = job.path.to_string_lossy();
        let mut too_small = false;
        let mut keep = |image: &image::RgbImage| {
            if let Some(t) = thumbs {
                if crate::thumbs::too_small(image.dimensions(), &record.meta) {
                    too_small = true;
                } else if let Err(e) = t.put(&hash, image) {
                    tracing::warn!(path = %job.path.display(), error = %e, "cannot write thumbnail");
                }
            }
        };
        let source = Source::Bytes {
            bytes: &bytes,
            name: &name,
        };
        let pixels = engine
            .encoder
            .preprocess_keeping(source, &mut keep)
            .map_err(|e| e.to_string())?;
        if too_small && let Some(t) = thumbs {
            let made = crate::preprocess::decode::decode_bytes_reduced(
                &bytes,
                &name,
                &limits,
                crate::thumbs::min_decode,
            )
            .map_err(|e| e.to_string())
            .and_then(|r| t.put(&hash, &r.image).map_err(|e| e.to_string()));
            if let Err(e) = made {
                tracing::warn!(path = %job.path.display(), error = %e, "cannot write thumbnail");
            }
        }
        Some(pixels)
    };
    Ok(Some(Op::Ready {
        path: job.path.clone(),
        record,
        pixels,
    }))
}

fn mtime_ns(meta: &std::fs::Metadata) -> Option<i64> {
    let t = meta.modified().ok()?;
    Some(match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The single writer: batches, embeds, commits, indexes, removes, checkpoints.
fn committer(
    engine: &Arc<Engine>,
    counters: &Counters,
    cfg: &PipelineConfig,
    ops: mpsc::Receiver<Op>,
) {
    let mut compaction = Compaction::default();
    let mut compacted = false;
    // What one model call may take: lowered for good when the device runs
    // out of memory on a batch.
    let cap = AtomicUsize::new(cfg.batch_size);
    let mut room = Room::new(cfg.min_free_bytes);
    let mut batch: Vec<(PathBuf, FileRecord, Option<Vec<f32>>)> = Vec::new();
    let mut last_checkpoint = Instant::now();
    let mut dirty = false;
    loop {
        if !room.wait(engine, counters) {
            // Shutting down on a full disk: what is not committed is found
            // again by the next start's scan; dropping the receiver frees the
            // workers blocked on it.
            tracing::warn!(
                files = batch.len(),
                "stopping with indexing paused: uncommitted files wait for the next start"
            );
            return;
        }
        let new_images = batch.iter().filter(|b| b.2.is_some()).count();
        let op = if batch.is_empty() {
            match ops.recv_timeout(Duration::from_secs(1)) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else if new_images >= cfg.batch_size {
            None
        } else {
            match ops.recv_timeout(cfg.batch_timeout) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        };
        match op {
            Some(Op::Ready {
                path,
                record,
                pixels,
            }) => {
                batch.push((path, record, pixels));
                continue;
            }
            Some(other) => {
                // Keep order: what was read before a removal is committed before it.
                dirty |= flush_batch(engine, counters, &cap, &mut batch);
                dirty |= apply(engine, other);
                counters.applying.fetch_sub(1, Ordering::SeqCst);
            }
            None => dirty |= flush_batch(engine, counters, &cap, &mut batch),
        }
        // A compacted index is checkpointed at the first chance, so a
        // restart loads it rather than the old graph and its tombstones.
        compacted |= compaction.step(engine);
        if (compacted || dirty && last_checkpoint.elapsed() >= cfg.checkpoint_every)
            && batch.is_empty()
            && counters.ingest_error().is_none()
        {
            checkpoint(engine);
            last_checkpoint = Instant::now();
            dirty = false;
            compacted = false;
        }
    }
    // Shutdown: commit what was already decoded, then leave a checkpoint so the
    // next start loads instead of rebuilding (not on a full disk).
    if !room.has_room(engine) {
        return;
    }
    flush_batch(engine, counters, &cap, &mut batch);
    checkpoint(engine);
    if let Err(e) = engine.store.flush() {
        tracing::error!(error = %e, "final store flush failed");
    }
}

/// The data dir's free space against the reserve. Asked before every
/// write, so it is read from the file system at most every
/// [`Room::RECHECK`]: the reserve is far larger than what a batch writes.
struct Room {
    min_free: u64,
    /// When the space was last read and found sufficient.
    fine_at: Option<Instant>,
}

impl Room {
    const RECHECK: Duration = Duration::from_millis(500);

    fn new(min_free: u64) -> Self {
        Self {
            min_free,
            fine_at: None,
        }
    }

    /// Whether the data dir has the room (or its free space cannot be
    /// read, which must not stop indexing).
    fn has_room(&mut self, engine: &Engine) -> bool {
        if self.fine_at.is_some_and(|t| t.elapsed() < Self::RECHECK) {
            return true;
        }
        let fine = match engine.store.free_bytes() {
            Ok(free) => free >= self.min_free,
            Err(e) => {
                tracing::debug!(error = %e, "free space unknown");
                true
            }
        };
        self.fine_at = fine.then(Instant::now);
        fine
    }

    /// Blocks while the data dir is short of room, with the reason in
    /// Status and the log: the store never meets a full disk mid-write, and
    /// queries keep being answered from what is committed. Returns false if
    /// the daemon begins to stop meanwhile.
    fn wait(&mut self, engine: &Engine, counters: &Counters) -> bool {
        loop {
            if self.has_room(engine) {
                counters.resume(PauseKind::Reserve);
                return true;
            }
            let free = engine.store.free_bytes().unwrap_or(0);
            counters.pause(
                PauseKind::Reserve,
                format!(
                    "indexing paused: {} has {} MiB free, below the {} MiB reserve (ingest.min_free_mb): free some space there, and indexing resumes by itself",
                    engine.store.dir().display(),
                    free >> 20,
                    self.min_free >> 20
                ),
            );
            if counters.closing.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// The index's compaction: hnsw_rs cannot delete, so removed vectors stay in
/// the graph as tombstones (memory, and a slower walk); past
/// `VectorIndex::needs_compaction` a new index is built from the store on its
/// own thread and swapped in by the committer between batches. Both indexes
/// are in memory meanwhile.
#[derive(Default)]
struct Compaction {
    running:
        Option<std::thread::JoinHandle<crate::engine::Result<(crate::index::VectorIndex, u64)>>>,
    /// After a failed rebuild, when to try again.
    retry_after: Option<Instant>,
}

impl Compaction {
    /// Starts or finishes a rebuild; true when a new index was swapped in.
    fn step(&mut self, engine: &Arc<Engine>) -> bool {
        let Some(handle) = self.running.take() else {
            let Some(index) = engine.index() else {
                return false;
            };
            if index.needs_compaction() && self.retry_after.is_none_or(|t| Instant::now() >= t) {
                tracing::info!(
                    live = index.len(),
                    tombstones = index.tombstone_count(),
                    "index compaction: rebuilding from the store"
                );
                let e = engine.clone();
                match std::thread::Builder::new()
                    .name("compact".into())
                    .spawn(move || e.build_fresh())
                {
                    Ok(h) => self.running = Some(h),
                    Err(e) => self.failed(&e.to_string()),
                }
            }
            return false;
        };
        if !handle.is_finished() {
            self.running = Some(handle);
            return false;
        }
        let started = Instant::now();
        let swapped = match handle.join() {
            Ok(Ok((fresh, last))) => engine.swap_in(fresh, last).map_err(|e| e.to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the rebuild thread panicked".into()),
        };
        match swapped {
            Ok(()) => {
                let Some(index) = engine.index() else {
                    return false;
                };
                tracing::info!(
                    vectors = index.len(),
                    tombstones = index.tombstone_count(),
                    swap_ms = started.elapsed().as_millis() as u64,
                    "index compacted"
                );
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, why: &str) {
        tracing::error!(
            error = why,
            "index compaction failed: retrying in 10 minutes"
        );
        self.retry_after = Some(Instant::now() + Duration::from_secs(600));
    }
}

fn checkpoint(engine: &Engine) {
    let started = Instant::now();
    match engine.checkpoint() {
        Ok(()) => tracing::info!(
            vectors = engine.searchable(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index checkpoint written"
        ),
        Err(e) => tracing::error!(error = %e, "index checkpoint failed"),
    }
}

/// Embeds and commits the batch; returns whether anything was written.
fn flush_batch(
    engine: &Engine,
    counters: &Counters,
    cap: &AtomicUsize,
    batch: &mut Vec<(PathBuf, FileRecord, Option<Vec<f32>>)>,
) -> bool {
    if batch.is_empty() {
        return false;
    }
    let items = std::mem::take(batch);
    let pixels: Vec<Vec<f32>> = items.iter().filter_map(|(_, _, p)| p.clone()).collect();
    let started = Instant::now();
    let vectors = match super::batch::embed_in_halves(&pixels, cap, |chunk| {
        engine.encoder.embed_pixels(chunk)
    }) {
        Ok(v) => {
            if !pixels.is_empty() {
                counters.embed_batch.observe(started.elapsed());
            }
            v
        }
        Err(e) => {
            // A model failure is not the files' fault: leave them pending for the next scan.
            tracing::error!(error = %e, files = items.len(), "embedding failed");
            for (p, _, _) in &items {
                counters.finish(p);
            }
            return false;
        }
    };
    let mut vectors = vectors.into_iter();
    let mut commits = Vec::with_capacity(items.len());
    // Content decided "known" by a worker may have lost its vector to a removal
    // since; such items need embedding after all: retried by the next scan.
    let mut seen_new: HashMap<ContentHash, ()> = HashMap::new();
    for (path, record, px) in &items {
        let Ok(p) = path_str(path) else { continue };
        let embedding = match px {
            Some(_) => {
                seen_new.insert(record.hash, ());
                Embedding::New(vectors.next().expect("one vector per image"))
            }
            None if seen_new.contains_key(&record.hash)
                || matches!(engine.space.vector_id_for_hash(&record.hash), Ok(Some(_))) =>
            {
                Embedding::Existing
            }
            None => {
                tracing::info!(path = %path.display(), "content lost its vector before commit: left for the next scan");
                continue;
            }
        };
        commits.push(Commit {
            path: p.to_string(),
            record: *record,
            embedding,
        });
    }
    let new = commits
        .iter()
        .filter(|c| matches!(c.embedding, Embedding::New(_)))
        .count() as u64;
    let reused = commits.len() as u64 - new;
    let ok = match engine.commit(&commits) {
        Ok(_) => {
            counters.resume(PauseKind::DiskFull);
            counters.embedded.fetch_add(new, Ordering::Relaxed);
            counters.reused.fetch_add(reused, Ordering::Relaxed);
            counters
                .committed
                .fetch_add(commits.len() as u64, Ordering::Relaxed);
            tracing::debug!(
                files = commits.len(),
                embedded = new,
                reused,
                "batch committed"
            );
            true
        }
        Err(e) if e.is_disk_full() => {
            // Another writer took the room between the check and the write:
            // keep the batch and retry each second (the store is unchanged).
            counters.pause(
                PauseKind::DiskFull,
                format!("indexing paused: the disk is full: {e}: free some space there, and indexing resumes by itself"),
            );
            *batch = items;
            std::thread::sleep(Duration::from_secs(1));
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, files = commits.len(), "commit failed");
            false
        }
    };
    for (p, _, _) in &items {
        counters.finish(p);
    }
    ok
}

/// True when `path` is certainly not on the disk (an unreadable one is kept).
fn gone_from_disk(path: &str) -> bool {
    matches!(Path::new(path).try_exists(), Ok(false))
}

/// Applies a removal or a reconcile; returns whether anything changed.
fn apply(engine: &Engine, op: Op) -> bool {
    let removal = match op {
        Op::Remove(path) => match path_str(&path) {
            // Applied `remove_grace` after the event: whatever is back on
            // the disk by now (a folder re-created, a file saved by rename)
            // stays.
            Ok(p) => engine.store.remove_prefix_if(p, gone_from_disk),
            Err(e) => Err(e),
        },
        Op::Reconcile { root, seen } => {
            let Ok(r) = path_str(&root) else { return false };
            if engine.store.root_offline(r).unwrap_or(false) {
                return false;
            }
            if seen.is_empty() && engine.store.iter_files_under(r).next().is_some() {
                // An unmounted share can look like an empty folder: never read
                // "nothing there" as "everything deleted".
                tracing::warn!(root = %root.display(), "scan found no files where files were indexed: keeping them");
                return false;
            }
            let seen: HashSet<&Path> = seen.iter().map(PathBuf::as_path).collect();
            // The scan is `remove_grace` old by now: a file created since then
            // is in the store but not in `seen`. Only what is gone from the
            // disk now is forgotten (an unreadable path is kept).
            let gone: Vec<String> = engine
                .store
                .iter_files_under(r)
                .filter_map(|f| f.ok())
                .map(|(p, _)| p)
                .filter(|p| !seen.contains(Path::new(p)))
                .filter(|p| gone_from_disk(p))
                .collect();
            // Failure records of files that are gone too (deleted while stopped).
            let under = |p: &str| Path::new(p).starts_with(&root);
            let stale_failures: Vec<String> = engine
                .store
                .iter_failures()
                .filter_map(|f| f.ok())
                .map(|(p, _)| p)
                .filter(|p| under(p) && !seen.contains(Path::new(p)))
                .collect();
            for p in &stale_failures {
                let _ = engine.store.clear_failure(p);
            }
            let removal = engine.store.remove_paths(&gone);
            if !gone.is_empty() && removal.is_ok() {
                tracing::info!(root = %root.display(), files = gone.len(), "reconcile removed files no longer on disk");
            }
            removal
        }
        Op::Forget { path: root, keep } => {
            let Ok(r) = path_str(&root) else { return false };
            let forget = |p: &str| !keep.iter().any(|k| Path::new(p).starts_with(k));
            let failures: Vec<String> = engine
                .store
                .iter_failures()
                .filter_map(|f| f.ok())
                .map(|(p, _)| p)
                .filter(|p| Path::new(p).starts_with(&root) && forget(p))
                .collect();
            for p in &failures {
                let _ = engine.store.clear_failure(p);
            }
            let removal = engine.store.remove_prefix_if(r, forget);
            if let Ok(rm) = &removal
                && rm.paths > 0
            {
                tracing::info!(path = %root.display(), files = rm.paths, "forgot files no longer watched");
            }
            removal
        }
        Op::Ready { .. } => unreachable!("handled by the caller"),
    };
    match removal {
        Ok(r) => {
            engine.apply(&[], r.orphaned_in(engine.space.fingerprint()));
            r.paths > 0
        }
        Err(e) => {
            // Nothing is lost: the files stay indexed, and the next start's
            // full scan forgets whatever is still gone then.
            tracing::error!(error = %e, "cannot forget removed files: they stay in the index until the next start");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file is read whole up to the limit, and no further past it.
    #[test]
    fn a_file_is_read_up_to_its_limit_and_no_further() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.jpg");
        std::fs::write(&path, vec![7u8; 1000]).unwrap();
        assert_eq!(read_at_most(&path, 1000).unwrap().len(), 1000);
        assert_eq!(read_at_most(&path, 10).unwrap().len(), 11);
        let missing = read_at_most(&dir.path().join("gone.jpg"), 10).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
