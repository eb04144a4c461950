//! Server-Sent Events from a provider: the `data` of each event, until `[DONE]` or the end,
//! failing when no event arrives within the idle timeout.

use std::time::Duration;

use cognomega_core::ai::Failure;
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
