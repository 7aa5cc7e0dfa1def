//! SPIFFE workload identities as Istio writes them.
//!
//! Istio's format (`pkg/spiffe/spiffe.go`) is exactly
//! `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`: five `/`-separated segments after
//! the scheme, the literal `ns` and `sa` markers, and an `@` in the trust domain replaced by `.`
//! when the URI is generated. We keep the same rules so that SAN lists computed by the compiler
//! (`matchSubjectAltNames`) and the identities minted by the CA agree byte for byte.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The URI scheme prefix of every SPIFFE ID.
pub const SPIFFE_PREFIX: &str = "spiffe://";

/// Istio's default trust domain (`meshConfig.trustDomain`), independent of the DNS suffix.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Why a SPIFFE identity could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `spiffe://`.
    #[error("identity {0:?} is not a SPIFFE URI: it must start with \"spiffe://\"")]
    NotSpiffe(String),
    /// Wrong number of path segments or wrong `ns`/`sa` markers.
    #[error(
        "identity {0:?} is not an Istio SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    BadShape(String),
    /// One of the three components is empty or contains a character that would break the URI.
    #[error("invalid {field} {value:?} for a SPIFFE ID: {reason}")]
    BadComponent {
        /// `trust domain`, `namespace` or `service account`.
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A workload identity: trust domain + Kubernetes namespace + service account.
///
/// Ordering is lexicographic on (trust domain, namespace, service account), which keeps maps of
/// identities deterministic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// Trust domain, e.g. `cluster.local` (never contains `@`; see [`Identity::new`]).
    pub trust_domain: String,
    /// Kubernetes namespace of the workload.
    pub namespace: String,
    /// Kubernetes service account of the workload.
    pub service_account: String,
}

fn check_component(field: &'static str, value: &str) -> Result<(), IdentityError> {
    let bad = |reason| IdentityError::BadComponent {
        field,
        value: value.to_string(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("must not be empty"));
    }
    if value.contains('/') {
        return Err(bad("must not contain '/'"));
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(bad(
            "must not contain whitespace, control characters, '?' or '#'",
        ));
    }
    Ok(())
}

impl Identity {
    /// Builds an identity. Like Istio's `genSpiffeURI`, an `@` in the trust domain is replaced by
    /// `.`; empty components or components containing `/` are rejected because they could not be
    /// parsed back from the URI.
    pub fn new(
        trust_domain: impl AsRef<str>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let trust_domain = trust_domain.as_ref().replace('@', ".");
        let namespace = namespace.into();
        let service_account = service_account.into();
        check_component("trust domain", &trust_domain)?;
        check_component("namespace", &namespace)?;
        check_component("service account", &service_account)?;
        Ok(Identity {
            trust_domain,
            namespace,
            service_account,
        })
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` with Istio's rules (exactly five segments).
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SPIFFE_PREFIX)
            .ok_or_else(|| IdentityError::NotSpiffe(uri.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                Identity::new(td, *ns, *sa).map_err(|_| IdentityError::BadShape(uri.to_string()))
            }
            _ => Err(IdentityError::BadShape(uri.to_string())),
        }
    }

    /// The SPIFFE URI, `spiffe://<td>/ns/<ns>/sa/<sa>` (what goes into the URI SAN and into the
    /// `source_principal` metric label).
    pub fn spiffe_uri(&self) -> String {
        format!(
            "{SPIFFE_PREFIX}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    /// The AuthorizationPolicy principal form without scheme: `<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_uri())
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

/// The trust domain of a SPIFFE URI (`spiffe://td/...` → `td`), without Istio's shape check.
/// Used for trust-domain filtering of peers whose path is not Istio-shaped.
pub fn spiffe_trust_domain(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix(SPIFFE_PREFIX)?;
    let td = rest.split('/').next()?;
    if td.is_empty() {
        None
    } else {
        Some(td)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_round_trips() {
        let id = Identity::new("cluster.local", "default", "sleep").unwrap();
        assert_eq!(
            id.spiffe_uri(),
            "spiffe://cluster.local/ns/default/sa/sleep"
        );
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        assert_eq!(Identity::parse(&id.spiffe_uri()).unwrap(), id);
        assert_eq!(id.to_string().parse::<Identity>().unwrap(), id);
    }

    #[test]
    fn at_sign_in_trust_domain_becomes_dot() {
        let id = Identity::new("foo@bar.com", "ns1", "sa1").unwrap();
        assert_eq!(id.spiffe_uri(), "spiffe://foo.bar.com/ns/ns1/sa/sa1");
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns/default/sa/sleep/extra",
            "spiffe://cluster.local/namespace/default/sa/sleep",
            "spiffe://cluster.local/ns//sa/sleep",
            "spiffe:///ns/a/sa/b",
        ] {
            assert!(
                matches!(Identity::parse(bad), Err(IdentityError::BadShape(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Identity::parse("https://cluster.local/ns/a/sa/b"),
            Err(IdentityError::NotSpiffe(_))
        ));
        assert!(Identity::new("cluster.local", "", "sa").is_err());
        assert!(Identity::new("cluster.local", "a/b", "sa").is_err());
        assert!(Identity::new("cluster.local", "ns", "s a").is_err());
    }

    #[test]
    fn trust_domain_of_uri() {
        assert_eq!(
            spiffe_trust_domain("spiffe://td.example/ns/a/sa/b"),
            Some("td.example")
        );
        assert_eq!(spiffe_trust_domain("spiffe:///x"), None);
        assert_eq!(spiffe_trust_domain("http://x"), None);
    }
}
