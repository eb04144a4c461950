//! Cognomega's assembly: configuration, and wiring the stores, producers (HTTP API) and
//! consumers into one running platform. The `cognomega` binary is a thin CLI over this; tests
//! start the same assembly on port 0.
#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod http_server;
pub mod wiring;
