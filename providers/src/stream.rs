//! A provider's streamed HTTP answer as [`Chunk`]s: the bytes go through the shared
//! [`ChunkDecoder`]; this side adds only the idle timeout between reads.

use std::collections::VecDeque;
use std::time::Duration;

use cognomega_core::ai::Failure;
use futures::StreamExt as _;

use crate::protocol::{ChunkDecoder, Protocol};
use crate::{Chunk, ChunkStream};

struct State {
    bytes: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: ChunkDecoder,
    ready: VecDeque<Chunk>,
    ended: bool,
}

/// The chunks of `response`, failing when nothing arrives within `idle`.
pub(crate) fn chunks(
    response: reqwest::Response,
    protocol: Protocol,
    idle: Duration,
) -> ChunkStream {
    let state = State {
        bytes: response.bytes_stream().boxed(),
        decoder: ChunkDecoder::new(protocol),
        ready: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(Some(state), move |state| async move {
        let mut s = state?;
        loop {
            if let Some(chunk) = s.ready.pop_front() {
                return Some((Ok(chunk), Some(s)));
            }
            if s.ended || s.decoder.is_done() {
                return None;
            }
            let read = match tokio::time::timeout(idle, s.bytes.next()).await {
                Err(_) => Err(Failure::Timeout),
                Ok(None) => {
                    s.ended = true;
                    s.decoder.finish()
                }
                Ok(Some(Err(e))) => Err(crate::transport(&e)),
                Ok(Some(Ok(bytes))) => s.decoder.push(&bytes),
            };
            match read {
                Ok(chunks) => s.ready.extend(chunks),
                Err(f) => return Some((Err(f), None)),
            }
        }
    })
    .boxed()
}
