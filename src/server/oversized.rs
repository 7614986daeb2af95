//! The contract says an oversized request is INVALID_ARGUMENT, its message
//! starting with the field; tonic refuses a message over the decoding limit
//! with OUT_OF_RANGE and its own words before any handler runs. This wrapper
//! rewrites exactly that status (recognised by tonic's message), naming the
//! field that carries the bulk and the setting, and leaves every other
//! response alone.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::codegen::{Future, Service};
use tonic::server::NamedService;

#[derive(Debug, Clone)]
pub struct OversizedIsInvalid<S>(pub S);

impl<S: NamedService> NamedService for OversizedIsInvalid<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, RB> Service<Request<B>> for OversizedIsInvalid<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let field = bulk_field(req.uri().path());
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let headers = resp.headers_mut();
            let out_of_range = headers.get("grpc-status").is_some_and(|v| v == "11");
            let too_large = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
            if out_of_range && too_large {
                headers.insert("grpc-status", HeaderValue::from_static("3"));
                let message = format!(
                    "{field}: the request is larger than the server accepts ([server] max_message_bytes)"
                );
                if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                    headers.insert("grpc-message", v);
                }
            }
            Ok(resp)
        })
    }
}

/// The field that makes a request of this method large.
fn bulk_field(path: &str) -> &'static str {
    match path.rsplit('/').next().unwrap_or_default() {
        "SearchByImage" | "Classify" => "image",
        "Search" => "text",
        _ => "request",
    }
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`,
/// as `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
