//! The control plane's side: per-proxy versioned resources, push on change, ACK/NACK status.

use crate::protocol::{read_msg, write_msg, ClientMessage, ResourceKind, ServerMessage, WireError};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::watch;

/// Whether a proxy runs what the control plane last computed for it (istioctl proxy-status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SyncState {
    /// Acknowledged the latest version.
    Synced,
    /// The latest version was sent and not answered yet.
    Sent,
    /// Refused the latest version; it keeps serving the last one it acknowledged.
    Nacked,
    /// Never received this resource (not connected yet, or nothing to send).
    NotSent,
}

/// One proxy's distribution status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxyStatus {
    pub connected: bool,
    /// Per resource kind: latest version computed, sent, acknowledged, and the state.
    pub resources: BTreeMap<ResourceKind, ResourceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceStatus {
    pub latest: u64,
    pub sent: u64,
    pub acked: u64,
    pub state: SyncState,
    /// The proxy's reason for the last NACK, if the latest version was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nack_error: Option<String>,
}

#[derive(Default)]
struct Resource {
    version: u64,
    body: Option<Arc<serde_json::Value>>,
    sent: u64,
    acked: u64,
    nacked: Option<(u64, String)>,
}

#[derive(Default)]
struct PerProxy {
    resources: BTreeMap<ResourceKind, Resource>,
    connections: usize,
}

#[derive(Default)]
struct State {
    tokens: HashMap<String, String>,
    proxies: BTreeMap<String, PerProxy>,
}

struct Inner {
    state: Mutex<State>,
    /// Bumped on every change so connection tasks re-check what to send.
    generation: watch::Sender<u64>,
}

/// The distribution server. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct PushServer {
    inner: Arc<Inner>,
}

impl Default for PushServer {
    fn default() -> Self {
        Self::new()
    }
}

impl PushServer {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        PushServer {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                generation: tx,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere already; the state itself stays consistent
        // because every mutation is a single assignment.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Binds a token to a proxy identity (e.g. `sleep-6d4f-0.mesh-test`).
    pub fn register(&self, token: &str, proxy: &str) {
        let mut st = self.lock();
        st.tokens.insert(token.to_string(), proxy.to_string());
        st.proxies.entry(proxy.to_string()).or_default();
    }

    /// Forgets a proxy and its token (the pod is gone).
    pub fn unregister(&self, proxy: &str) {
        let mut st = self.lock();
        st.tokens.retain(|_, p| p != proxy);
        st.proxies.remove(proxy);
        drop(st);
        self.bump();
    }

    /// Sets a proxy's resource; the version advances only if the body changed, so recompiling
    /// an unchanged mesh does not churn proxies. Returns the current version.
    pub fn set(&self, kind: ResourceKind, proxy: &str, body: serde_json::Value) -> u64 {
        let mut st = self.lock();
        let res = st
            .proxies
            .entry(proxy.to_string())
            .or_default()
            .resources
            .entry(kind)
            .or_default();
        if res.body.as_deref() == Some(&body) {
            return res.version;
        }
        res.version += 1;
        res.body = Some(Arc::new(body));
        let v = res.version;
        drop(st);
        self.bump();
        v
    }

    /// Everyone's status, sorted by proxy name.
    pub fn status(&self) -> BTreeMap<String, ProxyStatus> {
        let st = self.lock();
        st.proxies
            .iter()
            .map(|(name, p)| {
                let resources = p
                    .resources
                    .iter()
                    .map(|(k, r)| {
                        let state = if r.sent == 0 {
                            SyncState::NotSent
                        } else if matches!(&r.nacked, Some((v, _)) if *v == r.version) {
                            SyncState::Nacked
                        } else if r.acked == r.version {
                            SyncState::Synced
                        } else {
                            SyncState::Sent
                        };
                        let nack_error = r
                            .nacked
                            .as_ref()
                            .filter(|(v, _)| *v == r.version)
                            .map(|(_, e)| e.clone());
                        (
                            *k,
                            ResourceStatus {
                                latest: r.version,
                                sent: r.sent,
                                acked: r.acked,
                                state,
                                nack_error,
                            },
                        )
                    })
                    .collect();
                (
                    name.clone(),
                    ProxyStatus {
                        connected: p.connections > 0,
                        resources,
                    },
                )
            })
            .collect()
    }

    /// Serves connections from a TCP listener until the task is dropped.
    pub async fn serve_tcp(self, listener: tokio::net::TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.serve_connection(stream).await {
                            tracing::debug!(%peer, error = %e, "push connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves connections from a Unix socket listener.
    pub async fn serve_unix(self, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let server = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = server.serve_connection(stream).await {
                            tracing::debug!(error = %e, "push connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// One proxy's session: authenticate, then push newer versions and record ACK/NACKs.
    pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> Result<(), WireError> {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        let token = match read_msg::<_, ClientMessage>(&mut r, &mut buf).await? {
            ClientMessage::Hello { token } => token,
            other => {
                let message = format!("expected hello, got {other:?}");
                write_msg(
                    &mut w,
                    &ServerMessage::Error {
                        message: message.clone(),
                    },
                )
                .await?;
                return Err(WireError::Malformed(message));
            }
        };
        let Some(proxy) = self.lock().tokens.get(&token).cloned() else {
            write_msg(
                &mut w,
                &ServerMessage::Error {
                    message: "unknown token: this proxy is not registered with the control plane"
                        .into(),
                },
            )
            .await?;
            return Err(WireError::Malformed("unknown token".into()));
        };
        write_msg(
            &mut w,
            &ServerMessage::Welcome {
                proxy: proxy.clone(),
            },
        )
        .await?;
        if let Some(p) = self.lock().proxies.get_mut(&proxy) {
            p.connections += 1;
        }
        let result = self.session(&proxy, &mut r, &mut w, &mut buf).await;
        if let Some(p) = self.lock().proxies.get_mut(&proxy) {
            p.connections = p.connections.saturating_sub(1);
        }
        result
    }

    async fn session<R, W>(
        &self,
        proxy: &str,
        r: &mut BufReader<R>,
        w: &mut W,
        buf: &mut Vec<u8>,
    ) -> Result<(), WireError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut gen = self.inner.generation.subscribe();
        // What this connection has sent, per kind (a reconnect starts from zero and so gets
        // the latest version at once).
        let mut sent_here: BTreeMap<ResourceKind, u64> = BTreeMap::new();
        loop {
            // Send whatever is newer than what this connection has seen.
            let pending: Vec<(ResourceKind, u64, Arc<serde_json::Value>)> = {
                let st = self.lock();
                let Some(p) = st.proxies.get(proxy) else {
                    return Ok(()); // unregistered: end the session
                };
                p.resources
                    .iter()
                    .filter_map(|(k, res)| {
                        let body = res.body.clone()?;
                        (sent_here.get(k).copied().unwrap_or(0) < res.version).then_some((
                            *k,
                            res.version,
                            body,
                        ))
                    })
                    .collect()
            };
            for (kind, version, body) in pending {
                write_msg(
                    w,
                    &ServerMessage::Push {
                        kind,
                        version,
                        body: (*body).clone(),
                    },
                )
                .await?;
                sent_here.insert(kind, version);
                if let Some(res) = self
                    .lock()
                    .proxies
                    .get_mut(proxy)
                    .and_then(|p| p.resources.get_mut(&kind))
                {
                    res.sent = res.sent.max(version);
                }
            }
            tokio::select! {
                changed = gen.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                msg = read_msg::<_, ClientMessage>(r, buf) => {
                    let msg = msg?;
                    let mut st = self.lock();
                    let Some(p) = st.proxies.get_mut(proxy) else { return Ok(()) };
                    match msg {
                        ClientMessage::Ack { kind, version } => {
                            if let Some(res) = p.resources.get_mut(&kind) {
                                res.acked = res.acked.max(version);
                                if matches!(&res.nacked, Some((v, _)) if *v <= version) {
                                    res.nacked = None;
                                }
                            }
                        }
                        ClientMessage::Nack { kind, version, error } => {
                            tracing::warn!(proxy, ?kind, version, %error, "proxy refused config");
                            if let Some(res) = p.resources.get_mut(&kind) {
                                res.nacked = Some((version, error));
                            }
                        }
                        ClientMessage::Hello { .. } => {}
                    }
                }
            }
        }
    }
}
