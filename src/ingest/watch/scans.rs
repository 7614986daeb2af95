//! Scan scheduling: full scans (initial, reconcile, overflow, back online)
//! and folder walks queued per root, run on blocking threads within the
//! bounds, and what their results do to the feed.

use super::*;

pub(super) enum ScanMsg {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ScanKind {
    Initial,
    Reconcile,
    Rescan,
    Online,
    /// A folder that appeared under the root: no `Scanned`.
    Folder,
}

impl ScanKind {
    pub(super) fn is_full(self) -> bool {
        self != ScanKind::Folder
    }
}

pub(super) struct Job {
    pub(super) root: usize,
    pub(super) dir: PathBuf,
    pub(super) kind: ScanKind,
    pub(super) not_before: Instant,
}

pub(super) struct Scan {
    pub(super) root: usize,
    pub(super) kind: ScanKind,
    pub(super) started: Instant,
    pub(super) cancel: Arc<AtomicBool>,
    /// Files the walk reported (full scans only).
    pub(super) seen: Vec<PathBuf>,
    /// Paths that events saw appear (true) or go (false) while the walk ran.
    pub(super) marks: HashMap<PathBuf, bool>,
    pub(super) any_gone: bool,
    /// Too much happened to keep `marks` within bounds: no `Scanned`, scan again.
    pub(super) lossy: bool,
}

impl Drop for Scan {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

impl Scan {
    pub(super) fn mark(&mut self, path: &Path, present: bool, max: usize) {
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
    pub(super) fn says_gone(&self, path: &Path, root: &Path) -> bool {
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

impl Coordinator {
    pub(super) fn request_full(&mut self, root: usize, kind: ScanKind, not_before: Instant) {
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

    pub(super) fn request_folder(&mut self, root: usize, dir: PathBuf) {
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

    pub(super) fn start_jobs(&mut self) {
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

    pub(super) fn start_scan(&mut self, job: Job) {
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

    pub(super) fn on_scan(&mut self, msg: ScanMsg) {
        match msg {
            ScanMsg::File { scan, item } => self.on_scanned_file(scan, item),
            ScanMsg::Done {
                scan,
                complete,
                unwatched,
            } => self.on_scan_done(scan, complete, unwatched),
        }
    }

    pub(super) fn on_scanned_file(&mut self, scan: u64, item: FileItem) {
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

    pub(super) fn on_scan_done(&mut self, scan: u64, complete: bool, unwatched: usize) {
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
pub(super) struct ScanThread {
    pub(super) id: u64,
    pub(super) root: PathBuf,
    pub(super) dir: PathBuf,
    pub(super) full: bool,
    /// For full scans, the root as the coordinator knows it online: a walk that finds another
    /// folder there (an unmounted share's empty mount point) must not end in `Scanned`.
    pub(super) expect: Option<Identity>,
    pub(super) filter: Arc<Filter>,
    pub(super) watcher: Option<Arc<Mutex<RecommendedWatcher>>>,
    pub(super) per_dir: bool,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) tx: mpsc::Sender<ScanMsg>,
}

impl ScanThread {
    pub(super) fn run(self) {
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

pub(super) struct DoneGuard {
    pub(super) tx: mpsc::Sender<ScanMsg>,
    pub(super) scan: u64,
    pub(super) complete: bool,
    pub(super) unwatched: usize,
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
