//! Cognomega's core: domain types, the queue contract, ports (traits) and policies.
//!
//! This crate depends on no async runtime, no database driver and no Workers SDK, so the same
//! types and rules run in the native server, the workers, and the Cloudflare edge host
//! (`wasm32-unknown-unknown`). Adapters live in `stores/` (native) and `wrangler/` (edge).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ai;
pub mod api;
pub mod audio;
pub mod auth;
pub mod billing;
pub mod cleanup;
pub mod etl;
pub mod files;
pub mod jobs;
pub mod kv;
pub mod limits;
pub mod metrics;
pub mod objects;
pub mod outbox;
pub mod queue;
pub mod schedule;
pub mod settings;
pub mod sql;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;
pub mod voice;
