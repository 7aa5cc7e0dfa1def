//! Confirming a predicted path against what the proxies logged (`isthmus trace --confirm`).
//!
//! Why: a trace is a prediction from the compiled config; the seeds' proof of path was always
//! the proxies' access logs ("the gateway logged `outbound|443||api.partner...`"). After the
//! request has been run in the source pod, the caller hands over the access-log lines each
//! proxy wrote meanwhile; [`confirm`] matches them hop by hop (same proxy, same cluster, the
//! response flags a predicted failure implies), flags proxies that handled the request although
//! no hop predicted them, and checks what the client saw. Any disagreement makes the
//! confirmation fail, loudly, with the line that disagreed.
//!
//! This module is pure (lines in, verdict out) so it is tested without a running mesh; the
//! `isthmus` binary does the exec and the log reading.

use crate::{Hop, Trace};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One access-log line in Istio's default TEXT format (or its JSON twin), the fields the
/// confirmation needs. `None` is Envoy's `-`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub code: u16,
    /// Response flags, `-` when none.
    pub flags: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

impl LogLine {
    /// `"GET /x" 200 - cluster=outbound|80||web...` — what a hop logged, in one line.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        match (&self.method, &self.path) {
            (Some(m), Some(p)) => {
                let _ = write!(s, "\"{m} {p}\" ");
            }
            _ => s.push_str("(TCP) "),
        }
        let _ = write!(s, "{} {}", self.code, self.flags);
        if let Some(d) = &self.details {
            let _ = write!(s, " {d}");
        }
        let _ = write!(
            s,
            " cluster={}",
            self.upstream_cluster.as_deref().unwrap_or("-")
        );
        if let Some(h) = &self.upstream_host {
            let _ = write!(s, " upstream={h}");
        }
        if let Some(n) = &self.sni {
            let _ = write!(s, " sni={n}");
        }
        s
    }

    fn has_flag(&self, f: &str) -> bool {
        self.flags.split(',').any(|x| x == f)
    }
}

fn dash(s: &str) -> Option<String> {
    if s.is_empty() || s == "-" {
        None
    } else {
        Some(s.to_string())
    }
}

/// Splits a TEXT line into fields: `[...]` and `"..."` are single fields (quotes removed).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut f = String::new();
        match c {
            '"' | '[' => {
                let close = if c == '"' { '"' } else { ']' };
                chars.next();
                for x in chars.by_ref() {
                    if x == close {
                        break;
                    }
                    f.push(x);
                }
            }
            _ => {
                while let Some(&x) = chars.peek() {
                    if x == ' ' {
                        break;
                    }
                    f.push(x);
                    chars.next();
                }
            }
        }
        out.push(f);
    }
    out
}

/// Parses one access-log line (TEXT or JSON); None for anything else (the proxy's own logs).
pub fn parse_log_line(line: &str) -> Option<LogLine> {
    let line = line.trim();
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).and_then(dash);
        let code = v.get("response_code")?.as_u64()?;
        return Some(LogLine {
            method: s("method"),
            path: s("path"),
            code: u16::try_from(code).ok()?,
            flags: s("response_flags").unwrap_or_else(|| "-".into()),
            details: s("response_code_details"),
            request_id: s("request_id"),
            authority: s("authority"),
            upstream_host: s("upstream_host"),
            upstream_cluster: s("upstream_cluster"),
            sni: s("requested_server_name"),
            route: s("route_name"),
        });
    }
    if !line.starts_with('[') {
        return None;
    }
    let f = fields(line);
    if f.len() != 22 {
        return None;
    }
    let mut req = f[1].split(' ');
    let method = req.next().and_then(dash);
    let path = req.next().and_then(dash);
    Some(LogLine {
        method,
        path,
        code: f[2].parse().ok()?,
        flags: f[3].clone(),
        details: dash(&f[4]),
        request_id: dash(&f[13]),
        authority: dash(&f[14]),
        upstream_host: dash(&f[15]),
        upstream_cluster: dash(&f[16]),
        sni: dash(&f[20]),
        route: dash(&f[21]),
    })
}

/// What the request did, as seen by the client in the source pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClientOutcome {
    /// curl's exit code.
    pub exit_code: i32,
    /// `%{http_code}` (`000` when no HTTP response arrived).
    pub http_code: String,
}

/// Everything observed while the request ran.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub client: ClientOutcome,
    /// `x-request-id` sent with the request (HTTP URLs), to pick this request's lines.
    pub request_id: Option<String>,
    /// Host of the URL (to recognise this request's TCP lines at unpredicted proxies).
    pub host: String,
    /// New access-log lines per proxy `ns/pod`, for every proxy in the mesh.
    pub logs: BTreeMap<String, Vec<String>>,
}

/// The check of one predicted hop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HopCheck {
    pub hop: usize,
    pub proxy: String,
    pub role: String,
    /// What the trace predicted there (`cluster X` or the failure).
    pub predicted: String,
    /// What the proxy logged for the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged: Option<LogLine>,
    /// `confirmed`, `mismatch` or `missing`.
    pub status: String,
    pub detail: String,
}

/// The confirmation verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confirmation {
    /// True when every hop, the client's outcome, and the absence of unpredicted hops agree.
    pub agrees: bool,
    pub client: ClientOutcome,
    /// What the client outcome was checked against, and the result.
    pub client_check: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub hops: Vec<HopCheck>,
    /// Proxies not on the predicted path that logged this request (`ns/pod: line`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unexpected: Vec<String>,
    pub summary: String,
}

/// This request's lines in one proxy's new log lines: lines carrying our request id; lines
/// without any request id (TCP proxying, where the proxy cannot see HTTP) also count.
fn candidates(lines: &[String], request_id: Option<&str>) -> Vec<LogLine> {
    let parsed: Vec<LogLine> = lines.iter().filter_map(|l| parse_log_line(l)).collect();
    match request_id {
        Some(id) => {
            let ours: Vec<LogLine> = parsed
                .iter()
                .filter(|l| l.request_id.as_deref() == Some(id))
                .cloned()
                .collect();
            if ours.is_empty() {
                parsed
                    .into_iter()
                    .filter(|l| l.request_id.is_none())
                    .collect()
            } else {
                ours
            }
        }
        None => parsed,
    }
}

/// The response flag a predicted failure makes the proxy log, when there is one to check.
fn failure_flag(kind: &str) -> Option<&'static str> {
    match kind {
        "no_route" | "no_filter_chain" => Some("NR"),
        "cluster_not_found" => Some("NC"),
        "no_endpoints" => Some("UH"),
        _ => None,
    }
}

fn leading_code(s: &str) -> Option<&str> {
    let c = s.split_whitespace().next()?;
    (c.len() == 3 && c.chars().all(|x| x.is_ascii_digit())).then_some(c)
}

fn curl_exit(s: &str) -> Option<i32> {
    let i = s.find("curl exit ")?;
    s[i + "curl exit ".len()..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn check_hop(i: usize, h: &Hop, lines: Option<&Vec<String>>, request_id: Option<&str>) -> HopCheck {
    let predicted = match (&h.failure, &h.cluster) {
        (Some(f), _) => format!("fails: {} ({})", f.client_sees, f.kind),
        (None, Some(c)) => format!("cluster {c}"),
        (None, None) => "no cluster".into(),
    };
    let mut check = HopCheck {
        hop: i + 1,
        proxy: h.proxy.clone(),
        role: h.role.clone(),
        predicted,
        logged: None,
        status: "missing".into(),
        detail: String::new(),
    };
    let Some(lines) = lines else {
        check.detail = "no such proxy is running in the mesh (no istio-proxy log to read)".into();
        return check;
    };
    let cands = candidates(lines, request_id);
    let chosen = h
        .cluster
        .as_ref()
        .and_then(|c| {
            cands
                .iter()
                .find(|l| l.upstream_cluster.as_deref() == Some(c.as_str()))
        })
        .or_else(|| cands.first())
        .cloned();
    let Some(line) = chosen else {
        check.detail =
            "predicted on the path, but this proxy logged nothing for the request".into();
        return check;
    };
    let (ok, detail) = match (&h.failure, &h.cluster) {
        (Some(f), _) => {
            if let Some(flag) = failure_flag(&f.kind) {
                if line.has_flag(flag) {
                    (true, format!("logged flag {flag} as predicted"))
                } else {
                    (
                        false,
                        format!(
                            "predicted flag {flag} ({}), logged flags {}",
                            f.kind, line.flags
                        ),
                    )
                }
            } else if f.kind == "blackhole" {
                let bh = line.upstream_cluster.as_deref() == Some("BlackHoleCluster");
                (
                    bh,
                    if bh {
                        "logged BlackHoleCluster as predicted".into()
                    } else {
                        format!(
                            "predicted BlackHoleCluster, logged cluster {}",
                            line.upstream_cluster.as_deref().unwrap_or("-")
                        )
                    },
                )
            } else if let Some(code) = leading_code(&f.client_sees) {
                let same = line.code.to_string() == code;
                (
                    same,
                    if same {
                        format!("logged {code} as predicted")
                    } else {
                        format!("predicted {code}, logged {}", line.code)
                    },
                )
            } else {
                (
                    true,
                    format!(
                        "logged (a {} failure is not checked against the log)",
                        f.kind
                    ),
                )
            }
        }
        (None, Some(c)) => {
            if line.upstream_cluster.as_deref() == Some(c.as_str()) {
                // The path is as predicted; say so, but do not hide a failure beyond it.
                if line.flags == "-" {
                    (true, "same cluster".into())
                } else {
                    (
                        true,
                        format!(
                            "same cluster (it logged {} {}: the request failed at or beyond this hop)",
                            line.code, line.flags
                        ),
                    )
                }
            } else {
                (
                    false,
                    format!(
                        "predicted cluster {c}, logged cluster {}",
                        line.upstream_cluster.as_deref().unwrap_or("-")
                    ),
                )
            }
        }
        (None, None) => (true, "logged".into()),
    };
    check.status = if ok { "confirmed" } else { "mismatch" }.into();
    check.detail = detail;
    check.logged = Some(line);
    check
}

/// Does a line without request id belong to a request to `host`?
fn mentions_host(l: &LogLine, host: &str) -> bool {
    !host.is_empty()
        && [&l.authority, &l.sni, &l.upstream_cluster]
            .iter()
            .any(|v| v.as_deref().is_some_and(|x| x.contains(host)))
}

/// Compares the trace with what was observed.
pub fn confirm(t: &Trace, obs: &Observed) -> Confirmation {
    let rid = obs.request_id.as_deref();
    let hops: Vec<HopCheck> = t
        .hops
        .iter()
        .enumerate()
        .map(|(i, h)| check_hop(i, h, obs.logs.get(&h.proxy), rid))
        .collect();
    let on_path: Vec<&str> = t.hops.iter().map(|h| h.proxy.as_str()).collect();
    let mut unexpected = Vec::new();
    for (proxy, lines) in &obs.logs {
        if on_path.contains(&proxy.as_str()) {
            continue;
        }
        for l in lines.iter().filter_map(|l| parse_log_line(l)) {
            let ours = match (rid, &l.request_id) {
                (Some(id), Some(lid)) => id == lid,
                _ => mentions_host(&l, &obs.host),
            };
            if ours {
                unexpected.push(format!("{proxy}: {}", l.summary()));
            }
        }
    }
    // What the client saw.
    let c = &obs.client;
    let (client_ok, client_check) = match &t.verdict.failure {
        Some(f) => {
            if let Some(code) = leading_code(&f.client_sees) {
                (
                    c.http_code == code,
                    format!(
                        "predicted HTTP {code}, got HTTP {} (curl exit {})",
                        c.http_code, c.exit_code
                    ),
                )
            } else if let Some(e) = curl_exit(&f.client_sees) {
                (
                    c.exit_code == e,
                    format!(
                        "predicted curl exit {e}, got curl exit {} (HTTP {})",
                        c.exit_code, c.http_code
                    ),
                )
            } else {
                (
                    true,
                    format!(
                        "predicted {}; got HTTP {} (curl exit {}) (not checked)",
                        f.client_sees, c.http_code, c.exit_code
                    ),
                )
            }
        }
        None => {
            let answered = c.http_code != "000" && !c.http_code.is_empty();
            (
                answered,
                format!(
                    "predicted an answer from {}, got HTTP {} (curl exit {})",
                    t.verdict
                        .destination
                        .as_deref()
                        .unwrap_or("the destination"),
                    c.http_code,
                    c.exit_code
                ),
            )
        }
    };
    let bad_hops = hops.iter().filter(|h| h.status != "confirmed").count();
    let agrees = bad_hops == 0 && unexpected.is_empty() && client_ok;
    let summary = if agrees {
        format!(
            "CONFIRMED: the proxies' access logs show the predicted path ({} hop(s)).",
            hops.len()
        )
    } else {
        let mut why = Vec::new();
        if bad_hops > 0 {
            why.push(format!("{bad_hops} hop(s) disagree"));
        }
        if !unexpected.is_empty() {
            why.push(format!("{} unpredicted proxy line(s)", unexpected.len()));
        }
        if !client_ok {
            why.push("the client's outcome differs".into());
        }
        format!(
            "CONFIRM FAILED: the prediction and the proxies' access logs disagree: {}.",
            why.join(", ")
        )
    };
    Confirmation {
        agrees,
        client: obs.client.clone(),
        client_check: format!(
            "{} — {}",
            if client_ok { "ok" } else { "MISMATCH" },
            client_check
        ),
        request_id: obs.request_id.clone(),
        hops,
        unexpected,
        summary,
    }
}

/// Renders a confirmation as text (printed after the trace).
pub fn render_confirmation(c: &Confirmation) -> String {
    let mut o = String::new();
    let _ = writeln!(o);
    let rid = c
        .request_id
        .as_deref()
        .map(|r| format!(", x-request-id {r}"))
        .unwrap_or_default();
    let _ = writeln!(o, "CONFIRM (request run in the source pod{rid})");
    let _ = writeln!(o, "  client:    {}", c.client_check);
    for h in &c.hops {
        let mark = match h.status.as_str() {
            "confirmed" => "confirmed",
            "mismatch" => "MISMATCH",
            _ => "MISSING",
        };
        let _ = writeln!(
            o,
            "  hop {} {} ({}): {mark} — {}",
            h.hop, h.proxy, h.role, h.detail
        );
        let _ = writeln!(o, "             predicted {}", h.predicted);
        if let Some(l) = &h.logged {
            let _ = writeln!(o, "             logged    {}", l.summary());
        }
    }
    for u in &c.unexpected {
        let _ = writeln!(
            o,
            "  UNPREDICTED {u} (this proxy is not on the predicted path)"
        );
    }
    let _ = writeln!(o, "{}", c.summary);
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arrival, Failure, Verdict};

    const GW_LINE: &str = r#"[2026-11-22T02:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 120 3 2 "10.0.0.5" "curl/8.5.0" "rid-1" "api.partner.example.com" "203.0.113.7:443" outbound|443||api.partner.example.com 10.0.0.9:41000 10.0.0.9:8443 10.0.0.5:50000 api.partner.example.com -"#;
    const SC_LINE: &str = r#"[2026-11-22T02:00:00.000Z] "GET / HTTP/1.1" 200 - via_upstream - "-" 0 120 5 4 "-" "curl/8.5.0" "rid-1" "api.partner.example.com" "10.0.0.9:8443" outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local 10.0.0.5:50000 240.240.0.1:80 10.0.0.5:40000 - -"#;

    fn hop(proxy: &str, role: &str, cluster: &str) -> Hop {
        Hop {
            proxy: proxy.into(),
            role: role.into(),
            arrives: Arrival::default(),
            cluster: Some(cluster.into()),
            ..Hop::default()
        }
    }

    fn two_hops() -> Trace {
        Trace {
            source: "mesh-test/sleep-1".into(),
            url: "http://api.partner.example.com/".into(),
            method: "GET".into(),
            headers: BTreeMap::new(),
            hops: vec![
                hop(
                    "mesh-test/sleep-1",
                    "sidecar outbound",
                    "outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local",
                ),
                hop(
                    "istio-system/gw-1",
                    "gateway",
                    "outbound|443||api.partner.example.com",
                ),
            ],
            verdict: Verdict {
                status: "reached".into(),
                summary: "reached".into(),
                destination: Some("api.partner.example.com:443".into()),
                via: vec![],
                tls_layers: vec![],
                failure: None,
            },
        }
    }

    fn observed(logs: &[(&str, &[&str])], code: &str, exit: i32) -> Observed {
        Observed {
            client: ClientOutcome {
                exit_code: exit,
                http_code: code.into(),
            },
            request_id: Some("rid-1".into()),
            host: "api.partner.example.com".into(),
            logs: logs
                .iter()
                .map(|(p, l)| (p.to_string(), l.iter().map(|x| x.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn text_and_json_lines_parse_and_other_lines_do_not() {
        let l = parse_log_line(GW_LINE).expect("text line");
        assert_eq!(l.code, 200);
        assert_eq!(l.flags, "-");
        assert_eq!(l.request_id.as_deref(), Some("rid-1"));
        assert_eq!(
            l.upstream_cluster.as_deref(),
            Some("outbound|443||api.partner.example.com")
        );
        assert_eq!(l.upstream_host.as_deref(), Some("203.0.113.7:443"));
        assert_eq!(l.sni.as_deref(), Some("api.partner.example.com"));
        assert_eq!(l.method.as_deref(), Some("GET"));
        let tcp = r#"[2026-11-22T02:00:00.000Z] "- - -" 0 UH - - "-" 0 0 0 - "-" "-" "-" "-" "-" BlackHoleCluster - 10.1.1.1:443 10.0.0.5:1234 x.example -"#;
        let t = parse_log_line(tcp).expect("tcp line");
        assert_eq!((t.method.clone(), t.flags.as_str()), (None, "UH"));
        assert_eq!(
            t.summary(),
            "(TCP) 0 UH cluster=BlackHoleCluster sni=x.example"
        );
        let j = r#"{"response_code":404,"response_flags":"NR","upstream_cluster":null,"request_id":"rid-1","method":"GET","path":"/"}"#;
        let jl = parse_log_line(j).expect("json line");
        assert_eq!(
            (jl.code, jl.flags.as_str(), jl.upstream_cluster),
            (404, "NR", None)
        );
        assert!(parse_log_line("2026-11-22T02:00:00Z INFO isthmus proxy started").is_none());
        assert!(parse_log_line("[truncated").is_none());
        assert!(parse_log_line("").is_none());
    }

    #[test]
    fn matching_logs_confirm_the_path() {
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[SC_LINE]),
                    ("istio-system/gw-1", &[GW_LINE]),
                    ("default/other", &[]),
                ],
                "200",
                0,
            ),
        );
        assert!(c.agrees, "{c:#?}");
        assert!(c.hops.iter().all(|h| h.status == "confirmed"));
        let text = render_confirmation(&c);
        assert!(
            text.contains("hop 2 istio-system/gw-1 (gateway): confirmed"),
            "{text}"
        );
        assert!(
            text.contains(
                "CONFIRMED: the proxies' access logs show the predicted path (2 hop(s))."
            ),
            "{text}"
        );
    }

    #[test]
    fn a_failure_beyond_a_confirmed_hop_is_named_not_hidden() {
        let uf = GW_LINE.replace(" 200 - via_upstream", " 503 UF,URX upstream_reset");
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[SC_LINE]),
                    ("istio-system/gw-1", &[&uf]),
                ],
                "503",
                0,
            ),
        );
        assert!(c.agrees, "{c:#?}");
        assert!(
            c.hops[1]
                .detail
                .contains("same cluster (it logged 503 UF,URX"),
            "{}",
            c.hops[1].detail
        );
    }

    #[test]
    fn a_silent_hop_an_other_cluster_or_an_unpredicted_proxy_fail_loudly() {
        // The gateway logged nothing: the request did not go through it.
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[SC_LINE]),
                    ("istio-system/gw-1", &[]),
                ],
                "200",
                0,
            ),
        );
        assert!(!c.agrees);
        assert_eq!(c.hops[1].status, "missing");
        assert!(render_confirmation(&c).contains("hop 2 istio-system/gw-1 (gateway): MISSING — predicted on the path, but this proxy logged nothing"));
        // The sidecar sent it elsewhere (bypass): cluster mismatch, named.
        let bypass = SC_LINE.replace(
            "outbound|443|partner|istio-egressgateway.istio-system.svc.cluster.local",
            "PassthroughCluster",
        );
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[&bypass]),
                    ("istio-system/gw-1", &[GW_LINE]),
                ],
                "200",
                0,
            ),
        );
        assert!(!c.agrees);
        assert_eq!(c.hops[0].status, "mismatch");
        assert!(
            c.hops[0]
                .detail
                .contains("logged cluster PassthroughCluster"),
            "{}",
            c.hops[0].detail
        );
        // A proxy off the path logged our request id.
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[SC_LINE]),
                    ("istio-system/gw-1", &[GW_LINE]),
                    ("istio-system/gw-2", &[GW_LINE]),
                ],
                "200",
                0,
            ),
        );
        assert!(!c.agrees);
        assert_eq!(c.unexpected.len(), 1, "{c:#?}");
        assert!(render_confirmation(&c).contains("UNPREDICTED istio-system/gw-2"));
        // Another request's line (other id) at the gateway does not count.
        let other = GW_LINE.replace("rid-1", "rid-2");
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[SC_LINE]),
                    ("istio-system/gw-1", &[&other]),
                ],
                "200",
                0,
            ),
        );
        assert_eq!(c.hops[1].status, "missing");
        // A proxy the trace names but the mesh does not run.
        let c = confirm(
            &two_hops(),
            &observed(&[("mesh-test/sleep-1", &[SC_LINE])], "200", 0),
        );
        assert!(c.hops[1].detail.contains("no such proxy is running"));
        // No HTTP answer although one was predicted.
        let c = confirm(
            &two_hops(),
            &observed(
                &[
                    ("mesh-test/sleep-1", &[SC_LINE]),
                    ("istio-system/gw-1", &[GW_LINE]),
                ],
                "000",
                7,
            ),
        );
        assert!(!c.agrees);
        assert!(c.client_check.starts_with("MISMATCH"), "{}", c.client_check);
    }

    #[test]
    fn predicted_failures_are_checked_by_flag_and_client_outcome() {
        let mut t = two_hops();
        t.hops.truncate(1);
        let f = Failure {
            kind: "no_route".into(),
            client_sees: "404 NR".into(),
            detail: "no route".into(),
        };
        t.hops[0].failure = Some(f.clone());
        t.hops[0].cluster = None;
        t.verdict.status = "failed".into();
        t.verdict.failure = Some(f);
        let nr = r#"[2026-11-22T02:00:00.000Z] "GET / HTTP/1.1" 404 NR route_not_found - "-" 0 0 0 - "-" "curl/8.5.0" "rid-1" "x.example" "-" - - 10.0.0.5:80 10.0.0.5:40000 - -"#;
        let c = confirm(&t, &observed(&[("mesh-test/sleep-1", &[nr])], "404", 0));
        assert!(c.agrees, "{c:#?}");
        let ok = SC_LINE;
        let c = confirm(&t, &observed(&[("mesh-test/sleep-1", &[ok])], "200", 0));
        assert!(!c.agrees);
        assert!(
            c.hops[0].detail.contains("predicted flag NR"),
            "{}",
            c.hops[0].detail
        );
        assert!(
            c.client_check.contains("predicted HTTP 404, got HTTP 200"),
            "{}",
            c.client_check
        );
        // A reset is checked by curl's exit code.
        let f = Failure {
            kind: "no_filter_chain".into(),
            client_sees: "connection reset (curl exit 35)".into(),
            detail: String::new(),
        };
        t.verdict.failure = Some(f);
        let c = confirm(&t, &observed(&[("mesh-test/sleep-1", &[nr])], "000", 35));
        assert!(
            c.client_check.starts_with("ok — predicted curl exit 35"),
            "{}",
            c.client_check
        );
    }
}
