//! Logs to stderr (journald keeps them under systemd), as text or as one JSON
//! object per line for log shippers (`--log-format json`). The filter can be
//! replaced while the daemon runs (a reload with a new `[log] level`).
//!
//! Which filter applies: the config's `[log] level` when set, else `RUST_LOG`,
//! else the command's default.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("log filter `{filter}`: {reason} (expected e.g. `info` or `info,dualsight=debug`)")]
    Filter { filter: String, reason: String },
    #[error("logging was not set up with a reloadable filter")]
    NotReloadable,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields, message).
    Json,
}

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Parses a filter, naming it on error.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::try_new(filter).map_err(|e| LoggingError::Filter {
        filter: filter.to_owned(),
        reason: e.to_string(),
    })
}

/// The filter to run with: `configured`, else `RUST_LOG`, else `default`.
pub fn effective_filter(configured: Option<&str>, default: &str) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

/// Installs the global subscriber; a second call does nothing.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    use std::io::IsTerminal;
    let (filter, handle) = reload::Layer::new(parse_filter(filter)?);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => fmt.json().with_ansi(false).boxed(),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = FILTER.set(handle);
    }
    Ok(())
}

/// Replaces the running filter.
pub fn set_filter(filter: &str) -> Result<(), LoggingError> {
    let parsed = parse_filter(filter)?;
    FILTER
        .get()
        .ok_or(LoggingError::NotReloadable)?
        .reload(parsed)
        .map_err(|_| LoggingError::NotReloadable)
}
