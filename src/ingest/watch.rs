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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _, WatcherKind};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at, sleep_until};
use tracing::{debug, info, warn};

use super::scan::{self, FileItem, Filter, Identity, Probe};
use super::{Change, IngestError, Result, WatchConfig};

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
}

impl Watcher {
    /// Validates `cfg` and starts watching: first a `RootOnline`/`RootOffline` per root, then the
    /// initial scan of every online root. Fails on a bad glob, overlapping roots, a zero poll or
    /// reconcile period, no extensions, or outside a tokio runtime; nothing later is fatal.
    pub fn spawn(
        cfg: WatchConfig,
        tx: mpsc::Sender<Change>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Watcher> {
        Self::spawn_with(cfg, tx, shutdown, Limits::default())
    }

    pub(crate) fn spawn_with(
        cfg: WatchConfig,
        tx: mpsc::Sender<Change>,
        mut shutdown: watch::Receiver<bool>,
        limits: Limits,
    ) -> Result<Watcher> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| IngestError::NoRuntime)?;
        let (engine, raw_rx, scan_rx) = Engine::new(cfg, limits)?;
        let task = runtime.spawn(async move {
            tokio::select! {
                () = engine.run(raw_rx, scan_rx, tx) => {}
                // Dropping the engine wherever it waits (even on a stat of a hung mount) drops
                // the notify watchers and cancels the scan threads.
                () = stopped(&mut shutdown) => {}
            }
        });
        Ok(Watcher { task: Some(task) })
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

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender can never say "stop" later: treat it as stop rather than run unowned.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A notify callback's message, tagged with the watcher it came from so that events of a
/// replaced watcher (root went offline and came back) are dropped.
struct Raw {
    root: usize,
    generation: u64,
    res: notify::Result<Event>,
}

enum ScanMsg {
    File {
        scan: u64,
        item: FileItem,
    },
    Done {
        scan: u64,
        complete: bool,
        unwatched: usize,
    },
}

/// Set from notify's thread when the raw channel was full: those roots need a rescan.
struct Overflow {
    roots: Vec<AtomicBool>,
    wake: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanKind {
    Initial,
    Reconcile,
    Rescan,
    Online,
    /// A folder that appeared under the root: no `Scanned`.
    Folder,
}

impl ScanKind {
    fn is_full(self) -> bool {
        self != ScanKind::Folder
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RootState {
    Unknown,
    Online(Identity),
    Offline,
}

struct RootSlot {
    path: PathBuf,
    state: RootState,
    /// Seen as a mount point once: it must be one to count as online (see module docs).
    ever_mount: bool,
    /// Bumped when the watcher is replaced or dropped.
    generation: u64,
    /// Shared with this root's scan threads, which add folder watches as they walk; the mutex
    /// is only ever taken on blocking threads, for one `watch` call.
    watcher: Option<Arc<Mutex<RecommendedWatcher>>>,
    full_scan: Option<u64>,
    scanned_once: bool,
}

struct Job {
    root: usize,
    dir: PathBuf,
    kind: ScanKind,
    not_before: Instant,
}

struct Scan {
    root: usize,
    kind: ScanKind,
    started: Instant,
    cancel: Arc<AtomicBool>,
    /// Files the walk reported (full scans only).
    seen: Vec<PathBuf>,
    /// Paths that events saw appear (true) or go (false) while the walk ran.
    marks: HashMap<PathBuf, bool>,
    any_gone: bool,
    /// Too much happened to keep `marks` within bounds: no `Scanned`, scan again.
    lossy: bool,
}

impl Drop for Scan {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Scan {
    fn mark(&mut self, path: &Path, present: bool, max: usize) {
        if present && !self.kind.is_full() {
            return;
        }
        if self.marks.len() >= max && !self.marks.contains_key(path) {
            self.lossy = true;
            return;
        }
        self.marks.insert(path.to_path_buf(), present);
        self.any_gone |= !present;
    }

    /// Whether an event said this path (or a folder above it, below `root`) is gone.
    fn says_gone(&self, path: &Path, root: &Path) -> bool {
        if !self.any_gone {
            return false;
        }
        for p in path.ancestors() {
            if let Some(&present) = self.marks.get(p) {
                return !present;
            }
            if p == root {
                break;
            }
        }
        false
    }
}

/// A path waiting for quiet (debounce) and then for stability.
struct Pending {
    root: usize,
    /// Identifies this entry's heap item against items of an earlier entry for the same path.
    seq: u64,
    due: Instant,
    /// When the live heap item fires; `None` while a stat is in flight.
    heap_at: Option<Instant>,
    /// Size and mtime at the last stat, when no event came since.
    last: Option<(u64, i64)>,
    checks: u32,
    /// Renamed with unknown direction (backends that send `RenameMode::Any`): if it is missing
    /// when stat'ed, it went away.
    gone_if_missing: bool,
}

#[derive(Clone, Copy)]
enum Appear {
    /// Created, written, closed after writing: debounce, and only image names.
    Write,
    /// A folder was created: walk it now.
    Dir,
    /// Moved in (file or folder): complete already, stat now.
    MovedIn,
    /// Created, kind unknown.
    Unknown,
    /// Renamed, direction unknown.
    Renamed,
}

struct Engine {
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
}

impl Engine {
    fn new(
        cfg: WatchConfig,
        limits: Limits,
    ) -> Result<(Engine, mpsc::Receiver<Raw>, mpsc::Receiver<ScanMsg>)> {
        if cfg.poll_roots_every.is_zero() {
            return Err(IngestError::Config("poll_roots_every must be > 0"));
        }
        if cfg.reconcile_every.is_some_and(|d| d.is_zero()) {
            return Err(IngestError::Config("reconcile_every must be > 0 (or off)"));
        }
        if cfg.extensions.is_empty() {
            return Err(IngestError::Config("extensions is empty"));
        }
        let filter = Arc::new(Filter::new(&cfg.exclude, &cfg.extensions)?);
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
        let (raw_tx, raw_rx) = mpsc::channel(limits.raw_channel.max(1));
        let (scan_tx, scan_rx) = mpsc::channel(SCAN_CHANNEL);
        let overflow = Arc::new(Overflow {
            roots: roots.iter().map(|_| AtomicBool::new(false)).collect(),
            wake: Notify::new(),
        });
        let engine = Engine {
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
        };
        Ok((engine, raw_rx, scan_rx))
    }

    async fn run(
        mut self,
        mut raw_rx: mpsc::Receiver<Raw>,
        mut scan_rx: mpsc::Receiver<ScanMsg>,
        tx: mpsc::Sender<Change>,
    ) {
        self.probe_roots().await;
        let mut poll = ticker(self.poll_roots_every);
        let mut reconcile = self.reconcile_every.map(ticker);
        loop {
            self.start_jobs();
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

    async fn probe_roots(&mut self) {
        let paths: Vec<PathBuf> = self.roots.iter().map(|r| r.path.clone()).collect();
        let probes = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|p| scan::probe_root(p))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (root, probe) in probes.into_iter().enumerate() {
            self.apply_probe(root, probe);
        }
    }

    fn apply_probe(&mut self, root: usize, probe: Probe) {
        let slot = &self.roots[root];
        match (slot.state, probe) {
            (RootState::Online(was), Probe::Up { id, mount }) => {
                if slot.ever_mount && !mount {
                    self.go_offline(root, "no longer a mount point (unmounted?)");
                } else if was != id {
                    self.go_offline(root, "replaced by another folder");
                    self.go_online(root, id, mount);
                }
            }
            (RootState::Online(_), Probe::Down(reason)) => self.go_offline(root, &reason),
            (RootState::Unknown | RootState::Offline, Probe::Up { id, mount }) => {
                if slot.ever_mount && !mount {
                    if slot.state == RootState::Unknown {
                        self.go_offline(root, "no longer a mount point (unmounted?)");
                    }
                } else {
                    self.go_online(root, id, mount);
                }
            }
            (RootState::Unknown, Probe::Down(reason)) => self.go_offline(root, &reason),
            (RootState::Offline, Probe::Down(_)) => {}
        }
    }

    fn go_online(&mut self, root: usize, id: Identity, mount: bool) {
        let per_dir = self.per_dir;
        self.roots[root].generation += 1;
        let watcher = self.make_watcher(root, self.roots[root].generation);
        let slot = &mut self.roots[root];
        slot.state = RootState::Online(id);
        slot.ever_mount |= mount;
        slot.watcher = match watcher {
            Ok(w) => Some(Arc::new(Mutex::new(w))),
            Err(err) => {
                let hint = if per_dir {
                    ": raise the sysctl fs.inotify.max_user_instances"
                } else {
                    ""
                };
                warn!(root = %slot.path.display(), error = %err,
                    "cannot watch: changes only picked up by the periodic reconcile{hint}");
                None
            }
        };
        info!(root = %slot.path.display(), mount, "root online");
        let kind = if slot.scanned_once {
            ScanKind::Online
        } else {
            ScanKind::Initial
        };
        self.out.push_back(Change::RootOnline {
            root: slot.path.clone(),
        });
        self.request_full(root, kind, Instant::now());
    }

    fn go_offline(&mut self, root: usize, reason: &str) {
        let slot = &mut self.roots[root];
        warn!(root = %slot.path.display(), reason, "root offline: its records are kept");
        slot.state = RootState::Offline;
        slot.generation += 1;
        slot.watcher = None;
        slot.full_scan = None;
        self.out.push_back(Change::RootOffline {
            root: slot.path.clone(),
        });
        // Dropping a scan cancels its thread; its remaining messages find no scan and are ignored.
        self.scans.retain(|_, s| s.root != root);
        self.jobs.retain(|j| j.root != root);
        self.pending.retain(|_, p| p.root != root);
    }

    fn online(&self, root: usize) -> bool {
        matches!(self.roots[root].state, RootState::Online(_))
    }

    fn make_watcher(&self, root: usize, generation: u64) -> notify::Result<RecommendedWatcher> {
        let tx = self.raw_tx.clone();
        let overflow = Arc::clone(&self.overflow);
        // Runs on notify's thread: must never block (a blocked handler would also stall the
        // `watch` calls that scan threads make through the same thread).
        notify::recommended_watcher(move |res: notify::Result<Event>| {
            if res.as_ref().is_ok_and(is_noise) {
                return;
            }
            match tx.try_send(Raw {
                root,
                generation,
                res,
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    overflow.roots[root].store(true, Ordering::Relaxed);
                    overflow.wake.notify_one();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        })
    }

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

    /// A path was created, written or moved in: (re)start its wait.
    fn appeared(&mut self, root: usize, path: &Path, how: Appear) {
        let now = Instant::now();
        let delay = match how {
            Appear::Dir | Appear::MovedIn => Duration::ZERO,
            Appear::Write | Appear::Unknown | Appear::Renamed => self.debounce,
        };
        if self.filter.is_image(path) {
            self.mark_scans(root, path, true);
        }
        let due = now + delay;
        if let Some(entry) = self.pending.get_mut(path) {
            entry.due = due;
            entry.last = None;
            entry.checks = 0;
            entry.gone_if_missing |= matches!(how, Appear::Renamed);
            // Only an earlier time needs a new heap item; a later one is re-queued on pop.
            if entry.heap_at.is_some_and(|at| due < at) {
                entry.heap_at = Some(due);
                self.timers
                    .push(Reverse((due, entry.seq, path.to_path_buf())));
            }
            return;
        }
        self.track(
            root,
            path.to_path_buf(),
            None,
            due,
            matches!(how, Appear::Renamed),
        );
    }

    /// Starts tracking a path; false (and a rescan of its root is requested) when full.
    fn track(
        &mut self,
        root: usize,
        path: PathBuf,
        last: Option<(u64, i64)>,
        due: Instant,
        gone_if_missing: bool,
    ) -> bool {
        if self.pending.len() >= self.limits.max_pending {
            if !self.rescan_queued(root) {
                warn!(root = %self.roots[root].path.display(), limit = self.limits.max_pending,
                    "too many files changing at once: rescanning root once they settle");
            }
            let settle = self.debounce + self.stable_for;
            self.request_full(root, ScanKind::Rescan, Instant::now() + settle);
            return false;
        }
        self.seq += 1;
        self.timers.push(Reverse((due, self.seq, path.clone())));
        self.pending.insert(
            path,
            Pending {
                root,
                seq: self.seq,
                due,
                heap_at: Some(due),
                last,
                checks: 0,
                gone_if_missing,
            },
        );
        true
    }

    /// Whether a full scan of `root` is already waiting to start (then a warning is not news).
    fn rescan_queued(&self, root: usize) -> bool {
        self.jobs.iter().any(|j| j.root == root && j.kind.is_full())
    }

    fn gone(&mut self, root: usize, path: &Path) {
        self.pending.remove(path);
        self.mark_scans(root, path, false);
        self.out.push_back(Change::Remove {
            path: path.to_path_buf(),
        });
    }

    fn mark_scans(&mut self, root: usize, path: &Path, present: bool) {
        let max = self.limits.max_pending;
        for scan in self.scans.values_mut().filter(|s| s.root == root) {
            scan.mark(path, present, max);
        }
    }

    // ---- stability ---------------------------------------------------------------------------

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let timer = self.timers.peek().map_or(far, |Reverse((at, _, _))| *at);
        let job = self
            .jobs
            .iter()
            .map(|j| j.not_before)
            .filter(|&t| t > Instant::now())
            .min()
            .unwrap_or(far);
        timer.min(job)
    }

    async fn check_due(&mut self) {
        let now = Instant::now();
        let mut batch = Vec::new();
        while batch.len() < STAT_BATCH {
            match self.timers.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => break,
            }
            let Reverse((at, seq, path)) = self.timers.pop().expect("peeked");
            let Some(entry) = self.pending.get_mut(&path) else {
                continue;
            };
            if entry.seq != seq || entry.heap_at != Some(at) {
                continue;
            }
            if entry.due > now {
                entry.heap_at = Some(entry.due);
                self.timers.push(Reverse((entry.due, seq, path)));
                continue;
            }
            entry.heap_at = None;
            batch.push(path);
        }
        if batch.is_empty() {
            return;
        }
        let stats = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .map(|p| {
                    let md = fs::metadata(&p);
                    (p, md)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (path, md) in stats {
            self.settle(path, md);
        }
    }

    fn settle(&mut self, path: PathBuf, md: io::Result<Metadata>) {
        let Some(entry) = self.pending.get_mut(&path) else {
            return;
        };
        let root = entry.root;
        match md {
            Ok(md) if md.is_file() && self.filter.is_image(&path) => {
                let sig = (md.len(), scan::mtime_ns(&md));
                if entry.last == Some(sig) {
                    self.pending.remove(&path);
                    self.mark_scans(root, &path, true);
                    self.out.push_back(Change::Upsert {
                        path,
                        size: sig.0,
                        mtime_ns: sig.1,
                    });
                } else if entry.checks >= self.limits.max_unstable_checks {
                    warn!(path = %path.display(), checks = entry.checks,
                        "file keeps changing: left to the next event or scan");
                    self.pending.remove(&path);
                } else {
                    entry.last = Some(sig);
                    entry.checks += 1;
                    entry.due = Instant::now() + self.stable_for;
                    entry.heap_at = Some(entry.due);
                    self.timers.push(Reverse((entry.due, entry.seq, path)));
                }
            }
            Ok(md) if md.is_dir() => {
                self.pending.remove(&path);
                self.request_folder(root, path);
            }
            Ok(_) => {
                self.pending.remove(&path);
            }
            Err(err) => {
                let entry = self.pending.remove(&path).expect("looked up above");
                if err.kind() == io::ErrorKind::NotFound {
                    // Gone again before it settled; its delete event said so, unless the
                    // backend could not tell a rename's direction.
                    if entry.gone_if_missing {
                        self.gone(root, &path);
                    }
                } else {
                    warn!(path = %path.display(), error = %err, "stat failed: skipped");
                }
            }
        }
    }

    // ---- scans -------------------------------------------------------------------------------

    fn request_full(&mut self, root: usize, kind: ScanKind, not_before: Instant) {
        if !self.online(root) {
            return;
        }
        if let Some(job) = self
            .jobs
            .iter_mut()
            .find(|j| j.root == root && j.kind.is_full())
        {
            job.not_before = job.not_before.min(not_before);
            return;
        }
        self.jobs.push_back(Job {
            root,
            dir: self.roots[root].path.clone(),
            kind,
            not_before,
        });
    }

    fn request_folder(&mut self, root: usize, dir: PathBuf) {
        if !self.online(root)
            || self
                .jobs
                .iter()
                .any(|j| j.root == root && (j.kind.is_full() || j.dir == dir))
        {
            return;
        }
        if self.jobs.len() >= self.limits.max_pending {
            self.request_full(root, ScanKind::Rescan, Instant::now());
            return;
        }
        self.jobs.push_back(Job {
            root,
            dir,
            kind: ScanKind::Folder,
            not_before: Instant::now(),
        });
    }

    fn start_jobs(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.jobs.len() && self.scans.len() < MAX_SCANS {
            let job = &self.jobs[i];
            let full_running = self.scans.values().filter(|s| s.kind.is_full()).count();
            let blocked = job.not_before > now
                || (job.kind.is_full()
                    && (self.roots[job.root].full_scan.is_some()
                        || full_running >= MAX_FULL_SCANS));
            if blocked {
                i += 1;
                continue;
            }
            let job = self.jobs.remove(i).expect("index checked");
            self.start_scan(job);
        }
    }

    fn start_scan(&mut self, job: Job) {
        let id = self.next_scan;
        self.next_scan += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let slot = &mut self.roots[job.root];
        if job.kind.is_full() {
            slot.full_scan = Some(id);
            slot.scanned_once = true;
        }
        debug!(root = %slot.path.display(), dir = %job.dir.display(), kind = ?job.kind, "scan started");
        let thread = ScanThread {
            id,
            root: slot.path.clone(),
            dir: job.dir,
            full: job.kind.is_full(),
            expect: match slot.state {
                RootState::Online(id) if job.kind.is_full() => Some(id),
                _ => None,
            },
            filter: Arc::clone(&self.filter),
            watcher: slot.watcher.clone(),
            per_dir: self.per_dir,
            cancel: Arc::clone(&cancel),
            tx: self.scan_tx.clone(),
        };
        self.scans.insert(
            id,
            Scan {
                root: job.root,
                kind: job.kind,
                started: Instant::now(),
                cancel,
                seen: Vec::new(),
                marks: HashMap::new(),
                any_gone: false,
                lossy: false,
            },
        );
        tokio::task::spawn_blocking(move || thread.run());
    }

    fn on_scan(&mut self, msg: ScanMsg) {
        match msg {
            ScanMsg::File { scan, item } => self.on_scanned_file(scan, item),
            ScanMsg::Done {
                scan,
                complete,
                unwatched,
            } => self.on_scan_done(scan, complete, unwatched),
        }
    }

    fn on_scanned_file(&mut self, scan: u64, item: FileItem) {
        let Some(s) = self.scans.get_mut(&scan) else {
            return;
        };
        let root = s.root;
        if s.says_gone(&item.path, &self.roots[root].path) {
            return;
        }
        if s.kind.is_full() {
            s.seen.push(item.path.clone());
        } else {
            // A folder walk's files count as seen by the root's running full scan.
            let max = self.limits.max_pending;
            if let Some(full) = self.roots[root]
                .full_scan
                .and_then(|id| self.scans.get_mut(&id))
            {
                full.mark(&item.path, true, max);
            }
        }
        if self.pending.contains_key(&item.path) {
            return; // events are on it already
        }
        let age_ns = now_ns().saturating_sub(item.mtime_ns);
        if age_ns >= 0 && age_ns as u128 >= self.stable_for.as_nanos() {
            self.out.push_back(Change::Upsert {
                path: item.path,
                size: item.size,
                mtime_ns: item.mtime_ns,
            });
        } else {
            // Recently written (or mtime in the future): let it prove it is complete.
            let due = Instant::now() + self.stable_for;
            self.track(
                root,
                item.path,
                Some((item.size, item.mtime_ns)),
                due,
                false,
            );
        }
    }

    fn on_scan_done(&mut self, scan: u64, complete: bool, unwatched: usize) {
        let Some(mut s) = self.scans.remove(&scan) else {
            return;
        };
        let root = s.root;
        let root_path = self.roots[root].path.clone();
        if unwatched > 0 {
            let reconcile = match self.reconcile_every {
                Some(d) => format!("picked up by the reconcile every {}s", d.as_secs()),
                None => "MISSED: reconcile_every is off".to_string(),
            };
            warn!(root = %root_path.display(), unwatched,
                "inotify watch limit reached: raise the sysctl fs.inotify.max_user_watches \
                 (e.g. in /etc/sysctl.d/); changes in unwatched folders are {reconcile}");
        }
        if !s.kind.is_full() {
            return;
        }
        self.roots[root].full_scan = None;
        let elapsed_ms = s.started.elapsed().as_millis() as u64;
        if !complete {
            // The root vanished or changed under the walk: the next poll decides whether it is
            // offline (which drops this retry) or the walk is simply tried again.
            warn!(root = %root_path.display(), kind = ?s.kind,
                "scan did not cover the root: no Scanned, retrying");
            let retry = Instant::now() + self.poll_roots_every;
            self.request_full(root, ScanKind::Rescan, retry);
            return;
        }
        if s.lossy {
            warn!(root = %root_path.display(), "too many changes during the scan: scanning again");
            let settle = self.debounce + self.stable_for;
            self.request_full(root, ScanKind::Rescan, Instant::now() + settle);
            return;
        }
        let mut seen = std::mem::take(&mut s.seen);
        seen.retain(|p| !s.says_gone(p, &root_path));
        seen.extend(
            s.marks
                .iter()
                .filter(|&(_, &present)| present)
                .map(|(p, _)| p.clone()),
        );
        seen.sort_unstable();
        seen.dedup();
        info!(root = %root_path.display(), kind = ?s.kind, files = seen.len(), elapsed_ms,
            "scan finished");
        self.out.push_back(Change::Scanned {
            root: root_path,
            seen,
        });
    }
}

/// Everything a blocking scan thread needs; its results go through the shared scan channel.
struct ScanThread {
    id: u64,
    root: PathBuf,
    dir: PathBuf,
    full: bool,
    /// For full scans, the root as the coordinator knows it online: a walk that finds another
    /// folder there (an unmounted share's empty mount point) must not end in `Scanned`.
    expect: Option<Identity>,
    filter: Arc<Filter>,
    watcher: Option<Arc<Mutex<RecommendedWatcher>>>,
    per_dir: bool,
    cancel: Arc<AtomicBool>,
    tx: mpsc::Sender<ScanMsg>,
}

impl ScanThread {
    fn run(self) {
        // Sends `Done` even if the walk panics (notify's `watch` unwraps internally), so the
        // root's full-scan slot is never left taken.
        let mut done = DoneGuard {
            tx: self.tx.clone(),
            scan: self.id,
            complete: false,
            unwatched: 0,
        };
        let same_root = || {
            self.expect
                .is_none_or(|id| scan::identity(&self.root) == Some(id))
        };
        if !same_root() {
            return;
        }
        if let Some(w) = &self.watcher
            && !self.per_dir
            && self.full
            && let Err(err) = lock(w).watch(&self.root, RecursiveMode::Recursive)
        {
            warn!(root = %self.root.display(), error = %err, "cannot watch root");
        }
        let mut unwatched = 0;
        let watcher = self.watcher.as_ref().filter(|_| self.per_dir);
        let complete = scan::walk(
            &self.root,
            &self.dir,
            &self.filter,
            &self.cancel,
            |dir| {
                let Some(w) = watcher else { return };
                if let Err(err) = lock(w).watch(dir, RecursiveMode::NonRecursive) {
                    if matches!(err.kind, notify::ErrorKind::MaxFilesWatch) {
                        unwatched += 1;
                    } else {
                        debug!(path = %dir.display(), error = %err, "cannot watch folder");
                    }
                }
            },
            |item| {
                !self.cancel.load(Ordering::Relaxed)
                    && self
                        .tx
                        .blocking_send(ScanMsg::File {
                            scan: self.id,
                            item,
                        })
                        .is_ok()
            },
        );
        done.complete = complete && same_root();
        done.unwatched = unwatched;
    }
}

struct DoneGuard {
    tx: mpsc::Sender<ScanMsg>,
    scan: u64,
    complete: bool,
    unwatched: usize,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.tx.blocking_send(ScanMsg::Done {
            scan: self.scan,
            complete: self.complete,
            unwatched: self.unwatched,
        });
    }
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
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Write as _;
    use tokio::time::timeout;

    /// How long any expected change may take on a loaded 2-core machine.
    const PATIENCE: Duration = Duration::from_secs(10);

    fn config(root: &Path) -> WatchConfig {
        WatchConfig {
            roots: vec![root.to_path_buf()],
            debounce: Duration::from_millis(100),
            stable_for: Duration::from_millis(300),
            reconcile_every: None,
            poll_roots_every: Duration::from_millis(200),
            ..WatchConfig::default()
        }
    }

    struct Feed {
        rx: mpsc::Receiver<Change>,
        /// Everything received so far, for assertions about what did *not* happen.
        log: Vec<Change>,
        stop: watch::Sender<bool>,
        watcher: Watcher,
    }

    fn start(cfg: WatchConfig, limits: Limits) -> Feed {
        // `RUST_LOG=dualsight=debug cargo test ...` shows the watcher's reasoning.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (tx, rx) = mpsc::channel(64);
        let (stop, stop_rx) = watch::channel(false);
        let watcher = Watcher::spawn_with(cfg, tx, stop_rx, limits).unwrap();
        Feed {
            rx,
            log: Vec::new(),
            stop,
            watcher,
        }
    }

    impl Feed {
        async fn wait_for(&mut self, what: &str, pred: impl Fn(&Change) -> bool) -> Change {
            let deadline = Instant::now() + PATIENCE;
            loop {
                match timeout(deadline - Instant::now(), self.rx.recv()).await {
                    Ok(Some(change)) => {
                        self.log.push(change.clone());
                        if pred(&change) {
                            return change;
                        }
                    }
                    Ok(None) => panic!("feed ended while waiting for {what}; got {:#?}", self.log),
                    Err(_) => panic!("timed out waiting for {what}; got {:?}", self.log),
                }
            }
        }

        /// Waits for the initial scan of a root, so its watches are in place.
        async fn scanned(&mut self, root: &Path) -> Vec<PathBuf> {
            match self
                .wait_for(
                    "Scanned",
                    |c| matches!(c, Change::Scanned { root: r, .. } if r == root),
                )
                .await
            {
                Change::Scanned { seen, .. } => seen,
                _ => unreachable!(),
            }
        }

        /// The first `Upsert` of `path`, received earlier (while waiting for something else)
        /// or now.
        async fn upsert(&mut self, path: &Path) -> (u64, i64) {
            for change in &self.log {
                if let Change::Upsert {
                    path: p,
                    size,
                    mtime_ns,
                } = change
                    && p == path
                {
                    return (*size, *mtime_ns);
                }
            }
            let what = format!("Upsert {}", path.display());
            match self
                .wait_for(
                    &what,
                    |c| matches!(c, Change::Upsert { path: p, .. } if p == path),
                )
                .await
            {
                Change::Upsert { size, mtime_ns, .. } => (size, mtime_ns),
                _ => unreachable!(),
            }
        }

        async fn remove(&mut self, path: &Path) {
            let what = format!("Remove {}", path.display());
            self.wait_for(&what, |c| {
                *c == Change::Remove {
                    path: path.to_path_buf(),
                }
            })
            .await;
        }

        /// Receives for `d` more, then counts the upserts of `path` in the whole log.
        async fn upserts_of(&mut self, path: &Path, d: Duration) -> usize {
            let end = Instant::now() + d;
            while let Ok(Some(change)) = timeout(end - Instant::now(), self.rx.recv()).await {
                self.log.push(change);
            }
            self.log
                .iter()
                .filter(|c| matches!(c, Change::Upsert { path: p, .. } if p == path))
                .count()
        }
    }

    fn write(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn write_old(path: &Path) {
        write(path, b"old photo");
        let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn initial_scan_reports_images_and_skips_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("photos");
        write_old(&root.join("old.jpg"));
        write_old(&root.join("sub/OLD.PNG"));
        write(&root.join("fresh.webp"), b"just written");
        for skipped in [
            "notes.txt",
            ".hidden.jpg",
            ".trash/x.jpg",
            "@eaDir/old.jpg/SYNOPHOTO_THUMB_XL.jpg",
            "sub/.thumbnails/t.jpg",
            "private/p.jpg",
        ] {
            write_old(&root.join(skipped));
        }
        fs::create_dir_all(root.join("sub/deep")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("sub/deep/loop")).unwrap();
        write_old(&root.join("locked/l.jpg"));
        set_mode(&root.join("locked"), 0o000);
        // chmod does not deny root (tests often run as root in containers): then the folder is
        // readable and its file must be reported; otherwise it is skipped and the scan goes on.
        let locked_readable = fs::read_dir(root.join("locked")).is_ok();

        let mut cfg = config(&root);
        cfg.exclude.push("private".into());
        let mut feed = start(cfg, Limits::default());
        assert_eq!(
            feed.wait_for("RootOnline", |_| true).await,
            Change::RootOnline { root: root.clone() }
        );
        let seen = feed.scanned(&root).await;
        set_mode(&root.join("locked"), 0o755);

        let mut expected = vec![
            root.join("fresh.webp"),
            root.join("old.jpg"),
            root.join("sub/OLD.PNG"),
        ];
        if locked_readable {
            eprintln!("running with permission to read chmod 000 folders (root): skip check");
            expected.push(root.join("locked/l.jpg"));
        }
        expected.sort();
        assert_eq!(seen, expected);
        // Old files are reported at once (before Scanned), the fresh one once it proved stable.
        let before: Vec<_> = feed
            .log
            .iter()
            .filter(|c| matches!(c, Change::Upsert { .. }))
            .collect();
        assert!(before.iter().any(
            |c| matches!(c, Change::Upsert { path, size: 9, .. } if *path == root.join("old.jpg"))
        ));
        assert!(before.iter().any(
            |c| matches!(c, Change::Upsert { path, .. } if *path == root.join("sub/OLD.PNG"))
        ));
        assert_eq!(feed.upsert(&root.join("fresh.webp")).await.0, 12);
        for path in &expected {
            assert_eq!(
                feed.upserts_of(path, Duration::ZERO).await,
                1,
                "{}",
                path.display()
            );
        }
        assert_eq!(
            feed.upserts_of(&root.join("fresh.webp"), Duration::from_millis(600))
                .await,
            1
        );
        let upserted: Vec<_> = feed
            .log
            .iter()
            .filter_map(|c| match c {
                Change::Upsert { path, .. } => Some(path.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(upserted.len(), expected.len(), "{upserted:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_is_upserted_once_after_stability() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut feed = start(config(&root), Limits::default());
        assert!(feed.scanned(&root).await.is_empty());

        let path = root.join("new.jpg");
        let written = Instant::now();
        write(&path, b"a new photo");
        write(&root.join("new.txt"), b"not a photo");
        let (size, mtime_ns) = feed.upsert(&path).await;
        assert!(
            written.elapsed() >= Duration::from_millis(400),
            "debounce + stable_for"
        );
        assert_eq!(size, 11);
        assert_eq!(mtime_ns, scan::mtime_ns(&fs::metadata(&path).unwrap()));
        assert_eq!(feed.upserts_of(&path, Duration::from_secs(1)).await, 1);
        assert!(
            !feed
                .log
                .iter()
                .any(|c| matches!(c, Change::Upsert { path, .. } if path.ends_with("new.txt")))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_written_in_chunks_is_upserted_once_when_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut feed = start(config(&root), Limits::default());
        feed.scanned(&root).await;

        let path = root.join("slow.jpg");
        let mut file = File::create(&path).unwrap();
        // Six chunks over ~1.5 s; each pause is longer than debounce, shorter than stable_for.
        for _ in 0..6 {
            file.write_all(&[7u8; 1000]).unwrap();
            file.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(file);
        let finished = Instant::now();
        let (size, _) = feed.upsert(&path).await;
        assert!(Instant::now() >= finished);
        assert_eq!(size, 6000, "reported before the write was complete");
        assert_eq!(feed.upserts_of(&path, Duration::from_secs(1)).await, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delete_and_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        write_old(&root.join("a.jpg"));
        write_old(&root.join("b.jpg"));
        let mut feed = start(config(&root), Limits::default());
        assert_eq!(feed.scanned(&root).await.len(), 2);

        fs::remove_file(root.join("a.jpg")).unwrap();
        feed.remove(&root.join("a.jpg")).await;

        fs::rename(root.join("b.jpg"), root.join("c.jpg")).unwrap();
        feed.remove(&root.join("b.jpg")).await;
        assert_eq!(feed.upsert(&root.join("c.jpg")).await.0, 9);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn folder_moved_in_is_walked_and_moved_out_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let outside = tmp.path().join("outside");
        write_old(&outside.join("trip/1.jpg"));
        write(&outside.join("trip/day2/2.png"), b"fresh");
        write_old(&outside.join("trip/.hidden/3.jpg"));
        let mut feed = start(config(&root), Limits::default());
        feed.scanned(&root).await;

        fs::rename(outside.join("trip"), root.join("trip")).unwrap();
        feed.upsert(&root.join("trip/1.jpg")).await;
        feed.upsert(&root.join("trip/day2/2.png")).await;
        // The moved-in folders are watched now.
        write(&root.join("trip/day2/4.jpg"), b"later");
        feed.upsert(&root.join("trip/day2/4.jpg")).await;

        fs::rename(root.join("trip"), outside.join("trip-again")).unwrap();
        feed.remove(&root.join("trip")).await;
        // ... and no longer watched: changes out there are not ours.
        write(&outside.join("trip-again/day2/5.jpg"), b"elsewhere");
        assert_eq!(
            feed.upserts_of(&root.join("trip/day2/5.jpg"), Duration::from_secs(1))
                .await,
            0
        );
        assert!(
            !feed
                .log
                .iter()
                .any(|c| matches!(c, Change::Upsert { path, .. } if path.ends_with("3.jpg")))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn root_offline_and_back() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("nas");
        let mut feed = start(config(&root), Limits::default());
        assert_eq!(
            feed.wait_for("RootOffline", |_| true).await,
            Change::RootOffline { root: root.clone() }
        );

        write_old(&root.join("a.jpg"));
        feed.wait_for("RootOnline", |c| {
            *c == Change::RootOnline { root: root.clone() }
        })
        .await;
        assert_eq!(feed.scanned(&root).await, vec![root.join("a.jpg")]);

        // Moved away (as good as unmounted for us): offline, and its files are not removed.
        fs::rename(&root, tmp.path().join("nas-away")).unwrap();
        feed.wait_for("RootOffline", |c| {
            *c == Change::RootOffline { root: root.clone() }
        })
        .await;
        assert!(
            !feed.log.iter().any(|c| matches!(c, Change::Remove { .. })),
            "{:#?}",
            feed.log
        );

        write_old(&root.join("b.jpg"));
        feed.wait_for("RootOnline", |c| {
            *c == Change::RootOnline { root: root.clone() }
        })
        .await;
        assert_eq!(feed.scanned(&root).await, vec![root.join("b.jpg")]);

        // Deleted outright: offline too; the root itself is never a Remove.
        fs::remove_dir_all(&root).unwrap();
        feed.wait_for("RootOffline", |c| {
            *c == Change::RootOffline { root: root.clone() }
        })
        .await;
        assert!(
            !feed
                .log
                .iter()
                .any(|c| *c == Change::Remove { path: root.clone() })
        );
        // Events from the old folder's watches must not leak in after it is gone.
        write(&tmp.path().join("nas-away/c.jpg"), b"not ours");
        assert_eq!(
            feed.upserts_of(&root.join("c.jpg"), Duration::from_millis(700))
                .await,
            0
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reconcile_tick_rescans() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        write_old(&root.join("a.jpg"));
        let mut cfg = config(&root);
        cfg.reconcile_every = Some(Duration::from_millis(700));
        let mut feed = start(cfg, Limits::default());
        assert_eq!(feed.scanned(&root).await, vec![root.join("a.jpg")]);
        assert_eq!(feed.scanned(&root).await, vec![root.join("a.jpg")]);
        assert_eq!(
            feed.upserts_of(&root.join("a.jpg"), Duration::ZERO).await,
            2
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_event_channel_falls_back_to_a_rescan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let limits = Limits {
            raw_channel: 1,
            ..Limits::default()
        };
        let mut feed = start(config(&root), limits);
        feed.scanned(&root).await;
        let paths: Vec<_> = (0..40).map(|i| root.join(format!("{i}.jpg"))).collect();
        for p in &paths {
            write(p, b"burst");
        }
        let seen = feed.scanned(&root).await;
        assert_eq!(
            seen.len(),
            paths.len(),
            "the rescan after the overflow sees every file"
        );
        for p in &paths {
            feed.upsert(p).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_pending_map_falls_back_to_a_rescan() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let limits = Limits {
            max_pending: 3,
            ..Limits::default()
        };
        let mut feed = start(config(&root), limits);
        feed.scanned(&root).await;
        let paths: Vec<_> = (0..12).map(|i| root.join(format!("{i}.jpg"))).collect();
        for p in &paths {
            write(p, b"burst");
        }
        for p in &paths {
            feed.upsert(p).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_is_prompt_and_closes_the_feed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut feed = start(config(&root), Limits::default());
        feed.scanned(&root).await;
        feed.stop.send(true).unwrap();
        timeout(Duration::from_secs(2), feed.watcher.join())
            .await
            .expect("stops promptly");
        assert_eq!(
            timeout(Duration::from_secs(1), feed.rx.recv())
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn spawn_rejects_bad_config_and_no_runtime() {
        let (tx, _rx) = mpsc::channel(1);
        let (_stop, stop_rx) = watch::channel(false);
        let cfg = config(Path::new("/tmp/x"));
        let err = Watcher::spawn(cfg.clone(), tx.clone(), stop_rx.clone()).unwrap_err();
        assert!(matches!(err, IngestError::NoRuntime));

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let overlapping = WatchConfig {
            roots: vec!["/tmp/x".into(), "/tmp/x/y".into()],
            ..cfg.clone()
        };
        let err = Watcher::spawn(overlapping, tx.clone(), stop_rx.clone()).unwrap_err();
        assert_eq!(err.to_string(), "/tmp/x/y: overlaps root /tmp/x");
        let zero_poll = WatchConfig {
            poll_roots_every: Duration::ZERO,
            ..cfg
        };
        assert!(Watcher::spawn(zero_poll, tx, stop_rx).is_err());
    }

    #[test]
    fn scan_marks_keep_seen_honest() {
        let root = Path::new("/r");
        let mut scan = Scan {
            root: 0,
            kind: ScanKind::Reconcile,
            started: Instant::now(),
            cancel: Arc::new(AtomicBool::new(false)),
            seen: Vec::new(),
            marks: HashMap::new(),
            any_gone: false,
            lossy: false,
        };
        assert!(!scan.says_gone(Path::new("/r/a/b.jpg"), root));
        scan.mark(Path::new("/r/a"), false, 10);
        scan.mark(Path::new("/r/a/new.jpg"), true, 10);
        assert!(scan.says_gone(Path::new("/r/a/b.jpg"), root));
        assert!(!scan.says_gone(Path::new("/r/a/new.jpg"), root));
        assert!(!scan.says_gone(Path::new("/r/c.jpg"), root));
        scan.mark(Path::new("/r/1"), true, 3);
        scan.mark(Path::new("/r/2"), true, 3);
        assert!(
            scan.lossy,
            "bounded: beyond the limit the scan is redone instead"
        );
    }

    #[test]
    fn root_state_follows_probes_and_mount_points() {
        let (mut engine, _raw, _scans) =
            Engine::new(config(Path::new("/nowhere/nas")), Limits::default()).unwrap();
        let root = PathBuf::from("/nowhere/nas");
        let up = |ino, mount| Probe::Up {
            id: Identity { dev: ino, ino },
            mount,
        };
        let mut step = |probe: Probe| {
            engine.apply_probe(0, probe);
            engine.out.drain(..).collect::<Vec<_>>()
        };
        let online = Change::RootOnline { root: root.clone() };
        let offline = Change::RootOffline { root: root.clone() };

        assert_eq!(step(up(1, true)), vec![online.clone()]);
        assert_eq!(step(up(1, true)), vec![]);
        // Unmounted: the bare mount point is a folder too, but not the root we indexed.
        assert_eq!(step(up(2, false)), vec![offline.clone()]);
        assert_eq!(step(up(2, false)), vec![]);
        assert_eq!(step(Probe::Down("gone".into())), vec![]);
        assert_eq!(step(up(3, true)), vec![online.clone()]);
        // A different file system mounted in its place: its own scan, not a mix.
        assert_eq!(step(up(4, true)), vec![offline.clone(), online.clone()]);
        assert_eq!(step(Probe::Down("gone".into())), vec![offline]);
        assert!(engine.jobs.is_empty() && engine.roots[0].watcher.is_none());
    }

    #[test]
    fn full_scan_of_another_folder_at_the_root_path_is_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        write_old(&tmp.path().join("a.jpg"));
        let real = scan::identity(tmp.path()).unwrap();
        let elsewhere = Identity {
            dev: real.dev,
            ino: real.ino + 1,
        };
        for (expect, complete, files) in [(real, true, 1), (elsewhere, false, 0)] {
            let (tx, mut rx) = mpsc::channel(8);
            ScanThread {
                id: 7,
                root: tmp.path().to_path_buf(),
                dir: tmp.path().to_path_buf(),
                full: true,
                expect: Some(expect),
                filter: Arc::new(Filter::new(&[], &["jpg".into()]).unwrap()),
                watcher: None,
                per_dir: true,
                cancel: Arc::new(AtomicBool::new(false)),
                tx,
            }
            .run();
            let mut got = 0;
            loop {
                match rx.try_recv().unwrap() {
                    ScanMsg::File { .. } => got += 1,
                    ScanMsg::Done {
                        scan, complete: c, ..
                    } => {
                        assert_eq!((scan, c, got), (7, complete, files));
                        break;
                    }
                }
            }
        }
    }

    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
}
