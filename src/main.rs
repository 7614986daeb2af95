use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the index allocates one 32-byte `Arc` per graph edge, which
/// glibc's malloc would pad to 48 (see Cargo.toml).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    dualsight::heap::mimalloc_keep_freed_pages();
    dualsight::heap::set_trimmer(dualsight::heap::mimalloc_collect);
    let cli = dualsight::cli::Cli::parse();
    dualsight::cli::init_logging(&cli.command);
    match dualsight::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line, the failing object first (ripgrep style).
            eprintln!("error: {}", dualsight::cli::error_line(&err));
            ExitCode::FAILURE
        }
    }
}
