//! The daemon's wiring (`dualsight serve`): bind the gRPC server first (it
//! answers NOT_SERVING / "not ready" while loading), load the model and the
//! index, start the watcher and the ingest pipeline, report progress (gRPC
//! stream, systemd STATUS, watchdog), and on shutdown stop intake, finish
//! the batch in hand, flush, checkpoint and return.

pub mod query;
pub mod systemd;
pub mod text_cache;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::Settings;
use crate::device::{DeviceSpec, parse_dtype};
use crate::encoder::Encoder;
use crate::engine::Engine;
use crate::index::IndexParams;
use crate::ingest::pipeline::{Counters, Pipeline, PipelineConfig};
use crate::ingest::{WatchConfig, Watcher};
use crate::preprocess::DecodeLimits;
use crate::server::ServerConfig;
use crate::server::core::ProgressSnapshot;
use crate::store::Store;
use query::DaemonCore;
use systemd::Notifier;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Encoder(#[from] crate::encoder::EncoderError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error(transparent)]
    Watch(#[from] crate::ingest::IngestError),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listen {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Task(String),
}

pub type Result<T, E = DaemonError> = std::result::Result<T, E>;

fn server_config(s: &Settings) -> ServerConfig {
    ServerConfig {
        max_limit: s.server.max_limit as usize,
        default_limit: s.server.default_limit as usize,
        max_text_chars: s.server.max_text_chars,
        max_message_bytes: s.server.max_message_bytes,
        max_labels: s.server.max_labels,
        ..ServerConfig::default()
    }
}

fn watch_config(s: &Settings) -> WatchConfig {
    WatchConfig {
        roots: s.watch.roots.clone(),
        exclude: s.watch.exclude.clone(),
        extensions: s.watch.extensions.clone(),
        debounce: Duration::from_millis(s.watch.debounce_ms),
        stable_for: Duration::from_millis(s.watch.stable_ms),
        reconcile_every: (s.watch.reconcile_interval_s > 0)
            .then(|| Duration::from_secs(s.watch.reconcile_interval_s)),
        poll_roots_every: Duration::from_secs(s.watch.root_poll_s.max(1)),
    }
}

/// Runs the daemon until `shutdown` resolves; returns once everything is
/// flushed and checkpointed. `bound` (if given) receives the TCP address
/// actually listened on (tests use port 0).
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<()> {
    settings.validate()?;
    let notifier = Arc::new(Notifier::from_env());
    let model_spec = settings.model.clone().unwrap_or_default();
    let listen = settings.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: settings.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: settings.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %local, "listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }

    let roots: Vec<PathBuf> = settings
        .watch
        .roots
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
        .collect();
    let counters = Arc::new(Counters::default());
    let (progress_tx, progress_rx) = watch::channel(ProgressSnapshot {
        phase: "loading".into(),
        ..Default::default()
    });
    let core = Arc::new(DaemonCore::new(
        counters.clone(),
        roots.clone(),
        model_spec.clone(),
        progress_rx,
    ));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = crate::shutdown::channel();
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(crate::server::serve(
        core.clone(),
        server_config(&settings),
        listener,
        settings.unix_socket.clone(),
        ready_rx,
        async move {
            server_stop.recv().await;
        },
    ));
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        stop_tx.fire();
        // Held until the daemon ends, so the signal stays up.
        std::future::pending::<()>().await;
    });

    // Model and index: heavy, off the async threads. A shutdown during loading ends the daemon.
    let data_dir = settings.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| DaemonError::Io {
        path: data_dir.clone(),
        source,
    })?;
    let loading = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || load_engines(&s))
    };
    let mut stop_wait = stop_rx.clone();
    let (engine, previous) = tokio::select! {
        r = loading => r.map_err(|e| DaemonError::Task(e.to_string()))??,
        () = stop_wait.recv() => {
            tracing::info!("shutdown during start-up");
            let _ = server.await;
            return Ok(());
        }
    };
    let engine = Arc::new(engine);
    match previous {
        // A new model: the old one keeps answering until the new index is complete.
        Some(old) => {
            core.building.store(true, Ordering::Relaxed);
            core.set_engine(Arc::new(old));
        }
        None => core.set_engine(engine.clone()),
    }
    let _ = ready_tx.send(true);
    notifier.ready();
    tracing::info!(
        indexed = engine.store.indexed_file_count().unwrap_or(0),
        "ready"
    );

    // Intake: watcher → pipeline. The watcher stops on `stop`, closing the feed,
    // which lets the pipeline drain and stop.
    let (change_tx, change_rx) = mpsc::channel(settings.ingest.queue.max(16) * 4);
    let watcher = Watcher::spawn(watch_config(&settings), change_tx, stop_rx.clone())?;
    let pipeline = Pipeline::spawn(
        engine.clone(),
        counters.clone(),
        PipelineConfig {
            batch_size: settings.ingest.batch_size,
            batch_timeout: Duration::from_millis(settings.ingest.batch_timeout_ms),
            decode_threads: settings.decode_threads(),
            queue: settings.ingest.queue,
            remove_grace: Duration::from_millis(settings.ingest.remove_grace_ms),
            checkpoint_every: Duration::from_secs(settings.index.checkpoint_interval_s.max(1)),
        },
        change_rx,
    );
    let reporter = tokio::spawn(report_progress(
        engine.clone(),
        core.clone(),
        settings.data_dir.clone(),
        counters.clone(),
        progress_tx,
        notifier.clone(),
        stop_rx.clone(),
    ));

    let mut stop_wait = stop_rx.clone();
    stop_wait.recv().await;
    tracing::info!("shutting down: stopping intake");
    notifier.stopping();
    watcher.join().await;
    pipeline.join().await;
    let _ = reporter.await;
    shutdown_task.abort();
    match server.await {
        Ok(r) => r?,
        Err(e) => return Err(DaemonError::Task(e.to_string())),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads the configured model and its index; if the store's active space
/// belongs to another model that can still be loaded (its directory is
/// recorded in `models.json`), loads that one too, to serve while the new
/// index is built. Returns (new, previous).
fn load_engines(s: &Settings) -> Result<(Engine, Option<Engine>)> {
    let dir = crate::model::hub::resolve(s.model.as_deref().unwrap_or_default())?;
    let device = s.device.parse::<DeviceSpec>()?.open()?;
    let dtype = parse_dtype(&s.dtype, &device)?;
    let limits = DecodeLimits {
        max_bytes: s.ingest.max_image_bytes,
        max_pixels: s.ingest.max_image_pixels,
    };
    let encoder = Encoder::load(&dir, &device, dtype)?
        .with_limits(limits.clone())
        .with_preprocessing(s.preprocessing());
    let fp = encoder.fingerprint().to_string();
    tracing::info!(model = %dir.display(), fingerprint = %fp, dim = encoder.dim(), preprocessing = ?encoder.preprocessing(), "model loaded");
    let store = Store::open(s.data_dir.join("store"))?;
    let params = IndexParams {
        max_nb_connection: s.index.m,
        ef_construction: s.index.ef_construction,
        ef_search: s.index.ef_search,
        ..IndexParams::default()
    };
    let mut models = ModelDirs::load(&s.data_dir);
    let previous = match store.active_space()? {
        Some(active) if active.fingerprint() != fp => {
            let old_fp = active.fingerprint().to_string();
            let old = models.get(&old_fp).and_then(|old_dir| match Encoder::load(&old_dir, &device, dtype) {
                Ok(e) if e.fingerprint() == old_fp => Some(e),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(model = %old_dir.display(), error = %e, "previous model cannot be loaded");
                    None
                }
            });
            match old {
                Some(old) => {
                    tracing::info!(old = %old_fp, new = %fp, "model changed: the old index serves while the new one is built");
                    Some(Engine::open(
                        Arc::new(
                            old.with_limits(limits)
                                .with_preprocessing(s.preprocessing()),
                        ),
                        store.clone(),
                        &s.data_dir,
                        params,
                    )?)
                }
                None => {
                    tracing::warn!(old = %old_fp, new = %fp, "model changed and the old model is gone: building the new index from scratch");
                    drop_space(&store, &s.data_dir, &old_fp);
                    None
                }
            }
        }
        _ => None,
    };
    models.set(&fp, &dir);
    models.save(&s.data_dir);
    let engine = Engine::open(Arc::new(encoder), store.clone(), &s.data_dir, params)?;
    if previous.is_none() {
        store.set_active(&fp)?;
    }
    Ok((engine, previous))
}

fn drop_space(store: &Store, data_dir: &std::path::Path, fingerprint: &str) {
    if let Err(e) = store.drop_space(fingerprint) {
        tracing::error!(fingerprint, error = %e, "cannot drop the old vector space");
    }
    let _ = std::fs::remove_dir_all(crate::engine::index_dir(data_dir, fingerprint));
}

/// Which model directory produced each fingerprint (`models.json` in the data
/// dir), so a model change can keep serving with the old model.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct ModelDirs(std::collections::BTreeMap<String, PathBuf>);

impl ModelDirs {
    fn load(data_dir: &std::path::Path) -> Self {
        std::fs::read(data_dir.join("models.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    fn get(&self, fp: &str) -> Option<PathBuf> {
        self.0.get(fp).cloned()
    }
    fn set(&mut self, fp: &str, dir: &std::path::Path) {
        self.0.insert(
            fp.to_string(),
            std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()),
        );
    }
    fn save(&self, data_dir: &std::path::Path) {
        let path = data_dir.join("models.json");
        let json = serde_json::to_vec_pretty(self).expect("serialisable");
        if let Err(e) = crate::durable::replace(&path, &json) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the model directory");
        }
    }
}

/// Once the new model's space holds a vector for every indexed file, it
/// becomes the active one and answers queries; the old space is dropped.
fn finish_model_switch(engine: &Arc<Engine>, core: &DaemonCore, data_dir: &std::path::Path) {
    if !core.building.load(Ordering::Relaxed) {
        return;
    }
    let (Ok(done), Ok(files)) = (engine.space.indexed_path_count(), engine.store.file_count())
    else {
        return;
    };
    if done < files || core.counters.pending() > 0 {
        return;
    }
    let old = engine
        .store
        .active_space()
        .ok()
        .flatten()
        .map(|s| s.fingerprint().to_string());
    if let Err(e) = engine.store.set_active(engine.space.fingerprint()) {
        tracing::error!(error = %e, "cannot activate the new vector space");
        return;
    }
    // Cleared before the swap: `status` reads the engine first, then this
    // flag, so it can never report the new model as still building (it
    // could, between these two lines, the other way round).
    core.building.store(false, Ordering::SeqCst);
    core.set_engine(engine.clone());
    if let Some(old) = old.filter(|o| o != engine.space.fingerprint()) {
        drop_space(&engine.store, data_dir, &old);
    }
    tracing::info!(fingerprint = %engine.space.fingerprint(), files, "new model's index complete: now serving it");
}

/// Keeps the progress snapshot, systemd STATUS and the watchdog current, and
/// switches to a new model's index once it is complete.
async fn report_progress(
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
        rate = if rate == 0.0 {
            instant
        } else {
            0.8 * rate + 0.2 * instant
        };
        (last_committed, last_at) = (committed, Instant::now());
        let pending = counters.pending();
        let snap = ProgressSnapshot {
            indexed: engine.store.indexed_file_count().unwrap_or(0),
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
        tx.send_replace(snap);
        if let Some(every) = watchdog
            && last_ping.elapsed() >= every
        {
            notifier.watchdog();
            last_ping = Instant::now();
        }
    }
}
