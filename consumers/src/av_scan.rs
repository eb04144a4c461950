//! `av-scan` → stream the uploaded object to clamd (INSTREAM). `OK` ⇒ clean; `FOUND` ⇒ the
//! object moves under `quarantine/` and the upload is infected with the signature's name;
//! clamd unreachable or answering an error ⇒ retried with backoff, never marked clean, and after
//! `max_retries` the upload is `scan_failed` with its message in `av-scan.dlq` (replaying it
//! scans again).

use cognomega_core::queue::{BatchHandler, HandlerError, MessageBatch};
use cognomega_stores::clamd::{Clamd, ScanVerdict};
use cognomega_stores::objects::{ObjectKey, Objects};
use cognomega_stores::{uploads, Database};

pub use cognomega_core::queue::catalog::av_scan::{queue, settings, ScanMessage, QUEUE};

/// The scanner.
#[derive(Debug, Clone)]
pub struct Scanner {
    db: Database,
    objects: Objects,
    clamd: Clamd,
    max_deliveries: u32,
}

impl Scanner {
    /// A scanner sending uploads to `clamd`.
    #[must_use]
    pub fn new(db: Database, objects: Objects, clamd: Clamd) -> Self {
        Self {
            db,
            objects,
            clamd,
            max_deliveries: settings().max_deliveries(),
        }
    }

    /// For a queue consumed with other settings than [`settings`]: the delivery on which a
    /// failed scan becomes `scan_failed`.
    #[must_use]
    pub fn with_max_deliveries(mut self, max_deliveries: u32) -> Self {
        self.max_deliveries = max_deliveries;
        self
    }

    async fn scan(&self, key: &str, attempts: u32) -> Result<(), HandlerError> {
        let Some(upload) = uploads::get(&self.db, key, None)
            .await
            .map_err(HandlerError::retryable)?
        else {
            return Ok(());
        };
        // Already decided (a redelivery after the verdict was recorded).
        if !matches!(upload.scan.as_str(), "pending" | "scan_failed") {
            return Ok(());
        }
        let object_key = ObjectKey::parse(&upload.object_key).map_err(HandlerError::fatal)?;
        let object = match self.objects.get(&object_key).await {
            Ok(o) => o,
            Err(e) if e.is_not_found() => {
                uploads::set_scan(
                    &self.db,
                    key,
                    "scan_failed",
                    None,
                    Some("the object is gone"),
                    None,
                )
                .await
                .map_err(HandlerError::retryable)?;
                return Ok(());
            }
            Err(e) => return Err(self.failed(key, attempts, e.to_string()).await),
        };
        match self.clamd.scan_stream(object.stream).await {
            Ok(ScanVerdict::Clean) => {
                uploads::set_scan(&self.db, key, "clean", None, None, None)
                    .await
                    .map_err(HandlerError::retryable)?;
                tracing::info!(key, "upload is clean");
                Ok(())
            }
            Ok(ScanVerdict::Infected { signature }) => {
                let quarantine = ObjectKey::parse(&format!("quarantine/{}", upload.object_key))
                    .map_err(HandlerError::fatal)?;
                // Record first: from this commit on the file is never served, even if the move
                // below fails or the process dies before it (a redelivery skips a decided upload;
                // the object is then still under its upload key, flagged infected).
                uploads::set_scan(
                    &self.db,
                    key,
                    "infected",
                    Some(&signature),
                    None,
                    Some(quarantine.as_str()),
                )
                .await
                .map_err(HandlerError::retryable)?;
                if let Err(e) = self.objects.rename(&object_key, &quarantine).await {
                    tracing::error!(key, error = %e, "infected upload recorded but not moved to quarantine");
                }
                tracing::warn!(key, signature, "upload infected: quarantined");
                Ok(())
            }
            Err(e) => Err(self.failed(key, attempts, e.to_string()).await),
        }
    }

    /// A scan without a verdict: retried; on the last delivery the upload becomes `scan_failed`.
    async fn failed(&self, key: &str, attempts: u32, why: String) -> HandlerError {
        tracing::warn!(key, attempts, error = %why, "scan failed");
        if attempts >= self.max_deliveries {
            if let Err(e) =
                uploads::set_scan(&self.db, key, "scan_failed", None, Some(&why), None).await
            {
                tracing::warn!(key, error = %e, "could not record scan_failed");
            }
        }
        HandlerError::Retryable(why)
    }
}

#[async_trait::async_trait]
impl BatchHandler for Scanner {
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError> {
        let messages: Vec<_> = batch
            .messages()
            .iter()
            .map(|m| (m.id, m.attempts, m.json::<ScanMessage>()))
            .collect();
        for (id, attempts, body) in messages {
            match body {
                Ok(msg) => {
                    self.scan(&msg.key, attempts).await?;
                    batch.ack(id);
                }
                Err(e) => {
                    batch.fail(id, format!("not a scan message: {e}"));
                }
            }
        }
        Ok(())
    }
}
