//! The platform's workflows, written once.
//!
//! A workflow is an async function over small ports ([`ports`]): the SQL executor and
//! transaction of `cognomega-core` (statements written once, run by sqlx natively and by
//! tokio-postgres on the edge), object storage, the clock, and where CPU-bound work runs. The
//! native host (`cognomega-consumers`) and the Cloudflare edge (`wrangler/edge`) implement the
//! ports and call the same functions, so a rule lives in one place and is tested natively on
//! SQLite and PostgreSQL.

pub mod accept;
pub mod ask;
pub mod billing;
pub mod export;
pub mod guest;
pub mod jobs;
pub mod jobs_api;
pub mod metrics;
pub mod ports;
pub mod settle;
pub mod submit;
pub mod tts_render;
pub mod uploads;
pub mod voice;
