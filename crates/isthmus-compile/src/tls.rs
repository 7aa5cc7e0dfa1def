//! TLS contexts: upstream (DestinationRule `tls`, auto-mTLS) and downstream (Gateway servers),
//! plus the SDS secrets credentialName references resolve to (reference §3.9, §4.3).

use crate::diag;
use crate::scope::Ctx;
use isthmus_api::istio::{ClientTlsSettings, ServerTlsSettings};
use isthmus_api::Severity;
use isthmus_model::{ConfigMeta, Service};
use isthmus_xds::core::StringMatcher;
use isthmus_xds::tls::{CertificateValidationContext, CombinedValidationContext, TlsParameters};
use isthmus_xds::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, TransportSocket, UpstreamTlsContext,
};

pub const ALPN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
pub const ALPN_MESH_H2: [&str; 3] = ["istio-peer-exchange", "istio", "h2"];

fn tls_params() -> Option<TlsParameters> {
    Some(TlsParameters {
        tls_minimum_protocol_version: "TLSv1_2".into(),
        tls_maximum_protocol_version: "TLSv1_3".into(),
        ..Default::default()
    })
}

/// `kubernetes://NAME` for a bare credentialName; prefixed names are kept.
pub fn credential_resource(name: &str) -> String {
    if name.contains("://") {
        name.to_string()
    } else {
        format!("kubernetes://{name}")
    }
}

/// The mesh mTLS client context (ISTIO_MUTUAL, explicit or auto).
pub fn istio_mutual_upstream(sni: String, sans: &[String], h2: bool) -> UpstreamTlsContext {
    let alpn: Vec<String> = if h2 {
        ALPN_MESH_H2.iter().map(|s| s.to_string()).collect()
    } else {
        ALPN_MESH.iter().map(|s| s.to_string()).collect()
    };
    UpstreamTlsContext {
        sni,
        common_tls_context: CommonTlsContext {
            tls_params: tls_params(),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig::named("default")],
            combined_validation_context: Some(CombinedValidationContext {
                default_validation_context: CertificateValidationContext {
                    match_subject_alt_names: sans.iter().map(StringMatcher::exact).collect(),
                    ..Default::default()
                },
                validation_context_sds_secret_config: SdsSecretConfig::named("ROOTCA"),
            }),
            alpn_protocols: alpn,
            ..Default::default()
        },
    }
}

/// The outcome of applying a DR `tls` block to one cluster.
pub struct UpstreamTls {
    pub socket: Option<TransportSocket>,
    /// SIMPLE/MUTUAL without `sni`: Envoy derives SNI from the Host header.
    pub auto_sni: bool,
    pub auto_san_validation: bool,
    /// SIMPLE/MUTUAL: tell the ALPN filter not to override the app's ALPN.
    pub alpn_override_false: bool,
}

/// `buildUpstreamClusterTLSContext` for one cluster. `dr_has_selector` decides whether a
/// sidecar may use credentialName.
#[allow(clippy::too_many_arguments)]
pub fn upstream(
    ctx: &mut Ctx,
    dr_meta: &ConfigMeta,
    dr_has_selector: bool,
    tls: &ClientTlsSettings,
    svc: &Service,
    port: u32,
    subset: &str,
    h2: bool,
) -> UpstreamTls {
    let none = UpstreamTls {
        socket: None,
        auto_sni: false,
        auto_san_validation: false,
        alpn_override_false: false,
    };
    let mode = tls.mode();
    match mode {
        "ISTIO_MUTUAL" => {
            let sni = tls
                .sni
                .clone()
                .unwrap_or_else(|| format!("outbound_.{port}_.{subset}_.{}", svc.hostname));
            let sans = if tls.subject_alt_names.is_empty() {
                svc.service_accounts.clone()
            } else {
                tls.subject_alt_names.clone()
            };
            UpstreamTls {
                socket: Some(TransportSocket::upstream_tls(istio_mutual_upstream(
                    sni, &sans, h2,
                ))),
                ..none
            }
        }
        "SIMPLE" | "MUTUAL" => {
            let gateway = ctx.proxy.is_gateway();
            let mut common = CommonTlsContext {
                tls_params: tls_params(),
                ..Default::default()
            };
            if h2 {
                common.alpn_protocols = vec!["h2".into()];
            }
            let sans: Vec<StringMatcher> = if tls.subject_alt_names.is_empty()
                && svc.registry == isthmus_model::Registry::ServiceEntry
            {
                svc.service_accounts
                    .iter()
                    .map(StringMatcher::exact)
                    .collect()
            } else {
                tls.subject_alt_names
                    .iter()
                    .map(StringMatcher::exact)
                    .collect()
            };
            let validation_name: Option<String>;
            if let Some(cred) = tls.credential_name.as_deref().filter(|c| !c.is_empty()) {
                if !gateway && !dr_has_selector && !cred.starts_with("configmap://") {
                    ctx.diags.push(diag(dr_meta, Severity::Warning, "CredentialNameOnSidecar", Some("spec.trafficPolicy.tls.credentialName"), format!("credentialName {cred:?} is only honoured by gateways (or by a DestinationRule with a workloadSelector); sidecar {}/{} gets no TLS for {} and sends plain text", ctx.proxy.namespace, ctx.proxy.name, svc.hostname)));
                    return none;
                }
                let res = credential_resource(cred);
                if mode == "MUTUAL" {
                    common.tls_certificate_sds_secret_configs =
                        vec![SdsSecretConfig::named(res.clone())];
                    add_sds_ref(ctx, &res, dr_meta);
                }
                validation_name = if tls.insecure_skip_verify == Some(true) {
                    None
                } else {
                    Some(format!("{res}-cacert"))
                };
            } else {
                if mode == "MUTUAL" {
                    match (
                        tls.client_certificate.as_deref(),
                        tls.private_key.as_deref(),
                    ) {
                        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
                            let res = format!("file-cert:{c}~{k}");
                            add_sds_ref(ctx, &res, dr_meta);
                            common.tls_certificate_sds_secret_configs =
                                vec![SdsSecretConfig::named(res)];
                        }
                        _ => {
                            ctx.diags.push(diag(dr_meta, Severity::Error, "MutualTlsWithoutCertificate", Some("spec.trafficPolicy.tls"), format!("failed to apply tls setting for {}: client certificate and private key must not be empty", svc.hostname)));
                            return none;
                        }
                    }
                }
                validation_name = if tls.insecure_skip_verify == Some(true) {
                    None
                } else {
                    Some(format!(
                        "file-root:{}",
                        tls.ca_certificates
                            .as_deref()
                            .filter(|c| !c.is_empty())
                            .unwrap_or("system")
                    ))
                };
            }
            if let Some(v) = validation_name {
                add_sds_ref(ctx, &v, dr_meta);
                common.combined_validation_context = Some(CombinedValidationContext {
                    default_validation_context: CertificateValidationContext {
                        match_subject_alt_names: sans.clone(),
                        ..Default::default()
                    },
                    validation_context_sds_secret_config: SdsSecretConfig::named(v),
                });
            }
            let sni = tls.sni.clone().unwrap_or_default();
            let auto_sni = sni.is_empty();
            UpstreamTls {
                socket: Some(TransportSocket::upstream_tls(UpstreamTlsContext {
                    common_tls_context: common,
                    sni,
                })),
                auto_sni,
                auto_san_validation: auto_sni
                    && sans.is_empty()
                    && tls.insecure_skip_verify != Some(true),
                alpn_override_false: true,
            }
        }
        _ => none,
    }
}

/// `BuildListenerTLSContext` for a gateway server.
pub fn downstream(
    ctx: &mut Ctx,
    gw_meta: &ConfigMeta,
    tls: &ServerTlsSettings,
    http: bool,
) -> Option<DownstreamTlsContext> {
    let mode = tls.mode();
    let mut common = CommonTlsContext {
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls
                .min_protocol_version
                .clone()
                .unwrap_or_else(|| "TLSv1_2".into()),
            tls_maximum_protocol_version: tls
                .max_protocol_version
                .clone()
                .unwrap_or_else(|| "TLSv1_3".into()),
            cipher_suites: tls.cipher_suites.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    common.alpn_protocols = if http {
        vec!["h2".into(), "http/1.1".into()]
    } else if mode == "ISTIO_MUTUAL" {
        vec!["istio-peer-exchange".into(), "h2".into(), "http/1.1".into()]
    } else {
        vec![]
    };
    let sans: Vec<StringMatcher> = tls
        .subject_alt_names
        .iter()
        .map(StringMatcher::exact)
        .collect();
    let require = match mode {
        "ISTIO_MUTUAL" => {
            common.tls_certificate_sds_secret_configs = vec![SdsSecretConfig::named("default")];
            common.combined_validation_context = Some(CombinedValidationContext {
                default_validation_context: CertificateValidationContext {
                    match_subject_alt_names: sans,
                    ..Default::default()
                },
                validation_context_sds_secret_config: SdsSecretConfig::named("ROOTCA"),
            });
            true
        }
        "SIMPLE" | "MUTUAL" | "OPTIONAL_MUTUAL" => {
            let cred = tls
                .credential_name
                .clone()
                .filter(|c| !c.is_empty())
                .or_else(|| tls.credential_names.first().cloned());
            if let Some(cred) = cred {
                let res = credential_resource(&cred);
                common.tls_certificate_sds_secret_configs =
                    vec![SdsSecretConfig::named(res.clone())];
                add_sds_ref(ctx, &res, gw_meta);
                if mode != "SIMPLE" {
                    let ca = tls
                        .ca_cert_credential_name
                        .as_deref()
                        .map(credential_resource)
                        .unwrap_or_else(|| format!("{res}-cacert"));
                    add_sds_ref(ctx, &ca, gw_meta);
                    common.combined_validation_context = Some(CombinedValidationContext {
                        default_validation_context: CertificateValidationContext {
                            match_subject_alt_names: sans,
                            verify_certificate_spki: tls.verify_certificate_spki.clone(),
                            verify_certificate_hash: tls.verify_certificate_hash.clone(),
                            ..Default::default()
                        },
                        validation_context_sds_secret_config: SdsSecretConfig::named(ca),
                    });
                }
            } else if let (Some(c), Some(k)) = (
                tls.server_certificate.as_deref(),
                tls.private_key.as_deref(),
            ) {
                let res = format!("file-cert:{c}~{k}");
                add_sds_ref(ctx, &res, gw_meta);
                common.tls_certificate_sds_secret_configs = vec![SdsSecretConfig::named(res)];
                if mode != "SIMPLE" {
                    let ca = tls
                        .ca_certificates
                        .clone()
                        .unwrap_or_else(|| "system".into());
                    add_sds_ref(ctx, &format!("file-root:{ca}"), gw_meta);
                    common.combined_validation_context = Some(CombinedValidationContext {
                        default_validation_context: CertificateValidationContext {
                            match_subject_alt_names: sans,
                            ..Default::default()
                        },
                        validation_context_sds_secret_config: SdsSecretConfig::named(format!(
                            "file-root:{ca}"
                        )),
                    });
                }
            } else {
                ctx.diags.push(diag(gw_meta, Severity::Error, "GatewayTlsWithoutCertificate", Some("spec.servers.tls"), format!("{mode} server has neither credentialName nor serverCertificate/privateKey; the server is skipped")));
                return None;
            }
            mode == "MUTUAL"
        }
        _ => return None,
    };
    Some(DownstreamTlsContext {
        common_tls_context: common,
        require_client_certificate: Some(require),
    })
}

/// The mesh mTLS server context used on sidecar inbound chains.
pub fn inbound_mtls() -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: CommonTlsContext {
            tls_params: tls_params(),
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig::named("default")],
            combined_validation_context: Some(CombinedValidationContext {
                default_validation_context: CertificateValidationContext::default(),
                validation_context_sds_secret_config: SdsSecretConfig::named("ROOTCA"),
            }),
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        },
        require_client_certificate: Some(true),
    }
}

/// Records that `meta` references the SDS resource `name` (for secret status and diagnostics).
fn add_sds_ref(ctx: &mut Ctx, name: &str, meta: &ConfigMeta) {
    ctx.sds_ref_calls += 1;
    let metas = ctx.sds_refs.entry(name.to_string()).or_default();
    if !metas
        .iter()
        .any(|m| m.kind == meta.kind && m.namespace == meta.namespace && m.name == meta.name)
    {
        metas.push(meta.clone());
    }
}
