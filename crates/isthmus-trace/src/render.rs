//! Text rendering: one block per hop, indented facts, the verdict last — readable at a glance.

use crate::{PoolLimits, TlsLayer, Trace};
use std::fmt::Write;

fn layer_txt(l: &TlsLayer) -> String {
    let mut s = l.kind.as_str().to_string();
    if !l.sni.is_empty() {
        let _ = write!(s, " sni={}", l.sni);
    }
    if let Some(c) = &l.client_cert {
        let _ = write!(s, " cert={c}");
    }
    if let Some(t) = &l.trust {
        let _ = write!(s, " ca={t}");
    }
    if !l.verify_sans.is_empty() {
        let _ = write!(s, " san={}", l.verify_sans.join(","));
    }
    s
}

fn stack_txt(layers: &[TlsLayer]) -> String {
    if layers.is_empty() {
        return "plaintext".into();
    }
    layers
        .iter()
        .map(|l| {
            format!(
                "{}(sni={})",
                l.kind.as_str(),
                if l.sni.is_empty() { "-" } else { &l.sni }
            )
        })
        .collect::<Vec<_>>()
        .join(" > ")
}

fn pool_txt(p: &PoolLimits) -> String {
    let mut v = Vec::new();
    let mut push = |k: &str, val: Option<String>| {
        if let Some(val) = val {
            v.push(format!("{k}={val}"));
        }
    };
    push("maxConnections", p.max_connections.map(|n| n.to_string()));
    push(
        "maxPendingRequests",
        p.max_pending_requests.map(|n| n.to_string()),
    );
    push("maxRequests", p.max_requests.map(|n| n.to_string()));
    push("maxRetries", p.max_retries.map(|n| n.to_string()));
    push("connectTimeout", p.connect_timeout.clone());
    push("keepalive", p.tcp_keepalive.clone());
    push("httpIdleTimeout", p.http_idle_timeout.clone());
    push(
        "maxRequestsPerConnection",
        p.max_requests_per_connection.map(|n| n.to_string()),
    );
    push("maxConnectionDuration", p.max_connection_duration.clone());
    push("tcpIdleTimeout", p.tcp_idle_timeout.clone());
    push("outlier", p.outlier_detection.clone());
    if p.h2 == Some(true) {
        v.push("h2".into());
    }
    if v.is_empty() {
        "Envoy defaults (no limits set)".into()
    } else {
        v.join(" ")
    }
}

/// Renders a trace as text.
pub fn render_text(t: &Trace) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "TRACE {} {} from {}", t.method, t.url, t.source);
    for (k, v) in &t.headers {
        let _ = writeln!(o, "  header {k}: {v}");
    }
    for (i, h) in t.hops.iter().enumerate() {
        let _ = writeln!(o);
        let _ = writeln!(o, "HOP {} {} ({})", i + 1, h.proxy, h.role);
        let a = &h.arrives;
        let mut arr = String::new();
        if let Some(addr) = &a.address {
            let _ = write!(arr, "{addr}:{}", a.port);
        } else {
            let _ = write!(arr, "port {}", a.port);
        }
        let _ = write!(arr, " {}", a.payload);
        if let Some(host) = &a.host {
            let _ = write!(arr, " Host={host}");
        }
        let _ = write!(arr, " wire={}", stack_txt(&a.layers));
        let _ = writeln!(o, "  in:        {arr}");
        if let Some(l) = &h.listener {
            let _ = writeln!(o, "  listener:  {l}");
        }
        if let Some(n) = &h.listener_note {
            let _ = writeln!(o, "             ({n})");
        }
        if let Some(c) = &h.filter_chain {
            let _ = writeln!(
                o,
                "  chain:     {c} — {}",
                h.chain_match.as_deref().unwrap_or("")
            );
        }
        if let Some(t) = &h.terminated {
            let _ = writeln!(o, "  tls in:    terminates {t}");
        }
        if let Some(r) = &h.route_config {
            let _ = writeln!(o, "  routes:    {r}");
        }
        if let Some(v) = &h.virtual_host {
            let _ = writeln!(o, "  vhost:     {v}");
        }
        if let Some(r) = &h.route {
            let from = r
                .from
                .as_deref()
                .map(|f| format!(" from {f}"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  route:     {}{from} — first match: {}",
                r.name, r.matched
            );
            for s in &r.skipped {
                let _ = writeln!(o, "             skipped earlier route {s}");
            }
        }
        if let Some(r) = &h.l4_route {
            let _ = writeln!(
                o,
                "  route:     {r} (L4: the chain matched, no HTTP routing)"
            );
        }
        if let Some(c) = &h.cluster {
            let _ = writeln!(o, "  cluster:   {c}");
        }
        if let Some(d) = &h.destination_rule {
            let sub = d
                .subset
                .as_deref()
                .map(|s| format!(" subset {s}"))
                .unwrap_or_default();
            let _ = writeln!(o, "  dr:        {}{sub}", d.applied);
            for m in &d.merged {
                let _ = writeln!(o, "             merged {m}");
            }
            for b in &d.beaten {
                let _ = writeln!(o, "             beat {b}");
            }
        }
        if let Some(u) = &h.upstream_tls {
            let _ = writeln!(o, "  tls out:   {}", layer_txt(u));
        } else if h.cluster.is_some() && h.failure.is_none() {
            let _ = writeln!(o, "  tls out:   none (this proxy adds no TLS)");
        }
        if let Some(p) = &h.pool {
            let _ = writeln!(o, "  pool:      {}", pool_txt(p));
        }
        if let Some(e) = &h.endpoint {
            let wl = e
                .workload
                .as_deref()
                .map(|w| format!(" {w}"))
                .unwrap_or_default();
            let more = if e.count > 1 {
                format!(" (1 of {})", e.count)
            } else {
                String::new()
            };
            let _ = writeln!(o, "  endpoint:  {}{more} — {}{wl}", e.address, e.kind);
        }
        if h.failure.is_none() {
            let _ = writeln!(o, "  wire out:  {}", stack_txt(&h.wire_out));
        }
        for n in &h.notes {
            let _ = writeln!(o, "  note:      {n}");
        }
        if let Some(f) = &h.failure {
            let _ = writeln!(o, "  FAILS:     {} — {}", f.client_sees, f.detail);
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "RESULT: {}", t.verdict.summary);
    o
}
