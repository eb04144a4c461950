//! Native adapters for the ports in `cognomega-core`: sqlx SQLite and PostgreSQL (queues and,
//! later, the rest of the data), object storage and the KV role.
//!
//! The backend is chosen by URL scheme: `sqlite://…` for the embedded default, `postgres://…`
//! for the scale-out shape. SQL lives next to the adapter that runs it; where the two dialects
//! differ, the SQLite query says why.
#![forbid(unsafe_code)]

pub mod ask_replays;
pub mod audit;
pub mod billing;
pub mod clamd;
pub mod cleanup;
pub mod database;
pub mod exports;
pub mod jobs;
pub mod keys;
pub mod kv;
pub mod ledger_chain;
pub mod lifecycle;
pub mod limits;
mod migrations;
pub mod objects;
pub mod queue;
pub mod schedules;
pub mod sql;
pub mod uploads;
pub mod voice_sessions;

pub use database::{Database, DatabaseUrl, StoreError};
pub use queue::{PgQueue, SqliteQueue, Tx};
