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
use tracing::debug;

/// What a request holds until its reply is sent: one of `max_in_flight`
/// and its buffer's bytes out of `max_in_flight_bytes`.
pub(crate) type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// A complete reply: the first `len` bytes of a (reused) buffer.
pub(crate) struct Reply {
    bytes: Vec<u8>,
    len: usize,
    /// Bytes already written.
    sent: usize,
    _permits: Option<Permits>,
}

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
            _permits: permits,
        }
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.sent..self.len]
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
                    debug!(error = %e, "cannot send replies; client gone");
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
                debug!(error = %e, "cannot send replies; client gone");
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
    let result = loop {
        while done < batch.len() && batch[done].rest().is_empty() {
            done += 1;
        }
        if done == batch.len() {
            break Poll::Ready(Ok(()));
        }
        let pending = &batch[done..];
        let written = if pending.len() == 1 || !wr.is_write_vectored() {
            Pin::new(&mut *wr).poll_write(cx, pending[0].rest())
        } else {
            let slices: Vec<IoSlice<'_>> = pending
                .iter()
                .take(MAX_SLICES)
                .map(|r| IoSlice::new(r.rest()))
                .collect();
            Pin::new(&mut *wr).poll_write_vectored(cx, &slices)
        };
        match written {
            Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(mut n)) => {
                while n > 0 {
                    let r = &mut batch[done];
                    let take = n.min(r.len - r.sent);
                    r.sent += take;
                    n -= take;
                    if r.sent == r.len {
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

    /// A socket that records what it is sent and can be "full".
    #[derive(Clone, Default)]
    struct Socket {
        sent: Arc<Mutex<Vec<u8>>>,
        full: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
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

    #[tokio::test]
    async fn a_held_back_reply_goes_out_with_the_last_one() {
        let socket = Socket::default();
        let sink = Arc::new(Sink::new(socket.clone()));
        let task = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
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
    async fn a_full_socket_hands_over_to_the_writer_task() {
        let socket = Socket::default();
        let sink = Arc::new(Sink::new(socket.clone()));
        let task = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
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
    async fn after_a_write_error_replies_are_dropped() {
        #[derive(Default)]
        struct Gone;
        impl AsyncWrite for Gone {
            fn poll_write(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &[u8],
            ) -> Poll<io::Result<usize>> {
                Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let sink = Arc::new(Sink::new(Gone));
        let task = tokio::spawn({
            let sink = sink.clone();
            async move { sink.run().await }
        });
        for _ in 0..2 {
            sink.expect(false);
        }
        sink.send(reply(b"one."), false, false);
        sink.send(reply(b"two."), false, false);
        sink.close();
        task.await.unwrap();
    }
}
