//! Artifacts in object storage: the codec that compresses them (zstd for text-like artifacts,
//! stored as is when already compressed) and reads them back with a bound, and, later, the
//! lifecycle tiers (30/60/90 days), the sweeper and the bucket lifecycle rules.
#![forbid(unsafe_code)]

pub mod codec;
