//! The gRPC face of the daemon: the `dualsight.v1.DualSight` service over a
//! [`Core`] (the port the daemon implements), `grpc.health.v1` (NOT_SERVING
//! until the daemon says it is ready), and server reflection (so `grpcurl`
//! works without the .proto), all on one router served on a TCP listener and,
//! optionally, a Unix socket.
//!
//! - [`proto`]: the code generated from `proto/dualsight/v1/dualsight.proto`.
//! - [`core`]: the [`Core`] trait, its types, and the one error → status table.
//! - `service`: the handlers (validate → convert → call core → convert back).

pub mod auth;
mod guard;
mod oversized;
pub mod port;
mod service;
pub mod tls;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use self::service::{DualSightService, ServerConfig};
pub(crate) use self::service::{image_query, text_query, thumbnail_request};
use crate::metrics::Metrics;
pub use auth::Token;
use guard::Guard;
pub use port::{Core, CoreError};
pub use tls::TlsFiles;

/// Types and client/server stubs generated from the proto (package
/// `dualsight.v1`), and the encoded descriptor set reflection serves.
pub mod proto {
    tonic::include_proto!("dualsight.v1");

    /// `FileDescriptorSet` of `dualsight.proto`, written by `build.rs`.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("dualsight_descriptor");
}

/// Health is reported under the whole server ("") and under the service.
const HEALTH_NAMES: [&str; 2] = ["", proto::dual_sight_server::SERVICE_NAME];

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// An invalid [`ServerConfig`]; the message names the key.
    #[error("server config: {0}")]
    Config(String),
    /// A Unix socket path that could not be checked, removed or bound.
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// Another server answers on the socket: never steal it.
    #[error("{}: another server is listening on this socket", .0.display())]
    SocketInUse(PathBuf),
    /// The socket path names something else: never delete it.
    #[error("{}: exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// The embedded descriptor sets could not be decoded (a build problem).
    #[error("server reflection: cannot load the descriptor set")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The TLS settings were refused by the server.
    #[error("tls: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("grpc server failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Who may connect and how: the bearer token, TLS on TCP, the Unix
/// socket's permissions, and where request metrics go.
#[derive(Clone)]
pub struct Access {
    /// Every `dualsight.v1` request must carry `authorization: Bearer <token>`.
    pub token: Option<Token>,
    /// TLS on the TCP listener (the Unix socket is guarded by its file mode).
    pub tls: Option<ServerTlsConfig>,
    /// Permission bits of the Unix socket (connecting needs write permission).
    pub socket_mode: u32,
    /// Group owning the Unix socket (its members may connect with mode 0660).
    pub socket_group: Option<u32>,
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            token: None,
            tls: None,
            socket_mode: 0o660,
            socket_group: None,
            metrics: None,
        }
    }
}

/// Serves DualSight, health and reflection until `shutdown` resolves.
///
/// - `tcp`: bound by the caller (tests bind `127.0.0.1:0`); TLS if `access` has it.
/// - `unix`: if given, a socket created at this path (a stale socket file left
///   by a dead server is replaced; a live one or a non-socket is an error),
///   given `access`'s mode and group, and removed when the server stops. It
///   is served by a second server on the same routes, without TLS.
/// - `ready`: health says NOT_SERVING until it is true, SERVING while it is.
/// - `shutdown`: on completion, stop accepting, set health NOT_SERVING, end
///   progress and health-watch streams, and give running requests
///   `cfg.shutdown_grace` to finish; after that serve returns anyway (tonic's
///   connection tasks still open end with the runtime).
pub async fn serve<C: Core>(
    core: Arc<C>,
    cfg: ServerConfig,
    access: Access,
    tcp: TcpListener,
    unix: Option<PathBuf>,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    cfg.validate().map_err(ServerError::Config)?;

    let (mut health, health_service) = tonic_health::server::health_reporter();
    for name in HEALTH_NAMES {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(ServerError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(ServerError::Reflection)?;

    let (stopping_tx, mut stopping) = crate::shutdown::channel();
    let dualsight = proto::dual_sight_server::DualSightServer::new(
        DualSightService::with_stopping(core, cfg.clone(), stopping.clone()),
    )
    .max_decoding_message_size(cfg.max_message_bytes);
    // The guard is outermost, so it counts the status the client gets.
    let dualsight = Guard::new(
        oversized::OversizedIsInvalid(dualsight),
        access.token.clone(),
        access.metrics.clone(),
    );
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(dualsight);

    if let Ok(addr) = tcp.local_addr() {
        tracing::info!(%addr, tls = access.tls.is_some(), token = access.token.is_some(), "grpc listening on tcp");
    }
    // Small unary replies must not wait for Nagle.
    let tcp = TcpIncoming::from(tcp).with_nodelay(Some(true));
    // `_socket_file` removes the socket file when serve returns, however it returns.
    let (unix, _socket_file) = match unix {
        None => (None, None),
        Some(path) => {
            let listener = bind_unix(&path).await?;
            let socket_file = SocketFile(path.clone());
            restrict_socket(&path, access.socket_mode, access.socket_group)?;
            tracing::info!(path = %path.display(), mode = format!("{:04o}", access.socket_mode), "grpc listening on unix socket");
            (Some(UnixListenerStream::new(listener)), Some(socket_file))
        }
    };

    // Both servers stop when the signal task flips `stop`.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut follow = AbortOnDrop(tokio::spawn(follow_ready(ready, health.clone())));
    let _signal = AbortOnDrop(tokio::spawn(async move {
        shutdown.await;
        tracing::info!("grpc shutting down");
        // Stop following `ready` first, so it cannot flip health back.
        follow.0.abort();
        let _ = (&mut follow.0).await;
        stopping_tx.fire();
        for name in HEALTH_NAMES {
            health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
            // Dropping the status ends the health Watch streams, which would
            // otherwise hold the graceful drain open forever.
            health.clear_service_status(name).await;
        }
        let _ = stop_tx.send(true);
    }));

    let builder = || {
        tonic::transport::Server::builder()
            // Notice clients that vanished without closing (a laptop put to
            // sleep), so their progress streams do not live on.
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
    };
    let mut tcp_builder = builder();
    if let Some(tls) = access.tls {
        tcp_builder = tcp_builder
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    let tcp_server = tcp_builder
        .add_routes(routes.clone())
        .serve_with_incoming_shutdown(tcp, stopped());
    let unix_server = async {
        match unix {
            Some(incoming) => {
                builder()
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, stopped())
                    .await
            }
            None => Ok(()),
        }
    };

    tokio::select! {
        result = async { tokio::try_join!(tcp_server, unix_server) } => {
            result.map_err(ServerError::Transport)?;
        }
        () = async {
            stopping.recv().await;
            tokio::time::sleep(cfg.shutdown_grace).await;
        } => {
            tracing::warn!(
                grace_ms = cfg.shutdown_grace.as_millis() as u64,
                "grpc requests still running after the grace period; stopping anyway"
            );
        }
    }
    tracing::info!("grpc stopped");
    Ok(())
}

/// Mirrors `ready` into the health statuses until its sender is dropped
/// (then the last state stays).
async fn follow_ready(mut ready: watch::Receiver<bool>, health: HealthReporter) {
    let mut serving = false;
    loop {
        let now = *ready.borrow_and_update();
        if now != serving {
            serving = now;
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in HEALTH_NAMES {
                health.set_service_status(name, status).await;
            }
            tracing::info!(serving, "grpc health changed");
        }
        if ready.changed().await.is_err() {
            return;
        }
    }
}

/// The innermost cause of an error chain: tonic's outer errors only say
/// "transport error"; the useful part ("Connection refused") is at the end.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds a Unix socket at `path`, replacing a stale socket file (one nobody
/// answers on) but never a live socket or a file that is not a socket.
async fn bind_unix(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let io_error = |what| {
        move |source| ServerError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    match tokio::fs::symlink_metadata(path).await {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot check the socket path")(e)),
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(ServerError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => match UnixStream::connect(path).await {
            Ok(_) => return Err(ServerError::SocketInUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "removing stale socket");
                tokio::fs::remove_file(path)
                    .await
                    .map_err(io_error("cannot remove the stale socket"))?;
            }
            Err(e) => return Err(io_error("cannot check the existing socket")(e)),
        },
    }
    UnixListener::bind(path).map_err(io_error("cannot listen on the unix socket"))
}

/// Gives the socket `mode` (and `group`): the socket is created under the
/// process umask, which may leave it open to every local user.
fn restrict_socket(path: &Path, mode: u32, group: Option<u32>) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let io_error = |what| {
        move |source| ServerError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(io_error("cannot give the socket to its group"))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_error("cannot set the socket's mode"))
}

/// The socket file of a running server; removed on drop.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove socket");
        }
    }
}

#[cfg(test)]
mod tests {
    //! One smoke test of the wiring (both listeners, health, reflection,
    //! message limit, streaming, shutdown) over a stub core. Behaviour with
    //! the real daemon is covered by the integration tests.

    use super::port::*;
    use super::*;
    use crate::cli::client;
    use proto::search_by_image_request::Query;
    use tokio::sync::oneshot;
    use tonic::Code;
    use tonic::transport::Endpoint;
    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    struct Stub {
        progress: watch::Sender<ProgressSnapshot>,
    }

    impl Core for Stub {
        async fn search_text(&self, query: TextQuery) -> Result<Vec<Hit>, CoreError> {
            let path = PathBuf::from(format!("/p/{}.jpg", query.text));
            Ok(rank_hits(vec![(path, 0.5)], 0.0))
        }

        async fn search_image(&self, query: ImageQuery) -> Result<Vec<Hit>, CoreError> {
            match query.image {
                ImageRef::Path(p) => {
                    Err(CoreError::NotFound(format!("{}: not indexed", p.display())))
                }
                ImageRef::Bytes(_) => Ok(Vec::new()),
            }
        }

        async fn classify(&self, query: ClassifyQuery) -> Result<Vec<LabelScore>, CoreError> {
            let scored = query.labels.into_iter().map(|l| (l, 0.1)).collect();
            Ok(rank_labels(scored, 0.0))
        }

        async fn status(&self) -> Result<StatusSnapshot, CoreError> {
            Err(CoreError::NotReady("loading model".into()))
        }

        fn progress(&self) -> watch::Receiver<ProgressSnapshot> {
            self.progress.subscribe()
        }

        async fn thumbnail(&self, path: PathBuf, _size: u32) -> Result<ThumbnailImage, CoreError> {
            Err(CoreError::NotFound(format!(
                "{}: not indexed",
                path.display()
            )))
        }

        async fn failures(&self, limit: usize) -> Result<FailureList, CoreError> {
            Ok(FailureList {
                failures: Vec::new(),
                total: limit as u64,
            })
        }
    }

    async fn health(channel: &tonic::transport::Channel, service: &str) -> i32 {
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
    }

    async fn reflected_services(channel: &tonic::transport::Channel) -> Vec<String> {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match responses.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected reflection answer: {other:?}"),
        }
    }

    #[tokio::test]
    async fn serves_both_listeners_and_shuts_down_with_open_streams() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("dualsight.sock");
        // A socket file left by a dead server is replaced.
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());

        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_addr = format!("http://{}", tcp.local_addr().unwrap());
        let (progress, _) = watch::channel(ProgressSnapshot::default());
        let core = Arc::new(Stub {
            progress: progress.clone(),
        });
        let cfg = ServerConfig {
            max_message_bytes: 64 * 1024,
            ..ServerConfig::default()
        };
        let (ready_tx, ready) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            core,
            cfg,
            Access::default(),
            tcp,
            Some(socket.clone()),
            ready,
            async {
                let _ = stopped.await;
            },
        ));

        let mut c = client::connect(&tcp_addr).await.unwrap();
        let hits = c
            .search(proto::SearchRequest {
                text: "cat".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].path, "/p/cat.jpg");
        assert_eq!(hits[0].probability, 1.0);

        let e = c
            .search(proto::SearchRequest {
                text: " ".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, "text: must not be empty")
        );
        let e = c.status(proto::StatusRequest {}).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::Unavailable, "not ready: loading model")
        );
        let e = c
            .search_by_image(proto::SearchByImageRequest {
                query: Some(Query::Path("/p/x.jpg".into())),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::NotFound, "/p/x.jpg: not indexed")
        );
        let e = c
            .search_by_image(proto::SearchByImageRequest {
                query: Some(Query::Image(vec![0; 100 * 1024])),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("the limit is: 65536 bytes"), "{e:?}");

        // Health follows `ready`, under "" and the service name.
        let channel = Endpoint::from_shared(tcp_addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        for name in HEALTH_NAMES {
            assert_eq!(health(&channel, name).await, Wire::NotServing as i32);
        }
        let mut health_watch = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        ready_tx.send(true).unwrap();
        let mut serving = false;
        for _ in 0..200 {
            if health(&channel, proto::dual_sight_server::SERVICE_NAME).await
                == Wire::Serving as i32
            {
                serving = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(serving, "health never turned SERVING");
        assert_eq!(health(&channel, "").await, Wire::Serving as i32);

        let services = reflected_services(&channel).await;
        for name in [
            "dualsight.v1.DualSight",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
        }

        // The Unix socket serves the same router, to its owner and group only.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o660, "socket mode {mode:o}");
        }
        let mut u = client::connect(&format!("unix:{}", socket.display()))
            .await
            .unwrap();
        let labels = u
            .classify(proto::ClassifyRequest {
                query: Some(proto::classify_request::Query::Image(vec![1])),
                labels: vec!["cat".into(), "dog".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .labels;
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[0].probability, 0.5);
        let failures = u
            .list_failures(proto::ListFailuresRequest { limit: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            failures.total, 10,
            "limit 0 reaches the core as the default"
        );

        // Progress: the current state at once, then changes.
        let mut updates = u
            .watch_progress(proto::ProgressRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(updates.message().await.unwrap().unwrap().indexed, 0);
        progress.send_modify(|p| {
            p.indexed = 7;
            p.phase = "indexing".into();
        });
        let update = updates.message().await.unwrap().unwrap();
        assert_eq!((update.indexed, update.phase.as_str()), (7, "indexing"));

        // Shutdown ends the open progress and health-watch streams instead of
        // waiting out the grace period (10 s) for them.
        stop.send(()).unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(5), server).await;
        finished
            .expect("server still running 5 s after shutdown")
            .unwrap()
            .unwrap();
        assert!(matches!(updates.message().await, Ok(None) | Err(_)));
        while let Ok(Some(_)) = health_watch.message().await {}
        assert!(!socket.exists(), "socket file left behind");
    }

    #[tokio::test]
    async fn refuses_a_live_socket_and_a_non_socket() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.sock");
        let _listener = UnixListener::bind(&live).unwrap();
        let e = bind_unix(&live).await.unwrap_err();
        assert!(matches!(e, ServerError::SocketInUse(_)), "{e}");
        assert!(live.exists());

        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let e = bind_unix(&file).await.unwrap_err();
        assert!(
            e.to_string()
                .ends_with("exists and is not a socket; refusing to replace it")
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
