//! Daemon settings, layered: compiled-in defaults, then `--config FILE`
//! (TOML, every key documented with its default in `config/dualsight.toml`),
//! then command-line flags. Validated once, here, with errors that name the
//! key and the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {msg}", path.display())]
    Parse { path: PathBuf, msg: String },
    #[error("{key}: {msg}")]
    Invalid { key: &'static str, msg: String },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Model directory or cached hub id.
    pub model: Option<String>,
    /// auto, cpu, cuda, cuda:N.
    pub device: String,
    /// f32, f16, bf16 (on the CPU a half type stores the dense weights; bf16
    /// on CPUs with AVX-512 BF16 also rounds a batch's dense-layer inputs).
    pub dtype: String,
    /// How a query's text tower holds its dense weights on the CPU: `dtype`
    /// (the model's) or `int8` (8 bits with a scale per column; the image
    /// side and every stored vector are unchanged).
    pub text_weights: String,
    /// Pillow-identical decode and resize (as transformers) instead of the
    /// fast path (large JPEGs decoded at 1/4 or 1/8 scale).
    pub exact_preprocessing: bool,
    /// Where the store and index checkpoints live.
    pub data_dir: PathBuf,
    /// TCP address for gRPC.
    pub listen: String,
    /// Optional Unix socket for gRPC.
    pub unix_socket: Option<PathBuf>,
    /// This daemon's name in a shared library (PostgreSQL store): its files
    /// are kept under it and hits show it. Unset: the host name.
    pub node: Option<String>,
    pub store: StoreSettings,
    pub watch: WatchSettings,
    pub ingest: IngestSettings,
    pub index: IndexSettings,
    pub server: ServerSettings,
    pub metrics: MetricsSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    /// Same as `server.allow_insecure` (accepted at the top level too).
    pub allow_insecure: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sled` (embedded, one machine) or `postgres` (many daemons, one library).
    pub backend: String,
    /// The PostgreSQL primary (a libpq-style URL or key=value string).
    pub database_url: Option<String>,
    /// Hot standbys that serve searches.
    pub database_read_urls: Vec<String>,
    /// A standby further behind the primary than this serves no search.
    pub max_replica_lag_ms: u64,
    /// Each space's pgvector index: `hnsw` or `ivfflat`. Unset: each space
    /// keeps the one it has (a new one: HNSW).
    pub vector_index: Option<String>,
    /// IVFFlat lists a search reads; 0: √lists / 6.4, at least 2.
    pub ivfflat_probes: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: "sled".into(),
            database_url: None,
            database_read_urls: Vec::new(),
            max_replica_lag_ms: 5000,
            vector_index: None,
            ivfflat_probes: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchSettings {
    pub roots: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub extensions: Vec<String>,
    pub debounce_ms: u64,
    pub stable_ms: u64,
    /// 0 turns the periodic reconcile off.
    pub reconcile_interval_s: u64,
    pub root_poll_s: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Images per model call, or "auto" (the most that fit the GPU).
    pub batch_size: BatchSize,
    /// A partial batch is embedded after this long.
    pub batch_timeout_ms: u64,
    /// Decode threads; 0 = one per CPU core.
    pub decode_threads: usize,
    /// Bound on files queued between stages (memory is bounded by this × decoded image size).
    pub queue: usize,
    /// A removed path is forgotten this long after the event, so a rename's new path
    /// (reported after its stability check) can claim the vector first.
    pub remove_grace_ms: u64,
    /// Indexing pauses while the data dir's file system has less than this
    /// free (MiB), so the store never meets a full disk mid-write.
    pub min_free_mb: u64,
    pub max_image_bytes: u64,
    pub max_image_pixels: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IndexSettings {
    pub m: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
    /// Write the HNSW checkpoint this often while vectors arrive (and at shutdown).
    pub checkpoint_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub default_limit: u32,
    pub max_limit: u32,
    pub max_text_chars: usize,
    pub max_message_bytes: usize,
    pub max_labels: usize,
    /// A file holding the bearer token every dualsight.v1 request must carry.
    pub token_file: Option<PathBuf>,
    /// TLS on the TCP listener: certificate chain and private key (PEM).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    pub tls_client_ca: Option<PathBuf>,
    /// Listen on a non-loopback address with neither a token nor TLS.
    pub allow_insecure: bool,
    /// Permission bits of the Unix socket, octal (connecting needs write).
    pub socket_mode: String,
    /// Group of the Unix socket (name or number); its members may connect.
    pub socket_group: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// `GET /metrics` (Prometheus text format) on this IP:PORT; off when unset.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// The search page and its JSON API on this IP:PORT; off when unset.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// A tracing filter (`info`, `warn,dualsight=debug`); unset: `RUST_LOG`,
    /// else `info`. Changes on reload.
    pub level: Option<String>,
    /// `text` or `json` (one object per line).
    pub format: crate::logging::LogFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: None,
            device: "auto".into(),
            dtype: "f32".into(),
            text_weights: "dtype".into(),
            exact_preprocessing: false,
            // systemd's StateDirectory= sets STATE_DIRECTORY.
            data_dir: std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("dualsight-data")),
            listen: "127.0.0.1:50051".into(),
            unix_socket: None,
            node: None,
            store: StoreSettings::default(),
            watch: WatchSettings::default(),
            ingest: IngestSettings::default(),
            index: IndexSettings::default(),
            server: ServerSettings::default(),
            metrics: MetricsSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            allow_insecure: false,
        }
    }
}

impl Default for WatchSettings {
    fn default() -> Self {
        // The watcher's own defaults, not a second copy.
        let w = crate::ingest::WatchConfig::default();
        Self {
            roots: w.roots,
            exclude: w.exclude,
            extensions: w.extensions,
            debounce_ms: w.debounce.as_millis() as u64,
            stable_ms: w.stable_for.as_millis() as u64,
            reconcile_interval_s: w.reconcile_every.map_or(0, |d| d.as_secs()),
            root_poll_s: w.poll_roots_every.as_secs(),
        }
    }
}

/// `[ingest] batch_size`: images per vision-tower call, or `"auto"`: on a
/// GPU the most that fit its free memory (`ingest::batch`), on the CPU 16
/// (throughput is flat past ~8 there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    Auto,
}

impl BatchSize {
    /// The largest batch, fixed or chosen.
    pub const MAX: usize = 4096;
    /// `"auto"` on the CPU: throughput is flat past ~8 images there, and a
    /// larger batch only delays the first results.
    pub const CPU_AUTO: usize = 16;

    /// The batch on the CPU, where nothing needs measuring.
    pub fn on_cpu(self) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::Auto => Self::CPU_AUTO,
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Word(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a number of images or \"auto\""))?
        {
            Raw::Number(n) => Ok(Self::Fixed(n)),
            Raw::Word(w) if w.eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "{w:?}: expected a number of images or \"auto\""
            ))),
        }
    }
}

impl Default for IngestSettings {
    fn default() -> Self {
        // The decoder's own limits, not a second copy.
        let limits = crate::preprocess::DecodeLimits::default();
        Self {
            batch_size: BatchSize::Fixed(16),
            batch_timeout_ms: 200,
            decode_threads: 0,
            queue: 64,
            remove_grace_ms: 3000,
            min_free_mb: 256,
            max_image_bytes: limits.max_bytes,
            max_image_pixels: limits.max_pixels,
        }
    }
}

impl Default for IndexSettings {
    fn default() -> Self {
        // The index's own defaults (measured there), not a second copy.
        let p = crate::index::IndexParams::default();
        Self {
            m: p.max_nb_connection,
            ef_construction: p.ef_construction,
            ef_search: p.ef_search,
            checkpoint_interval_s: 300,
        }
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        // The gRPC surface's own bounds, not a second copy.
        let c = crate::server::ServerConfig::default();
        Self {
            default_limit: c.default_limit as u32,
            max_limit: c.max_limit as u32,
            max_text_chars: c.max_text_chars,
            max_message_bytes: c.max_message_bytes,
            max_labels: c.max_labels,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            allow_insecure: false,
            socket_mode: "0660".into(),
            socket_group: None,
        }
    }
}

/// An `IP:PORT` setting, naming its key when it is not one.
fn socket_addr(key: &'static str, text: &str) -> Result<SocketAddr> {
    text.parse().map_err(|e| ConfigError::Invalid {
        key,
        msg: format!("`{text}`: {e} (expected IP:PORT)"),
    })
}

impl Settings {
    /// Defaults overlaid with a TOML file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string().replace('\n', " "),
        })
    }

    pub fn listen_addr(&self) -> Result<SocketAddr> {
        socket_addr("listen", &self.listen)
    }

    /// The metrics address, when metrics are on.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        self.metrics
            .listen
            .as_deref()
            .map(|l| socket_addr("metrics.listen", l))
            .transpose()
    }

    /// The search page's address, when it is on.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>> {
        self.http
            .listen
            .as_deref()
            .map(|l| socket_addr("http.listen", l))
            .transpose()
    }

    /// The Unix socket's permission bits.
    pub fn socket_mode(&self) -> Result<u32> {
        let m = self.server.socket_mode.trim();
        u32::from_str_radix(m.strip_prefix("0o").unwrap_or(m), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::Invalid {
                key: "server.socket_mode",
                msg: format!("`{m}`: expected octal permission bits such as \"0660\""),
            })
    }

    /// TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::server::TlsFiles> {
        let s = &self.server;
        Some(crate::server::TlsFiles {
            cert: s.tls_cert.clone()?,
            key: s.tls_key.clone()?,
            client_ca: s.tls_client_ca.clone(),
        })
    }

    /// This daemon's node name: `node`, else the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(host_name)
    }

    /// Where the PostgreSQL store is, when it is the backend.
    pub fn postgres(&self) -> Option<crate::store::pg::PgOptions> {
        if self.store.backend != "postgres" {
            return None;
        }
        Some(crate::store::pg::PgOptions {
            url: self.store.database_url.clone().unwrap_or_default(),
            read_urls: self.store.database_read_urls.clone(),
            node: self.node_name(),
            max_lag: Duration::from_millis(self.store.max_replica_lag_ms),
            data_dir: self.data_dir.clone(),
            hnsw: self.index_params(),
            exact_below: crate::store::pg::EXACT_BELOW,
            vector_index: self.vector_index(),
            ivfflat_probes: (self.store.ivfflat_probes > 0).then_some(self.store.ivfflat_probes),
            ivf_first: crate::store::pg::IVF_FIRST,
        })
    }

    /// `[store] vector_index`, parsed (checked by [`Settings::validate`]).
    pub fn vector_index(&self) -> Option<crate::store::pg::IndexKind> {
        self.store.vector_index.as_deref()?.parse().ok()
    }

    /// The HNSW settings of `[index]` (the embedded index's and pgvector's).
    pub fn index_params(&self) -> crate::index::IndexParams {
        crate::index::IndexParams {
            max_nb_connection: self.index.m,
            ef_construction: self.index.ef_construction,
            ef_search: self.index.ef_search,
            ..crate::index::IndexParams::default()
        }
    }

    pub fn decode_threads(&self) -> usize {
        match self.ingest.decode_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }

    /// `text_weights`, parsed.
    pub fn text_weights(&self) -> Result<crate::device::TextWeights> {
        self.text_weights
            .parse()
            .map_err(|e: crate::device::DeviceError| ConfigError::Invalid {
                key: "text_weights",
                msg: e.to_string(),
            })
    }

    /// Checks every value once, naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, msg: String| Err(ConfigError::Invalid { key, msg });
        if self.model.as_deref().unwrap_or("").is_empty() {
            return bad(
                "model",
                "no model: pass --model DIR or set `model` in the config file".into(),
            );
        }
        self.text_weights()?;
        // Before the data dir is made and the port bound.
        self.device
            .parse::<crate::device::DeviceSpec>()
            .map_err(|e| ConfigError::Invalid {
                key: "device",
                msg: e.to_string(),
            })?;
        crate::device::parse_dtype(&self.dtype).map_err(|e| ConfigError::Invalid {
            key: "dtype",
            msg: e.to_string(),
        })?;
        let listen = self.listen_addr()?;
        self.metrics_addr()?;
        let http = self.http_addr()?;
        self.socket_mode()?;
        if let Some(level) = &self.log.level {
            crate::logging::parse_filter(level).map_err(|e| ConfigError::Invalid {
                key: "log.level",
                msg: e.to_string(),
            })?;
        }
        let sv = &self.server;
        if sv.tls_cert.is_some() != sv.tls_key.is_some() {
            return bad(
                "server.tls_cert",
                "TLS needs both a certificate and its key: pass --tls-cert FILE and --tls-key FILE"
                    .into(),
            );
        }
        if sv.tls_client_ca.is_some() && sv.tls_cert.is_none() {
            return bad(
                "server.tls_client_ca",
                "client certificates need TLS: pass --tls-cert and --tls-key as well".into(),
            );
        }
        let insecure_ok = sv.allow_insecure || self.allow_insecure;
        if let Some(http) = http
            && !http.ip().is_loopback()
            && sv.token_file.is_none()
            && !insecure_ok
        {
            return bad(
                "http.listen",
                format!(
                    "refusing to serve the search page on {http}, which is not a loopback address, without \
                     a token (--token-file / server.token_file): anyone who can reach it could see the \
                     photos; configure one, or set `allow_insecure = true` under [server] to accept that"
                ),
            );
        }
        if !listen.ip().is_loopback()
            && sv.token_file.is_none()
            && sv.tls_cert.is_none()
            && !insecure_ok
        {
            return bad(
                "listen",
                format!(
                    "refusing to listen on {listen}, which is not a loopback address, with neither a token \
                     (--token-file / server.token_file) nor TLS (--tls-cert and --tls-key): anyone who can \
                     reach it could search the photos; configure one, or set `allow_insecure = true` under \
                     [server] in the config to accept that"
                ),
            );
        }
        self.validate_store()?;
        if self.watch.roots.is_empty() {
            return bad(
                "watch.roots",
                "no folder to watch: pass --watch DIR or set watch.roots".into(),
            );
        }
        if let BatchSize::Fixed(n) = self.ingest.batch_size
            && !(1..=BatchSize::MAX).contains(&n)
        {
            return bad(
                "ingest.batch_size",
                format!("{n} not in 1..={} (or \"auto\")", BatchSize::MAX),
            );
        }
        if !(1..=65536).contains(&self.ingest.queue) {
            return bad(
                "ingest.queue",
                format!("{} not in 1..=65536", self.ingest.queue),
            );
        }
        if self.ingest.max_image_pixels == 0 || self.ingest.max_image_bytes == 0 {
            return bad("ingest.max_image_pixels", "limits must be positive".into());
        }
        if !(2..=256).contains(&self.index.m) {
            return bad("index.m", format!("{} not in 2..=256", self.index.m));
        }
        if self.index.ef_construction == 0 || self.index.ef_search == 0 {
            return bad("index.ef_search", "ef values must be positive".into());
        }
        if self.server.default_limit == 0 || self.server.default_limit > self.server.max_limit {
            return bad(
                "server.default_limit",
                format!(
                    "{} must be in 1..=max_limit ({})",
                    self.server.default_limit, self.server.max_limit
                ),
            );
        }
        // The rest of [server]'s limits, checked as the server will, before start-up.
        self.server_config()
            .validate()
            .map_err(|msg| ConfigError::Invalid { key: "server", msg })
    }

    /// The gRPC server's limits, from [server].
    pub fn server_config(&self) -> crate::server::ServerConfig {
        crate::server::ServerConfig {
            max_limit: self.server.max_limit as usize,
            default_limit: self.server.default_limit as usize,
            max_text_chars: self.server.max_text_chars,
            max_message_bytes: self.server.max_message_bytes,
            max_labels: self.server.max_labels,
            ..crate::server::ServerConfig::default()
        }
    }

    fn validate_store(&self) -> Result<()> {
        let bad = |key: &'static str, msg: String| Err(ConfigError::Invalid { key, msg });
        let st = &self.store;
        match st.backend.as_str() {
            "sled" => {
                if st.vector_index.is_some() {
                    return bad(
                        "store.vector_index",
                        "set, but store.backend is \"sled\": the embedded index is always HNSW"
                            .into(),
                    );
                }
                if st.database_url.is_some() || !st.database_read_urls.is_empty() {
                    return bad(
                        "store.database_url",
                        "set, but store.backend is \"sled\": add `--store postgres` (or backend = \"postgres\" under [store])".into(),
                    );
                }
            }
            "postgres" => {
                if let Some(kind) = &st.vector_index
                    && let Err(msg) = kind.parse::<crate::store::pg::IndexKind>()
                {
                    return bad("store.vector_index", msg);
                }
                if st.database_url.as_deref().unwrap_or("").is_empty() {
                    return bad(
                        "store.database_url",
                        "the postgres store needs its primary: pass --database-url URL (or DUALSIGHT_DATABASE_URL, or database_url under [store])".into(),
                    );
                }
            }
            other => {
                return bad(
                    "store.backend",
                    format!("`{other}`: expected \"sled\" or \"postgres\""),
                );
            }
        }
        crate::store::pg::check_node(&self.node_name()).map_err(|e| ConfigError::Invalid {
            key: "node",
            msg: e.to_string(),
        })
    }

    /// How the daemon turns files (and query images) into pixels.
    pub fn preprocessing(&self) -> crate::preprocess::Preprocessing {
        if self.exact_preprocessing {
            crate::preprocess::Preprocessing::Exact
        } else {
            crate::preprocess::Preprocessing::Fast
        }
    }

    pub fn debounce(&self) -> Duration {
        Duration::from_millis(self.watch.debounce_ms)
    }
}

/// The machine's host name (the default node name), "localhost" if unknown.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "localhost".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_config_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join("dualsight.toml");
        let mut from_file = Settings::from_file(&path).unwrap();
        let mut defaults = Settings::default();
        // The example names a model, a root and the systemd state dir; everything else is default.
        from_file.model = None;
        from_file.watch.roots.clear();
        from_file.data_dir = PathBuf::new();
        defaults.data_dir = PathBuf::new();
        assert_eq!(from_file, defaults);
    }

    #[test]
    fn exact_preprocessing_picks_the_path() {
        use crate::preprocess::Preprocessing;
        let mut s = Settings::default();
        assert_eq!(s.preprocessing(), Preprocessing::Fast);
        s.exact_preprocessing = true;
        assert_eq!(s.preprocessing(), Preprocessing::Exact);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "exact_preprocessing = true\n").unwrap();
        assert!(Settings::from_file(&p).unwrap().exact_preprocessing);
    }

    #[test]
    fn batch_size_is_a_count_or_auto() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let parse = |body: &str| {
            std::fs::write(&p, format!("[ingest]\nbatch_size = {body}\n")).unwrap();
            Settings::from_file(&p).map(|s| s.ingest.batch_size)
        };
        assert_eq!(parse("32").unwrap(), BatchSize::Fixed(32));
        assert_eq!(parse("\"auto\"").unwrap(), BatchSize::Auto);
        assert_eq!(parse("\"AUTO\"").unwrap(), BatchSize::Auto);
        for bad in ["\"big\"", "-1", "1.5"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("batch_size") && e.contains("auto"), "{bad}: {e}");
        }
        let mut s = Settings {
            model: Some("m".into()),
            ..Default::default()
        };
        s.watch.roots = vec![PathBuf::from("/p")];
        s.ingest.batch_size = BatchSize::Fixed(0);
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("ingest.batch_size") && e.contains("auto"), "{e}");
        s.ingest.batch_size = BatchSize::Auto;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "modle = \"x\"\n").unwrap();
        let e = Settings::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("modle"), "{e}");
        std::fs::write(
            &p,
            "model = \"m\"\n[watch]\nroots = [\"/p\"]\n[index]\nm = 999\n",
        )
        .unwrap();
        let e = Settings::from_file(&p)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("index.m") && e.contains("999"), "{e}");
        std::fs::write(&p, "model = \"m\"\ntext_weights = \"int4\"\n").unwrap();
        let e = Settings::from_file(&p)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text_weights") && e.contains("int4") && e.contains("int8"),
            "{e}"
        );
        std::fs::write(&p, "model = \"m\"\ntext_weights = \"INT8\"\n").unwrap();
        let s = Settings::from_file(&p).unwrap();
        assert_eq!(s.text_weights().unwrap(), crate::device::TextWeights::Int8);
    }

    #[test]
    fn the_vector_index_is_a_postgres_setting_and_its_kind_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let check = |body: &str| {
            std::fs::write(
                &p,
                format!("model = \"m\"\n[watch]\nroots = [\"/p\"]\n{body}"),
            )
            .unwrap();
            let s = Settings::from_file(&p).unwrap();
            s.validate().map(|()| s).map_err(|e| e.to_string())
        };
        let pg = "[store]\nbackend = \"postgres\"\ndatabase_url = \"host=/tmp\"\n";
        let s = check(&format!(
            "{pg}vector_index = \"ivfflat\"\nivfflat_probes = 12\n"
        ))
        .unwrap();
        let options = s.postgres().unwrap();
        assert_eq!(
            options.vector_index,
            Some(crate::store::pg::IndexKind::IvfFlat)
        );
        assert_eq!(options.ivfflat_probes, Some(12));
        let options = check(pg).unwrap().postgres().unwrap();
        assert_eq!((options.vector_index, options.ivfflat_probes), (None, None));
        let e = check(&format!("{pg}vector_index = \"ivf\"\n")).unwrap_err();
        assert!(
            e.contains("store.vector_index") && e.contains("\"ivfflat\""),
            "{e}"
        );
        let e = check("[store]\nvector_index = \"hnsw\"\n").unwrap_err();
        assert!(
            e.contains("store.vector_index") && e.contains("sled"),
            "{e}"
        );
    }
}
