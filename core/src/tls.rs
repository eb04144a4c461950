//! The native hosts' TLS: rustls on ring, installed as the process's default crypto provider.
//!
//! Every outbound HTTPS client (object_store's S3/R2 client, the model providers, the test and
//! bench clients) is a reqwest 0.13 client built without a provider of its own, so the process's
//! default must be installed before the first client is built. [`install`] is cheap and
//! idempotent: each place that builds a client calls it first.

use std::sync::Once;

/// Installs rustls' ring provider as the process default, unless one is installed already.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err only when another thread installed one in between: either way a provider is
            // installed, which is all a client needs.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn installs_a_provider_once() {
        super::install();
        super::install();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
