use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
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
