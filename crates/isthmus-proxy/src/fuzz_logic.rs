//! Fuzz entry points shared by the cargo-fuzz targets in `fuzz/` and by the ordinary test
//! that replays `fuzz/corpus/*` (so every corpus input stays a regression test on stable).

use std::sync::{Arc, OnceLock};

use crate::config::ProxyConfig;
use crate::peek::{parse_client_hello, Peek};
use crate::runtime::{RoutesRt, Runtime};

/// ClientHello parser: must never panic, must be deterministic, and feeding the same bytes in
/// two pieces must give the same answer once all bytes are present.
pub fn client_hello(data: &[u8]) {
    let whole = parse_client_hello(data);
    assert_eq!(whole, parse_client_hello(data));
    if let Peek::Tls(info) = &whole {
        // Every prefix is either undecided or the same decision (never a different SNI).
        for cut in [data.len() / 2, data.len().saturating_sub(1)] {
            match parse_client_hello(&data[..cut]) {
                Peek::NeedMore => {}
                Peek::Tls(i) => assert_eq!(&i, info),
                other => panic!("prefix decided {other:?} but whole is TLS"),
            }
        }
    }
}

fn routes() -> &'static Option<Arc<RoutesRt>> {
    static R: OnceLock<Option<Arc<RoutesRt>>> = OnceLock::new();
    R.get_or_init(|| {
        let cfg: ProxyConfig = serde_json::from_str(ROUTE_FIXTURE).ok()?;
        let rt = Runtime::build(cfg, None, &Default::default()).ok()?;
        let l = rt.listeners.values().next()?;
        l.chains.first()?.routes.clone()
    })
}

/// Route table used by the routing fuzz target: every match kind and wildcard domain form.
pub const ROUTE_FIXTURE: &str = r#"{"listeners":[{"name":"l","address":"127.0.0.1:0","filterChains":[{"action":{"http":{"routeConfig":{"name":"r","virtualHosts":[
 {"name":"exact","domains":["api.example.com"],"routes":[
   {"name":"p","match":{"path":"/exact"},"directResponse":{"status":200}},
   {"name":"re","match":{"safeRegex":"/re/[0-9]+","caseSensitive":false},"directResponse":{"status":201}},
   {"name":"h","match":{"prefix":"/h","headers":[{"name":"x-a","exact":"1"},{"name":"x-b","safeRegex":"b+"},{"name":"x-c","present":true,"invert":true}]},"directResponse":{"status":202}},
   {"name":"m","match":{"prefix":"/","methods":["POST"]},"directResponse":{"status":203}}]},
 {"name":"suffix","domains":["*.example.com"],"routes":[{"match":{"prefix":"/"},"directResponse":{"status":204}}]},
 {"name":"prefix","domains":["api.*"],"routes":[{"match":{"prefix":"/"},"directResponse":{"status":205}}]},
 {"name":"all","domains":["*"],"routes":[]}]}}}}]}]}"#;

/// HTTP routing: host, method, path and a few headers carved out of the input (NUL-separated).
pub fn http_route(data: &[u8]) {
    let mut parts = data
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let host = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("x-a", parts.next()),
        ("x-b", parts.next()),
        ("x-c", parts.next()),
    ] {
        if let Some(v) = value.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
            headers.insert(name, v);
        }
    }
    let r = routes().as_ref().expect("route fixture compiles");
    if let Some(v) = r.vhost(&host) {
        let _ = v.route(&method, &host, &path, &headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn route_fixture_behaves() {
        let r = routes().as_ref().unwrap();
        let h = http::HeaderMap::new();
        let v = r.vhost("API.example.com:443").unwrap();
        assert_eq!(v.name, "exact");
        assert_eq!(
            v.route("GET", "api.example.com", "/exact?q", &h)
                .unwrap()
                .spec
                .name,
            "p"
        );
        assert_eq!(
            v.route("GET", "api.example.com", "/RE/12", &h)
                .unwrap()
                .spec
                .name,
            "re"
        );
        assert!(v.route("GET", "api.example.com", "/re/x", &h).is_none());
        let mut hm = http::HeaderMap::new();
        hm.insert("x-a", "1".parse().unwrap());
        hm.insert("x-b", "bbb".parse().unwrap());
        assert_eq!(
            v.route("GET", "api.example.com", "/h", &hm)
                .unwrap()
                .spec
                .name,
            "h"
        );
        hm.insert("x-c", "".parse().unwrap());
        assert!(
            v.route("GET", "api.example.com", "/h", &hm).is_none(),
            "inverted present match"
        );
        assert_eq!(
            v.route("POST", "api.example.com", "/h", &hm)
                .unwrap()
                .spec
                .name,
            "m"
        );
        assert_eq!(r.vhost("www.example.com").unwrap().name, "suffix");
        assert_eq!(r.vhost("api.other").unwrap().name, "prefix");
        assert!(
            r.vhost("zzz")
                .unwrap()
                .route("GET", "zzz", "/", &h)
                .is_none(),
            "empty vhost → 404 NR"
        );
    }

    proptest! {
        #[test]
        fn client_hello_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            client_hello(&data);
        }

        #[test]
        fn mutated_hello_never_panics(sni in "[a-z0-9.-]{0,40}", pos in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let mut h = crate::peek::build_client_hello(Some(&sni), &["h2", "http/1.1"]);
            let i = pos % h.len();
            h[i] = byte;
            let c = cut % (h.len() + 1);
            client_hello(&h[..c]);
            client_hello(&crate::peek::split_records(&h, 1 + cut % 50));
        }

        #[test]
        fn routing_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            http_route(&data);
        }
    }
}
