//! WebSocket clients' reads for the voice session tests: the next JSON frame (and the speech
//! before it), and the close frame's code and reason.

use std::time::Duration;

use futures::{Stream, StreamExt as _};
use tokio_tungstenite::tungstenite::{Error, Message};

/// A client's WebSocket over plain TCP.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a read waits for the server.
const WAIT: Duration = Duration::from_secs(120);

/// The next JSON text frame, and the binary frames before it; an error when the socket closes
/// first.
pub async fn next_json<S>(ws: &mut S) -> anyhow::Result<(Vec<Vec<u8>>, serde_json::Value)>
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    let mut audio = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the session ended"))??;
        match msg {
            Message::Binary(b) => audio.push(b.to_vec()),
            Message::Text(t) => return Ok((audio, serde_json::from_str(&t)?)),
            Message::Close(frame) => anyhow::bail!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server closes the socket: its close code and reason.
pub async fn close_frame<S>(ws: &mut S) -> anyhow::Result<(u16, String)>
where
    S: Stream<Item = Result<Message, Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await? {
            Some(Ok(Message::Close(Some(f)))) => return Ok((f.code.into(), f.reason.to_string())),
            Some(Ok(Message::Close(None))) | None => anyhow::bail!("closed without a code"),
            Some(Ok(_)) => {}
            Some(Err(e)) => anyhow::bail!("socket error: {e}"),
        }
    }
}
