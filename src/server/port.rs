//! The port between the gRPC layer and the daemon: the [`Core`] trait the
//! daemon implements, the plain Rust types that cross it, and [`CoreError`],
//! whose `From<CoreError> for Status` is the one place gRPC codes are chosen.
//!
//! Nothing here knows about protobuf: the service converts requests into these
//! types after validating them, so a `Core` only ever sees well-formed queries
//! (limits resolved and within bounds, non-empty text, absolute path prefixes,
//! scores within [-1, 1]).

use std::future::Future;
use std::path::PathBuf;
use std::time::SystemTime;

use tokio::sync::watch;

/// Result alias for the port.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// What a [`Core`] (or request validation) can fail with. Each variant maps to
/// one gRPC code in `From<CoreError> for tonic::Status`; messages are lowercase
/// and name the object first (`text: must not be empty`,
/// `/photos/a.jpg: not indexed`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// The request is malformed; retrying it unchanged cannot succeed.
    #[error("{0}")]
    InvalidArgument(String),
    /// A named object (an indexed path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The daemon is starting (model or index loading) and will be ready
    /// without anyone doing anything: clients should retry with backoff.
    #[error("not ready: {0}")]
    NotReady(String),
    /// A transient condition other than start-up (overload, shutting down, a
    /// device that went away): clients may retry.
    #[error("{0}")]
    Unavailable(String),
    /// A fault in the daemon; logged when it is turned into a status.
    #[error("{0}")]
    Internal(String),
}

impl From<CoreError> for tonic::Status {
    /// The only table of gRPC codes in the server.
    ///
    /// `NotReady` maps to UNAVAILABLE rather than FAILED_PRECONDITION: start-up
    /// ends by itself, and gRPC clients treat UNAVAILABLE as "retry with
    /// backoff" but FAILED_PRECONDITION as "do not retry until someone fixes
    /// the system state". The message keeps the two apart (`not ready: ...`).
    fn from(error: CoreError) -> Self {
        let message = error.to_string();
        match error {
            CoreError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            CoreError::NotFound(_) => tonic::Status::not_found(message),
            CoreError::NotReady(_) | CoreError::Unavailable(_) => {
                tonic::Status::unavailable(message)
            }
            CoreError::Internal(_) => {
                tracing::error!(error = %message, "internal error answering a request");
                tonic::Status::internal(message)
            }
        }
    }
}

/// The daemon, as the gRPC service sees it.
///
/// Methods return `impl Future + Send` so that implementations can simply
/// write `async fn` (the compiler checks that their futures are `Send`), and
/// the service stays generic over `C: Core` with no boxing or `dyn`.
/// Embedding work is CPU/GPU bound: implementations should run it on
/// `spawn_blocking` or their own pool, not on the async worker threads.
pub trait Core: Send + Sync + 'static {
    /// Text → images: embed `query.text` and return at most `query.limit`
    /// hits (see [`rank_hits`] for the ordering and the scores).
    fn search_text(&self, query: TextQuery) -> impl Future<Output = Result<Vec<Hit>>> + Send;

    /// Image → images. For [`ImageRef::Path`] use the stored vector of that
    /// indexed file ([`CoreError::NotFound`] if it is not indexed); never read
    /// an arbitrary file by path on a client's behalf.
    fn search_image(&self, query: ImageQuery) -> impl Future<Output = Result<Vec<Hit>>> + Send;

    /// Zero-shot classification: one entry per label, in any order is fine
    /// for the port but [`rank_labels`] gives the documented one
    /// (probability, highest first).
    fn classify(
        &self,
        query: ClassifyQuery,
    ) -> impl Future<Output = Result<Vec<LabelScore>>> + Send;

    /// Counters, model and roots, as of now.
    fn status(&self) -> impl Future<Output = Result<StatusSnapshot>> + Send;

    /// A receiver of progress snapshots. Every `WatchProgress` stream gets its
    /// own receiver (a clone is fine); a stream ends when the sender is dropped.
    /// Updating the value as often as per file is fine: each stream sends at
    /// most one update per `ServerConfig::progress_interval`.
    fn progress(&self) -> watch::Receiver<ProgressSnapshot>;

    /// The most recent indexing failures, newest first, at most `limit`
    /// (already resolved and bounded by the service), and the total count.
    fn failures(&self, limit: usize) -> impl Future<Output = Result<FailureList>> + Send;

    /// The thumbnail of an indexed image, longest side at most `size` px
    /// (already validated). [`CoreError::NotFound`] for a path that is not
    /// indexed: never read another file on a client's behalf.
    fn thumbnail(
        &self,
        path: PathBuf,
        size: u32,
    ) -> impl Future<Output = Result<ThumbnailImage>> + Send;
}

/// A validated text query.
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    /// Trimmed, non-empty, at most `ServerConfig::max_text_chars` characters.
    pub text: String,
    /// 1 ..= `ServerConfig::max_limit` (a request's 0 is already replaced by
    /// the default).
    pub limit: usize,
    /// Only hits under this directory, by whole components
    /// ([`crate::engine::path_has_prefix`]).
    pub path_prefix: Option<PathBuf>,
    /// Only hits with `score >= min_score`; within [-1, 1].
    pub min_score: Option<f32>,
    /// Only photos taken in this range (Unix seconds, inclusive).
    pub taken_after: Option<i64>,
    pub taken_before: Option<i64>,
    /// Hits to skip before the first returned (paging).
    pub offset: usize,
}

/// The image of an image query.
#[derive(Clone, PartialEq)]
pub enum ImageRef {
    /// Encoded image bytes (non-empty; at most the gRPC message limit).
    Bytes(Vec<u8>),
    /// An absolute path without `..` components, expected to be indexed.
    Path(PathBuf),
}

impl std::fmt::Debug for ImageRef {
    /// Shows the size of the bytes, not megabytes of them, in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            ImageRef::Path(path) => f.debug_tuple("Path").field(path).finish(),
        }
    }
}

/// A validated image query.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageQuery {
    /// What to search with.
    pub image: ImageRef,
    /// As [`TextQuery::limit`].
    pub limit: usize,
    /// As [`TextQuery::path_prefix`].
    pub path_prefix: Option<PathBuf>,
    /// As [`TextQuery::min_score`].
    pub min_score: Option<f32>,
    /// As [`TextQuery::taken_after`] / [`TextQuery::taken_before`].
    pub taken_after: Option<i64>,
    pub taken_before: Option<i64>,
    /// As [`TextQuery::offset`].
    pub offset: usize,
}

/// A validated classification query.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifyQuery {
    /// The image to classify.
    pub image: ImageRef,
    /// 1 ..= `ServerConfig::max_labels` distinct labels, each with a
    /// non-whitespace character, exactly as the client sent them.
    pub labels: Vec<String>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The daemon whose file it is (its `node` name).
    pub node: String,
    /// The indexed file (converted lossily to UTF-8 on the wire).
    pub path: PathBuf,
    /// Cosine similarity, in [-1, 1].
    pub score: f32,
    /// `score * exp(logit_scale)`.
    pub logit: f32,
    /// Softmax of the logits over the returned hits.
    pub probability: f32,
    /// What the store knows of the file (filled by the core; zero if unknown).
    pub info: HitInfo,
}

/// A hit's file: when it was taken, its size in pixels and bytes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HitInfo {
    pub taken_at_unix: i64,
    /// `exif`, `exif-local`, `mtime`, or empty when unknown.
    pub taken_from: &'static str,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
}

/// A thumbnail: JPEG bytes and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct ThumbnailImage {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// One classified label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelScore {
    /// The label as the client sent it.
    pub label: String,
    /// Cosine similarity between the label's and the image's embeddings.
    pub score: f32,
    /// `score * exp(logit_scale)`.
    pub logit: f32,
    /// Softmax of the logits over all labels of the query.
    pub probability: f32,
}

/// The daemon's state for `Status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusSnapshot {
    /// Files durably stored with their vector.
    pub indexed_files: u64,
    /// Files discovered but not yet indexed.
    pub pending_files: u64,
    /// Files that failed to index.
    pub failed_files: u64,
    /// Whether queries can be answered.
    pub ready: bool,
    /// Fingerprint of the model the index belongs to.
    pub model_fingerprint: String,
    /// Human-readable model name.
    pub model_name: String,
    /// Embedding dimension.
    pub embedding_dim: u32,
    /// The stored (log) logit scale.
    pub logit_scale: f32,
    /// The watched folders.
    pub roots: Vec<RootStatus>,
    /// Vectors in the store (identical files share one).
    pub vectors: u64,
    /// Whether an index for a newly configured model is being built.
    pub index_building: bool,
    /// Images run through the vision tower since start.
    pub embedded_images: u64,
    /// Files indexed since start by reusing an existing vector (no model run).
    pub reused_vectors: u64,
    /// Why indexing is paused (empty while it runs).
    pub ingest_error: String,
    /// This daemon's node name.
    pub node: String,
    /// `sled` or `postgres`.
    pub store: String,
    /// The PostgreSQL store's primary (`user@host:port/db`, no password).
    pub database: String,
    /// PostgreSQL hot standbys and whether each serves searches.
    pub replicas: Vec<ReplicaStatus>,
}

/// A standby as Status shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    pub target: String,
    pub serving: bool,
    /// Replay lag behind the primary in milliseconds; -1 when unknown.
    pub lag_ms: i64,
    /// Why it serves no searches; empty when it does.
    pub error: String,
}

/// A watched folder.
#[derive(Debug, Clone, PartialEq)]
pub struct RootStatus {
    /// Absolute path of the folder.
    pub path: PathBuf,
    /// False when missing or unmounted.
    pub online: bool,
}

/// One progress update for `WatchProgress`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgressSnapshot {
    /// Files indexed so far.
    pub indexed: u64,
    /// Files waiting.
    pub pending: u64,
    /// Files failed.
    pub failed: u64,
    /// Recent rate; 0 when idle.
    pub files_per_second: f64,
    /// Seconds until `pending` reaches 0; 0 when unknown.
    pub eta_seconds: f64,
    /// Whether queries can be answered.
    pub ready: bool,
    /// Roots currently offline.
    pub roots_offline: u32,
    /// Short lowercase word for display ("scanning", "indexing", "idle", ...).
    pub phase: String,
}

/// One file that could not be indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    /// The file.
    pub path: PathBuf,
    /// Why it failed.
    pub error: String,
    /// When it last failed.
    pub failed_at: SystemTime,
    /// How many times it failed; 0 when unknown.
    pub attempts: u32,
}

/// A page of failures and the total count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailureList {
    /// Newest first.
    pub failures: Vec<FailureRecord>,
    /// All recorded failures.
    pub total: u64,
}

/// Softmax computed in f64 after subtracting the maximum, so large logits
/// (scale 100 × score 1) neither overflow nor lose the small differences.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&l| (f64::from(l) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// Turns cosine scores into the documented hits: ordered by score (highest
/// first, ties by path), `logit = score * exp(logit_scale)` with `logit_scale`
/// the stored log value, probability = softmax of the logits over these hits.
/// Truncate and filter (limit, min_score, prefix) before calling it, so the
/// probabilities are over exactly the hits returned.
pub fn rank_hits(scored: Vec<(PathBuf, f32)>, logit_scale: f32) -> Vec<Hit> {
    rank_hits_on(
        scored
            .into_iter()
            .map(|(p, s)| (String::new(), p, s))
            .collect(),
        logit_scale,
    )
}

/// [`rank_hits`] for hits on named nodes (`(node, path, score)`): equal
/// scores and paths are ordered by node.
pub fn rank_hits_on(scored: Vec<(String, PathBuf, f32)>, logit_scale: f32) -> Vec<Hit> {
    let mut scored = scored;
    scored.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then_with(|| a.1.cmp(&b.1))
            .then_with(|| a.0.cmp(&b.0))
    });
    let scale = logit_scale.exp();
    let logits: Vec<f32> = scored.iter().map(|(_, _, s)| s * scale).collect();
    let probabilities = softmax(&logits);
    scored
        .into_iter()
        .zip(logits)
        .zip(probabilities)
        .map(|(((node, path, score), logit), probability)| Hit {
            node,
            path,
            score,
            logit,
            probability,
            info: HitInfo::default(),
        })
        .collect()
}

/// As [`rank_hits`] for labels: ordered by probability, highest first (the
/// order of the scores), ties in the order the labels were given.
pub fn rank_labels(scored: Vec<(String, f32)>, logit_scale: f32) -> Vec<LabelScore> {
    let scale = logit_scale.exp();
    let logits: Vec<f32> = scored.iter().map(|(_, s)| s * scale).collect();
    let probabilities = softmax(&logits);
    let mut labels: Vec<LabelScore> = scored
        .into_iter()
        .zip(logits)
        .zip(probabilities)
        .map(|(((label, score), logit), probability)| LabelScore {
            label,
            score,
            logit,
            probability,
        })
        .collect();
    // Stable: equal probabilities keep the client's order.
    labels.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_error_maps_to_its_code_with_its_message() {
        let cases = [
            (
                CoreError::InvalidArgument("text: must not be empty".into()),
                Code::InvalidArgument,
                "text: must not be empty",
            ),
            (
                CoreError::NotFound("/a.jpg: not indexed".into()),
                Code::NotFound,
                "/a.jpg: not indexed",
            ),
            (
                CoreError::NotReady("loading model".into()),
                Code::Unavailable,
                "not ready: loading model",
            ),
            (
                CoreError::Unavailable("shutting down".into()),
                Code::Unavailable,
                "shutting down",
            ),
            (
                CoreError::Internal("index: poisoned".into()),
                Code::Internal,
                "index: poisoned",
            ),
        ];
        for (error, code, message) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn softmax_is_stable_for_large_logits_and_sums_to_one() {
        let p = softmax(&[100.0, 99.0, -100.0]);
        let sum: f32 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
        // e^1 / (e^1 + 1) for the top two; the third vanishes.
        assert!((p[0] - 0.731_058_6).abs() < 1e-6, "{p:?}");
        assert!(p[2] < 1e-30);
        assert!(softmax(&[]).is_empty());
    }

    #[test]
    fn hits_are_ordered_by_score_then_path_with_scaled_logits() {
        let scale = 100f32.ln(); // CLIP's trained exp(logit_scale) = 100
        let hits = rank_hits(
            vec![
                ("/b.jpg".into(), 0.2),
                ("/c.jpg".into(), 0.3),
                ("/a.jpg".into(), 0.2),
            ],
            scale,
        );
        let paths: Vec<_> = hits.iter().map(|h| h.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["/c.jpg", "/a.jpg", "/b.jpg"]);
        assert!((hits[0].logit - 30.0).abs() < 1e-4);
        assert!((hits[1].logit - 20.0).abs() < 1e-4);
        let sum: f32 = hits.iter().map(|h| h.probability).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        assert!(hits[0].probability > hits[1].probability);
        assert_eq!(hits[1].probability, hits[2].probability);
    }

    #[test]
    fn labels_are_ordered_by_probability_ties_in_given_order() {
        let labels = rank_labels(
            vec![
                ("cat".into(), 0.1),
                ("dog".into(), 0.25),
                ("cow".into(), 0.1),
            ],
            0.0,
        );
        let names: Vec<_> = labels.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(names, ["dog", "cat", "cow"]);
        // exp(0) = 1: logits equal the scores.
        assert_eq!(labels[0].logit, 0.25);
    }

    #[test]
    fn image_bytes_debug_shows_the_size_only() {
        assert_eq!(
            format!("{:?}", ImageRef::Bytes(vec![0; 5])),
            "Bytes(5 bytes)"
        );
    }
}
