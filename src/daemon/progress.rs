//! Progress: counters turned into the gRPC progress stream, systemd STATUS
//! lines and watchdog pings, twice a second until shutdown.

use super::*;

/// Keeps the progress snapshot, systemd STATUS and the watchdog current, and
/// switches to a new model's index once it is complete.
pub(super) async fn report_progress(
    engine: Arc<Engine>,
    core: Arc<DaemonCore>,
    data_dir: PathBuf,
    counters: Arc<Counters>,
    tx: watch::Sender<ProgressSnapshot>,
    notifier: Arc<Notifier>,
    mut stop: crate::shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let watchdog = Notifier::watchdog_interval();
    let mut last_ping = Instant::now();
    // Rate: exponential moving average of committed files per second.
    let (mut last_committed, mut last_at, mut rate) = (
        counters.committed.load(Ordering::Relaxed),
        Instant::now(),
        0.0f64,
    );
    let mut last_status = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.recv() => return,
        }
        finish_model_switch(&engine, &core, &data_dir);
        let committed = counters.committed.load(Ordering::Relaxed);
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        let instant = (committed - last_committed) as f64 / dt;
        let pending = counters.pending();
        rate = if rate == 0.0 {
            instant
        } else {
            0.8 * rate + 0.2 * instant
        };
        // The average only nears 0 as it decays: idle, or below a file a
        // minute, is 0, as the proto promises for an idle daemon.
        if (pending == 0 && instant == 0.0) || rate < 1.0 / 60.0 {
            rate = 0.0;
        }
        (last_committed, last_at) = (committed, Instant::now());
        let snap = ProgressSnapshot {
            indexed: engine.indexed_file_count().unwrap_or(0),
            pending,
            failed: engine.store.failure_count().unwrap_or(0),
            files_per_second: rate,
            eta_seconds: if pending > 0 && rate > 0.01 {
                pending as f64 / rate
            } else {
                0.0
            },
            ready: true,
            roots_offline: engine
                .store
                .offline_roots()
                .map(|r| r.len() as u32)
                .unwrap_or(0),
            phase: if pending > 0 { "indexing" } else { "idle" }.into(),
        };
        let status = format!(
            "{} indexed, {} pending, {} failed",
            snap.indexed, snap.pending, snap.failed
        );
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        // Only a change is news: an idle daemon's streams stay quiet.
        tx.send_if_modified(|now| {
            let changed = *now != snap;
            *now = snap;
            changed
        });
        if let Some(every) = watchdog
            && last_ping.elapsed() >= every
        {
            notifier.watchdog();
            last_ping = Instant::now();
        }
    }
}

/// What a metrics scrape reads: the same figures as Status, from where they live.
impl crate::metrics::Sampler for DaemonCore {
    fn sample(&self) -> crate::metrics::Sample {
        let counters = &self.counters;
        let mut s = crate::metrics::Sample {
            pending_files: counters.pending(),
            embedded_images: counters.embedded.load(Ordering::Relaxed),
            reused_vectors: counters.reused.load(Ordering::Relaxed),
            queue_depth: counters.in_pipeline(),
            ..Default::default()
        };
        if let Some(engine) = self.serving() {
            s.indexed_files = engine.indexed_file_count().unwrap_or(0);
            s.failed_files = engine.store.failure_count().unwrap_or(0);
            s.index_vectors = engine.searchable();
            s.store_bytes = engine.store.size_on_disk().unwrap_or(0);
        }
        s
    }
}
