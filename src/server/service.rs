//! The `dualsight.v1.DualSight` handlers. Each one only validates the request,
//! converts it into the port's types, calls the [`Core`], and converts the
//! answer back; errors become statuses through `From<CoreError> for Status`.
//! Validation and conversion are plain functions so they are tested without
//! a server.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc, watch};

use crate::shutdown::Shutdown;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::port::{
    ClassifyQuery, Core, CoreError, FailureList, Hit, ImageQuery, ImageRef, LabelScore,
    ProgressSnapshot, Result, StatusSnapshot, TextQuery,
};
use super::proto;
use super::proto::dual_sight_server::DualSight;

/// Bounds and defaults of the gRPC surface: every request's work is bounded
/// (sizes, counts, concurrency, time). The defaults are the documented ones in the proto.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Largest `limit` a request may ask for; larger is INVALID_ARGUMENT.
    pub max_limit: usize,
    /// The `limit` used when a request sends 0.
    pub default_limit: usize,
    /// Longest query text or label, in characters (not bytes).
    pub max_text_chars: usize,
    /// Largest request message; applied as tonic's max decoding message size,
    /// so a larger one is refused (INVALID_ARGUMENT) before it is buffered.
    pub max_message_bytes: usize,
    /// Most labels in one Classify request.
    pub max_labels: usize,
    /// Deepest `offset` a search may ask for (paging): a page costs a
    /// search of `offset + limit` hits.
    pub max_offset: usize,
    /// Requests that embed something (Search, SearchByImage, Classify) running
    /// at once across all connections; more wait for a slot (clients bound the
    /// wait with their deadline). Status, health and progress are not counted.
    /// A request's slot is held until its work ends, even if its client has
    /// gone: the embedding runs on regardless.
    pub max_concurrent_requests: usize,
    /// Shortest time between two updates on one WatchProgress stream, so a
    /// core that updates per file does not flood clients.
    pub progress_interval: Duration,
    /// After the shutdown signal, how long in-flight requests get to finish
    /// before the server stops anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_limit: 1000,
            default_limit: 10,
            max_text_chars: 32_768,
            max_message_bytes: 32 * 1024 * 1024,
            max_labels: 256,
            max_offset: 10_000,
            max_concurrent_requests: 64,
            progress_interval: Duration::from_millis(250),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// Checks the values against each other; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_limit == 0 {
            return Err("max_limit: must be at least 1".into());
        }
        if self.default_limit == 0 || self.default_limit > self.max_limit {
            return Err(format!(
                "default_limit: must be within 1..={} (max_limit), got {}",
                self.max_limit, self.default_limit
            ));
        }
        if self.max_text_chars == 0 {
            return Err("max_text_chars: must be at least 1".into());
        }
        if self.max_message_bytes < 1024 {
            return Err(format!(
                "max_message_bytes: must be at least 1024, got {}",
                self.max_message_bytes
            ));
        }
        if self.max_labels == 0 {
            return Err("max_labels: must be at least 1".into());
        }
        if self.max_concurrent_requests == 0
            || self.max_concurrent_requests > Semaphore::MAX_PERMITS
        {
            return Err(format!(
                "max_concurrent_requests: must be within 1..={}, got {}",
                Semaphore::MAX_PERMITS,
                self.max_concurrent_requests
            ));
        }
        Ok(())
    }
}

/// The DualSight gRPC service over a [`Core`].
pub struct DualSightService<C> {
    core: Arc<C>,
    cfg: ServerConfig,
    /// Slots for the embedding requests (`max_concurrent_requests`): a global
    /// bound, where tonic's own limit is per connection.
    limiter: Arc<Semaphore>,
    /// Turns true when the server is shutting down, so that progress streams
    /// end and the graceful drain is not held up by them.
    stopping: Shutdown,
}

impl<C: Core> DualSightService<C> {
    /// A service whose progress streams end only when their client goes away
    /// or the core drops its progress sender (for use outside [`super::serve`]).
    pub fn new(core: Arc<C>, cfg: ServerConfig) -> Self {
        Self::with_stopping(core, cfg, Shutdown::never())
    }

    pub(crate) fn with_stopping(core: Arc<C>, cfg: ServerConfig, stopping: Shutdown) -> Self {
        let limiter = Arc::new(Semaphore::new(cfg.max_concurrent_requests));
        Self {
            core,
            cfg,
            limiter,
            stopping,
        }
    }

    /// Runs `work` in a task of its own that holds a request slot until the
    /// work ends. A client that cancels or passes its deadline drops only
    /// the handler: the work (an embedding on a blocking thread) runs on, and
    /// its slot with it, so abandoned requests cannot pile up past the limit.
    async fn limited<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .limiter
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CoreError::Unavailable("server: shutting down".into()))?;
        tokio::spawn(async move {
            let _slot = permit;
            work.await
        })
        .await
        .map_err(|e| CoreError::Internal(format!("request failed: {e}")))?
    }
}

#[tonic::async_trait]
impl<C: Core> DualSight for DualSightService<C> {
    async fn search(
        &self,
        request: Request<proto::SearchRequest>,
    ) -> std::result::Result<Response<proto::SearchResponse>, Status> {
        let query = text_query(request.into_inner(), &self.cfg)?;
        let core = self.core.clone();
        let hits = self
            .limited(async move { core.search_text(query).await })
            .await?;
        Ok(Response::new(search_response(hits)))
    }

    async fn search_by_image(
        &self,
        request: Request<proto::SearchByImageRequest>,
    ) -> std::result::Result<Response<proto::SearchResponse>, Status> {
        let query = image_query(request.into_inner(), &self.cfg)?;
        let core = self.core.clone();
        let hits = self
            .limited(async move { core.search_image(query).await })
            .await?;
        Ok(Response::new(search_response(hits)))
    }

    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> std::result::Result<Response<proto::StatusResponse>, Status> {
        let status = self.core.status().await?;
        Ok(Response::new(status_response(status)))
    }

    type WatchProgressStream = ReceiverStream<std::result::Result<proto::Progress, Status>>;

    async fn watch_progress(
        &self,
        _request: Request<proto::ProgressRequest>,
    ) -> std::result::Result<Response<Self::WatchProgressStream>, Status> {
        // Small buffer: progress is a state, not a log; a slow client should
        // see fresh snapshots, not a backlog of stale ones.
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(forward_progress(
            self.core.progress(),
            tx,
            self.stopping.clone(),
            self.cfg.progress_interval,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn classify(
        &self,
        request: Request<proto::ClassifyRequest>,
    ) -> std::result::Result<Response<proto::ClassifyResponse>, Status> {
        let query = classify_query(request.into_inner(), &self.cfg)?;
        let core = self.core.clone();
        let labels = self
            .limited(async move { core.classify(query).await })
            .await?;
        Ok(Response::new(classify_response(labels)))
    }

    async fn list_failures(
        &self,
        request: Request<proto::ListFailuresRequest>,
    ) -> std::result::Result<Response<proto::ListFailuresResponse>, Status> {
        let limit = resolve_limit(request.into_inner().limit, &self.cfg)?;
        let failures = self.core.failures(limit).await?;
        Ok(Response::new(failures_response(failures)))
    }

    async fn get_thumbnail(
        &self,
        request: Request<proto::ThumbnailRequest>,
    ) -> std::result::Result<Response<proto::Thumbnail>, Status> {
        let (path, size) = thumbnail_request(request.into_inner())?;
        // A missing thumbnail decodes the photo again: a slot, as an embedding.
        let core = self.core.clone();
        let t = self
            .limited(async move { core.thumbnail(path, size).await })
            .await?;
        Ok(Response::new(proto::Thumbnail {
            jpeg: t.jpeg,
            width: t.width,
            height: t.height,
        }))
    }
}

/// Longest thumbnail side a request may ask for.
pub const MAX_THUMBNAIL_SIZE: u32 = 4096;
/// The size a request's 0 means.
pub const DEFAULT_THUMBNAIL_SIZE: u32 = 256;

pub(crate) fn thumbnail_request(req: proto::ThumbnailRequest) -> Result<(PathBuf, u32)> {
    let path = validate_absolute_path("path", &req.path)?;
    let size = match req.size {
        0 => DEFAULT_THUMBNAIL_SIZE,
        n if n > MAX_THUMBNAIL_SIZE => {
            return Err(invalid(format!(
                "size: {n} exceeds the maximum of {MAX_THUMBNAIL_SIZE}"
            )));
        }
        n => n,
    };
    Ok((path, size))
}

/// Sends the current snapshot, then each change at most once per `interval`,
/// until the client goes away, the core drops its sender, or the server stops.
async fn forward_progress(
    mut progress: watch::Receiver<ProgressSnapshot>,
    tx: mpsc::Sender<std::result::Result<proto::Progress, Status>>,
    mut stopping: Shutdown,
    interval: Duration,
) {
    loop {
        // Clone out of the borrow: the watch's read lock must not be held
        // across an await.
        let snapshot = progress_to_proto(progress.borrow_and_update().clone());
        tokio::select! {
            sent = tx.send(Ok(snapshot)) => if sent.is_err() { return },
            () = stopping.recv() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = tx.closed() => return,
            () = stopping.recv() => return,
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
            () = stopping.recv() => return,
        }
    }
}

// ---------------------------------------------------------------------------
// Validation and conversion: pure functions.

/// Longest path accepted (Linux PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;

fn invalid(message: impl Into<String>) -> CoreError {
    CoreError::InvalidArgument(message.into())
}

/// `limit` 0 → the default; above the maximum → INVALID_ARGUMENT naming it.
pub(crate) fn resolve_limit(limit: u32, cfg: &ServerConfig) -> Result<usize> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    match limit {
        0 => Ok(cfg.default_limit),
        n if n > cfg.max_limit => Err(invalid(format!(
            "limit: {n} exceeds the maximum of {}",
            cfg.max_limit
        ))),
        n => Ok(n),
    }
}

/// A text that must have a non-whitespace character and at most `max_chars`
/// characters (counted after trimming); returns the trimmed text.
fn validate_text<'a>(field: &str, text: &'a str, max_chars: usize) -> Result<&'a str> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid(format!("{field}: must not be empty")));
    }
    // Control and invisible characters alone are dropped by every tokenizer:
    // the query would be the empty text's, with hits that look real.
    if trimmed.chars().all(invisible) {
        return Err(invalid(format!(
            "{field}: has no visible characters (only control, format or replacement characters)"
        )));
    }
    let chars = trimmed.chars().count();
    if chars > max_chars {
        return Err(invalid(format!(
            "{field}: too long: {chars} characters, the maximum is {max_chars}"
        )));
    }
    Ok(trimmed)
}

/// Whitespace, control characters, the common invisible format characters
/// (zero-width space and joiners, direction marks, word joiner, BOM, soft
/// hyphen) and U+FFFD, what a tokenizer's cleaning drops.
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}' | '\u{fffd}')
}

/// A score threshold must be a number within the cosine range.
/// `taken_after <= taken_before` when both are set.
fn validate_taken(after: Option<i64>, before: Option<i64>) -> Result<(Option<i64>, Option<i64>)> {
    match (after, before) {
        (Some(a), Some(b)) if a > b => Err(invalid(format!(
            "taken_after: {a} is after taken_before {b}: nothing can match"
        ))),
        range => Ok(range),
    }
}

fn validate_offset(offset: u32, cfg: &ServerConfig) -> Result<usize> {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    if offset > cfg.max_offset {
        return Err(invalid(format!(
            "offset: {offset} exceeds the maximum of {}",
            cfg.max_offset
        )));
    }
    Ok(offset)
}

fn validate_min_score(min_score: Option<f32>) -> Result<Option<f32>> {
    match min_score {
        Some(s) if s.is_nan() || !(-1.0..=1.0).contains(&s) => Err(invalid(format!(
            "min_score: must be within [-1, 1], got {s}"
        ))),
        other => Ok(other),
    }
}

/// An absolute path without `..` and NUL, at most PATH_MAX bytes. Paths are
/// matched against stored ones, never opened, but `..` could only ever make a
/// query match nothing (or something other than it appears to), so refuse it.
fn validate_absolute_path(field: &str, path: &str) -> Result<PathBuf> {
    if path.len() > MAX_PATH_BYTES {
        return Err(invalid(format!(
            "{field}: too long: {} bytes, the maximum is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if path.contains('\0') {
        return Err(invalid(format!("{field}: must not contain NUL")));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(format!(
            "{field}: must be an absolute path, got {path:?}"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "{field}: must not contain '..', got {path:?}"
        )));
    }
    // Spelled as stored (no `.`, `//` or trailing `/`): a store that
    // compares paths as text must meet the same spelling.
    Ok(p.components().collect())
}

/// Unset or empty: no filter.
fn validate_path_prefix(prefix: Option<String>) -> Result<Option<PathBuf>> {
    match prefix.as_deref() {
        None | Some("") => Ok(None),
        Some(p) => validate_absolute_path("path_prefix", p).map(Some),
    }
}

fn image_from_bytes(bytes: Vec<u8>) -> Result<ImageRef> {
    if bytes.is_empty() {
        return Err(invalid("image: must not be empty"));
    }
    Ok(ImageRef::Bytes(bytes))
}

fn image_from_path(path: &str) -> Result<ImageRef> {
    if path.is_empty() {
        return Err(invalid("path: must not be empty"));
    }
    validate_absolute_path("path", path).map(ImageRef::Path)
}

const MISSING_QUERY: &str = "query: set either image (encoded bytes) or path (an indexed image)";

fn validate_labels(labels: Vec<String>, cfg: &ServerConfig) -> Result<Vec<String>> {
    if labels.is_empty() {
        return Err(invalid("labels: must not be empty"));
    }
    if labels.len() > cfg.max_labels {
        return Err(invalid(format!(
            "labels: {} labels exceed the maximum of {}",
            labels.len(),
            cfg.max_labels
        )));
    }
    let mut seen = HashSet::with_capacity(labels.len());
    for (i, label) in labels.iter().enumerate() {
        validate_text(&format!("labels[{i}]"), label, cfg.max_text_chars)?;
        if !seen.insert(label.as_str()) {
            return Err(invalid(format!("labels[{i}]: duplicate label {label:?}")));
        }
    }
    Ok(labels)
}

pub(crate) fn text_query(req: proto::SearchRequest, cfg: &ServerConfig) -> Result<TextQuery> {
    let text = validate_text("text", &req.text, cfg.max_text_chars)?.to_owned();
    let (taken_after, taken_before) = validate_taken(req.taken_after, req.taken_before)?;
    Ok(TextQuery {
        text,
        limit: resolve_limit(req.limit, cfg)?,
        path_prefix: validate_path_prefix(req.path_prefix)?,
        min_score: validate_min_score(req.min_score)?,
        taken_after,
        taken_before,
        offset: validate_offset(req.offset, cfg)?,
    })
}

pub(crate) fn image_query(
    req: proto::SearchByImageRequest,
    cfg: &ServerConfig,
) -> Result<ImageQuery> {
    use proto::search_by_image_request::Query;
    // Cheap checks first, so a bad limit is reported before the image is looked at.
    let limit = resolve_limit(req.limit, cfg)?;
    let path_prefix = validate_path_prefix(req.path_prefix)?;
    let min_score = validate_min_score(req.min_score)?;
    let (taken_after, taken_before) = validate_taken(req.taken_after, req.taken_before)?;
    let offset = validate_offset(req.offset, cfg)?;
    let image = match req.query {
        Some(Query::Image(bytes)) => image_from_bytes(bytes)?,
        Some(Query::Path(path)) => image_from_path(&path)?,
        None => return Err(invalid(MISSING_QUERY)),
    };
    Ok(ImageQuery {
        image,
        limit,
        path_prefix,
        min_score,
        taken_after,
        taken_before,
        offset,
    })
}

pub(crate) fn classify_query(
    req: proto::ClassifyRequest,
    cfg: &ServerConfig,
) -> Result<ClassifyQuery> {
    use proto::classify_request::Query;
    let labels = validate_labels(req.labels, cfg)?;
    let image = match req.query {
        Some(Query::Image(bytes)) => image_from_bytes(bytes)?,
        Some(Query::Path(path)) => image_from_path(&path)?,
        None => return Err(invalid(MISSING_QUERY)),
    };
    Ok(ClassifyQuery { image, labels })
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

pub(crate) fn search_response(hits: Vec<Hit>) -> proto::SearchResponse {
    proto::SearchResponse {
        hits: hits
            .into_iter()
            .map(|h| proto::Hit {
                path: path_string(&h.path),
                score: h.score,
                logit: h.logit,
                probability: h.probability,
                taken_at_unix: h.info.taken_at_unix,
                width: h.info.width,
                height: h.info.height,
                size_bytes: h.info.size_bytes,
                taken_from: h.info.taken_from.to_owned(),
                node: h.node,
            })
            .collect(),
    }
}

pub(crate) fn classify_response(labels: Vec<LabelScore>) -> proto::ClassifyResponse {
    proto::ClassifyResponse {
        labels: labels
            .into_iter()
            .map(|l| proto::Label {
                label: l.label,
                probability: l.probability,
                logit: l.logit,
                score: l.score,
            })
            .collect(),
    }
}

pub(crate) fn status_response(s: StatusSnapshot) -> proto::StatusResponse {
    proto::StatusResponse {
        indexed_files: s.indexed_files,
        pending_files: s.pending_files,
        failed_files: s.failed_files,
        ready: s.ready,
        model_fingerprint: s.model_fingerprint,
        model_name: s.model_name,
        embedding_dim: s.embedding_dim,
        logit_scale: s.logit_scale,
        roots: s
            .roots
            .into_iter()
            .map(|r| proto::Root {
                path: path_string(&r.path),
                online: r.online,
            })
            .collect(),
        vectors: s.vectors,
        index_building: s.index_building,
        embedded_images: s.embedded_images,
        reused_vectors: s.reused_vectors,
        ingest_error: s.ingest_error,
        node: s.node,
        store: s.store,
        database: s.database,
        replicas: s
            .replicas
            .into_iter()
            .map(|r| proto::Replica {
                database: r.target,
                serving: r.serving,
                lag_ms: r.lag_ms,
                error: r.error,
            })
            .collect(),
    }
}

pub(crate) fn progress_to_proto(p: ProgressSnapshot) -> proto::Progress {
    // A NaN or infinite rate/ETA (0/0 early on) would print as garbage in
    // every client: send 0, which the proto defines as "unknown".
    let finite = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    proto::Progress {
        indexed: p.indexed,
        pending: p.pending,
        failed: p.failed,
        files_per_second: finite(p.files_per_second),
        eta_seconds: finite(p.eta_seconds),
        ready: p.ready,
        roots_offline: p.roots_offline,
        phase: p.phase,
    }
}

pub(crate) fn failures_response(list: FailureList) -> proto::ListFailuresResponse {
    proto::ListFailuresResponse {
        failures: list
            .failures
            .into_iter()
            .map(|f| proto::Failure {
                path: path_string(&f.path),
                error: f.error,
                // Before 1970 (a clock gone wrong) reads as negative seconds.
                failed_at_unix: match f.failed_at.duration_since(UNIX_EPOCH) {
                    Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
                },
                attempts: f.attempts,
            })
            .collect(),
        total: list.total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::port::{FailureRecord, HitInfo, ReplicaStatus, RootStatus};

    fn cfg() -> ServerConfig {
        ServerConfig::default()
    }

    fn message(e: CoreError) -> String {
        match e {
            CoreError::InvalidArgument(m) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn search(text: &str) -> proto::SearchRequest {
        proto::SearchRequest {
            text: text.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_config_is_valid_and_checked() {
        assert_eq!(cfg().validate(), Ok(()));
        let bad = ServerConfig {
            default_limit: 2000,
            ..cfg()
        };
        assert!(bad.validate().unwrap_err().starts_with("default_limit:"));
        let bad = ServerConfig {
            max_concurrent_requests: 0,
            ..cfg()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .starts_with("max_concurrent_requests:")
        );
    }

    #[test]
    fn limit_zero_is_the_default_and_the_maximum_is_named() {
        assert_eq!(resolve_limit(0, &cfg()), Ok(10));
        assert_eq!(resolve_limit(1, &cfg()), Ok(1));
        assert_eq!(resolve_limit(1000, &cfg()), Ok(1000));
        assert_eq!(
            message(resolve_limit(1001, &cfg()).unwrap_err()),
            "limit: 1001 exceeds the maximum of 1000"
        );
        assert_eq!(
            message(resolve_limit(u32::MAX, &cfg()).unwrap_err()),
            format!("limit: {} exceeds the maximum of 1000", u32::MAX)
        );
    }

    #[test]
    fn text_is_trimmed_and_must_not_be_empty() {
        let q = text_query(search("  a red sofa \n"), &cfg()).unwrap();
        assert_eq!(q.text, "a red sofa");
        assert_eq!(q.limit, 10);
        assert_eq!(q.path_prefix, None);
        assert_eq!(q.min_score, None);
        for blank in ["", "   ", "\t\n"] {
            assert_eq!(
                message(text_query(search(blank), &cfg()).unwrap_err()),
                "text: must not be empty"
            );
        }
        // What a tokenizer drops is no query either; a visible character
        // beside it is.
        for unseen in ["\u{1}", "\0", " \u{200b} ", "\u{fffd}", "\u{feff}\u{ad}"] {
            let m = message(text_query(search(unseen), &cfg()).unwrap_err());
            assert!(
                m.starts_with("text: has no visible characters"),
                "{unseen:?}: {m}"
            );
        }
        assert!(text_query(search("\u{200b}cat"), &cfg()).is_ok());
    }

    #[test]
    fn text_length_counts_characters_not_bytes() {
        let cfg = ServerConfig {
            max_text_chars: 3,
            ..cfg()
        };
        // 3 characters, 9 bytes.
        assert!(text_query(search("日本語"), &cfg).is_ok());
        assert_eq!(
            message(text_query(search("abcd"), &cfg).unwrap_err()),
            "text: too long: 4 characters, the maximum is 3"
        );
    }

    #[test]
    fn min_score_must_be_a_cosine() {
        for ok in [-1.0, 0.0, 0.25, 1.0] {
            assert_eq!(validate_min_score(Some(ok)), Ok(Some(ok)));
        }
        assert_eq!(validate_min_score(None), Ok(None));
        for bad in [f32::NAN, 1.5, -1.01, f32::INFINITY] {
            let m = message(validate_min_score(Some(bad)).unwrap_err());
            assert!(
                m.starts_with("min_score: must be within [-1, 1], got"),
                "{m}"
            );
        }
    }

    #[test]
    fn path_prefix_must_be_absolute_without_parent_dirs() {
        assert_eq!(validate_path_prefix(None), Ok(None));
        assert_eq!(validate_path_prefix(Some(String::new())), Ok(None));
        assert_eq!(
            validate_path_prefix(Some("/photos/2020/".into())),
            Ok(Some(PathBuf::from("/photos/2020/")))
        );
        let cases = [
            ("photos", "path_prefix: must be an absolute path"),
            ("/photos/../etc", "path_prefix: must not contain '..'"),
            ("/pho\0tos", "path_prefix: must not contain NUL"),
        ];
        for (prefix, expected) in cases {
            let m = message(validate_path_prefix(Some(prefix.into())).unwrap_err());
            assert!(m.starts_with(expected), "{prefix:?}: {m}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        let m = message(validate_path_prefix(Some(long)).unwrap_err());
        assert!(m.starts_with("path_prefix: too long"), "{m}");
        // A file name merely containing dots is fine.
        assert!(validate_path_prefix(Some("/a..b/c...".into())).is_ok());
        // Spelled as the store spells paths: `.`, `//` and a trailing `/` go.
        for (given, stored) in [("/a/./b/", "/a/b"), ("//a//b", "/a/b"), ("/a/b/.", "/a/b")] {
            assert_eq!(
                validate_path_prefix(Some(given.into())),
                Ok(Some(PathBuf::from(stored)))
            );
        }
    }

    #[test]
    fn image_query_needs_exactly_one_non_empty_source() {
        use proto::search_by_image_request::Query;
        let req = |query| proto::SearchByImageRequest {
            query,
            ..Default::default()
        };
        assert_eq!(
            message(image_query(req(None), &cfg()).unwrap_err()),
            MISSING_QUERY
        );
        assert_eq!(
            message(image_query(req(Some(Query::Image(vec![]))), &cfg()).unwrap_err()),
            "image: must not be empty"
        );
        assert_eq!(
            message(image_query(req(Some(Query::Path(String::new()))), &cfg()).unwrap_err()),
            "path: must not be empty"
        );
        assert!(
            message(image_query(req(Some(Query::Path("a.jpg".into()))), &cfg()).unwrap_err())
                .starts_with("path: must be an absolute path")
        );
        let q = image_query(
            proto::SearchByImageRequest {
                query: Some(Query::Image(vec![1, 2, 3])),
                limit: 5,
                path_prefix: Some("/photos".into()),
                min_score: Some(0.2),
                taken_after: Some(10),
                taken_before: Some(20),
                offset: 30,
            },
            &cfg(),
        )
        .unwrap();
        assert_eq!(
            q,
            ImageQuery {
                image: ImageRef::Bytes(vec![1, 2, 3]),
                limit: 5,
                path_prefix: Some("/photos".into()),
                min_score: Some(0.2),
                taken_after: Some(10),
                taken_before: Some(20),
                offset: 30,
            }
        );
        let bad = proto::SearchByImageRequest {
            query: Some(Query::Image(vec![1])),
            taken_after: Some(21),
            taken_before: Some(20),
            ..Default::default()
        };
        assert!(message(image_query(bad, &cfg()).unwrap_err()).starts_with("taken_after: 21"));
        let deep = proto::SearchByImageRequest {
            query: Some(Query::Image(vec![1])),
            offset: 10_001,
            ..Default::default()
        };
        assert_eq!(
            message(image_query(deep, &cfg()).unwrap_err()),
            "offset: 10001 exceeds the maximum of 10000"
        );
        let q = image_query(req(Some(Query::Path("/photos/a.jpg".into()))), &cfg()).unwrap();
        assert_eq!(q.image, ImageRef::Path("/photos/a.jpg".into()));
    }

    #[test]
    fn image_query_checks_limit_and_filters() {
        use proto::search_by_image_request::Query;
        let base = proto::SearchByImageRequest {
            query: Some(Query::Image(vec![1])),
            ..Default::default()
        };
        let over = proto::SearchByImageRequest {
            limit: 5000,
            ..base.clone()
        };
        assert!(message(image_query(over, &cfg()).unwrap_err()).starts_with("limit:"));
        let nan = proto::SearchByImageRequest {
            min_score: Some(f32::NAN),
            ..base.clone()
        };
        assert!(message(image_query(nan, &cfg()).unwrap_err()).starts_with("min_score:"));
        let rel = proto::SearchByImageRequest {
            path_prefix: Some("rel".into()),
            ..base
        };
        assert!(message(image_query(rel, &cfg()).unwrap_err()).starts_with("path_prefix:"));
    }

    #[test]
    fn labels_are_checked_and_kept_as_sent() {
        use proto::classify_request::Query;
        let req = |labels: &[&str]| proto::ClassifyRequest {
            query: Some(Query::Path("/p/a.jpg".into())),
            labels: labels.iter().map(|s| s.to_string()).collect(),
        };
        let q = classify_query(req(&[" a cat", "a dog"]), &cfg()).unwrap();
        assert_eq!(q.labels, [" a cat", "a dog"]);
        assert_eq!(q.image, ImageRef::Path("/p/a.jpg".into()));
        let cases: [(&[&str], &str); 3] = [
            (&[], "labels: must not be empty"),
            (&["cat", " "], "labels[1]: must not be empty"),
            (&["cat", "dog", "cat"], "labels[2]: duplicate label \"cat\""),
        ];
        for (labels, expected) in cases {
            assert_eq!(
                message(classify_query(req(labels), &cfg()).unwrap_err()),
                expected
            );
        }
        let small = ServerConfig {
            max_labels: 2,
            ..cfg()
        };
        assert_eq!(
            message(classify_query(req(&["a", "b", "c"]), &small).unwrap_err()),
            "labels: 3 labels exceed the maximum of 2"
        );
        let none = proto::ClassifyRequest {
            query: None,
            labels: vec!["cat".into()],
        };
        assert_eq!(
            message(classify_query(none, &cfg()).unwrap_err()),
            MISSING_QUERY
        );
    }

    #[test]
    fn responses_carry_every_field() {
        let hits = search_response(vec![Hit {
            node: "photos-1".into(),
            path: "/p/a.jpg".into(),
            score: 0.3,
            logit: 30.0,
            probability: 1.0,
            info: HitInfo {
                taken_at_unix: 1_719_792_000,
                taken_from: "exif",
                width: 640,
                height: 480,
                size_bytes: 12_345,
            },
        }]);
        assert_eq!(
            hits.hits,
            [proto::Hit {
                path: "/p/a.jpg".into(),
                score: 0.3,
                logit: 30.0,
                probability: 1.0,
                taken_at_unix: 1_719_792_000,
                width: 640,
                height: 480,
                size_bytes: 12_345,
                taken_from: "exif".into(),
                node: "photos-1".into(),
            }]
        );

        let status = status_response(StatusSnapshot {
            indexed_files: 1,
            pending_files: 2,
            failed_files: 3,
            ready: true,
            model_fingerprint: "abc".into(),
            model_name: "tiny".into(),
            embedding_dim: 512,
            logit_scale: 2.6592,
            roots: vec![RootStatus {
                path: "/photos".into(),
                online: false,
            }],
            vectors: 4,
            index_building: true,
            embedded_images: 5,
            reused_vectors: 6,
            ingest_error: "indexing paused: disk full".into(),
            node: "photos-1".into(),
            store: "postgres".into(),
            database: "ds@db:5432/photos".into(),
            replicas: vec![ReplicaStatus {
                target: "ds@standby:5432/photos".into(),
                serving: false,
                lag_ms: 7000,
                error: "replay lags".into(),
            }],
        });
        assert_eq!(
            status,
            proto::StatusResponse {
                indexed_files: 1,
                pending_files: 2,
                failed_files: 3,
                ready: true,
                model_fingerprint: "abc".into(),
                model_name: "tiny".into(),
                embedding_dim: 512,
                logit_scale: 2.6592,
                roots: vec![proto::Root {
                    path: "/photos".into(),
                    online: false
                }],
                vectors: 4,
                index_building: true,
                embedded_images: 5,
                reused_vectors: 6,
                ingest_error: "indexing paused: disk full".into(),
                node: "photos-1".into(),
                store: "postgres".into(),
                database: "ds@db:5432/photos".into(),
                replicas: vec![proto::Replica {
                    database: "ds@standby:5432/photos".into(),
                    serving: false,
                    lag_ms: 7000,
                    error: "replay lags".into(),
                }],
            }
        );

        let failures = failures_response(FailureList {
            failures: vec![FailureRecord {
                path: "/p/bad.jpg".into(),
                error: "unsupported image format".into(),
                failed_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                attempts: 2,
            }],
            total: 7,
        });
        assert_eq!(failures.total, 7);
        assert_eq!(failures.failures[0].failed_at_unix, 1_700_000_000);
        assert_eq!(failures.failures[0].attempts, 2);
        let before_epoch = failures_response(FailureList {
            failures: vec![FailureRecord {
                path: "/x".into(),
                error: String::new(),
                failed_at: UNIX_EPOCH - Duration::from_secs(5),
                attempts: 0,
            }],
            total: 1,
        });
        assert_eq!(before_epoch.failures[0].failed_at_unix, -5);
    }

    #[test]
    fn progress_rates_that_are_not_finite_read_as_unknown() {
        let p = progress_to_proto(ProgressSnapshot {
            indexed: 5,
            files_per_second: f64::NAN,
            eta_seconds: f64::INFINITY,
            phase: "indexing".into(),
            ..Default::default()
        });
        assert_eq!(p.files_per_second, 0.0);
        assert_eq!(p.eta_seconds, 0.0);
        assert_eq!(p.indexed, 5);
        assert_eq!(p.phase, "indexing");
    }
}
