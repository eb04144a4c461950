//! The operator's queue routes, shared by both hosts: the request rules of
//! `GET /admin/queues/{queue}/dlq`, `POST /admin/queues/{queue}/dlq/replay` and
//! `POST /admin/queues/{queue}/messages`, and the dead-letter listing's statement and row on
//! PostgreSQL (the native driver and the edge, whose dlq Worker records Cloudflare's dead
//! letters in the same table).

use crate::api::Refusal;
use crate::queue::{DeadMessage, MessageId, QueueName};
use crate::time::UnixMillis;

/// Dead messages of a dead-letter queue (`$1`), oldest first, at most `$2`; only the preview's
/// bytes travel.
pub const DEAD_LETTERS_POSTGRES: &str = "SELECT id, original_queue,
        COALESCE(failed_attempts, attempts)::bigint AS attempts, last_error,
        (extract(epoch FROM enqueued_at) * 1000)::bigint AS enqueued_at,
        (extract(epoch FROM dead_at) * 1000)::bigint AS dead_at,
        substring(body FROM 1 FOR 512) AS body
     FROM queue_messages WHERE queue = $1 AND state < 2 ORDER BY id LIMIT $2";

/// The largest body `POST /admin/queues/{queue}/messages` sends.
pub const MAX_INJECTED_BYTES: usize = 64 * 1024;

/// A row of a dead-letter listing.
#[must_use]
pub fn dead_message(
    id: i64,
    original_queue: Option<&str>,
    attempts: i64,
    error: Option<String>,
    enqueued_at: i64,
    dead_at: Option<i64>,
    body: &[u8],
) -> DeadMessage {
    DeadMessage {
        id: MessageId(id),
        original_queue: original_queue.and_then(|q| QueueName::parse(q).ok()),
        attempts: u32::try_from(attempts).unwrap_or(0),
        error,
        enqueued_at: UnixMillis(enqueued_at),
        dead_at: dead_at.map(UnixMillis),
        body_preview: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
    }
}

/// A queue named in a path.
pub fn queue_name(raw: &str) -> Result<QueueName, Refusal> {
    QueueName::parse(raw).map_err(|e| {
        Refusal::new(
            400,
            "invalid_queue",
            format!("{e}; GET /admin/queues lists the queues"),
        )
    })
}

/// The page size of a dead-letter listing (`?limit=`): 1..=1000, default 100.
pub fn dlq_limit(raw: Option<&str>) -> Result<usize, Refusal> {
    match raw {
        None => Ok(100),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n @ 1..=1000) => Ok(n),
            _ => Err(Refusal::new(
                400,
                "invalid_limit",
                format!("limit must be an integer 1..=1000, got {raw:?}"),
            )),
        },
    }
}

/// The dead messages a replay asks for: `{"ids": [..]}` (not empty), or no body for all.
pub fn replay_ids(body: &[u8]) -> Result<Option<Vec<i64>>, Refusal> {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Body {
        ids: Option<Vec<i64>>,
    }
    let body: Body = if body.iter().all(u8::is_ascii_whitespace) {
        Body::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            Refusal::new(
                400,
                "invalid_body",
                format!("expected {{\"ids\": [message ids]}} or no body (all): {e}"),
            )
        })?
    };
    if body.ids.as_ref().is_some_and(Vec::is_empty) {
        return Err(Refusal::new(
            400,
            "invalid_body",
            "ids is empty; leave it out to replay every dead message",
        ));
    }
    Ok(body.ids)
}

/// The body of an injected message: 1 byte ..= [`MAX_INJECTED_BYTES`].
pub fn check_injected(body: &[u8]) -> Result<(), Refusal> {
    if body.is_empty() {
        return Err(Refusal::new(
            400,
            "empty_message",
            "the body is the message: send 1 byte ..= 64 KiB",
        ));
    }
    if body.len() > MAX_INJECTED_BYTES {
        return Err(Refusal::new(
            413,
            "body_too_large",
            format!("the body is larger than {MAX_INJECTED_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_or_refused_precisely() {
        assert_eq!(dlq_limit(None).ok(), Some(100));
        assert_eq!(dlq_limit(Some("1000")).ok(), Some(1000));
        for bad in ["0", "1001", "x", "-1"] {
            assert_eq!(
                dlq_limit(Some(bad)).err().map(|r| r.code),
                Some("invalid_limit")
            );
        }
        assert_eq!(replay_ids(b" \n").ok(), Some(None));
        assert_eq!(replay_ids(br#"{"ids":[3,4]}"#).ok(), Some(Some(vec![3, 4])));
        for bad in [&br#"{"ids":[]}"#[..], br#"{"id":[1]}"#, b"[1]"] {
            assert_eq!(replay_ids(bad).err().map(|r| r.code), Some("invalid_body"));
        }
        assert_eq!(check_injected(b"").err().map(|r| r.status), Some(400));
        let big = vec![b'x'; MAX_INJECTED_BYTES + 1];
        assert_eq!(check_injected(&big).err().map(|r| r.status), Some(413));
        assert!(check_injected(&big[1..]).is_ok());
        assert_eq!(
            queue_name("no spaces").err().map(|r| r.code),
            Some("invalid_queue")
        );
        let dead = dead_message(7, Some("jobs.x"), 3, None, 1, Some(2), &[b'a'; 600]);
        assert_eq!((dead.body_preview.len(), dead.attempts), (512, 3));
    }
}
