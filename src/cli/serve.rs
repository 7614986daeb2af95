//! `dualsight serve`: settings from `--config` overlaid with flags, then the
//! daemon until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Settings;

#[derive(Debug, Args)]
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
        s.validate()?;
        Ok(s)
    }
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    let settings = args.settings()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::daemon::run(settings, shutdown_signal(), None))?;
    Ok(())
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
