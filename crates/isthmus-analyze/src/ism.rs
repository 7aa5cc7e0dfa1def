//! isthmus's own analyzers (codes ISM0001+): the traps the seed guide found by hand on a live
//! cluster, each silent in Istio. Every message says what happens and how to fix it. The Istio
//! semantics they rely on are documented in shared/reference/istio-semantics.md §1–§4
//! (DestinationRule merge and lookup, traffic-policy layering, credentialName on sidecars,
//! gateway route binding).

use crate::ctx::{
    export_to_all, fmt_full_name, full_name, full_name_from_fqdn, host_to_fqdn, ns_of,
    short_or_full, Ctx,
};
use crate::istio::{gateway_hosts_for, route_destinations};
use crate::messages::{self as mt, Arg};
use crate::{Analyzer, Message};
use isthmus_api::istio::{ClientTlsSettings, DestinationRule, TrafficPolicy};
use isthmus_api::validation::checks::host;
use isthmus_api::{Kind, Object};
use std::collections::{BTreeMap, BTreeSet};

pub(crate) static ALL: &[Analyzer] = &[
    Analyzer {
        name: "isthmus.MergedDestinationRulesAnalyzer",
        codes: &["ISM0001"],
        run: merged_destination_rules,
    },
    Analyzer {
        name: "isthmus.DestinationRuleHostAnalyzer",
        codes: &["ISM0002"],
        run: dr_host_matches_no_service,
    },
    Analyzer {
        name: "isthmus.SidecarCredentialNameAnalyzer",
        codes: &["ISM0003"],
        run: credential_name_on_sidecars,
    },
    Analyzer {
        name: "isthmus.PortLevelSettingsAnalyzer",
        codes: &["ISM0004"],
        run: port_level_wipes_top_level,
    },
    Analyzer {
        name: "isthmus.AppliedSubsetAnalyzer",
        codes: &["ISM0005"],
        run: subset_in_applied_dr,
    },
    Analyzer {
        name: "isthmus.TlsRouteOnTerminatingServerAnalyzer",
        codes: &["ISM0006"],
        run: tls_route_on_terminating_server,
    },
    Analyzer {
        name: "isthmus.KeepaliveIdleAnalyzer",
        codes: &["ISM0007"],
        run: keepalive_not_below_idle,
    },
    Analyzer {
        name: "isthmus.ConnectionReuseAnalyzer",
        codes: &["ISM0008"],
        run: one_request_per_connection,
    },
    Analyzer {
        name: "isthmus.OutlierSingleEndpointAnalyzer",
        codes: &["ISM0009"],
        run: outlier_on_single_endpoint,
    },
    Analyzer {
        name: "isthmus.CredentialSecretAnalyzer",
        codes: &["ISM0010"],
        run: dr_credential_secret,
    },
    Analyzer {
        name: "isthmus.SniAlignmentAnalyzer",
        codes: &["ISM0011"],
        run: sni_not_served_by_gateway,
    },
    Analyzer {
        name: "isthmus.GatewayServerConflictAnalyzer",
        codes: &["ISM0012"],
        run: gateway_server_dropped,
    },
    Analyzer {
        name: "isthmus.EgressBypassAnalyzer",
        codes: &["ISM0013"],
        run: egress_bypass,
    },
    Analyzer {
        name: "isthmus.GatewayPortAlignmentAnalyzer",
        codes: &["ISM0014"],
        run: vs_port_not_on_gateway,
    },
    Analyzer {
        name: "isthmus.GatewayServicePortAnalyzer",
        codes: &["ISM0015"],
        run: gateway_port_not_on_service,
    },
    Analyzer {
        name: "isthmus.OriginationVerificationAnalyzer",
        codes: &["ISM0016"],
        run: origination_without_verification,
    },
    Analyzer {
        name: "isthmus.SubsetBlockAnalyzer",
        codes: &["ISM0017"],
        run: subset_block_replaces_top_level,
    },
];

fn with_fix(mut m: Message, fix: &str) -> Message {
    m.fix = Some(fix.to_string());
    m
}

fn has_selector(o: &Object) -> bool {
    o.raw
        .pointer("/spec/workloadSelector")
        .is_some_and(|v| !v.is_null())
}

/// `ResolveShortnameToFQDN`: a host without a dot is qualified with the DR's namespace.
fn resolve_host(domain: &str, ns: &str, h: &str) -> String {
    if h == "*" || h.contains('.') {
        h.to_string()
    } else {
        format!("{h}.{ns}.svc.{domain}")
    }
}

/// Istio's DR order (`sortConfigBySelectorAndCreationTime`): selector DRs first, then oldest
/// creationTimestamp, then name, then namespace. Objects read from files carry no timestamp,
/// as objects applied in one `kubectl apply` share one second: name order decides.
fn dr_order(o: &Object) -> (bool, String, String, String) {
    (
        !has_selector(o),
        o.meta.creation_timestamp.clone().unwrap_or_default(),
        o.name().to_string(),
        ns_of(o).to_string(),
    )
}

fn sorted_drs<'a>(c: &Ctx<'a>) -> Vec<(&'a Object, &'a DestinationRule)> {
    let mut v: Vec<(&Object, &DestinationRule)> = c
        .of(Kind::DestinationRule)
        .filter_map(|o| o.as_destination_rule().map(|d| (o, d)))
        .collect();
    v.sort_by_key(|(o, _)| dr_order(o));
    v
}

// ---------------------------------------------------------------------------------------------
// ISM0001: several DestinationRules for one host merge; the oldest top-level policy wins.

struct Merged<'a> {
    winner: &'a Object,
    export: BTreeSet<String>,
    has_policy: bool,
    subsets: BTreeSet<String>,
}

fn merged_destination_rules(c: &Ctx<'_>, out: &mut Vec<Message>) {
    let mut groups: BTreeMap<(String, String), Vec<Merged<'_>>> = BTreeMap::new();
    for (o, dr) in sorted_drs(c) {
        if has_selector(o) {
            continue;
        }
        let ns = ns_of(o).to_string();
        let h = resolve_host(&c.domain, &ns, &dr.host);
        let export: BTreeSet<String> = dr.export_to.iter().cloned().collect();
        let subsets: Vec<String> = dr.subsets.iter().map(|s| s.name.clone()).collect();
        let has_policy = dr.traffic_policy.is_some();
        let entries = groups.entry((ns, h.clone())).or_default();
        let mut append_separately = true;
        let mut losses = Vec::new();
        let mut winner_name = None;
        for m in entries.iter_mut() {
            let equal = m.export == export;
            let superset = !m.export.is_empty() && export.is_superset(&m.export);
            if !equal && !superset {
                continue;
            }
            append_separately = !equal;
            winner_name.get_or_insert_with(|| full_name(m.winner));
            if has_policy {
                if m.has_policy {
                    losses.push("its top-level trafficPolicy is ignored".to_string());
                } else {
                    m.has_policy = true;
                }
            }
            for s in &subsets {
                if !m.subsets.insert(s.clone()) {
                    losses.push(format!("its subset {s:?} is ignored (the older rule's subset of that name is used)"));
                }
            }
        }
        if let Some(w) = winner_name {
            if !losses.is_empty() {
                out.push(with_fix(
                    c.msg(o, &mt::ISM_MERGED_DESTINATION_RULES, &[full_name(o).into(), w.into(), h.into(), losses.join("; ").into()], Some("spec.host".into())),
                    "merge them into one DestinationRule per host and namespace (or give per-client policies a workloadSelector); a newer rule never overrides the older one's trafficPolicy",
                ));
            }
        }
        if append_separately {
            entries.push(Merged {
                winner: o,
                export,
                has_policy,
                subsets: subsets.into_iter().collect(),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0002: a DestinationRule host that matches no service (`dr: null` in the seed).

/// Every service host in the mesh with the namespace that declares it.
fn service_hosts(c: &Ctx<'_>) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for o in c.of(Kind::Service) {
        v.push((
            host_to_fqdn(&c.domain, ns_of(o), o.name()),
            ns_of(o).to_string(),
        ));
    }
    for o in c.of(Kind::ServiceEntry) {
        if let Some(se) = o.as_service_entry() {
            for h in &se.hosts {
                v.push((host_to_fqdn(&c.domain, ns_of(o), h), ns_of(o).to_string()));
            }
        }
    }
    v
}

fn dr_host_matches_no_service(c: &Ctx<'_>, out: &mut Vec<Message>) {
    let services = service_hosts(c);
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        let ns = ns_of(o);
        let h = resolve_host(&c.domain, ns, &dr.host);
        if h == "*" || services.iter().any(|(s, _)| host::matches(&h, s)) {
            continue;
        }
        // A likely intended host: a service with the same first label elsewhere.
        let first = dr.host.split('.').next().unwrap_or("");
        let hint = services
            .iter()
            .find(|(s, _)| !first.is_empty() && s.split('.').next() == Some(first))
            .map(|(s, _)| format!(" (did you mean {s:?}?)"))
            .unwrap_or_default();
        out.push(with_fix(
            c.msg(o, &mt::ISM_DR_HOST_MATCHES_NO_SERVICE, &[h.into(), ns.into(), hint.into()], Some("spec.host".into())),
            "use the exact FQDN of a Service (name.namespace.svc.<cluster domain>) or a ServiceEntry host; a short name resolves in the DestinationRule's own namespace",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0003: credentialName on a DestinationRule without workloadSelector is ignored by sidecars.

/// Every client TLS block of a DR with its location.
fn tls_blocks(dr: &DestinationRule) -> Vec<(String, &ClientTlsSettings)> {
    fn of_policy<'a>(
        prefix: &str,
        tp: &'a TrafficPolicy,
        out: &mut Vec<(String, &'a ClientTlsSettings)>,
    ) {
        if let Some(t) = &tp.tls {
            out.push((format!("{prefix}.tls"), t));
        }
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            if let Some(t) = &p.tls {
                out.push((format!("{prefix}.portLevelSettings[{i}].tls"), t));
            }
        }
    }
    let mut out = Vec::new();
    if let Some(tp) = &dr.traffic_policy {
        of_policy("spec.trafficPolicy", tp, &mut out);
    }
    for (j, s) in dr.subsets.iter().enumerate() {
        if let Some(tp) = &s.traffic_policy {
            of_policy(&format!("spec.subsets[{j}].trafficPolicy"), tp, &mut out);
        }
    }
    out
}

/// A pod that runs a gateway (Istio's charts label them `istio: ...gateway`).
fn is_gateway_pod(p: &Object) -> bool {
    p.meta
        .labels
        .get("istio")
        .is_some_and(|v| v.contains("gateway"))
        || p.meta
            .labels
            .get("app")
            .is_some_and(|v| v.contains("gateway"))
}

/// A DR visible only in its own namespace where only gateways run (or, with no pods known,
/// the root namespace) is a gateway's rule: sidecars never see it.
fn gateway_only_rule(c: &Ctx<'_>, o: &Object, dr: &DestinationRule) -> bool {
    let ns = ns_of(o);
    let private = dr.export_to.len() == 1 && (dr.export_to[0] == "." || dr.export_to[0] == ns);
    if !private {
        return false;
    }
    let pods: Vec<&Object> = c.of(Kind::Pod).filter(|p| ns_of(p) == ns).collect();
    if pods.is_empty() {
        return ns == c.mesh.root_namespace;
    }
    pods.iter().all(|p| is_gateway_pod(p))
}

fn credential_name_on_sidecars(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        if has_selector(o) || gateway_only_rule(c, o, dr) {
            continue;
        }
        for (field, t) in tls_blocks(dr) {
            let cn = t.credential_name.as_deref().unwrap_or("");
            if matches!(t.mode(), "SIMPLE" | "MUTUAL")
                && !cn.is_empty()
                && !cn.starts_with("configmap://")
            {
                let what = field.trim_start_matches("spec.").to_string();
                out.push(with_fix(
                    c.msg(o, &mt::ISM_CREDENTIAL_NAME_IGNORED_ON_SIDECARS, &[what.into(), cn.into()], Some(format!("{field}.credentialName"))),
                    "if sidecars originate this TLS, give the DestinationRule a workloadSelector for them (exportTo: [\".\"]) or reference mounted files (clientCertificate/privateKey/caCertificates); if only a gateway uses it, select the gateway pods",
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0004: a portLevelSettings entry replaces the whole policy for its port.

fn blocks_of_policy(tp: &TrafficPolicy, with_l4: bool) -> Vec<&'static str> {
    let mut v = Vec::new();
    if tp.connection_pool.is_some() {
        v.push("connectionPool");
    }
    if tp.load_balancer.is_some() {
        v.push("loadBalancer");
    }
    if tp.outlier_detection.is_some() {
        v.push("outlierDetection");
    }
    if tp.tls.is_some() {
        v.push("tls");
    }
    if with_l4 && tp.tunnel.is_some() {
        v.push("tunnel");
    }
    if with_l4 && tp.proxy_protocol.is_some() {
        v.push("proxyProtocol");
    }
    v
}

fn blocks_of_port(p: &isthmus_api::istio::PortTrafficPolicy) -> Vec<&'static str> {
    let mut v = Vec::new();
    if p.connection_pool.is_some() {
        v.push("connectionPool");
    }
    if p.load_balancer.is_some() {
        v.push("loadBalancer");
    }
    if p.outlier_detection.is_some() {
        v.push("outlierDetection");
    }
    if p.tls.is_some() {
        v.push("tls");
    }
    v
}

fn port_level_wipes_top_level(c: &Ctx<'_>, out: &mut Vec<Message>) {
    let fix = "repeat the blocks you want to keep inside the portLevelSettings entry (no field is inherited from the level above)";
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        let top = dr.traffic_policy.as_ref();
        let top_blocks: Vec<&str> = top.map(|t| blocks_of_policy(t, true)).unwrap_or_default();
        let mut check =
            |prefix: String,
             level: &str,
             above: &[&str],
             entries: &[isthmus_api::istio::PortTrafficPolicy]| {
                for (i, p) in entries.iter().enumerate() {
                    let Some(port) = &p.port else { continue };
                    let set = blocks_of_port(p);
                    let lost: Vec<&str> =
                        above.iter().copied().filter(|b| !set.contains(b)).collect();
                    if lost.is_empty() {
                        continue;
                    }
                    let only = if set.is_empty() {
                        "nothing".to_string()
                    } else {
                        set.join(" and ")
                    };
                    let verb = if lost.len() == 1 { "is" } else { "are" };
                    let field = format!("{prefix}.portLevelSettings[{i}]");
                    out.push(with_fix(
                        c.msg(
                            o,
                            &mt::ISM_PORT_LEVEL_WIPES_TOP_LEVEL,
                            &[
                                field.trim_start_matches("spec.").to_string().into(),
                                Arg::Int(i64::from(port.number)),
                                only.into(),
                                level.into(),
                                lost.join(", ").into(),
                                verb.into(),
                            ],
                            Some(field),
                        ),
                        fix,
                    ));
                }
            };
        if let Some(tp) = top {
            check(
                "spec.trafficPolicy".into(),
                "destination",
                &top_blocks,
                &tp.port_level_settings,
            );
        }
        for (j, s) in dr.subsets.iter().enumerate() {
            let Some(stp) = &s.traffic_policy else {
                continue;
            };
            // A subset port entry replaces the four blocks for that port, including those the
            // subset would otherwise inherit from the destination level.
            let mut above: Vec<&str> = top_blocks
                .iter()
                .copied()
                .filter(|b| !matches!(*b, "tunnel" | "proxyProtocol"))
                .collect();
            for b in blocks_of_policy(stp, false) {
                if !above.contains(&b) {
                    above.push(b);
                }
            }
            check(
                format!("spec.subsets[{j}].trafficPolicy"),
                "destination and subset",
                &above,
                &stp.port_level_settings,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0005: a route's subset must exist in the DestinationRule that actually applies.

/// Is a DR in its namespace visible to clients of the same namespace (`namespaceLocal`)?
fn local_visible(o: &Object, dr: &DestinationRule) -> bool {
    let ns = ns_of(o);
    dr.export_to.is_empty() || dr.export_to.iter().any(|e| e == "*" || e == "." || e == ns)
}

/// Is a DR exported to clients in `client_ns` (`exportedByNamespace` + filter)?
fn exported_to(o: &Object, dr: &DestinationRule, client_ns: &str) -> bool {
    let ns = ns_of(o);
    if has_selector(o) {
        return false;
    }
    let private = dr.export_to.len() == 1 && (dr.export_to[0] == "." || dr.export_to[0] == ns);
    !private && (export_to_all(&dr.export_to) || dr.export_to.iter().any(|e| e == client_ns))
}

/// The DRs that apply to `host` for clients in `client_ns`, with Istio's precedence: client
/// namespace, then the service's namespace, then the root namespace; most specific host match
/// within a namespace; no merging across levels.
/// Selector-less DestinationRules by namespace, in Istio's order, with resolved hosts.
type DrIndex<'a> = BTreeMap<String, Vec<(&'a Object, &'a DestinationRule, String)>>;

fn dr_index<'a>(c: &Ctx<'a>) -> DrIndex<'a> {
    let mut idx: DrIndex<'a> = BTreeMap::new();
    for (o, d) in sorted_drs(c) {
        if has_selector(o) {
            continue;
        }
        let ns = ns_of(o).to_string();
        let h = resolve_host(&c.domain, &ns, &d.host);
        idx.entry(ns).or_default().push((o, d, h));
    }
    idx
}

fn applied_drs<'a>(
    c: &Ctx<'a>,
    idx: &DrIndex<'a>,
    client_ns: &str,
    fqdn: &str,
    service_namespaces: &[String],
) -> Vec<&'a Object> {
    let pick = |ns: &str, visible: &dyn Fn(&Object, &DestinationRule) -> bool| -> Vec<&'a Object> {
        let Some(list) = idx.get(ns) else {
            return Vec::new();
        };
        let cands: Vec<(&'a Object, &str)> = list
            .iter()
            .filter(|(o, d, h)| visible(o, d) && host::subset_of(fqdn, h))
            .map(|(o, _, h)| (*o, h.as_str()))
            .collect();
        // Most specific: exact, else the longest wildcard suffix.
        let best = cands
            .iter()
            .map(|(_, h)| *h)
            .max_by_key(|h| (*h == fqdn, h.len()));
        match best {
            Some(b) => cands
                .into_iter()
                .filter(|(_, h)| *h == b)
                .map(|(o, _)| o)
                .collect(),
            None => Vec::new(),
        }
    };
    let found = pick(client_ns, &|o, d| local_visible(o, d));
    if !found.is_empty() {
        return found;
    }
    for sns in service_namespaces {
        let found = pick(sns, &|o, d| exported_to(o, d, client_ns));
        if !found.is_empty() {
            return found;
        }
    }
    let root = c.mesh.root_namespace.clone();
    pick(&root, &|o, d| exported_to(o, d, client_ns))
}

fn subset_in_applied_dr(c: &Ctx<'_>, out: &mut Vec<Message>) {
    let services = service_hosts(c);
    let idx = dr_index(c);
    // Namespaces declaring each host (Services and ServiceEntries).
    let mut host_namespaces: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (h, ns) in &services {
        host_namespaces
            .entry(h.as_str())
            .or_default()
            .push(ns.as_str());
    }
    for o in c.of(Kind::VirtualService) {
        let Some(v) = o.as_virtual_service() else {
            continue;
        };
        let vs_ns = ns_of(o);
        let mut dests: Vec<(String, &isthmus_api::istio::Destination)> = route_destinations(v);
        for (i, h) in v.http.iter().enumerate() {
            if let Some(m) = &h.mirror {
                dests.push((format!("spec.http[{i}].mirror.host"), m));
            }
        }
        for (field, d) in dests {
            let Some(subset) = d.subset.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            let fqdn = host_to_fqdn(&c.domain, vs_ns, &d.host);
            let mut svc_ns: Vec<String> = Vec::new();
            if let Some((ns, _)) = full_name_from_fqdn(&c.domain, &fqdn) {
                svc_ns.push(ns);
            }
            for ns in host_namespaces.get(fqdn.as_str()).into_iter().flatten() {
                if !svc_ns.iter().any(|x| x == ns) {
                    svc_ns.push(ns.to_string());
                }
            }
            let applied = applied_drs(c, &idx, vs_ns, &fqdn, &svc_ns);
            let defined = applied
                .iter()
                .filter_map(|dr| dr.as_destination_rule())
                .any(|dr| dr.subsets.iter().any(|s| s.name == subset));
            if defined {
                continue;
            }
            let which = if applied.is_empty() {
                "no DestinationRule".to_string()
            } else {
                applied
                    .iter()
                    .map(|d| format!("DestinationRule {}", full_name(d)))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            out.push(with_fix(
                c.msg(
                    o,
                    &mt::ISM_VS_SUBSET_NOT_IN_APPLIED_DR,
                    &[fqdn.clone().into(), subset.into(), which.into(), vs_ns.into()],
                    Some(field.replace(".host", ".subset")),
                ),
                "define the subset in the DestinationRule that applies (DestinationRules are not merged across namespaces: one for this host in the client namespace shadows the service namespace's), or route without the subset",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0006: `tls` routes never match on a server that terminates TLS.

fn tls_route_on_terminating_server(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::VirtualService) {
        let Some(v) = o.as_virtual_service() else {
            continue;
        };
        let vs_ns = ns_of(o);
        for (i, r) in v.tls.iter().enumerate() {
            let mut gws: Vec<String> = r
                .matches
                .iter()
                .flat_map(|m| m.gateways.iter().cloned())
                .collect();
            if gws.is_empty() {
                gws = v.gateways.clone();
            }
            let ports: BTreeSet<u32> = r.matches.iter().filter_map(|m| m.port).collect();
            for g in gws.iter().filter(|g| *g != "mesh") {
                let (gns, gname) = short_or_full(vs_ns, g);
                let Some(gw) = c.find(Kind::Gateway, &gns, &gname) else {
                    continue;
                };
                let Some(gspec) = gw.as_gateway() else {
                    continue;
                };
                let visible_hosts = gateway_hosts_for(gw, vs_ns);
                if !visible_hosts
                    .iter()
                    .any(|gh| v.hosts.iter().any(|vh| host::matches(gh, vh)))
                {
                    continue;
                }
                for s in &gspec.servers {
                    let (Some(p), Some(t)) = (&s.port, &s.tls) else {
                        continue;
                    };
                    if !matches!(
                        t.mode(),
                        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" | "ISTIO_MUTUAL"
                    ) {
                        continue;
                    }
                    if !ports.is_empty() && !ports.contains(&p.number) {
                        continue;
                    }
                    out.push(with_fix(
                        c.msg(
                            o,
                            &mt::ISM_TLS_ROUTE_ON_TERMINATING_SERVER,
                            &[format!("#{i}").into(), fmt_full_name(&gns, &gname).into(), Arg::Int(i64::from(p.number)), t.mode().into()],
                            Some(format!("spec.tls[{i}]")),
                        ),
                        "after termination the stream is plain: use a tcp route (server protocol TLS) or an http route (HTTPS), or set the server's tls.mode to PASSTHROUGH to route on SNI",
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connection-pool settings that defeat themselves (ISM0007, ISM0008).

/// Every connection pool of a DR or Sidecar with its location.
fn pools(o: &Object) -> Vec<(String, &isthmus_api::istio::ConnectionPoolSettings)> {
    fn of_policy<'a>(
        prefix: &str,
        tp: &'a TrafficPolicy,
        out: &mut Vec<(String, &'a isthmus_api::istio::ConnectionPoolSettings)>,
    ) {
        if let Some(cp) = &tp.connection_pool {
            out.push((format!("{prefix}.connectionPool"), cp));
        }
        for (i, p) in tp.port_level_settings.iter().enumerate() {
            if let Some(cp) = &p.connection_pool {
                out.push((
                    format!("{prefix}.portLevelSettings[{i}].connectionPool"),
                    cp,
                ));
            }
        }
    }
    let mut out = Vec::new();
    if let Some(dr) = o.as_destination_rule() {
        if let Some(tp) = &dr.traffic_policy {
            of_policy("spec.trafficPolicy", tp, &mut out);
        }
        for (j, s) in dr.subsets.iter().enumerate() {
            if let Some(tp) = &s.traffic_policy {
                of_policy(&format!("spec.subsets[{j}].trafficPolicy"), tp, &mut out);
            }
        }
    }
    if let Some(sc) = o.as_sidecar() {
        if let Some(cp) = &sc.inbound_connection_pool {
            out.push(("spec.inboundConnectionPool".to_string(), cp));
        }
        for (i, ing) in sc.ingress.iter().enumerate() {
            if let Some(cp) = &ing.connection_pool {
                out.push((format!("spec.ingress[{i}].connectionPool"), cp));
            }
        }
    }
    out
}

fn nanos(d: &str) -> Option<i128> {
    isthmus_api::validation::checks::parse_go_duration(d).ok()
}

/// Envoy's default idle timeout for upstream connections as Istio configures it (1h).
const DEFAULT_IDLE: &str = "1h";

fn keepalive_not_below_idle(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c
        .objects
        .iter()
        .filter(|o| matches!(o.kind, Kind::DestinationRule | Kind::Sidecar))
    {
        for (field, cp) in pools(o) {
            let Some(ka_time) = cp
                .tcp
                .as_ref()
                .and_then(|t| t.tcp_keepalive.as_ref())
                .and_then(|k| k.time.as_deref())
            else {
                continue;
            };
            let Some(ka) = nanos(ka_time) else { continue };
            // The effective idle timeout: tcp.idleTimeout for TCP, http.idleTimeout for HTTP;
            // `0s` disables it; unset means Envoy's 1h default.
            let mut idles: Vec<(String, &str)> = Vec::new();
            match cp.tcp.as_ref().and_then(|t| t.idle_timeout.as_deref()) {
                Some(v) => idles.push(("tcp.idleTimeout".into(), v)),
                None => idles.push(("tcp.idleTimeout default".into(), DEFAULT_IDLE)),
            }
            if let Some(v) = cp.http.as_ref().and_then(|h| h.idle_timeout.as_deref()) {
                idles.push(("http.idleTimeout".into(), v));
            }
            let shortest = idles
                .iter()
                .filter_map(|(n, v)| nanos(v).filter(|x| *x > 0).map(|x| (x, n.clone(), *v)))
                .min();
            let Some((idle, name, text)) = shortest else {
                continue;
            };
            if ka >= idle {
                out.push(with_fix(
                    c.msg(
                        o,
                        &mt::ISM_KEEPALIVE_NOT_BELOW_IDLE,
                        &[field.trim_start_matches("spec.").to_string().into(), ka_time.into(), text.into(), name.into()],
                        Some(format!("{field}.tcp.tcpKeepalive.time")),
                    ),
                    "set tcpKeepalive.time below the idle timeouts on the path (this pool's idleTimeout and any NAT/load balancer idle limit), e.g. 300s",
                ));
            }
        }
    }
}

fn one_request_per_connection(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c
        .objects
        .iter()
        .filter(|o| matches!(o.kind, Kind::DestinationRule | Kind::Sidecar))
    {
        for (field, cp) in pools(o) {
            if cp.http.as_ref().and_then(|h| h.max_requests_per_connection) == Some(1) {
                out.push(with_fix(
                    c.msg(
                        o,
                        &mt::ISM_ONE_REQUEST_PER_CONNECTION,
                        &[field.trim_start_matches("spec.").to_string().into()],
                        Some(format!("{field}.http.maxRequestsPerConnection")),
                    ),
                    "remove maxRequestsPerConnection (0 = unlimited) or raise it; recycle connections with maxConnectionDuration or idleTimeout instead",
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0009: outlier detection can eject the only endpoint.

/// The number of endpoints of a DR's destination when it is known to be one: Some(reason).
fn single_endpoint(c: &Ctx<'_>, dr_ns: &str, h: &str) -> Option<String> {
    let fqdn = resolve_host(&c.domain, dr_ns, h);
    for o in c.of(Kind::ServiceEntry) {
        let Some(se) = o.as_service_entry() else {
            continue;
        };
        if !se
            .hosts
            .iter()
            .any(|x| host_to_fqdn(&c.domain, ns_of(o), x) == fqdn)
        {
            continue;
        }
        return match se.resolution() {
            "DNS_ROUND_ROBIN" => {
                Some("ServiceEntry resolution DNS_ROUND_ROBIN is one logical host".into())
            }
            "STATIC" if se.endpoints.len() == 1 => {
                Some("ServiceEntry has one STATIC endpoint".into())
            }
            "DNS" if se.endpoints.len() == 1 => Some("ServiceEntry has one DNS endpoint".into()),
            _ => None,
        };
    }
    let (ns, name) = full_name_from_fqdn(&c.domain, &fqdn)?;
    let svc = c.find(Kind::Service, &ns, &name)?;
    let sel = &svc.as_service()?.selector;
    if sel.is_empty() {
        return None;
    }
    let mut count: u64 = 0;
    for p in c
        .of(Kind::Pod)
        .filter(|p| ns_of(p) == ns && crate::ctx::selector_matches(sel, &p.meta.labels))
    {
        // Pods synthesised from a Deployment stand for its replicas.
        let replicas = c
            .find(Kind::Deployment, ns_of(p), p.name())
            .filter(|_| p.raw.get("metadata").is_none())
            .and_then(|d| d.as_deployment())
            .map(|d| u64::from(d.replicas.unwrap_or(1)))
            .unwrap_or(1);
        count += replicas;
    }
    (count == 1).then(|| format!("Service {} selects one pod", fmt_full_name(&ns, &name)))
}

fn outlier_on_single_endpoint(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        let mut places: Vec<String> = Vec::new();
        if let Some(tp) = &dr.traffic_policy {
            if tp.outlier_detection.is_some() {
                places.push("spec.trafficPolicy.outlierDetection".into());
            }
            for (i, p) in tp.port_level_settings.iter().enumerate() {
                if p.outlier_detection.is_some() {
                    places.push(format!(
                        "spec.trafficPolicy.portLevelSettings[{i}].outlierDetection"
                    ));
                }
            }
        }
        if places.is_empty() {
            continue;
        }
        let Some(why) = single_endpoint(c, ns_of(o), &dr.host) else {
            continue;
        };
        for field in places {
            out.push(with_fix(
                c.msg(
                    o,
                    &mt::ISM_OUTLIER_ON_SINGLE_ENDPOINT,
                    &[field.trim_start_matches("spec.").to_string().into(), resolve_host(&c.domain, ns_of(o), &dr.host).into(), why.clone().into()],
                    Some(field),
                ),
                "drop outlierDetection for single-endpoint destinations, or keep traffic flowing with minHealthPercent/maxEjectionPercent tuned and more than one endpoint",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0010: a DestinationRule's credentialName must name a Secret the proxies can read.

fn dr_credential_secret(c: &Ctx<'_>, out: &mut Vec<Message>) {
    let gateway_namespaces: BTreeSet<String> = c
        .of(Kind::Pod)
        .filter(|p| is_gateway_pod(p))
        .map(|p| ns_of(p).to_string())
        .collect();
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        let ns = ns_of(o).to_string();
        // Sidecars (selector DRs) read from their own namespace; gateways from theirs.
        let readers: BTreeSet<String> = if has_selector(o) || gateway_namespaces.is_empty() {
            [ns.clone()].into()
        } else {
            let mut r = gateway_namespaces.clone();
            if !gateway_only_rule(c, o, dr) {
                r.insert(ns.clone());
            }
            r
        };
        for (field, t) in tls_blocks(dr) {
            let cn = t.credential_name.as_deref().unwrap_or("");
            if cn.is_empty()
                || cn.starts_with("configmap://")
                || !matches!(t.mode(), "SIMPLE" | "MUTUAL")
            {
                continue;
            }
            let what = field.trim_start_matches("spec.").to_string();
            let f = Some(format!("{field}.credentialName"));
            let fix = "create the Secret in the namespace of the proxy that originates the TLS (the gateway's namespace for egress), with tls.crt/tls.key (or cert/key) and ca.crt";
            let found: Vec<&Object> = readers
                .iter()
                .filter_map(|r| c.find(Kind::Secret, r, cn))
                .collect();
            if found.is_empty() {
                let elsewhere: Vec<String> = c
                    .of(Kind::Secret)
                    .filter(|s| s.name() == cn)
                    .map(|s| ns_of(s).to_string())
                    .collect();
                let reader_list = readers.iter().cloned().collect::<Vec<_>>().join(", ");
                let problem = if elsewhere.is_empty() {
                    format!("names no Secret in namespace {reader_list}")
                } else {
                    format!("names a Secret that exists only in namespace {}, but the proxies using this rule read it from {reader_list}", elsewhere.join(", "))
                };
                out.push(with_fix(
                    c.msg(
                        o,
                        &mt::ISM_DR_CREDENTIAL_SECRET,
                        &[what.clone().into(), cn.into(), problem.into()],
                        f.clone(),
                    ),
                    fix,
                ));
                continue;
            }
            for s in found {
                let keys: BTreeSet<String> = s
                    .as_secret()
                    .and_then(|b| b.decoded().ok())
                    .map(|d| d.into_keys().collect())
                    .unwrap_or_default();
                let has = |a: &str, b: &str| keys.contains(a) && keys.contains(b);
                let has_cert = has("tls.crt", "tls.key") || has("cert", "key");
                if t.mode() == "MUTUAL" && !has_cert {
                    let problem = format!(
                        "names Secret {} without a client certificate and key (tls.crt/tls.key or cert/key); it has [{}]",
                        full_name(s),
                        keys.iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                    out.push(with_fix(
                        c.msg(
                            o,
                            &mt::ISM_DR_CREDENTIAL_SECRET,
                            &[what.clone().into(), cn.into(), problem.into()],
                            f.clone(),
                        ),
                        fix,
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0011: the SNI a sidecar sends to a gateway must be one of the gateway server's hosts.

fn gateways_selecting<'a>(c: &Ctx<'a>, pods: &[&Object]) -> Vec<&'a Object> {
    c.of(Kind::Gateway)
        .filter(|g| {
            g.as_gateway().is_some_and(|gs| {
                pods.iter()
                    .any(|p| crate::ctx::selector_matches(&gs.selector, &p.meta.labels))
            })
        })
        .collect()
}

/// A gateway server host without its `ns/` prefix.
fn bare_host(h: &str) -> &str {
    h.split_once('/').map(|(_, x)| x).unwrap_or(h)
}

fn sni_not_served_by_gateway(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        // Only rules that set an SNI are concerned.
        if !tls_blocks(dr)
            .iter()
            .any(|(_, t)| t.sni.as_deref().is_some_and(|x| !x.is_empty()))
        {
            continue;
        }
        let fqdn = resolve_host(&c.domain, ns_of(o), &dr.host);
        let Some((sns, sname)) = full_name_from_fqdn(&c.domain, &fqdn) else {
            continue;
        };
        let Some(svc) = c
            .find(Kind::Service, &sns, &sname)
            .and_then(|s| s.as_service())
        else {
            continue;
        };
        if svc.selector.is_empty() {
            continue;
        }
        let pods: Vec<&Object> = c
            .of(Kind::Pod)
            .filter(|p| {
                ns_of(p) == sns && crate::ctx::selector_matches(&svc.selector, &p.meta.labels)
            })
            .collect();
        if pods.is_empty() {
            continue;
        }
        let gws = gateways_selecting(c, &pods);
        let mut hosts: Vec<String> = Vec::new();
        for g in &gws {
            for s in g
                .as_gateway()
                .map(|x| x.servers.as_slice())
                .unwrap_or_default()
            {
                if s.tls.as_ref().is_some_and(|t| {
                    matches!(
                        t.mode(),
                        "ISTIO_MUTUAL" | "MUTUAL" | "SIMPLE" | "OPTIONAL_MUTUAL"
                    )
                }) {
                    hosts.extend(s.hosts.iter().map(|h| bare_host(h).to_string()));
                }
            }
        }
        if hosts.is_empty() {
            continue;
        }
        for (field, t) in tls_blocks(dr) {
            let Some(sni) = t.sni.as_deref().filter(|s| !s.is_empty()) else {
                continue;
            };
            if t.mode() != "ISTIO_MUTUAL" && t.mode() != "MUTUAL" && t.mode() != "SIMPLE" {
                continue;
            }
            if hosts.iter().any(|h| host::matches(h, sni)) {
                continue;
            }
            let names = gws
                .iter()
                .map(|g| format!("Gateway {}", full_name(g)))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(with_fix(
                c.msg(
                    o,
                    &mt::ISM_SNI_NOT_SERVED_BY_GATEWAY,
                    &[
                        field.trim_start_matches("spec.").to_string().into(),
                        sni.into(),
                        names.into(),
                        format!("hosts {}", hosts.join(", ")).into(),
                        fqdn.clone().into(),
                    ],
                    Some(format!("{field}.sni")),
                ),
                "make the sni equal to a host of the gateway server (and of the VirtualService bound to it): the alignment sni == Gateway hosts == VirtualService hosts must hold",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0012: servers Istio drops when merging the Gateways of one workload.

fn gateway_server_dropped(c: &Ctx<'_>, out: &mut Vec<Message>) {
    let mut gws: Vec<&Object> = c.of(Kind::Gateway).collect();
    gws.sort_by_key(|g| {
        (
            g.meta.creation_timestamp.clone().unwrap_or_default(),
            g.name().to_string(),
            ns_of(g).to_string(),
        )
    });
    // The workloads: each gateway pod, or (no pods known) each distinct selector.
    let pods: Vec<&Object> = c.of(Kind::Pod).collect();
    let mut workloads: Vec<Vec<&Object>> = Vec::new();
    for p in &pods {
        let sel: Vec<&Object> = gws
            .iter()
            .copied()
            .filter(|g| {
                g.as_gateway()
                    .is_some_and(|gs| crate::ctx::selector_matches(&gs.selector, &p.meta.labels))
            })
            .collect();
        if sel.len() > 1 && !workloads.contains(&sel) {
            workloads.push(sel);
        }
    }
    if pods.is_empty() {
        let mut by_sel: BTreeMap<String, Vec<&Object>> = BTreeMap::new();
        for g in &gws {
            if let Some(gs) = g.as_gateway() {
                by_sel
                    .entry(crate::ctx::selector_string(&gs.selector))
                    .or_default()
                    .push(g);
            }
        }
        workloads.extend(by_sel.into_values().filter(|v| v.len() > 1));
    }
    for group in workloads {
        // (port, bind) -> host -> gateway that registered it (TLS servers); (port, bind) ->
        // (protocol, gateway) of the first plaintext server.
        let mut tls_hosts: BTreeMap<(u32, String), BTreeMap<String, String>> = BTreeMap::new();
        let mut plain: BTreeMap<(u32, String), (String, String)> = BTreeMap::new();
        for g in group {
            let Some(gs) = g.as_gateway() else { continue };
            let gns = ns_of(g);
            for (i, s) in gs.servers.iter().enumerate() {
                let Some(p) = &s.port else { continue };
                let key = (p.number, s.bind.clone().unwrap_or_default());
                let label = format!("#{i} of Gateway {}", full_name(g));
                let field = Some(format!("spec.servers[{i}]"));
                let proto = p.protocol.to_ascii_uppercase();
                if s.tls.is_some() {
                    let hosts: Vec<String> = s
                        .hosts
                        .iter()
                        .map(|h| match h.split_once('/') {
                            Some((".", x)) => format!("{gns}/{x}"),
                            Some(("*", x)) => x.to_string(),
                            _ => h.clone(),
                        })
                        .collect();
                    let registered = tls_hosts.entry(key.clone()).or_default();
                    if let Some((h, owner)) = hosts
                        .iter()
                        .find_map(|h| registered.get(h).map(|o| (h.clone(), o.clone())))
                    {
                        let why = format!("host {h:?} is already served on this port by Gateway {owner} (duplicate host names)");
                        out.push(with_fix(
                            c.msg(g, &mt::ISM_GATEWAY_SERVER_DROPPED, &[label.into(), Arg::Int(i64::from(p.number)), why.into()], field),
                            "give each server on a shared port distinct hosts, or move one to another port (PASSTHROUGH and terminating servers may share a port only with different hosts)",
                        ));
                        continue;
                    }
                    for h in hosts {
                        registered.insert(h, full_name(g));
                    }
                } else {
                    let is_http = matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB");
                    match plain.get(&key) {
                        Some((existing, owner)) => {
                            let existing_http =
                                matches!(existing.as_str(), "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB");
                            if !(is_http && existing_http) {
                                let why = format!("it conflicts with the {existing} server of Gateway {owner} on the same port");
                                out.push(with_fix(
                                    c.msg(g, &mt::ISM_GATEWAY_SERVER_DROPPED, &[label.into(), Arg::Int(i64::from(p.number)), why.into()], field),
                                    "use one protocol per gateway port (only HTTP-family plaintext servers merge), or a different port",
                                ));
                            }
                        }
                        None => {
                            plain.insert(key, (proto, full_name(g)));
                        }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0013: a host routed through an egress gateway on some ports but not on others.

/// Protocol classes of ServiceEntry ports, to tell which route kind can carry them.
fn port_class(proto: &str) -> &'static str {
    match proto.to_ascii_uppercase().as_str() {
        "HTTP" | "HTTP2" | "GRPC" | "GRPC-WEB" => "http",
        "HTTPS" | "TLS" => "tls",
        _ => "tcp",
    }
}

/// Does a route rule apply to the mesh (sidecars)? Its matches' `gateways` override the
/// VirtualService's.
fn rule_on_mesh(vs_gateways: &[String], match_gateways: &[Vec<String>]) -> bool {
    let vs_mesh = vs_gateways.is_empty() || vs_gateways.iter().any(|g| g == "mesh");
    if match_gateways.is_empty() {
        return vs_mesh;
    }
    match_gateways.iter().any(|g| {
        if g.is_empty() {
            vs_mesh
        } else {
            g.iter().any(|x| x == "mesh")
        }
    })
}

fn egress_bypass(c: &Ctx<'_>, out: &mut Vec<Message>) {
    // Services that front gateway pods: "egress gateway" destinations.
    let gateway_pods: Vec<&Object> = c.of(Kind::Pod).filter(|p| is_gateway_pod(p)).collect();
    let gateway_services: Vec<String> = c
        .of(Kind::Service)
        .filter(|s| {
            let Some(spec) = s.as_service() else {
                return false;
            };
            !spec.selector.is_empty()
                && gateway_pods.iter().any(|p| {
                    ns_of(p) == ns_of(s)
                        && crate::ctx::selector_matches(&spec.selector, &p.meta.labels)
                })
        })
        .map(|s| host_to_fqdn(&c.domain, ns_of(s), s.name()))
        .collect();
    for o in c.of(Kind::VirtualService) {
        let Some(v) = o.as_virtual_service() else {
            continue;
        };
        let vs_ns = ns_of(o);
        // (class or port) -> gateway service, for mesh rules that route to a gateway.
        let mut covered_ports: BTreeSet<u32> = BTreeSet::new();
        let mut covered_classes: BTreeSet<&str> = BTreeSet::new();
        let mut via: Option<String> = None;
        let mut note =
            |class: &'static str, ports: Vec<u32>, dests: Vec<&isthmus_api::istio::Destination>| {
                let gw = dests
                    .iter()
                    .map(|d| host_to_fqdn(&c.domain, vs_ns, &d.host))
                    .find(|h| gateway_services.contains(h));
                if let Some(g) = gw {
                    via.get_or_insert(g);
                    if ports.is_empty() {
                        covered_classes.insert(class);
                    } else {
                        covered_ports.extend(ports);
                    }
                }
            };
        // One pass for http, tls and tcp rules: a rule counts when it applies to sidecars; its
        // ports are those its matches name (no port on any match = every port).
        let rules = v
            .http
            .iter()
            .map(|h| {
                let m: Vec<_> = h.matches.iter().map(|m| (&m.gateways, m.port)).collect();
                (
                    "http",
                    m,
                    h.route.iter().map(|d| &d.destination).collect::<Vec<_>>(),
                )
            })
            .chain(v.tls.iter().map(|t| {
                let m: Vec<_> = t.matches.iter().map(|m| (&m.gateways, m.port)).collect();
                ("tls", m, t.route.iter().map(|d| &d.destination).collect())
            }))
            .chain(v.tcp.iter().map(|t| {
                let m: Vec<_> = t.matches.iter().map(|m| (&m.gateways, m.port)).collect();
                ("tcp", m, t.route.iter().map(|d| &d.destination).collect())
            }));
        for (class, matches, destinations) in rules {
            let gws: Vec<Vec<String>> = matches.iter().map(|(g, _)| (*g).clone()).collect();
            if rule_on_mesh(&v.gateways, &gws) {
                let ports: Vec<u32> = if matches.iter().any(|(_, p)| p.is_none()) {
                    vec![]
                } else {
                    matches.iter().filter_map(|(_, p)| *p).collect()
                };
                note(class, ports, destinations);
            }
        }
        let Some(gw) = via else { continue };
        for se_obj in c.of(Kind::ServiceEntry) {
            let Some(se) = se_obj.as_service_entry() else {
                continue;
            };
            for h in v.hosts.iter().filter(|h| se.hosts.contains(h)) {
                for p in &se.ports {
                    let class = port_class(p.protocol.as_deref().unwrap_or(""));
                    // A tcp rule without port catches every port; http/tls rules their class.
                    let covered = covered_ports.contains(&p.number)
                        || covered_classes.contains(class)
                        || covered_classes.contains("tcp");
                    if covered {
                        continue;
                    }
                    let extra = if c.mesh.outbound_mode() == "ALLOW_ANY" {
                        " (and under ALLOW_ANY, undeclared ports of this host go out directly too)"
                    } else {
                        ""
                    };
                    out.push(with_fix(
                        c.msg(
                            o,
                            &mt::ISM_EGRESS_BYPASS,
                            &[Arg::Int(i64::from(p.number)), h.into(), full_name(se_obj).into(), gw.clone().into(), extra.into()],
                            Some("spec.hosts".into()),
                        ),
                        "add a mesh-bound route for that port to the egress gateway, or drop the port from the ServiceEntry; set outboundTrafficPolicy REGISTRY_ONLY so nothing undeclared leaves directly",
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0014: a gateway-bound route matching a port the Gateway does not serve.

/// A route rule reduced to what port alignment needs: kind, index, (gateways, port) per match.
type PortRule<'a> = (&'a str, usize, Vec<(Vec<String>, Option<u32>)>);

fn vs_port_not_on_gateway(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::VirtualService) {
        let Some(v) = o.as_virtual_service() else {
            continue;
        };
        let vs_ns = ns_of(o);
        // (kind, rule index, matches as (gateways, port)).
        let mut rules: Vec<PortRule<'_>> = Vec::new();
        for (i, r) in v.http.iter().enumerate() {
            rules.push((
                "http",
                i,
                r.matches
                    .iter()
                    .map(|m| (m.gateways.clone(), m.port))
                    .collect(),
            ));
        }
        for (i, r) in v.tls.iter().enumerate() {
            rules.push((
                "tls",
                i,
                r.matches
                    .iter()
                    .map(|m| (m.gateways.clone(), m.port))
                    .collect(),
            ));
        }
        for (i, r) in v.tcp.iter().enumerate() {
            rules.push((
                "tcp",
                i,
                r.matches
                    .iter()
                    .map(|m| (m.gateways.clone(), m.port))
                    .collect(),
            ));
        }
        for (kind, i, matches) in rules {
            for (gws, port) in matches {
                let Some(port) = port else { continue };
                let gws = if gws.is_empty() {
                    v.gateways.clone()
                } else {
                    gws
                };
                for g in gws.iter().filter(|g| *g != "mesh") {
                    let (gns, gname) = short_or_full(vs_ns, g);
                    let Some(gw) = c
                        .find(Kind::Gateway, &gns, &gname)
                        .and_then(|x| x.as_gateway())
                    else {
                        continue;
                    };
                    let ports: BTreeSet<u32> = gw
                        .servers
                        .iter()
                        .filter_map(|s| s.port.as_ref().map(|p| p.number))
                        .collect();
                    if ports.is_empty() || ports.contains(&port) {
                        continue;
                    }
                    let list = ports
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ");
                    out.push(with_fix(
                        c.msg(
                            o,
                            &mt::ISM_VS_PORT_NOT_ON_GATEWAY,
                            &[kind.into(), Arg::Int(i as i64), Arg::Int(i64::from(port)), fmt_full_name(&gns, &gname).into(), list.into()],
                            Some(format!("spec.{kind}[{i}]")),
                        ),
                        "match the Gateway server's port number (the chain is Service port -> targetPort -> Gateway server port -> VirtualService match port)",
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0015: the gateway port chain's first link, Service port -> targetPort -> Gateway port.

/// Istio skips Services carrying this label when translating gateway ports (`resolvePorts`).
const NO_PORT_TRANSLATION: &str = "experimental.istio.io/disable-gateway-port-translation";

/// The port a Service port forwards to on `pods`: its numeric targetPort (the port itself when
/// none is written), or a named targetPort resolved through the pods' container ports.
fn target_port(p: &isthmus_api::k8s::ServicePort, pods: &[&Object]) -> Option<u32> {
    match &p.target_port {
        None => Some(p.port),
        Some(isthmus_api::k8s::IntOrString::Int(n)) => u32::try_from(*n).ok(),
        Some(isthmus_api::k8s::IntOrString::Str(name)) => name.parse().ok().or_else(|| {
            pods.iter()
                .filter_map(|pod| pod.as_pod())
                .flat_map(|spec| spec.containers.iter())
                .flat_map(|ct| ct.ports.iter())
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .map(|cp| cp.container_port)
        }),
    }
}

fn gateway_port_not_on_service(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::Gateway) {
        let Some(gw) = o.as_gateway() else {
            continue;
        };
        if gw.selector.is_empty() {
            continue;
        }
        let pods: Vec<&Object> = c
            .of(Kind::Pod)
            .filter(|p| crate::ctx::selector_matches(&gw.selector, &p.meta.labels))
            .collect();
        if pods.is_empty() {
            continue;
        }
        // Istio's ServiceTargets of the gateway proxy: Services selecting its pods.
        let svcs: Vec<&Object> = c
            .of(Kind::Service)
            .filter(|s| {
                !s.meta.labels.contains_key(NO_PORT_TRANSLATION)
                    && s.as_service().is_some_and(|spec| {
                        !spec.selector.is_empty()
                            && pods.iter().any(|p| {
                                ns_of(p) == ns_of(s)
                                    && crate::ctx::selector_matches(&spec.selector, &p.meta.labels)
                            })
                    })
            })
            .collect();
        if svcs.is_empty() {
            continue;
        }
        let mut reachable: BTreeSet<u32> = BTreeSet::new();
        let mut listing: Vec<String> = Vec::new();
        for s in &svcs {
            for p in s
                .as_service()
                .map(|x| x.ports.as_slice())
                .unwrap_or_default()
            {
                reachable.insert(p.port);
                match target_port(p, &pods) {
                    Some(t) => {
                        reachable.insert(t);
                        listing.push(if t == p.port {
                            p.port.to_string()
                        } else {
                            format!("{}->{t}", p.port)
                        });
                    }
                    None => listing.push(format!("{}->?", p.port)),
                }
            }
        }
        let names = svcs
            .iter()
            .map(|s| full_name(s))
            .collect::<Vec<_>>()
            .join(", ");
        let selector = crate::ctx::selector_string(&gw.selector);
        for (i, server) in gw.servers.iter().enumerate() {
            let Some(port) = &server.port else { continue };
            if reachable.contains(&port.number) {
                continue;
            }
            out.push(with_fix(
                c.msg(
                    o,
                    &mt::ISM_GATEWAY_PORT_NOT_ON_SERVICE,
                    &[
                        Arg::Int(i64::from(port.number)),
                        names.clone().into(),
                        selector.clone().into(),
                        listing.join(", ").into(),
                        Arg::Int(i64::from(port.number)),
                    ],
                    Some(format!("spec.servers[{i}].port.number")),
                ),
                "use a Service port (Istio listens on its targetPort) or that targetPort as the server port, or add the port to the gateway's Service; the chain is Service port -> targetPort -> Gateway server port -> VirtualService match port",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0016: SIMPLE/MUTUAL origination that does not really verify the server.

fn origination_without_verification(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::DestinationRule) {
        let Some(dr) = o.as_destination_rule() else {
            continue;
        };
        let fqdn = resolve_host(&c.domain, ns_of(o), &dr.host);
        // A ServiceEntry's subjectAltNames are the default SANs for its hosts.
        let se_sans = c
            .of(Kind::ServiceEntry)
            .filter_map(|s| s.as_service_entry())
            .any(|se| {
                !se.subject_alt_names.is_empty()
                    && se.hosts.iter().any(|h| *h == dr.host || *h == fqdn)
            });
        for (field, t) in tls_blocks(dr) {
            let mode = t.mode();
            if mode != "SIMPLE" && mode != "MUTUAL" {
                continue;
            }
            let nonempty = |v: &Option<String>| v.as_deref().is_some_and(|x| !x.is_empty());
            let what = field.trim_start_matches("spec.").to_string();
            let (problem, at, fix) = if t.insecure_skip_verify == Some(true) {
                (
                    "with insecureSkipVerify: true: the server certificate is not verified at all, so anyone on the path can impersonate the server".to_string(),
                    format!("{field}.insecureSkipVerify"),
                    "remove insecureSkipVerify and set caCertificates (or a credentialName Secret with ca.crt) plus subjectAltNames naming the server".to_string(),
                )
            } else if !nonempty(&t.ca_certificates) && !nonempty(&t.credential_name) {
                (
                    "without a CA of its own (no caCertificates, no credentialName): the server certificate is checked only against the proxy's system CA bundle, so a server with a private CA fails the handshake and any publicly trusted certificate for the name is accepted".to_string(),
                    field.clone(),
                    "set caCertificates to the server's CA bundle, or use a credentialName Secret that carries ca.crt (gateways, or a DestinationRule with a workloadSelector)".to_string(),
                )
            } else if t.subject_alt_names.is_empty() && !se_sans && nonempty(&t.sni) {
                let sni = t.sni.clone().unwrap_or_default();
                (
                    format!("without subjectAltNames while sni is set to \"{sni}\": the certificate chain is verified but not the name in it, so any certificate the CA signed, for any host, is accepted"),
                    format!("{field}.sni"),
                    format!("add subjectAltNames: [{sni}] (the name in the server's certificate) so the proxy checks who it talks to"),
                )
            } else {
                continue;
            };
            out.push(with_fix(
                c.msg(
                    o,
                    &mt::ISM_ORIGINATION_WITHOUT_VERIFICATION,
                    &[
                        what.into(),
                        mode.into(),
                        fqdn.clone().into(),
                        problem.into(),
                    ],
                    Some(at),
                ),
                &fix,
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ISM0017: a subset's connectionPool / outlierDetection replaces the destination-level block
// whole (Istio's `MergeTrafficPolicy`), so fields set only at the destination level are lost.

/// Leaf paths (`tcp.maxConnections`) with their values.
fn leaf_paths(v: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(x, &p, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn subset_block_replaces_top_level(c: &Ctx<'_>, out: &mut Vec<Message>) {
    for o in c.of(Kind::DestinationRule) {
        let Some(subsets) = o.raw.pointer("/spec/subsets").and_then(|s| s.as_array()) else {
            continue;
        };
        for block in ["connectionPool", "outlierDetection"] {
            let Some(top) = o.raw.pointer(&format!("/spec/trafficPolicy/{block}")) else {
                continue;
            };
            let mut top_leaves = Vec::new();
            leaf_paths(top, "", &mut top_leaves);
            // Sorted, whatever map order serde_json was built with: deterministic messages.
            top_leaves.sort();
            for (j, s) in subsets.iter().enumerate() {
                let Some(sub) = s.pointer(&format!("/trafficPolicy/{block}")) else {
                    continue;
                };
                let mut sub_leaves = Vec::new();
                leaf_paths(sub, "", &mut sub_leaves);
                let lost: Vec<String> = top_leaves
                    .iter()
                    .filter(|(p, _)| !sub_leaves.iter().any(|(q, _)| q == p))
                    .map(|(p, v)| format!("{p} ({v})"))
                    .collect();
                if lost.is_empty() {
                    continue;
                }
                let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("");
                let verb = if lost.len() == 1 { "is" } else { "are" };
                let field = format!("spec.subsets[{j}].trafficPolicy.{block}");
                out.push(with_fix(
                    c.msg(
                        o,
                        &mt::ISM_SUBSET_BLOCK_REPLACES_TOP_LEVEL,
                        &[
                            name.into(),
                            block.into(),
                            block.into(),
                            lost.join(", ").into(),
                            verb.into(),
                        ],
                        Some(field),
                    ),
                    "repeat the destination-level settings you want to keep inside the subset's block (a subset block replaces the whole block above it)",
                ));
            }
        }
    }
}
