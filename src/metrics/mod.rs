//! What the daemon exposes to Prometheus: one explicit registry per daemon
//! (no global state), the gRPC request counters and latencies recorded as
//! requests finish, and the ingest and store figures sampled at each scrape
//! (they already live in the pipeline's counters and the store, so keeping a
//! second copy up to date would only drift). `http.rs` serves it.

mod http;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub use http::{bind, serve};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Registry(#[from] prometheus::Error),
    #[error("metrics listen {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("metrics server failed: {0}")]
    Serve(std::io::Error),
}

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Buckets of request latency: 1 ms to ~0.5 s doubling, where text and image
/// queries fall; slower requests land in `+Inf`.
pub fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.001, 2.0, 10).expect("valid bucket spec")
}

/// Buckets of one embedding batch: 10 ms to ~40 s doubling (a batch of 16
/// photos takes from tens of ms on a GPU to tens of seconds on a small CPU).
pub fn batch_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.01, 2.0, 13).expect("valid bucket spec")
}

/// The embedding batch times the pipeline records into (a cheap clone of
/// one shared histogram).
#[derive(Clone)]
pub struct BatchTimes(pub Histogram);

impl Default for BatchTimes {
    fn default() -> Self {
        Self(
            Histogram::with_opts(
                HistogramOpts::new(
                    "dualsight_embed_batch_duration_seconds",
                    "Time the vision tower took for one batch of images.",
                )
                .buckets(batch_buckets()),
            )
            .expect("valid histogram"),
        )
    }
}

impl std::fmt::Debug for BatchTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BatchTimes({} batches)", self.0.get_sample_count())
    }
}

impl BatchTimes {
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// Figures read at scrape time from where they live.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub indexed_files: u64,
    pub pending_files: u64,
    pub failed_files: u64,
    pub index_vectors: u64,
    /// Since start: images run through the vision tower.
    pub embedded_images: u64,
    /// Since start: files committed with a vector their content already had.
    pub reused_vectors: u64,
    /// Files in the ingest pipeline (read, decode, embed, commit).
    pub queue_depth: u64,
    pub store_bytes: u64,
}

/// Where a scrape gets its [`Sample`]. Called on a blocking thread: reading
/// the store's size touches the disk.
pub trait Sampler: Send + Sync + 'static {
    fn sample(&self) -> Sample;
}

/// The daemon's registry and the metrics recorded as things happen.
pub struct Metrics {
    registry: Registry,
    grpc_requests: IntCounterVec,
    grpc_duration: HistogramVec,
    indexed: IntGauge,
    pending: IntGauge,
    failed: IntGauge,
    vectors: IntGauge,
    queue: IntGauge,
    store_bytes: IntGauge,
    rss: IntGauge,
    embedded: IntCounter,
    reused: IntCounter,
}

impl Metrics {
    /// A registry with every metric, `embed_batch` (the pipeline's) included.
    pub fn new(embed_batch: &BatchTimes) -> Result<Arc<Self>> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| -> Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "dualsight_grpc_requests_total",
                "dualsight.v1 requests finished, by method and gRPC status code.",
            ),
            &["method", "code"],
        )?;
        registry.register(Box::new(grpc_requests.clone()))?;
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "dualsight_grpc_request_duration_seconds",
                "Time from a dualsight.v1 request's arrival to its response headers.",
            )
            .buckets(latency_buckets()),
            &["method"],
        )?;
        registry.register(Box::new(grpc_duration.clone()))?;
        registry.register(Box::new(embed_batch.0.clone()))?;
        Ok(Arc::new(Self {
            indexed: gauge(
                "dualsight_indexed_files",
                "Files indexed (with a vector of the serving model).",
            )?,
            pending: gauge(
                "dualsight_pending_files",
                "Files seen but not indexed yet (0: caught up with the folders).",
            )?,
            failed: gauge("dualsight_failed_files", "Files that could not be indexed.")?,
            vectors: gauge(
                "dualsight_index_vectors",
                "Vectors in the serving HNSW index.",
            )?,
            queue: gauge(
                "dualsight_ingest_queue_depth",
                "Files in the ingest pipeline (reading, decoding, embedding, committing).",
            )?,
            store_bytes: gauge(
                "dualsight_store_size_bytes",
                "The store's size on disk (sled and vector segments).",
            )?,
            rss: gauge(
                "process_resident_memory_bytes",
                "Resident memory of the daemon process.",
            )?,
            embedded: counter(
                "dualsight_embedded_images_total",
                "Images run through the vision tower since start.",
            )?,
            reused: counter(
                "dualsight_reused_vectors_total",
                "Files committed with a vector their content already had (renames, copies) since start.",
            )?,
            registry,
            grpc_requests,
            grpc_duration,
        }))
    }

    /// One finished `dualsight.v1` request.
    pub fn observe_request(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.grpc_requests
            .with_label_values(&[method, code_label(code)])
            .inc();
        self.grpc_duration
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }

    /// The text exposition after applying `sample`.
    pub fn render(&self, sample: Option<Sample>) -> Result<String> {
        if let Some(s) = sample {
            let set = |g: &IntGauge, v: u64| g.set(i64::try_from(v).unwrap_or(i64::MAX));
            set(&self.indexed, s.indexed_files);
            set(&self.pending, s.pending_files);
            set(&self.failed, s.failed_files);
            set(&self.vectors, s.index_vectors);
            set(&self.queue, s.queue_depth);
            set(&self.store_bytes, s.store_bytes);
            // The pipeline's counts are the truth; the counters catch up to them.
            for (c, v) in [
                (&self.embedded, s.embedded_images),
                (&self.reused, s.reused_vectors),
            ] {
                c.inc_by(v.saturating_sub(c.get()));
            }
        }
        if let Some(rss) = resident_bytes() {
            self.rss.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8(out).expect("the text encoder writes UTF-8"))
    }
}

/// gRPC codes as Prometheus exporters of gRPC servers label them (`OK`, `NOT_FOUND`).
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// VmRSS of this process, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_counters_catching_up() {
        let m = Metrics::new(&BatchTimes::default()).unwrap();
        m.observe_request("Search", tonic::Code::Ok, Duration::from_millis(3));
        m.observe_request("Search", tonic::Code::Unauthenticated, Duration::ZERO);
        let mut s = Sample {
            indexed_files: 7,
            embedded_images: 5,
            ..Sample::default()
        };
        let text = m.render(Some(s)).unwrap();
        assert!(text.contains("# TYPE dualsight_embedded_images_total counter\n"));
        assert!(
            text.contains("\ndualsight_embedded_images_total 5\n"),
            "{text}"
        );
        assert!(text.contains("\ndualsight_indexed_files 7\n"));
        assert!(text.contains(
            "dualsight_grpc_requests_total{code=\"UNAUTHENTICATED\",method=\"Search\"} 1"
        ));
        assert!(text.contains(
            "dualsight_grpc_request_duration_seconds_bucket{method=\"Search\",le=\"0.004\"} 2"
        ));
        assert!(text.contains("\nprocess_resident_memory_bytes "));
        s.embedded_images = 9;
        let text = m.render(Some(s)).unwrap();
        assert!(
            text.contains("\ndualsight_embedded_images_total 9\n"),
            "{text}"
        );
    }
}
