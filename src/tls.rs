//! The process-wide rustls crypto provider.
//!
//! Two providers are compiled in: sigstore-rust's reqwest stack brings
//! aws-lc-rs and passes it explicitly, while kube, octocrab and object_store
//! use ring. With both present rustls cannot pick a default and panics when a
//! client asks for one, so ciwatch installs ring before building any client.

/// Installs ring as the default provider; a no-op when one is already installed.
pub fn install_default_provider() {
    // Err means another provider won the race, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
