//! Distribution over real TCP sockets: push, ACK, NACK keeps the last good version, reconnect
//! gets the latest, tokens only ever see their own proxy's resources.

use isthmus_push::{run_session, PushServer, ResourceKind, SyncState};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

async fn start(server: &PushServer) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(server.clone().serve_tcp(l));
    addr
}

async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2s");
}

type Seen = Arc<Mutex<Vec<(ResourceKind, u64, serde_json::Value)>>>;

fn spawn_client(
    addr: std::net::SocketAddr,
    token: &str,
    seen: Seen,
    refuse_marker: Option<&'static str>,
) -> tokio::task::JoinHandle<Result<String, isthmus_push::ClientError>> {
    let token = token.to_string();
    tokio::spawn(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut applier = move |kind, version, body: &serde_json::Value| {
            if let Some(m) = refuse_marker {
                if body.get("bad") == Some(&json!(m)) {
                    return Err(format!("cannot apply: {m}"));
                }
            }
            seen.lock().unwrap().push((kind, version, body.clone()));
            Ok(())
        };
        run_session(stream, &token, &mut applier).await
    })
}

#[tokio::test]
async fn push_ack_and_update() {
    let server = PushServer::new();
    server.register("tok-a", "a.ns");
    assert_eq!(server.set(ResourceKind::Config, "a.ns", json!({"v": 1})), 1);
    // unchanged body: no new version
    assert_eq!(server.set(ResourceKind::Config, "a.ns", json!({"v": 1})), 1);
    let addr = start(&server).await;
    let seen: Seen = Default::default();
    let _c = spawn_client(addr, "tok-a", seen.clone(), None);
    eventually(|| {
        server.status()["a.ns"].resources[&ResourceKind::Config].state == SyncState::Synced
    })
    .await;
    assert!(server.status()["a.ns"].connected);
    assert_eq!(server.set(ResourceKind::Config, "a.ns", json!({"v": 2})), 2);
    eventually(|| server.status()["a.ns"].resources[&ResourceKind::Config].acked == 2).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            (ResourceKind::Config, 1, json!({"v": 1})),
            (ResourceKind::Config, 2, json!({"v": 2}))
        ]
    );
}

#[tokio::test]
async fn nack_is_reported_and_last_good_version_stays_acked() {
    let server = PushServer::new();
    server.register("tok-a", "a.ns");
    server.set(ResourceKind::Config, "a.ns", json!({"ok": true}));
    let addr = start(&server).await;
    let seen: Seen = Default::default();
    let _c = spawn_client(addr, "tok-a", seen.clone(), Some("listener-conflict"));
    eventually(|| server.status()["a.ns"].resources[&ResourceKind::Config].acked == 1).await;
    server.set(
        ResourceKind::Config,
        "a.ns",
        json!({"bad": "listener-conflict"}),
    );
    eventually(|| {
        server.status()["a.ns"].resources[&ResourceKind::Config].state == SyncState::Nacked
    })
    .await;
    let st = &server.status()["a.ns"].resources[&ResourceKind::Config];
    assert_eq!(st.acked, 1);
    assert_eq!(st.latest, 2);
    assert_eq!(
        st.nack_error.as_deref(),
        Some("cannot apply: listener-conflict")
    );
    // a fixed config clears the NACK
    server.set(ResourceKind::Config, "a.ns", json!({"ok": "again"}));
    eventually(|| {
        server.status()["a.ns"].resources[&ResourceKind::Config].state == SyncState::Synced
    })
    .await;
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn tokens_only_see_their_own_proxy() {
    let server = PushServer::new();
    server.register("tok-a", "a.ns");
    server.register("tok-b", "b.ns");
    server.set(
        ResourceKind::Secrets,
        "a.ns",
        json!({"default": "cert-of-a"}),
    );
    server.set(
        ResourceKind::Secrets,
        "b.ns",
        json!({"default": "cert-of-b"}),
    );
    let addr = start(&server).await;
    let seen_b: Seen = Default::default();
    let _c = spawn_client(addr, "tok-b", seen_b.clone(), None);
    eventually(|| {
        server.status()["b.ns"].resources[&ResourceKind::Secrets].state == SyncState::Synced
    })
    .await;
    let got = seen_b.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![(ResourceKind::Secrets, 1, json!({"default": "cert-of-b"}))]
    );
    assert_eq!(
        server.status()["a.ns"].resources[&ResourceKind::Secrets].state,
        SyncState::NotSent
    );

    // an unknown token is refused with an operator hint
    let res = spawn_client(addr, "forged", Default::default(), None)
        .await
        .unwrap();
    let err = res.unwrap_err().to_string();
    assert!(err.contains("unknown token"), "{err}");
}

#[tokio::test]
async fn reconnect_gets_latest_and_disconnect_is_visible() {
    let server = PushServer::new();
    server.register("tok-a", "a.ns");
    server.set(ResourceKind::Config, "a.ns", json!({"v": 1}));
    let addr = start(&server).await;
    let c = spawn_client(addr, "tok-a", Default::default(), None);
    eventually(|| server.status()["a.ns"].connected).await;
    c.abort();
    eventually(|| !server.status()["a.ns"].connected).await;
    server.set(ResourceKind::Config, "a.ns", json!({"v": 2}));
    server.set(ResourceKind::Config, "a.ns", json!({"v": 3}));
    let seen: Seen = Default::default();
    let _c2 = spawn_client(addr, "tok-a", seen.clone(), None);
    eventually(|| server.status()["a.ns"].resources[&ResourceKind::Config].acked == 3).await;
    // only the latest is sent after a reconnect, not the history
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![(ResourceKind::Config, 3, json!({"v": 3}))]
    );
}

#[tokio::test]
async fn garbage_from_a_client_ends_only_that_session() {
    use tokio::io::AsyncWriteExt;
    let server = PushServer::new();
    server.register("tok-a", "a.ns");
    server.set(ResourceKind::Config, "a.ns", json!({"v": 1}));
    let addr = start(&server).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\x00\xffnot json\n").await.unwrap();
    let seen: Seen = Default::default();
    let _c = spawn_client(addr, "tok-a", seen.clone(), None);
    eventually(|| {
        server.status()["a.ns"].resources[&ResourceKind::Config].state == SyncState::Synced
    })
    .await;
}
