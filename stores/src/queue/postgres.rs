//! The queue engine on PostgreSQL (scale-out shape). PLACEHOLDER: being written.

use cognomega_core::queue::{OutgoingMessage, QueueError, QueueName, SendReceipt};
use sqlx::postgres::PgPool;

/// The PostgreSQL queue driver.
#[derive(Debug, Clone)]
pub struct PgQueue {
    #[allow(dead_code)]
    pool: PgPool,
}

impl PgQueue {
    /// A driver over a pool.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

pub(crate) async fn send_batch(
    _conn: &mut sqlx::PgConnection,
    _queue: &QueueName,
    _messages: Vec<OutgoingMessage>,
) -> Result<Vec<SendReceipt>, QueueError> {
    Err(QueueError::Backend("not yet".into()))
}
