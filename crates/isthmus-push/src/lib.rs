//! isthmus-push: versioned config and secret distribution from the control plane to proxies,
//! with xDS's ACK/NACK semantics over a small newline-delimited JSON stream.
//!
//! Why not gRPC xDS: our proxies consume the compiled config as one JSON document per proxy, and
//! a line protocol keeps the control plane debuggable with `socat`. What we keep from xDS is
//! what users rely on: every push carries a version; a proxy ACKs what it applied and NACKs what
//! it refused (keeping its last good config); the control plane shows who is in sync.
//!
//! Authentication: the supervisor registers one token per proxy, bound to that proxy's identity;
//! a connection presenting a token only ever receives that proxy's resources, so a proxy cannot
//! obtain another workload's certificate.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use isthmus_push::{PushServer, ResourceKind};
//! let server = PushServer::new();
//! server.register("token-a", "sleep-1.mesh-test");
//! server.set(ResourceKind::Config, "sleep-1.mesh-test", serde_json::json!({"listeners": []}));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! tokio::spawn(server.clone().serve_tcp(listener));
//! # Ok(()) }
//! ```

mod client;
mod protocol;
mod server;

pub use client::{run_session, run_with_reconnect, Applier, ClientError};
pub use protocol::{ClientMessage, ResourceKind, ServerMessage, MAX_LINE_BYTES};
pub use server::{ProxyStatus, PushServer, SyncState};
