//! Artifacts in object storage and their lifecycle, as pure logic (no async runtime, no object
//! store client):
//!
//! - [`codec`]: how artifacts are compressed (zstd for text-like artifacts, stored as is when
//!   already compressed) and read back with a bound;
//! - [`policy`]: the lifecycle tiers per prefix (recompress after 30 days, Infrequent Access
//!   after 60, delete after 90 for artifacts, …), their defaults and the policy file;
//! - [`plan`]: the policy as an S3/R2 bucket lifecycle configuration;
//! - [`sweep`]: the sweeper's per-object decisions and its report.
#![forbid(unsafe_code)]

pub mod codec;
pub mod plan;
pub mod policy;
pub mod sweep;
