//! A blocking NBD client over TCP or a Unix socket, built on vdisk-nbd's
//! sans-IO client codec: fixed newstyle handshake, structured replies,
//! `base:allocation` block status, and pipelining: any number of threads
//! issue requests on one connection; a reader thread hands each reply to
//! the thread waiting for its cookie.

use crate::{push_extent, Dest, Error, Extent, Kind, Result, Source};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vdisk_nbd::client::{
    Chunk, ChunkHeader, ClientConfig, ClientHandshake, ClientProgress, ReplyHeader,
};
use vdisk_nbd::consts::{STATE_HOLE, STATE_ZERO};
use vdisk_nbd::{Command, CommandFlags, RequestHeader, TransmissionFlags};

/// Default NBD port.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD export is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `nbd://HOST[:PORT]/EXPORT`.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// `nbd+unix:///EXPORT?socket=PATH`.
    Unix {
        /// Socket path.
        socket: PathBuf,
    },
}

/// A parsed `nbd://` or `nbd+unix://` URI (qemu's syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// How to connect.
    pub transport: Transport,
    /// Export name (percent-decoded; empty = the default export).
    pub export: String,
    /// The URI as given, for messages.
    pub text: String,
}

impl NbdUri {
    /// Whether `s` looks like an NBD URI (is meant as one, even if malformed).
    pub fn looks_like(s: &str) -> bool {
        let lower = s.to_ascii_lowercase();
        lower.starts_with("nbd:") || lower.starts_with("nbd+") || lower.starts_with("nbds")
    }

    /// Parses `nbd://HOST[:PORT][/EXPORT]` or
    /// `nbd+unix:///[EXPORT]?socket=PATH`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "bad NBD URI {s:?}: {why} (expected nbd://HOST[:PORT]/EXPORT or \
                 nbd+unix:///EXPORT?socket=PATH)"
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no \"://\""))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
        let mut socket = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("socket", v)) => {
                    socket = Some(percent_decode(v).ok_or_else(|| bad("bad %-escape"))?)
                }
                _ => return Err(bad(&format!("unknown query parameter {pair:?}"))),
            }
        }
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "nbd" | "nbd+tcp" => {
                if socket.is_some() {
                    return Err(bad("socket= is only for nbd+unix://"));
                }
                let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad port"))?;
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                Transport::Tcp { host, port }
            }
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(bad("nbd+unix:// takes no host: use three slashes"));
                }
                let socket = socket.ok_or_else(|| bad("nbd+unix:// needs ?socket=PATH"))?;
                if socket.is_empty() {
                    return Err(bad("empty socket path"));
                }
                Transport::Unix {
                    socket: PathBuf::from(socket),
                }
            }
            "nbds" | "nbds+tcp" | "nbds+unix" => {
                return Err(Error::Unsupported(format!(
                    "{s}: NBD over TLS is not supported by this build"
                )))
            }
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        Ok(NbdUri {
            transport,
            export,
            text: s.to_owned(),
        })
    }
}

fn split_host_port(a: &str) -> Option<(String, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => DEFAULT_PORT,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((a.to_owned(), DEFAULT_PORT)),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request waiting for its reply.
#[derive(Debug, Default)]
struct Pending {
    /// READ: the request's offset, and the buffer the reply fills.
    read_offset: u64,
    data: Vec<u8>,
    /// BLOCK_STATUS descriptors (base:allocation).
    status: Vec<(u32, u32)>,
    error: Option<String>,
    done: bool,
    /// When the request was sent (for the timeout).
    since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    cv: Condvar,
    /// Why the connection is dead.
    dead: Mutex<Option<String>>,
}

/// A connected NBD client. `&self` methods may be called from many threads
/// at once; their requests are pipelined on the one connection.
#[derive(Debug)]
pub struct NbdClient {
    uri: String,
    writer: Mutex<Stream>,
    /// Another handle on the socket, to shut it down when a request times
    /// out (while a sender may hold `writer`).
    control: Stream,
    /// How long a request may wait for its reply; `None`: forever.
    timeout: Option<Duration>,
    shared: Arc<Shared>,
    reader: Mutex<Option<JoinHandle<()>>>,
    cookie: AtomicU64,
    size: u64,
    flags: TransmissionFlags,
    alloc_context: Option<u32>,
    min_block: u32,
    max_request: u32,
}

/// Largest request this client sends (and READ reply chunk it accepts,
/// plus headers).
const MAX_REQUEST: u32 = 32 << 20;

/// Environment variable: seconds a request may wait for its reply (0:
/// forever).
pub const TIMEOUT_ENV: &str = "VDISK_NBD_TIMEOUT";
/// Default of [`TIMEOUT_ENV`].
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The request timeout from [`TIMEOUT_ENV`].
fn request_timeout() -> std::result::Result<Option<Duration>, String> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(Some(DEFAULT_TIMEOUT)),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(Duration::from_secs(n))),
            Err(_) => Err(format!(
                "{TIMEOUT_ENV}={v:?} is not a number of seconds (0: wait forever)"
            )),
        },
    }
}

impl NbdClient {
    /// Connects and negotiates.
    pub fn connect(uri: &NbdUri) -> Result<Self> {
        let text = uri.text.clone();
        let err = |m: String| Error::nbd(&text, m);
        let timeout = request_timeout().map_err(err)?;
        let mut stream = match &uri.transport {
            Transport::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .map_err(|e| err(format!("connecting to {host}:{port}: {e}")))?;
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }
            Transport::Unix { socket } => Stream::Unix(
                UnixStream::connect(socket)
                    .map_err(|e| err(format!("connecting to {}: {e}", socket.display())))?,
            ),
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| err(e.to_string()))?;
        let mut hs = ClientHandshake::new(ClientConfig::new(uri.export.clone()));
        let mut input: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        let (negotiated, leftover) = loop {
            let progress = hs
                .feed(&input)
                .map_err(|e| err(format!("handshake: {e}")))?;
            input.clear();
            match progress {
                ClientProgress::NeedMore => {
                    let n = stream
                        .read(&mut buf)
                        .map_err(|e| err(format!("handshake: {e}")))?;
                    if n == 0 {
                        return Err(err(format!(
                            "the server closed the connection during the handshake \
                             (is {:?} an export it serves?)",
                            uri.export
                        )));
                    }
                    input.extend_from_slice(&buf[..n]);
                }
                ClientProgress::Send(bytes) => stream
                    .write_all(&bytes)
                    .map_err(|e| err(format!("handshake: {e}")))?,
                ClientProgress::Done {
                    negotiated,
                    leftover,
                } => break (negotiated, leftover),
                _ => return Err(err("unexpected handshake step".into())),
            }
        };
        stream
            .set_read_timeout(None)
            .map_err(|e| err(e.to_string()))?;
        // A server that stops reading must not block a sender forever.
        stream
            .set_write_timeout(timeout)
            .map_err(|e| err(e.to_string()))?;
        let control = stream.try_clone().map_err(|e| err(e.to_string()))?;
        let alloc_context = negotiated
            .meta_contexts
            .iter()
            .find(|c| c.name == vdisk_nbd::consts::CONTEXT_BASE_ALLOCATION)
            .map(|c| c.id);
        let (min_block, max_request) = match negotiated.block_size {
            Some(b) => (
                b.minimum.max(1),
                b.maximum.clamp(b.minimum.max(1), MAX_REQUEST),
            ),
            None => (1, MAX_REQUEST),
        };
        let shared = Arc::new(Shared::default());
        let rx = stream.try_clone().map_err(|e| err(e.to_string()))?;
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("nbd-reader".into())
                .spawn(move || reader_loop(std::io::Cursor::new(leftover).chain(rx), &shared))
                .map_err(|e| err(format!("starting the reader thread: {e}")))?
        };
        Ok(NbdClient {
            uri: text,
            writer: Mutex::new(stream),
            control,
            timeout,
            shared,
            reader: Mutex::new(Some(reader)),
            cookie: AtomicU64::new(1),
            size: negotiated.size,
            flags: negotiated.flags,
            alloc_context,
            min_block,
            max_request,
        })
    }

    /// The export's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the export is read-only.
    pub fn read_only(&self) -> bool {
        self.flags.contains(TransmissionFlags::READ_ONLY)
    }

    /// The server's transmission flags.
    pub fn flags(&self) -> TransmissionFlags {
        self.flags
    }

    /// The URI, for messages.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn submit(
        &self,
        command: Command,
        offset: u64,
        length: u32,
        payload: &[u8],
        read_offset: u64,
    ) -> Result<u64> {
        if let Some(why) = self.shared.dead.lock().clone() {
            return Err(Error::nbd(&self.uri, why));
        }
        let cookie = self.cookie.fetch_add(1, Ordering::Relaxed);
        let data = if command == Command::Read {
            vec![0u8; length as usize]
        } else {
            Vec::new()
        };
        self.shared.pending.lock().insert(
            cookie,
            Pending {
                read_offset,
                data,
                since: Some(Instant::now()),
                ..Pending::default()
            },
        );
        let header = RequestHeader {
            flags: CommandFlags::empty(),
            command,
            cookie,
            offset,
            length,
        }
        .encode();
        let mut w = self.writer.lock();
        let r = if payload.is_empty() {
            w.write_all(&header)
        } else {
            write_all_vectored(&mut *w, &header, payload)
        };
        drop(w);
        if let Err(e) = r {
            self.shared.pending.lock().remove(&cookie);
            return Err(Error::nbd(&self.uri, format!("sending a request: {e}")));
        }
        Ok(cookie)
    }

    fn wait(&self, cookie: u64) -> Result<Pending> {
        let mut map = self.shared.pending.lock();
        loop {
            if map.get(&cookie).is_some_and(|p| p.done) {
                let p = map.remove(&cookie).unwrap_or_default();
                return match &p.error {
                    Some(e) => Err(Error::nbd(&self.uri, e.clone())),
                    None => Ok(p),
                };
            }
            if let Some(why) = self.shared.dead.lock().clone() {
                map.remove(&cookie);
                return Err(Error::nbd(&self.uri, why));
            }
            let since = map.get(&cookie).and_then(|p| p.since);
            match (self.timeout, since) {
                (Some(t), Some(since)) => {
                    let deadline = since + t;
                    if Instant::now() >= deadline {
                        // The connection is unusable now (replies may
                        // still come, out of step): fail every request.
                        self.shared.dead.lock().get_or_insert_with(|| {
                            format!(
                                "the server did not answer a request within {} s \
                                 (set {TIMEOUT_ENV}=SECONDS to wait longer, 0 to wait forever)",
                                t.as_secs()
                            )
                        });
                        self.control.shutdown();
                        self.shared.cv.notify_all();
                        continue;
                    }
                    self.shared.cv.wait_until(&mut map, deadline);
                }
                _ => self.shared.cv.wait(&mut map),
            }
        }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::range(offset)),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let max = self.max_request as usize;
        let mut cookies = Vec::new();
        for (i, piece) in buf.chunks(max).enumerate() {
            let off = offset + (i * max) as u64;
            cookies.push(self.submit(Command::Read, off, piece.len() as u32, &[], off)?);
        }
        for (i, c) in cookies.into_iter().enumerate() {
            let p = self.wait(c)?;
            let start = i * max;
            let n = p.data.len();
            buf[start..start + n].copy_from_slice(&p.data);
        }
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, data.len() as u64)?;
        let max = self.max_request as usize;
        let mut cookies = Vec::new();
        for (i, piece) in data.chunks(max).enumerate() {
            let off = offset + (i * max) as u64;
            cookies.push(self.submit(Command::Write, off, piece.len() as u32, piece, 0)?);
        }
        for c in cookies {
            self.wait(c)?;
        }
        Ok(())
    }

    /// `NBD_CMD_WRITE_ZEROES` or `NBD_CMD_TRIM` over a range of any length.
    fn ranged(&self, command: Command, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        // Pieces below 4 GiB, aligned to the minimum block size.
        let step = (1u64 << 30).max(u64::from(self.min_block));
        let mut cookies = Vec::new();
        let mut at = offset;
        while at < offset + len {
            let n = step.min(offset + len - at);
            cookies.push(self.submit(command, at, n as u32, &[], 0)?);
            at += n;
        }
        for c in cookies {
            self.wait(c)?;
        }
        Ok(())
    }

    /// `NBD_CMD_WRITE_ZEROES` (success proves nothing: see the crate docs).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.ranged(Command::WriteZeroes, offset, len)
    }

    /// `NBD_CMD_TRIM`.
    pub fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.ranged(Command::Trim, offset, len)
    }

    /// `NBD_CMD_FLUSH`, if the server takes it.
    pub fn flush(&self) -> Result<()> {
        if !self.flags.contains(TransmissionFlags::SEND_FLUSH) {
            return Ok(());
        }
        let c = self.submit(Command::Flush, 0, 0, &[], 0)?;
        self.wait(c).map(|_| ())
    }

    /// `base:allocation` block status of a prefix of `[offset, offset+len)`
    /// (all data when the server has no block status).
    pub fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let Some(_) = self.alloc_context else {
            return Ok(vec![Extent {
                offset,
                length: len,
                kind: Kind::Data,
            }]);
        };
        let ask = len.min(1 << 30) as u32;
        let c = self.submit(Command::BlockStatus, offset, ask, &[], 0)?;
        let p = self.wait(c)?;
        let mut out = Vec::new();
        let mut at = offset;
        for (l, flags) in p.status {
            let l = u64::from(l).min(offset + u64::from(ask) - at);
            if l == 0 {
                break;
            }
            let kind = match (flags & STATE_HOLE != 0, flags & STATE_ZERO != 0) {
                (true, true) => Kind::Hole,
                (false, true) => Kind::Zero,
                _ => Kind::Data,
            };
            push_extent(
                &mut out,
                Extent {
                    offset: at,
                    length: l,
                    kind,
                },
            );
            at += l;
        }
        if out.is_empty() {
            out.push(Extent {
                offset,
                length: u64::from(ask),
                kind: Kind::Data,
            });
        }
        Ok(out)
    }

    /// Soft disconnect (also done on drop).
    pub fn disconnect(&self) {
        let header = RequestHeader {
            flags: CommandFlags::empty(),
            command: Command::Disconnect,
            cookie: 0,
            offset: 0,
            length: 0,
        }
        .encode();
        {
            let mut w = self.writer.lock();
            let _ = w.write_all(&header);
            w.shutdown();
        }
        if let Some(h) = self.reader.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.disconnect();
    }
}

fn write_all_vectored(w: &mut impl Write, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() || !b.is_empty() {
        let n = w.write_vectored(&[std::io::IoSlice::new(a), std::io::IoSlice::new(b)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

fn reader_loop(mut rx: impl Read, shared: &Shared) {
    let why = match read_replies(&mut rx, shared) {
        Ok(()) => "the server closed the connection".to_string(),
        Err(e) => e,
    };
    // A reason set first (a timeout that shut the socket) stays.
    shared.dead.lock().get_or_insert(why);
    shared.cv.notify_all();
}

/// Reads replies until the connection ends; `Err` names a protocol or I/O
/// error.
fn read_replies(rx: &mut impl Read, shared: &Shared) -> Result<(), String> {
    let mut head = [0u8; 20];
    loop {
        match rx.read_exact(&mut head[..4]) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("reading a reply: {e}")),
        }
        let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = if magic == vdisk_nbd::consts::SIMPLE_REPLY_MAGIC {
            16
        } else {
            20
        };
        rx.read_exact(&mut head[4..len])
            .map_err(|e| format!("reading a reply: {e}"))?;
        let header = match ReplyHeader::try_parse(&head[..len]) {
            Ok(Some((h, _))) => h,
            Ok(None) => return Err("short reply header".into()),
            Err(e) => return Err(format!("bad reply: {e}")),
        };
        match header {
            ReplyHeader::Simple { cookie, error } => {
                // A READ's data follows a successful simple reply; read it
                // straight into the waiting buffer.
                let mut data = {
                    let mut map = shared.pending.lock();
                    let p = map
                        .get_mut(&cookie)
                        .ok_or_else(|| format!("reply for unknown cookie {cookie}"))?;
                    std::mem::take(&mut p.data)
                };
                if error == 0 && !data.is_empty() {
                    rx.read_exact(&mut data)
                        .map_err(|e| format!("reading READ data: {e}"))?;
                }
                let mut map = shared.pending.lock();
                if let Some(p) = map.get_mut(&cookie) {
                    p.data = data;
                    if error != 0 {
                        p.error = Some(errno_text(error));
                    }
                    p.done = true;
                }
                drop(map);
                shared.cv.notify_all();
            }
            ReplyHeader::Chunk(h) => chunk(rx, shared, h)?,
        }
    }
}

fn chunk(rx: &mut impl Read, shared: &Shared, h: ChunkHeader) -> Result<(), String> {
    if h.length > MAX_REQUEST + 4096 {
        return Err(format!("reply chunk of {} bytes is too large", h.length));
    }
    let mut payload = vec![0u8; h.length as usize];
    rx.read_exact(&mut payload)
        .map_err(|e| format!("reading a reply chunk: {e}"))?;
    let chunk = Chunk::parse(&h, &payload).map_err(|e| format!("bad reply chunk: {e}"))?;
    let mut map = shared.pending.lock();
    let p = map
        .get_mut(&h.cookie)
        .ok_or_else(|| format!("reply for unknown cookie {}", h.cookie))?;
    match chunk {
        Chunk::None => {}
        Chunk::OffsetData { offset, data } => {
            let start = offset
                .checked_sub(p.read_offset)
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| s.saturating_add(data.len()) <= p.data.len())
                .ok_or("READ reply data outside the request")?;
            p.data[start..start + data.len()].copy_from_slice(data);
        }
        Chunk::OffsetHole { offset, length } => {
            let start = offset
                .checked_sub(p.read_offset)
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| s.saturating_add(length as usize) <= p.data.len())
                .ok_or("READ reply hole outside the request")?;
            p.data[start..start + length as usize].fill(0);
        }
        Chunk::BlockStatus { descriptors, .. } => {
            p.status = descriptors.iter().map(|d| (d.length, d.flags)).collect();
        }
        Chunk::Error { error, message, .. } => {
            let base = errno_text(error);
            p.error = Some(if message.is_empty() {
                base
            } else {
                format!("{base}: {message}")
            });
        }
        _ => {}
    }
    if h.done() {
        p.done = true;
        drop(map);
        shared.cv.notify_all();
    }
    Ok(())
}

fn errno_text(e: u32) -> String {
    let name = match e {
        1 => "EPERM (not permitted)",
        5 => "EIO (I/O error)",
        12 => "ENOMEM",
        22 => "EINVAL (invalid request)",
        28 => "ENOSPC (no space left)",
        75 => "EOVERFLOW",
        95 => "ENOTSUP (not supported)",
        108 => "ESHUTDOWN (server shutting down)",
        _ => return format!("server error {e}"),
    };
    format!("server error {name}")
}

/// An NBD export as a source.
#[derive(Debug, Clone)]
pub struct NbdSource(pub Arc<NbdClient>);

impl Source for NbdSource {
    fn describe(&self) -> String {
        self.0.uri.clone()
    }
    fn size(&self) -> u64 {
        self.0.size
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.0.read(buf, offset)
    }
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        self.0.block_status(offset, len)
    }
}

/// An NBD export as a destination. It always exists already, so it is
/// never assumed to be zero unless the user says so.
#[derive(Debug)]
pub struct NbdDest {
    client: Arc<NbdClient>,
    target_is_zero: bool,
}

impl NbdDest {
    /// Wraps a connection; refuses a read-only export.
    pub fn new(client: Arc<NbdClient>, target_is_zero: bool) -> Result<Self> {
        if client.read_only() {
            return Err(Error::nbd(&client.uri, "the export is read-only"));
        }
        Ok(NbdDest {
            client,
            target_is_zero,
        })
    }
}

impl Dest for NbdDest {
    fn describe(&self) -> String {
        self.client.uri.clone()
    }
    fn size(&self) -> u64 {
        self.client.size
    }
    fn alignment(&self) -> u64 {
        u64::from(self.client.min_block)
    }
    fn created_zero(&self) -> bool {
        self.target_is_zero
    }
    fn zero_op(&self) -> Option<&'static str> {
        if self
            .client
            .flags
            .contains(TransmissionFlags::SEND_WRITE_ZEROES)
        {
            Some("WRITE_ZEROES")
        } else if self.client.flags.contains(TransmissionFlags::SEND_TRIM) {
            Some("TRIM")
        } else {
            None
        }
    }
    fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.client.write(data, offset)
    }
    fn zero_fast(&self, offset: u64, len: u64) -> Result<()> {
        match self.zero_op() {
            Some("WRITE_ZEROES") => self.client.write_zeroes(offset, len),
            Some(_) => self.client.trim(offset, len),
            None => Err(Error::Unsupported(format!(
                "{} offers neither WRITE_ZEROES nor TRIM",
                self.client.uri
            ))),
        }
    }
    fn can_read_back(&self) -> bool {
        true
    }
    fn read_back(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.client.read(buf, offset)
    }
    fn finish(&self) -> Result<()> {
        self.client.flush()
    }
    fn reopen(&self) -> Result<Box<dyn Source>> {
        Ok(Box::new(NbdSource(self.client.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = NbdUri::parse("nbd://127.0.0.1:10811/rbd/a%20b").unwrap();
        assert_eq!(
            u.transport,
            Transport::Tcp {
                host: "127.0.0.1".into(),
                port: 10811
            }
        );
        assert_eq!(u.export, "rbd/a b");
        let u = NbdUri::parse("nbd://host").unwrap();
        assert_eq!(u.export, "");
        assert!(matches!(u.transport, Transport::Tcp { port: 10809, .. }));
        let u = NbdUri::parse("nbd://[::1]:99/x").unwrap();
        assert_eq!(
            u.transport,
            Transport::Tcp {
                host: "::1".into(),
                port: 99
            }
        );
        let u = NbdUri::parse("nbd+unix:///disk?socket=/run/s.sock").unwrap();
        assert_eq!(
            u.transport,
            Transport::Unix {
                socket: "/run/s.sock".into()
            }
        );
        assert_eq!(u.export, "disk");
        for bad in [
            "nbd:/x",
            "nbd://:10/x",
            "nbd://h:port/x",
            "nbd://h:99999/x",
            "nbd+unix:///x",
            "nbd+unix://host/x?socket=/s",
            "nbd://h/x?socket=/s",
            "nbd://h/x?foo=1",
            "nbd://h/%zz",
            "http://h/x",
        ] {
            let e = NbdUri::parse(bad).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{bad}: {e}");
        }
        assert!(matches!(
            NbdUri::parse("nbds://h/x"),
            Err(Error::Unsupported(_))
        ));
    }
}
