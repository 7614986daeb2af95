//! The contract says an oversized request is INVALID_ARGUMENT, its message
//! starting with the field; tonic refuses a message over the decoding limit
//! with OUT_OF_RANGE and its own words before any handler runs. This wrapper
//! rewrites exactly that status (recognised by tonic's message), naming the
//! field that carries the bulk and the setting, and leaves every other
//! response alone.

use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{Request, Response};
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
            // tonic reads and writes its own statuses, `grpc-message`'s
            // percent-encoding included.
            if let Some(status) = tonic::Status::from_header_map(headers)
                && status.code() == tonic::Code::OutOfRange
                && status.message().contains("too large")
            {
                // tonic's words keep the sizes (found, and the limit).
                let invalid = tonic::Status::invalid_argument(format!(
                    "{field}: the request is larger than the server accepts ([server] max_message_bytes): {}",
                    status.message()
                ));
                // Only fails on a message that cannot be a header: tonic's own stays.
                let _ = invalid.add_header(headers);
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
