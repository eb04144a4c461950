//! Guarantees of the public surface that no single route can give:
//! - a request body that stalls (no bytes for [`Timeouts::body_idle`]) is cut off with 408, so
//!   a slow client cannot hold a handler, a buffer or a database transaction open;
//! - every error response is the JSON envelope, whatever produced it: axum's extractor
//!   rejections (a body over the route's limit, a malformed path or query) and tower layers
//!   answer in plain text, and this layer rewrites those.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::BodyExt as _;

use crate::ApiError;

/// Slow-client limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time a client gets to send a request's headers (enforced by the native server's
    /// connection handling).
    pub header_read: Duration,
    /// Longest pause between two chunks of a request body.
    pub body_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(15),
            body_idle: Duration::from_secs(30),
        }
    }
}

/// Largest plain-text error body carried over into an envelope's message.
const MAX_TEXT_ERROR: usize = 1024;

pub(crate) async fn layer(State(idle): State<Duration>, req: Request, next: Next) -> Response {
    let stalled = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| idle_limited(body, idle, stalled.clone()));
    let response = next.run(req).await;
    if stalled.load(Ordering::Acquire) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body paused for more than {} s; send it without stalling and retry",
                idle.as_secs_f64()
            ),
        )
        .into_response();
    }
    envelope_errors(response).await
}

/// The body, failing when no chunk arrives for `idle` (and flagging it, so the layer answers 408
/// whatever the handler made of the failed read).
fn idle_limited(body: Body, idle: Duration, stalled: Arc<AtomicBool>) -> Body {
    let chunks = body.into_data_stream();
    let stream = futures::stream::unfold(Some(chunks), move |state| {
        let stalled = stalled.clone();
        async move {
            let mut chunks = state?;
            match tokio::time::timeout(idle, chunks.next()).await {
                Ok(Some(item)) => Some((item, Some(chunks))),
                Ok(None) => None,
                Err(_) => {
                    stalled.store(true, Ordering::Release);
                    let err = axum::Error::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "request body stalled",
                    ));
                    Some((Err(err), None))
                }
            }
        }
    });
    Body::from_stream(stream)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start().to_ascii_lowercase();
            v.starts_with("application/json") || v.starts_with("application/problem+json")
        })
}

/// A stable code for an error that did not come with one.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

async fn envelope_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, MAX_TEXT_ERROR)
        .collect()
        .await
    {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_owned(),
        Err(_) => String::new(),
    };
    let message = if status.is_server_error() {
        // Never pass a lower layer's internals to the client; they are in the logs.
        tracing::error!(%status, detail = %text, "plain-text error response replaced");
        "internal error; retry later, and report the request id if it persists".to_owned()
    } else if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned()
    } else {
        text
    };
    let rewritten = ApiError::new(status, code_for(status), message).into_response();
    let (new_parts, new_body) = rewritten.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    for name in [CONTENT_TYPE] {
        if let Some(v) = new_parts.headers.get(&name) {
            parts.headers.insert(name, v.clone());
        }
    }
    Response::from_parts(parts, new_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_text_errors_become_envelopes() {
        let plain = (
            StatusCode::PAYLOAD_TOO_LARGE,
            [("retry-after", "3")],
            "Failed to buffer the request body: length limit exceeded",
        )
            .into_response();
        let out = envelope_errors(plain).await;
        assert_eq!(out.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(out.headers()["retry-after"], "3");
        assert!(is_json(&out));
        let bytes = out
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(v["error"]["code"], "body_too_large");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("length limit")));
    }

    #[tokio::test]
    async fn server_errors_hide_their_text_and_success_passes() {
        let plain = (StatusCode::BAD_GATEWAY, "upstream secret detail").into_response();
        let out = envelope_errors(plain).await;
        let bytes = out
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        assert!(!String::from_utf8_lossy(&bytes).contains("secret"));
        let ok = (StatusCode::OK, "fine").into_response();
        let out = envelope_errors(ok).await;
        assert!(!is_json(&out));
    }
}
