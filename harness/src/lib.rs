//! dualsight's fault harness (issue 17): the real daemon, killed and
//! restarted round after round, checked through gRPC and `dualsight fsck`.
//! [`crash`] is the kill -9 harness (`dualsight-crash`); [`soak`] measures
//! a first indexing and hours of churn (`dualsight-soak`); both drive the
//! daemon through [`daemon`].

pub mod crash;
pub mod daemon;
pub mod soak;

use std::path::{Path, PathBuf};

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
