//! The transmission phase of one connection.
//!
//! ```text
//!  socket ─► reader loop: header, validate, take permits, read WRITE payload
//!                │
//!                ▼ spawn_blocking (one task per request, in parallel)
//!            execute: engine call → complete reply bytes
//!                │ unbounded channel (bounded in practice by the permits)
//!                ▼
//!  socket ◄─ writer task: replies in completion order, batched, flushed
//! ```
//!
//! Every reply is built whole by the request's task before it is queued, so
//! replies of different requests never interleave on the wire and a READ
//! that fails half-way sends an error, never part of its data. A request's
//! permits (one of `max_in_flight`, and its buffer's bytes out of
//! `max_in_flight_bytes`) travel with its reply and are released once the
//! reply is written: a client that does not read its replies stops being
//! read from, instead of making the server buffer without bound.

use crate::exports::errno_of;
use crate::Limits;
use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn, Instrument, Span};
use vdisk_engine::Image;
use vdisk_nbd::consts::{CONTEXT_BASE_ALLOCATION, REQUEST_HEADER_LEN, STATE_HOLE, STATE_ZERO};
use vdisk_nbd::reply::{
    offset_data_header, simple_reply_header, write_block_status, write_error, write_none_done,
    write_offset_hole,
};
use vdisk_nbd::{
    BlockDescriptor, Command, CommandFlags, EncodeError, Errno, ExportContext, Negotiated,
    RequestHeader,
};

/// Largest range one BLOCK_STATUS request describes. Clients ask again
/// from where the answer stopped (the spec allows a shorter answer), and
/// this bounds the metadata one request walks.
const BLOCK_STATUS_SPAN: u64 = 1 << 30;

/// READs shorter than this are sent as data without asking the engine
/// where the holes are: for small random reads the metadata walk costs
/// more than the zeros it would save on the wire.
const HOLE_DETECTION_MIN: u64 = 64 * 1024;

/// Most descriptors in one BLOCK_STATUS reply (512 KiB of reply); the
/// spec allows fewer extents than the range needs.
const MAX_DESCRIPTORS: usize = 1 << 16;

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
}

/// A reply ready to send, with the permits its request held.
struct Outgoing {
    bytes: Vec<u8>,
    _permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// Aborts a task when dropped: the writer must not outlive its connection
/// (it could be stuck writing to a client that stopped reading).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves requests until the client disconnects, breaks the protocol, or
/// `stop` turns true; then lets the requests already started finish, sends
/// their replies and flushes the image.
pub(crate) async fn serve<R, W>(
    rd: R,
    wr: W,
    leftover: Vec<u8>,
    negotiated: &Negotiated,
    image: Image,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) -> Summary
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
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
    });

    let mut rd = BufReader::with_capacity(128 * 1024, io::Cursor::new(leftover).chain(rd));
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = AbortOnDrop(tokio::spawn(
        write_replies(wr, rx).instrument(Span::current()),
    ));
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let budget = Arc::new(Semaphore::new(limits.max_in_flight_bytes));

    let end = loop {
        let mut header = [0u8; REQUEST_HEADER_LEN];
        tokio::select! {
            biased;
            // Also fires if the server dropped its end: stop either way.
            _ = stop.wait_for(|stopping| *stopping) => break End::Shutdown,
            read = rd.read_exact(&mut header) => {
                if let Err(e) = read {
                    break End::from_read(e);
                }
            }
        }
        let req = match RequestHeader::parse(&header) {
            Ok(req) => req,
            Err(e) => break End::Violation(e.to_string()),
        };
        if req.command == Command::Disconnect {
            break End::Disconnect;
        }
        if let Err(e) = req.check_payload(session.ctx.disconnect_limit()) {
            break End::Violation(e.to_string());
        }
        session.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(errno) = req.validate(&session.ctx) {
            session.failed.fetch_add(1, Ordering::Relaxed);
            debug!(command = ?req.command, offset = req.offset, length = req.length, %errno, "request refused");
            // The payload of a refused WRITE is on the wire all the same.
            if let Err(e) = discard(&mut rd, req.payload_len()).await {
                break End::from_read(e);
            }
            let bytes = refusal(&session, &req, errno);
            if tx
                .send(Outgoing {
                    bytes,
                    _permits: None,
                })
                .is_err()
            {
                break End::ClientGone;
            }
            continue;
        }
        // Permits before the payload: the payload is what they bound.
        let buffer = match req.command {
            Command::Read | Command::Write => req.length,
            _ => 0,
        };
        let permits = match (
            slots.clone().acquire_owned().await,
            budget.clone().acquire_many_owned(buffer).await,
        ) {
            (Ok(slot), Ok(bytes)) => (slot, bytes),
            _ => break End::Violation("internal error: request permits closed".into()),
        };
        let mut payload = Vec::new();
        if req.command == Command::Write {
            payload = vec![0u8; req.length as usize];
            if let Err(e) = rd.read_exact(&mut payload).await {
                break End::from_read(e);
            }
        }
        let tx = tx.clone();
        let session = session.clone();
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let bytes = match std::panic::catch_unwind(AssertUnwindSafe(|| {
                execute(&session, &req, payload)
            })) {
                Ok(bytes) => bytes,
                Err(_) => {
                    // An engine bug must not leave the client waiting for
                    // a reply that never comes.
                    error!(export = %session.export, command = ?req.command, offset = req.offset, "request panicked");
                    session.failed.fetch_add(1, Ordering::Relaxed);
                    failure(&session, &req, Errno::Io, "internal error")
                }
            };
            // The writer is gone only if the connection is being torn down.
            let _ = tx.send(Outgoing {
                bytes,
                _permits: Some(permits),
            });
        });
    };

    // Requests already started complete and their replies are sent: the
    // writer ends once the last sender (held by those requests) is gone.
    drop(tx);
    let mut writer = writer;
    let _ = (&mut writer.0).await;
    let image = session.image.clone();
    match tokio::task::spawn_blocking(move || image.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(export = %session.export, error = %e, "flush at disconnect failed"),
        Err(e) => error!(export = %session.export, error = %e, "flush at disconnect panicked"),
    }
    Summary {
        end,
        requests: session.requests.load(Ordering::Relaxed),
        failed: session.failed.load(Ordering::Relaxed),
    }
}

/// Reads and drops `len` bytes (the payload of a refused WRITE).
async fn discard<R: AsyncRead + Unpin>(rd: &mut R, len: u32) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let copied = tokio::io::copy(&mut rd.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Sends replies as they come, batching those already queued into one
/// flush. After a write error it keeps draining (which releases the
/// requests' permits) without writing.
async fn write_replies<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut broken = false;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(out) = next {
            if !broken {
                if let Err(e) = wr.write_all(&out.bytes).await {
                    debug!(error = %e, "cannot send replies; client gone");
                    broken = true;
                }
            }
            drop(out);
            next = rx.try_recv().ok();
        }
        if !broken && wr.flush().await.is_err() {
            broken = true;
        }
    }
    if !broken {
        let _ = wr.shutdown().await;
    }
}

/// Runs one validated request against the engine; returns its reply.
fn execute(s: &Session, req: &RequestHeader, payload: Vec<u8>) -> Vec<u8> {
    let image = &s.image;
    let (off, len) = (req.offset, u64::from(req.length));
    let result = match req.command {
        Command::Read => return read(s, req),
        Command::BlockStatus => return block_status(s, req),
        Command::Write => image.write_at(off, &payload),
        // NO_HOLE asks for allocated zeros; the engine records zeros in
        // metadata, which read back as zero whatever the device does, so
        // punching is still correct. FAST_ZERO: that is always fast.
        Command::WriteZeroes => image.write_zeroes(off, len),
        Command::Trim => image.discard(off, len),
        Command::Flush => image.flush(),
        // A hint we have no use for: the engine caches metadata itself.
        Command::Cache => Ok(()),
        // validate() refused everything else already.
        _ => return failure(s, req, Errno::Inval, "unsupported command"),
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
        Ok(()) => simple_reply_header(req.cookie, None).to_vec(),
        Err(e) => engine_failure(s, req, &e),
    }
}

/// Logs an engine failure and builds its error reply.
fn engine_failure(s: &Session, req: &RequestHeader, e: &vdisk_engine::Error) -> Vec<u8> {
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
    )
}

/// An error reply: a structured error chunk where the command's replies are
/// structured (READ and BLOCK_STATUS once negotiated), so the client gets
/// the message too; a simple reply otherwise.
fn failure(s: &Session, req: &RequestHeader, errno: Errno, message: &str) -> Vec<u8> {
    if s.structured && matches!(req.command, Command::Read | Command::BlockStatus) {
        let mut out = Vec::new();
        write_error(&mut out, req.cookie, errno, message, true);
        out
    } else {
        simple_reply_header(req.cookie, Some(errno)).to_vec()
    }
}

/// The reply to a request [`RequestHeader::validate`] refused.
fn refusal(s: &Session, req: &RequestHeader, errno: Errno) -> Vec<u8> {
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
    failure(s, req, errno, &format!("{:?} refused: {why}", req.command))
}

/// Why building a READ reply failed.
#[derive(Debug, thiserror::Error)]
enum ReadFailure {
    #[error(transparent)]
    Engine(#[from] vdisk_engine::Error),
    #[error("cannot encode the reply: {0}")]
    Encode(#[from] EncodeError),
}

fn read(s: &Session, req: &RequestHeader) -> Vec<u8> {
    let result = if s.structured {
        read_chunks(s, req)
    } else {
        read_simple(s, req)
    };
    match result {
        Ok(bytes) => bytes,
        Err(ReadFailure::Engine(e)) => engine_failure(s, req, &e),
        Err(e) => {
            error!(export = %s.export, offset = req.offset, error = %e, "read reply");
            s.failed.fetch_add(1, Ordering::Relaxed);
            failure(s, req, Errno::Io, "internal error")
        }
    }
}

/// Simple reply: header, then the data, read straight into place.
fn read_simple(s: &Session, req: &RequestHeader) -> Result<Vec<u8>, ReadFailure> {
    let header = simple_reply_header(req.cookie, None);
    let mut out = Vec::with_capacity(header.len() + req.length as usize);
    out.extend_from_slice(&header);
    out.resize(header.len() + req.length as usize, 0);
    s.image.read_at(req.offset, &mut out[header.len()..])?;
    Ok(out)
}

/// Structured reply: OFFSET_HOLE chunks for what the engine knows reads as
/// zero (no data read, nothing sent but the chunk header), OFFSET_DATA for
/// the rest, each read straight into place. With `DF` one data chunk.
fn read_chunks(s: &Session, req: &RequestHeader) -> Result<Vec<u8>, ReadFailure> {
    let (cookie, len) = (req.cookie, u64::from(req.length));
    let mut out = Vec::new();
    if len == 0 {
        write_none_done(&mut out, cookie);
        return Ok(out);
    }
    let mut runs: Vec<(u64, bool)> = Vec::new();
    if req.flags.contains(CommandFlags::DF) || len < HOLE_DETECTION_MIN {
        runs.push((len, false));
    } else {
        for (run, _hole, zero) in s.image.block_status(req.offset, len)? {
            match runs.last_mut() {
                Some(last) if last.1 == zero => last.0 += run,
                _ => runs.push((run, zero)),
            }
        }
    }
    let data: u64 = runs.iter().filter(|r| !r.1).map(|r| r.0).sum();
    out.reserve(data as usize + runs.len() * 32);
    let mut pos = req.offset;
    for (i, &(run, zero)) in runs.iter().enumerate() {
        let done = i + 1 == runs.len();
        // Runs are pieces of a u32-long request.
        let run32 = u32::try_from(run).map_err(|_| EncodeError::TooLong)?;
        if zero {
            write_offset_hole(&mut out, cookie, pos, run32, done)?;
        } else {
            out.extend_from_slice(&offset_data_header(cookie, pos, run as usize, done)?);
            let start = out.len();
            out.resize(start + run as usize, 0);
            s.image.read_at(pos, &mut out[start..])?;
        }
        pos += run;
    }
    Ok(out)
}

/// `base:allocation` from the engine's metadata.
fn block_status(s: &Session, req: &RequestHeader) -> Vec<u8> {
    let Some(id) = s.allocation_id else {
        return failure(s, req, Errno::Inval, "no metadata context selected");
    };
    let len = u64::from(req.length).min(BLOCK_STATUS_SPAN);
    let runs = match s.image.block_status(req.offset, len) {
        Ok(runs) => runs,
        Err(e) => return engine_failure(s, req, &e),
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
    let mut out = Vec::new();
    match write_block_status(&mut out, req.cookie, id, &descriptors, true) {
        Ok(()) => out,
        Err(e) => {
            error!(export = %s.export, offset = req.offset, error = %e, "block status reply");
            s.failed.fetch_add(1, Ordering::Relaxed);
            failure(s, req, Errno::Io, "internal error")
        }
    }
}
