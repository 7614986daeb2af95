use std::process::ExitCode;

use clap::Parser;

/// See Cargo.toml: the index's per-edge allocations are 32 bytes, which
/// glibc pads by half again.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_collect`: glibc's `malloc_trim` does nothing for memory
/// that mimalloc holds.
fn mimalloc_collect() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: part of mimalloc's C API, linked in with the allocator above;
    // it only frees what is already free.
    unsafe { mi_collect(true) }
}

fn main() -> ExitCode {
    dualsight::heap::set_trimmer(mimalloc_collect);
    let cli = dualsight::cli::Cli::parse();
    dualsight::cli::init_logging(cli.command.default_log_filter());
    match dualsight::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, the failing object first (ripgrep style); the chain joined by ": ".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
