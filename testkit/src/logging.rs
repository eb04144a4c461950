//! Tracing output for tests.

use std::sync::Once;

use tracing_subscriber::EnvFilter;

/// Installs a subscriber that writes through the test harness (so output is shown only for
/// failing tests), filtered by `RUST_LOG` (default `warn`). Safe to call from every test.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
        // Another harness in the same process may have installed one already; keep theirs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
