//! What a client receives from `POST /api/si/ask`, in both shapes: the JSON answer, its
//! headers, and the Server-Sent Events of a streamed answer (`token` events, then `done`).

use cognomega_core::ai::ProviderId;
use serde_json::{json, Value};

use crate::Usage;

/// The tokens a request is billed for, and whether they were counted here because the
/// provider reported none (or the stream did not end normally).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billable {
    /// Token counts.
    pub usage: Usage,
    /// Counted with [`crate::tokens`] rather than reported.
    pub estimated: bool,
}

/// The JSON answer.
#[must_use]
pub fn body(
    request_id: &str,
    provider: ProviderId,
    model: &str,
    output: &str,
    billable: Billable,
    credits: i64,
) -> Value {
    json!({
        "id": request_id,
        "provider": provider.as_str(),
        "model": model,
        "output": output,
        "usage": usage(billable),
        "credits_used": credits,
    })
}

fn usage(b: Billable) -> Value {
    json!({
        "tokens_in": b.usage.tokens_in,
        "tokens_out": b.usage.tokens_out,
        "estimated": b.estimated,
    })
}

/// The headers of a JSON answer (lower-case names).
#[must_use]
pub fn headers(
    provider: ProviderId,
    model: &str,
    billable: Billable,
    credits: i64,
    balance: i64,
) -> [(&'static str, String); 6] {
    [
        ("x-provider", provider.as_str().to_owned()),
        ("x-model", model.to_owned()),
        ("x-tokens-in", billable.usage.tokens_in.to_string()),
        ("x-tokens-out", billable.usage.tokens_out.to_string()),
        ("x-credits-used", credits.to_string()),
        ("x-credits-balance", balance.to_string()),
    ]
}

/// How a stream ended.
#[must_use]
pub fn finish_label(client_gone: bool, failed: bool) -> &'static str {
    if client_gone {
        "client_disconnected"
    } else if failed {
        "provider_error"
    } else {
        "stop"
    }
}

/// The data of a `token` event.
#[must_use]
pub fn token_event(text: &str) -> String {
    json!({ "text": text }).to_string()
}

/// The data of the `error` event sent when the provider fails mid-stream.
#[must_use]
pub fn error_event(provider: ProviderId, failure: &cognomega_core::ai::Failure) -> String {
    json!({"code": "provider_failed", "message": format!("{provider}: {failure}")}).to_string()
}

/// The data of the final `done` event: usage and credits, or why the answer was not billed.
#[must_use]
pub fn done_event(
    request_id: &str,
    provider: ProviderId,
    model: &str,
    billable: Billable,
    billed: Result<(i64, i64), (&str, &str)>,
    finish: &str,
) -> String {
    match billed {
        Ok((credits, balance)) => json!({
            "id": request_id,
            "provider": provider.as_str(),
            "model": model,
            "usage": usage(billable),
            "credits_used": credits,
            "credits_balance": balance,
            "finish": finish,
        }),
        Err((code, message)) => {
            json!({"id": request_id, "error": {"code": code, "message": message}})
        }
    }
    .to_string()
}

/// One Server-Sent Event on the wire.
#[must_use]
pub fn sse_frame(event: &str, data: &str) -> String {
    let mut out = format!("event: {event}\n");
    for line in data.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The tokens to bill: the provider's report when it made one and the answer ended normally,
/// else counted here from the prompt and the output produced.
#[must_use]
pub fn billable(
    reported: Option<Usage>,
    complete: bool,
    messages: &[cognomega_core::ai::Message],
    output: &str,
) -> Billable {
    match reported {
        Some(usage) if complete => Billable {
            usage,
            estimated: false,
        },
        _ => Billable {
            usage: Usage {
                tokens_in: crate::tokens::count_prompt(messages),
                tokens_out: crate::tokens::count(output),
            },
            estimated: true,
        },
    }
}
