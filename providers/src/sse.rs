//! Server-Sent Events from a provider: the `data` of each event, until `[DONE]` or the end,
//! failing when no event arrives within the idle timeout.

use std::time::Duration;

use cognomega_core::ai::Failure;
use serde_json::Value;

use crate::{Chunk, ChunkStream, Usage};
use eventsource_stream::Eventsource as _;
use futures::stream::BoxStream;
use futures::StreamExt as _;

/// The `data` fields of the events of `response`.
pub(crate) fn data_events(
    response: reqwest::Response,
    idle: Duration,
) -> BoxStream<'static, Result<String, Failure>> {
    let events = response.bytes_stream().eventsource();
    futures::stream::unfold(Some(events), move |state| async move {
        let mut events = state?;
        match tokio::time::timeout(idle, events.next()).await {
            Err(_) => Some((Err(Failure::Timeout), None)),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some((Err(Failure::Protocol(crate::short(&e.to_string()))), None)),
            Ok(Some(Ok(event))) if event.data.trim() == "[DONE]" => None,
            Ok(Some(Ok(event))) => Some((Ok(event.data), Some(events))),
        }
    })
    .boxed()
}

/// A provider's stream of JSON events as [`Chunk`]s: `text` reads an event's piece of the
/// answer, `usage` its token counts (both protocols send them in their own places).
pub(crate) fn json_chunks(
    response: reqwest::Response,
    idle: Duration,
    text: fn(&Value) -> Option<&str>,
    usage: fn(&Value) -> Option<Usage>,
) -> ChunkStream {
    data_events(response, idle)
        .flat_map(move |data| {
            let out: Vec<Result<Chunk, Failure>> = match data {
                Err(f) => vec![Err(f)],
                Ok(data) => match serde_json::from_str::<Value>(&data) {
                    Err(e) => vec![Err(Failure::Protocol(format!("event is not JSON: {e}")))],
                    Ok(v) => {
                        let mut out = Vec::new();
                        if let Some(t) = text(&v).filter(|t| !t.is_empty()) {
                            out.push(Ok(Chunk::Text(t.to_owned())));
                        }
                        if let Some(u) = usage(&v) {
                            out.push(Ok(Chunk::Usage(u)));
                        }
                        out
                    }
                },
            };
            futures::stream::iter(out)
        })
        .boxed()
}
