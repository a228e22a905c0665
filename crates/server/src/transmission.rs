//! The transmission phase of one connection.
//!
//! ```text
//!  socket ─► the connection's thread whose turn it is (blocking recv):
//!                │   parses every request its buffer holds; validates,
//!                │   takes permits, receives WRITE payloads
//!                ├─► quick (`Inline`): it runs it itself
//!                ├─► a large WRITE: it passes the turn on to another of the
//!                │   connection's threads, then copies the payload it just
//!                │   received and replies
//!                ▼ pool::workers(): one queue, engine threads shared by all connections
//!            worker: engine call → complete reply, built in a reused buffer
//!                │
//!                ▼ sink: the worker writes the reply itself, without blocking
//!  socket ◄──────┘       (the writer task takes over only while the socket is full)
//! ```
//!
//! **Threads.** A connection has its own threads (`vdisk-conn`), which take
//! turns on the socket as nbdkit's do: the one whose turn it is receives
//! requests; when it has received a large WRITE's payload it gives the turn
//! to the next thread (started if none waits, up to [`copiers::COPIERS`]
//! per connection and [`copiers::Budget`] for the process) and copies the
//! payload to the page cache itself, from its own CPU's cache. That cut the
//! server's CPU per MiB written by about 15 % against a reader that handed
//! payloads to copy threads (BENCHMARKS.md). Extra threads end after
//! [`IDLE_EXIT`] without a turn; the first lives as long as the connection.
//! At shutdown the socket is shut for reading, which wakes the thread
//! waiting in `recv`.
//!
//! **Writes in place.** Before that, a large WRITE is offered to the
//! engine to receive straight into the page cache
//! ([`Image::write_in_place`]): the thread whose turn it is waits until
//! the whole payload is in the socket, lets the engine's `recv` copy it
//! into the object's pages (one copy instead of two), replies and reads
//! on, keeping its turn. Declined (not in the page cache, holes, a Unix
//! socket that does not hold the payload yet...), the WRITE goes the way
//! above. See `ConnThreads::write_in_place` and ARCHITECTURE.md, "Writes
//! in place".
//!
//! Every reply is built whole before it is sent, so replies of different
//! requests never interleave on the wire and a READ that fails half-way
//! sends an error, never part of its data. (A large READ's data is lent
//! by the engine and read by the kernel as it is sent, see [`LEND_MIN`];
//! should that read fail, a disk error under an uncached page, the
//! connection is closed instead.) A request's permits (one of
//! `max_in_flight`, and its buffer's bytes out of `max_in_flight_bytes`)
//! travel with its reply and are released once the reply is written: a
//! client that does not read its replies stops being read from, instead of
//! making the server buffer without bound — and since workers never wait
//! for a socket, it holds up nobody else.

mod copiers;
mod pool;
mod sink;
mod socket;

use crate::exports::errno_of;
use crate::registry::{ConnHandle, CountingWriter, Op};
use crate::Limits;
use pool::{aligned_offset, buffers, ensure_len, put_front, DATA_ALIGN};
use sink::{Permits, Reply, Sink};
pub(crate) use socket::Socket;
use socket::SocketWriter;
use std::io;
use std::net::Shutdown;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::sync::{oneshot, watch, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn, Instrument, Span};
use vdisk_engine::lend::LentRead;
use vdisk_engine::Image;
use vdisk_nbd::consts::{CONTEXT_BASE_ALLOCATION, REQUEST_HEADER_LEN, STATE_HOLE, STATE_ZERO};
use vdisk_nbd::reply::{
    offset_data_header, simple_reply_header, write_block_status, write_error, write_none_done,
    write_offset_hole, OFFSET_DATA_HEADER_LEN,
};
use vdisk_nbd::{
    BlockDescriptor, Command, CommandFlags, EncodeError, Errno, ExportContext, Negotiated,
    RequestHeader,
};

/// Largest range one BLOCK_STATUS request describes. Clients ask again
/// from where the answer stopped (the spec allows a shorter answer), and
/// this bounds the metadata one request walks.
const BLOCK_STATUS_SPAN: u64 = 1 << 30;

/// READ data of at least this many bytes in one chunk is lent by the
/// engine ([`Image::read_lent`]: a mapping of the page cache) instead of
/// read into the reply buffer, so the kernel copies it once, straight to
/// the socket, instead of twice. Below this, mapping and unmapping cost
/// about what the copy saves.
const LEND_MIN: usize = 256 * 1024;

/// READs shorter than this are sent as data without asking the engine
/// where the holes are: for small random reads the metadata walk costs
/// more than the zeros it would save on the wire.
const HOLE_DETECTION_MIN: u64 = 64 * 1024;

/// Most descriptors in one BLOCK_STATUS reply (512 KiB of reply); the
/// spec allows fewer extents than the range needs.
const MAX_DESCRIPTORS: usize = 1 << 16;

/// Most requests parsed before they are queued for the workers.
const SUBMIT_BATCH: usize = 32;

/// READs and WRITEs up to this long are quick (see `pool::Job`).
const QUICK_MAX: u32 = 64 * 1024;

/// WRITEs longer than quick ones and up to this long are copied by the
/// connection thread that received them, after it passed its turn on
/// (see the module doc, "Threads").
const INLINE_WRITE_MAX: u32 = 4 << 20;

/// The reader's buffer: requests that arrive together are parsed from it
/// without further reads; WRITE payloads at least half its size are read
/// straight into their own buffer.
const INPUT_BUFFER: usize = 128 * 1024;

/// The server's I/O threads now, for `/metrics`.
#[derive(Debug)]
pub(crate) struct Threads {
    /// Engine workers alive (`pool`), and their most.
    pub engine: usize,
    pub engine_max: usize,
    /// Connection threads beyond each connection's first, all connections
    /// together (`copiers`), and their most.
    pub copy: usize,
    pub copy_max: usize,
}

pub(crate) fn threads() -> Threads {
    let (engine, engine_max) = pool::workers().threads();
    let budget = copiers::budget();
    Threads {
        engine,
        engine_max,
        copy: budget.live(),
        copy_max: budget.max(),
    }
}

/// How a connection's transmission phase ended.
#[derive(Debug)]
pub(crate) enum End {
    /// `NBD_CMD_DISC`.
    Disconnect,
    /// The client closed the connection (or reset it).
    ClientGone,
    /// The client broke the protocol; the connection was dropped.
    Violation(String),
    /// The server is shutting down.
    Shutdown,
    /// Reading from the socket failed.
    Io(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Disconnect => f.write_str("client disconnected"),
            End::ClientGone => f.write_str("client closed the connection"),
            End::Violation(why) => write!(f, "protocol violation: {why}"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Io(e) => write!(f, "read error: {e}"),
        }
    }
}

impl End {
    fn from_read(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => End::ClientGone,
            _ => End::Io(e),
        }
    }

    /// How a payload's reading ended: a stopping server shuts the socket
    /// for reading, which a payload cut short sees as an early end of the
    /// stream, not as the client's doing.
    fn from_payload_read(e: io::Error, stop: &watch::Receiver<bool>) -> Self {
        if *stop.borrow() {
            End::Shutdown
        } else {
            End::from_read(e)
        }
    }
}

/// What a connection did, for the log line that closes it.
#[derive(Debug)]
pub(crate) struct Summary {
    pub end: End,
    pub requests: u64,
    pub failed: u64,
}

/// What every request of the connection needs.
#[derive(Debug)]
struct Session {
    image: Image,
    /// Export name as the client gave it (for logs).
    export: String,
    structured: bool,
    /// Id of `base:allocation` if the client selected it.
    allocation_id: Option<u32>,
    ctx: ExportContext,
    requests: AtomicU64,
    failed: AtomicU64,
    /// Per-request metrics (`vdisk status`, `/metrics`).
    conn: ConnHandle,
    /// The connection's span, entered by the workers for their logs.
    span: Span,
}

impl Session {
    /// Records a request's reply in the connection's metrics. Bytes are
    /// the request's length for the commands that move or change data.
    fn record(&self, req: &RequestHeader, received: Instant, ok: bool) {
        let bytes = match req.command {
            Command::Read | Command::Write | Command::WriteZeroes | Command::Trim => {
                u64::from(req.length)
            }
            _ => 0,
        };
        self.conn
            .record(Op::from(req.command), bytes, received.elapsed(), ok);
    }
}

/// Aborts a task when dropped: the writer must not outlive its connection
/// (it could be stuck writing to a client that stopped reading).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Closes the socket when the connection's future is dropped before it
/// finished (the drain timeout at shutdown): requests still queued or
/// running finish, but their replies go nowhere.
struct AbandonOnDrop<W: AsyncWrite + Unpin + Send + 'static>(Arc<Sink<W>>);

impl<W: AsyncWrite + Unpin + Send + 'static> Drop for AbandonOnDrop<W> {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

/// Serves requests until the client disconnects, breaks the protocol, or
/// `stop` turns true; then lets the requests already started finish, sends
/// their replies and flushes the image.
pub(crate) async fn serve(
    socket: Socket,
    leftover: Vec<u8>,
    negotiated: &Negotiated,
    image: Image,
    limits: &Limits,
    conn: ConnHandle,
    stop: watch::Receiver<bool>,
) -> Summary {
    let mut ctx = ExportContext::from_negotiated(negotiated);
    if !negotiated.block_size_requested {
        // Only a client that asked for block sizes promised to respect
        // them; the engine serves any alignment, so serve the others too.
        ctx.min_block_size = 1;
    }
    ctx.max_payload = ctx.max_payload.min(limits.max_payload);
    let session = Arc::new(Session {
        image,
        export: negotiated.export.clone(),
        structured: negotiated.structured_replies,
        allocation_id: negotiated
            .meta_contexts
            .iter()
            .find(|c| c.name == CONTEXT_BASE_ALLOCATION)
            .map(|c| c.id),
        ctx,
        requests: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        conn: conn.clone(),
        span: Span::current(),
    });
    let summary = |end| Summary {
        end,
        requests: session.requests.load(Ordering::Relaxed),
        failed: session.failed.load(Ordering::Relaxed),
    };
    let handles = socket
        .try_clone()
        .and_then(|w| Ok((SocketWriter::new(w)?, socket.try_clone()?)));
    let (wr, waker) = match handles {
        Ok(handles) => handles,
        Err(e) => return summary(End::Io(e)),
    };
    let sink = Arc::new(Sink::new(CountingWriter::new(wr, conn.clone())));
    let writer = AbortOnDrop(tokio::spawn({
        let sink = sink.clone();
        async move { sink.run().await }.instrument(Span::current())
    }));
    let abandon = AbandonOnDrop(sink.clone());
    // A thread waiting in `recv` is woken by shutting the socket for
    // reading (it then sees `stop`); the sink's side stays open for the
    // replies still to come.
    let _waker = AbortOnDrop(tokio::spawn({
        let mut stop = stop.clone();
        async move {
            // Also fires if the server dropped its end: stop either way.
            let _ = stop.wait_for(|stopping| *stopping).await;
            let _ = waker.shutdown(Shutdown::Read);
        }
    }));
    let (ended_tx, ended) = oneshot::channel();
    let threads = Arc::new(ConnThreads {
        session: session.clone(),
        sink: sink.clone(),
        slots: Arc::new(Semaphore::new(limits.max_in_flight)),
        budget: Arc::new(Semaphore::new(limits.max_in_flight_bytes)),
        runtime: tokio::runtime::Handle::current(),
        turn: Mutex::new(Turn {
            reader: Some(Reader {
                input: Input::new(Received { socket, conn }, leftover),
                parsed: Vec::new(),
                inline: Inline::new(limits.inline, session.image.clone()),
                stop,
            }),
            waiting: 0,
            threads: 1,
            ended: Some(ended_tx),
        }),
        turn_cv: Condvar::new(),
    });
    let end = match threads.start(None) {
        Ok(()) => ended.await.unwrap_or_else(|_| {
            End::Violation("internal error: the connection's threads ended without a word".into())
        }),
        Err(e) => End::Io(e),
    };

    // Requests already started complete and their replies are sent: the
    // writer ends once the last one is.
    sink.close();
    let mut writer = writer;
    let _ = (&mut writer.0).await;
    drop(abandon);
    let image = session.image.clone();
    match tokio::task::spawn_blocking(move || image.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(export = %session.export, error = %e, "flush at disconnect failed"),
        Err(e) => error!(export = %session.export, error = %e, "flush at disconnect panicked"),
    }
    summary(end)
}

/// The sink's writer: the socket's sending side, counting bytes.
type Writer = CountingWriter<SocketWriter>;

/// A connection's threads (see the module doc, "ConnThreads").
struct ConnThreads {
    session: Arc<Session>,
    sink: Arc<Sink<Writer>>,
    /// Request permits: one of `max_in_flight` each, and its buffer's
    /// bytes out of `max_in_flight_bytes`.
    slots: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    /// To wait for permits from a thread that is not the runtime's.
    runtime: tokio::runtime::Handle,
    turn: Mutex<Turn>,
    /// Signalled when the turn is given back, and when the reading ends.
    turn_cv: Condvar,
}

/// Whose turn it is on the socket.
struct Turn {
    /// The socket's reading side; `None` while a thread has it.
    reader: Option<Reader>,
    /// ConnThreads waiting for their turn.
    waiting: usize,
    /// The connection's threads alive.
    threads: usize,
    /// Taken when the reading ends, to tell `serve` how.
    ended: Option<oneshot::Sender<End>>,
}

/// What the thread whose turn it is works with.
struct Reader {
    input: Input<Received>,
    /// Requests parsed from what one receive brought in are queued for the
    /// workers together (one lock, at most one wake-up), before anything
    /// that may wait: their permits must not be held by requests not
    /// queued yet.
    parsed: Vec<pool::Job>,
    inline: Inline,
    stop: watch::Receiver<bool>,
}

/// What a turn on the socket ends with.
enum Next {
    /// A large WRITE, received: the thread runs it once it gave the turn on.
    Write(Accepted),
    /// The connection's reading is over.
    End(End),
}

/// A connection thread without a turn for this long ends (not the first:
/// it lives as long as the connection), giving its place in the budget
/// back.
const IDLE_EXIT: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ConnThreads {
    /// Starts a thread; `place` is its place in the process's budget
    /// (`None` for the connection's first).
    fn start(self: &Arc<Self>, place: Option<copiers::Place>) -> io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("vdisk-conn".into())
            .spawn(move || me.work(place))
            .map(drop)
    }

    fn work(self: Arc<Self>, place: Option<copiers::Place>) {
        let _span = self.session.span.clone().entered();
        let _exit = Exit(&self);
        // The buffer this thread receives large payloads into: reused, so
        // it stays in this thread's CPU cache.
        let mut own = Vec::new();
        while let Some(mut reader) = self.take_turn(place.is_some()) {
            match self.read_requests(&mut reader, &mut own) {
                Next::Write(job) => {
                    self.give_turn(reader);
                    own = run(&self.session, &self.sink, job, false);
                }
                Next::End(end) => {
                    reader.inline.dispatch(&mut reader.parsed);
                    drop(reader);
                    self.end(end);
                    return;
                }
            }
        }
    }

    /// Waits for the turn; `None` once the reading is over, or, with
    /// `may_leave`, after [`IDLE_EXIT`] without a turn.
    fn take_turn(&self, may_leave: bool) -> Option<Reader> {
        let mut turn = lock(&self.turn);
        loop {
            // `ended` is taken when the reading is over.
            turn.ended.as_ref()?;
            if let Some(reader) = turn.reader.take() {
                return Some(reader);
            }
            turn.waiting += 1;
            let (t, waited) = self
                .turn_cv
                .wait_timeout(turn, IDLE_EXIT)
                .unwrap_or_else(PoisonError::into_inner);
            turn = t;
            turn.waiting -= 1;
            if may_leave && waited.timed_out() && turn.reader.is_none() {
                return None;
            }
        }
    }

    /// Gives the turn to a waiting thread, or to a new one if the
    /// connection and the process may have one more.
    fn give_turn(self: &Arc<Self>, reader: Reader) {
        let place = {
            let mut turn = lock(&self.turn);
            turn.reader = Some(reader);
            if turn.waiting > 0 {
                self.turn_cv.notify_one();
                None
            } else if turn.threads < copiers::COPIERS {
                let place = copiers::budget().place();
                turn.threads += usize::from(place.is_some());
                place
            } else {
                None
            }
        };
        if let Some(place) = place {
            if let Err(e) = self.start(Some(place)) {
                // This thread takes its turn again after its write.
                debug!(error = %e, "could not start a connection thread");
                lock(&self.turn).threads -= 1;
            }
        }
    }

    /// The reading is over: tells `serve`, and the waiting threads.
    fn end(&self, end: End) {
        let mut turn = lock(&self.turn);
        if let Some(ended) = turn.ended.take() {
            let _ = ended.send(end);
        }
        self.turn_cv.notify_all();
    }

    /// Takes requests off the socket until a large WRITE's payload is in
    /// (received into `own`) or the reading ends.
    fn read_requests(&self, r: &mut Reader, own: &mut Vec<u8>) -> Next {
        let session = &self.session;
        loop {
            if r.input.buffered() < REQUEST_HEADER_LEN || r.parsed.len() >= SUBMIT_BATCH {
                r.inline.dispatch(&mut r.parsed);
            }
            let header = match r.input.header(&r.stop) {
                Ok(header) => header,
                Err(end) => return Next::End(end),
            };
            let req = match RequestHeader::parse(&header) {
                Ok(req) => req,
                Err(e) => return Next::End(End::Violation(e.to_string())),
            };
            if req.command == Command::Disconnect {
                return Next::End(End::Disconnect);
            }
            if let Err(e) = req.check_payload(session.ctx.disconnect_limit()) {
                return Next::End(End::Violation(e.to_string()));
            }
            let received = Instant::now();
            session.requests.fetch_add(1, Ordering::Relaxed);
            if let Err(errno) = req.validate(&session.ctx) {
                session
                    .conn
                    .record(Op::from(req.command), 0, received.elapsed(), false);
                session.failed.fetch_add(1, Ordering::Relaxed);
                debug!(command = ?req.command, offset = req.offset, length = req.length, %errno, "request refused");
                // The payload of a refused WRITE is on the wire all the same.
                if r.input.buffered() < req.payload_len() as usize {
                    r.inline.dispatch(&mut r.parsed);
                }
                if let Err(e) = r.input.discard(req.payload_len()) {
                    return Next::End(End::from_payload_read(e, &r.stop));
                }
                let mut out = buffers().take(64);
                let len = refusal(session, &req, errno, &mut out);
                self.sink.send_unexpected(Reply::new(out, len, None));
                continue;
            }
            // Permits before the payload: the payload is what they bound.
            let buffer = match req.command {
                Command::Read | Command::Write => req.length,
                _ => 0,
            };
            let permits = match try_acquire(&self.slots, &self.budget, buffer) {
                Ok(Some(permits)) => permits,
                Ok(None) => {
                    r.inline.dispatch(&mut r.parsed);
                    let waited = self.runtime.block_on(acquire(
                        &self.slots,
                        &self.budget,
                        buffer,
                        &mut r.stop,
                    ));
                    match waited {
                        Ok(permits) => permits,
                        Err(end) => return Next::End(end),
                    }
                }
                Err(end) => return Next::End(end),
            };
            let quick = is_quick(&req);
            let may_inline = may_run_inline(&req);
            let ours =
                req.command == Command::Write && may_inline && !quick && r.inline.runs_here();
            let mut permits = permits;
            if ours {
                match self.write_in_place(r, &req, permits, received) {
                    InPlace::Declined(p) => permits = p,
                    InPlace::Done => continue,
                    InPlace::End(end) => return Next::End(end),
                }
            }
            let (mut payload, mut payload_at) = (Vec::new(), 0);
            if req.command == Command::Write {
                if ours || r.input.buffered() < req.length as usize {
                    r.inline.dispatch(&mut r.parsed);
                }
                // At an aligned address: it is copied to the page cache.
                let len = req.length as usize;
                payload = if ours {
                    let mut b = std::mem::take(own);
                    ensure_len(&mut b, DATA_ALIGN + len);
                    b
                } else {
                    buffers().get(DATA_ALIGN + len)
                };
                payload_at = aligned_offset(&payload, 0);
                let into = &mut payload[payload_at..payload_at + len];
                if let Err(e) = r.input.read_exact(into) {
                    buffers().put(payload);
                    return Next::End(End::from_payload_read(e, &r.stop));
                }
            }
            self.sink.expect(quick);
            let job = Accepted {
                req,
                payload,
                payload_at,
                permits,
                received,
                quick,
            };
            if ours {
                return Next::Write(job);
            }
            let (session, sink) = (session.clone(), self.sink.clone());
            r.parsed.push(pool::Job {
                key: Arc::as_ptr(&sink) as *const () as usize,
                bytes: buffer,
                quick,
                may_inline,
                run: Box::new(move |more| buffers().put(run(&session, &sink, job, more))),
            });
        }
    }
}

impl ConnThreads {
    /// Runs and answers a large WRITE whose payload the engine receives
    /// straight into the page cache ([`Image::write_in_place`]): one copy
    /// of the data instead of two (into the buffer, from it to the page
    /// cache). Only when all of the payload is in the socket already, so
    /// the receive never waits for the client while the engine holds the
    /// object (a client that stops half-way through a payload holds up
    /// nobody's snapshot), and none of it was buffered (the buffer would
    /// have to be copied into the page cache by us, in user space, where a
    /// full disk is `SIGBUS`). The thread keeps its turn throughout: the
    /// socket is what it works on.
    fn write_in_place(
        &self,
        r: &mut Reader,
        req: &RequestHeader,
        permits: Permits,
        received: Instant,
    ) -> InPlace {
        let session = &self.session;
        let len = req.length as usize;
        if session.image.barrier_pending() || r.input.buffered() != 0 {
            return InPlace::Declined(permits);
        }
        // Before anything that may wait (see `Reader::parsed`).
        r.inline.dispatch(&mut r.parsed);
        if !r.input.ready_direct(len) || session.image.barrier_pending() {
            return InPlace::Declined(permits);
        }
        let mut consumed = 0usize;
        let mut gone = None;
        let input = &mut r.input;
        let mut src = |buf: &mut [u8]| match input.recv_direct(buf) {
            Ok(n) => {
                consumed += n;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                gone = Some(e);
                Err(io::Error::from(kind))
            }
        };
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            session.image.write_in_place(req.offset, len, &mut src)
        }));
        let Ok(result) = result else {
            // What was received of the payload is unknown: the connection
            // cannot go on.
            error!(export = %session.export, offset = req.offset, "request panicked");
            return InPlace::End(End::Violation("internal error: a write panicked".into()));
        };
        if let Some(e) = gone {
            return InPlace::End(End::from_payload_read(e, &r.stop));
        }
        let (out, built) = match result {
            Ok(false) => return InPlace::Declined(permits),
            Ok(true) => {
                session.conn.wrote_in_place();
                let mut out = buffers().take(64);
                let len = put_front(&mut out, &simple_reply_header(req.cookie, None));
                (out, Built::ok(len))
            }
            Err(e) => {
                // The rest of the payload is on the wire all the same.
                if let Err(e) = r.input.discard((len - consumed.min(len)) as u32) {
                    return InPlace::End(End::from_payload_read(e, &r.stop));
                }
                let mut out = buffers().take(64);
                let built = Built::failed(engine_failure(session, req, &e, &mut out));
                (out, built)
            }
        };
        session.record(req, received, built.ok);
        self.sink.expect(false);
        self.sink.send(
            Reply::at(out, built.start..built.end, Some(permits)),
            false,
            false,
        );
        InPlace::Done
    }
}

/// How [`ConnThreads::write_in_place`] went.
enum InPlace {
    /// Not done, nothing received: the usual way, with these permits.
    Declined(Permits),
    /// Done and answered.
    Done,
    /// The reading is over.
    End(End),
}

/// Counts a connection thread out when it ends, however it ends: a thread
/// that panicked with the turn ends the connection (its socket is in an
/// unknown state) rather than leave it unread.
struct Exit<'a>(&'a ConnThreads);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            error!("a connection thread panicked; closing the connection");
            self.0.end(End::Violation(
                "internal error: a connection thread panicked".into(),
            ));
        }
        lock(&self.0.turn).threads -= 1;
    }
}

/// A small READ or WRITE (see `pool::Job::quick`).
fn is_quick(req: &RequestHeader) -> bool {
    matches!(req.command, Command::Read | Command::Write) && req.length <= QUICK_MAX
}

/// Whether `req` may run off the pool (see [`Inline`]): quick ones on the
/// reader, WRITEs up to [`INLINE_WRITE_MAX`] on the connection's copy
/// threads; never a FUA write, which ends with a flush. Larger READs stay
/// on the pool (not measured elsewhere).
fn may_run_inline(req: &RequestHeader) -> bool {
    !req.flags.contains(CommandFlags::FUA)
        && (is_quick(req) || (req.command == Command::Write && req.length <= INLINE_WRITE_MAX))
}

/// Runs a connection's quick requests on its reader's own thread, as
/// nbdkit's threads do, instead of handing each to a pool worker: for a
/// cached 4 KiB read the hand-off (a queue push, often a wake-up, a
/// context switch) cost as much as the engine call. Requests that may
/// wait for a disk go to the pool, so one slow request does not hold up
/// the connection's others; a request run here that turned out slow (a
/// cache miss, dirty-page throttling) sends the connection's next
/// [`INLINE_BACKOFF`] requests to the pool before it tries again.
///
/// Large WRITEs (up to [`INLINE_WRITE_MAX`], not FUA) do not come here
/// while [`Inline::runs_here`]: the thread that received one runs it after
/// passing its turn on (see the module doc, "Threads"). Otherwise they go
/// to the pool.
struct Inline {
    enabled: bool,
    image: Image,
    /// Requests still to send to the pool after a slow one ran here.
    backoff: u32,
    /// Reused: the jobs of one dispatch to run here, and for the pool.
    here: Vec<pool::Job>,
    queued: Vec<pool::Job>,
}

/// A request run on the reader's thread that took this long was not
/// served from the page cache.
const INLINE_SLOW: Duration = Duration::from_micros(200);

/// Requests sent to the pool after one run here was slow.
const INLINE_BACKOFF: u32 = 256;

impl Inline {
    fn new(enabled: bool, image: Image) -> Self {
        Self {
            enabled,
            image,
            backoff: 0,
            here: Vec::new(),
            queued: Vec::new(),
        }
    }

    /// Whether requests may run off the pool now. Not while a snapshot or
    /// resize holds (or waits for) the image's I/O: the connection would
    /// stop reading while it waits, its flushes and reads included.
    fn runs_here(&self) -> bool {
        self.enabled && !self.image.barrier_pending()
    }

    /// Runs or queues `jobs` (leaving the vector empty). The pool's share
    /// is queued first, so it starts while the reader runs the rest.
    fn dispatch(&mut self, jobs: &mut Vec<pool::Job>) {
        if !self.runs_here() {
            pool::workers().submit(jobs);
            return;
        }
        for job in jobs.drain(..) {
            if job.may_inline && job.quick && self.backoff == 0 {
                self.here.push(job);
            } else {
                self.backoff = self
                    .backoff
                    .saturating_sub(u32::from(job.may_inline && job.quick));
                self.queued.push(job);
            }
        }
        pool::workers().submit(&mut self.queued);
        let mut here = std::mem::take(&mut self.here);
        let mut jobs = here.drain(..).peekable();
        while let Some(job) = jobs.next() {
            if self.backoff > 0 {
                // One before it was slow: the rest go to the pool.
                self.backoff -= 1;
                self.queued.push(job);
                continue;
            }
            // Its reply may wait for the next one's, which runs right
            // after it (here, or on the pool if this one is slow).
            let more = jobs.peek().is_some();
            let start = Instant::now();
            job.run_caught(more);
            if start.elapsed() >= INLINE_SLOW {
                self.backoff = INLINE_BACKOFF;
            }
        }
        drop(jobs);
        self.here = here;
        pool::workers().submit(&mut self.queued);
    }
}

/// Takes a request's permits if they are free (the common case).
fn try_acquire(
    slots: &Arc<Semaphore>,
    budget: &Arc<Semaphore>,
    bytes: u32,
) -> Result<Option<Permits>, End> {
    let closed = || End::Violation("internal error: request permits closed".into());
    let slot = match slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(TryAcquireError::Closed) => return Err(closed()),
        Err(TryAcquireError::NoPermits) => return Ok(None),
    };
    match budget.clone().try_acquire_many_owned(bytes) {
        Ok(p) => Ok(Some((slot, p))),
        Err(TryAcquireError::Closed) => Err(closed()),
        Err(TryAcquireError::NoPermits) => Ok(None),
    }
}

/// Takes a request's permits, waiting until replies are sent (releasing
/// theirs) or the server stops.
async fn acquire(
    slots: &Arc<Semaphore>,
    budget: &Arc<Semaphore>,
    bytes: u32,
    stop: &mut watch::Receiver<bool>,
) -> Result<Permits, End> {
    let closed = || End::Violation("internal error: request permits closed".into());
    let slot = match slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(TryAcquireError::Closed) => return Err(closed()),
        Err(TryAcquireError::NoPermits) => tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return Err(End::Shutdown),
            p = slots.clone().acquire_owned() => p.map_err(|_| closed())?,
        },
    };
    let bytes = match budget.clone().try_acquire_many_owned(bytes) {
        Ok(p) => p,
        Err(TryAcquireError::Closed) => return Err(closed()),
        Err(TryAcquireError::NoPermits) => tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => return Err(End::Shutdown),
            p = budget.clone().acquire_many_owned(bytes) => p.map_err(|_| closed())?,
        },
    };
    Ok((slot, bytes))
}

/// A worker runs one request and sends its reply (or, with `more`, leaves
/// it for the next request's to take along); hands back the request's
/// payload buffer.
fn run<W: AsyncWrite + Unpin + Send + 'static>(
    session: &Session,
    sink: &Sink<W>,
    job: Accepted,
    more: bool,
) -> Vec<u8> {
    let Accepted {
        ref req,
        payload,
        payload_at,
        permits,
        received,
        quick,
    } = job;
    let _entered = session.span.enter();
    let mut out = buffers().take(reply_size(req));
    let data = if req.command == Command::Write {
        &payload[payload_at..payload_at + req.length as usize]
    } else {
        &[]
    };
    let built = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        execute(session, req, data, &mut out)
    })) {
        Ok(built) => built,
        Err(_) => {
            // An engine bug must not leave the client waiting for a reply
            // that never comes.
            error!(export = %session.export, command = ?req.command, offset = req.offset, "request panicked");
            session.failed.fetch_add(1, Ordering::Relaxed);
            Built::failed(failure(session, req, Errno::Io, "internal error", &mut out))
        }
    };
    session.record(req, received, built.ok);
    sink.send(
        Reply::at(out, built.start..built.end, Some(permits)).with_tail(built.tail),
        quick,
        more,
    );
    payload
}

/// A request the reader accepted, for a worker to run.
struct Accepted {
    req: RequestHeader,
    /// A WRITE's data (empty for other commands) is
    /// `payload[payload_at..][..length]`.
    payload: Vec<u8>,
    payload_at: usize,
    permits: Permits,
    /// When its header was read off the socket.
    received: Instant,
    /// A small READ or WRITE (see `pool::Job`).
    quick: bool,
}

/// About how long the reply to `req` is (to pick a spare buffer).
fn reply_size(req: &RequestHeader) -> usize {
    match req.command {
        Command::Read => OFFSET_DATA_HEADER_LEN + req.length as usize,
        _ => 64,
    }
}

/// Where [`Input`] receives from.
trait Recv {
    /// Receives into `buf`: waits for at least one byte (for all of `buf`
    /// with `all`); 0 at the end of the stream.
    fn recv(&mut self, buf: &mut [u8], all: bool) -> io::Result<usize>;

    /// Bytes that a receive would get without waiting.
    fn queued(&self) -> io::Result<usize>;

    /// Waits until `len` bytes are queued, or as many as can be (see
    /// [`Socket::wait_queued`]).
    fn wait_queued(&mut self, len: usize) -> io::Result<()>;
}

/// The connection's socket, counting the bytes received.
struct Received {
    socket: Socket,
    conn: ConnHandle,
}

impl Recv for Received {
    fn recv(&mut self, buf: &mut [u8], all: bool) -> io::Result<usize> {
        let n = self.socket.recv(buf, all)?;
        self.conn.received(n);
        Ok(n)
    }

    fn queued(&self) -> io::Result<usize> {
        let n = rustix::io::ioctl_fionread(&self.socket)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn wait_queued(&mut self, len: usize) -> io::Result<()> {
        self.socket.wait_queued(len)
    }
}

/// The reader's side of the socket: a buffer that requests arriving
/// together are parsed from without further receives.
struct Input<R> {
    rd: R,
    buf: Vec<u8>,
    /// `buf[start..end]` is read and not consumed yet.
    start: usize,
    end: usize,
    /// The last payload was read straight into its own buffer: read only
    /// the next header, not the start of the next payload too.
    after_large: bool,
}

impl<R: Recv> Input<R> {
    /// Starts with what the handshake read past its end.
    fn new(rd: R, leftover: Vec<u8>) -> Self {
        let end = leftover.len();
        let mut buf = leftover;
        buf.resize(end.max(INPUT_BUFFER), 0);
        Self {
            rd,
            buf,
            start: 0,
            end,
            after_large: false,
        }
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Receives into the free end of the buffer, moving what is buffered
    /// to the front first if less than `room` bytes are free. Right after
    /// a large payload, receives only up to the end of the next header
    /// (see [`Input::read_exact`]).
    fn fill(&mut self, room: usize) -> io::Result<usize> {
        let limit = if std::mem::take(&mut self.after_large) {
            REQUEST_HEADER_LEN.saturating_sub(self.buffered()).max(1)
        } else {
            usize::MAX
        };
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < room {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let to = self.buf.len().min(self.end.saturating_add(limit));
        self.rd.recv(&mut self.buf[self.end..to], false)
    }

    /// The next request header. Waits for it unless the server stops
    /// (which shuts the socket for reading to end the wait).
    fn header(&mut self, stop: &watch::Receiver<bool>) -> Result<[u8; REQUEST_HEADER_LEN], End> {
        let stopping = || *stop.borrow();
        if stopping() {
            return Err(End::Shutdown);
        }
        while self.buffered() < REQUEST_HEADER_LEN {
            match self.fill(REQUEST_HEADER_LEN) {
                Ok(0) | Err(_) if stopping() => return Err(End::Shutdown),
                Ok(0) => return Err(End::ClientGone),
                Ok(n) => self.end += n,
                Err(e) => return Err(End::from_read(e)),
            }
        }
        let mut header = [0u8; REQUEST_HEADER_LEN];
        header.copy_from_slice(&self.buf[self.start..self.start + REQUEST_HEADER_LEN]);
        self.start += REQUEST_HEADER_LEN;
        Ok(header)
    }

    /// Whether the next `len` bytes (none of them buffered here) can be
    /// received straight into a payload's destination by
    /// [`Input::recv_direct`] without waiting: all of them are in the
    /// socket, after waiting for them to come in (as a receive of them
    /// would).
    fn ready_direct(&mut self, len: usize) -> bool {
        debug_assert_eq!(self.buffered(), 0);
        let queued = |rd: &R| rd.queued().is_ok_and(|q| q >= len);
        queued(&self.rd) || (self.rd.wait_queued(len).is_ok() && queued(&self.rd))
    }

    /// Receives `out` (a WRITE payload, nothing of it buffered) straight
    /// from the socket. Fewer bytes than `out` holds only when the kernel
    /// could not write to `out` (`EFAULT`: a page of a file mapping without
    /// space behind it); the rest is still in the socket.
    fn recv_direct(&mut self, out: &mut [u8]) -> io::Result<usize> {
        debug_assert_eq!(self.buffered(), 0);
        let mut done = 0;
        while done < out.len() {
            match self.rd.recv(&mut out[done..], true) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.raw_os_error() == Some(libc::EFAULT) => break,
                Err(e) => return Err(e),
            }
        }
        self.after_large = true;
        Ok(done)
    }

    /// Fills `out` (a WRITE payload).
    fn read_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut done = self.buffered().min(out.len());
        out[..done].copy_from_slice(&self.buf[self.start..self.start + done]);
        self.start += done;
        while done < out.len() {
            // The buffer is empty here.
            if out.len() - done >= self.buf.len() / 2 {
                // Straight into `out`, in one call that returns when all of
                // it is in.
                while done < out.len() {
                    match self.rd.recv(&mut out[done..], true)? {
                        0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                        n => done += n,
                    }
                }
                self.after_large = true;
                return Ok(());
            }
            match self.fill(0)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.end += n,
            }
            let take = self.buffered().min(out.len() - done);
            out[done..done + take].copy_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
            done += take;
        }
        Ok(())
    }

    /// Reads and drops `len` bytes (the payload of a refused WRITE).
    fn discard(&mut self, len: u32) -> io::Result<()> {
        let mut left = len as usize;
        loop {
            let take = self.buffered().min(left);
            self.start += take;
            left -= take;
            if left == 0 {
                return Ok(());
            }
            match self.fill(0)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.end += n,
            }
        }
    }
}

/// Runs one validated request against the engine. Its reply goes to the
/// front of `out` (a reused buffer, see [`pool::Buffers`]); returns the
/// reply's length.
fn execute(s: &Session, req: &RequestHeader, payload: &[u8], out: &mut Vec<u8>) -> Built {
    let image = &s.image;
    let (off, len) = (req.offset, u64::from(req.length));
    let result = match req.command {
        Command::Read => return read(s, req, out),
        Command::BlockStatus => return block_status(s, req, out),
        Command::Write => image.write_at(off, payload),
        // NO_HOLE asks for allocated zeros; the engine records zeros in
        // metadata, which read back as zero whatever the device does, so
        // punching is still correct. FAST_ZERO: that is always fast.
        Command::WriteZeroes => image.write_zeroes(off, len),
        Command::Trim => image.discard(off, len),
        Command::Flush => image.flush(),
        // A hint we have no use for: the engine caches metadata itself.
        Command::Cache => Ok(()),
        // validate() refused everything else already.
        _ => return Built::failed(failure(s, req, Errno::Inval, "unsupported command", out)),
    };
    // FUA: the write is durable before it is acknowledged.
    let result = result.and_then(|()| {
        if req.command.is_write() && req.flags.contains(CommandFlags::FUA) {
            image.flush()
        } else {
            Ok(())
        }
    });
    match result {
        Ok(()) => Built::ok(put_front(out, &simple_reply_header(req.cookie, None))),
        Err(e) => Built::failed(engine_failure(s, req, &e, out)),
    }
}

/// A reply built into the output buffer: `out[start..end]` (at the front,
/// unless laid out to align READ data, see [`pool::DATA_ALIGN`]), then the
/// data of a lent read if there is one.
#[derive(Debug)]
struct Built {
    start: usize,
    end: usize,
    /// Sent after `out[start..end]`.
    tail: Option<LentRead>,
    /// The reply is not an error.
    ok: bool,
}

impl Built {
    fn ok(len: usize) -> Self {
        Self::ok_at(0, len)
    }

    fn ok_at(start: usize, end: usize) -> Self {
        Self {
            start,
            end,
            tail: None,
            ok: true,
        }
    }

    fn failed(len: usize) -> Self {
        Self {
            start: 0,
            end: len,
            tail: None,
            ok: false,
        }
    }
}

/// Logs an engine failure and builds its error reply.
fn engine_failure(
    s: &Session,
    req: &RequestHeader,
    e: &vdisk_engine::Error,
    out: &mut Vec<u8>,
) -> usize {
    warn!(
        export = %s.export,
        command = ?req.command,
        offset = req.offset,
        length = req.length,
        error = %e,
        "request failed"
    );
    s.failed.fetch_add(1, Ordering::Relaxed);
    failure(
        s,
        req,
        errno_of(e, req.command.is_write()),
        &format!("{:?} failed: {e}", req.command),
        out,
    )
}

/// An error reply (replacing whatever `out` held): a structured error
/// chunk where the command's replies are structured (READ and BLOCK_STATUS
/// once negotiated), so the client gets the message too; a simple reply
/// otherwise.
fn failure(
    s: &Session,
    req: &RequestHeader,
    errno: Errno,
    message: &str,
    out: &mut Vec<u8>,
) -> usize {
    if s.structured && matches!(req.command, Command::Read | Command::BlockStatus) {
        let mut chunk = Vec::new();
        write_error(&mut chunk, req.cookie, errno, message, true);
        put_front(out, &chunk)
    } else {
        put_front(out, &simple_reply_header(req.cookie, Some(errno)))
    }
}

/// The reply to a request [`RequestHeader::validate`] refused.
fn refusal(s: &Session, req: &RequestHeader, errno: Errno, out: &mut Vec<u8>) -> usize {
    let end = req.offset.saturating_add(u64::from(req.length));
    let why = match errno {
        Errno::Perm => "the export is read-only".to_owned(),
        Errno::Overflow => format!(
            "length {} is over the maximum payload {}",
            req.length, s.ctx.max_payload
        ),
        _ if end > s.ctx.size => format!(
            "range {}+{} is beyond the export size {}",
            req.offset, req.length, s.ctx.size
        ),
        _ => "invalid request (command, flags, length or alignment)".to_owned(),
    };
    failure(
        s,
        req,
        errno,
        &format!("{:?} refused: {why}", req.command),
        out,
    )
}

/// Why building a READ reply failed.
#[derive(Debug, thiserror::Error)]
enum ReadFailure {
    #[error(transparent)]
    Engine(#[from] vdisk_engine::Error),
    #[error("cannot encode the reply: {0}")]
    Encode(#[from] EncodeError),
}

fn read(s: &Session, req: &RequestHeader, out: &mut Vec<u8>) -> Built {
    let result = if s.structured {
        read_chunks(s, req, out)
    } else {
        read_simple(s, req, out)
    };
    // On failure `out` holds part of the data: the error reply replaces it.
    match result {
        Ok(Read::Copied(start, end)) => Built::ok_at(start, end),
        Ok(Read::Lent(len, data)) => Built {
            tail: Some(data),
            ..Built::ok(len)
        },
        Err(ReadFailure::Engine(e)) => Built::failed(engine_failure(s, req, &e, out)),
        Err(e) => {
            error!(export = %s.export, offset = req.offset, error = %e, "read reply");
            s.failed.fetch_add(1, Ordering::Relaxed);
            Built::failed(failure(s, req, Errno::Io, "internal error", out))
        }
    }
}

/// How a READ reply was built.
enum Read {
    /// Whole, in `out[start..end]`.
    Copied(usize, usize),
    /// Its header in `out[..len]`, its data lent (see [`LEND_MIN`]).
    Lent(usize, LentRead),
}

/// A reply of `header` then the `len` bytes at `offset`: lent by the
/// engine from [`LEND_MIN`] on, else read straight into place.
fn with_data(
    s: &Session,
    header: &[u8],
    offset: u64,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<Read, ReadFailure> {
    if len >= LEND_MIN {
        let data = s.image.read_lent(offset, len)?;
        return Ok(Read::Lent(put_front(out, header), data));
    }
    let (start, data, end) = place(out, header, len);
    s.image.read_at(offset, &mut out[data..end])?;
    Ok(Read::Copied(start, end))
}

/// The reply laid out as `header` then `len` bytes of data, read straight
/// into place at an aligned address; returns where the reply starts, where
/// its data starts and where it ends.
fn place(out: &mut Vec<u8>, header: &[u8], len: usize) -> (usize, usize, usize) {
    ensure_len(out, header.len() + DATA_ALIGN + len);
    let data = aligned_offset(out, header.len());
    let start = data - header.len();
    out[start..data].copy_from_slice(header);
    (start, data, data + len)
}

/// Simple reply: header, then the data, read straight into place.
fn read_simple(s: &Session, req: &RequestHeader, out: &mut Vec<u8>) -> Result<Read, ReadFailure> {
    let header = simple_reply_header(req.cookie, None);
    with_data(s, &header, req.offset, req.length as usize, out)
}

/// Structured reply: OFFSET_HOLE chunks for what the engine knows reads as
/// zero (no data read, nothing sent but the chunk header), OFFSET_DATA for
/// the rest, each read straight into place. With `DF` one data chunk.
fn read_chunks(s: &Session, req: &RequestHeader, out: &mut Vec<u8>) -> Result<Read, ReadFailure> {
    let (cookie, len) = (req.cookie, u64::from(req.length));
    if len == 0 {
        let mut chunk = Vec::new();
        write_none_done(&mut chunk, cookie);
        return Ok(Read::Copied(0, put_front(out, &chunk)));
    }
    let one_chunk = |out: &mut Vec<u8>| -> Result<Read, ReadFailure> {
        let header = offset_data_header(cookie, req.offset, len as usize, true)?;
        with_data(s, &header, req.offset, len as usize, out)
    };
    if req.flags.contains(CommandFlags::DF) || len < HOLE_DETECTION_MIN {
        return one_chunk(out);
    }
    let mut runs: Vec<(u64, bool)> = Vec::new();
    for (run, _hole, zero) in s.image.block_status(req.offset, len)? {
        match runs.last_mut() {
            Some(last) if last.1 == zero => last.0 += run,
            _ => runs.push((run, zero)),
        }
    }
    if let [(_, false)] = runs[..] {
        // All data: one chunk, as with DF.
        return one_chunk(out);
    }
    // Hole chunks are encoded first (they are small), then the reply is
    // laid out at its final length and the data read into place.
    let mut holes = Vec::new();
    let mut hole_ends = Vec::new();
    let mut total = 0usize;
    let mut pos = req.offset;
    for (i, &(run, zero)) in runs.iter().enumerate() {
        let done = i + 1 == runs.len();
        // Runs are pieces of a u32-long request.
        let run32 = u32::try_from(run).map_err(|_| EncodeError::TooLong)?;
        if zero {
            let at = holes.len();
            write_offset_hole(&mut holes, cookie, pos, run32, done)?;
            hole_ends.push(holes.len());
            total += holes.len() - at;
        } else {
            total += OFFSET_DATA_HEADER_LEN + run as usize;
        }
        pos += run;
    }
    // The first data chunk's data goes to an aligned address (the others
    // follow it: a reply is sent from one contiguous buffer).
    let before_data = match runs.iter().position(|&(_, zero)| !zero) {
        // Runs alternate, so the `first` runs before it are holes.
        Some(first) => {
            let holes_len = first.checked_sub(1).map_or(0, |last| hole_ends[last]);
            holes_len + OFFSET_DATA_HEADER_LEN
        }
        None => 0,
    };
    ensure_len(out, DATA_ALIGN + total);
    let start = aligned_offset(out, before_data) - before_data;
    let (mut at, mut pos) = (start, req.offset);
    let (mut hole_start, mut hole_ends) = (0usize, hole_ends.into_iter());
    for (i, &(run, zero)) in runs.iter().enumerate() {
        let done = i + 1 == runs.len();
        if zero {
            let hole_end = hole_ends.next().unwrap_or(holes.len());
            let chunk = &holes[hole_start..hole_end];
            out[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
            hole_start = hole_end;
        } else {
            let header = offset_data_header(cookie, pos, run as usize, done)?;
            out[at..at + header.len()].copy_from_slice(&header);
            at += header.len();
            s.image.read_at(pos, &mut out[at..at + run as usize])?;
            at += run as usize;
        }
        pos += run;
    }
    debug_assert_eq!(at, start + total);
    Ok(Read::Copied(start, at))
}

/// `base:allocation` from the engine's metadata.
fn block_status(s: &Session, req: &RequestHeader, out: &mut Vec<u8>) -> Built {
    let Some(id) = s.allocation_id else {
        return Built::failed(failure(
            s,
            req,
            Errno::Inval,
            "no metadata context selected",
            out,
        ));
    };
    let len = u64::from(req.length).min(BLOCK_STATUS_SPAN);
    let runs = match s.image.block_status(req.offset, len) {
        Ok(runs) => runs,
        Err(e) => return Built::failed(engine_failure(s, req, &e, out)),
    };
    let limit = if req.flags.contains(CommandFlags::REQ_ONE) {
        1
    } else {
        MAX_DESCRIPTORS
    };
    let descriptors: Vec<BlockDescriptor> = runs
        .iter()
        .take(limit)
        .map(|&(run, hole, zero)| BlockDescriptor {
            // Runs are pieces of a range of at most BLOCK_STATUS_SPAN.
            length: u32::try_from(run).unwrap_or(u32::MAX),
            flags: if hole { STATE_HOLE } else { 0 } | if zero { STATE_ZERO } else { 0 },
        })
        .collect();
    let mut chunk = Vec::new();
    match write_block_status(&mut chunk, req.cookie, id, &descriptors, true) {
        Ok(()) => Built::ok(put_front(out, &chunk)),
        Err(e) => {
            error!(export = %s.export, offset = req.offset, error = %e, "block status reply");
            s.failed.fetch_add(1, Ordering::Relaxed);
            Built::failed(failure(s, req, Errno::Io, "internal error", out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::thread::ThreadId;
    use vdisk_engine::{CreateOptions, ImageSpec, SingleDataBackend, Store};
    use vdisk_storage::{MemMetaStore, MemObjectStore};

    fn image() -> Image {
        image_on(Arc::new(MemObjectStore::new())).1
    }

    fn image_on(data: Arc<dyn vdisk_storage::ObjectStore>) -> (Store, Image) {
        image_sized(data, 1 << 20)
    }

    fn image_sized(data: Arc<dyn vdisk_storage::ObjectStore>, size: u64) -> (Store, Image) {
        let store = Store::open_with(
            Arc::new(MemMetaStore::new()),
            Box::new(SingleDataBackend(data)),
            vdisk_engine::Config::default(),
        )
        .expect("store");
        let image = store
            .create(
                &ImageSpec::parse("rbd/i").expect("spec"),
                &CreateOptions {
                    size,
                    order: None,
                    features: None,
                },
            )
            .expect("create");
        (store, image)
    }

    /// Jobs that record the thread they ran on (quick ones if `cached`).
    fn jobs(cached: &[bool], ran: &Arc<Mutex<Vec<(usize, ThreadId)>>>) -> Vec<pool::Job> {
        cached
            .iter()
            .enumerate()
            .map(|(i, &cached)| {
                let ran = ran.clone();
                pool::Job {
                    key: 1,
                    bytes: 0,
                    quick: cached,
                    may_inline: cached,
                    run: Box::new(move |_| {
                        ran.lock().unwrap().push((i, std::thread::current().id()));
                    }),
                }
            })
            .collect()
    }

    fn run_all(inline: &mut Inline, cached: &[bool]) -> Vec<(usize, ThreadId)> {
        let ran = Arc::new(Mutex::new(Vec::new()));
        inline.dispatch(&mut jobs(cached, &ran));
        let deadline = Instant::now() + Duration::from_secs(10);
        while ran.lock().unwrap().len() < cached.len() {
            assert!(Instant::now() < deadline, "jobs never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut ran = ran.lock().unwrap().clone();
        ran.sort_by_key(|r| r.0);
        ran
    }

    #[test]
    fn cached_jobs_run_on_the_reader_the_rest_on_the_pool() {
        let me = std::thread::current().id();
        let mut inline = Inline::new(true, image());
        let ran = run_all(&mut inline, &[true, false, true, true, false]);
        for (i, thread) in ran {
            let cached = matches!(i, 0 | 2 | 3);
            assert_eq!(thread == me, cached, "job {i} ran on the wrong thread");
        }
    }

    #[test]
    fn large_writes_leave_the_pool_unless_fua_large_reads_do_not() {
        let req = |command, length, flags| RequestHeader {
            flags,
            command,
            cookie: 0,
            offset: 0,
            length,
        };
        let none = CommandFlags::empty();
        assert!(may_run_inline(&req(Command::Read, 4096, none)));
        assert!(may_run_inline(&req(Command::Write, 4096, none)));
        assert!(may_run_inline(&req(Command::Write, 1 << 20, none)));
        assert!(may_run_inline(&req(Command::Write, INLINE_WRITE_MAX, none)));
        assert!(!may_run_inline(&req(
            Command::Write,
            INLINE_WRITE_MAX + 1,
            none
        )));
        assert!(!may_run_inline(&req(
            Command::Write,
            1 << 20,
            CommandFlags::FUA
        )));
        assert!(!may_run_inline(&req(
            Command::Write,
            4096,
            CommandFlags::FUA
        )));
        assert!(!may_run_inline(&req(Command::Read, 1 << 20, none)));
        assert!(!may_run_inline(&req(Command::Flush, 0, none)));
        assert!(!may_run_inline(&req(Command::Trim, 4096, none)));
    }

    /// Serves `image` on one end of a socket pair, as after a handshake
    /// (simple replies); the client gets the other end.
    struct Served {
        client: Box<dyn Stream>,
        stop: watch::Sender<bool>,
        summary: Option<tokio::task::JoinHandle<Summary>>,
        rt: tokio::runtime::Runtime,
    }

    /// The client's end of a [`Served`] connection.
    trait Stream: std::io::Read + std::io::Write + Send {}
    impl<T: std::io::Read + std::io::Write + Send> Stream for T {}

    impl Served {
        /// Serves `image` over a Unix socket pair.
        fn new(image: Image) -> Self {
            Self::start(image, false)
        }

        /// Serves `image` over loopback TCP.
        fn tcp(image: Image) -> Self {
            Self::start(image, true)
        }

        fn start(image: Image, tcp: bool) -> Self {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let (client, socket): (Box<dyn Stream>, Socket) = if tcp {
                // Both ends leave the pair's runtime here, so it may go.
                let (_pair, server, client) = socket::tests::tcp_pair();
                let client = client.into_std().expect("std");
                client.set_nonblocking(false).expect("blocking");
                (Box::new(client), Socket::from_tcp(server).expect("socket"))
            } else {
                let (client, server) = std::os::unix::net::UnixStream::pair().expect("pair");
                (Box::new(client), Socket::Unix(server))
            };
            let (stop, stopped) = watch::channel(false);
            let negotiated = Negotiated {
                export: "i".into(),
                size: image.size(),
                flags: vdisk_nbd::TransmissionFlags::empty(),
                structured_replies: false,
                meta_contexts: Vec::new(),
                block_size: None,
                block_size_requested: false,
                no_zeroes: true,
                entry: vdisk_nbd::Entry::Go,
            };
            let registry = crate::registry::Registry::new(false);
            let image_ref = crate::registry::ImageRef {
                pool: "rbd".into(),
                id: 1,
            };
            let summary = rt.spawn(async move {
                let conn = registry
                    .conn_opened(
                        1,
                        crate::registry::Peer::Unix {
                            pid: None,
                            uid: None,
                        },
                        image_ref,
                        "i",
                        false,
                    )
                    .expect("conn");
                serve(
                    socket,
                    Vec::new(),
                    &negotiated,
                    image,
                    &Limits::default(),
                    conn.handle(),
                    stopped,
                )
                .await
            });
            Self {
                client,
                stop,
                summary: Some(summary),
                rt,
            }
        }

        fn send(
            &mut self,
            command: Command,
            cookie: u64,
            offset: u64,
            payload: &[u8],
            length: u32,
        ) {
            use std::io::Write;
            let header = RequestHeader {
                flags: CommandFlags::empty(),
                command,
                cookie,
                offset,
                length,
            };
            self.client
                .write_all(&header.encode())
                .expect("send header");
            self.client.write_all(payload).expect("send payload");
        }

        /// The next simple reply's cookie and error, reading `data` more
        /// bytes after it if it is the one of `data_cookie`.
        fn reply(&mut self, data_cookie: u64, data: usize) -> (u64, u32) {
            use std::io::Read;
            let mut r = [0u8; 16];
            self.client.read_exact(&mut r).expect("reply");
            let error = u32::from_be_bytes(r[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(r[8..16].try_into().unwrap());
            if cookie == data_cookie && error == 0 {
                let mut d = vec![0u8; data];
                self.client.read_exact(&mut d).expect("reply data");
            }
            (cookie, error)
        }

        fn summary(&mut self) -> Summary {
            let handle = self.summary.take().expect("once");
            self.rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), handle).await })
                .expect("serve never ended")
                .expect("serve panicked")
        }
    }

    #[test]
    fn a_large_write_passes_the_turn_on_before_it_is_copied() {
        use vdisk_storage::{FaultConfig, FaultyObjectStore};
        let faulty = Arc::new(FaultyObjectStore::new(
            Arc::new(MemObjectStore::new()),
            FaultConfig::default(),
        ));
        // Two objects (4 MiB each): the read does not wait for the write's.
        let (_store, img) = image_sized(faulty.clone(), 8 << 20);
        let mut served = Served::new(img.clone());
        // The write's copy takes long (a disk behind, dirty pages
        // throttled).
        faulty.set(FaultConfig {
            delay: Some(Duration::from_millis(300)),
            ..FaultConfig::default()
        });
        let large = vec![0x5a; 512 << 10];
        served.send(Command::Write, 1, 0, &large, large.len() as u32);
        // The write is in the object store, sleeping; nothing after it is.
        std::thread::sleep(Duration::from_millis(100));
        faulty.set(FaultConfig::default());
        served.send(Command::Read, 2, 6 << 20, &[], 4096);
        // The read was received and answered while the write was copied.
        assert_eq!(
            served.reply(2, 4096),
            (2, 0),
            "the read waited for the write"
        );
        assert_eq!(served.reply(2, 4096), (1, 0));
        let mut back = vec![0u8; large.len()];
        img.read_at(0, &mut back).expect("read back");
        assert!(back == large, "the write's data differs");
        served.send(Command::Disconnect, 3, 0, &[], 0);
        let summary = served.summary();
        assert!(matches!(summary.end, End::Disconnect), "{}", summary.end);
        assert_eq!((summary.requests, summary.failed), (2, 0));
    }

    /// An in-memory store whose writes in place fail, as a full disk
    /// would make them, counting them.
    #[derive(Debug, Default)]
    struct FullForFills {
        inner: MemObjectStore,
        fills: std::sync::atomic::AtomicUsize,
    }

    impl vdisk_storage::ObjectStore for FullForFills {
        fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> vdisk_storage::Result<()> {
            self.inner.read_at(name, offset, buf)
        }
        fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> vdisk_storage::Result<()> {
            self.inner.write_at(name, offset, data)
        }
        fn fill_in_place(
            &self,
            name: &str,
            _offset: u64,
            _len: usize,
            _granule: usize,
            _fill: &mut dyn FnMut(&mut [u8]) -> usize,
        ) -> vdisk_storage::Result<Option<vdisk_storage::Filled>> {
            self.fills.fetch_add(1, Ordering::SeqCst);
            Err(vdisk_storage::StorageError::io(
                name,
                io::Error::from_raw_os_error(libc::ENOSPC),
            ))
        }
        fn punch(&self, name: &str, offset: u64, len: u64) -> vdisk_storage::Result<()> {
            self.inner.punch(name, offset, len)
        }
        fn remove(&self, name: &str) -> vdisk_storage::Result<()> {
            self.inner.remove(name)
        }
        fn sync(&self) -> vdisk_storage::Result<()> {
            self.inner.sync()
        }
        fn list(&self, prefix: &str) -> vdisk_storage::Result<Vec<String>> {
            self.inner.list(prefix)
        }
        fn allocated(&self, name: &str) -> vdisk_storage::Result<u64> {
            self.inner.allocated(name)
        }
    }

    #[test]
    fn a_write_in_place_that_fails_is_answered_and_its_payload_skipped() {
        let data = Arc::new(FullForFills::default());
        let (_store, img) = image_sized(data.clone(), 8 << 20);
        // Object 0 written whole: writes into it are offered in place.
        img.write_at(0, &vec![1; 4 << 20]).expect("object 0");
        let mut served = Served::tcp(img.clone());
        let large = vec![2u8; 256 << 10];
        // Into object 1 (holes: the usual way); it leaves the reader
        // reading only the next header, so nothing of the next payload
        // is buffered.
        served.send(Command::Write, 1, 4 << 20, &large, large.len() as u32);
        // Into object 0: offered in place, refused by the store.
        served.send(Command::Write, 2, 0, &large, large.len() as u32);
        // Parsed from right after the skipped payload.
        served.send(Command::Read, 3, 0, &[], 4096);
        // Replies in any order.
        let mut replies: Vec<_> = (0..3).map(|_| served.reply(3, 4096)).collect();
        replies.sort_unstable();
        assert_eq!(replies, [(1, 0), (2, Errno::NoSpc.to_wire()), (3, 0)]);
        assert_eq!(data.fills.load(Ordering::SeqCst), 1, "offered in place");
        let mut back = vec![0u8; 4 << 20];
        img.read_at(0, &mut back).expect("read back");
        assert!(
            back.iter().all(|&b| b == 1),
            "the failed write changed data"
        );
        served.send(Command::Disconnect, 4, 0, &[], 0);
        let summary = served.summary();
        assert!(matches!(summary.end, End::Disconnect), "{}", summary.end);
        assert_eq!((summary.requests, summary.failed), (3, 1));
    }

    #[test]
    fn stopping_wakes_the_thread_waiting_for_a_request() {
        let mut served = Served::new(image());
        served.send(Command::Write, 1, 0, &[7; 4096], 4096);
        assert_eq!(served.reply(0, 0), (1, 0));
        // Now the connection's thread waits in `recv`.
        std::thread::sleep(Duration::from_millis(50));
        served.stop.send(true).expect("stop");
        let summary = served.summary();
        assert!(matches!(summary.end, End::Shutdown), "{}", summary.end);
    }

    #[test]
    fn stopping_mid_payload_ends_as_a_shutdown_and_writes_nothing() {
        let img = image();
        let mut served = Served::new(img.clone());
        // A WRITE whose payload is only half sent: the thread waits in
        // `recv` for the rest.
        use std::io::Write;
        let header = RequestHeader {
            flags: CommandFlags::empty(),
            command: Command::Write,
            cookie: 1,
            offset: 0,
            length: 8192,
        };
        served.client.write_all(&header.encode()).expect("header");
        served.client.write_all(&[7; 4096]).expect("half");
        std::thread::sleep(Duration::from_millis(50));
        served.stop.send(true).expect("stop");
        let summary = served.summary();
        assert!(matches!(summary.end, End::Shutdown), "{}", summary.end);
        let mut back = vec![1u8; 8192];
        img.read_at(0, &mut back).expect("read back");
        assert!(back.iter().all(|&b| b == 0), "a cut payload was written");
    }

    /// Serves `data`, at most what each read asks for, and records how
    /// much each read asked for.
    struct Recorded {
        data: Vec<u8>,
        at: usize,
        asked: Arc<Mutex<Vec<usize>>>,
    }

    impl Recv for Recorded {
        fn recv(&mut self, buf: &mut [u8], _all: bool) -> io::Result<usize> {
            self.asked.lock().unwrap().push(buf.len());
            let n = buf.len().min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }

        fn queued(&self) -> io::Result<usize> {
            Ok(self.data.len() - self.at)
        }

        fn wait_queued(&mut self, _len: usize) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_large_payload_only_the_next_header_is_read() {
        // Header, 1 MiB payload, header, 1 MiB payload, header, 4 KiB.
        let large = 1usize << 20;
        let mut data = Vec::new();
        for (i, len) in [large, large, 4096].into_iter().enumerate() {
            data.extend_from_slice(&[i as u8; REQUEST_HEADER_LEN]);
            data.extend(std::iter::repeat_n(0xa0 + i as u8, len));
        }
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut input = Input::new(
            Recorded {
                data,
                at: 0,
                asked: asked.clone(),
            },
            Vec::new(),
        );
        let (_tx, stop) = watch::channel(false);
        let mut payload = vec![0u8; large];
        for i in 0..2u8 {
            let header = input.header(&stop).expect("header");
            assert_eq!(header, [i; REQUEST_HEADER_LEN]);
            input.read_exact(&mut payload).expect("payload");
            assert!(payload.iter().all(|&b| b == 0xa0 + i), "payload {i}");
        }
        let header = input.header(&stop).expect("header");
        assert_eq!(header, [2; REQUEST_HEADER_LEN]);
        let mut small = vec![0u8; 4096];
        input.read_exact(&mut small).expect("small payload");
        assert!(small.iter().all(|&b| b == 0xa2));
        let asked = asked.lock().unwrap().clone();
        // The first read fills the buffer (header and the payload's start);
        // each read right after a payload read straight into its buffer
        // asks for one header only.
        assert_eq!(asked[0], INPUT_BUFFER);
        let after: Vec<usize> = asked
            .windows(2)
            .filter(|w| w[0] >= INPUT_BUFFER / 2 && w[0] != INPUT_BUFFER)
            .map(|w| w[1])
            .collect();
        assert_eq!(
            after,
            [REQUEST_HEADER_LEN, REQUEST_HEADER_LEN],
            "reads: {asked:?}"
        );
    }

    #[test]
    fn off_everything_goes_to_the_pool() {
        let me = std::thread::current().id();
        let mut inline = Inline::new(false, image());
        for (i, thread) in run_all(&mut inline, &[true, true, false]) {
            assert_ne!(thread, me, "job {i} ran on the reader");
        }
    }

    #[test]
    fn after_a_slow_job_the_next_ones_go_to_the_pool() {
        let me = std::thread::current().id();
        let mut inline = Inline::new(true, image());
        let slow = Arc::new(Mutex::new(Vec::new()));
        let mut batch = jobs(&[true, true], &slow);
        batch[0].run = Box::new(|_| std::thread::sleep(INLINE_SLOW * 2));
        inline.dispatch(&mut batch);
        let deadline = Instant::now() + Duration::from_secs(10);
        while slow.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "job never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_ne!(slow.lock().unwrap()[0].1, me, "ran here after a slow one");
        let ran = run_all(&mut inline, &[true; 4]);
        assert!(ran.iter().all(|&(_, t)| t != me), "backoff ignored");
        assert_eq!(inline.backoff, INLINE_BACKOFF - 5);
    }

    #[test]
    fn nothing_runs_on_the_reader_while_a_barrier_is_pending() {
        use vdisk_storage::{FaultConfig, FaultyObjectStore};
        let me = std::thread::current().id();
        let faulty = Arc::new(FaultyObjectStore::new(
            Arc::new(MemObjectStore::new()),
            FaultConfig::default(),
        ));
        let (store, img) = image_on(faulty.clone());
        img.write_at(0, &[1; 4096]).expect("write");
        // A write held up in the object store keeps a snapshot waiting.
        faulty.set(FaultConfig {
            delay: Some(Duration::from_millis(500)),
            ..FaultConfig::default()
        });
        let writer = {
            let img = img.clone();
            std::thread::spawn(move || img.write_at(4096, &[2; 4096]))
        };
        std::thread::sleep(Duration::from_millis(50));
        let snap = std::thread::spawn(move || {
            store.snap_create(&ImageSpec::parse("rbd/i@s").expect("spec"))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !img.barrier_pending() {
            assert!(Instant::now() < deadline, "barrier never pending");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut inline = Inline::new(true, img.clone());
        for (i, thread) in run_all(&mut inline, &[true, true]) {
            assert_ne!(thread, me, "job {i} ran on the reader during a barrier");
        }
        writer.join().expect("writer").expect("write");
        snap.join().expect("snapshot").expect("snap create");
        faulty.set(FaultConfig::default());
        assert!(!img.barrier_pending());
        let ran = run_all(&mut inline, &[true]);
        assert_eq!(ran[0].1, me, "not back on the reader after the barrier");
    }
}
