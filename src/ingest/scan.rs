//! The blocking side of the change feed: which paths count (exclusion globs on every component,
//! image extensions), the walk of a root or a folder under it, and the probe that says whether a
//! root is online. Nothing here is async; the coordinator runs it on blocking threads.

use std::fs::{self, Metadata};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tracing::{debug, warn};
use walkdir::WalkDir;

use super::{IngestError, Result};

/// Which paths below a root are photos we index.
#[derive(Debug)]
pub(crate) struct Filter {
    exclude: GlobSet,
    /// Lowercase, without the dot.
    extensions: Vec<String>,
}

impl Filter {
    pub(crate) fn new(exclude: &[String], extensions: &[String]) -> Result<Filter> {
        let mut set = GlobSetBuilder::new();
        for pattern in exclude {
            // `*` must not cross `/`, so that `.*` means "a hidden component", not "anything
            // under a path that starts with a dot".
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|source| IngestError::Glob {
                    pattern: pattern.clone(),
                    source,
                })?;
            set.add(glob);
        }
        let exclude = set.build().map_err(|source| IngestError::Glob {
            pattern: exclude.join(", "),
            source,
        })?;
        let extensions = extensions
            .iter()
            .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        Ok(Filter {
            exclude,
            extensions,
        })
    }

    /// Whether `rel` (relative to its root) or any folder above it is excluded.
    pub(crate) fn is_excluded(&self, rel: &Path) -> bool {
        let mut prefix = PathBuf::new();
        for component in rel.components() {
            prefix.push(component);
            if self.exclude.is_match(component) || self.exclude.is_match(&prefix) {
                return true;
            }
        }
        false
    }

    /// [`Filter::is_excluded`] for a walk entry whose parents were already checked.
    fn excludes_entry(&self, rel: &Path) -> bool {
        rel.file_name().is_some_and(|n| self.exclude.is_match(n)) || self.exclude.is_match(rel)
    }

    /// Whether the name has one of the image extensions (the file type is checked by stat).
    pub(crate) fn is_image(&self, path: &Path) -> bool {
        path.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| self.extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
    }
}

/// A regular image file as the walk saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileItem {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// Modification time in nanoseconds since the Unix epoch (negative before it; 0 if the
/// platform has none).
pub(crate) fn mtime_ns(md: &Metadata) -> i64 {
    match md.modified().map(|t| t.duration_since(UNIX_EPOCH)) {
        Ok(Ok(d)) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Ok(Err(before)) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        Err(_) => 0,
    }
}

/// Walks `start` (the root or a folder under it), following symlinks with walkdir's loop
/// detection. `on_dir` is called for every folder before its entries are read (the watcher adds
/// its watch there, so nothing created afterwards slips between walk and watch); `on_file` for
/// every image file, and the walk stops when it returns false. Unreadable folders, symlink loops
/// and broken links are logged and skipped. Returns whether the walk covered all of `start`: false
/// when `start` itself could not be read, changed identity during the walk, or `cancel` was set.
pub(crate) fn walk(
    root: &Path,
    start: &Path,
    filter: &Filter,
    cancel: &AtomicBool,
    mut on_dir: impl FnMut(&Path),
    mut on_file: impl FnMut(FileItem) -> bool,
) -> bool {
    let before = identity(start);
    if before.is_none() {
        return false;
    }
    let mut complete = true;
    let entries = WalkDir::new(start)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0
                || !filter.excludes_entry(e.path().strip_prefix(root).unwrap_or(e.path()))
        });
    for entry in entries {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                let path = err.path().unwrap_or(start).display().to_string();
                if err.depth() == 0 {
                    complete = false;
                }
                if let Some(ancestor) = err.loop_ancestor() {
                    warn!(path, ancestor = %ancestor.display(), "symlink loop: skipped");
                } else {
                    warn!(path, error = %err, "unreadable: skipped");
                }
                continue;
            }
        };
        let kind = entry.file_type();
        if kind.is_dir() {
            on_dir(entry.path());
        } else if kind.is_file() && filter.is_image(entry.path()) {
            match entry.metadata() {
                Ok(md) => {
                    let item = FileItem {
                        size: md.len(),
                        mtime_ns: mtime_ns(&md),
                        path: entry.into_path(),
                    };
                    if !on_file(item) {
                        return false;
                    }
                }
                // Deleted between listing and stat: the delete event (or next scan) covers it.
                Err(err) => {
                    debug!(path = %entry.path().display(), error = %err, "stat failed: skipped")
                }
            }
        }
    }
    complete && identity(start) == before
}

/// Device and inode of a folder: what tells "the same root" from "something else now mounted or
/// created at that path".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub dev: u64,
    pub ino: u64,
}

#[cfg(unix)]
fn identity_of(md: &Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    Identity {
        dev: md.dev(),
        ino: md.ino(),
    }
}

#[cfg(not(unix))]
fn identity_of(_md: &Metadata) -> Identity {
    Identity { dev: 0, ino: 0 }
}

pub(crate) fn identity(dir: &Path) -> Option<Identity> {
    fs::metadata(dir).ok().map(|md| identity_of(&md))
}

/// Whether a root can be scanned right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    Up {
        id: Identity,
        /// A different file system than its parent folder: the root is a mount point.
        mount: bool,
    },
    Down(String),
}

pub(crate) fn probe_root(root: &Path) -> Probe {
    let md = match fs::metadata(root) {
        Ok(md) => md,
        Err(err) => return Probe::Down(err.to_string()),
    };
    if !md.is_dir() {
        return Probe::Down("not a folder".into());
    }
    // Listable, not just present: EACCES, EIO or a dead network mount count as offline.
    if let Err(err) = fs::read_dir(root) {
        return Probe::Down(err.to_string());
    }
    let id = identity_of(&md);
    // Canonical, so that a root given as a symlink is compared with its target's parent.
    let mount = fs::canonicalize(root)
        .ok()
        .and_then(|c| c.parent().and_then(identity))
        .is_some_and(|parent| parent.dev != id.dev);
    Probe::Up { id, mount }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::WatchConfig;
    use std::time::{Duration, SystemTime};

    fn default_filter() -> Filter {
        let cfg = WatchConfig::default();
        Filter::new(&cfg.exclude, &cfg.extensions).unwrap()
    }

    #[test]
    fn filter_excludes_any_component_and_relative_paths() {
        let f = Filter::new(
            &[
                ".*".into(),
                "@eaDir".into(),
                "2019/raw".into(),
                "*.tmp.jpg".into(),
            ],
            &[".JPG".into(), "png".into()],
        )
        .unwrap();
        assert!(f.is_excluded(Path::new(".hidden.jpg")));
        assert!(f.is_excluded(Path::new("a/.git/b/c.jpg")));
        assert!(f.is_excluded(Path::new("a/@eaDir/c.jpg")));
        assert!(f.is_excluded(Path::new("2019/raw/x.jpg")));
        assert!(f.is_excluded(Path::new("x/y.tmp.jpg")));
        assert!(!f.is_excluded(Path::new("2020/raw/x.jpg")));
        assert!(!f.is_excluded(Path::new("a.b/c.jpg")));
        assert!(f.is_image(Path::new("a/B.JpG")));
        assert!(f.is_image(Path::new("a/b.png")));
        assert!(!f.is_image(Path::new("a/b.webp")));
        assert!(!f.is_image(Path::new("a/jpg")));
    }

    #[test]
    fn bad_glob_is_an_error_naming_the_pattern() {
        let err = Filter::new(&["a[".into()], &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("watch.exclude \"a[\": invalid glob"),
            "{err}"
        );
    }

    fn write(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"x").unwrap();
    }

    #[test]
    fn walk_finds_images_and_skips_excluded_loops_and_unreadable() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for p in [
            "a.jpg",
            "B.JPEG",
            "sub/c.png",
            "sub/deeper/d.webp",
            "notes.txt",
            ".hidden.jpg",
            ".cache/e.jpg",
            "@eaDir/f.jpg",
            "sub/.thumbnails/g.jpg",
            "locked/h.jpg",
        ] {
            write(&root.join(p));
        }
        fs::create_dir(root.join("a-folder.jpg")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(root, root.join("sub/loop")).unwrap();
        #[cfg(unix)]
        set_mode(&root.join("locked"), 0o000);
        // chmod does not deny root (tests often run as root in containers): then `locked` is
        // readable and its file must be found; otherwise it must be skipped without aborting.
        let locked_readable = fs::read_dir(root.join("locked")).is_ok();

        let mut dirs = Vec::new();
        let mut files = Vec::new();
        let complete = walk(
            root,
            root,
            &default_filter(),
            &AtomicBool::new(false),
            |d| dirs.push(d.strip_prefix(root).unwrap().to_path_buf()),
            |f| {
                files.push(f);
                true
            },
        );
        #[cfg(unix)]
        set_mode(&root.join("locked"), 0o755);

        assert!(complete);
        let mut names: Vec<_> = files
            .iter()
            .map(|f| {
                f.path
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        names.sort();
        let mut expected = vec!["B.JPEG", "a.jpg", "sub/c.png", "sub/deeper/d.webp"];
        if locked_readable {
            eprintln!("running with permission to read chmod 000 folders (root): skip check");
            expected.push("locked/h.jpg");
            expected.sort();
        }
        assert_eq!(names, expected);
        assert!(files.iter().all(|f| f.size == 1 && f.mtime_ns > 0));
        // Folders get their watch; excluded ones do not (no inotify watches wasted on @eaDir).
        assert!(dirs.contains(&PathBuf::new()) && dirs.contains(&PathBuf::from("sub/deeper")));
        assert!(
            !dirs
                .iter()
                .any(|d| d.starts_with("@eaDir") || d.starts_with(".cache"))
        );
    }

    #[test]
    fn walk_of_a_missing_start_is_incomplete() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("gone");
        let ok = walk(
            &gone,
            &gone,
            &default_filter(),
            &AtomicBool::new(false),
            |_| {},
            |_| true,
        );
        assert!(!ok);
    }

    #[test]
    fn mtime_is_nanoseconds_since_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.jpg");
        write(&p);
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(
            mtime_ns(&fs::metadata(&p).unwrap()),
            1_600_000_000_123_456_789
        );
    }

    #[test]
    fn probe_tells_up_from_down() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(probe_root(tmp.path()), Probe::Up { .. }));
        assert!(matches!(
            probe_root(&tmp.path().join("nope")),
            Probe::Down(_)
        ));
        write(&tmp.path().join("f.jpg"));
        assert!(matches!(
            probe_root(&tmp.path().join("f.jpg")),
            Probe::Down(_)
        ));
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }
}
