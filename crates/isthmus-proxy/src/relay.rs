//! L4 byte relay between a downstream and an upstream connection (TCP proxy, SNI passthrough).
//!
//! A relay is a plain state machine ([`Relay`]) polled by the connection's task, not a tree of
//! nested futures: an idle L4 connection is the dominant state of a passthrough proxy, so its
//! per-connection footprint is the two sockets, a few counters and one timer, with no buffer
//! and no pipe (the ≤ 1.1 KiB per idle connection target of issue #10; a size test keeps it).
//!
//! Two pumps, chosen per connection:
//! * **TCP ↔ TCP** (nothing terminated or originated TLS), HAProxy's `splice-auto`: reads are
//!   copied through a per-thread scratch buffer (one `read` + one `write`, no pipe operations)
//!   until a read fills that buffer; then the direction is bulk and switches to `splice(2)`
//!   through a pipe from a small shared pool, so payload bytes never enter user space. A splice
//!   that moves little switches it back. Pipes go back to the pool whenever a direction has
//!   nothing in flight, and copied bytes that a socket could not take at once are the only
//!   heap buffer (freed as soon as they are written).
//! * **Any stream** (a TLS side): both directions are polled by the same state machine (no
//!   `io::split` lock); a direction's buffer is allocated when it is about to read and released
//!   as soon as a read would block with nothing in flight. Buffers grow 4 KiB → 64 KiB while
//!   reads keep filling them (ztunnel-style adaptivity).
//!
//! Both stop on EOF in both directions (each EOF is forwarded as a write shutdown), the idle
//! timeout (no bytes either way) or the max duration.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

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

/// Why a relay ended before both sides closed: `DT` (max duration) or the idle timeout.
pub type EndReason = Option<&'static str>;

/// One L4 relay: the two sides, the bytes moved, and its timers' bookkeeping.
///
/// Not a future itself: [`Relay::poll_relay`] is driven together with a [`Sleep`] the caller
/// owns (pinned in the connection's task), so the relay needs no pinning, no boxed timer and
/// no nested async state. [`Relay::run`] is the plain `async` form.
pub struct Relay {
    pump: Pump,
    /// Downstream → upstream bytes (written to the upstream).
    pub rx: u64,
    /// Upstream → downstream bytes (written to the downstream).
    pub tx: u64,
    /// The connection's start; the times below are milliseconds after it (16 bytes instead
    /// of 48 for three `Instant`s/`Duration`s in every idle connection).
    base: Instant,
    /// Last data movement (keepalive probes never reach here).
    last_ms: u64,
    /// `NEVER` when disabled (Envoy: an idle timeout of 0s disables it); a configured timeout
    /// beyond ~49 days counts as disabled too.
    idle_ms: u32,
    /// `NEVER` without a max duration.
    deadline_ms: u32,
}

const NEVER: u32 = u32::MAX;
/// With no timer armed, the relay still wakes once a day (and goes back to sleep).
const RECHECK_MS: u64 = 24 * 3600 * 1000;

enum Pump {
    Tcp(TcpPair),
    Io(IoPair),
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(NEVER)
}

fn ms64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

impl Relay {
    /// A relay between `down` and `up` for a connection that started at `start`; it ends
    /// after `idle` without traffic (zero: never) or `max` after the start.
    pub fn new(
        down: Down,
        up: Box<dyn Upstream>,
        start: Instant,
        idle: Duration,
        max: Option<Duration>,
    ) -> Relay {
        // A plain upstream socket (no TLS origination) can be spliced to a plain downstream one.
        let up_is_tcp = (&*up as &dyn std::any::Any).is::<TcpStream>();
        let pump = match down {
            Down::Tcp(d, prefix) if up_is_tcp => {
                let any: Box<dyn std::any::Any + Send> = up;
                match any.downcast::<TcpStream>() {
                    Ok(u) => Pump::Tcp(TcpPair::new(d, *u, prefix)),
                    // Unreachable (checked above). Never panic: pair the downstream with a
                    // closed stream, which ends the relay as soon as the downstream is done.
                    Err(_) => Pump::Io(IoPair {
                        a: Down::Tcp(d, prefix).into_io(),
                        b: Box::new(tokio::io::duplex(1).0),
                        ab: Dir::default(),
                        ba: Dir::default(),
                    }),
                }
            }
            down => Pump::Io(IoPair {
                a: down.into_io(),
                b: up,
                ab: Dir::default(),
                ba: Dir::default(),
            }),
        };
        Relay {
            pump,
            rx: 0,
            tx: 0,
            base: start,
            last_ms: ms64(start.elapsed()),
            idle_ms: if idle.is_zero() { NEVER } else { ms(idle) },
            deadline_ms: max.map(ms).unwrap_or(NEVER),
        }
    }

    /// Time since the connection's start.
    pub fn elapsed(&self) -> Duration {
        self.base.elapsed()
    }

    /// When the caller's timer should fire next: the idle deadline or the max duration,
    /// whichever is sooner (far in the future when neither applies).
    pub fn next_timer(&self) -> Instant {
        let idle = match self.idle_ms {
            NEVER => u64::MAX,
            i => self.last_ms + u64::from(i),
        };
        let deadline = match self.deadline_ms {
            NEVER => u64::MAX,
            d => u64::from(d),
        };
        let at = match idle.min(deadline) {
            u64::MAX => ms64(self.base.elapsed()) + RECHECK_MS,
            at => at,
        };
        self.base + Duration::from_millis(at)
    }

    /// Move bytes both ways. Ready when both directions finished (`None`) or a timer ended
    /// the relay (`Some("DT")` / `Some("idle_timeout")`). `sleep` must be the caller's timer,
    /// first armed at [`Relay::next_timer`]; this re-arms it as traffic moves the idle deadline.
    pub fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
    ) -> Poll<EndReason> {
        let before = self.rx + self.tx;
        let done = match &mut self.pump {
            Pump::Tcp(p) => p.poll(cx, &mut self.rx, &mut self.tx),
            Pump::Io(p) => p.poll(cx, &mut self.rx, &mut self.tx),
        };
        if done.is_ready() {
            return Poll::Ready(None);
        }
        if self.rx + self.tx != before {
            self.last_ms = ms64(self.base.elapsed());
        }
        // The timer is not moved on every byte: when it fires, it is re-armed from the last
        // movement (one timer-wheel operation per idle period, not per read).
        while sleep.as_mut().poll(cx).is_ready() {
            let now = ms64(self.base.elapsed());
            if self.deadline_ms != NEVER && now >= u64::from(self.deadline_ms) {
                return Poll::Ready(Some("DT"));
            }
            if self.idle_ms != NEVER && now >= self.last_ms + u64::from(self.idle_ms) {
                return Poll::Ready(Some("idle_timeout"));
            }
            sleep.as_mut().reset(self.next_timer());
        }
        Poll::Pending
    }

    /// Relay until the end; returns (bytes from downstream, bytes to downstream, reason).
    pub async fn run(mut self) -> (u64, u64, EndReason) {
        let sleep = tokio::time::sleep_until(self.next_timer());
        tokio::pin!(sleep);
        let why = poll_fn(|cx| self.poll_relay(cx, sleep.as_mut())).await;
        (self.rx, self.tx, why)
    }
}

/// Copy both ways until both sides are done, the idle timeout passes without traffic, or the
/// max duration is reached. Returns (bytes from downstream, bytes to downstream, reason).
pub async fn relay(
    down: Down,
    up: Box<dyn Upstream>,
    idle: Duration,
    max: Option<Duration>,
) -> (u64, u64, EndReason) {
    Relay::new(down, up, Instant::now(), idle, max).run().await
}

// ---------------------------------------------------------------- TCP ↔ TCP (splice-auto)

/// Copy reads go through a per-thread scratch buffer of this size; a read that fills it marks
/// the direction as bulk (HAProxy's `splice-auto`: splice once the buffer would be full).
pub const COPY_CHUNK: usize = 16 * 1024;
/// A splice that moves less than this sends the direction back to copying: the flow looks
/// interactive again, and two pipe operations cost more than one small copy.
const SPLICE_MIN: usize = 4 * 1024;
/// Ask for up to this much per splice; the pipe's capacity (64 KiB by default) bounds it.
const SPLICE_CHUNK: usize = 1 << 20;

thread_local! {
    /// Scratch for copy-mode reads: allocated once per thread, so no per-read zeroing and no
    /// per-connection buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; COPY_CHUNK].into_boxed_slice());
}

struct TcpPair {
    down: TcpStream,
    up: TcpStream,
    /// Downstream → upstream, and upstream → downstream.
    ab: TcpDir,
    ba: TcpDir,
}

impl TcpPair {
    fn new(down: TcpStream, up: TcpStream, prefix: Vec<u8>) -> TcpPair {
        // The peeked ClientHello goes first, as bytes a write has not taken yet.
        let ab = TcpDir {
            pending: (!prefix.is_empty()).then(|| {
                Box::new(Pending {
                    buf: prefix,
                    off: 0,
                })
            }),
            ..TcpDir::default()
        };
        TcpPair {
            down,
            up,
            ab,
            ba: TcpDir::default(),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, rx: &mut u64, tx: &mut u64) -> Poll<()> {
        let ab = self.ab.poll(cx, &self.down, &self.up, rx);
        let ba = self.ba.poll(cx, &self.up, &self.down, tx);
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Small reads: copy through the scratch buffer.
    #[default]
    Copy,
    /// Bulk: splice through a pipe.
    Splice,
    /// This socket pair cannot splice (or the kernel refused): copy for good.
    CopyOnly,
}

/// One direction of a TCP pair. Invariant: bytes are read only when nothing is in flight
/// (`pending` written and the pipe drained), so order is kept across mode switches.
#[derive(Default)]
struct TcpDir {
    /// Read bytes the writer has not taken yet (first: the peeked ClientHello). `None`, with
    /// no allocation, in the steady state.
    pending: Option<Box<Pending>>,
    /// Held only while bytes are in it (or between back-to-back bulk reads).
    pipe: Option<sys::Pipe>,
    /// Bytes in the pipe (at most its capacity, ≤ 1 MiB).
    in_pipe: u32,
    mode: Mode,
    read_done: bool,
    done: bool,
}

#[cfg(test)]
thread_local! {
    /// Bytes this thread's relays moved through pipes (tests check which path moved them; a
    /// thread-local, not a field, so the tested layout is the shipped one).
    static SPLICED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Bytes a write has not taken yet, and how many of them it has.
struct Pending {
    buf: Vec<u8>,
    off: usize,
}

impl TcpDir {
    /// Ready when this direction is finished: EOF (or a read error) forwarded as a write
    /// shutdown, or a write error.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        r: &TcpStream,
        w: &TcpStream,
        moved: &mut u64,
    ) -> Poll<()> {
        loop {
            if self.done {
                return Poll::Ready(());
            }
            // 1. Copied bytes the writer has not taken yet.
            if let Some(p) = self.pending.as_mut() {
                match w.try_write(&p.buf[p.off..]) {
                    Ok(0) => self.fail(w),
                    Ok(n) => {
                        p.off += n;
                        *moved += n as u64;
                        if p.off >= p.buf.len() {
                            self.pending = None;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match w.poll_write_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(_)) => self.fail(w),
                        }
                    }
                    Err(_) => self.fail(w),
                }
                continue;
            }
            // 2. Bytes in the pipe.
            if self.in_pipe > 0 {
                let Some(p) = &self.pipe else {
                    // Cannot happen (bytes in a pipe we do not hold); end the direction.
                    self.fail(w);
                    continue;
                };
                let want = self.in_pipe as usize;
                match w.try_io(Interest::WRITABLE, || sys::splice(p.read_end(), w, want)) {
                    Ok(0) => self.fail(w),
                    Ok(n) => {
                        self.in_pipe -= n.min(want) as u32;
                        *moved += n as u64;
                        #[cfg(test)]
                        SPLICED.with(|c| c.set(c.get() + n as u64));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        match w.poll_write_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(_)) => self.fail(w),
                        }
                    }
                    Err(_) => self.fail(w),
                }
                continue;
            }
            if self.read_done {
                shutdown_write(w);
                self.done = true;
                self.release_pipe();
                return Poll::Ready(());
            }
            // 3. Read, when the socket says it is readable.
            match r.poll_read_ready(cx) {
                Poll::Pending => {
                    // Nothing in flight: an idle direction holds no pipe.
                    self.release_pipe();
                    return Poll::Pending;
                }
                Poll::Ready(Err(_)) => {
                    self.read_done = true;
                    continue;
                }
                Poll::Ready(Ok(())) => {}
            }
            if self.mode == Mode::Splice {
                self.read_splice(r);
            } else {
                self.read_copy(r, w, moved);
            }
        }
    }

    fn read_splice(&mut self, r: &TcpStream) {
        let p = match self.pipe.take() {
            Some(p) => p,
            None => match PIPES.take() {
                Ok(p) => p,
                Err(e) => {
                    // Out of descriptors for pipes: copy this read instead.
                    tracing::debug!(error = %e, "no pipe for splice; copying");
                    self.mode = Mode::Copy;
                    return;
                }
            },
        };
        let p = self.pipe.insert(p);
        match r.try_io(Interest::READABLE, || {
            sys::splice(r, p.write_end(), SPLICE_CHUNK)
        }) {
            Ok(0) => self.read_done = true,
            Ok(n) => {
                // A pipe holds at most 1 MiB (`pipe-max-size`), so this always fits.
                self.in_pipe = u32::try_from(n).unwrap_or(u32::MAX);
                if n < SPLICE_MIN {
                    self.mode = Mode::Copy;
                }
            }
            // Readiness was stale; `try_io` cleared it, the next poll waits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // Nothing moved by this call, so the pipe is still empty: copy for good.
            Err(e) if sys::splice_unsupported(&e) => self.mode = Mode::CopyOnly,
            Err(_) => self.read_done = true,
        }
    }

    fn read_copy(&mut self, r: &TcpStream, w: &TcpStream, moved: &mut u64) {
        SCRATCH.with(|s| {
            let mut guard = s.try_borrow_mut();
            let mut fallback;
            // The scratch is never borrowed across polls; the fallback covers re-entrancy
            // anyway (a nested runtime on this thread) without panicking.
            let buf: &mut [u8] = match guard.as_deref_mut() {
                Ok(b) => b,
                Err(_) => {
                    fallback = vec![0u8; COPY_CHUNK];
                    &mut fallback
                }
            };
            // A short read drained the socket, so its readiness is cleared right away (the
            // closure reports WouldBlock after the read): no extra `read` returning EAGAIN per
            // message. `try_io` clears with the readiness tick taken before the read, like
            // tokio's own `try_read`, so an event that arrives meanwhile is kept, and a seen
            // EOF (read-closed) is never cleared.
            let len = buf.len();
            let mut got = 0usize;
            let res = r.try_io(Interest::READABLE, || {
                let sock = socket2::SockRef::from(r);
                got = (&*sock).read(&mut buf[..])?;
                if got > 0 && got < len {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(got)
                }
            });
            let n = match res {
                Ok(0) => {
                    self.read_done = true;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.read_done = true;
                    return;
                }
            };
            if n == len && self.mode == Mode::Copy {
                self.mode = Mode::Splice;
            }
            // Write at once (the common case takes it all); keep only what the socket left.
            let wrote = match w.try_write(&buf[..n]) {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    self.fail(w);
                    return;
                }
            };
            *moved += wrote as u64;
            if wrote < n {
                self.pending = Some(Box::new(Pending {
                    buf: buf[wrote..n].to_vec(),
                    off: 0,
                }));
            }
        });
    }

    /// A write failed: this direction is over (bytes still in flight are dropped with it).
    fn fail(&mut self, w: &TcpStream) {
        shutdown_write(w);
        self.pending = None;
        // A pipe that still holds bytes is closed, never pooled.
        if self.in_pipe > 0 {
            self.pipe = None;
            self.in_pipe = 0;
        }
        self.release_pipe();
        self.done = true;
    }

    fn release_pipe(&mut self) {
        if self.in_pipe == 0 {
            if let Some(p) = self.pipe.take() {
                PIPES.put(p);
            }
        }
    }
}

fn shutdown_write(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Write);
}

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

/// Two streams, at least one of them not a bare socket (TLS).
struct IoPair {
    a: Box<dyn Upstream>,
    b: Box<dyn Upstream>,
    /// a → b (downstream → upstream) and b → a.
    ab: Dir,
    ba: Dir,
}

impl IoPair {
    fn poll(&mut self, cx: &mut Context<'_>, rx: &mut u64, tx: &mut u64) -> Poll<()> {
        let ab = self.ab.poll(cx, &mut self.a, &mut self.b, rx);
        let ba = self.ba.poll(cx, &mut self.b, &mut self.a, tx);
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// One direction of the stream relay.
#[derive(Default)]
struct Dir {
    /// Bytes read and not yet written; `None` while idle.
    buf: Option<BytesMut>,
    size: u32,
    read_done: bool,
    done: bool,
}

impl Dir {
    /// Ready when this direction is finished (EOF forwarded, or an error on either side).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut Box<dyn Upstream>,
        w: &mut Box<dyn Upstream>,
        moved: &mut u64,
    ) -> Poll<()> {
        if self.size == 0 {
            self.size = MIN_BUF as u32;
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
                        *moved += n as u64;
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
            let size = self.size as usize;
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
                Poll::Ready(Ok(n)) => self.size = next_size(size, n) as u32,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Two connected socket pairs: (client, proxy's downstream side), (proxy's upstream side,
    /// server).
    async fn two_pairs() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let client = TcpStream::connect(a).await.unwrap();
        let (down, _) = l.accept().await.unwrap();
        let up = TcpStream::connect(a).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, down, up, server)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Writes `data` then shuts down writing, while reading everything the peer sends.
    async fn exchange(mut s: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = s.split();
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let recv = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(send, recv);
        n.unwrap();
        got
    }

    /// Bytes spliced on this thread so far (each test runs its own current-thread runtime).
    fn spliced() -> u64 {
        SPLICED.with(|c| c.get())
    }

    /// Drive a relay to its end, returning it (for its counters) and the reason.
    async fn drive(mut relay: Relay) -> (Relay, EndReason) {
        let sleep = tokio::time::sleep_until(relay.next_timer());
        tokio::pin!(sleep);
        let why = poll_fn(|cx| relay.poll_relay(cx, sleep.as_mut())).await;
        (relay, why)
    }

    #[test]
    fn buffer_sizes_adapt() {
        assert_eq!(next_size(MIN_BUF, MIN_BUF), 2 * MIN_BUF);
        assert_eq!(next_size(MAX_BUF, MAX_BUF), MAX_BUF);
        assert_eq!(next_size(4 * MIN_BUF, 10), 2 * MIN_BUF);
        assert_eq!(next_size(MIN_BUF, 10), MIN_BUF);
        assert_eq!(next_size(2 * MIN_BUF, MIN_BUF), 2 * MIN_BUF);
    }

    /// The idle state of every L4 connection: if this grows, idle memory per connection grows
    /// with it (issue #10 target ≤ 1.1 KiB per idle passthrough connection, including the two
    /// sockets' registrations and the task). Deterministic, so it fails rather than flakes.
    #[test]
    fn idle_relay_state_stays_small() {
        let relay = std::mem::size_of::<Relay>();
        let dir = std::mem::size_of::<TcpDir>();
        assert!(dir <= 24, "TcpDir is {dir} bytes");
        assert!(relay <= 176, "Relay is {relay} bytes");
    }

    #[tokio::test]
    async fn bulk_moves_by_splice_both_ways_and_half_close_is_forwarded() {
        let (client, down, up, server) = two_pairs().await;
        let relay = Relay::new(
            Down::Tcp(down, b"PREFIX".to_vec()),
            Box::new(up),
            Instant::now(),
            Duration::from_secs(3600),
            None,
        );
        let to_server = pattern(6 << 20, 7);
        let to_client = pattern(5 << 20, 11);
        let (c, s, (relay, why)) = tokio::join!(
            exchange(client, to_server.clone()),
            exchange(server, to_client.clone()),
            drive(relay)
        );
        assert_eq!(why, None);
        assert_eq!(&s[..6], b"PREFIX");
        assert!(
            s[6..] == to_server[..],
            "downstream → upstream bytes differ"
        );
        assert!(c == to_client, "upstream → downstream bytes differ");
        assert_eq!(relay.rx, to_server.len() as u64 + 6);
        assert_eq!(relay.tx, to_client.len() as u64);
        // Most of 11 MiB went through pipes (only reads up to the first full buffer are copied).
        assert!(spliced() > 8 << 20, "bulk was not spliced: {}", spliced());
    }

    #[tokio::test]
    async fn small_messages_are_copied_not_spliced() {
        let (mut client, down, up, mut server) = two_pairs().await;
        let relay = Relay::new(
            Down::Tcp(down, Vec::new()),
            Box::new(up),
            Instant::now(),
            Duration::from_secs(3600),
            None,
        );
        let task = tokio::spawn(drive(relay));
        for i in 0..200u32 {
            let msg = pattern(1024, i as u8);
            client.write_all(&msg).await.unwrap();
            let mut got = vec![0u8; msg.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, msg);
            let reply = pattern(100, i as u8 ^ 0x55);
            server.write_all(&reply).await.unwrap();
            let mut got = vec![0u8; reply.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, reply);
        }
        // Half-close from the client: the server sees EOF and can still answer.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.write_all(b"after half-close").await.unwrap();
        drop(server);
        let mut tail = Vec::new();
        client.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, b"after half-close");
        let (relay, why) = task.await.unwrap();
        assert_eq!(why, None);
        assert_eq!(relay.rx, 200 * 1024);
        assert_eq!(relay.tx, 200 * 100 + 16);
        assert_eq!(spliced(), 0, "small messages went through pipes");
    }

    #[tokio::test]
    async fn bulk_then_small_switches_back_to_copy() {
        let (mut client, down, up, mut server) = two_pairs().await;
        let relay = Relay::new(
            Down::Tcp(down, Vec::new()),
            Box::new(up),
            Instant::now(),
            Duration::from_secs(3600),
            None,
        );
        let task = tokio::spawn(drive(relay));
        let bulk = pattern(4 << 20, 3);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 4 << 20];
            server.read_exact(&mut got).await.unwrap();
            (server, got)
        });
        client.write_all(&bulk).await.unwrap();
        let (mut server, got) = reader.await.unwrap();
        assert!(got == bulk);
        // Interactive again: each message arrives whole and in order.
        for i in 0..50u8 {
            client.write_all(&[i; 10]).await.unwrap();
            let mut b = [0u8; 10];
            server.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [i; 10]);
        }
        drop(client);
        drop(server);
        let (relay, why) = task.await.unwrap();
        assert_eq!(why, None);
        assert_eq!(relay.rx, (4 << 20) + 500);
        assert!(spliced() > 2 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_max_duration_timers() {
        // Paused clock: the runtime jumps to the timers, so this takes no wall time.
        let (_client, down, up, _server) = two_pairs().await;
        let relay = Relay::new(
            Down::Tcp(down, Vec::new()),
            Box::new(up),
            Instant::now(),
            Duration::from_secs(3600),
            None,
        );
        let t0 = Instant::now();
        let (_, why) = drive(relay).await;
        assert_eq!(why, Some("idle_timeout"));
        assert!(t0.elapsed() >= Duration::from_secs(3600));

        let (_client, down, up, _server) = two_pairs().await;
        let relay = Relay::new(
            Down::Tcp(down, Vec::new()),
            Box::new(up),
            Instant::now(),
            Duration::from_secs(3600),
            Some(Duration::from_secs(60)),
        );
        let t0 = Instant::now();
        let (_, why) = drive(relay).await;
        assert_eq!(why, Some("DT"));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(60) && took < Duration::from_secs(3600),
            "{took:?}"
        );
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
            let mut sent = 0;
            while sent == 0 {
                a.writable().await.unwrap();
                match a.try_write(b"hello splice") {
                    Ok(k) => sent = k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(sent, 12);
            let mut n = 0;
            while n == 0 {
                b.readable().await.unwrap();
                match b.try_io(Interest::READABLE, || sys::splice(&b, p.write_end(), 1024)) {
                    Ok(k) => n = k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(n, 12);
            a.writable().await.unwrap();
            let m = a
                .try_io(Interest::WRITABLE, || sys::splice(p.read_end(), &a, n))
                .unwrap();
            assert_eq!(m, 12);
            let mut got = [0u8; 12];
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
