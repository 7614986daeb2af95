//! Changing a running daemon (SIGHUP, `systemctl reload`): the re-read
//! settings are compared with the running ones and what can change live is
//! applied. The watch section (roots, excludes, extensions, timings) starts a
//! new watcher beside the old before the old one stops, so a bad glob keeps
//! the old watcher; a root taken out has its files forgotten after the
//! removal grace. The log level and the image decode limits change in place.
//! Anything else (model, listen address, TLS, ...) is logged as needing a
//! restart and keeps its running value.

use std::path::PathBuf;
use std::sync::Arc;

use super::watch_config;
use crate::config::Settings;
use crate::engine::Engine;
use crate::ingest::feed::ChangeTx;
use crate::ingest::pipeline::Counters;
use crate::ingest::{Change, IngestError, Watcher};
use crate::preprocess::DecodeLimits;
use crate::shutdown::Trigger;

use super::query::DaemonCore;

/// The watcher feeding the pipeline, replaceable while the daemon runs.
pub(super) struct Intake {
    watcher: Watcher,
    stop: Trigger,
    pub(super) changes: ChangeTx,
    counters: Arc<Counters>,
}

impl Intake {
    pub(super) fn start(
        settings: &Settings,
        changes: ChangeTx,
        counters: Arc<Counters>,
    ) -> Result<Self, IngestError> {
        let (stop, shutdown) = crate::shutdown::channel();
        let watcher = Watcher::spawn(watch_config(settings), changes.clone(), shutdown)?;
        counters.watch(watcher.busy());
        Ok(Self {
            watcher,
            stop,
            changes,
            counters,
        })
    }

    /// Starts a watcher on `settings`, then stops the old one.
    async fn replace(&mut self, settings: &Settings) -> Result<(), IngestError> {
        let new = Self::start(settings, self.changes.clone(), self.counters.clone())?;
        let old = std::mem::replace(self, new);
        old.stop().await;
        Ok(())
    }

    /// Stops the watcher; dropping this closes its side of the change feed.
    pub(super) async fn stop(self) {
        self.stop.fire();
        self.watcher.join().await;
    }
}

/// The roots as the watcher sees them (absolute, as given).
pub(super) fn absolute_roots(settings: &Settings) -> Vec<PathBuf> {
    settings
        .watch
        .roots
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
        .collect()
}

fn decode_limits(s: &Settings) -> DecodeLimits {
    DecodeLimits {
        max_bytes: s.ingest.max_image_bytes,
        max_pixels: s.ingest.max_image_pixels,
    }
}

/// Applies `new` over `running` as far as it can change live; `running`
/// becomes what now runs.
pub(super) async fn apply(
    running: &mut Settings,
    new: Settings,
    intake: &mut Intake,
    core: &DaemonCore,
    engine: &Arc<Engine>,
) {
    let mut changed = Vec::new();
    if new.watch != running.watch {
        let (old_roots, new_roots) = (absolute_roots(running), absolute_roots(&new));
        match intake.replace(&new).await {
            Ok(()) => {
                for root in old_roots.iter().filter(|r| !new_roots.contains(r)) {
                    // A root now inside a watched one stays through that one.
                    if new_roots.iter().any(|n| root.starts_with(n)) {
                        continue;
                    }
                    tracing::info!(root = %root.display(), "reload: root no longer watched: its files are forgotten after the removal grace");
                    let change = unwatched(root.clone(), &new_roots);
                    if intake.changes.send(change).await.is_err() {
                        tracing::warn!("reload: the pipeline has stopped");
                    }
                }
                if new.watch.exclude != running.watch.exclude
                    || new.watch.extensions != running.watch.extensions
                {
                    forget_left_out(&new, &new_roots, engine, &intake.changes).await;
                }
                core.set_roots(new_roots);
                running.watch = new.watch.clone();
                changed.push("watch");
            }
            Err(e) => {
                tracing::error!(error = %e, "reload: [watch] not applied: keeping the running watch settings")
            }
        }
    }
    if new.log.level != running.log.level {
        let filter = crate::logging::effective_filter(
            new.log.level.as_deref(),
            crate::cli::serve::DEFAULT_LOG_FILTER,
        );
        match crate::logging::set_filter(&filter) {
            Ok(()) => {
                running.log.level = new.log.level.clone();
                changed.push("log.level");
            }
            Err(e) => tracing::error!(error = %e, "reload: log level not applied"),
        }
    }
    if decode_limits(&new) != decode_limits(running) {
        let limits = decode_limits(&new);
        engine.encoder.set_limits(limits.clone());
        if let Some(serving) = core.serving() {
            serving.encoder.set_limits(limits);
        }
        running.ingest.max_image_bytes = new.ingest.max_image_bytes;
        running.ingest.max_image_pixels = new.ingest.max_image_pixels;
        changed.push("ingest.max_image_bytes/max_image_pixels");
    }
    let needs_restart = restart_only_changes(running, &new);
    if !needs_restart.is_empty() {
        tracing::warn!(
            keys = needs_restart.join(", "),
            "reload: these settings cannot change while running: restart dualsight to apply them; keeping the running values"
        );
    }
    tracing::info!(applied = changed.join(", "), "reload done");
}

/// Files a previous run indexed under folders this run does not watch (a
/// root dropped from the config while the daemon was stopped): forgotten
/// after the removal grace, as a reload forgets a root it drops. Without
/// this they stayed searchable, since no scan covers them.
pub(super) async fn forget_unwatched(roots: Vec<PathBuf>, engine: Arc<Engine>, changes: ChangeTx) {
    let watched = roots.clone();
    let stale = tokio::task::spawn_blocking(move || {
        let mut dirs = std::collections::BTreeSet::new();
        for (path, _) in engine.store.iter_files_under("/").filter_map(|f| f.ok()) {
            let path = PathBuf::from(path);
            if !watched.iter().any(|r| path.starts_with(r))
                && let Some(dir) = path.parent()
            {
                dirs.insert(dir.to_path_buf());
            }
        }
        dirs
    })
    .await
    .unwrap_or_default();
    // In path order a folder comes before those inside it: one forget covers them.
    let mut outermost: Vec<PathBuf> = Vec::new();
    for dir in stale {
        if !outermost.last().is_some_and(|o| dir.starts_with(o)) {
            outermost.push(dir);
        }
    }
    for path in outermost {
        tracing::info!(folder = %path.display(), "indexed before but no longer watched: its files are forgotten after the removal grace");
        if changes.send(unwatched(path, &roots)).await.is_err() {
            return;
        }
    }
}

/// The change that forgets what is indexed under `path`, except under the
/// watched roots inside it.
fn unwatched(path: PathBuf, roots: &[PathBuf]) -> Change {
    let keep = roots
        .iter()
        .filter(|r| r.starts_with(&path))
        .cloned()
        .collect();
    Change::Unwatched { path, keep }
}

/// Files indexed under `roots` that the new excludes or extensions leave
/// out: forgotten like a removed root's (the watcher's scans only add).
async fn forget_left_out(
    new: &Settings,
    roots: &[PathBuf],
    engine: &Arc<Engine>,
    changes: &ChangeTx,
) {
    let Ok(filter) = watch_config(new).filter() else {
        return;
    };
    let (engine, roots) = (engine.clone(), roots.to_vec());
    let left_out = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for root in &roots {
            let Ok(r) = crate::store::path_str(root) else {
                continue;
            };
            for (path, _) in engine.store.iter_files_under(r).filter_map(|f| f.ok()) {
                let path = PathBuf::from(path);
                if !filter.takes(root, &path) {
                    out.push(path);
                }
            }
        }
        out
    })
    .await
    .unwrap_or_default();
    if !left_out.is_empty() {
        tracing::info!(
            files = left_out.len(),
            "reload: files the new excludes or extensions leave out are forgotten after the removal grace"
        );
    }
    for path in left_out {
        let change = Change::Unwatched {
            path,
            keep: Vec::new(),
        };
        if changes.send(change).await.is_err() {
            return;
        }
    }
}

/// The sections and keys that differ between what runs and `new` after the
/// live changes were applied: they need a restart.
fn restart_only_changes(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            out.push(key);
        }
    };
    check("model", running.model != new.model);
    check("device", running.device != new.device);
    check("dtype", running.dtype != new.dtype);
    check("text_weights", running.text_weights != new.text_weights);
    check(
        "exact_preprocessing",
        running.exact_preprocessing != new.exact_preprocessing,
    );
    check("data_dir", running.data_dir != new.data_dir);
    check("node", running.node != new.node);
    check("store", running.store != new.store);
    check("listen", running.listen != new.listen);
    check("unix_socket", running.unix_socket != new.unix_socket);
    check("watch", running.watch != new.watch);
    check("ingest", running.ingest != new.ingest);
    check("index", running.index != new.index);
    check("server", running.server != new.server);
    check("metrics", running.metrics != new.metrics);
    check("http", running.http != new.http);
    check("log.format", running.log.format != new.log.format);
    check(
        "allow_insecure",
        running.allow_insecure != new.allow_insecure,
    );
    out
}
