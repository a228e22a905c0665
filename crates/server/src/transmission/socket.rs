//! A connection's socket once the handshake is done: a blocking socket
//! that the connection's threads receive from (`recv`, sleeping in the
//! kernel until a request arrives), and that replies are sent on without
//! ever blocking (`MSG_DONTWAIT`), from any thread, with tokio waiting for
//! room only when it is full ([`SocketWriter`]).
//!
//! Why blocking receives: the thread that receives a WRITE's payload then
//! copies it to the page cache itself, while its bytes are still in its
//! CPU's cache, and another thread takes its turn on the socket — nbdkit's
//! shape (see `transmission`). A tokio task cannot hand the socket to a
//! thread and get it back without a wake-up each way.

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, Interest};

/// Most bytes a TCP connection leaves queued in the kernel *unsent*
/// (`TCP_NOTSENT_LOWAT`): a send waits (the socket reads as full) while
/// more than this waits for the peer's window. Bytes sent and not yet
/// acknowledged do not count, so this does not cap throughput on a long
/// path; it keeps the queue short.
///
/// Why: without it the kernel takes up to the whole send buffer (4 MiB
/// once autotuned) of unsent reply data. Each window update from the
/// client then transmits part of it from the softirq on the *client's*
/// CPU while the server's thread transmits on its own, and over loopback
/// segments sent from two CPUs arrive out of order: on 1 MiB sequential
/// reads, 2000-3000 spurious fast retransmits and 1000-1800 SACK
/// recoveries per 5 s (`nstat`), against 850 retransmits for nbdkit.
/// Measured (BENCHMARKS.md): 2 MiB cut them to about 1300 and made
/// sequential reads 4 % faster and steadier; 1 MiB cut them to 400 with
/// no further gain; 512 KiB to 40 but slower again, and 128 KiB lost a
/// third of the throughput to send wake-ups. 2 MiB also leaves room for a
/// whole 1 MiB reply beyond the one being sent.
pub(crate) const TCP_UNSENT_MAX: u32 = 2 << 20;

/// The receive window a TCP connection starts with room for, so that a
/// client's usual queue of writes (16 × 1 MiB) fits in the kernel's buffer
/// instead of closing the window. The kernel caps it at half of
/// `net.ipv4.tcp_rmem`'s maximum, and autotuning still grows the buffer
/// past it.
///
/// Why: the receive buffer autotunes to what the server read per
/// estimated round trip, and vdisk's reader, which receives a payload
/// straight into its buffer as it arrives, keeps that estimate short: the
/// buffer settled at 6-8 MB against nbdkit's 20-26 MB. With 16 MiB in
/// flight the window then closes and opens all the time (per MiB written,
/// 0.65 "want zero window" against 0.1, twice nbdkit's pure ACKs), and the
/// client's queued data goes out from the softirq that processes each
/// window update, on the server's CPU, while the client's thread sends on
/// its own: segments arrive out of order and are retransmitted for
/// nothing (0.85 per MiB against 0.15). With the larger start, on 1 MiB
/// writes the client's CPU per MiB fell from 270 to 233 µs and softirqs
/// from 102 to 59, below nbdkit's 250 / 70 (BENCHMARKS.md).
pub(crate) const TCP_RECV_WINDOW: libc::c_int = 16 << 20;

/// [`Socket::wait_queued`] waits for a payload only if the receive buffer
/// holds this many times its length (the kernel's buffer space for a window
/// is up to twice the window).
const WAIT_BUFFER_FACTOR: usize = 4;

/// A connected TCP or Unix socket, in blocking mode.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Socket {
    /// Takes a tokio stream off the runtime and makes it blocking, with
    /// at most [`TCP_UNSENT_MAX`] bytes queued unsent (a socket that
    /// refuses the option is used as it is: it changes speed, not
    /// behaviour).
    pub(crate) fn from_tcp(stream: tokio::net::TcpStream) -> io::Result<Self> {
        let s = stream.into_std()?;
        s.set_nonblocking(false)?;
        if let Err(e) = socket2::SockRef::from(&s).set_tcp_notsent_lowat(TCP_UNSENT_MAX) {
            tracing::debug!("TCP_NOTSENT_LOWAT not set: {e}");
        }
        if let Err(e) = grow_receive_buffer(&s, TCP_RECV_WINDOW) {
            tracing::debug!("receive buffer not grown: {e}");
        }
        Ok(Socket::Tcp(s))
    }

    /// Takes a tokio stream off the runtime and makes it blocking.
    pub(crate) fn from_unix(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let s = stream.into_std()?;
        s.set_nonblocking(false)?;
        Ok(Socket::Unix(s))
    }

    /// A second handle on the same socket.
    pub(crate) fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Unix(s) => Socket::Unix(s.try_clone()?),
        })
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(how),
            Socket::Unix(s) => s.shutdown(how),
        }
    }

    /// Receives into `buf`, waiting for at least one byte (for all of
    /// `buf` with `all`); 0 at the end of the stream, or once the socket
    /// was shut down for reading (how a waiting receive is woken at
    /// shutdown).
    pub(crate) fn recv(&self, buf: &mut [u8], all: bool) -> io::Result<usize> {
        let flags = if all {
            rustix::net::RecvFlags::WAITALL
        } else {
            rustix::net::RecvFlags::empty()
        };
        loop {
            match rustix::net::recv(self, &mut *buf, flags) {
                Ok((n, _)) => return Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits, without receiving anything, until `len` bytes are queued to
    /// be received, or fewer if no more can come in before some are
    /// received (the window is full: Linux then wakes the waiter anyway),
    /// or the stream ends or is shut down. TCP only, and only with a
    /// receive buffer of at least [`WAIT_BUFFER_FACTOR`] times `len`:
    /// otherwise (and on a Unix socket) it returns at once. What is
    /// queued then is for the caller to check.
    pub(crate) fn wait_queued(&self, len: usize) -> io::Result<()> {
        let Socket::Tcp(s) = self else {
            return Ok(());
        };
        // Raising SO_RCVLOWAT above what the buffer holds grows the buffer
        // and clamps the window to the new low-water mark, for good
        // (`tcp_set_rcvlowat`): a buffer shrunk under memory pressure would
        // leave the connection with a window of one payload.
        if rustix::net::sockopt::socket_recv_buffer_size(self)?
            < len.saturating_mul(WAIT_BUFFER_FACTOR)
        {
            return Ok(());
        }
        set_receive_low_water(s, libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX))?;
        let flags = rustix::event::PollFlags::IN | rustix::event::PollFlags::RDHUP;
        let waited = loop {
            let mut fds = [rustix::event::PollFd::new(self, flags)];
            match rustix::event::poll(&mut fds, None) {
                Err(rustix::io::Errno::INTR) => continue,
                r => break r.map(drop),
            }
        };
        let back = set_receive_low_water(s, 1);
        waited?;
        back
    }

    /// Sends what fits without waiting; `WouldBlock` when nothing does.
    fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let flags = rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL;
        loop {
            let mut control = rustix::net::SendAncillaryBuffer::default();
            match rustix::net::sendmsg(self, bufs, &mut control, flags) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Grows `s`'s receive buffer to hold a window of `window` bytes while
/// leaving it to autotuning (see [`TCP_RECV_WINDOW`]). `SO_RCVBUF` would
/// fix the size (and it is capped at `net.core.rmem_max`, 4 MiB here);
/// raising `SO_RCVLOWAT` makes Linux grow an unlocked buffer to hold that
/// many bytes, and setting it back to 1 keeps the buffer and the usual
/// wake-ups. Neither std, socket2 nor rustix wraps `SO_RCVLOWAT`.
fn grow_receive_buffer(s: &std::net::TcpStream, window: libc::c_int) -> io::Result<()> {
    set_receive_low_water(s, window)?;
    set_receive_low_water(s, 1)
}

/// Sets `SO_RCVLOWAT`: how many bytes must be queued before a receive
/// (or a poll) on `s` is woken.
fn set_receive_low_water(s: &std::net::TcpStream, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `s` is an open socket for the whole call; the option value
    // is a live c_int and its exact size is passed, which is what the
    // kernel reads for SO_RCVLOWAT.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// The sending side of a [`Socket`] for the reply sink: every send is
/// non-blocking; when the socket is full, tokio is asked to wake the
/// caller once there is room (the socket is registered for writability
/// only, so arriving requests never wake the runtime).
#[derive(Debug)]
pub(crate) struct SocketWriter {
    fd: AsyncFd<Socket>,
}

impl SocketWriter {
    /// Needs a tokio runtime with I/O enabled.
    #[allow(unsafe_code)]
    pub(crate) fn new(socket: Socket) -> io::Result<Self> {
        // Why unsafe: tokio's only ways to be told of writability alone
        // (so that arriving requests, which the connection's threads
        // receive themselves, never wake the runtime) are these
        // registrations, which trust the caller about the descriptor.
        // SAFETY: `Socket` owns its descriptor (a std stream), which stays
        // open and the same until the `Socket`, owned by the `AsyncFd`
        // from here on, is dropped; `as_raw_fd` always returns it.
        let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::WRITABLE) }
            .map_err(io::Error::from)?;
        Ok(Self { fd })
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| fd.get_ref().send_now(bufs)) {
                Ok(result) => return Poll::Ready(result),
                // Full: readiness cleared, wait for it again.
                Err(_would_block) => continue,
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.fd.get_ref().shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn a_full_socket_waits_for_room_and_loses_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let reader = Socket::Unix(b);
        let sent: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
        let expect = sent.clone();
        // Far more than the socket holds: sends must wait for the reader.
        let received = std::thread::spawn(move || {
            let mut got = vec![0u8; expect.len()];
            let mut at = 0;
            while at < got.len() {
                std::thread::sleep(std::time::Duration::from_micros(200));
                let n = reader.recv(&mut got[at..], false).expect("recv");
                assert_ne!(n, 0, "stream ended early");
                at += n;
            }
            got == expect
        });
        rt.block_on(async {
            let mut w = SocketWriter::new(Socket::Unix(a)).expect("writer");
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("shutdown");
        });
        assert!(received.join().expect("reader"), "bytes differ");
    }

    /// A connected loopback TCP pair (the accepted side first), with the
    /// runtime that registered them, to keep alive while they are used.
    pub(crate) fn tcp_pair() -> (
        tokio::runtime::Runtime,
        tokio::net::TcpStream,
        tokio::net::TcpStream,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("runtime");
        let (server, client) = rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = l.local_addr().expect("addr");
            let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            (l.accept().await.expect("accept").0, c)
        });
        (rt, server, client)
    }

    #[test]
    fn tcp_sockets_keep_little_unsent() {
        let (_rt, server, _client) = tcp_pair();
        let Socket::Tcp(s) = Socket::from_tcp(server).expect("socket") else {
            panic!("not TCP");
        };
        let lowat = socket2::SockRef::from(&s)
            .tcp_notsent_lowat()
            .expect("getsockopt");
        assert_eq!(lowat, TCP_UNSENT_MAX);
    }

    #[test]
    fn tcp_sockets_start_with_a_large_receive_buffer_and_wake_on_one_byte() {
        use std::io::Write;
        let (_rt, server, client) = tcp_pair();
        let mut client = client.into_std().expect("std");
        client.set_nonblocking(false).expect("blocking");
        let socket = Socket::from_tcp(server).expect("socket");
        let Socket::Tcp(s) = &socket else {
            panic!("not TCP");
        };
        let untouched = socket2::SockRef::from(&client)
            .recv_buffer_size()
            .expect("getsockopt");
        let grown = socket2::SockRef::from(s)
            .recv_buffer_size()
            .expect("getsockopt");
        // The kernel grants at most half of tcp_rmem's maximum as window.
        let cap = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem")
            .ok()
            .and_then(|t| t.split_whitespace().nth(2)?.parse::<usize>().ok())
            .map_or(usize::MAX, |max| max / 2);
        let want = (TCP_RECV_WINDOW as usize).min(cap);
        assert!(
            grown >= want && grown > untouched,
            "receive buffer {grown} (untouched: {untouched}, want {want})"
        );
        // The low-water mark is back at 1: one byte wakes a receive.
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        // (A receive waiting for more gives up with what it has only at
        // the timeout.)
        client.write_all(b"x").expect("send");
        let start = std::time::Instant::now();
        assert_eq!(socket.recv(&mut [0u8; 64], false).expect("recv"), 1);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(2),
            "one byte waited {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn waiting_for_a_payload_returns_once_all_of_it_is_queued() {
        use std::io::Write;
        use std::time::{Duration, Instant};
        let (_rt, server, client) = tcp_pair();
        let mut client = client.into_std().expect("std");
        client.set_nonblocking(false).expect("blocking");
        let socket = Socket::from_tcp(server).expect("socket");
        let len = 256 << 10;
        let sender = std::thread::spawn(move || {
            // Half, a pause, the rest: the wait must outlast the pause.
            client.write_all(&vec![1u8; len / 2]).expect("send");
            std::thread::sleep(Duration::from_millis(200));
            client.write_all(&vec![2u8; len / 2]).expect("send");
            client
        });
        let start = Instant::now();
        socket.wait_queued(len).expect("wait");
        assert!(start.elapsed() >= Duration::from_millis(150), "woke early");
        let queued = rustix::io::ioctl_fionread(&socket).expect("FIONREAD");
        assert!(queued >= len as u64, "{queued} of {len} queued");
        let mut client = sender.join().expect("sender");
        // The low-water mark is back at 1: one byte wakes a receive.
        let mut got = vec![0u8; len];
        assert_eq!(socket.recv(&mut got, true).expect("recv"), len);
        if let Socket::Tcp(s) = &socket {
            // (A receive waiting for more gives up with what it has only
            // at the timeout.)
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
        }
        client.write_all(b"x").expect("send");
        let start = Instant::now();
        assert_eq!(socket.recv(&mut [0u8; 64], false).expect("recv"), 1);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "one byte waited {:?}",
            start.elapsed()
        );
        // A shutdown for reading (the server stopping) ends a wait.
        let other = socket.try_clone().expect("clone");
        let waiting = std::thread::spawn(move || socket.wait_queued(len));
        std::thread::sleep(Duration::from_millis(50));
        other.shutdown(Shutdown::Read).expect("shutdown");
        waiting.join().expect("thread").expect("wait");
        // A Unix socket does not wait.
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        Socket::Unix(a).wait_queued(len).expect("no wait");
    }

    #[test]
    fn shutting_down_wakes_a_waiting_receive() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let socket = Socket::Unix(a);
        let other = socket.try_clone().expect("clone");
        let waiting = std::thread::spawn(move || socket.recv(&mut [0u8; 16], true));
        std::thread::sleep(std::time::Duration::from_millis(50));
        other.shutdown(Shutdown::Read).expect("shutdown");
        assert_eq!(waiting.join().expect("thread").expect("recv"), 0);
    }
}
