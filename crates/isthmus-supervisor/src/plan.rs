//! What a mesh runs, computed from loaded manifests before anything touches the system.
//!
//! [`MeshPlan::build`] turns the model's [`Snapshot`] (workloads with deterministic pod IPs,
//! services with cluster IPs and endpoints) plus the raw Pod/Deployment specs into concrete
//! pods (containers with argv/env/volumes), service VIP rules and DNS tables. Keeping this a
//! pure function means every bad input (missing Secret, unsupported `valueFrom`, container
//! without a command) is reported before a single namespace is created.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use isthmus_api::{k8s, Body, Kind, Object};
use isthmus_local::process::{ContainerSpec, RestartPolicy, Volume, VolumeMount, VolumeSource};
use isthmus_local::vip::{ServiceVip, L4};
use isthmus_model::{Protocol, ProxyKind, Registry, Snapshot, Workload};

/// Annotation publishing a pod as an "outside world" host: comma-separated hostnames that
/// resolve (to the pod's IP) only through the mesh's outside-world resolver.
pub const OUTSIDE_HOSTNAMES: &str = "isthmus.dev/outside-hostnames";

/// Errors found while planning; each names the object and says what to change.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A pod references something that does not exist or is not supported.
    #[error("pod {pod}: {message}")]
    Pod {
        /// `namespace/name`.
        pod: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The model produced an address that is not IPv4.
    #[error("{what} has address `{value}`, which is not an IPv4 address")]
    Address {
        /// Which object.
        what: String,
        /// The value.
        value: String,
    },
}

/// What a pod runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodProxy {
    /// No proxy.
    None,
    /// Sidecar-injected.
    Sidecar,
    /// Gateway.
    Gateway,
}

/// One pod to run.
#[derive(Debug, Clone)]
pub struct PodPlan {
    /// Namespace.
    pub namespace: String,
    /// Pod name (Deployment replicas get generated names).
    pub name: String,
    /// Owning Deployment, if any.
    pub deployment: Option<String>,
    /// Pod IP (from the model).
    pub ip: Ipv4Addr,
    /// Proxy kind.
    pub proxy: PodProxy,
    /// Hostnames published to the outside-world resolver (empty for mesh pods).
    pub outside_hostnames: Vec<String>,
    /// Containers, in manifest order.
    pub containers: Vec<ContainerSpec>,
    /// Volumes.
    pub volumes: Vec<Volume>,
    /// restartPolicy.
    pub restart_policy: RestartPolicy,
    /// Service account.
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Declared TCP containerPorts (readiness: the pod is ready once they accept connections).
    pub tcp_ports: Vec<u16>,
}

impl PodPlan {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One Kubernetes Service as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServicePlan {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// FQDN.
    pub hostname: String,
    /// Cluster IP (`None` for headless services).
    pub cluster_ip: Option<Ipv4Addr>,
    /// `port/PROTO` strings as kubectl prints them.
    pub ports: Vec<String>,
    /// Endpoint count.
    pub endpoints: usize,
}

/// Everything a mesh runs.
#[derive(Debug, Clone)]
pub struct MeshPlan {
    /// Pods sorted by namespace/name.
    pub pods: Vec<PodPlan>,
    /// Kubernetes Services.
    pub services: Vec<ServicePlan>,
    /// VIP rules (kube-proxy style) for pods that reach services without a proxy.
    pub vips: Vec<ServiceVip>,
    /// Mesh DNS (what kube-dns answers): service FQDNs → cluster IP (or endpoint IPs when
    /// headless).
    pub mesh_dns: BTreeMap<String, Vec<Ipv4Addr>>,
    /// ServiceEntry hosts → VIP (declared or auto-allocated from 240.240.0.0/16). Answered by
    /// a sidecar's DNS proxy in Istio, not by kube-dns; kept for display and for the proxies.
    pub service_entry_vips: BTreeMap<String, Ipv4Addr>,
    /// Outside-world resolver: published hostnames → pod IPs.
    pub outside_dns: BTreeMap<String, Vec<Ipv4Addr>>,
    /// DNS suffix.
    pub domain: String,
}

fn ip4(what: &str, s: &str) -> Result<Ipv4Addr, PlanError> {
    s.parse().map_err(|_| PlanError::Address {
        what: what.to_string(),
        value: s.to_string(),
    })
}

fn find<'a>(objects: &'a [Object], kind: Kind, ns: &str, name: &str) -> Option<&'a Object> {
    objects
        .iter()
        .find(|o| o.kind == kind && o.namespace() == ns && o.name() == name)
}

fn config_map_data(o: &Object) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use base64::Engine;
    let Some(cm) = o.as_config_map() else {
        return Ok(BTreeMap::new());
    };
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
        .collect();
    for (k, v) in &cm.binary_data {
        let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| format!("binaryData[{k}]: illegal base64 data: {e}"))?;
        out.insert(k.clone(), bytes);
    }
    Ok(out)
}

/// Applies Kubernetes `items` (key → path) to projected data.
fn project(
    data: BTreeMap<String, Vec<u8>>,
    items: &[k8s::KeyToPath],
    what: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    if items.is_empty() {
        return Ok(data);
    }
    let mut out = BTreeMap::new();
    for it in items {
        let v = data
            .get(&it.key)
            .ok_or_else(|| format!("{what} has no key `{}` (listed in items)", it.key))?;
        out.insert(it.path.clone(), v.clone());
    }
    Ok(out)
}

fn field_ref(w: &Workload, path: &str) -> Option<String> {
    Some(match path {
        "metadata.name" => w.name.clone(),
        "metadata.namespace" => w.namespace.clone(),
        "status.podIP" | "status.podIPs" => w.ip.clone(),
        "spec.serviceAccountName" => w.service_account.clone(),
        "status.hostIP" => w.ip.clone(),
        "spec.nodeName" => "isthmus".to_string(),
        _ => {
            let rest = path
                .strip_prefix("metadata.labels['")
                .or_else(|| path.strip_prefix("metadata.labels[\""))?;
            let key = rest.trim_end_matches("']").trim_end_matches("\"]");
            return w.labels.get(key).cloned();
        }
    })
}

fn env_value(
    objects: &[Object],
    w: &Workload,
    var: &k8s::EnvVar,
) -> Result<Option<String>, String> {
    if let Some(v) = &var.value {
        return Ok(Some(v.clone()));
    }
    let Some(from) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    let get = |p: &str| from.pointer(p).and_then(|v| v.as_str()).map(str::to_string);
    if let Some(path) = get("/fieldRef/fieldPath") {
        return field_ref(w, &path).map(Some).ok_or_else(|| {
            format!(
                "env {}: fieldRef `{path}` is not supported here (use metadata.name, metadata.namespace, status.podIP, spec.serviceAccountName or a label)",
                var.name
            )
        });
    }
    for (ptr, kind) in [
        ("/secretKeyRef", Kind::Secret),
        ("/configMapKeyRef", Kind::ConfigMap),
    ] {
        if from.pointer(ptr).is_none() {
            continue;
        }
        let name = get(&format!("{ptr}/name")).unwrap_or_default();
        let key = get(&format!("{ptr}/key")).unwrap_or_default();
        let optional = from
            .pointer(&format!("{ptr}/optional"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let data = match find(objects, kind, &w.namespace, &name) {
            Some(o) if kind == Kind::Secret => o
                .as_secret()
                .map(|s| s.decoded())
                .transpose()?
                .unwrap_or_default(),
            Some(o) => config_map_data(o)?,
            None if optional => return Ok(None),
            None => {
                return Err(format!(
                    "env {}: {kind} {}/{name} not found; add it to the manifests",
                    var.name, w.namespace
                ))
            }
        };
        return match data.get(&key) {
            Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
            None if optional => Ok(None),
            None => Err(format!(
                "env {}: {kind} {}/{name} has no key `{key}`",
                var.name, w.namespace
            )),
        };
    }
    Err(format!(
        "env {}: this valueFrom is not supported (use value, fieldRef, secretKeyRef or configMapKeyRef)",
        var.name
    ))
}

fn volumes(objects: &[Object], ns: &str, spec: &k8s::PodSpec) -> Result<Vec<Volume>, String> {
    let mut out = Vec::new();
    for v in &spec.volumes {
        let source = if let Some(s) = &v.secret {
            let data = match find(objects, Kind::Secret, ns, &s.secret_name) {
                Some(o) => o
                    .as_secret()
                    .map(|b| b.decoded())
                    .transpose()?
                    .unwrap_or_default(),
                None if s.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(format!(
                        "volume {}: Secret {ns}/{} not found; add it to the manifests",
                        v.name, s.secret_name
                    ))
                }
            };
            VolumeSource::Secret(project(
                data,
                &s.items,
                &format!("Secret {ns}/{}", s.secret_name),
            )?)
        } else if let Some(c) = &v.config_map {
            let data = match find(objects, Kind::ConfigMap, ns, &c.name) {
                Some(o) => config_map_data(o)?,
                None if c.optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(format!(
                        "volume {}: ConfigMap {ns}/{} not found; add it to the manifests",
                        v.name, c.name
                    ))
                }
            };
            VolumeSource::ConfigMap(project(
                data,
                &c.items,
                &format!("ConfigMap {ns}/{}", c.name),
            )?)
        } else if v.empty_dir.is_some() {
            VolumeSource::EmptyDir
        } else {
            return Err(format!(
                "volume {}: only secret, configMap and emptyDir volumes are supported",
                v.name
            ));
        };
        out.push(Volume {
            name: v.name.clone(),
            source,
            // The manifest types do not carry defaultMode; 0644 as Kubernetes defaults.
            default_mode: None,
        });
    }
    Ok(out)
}

fn pod_spec<'a>(objects: &'a [Object], w: &Workload) -> Option<&'a k8s::PodSpec> {
    let o = find(
        objects,
        if w.deployment.is_some() {
            Kind::Deployment
        } else {
            Kind::Pod
        },
        &w.namespace,
        w.deployment.as_deref().unwrap_or(&w.name),
    )?;
    match &o.body {
        Body::Pod(s) => Some(s),
        Body::Deployment(d) => Some(&d.template.spec),
        _ => None,
    }
}

fn plan_pod(objects: &[Object], w: &Workload) -> Result<PodPlan, PlanError> {
    let key = format!("{}/{}", w.namespace, w.name);
    let err = |message: String| PlanError::Pod {
        pod: key.clone(),
        message,
    };
    let spec = pod_spec(objects, w)
        .ok_or_else(|| err("its Pod/Deployment object is missing".to_string()))?;
    let volumes = volumes(objects, &w.namespace, spec).map_err(err)?;
    let gateway = w.proxy == ProxyKind::Router;
    let mut containers = Vec::new();
    for c in &spec.containers {
        let mut argv = c.command.clone();
        argv.extend(c.args.iter().cloned());
        if argv.is_empty() && gateway {
            // A gateway's container is the proxy itself (image `auto`/proxyv2); the
            // supervisor runs `isthmus proxy` in its place.
            continue;
        }
        if argv.is_empty() {
            return Err(err(format!(
                "container `{}` has no command/args; images are informational here, so give the command to run (e.g. command: [\"isthmus\", \"echo\", \"--http-port\", \"8080\"])",
                c.name
            )));
        }
        let mut env = Vec::new();
        for var in &c.env {
            if let Some(v) = env_value(objects, w, var).map_err(err)? {
                env.push((var.name.clone(), v));
            }
        }
        containers.push(ContainerSpec {
            name: c.name.clone(),
            argv,
            env,
            working_dir: c.working_dir.clone(),
            mounts: c
                .volume_mounts
                .iter()
                .map(|m| VolumeMount {
                    name: m.name.clone(),
                    mount_path: m.mount_path.clone(),
                    sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
                    read_only: m.read_only.unwrap_or(false),
                })
                .collect(),
        });
    }
    if containers.is_empty() && !gateway {
        return Err(err("has no containers".to_string()));
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        None | Some("Always") => RestartPolicy::Always,
        Some("OnFailure") if w.deployment.is_none() => RestartPolicy::OnFailure,
        Some("Never") if w.deployment.is_none() => RestartPolicy::Never,
        Some(other) => {
            return Err(err(format!(
                "restartPolicy `{other}` is not valid here (Pods: Always, OnFailure, Never; Deployments: Always)"
            )))
        }
    };
    let outside_hostnames: Vec<String> = w
        .annotations
        .get(OUTSIDE_HOSTNAMES)
        .map(|s| {
            let mut v: Vec<String> = s
                .split(',')
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            v.sort();
            v.dedup();
            v
        })
        .unwrap_or_default();
    let mut tcp_ports: Vec<u16> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .filter(|p| {
            p.protocol
                .as_deref()
                .is_none_or(|x| x.eq_ignore_ascii_case("TCP"))
        })
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    tcp_ports.sort_unstable();
    tcp_ports.dedup();
    Ok(PodPlan {
        tcp_ports,
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        deployment: w.deployment.clone(),
        ip: ip4(&key, &w.ip)?,
        proxy: match w.proxy {
            ProxyKind::None => PodProxy::None,
            ProxyKind::Sidecar => PodProxy::Sidecar,
            ProxyKind::Router => PodProxy::Gateway,
        },
        outside_hostnames,
        containers,
        volumes,
        restart_policy,
        service_account: w.service_account.clone(),
        labels: w.labels.clone(),
    })
}

impl MeshPlan {
    /// The sidecars' DNS table: the mesh's names plus every ServiceEntry host's VIP (a
    /// Kubernetes name wins over a ServiceEntry host of the same name).
    pub fn sidecar_dns_table(
        &self,
        service_entry_vips: &BTreeMap<String, Ipv4Addr>,
    ) -> BTreeMap<String, Vec<Ipv4Addr>> {
        let mut table = self.mesh_dns.clone();
        for (host, ip) in service_entry_vips {
            table.entry(host.clone()).or_insert_with(|| vec![*ip]);
        }
        table
    }

    /// Plans the mesh for `objects` as modelled by `snapshot`.
    pub fn build(objects: &[Object], snapshot: &Snapshot) -> Result<MeshPlan, PlanError> {
        let mut pods = Vec::new();
        for w in &snapshot.workloads {
            pods.push(plan_pod(objects, w)?);
        }
        pods.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));

        let mut services = Vec::new();
        let mut vips = Vec::new();
        let mut mesh_dns: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        let service_entry_vips = service_entry_vips(snapshot);
        for s in &snapshot.services {
            match s.registry {
                Registry::ServiceEntry => {}
                Registry::Kubernetes => {
                    let what = format!("Service {}/{}", s.namespace, s.name);
                    let cluster_ip = match s.address.as_deref() {
                        Some("None") | None => None,
                        Some(a) => Some(ip4(&what, a)?),
                    };
                    let mut ep_ips: Vec<Ipv4Addr> = s
                        .endpoints
                        .iter()
                        .filter_map(|e| e.address.parse().ok())
                        .collect();
                    ep_ips.sort();
                    ep_ips.dedup();
                    match cluster_ip {
                        Some(ip) => {
                            mesh_dns.insert(s.hostname.clone(), vec![ip]);
                            for p in &s.ports {
                                let Ok(port) = u16::try_from(p.port) else {
                                    continue;
                                };
                                let endpoints: Vec<SocketAddrV4> = s
                                    .endpoints_for_port(p.port)
                                    .filter_map(|e| {
                                        let a: Ipv4Addr = e.address.parse().ok()?;
                                        Some(SocketAddrV4::new(a, u16::try_from(e.port).ok()?))
                                    })
                                    .collect();
                                vips.push(ServiceVip {
                                    vip: ip,
                                    port,
                                    protocol: if p.protocol == Protocol::Udp {
                                        L4::Udp
                                    } else {
                                        L4::Tcp
                                    },
                                    endpoints,
                                });
                            }
                        }
                        None if !ep_ips.is_empty() => {
                            mesh_dns.insert(s.hostname.clone(), ep_ips.clone());
                        }
                        None => {}
                    }
                    services.push(ServicePlan {
                        namespace: s.namespace.clone(),
                        name: s.name.clone(),
                        hostname: s.hostname.clone(),
                        cluster_ip,
                        ports: s
                            .ports
                            .iter()
                            .map(|p| {
                                format!(
                                    "{}/{}",
                                    p.port,
                                    if p.protocol == Protocol::Udp {
                                        "UDP"
                                    } else {
                                        "TCP"
                                    }
                                )
                            })
                            .collect(),
                        endpoints: ep_ips.len(),
                    });
                }
            }
        }
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        vips.sort();

        let mut outside_dns: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for p in &pods {
            for h in &p.outside_hostnames {
                outside_dns.entry(h.clone()).or_default().push(p.ip);
            }
        }
        for ips in outside_dns.values_mut() {
            ips.sort();
            ips.dedup();
        }
        Ok(MeshPlan {
            pods,
            services,
            vips,
            mesh_dns,
            service_entry_vips,
            outside_dns,
            domain: snapshot.domain_suffix.clone(),
        })
    }
}

/// ServiceEntry host → VIP (declared or auto-allocated), as the sidecars' DNS answers them.
pub fn service_entry_vips(snapshot: &Snapshot) -> BTreeMap<String, Ipv4Addr> {
    snapshot
        .services
        .iter()
        .filter(|s| matches!(s.registry, Registry::ServiceEntry))
        .filter_map(|s| Some((s.hostname.clone(), s.vip()?.parse::<Ipv4Addr>().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_api::{load_str, LoadOptions, MeshConfig};

    const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        command: [isthmus, echo]
        args: [--http-port, "8080"]
        env:
        - {name: A, value: "1"}
        - name: POD
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: PW
          valueFrom: {secretKeyRef: {name: creds, key: pw}}
        volumeMounts: [{name: certs, mountPath: /etc/certs}]
      volumes:
      - name: certs
        secret: {secretName: creds}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: default}
stringData: {pw: hunter2}
---
apiVersion: v1
kind: Pod
metadata:
  name: partner
  namespace: outside
  annotations: {isthmus.dev/outside-hostnames: "api.partner.example, B.example."}
spec:
  restartPolicy: Never
  containers:
  - {name: echo, command: [isthmus, echo, --http-port, "80"]}
"#;

    fn plan(text: &str) -> Result<MeshPlan, PlanError> {
        let loaded = load_str("t.yaml", text, &LoadOptions::default());
        assert!(loaded.rejections.is_empty(), "{:?}", loaded.rejections);
        let (snap, _) = Snapshot::build(&loaded.objects, MeshConfig::default(), "cluster.local");
        MeshPlan::build(&loaded.objects, &snap)
    }

    #[test]
    fn pods_services_dns_and_vips_are_planned() {
        let p = plan(MANIFEST).expect("plan");
        assert_eq!(p.pods.len(), 3);
        let web: Vec<&PodPlan> = p.pods.iter().filter(|p| p.deployment.is_some()).collect();
        assert_eq!(web.len(), 2);
        let c = &web[0].containers[0];
        assert_eq!(c.argv, ["isthmus", "echo", "--http-port", "8080"]);
        assert!(c.env.contains(&("A".to_string(), "1".to_string())));
        assert!(c.env.contains(&("POD".to_string(), web[0].name.clone())));
        assert!(c.env.contains(&("PW".to_string(), "hunter2".to_string())));
        assert!(
            matches!(&web[0].volumes[0].source, VolumeSource::Secret(d) if d.get("pw").map(Vec::as_slice) == Some(&b"hunter2"[..]))
        );
        assert_eq!(web[0].restart_policy, RestartPolicy::Always);

        let partner = p
            .pods
            .iter()
            .find(|p| p.name == "partner")
            .expect("partner");
        assert_eq!(
            partner.outside_hostnames,
            ["api.partner.example", "b.example"]
        );
        assert_eq!(partner.restart_policy, RestartPolicy::Never);
        assert_eq!(
            p.outside_dns.get("api.partner.example"),
            Some(&vec![partner.ip])
        );
        assert!(!p.mesh_dns.contains_key("api.partner.example"));

        let svc = &p.services[0];
        let vip = svc.cluster_ip.expect("cluster ip");
        assert_eq!(
            p.mesh_dns.get("web.default.svc.cluster.local"),
            Some(&vec![vip])
        );
        assert_eq!(p.vips.len(), 1);
        let mut eps: Vec<SocketAddrV4> =
            web.iter().map(|w| SocketAddrV4::new(w.ip, 8080)).collect();
        eps.sort();
        let mut got = p.vips[0].endpoints.clone();
        got.sort();
        assert_eq!((p.vips[0].vip, p.vips[0].port, got), (vip, 80, eps));
        assert_eq!(svc.ports, ["80/TCP"]);
        assert_eq!(svc.endpoints, 2);
    }

    #[test]
    fn missing_secret_and_missing_command_are_named() {
        let text = MANIFEST.replace("name: creds, namespace", "name: other, namespace");
        let e = plan(&text).expect_err("missing secret");
        let msg = e.to_string();
        assert!(msg.contains("Secret default/creds not found"), "{msg}");

        let e = plan(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, image: nginx}]\n",
        )
        .expect_err("no command");
        assert!(e.to_string().contains("has no command/args"), "{e}");
    }
}
