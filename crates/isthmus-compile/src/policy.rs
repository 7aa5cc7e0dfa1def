//! Traffic-policy layering: top level → portLevelSettings → subset → subset portLevelSettings,
//! with istiod's wholesale replacement rules (reference §2).

use isthmus_api::istio::{
    ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection,
    TrafficPolicy,
};

/// The four blocks that take effect on one cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

impl Policy {
    /// Borrows the four blocks.
    pub fn as_ref(&self) -> PolicyRef<'_> {
        PolicyRef {
            load_balancer: self.load_balancer.as_ref(),
            connection_pool: self.connection_pool.as_ref(),
            outlier_detection: self.outlier_detection.as_ref(),
            tls: self.tls.as_ref(),
        }
    }
}

/// [`Policy`] borrowed from the DestinationRule: what the cluster builder works from, so that
/// layering the four blocks for every (service, port, subset) copies nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyRef<'p> {
    pub load_balancer: Option<&'p LoadBalancerSettings>,
    pub connection_pool: Option<&'p ConnectionPoolSettings>,
    pub outlier_detection: Option<&'p OutlierDetection>,
    pub tls: Option<&'p ClientTlsSettings>,
}

impl PolicyRef<'_> {
    /// Copies the four blocks.
    pub fn to_policy(&self) -> Policy {
        Policy {
            load_balancer: self.load_balancer.cloned(),
            connection_pool: self.connection_pool.cloned(),
            outlier_detection: self.outlier_detection.cloned(),
            tls: self.tls.cloned(),
        }
    }

    /// No block set (equal to `Policy::default()`).
    pub fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
    }
}

/// [`port_level`] without copying.
pub fn port_level_ref(tp: Option<&TrafficPolicy>, port: u32) -> (Option<PolicyRef<'_>>, bool) {
    let Some(tp) = tp else { return (None, false) };
    if let Some(p) = tp
        .port_level_settings
        .iter()
        .find(|p| p.port.as_ref().is_some_and(|s| s.number == port))
    {
        return (
            Some(PolicyRef {
                load_balancer: p.load_balancer.as_ref(),
                connection_pool: p.connection_pool.as_ref(),
                outlier_detection: p.outlier_detection.as_ref(),
                tls: p.tls.as_ref(),
            }),
            true,
        );
    }
    (
        Some(PolicyRef {
            load_balancer: tp.load_balancer.as_ref(),
            connection_pool: tp.connection_pool.as_ref(),
            outlier_detection: tp.outlier_detection.as_ref(),
            tls: tp.tls.as_ref(),
        }),
        false,
    )
}

/// [`merge_subset`] without copying.
pub fn merge_subset_ref<'p>(
    base: Option<PolicyRef<'p>>,
    subset: Option<&'p TrafficPolicy>,
    port: u32,
) -> Option<PolicyRef<'p>> {
    let (sub, has_port) = port_level_ref(subset, port);
    let Some(sub) = sub else { return base };
    let Some(base) = base else {
        return Some(sub);
    };
    Some(override_blocks(base, sub, has_port))
}

/// The subset's blocks replace the base's one by one; a subset port entry (`has_port`)
/// replaces all four, even with nothing.
fn override_blocks<'p>(
    mut out: PolicyRef<'p>,
    sub: PolicyRef<'p>,
    has_port: bool,
) -> PolicyRef<'p> {
    if has_port || sub.connection_pool.is_some() {
        out.connection_pool = sub.connection_pool;
    }
    if has_port || sub.outlier_detection.is_some() {
        out.outlier_detection = sub.outlier_detection;
    }
    if has_port || sub.load_balancer.is_some() {
        out.load_balancer = sub.load_balancer;
    }
    if has_port || sub.tls.is_some() {
        out.tls = sub.tls;
    }
    out
}

/// `GetPortLevelTrafficPolicy`: a matching portLevelSettings entry replaces the whole policy
/// (nothing is inherited from the top level). Returns the policy and whether a port entry matched.
pub fn port_level(tp: Option<&TrafficPolicy>, port: u32) -> (Option<Policy>, bool) {
    let (p, has_port) = port_level_ref(tp, port);
    (p.map(|p| p.to_policy()), has_port)
}

/// `MergeSubsetTrafficPolicy`: the subset overrides block by block; a subset port entry
/// overrides all four blocks (even with nothing).
pub fn merge_subset(
    base: Option<Policy>,
    subset: Option<&TrafficPolicy>,
    port: u32,
) -> Option<Policy> {
    merge_subset_ref(base.as_ref().map(Policy::as_ref), subset, port).map(|p| p.to_policy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_api::istio::{PortSelector, PortTrafficPolicy, TcpSettings};

    fn pool(n: i64) -> ConnectionPoolSettings {
        ConnectionPoolSettings {
            tcp: Some(TcpSettings {
                max_connections: Some(n),
                ..Default::default()
            }),
            http: None,
        }
    }

    #[test]
    fn port_entry_with_only_tls_wipes_the_pool() {
        let tp = TrafficPolicy {
            connection_pool: Some(pool(10)),
            port_level_settings: vec![PortTrafficPolicy {
                port: Some(PortSelector { number: 443 }),
                tls: Some(ClientTlsSettings {
                    mode: Some("SIMPLE".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (p443, hit) = port_level(Some(&tp), 443);
        assert!(hit);
        let p443 = p443.unwrap();
        assert!(p443.connection_pool.is_none());
        assert_eq!(p443.tls.unwrap().mode(), "SIMPLE");
        let (p80, hit) = port_level(Some(&tp), 80);
        assert!(!hit);
        assert_eq!(p80.unwrap().connection_pool, Some(pool(10)));
    }

    #[test]
    fn subset_overrides_block_by_block() {
        let top = Policy {
            connection_pool: Some(pool(10)),
            tls: Some(ClientTlsSettings {
                mode: Some("ISTIO_MUTUAL".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sub = TrafficPolicy {
            connection_pool: Some(pool(5)),
            ..Default::default()
        };
        let m = merge_subset(Some(top.clone()), Some(&sub), 80).unwrap();
        assert_eq!(m.connection_pool, Some(pool(5)));
        assert_eq!(m.tls.unwrap().mode(), "ISTIO_MUTUAL");
        let sub_port = TrafficPolicy {
            port_level_settings: vec![PortTrafficPolicy {
                port: Some(PortSelector { number: 80 }),
                connection_pool: Some(pool(1)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let m = merge_subset(Some(top), Some(&sub_port), 80).unwrap();
        assert_eq!(m.connection_pool, Some(pool(1)));
        assert!(m.tls.is_none(), "a subset port entry wipes tls too");
    }
}
