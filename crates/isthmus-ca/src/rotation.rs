//! Workload certificate rotation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use isthmus_tls::Identity;
use tokio::sync::watch;

use crate::ca::{Ca, IssuedCert};
use crate::error::CaError;

/// The fraction of a certificate's lifetime after which it is renewed.
///
/// Half the lifetime is Istio's default (`SECRET_GRACE_PERIOD_RATIO=0.5`): with 24h
/// certificates the proxy gets a new one after 12h. Rotating at the midpoint rather than close to
/// expiry leaves as much time again to retry if the CA is briefly unavailable, keeps the old
/// certificate comfortably valid for connections that were established with it (rotation is not
/// retroactive, so a long-lived connection may keep using a certificate for hours), and still
/// limits how long a leaked key is useful to one lifetime.
pub const ROTATION_FRACTION: f64 = 0.5;

/// A validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl Validity {
    /// When rotation becomes due: `not_before + ROTATION_FRACTION * lifetime`.
    pub fn rotation_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime.mul_f64(ROTATION_FRACTION)
    }

    /// Whether rotation is due at `now` (also true for expired or inverted windows).
    pub fn rotation_due(&self, now: SystemTime) -> bool {
        now >= self.rotation_at() || self.not_after <= self.not_before
    }
}

impl IssuedCert {
    /// The certificate's validity window.
    pub fn validity(&self) -> Validity {
        Validity {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// True when `cert` is past [`ROTATION_FRACTION`] of its lifetime at `now`.
pub fn rotation_due(cert: &IssuedCert, now: SystemTime) -> bool {
    cert.validity().rotation_due(now)
}

/// Keeps the current certificate per identity and re-issues when due.
///
/// It has no timer of its own: call [`WorkloadCertManager::refresh`] with the current time, or
/// run [`WorkloadCertManager::refresh_when_due`] in a loop. Every change bumps a generation
/// counter that distribution code can watch ([`WorkloadCertManager::subscribe`]) to push new
/// certificates to proxies.
#[derive(Debug)]
pub struct WorkloadCertManager {
    ca: Arc<Ca>,
    ttl: Duration,
    certs: Mutex<BTreeMap<Identity, Arc<IssuedCert>>>,
    generation: watch::Sender<u64>,
}

impl WorkloadCertManager {
    /// A manager issuing `ttl`-long certificates (`None` = the CA's workload TTL).
    pub fn new(ca: Arc<Ca>, ttl: Option<Duration>) -> Self {
        let ttl = ttl.unwrap_or_else(|| ca.workload_ttl());
        WorkloadCertManager {
            ca,
            ttl,
            certs: Mutex::new(BTreeMap::new()),
            generation: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Identity, Arc<IssuedCert>>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts).
        self.certs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// The lifetime of certificates this manager issues.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The current certificate for `identity`, issuing one if there is none or rotation is due.
    pub fn get(&self, identity: &Identity, now: SystemTime) -> Result<Arc<IssuedCert>, CaError> {
        let mut certs = self.lock();
        if let Some(c) = certs.get(identity) {
            if !rotation_due(c, now) {
                return Ok(c.clone());
            }
        }
        let fresh = Arc::new(self.ca.issue(identity, Some(self.ttl))?);
        tracing::info!(identity = %identity, serial = %fresh.serial_hex, "issued workload certificate");
        certs.insert(identity.clone(), fresh.clone());
        drop(certs);
        self.bump();
        Ok(fresh)
    }

    /// The current certificate without issuing.
    pub fn current(&self, identity: &Identity) -> Option<Arc<IssuedCert>> {
        self.lock().get(identity).cloned()
    }

    /// Stops tracking an identity (its workload went away).
    pub fn remove(&self, identity: &Identity) -> bool {
        let removed = self.lock().remove(identity).is_some();
        if removed {
            self.bump();
        }
        removed
    }

    /// Identities currently tracked, sorted.
    pub fn identities(&self) -> Vec<Identity> {
        self.lock().keys().cloned().collect()
    }

    /// Re-issues every certificate whose rotation is due at `now`; returns the new ones.
    /// A failure for one identity is logged and does not stop the others (the old certificate
    /// stays in place and is retried next time).
    pub fn refresh(&self, now: SystemTime) -> Vec<(Identity, Arc<IssuedCert>)> {
        let due: Vec<Identity> = self
            .lock()
            .iter()
            .filter(|(_, c)| rotation_due(c, now))
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in due {
            match self.ca.issue(&id, Some(self.ttl)) {
                Ok(c) => {
                    let c = Arc::new(c);
                    tracing::info!(identity = %id, serial = %c.serial_hex, "rotated workload certificate");
                    self.lock().insert(id.clone(), c.clone());
                    out.push((id, c));
                }
                Err(e) => {
                    tracing::warn!(identity = %id, error = %e, "workload certificate rotation failed; keeping the old certificate")
                }
            }
        }
        if !out.is_empty() {
            self.bump();
        }
        out
    }

    /// The earliest rotation time among tracked certificates.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.lock()
            .values()
            .map(|c| c.validity().rotation_at())
            .min()
    }

    /// A receiver whose value changes whenever a certificate is issued, rotated or removed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Sleeps until the next certificate is due (at most `max_wait`, so that identities added
    /// meanwhile are noticed), then refreshes. Run it in a loop in a background task.
    pub async fn refresh_when_due(&self, max_wait: Duration) -> Vec<(Identity, Arc<IssuedCert>)> {
        let now = SystemTime::now();
        let wait = match self.next_due() {
            Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
            None => max_wait,
        };
        tokio::time::sleep(wait.min(max_wait)).await;
        self.refresh(SystemTime::now())
    }
}
