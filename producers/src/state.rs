//! What every handler can reach.

use std::sync::Arc;
use std::time::Instant;

use cognomega_consumers::ConsumerMetrics;
use cognomega_core::queue::QueueDriver;
use cognomega_stores::Database;

/// Shared application state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The relational store.
    pub db: Database,
    /// The queue driver over it.
    pub queues: Arc<dyn QueueDriver>,
    /// Counters of the consumers running in this process, if any.
    pub consumer_metrics: Option<Arc<ConsumerMetrics>>,
    /// When the process started.
    pub started: Instant,
}

impl AppState {
    /// State over a database, with no consumers in-process.
    #[must_use]
    pub fn new(db: Database) -> Self {
        let queues = db.queue();
        Self {
            db,
            queues,
            consumer_metrics: None,
            started: Instant::now(),
        }
    }
}
