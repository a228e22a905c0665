//! Where a connection's replies go: whoever finishes a request sends its
//! reply at once, without waiting.
//!
//! ```text
//!  worker with a reply ─► nobody writing? ── yes ─► write it now (non-blocking),
//!                              │                   then whatever queued meanwhile
//!                              no                       │ socket full
//!                              ▼                        ▼
//!                     queue it for the writer    hand the rest to the writer task,
//!                     (it writes it next)        which waits until the socket drains
//! ```
//!
//! Replies with lent data (large READs) are the exception: they always go
//! to the writer task, so each is sent from one place (see `push`).
//!
//! One writer at a time owns the socket's write half (it takes it out of
//! the shared state), so replies never interleave and nobody ever waits for
//! a lock across a write. Workers only try writes that cannot block: a
//! client that stops reading fills its socket, its replies pile up here
//! holding their requests' permits, and its reader stops taking requests —
//! other connections, and the workers, are not held up.
//!
//! A reply may also be held back on purpose, to go out in one write with
//! the next (see `pool`): only while a quick request of the same
//! connection is still to reply, which then sends both — whoever replies
//! last always writes.

use super::pool::buffers;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::{debug, warn};
use vdisk_engine::lend::{LentRead, Piece};

/// What a request holds until its reply is sent: one of `max_in_flight`
/// and its buffer's bytes out of `max_in_flight_bytes`.
pub(crate) type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A complete reply: the first `len` bytes of a (reused) buffer, then the
/// pieces of a lent read, if any (a READ's data the engine lent instead of
/// copying into the buffer: see `vdisk_engine::lend`).
pub(crate) struct Reply {
    bytes: Vec<u8>,
    len: usize,
    /// Bytes of `bytes` already written.
    sent: usize,
    tail: Option<LentRead>,
    /// Pieces of `tail` fully written, and bytes written of the next one.
    tail_done: usize,
    tail_sent: usize,
    _permits: Option<Permits>,
}

/// Zeros to send a `Piece::Zeros` from, a slice at a time.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Reply {
    pub(crate) fn new(bytes: Vec<u8>, len: usize, permits: Option<Permits>) -> Self {
        Self::at(bytes, 0..len, permits)
    }

    /// A reply that is `bytes[range]` (laid out to align its data).
    pub(crate) fn at(
        bytes: Vec<u8>,
        range: std::ops::Range<usize>,
        permits: Option<Permits>,
    ) -> Self {
        debug_assert!(range.start <= range.end && range.end <= bytes.len());
        Self {
            bytes,
            len: range.end,
            sent: range.start,
            tail: None,
            tail_done: 0,
            tail_sent: 0,
            _permits: permits,
        }
    }

    /// The reply, followed by the pieces of `tail`.
    pub(crate) fn with_tail(mut self, tail: Option<LentRead>) -> Self {
        self.tail = tail;
        self
    }

    /// Everything was written.
    fn is_sent(&self) -> bool {
        self.sent == self.len
            && self
                .tail
                .as_ref()
                .is_none_or(|t| self.tail_done == t.pieces().len())
    }

    /// Appends what is left to write, as slices, while `out` has fewer
    /// than `max`; returns whether all of it went in (a caller adding the
    /// next reply's slices after an incomplete one would send them out of
    /// order).
    fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>, max: usize) -> bool {
        if self.sent < self.len {
            if out.len() >= max {
                return false;
            }
            out.push(IoSlice::new(&self.bytes[self.sent..self.len]));
        }
        let Some(tail) = &self.tail else { return true };
        let mut skip = self.tail_sent;
        for piece in &tail.pieces()[self.tail_done..] {
            if out.len() >= max {
                return false;
            }
            let bytes: &[u8] = match piece {
                Piece::Lent(l) => &l.as_bytes()[skip..],
                Piece::Copied(v) => &v[skip..],
                Piece::Zeros(n) => &ZEROS[..(n - skip).min(ZEROS.len())],
            };
            out.push(IoSlice::new(bytes));
            if bytes.len() < piece.len() - skip {
                // A long run of zeros: its next slice once this is written.
                return false;
            }
            skip = 0;
        }
        true
    }

    /// Marks `n` more bytes written; returns what is left of `n` past the
    /// end of this reply.
    fn advance(&mut self, mut n: usize) -> usize {
        let take = n.min(self.len - self.sent);
        self.sent += take;
        n -= take;
        if let Some(tail) = &self.tail {
            let pieces = tail.pieces();
            while n > 0 && self.tail_done < pieces.len() {
                let left = pieces[self.tail_done].len() - self.tail_sent;
                if n >= left {
                    n -= left;
                    self.tail_done += 1;
                    self.tail_sent = 0;
                } else {
                    self.tail_sent += n;
                    n = 0;
                }
            }
        }
        n
    }

    /// Sent: its buffer goes back to the spares, its permits are released.
    fn finish(self) {
        buffers().put(self.bytes);
    }
}

/// Who is writing to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Nobody,
    /// A thread sending replies without blocking.
    Sender,
    /// The writer task, waiting for the socket to drain.
    Task,
}

struct State<W> {
    /// The write half, when nobody is writing.
    wr: Option<W>,
    owner: Owner,
    /// Replies waiting for the current owner.
    queue: Vec<Reply>,
    /// A write failed: the client is gone; replies are dropped.
    broken: bool,
    /// Requests accepted whose reply was not handed over yet.
    outstanding: usize,
    /// Of those, quick ones (small reads and writes).
    quick: usize,
    /// The reader stopped: the writer task ends once `outstanding` is 0
    /// and everything is sent.
    closing: bool,
}

impl<W> State<W> {
    /// Closing, and every reply was handed over and written (or dropped).
    fn done(&self) -> bool {
        self.closing && self.outstanding == 0 && self.owner == Owner::Nobody
    }
}

/// The reply side of one connection.
pub(crate) struct Sink<W> {
    state: Mutex<State<W>>,
    /// Wakes the writer task: replies to drain, or the last reply of a
    /// closing connection was handed over.
    task: Notify,
}

impl<W> std::fmt::Debug for Sink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}

/// Most replies one vectored write takes.
const MAX_SLICES: usize = 64;

impl<W: AsyncWrite + Unpin + Send + 'static> Sink<W> {
    pub(crate) fn new(wr: W) -> Self {
        Self {
            state: Mutex::new(State {
                wr: Some(wr),
                owner: Owner::Nobody,
                queue: Vec::new(),
                broken: false,
                outstanding: 0,
                quick: 0,
                closing: false,
            }),
            task: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // Nothing panics while holding it; see `pool::lock`.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request was accepted: its reply will come through [`Sink::send`]
    /// with the same `quick`.
    pub(crate) fn expect(&self, quick: bool) {
        let mut st = self.lock();
        st.outstanding += 1;
        st.quick += usize::from(quick);
    }

    /// Sends the reply of a request counted by [`Sink::expect`]. With
    /// `later`, only queues it if a quick request of this connection is
    /// still to reply (and will send this one along with its own); the
    /// caller knows one is about to run.
    pub(crate) fn send(&self, reply: Reply, quick: bool, later: bool) {
        self.push(reply, Some(quick), later);
    }

    /// Sends a reply not counted by [`Sink::expect`] (a refusal the reader
    /// answers itself).
    pub(crate) fn send_unexpected(&self, reply: Reply) {
        self.push(reply, None, false);
    }

    fn push(&self, reply: Reply, expected: Option<bool>, later: bool) {
        let mut st = self.lock();
        if let Some(quick) = expected {
            st.outstanding -= 1;
            st.quick -= usize::from(quick);
        }
        // Whoever replies last, or finds someone writing, sends it.
        let later = later && st.quick > 0;
        if (st.owner != Owner::Nobody || later) && !st.broken {
            st.queue.push(reply);
            return;
        }
        if reply.tail.is_some() && !st.broken {
            // Lent data (a large READ) is sent by the writer task. Sent
            // here, what fit went from this worker's CPU and the rest from
            // the task's, and loopback delivers each CPU's segments on its
            // own: 2-3× nbdkit's out-of-order arrivals and needless
            // retransmissions (BENCHMARKS.md).
            st.queue.push(reply);
            st.owner = Owner::Task;
            drop(st);
            self.task.notify_one();
            return;
        }
        let wr = if st.broken { None } else { st.wr.take() };
        let Some(mut wr) = wr else {
            // The client is gone, or the connection is being torn down.
            let wake = st.done();
            drop(st);
            reply.finish();
            if wake {
                self.task.notify_one();
            }
            return;
        };
        st.owner = Owner::Sender;
        // Replies held back first, then this one, then whatever others
        // queue meanwhile, until nothing is left or the socket is full.
        let mut batch = std::mem::take(&mut st.queue);
        drop(st);
        batch.push(reply);
        loop {
            let result = write_now(&mut wr, &mut batch);
            let mut st = self.lock();
            match result {
                Ok(true) => {
                    if st.queue.is_empty() {
                        st.wr = Some(wr);
                        st.owner = Owner::Nobody;
                        let wake = st.done();
                        drop(st);
                        if wake {
                            self.task.notify_one();
                        }
                        return;
                    }
                    std::mem::swap(&mut batch, &mut st.queue);
                }
                Ok(false) => {
                    // Socket full: the writer task waits for it to drain.
                    batch.append(&mut st.queue);
                    st.queue = batch;
                    st.wr = Some(wr);
                    st.owner = Owner::Task;
                    drop(st);
                    self.task.notify_one();
                    return;
                }
                Err(e) => {
                    send_failed(&e, &mut wr);
                    st.broken = true;
                    let dropped = std::mem::take(&mut st.queue);
                    st.wr = Some(wr);
                    st.owner = Owner::Nobody;
                    let wake = st.done();
                    drop(st);
                    dropped.into_iter().chain(batch).for_each(Reply::finish);
                    if wake {
                        self.task.notify_one();
                    }
                    return;
                }
            }
        }
    }

    /// The reader stopped: no request will be accepted any more.
    pub(crate) fn close(&self) {
        self.lock().closing = true;
        self.task.notify_one();
    }

    /// Drops the write half (closing the socket) and every queued reply:
    /// for a connection being torn down without finishing.
    pub(crate) fn abandon(&self) {
        let mut st = self.lock();
        st.broken = true;
        st.wr = None;
        let dropped = std::mem::take(&mut st.queue);
        drop(st);
        dropped.into_iter().for_each(Reply::finish);
    }

    /// The writer task: writes what workers could not (socket full), and
    /// once the connection is closing and every reply is sent, shuts the
    /// write half down.
    pub(crate) async fn run(&self) {
        loop {
            self.task.notified().await;
            let taken = {
                let mut st = self.lock();
                if st.owner == Owner::Task {
                    Some((st.wr.take(), std::mem::take(&mut st.queue)))
                } else {
                    None
                }
            };
            if let Some((wr, batch)) = taken {
                let Some(wr) = wr else { return };
                self.drain(wr, batch).await;
            }
            let last = {
                let mut st = self.lock();
                if st.done() {
                    Some((st.wr.take(), st.broken))
                } else {
                    None
                }
            };
            if let Some((wr, broken)) = last {
                if let (Some(mut wr), false) = (wr, broken) {
                    let _ = wr.shutdown().await;
                }
                return;
            }
        }
    }

    /// Writes `batch` and what queues meanwhile, waiting for the socket as
    /// needed; then gives the write half back.
    async fn drain(&self, mut wr: W, mut batch: Vec<Reply>) {
        loop {
            let result = write_all(&mut wr, &mut batch).await;
            let mut st = self.lock();
            if let Err(e) = result {
                send_failed(&e, &mut wr);
                st.broken = true;
                batch.append(&mut st.queue);
            } else if !st.queue.is_empty() {
                std::mem::swap(&mut batch, &mut st.queue);
                continue;
            }
            st.wr = Some(wr);
            st.owner = Owner::Nobody;
            drop(st);
            batch.drain(..).for_each(Reply::finish);
            return;
        }
    }
}

/// Logs why replies could not be sent, and shuts the socket's sending side
/// down: the client, if still there, must not wait for replies that will
/// never come (it sees the connection end, mid-reply if a lent read could
/// not be sent, and its reader then ends the connection here too).
fn send_failed<W: AsyncWrite + Unpin>(e: &io::Error, wr: &mut W) {
    // A socket's shutdown does not wait: one poll does it.
    let _ = Pin::new(wr).poll_shutdown(&mut Context::from_waker(Waker::noop()));
    if e.raw_os_error() == Some(libc::EFAULT) {
        // The kernel could not read lent data (`vdisk_engine::lend`) for
        // the socket: a disk error under a page not cached. Part of a
        // READ reply may be out already, so no error reply can follow.
        warn!(error = %e, "cannot read image data for a reply (disk error?); closing the connection");
    } else {
        debug!(error = %e, "cannot send replies; client gone");
    }
}

/// Writes `batch` without blocking: `Ok(true)` if all of it was written
/// (and finished), `Ok(false)` if the socket is full (`batch` keeps what is
/// left).
fn write_now<W: AsyncWrite + Unpin>(wr: &mut W, batch: &mut Vec<Reply>) -> io::Result<bool> {
    // Workers are not tasks: a write that would block registers this
    // no-op waker and returns Pending. The writer task, which takes over
    // then, registers its own before it waits.
    let mut cx = Context::from_waker(Waker::noop());
    let written = match poll_write_batch(wr, batch, &mut cx) {
        Poll::Ready(Ok(())) => Pin::new(wr).poll_flush(&mut cx),
        other => other,
    };
    match written {
        Poll::Ready(Ok(())) => Ok(true),
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Ok(false),
    }
}

async fn write_all<W: AsyncWrite + Unpin>(wr: &mut W, batch: &mut Vec<Reply>) -> io::Result<()> {
    poll_fn(|cx| poll_write_batch(wr, batch, cx)).await?;
    poll_fn(|cx| Pin::new(&mut *wr).poll_flush(cx)).await
}

/// Writes replies from the front of `batch`, several per call, finishing
/// each one written; `Ready(Ok)` once `batch` is empty.
fn poll_write_batch<W: AsyncWrite + Unpin>(
    wr: &mut W,
    batch: &mut Vec<Reply>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let mut done = 0;
    let max = if wr.is_write_vectored() {
        MAX_SLICES
    } else {
        1
    };
    let result = loop {
        while done < batch.len() && batch[done].is_sent() {
            done += 1;
        }
        if done == batch.len() {
            break Poll::Ready(Ok(()));
        }
        let mut slices: Vec<IoSlice<'_>> = Vec::new();
        for r in &batch[done..] {
            if !r.slices(&mut slices, max) {
                break;
            }
        }
        let written = if slices.len() == 1 {
            Pin::new(&mut *wr).poll_write(cx, &slices[0])
        } else {
            Pin::new(&mut *wr).poll_write_vectored(cx, &slices)
        };
        drop(slices);
        match written {
            Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(mut n)) => {
                while n > 0 && done < batch.len() {
                    n = batch[done].advance(n);
                    if batch[done].is_sent() {
                        done += 1;
                    }
                }
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            other => break other.map(|r| r.map(|_| ())),
        }
    };
    batch.drain(..done).for_each(Reply::finish);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A socket that records what it is sent and can be "full". Takes a
    /// few bytes per write, or (`vectored`) up to 100 000 bytes from
    /// several slices at once.
    #[derive(Clone, Default)]
    struct Socket {
        sent: Arc<Mutex<Vec<u8>>>,
        full: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        vectored: bool,
    }

    impl Socket {
        fn sent(&self) -> Vec<u8> {
            self.sent.lock().unwrap().clone()
        }

        fn drain(&self) {
            self.full.store(false, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full.load(Ordering::SeqCst) {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // A few bytes at a time: replies go out in pieces.
            let n = buf.len().min(3);
            self.sent.lock().unwrap().extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
                return self.poll_write(cx, first);
            }
            if self.full.load(Ordering::SeqCst) {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let mut left = 100_000;
            let mut sent = self.sent.lock().unwrap();
            for b in bufs {
                let n = b.len().min(left);
                sent.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(100_000 - left))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn reply(bytes: &[u8]) -> Reply {
        // Longer buffer than the reply: only `len` bytes go out.
        let mut buf = bytes.to_vec();
        buf.extend_from_slice(b"junk");
        Reply::new(buf, bytes.len(), None)
    }

    /// A sink on `socket` and its writer task, running.
    fn started<S: AsyncWrite + Unpin + Send + 'static>(
        socket: S,
    ) -> (Arc<Sink<S>>, tokio::task::JoinHandle<()>) {
        let sink = Arc::new(Sink::new(socket));
        let task = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
        (sink, task)
    }

    #[tokio::test]
    async fn a_held_back_reply_goes_out_with_the_last_one() {
        let socket = Socket::default();
        let (sink, task) = started(socket.clone());
        sink.expect(true);
        sink.expect(true);
        sink.expect(false);
        // Held back: a quick request is still to reply.
        sink.send(reply(b"one."), true, true);
        assert_eq!(socket.sent(), b"");
        // That one finishes, itself expecting more: nothing quick is left
        // to reply, so it sends both.
        sink.send(reply(b"two."), true, true);
        assert_eq!(socket.sent(), b"one.two.");
        sink.send(reply(b"three."), false, false);
        assert_eq!(socket.sent(), b"one.two.three.");
        sink.close();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn lent_pieces_follow_their_reply_in_order_through_a_full_socket() {
        for vectored in [false, true] {
            lent_pieces_in_order(Socket {
                vectored,
                ..Socket::default()
            })
            .await;
        }
    }

    async fn lent_pieces_in_order(socket: Socket) {
        let (sink, task) = started(socket.clone());
        // A run of zeros longer than the zero buffer, between copied bytes.
        let zeros = ZEROS.len() * 2 + 5;
        let tail = LentRead::detached(vec![
            Piece::Copied(b"data:".to_vec()),
            Piece::Zeros(zeros),
            Piece::Copied(b":end".to_vec()),
        ]);
        sink.expect(false);
        sink.expect(false);
        sink.expect(false);
        sink.send(reply(b"one."), false, false);
        socket.full.store(true, Ordering::SeqCst);
        sink.send(reply(b"hdr|").with_tail(Some(tail)), false, false);
        sink.send(reply(b"|two."), false, false);
        socket.drain();
        sink.close();
        task.await.unwrap();
        let mut want = b"one.hdr|data:".to_vec();
        want.resize(want.len() + zeros, 0);
        want.extend_from_slice(b":end|two.");
        assert!(socket.sent() == want, "replies interleaved or cut");
    }

    #[tokio::test]
    async fn lent_data_is_sent_by_the_writer_task() {
        let socket = Socket::default();
        let (sink, task) = started(socket.clone());
        sink.expect(false);
        sink.expect(false);
        let tail = LentRead::detached(vec![Piece::Copied(b"data".to_vec())]);
        sink.send(reply(b"hdr|").with_tail(Some(tail)), false, false);
        // Not written by the caller (this test's runtime has one thread:
        // the task has not run yet)...
        assert_eq!(socket.sent(), b"");
        // ...and a plain reply meanwhile queues behind it, in order.
        sink.send(reply(b"|next"), false, false);
        assert_eq!(socket.sent(), b"");
        sink.close();
        task.await.unwrap();
        assert_eq!(socket.sent(), b"hdr|data|next");
    }

    #[tokio::test]
    async fn a_full_socket_hands_over_to_the_writer_task() {
        let socket = Socket::default();
        let (sink, task) = started(socket.clone());
        socket.full.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            sink.expect(false);
        }
        sink.send(reply(b"one."), false, false);
        // Queued behind it while the writer task waits.
        sink.send(reply(b"two."), false, false);
        assert_eq!(socket.sent(), b"");
        sink.close();
        // Still one to come: the writer task may not end yet.
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        socket.drain();
        sink.send(reply(b"three."), false, false);
        task.await.unwrap();
        assert_eq!(socket.sent(), b"one.two.three.");
    }

    #[tokio::test]
    async fn after_a_write_error_replies_are_dropped_and_the_socket_shut() {
        /// Fails every write (EFAULT, as when lent data cannot be read);
        /// counts shutdowns.
        #[derive(Default, Clone)]
        struct Failing {
            shutdowns: Arc<std::sync::atomic::AtomicUsize>,
        }
        impl AsyncWrite for Failing {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::Error::from_raw_os_error(libc::EFAULT)))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                self.shutdowns.fetch_add(1, Ordering::SeqCst);
                Poll::Ready(Ok(()))
            }
        }
        let socket = Failing::default();
        let (sink, task) = started(socket.clone());
        for _ in 0..2 {
            sink.expect(false);
        }
        sink.send(reply(b"one."), false, false);
        // The client must not wait for replies that will never come.
        assert_eq!(socket.shutdowns.load(Ordering::SeqCst), 1);
        sink.send(reply(b"two."), false, false);
        sink.close();
        task.await.unwrap();
    }
}
