//! The coordinator of the change feed: one tokio task that owns all state (no locks but the
//! notify watcher's), fed by notify callbacks, blocking scan threads and timers, and writing
//! [`Change`]s to the consumer's bounded channel.
//!
//! - **Watches.** One notify watcher (one inotify instance) per online root, so that a root going
//!   offline drops exactly its watches and a queue overflow names its root. With inotify, folders
//!   are watched one by one as the walk reaches them (non-recursive watches), which skips excluded
//!   folders (`@eaDir` alone would double the watch count on a Synology share) and survives
//!   unreadable ones; elsewhere the root gets one recursive watch.
//! - **Events → changes.** Deletes and renames away are `Remove`d at once. Creates, writes and
//!   renames in become *pending*: after `debounce` of quiet the path is stat'ed; a folder is walked
//!   (a folder moved in brings one event, none for its contents), a file is stat'ed again after
//!   `stable_for` and reported when size and mtime did not change, else re-checked (any event
//!   restarts the wait; without events at most `max_unstable_checks` times).
//! - **Scans.** Initial, reconcile, overflow rescans and "back online" walk a whole root and end
//!   in `Scanned`; folders that appear are walked without it. At most [`MAX_SCANS`] run at once,
//!   one full scan per root. While a full scan runs, every path the events saw appear or go is
//!   recorded, so that `seen` includes files created behind the walk and a walked file deleted
//!   before its `Upsert` left the queue is not reported.
//! - **Bounds.** notify's thread never blocks: it `try_send`s into a bounded channel and on
//!   overflow flags its root for a rescan. The pending map and the per-scan records are bounded
//!   by `max_pending` (beyond: rescan). Output waits in a queue that stops taking events
//!   ([`OUT_EVENTS_HIGH`]) or scan results ([`OUT_SCAN_HIGH`]) when the consumer is slow, so a
//!   slow consumer slows the walk, and fills notify's channel until it overflows into a rescan.
//! - **Roots.** Polled every `poll_roots_every` and whenever an event names the root itself. A
//!   root is offline when missing, not a listable folder, or (once seen as a mount point) no
//!   longer a mount point: an unmounted share leaves an empty folder that must not be scanned as
//!   "everything deleted". Offline drops its watcher, scans and pending paths.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fs::{self, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _, WatcherKind};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at, sleep_until};
use tracing::{debug, info, warn};

mod pending;
mod roots;
mod scans;

use super::feed::ChangeTx;
use super::scan::{self, FileItem, Filter, Identity, Probe};
use super::{Change, IngestError, Result, WatchConfig};
use crate::shutdown::Shutdown;
use pending::{Appear, Pending};
use roots::{RootSlot, RootState};
use scans::{Job, Scan, ScanKind, ScanMsg};

/// Scans running at once (blocking threads), and of those at most [`MAX_FULL_SCANS`] full ones,
/// so a folder moved in is not stuck behind two long initial scans.
const MAX_SCANS: usize = 4;
const MAX_FULL_SCANS: usize = 2;
/// Output queued for the consumer beyond which notify events wait in their channel.
const OUT_EVENTS_HIGH: usize = 65_536;
/// Output queued for the consumer beyond which scan results wait (and the walk with them).
const OUT_SCAN_HIGH: usize = 1024;
/// Files in flight from scan threads to the coordinator.
const SCAN_CHANNEL: usize = 1024;
/// Paths stat'ed per blocking call.
const STAT_BATCH: usize = 512;

/// Internal bounds, separate from [`WatchConfig`] so tests can shrink them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Paths waiting for debounce / stability, and paths recorded per running scan.
    pub max_pending: usize,
    /// notify events buffered between notify's thread and the coordinator.
    pub raw_channel: usize,
    /// Stat rounds a file may keep changing without events before it is left to the next scan.
    pub max_unstable_checks: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: 100_000,
            raw_channel: 16_384,
            max_unstable_checks: 60,
        }
    }
}

/// Owns the background task (and through it the notify watchers and scan threads). Stops when
/// the shutdown receiver reads `true` (or its sender is dropped), when the consumer drops its
/// receiver, or when this is dropped.
#[derive(Debug)]
pub struct Watcher {
    task: Option<JoinHandle<()>>,
    busy: Arc<AtomicU64>,
}

impl Watcher {
    /// Validates `cfg` and starts watching: first a `RootOnline`/`RootOffline` per root, then the
    /// initial scan of every online root. Fails on a bad glob, overlapping roots, a zero poll or
    /// reconcile period, no extensions, or outside a tokio runtime; nothing later is fatal.
    pub fn spawn(cfg: WatchConfig, tx: ChangeTx, shutdown: Shutdown) -> Result<Watcher> {
        Self::spawn_with(cfg, tx, shutdown, Limits::default())
    }

    pub(crate) fn spawn_with(
        cfg: WatchConfig,
        tx: ChangeTx,
        mut shutdown: Shutdown,
        limits: Limits,
    ) -> Result<Watcher> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| IngestError::NoRuntime)?;
        let (engine, raw_rx, scan_rx) = Coordinator::new(cfg, limits)?;
        let busy = engine.busy.clone();
        let task = runtime.spawn(async move {
            tokio::select! {
                () = engine.run(raw_rx, scan_rx, tx) => {}
                // Dropping the engine wherever it waits (even on a stat of a hung mount) drops
                // the notify watchers and cancels the scan threads.
                () = shutdown.recv() => {}
            }
        });
        Ok(Watcher {
            task: Some(task),
            busy,
        })
    }

    /// Work the watcher holds: paths waiting out the debounce and stability
    /// checks, changes not yet handed on, scans queued or running. Status
    /// adds it to the pipeline's pending files, so that 0 means caught up.
    pub fn busy(&self) -> Arc<AtomicU64> {
        self.busy.clone()
    }

    /// Waits until the background task has ended (after shutdown).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A notify callback's message, tagged with the watcher it came from so that events of a
/// replaced watcher (root went offline and came back) are dropped.
struct Raw {
    root: usize,
    generation: u64,
    res: notify::Result<Event>,
}

/// Set from notify's thread when the raw channel was full: those roots need a rescan.
struct Overflow {
    roots: Vec<AtomicBool>,
    wake: Notify,
}

struct Coordinator {
    filter: Arc<Filter>,
    debounce: Duration,
    stable_for: Duration,
    reconcile_every: Option<Duration>,
    poll_roots_every: Duration,
    limits: Limits,
    /// inotify: watch folder by folder (see module docs).
    per_dir: bool,
    roots: Vec<RootSlot>,
    /// Waiting for the consumer; bounded by pausing its producers.
    out: VecDeque<Change>,
    pending: HashMap<PathBuf, Pending>,
    /// When pending paths are due; one live item per entry (see `Pending::heap_at`).
    timers: BinaryHeap<Reverse<(Instant, u64, PathBuf)>>,
    seq: u64,
    jobs: VecDeque<Job>,
    scans: HashMap<u64, Scan>,
    next_scan: u64,
    /// Cloned into every notify callback; the engine keeps one so the channel never closes.
    raw_tx: mpsc::Sender<Raw>,
    scan_tx: mpsc::Sender<ScanMsg>,
    overflow: Arc<Overflow>,
    /// See [`Watcher::busy`]; updated at every turn of the loop.
    busy: Arc<AtomicU64>,
}

/// What [`Watcher::spawn`] refuses (a zero period, no extensions, a bad
/// glob, overlapping roots), and the filter and absolute roots it then
/// watches with.
fn checked(cfg: &WatchConfig) -> Result<(Filter, Vec<PathBuf>)> {
    if cfg.poll_roots_every.is_zero() {
        return Err(IngestError::Config("poll_roots_every must be > 0"));
    }
    if cfg.reconcile_every.is_some_and(|d| d.is_zero()) {
        return Err(IngestError::Config("reconcile_every must be > 0 (or off)"));
    }
    if cfg.extensions.is_empty() {
        return Err(IngestError::Config("extensions is empty"));
    }
    let filter = Filter::new(&cfg.exclude, &cfg.extensions)?;
    let mut roots: Vec<PathBuf> = Vec::new();
    for root in &cfg.roots {
        let abs = std::path::absolute(root).map_err(|e| IngestError::Root {
            path: root.clone(),
            reason: e.to_string(),
        })?;
        if let Some(other) = roots
            .iter()
            .find(|r| abs.starts_with(r) || r.starts_with(&abs))
        {
            return Err(IngestError::Root {
                path: abs.clone(),
                reason: format!("overlaps root {}", other.display()),
            });
        }
        roots.push(abs);
    }
    Ok((filter, roots))
}

impl WatchConfig {
    /// What [`Watcher::spawn`] would refuse, asked alone: a daemon asks
    /// before it loads its model, so a bad glob fails at once.
    pub fn check(&self) -> Result<()> {
        checked(self).map(|_| ())
    }
}

impl Coordinator {
    fn new(
        cfg: WatchConfig,
        limits: Limits,
    ) -> Result<(Coordinator, mpsc::Receiver<Raw>, mpsc::Receiver<ScanMsg>)> {
        let (filter, roots) = checked(&cfg)?;
        let filter = Arc::new(filter);
        let (raw_tx, raw_rx) = mpsc::channel(limits.raw_channel.max(1));
        let (scan_tx, scan_rx) = mpsc::channel(SCAN_CHANNEL);
        let overflow = Arc::new(Overflow {
            roots: roots.iter().map(|_| AtomicBool::new(false)).collect(),
            wake: Notify::new(),
        });
        let engine = Coordinator {
            filter,
            debounce: cfg.debounce,
            stable_for: cfg.stable_for,
            reconcile_every: cfg.reconcile_every,
            poll_roots_every: cfg.poll_roots_every,
            limits,
            per_dir: RecommendedWatcher::kind() == WatcherKind::Inotify,
            roots: roots
                .into_iter()
                .map(|path| RootSlot {
                    path,
                    state: RootState::Unknown,
                    ever_mount: false,
                    generation: 0,
                    watcher: None,
                    full_scan: None,
                    scanned_once: false,
                })
                .collect(),
            out: VecDeque::new(),
            pending: HashMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            jobs: VecDeque::new(),
            scans: HashMap::new(),
            next_scan: 0,
            raw_tx,
            scan_tx,
            overflow,
            busy: Arc::default(),
        };
        Ok((engine, raw_rx, scan_rx))
    }

    async fn run(
        mut self,
        mut raw_rx: mpsc::Receiver<Raw>,
        mut scan_rx: mpsc::Receiver<ScanMsg>,
        tx: ChangeTx,
    ) {
        self.probe_roots().await;
        let mut poll = ticker(self.poll_roots_every);
        let mut reconcile = self.reconcile_every.map(ticker);
        loop {
            self.start_jobs();
            let held = self.pending.len() + self.out.len() + self.jobs.len() + self.scans.len();
            self.busy.store(held as u64, Ordering::Relaxed);
            let wake = self.next_wake();
            tokio::select! {
                permit = tx.reserve(), if !self.out.is_empty() => match permit {
                    Ok(permit) => permit.send(self.out.pop_front().expect("checked non-empty")),
                    Err(_) => {
                        debug!("change receiver dropped: watcher stops");
                        return;
                    }
                },
                () = self.overflow.wake.notified() => self.take_overflow(),
                Some(raw) = raw_rx.recv(), if self.out.len() < OUT_EVENTS_HIGH => {
                    self.on_raw(raw).await;
                }
                Some(msg) = scan_rx.recv(), if self.out.len() < OUT_SCAN_HIGH => self.on_scan(msg),
                () = sleep_until(wake) => self.check_due().await,
                _ = poll.tick() => self.probe_roots().await,
                _ = tick(&mut reconcile) => {
                    for root in 0..self.roots.len() {
                        self.request_full(root, ScanKind::Reconcile, Instant::now());
                    }
                }
            }
        }
    }

    // ---- roots -------------------------------------------------------------------------------

    fn take_overflow(&mut self) {
        let not_before = Instant::now() + self.debounce;
        for root in 0..self.roots.len() {
            if self.overflow.roots[root].swap(false, Ordering::Relaxed) {
                if !self.rescan_queued(root) {
                    warn!(root = %self.roots[root].path.display(),
                        "event channel full (consumer slow or event storm): rescanning root");
                }
                self.request_full(root, ScanKind::Rescan, not_before);
            }
        }
    }

    // ---- events ------------------------------------------------------------------------------

    async fn on_raw(&mut self, raw: Raw) {
        let root = raw.root;
        if raw.generation != self.roots[root].generation || !self.online(root) {
            return;
        }
        let event = match raw.res {
            Ok(event) => event,
            Err(err) => {
                let root_path = self.roots[root].path.display().to_string();
                if matches!(err.kind, notify::ErrorKind::MaxFilesWatch) {
                    warn!(
                        root = root_path,
                        "inotify watch limit reached: raise the sysctl \
                        fs.inotify.max_user_watches; new folders are only picked up by the \
                        periodic reconcile"
                    );
                } else {
                    warn!(root = root_path, error = %err, "watch error: rescanning root");
                    self.request_full(root, ScanKind::Rescan, Instant::now() + self.debounce);
                }
                return;
            }
        };
        if event.need_rescan() {
            warn!(root = %self.roots[root].path.display(),
                "kernel event queue overflowed: rescanning root");
            self.request_full(root, ScanKind::Rescan, Instant::now() + self.debounce);
        }
        let mut root_touched = false;
        for path in &event.paths {
            if *path == self.roots[root].path {
                root_touched = true;
                continue;
            }
            let Ok(rel) = path.strip_prefix(&self.roots[root].path) else {
                continue;
            };
            if self.filter.is_excluded(rel) {
                continue;
            }
            match event.kind {
                EventKind::Create(CreateKind::Folder) => self.appeared(root, path, Appear::Dir),
                EventKind::Create(CreateKind::File)
                | EventKind::Modify(
                    ModifyKind::Data(_)
                    | ModifyKind::Metadata(_)
                    | ModifyKind::Any
                    | ModifyKind::Other,
                )
                | EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                    if self.filter.is_image(path) {
                        self.appeared(root, path, Appear::Write);
                    }
                }
                EventKind::Create(_) => self.appeared(root, path, Appear::Unknown),
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) => self.gone(root, path),
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                    self.appeared(root, path, Appear::MovedIn);
                }
                // notify reports the From and To halves first (inotify, Windows): nothing new.
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {}
                EventKind::Modify(ModifyKind::Name(_)) => {
                    self.appeared(root, path, Appear::Renamed);
                }
                EventKind::Remove(RemoveKind::File) => {
                    if self.filter.is_image(path) {
                        self.gone(root, path);
                    }
                }
                EventKind::Remove(_) => self.gone(root, path),
                EventKind::Access(_) | EventKind::Any | EventKind::Other => {}
            }
        }
        if root_touched {
            // The root itself was deleted, moved or changed mode: find out now, not at the poll.
            self.probe_roots().await;
        }
    }

    // ---- stability ---------------------------------------------------------------------------

    // ---- scans -------------------------------------------------------------------------------
}

fn lock(w: &Mutex<RecommendedWatcher>) -> MutexGuard<'_, RecommendedWatcher> {
    // A panic inside notify while holding it leaves the watcher as usable as it was.
    w.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Events the feed never acts on, dropped on notify's thread so they cannot fill the channel:
/// opens and read-only closes (the daemon's own decoding makes two per photo).
fn is_noise(event: &Event) -> bool {
    matches!(event.kind, EventKind::Access(kind) if kind != AccessKind::Close(AccessMode::Write))
        && !event.need_rescan()
}

fn ticker(period: Duration) -> Interval {
    let mut interval = interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
