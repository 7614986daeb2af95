//! `dualsight-crash`: kill -9 the daemon N times over a changing folder and
//! report every broken invariant (see `dualsight_harness::crash`).
//!
//! ```text
//! cargo build --release --workspace
//! target/release/dualsight-crash --rounds 100
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dualsight_harness::Common;
use dualsight_harness::crash::{Harness, Options};

#[derive(Parser)]
#[command(name = "dualsight-crash")]
struct Args {
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    #[command(flatten)]
    common: Common,
    /// A folder of distinct photos to copy in (at least 8).
    #[arg(long, default_value = "tests/fixtures/fashion/train")]
    photos: PathBuf,
    /// Seconds the daemon may take to catch up after a restart.
    #[arg(long, default_value_t = 60)]
    settle_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("dualsight-crash: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let work = args.common.work("dualsight-crash")?;
    let options = Options {
        dualsight: args.common.dualsight()?,
        model: args.common.model.clone(),
        sources: dualsight_harness::photos_under(&args.photos)?,
        work: work.clone(),
        rounds: args.rounds,
        seed: args.common.seed,
        settle: Duration::from_secs(args.settle_s),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async { Harness::new(options)?.run().await })?;
    println!(
        "{} of {} rounds survived, {} broken invariants ({} changes, {} files at the end, \
         Status idle too early {} times; work dir {})",
        report.survived,
        report.rounds,
        report.broken.len(),
        report.changes,
        report.files,
        report.early_idle,
        work.display()
    );
    for b in &report.broken {
        println!("  {b}");
    }
    Ok(report.broken.is_empty())
}
