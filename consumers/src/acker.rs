//! Batches settlements from many handler tasks into few driver calls.

use std::sync::Arc;
use std::time::Duration;

use cognomega_core::queue::{
    QueueDriver, QueueError, QueueName, QueueSettings, SettleReport, Settlement,
};
use tokio::sync::{mpsc, oneshot};

use cognomega_core::queue::ConsumerMetrics;

/// Most settlements applied in one driver call.
const MAX_COALESCED: usize = 5_000;

type Request = (
    Vec<Settlement>,
    oneshot::Sender<Result<SettleReport, QueueError>>,
);

/// A handle to submit settlements; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Acker {
    tx: mpsc::Sender<Request>,
}

impl Acker {
    /// Starts the acker task of one queue. It ends when every handle is dropped.
    pub(crate) fn spawn(
        driver: Arc<dyn QueueDriver>,
        queue: QueueName,
        settings: QueueSettings,
        metrics: Arc<ConsumerMetrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel::<Request>(1024);
        let task = tokio::spawn(run(driver, queue, settings, metrics, rx));
        (Self { tx }, task)
    }

    /// Submits settlements and waits until they are committed (or failed for good).
    pub(crate) async fn settle(&self, items: Vec<Settlement>) -> Result<SettleReport, QueueError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((items, done))
            .await
            .map_err(|_| QueueError::Unavailable("acker stopped".into()))?;
        wait.await
            .map_err(|_| QueueError::Unavailable("acker stopped".into()))?
    }
}

async fn run(
    driver: Arc<dyn QueueDriver>,
    queue: QueueName,
    settings: QueueSettings,
    metrics: Arc<ConsumerMetrics>,
    mut rx: mpsc::Receiver<Request>,
) {
    while let Some(first) = rx.recv().await {
        let mut items = first.0;
        let mut waiters = vec![(first.1, items.len())];
        // Whatever else is already waiting rides along in the same statement.
        while items.len() < MAX_COALESCED {
            match rx.try_recv() {
                Ok((more, done)) => {
                    waiters.push((done, more.len()));
                    items.extend(more);
                }
                Err(_) => break,
            }
        }
        let result = settle_with_retry(driver.as_ref(), &queue, &settings, &items).await;
        if let Ok(report) = &result {
            metrics.settled(&queue, report, 0);
            if !report.refused.is_empty() {
                tracing::warn!(queue = %queue, refused = report.refused.len(),
                    "settlements refused: their leases expired and the messages were claimed again");
            }
        }
        // Each waiter learns the shared outcome; refused ids are filtered to its own.
        let mut offset = 0;
        for (done, len) in waiters {
            let mine = &items[offset..offset + len];
            offset += len;
            let reply = match &result {
                Ok(report) => Ok(SettleReport {
                    refused: report
                        .refused
                        .iter()
                        .copied()
                        .filter(|id| mine.iter().any(|s| s.id() == *id))
                        .collect(),
                    ..SettleReport::default()
                }),
                Err(e) => Err(e.clone()),
            };
            let _ = done.send(reply);
        }
    }
}

/// A settle that fails for a transient reason is retried a few times; if the store stays down
/// the leases expire and the messages are delivered again, so nothing is lost.
async fn settle_with_retry(
    driver: &dyn QueueDriver,
    queue: &QueueName,
    settings: &QueueSettings,
    items: &[Settlement],
) -> Result<SettleReport, QueueError> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=5 {
        match driver.settle(queue, settings, items).await {
            Err(QueueError::Unavailable(e)) if attempt < 5 => {
                tracing::warn!(queue = %queue, attempt, error = %e, "settle failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    Err(QueueError::Unavailable("settle retries exhausted".into()))
}
