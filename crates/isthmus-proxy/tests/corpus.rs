//! Replays the fuzz corpora (`fuzz/corpus/<target>/*`) as ordinary tests.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let data = std::fs::read(e.path()).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n >= 5, "corpus {target} has only {n} inputs");
}

#[test]
fn client_hello_corpus_replays() {
    replay("client_hello", isthmus_proxy::fuzz_logic::client_hello);
}

#[test]
fn http_route_corpus_replays() {
    replay("http_route", isthmus_proxy::fuzz_logic::http_route);
}

/// The seeds keep their meaning: the valid hellos still parse to the SNI they were built with.
#[test]
fn client_hello_seeds_parse() {
    use isthmus_proxy::peek::{parse_client_hello, Peek};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/client_hello");
    let d = std::fs::read(dir.join("valid_sni_alpn")).unwrap();
    assert!(
        matches!(parse_client_hello(&d), Peek::Tls(i) if i.sni.as_deref() == Some("api.partner.example"))
    );
    let d = std::fs::read(dir.join("split_records_1")).unwrap();
    assert!(matches!(parse_client_hello(&d), Peek::Tls(i) if i.alpn == ["h2", "http/1.1"]));
    let d = std::fs::read(dir.join("plain_http")).unwrap();
    assert_eq!(parse_client_hello(&d), Peek::NotTls);
}
