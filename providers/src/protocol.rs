//! The providers' wire protocols without a transport: what a call sends, how an answer, a
//! streamed event and an error status are read. The native HTTP adapters (reqwest) and the
//! edge (`fetch` and the Workers AI binding) both speak through these functions, so the two
//! shapes cannot drift apart.
//!
//! - Workers AI REST: `POST {base}/accounts/{account}/ai/run/{model}` with
//!   `{"messages","max_tokens","stream"}`; the answer is `{"result":{"response","usage"},
//!   "success"}` (the AI binding returns the `result` object itself); a stream is SSE of
//!   `{"response":"…"}` events, the last with `usage`, then `[DONE]`.
//! - OpenAI-compatible chat completions (OpenAI, Groq, llama.cpp, Ollama, vLLM):
//!   `POST {base}/chat/completions`; streams with `stream_options.include_usage`, so the last
//!   chunk carries the token counts (Groq also sends them as `x_groq.usage`).

use cognomega_core::ai::{Failure, ProviderId};
use serde_json::{json, Value};

use crate::sse::SseDecoder;
use crate::{Call, Chunk, Completion, ProviderSettings, Usage};

/// How a provider is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Cloudflare Workers AI (REST, or the binding on the edge).
    WorkersAi,
    /// OpenAI-compatible chat completions.
    OpenAiCompatible,
}

impl Protocol {
    /// The protocol of `provider`.
    #[must_use]
    pub fn of(provider: ProviderId) -> Self {
        match provider {
            ProviderId::Cfai => Self::WorkersAi,
            ProviderId::Groq | ProviderId::Openai => Self::OpenAiCompatible,
        }
    }

    /// Where a call to `model` goes over HTTP.
    #[must_use]
    pub fn url(self, settings: &ProviderSettings, model: &str) -> String {
        match self {
            // Model names contain `@` and `/`, which the REST path takes as they are.
            Self::WorkersAi => format!(
                "{}/accounts/{}/ai/run/{model}",
                settings.base_url,
                settings.account_id.as_deref().unwrap_or_default()
            ),
            Self::OpenAiCompatible => format!("{}/chat/completions", settings.base_url),
        }
    }

    /// The request body of `call`.
    #[must_use]
    pub fn body(self, call: &Call, stream: bool) -> Value {
        match self {
            Self::WorkersAi => json!({
                "messages": call.messages,
                "max_tokens": call.max_tokens,
                "stream": stream,
            }),
            Self::OpenAiCompatible => {
                let mut body = json!({
                    "model": call.model,
                    "messages": call.messages,
                    "max_tokens": call.max_tokens,
                    "stream": stream,
                });
                if stream {
                    body["stream_options"] = json!({ "include_usage": true });
                }
                body
            }
        }
    }

    /// A whole answer (the HTTP body of a 2xx answer) to `call`.
    pub fn completion(self, call: &Call, body: &Value) -> Result<Completion, Failure> {
        match self {
            Self::WorkersAi => {
                if body.get("success").and_then(Value::as_bool) == Some(false) {
                    let message = body
                        .pointer("/errors/0/message")
                        .and_then(Value::as_str)
                        .unwrap_or("success: false");
                    return Err(Failure::Server(200, short(message)));
                }
                let result = body
                    .get("result")
                    .ok_or_else(|| Failure::Protocol("no result".into()))?;
                workers_ai_result(call, result)
            }
            Self::OpenAiCompatible => {
                let output = body
                    .pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Failure::Protocol("no choices[0].message.content".into()))?
                    .to_owned();
                Ok(Completion {
                    output,
                    model: body
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or(&call.model)
                        .to_owned(),
                    usage: openai_usage(body),
                })
            }
        }
    }

    /// The chunks of one streamed event's `data` (not `[DONE]`, see [`is_done`]).
    pub fn event(self, data: &str) -> Result<Vec<Chunk>, Failure> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| Failure::Protocol(format!("event is not JSON: {e}")))?;
        let (text, usage) = match self {
            Self::WorkersAi => (
                v.get("response").and_then(Value::as_str),
                v.get("usage").and_then(usage_from),
            ),
            Self::OpenAiCompatible => (
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str),
                openai_usage(&v),
            ),
        };
        let mut out = Vec::new();
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            out.push(Chunk::Text(t.to_owned()));
        }
        if let Some(u) = usage {
            out.push(Chunk::Usage(u));
        }
        Ok(out)
    }
}

/// The Workers AI `result` object (`{"response","usage"}`): what the REST answer wraps and
/// what the AI binding returns as it is.
pub fn workers_ai_result(call: &Call, result: &Value) -> Result<Completion, Failure> {
    let output = result
        .get("response")
        .and_then(Value::as_str)
        .ok_or_else(|| Failure::Protocol("no result.response".into()))?
        .to_owned();
    Ok(Completion {
        output,
        model: call.model.clone(),
        usage: result.get("usage").and_then(usage_from),
    })
}

/// Whether a streamed event's `data` ends the stream.
#[must_use]
pub fn is_done(data: &str) -> bool {
    data.trim() == "[DONE]"
}

/// `{"prompt_tokens","completion_tokens"}`, the usage shape both protocols report.
#[must_use]
pub fn usage_from(u: &Value) -> Option<Usage> {
    Some(Usage {
        tokens_in: u.get("prompt_tokens")?.as_u64()?,
        tokens_out: u.get("completion_tokens")?.as_u64()?,
    })
}

/// `usage` (or Groq's `x_groq.usage`) of an OpenAI-compatible answer or chunk.
fn openai_usage(v: &Value) -> Option<Usage> {
    let u = v
        .get("usage")
        .filter(|u| !u.is_null())
        .or_else(|| v.pointer("/x_groq/usage"))?;
    usage_from(u)
}

/// Maps a non-2xx status and its body to a [`Failure`]: 429 and 5xx fall back to the next
/// provider, any other status is the request's fault.
#[must_use]
pub fn status_failure(status: u16, body: &str) -> Failure {
    let message = provider_message(body);
    match status {
        429 => Failure::RateLimited,
        500..=599 => Failure::Server(status, message),
        _ => Failure::Rejected(status, message),
    }
}

/// The error message inside a provider's error body (`{"error":{"message"}}` for OpenAI,
/// `{"errors":[{"message"}]}` for Cloudflare), else the body's start.
fn provider_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.pointer("/errors/0/message"))
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str().map(str::to_owned))
    });
    short(&found.unwrap_or_else(|| body.to_owned()))
}

/// At most 300 characters, on one line.
#[must_use]
pub fn short(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_owned()
}

/// A streamed answer's bytes, as they arrive, turned into [`Chunk`]s: the SSE framing, then
/// each event read by its protocol, until `[DONE]`. Every transport feeds it what it reads
/// (and applies its own idle timeout between reads).
#[derive(Debug)]
pub struct ChunkDecoder {
    protocol: Protocol,
    sse: SseDecoder,
    done: bool,
}

impl ChunkDecoder {
    /// A decoder of `protocol`'s stream.
    #[must_use]
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            sse: SseDecoder::default(),
            done: false,
        }
    }

    /// The chunks completed by `bytes` (nothing once `[DONE]` was seen).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Chunk>, Failure> {
        let events = self.sse.push(bytes)?;
        self.read(events)
    }

    /// The end of the bytes: the chunks of an event left without its blank line.
    pub fn finish(&mut self) -> Result<Vec<Chunk>, Failure> {
        let events = self.sse.finish();
        let chunks = self.read(events);
        self.done = true;
        chunks
    }

    /// Whether the stream ended (`[DONE]`, or [`ChunkDecoder::finish`]).
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn read(&mut self, events: Vec<String>) -> Result<Vec<Chunk>, Failure> {
        let mut out = Vec::new();
        for data in events {
            if self.done {
                break;
            }
            if is_done(&data) {
                self.done = true;
                break;
            }
            out.extend(self.protocol.event(&data)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cognomega_core::ai::Message;

    fn call() -> Call {
        Call {
            model: "m-1".into(),
            messages: vec![Message {
                role: "user".into(),
                content: "hi".into(),
            }],
            max_tokens: 7,
        }
    }

    #[test]
    fn statuses_classify() {
        assert_eq!(status_failure(429, ""), Failure::RateLimited);
        assert!(
            matches!(status_failure(503, r#"{"error":{"message":"busy"}}"#), Failure::Server(503, m) if m == "busy")
        );
        assert!(
            matches!(status_failure(400, r#"{"errors":[{"message":"bad model"}]}"#), Failure::Rejected(400, m) if m == "bad model")
        );
        assert!(
            matches!(status_failure(401, "nope\nnope"), Failure::Rejected(401, m) if m == "nope nope")
        );
    }

    #[test]
    fn bodies_and_answers() {
        let body = Protocol::OpenAiCompatible.body(&call(), true);
        assert_eq!(body["model"], "m-1");
        assert_eq!(body["stream_options"]["include_usage"], true);
        let body = Protocol::WorkersAi.body(&call(), false);
        assert!(body.get("model").is_none(), "the model is in the URL");
        assert_eq!(body["max_tokens"], 7);
        let answer = json!({"result": {"response": "yo", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}, "success": true});
        let c = Protocol::WorkersAi.completion(&call(), &answer);
        assert!(
            matches!(c, Ok(ref c) if c.output == "yo" && c.usage == Some(Usage { tokens_in: 3, tokens_out: 1 })),
            "{c:?}"
        );
        let failed = json!({"success": false, "errors": [{"message": "overloaded"}]});
        assert!(matches!(
            Protocol::WorkersAi.completion(&call(), &failed),
            Err(Failure::Server(200, _))
        ));
        let answer = json!({"model": "served", "choices": [{"message": {"content": "hey"}}], "x_groq": {"usage": {"prompt_tokens": 2, "completion_tokens": 5}}});
        let c = Protocol::OpenAiCompatible.completion(&call(), &answer);
        assert!(
            matches!(c, Ok(ref c) if c.model == "served" && c.usage.map(|u| u.tokens_out) == Some(5)),
            "{c:?}"
        );
        assert!(Protocol::OpenAiCompatible
            .completion(&call(), &json!({}))
            .is_err());
    }

    #[test]
    fn streams_decode_across_reads() {
        let mut d = ChunkDecoder::new(Protocol::WorkersAi);
        let wire = b"data: {\"response\":\"he\"}\r\n\r\ndata: {\"response\":\"llo\"}\n\ndata: {\"response\":\"\",\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\ndata: [DONE]\n\ndata: {\"response\":\"after\"}\n\n";
        let mut chunks = Vec::new();
        // One byte at a time: every split point of the framing.
        for b in wire.iter() {
            chunks.extend(d.push(std::slice::from_ref(b)).unwrap_or_default());
        }
        assert!(d.is_done());
        assert_eq!(
            chunks,
            [
                Chunk::Text("he".into()),
                Chunk::Text("llo".into()),
                Chunk::Usage(Usage {
                    tokens_in: 4,
                    tokens_out: 2
                })
            ]
        );
        let mut d = ChunkDecoder::new(Protocol::OpenAiCompatible);
        let chunks = d.push(b": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n");
        assert!(matches!(chunks, Ok(ref c) if c.len() == 2), "{chunks:?}");
        assert!(!d.is_done());
        assert!(matches!(
            d.push(b"data: not json\n\n"),
            Err(Failure::Protocol(_))
        ));
    }
}
