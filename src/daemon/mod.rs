//! The daemon's wiring (`dualsight serve`): bind the gRPC server first (it
//! answers NOT_SERVING / "not ready" while loading), load the model and the
//! index, start the watcher and the ingest pipeline, report progress (gRPC
//! stream, systemd STATUS, watchdog), and on shutdown stop intake, finish
//! the batch in hand, flush, checkpoint and return. `models.rs` decides which
//! model serves while another's index is built; `progress.rs` reports;
//! `query.rs` answers queries through the engine.

mod listeners;
mod models;
mod progress;
pub mod query;
mod reload;
pub mod systemd;
pub mod text_cache;

use models::{finish_model_switch, load_engines};
use progress::report_progress;

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
use crate::ingest::WatchConfig;
use crate::ingest::pipeline::{Counters, Pipeline, PipelineConfig};
use crate::preprocess::DecodeLimits;
use crate::server::port::ProgressSnapshot;
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
    #[error(transparent)]
    Auth(#[from] crate::server::auth::AuthError),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
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

/// Runs a server; if it fails, fires the daemon's shutdown (logging why)
/// and returns the error for the daemon to exit with.
async fn stop_on_error<E: std::fmt::Display>(
    name: &'static str,
    stop: Arc<crate::shutdown::Trigger>,
    server: impl std::future::Future<Output = std::result::Result<(), E>>,
) -> std::result::Result<(), E> {
    let served = server.await;
    if let Err(e) = &served {
        tracing::error!(error = %e, "{name} stopped: shutting down");
        stop.fire();
    }
    served
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
/// actually listened on (tests use port 0). Each settings value from
/// `reloads` is applied as far as it can be while running (`reload.rs`).
pub async fn run(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    mut reloads: mpsc::Receiver<Settings>,
) -> Result<()> {
    settings.validate()?;
    // What the watcher would refuse after the model loads, refused now.
    watch_config(&settings).check()?;
    let notifier = Arc::new(Notifier::from_env());
    let model_spec = settings.model.clone().unwrap_or_default();
    let listener = listeners::bind_grpc(&settings).await?;
    let counters = Arc::new(Counters::default());
    let metrics = match &settings.metrics.listen {
        Some(addr) => Some((
            crate::metrics::Metrics::new(&counters.embed_batch)?,
            crate::metrics::bind(addr).await?,
        )),
        None => None,
    };
    let access = listeners::access(&settings, metrics.as_ref().map(|(m, _)| m.clone()))?;
    let token = access.token.clone();
    let page = match &settings.http.listen {
        Some(addr) => Some(crate::web::bind(addr).await?),
        None => None,
    };
    let local = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: settings.listen.clone(),
        source,
    })?;
    tracing::info!(addr = %local, "listening");
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }

    let roots = reload::absolute_roots(&settings);
    let (progress_tx, progress_rx) = watch::channel(ProgressSnapshot {
        phase: "loading".into(),
        ..Default::default()
    });
    let core = Arc::new(DaemonCore::new(
        counters.clone(),
        roots.clone(),
        model_spec.clone(),
        settings.node_name(),
        progress_rx,
        crate::thumbs::Thumbs::new(&settings.data_dir),
    ));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = crate::shutdown::channel();
    // Shared with the servers: one that fails stops the daemon, which then
    // exits with its error, rather than indexing on with nobody to answer.
    let stop_tx = Arc::new(stop_tx);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(stop_on_error(
        "grpc server",
        stop_tx.clone(),
        crate::server::serve(
            core.clone(),
            settings.server_config(),
            access,
            listener,
            settings.unix_socket.clone(),
            ready_rx,
            async move {
                server_stop.recv().await;
            },
        ),
    ));
    let metrics_server = metrics.map(|(m, listener)| {
        let mut stop = stop_rx.clone();
        tokio::spawn(stop_on_error(
            "metrics server",
            stop_tx.clone(),
            crate::metrics::serve(listener, m, core.clone(), async move { stop.recv().await }),
        ))
    });
    let page_server = page.map(|listener| {
        let mut stop = stop_rx.clone();
        tokio::spawn(stop_on_error(
            "search page server",
            stop_tx.clone(),
            crate::web::serve(
                listener,
                core.clone(),
                settings.server_config(),
                token.clone(),
                async move { stop.recv().await },
            ),
        ))
    });
    let shutdown_task = tokio::spawn(async move {
        shutdown.await;
        // Dropping the trigger afterwards keeps it fired.
        stop_tx.fire();
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
            return servers_stopped(server, metrics_server, page_server).await;
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
    tracing::info!(indexed = engine.indexed_file_count().unwrap_or(0), "ready");

    // Intake: watcher → pipeline. The watcher stops on `stop`, closing the feed,
    // which lets the pipeline drain and stop.
    let (change_tx, change_rx) = crate::ingest::feed::channel(settings.ingest.queue.max(16) * 4);
    let mut intake = reload::Intake::start(&settings, change_tx, counters.clone())?;
    tokio::spawn(reload::forget_unwatched(
        roots.clone(),
        engine.clone(),
        intake.changes.clone(),
    ));
    let pipeline = Pipeline::spawn(
        engine.clone(),
        counters.clone(),
        PipelineConfig {
            batch_size: crate::ingest::batch::resolve(
                settings.ingest.batch_size,
                &engine.encoder.model().config().vision,
                engine.encoder.model().device(),
                engine.encoder.model().dtype(),
            ),
            batch_timeout: Duration::from_millis(settings.ingest.batch_timeout_ms),
            decode_threads: settings.decode_threads(),
            queue: settings.ingest.queue,
            remove_grace: Duration::from_millis(settings.ingest.remove_grace_ms),
            checkpoint_every: Duration::from_secs(settings.index.checkpoint_interval_s.max(1)),
            min_free_bytes: settings.ingest.min_free_mb.saturating_mul(1 << 20),
            thumbs: Some(crate::thumbs::Thumbs::new(&settings.data_dir)),
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
    let mut running = settings;
    loop {
        tokio::select! {
            () = stop_wait.recv() => break,
            Some(new) = reloads.recv() => {
                notifier.reloading();
                tracing::info!("reloading the configuration");
                reload::apply(&mut running, new, &mut intake, &core, &engine).await;
                notifier.ready();
            }
        }
    }
    tracing::info!("shutting down: stopping intake");
    notifier.stopping();
    // The last sender of the change feed goes with the intake: the pipeline drains and stops.
    intake.stop().await;
    pipeline.join().await;
    let _ = reporter.await;
    shutdown_task.abort();
    servers_stopped(server, metrics_server, page_server).await?;
    tracing::info!("stopped");
    Ok(())
}

type Served<E> = tokio::task::JoinHandle<std::result::Result<(), E>>;

/// Waits for the servers to stop; the first that failed (a failure is
/// what stopped the daemon, [`stop_on_error`]) gives the daemon its error,
/// so it exits non-zero whichever server it was.
async fn servers_stopped(
    grpc: Served<crate::server::ServerError>,
    metrics: Option<Served<crate::metrics::MetricsError>>,
    page: Option<Served<crate::web::WebError>>,
) -> Result<()> {
    let joined = |e: tokio::task::JoinError| DaemonError::Task(e.to_string());
    let grpc = grpc.await.map_err(joined)?.map_err(DaemonError::from);
    let metrics = match metrics {
        Some(m) => m.await.map_err(joined)?.map_err(DaemonError::from),
        None => Ok(()),
    };
    let page = match page {
        Some(p) => p.await.map_err(joined)?.map_err(DaemonError::from),
        None => Ok(()),
    };
    grpc.and(metrics).and(page)
}
