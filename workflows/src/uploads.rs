//! Scanning an upload, on either host: the upload's object goes to the virus scanner; clean ⇒
//! `clean`; infected ⇒ the upload says `infected` with the signature (recorded first: from that
//! commit on the file is never served) and its object moves under `quarantine/`; an object gone
//! ⇒ `scan_failed`; a scanner that cannot answer ⇒ redelivered, never marked clean, and on the
//! last delivery `scan_failed` with the reason (a replay from the dead-letter queue scans it
//! again).

use cognomega_core::files::scan::{self, UPLOAD_FOR_SCAN};
use cognomega_core::queue::MaybeSendSync;
use cognomega_core::sql::{Executor, SqlError};

/// What the scanner said about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    /// Nothing found.
    Clean,
    /// A signature matched.
    Infected(String),
    /// No object under the upload's key.
    Missing,
}

/// What the scan workflow needs from its host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait ScanHost: MaybeSendSync {
    /// Single statements, each committed on its own.
    fn db(&self) -> Box<dyn Executor + '_>;

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// Sends the object at `object_key` to the virus scanner (natively streamed to clamd, on
    /// the edge over a TCP socket); `Err` when no verdict came back.
    async fn scan(&self, object_key: &str) -> Result<Scanned, String>;

    /// Moves an object (an infected upload under `quarantine/`).
    async fn quarantine(&self, from: &str, to: &str) -> Result<(), String>;
}

/// How a delivery of a scan message ended; the host acks it for every outcome but
/// [`ScanOutcome::Retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// The upload is gone, or an earlier delivery recorded its verdict.
    Decided,
    /// Clean: served from now on.
    Clean,
    /// Infected with `signature`; `moved` says whether its object reached quarantine (it is
    /// never served either way).
    Infected {
        /// The signature's name.
        signature: String,
        /// The move's failure, if any.
        not_moved: Option<String>,
    },
    /// Its object is gone: `scan_failed`.
    Missing,
    /// No verdict: redeliver; `recorded` when this was the last delivery and the upload is now
    /// `scan_failed`.
    Retry {
        /// Why.
        reason: String,
        /// The upload was marked `scan_failed`.
        recorded: bool,
    },
}

impl ScanOutcome {
    /// The host acks the message (anything but a retry).
    #[must_use]
    pub fn ack(&self) -> bool {
        !matches!(self, Self::Retry { .. })
    }
}

/// Scans upload `key` on delivery `attempts` (`None` when the broker does not say: the
/// dead-letter consumer then records `scan_failed`) of at most `max_deliveries`. `Err` only
/// when the database could not be reached: redeliver.
pub async fn scan<H: ScanHost + ?Sized>(
    host: &H,
    key: &str,
    attempts: Option<u32>,
    max_deliveries: u32,
) -> Result<ScanOutcome, SqlError> {
    let Some(row) = host.db().query_opt(UPLOAD_FOR_SCAN, &[key.into()]).await? else {
        return Ok(ScanOutcome::Decided);
    };
    let (object_key, state) = (row.text(0)?, row.text(1)?);
    if !scan::undecided(&state) {
        return Ok(ScanOutcome::Decided);
    }
    let record = |state: &'static str,
                  signature: Option<String>,
                  error: Option<String>,
                  moved_to: Option<String>| async move {
        scan::set_scan(
            &mut *host.db(),
            key,
            state,
            signature.as_deref(),
            error.as_deref(),
            moved_to.as_deref(),
            host.now_ms(),
        )
        .await
    };
    match host.scan(&object_key).await {
        Ok(Scanned::Clean) => {
            record("clean", None, None, None).await?;
            Ok(ScanOutcome::Clean)
        }
        Ok(Scanned::Missing) => {
            let why = "the object is gone".to_owned();
            record("scan_failed", None, Some(why), None).await?;
            Ok(ScanOutcome::Missing)
        }
        Ok(Scanned::Infected(signature)) => {
            let quarantine = format!("quarantine/{object_key}");
            // Recorded first: from this commit on the file is never served, even if the move
            // below fails or the host dies before it (a redelivery skips a decided upload; the
            // object then stays under its upload key, flagged infected).
            record(
                "infected",
                Some(signature.clone()),
                None,
                Some(quarantine.clone()),
            )
            .await?;
            let not_moved = host.quarantine(&object_key, &quarantine).await.err();
            Ok(ScanOutcome::Infected {
                signature,
                not_moved,
            })
        }
        Err(reason) => {
            let recorded = attempts.is_some_and(|a| a >= max_deliveries);
            if recorded {
                record("scan_failed", None, Some(reason.clone()), None).await?;
            }
            Ok(ScanOutcome::Retry { reason, recorded })
        }
    }
}
