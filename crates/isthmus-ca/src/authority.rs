//! The authenticated issuance API: a proxy obtains the identity bound to its credential and
//! nothing else.
//!
//! Istio authenticates the CSR with the pod's Kubernetes service-account token and signs only
//! for that service account. In isthmus the supervisor starts every proxy, so it mints a random
//! per-proxy token, registers it here together with the workload's identity, and hands the token
//! to the proxy. `issue_for_token` takes *only* the token: there is no parameter through which a
//! caller could ask for another identity.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use isthmus_tls::Identity;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::ca::{Ca, IssuedCert};
use crate::error::IssueError;
use crate::rotation::WorkloadCertManager;

/// Minimum token length in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// A fresh random proxy token: 32 random bytes, hex encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Tokens are stored as SHA-256 digests: the table never holds usable credentials, and lookups
/// compare fixed-size digests rather than attacker-controlled strings.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The CA behind a per-proxy credential check.
#[derive(Debug)]
pub struct CaService {
    manager: Arc<WorkloadCertManager>,
    tokens: RwLock<BTreeMap<[u8; 32], Identity>>,
}

impl CaService {
    /// Wraps a CA; certificates live `ttl` (`None` = the CA's workload TTL).
    pub fn new(ca: Arc<Ca>, ttl: Option<Duration>) -> Self {
        CaService {
            manager: Arc::new(WorkloadCertManager::new(ca, ttl)),
            tokens: RwLock::new(BTreeMap::new()),
        }
    }

    /// The certificate manager (for rotation loops and change notifications).
    pub fn manager(&self) -> &Arc<WorkloadCertManager> {
        &self.manager
    }

    /// The root PEM every proxy gets as `ROOTCA`; not secret, so no token is needed.
    pub fn root_pem(&self) -> &str {
        self.manager.ca().root_pem()
    }

    /// Binds `token` to `identity` (called by the supervisor when it starts a proxy).
    /// Re-registering the same pair is a no-op; binding a token to a *different* identity is
    /// refused, so a leaked registration call cannot redirect an existing proxy's identity.
    pub fn register_proxy(&self, token: &str, identity: Identity) -> Result<(), IssueError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(IssueError::WeakToken(token.len()));
        }
        let td = self.manager.ca().trust_domain();
        if identity.trust_domain != td {
            return Err(IssueError::WrongTrustDomain {
                identity: identity.to_string(),
                trust_domain: td.to_string(),
            });
        }
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        let key = digest(token);
        if let Some(existing) = tokens.get(&key) {
            if *existing != identity {
                return Err(IssueError::TokenBound {
                    existing: existing.to_string(),
                    requested: identity.to_string(),
                });
            }
            return Ok(());
        }
        tracing::debug!(identity = %identity, "registered proxy credential");
        tokens.insert(key, identity);
        Ok(())
    }

    /// Forgets a token (the proxy stopped). Returns whether it was registered.
    pub fn unregister_proxy(&self, token: &str) -> bool {
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(token))
            .is_some()
    }

    /// The identity bound to `token`, if any.
    pub fn identity_for_token(&self, token: &str) -> Option<Identity> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest(token))
            .cloned()
    }

    /// The current certificate for the identity bound to `token` (issued or rotated as needed).
    pub fn issue_for_token(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<IssuedCert>, IssueError> {
        let identity = self
            .identity_for_token(token)
            .ok_or(IssueError::UnknownToken)?;
        Ok(self.manager.get(&identity, now)?)
    }

    /// Signs `csr_pem` for the identity bound to `token`. Whatever identity the CSR asks for is
    /// ignored: the certificate carries the token's identity only.
    pub fn sign_csr_for_token(&self, token: &str, csr_pem: &str) -> Result<IssuedCert, IssueError> {
        let identity = self
            .identity_for_token(token)
            .ok_or(IssueError::UnknownToken)?;
        Ok(self
            .manager
            .ca()
            .sign_csr(csr_pem, &identity, Some(self.manager.ttl()))?)
    }
}
