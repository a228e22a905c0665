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
        debug_assert!(len <= bytes.len());
        Self {
            bytes,
            len,
            sent: 0,
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
                closing: false,
            }),
            task: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<W>> {
        // Nothing panics while holding it; see `pool::lock`.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request was accepted: its reply will come through [`Sink::send`].
    pub(crate) fn expect(&self) {
        self.lock().outstanding += 1;
    }

    /// Sends the reply of a request counted by [`Sink::expect`]. Without
    /// `now`, only queues it: the caller promises that a request of this
    /// connection, already accepted, will send its own reply soon.
    pub(crate) fn send(&self, reply: Reply, now: bool) {
        self.push(reply, true, now);
    }

    /// Sends a reply not counted by [`Sink::expect`] (a refusal the reader
    /// answers itself).
    pub(crate) fn send_unexpected(&self, reply: Reply) {
        self.push(reply, false, true);
    }

    fn push(&self, reply: Reply, expected: bool, now: bool) {
        let mut st = self.lock();
        if expected {
            st.outstanding -= 1;
        }
        if (st.owner != Owner::Nobody || !now) && !st.broken {
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
        drop(st);

        // Write this reply, then whatever others queued meanwhile, until
        // nothing is left or the socket is full.
        let mut batch = vec![reply];
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
