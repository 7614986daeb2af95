//! Paths the events saw appear, on their way to an `Upsert`: debounce, then
//! the stat, then the stability wait (size and mtime unchanged for
//! `stable_for`), bounded by `max_pending`.

use super::*;

/// A path waiting for quiet (debounce) and then for stability.
pub(super) struct Pending {
    pub(super) root: usize,
    /// Identifies this entry's heap item against items of an earlier entry for the same path.
    pub(super) seq: u64,
    pub(super) due: Instant,
    /// When the live heap item fires; `None` while a stat is in flight.
    pub(super) heap_at: Option<Instant>,
    /// Size and mtime at the last stat, when no event came since.
    pub(super) last: Option<(u64, i64)>,
    pub(super) checks: u32,
    /// Renamed with unknown direction (backends that send `RenameMode::Any`): if it is missing
    /// when stat'ed, it went away.
    pub(super) gone_if_missing: bool,
}

#[derive(Clone, Copy)]
pub(super) enum Appear {
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

impl Coordinator {
    /// A path was created, written or moved in: (re)start its wait.
    pub(super) fn appeared(&mut self, root: usize, path: &Path, how: Appear) {
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
    pub(super) fn track(
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
    pub(super) fn rescan_queued(&self, root: usize) -> bool {
        self.jobs.iter().any(|j| j.root == root && j.kind.is_full())
    }

    pub(super) fn gone(&mut self, root: usize, path: &Path) {
        self.pending.remove(path);
        self.mark_scans(root, path, false);
        self.out.push_back(Change::Remove {
            path: path.to_path_buf(),
        });
    }

    pub(super) fn mark_scans(&mut self, root: usize, path: &Path, present: bool) {
        let max = self.limits.max_pending;
        for scan in self.scans.values_mut().filter(|s| s.root == root) {
            scan.mark(path, present, max);
        }
    }

    pub(super) fn next_wake(&self) -> Instant {
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

    pub(super) async fn check_due(&mut self) {
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

    pub(super) fn settle(&mut self, path: PathBuf, md: io::Result<Metadata>) {
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
}
