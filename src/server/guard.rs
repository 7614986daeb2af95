//! The door of the `dualsight.v1` service: checks the bearer token (when the
//! daemon has one) before a request's body is read, and records each
//! request's method, status code and time in the metrics. Health and
//! reflection are not behind it, so probes work without the token.
//!
//! The code is read from the response headers: tonic answers every unary
//! error as a trailers-only response (status in the headers), and a response
//! whose headers carry no status began normally (OK). A stream that fails
//! after it began (none of ours does) would count as OK.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{Future, Service};
use tonic::server::NamedService;

use super::auth::Token;
use crate::metrics::Metrics;

/// The methods of `dualsight.v1.DualSight`: any other path is counted as
/// `unknown`, so a client cannot grow the metrics with made-up names.
const METHODS: [&str; 7] = [
    "Search",
    "SearchByImage",
    "Status",
    "WatchProgress",
    "Classify",
    "ListFailures",
    "GetThumbnail",
];

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    token: Option<Arc<Token>>,
    metrics: Option<Arc<Metrics>>,
}

impl<S> Guard<S> {
    pub fn new(inner: S, token: Option<Token>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            inner,
            token: token.map(Arc::new),
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<Request<B>> for Guard<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let name = req.uri().path().rsplit('/').next().unwrap_or_default();
        let method = METHODS
            .into_iter()
            .find(|m| *m == name)
            .unwrap_or("unknown");
        let metrics = self.metrics.clone();
        let record = move |resp: &Response<Body>| {
            if let Some(m) = &metrics {
                m.observe_request(method, status_code(resp), started.elapsed());
            }
        };
        if let Some(token) = &self.token
            && !token.accepts(req.headers().get("authorization"))
        {
            let resp = tonic::Status::unauthenticated(
                "missing or wrong token: send `authorization: Bearer <token>` (the CLI: --token-file)",
            )
            .into_http();
            record(&resp);
            return Box::pin(std::future::ready(Ok(resp)));
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            record(&resp);
            Ok(resp)
        })
    }
}

/// The gRPC status of a response by its headers (see the module comment).
fn status_code<T>(resp: &Response<T>) -> tonic::Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}
