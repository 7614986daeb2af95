//! `dualsight-soak`: the daemon's first indexing of N generated photos, a
//! restart, then continuous adds and deletes with queries running; one row
//! of memory, disk and query latency per sample (see
//! `dualsight_harness::soak`).
//!
//! ```text
//! cargo build --release --workspace
//! # a million photos, then an hour of churn (BENCHMARKS.md, "Storage"):
//! target/release/dualsight-soak --files 1000000 --churn-s 3600
//! # two daemons on one PostgreSQL with pgvector (docs/scale-out.md):
//! target/release/dualsight-soak --nodes 2 --database-url "host=/run/postgresql dbname=soak" \
//!     --files 50000 --churn-s 7200 --churn-per-s 5
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dualsight_harness::Common;
use dualsight_harness::soak::{Options, Soak};

#[derive(Parser)]
#[command(name = "dualsight-soak")]
struct Args {
    /// Photos generated and indexed first.
    #[arg(long, default_value_t = 100_000)]
    files: usize,
    /// Seconds of adds and deletes after the first indexing.
    #[arg(long, default_value_t = 0)]
    churn_s: u64,
    /// Files added (and as many of the oldest deleted) per second of churn.
    #[arg(long, default_value_t = 20)]
    churn_per_s: usize,
    /// Seconds between rows.
    #[arg(long, default_value_t = 60)]
    sample_s: u64,
    /// Soak the scale-out: every node on this PostgreSQL (with pgvector),
    /// e.g. "host=/run/postgresql user=postgres dbname=soak" [default: the
    /// embedded store].
    #[arg(long, env = "DUALSIGHT_DATABASE_URL")]
    database_url: Option<String>,
    /// Daemons, each on its own folder of --files photos; more than one
    /// needs --database-url.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The daemons' full rescan of their folders every this many seconds
    /// (`[watch] reconcile_interval_s`); a short one puts many rescans into
    /// one run, to tell a bound from a slow leak [default: the daemon's].
    #[arg(long)]
    reconcile_s: Option<u64>,
    #[command(flatten)]
    common: Common,
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dualsight-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let work = args.common.work("dualsight-soak")?;
    let options = Options {
        dualsight: args.common.dualsight()?,
        model: args.common.model.clone(),
        work: work.clone(),
        files: args.files,
        churn: Duration::from_secs(args.churn_s),
        churn_per_s: args.churn_per_s,
        sample_every: Duration::from_secs(args.sample_s.max(1)),
        seed: args.common.seed,
        database_url: args.database_url.clone(),
        nodes: args.nodes,
        reconcile: args.reconcile_s.map(Duration::from_secs),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async { Soak::new(options)?.run().await })?;
    eprintln!("work dir: {} (log: daemon.log)", work.display());
    Ok(())
}
