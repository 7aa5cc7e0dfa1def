//! Admin HTTP server (Envoy paths, localhost only by default): `/stats`, `/stats/prometheus`,
//! `/clusters`, `/listeners`, `/config_dump`, `/ready`, `/logging`, `/quitquitquit`.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::Shared;

pub async fn serve(sh: Arc<Shared>, l: TcpListener) {
    let mut shutdown = sh.shutdown.subscribe();
    loop {
        let (s, _) = tokio::select! {
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sh = sh.clone();
                async move { Ok::<_, Infallible>(route(&sh, req)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    q?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(sh: &Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let q = req.uri().query().map(|s| s.to_string());
    let text = "text/plain; charset=UTF-8";
    match path.as_str() {
        "/stats" => {
            let filter = match query_param(q.as_deref(), "filter") {
                Some(f) if !f.is_empty() => match regex::Regex::new(&f) {
                    Ok(r) => Some(r),
                    Err(e) => return reply(StatusCode::BAD_REQUEST, text, format!("invalid regex: {e}\n")),
                },
                _ => None,
            };
            if query_param(q.as_deref(), "format").as_deref() == Some("prometheus") {
                return reply(StatusCode::OK, "text/plain; version=0.0.4", sh.stats.render_prometheus());
            }
            reply(StatusCode::OK, text, sh.stats.render_text(filter.as_ref()))
        }
        "/stats/prometheus" => reply(StatusCode::OK, "text/plain; version=0.0.4", sh.stats.render_prometheus()),
        "/clusters" => {
            let rt = sh.runtime.load();
            let json = query_param(q.as_deref(), "format").as_deref() == Some("json");
            let now = tokio::time::Instant::now();
            let mut out = String::new();
            let mut js = Vec::new();
            for (name, c) in &rt.clusters {
                c.refresh_ejection_gauge();
                let cb = &c.spec.circuit_breakers;
                let _ = writeln!(out, "{name}::default_priority::max_connections::{}", cb.max_connections);
                let _ = writeln!(out, "{name}::default_priority::max_pending_requests::{}", cb.max_pending_requests);
                let _ = writeln!(out, "{name}::default_priority::max_requests::{}", cb.max_requests);
                let _ = writeln!(out, "{name}::default_priority::max_retries::{}", cb.max_retries);
                let mut hosts = Vec::new();
                for h in &c.hosts {
                    let a = h.display();
                    let health = if h.ejected(now) { "/failed_outlier_check" } else { "healthy" };
                    let _ = writeln!(out, "{name}::{a}::cx_active::{}", h.cx_active.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}::{a}::rq_active::{}", h.rq_active.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}::{a}::rq_total::{}", h.rq_total.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{name}::{a}::health_flags::{health}");
                    let _ = writeln!(out, "{name}::{a}::weight::{}", h.weight);
                    hosts.push(serde_json::json!({"address": a, "healthFlags": health, "weight": h.weight}));
                }
                js.push(serde_json::json!({"name": name, "hosts": hosts}));
            }
            if json {
                reply(StatusCode::OK, "application/json", serde_json::json!({"clusterStatuses": js}).to_string())
            } else {
                reply(StatusCode::OK, text, out)
            }
        }
        "/listeners" => {
            let l = crate::lock(&sh.listeners);
            let mut out = String::new();
            for (name, r) in l.iter() {
                let _ = writeln!(out, "{name}::{}", r.bound);
            }
            reply(StatusCode::OK, text, out)
        }
        "/config_dump" => {
            let v = crate::lock(&sh.config_dump).clone();
            let v = v.unwrap_or_else(|| serde_json::to_value(&*sh.runtime.load().config).unwrap_or_default());
            reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        "/ready" => {
            if sh.ready.load(Ordering::Acquire) {
                reply(StatusCode::OK, text, "LIVE\n".into())
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, text, "PRE_INITIALIZING\n".into())
            }
        }
        "/logging" => {
            if req.method() != Method::POST {
                return reply(StatusCode::METHOD_NOT_ALLOWED, text, "use POST /logging?level=<level>\n".into());
            }
            match (query_param(q.as_deref(), "level"), &sh.log_level_hook) {
                (Some(l), Some(h)) => match h(&l) {
                    Ok(s) => reply(StatusCode::OK, text, format!("{s}\n")),
                    Err(e) => reply(StatusCode::BAD_REQUEST, text, format!("{e}\n")),
                },
                (Some(_), None) => reply(StatusCode::NOT_IMPLEMENTED, text, "log level changes are not wired in this process\n".into()),
                (None, _) => reply(StatusCode::BAD_REQUEST, text, "missing ?level=\n".into()),
            }
        }
        "/quitquitquit" => {
            if req.method() != Method::POST {
                return reply(StatusCode::METHOD_NOT_ALLOWED, text, "use POST\n".into());
            }
            let _ = sh.shutdown.send(true);
            reply(StatusCode::OK, text, "OK\n".into())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "admin commands: /stats /stats/prometheus /clusters /listeners /config_dump /ready /logging /quitquitquit\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode() {
        assert_eq!(super::percent_decode("a%2Eb+c%"), "a.b c%");
        assert_eq!(
            super::query_param(Some("x=1&filter=cx_%28total%29"), "filter").as_deref(),
            Some("cx_(total)")
        );
    }
}
