//! Hot-swappable certificates.
//!
//! A [`CertStore`] is what a rustls config holds instead of a fixed certificate: rustls asks it
//! for the certificate at the start of every handshake. Swapping the store's content (SVID
//! rotation, a changed gateway Secret) therefore affects *new* handshakes only; connections that
//! already finished their handshake keep the certificate they negotiated — the seeds'
//! "changes are not retroactive" rule — and no listener has to be rebuilt.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::error::TlsError;
use crate::pem::certified_key_from_pem;
use crate::x509::CertSummary;

/// Certificate swaps and removals so far, in any store of the process.
static ROTATIONS: AtomicU64 = AtomicU64::new(0);

/// The process-wide certificate rotation generation: it moves on every [`CertStore::swap`] and
/// [`CertStore::clear`]. Session tickets carry the generation they were issued in and are
/// refused after it changed, so no resumed session outlives a rotated certificate.
pub fn rotation_generation() -> u64 {
    ROTATIONS.load(Ordering::Acquire)
}

/// A named, atomically replaceable certificate + key.
///
/// It may be empty (a Secret that is not (yet) available): a server then fails handshakes
/// (no certificate to offer) and a client sends no certificate, which is how Envoy behaves when
/// SDS has not supplied the secret.
pub struct CertStore {
    name: String,
    current: ArcSwapOption<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("name", &self.name)
            .field("serial", &self.serial_hex())
            .finish()
    }
}

impl CertStore {
    /// An empty store; `name` is used in logs (e.g. `default`, `kubernetes://partner-client`).
    pub fn empty(name: impl Into<String>) -> Self {
        CertStore {
            name: name.into(),
            current: ArcSwapOption::empty(),
        }
    }

    /// A store holding `key`.
    pub fn new(name: impl Into<String>, key: Arc<CertifiedKey>) -> Self {
        CertStore {
            name: name.into(),
            current: ArcSwapOption::new(Some(key)),
        }
    }

    /// A store from a PEM chain (leaf first) and PEM key; the key must match the leaf.
    pub fn from_pem(
        name: impl Into<String>,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, TlsError> {
        let name = name.into();
        let ck = certified_key_from_pem(chain_pem, key_pem, &name)?;
        Ok(Self::new(name, Arc::new(ck)))
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Replaces the certificate; new handshakes use it, open connections are unaffected.
    /// Session tickets issued before the swap stop resuming (see [`rotation_generation`]).
    pub fn swap(&self, key: Arc<CertifiedKey>) {
        tracing::debug!(store = %self.name, "certificate replaced");
        self.current.store(Some(key));
        ROTATIONS.fetch_add(1, Ordering::AcqRel);
    }

    /// Parses and installs a PEM chain + key. On error the old certificate stays in place.
    pub fn swap_pem(&self, chain_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let ck = certified_key_from_pem(chain_pem, key_pem, &self.name)?;
        self.swap(Arc::new(ck));
        Ok(())
    }

    /// Removes the certificate (the Secret disappeared).
    pub fn clear(&self) {
        tracing::debug!(store = %self.name, "certificate removed");
        self.current.store(None);
        ROTATIONS.fetch_add(1, Ordering::AcqRel);
    }

    /// The current certificate, if any.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    /// Summary of the current leaf certificate (serial, SANs, validity), if any.
    pub fn summary(&self) -> Option<CertSummary> {
        let ck = self.current.load_full()?;
        let leaf = ck.cert.first()?;
        CertSummary::from_der(leaf.as_ref()).ok()
    }

    /// Serial of the current leaf as lowercase hex, if any.
    pub fn serial_hex(&self) -> Option<String> {
        self.summary().map(|s| s.serial_hex)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ck = self.current.load_full();
        if ck.is_none() {
            tracing::debug!(store = %self.name, "no certificate available for handshake");
        }
        ck
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let ck = self.current.load_full()?;
        // Only offer the certificate if our key can produce a signature the server accepts;
        // otherwise rustls would fail later with a less helpful error.
        if ck.key.choose_scheme(sigschemes).is_some() {
            Some(ck)
        } else {
            tracing::debug!(store = %self.name, "client certificate key type not acceptable to server");
            None
        }
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}
