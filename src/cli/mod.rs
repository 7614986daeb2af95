//! The command line: clap definitions and dispatch. Each subcommand lives in
//! its own file; `main.rs` only calls [`run`].

pub mod bench;
pub mod client;
pub mod fsck;
pub mod migrate;
pub mod model_cmds;
pub mod parity;
pub mod serve;
pub mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "dualsight",
    version,
    about = "Self-hosted text-to-image search: a VisionTextDualEncoder daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed texts and/or images with a checkpoint.
    Embed(model_cmds::EmbedArgs),
    /// Zero-shot classify an image against labels.
    Classify(model_cmds::ClassifyArgs),
    /// Build a dual encoder from a vision tower and a text tower checkpoint (new projections).
    Compose(model_cmds::ComposeArgs),
    /// Build a dual encoder with random weights from two tower configs.
    Init(model_cmds::InitArgs),
    /// Fine-tune a dual encoder on image-caption pairs (contrastive loss, as run_clip.py).
    Train(train::TrainArgs),
    /// Run the daemon: watch folders, index photos, answer queries over gRPC.
    Serve(serve::ServeArgs),
    /// Search a running daemon by text (or by image with --image / --indexed-path).
    Search(client::SearchArgs),
    /// Show a running daemon's counters (--watch: live progress until done).
    Status(client::StatusArgs),
    /// Zero-shot classify an image with a running daemon's model.
    Ask(client::ClassifyArgs),
    /// Check a stopped daemon's store (--data-dir): every record and link.
    Fsck(fsck::FsckArgs),
    /// List files a running daemon could not index.
    Failures(client::FailuresArgs),
    /// Copy a stopped daemon's sled store into PostgreSQL (no re-embedding; resumable).
    Migrate(migrate::MigrateArgs),
    /// Check this build on a device against transformers' recorded numbers (reference.safetensors).
    Parity(parity::ParityArgs),
    /// Run the benchmark harness `dualsight-bench` (built separately), passing it the arguments that follow.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command; errors are printed by `main` as one line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Embed(a) => model_cmds::embed(a)?,
        Command::Classify(a) => model_cmds::classify(a)?,
        Command::Compose(a) => model_cmds::compose(a)?,
        Command::Init(a) => model_cmds::init(a)?,
        Command::Train(a) => train::run(a)?,
        Command::Fsck(a) => fsck::run(a)?,
        Command::Migrate(a) => migrate::run(a)?,
        Command::Parity(a) => {
            if !parity::run(a)? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench(a) => return Ok(bench::run(a)?),
        Command::Serve(a) => serve::serve(a)?,
        Command::Search(a) => client_runtime()?.block_on(client::search(a))?,
        Command::Status(a) => client_runtime()?.block_on(client::status(a))?,
        Command::Ask(a) => client_runtime()?.block_on(client::classify(a))?,
        Command::Failures(a) => client_runtime()?.block_on(client::failures(a))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// An error and its causes on one line, joined by ": " (ripgrep style),
/// leaving out a cause whose words the line already holds: most errors
/// here name their cause in their own message as well as in their source.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A small runtime for the gRPC client commands.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Logging of every command but `serve` (which sets it up from its config):
/// warnings and errors only, so one-shot commands keep stderr for errors;
/// `RUST_LOG` overrides.
pub fn init_logging(command: &Command) {
    if matches!(command, Command::Serve(_)) {
        return;
    }
    let filter = crate::logging::effective_filter(None, "warn");
    if crate::logging::init(crate::logging::LogFormat::Text, &filter).is_err() {
        let _ = crate::logging::init(crate::logging::LogFormat::Text, "warn");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause already in its error's message is said once; one that is not
    /// is kept, in order.
    #[test]
    fn error_line_says_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::from(crate::config::ConfigError::Io {
            path: "x.toml".into(),
            source: io(),
        });
        assert_eq!(error_line(&err), "x.toml: cannot read: No such file");
        let err = anyhow::Error::from(io())
            .context("reading x.toml")
            .context("serve");
        assert_eq!(error_line(&err), "serve: reading x.toml: No such file");
    }
}
