//! The shared test harness: throwaway databases on every backend, tracing for tests, and small
//! helpers for the waits that queue tests need.
//!
//! Every test builds its own [`TestDb`] (its own SQLite directory or its own PostgreSQL
//! database), so tests run in parallel and leave nothing behind.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
pub mod clamd;
mod db;
mod logging;
mod process;
mod s3;
mod wait;
pub mod ws;

use cognomega_core::queue::{QueueName, QueueSettings};

pub use app::{Guest, TestApp, ADMIN_KEY};
pub use db::{Backend, TestDb, PG_URL_ENV};
pub use logging::init_tracing;
pub use process::{spawn_serve, terminate};
pub use s3::{s3, S3Server};
pub use wait::{wait_for, wait_until};

/// A queue name, for tests: panics on an invalid literal, which is a bug in the test.
#[must_use]
pub fn q(name: &str) -> QueueName {
    QueueName::parse(name).unwrap_or_else(|e| panic!("invalid queue name {name:?} in a test: {e}"))
}

/// Default queue settings with a few fields changed: `settings(|s| s.max_retries = 1)`.
#[must_use]
pub fn settings(edit: impl FnOnce(&mut QueueSettings)) -> QueueSettings {
    let mut s = QueueSettings::default();
    edit(&mut s);
    s
}

/// Runs each named `async fn name(backend: Backend) -> anyhow::Result<()>` as two tests,
/// `sqlite::name` and `postgres::name`: one suite, every backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    $crate::init_tracing();
                    super::$name($crate::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    $crate::init_tracing();
                    super::$name($crate::Backend::Postgres).await
                }
            )*
        }
    };
}
