//! The search page (`--http-listen`): one HTML page with its CSS and JS
//! embedded in the binary (no build step, no CDN: the machine may be
//! offline), and the JSON endpoints it calls. They answer through the same
//! [`Core`] as gRPC, after the same validation (the request is turned into
//! the proto message and checked by the gRPC service's own functions), and
//! the daemon's token guards them when it has one. Originals are never
//! served: only thumbnails of indexed paths.
//!
//! - `GET /`: the page.
//! - `GET /api/search?q=TEXT | like=PATH [&limit&offset&after&before&prefix&min_score]`
//! - `GET /api/thumbnail?path=PATH[&size=N]`: `image/jpeg`.
//! - `GET /api/status`: counters and indexing progress.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::server::port::{Core, CoreError, Hit};
use crate::server::proto;
use crate::server::{ServerConfig, Token};

const PAGE: &str = include_str!("page.html");

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("http listen {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds the page's port; done at start, so a taken port fails the start.
pub async fn bind(addr: &str) -> Result<TcpListener, WebError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

struct Web<C> {
    core: Arc<C>,
    cfg: ServerConfig,
    token: Option<Token>,
    /// Searches that embed something at once, as the gRPC service bounds its own.
    embeds: Semaphore,
}

/// Serves the page and its API on `listener` until `shutdown` resolves.
pub async fn serve<C: Core>(
    listener: TcpListener,
    core: Arc<C>,
    cfg: ServerConfig,
    token: Option<Token>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, token = token.is_some(), "search page listening on http");
    }
    let web = Arc::new(Web {
        embeds: Semaphore::new(cfg.max_concurrent_requests),
        core,
        cfg,
        token,
    });
    let app = Router::new()
        .route("/", get(page))
        .route("/api/search", get(search::<C>))
        .route("/api/thumbnail", get(thumbnail::<C>))
        .route("/api/status", get(status::<C>))
        .with_state(web);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(WebError::Serve)
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is its own: no script, style or
            // image from anywhere else.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'",
            ),
        ],
        PAGE,
    )
}

/// An error as JSON with the HTTP status matching the gRPC one.
fn error(e: CoreError) -> Response {
    let status = match &e {
        CoreError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        CoreError::NotFound(_) => StatusCode::NOT_FOUND,
        CoreError::NotReady(_) | CoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        CoreError::Internal(m) => {
            tracing::error!(error = %m, "search page request failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    (status, axum::Json(json!({ "error": e.to_string() }))).into_response()
}

impl<C: Core> Web<C> {
    /// `Err` with a 401 unless the request carries the daemon's token.
    #[allow(clippy::result_large_err)]
    fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        match &self.token {
            Some(t) if !t.accepts(headers.get(header::AUTHORIZATION)) => Err((
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({ "error": "missing or wrong token: send `Authorization: Bearer <token>`" })),
            )
                .into_response()),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct SearchParams {
    q: Option<String>,
    like: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
    after: Option<String>,
    before: Option<String>,
    prefix: Option<String>,
    min_score: Option<f32>,
}

/// A date from the page (`2024-07-01` from a date input, a time, or Unix
/// seconds); `end_of_day` makes a bare date include the whole day.
fn date(field: &str, text: Option<&str>, end_of_day: bool) -> Result<Option<i64>, CoreError> {
    let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let parse = if end_of_day {
        crate::civil::parse_utc_end
    } else {
        crate::civil::parse_utc
    };
    parse(t).map(Some).ok_or_else(|| {
        CoreError::InvalidArgument(format!(
            "{field}: `{t}`: expected a date like 2024-07-01 or Unix seconds"
        ))
    })
}

async fn search<C: Core>(
    State(web): State<Arc<Web<C>>>,
    headers: HeaderMap,
    Query(p): Query<SearchParams>,
) -> Response {
    if let Err(r) = web.check(&headers) {
        return r;
    }
    match run_search(&web, p).await {
        Ok((hits, offset)) => axum::Json(json!({
            "offset": offset,
            "hits": hits.iter().map(hit_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(e),
    }
}

async fn run_search<C: Core>(web: &Web<C>, p: SearchParams) -> Result<(Vec<Hit>, u32), CoreError> {
    let taken_after = date("after", p.after.as_deref(), false)?;
    let taken_before = date("before", p.before.as_deref(), true)?;
    let (limit, offset) = (p.limit.unwrap_or(0), p.offset.unwrap_or(0));
    let _permit = web
        .embeds
        .acquire()
        .await
        .map_err(|_| CoreError::Unavailable("shutting down".into()))?;
    let hits = match (p.q, p.like) {
        (Some(text), None) => {
            let req = proto::SearchRequest {
                text,
                limit,
                path_prefix: p.prefix,
                min_score: p.min_score,
                taken_after,
                taken_before,
                offset,
            };
            let query = crate::server::text_query(req, &web.cfg)?;
            web.core.search_text(query).await?
        }
        (None, Some(path)) => {
            let req = proto::SearchByImageRequest {
                query: Some(proto::search_by_image_request::Query::Path(path)),
                limit,
                path_prefix: p.prefix,
                min_score: p.min_score,
                taken_after,
                taken_before,
                offset,
            };
            let query = crate::server::image_query(req, &web.cfg)?;
            web.core.search_image(query).await?
        }
        _ => {
            return Err(CoreError::InvalidArgument(
                "q: give exactly one of q (text) and like (an indexed path)".into(),
            ));
        }
    };
    Ok((hits, offset))
}

fn hit_json(h: &Hit) -> serde_json::Value {
    json!({
        "path": h.path.to_string_lossy(),
        "score": h.score,
        "probability": h.probability,
        "taken_at_unix": h.info.taken_at_unix,
        "taken_from": h.info.taken_from,
        "width": h.info.width,
        "height": h.info.height,
        "size_bytes": h.info.size_bytes,
    })
}

#[derive(Debug, Deserialize)]
struct ThumbParams {
    path: String,
    size: Option<u32>,
}

async fn thumbnail<C: Core>(
    State(web): State<Arc<Web<C>>>,
    headers: HeaderMap,
    Query(p): Query<ThumbParams>,
) -> Response {
    if let Err(r) = web.check(&headers) {
        return r;
    }
    let req = proto::ThumbnailRequest {
        path: p.path,
        size: p.size.unwrap_or(0),
    };
    let result = async {
        let (path, size) = crate::server::thumbnail_request(req)?;
        web.core.thumbnail(path, size).await
    }
    .await;
    match result {
        Ok(t) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                // Kept by content: the same path may show another photo later.
                (header::CACHE_CONTROL, "private, max-age=60"),
            ],
            t.jpeg,
        )
            .into_response(),
        Err(e) => error(e),
    }
}

async fn status<C: Core>(State(web): State<Arc<Web<C>>>, headers: HeaderMap) -> Response {
    if let Err(r) = web.check(&headers) {
        return r;
    }
    let progress = web.core.progress().borrow().clone();
    match web.core.status().await {
        Ok(s) => axum::Json(json!({
            "ready": s.ready,
            "indexed_files": s.indexed_files,
            "pending_files": s.pending_files,
            "failed_files": s.failed_files,
            "model_name": s.model_name,
            "phase": progress.phase,
            "files_per_second": progress.files_per_second,
            "eta_seconds": progress.eta_seconds,
            "ingest_error": s.ingest_error,
        }))
        .into_response(),
        Err(e) => error(e),
    }
}
