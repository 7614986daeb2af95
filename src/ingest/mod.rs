//! Ingest: turning photo folders into work for the encoder.
//!
//! The change feed: [`Watcher`] walks every root (walkdir), watches it (notify), reconciles it
//! periodically and polls it for going offline, and reports what it finds as [`Change`]s on a
//! bounded channel ([`feed`], which counts each change until it is taken up). The feed knows nothing of models or the store; [`pipeline`] consumes it (read
//! and hash, decode pool, batcher, vision tower, commit to the store through the
//! [`crate::engine::Engine`], index insert).
//!
//! - `scan`: path filter (exclusion globs, image extensions), the blocking walk, root probes.
//! - `watch`: the coordinator task (notify events, bounded queues); `watch/roots.rs` (online and
//!   offline, per-root watchers), `watch/pending.rs` (debounce, the stability check),
//!   `watch/scans.rs` (scan scheduling and results).
//!
//! What a consumer can rely on, and must allow for:
//! - `Upsert` is idempotent and repeats: every full scan (initial, reconcile, rescan, root back
//!   online) reports every file again, and a file can be reported by a scan and by an event. Skip
//!   a path whose `(size, mtime_ns)` is unchanged.
//! - `Remove` may repeat and may name a path that was never upserted (a non-image file or a
//!   folder renamed away); it may name a folder: remove everything at or under it.
//! - `Scanned` comes after the `Upsert`s of the files it lists that were already stable; a file
//!   still being written is in `seen` and its `Upsert` follows later. Files that changed while
//!   the walk ran are accounted for (see `watch/scans.rs`); a walk that lost its root, could not read the
//!   root itself or saw too many concurrent changes sends no `Scanned` at all.
//! - Nothing is emitted for a root while it is offline, and going offline is never a `Remove`.

pub mod batch;
pub mod feed;
pub mod pipeline;
mod scan;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

pub use watch::Watcher;

/// What to watch and how patient to be. Build it with `..Default::default()`.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Folders to index. Made absolute (not canonicalised: events keep the path as given); they
    /// must not overlap. A root that does not exist yet is reported offline and polled.
    pub roots: Vec<PathBuf>,
    /// Globs matched against every path component below a root (`"@eaDir"`, `".*"`) and against
    /// the relative path itself (`"2019/raw"`); `*` does not cross `/`. A matching folder
    /// excludes everything under it.
    pub exclude: Vec<String>,
    /// Image file extensions, case-insensitive, with or without the leading dot.
    pub extensions: Vec<String>,
    /// Quiet time after the last event on a path before it is looked at.
    pub debounce: Duration,
    /// A file is reported only once its size and mtime stayed unchanged this long.
    pub stable_for: Duration,
    /// Full rescan of every online root this often (network mounts send no events); `None`: off.
    pub reconcile_every: Option<Duration>,
    /// How often roots are checked for going offline or coming back.
    pub poll_roots_every: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            roots: Vec::new(),
            exclude: [".*", "@eaDir", ".thumbnails"].map(String::from).to_vec(),
            extensions: [
                "jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp", "heic", "heif", "hif",
                "avif",
            ]
            .map(String::from)
            .to_vec(),
            debounce: Duration::from_millis(500),
            stable_for: Duration::from_secs(1),
            reconcile_every: Some(Duration::from_secs(3600)),
            poll_roots_every: Duration::from_secs(5),
        }
    }
}

/// One thing the daemon has to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A regular file, stable (size and mtime unchanged for `stable_for`), matching the
    /// extensions and not excluded.
    Upsert {
        path: PathBuf,
        size: u64,
        mtime_ns: i64,
    },
    /// A path (file OR folder: a folder moved out or deleted) that is gone; the consumer removes
    /// everything at or under it.
    Remove { path: PathBuf },
    /// A full walk of `root` finished (initial scan, reconcile, event-queue overflow rescan, root
    /// back online): `seen` (sorted) is every file found; the consumer deletes records under root
    /// not in it.
    Scanned { root: PathBuf, seen: Vec<PathBuf> },
    /// The root is gone, unreadable, or its file system was unmounted: keep its records.
    RootOffline { root: PathBuf },
    /// The root is readable (at start, or back): a full scan of it follows.
    RootOnline { root: PathBuf },
    /// A root, or a file or folder, that is no longer watched: a reload took
    /// the root out of the configuration, or its new excludes or extensions
    /// leave the path out. After the removal grace, forget everything at or
    /// under `path` (files still on disk included) unless it is watched again
    /// (a `RootOnline` for it) by then, keeping what lies under `keep` (roots
    /// still watched inside it). Sent by the daemon, not the watcher.
    Unwatched { path: PathBuf, keep: Vec<PathBuf> },
}

/// Which files under a root a [`WatchConfig`] takes (its excludes and
/// extensions), for a caller that must tell without walking.
#[derive(Debug)]
pub struct PathFilter(scan::Filter);

impl WatchConfig {
    pub fn filter(&self) -> Result<PathFilter> {
        scan::Filter::new(&self.exclude, &self.extensions).map(PathFilter)
    }
}

impl PathFilter {
    /// Whether the watcher would report `path`, a file under `root`.
    pub fn takes(&self, root: &std::path::Path, path: &std::path::Path) -> bool {
        let Ok(rel) = path.strip_prefix(root) else {
            return false;
        };
        self.0.is_image(path) && !self.0.is_excluded(rel)
    }
}

/// Why a [`Watcher`] could not start. Everything that goes wrong later is logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("watch.exclude {pattern:?}: invalid glob: {source}")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("{}: {reason}", path.display())]
    Root { path: PathBuf, reason: String },
    #[error("invalid watch config: {0}")]
    Config(&'static str),
    #[error("the watcher must be started inside a tokio runtime")]
    NoRuntime,
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
