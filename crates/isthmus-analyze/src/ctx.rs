//! The analysis context: the objects by kind, Istio's resource naming (`ns/name`, an empty
//! namespace for namespace-less inputs) and Kubernetes label-selector matching.

use crate::messages::{sprintf, Arg, MessageType};
use crate::{Message, Origin};
use isthmus_api::{Kind, MeshConfig, Object};
use std::collections::BTreeMap;

/// What analyzers see: every object, and the mesh config.
pub struct Ctx<'a> {
    pub objects: &'a [Object],
    pub mesh: &'a MeshConfig,
    /// The cluster domain suffix (istiod `--domain`), `cluster.local` unless told otherwise.
    pub domain: String,
    /// RequestAuthentications known to the analysis.
    pub request_authn: Vec<crate::RequestAuthnRef>,
}

impl<'a> Ctx<'a> {
    pub fn new(objects: &'a [Object], mesh: &'a MeshConfig) -> Self {
        Ctx {
            objects,
            mesh,
            domain: "cluster.local".to_string(),
            request_authn: Vec::new(),
        }
    }

    /// Objects of one kind, in load order.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    /// `ctx.Find(kind, FullName)`.
    pub fn find(&self, kind: Kind, ns: &str, name: &str) -> Option<&'a Object> {
        self.of(kind).find(|o| ns_of(o) == ns && o.name() == name)
    }

    /// Builds a message about `o` from an Istio (or isthmus) message type.
    pub fn msg(
        &self,
        o: &Object,
        mt: &MessageType,
        args: &[Arg],
        field: Option<String>,
    ) -> Message {
        Message {
            code: mt.code.to_string(),
            level: mt.level,
            origin: Some(origin(o)),
            file: o.source.file.clone(),
            line: o.source.line,
            text: sprintf(mt.template, args),
            fix: None,
            field,
        }
    }
}

/// The object's namespace as Istio's file sources see it: empty when none was written.
pub fn ns_of(o: &Object) -> &str {
    o.meta.namespace.as_deref().unwrap_or("")
}

/// `resource.FullName.String()`: `ns/name`, or `name` without namespace.
pub fn full_name(o: &Object) -> String {
    fmt_full_name(ns_of(o), o.name())
}

pub fn fmt_full_name(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// `resource.NewShortOrFullName`: `ns/name` or a short name in the default namespace.
pub fn short_or_full(default_ns: &str, name: &str) -> (String, String) {
    match name.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => (default_ns.to_string(), name.to_string()),
    }
}

pub fn origin(o: &Object) -> Origin {
    Origin {
        kind: o.kind.as_str().to_string(),
        namespace: o.meta.namespace.clone(),
        name: o.name().to_string(),
    }
}

/// `labels.SelectorFromSet(m).String()`: `k1=v1,k2=v2`, keys sorted.
pub fn selector_string(sel: &BTreeMap<String, String>) -> String {
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `SelectorFromSet(sel).Matches(labels)`: an empty selector matches everything.
pub fn selector_matches(sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The `labels` of a networking WorkloadSelector (Sidecar, ServiceEntry), read from the raw
/// object; None when there is no selector.
pub fn networking_selector(o: &Object) -> Option<BTreeMap<String, String>> {
    let sel = o.raw.get("spec")?.get("workloadSelector")?;
    if sel.is_null() {
        return None;
    }
    Some(
        sel.get("labels")
            .and_then(|l| l.as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Istio's `util.ConvertHostToFQDN`: short names become `name.ns.svc.cluster.local`.
pub fn host_to_fqdn(domain: &str, ns: &str, host: &str) -> String {
    if !host.starts_with('*') && !host.contains('.') {
        format!("{host}.{ns}.svc.{domain}")
    } else {
        host.to_string()
    }
}

/// `util.GetFullNameFromFQDN`: (namespace, name) of `name.ns.svc.cluster.local`.
pub fn full_name_from_fqdn(domain: &str, fqdn: &str) -> Option<(String, String)> {
    let rest = fqdn.strip_suffix(&format!(".svc.{domain}"))?;
    // `^(.+)\.(.+)\.svc\.cluster\.local$` is greedy: the namespace is the last label.
    let (name, ns) = rest.rsplit_once('.')?;
    if name.is_empty() || ns.is_empty() {
        return None;
    }
    Some((ns.to_string(), name.to_string()))
}

/// `util.GetResourceNameFromHost`.
pub fn resource_name_from_host(domain: &str, default_ns: &str, host: &str) -> (String, String) {
    full_name_from_fqdn(domain, host).unwrap_or_else(|| (default_ns.to_string(), host.to_string()))
}

/// `util.IsExportToAllNamespaces`.
pub fn export_to_all(export_to: &[String]) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_names() {
        assert_eq!(
            host_to_fqdn("cluster.local", "ns", "reviews"),
            "reviews.ns.svc.cluster.local"
        );
        assert_eq!(host_to_fqdn("cluster.local", "ns", "a.b"), "a.b");
        assert_eq!(
            full_name_from_fqdn("cluster.local", "reviews.ns.svc.cluster.local"),
            Some(("ns".into(), "reviews".into()))
        );
        assert_eq!(
            resource_name_from_host("cluster.local", "d", "reviews"),
            ("d".into(), "reviews".into())
        );
        let sel: BTreeMap<String, String> = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(selector_string(&sel), "a=1,b=2");
    }
}
