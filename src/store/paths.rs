//! Paths as store keys: UTF-8 only (a non-UTF-8 path is refused, never
//! stored lossily), and folder operations that match whole components.

use std::path::{MAIN_SEPARATOR, Path};

use super::{Result, StoreError};

/// The non-UTF-8 check the store applies to every path it is given, for
/// callers holding a `Path`.
pub fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| StoreError::NonUtf8Path(p.to_path_buf()))
}

pub(super) fn check_path(p: &str) -> Result<()> {
    if p.is_empty() {
        return Err(StoreError::InvalidPath(p.into(), "empty"));
    }
    Ok(())
}

/// `dir` without trailing separators (the root stays itself).
pub(super) fn trim_dir(dir: &str) -> &str {
    let t = dir.trim_end_matches(MAIN_SEPARATOR);
    if t.is_empty() && !dir.is_empty() {
        &dir[..1]
    } else {
        t
    }
}

/// The key prefix of everything strictly inside `dir` (already trimmed).
pub(super) fn dir_prefix(dir: &str) -> String {
    if dir.ends_with(MAIN_SEPARATOR) {
        dir.to_owned()
    } else {
        format!("{dir}{MAIN_SEPARATOR}")
    }
}

/// Whether `path` is `dir` or inside it, by whole components.
pub(super) fn is_under(dir: &str, path: &str) -> bool {
    path == dir || path.starts_with(&dir_prefix(dir))
}

pub(super) fn key_path(k: &[u8]) -> Result<String> {
    String::from_utf8(k.to_vec()).map_err(|_| StoreError::Corrupt("key is not UTF-8".into()))
}

/// The moves of a folder's paths (`paths`, all under `old_dir`) to
/// `new_dir`; refuses a move into itself. Both folders are trimmed first.
pub(super) fn folder_moves(
    old_dir: &str,
    new_dir: &str,
    paths_under: impl FnOnce(&str) -> Result<Vec<String>>,
) -> Result<Vec<(String, String)>> {
    let old_dir = trim_dir(old_dir);
    let new_dir = trim_dir(new_dir);
    check_path(old_dir)?;
    check_path(new_dir)?;
    if is_under(old_dir, new_dir) {
        return Err(StoreError::InvalidPath(
            new_dir.into(),
            "cannot move a folder into itself",
        ));
    }
    Ok(paths_under(old_dir)?
        .into_iter()
        .map(|p| {
            let n = format!("{new_dir}{}", &p[old_dir.len()..]);
            (p, n)
        })
        .collect())
}
