//! The client subcommands (`search`, `status`, `classify`, `failures`): clap
//! argument structs and async functions that talk to a running
//! `dualsight serve` over gRPC (TCP or a Unix socket) and print a table or
//! JSON. Formatting is done by pure functions so it is tested without a server.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::server::proto::dual_sight_client::DualSightClient;
use crate::server::proto::{
    self, ClassifyRequest, ListFailuresRequest, ProgressRequest, SearchByImageRequest,
    SearchRequest, StatusRequest,
};
use crate::server::root_cause;

/// Where `dualsight serve` listens by default.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// Largest response the client accepts; responses are small (hits, labels,
/// failures), this only guards against a runaway `--limit`.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a client command failed. Displayed after the CLI's `error: ` prefix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--addr` is not something we can connect to.
    #[error(
        "{addr}: invalid address: {reason} (expected http://HOST:PORT, https://HOST:PORT, HOST:PORT or unix:/path/to.sock)"
    )]
    InvalidAddress { addr: String, reason: String },
    /// Nobody answered at the address.
    #[error(
        "cannot connect to {addr}: {cause}; check that `dualsight serve` is running and listening there"
    )]
    Connect { addr: String, cause: String },
    /// The server answered with an error status.
    #[error("{}: {message}", code_name(*code))]
    Rpc { code: Code, message: String },
    /// A local file (the query image) could not be read.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// Arguments that clap cannot check on its own.
    #[error("{0}")]
    Usage(String),
    /// The progress stream closed before the daemon was done.
    #[error("the server closed the progress stream before indexing was done")]
    StreamEnded,
    /// Writing to stdout failed (other than a closed pipe, which is not an error).
    #[error("cannot write to stdout: {0}")]
    Output(io::Error),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Result alias for the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// `search`: text → images, or image → images.
#[derive(Debug, Clone, clap::Args)]
pub struct SearchArgs {
    /// What to look for, e.g. "a dog on a beach at sunset".
    #[arg(
        required_unless_present_any = ["image", "indexed_path"],
        conflicts_with_all = ["image", "indexed_path"]
    )]
    pub query: Option<String>,
    /// Search with this image file instead of text (its bytes are sent).
    #[arg(long, value_name = "PATH", conflicts_with = "indexed_path")]
    pub image: Option<PathBuf>,
    /// Search with an image the daemon has indexed, by its path as shown in
    /// results (a relative path is made absolute against the current directory).
    #[arg(long, value_name = "PATH")]
    pub indexed_path: Option<PathBuf>,
    /// How many results to show (default: the server's, 10).
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only results under this directory (made absolute like --indexed-path).
    #[arg(long, value_name = "DIR")]
    pub prefix: Option<PathBuf>,
    /// Only results with a cosine score at least this (-1 to 1).
    #[arg(long, value_name = "SCORE", allow_negative_numbers = true)]
    pub min_score: Option<f32>,
    /// Only photos taken on or after this date (2024-07-01, 2024-07-01T18:00
    /// in UTC, or Unix seconds).
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub after: Option<i64>,
    /// Only photos taken on or before this date (a bare date includes the whole day).
    #[arg(long, value_name = "DATE", value_parser = parse_date_end)]
    pub before: Option<i64>,
    /// Which page of results (1, 2, ...; each of --limit hits, 10 without it).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub page: Option<u32>,
    #[command(flatten)]
    pub remote: Remote,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `status`: counters, model and roots; or a live progress bar.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Follow indexing progress until the daemon is ready and nothing is
    /// pending (a bar redrawn in place on a terminal, plain lines otherwise).
    /// On a terminal, plain `status` does this by itself while files are pending.
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub remote: Remote,
    /// Print JSON (with --watch: one JSON object per line).
    #[arg(long)]
    pub json: bool,
}

/// `ask`: zero-shot classification of one image against labels by a running
/// daemon (its `Classify` rpc); `classify` does the same with a local model.
#[derive(Debug, Clone, clap::Args)]
pub struct ClassifyArgs {
    /// Candidate labels, e.g. cat dog "a red car".
    #[arg(required = true, value_name = "LABEL")]
    pub labels: Vec<String>,
    /// The image file to classify (its bytes are sent).
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "indexed_path",
        required_unless_present = "indexed_path"
    )]
    pub image: Option<PathBuf>,
    /// Classify an image the daemon has indexed, by its path.
    #[arg(long, value_name = "PATH")]
    pub indexed_path: Option<PathBuf>,
    /// Prompt template, `{}` replaced by each label; CLIP-style models often
    /// do better with e.g. "a photo of a {}".
    #[arg(long, default_value = "{}")]
    pub template: String,
    #[command(flatten)]
    pub remote: Remote,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `failures`: files that could not be indexed, newest first.
#[derive(Debug, Clone, clap::Args)]
pub struct FailuresArgs {
    /// How many to show (default: the server's, 10).
    #[arg(short = 'n', long, value_name = "N")]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub remote: Remote,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the daemon is and how to get in: the client flags every command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Server address: http://HOST:PORT, https://HOST:PORT, HOST:PORT or unix:/path/to.sock.
    #[arg(long, value_name = "ADDR", env = "DUALSIGHT_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// File holding the daemon's bearer token (sent as `authorization: Bearer`).
    #[arg(long, value_name = "FILE", env = "DUALSIGHT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed an https:// daemon's certificate;
    /// without it, the public web roots are trusted.
    #[arg(long, value_name = "FILE", env = "DUALSIGHT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a daemon that requires one (mutual TLS).
    #[arg(long, value_name = "FILE", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    /// The private key of --tls-client-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl Remote {
    /// A plain connection to `addr`, no token.
    pub fn plain(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            token_file: None,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
        }
    }
}

/// Adds the bearer token (when there is one) to every request.
#[derive(Debug, Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A client of the daemon, with the token (if any) on every request.
pub type Client = DualSightClient<InterceptedService<Channel, Bearer>>;

/// Connects as `remote` says: TLS for `https://` addresses (verified with
/// `--tls-ca`, else the public web roots), the token from `--token-file`.
pub async fn connect_remote(remote: &Remote) -> Result<Client> {
    let addr = remote.addr.as_str();
    let bearer = match &remote.token_file {
        Some(path) => {
            let token = crate::server::auth::read_token(path)
                .map_err(|e| ClientError::Usage(e.to_string()))?;
            let value = format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|e| ClientError::Usage(format!("{}: {e}", path.display())))?;
            Some(value)
        }
        None => None,
    };
    let mut endpoint = endpoint(addr)?;
    let https = addr.trim().starts_with("https://");
    if https {
        endpoint = endpoint
            .tls_config(client_tls(remote).await?)
            .map_err(|e| ClientError::InvalidAddress {
                addr: addr.to_owned(),
                reason: root_cause(&e),
            })?;
    } else if remote.tls_ca.is_some() || remote.tls_client_cert.is_some() {
        return Err(ClientError::Usage(format!(
            "--tls-ca and --tls-client-cert need an https:// address (got {addr})"
        )));
    }
    let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
        addr: addr.to_owned(),
        cause: root_cause(&e),
    })?;
    Ok(DualSightClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(MAX_RESPONSE_BYTES))
}

async fn client_tls(remote: &Remote) -> Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new();
    tls = match &remote.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_file(ca).await?)),
        None => tls.with_webpki_roots(),
    };
    if let (Some(cert), Some(key)) = (&remote.tls_client_cert, &remote.tls_client_key) {
        tls = tls.identity(Identity::from_pem(
            read_file(cert).await?,
            read_file(key).await?,
        ));
    }
    Ok(tls)
}

/// Hits a page when `--page` is given without `--limit` (the server's own default).
const DEFAULT_LIMIT: u32 = 10;

/// What `--after` and `--before` take.
const DATE_FORMS: &str = "expected a date like 2024-07-01, 2024-07-01T18:30 (UTC), or Unix seconds";

/// `--after`: a date or time (UTC), or Unix seconds.
fn parse_date(text: &str) -> std::result::Result<i64, String> {
    crate::civil::parse_utc(text).ok_or_else(|| format!("`{text}`: {DATE_FORMS}"))
}

/// `--before`: as `--after`, but a bare date means the end of that day.
fn parse_date_end(text: &str) -> std::result::Result<i64, String> {
    crate::civil::parse_utc_end(text).ok_or_else(|| format!("`{text}`: {DATE_FORMS}"))
}

/// Connects to a server at `addr`: `http://HOST:PORT`, `HOST:PORT`, or
/// `unix:/path/to.sock` (also `unix:///path`). Connects eagerly so that a
/// daemon that is not running is reported here, naming the address.
pub async fn connect(addr: &str) -> Result<DualSightClient<Channel>> {
    let endpoint = endpoint(addr)?;
    let channel = endpoint.connect().await.map_err(|e| ClientError::Connect {
        addr: addr.to_owned(),
        cause: root_cause(&e),
    })?;
    Ok(DualSightClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// The tonic endpoint for an address (tonic 0.14 connects `unix:` URIs to a
/// Unix socket itself).
fn endpoint(addr: &str) -> Result<Endpoint> {
    let uri = normalize_addr(addr)?;
    Endpoint::from_shared(uri)
        .map(|e| e.connect_timeout(Duration::from_secs(5)))
        .map_err(|e| ClientError::InvalidAddress {
            addr: addr.to_owned(),
            reason: root_cause(&e),
        })
}

/// Adds `http://` to a bare `HOST:PORT`; checks what tonic would only report
/// as a vague connect error later.
fn normalize_addr(addr: &str) -> Result<String> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let addr = addr.trim();
    if addr.is_empty() {
        return Err(invalid("empty"));
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(invalid("no socket path after unix:"));
        }
        return Ok(format!("unix:{path}"));
    }
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return Ok(addr.to_owned());
    }
    if addr.contains("://") {
        return Err(invalid("unknown scheme"));
    }
    Ok(format!("http://{addr}"))
}

/// A gRPC code as lowercase words ("invalid argument").
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Runs `search`.
pub async fn search(args: &SearchArgs) -> Result<()> {
    use proto::search_by_image_request::Query;
    // Local mistakes (a missing image file) first, before needing a server.
    let limit = args.limit.unwrap_or(0);
    let path_prefix = args.prefix.as_deref().map(absolute_string).transpose()?;
    let image_query = match (&args.query, &args.image, &args.indexed_path) {
        (Some(_), _, _) => None,
        (None, Some(file), _) => Some(Query::Image(read_file(file).await?)),
        (None, None, Some(path)) => Some(Query::Path(absolute_string(path)?)),
        (None, None, None) => {
            return Err(ClientError::Usage(
                "search: give a text query, --image or --indexed-path".into(),
            ));
        }
    };
    // Every page of a paged search has one size, sent explicitly (page 1
    // too), so a server whose default differs pages in the same steps.
    let page = args.page.unwrap_or(1);
    let limit = if limit == 0 && args.page.is_some() {
        DEFAULT_LIMIT
    } else {
        limit
    };
    let per_page = if limit == 0 { DEFAULT_LIMIT } else { limit };
    let offset = (page - 1).checked_mul(per_page).ok_or_else(|| {
        ClientError::Usage(format!(
            "--page {page}: too deep for {per_page} hits a page"
        ))
    })?;
    let mut client = connect_remote(&args.remote).await?;
    let response = match image_query {
        None => {
            let request = SearchRequest {
                text: args.query.clone().unwrap_or_default(),
                limit,
                path_prefix,
                min_score: args.min_score,
                taken_after: args.after,
                taken_before: args.before,
                offset,
            };
            client.search(request).await?
        }
        Some(query) => {
            let request = SearchByImageRequest {
                query: Some(query),
                limit,
                path_prefix,
                min_score: args.min_score,
                taken_after: args.after,
                taken_before: args.before,
                offset,
            };
            client.search_by_image(request).await?
        }
    };
    let hits = response.into_inner().hits;
    let first = offset as usize + 1;
    let text = if args.json {
        hits_json(&hits, first)
    } else {
        hits_table(&hits, first)
    };
    print(&text)
}

/// Runs `status`.
pub async fn status(args: &StatusArgs) -> Result<()> {
    let mut client = connect_remote(&args.remote).await?;
    if args.watch {
        return watch_progress(&mut client, args.json).await;
    }
    let status = client.status(StatusRequest {}).await?.into_inner();
    let text = if args.json {
        status_json(&status)
    } else {
        status_text(&status)
    };
    print(&text)?;
    // A person at a terminal while photos are being indexed gets the live bar
    // without asking; scripts (no terminal, or --json) get one snapshot.
    if !args.json && io::stdout().is_terminal() && status.pending_files > 0 {
        return watch_progress(&mut client, false).await;
    }
    Ok(())
}

/// Follows WatchProgress until the daemon is ready with nothing pending.
/// "Ready" alone would end at once on a daemon that answers queries while it
/// is still indexing a large library, which is when a bar is most wanted.
async fn watch_progress(client: &mut Client, json: bool) -> Result<()> {
    let mut stream = client
        .watch_progress(ProgressRequest {})
        .await?
        .into_inner();
    let tty = io::stdout().is_terminal();
    let mut plain = PlainThrottle::default();
    let stdout = io::stdout();
    while let Some(p) = stream.message().await? {
        let done = p.ready && p.pending == 0;
        let mut out = stdout.lock();
        let written = if json {
            writeln!(out, "{}", progress_json(&p))
        } else if tty {
            // \r + "erase to end of line": redraw in place even when shorter.
            write!(out, "\r{}\x1b[K", progress_line(&p))
                .and_then(|()| if done { writeln!(out) } else { Ok(()) })
        } else if plain.due(&p, done) {
            writeln!(out, "{}", progress_line(&p))
        } else {
            Ok(())
        };
        written
            .and_then(|()| out.flush())
            .or_else(ignore_broken_pipe)?;
        if done {
            return Ok(());
        }
    }
    if tty && !json {
        println!();
    }
    Err(ClientError::StreamEnded)
}

/// For output that is not a terminal (a log, a pipe): a line when the phase
/// or readiness changes, at the end, and otherwise at most every 2 seconds.
#[derive(Default)]
struct PlainThrottle {
    last: Option<(Instant, String, bool)>,
}

impl PlainThrottle {
    fn due(&mut self, p: &proto::Progress, done: bool) -> bool {
        let due = match &self.last {
            None => true,
            Some((at, phase, ready)) => {
                done || *phase != p.phase
                    || *ready != p.ready
                    || at.elapsed() >= Duration::from_secs(2)
            }
        };
        if due {
            self.last = Some((Instant::now(), p.phase.clone(), p.ready));
        }
        due
    }
}

/// Runs `classify`.
pub async fn classify(args: &ClassifyArgs) -> Result<()> {
    use proto::classify_request::Query;
    let prompts = apply_template(&args.template, &args.labels)?;
    let query = match (&args.image, &args.indexed_path) {
        (Some(file), _) => Query::Image(read_file(file).await?),
        (None, Some(path)) => Query::Path(absolute_string(path)?),
        (None, None) => {
            return Err(ClientError::Usage(
                "classify: give --image or --indexed-path".into(),
            ));
        }
    };
    let mut client = connect_remote(&args.remote).await?;
    let request = ClassifyRequest {
        query: Some(query),
        labels: prompts.clone(),
    };
    let mut labels = client.classify(request).await?.into_inner().labels;
    // Show the user's labels, not the prompts built from them.
    for label in &mut labels {
        if let Some(i) = prompts.iter().position(|p| *p == label.label) {
            label.label = args.labels[i].clone();
        }
    }
    let text = if args.json {
        labels_json(&labels)
    } else {
        labels_table(&labels)
    };
    print(&text)
}

/// Runs `failures`.
pub async fn failures(args: &FailuresArgs) -> Result<()> {
    let mut client = connect_remote(&args.remote).await?;
    let request = ListFailuresRequest {
        limit: args.limit.unwrap_or(0),
    };
    let list = client.list_failures(request).await?.into_inner();
    let text = if args.json {
        failures_json(&list)
    } else {
        failures_table(&list, SystemTime::now())
    };
    print(&text)
}

/// `{}` in the template becomes each label.
fn apply_template(template: &str, labels: &[String]) -> Result<Vec<String>> {
    if !template.contains("{}") {
        return Err(ClientError::Usage(format!(
            "--template: must contain {{}} where the label goes, got {template:?}"
        )));
    }
    Ok(labels.iter().map(|l| template.replace("{}", l)).collect())
}

async fn read_file(path: &Path) -> Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .map_err(|error| ClientError::Io {
            path: path.to_owned(),
            error,
        })
}

/// Indexed paths are absolute; a relative one is taken against the current
/// directory (no symlinks resolved: the daemon matches paths as it stored them).
fn absolute_string(path: &Path) -> Result<String> {
    let absolute = std::path::absolute(path).map_err(|error| ClientError::Io {
        path: path.to_owned(),
        error,
    })?;
    absolute
        .into_os_string()
        .into_string()
        .map_err(|p| ClientError::Usage(format!("{}: path is not valid UTF-8", p.display())))
}

/// Prints to stdout; a closed pipe (`| head`) ends quietly.
fn print(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .or_else(ignore_broken_pipe)
}

fn ignore_broken_pipe(e: io::Error) -> Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(ClientError::Output(e))
    }
}

// ---------------------------------------------------------------------------
// Formatting: pure functions.

/// `rank  score  prob  taken  path`, one hit per line; ranks start at `first`.
pub fn hits_table(hits: &[proto::Hit], first: usize) -> String {
    if hits.is_empty() {
        return "no results\n".into();
    }
    // Hits from several daemons (a shared PostgreSQL store) name theirs.
    let many_nodes = hits.iter().any(|h| h.node != hits[0].node);
    let mut s = format!(
        "{:>4}  {:>7}  {:>6}  {:<10}  {}\n",
        "rank",
        "score",
        "prob",
        "taken",
        if many_nodes { "node:path" } else { "path" }
    );
    for (i, h) in hits.iter().enumerate() {
        let taken = crate::civil::format_utc(h.taken_at_unix);
        let node = if many_nodes {
            format!("{}:", h.node)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:>4}  {:>7.4}  {:>5.1}%  {:<10}  {node}{}",
            first + i,
            h.score,
            h.probability * 100.0,
            &taken[..10],
            h.path
        );
    }
    s
}

/// `{"hits":[{"rank":1,"path":..,"score":..,"logit":..,"probability":..,
/// "taken_at_unix":..,...}]}`; ranks start at `first`.
pub fn hits_json(hits: &[proto::Hit], first: usize) -> String {
    let hits: Vec<_> = hits
        .iter()
        .enumerate()
        .map(|(i, h)| {
            json!({
                "rank": first + i,
                "node": h.node,
                "path": h.path,
                "score": h.score,
                "logit": h.logit,
                "probability": h.probability,
                "taken_at_unix": h.taken_at_unix,
                "taken_from": h.taken_from,
                "width": h.width,
                "height": h.height,
                "size_bytes": h.size_bytes,
            })
        })
        .collect();
    format!("{}\n", json!({ "hits": hits }))
}

/// `rank  prob  logit  label`.
pub fn labels_table(labels: &[proto::Label]) -> String {
    let mut s = format!("{:>4}  {:>6}  {:>8}  label\n", "rank", "prob", "logit");
    for (i, l) in labels.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:>4}  {:>5.1}%  {:>8.3}  {}",
            i + 1,
            l.probability * 100.0,
            l.logit,
            l.label
        );
    }
    s
}

/// `{"labels":[{"rank":1,"label":..,"probability":..,"logit":..,"score":..}]}`.
pub fn labels_json(labels: &[proto::Label]) -> String {
    let labels: Vec<_> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            json!({
                "rank": i + 1,
                "label": l.label,
                "probability": l.probability,
                "logit": l.logit,
                "score": l.score,
            })
        })
        .collect();
    format!("{}\n", json!({ "labels": labels }))
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A `key: value` block.
pub fn status_text(s: &proto::StatusResponse) -> String {
    let fingerprint: String = s.model_fingerprint.chars().take(16).collect();
    let mut out = String::new();
    let _ = writeln!(out, "ready:           {}", yes_no(s.ready));
    let _ = writeln!(out, "indexed files:   {}", s.indexed_files);
    let _ = writeln!(out, "pending files:   {}", s.pending_files);
    let _ = writeln!(out, "failed files:    {}", s.failed_files);
    let _ = writeln!(out, "vectors:         {}", s.vectors);
    let _ = writeln!(out, "model:           {}", s.model_name);
    let _ = writeln!(out, "fingerprint:     {fingerprint}");
    let _ = writeln!(out, "embedding dim:   {}", s.embedding_dim);
    let _ = writeln!(
        out,
        "logit scale:     {:.4} (x{:.2})",
        s.logit_scale,
        s.logit_scale.exp()
    );
    let _ = writeln!(out, "index building:  {}", yes_no(s.index_building));
    let _ = writeln!(
        out,
        "embedded:        {} images since start ({} files reused a vector)",
        s.embedded_images, s.reused_vectors
    );
    if !s.ingest_error.is_empty() {
        let _ = writeln!(out, "ingest error:    {}", s.ingest_error);
    }
    if s.roots.is_empty() {
        let _ = writeln!(out, "roots:           none");
    } else {
        let _ = writeln!(out, "roots:");
        for r in &s.roots {
            let state = if r.online { "online" } else { "offline" };
            let _ = writeln!(out, "  {state:<8} {}", r.path);
        }
    }
    if !s.node.is_empty() {
        let _ = writeln!(out, "node:            {}", s.node);
    }
    if !s.database.is_empty() {
        let _ = writeln!(out, "store:           {} ({})", s.store, s.database);
    } else if !s.store.is_empty() {
        let _ = writeln!(out, "store:           {}", s.store);
    }
    for r in &s.replicas {
        let state = if r.serving {
            format!("serving, lag {} ms", r.lag_ms.max(0))
        } else {
            format!("left out: {}", r.error)
        };
        let _ = writeln!(out, "  standby {}: {state}", r.database);
    }
    out
}

/// Every StatusResponse field, proto names.
pub fn status_json(s: &proto::StatusResponse) -> String {
    let roots: Vec<_> = s
        .roots
        .iter()
        .map(|r| json!({ "path": r.path, "online": r.online }))
        .collect();
    let value = json!({
        "indexed_files": s.indexed_files,
        "pending_files": s.pending_files,
        "failed_files": s.failed_files,
        "ready": s.ready,
        "model_fingerprint": s.model_fingerprint,
        "model_name": s.model_name,
        "embedding_dim": s.embedding_dim,
        "logit_scale": s.logit_scale,
        "roots": roots,
        "vectors": s.vectors,
        "index_building": s.index_building,
        "embedded_images": s.embedded_images,
        "reused_vectors": s.reused_vectors,
        "ingest_error": s.ingest_error,
        "node": s.node,
        "store": s.store,
        "database": s.database,
        "replicas": s.replicas.iter().map(|r| json!({
            "database": r.database,
            "serving": r.serving,
            "lag_ms": r.lag_ms,
            "error": r.error,
        })).collect::<Vec<_>>(),
    });
    format!("{value}\n")
}

/// One progress object, proto names, no newline.
pub fn progress_json(p: &proto::Progress) -> String {
    json!({
        "indexed": p.indexed,
        "pending": p.pending,
        "failed": p.failed,
        "files_per_second": p.files_per_second,
        "eta_seconds": p.eta_seconds,
        "ready": p.ready,
        "roots_offline": p.roots_offline,
        "phase": p.phase,
    })
    .to_string()
}

/// `[#####---------------]  25%  10/40 files  3.3/s  eta 9s  indexing`, kept
/// short so it fits on one terminal line (a wrapped line cannot be redrawn).
pub fn progress_line(p: &proto::Progress) -> String {
    const WIDTH: u64 = 20;
    let done = p.indexed.saturating_add(p.failed);
    let total = done.saturating_add(p.pending);
    let (filled, percent) = if total == 0 {
        (WIDTH, 100)
    } else {
        // u128: no overflow for any u64 counts.
        let f = u128::from(done) * u128::from(WIDTH) / u128::from(total);
        let pc = u128::from(done) * 100 / u128::from(total);
        (f as u64, pc as u64)
    };
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let mut s = format!("[{bar}] {percent:>3}%  {done}/{total} files");
    if p.files_per_second > 0.0 {
        let _ = write!(s, "  {:.1}/s", p.files_per_second);
    }
    if p.pending > 0 {
        if p.eta_seconds > 0.0 {
            let _ = write!(s, "  eta {}", human_duration(p.eta_seconds));
        } else {
            s.push_str("  eta ?");
        }
    }
    if !p.phase.is_empty() {
        let _ = write!(s, "  {}", p.phase);
    }
    if p.failed > 0 {
        let _ = write!(s, "  {} failed", p.failed);
    }
    if p.roots_offline > 0 {
        let _ = write!(
            s,
            "  {} offline",
            plural(u64::from(p.roots_offline), "root")
        );
    }
    if !p.ready {
        s.push_str("  (not ready)");
    }
    s
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `45s`, `2m05s`, `3h07m`, `2d04h`.
pub fn human_duration(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds.round() as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `age  attempts  path: error`, newest first, and how many more exist.
pub fn failures_table(list: &proto::ListFailuresResponse, now: SystemTime) -> String {
    if list.failures.is_empty() {
        return "no failures\n".into();
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut s = format!("{:>10}  {:>8}  path: error\n", "age", "attempts");
    for f in &list.failures {
        let age = now.saturating_sub(f.failed_at_unix).max(0);
        // Errors already start with the path (the house style); don't print it twice.
        let error = f
            .error
            .strip_prefix(&format!("{}: ", f.path))
            .unwrap_or(&f.error);
        let _ = writeln!(
            s,
            "{:>10}  {:>8}  {}: {}",
            format!("{} ago", human_duration(age as f64)),
            f.attempts,
            f.path,
            error
        );
    }
    let shown = list.failures.len() as u64;
    if list.total > shown {
        let _ = writeln!(
            s,
            "({} of {} shown; use --limit for more)",
            shown, list.total
        );
    }
    s
}

/// `{"total":..,"failures":[{"path":..,"error":..,"failed_at_unix":..,"attempts":..}]}`.
pub fn failures_json(list: &proto::ListFailuresResponse) -> String {
    let failures: Vec<_> = list
        .failures
        .iter()
        .map(|f| {
            json!({
                "path": f.path,
                "error": f.error,
                "failed_at_unix": f.failed_at_unix,
                "attempts": f.attempts,
            })
        })
        .collect();
    format!("{}\n", json!({ "total": list.total, "failures": failures }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(clap::Subcommand)]
    enum Command {
        Search(SearchArgs),
        Status(StatusArgs),
        Classify(ClassifyArgs),
        Failures(FailuresArgs),
    }

    fn parse(args: &[&str]) -> std::result::Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("dualsight").chain(args.iter().copied()))
            .map(|c| c.command)
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn search_takes_exactly_one_kind_of_query() {
        let Ok(Command::Search(a)) =
            parse(&["search", "a red car", "-n", "5", "--min-score", "-0.1"])
        else {
            panic!("text search should parse");
        };
        assert_eq!(a.query.as_deref(), Some("a red car"));
        assert_eq!(a.limit, Some(5));
        assert_eq!(a.min_score, Some(-0.1));
        assert!(parse(&["search", "--image", "a.jpg"]).is_ok());
        assert!(parse(&["search", "--indexed-path", "/p/a.jpg"]).is_ok());
        assert!(parse(&["search"]).is_err());
        assert!(parse(&["search", "text", "--image", "a.jpg"]).is_err());
        assert!(parse(&["search", "--image", "a.jpg", "--indexed-path", "/a.jpg"]).is_err());
        assert!(
            parse(&["classify", "cat"]).is_err(),
            "classify needs an image"
        );
        assert!(
            parse(&["classify", "--image", "a.jpg"]).is_err(),
            "and labels"
        );
        assert!(parse(&["classify", "--image", "a.jpg", "cat", "dog"]).is_ok());
        assert!(parse(&["status", "--watch", "--json"]).is_ok());
        assert!(parse(&["failures", "-n", "3"]).is_ok());
    }

    #[test]
    fn addresses_accept_tcp_and_unix_forms() {
        assert_eq!(
            normalize_addr("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(normalize_addr(DEFAULT_ADDR).unwrap(), DEFAULT_ADDR);
        assert_eq!(
            normalize_addr(" localhost:1 ").unwrap(),
            "http://localhost:1"
        );
        assert_eq!(
            normalize_addr("unix:/run/d.sock").unwrap(),
            "unix:/run/d.sock"
        );
        assert_eq!(
            normalize_addr("unix:///run/d.sock").unwrap(),
            "unix:/run/d.sock"
        );
        assert_eq!(normalize_addr("https://h:1").unwrap(), "https://h:1");
        for bad in ["", "unix:", "grpc://h:1"] {
            let e = normalize_addr(bad).unwrap_err().to_string();
            assert!(e.contains("invalid address"), "{bad:?}: {e}");
        }
        assert!(endpoint("unix:/run/d.sock").is_ok());
        assert!(endpoint("http://[::1]:50051").is_ok());
        assert!(endpoint("bad host:1").is_err());
    }

    #[tokio::test]
    async fn a_missing_server_is_reported_with_its_address() {
        // Bind then drop: a port on which nobody listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let e = connect(&addr).await.unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot connect to {addr}: ")), "{e}");
        assert!(e.contains("dualsight serve"), "{e}");
        let e = connect("unix:/nonexistent/dualsight.sock")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot connect to unix:/nonexistent/dualsight.sock: "),
            "{e}"
        );
    }

    #[test]
    fn status_errors_show_code_and_message() {
        let e = ClientError::from(tonic::Status::invalid_argument("text: must not be empty"));
        assert_eq!(e.to_string(), "invalid argument: text: must not be empty");
        let e = ClientError::from(tonic::Status::unavailable("not ready: loading model"));
        assert_eq!(e.to_string(), "unavailable: not ready: loading model");
    }

    fn hit(path: &str, score: f32, probability: f32) -> proto::Hit {
        proto::Hit {
            path: path.into(),
            score,
            logit: score * 100.0,
            probability,
            taken_at_unix: 1_719_792_000,
            taken_from: "exif".into(),
            ..Default::default()
        }
    }

    #[test]
    fn hits_print_as_a_table_and_as_json() {
        let hits = [
            hit("/p/a.jpg", 0.3125, 0.7311),
            hit("/p/b c.jpg", 0.3025, 0.2689),
        ];
        assert_eq!(
            hits_table(&hits, 11),
            "rank    score    prob  taken       path\n  11   0.3125   73.1%  2024-07-01  /p/a.jpg\n  12   0.3025   26.9%  2024-07-01  /p/b c.jpg\n"
        );
        assert_eq!(hits_table(&[], 1), "no results\n");
        let v: serde_json::Value = serde_json::from_str(&hits_json(&hits, 1)).unwrap();
        assert_eq!(v["hits"][1]["rank"], 2);
        assert_eq!(v["hits"][1]["taken_at_unix"], 1_719_792_000);
        assert_eq!(v["hits"][1]["taken_from"], "exif");
        assert_eq!(v["hits"][1]["path"], "/p/b c.jpg");
        assert!((v["hits"][0]["score"].as_f64().unwrap() - 0.3125).abs() < 1e-6);
        assert!(v["hits"][0]["logit"].is_number());
        assert!(v["hits"][0]["probability"].is_number());
    }

    #[test]
    fn templates_wrap_labels() {
        let labels = ["cat".to_string(), "red car".to_string()];
        assert_eq!(
            apply_template("a photo of a {}", &labels).unwrap(),
            ["a photo of a cat", "a photo of a red car"]
        );
        assert_eq!(apply_template("{}", &labels).unwrap(), labels);
        assert!(apply_template("a photo", &labels).is_err());
    }

    #[test]
    fn labels_print_ranked() {
        let labels = [proto::Label {
            label: "cat".into(),
            probability: 0.875,
            logit: 25.5,
            score: 0.255,
        }];
        assert_eq!(
            labels_table(&labels),
            "rank    prob     logit  label\n   1   87.5%    25.500  cat\n"
        );
        let v: serde_json::Value = serde_json::from_str(&labels_json(&labels)).unwrap();
        assert_eq!(v["labels"][0]["label"], "cat");
    }

    #[test]
    fn status_prints_every_field() {
        let s = proto::StatusResponse {
            indexed_files: 12,
            pending_files: 3,
            failed_files: 1,
            ready: true,
            model_fingerprint: "0123456789abcdef0123".into(),
            model_name: "tiny-clip".into(),
            embedding_dim: 64,
            logit_scale: 100f32.ln(),
            roots: vec![
                proto::Root {
                    path: "/photos".into(),
                    online: true,
                },
                proto::Root {
                    path: "/mnt/nas".into(),
                    online: false,
                },
            ],
            vectors: 11,
            index_building: false,
            embedded_images: 7,
            reused_vectors: 2,
            ingest_error: "indexing paused: /data has 3 MiB free".into(),
            node: "photos-1".into(),
            store: "postgres".into(),
            database: "ds@db:5432/photos".into(),
            replicas: vec![proto::Replica {
                database: "ds@standby:5432/photos".into(),
                serving: false,
                lag_ms: -1,
                error: "connection refused".into(),
            }],
        };
        let text = status_text(&s);
        for expected in [
            "ready:           yes\n",
            "indexed files:   12\n",
            "fingerprint:     0123456789abcdef\n",
            "logit scale:     4.6052 (x100.00)\n",
            "  online   /photos\n",
            "  offline  /mnt/nas\n",
            "ingest error:    indexing paused: /data has 3 MiB free\n",
            "node:            photos-1\n",
            "store:           postgres (ds@db:5432/photos)\n",
            "  standby ds@standby:5432/photos: left out: connection refused\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        let v: serde_json::Value = serde_json::from_str(&status_json(&s)).unwrap();
        assert_eq!(v["roots"][1]["online"], false);
        assert_eq!(v["vectors"], 11);
        assert_eq!(v["embedding_dim"], 64);
    }

    #[test]
    fn progress_line_shows_bar_rate_and_eta() {
        let p = proto::Progress {
            indexed: 9,
            pending: 30,
            failed: 1,
            files_per_second: 3.26,
            eta_seconds: 125.0,
            ready: true,
            roots_offline: 1,
            phase: "indexing".into(),
        };
        assert_eq!(
            progress_line(&p),
            "[#####---------------]  25%  10/40 files  3.3/s  eta 2m05s  indexing  1 failed  1 root offline"
        );
        let idle = proto::Progress {
            ready: false,
            phase: "starting".into(),
            ..Default::default()
        };
        assert_eq!(
            progress_line(&idle),
            "[####################] 100%  0/0 files  starting  (not ready)"
        );
        let unknown = proto::Progress {
            pending: u64::MAX,
            indexed: u64::MAX,
            ..Default::default()
        };
        assert!(progress_line(&unknown).contains("eta ?"));
        let v: serde_json::Value = serde_json::from_str(&progress_json(&p)).unwrap();
        assert_eq!(v["roots_offline"], 1);
        assert_eq!(v["phase"], "indexing");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(human_duration(0.0), "0s");
        assert_eq!(human_duration(f64::NAN), "0s");
        assert_eq!(human_duration(59.4), "59s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(3.0 * 3600.0 + 7.0 * 60.0), "3h07m");
        assert_eq!(human_duration(2.0 * 86400.0 + 4.0 * 3600.0), "2d04h");
    }

    #[test]
    fn failures_print_age_and_truncation() {
        let list = proto::ListFailuresResponse {
            failures: vec![proto::Failure {
                path: "/p/bad.jpg".into(),
                error: "unsupported image format".into(),
                failed_at_unix: 1_000,
                attempts: 2,
            }],
            total: 3,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000 + 125);
        assert_eq!(
            failures_table(&list, now),
            "       age  attempts  path: error\n 2m05s ago         2  /p/bad.jpg: unsupported image format\n(1 of 3 shown; use --limit for more)\n"
        );
        let v: serde_json::Value = serde_json::from_str(&failures_json(&list)).unwrap();
        assert_eq!(v["total"], 3);
        assert_eq!(v["failures"][0]["failed_at_unix"], 1000);
    }

    #[test]
    fn plain_progress_lines_are_throttled() {
        let mut t = PlainThrottle::default();
        let p = proto::Progress {
            phase: "scanning".into(),
            ..Default::default()
        };
        assert!(t.due(&p, false));
        assert!(!t.due(&p, false));
        let indexing = proto::Progress {
            phase: "indexing".into(),
            ..Default::default()
        };
        assert!(t.due(&indexing, false), "a phase change prints");
        assert!(t.due(&indexing, true), "the last update prints");
    }
}
