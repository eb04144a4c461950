//! `av-scan` → stream the uploaded object to clamd (INSTREAM). `OK` ⇒ clean; `FOUND` ⇒ the
//! object moves under `quarantine/` and the upload is infected with the signature's name;
//! clamd unreachable or answering an error ⇒ retried with backoff, never marked clean, and after
//! `max_retries` the upload is `scan_failed` with its message in `av-scan.dlq` (replaying it
//! scans again).

use cognomega_core::queue::{HandlerError, MessageBatch};
use cognomega_core::sql::Executor;
use cognomega_stores::clamd::{Clamd, ScanVerdict};
use cognomega_stores::objects::{ObjectKey, Objects};
use cognomega_stores::Database;
use cognomega_workflows::uploads::{ScanHost, ScanOutcome, Scanned};

use crate::typed::{Decoded, TypedHandler, Unreadable};

pub use cognomega_core::queue::catalog::av_scan::{queue, settings, ScanMessage, QUEUE};

/// The scanner: the native host of the scan workflow (`cognomega_workflows::uploads`).
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
        let outcome =
            cognomega_workflows::uploads::scan(self, key, Some(attempts), self.max_deliveries)
                .await
                .map_err(HandlerError::retryable)?;
        match outcome {
            ScanOutcome::Decided => {}
            ScanOutcome::Clean => tracing::info!(key, "upload is clean"),
            ScanOutcome::Missing => tracing::warn!(key, "upload's object is gone: scan_failed"),
            ScanOutcome::Infected {
                signature,
                not_moved,
            } => {
                if let Some(e) = not_moved {
                    tracing::error!(key, error = %e, "infected upload recorded but not moved to quarantine");
                }
                tracing::warn!(key, signature, "upload infected: quarantined");
            }
            ScanOutcome::Retry { reason, recorded } => {
                tracing::warn!(key, attempts, error = %reason, scan_failed = recorded, "scan failed");
                return Err(HandlerError::Retryable(reason));
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ScanHost for Scanner {
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(self.db.clone())
    }

    fn now_ms(&self) -> i64 {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    async fn scan(&self, object_key: &str) -> Result<Scanned, String> {
        let key = ObjectKey::parse(object_key).map_err(|e| e.to_string())?;
        let object = match self.objects.get(&key).await {
            Ok(object) => object,
            Err(e) if e.is_not_found() => return Ok(Scanned::Missing),
            Err(e) => return Err(e.to_string()),
        };
        match self.clamd.scan_stream(object.stream).await {
            Ok(ScanVerdict::Clean) => Ok(Scanned::Clean),
            Ok(ScanVerdict::Infected { signature }) => Ok(Scanned::Infected(signature)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn quarantine(&self, from: &str, to: &str) -> Result<(), String> {
        let from = ObjectKey::parse(from).map_err(|e| e.to_string())?;
        let to = ObjectKey::parse(to).map_err(|e| e.to_string())?;
        self.objects
            .rename(&from, &to)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl TypedHandler for Scanner {
    type Message = ScanMessage;
    const WHAT: &'static str = "scan";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        batch: &mut MessageBatch,
        messages: Vec<Decoded<ScanMessage>>,
    ) -> Result<(), HandlerError> {
        for m in messages {
            self.scan(&m.body.key, m.attempts).await?;
            batch.ack(m.id);
        }
        Ok(())
    }
}
