//! Install profiles, like `istioctl install --set profile=...`: `demo` (the default) adds
//! `istio-system` with `istio-ingressgateway` and `istio-egressgateway` (Services 80→8080 and
//! 443→8443, as the seeds' Helm install); `minimal` adds nothing.

use isthmus_api::{load_str, LoadOptions, Object};

/// Profile names.
pub const PROFILES: [&str; 2] = ["demo", "minimal"];

const DEMO: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system, labels: {app: istio-ingressgateway, istio: ingressgateway}}
spec:
  selector: {app: istio-ingressgateway, istio: ingressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {matchLabels: {app: istio-ingressgateway, istio: ingressgateway}}
  template:
    metadata: {labels: {app: istio-ingressgateway, istio: ingressgateway}}
    spec:
      serviceAccountName: istio-ingressgateway-service-account
      containers:
      - {name: istio-proxy, image: auto}
---
apiVersion: v1
kind: Service
metadata: {name: istio-egressgateway, namespace: istio-system, labels: {app: istio-egressgateway, istio: egressgateway}}
spec:
  selector: {app: istio-egressgateway, istio: egressgateway}
  ports:
  - {name: http2, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: istio-egressgateway, namespace: istio-system}
spec:
  selector: {matchLabels: {app: istio-egressgateway, istio: egressgateway}}
  template:
    metadata: {labels: {app: istio-egressgateway, istio: egressgateway}}
    spec:
      serviceAccountName: istio-egressgateway-service-account
      containers:
      - {name: istio-proxy, image: auto}
"#;

/// The objects profile `name` adds, minus those the user's `objects` already define (same
/// kind, namespace and name: the user's win, as a Helm values override would).
pub fn objects(name: &str, objects: &[Object]) -> Result<Vec<Object>, String> {
    let text = match name {
        "demo" => DEMO,
        "minimal" => return Ok(Vec::new()),
        other => {
            return Err(format!(
                "unknown profile `{other}`; use one of: {}",
                PROFILES.join(", ")
            ))
        }
    };
    let loaded = load_str("profile:demo", text, &LoadOptions::default());
    if let Some(r) = loaded.rejections.first() {
        return Err(format!("built-in profile rejected: {}", r.message));
    }
    let base = objects.iter().map(|o| o.seq + 1).max().unwrap_or(0);
    Ok(loaded
        .objects
        .into_iter()
        .filter(|p| {
            !objects
                .iter()
                .any(|o| o.kind == p.kind && o.namespace() == p.namespace() && o.name() == p.name())
        })
        .map(|mut o| {
            o.seq += base;
            o
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_adds_both_gateways_and_yields_to_user_objects() {
        let added = objects("demo", &[]).expect("demo");
        let names: Vec<String> = added.iter().map(|o| o.label()).collect();
        assert!(
            names.contains(&"Deployment istio-system/istio-ingressgateway".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"Service istio-system/istio-egressgateway".to_string()),
            "{names:?}"
        );
        let user = load_str(
            "u.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  ports: [{port: 80}]\n",
            &LoadOptions::default(),
        );
        let added = objects("demo", &user.objects).expect("demo");
        assert_eq!(added.len(), 4);
        assert!(added.iter().all(|o| o.seq >= 1));
        assert!(objects("minimal", &[]).expect("minimal").is_empty());
        assert!(objects("huge", &[])
            .expect_err("unknown")
            .contains("demo, minimal"));
    }
}
