//! `dualsight bench …`: runs the benchmark harness, the workspace's
//! `dualsight-bench` binary, with the same arguments. The harness stays out
//! of the daemon's binary (it brings synthetic data and a Python reference
//! runner); the command users read in issues and BENCHMARKS.md still works,
//! the way `cargo foo` runs `cargo-foo`.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::Args;

/// The harness's file name.
pub const HARNESS: &str = "dualsight-bench";

#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// Arguments for `dualsight-bench` (`dualsight bench --help` prints its
    /// own help).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "`dualsight bench` runs the benchmark harness `{HARNESS}`, found neither beside this binary{} nor on PATH: build it with `cargo build --release -p {HARNESS}`",
        beside.as_ref().map(|d| format!(" ({})", d.display())).unwrap_or_default()
    )]
    NotFound {
        /// This binary's directory, when the OS could say.
        beside: Option<PathBuf>,
    },
    #[error("{}: {source}", path.display())]
    Run { path: PathBuf, source: io::Error },
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Runs the harness: in place of this process on Unix (its exit status
/// and signals are the command's), else as a child whose status is passed on.
pub fn run(a: &BenchArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().ok();
    let path = locate(exe.as_deref(), std::env::var_os("PATH").as_deref())?;
    let mut command = Command::new(&path);
    command.args(&a.args);
    let fail = |source| BenchError::Run {
        path: path.clone(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // `exec` returns only when it failed.
        Err(fail(command.exec()))
    }
    #[cfg(not(unix))]
    {
        // A status outside 0..=255 (Windows' are 32-bit) becomes 1.
        let status = command.status().map_err(fail)?;
        Ok(match status.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => ExitCode::FAILURE,
        })
    }
}

/// The harness beside `exe` (a release build's `target/release`, or an
/// install's `bin`), else the first on `path`: the one built with this
/// binary comes before another install's.
fn locate(exe: Option<&Path>, path: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    let name = format!("{HARNESS}{}", std::env::consts::EXE_SUFFIX);
    let beside = exe.and_then(Path::parent).map(|d| d.join(&name));
    let on_path = path
        .map(std::env::split_paths)
        .into_iter()
        .flatten()
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(&name));
    beside
        .clone()
        .into_iter()
        .chain(on_path)
        .find(|p| is_executable(p))
        .ok_or_else(|| BenchError::NotFound {
            beside: beside.and_then(|p| p.parent().map(Path::to_path_buf)),
        })
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    meta.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything after `bench` is the harness's, its `--help` and `-h`
    /// first of all; nothing at all is fine too (the harness's defaults).
    #[test]
    fn every_argument_after_bench_is_the_harness() {
        use clap::Parser;
        let args = |argv: &[&str]| match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Bench(b) => b.args,
            other => panic!("{other:?}"),
        };
        for first in ["--help", "-h", "--version", "--only"] {
            assert_eq!(args(&["dualsight", "bench", first, "x"]), [first, "x"]);
        }
        assert!(args(&["dualsight", "bench"]).is_empty());
    }

    fn harness_in(dir: &Path, mode: u32) -> PathBuf {
        let p = dir.join(HARNESS);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        p
    }

    /// Beside the binary first, then PATH's entries in order; a file that
    /// is not executable and a directory of that name are passed over; with none found the error names where it looked
    /// and how to build it.
    #[test]
    fn the_harness_beside_the_binary_comes_before_path() {
        let (bin, first, second) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let exe = bin.path().join("dualsight");
        let path = std::env::join_paths([
            "",
            first.path().to_str().unwrap(),
            second.path().to_str().unwrap(),
        ])
        .unwrap();
        let none = locate(Some(&exe), Some(&path)).unwrap_err().to_string();
        assert!(
            none.contains(&bin.path().display().to_string())
                && none.contains("cargo build --release -p dualsight-bench"),
            "{none}"
        );
        std::fs::create_dir(first.path().join(HARNESS)).unwrap();
        let on_second = harness_in(second.path(), 0o755);
        assert_eq!(locate(Some(&exe), Some(&path)).unwrap(), on_second);
        #[cfg(unix)]
        {
            harness_in(bin.path(), 0o644);
            assert_eq!(
                locate(Some(&exe), Some(&path)).unwrap(),
                on_second,
                "not executable"
            );
        }
        let beside = harness_in(bin.path(), 0o755);
        assert_eq!(locate(Some(&exe), Some(&path)).unwrap(), beside);
        assert_eq!(locate(None, Some(&path)).unwrap(), on_second);
        assert!(locate(None, None).is_err());
    }
}
