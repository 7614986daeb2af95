//! `dualsight serve`: settings from `--config` overlaid with flags, then the
//! daemon until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Settings;

/// What the daemon logs unless `[log] level` or `RUST_LOG` says otherwise.
pub const DEFAULT_LOG_FILTER: &str = "info,hnsw_rs=warn,sled=warn";

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file (see config/dualsight.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Model directory or cached hub id.
    #[arg(long)]
    pub model: Option<String>,
    /// A folder to watch (repeatable; replaces watch.roots from the config).
    #[arg(long = "watch")]
    pub watch: Vec<PathBuf>,
    /// Where the store and index live.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC address (IP:PORT).
    #[arg(long)]
    pub listen: Option<String>,
    /// Also serve gRPC on this Unix socket.
    #[arg(long)]
    pub unix_socket: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16, bf16.
    #[arg(long)]
    pub dtype: Option<String>,
    /// dtype or int8: how a query's text tower holds its dense weights on
    /// the CPU (int8: 8 bits with a scale per column, on CPUs with AVX2 or
    /// AVX-512 VNNI; stored vectors are unchanged).
    #[arg(long, value_name = "dtype|int8")]
    pub text_weights: Option<String>,
    /// Serve the search page (and its JSON API) on this IP:PORT.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// Serve GET /metrics (Prometheus text format) on this IP:PORT.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Require `authorization: Bearer <token>` on every dualsight.v1 request;
    /// the token is this file's one line.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve TLS on the TCP listener with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback --listen with neither a token nor TLS.
    #[arg(long)]
    pub allow_insecure: bool,
    /// Where records and vectors live: sled (embedded) or postgres (a library
    /// shared by many daemons).
    #[arg(long, value_name = "BACKEND")]
    pub store: Option<String>,
    /// The PostgreSQL primary, e.g. postgres://user@host/db or
    /// "host=/run/postgresql dbname=photos".
    #[arg(
        long,
        value_name = "URL",
        env = "DUALSIGHT_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// A PostgreSQL hot standby to send searches to (repeatable).
    #[arg(long = "database-read-url", value_name = "URL")]
    pub database_read_urls: Vec<String>,
    /// Each space's pgvector index: hnsw or ivfflat (built once a space
    /// holds 10,000 vectors, rebuilt as it grows).
    #[arg(long, value_name = "KIND")]
    pub vector_index: Option<String>,
    /// This daemon's name in a shared library (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Log lines as text or as JSON objects (for log shippers).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
}

impl ServeArgs {
    pub fn settings(&self) -> Result<Settings> {
        let mut s = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        if let Some(m) = &self.model {
            s.model = Some(m.clone());
        }
        if !self.watch.is_empty() {
            s.watch.roots = self.watch.clone();
        }
        if let Some(d) = &self.data_dir {
            s.data_dir = d.clone();
        }
        if let Some(l) = &self.listen {
            s.listen = l.clone();
        }
        if let Some(u) = &self.unix_socket {
            s.unix_socket = Some(u.clone());
        }
        if let Some(d) = &self.device {
            s.device = d.clone();
        }
        if let Some(d) = &self.dtype {
            s.dtype = d.clone();
        }
        if let Some(t) = &self.text_weights {
            s.text_weights = t.clone();
        }
        if let Some(h) = &self.http_listen {
            s.http.listen = Some(h.clone());
        }
        if let Some(m) = &self.metrics_listen {
            s.metrics.listen = Some(m.clone());
        }
        if let Some(t) = &self.token_file {
            s.server.token_file = Some(t.clone());
        }
        if let Some(c) = &self.tls_cert {
            s.server.tls_cert = Some(c.clone());
        }
        if let Some(k) = &self.tls_key {
            s.server.tls_key = Some(k.clone());
        }
        if let Some(ca) = &self.tls_client_ca {
            s.server.tls_client_ca = Some(ca.clone());
        }
        if self.allow_insecure {
            s.server.allow_insecure = true;
        }
        if let Some(b) = &self.store {
            s.store.backend = b.clone();
        }
        if let Some(u) = &self.database_url {
            s.store.database_url = Some(u.clone());
        }
        if !self.database_read_urls.is_empty() {
            s.store.database_read_urls = self.database_read_urls.clone();
        }
        if let Some(k) = &self.vector_index {
            s.store.vector_index = Some(k.clone());
        }
        if let Some(n) = &self.node {
            s.node = Some(n.clone());
        }
        if let Some(f) = self.log_format {
            s.log.format = f;
        }
        s.validate()?;
        Ok(s)
    }
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let settings = args.settings()?;
    // The config's log.level was checked with the settings: a bad filter
    // here came from RUST_LOG.
    crate::logging::init(
        settings.log.format,
        &crate::logging::effective_filter(settings.log.level.as_deref(), DEFAULT_LOG_FILTER),
    )
    .context(if settings.log.level.is_some() {
        "log.level"
    } else {
        "RUST_LOG"
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let reloads = reload_on_sighup(args.clone())?;
        crate::daemon::run(settings, shutdown_signal(), None, reloads).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// On each SIGHUP (`systemctl reload`), the settings read again (the config
/// file, then the same flags); a file that no longer parses or validates is
/// logged and the running settings stay.
fn reload_on_sighup(args: ServeArgs) -> Result<tokio::sync::mpsc::Receiver<Settings>> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the daemon starts: SIGHUP's default action ends the process.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the configuration again");
            match args.settings() {
                Ok(s) => {
                    if tx.send(s).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(
                        "reload refused: {}; keeping the running configuration",
                        super::error_line(&e)
                    )
                }
            }
        }
    });
    Ok(rx)
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn postgres_of(flags: &[&str]) -> crate::store::pg::PgOptions {
        let argv = ["serve", "--model", "m", "--watch", "/srv/photos"]
            .iter()
            .chain(flags);
        let settings = Serve::try_parse_from(argv)
            .unwrap()
            .args
            .settings()
            .unwrap();
        settings.postgres().expect("the postgres backend")
    }

    #[test]
    fn read_urls_repeat_and_the_node_defaults_to_the_host_name() {
        let pg = postgres_of(&[
            "--store",
            "postgres",
            "--database-url",
            "host=/run/postgresql dbname=photos",
            "--database-read-url",
            "host=standby-1 dbname=photos",
            "--database-read-url",
            "host=standby-2 dbname=photos",
        ]);
        assert_eq!(pg.url, "host=/run/postgresql dbname=photos");
        assert_eq!(
            pg.read_urls,
            [
                "host=standby-1 dbname=photos",
                "host=standby-2 dbname=photos"
            ]
        );
        // The kernel's own record of the name, not the call the code makes.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(pg.node, host.trim());
        let named = postgres_of(&[
            "--store",
            "postgres",
            "--database-url",
            "postgres://db/photos",
            "--node",
            "nas-1",
        ]);
        assert_eq!(named.node, "nas-1");
        assert!(named.read_urls.is_empty());
    }
}
