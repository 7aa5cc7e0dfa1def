//! The proxy's side: receive pushes, apply them, answer ACK or NACK. A proxy that loses the
//! control plane keeps serving what it last applied and reconnects with backoff.

use crate::protocol::{read_msg, write_msg, ClientMessage, ResourceKind, ServerMessage, WireError};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};

/// Applies one pushed resource. `Err(reason)` refuses it whole (a NACK): the proxy must keep
/// its previous version serving.
pub trait Applier: Send {
    fn apply(
        &mut self,
        kind: ResourceKind,
        version: u64,
        body: &serde_json::Value,
    ) -> Result<(), String>;
}

impl<F> Applier for F
where
    F: FnMut(ResourceKind, u64, &serde_json::Value) -> Result<(), String> + Send,
{
    fn apply(
        &mut self,
        kind: ResourceKind,
        version: u64,
        body: &serde_json::Value,
    ) -> Result<(), String> {
        self(kind, version, body)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "control plane refused this proxy: {0} (is the token registered? see `isthmus status`)"
    )]
    Refused(String),
    #[error("control plane connection: {0}")]
    Wire(#[from] WireError),
}

/// Runs one session over an established stream until it ends. Returns the proxy identity the
/// control plane bound to the token when the session ends cleanly.
pub async fn run_session<S, A>(
    stream: S,
    token: &str,
    applier: &mut A,
) -> Result<String, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Applier + ?Sized,
{
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    write_msg(
        &mut w,
        &ClientMessage::Hello {
            token: token.to_string(),
        },
    )
    .await?;
    let proxy = match read_msg::<_, ServerMessage>(&mut r, &mut buf).await? {
        ServerMessage::Welcome { proxy } => proxy,
        ServerMessage::Error { message } => return Err(ClientError::Refused(message)),
        other => {
            return Err(ClientError::Refused(format!(
                "unexpected first message {other:?}"
            )))
        }
    };
    loop {
        let msg = match read_msg::<_, ServerMessage>(&mut r, &mut buf).await {
            Ok(m) => m,
            Err(WireError::Closed) => return Ok(proxy),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ServerMessage::Push {
                kind,
                version,
                body,
            } => {
                let reply = match applier.apply(kind, version, &body) {
                    Ok(()) => ClientMessage::Ack { kind, version },
                    Err(error) => ClientMessage::Nack {
                        kind,
                        version,
                        error,
                    },
                };
                write_msg(&mut w, &reply).await?;
            }
            ServerMessage::Error { message } => return Err(ClientError::Refused(message)),
            ServerMessage::Welcome { .. } => {}
        }
    }
}

/// Connects to a TCP address and keeps a session alive forever, reconnecting with capped
/// exponential backoff. Refusal (unknown token) is final.
pub async fn run_with_reconnect<A: Applier>(
    addr: std::net::SocketAddr,
    token: String,
    mut applier: A,
) -> ClientError {
    let mut backoff = Duration::from_millis(50);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                backoff = Duration::from_millis(50);
                match run_session(stream, &token, &mut applier).await {
                    Err(ClientError::Refused(m)) => return ClientError::Refused(m),
                    Err(e) => {
                        tracing::info!(error = %e, "control plane session ended; keeping the last config")
                    }
                    Ok(_) => {
                        tracing::info!("control plane closed the session; keeping the last config")
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %addr, "control plane unreachable; keeping the last config")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
