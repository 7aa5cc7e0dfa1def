//! Doing work inside a named network namespace from a multi-threaded program.
//!
//! A socket belongs to the network namespace of the thread that created it, for its whole
//! life. So to listen or connect "inside" a namespace we create the socket on a dedicated,
//! short-lived OS thread that first `setns(2)`s into the namespace, hand the socket back,
//! and use it from any thread (tokio included). We never call `setns` on a shared thread
//! (tokio workers, `spawn_blocking` pool), because those threads are reused.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, Socket, Type};

/// Directory where `ip netns` keeps the bind-mounted namespace files.
pub const NETNS_DIR: &str = "/run/netns";

/// Failure to enter a namespace or to create a socket in it.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file does not exist.
    #[error("network namespace `{name}` not found at {path} (was the mesh torn down? see `ip netns list`)")]
    NotFound {
        /// Namespace name.
        name: String,
        /// Path looked at.
        path: PathBuf,
    },
    /// `setns` failed.
    #[error(
        "cannot enter network namespace `{name}`: {source} (hint: needs root / CAP_SYS_ADMIN)"
    )]
    Enter {
        /// Namespace name.
        name: String,
        /// Cause.
        source: nix::Error,
    },
    /// Socket work inside the namespace failed.
    #[error("in network namespace `{name}`: {source}")]
    Io {
        /// Namespace name.
        name: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The helper thread panicked or could not start.
    #[error("helper thread for network namespace `{name}` failed: {detail}")]
    Thread {
        /// Namespace name.
        name: String,
        /// What happened.
        detail: String,
    },
}

/// Path of the namespace file for `name`.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether a named network namespace exists.
pub fn exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Runs `f` on a fresh OS thread that has entered network namespace `name` and returns its
/// result. The thread ends afterwards, so the namespace switch never leaks to other work.
pub fn run_in<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let path = netns_path(name);
    let file = File::open(&path).map_err(|_| NetnsError::NotFound {
        name: name.to_string(),
        path: path.clone(),
    })?;
    let owned = name.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T, NetnsError> {
            // Remember where we came from so the thread can move back before it exits.
            let home = File::open("/proc/thread-self/ns/net").ok();
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                name: owned.clone(),
                source,
            })?;
            let out = f().map_err(|source| NetnsError::Io {
                name: owned.clone(),
                source,
            });
            if let Some(home) = home {
                // Best effort: the thread ends right after, so a failure here cannot leak.
                let _ = setns(&home, CloneFlags::CLONE_NEWNET);
            }
            out
        })
        .map_err(|e| NetnsError::Thread {
            name: name.to_string(),
            detail: e.to_string(),
        })?;
    handle.join().map_err(|_| NetnsError::Thread {
        name: name.to_string(),
        detail: "panicked".to_string(),
    })?
}

/// Async wrapper of [`run_in`]: waits for the helper thread without blocking the runtime.
pub async fn run_in_async<T, F>(name: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned = name.to_string();
    std::thread::Builder::new()
        .name("netns-launch".to_string())
        .spawn(move || {
            let _ = tx.send(run_in(&owned, f));
        })
        .map_err(|e| NetnsError::Thread {
            name: name.to_string(),
            detail: e.to_string(),
        })?;
    rx.await.map_err(|_| NetnsError::Thread {
        name: name.to_string(),
        detail: "helper thread vanished".to_string(),
    })?
}

/// A non-blocking TCP listener bound to `addr` inside namespace `name` (SO_REUSEADDR set).
pub fn bind_tcp(name: &str, addr: SocketAddr) -> Result<TcpListener, NetnsError> {
    run_in(name, move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
}

/// A non-blocking UDP socket bound to `addr` inside namespace `name`.
pub fn bind_udp(name: &str, addr: SocketAddr) -> Result<UdpSocket, NetnsError> {
    run_in(name, move || {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
}

/// An unconnected, non-blocking TCP socket created inside namespace `name`, optionally with
/// `SO_MARK` set. Connect it with `tokio::net::TcpSocket::from_std_stream(..).connect(..)`.
pub fn tcp_socket(name: &str, v6: bool, mark: Option<u32>) -> Result<TcpStream, NetnsError> {
    run_in(name, move || {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if let Some(m) = mark {
            s.set_mark(m)?;
        }
        s.set_nonblocking(true)?;
        Ok(s.into())
    })
}

/// Connects to `addr` from inside namespace `name` (optionally with `SO_MARK`), returning a
/// tokio stream usable from any thread.
pub async fn connect_tcp(
    name: &str,
    addr: SocketAddr,
    mark: Option<u32>,
) -> Result<tokio::net::TcpStream, NetnsError> {
    let owned = name.to_string();
    let std = run_in_async(name, move || {
        let domain = Domain::for_address(addr);
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        if let Some(m) = mark {
            s.set_mark(m)?;
        }
        s.set_nonblocking(true)?;
        Ok(TcpStream::from(s))
    })
    .await?;
    let sock = tokio::net::TcpSocket::from_std_stream(std);
    sock.connect(addr).await.map_err(|source| NetnsError::Io {
        name: owned,
        source,
    })
}

/// A tokio UDP socket bound to `addr` inside namespace `name`.
pub async fn bind_udp_async(
    name: &str,
    addr: SocketAddr,
) -> Result<tokio::net::UdpSocket, NetnsError> {
    let owned = name.to_string();
    let std = run_in_async(name, move || {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        Ok(UdpSocket::from(s))
    })
    .await?;
    tokio::net::UdpSocket::from_std(std).map_err(|source| NetnsError::Io {
        name: owned,
        source,
    })
}

/// A tokio TCP listener bound to `addr` inside namespace `name`.
pub async fn listen_tcp_async(
    name: &str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, NetnsError> {
    let owned = name.to_string();
    let std = run_in_async(name, move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        Ok(TcpListener::from(s))
    })
    .await?;
    tokio::net::TcpListener::from_std(std).map_err(|source| NetnsError::Io {
        name: owned,
        source,
    })
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A long-lived thread that stays inside one network namespace and creates sockets there on
/// request — cheaper than a fresh thread per socket for busy paths (published-port relays,
/// in-process proxies). The thread exits when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct NetnsThread {
    name: String,
    tx: std::sync::mpsc::Sender<Job>,
}

impl NetnsThread {
    /// Starts the thread and enters namespace `name`.
    pub fn spawn(name: &str) -> Result<NetnsThread, NetnsError> {
        let path = netns_path(name);
        let file = File::open(&path).map_err(|_| NetnsError::NotFound {
            name: name.to_string(),
            path: path.clone(),
        })?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), nix::Error>>();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // This thread is dedicated to the namespace for its whole life; it never
                // runs anything else, so it does not need to move back.
                let entered = setns(&file, CloneFlags::CLONE_NEWNET);
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(|e| NetnsError::Thread {
                name: name.to_string(),
                detail: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(NetnsThread {
                name: name.to_string(),
                tx,
            }),
            Ok(Err(source)) => Err(NetnsError::Enter {
                name: name.to_string(),
                source,
            }),
            Err(_) => Err(NetnsError::Thread {
                name: name.to_string(),
                detail: "thread ended before entering".to_string(),
            }),
        }
    }

    /// Namespace name.
    pub fn netns(&self) -> &str {
        &self.name
    }

    /// Runs `f` on the namespace thread (keep it short: jobs run one after another).
    pub async fn run<T, F>(&self, f: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| NetnsError::Thread {
                name: self.name.clone(),
                detail: "namespace thread is gone".to_string(),
            })?;
        rx.await
            .map_err(|_| NetnsError::Thread {
                name: self.name.clone(),
                detail: "job dropped".to_string(),
            })?
            .map_err(|source| NetnsError::Io {
                name: self.name.clone(),
                source,
            })
    }

    /// Connects to `addr` from inside the namespace (optionally with `SO_MARK`).
    pub async fn connect_tcp(
        &self,
        addr: SocketAddr,
        mark: Option<u32>,
    ) -> Result<tokio::net::TcpStream, NetnsError> {
        let std = self
            .run(move || {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                if let Some(m) = mark {
                    s.set_mark(m)?;
                }
                s.set_nonblocking(true)?;
                Ok(TcpStream::from(s))
            })
            .await?;
        tokio::net::TcpSocket::from_std_stream(std)
            .connect(addr)
            .await
            .map_err(|source| NetnsError::Io {
                name: self.name.clone(),
                source,
            })
    }

    /// A tokio TCP listener bound to `addr` inside the namespace.
    pub async fn listen_tcp(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpListener, NetnsError> {
        let std = self
            .run(move || {
                let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                s.set_reuse_address(true)?;
                s.bind(&addr.into())?;
                s.listen(1024)?;
                s.set_nonblocking(true)?;
                Ok(TcpListener::from(s))
            })
            .await?;
        tokio::net::TcpListener::from_std(std).map_err(|source| NetnsError::Io {
            name: self.name.clone(),
            source,
        })
    }
}

/// Waits until something accepts TCP connections on `addr` as seen from namespace `name`
/// (readiness of a pod's server or proxy), retrying every 50 ms up to `timeout`.
pub async fn wait_tcp(
    name: &str,
    addr: SocketAddr,
    timeout: std::time::Duration,
) -> Result<(), NetnsError> {
    let thread = NetnsThread::spawn(name)?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            thread.connect_tcp(addr, None),
        )
        .await;
        let err = match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e,
            Err(_) => NetnsError::Io {
                name: name.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            },
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(err);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
