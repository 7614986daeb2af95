//! Roots going offline and coming back: the probe results applied, the
//! per-root notify watcher made and dropped with the root's state.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RootState {
    Unknown,
    Online(Identity),
    Offline,
}

pub(super) struct RootSlot {
    pub(super) path: PathBuf,
    pub(super) state: RootState,
    /// Seen as a mount point once: it must be one to count as online (see module docs).
    pub(super) ever_mount: bool,
    /// Bumped when the watcher is replaced or dropped.
    pub(super) generation: u64,
    /// Shared with this root's scan threads, which add folder watches as they walk; the mutex
    /// is only ever taken on blocking threads, for one `watch` call.
    pub(super) watcher: Option<Arc<Mutex<RecommendedWatcher>>>,
    pub(super) full_scan: Option<u64>,
    pub(super) scanned_once: bool,
}

impl Coordinator {
    pub(super) async fn probe_roots(&mut self) {
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

    pub(super) fn apply_probe(&mut self, root: usize, probe: Probe) {
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

    pub(super) fn go_online(&mut self, root: usize, id: Identity, mount: bool) {
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

    pub(super) fn go_offline(&mut self, root: usize, reason: &str) {
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

    pub(super) fn online(&self, root: usize) -> bool {
        matches!(self.roots[root].state, RootState::Online(_))
    }

    pub(super) fn make_watcher(
        &self,
        root: usize,
        generation: u64,
    ) -> notify::Result<RecommendedWatcher> {
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
}
