//! Where `--model` points: a local directory, or a hub id (`org/name`) found
//! in the standard Hugging Face cache that Python fills, so a model
//! downloaded once works offline. dualsight never downloads.

use std::path::{Path, PathBuf};

use super::{ModelError, Result};

/// The hub cache root: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn cache_root() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return Some(PathBuf::from(p).join("hub"));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("huggingface").join("hub"));
    }
    std::env::var_os("HOME").map(|h| {
        PathBuf::from(h)
            .join(".cache")
            .join("huggingface")
            .join("hub")
    })
}

fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        && !spec.starts_with('.')
}

/// Resolves `spec` to a model directory holding `config.json`.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let not_found = |detail: String| ModelError::ModelNotFound {
        spec: spec.to_string(),
        detail: format!(
            "{detail}; pass --model a directory holding config.json and model.safetensors (dualsight never downloads)"
        ),
    };
    if !looks_like_hub_id(spec) {
        return Err(not_found("no such directory".into()));
    }
    let Some(root) = cache_root() else {
        return Err(not_found(
            "not a directory, and no Hugging Face cache location (HOME unset)".into(),
        ));
    };
    let repo = root.join(format!("models--{}", spec.replace('/', "--")));
    if !repo.is_dir() {
        return Err(not_found(format!(
            "not a directory, and not in the Hugging Face cache ({} is missing)",
            repo.display()
        )));
    }
    let snapshots = repo.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(hash.trim());
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
    }
    // No refs/main (or it points nowhere): take the newest complete snapshot.
    let mut candidates: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
        .map_err(|_| not_found(format!("{} has no snapshots", repo.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| {
            (
                p.metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH),
                p,
            )
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, p)| p).ok_or_else(|| {
        not_found(format!(
            "no snapshot with config.json under {}",
            snapshots.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_cached_snapshot_and_explains_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp
            .path()
            .join("models--org--tiny")
            .join("snapshots")
            .join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(tmp.path().join("models--org--tiny").join("refs")).unwrap();
        std::fs::write(
            tmp.path()
                .join("models--org--tiny")
                .join("refs")
                .join("main"),
            "abc123\n",
        )
        .unwrap();
        // SAFETY: this test is the only one in the crate touching HF_HUB_CACHE.
        unsafe { std::env::set_var("HF_HUB_CACHE", tmp.path()) };
        assert_eq!(resolve("org/tiny").unwrap(), snap);
        let e = resolve("org/absent").unwrap_err().to_string();
        assert!(e.contains("org/absent") && e.contains("--model"), "{e}");
        unsafe { std::env::remove_var("HF_HUB_CACHE") };
    }
}
