//! Published ports: a TCP relay from the host's loopback into a mesh namespace.
//!
//! The listener lives in the caller's (host) namespace on e.g. `127.0.0.1:8080`; for every
//! accepted connection the outgoing socket is created inside the target namespace (by a
//! thread dedicated to that namespace, [`crate::netns::NetnsThread`]; the caller's threads
//! never switch namespaces) and bytes are copied both ways. This is the only
//! thing the runtime adds to the host's network, and it is gone when the relay is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Errors of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The host port could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is the port taken? choose another published port)"
    )]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The target namespace is missing.
    #[error("relay target namespace `{0}` does not exist")]
    NoNetns(String),
}

/// A running relay. Dropping it closes the listener (open connections finish on their own).
#[derive(Debug)]
pub struct PortRelay {
    local: SocketAddr,
    target: SocketAddr,
    netns: String,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl PortRelay {
    /// Listens on `listen` (host namespace) and relays each connection to `target` inside
    /// namespace `netns`. Port 0 picks a free port (see [`PortRelay::local_addr`]).
    pub async fn start(
        listen: SocketAddr,
        netns: &str,
        target: SocketAddr,
    ) -> Result<PortRelay, RelayError> {
        if !crate::netns::exists(netns) {
            return Err(RelayError::NoNetns(netns.to_string()));
        }
        let factory = crate::netns::NetnsThread::spawn(netns)
            .map_err(|_| RelayError::NoNetns(netns.to_string()))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| RelayError::Bind {
                addr: listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| RelayError::Bind {
            addr: listen,
            source,
        })?;
        let accepted = Arc::new(AtomicU64::new(0));
        let ns = netns.to_string();
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut inbound, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay accept");
                        // Back off a little: persistent errors (e.g. EMFILE) must not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let (ns, factory) = (ns.clone(), factory.clone());
                tokio::spawn(async move {
                    let _ = inbound.set_nodelay(true);
                    match factory.connect_tcp(target, None).await {
                        Ok(mut outbound) => {
                            let _ = outbound.set_nodelay(true);
                            if let Err(e) =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                            {
                                tracing::debug!(%peer, %target, error = %e, "relay connection ended with error");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%peer, netns = %ns, %target, error = %e, "relay could not reach target")
                        }
                    }
                });
            }
        });
        tracing::info!(%local, netns, %target, "published port");
        Ok(PortRelay {
            local,
            target,
            netns: netns.to_string(),
            accepted,
            task,
        })
    }

    /// Host address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Target inside the mesh.
    pub fn target(&self) -> (&str, SocketAddr) {
        (&self.netns, self.target)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for PortRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
