//! Sidecar and gateway proxies: compile each proxy's config (`isthmus-compile`), convert it
//! to the proxy's runtime config (`isthmus_proxy::xds::from_xds`), add the workload
//! certificate from the mesh CA (`isthmus-ca`, SDS `default` + `ROOTCA`), and run
//! `isthmus proxy` as the pod's `istio-proxy` container.
//!
//! Capture exemption: the proxy does not set a socket mark on its upstream sockets, so
//! sidecars run as uid 1337 (Istio's proxy uid) and the capture rules also return early for
//! `meta skuid 1337` — the same exemption istio-iptables uses (`--uid-owner 1337`).
//!
//! Config changes (`isthmus apply`) are recompiled and pushed to the running proxies through
//! isthmus-push (ACK/NACK); the bootstrap file only serves the first start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use isthmus_ca::WorkloadCertManager;
use isthmus_local::capture::{CaptureConfig, PROXY_MARK};
use isthmus_local::process::ContainerSpec;
use isthmus_model::{ProxyNode, Snapshot};
use isthmus_proxy::config::{DataSource, Secret};
use isthmus_tls::Identity;

use crate::plan::{PodPlan, PodProxy};

/// Uid the sidecar runs as (exempt from capture).
pub const PROXY_UID: u32 = 1337;
/// Admin address of every proxy, inside its pod.
pub const ADMIN_ADDR: &str = "127.0.0.1:15000";
/// Container name of the proxy.
pub const PROXY_CONTAINER: &str = "istio-proxy";

/// Address (on the node bridge) of the sidecar DNS proxy: what istio-agent's DNS proxy
/// answers with DNS capture on — mesh names plus ServiceEntry VIPs (declared or
/// auto-allocated from 240.240.0.0/16).
pub fn sidecar_dns_ip(subnet: ipnet::Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(subnet.network()) + 4)
}

/// The capture ruleset for a sidecar pod: isthmus-local's rules plus a uid exemption, and
/// (with `dns = Some((kube_dns, sidecar_dns))`) the application's DNS queries sent to the
/// sidecar DNS proxy while the proxy's own lookups (uid 1337) still reach kube-dns — the
/// split istio-iptables makes for DNS capture.
pub fn capture_ruleset(dns: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>) -> String {
    let base = CaptureConfig::default().ruleset();
    let mark = format!("meta mark {PROXY_MARK} return\n");
    let mut extra = format!("{mark}    meta skuid {PROXY_UID} return\n");
    if let Some((kube, sidecar)) = dns {
        for proto in ["udp", "tcp"] {
            extra.push_str(&format!(
                "    ip daddr {kube} {proto} dport 53 dnat to {sidecar}:53\n"
            ));
        }
    }
    base.replacen(&mark, &extra, 1)
}

/// A running proxy as the control plane knows it.
#[derive(Debug, Clone)]
pub struct ProxyReg {
    /// The pod.
    pub pod: PodPlan,
    /// Node id (push key).
    pub node_id: String,
    /// Its SPIFFE identity (what the certificate manager rotates).
    pub identity: Identity,
    /// Current workload certificate (replaced on rotation, kept across recompiles).
    pub cert: std::sync::Arc<isthmus_ca::IssuedCert>,
}

/// Key of the proxy's runtime config in a pushed (or bootstrap) body.
pub const BODY_RUNTIME: &str = "runtime";
/// Key of the Envoy-shaped bundle the proxy serves on `/config_dump` once it runs the
/// runtime config (what live `isthmus proxy-config` renders, with the same code as offline).
pub const BODY_DUMP: &str = "dump";
/// Key, inside the dump, of the compiler's secret statuses (`default`, `ROOTCA`,
/// `kubernetes://...` with their state and reasons).
pub const DUMP_SECRET_STATUSES: &str = "secretStatuses";
/// What a private key is replaced with in `/config_dump` (as Envoy's config dump redacts it).
pub const REDACTED: &str = "[redacted]";

/// Compiles what is pushed to `pod`: `{"runtime": <isthmus-proxy config with `cert` as SDS
/// `default` / `ROOTCA`>, "dump": <the compiled Envoy-shaped bundle, private keys redacted,
/// plus `secretStatuses`>}`. Errors are messages naming the pod.
pub fn render_config(
    snapshot: &Snapshot,
    pod: &PodPlan,
    cert: &isthmus_ca::IssuedCert,
) -> Result<serde_json::Value, String> {
    let w = snapshot
        .workloads
        .iter()
        .find(|w| w.namespace == pod.namespace && w.name == pod.name)
        .ok_or_else(|| format!("pod {} is not in the model", pod.key()))?;
    let node =
        ProxyNode::from_workload(w).ok_or_else(|| format!("pod {} has no proxy", pod.key()))?;
    let compiled = isthmus_compile::compile(snapshot, &node);
    for d in &compiled.diagnostics {
        tracing::warn!(pod = %pod.key(), code = %d.code, "{}", d.message);
    }
    let mut cfg = isthmus_proxy::xds::from_xds(&compiled.config)
        .map_err(|e| format!("proxy config of {} refused: {e}", pod.key()))?;
    cfg.secrets
        .retain(|s| s.name != "default" && s.name != "ROOTCA");
    cfg.secrets.push(Secret {
        name: "default".into(),
        certificate_chain: Some(DataSource::InlineString(cert.cert_chain_pem.clone())),
        private_key: Some(DataSource::InlineString(cert.key_pem.clone())),
        trusted_ca: None,
    });
    cfg.secrets.push(Secret {
        name: "ROOTCA".into(),
        certificate_chain: None,
        private_key: None,
        trusted_ca: Some(DataSource::InlineString(cert.root_pem.clone())),
    });
    // The mesh's accessLogFile (compile leaves access logging to the runtime config).
    if cfg.access_log.is_none() && !snapshot.mesh.access_log_file.is_empty() {
        cfg.access_log = Some(isthmus_proxy::config::AccessLogConfig {
            path: snapshot.mesh.access_log_file.clone(),
            encoding: if snapshot
                .mesh
                .access_log_encoding
                .eq_ignore_ascii_case("JSON")
            {
                isthmus_proxy::config::LogEncoding::Json
            } else {
                isthmus_proxy::config::LogEncoding::Text
            },
        });
    }
    let mut runtime = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
    restore_inbound_destination(&compiled.config, &mut runtime);
    let mut xds = compiled.config.clone();
    for s in &mut xds.secrets {
        if let Some(key) = s
            .tls_certificate
            .as_mut()
            .and_then(|t| t.private_key.as_mut())
        {
            *key = isthmus_xds::core::DataSource {
                inline_string: Some(REDACTED.into()),
                ..Default::default()
            };
        }
    }
    let mut dump = serde_json::to_value(&xds).map_err(|e| e.to_string())?;
    dump[DUMP_SECRET_STATUSES] =
        serde_json::to_value(&compiled.secrets).map_err(|e| e.to_string())?;
    Ok(serde_json::json!({ BODY_RUNTIME: runtime, BODY_DUMP: dump }))
}

/// Splits a pushed or bootstrap body into the runtime config and the config dump (a bare
/// runtime config, as older supervisors pushed, has no dump).
pub fn split_body(
    body: &serde_json::Value,
) -> Result<(isthmus_proxy::ProxyConfig, Option<serde_json::Value>), String> {
    let (runtime, dump) = match body.get(BODY_RUNTIME) {
        Some(r) => (r, body.get(BODY_DUMP).cloned()),
        None => (body, None),
    };
    let cfg = serde_json::from_value(runtime.clone()).map_err(|e| e.to_string())?;
    Ok((cfg, dump))
}

/// The `/config_dump` of a proxy that now runs `cfg`: the compiled bundle with SDS `default`
/// and `ROOTCA` as the proxy really holds them (certificate chain and root; the key redacted),
/// so `proxy-config secret` shows the live certificate serial after a rotation.
pub fn live_dump(dump: &serde_json::Value, cfg: &isthmus_proxy::ProxyConfig) -> serde_json::Value {
    use serde_json::json;
    let mut out = dump.clone();
    let pem = |d: &Option<DataSource>| match d {
        Some(DataSource::InlineString(s)) => Some(s.clone()),
        Some(DataSource::Filename(f)) => std::fs::read_to_string(f).ok(),
        None => None,
    };
    let mut live = Vec::new();
    for s in cfg
        .secrets
        .iter()
        .filter(|s| s.name == "default" || s.name == "ROOTCA")
    {
        if let Some(chain) = pem(&s.certificate_chain) {
            live.push(json!({
                "name": s.name,
                "tlsCertificate": {
                    "certificateChain": {"inlineString": chain},
                    "privateKey": {"inlineString": REDACTED},
                }
            }));
        } else if let Some(ca) = pem(&s.trusted_ca) {
            live.push(
                json!({"name": s.name, "validationContext": {"trustedCa": {"inlineString": ca}}}),
            );
        }
    }
    let mut secrets: Vec<serde_json::Value> = out
        .get("secrets")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["name"] != "default" && s["name"] != "ROOTCA")
        .collect();
    secrets.extend(live);
    secrets.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    // The proxy's own runtime form of the same config (what `isthmus proxy` reads), keys
    // redacted: scripts that looked at the runtime shape keep working.
    let mut runtime = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(list) = runtime.get_mut("secrets").and_then(|s| s.as_array_mut()) {
        for s in list {
            if s.get("privateKey").is_some() {
                s["privateKey"] = json!({ "inlineString": REDACTED });
            }
        }
    }
    if let Some(o) = out.as_object_mut() {
        o.insert("secrets".into(), serde_json::Value::Array(secrets));
        o.insert(BODY_RUNTIME.into(), runtime);
    }
    out
}

/// Istio's virtualInbound (15006) restores the pre-redirect destination with the
/// `original_dst` *listener filter*. Proxies whose `from_xds` maps that filter say so with
/// `originalDstFilter: true` and nothing is needed; for older ones the listener gets
/// `useOriginalDst` instead — without either, the proxy sees 15006 as the destination,
/// matches no port chain and passes the connection "through" to itself. (That fallback also
/// hands connections to an unbound outbound listener on the same port, so it only works while
/// no Service port equals an inbound port.) Works on the JSON so it builds against both.
fn restore_inbound_destination(xds: &isthmus_xds::ProxyConfig, value: &mut serde_json::Value) {
    let Some(listeners) = value.get_mut("listeners").and_then(|l| l.as_array_mut()) else {
        return;
    };
    for l in &xds.listeners {
        let has_filter = l
            .listener_filters
            .iter()
            .any(|f| f.name == isthmus_xds::listener::ORIGINAL_DST);
        if !has_filter || l.traffic_direction != "INBOUND" {
            continue;
        }
        if let Some(rl) = listeners.iter_mut().find(|r| r["name"] == l.name.as_str()) {
            if rl.get("originalDstFilter") != Some(&serde_json::Value::Bool(true)) {
                rl["useOriginalDst"] = serde_json::Value::Bool(true);
            }
        }
    }
}

/// The node id a proxy is registered under.
pub fn node_id(pod: &PodPlan) -> String {
    format!("{}.{}", pod.name, pod.namespace)
}

fn write_private(path: &Path, data: &[u8], owner: Option<u32>) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    if let Some(uid) = owner {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(uid)),
        )
        .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Issues the pod's certificate, compiles its config, writes the bootstrap config and push
/// token into `dir` (0711; files 0600, owned by the proxy's uid) and returns the
/// `istio-proxy` container (`isthmus agent`), its registration, its token and config.
pub fn prepare(
    snapshot: &Snapshot,
    certs: &WorkloadCertManager,
    pod: &PodPlan,
    dir: &Path,
    exe: &Path,
    control_plane: std::net::SocketAddr,
) -> Result<(ContainerSpec, ProxyReg, String, serde_json::Value), String> {
    let identity = Identity::new(
        &snapshot.mesh.trust_domain,
        &pod.namespace,
        &pod.service_account,
    )
    .map_err(|e| format!("identity of {}: {e}", pod.key()))?;
    let cert = certs
        .get(&identity, std::time::SystemTime::now())
        .map_err(|e| format!("certificate for {}: {e}", pod.key()))?;
    let config = render_config(snapshot, pod, &cert)?;
    let json = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
    let sidecar = pod.proxy == PodProxy::Sidecar;
    let owner = sidecar.then_some(PROXY_UID);
    let path = dir.join("bootstrap.json");
    write_private(&path, json.as_bytes(), owner)?;
    let token = isthmus_ca::generate_token();
    let token_path = dir.join("token");
    write_private(&token_path, token.as_bytes(), owner)?;
    let mut argv: Vec<String> = Vec::new();
    if sidecar {
        argv.extend(
            ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"].map(String::from),
        );
    }
    argv.push(exe.display().to_string());
    argv.push("agent".into());
    argv.extend([
        "--bootstrap".to_string(),
        path.display().to_string(),
        "--token-file".to_string(),
        token_path.display().to_string(),
        "--control-plane".to_string(),
        control_plane.to_string(),
        "--admin-address".to_string(),
        ADMIN_ADDR.to_string(),
    ]);
    let spec = ContainerSpec {
        name: PROXY_CONTAINER.into(),
        argv,
        env: vec![("ISTHMUS_LOG".into(), "info".into())],
        working_dir: None,
        mounts: vec![],
    };
    let reg = ProxyReg {
        pod: pod.clone(),
        node_id: node_id(pod),
        identity,
        cert,
    };
    Ok((spec, reg, token, config))
}

/// Directory for the proxy files of pod `ns/name` under the mesh state directory.
pub fn proxy_dir(mesh_dir: &Path, ns: &str, name: &str) -> PathBuf {
    mesh_dir.join("proxies").join(ns).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_config_carries_the_workload_cert_and_restores_inbound_destinations() {
        // prepare() hands the files to uid 1337 (chown needs root).
        if !nix::unistd::geteuid().is_root() && std::env::var("CI").as_deref() != Ok("true") {
            eprintln!("\n*** SKIPPED: sidecar_config_carries_the_workload_cert...: needs root (chown) ***\n");
            return;
        }
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo, labels: {app: web}}
spec:
  serviceAccountName: web-sa
  containers:
  - {name: web, command: [sleep, infinity], ports: [{containerPort: 8080}]}
"#;
        let loaded = isthmus_api::load_str("t.yaml", text, &isthmus_api::LoadOptions::default());
        let (snap, _) = Snapshot::build(
            &loaded.objects,
            isthmus_api::MeshConfig::default(),
            "cluster.local",
        );
        let plan = crate::plan::MeshPlan::build(&loaded.objects, &snap).expect("plan");
        let pod = &plan.pods[0];
        assert_eq!(pod.proxy, PodProxy::Sidecar);
        let ca = isthmus_ca::Ca::generate("cluster.local").expect("ca");
        let certs = WorkloadCertManager::new(std::sync::Arc::new(ca), None);
        let dir = tempfile::tempdir().expect("tmp");
        let exe = Path::new("/usr/bin/isthmus");
        let cp: std::net::SocketAddr = "10.244.0.1:15010".parse().expect("addr");
        let (spec, reg, token, cfg) =
            prepare(&snap, &certs, pod, &dir.path().join("p"), exe, cp).expect("prepare");
        assert_eq!(spec.name, PROXY_CONTAINER);
        assert_eq!(spec.argv[..2], ["setpriv", "--reuid=1337"]);
        assert!(spec.argv.contains(&"10.244.0.1:15010".to_string()));
        assert_eq!(reg.node_id, "web.demo");
        assert!(token.len() >= 32);
        let uri = reg
            .cert
            .identity
            .as_ref()
            .map(|i| i.service_account.clone());
        assert_eq!(uri.as_deref(), Some("web-sa"));
        let secrets: Vec<&str> = cfg["runtime"]["secrets"]
            .as_array()
            .expect("secrets")
            .iter()
            .filter_map(|s| s["name"].as_str())
            .collect();
        assert!(
            secrets.contains(&"default") && secrets.contains(&"ROOTCA"),
            "{secrets:?}"
        );
        assert!(
            cfg["dump"]["clusters"].is_array() && cfg["dump"]["secretStatuses"].is_array(),
            "{cfg}"
        );
        let inbound = cfg["runtime"]["listeners"]
            .as_array()
            .expect("listeners")
            .iter()
            .find(|l| l["name"] == "virtualInbound")
            .expect("virtualInbound");
        assert!(
            inbound["originalDstFilter"] == true || inbound["useOriginalDst"] == true,
            "{inbound}"
        );
        // The bootstrap file is what the agent starts from, private to the proxy.
        let meta = std::fs::metadata(dir.path().join("p/bootstrap.json")).expect("bootstrap");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Recompiling with the same inputs gives the same config (no churn on apply).
        assert_eq!(render_config(&snap, pod, &reg.cert).expect("render"), cfg);
    }

    #[test]
    fn capture_exempts_the_proxy_uid_right_after_the_mark() {
        let r = capture_ruleset(Some((
            "10.244.0.2".parse().expect("ip"),
            "10.244.0.4".parse().expect("ip"),
        )));
        assert!(
            r.contains("ip daddr 10.244.0.2 udp dport 53 dnat to 10.244.0.4:53"),
            "{r}"
        );
        assert!(
            r.find("meta skuid 1337 return") < r.find("dport 53 dnat"),
            "{r}"
        );
        let mark = r.find("meta mark 1337 return").expect("mark rule");
        let uid = r.find("meta skuid 1337 return").expect("uid rule");
        let redirect = r.find("redirect to :15001").expect("redirect");
        assert!(mark < uid && uid < redirect, "{r}");
    }
}
