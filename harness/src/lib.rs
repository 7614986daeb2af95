//! dualsight's fault harness (issue 17): the real daemon, killed and
//! restarted round after round, checked through gRPC and `dualsight fsck`.
//! [`crash`] is the kill -9 harness (`dualsight-crash`); [`soak`] measures
//! a first indexing and hours of churn (`dualsight-soak`); both drive the
//! daemon through [`daemon`].

pub mod crash;
pub mod daemon;
pub mod soak;

use std::path::{Path, PathBuf};

/// The flags both harness binaries take.
#[derive(Debug, clap::Args)]
pub struct Common {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The dualsight binary [default: beside this one].
    #[arg(long)]
    pub dualsight: Option<PathBuf>,
    /// The checkpoint served.
    #[arg(long, default_value = "tests/fixtures/fashion/model")]
    pub model: PathBuf,
    /// Scratch folder [default: a new temporary one].
    #[arg(long)]
    pub work: Option<PathBuf>,
}

impl Common {
    /// `--dualsight`, or the `dualsight` beside this binary.
    pub fn dualsight(&self) -> std::io::Result<PathBuf> {
        match &self.dualsight {
            Some(p) => Ok(p.clone()),
            None => Ok(std::env::current_exe()?.with_file_name("dualsight")),
        }
    }

    /// `--work`, or a new folder in the temporary directory, created.
    pub fn work(&self, tool: &str) -> std::io::Result<PathBuf> {
        let w = self
            .work
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("{tool}-{}", std::process::id())));
        std::fs::create_dir_all(&w)?;
        Ok(w)
    }
}

/// The image files directly or indirectly under `dir`, in name order.
pub fn photos_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
