//! L4 byte relay between a downstream and an upstream connection (TCP proxy, SNI passthrough).
//!
//! Two paths, chosen per connection:
//! * **TCP ↔ TCP** (nothing terminated or originated TLS): readiness-driven, with `splice(2)`
//!   through a pipe so payload bytes never enter user space (HAProxy's `splice-auto`). Pipes
//!   come from a small shared pool and go back to it whenever a direction has nothing in
//!   flight, so an idle connection holds no pipe and no buffer.
//! * **Any stream** (a TLS side): one future polls both directions (no `io::split` lock); a
//!   direction's buffer is allocated when it is about to read and released as soon as a read
//!   would block with nothing in flight, so idle connections hold no relay buffer either.
//!   Buffers grow 4 KiB → 64 KiB while reads keep filling them (ztunnel-style adaptivity).
//!
//! Both stop on EOF in both directions (each EOF is forwarded as a write shutdown), the idle
//! timeout (no bytes either way) or the max duration.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::cluster::Upstream;
use crate::peek::PrefixedStream;

/// The downstream side of an L4 chain.
pub enum Down {
    /// The raw socket plus the bytes the ClientHello peek already consumed (to send first).
    Tcp(TcpStream, Vec<u8>),
    /// A stream (TLS terminated here, or anything else that is not a bare socket).
    Io(Box<dyn Upstream>),
}

impl Down {
    fn into_io(self) -> Box<dyn Upstream> {
        match self {
            Down::Tcp(s, prefix) => Box::new(PrefixedStream::new(prefix, s)),
            Down::Io(io) => io,
        }
    }
}

/// Bytes and activity shared by both directions of one relay.
struct Meter {
    /// Downstream → upstream bytes.
    rx: AtomicU64,
    /// Upstream → downstream bytes.
    tx: AtomicU64,
    /// Last data movement, ms since `base` (keepalive probes never reach here).
    activity: AtomicU64,
    base: tokio::time::Instant,
}

impl Meter {
    fn moved(&self, up: bool, n: usize) {
        let c = if up { &self.rx } else { &self.tx };
        c.fetch_add(n as u64, Ordering::Relaxed);
        self.activity
            .fetch_max(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Copy both ways until both sides are done, the idle timeout passes without traffic, or the
/// max duration is reached. Returns (bytes from downstream, bytes to downstream, reason).
pub async fn relay(
    down: Down,
    up: Box<dyn Upstream>,
    idle: Duration,
    max: Option<Duration>,
) -> (u64, u64, Option<&'static str>) {
    let meter = Meter {
        rx: AtomicU64::new(0),
        tx: AtomicU64::new(0),
        activity: AtomicU64::new(0),
        base: tokio::time::Instant::now(),
    };
    // A plain upstream socket (no TLS origination) can be spliced to a plain downstream one.
    let up_is_tcp = (&*up as &dyn std::any::Any).is::<TcpStream>();
    let both: Pin<Box<dyn Future<Output = ()> + Send + '_>> = match down {
        Down::Tcp(d, prefix) if up_is_tcp => {
            let any: Box<dyn std::any::Any + Send> = up;
            match any.downcast::<TcpStream>() {
                Ok(u) => Box::pin(relay_tcp(d, prefix, *u, &meter)),
                // Unreachable (checked above); nothing to relay to.
                Err(_) => Box::pin(async {}),
            }
        }
        down => Box::pin(RelayIo {
            a: down.into_io(),
            b: up,
            ab: Dir::default(),
            ba: Dir::default(),
            meter: &meter,
        }),
    };
    let reason = watch_timeouts(both, &meter, idle, max).await;
    (
        meter.rx.load(Ordering::Relaxed),
        meter.tx.load(Ordering::Relaxed),
        reason,
    )
}

async fn watch_timeouts(
    both: Pin<Box<dyn Future<Output = ()> + Send + '_>>,
    meter: &Meter,
    idle: Duration,
    max: Option<Duration>,
) -> Option<&'static str> {
    let mut both = both;
    let deadline = max.map(|m| tokio::time::Instant::now() + m);
    loop {
        let last = meter.base + Duration::from_millis(meter.activity.load(Ordering::Relaxed));
        let sleep = tokio::time::sleep_until(last + idle);
        let dl = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut both => return None,
            _ = sleep => {
                let last = meter.base + Duration::from_millis(meter.activity.load(Ordering::Relaxed));
                if tokio::time::Instant::now() >= last + idle { return Some("idle_timeout"); }
            }
            _ = dl => return Some("DT"),
        }
    }
}

// ---------------------------------------------------------------- TCP ↔ TCP

async fn relay_tcp(down: TcpStream, prefix: Vec<u8>, up: TcpStream, meter: &Meter) {
    if !prefix.is_empty() {
        if write_all(&up, &prefix).await.is_err() {
            shutdown_write(&up);
            return;
        }
        meter.moved(true, prefix.len());
    }
    drop(prefix);
    tokio::join!(
        tcp_dir(&down, &up, true, meter),
        tcp_dir(&up, &down, false, meter)
    );
}

/// One direction: until EOF or an error, then forward the EOF as a write shutdown.
async fn tcp_dir(r: &TcpStream, w: &TcpStream, up: bool, meter: &Meter) {
    if let Err(e) = splice_dir(r, w, up, meter).await {
        if e.kind() == io::ErrorKind::Unsupported {
            // No splice for this pair (or no pipes left): copy through a user-space buffer.
            let _ = copy_dir(r, w, up, meter).await;
        }
    }
    shutdown_write(w);
}

fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

async fn write_all(w: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        w.writable().await?;
        match w.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// socket → pipe → socket. Returns `Unsupported` before moving any byte if splice cannot be
/// used, so the caller can fall back to copying.
async fn splice_dir(r: &TcpStream, w: &TcpStream, up: bool, meter: &Meter) -> io::Result<()> {
    let mut pipe: Option<sys::Pipe> = None;
    let mut moved_any = false;
    loop {
        r.readable().await?;
        let p = match &pipe {
            Some(p) => p,
            None => pipe.insert(PIPES.take().map_err(|_| unsupported())?),
        };
        let res = r.try_io(Interest::READABLE, || {
            sys::splice(r, p.write_end(), SPLICE_CHUNK)
        });
        let mut in_pipe = match res {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing in flight: an idle direction holds no pipe.
                if let Some(p) = pipe.take() {
                    PIPES.put(p);
                }
                continue;
            }
            Err(e) if !moved_any && sys::splice_unsupported(&e) => return Err(unsupported()),
            Err(e) => return Err(e),
        };
        moved_any = true;
        while in_pipe > 0 {
            w.writable().await?;
            match w.try_io(Interest::WRITABLE, || sys::splice(p.read_end(), w, in_pipe)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    in_pipe -= n;
                    meter.moved(up, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The pipe still holds bytes: it is dropped (closed), never pooled.
                Err(e) => return Err(e),
            }
        }
    }
    if let Some(p) = pipe.take() {
        PIPES.put(p);
    }
    Ok(())
}

fn unsupported() -> io::Error {
    io::ErrorKind::Unsupported.into()
}

/// Readiness-driven copy with a buffer that exists only while bytes are in flight.
async fn copy_dir(r: &TcpStream, w: &TcpStream, up: bool, meter: &Meter) -> io::Result<()> {
    let mut size = MIN_BUF;
    loop {
        r.readable().await?;
        let mut buf = vec![0u8; size];
        let n = match r.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        write_all(w, &buf[..n]).await?;
        meter.moved(up, n);
        size = next_size(size, n);
    }
}

/// Grow while reads fill the buffer (bulk), shrink back when they do not (interactive).
fn next_size(size: usize, n: usize) -> usize {
    if n == size {
        (size * 2).min(MAX_BUF)
    } else if n < size / 4 {
        (size / 2).max(MIN_BUF)
    } else {
        size
    }
}

const MIN_BUF: usize = 4 * 1024;
const MAX_BUF: usize = 64 * 1024;
/// Ask for up to this much per splice; the pipe's capacity (64 KiB by default) bounds it.
const SPLICE_CHUNK: usize = 1 << 20;

/// Empty pipes shared by all relays (creating one costs three syscalls).
struct PipePool(Mutex<Vec<sys::Pipe>>);

/// Pipes kept for reuse beyond this are closed.
const PIPE_POOL_MAX: usize = 64;

static PIPES: PipePool = PipePool(Mutex::new(Vec::new()));

impl PipePool {
    fn take(&self) -> io::Result<sys::Pipe> {
        let pooled = self.0.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match pooled {
            Some(p) => Ok(p),
            None => sys::Pipe::new(),
        }
    }

    /// Only empty pipes come back (callers return a pipe when nothing is in flight).
    fn put(&self, p: sys::Pipe) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() < PIPE_POOL_MAX {
            g.push(p);
        }
    }
}

/// The raw syscalls the splice path needs, wrapped so the rest of the relay is safe code.
mod sys {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    /// A non-blocking pipe (both ends `O_NONBLOCK`, so splice never sleeps on it).
    pub struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
            let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
            let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            Ok(Pipe { r, w })
        }

        pub fn read_end(&self) -> BorrowedFd<'_> {
            self.r.as_fd()
        }

        pub fn write_end(&self) -> BorrowedFd<'_> {
            self.w.as_fd()
        }
    }

    /// Move up to `len` bytes from `from` to `to` (one of them must be a pipe) without copying
    /// them through user space. Non-blocking: `WouldBlock` when nothing can move now.
    pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are borrowed open fds for the duration of the call; null
        // offsets are allowed (the kernel uses and updates the file positions, and sockets
        // and pipes have none).
        let n = unsafe {
            libc::splice(
                from.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                to.as_fd().as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Errors that mean "this kernel / socket pair cannot splice" rather than a broken
    /// connection.
    pub fn splice_unsupported(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
        )
    }
}

// ---------------------------------------------------------------- any stream

/// One direction of the stream relay.
#[derive(Default)]
struct Dir {
    /// Bytes read and not yet written; `None` while idle.
    buf: Option<BytesMut>,
    size: usize,
    read_done: bool,
    done: bool,
}

struct RelayIo<'m> {
    a: Box<dyn Upstream>,
    b: Box<dyn Upstream>,
    /// a → b (downstream → upstream) and b → a.
    ab: Dir,
    ba: Dir,
    meter: &'m Meter,
}

impl Dir {
    /// Ready when this direction is finished (EOF forwarded, or an error on either side).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut Box<dyn Upstream>,
        w: &mut Box<dyn Upstream>,
        up: bool,
        meter: &Meter,
    ) -> Poll<()> {
        if self.size == 0 {
            self.size = MIN_BUF;
        }
        loop {
            if self.done {
                return Poll::Ready(());
            }
            if let Some(buf) = self.buf.as_mut().filter(|b| !b.is_empty()) {
                match Pin::new(&mut **w).poll_write(cx, buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(n)) if n > 0 => {
                        let _ = buf.split_to(n);
                        meter.moved(up, n);
                        continue;
                    }
                    Poll::Ready(_) => {
                        // Write error or zero-length write: give up this direction.
                        self.buf = None;
                        self.read_done = true;
                    }
                }
            }
            if self.read_done {
                match Pin::new(&mut **w).poll_shutdown(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(_) => {
                        self.done = true;
                        continue;
                    }
                }
            }
            let size = self.size;
            let buf = self
                .buf
                .get_or_insert_with(|| BytesMut::with_capacity(size));
            buf.clear();
            buf.reserve(size);
            match tokio_util::io::poll_read_buf(Pin::new(&mut **r), cx, buf) {
                Poll::Pending => {
                    // Idle: release the buffer until the next readiness.
                    self.buf = None;
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.buf = None;
                    self.read_done = true;
                }
                Poll::Ready(Ok(n)) => self.size = next_size(self.size, n),
            }
        }
    }
}

impl Future for RelayIo<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.get_mut();
        let ab = me.ab.poll(cx, &mut me.a, &mut me.b, true, me.meter);
        let ba = me.ba.poll(cx, &mut me.b, &mut me.a, false, me.meter);
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_sizes_adapt() {
        assert_eq!(next_size(MIN_BUF, MIN_BUF), 2 * MIN_BUF);
        assert_eq!(next_size(MAX_BUF, MAX_BUF), MAX_BUF);
        assert_eq!(next_size(4 * MIN_BUF, 10), 2 * MIN_BUF);
        assert_eq!(next_size(MIN_BUF, 10), MIN_BUF);
        assert_eq!(next_size(2 * MIN_BUF, MIN_BUF), 2 * MIN_BUF);
    }

    #[test]
    fn pipes_move_bytes_between_sockets() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (b, _) = l.accept().await.unwrap();
            let p = sys::Pipe::new().unwrap();
            write_all(&a, b"hello splice").await.unwrap();
            b.readable().await.unwrap();
            let n = b
                .try_io(Interest::READABLE, || sys::splice(&b, p.write_end(), 1024))
                .unwrap();
            assert_eq!(n, 12);
            a.writable().await.unwrap();
            let m = a
                .try_io(Interest::WRITABLE, || sys::splice(p.read_end(), &a, n))
                .unwrap();
            assert_eq!(m, 12);
            let mut got = [0u8; 12];
            b.readable().await.unwrap();
            let mut have = 0;
            while have < 12 {
                b.readable().await.unwrap();
                match b.try_read(&mut got[have..]) {
                    Ok(k) => have += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(&got, b"hello splice");
        });
    }
}
