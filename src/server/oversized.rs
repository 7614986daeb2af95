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
            let tonic_says = headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            if out_of_range && tonic_says.contains("too large") {
                headers.insert("grpc-status", HeaderValue::from_static("3"));
                // tonic's words keep the sizes (found, and the limit).
                let message = format!(
                    "{field}: the request is larger than the server accepts ([server] max_message_bytes): {tonic_says}"
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

/// [`percent_encode`] undone; a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_percent_encoding() {
        let text = "image: 100% too large: found 34603013 bytes, the limit is: 33554432 bytes é";
        assert_eq!(percent_decode(&percent_encode(text)), text);
        assert_eq!(percent_decode("a%20b%2"), "a b%2");
    }
}
