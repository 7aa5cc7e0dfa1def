//! Istio's analysis message types (`pkg/config/analysis/msg/messages.yaml`): code, level and
//! template, and a small `fmt.Sprintf` so the texts come out exactly as istioctl prints them.

use crate::Level;

/// One message type: Istio's code, its level and its Go format template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType {
    pub code: &'static str,
    pub name: &'static str,
    pub level: Level,
    pub template: &'static str,
}

macro_rules! mt {
    ($id:ident, $code:literal, $name:literal, $level:ident, $tmpl:literal) => {
        pub const $id: MessageType = MessageType {
            code: $code,
            name: $name,
            level: Level::$level,
            template: $tmpl,
        };
    };
}

mt!(
    DEPRECATED,
    "IST0002",
    "Deprecated",
    Warning,
    "Deprecated: %s"
);
mt!(
    REFERENCED_RESOURCE_NOT_FOUND,
    "IST0101",
    "ReferencedResourceNotFound",
    Error,
    "Referenced %s not found: %q"
);
mt!(
    SCHEMA_VALIDATION_ERROR,
    "IST0106",
    "SchemaValidationError",
    Error,
    "Schema validation error: %v"
);
mt!(
    VS_UNREACHABLE_RULE,
    "IST0130",
    "VirtualServiceUnreachableRule",
    Warning,
    "VirtualService rule %v not used (%s)."
);
mt!(
    VS_INEFFECTIVE_MATCH,
    "IST0131",
    "VirtualServiceIneffectiveMatch",
    Info,
    "VirtualService rule %v match %v is not used (duplicate/overlapping match in rule %v)."
);
mt!(
    VS_DESTINATION_PORT_SELECTOR_REQUIRED,
    "IST0112",
    "VirtualServiceDestinationPortSelectorRequired",
    Error,
    "This VirtualService routes to a service %q that exposes multiple ports %v. Specifying a port in the destination is required to disambiguate."
);
mt!(
    INGRESS_ROUTE_RULES_NOT_AFFECTED,
    "IST0140",
    "IngressRouteRulesNotAffected",
    Warning,
    "Subset in virtual service %s has no effect on ingress gateway %s requests"
);
mt!(
    SCHEMA_WARNING,
    "IST0133",
    "SchemaWarning",
    Warning,
    "Schema validation warning: %v"
);
mt!(
    CONFLICTING_MESH_GATEWAY_VS_HOSTS,
    "IST0109",
    "ConflictingMeshGatewayVirtualServiceHosts",
    Error,
    "The VirtualServices %s associated with mesh gateway define the same host %s which can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a single resource."
);
mt!(
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
    "IST0110",
    "ConflictingSidecarWorkloadSelectors",
    Error,
    "The Sidecars %v in namespace %q select the same workload pod %q, which can lead to undefined behavior."
);
mt!(
    MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
    "IST0111",
    "MultipleSidecarsWithoutWorkloadSelectors",
    Error,
    "The Sidecars %v in namespace %q have no workload selector, which can lead to undefined behavior."
);
mt!(
    NO_SERVER_CERT_VERIFICATION_DEST,
    "IST0128",
    "NoServerCertificateVerificationDestinationLevel",
    Warning,
    "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set to validate server identity for host: %s"
);
mt!(
    NO_SERVER_CERT_VERIFICATION_PORT,
    "IST0129",
    "NoServerCertificateVerificationPortLevel",
    Warning,
    "DestinationRule %s in namespace %s has TLS mode set to %s but no caCertificates are set to validate server identity for host: %s at port %s"
);
mt!(
    VS_HOST_NOT_FOUND_IN_GATEWAY,
    "IST0132",
    "VirtualServiceHostNotFoundInGateway",
    Warning,
    "one or more host %v defined in VirtualService %s not found in Gateway %s."
);
mt!(
    SERVICE_ENTRY_ADDRESSES_REQUIRED,
    "IST0134",
    "ServiceEntryAddressesRequired",
    Warning,
    "ServiceEntry addresses are required for this protocol."
);
mt!(
    GATEWAY_DUPLICATE_CERTIFICATE,
    "IST0138",
    "GatewayDuplicateCertificate",
    Warning,
    "Duplicate certificate in multiple gateways %v may cause 404s if clients re-use HTTP2 connections."
);
mt!(
    CONFLICTING_GATEWAYS,
    "IST0145",
    "ConflictingGateways",
    Error,
    "Conflict with gateways %s (workload selector %s, port %s, hosts %v)."
);
mt!(
    JWT_CLAIM_ROUTING_WITHOUT_REQUEST_AUTHN,
    "IST0149",
    "JwtClaimBasedRoutingWithoutRequestAuthN",
    Error,
    "The virtual service uses the JWT claim based routing (key: %s) but found no request authentication for the gateway (%s) pod (%s). The request authentication must first be applied for the gateway pods to validate the JWT token and make the claims available for routing."
);
mt!(
    INVALID_GATEWAY_CREDENTIAL,
    "IST0161",
    "InvalidGatewayCredential",
    Error,
    "The credential referenced by the Gateway %s in namespace %s is invalid, which can cause the traffic not to work as expected."
);
mt!(
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
    "IST0162",
    "GatewayPortNotDefinedOnService",
    Warning,
    "The gateway is listening on a target port (port %d) that is not defined in the Service associated with its workload instances (Pod selector %s). If you need to access the gateway port through the gateway Service, it will not be available."
);
mt!(
    REFERENCED_INTERNAL_GATEWAY,
    "IST0165",
    "ReferencedInternalGateway",
    Warning,
    "Gateway reference in VirtualService %s is to an implementation-generated internal Gateway: %s."
);
mt!(
    INEFFECTIVE_POLICY,
    "IST0167",
    "IneffectivePolicy",
    Warning,
    "The policy has no impact: %s."
);
mt!(
    DR_SUBSET_NOT_SELECT_PODS,
    "IST0173",
    "DestinationRuleSubsetNotSelectPods",
    Error,
    "The Subset %s defined in the DestinationRule does not select any pods. Which may lead to 503 UH (NoHealthyUpstream)."
);
mt!(
    UNKNOWN_DR_HOST,
    "IST0174",
    "UnknownDestinationRuleHost",
    Warning,
    "The host %s defined in the DestinationRule does not match any services in the mesh."
);
mt!(
    CONFLICTING_SE_PROTOCOL,
    "IST0177",
    "ConflictingServiceEntryProtocol",
    Warning,
    "Multiple ServiceEntries (%s) define the same host %q and port %d with conflicting protocols (%s)."
);

/// Every Istio message type isthmus emits.
pub const ISTIO_TYPES: &[MessageType] = &[
    DEPRECATED,
    REFERENCED_RESOURCE_NOT_FOUND,
    SCHEMA_VALIDATION_ERROR,
    VS_UNREACHABLE_RULE,
    VS_INEFFECTIVE_MATCH,
    SCHEMA_WARNING,
    VS_DESTINATION_PORT_SELECTOR_REQUIRED,
    INGRESS_ROUTE_RULES_NOT_AFFECTED,
    CONFLICTING_MESH_GATEWAY_VS_HOSTS,
    CONFLICTING_SIDECAR_WORKLOAD_SELECTORS,
    MULTIPLE_SIDECARS_WITHOUT_SELECTORS,
    NO_SERVER_CERT_VERIFICATION_DEST,
    NO_SERVER_CERT_VERIFICATION_PORT,
    VS_HOST_NOT_FOUND_IN_GATEWAY,
    SERVICE_ENTRY_ADDRESSES_REQUIRED,
    GATEWAY_DUPLICATE_CERTIFICATE,
    CONFLICTING_GATEWAYS,
    JWT_CLAIM_ROUTING_WITHOUT_REQUEST_AUTHN,
    INVALID_GATEWAY_CREDENTIAL,
    GATEWAY_PORT_NOT_DEFINED_ON_SERVICE,
    REFERENCED_INTERNAL_GATEWAY,
    INEFFECTIVE_POLICY,
    DR_SUBSET_NOT_SELECT_PODS,
    UNKNOWN_DR_HOST,
    CONFLICTING_SE_PROTOCOL,
];

/// A Go `fmt` argument.
#[derive(Debug, Clone)]
pub enum Arg {
    Str(String),
    Int(i64),
    /// A `[]string`, printed by `%v` as `[a b]`.
    List(Vec<String>),
}

impl From<&str> for Arg {
    fn from(s: &str) -> Self {
        Arg::Str(s.to_string())
    }
}
impl From<String> for Arg {
    fn from(s: String) -> Self {
        Arg::Str(s)
    }
}
impl From<&String> for Arg {
    fn from(s: &String) -> Self {
        Arg::Str(s.clone())
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<Vec<String>> for Arg {
    fn from(v: Vec<String>) -> Self {
        Arg::List(v)
    }
}

/// Go's `%q` (`strconv.Quote`) for the strings analyzers print.
pub fn go_quote(s: &str) -> String {
    isthmus_api::validation::checks::go_quote(s)
}

fn plain(a: &Arg) -> String {
    match a {
        Arg::Str(s) => s.clone(),
        Arg::Int(i) => i.to_string(),
        Arg::List(v) => format!("[{}]", v.join(" ")),
    }
}

/// `fmt.Sprintf` for the verbs Istio's templates use (`%s %v %q %d %%`).
pub fn sprintf(template: &str, args: &[Arg]) -> String {
    let mut out = String::new();
    let mut it = args.iter();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(verb) => match it.next() {
                None => out.push_str(&format!("%!{verb}(MISSING)")),
                Some(a) => match (verb, a) {
                    ('q', Arg::Str(s)) => out.push_str(&go_quote(s)),
                    ('q', Arg::List(v)) => {
                        out.push('[');
                        out.push_str(&v.iter().map(|s| go_quote(s)).collect::<Vec<_>>().join(" "));
                        out.push(']');
                    }
                    _ => out.push_str(&plain(a)),
                },
            },
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formatting() {
        assert_eq!(
            sprintf(
                REFERENCED_RESOURCE_NOT_FOUND.template,
                &["host".into(), "a.b".into()]
            ),
            "Referenced host not found: \"a.b\""
        );
        assert_eq!(
            sprintf(
                "%v in %q",
                &[Arg::List(vec!["a".into(), "b".into()]), "ns".into()]
            ),
            "[a b] in \"ns\""
        );
        assert_eq!(sprintf("port %d", &[Arg::Int(80)]), "port 80");
    }
}

// ---------------------------------------------------------------------------------------------
// isthmus's own message types (ISM codes): the silent failures of the seed guide.

mt!(
    ISM_MERGED_DESTINATION_RULES,
    "ISM0001",
    "MergedDestinationRules",
    Warning,
    "DestinationRule %s is merged into %s for host %s (the older rule wins): %s."
);
mt!(
    ISM_DR_HOST_MATCHES_NO_SERVICE,
    "ISM0002",
    "DestinationRuleHostMatchesNoService",
    Warning,
    "The host %s of this DestinationRule matches no Service or ServiceEntry visible to namespace %q, so its policy applies to nothing%s."
);
mt!(
    ISM_CREDENTIAL_NAME_IGNORED_ON_SIDECARS,
    "ISM0003",
    "CredentialNameIgnoredOnSidecars",
    Warning,
    "%s sets credentialName %q but the DestinationRule has no workloadSelector: sidecars ignore it and send this traffic without TLS origination (only gateways honour it)."
);
mt!(
    ISM_PORT_LEVEL_WIPES_TOP_LEVEL,
    "ISM0004",
    "PortLevelSettingsReplaceTopLevel",
    Warning,
    "%s for port %d sets only %s; on that port the %s level %s %s not applied, because a matching portLevelSettings entry replaces the whole policy."
);
mt!(
    ISM_VS_SUBSET_NOT_IN_APPLIED_DR,
    "ISM0005",
    "VirtualServiceSubsetNotInAppliedDestinationRule",
    Error,
    "Route destination %s subset %q is not defined by %s, the DestinationRule that applies to clients in namespace %q: requests routed there fail with 503 (no cluster for the subset)."
);
mt!(
    ISM_TLS_ROUTE_ON_TERMINATING_SERVER,
    "ISM0006",
    "TlsRouteOnTerminatingGatewayServer",
    Warning,
    "tls route %s is bound to Gateway %s whose server on port %d terminates TLS (mode %s); Istio applies tls routes only to PASSTHROUGH servers, so this route is never used there."
);

/// isthmus's message types.
pub const ISM_TYPES: &[MessageType] = &[
    ISM_MERGED_DESTINATION_RULES,
    ISM_DR_HOST_MATCHES_NO_SERVICE,
    ISM_CREDENTIAL_NAME_IGNORED_ON_SIDECARS,
    ISM_PORT_LEVEL_WIPES_TOP_LEVEL,
    ISM_VS_SUBSET_NOT_IN_APPLIED_DR,
    ISM_TLS_ROUTE_ON_TERMINATING_SERVER,
    ISM_KEEPALIVE_NOT_BELOW_IDLE,
    ISM_ONE_REQUEST_PER_CONNECTION,
    ISM_OUTLIER_ON_SINGLE_ENDPOINT,
    ISM_DR_CREDENTIAL_SECRET,
    ISM_SNI_NOT_SERVED_BY_GATEWAY,
    ISM_GATEWAY_SERVER_DROPPED,
    ISM_EGRESS_BYPASS,
    ISM_VS_PORT_NOT_ON_GATEWAY,
    ISM_GATEWAY_PORT_NOT_ON_SERVICE,
    ISM_ORIGINATION_WITHOUT_VERIFICATION,
    ISM_SUBSET_BLOCK_REPLACES_TOP_LEVEL,
];

mt!(
    ISM_KEEPALIVE_NOT_BELOW_IDLE,
    "ISM0007",
    "KeepaliveNotBelowIdleTimeout",
    Warning,
    "%s: tcpKeepalive.time %s is not below the idle timeout %s (%s), so the connection is closed as idle before the first keepalive probe is sent and keepalive protects nothing."
);
mt!(
    ISM_ONE_REQUEST_PER_CONNECTION,
    "ISM0008",
    "OneRequestPerConnection",
    Warning,
    "%s: maxRequestsPerConnection 1 disables connection reuse: every request opens a new upstream connection (and, with mTLS or TLS origination, a new handshake)."
);
mt!(
    ISM_OUTLIER_ON_SINGLE_ENDPOINT,
    "ISM0009",
    "OutlierDetectionOnSingleEndpoint",
    Warning,
    "%s: outlierDetection on %s, which has a single endpoint (%s): once ejected no healthy host is left and requests fail with 503 UH until baseEjectionTime passes (Istio disables Envoy's panic threshold)."
);
mt!(
    ISM_DR_CREDENTIAL_SECRET,
    "ISM0010",
    "DestinationRuleCredentialSecret",
    Error,
    "%s: credentialName %q %s."
);

mt!(
    ISM_SNI_NOT_SERVED_BY_GATEWAY,
    "ISM0011",
    "SniNotServedByGateway",
    Error,
    "%s: sni %q matches no host of the TLS-terminating servers of %s (%s) that select the pods behind %s: the gateway has no filter chain for this SNI and resets the connection."
);
mt!(
    ISM_GATEWAY_SERVER_DROPPED,
    "ISM0012",
    "GatewayServerDropped",
    Error,
    "Server %s on port %d is dropped by Istio: %s."
);

mt!(
    ISM_EGRESS_BYPASS,
    "ISM0013",
    "EgressGatewayBypass",
    Warning,
    "Port %d of %s (ServiceEntry %s) has no mesh route to the egress gateway %s: sidecars send that traffic straight to the destination, bypassing the gateway%s."
);

mt!(
    ISM_VS_PORT_NOT_ON_GATEWAY,
    "ISM0014",
    "VirtualServiceMatchPortNotOnGateway",
    Warning,
    "%s rule #%d matches port %d on Gateway %s, which has no server on that port (ports %s): the rule never matches there."
);

mt!(
    ISM_GATEWAY_PORT_NOT_ON_SERVICE,
    "ISM0015",
    "GatewayPortNotOnService",
    Warning,
    "Server port %d is neither a port nor a targetPort of %s, the Service(s) selecting the gateway pods %s (ports %s): Istio binds the listener to port %d itself, which no Service port forwards to, so traffic sent through the Service never reaches this server."
);

mt!(
    ISM_ORIGINATION_WITHOUT_VERIFICATION,
    "ISM0016",
    "OriginationWithoutServerVerification",
    Warning,
    "%s originates %s TLS to %s %s."
);

mt!(
    ISM_SUBSET_BLOCK_REPLACES_TOP_LEVEL,
    "ISM0017",
    "SubsetBlockReplacesTopLevel",
    Warning,
    "Subset %q sets %s, which replaces the destination-level %s as a whole (blocks are not merged field by field): %s %s not applied to this subset."
);
