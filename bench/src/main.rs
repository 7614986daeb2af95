//! `dualsight-bench`: see [`dualsight_bench::cli`].

use std::process::ExitCode;

use clap::Parser;

/// The daemon's allocator, so memory figures are the daemon's.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    dualsight::heap::mimalloc_keep_freed_pages();
    dualsight::heap::set_trimmer(dualsight::heap::mimalloc_collect);
    let args = dualsight_bench::cli::BenchArgs::parse();
    match dualsight_bench::cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dualsight-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
