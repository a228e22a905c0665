//! A tiny blocking NBD client on raw sockets, built on the client side of
//! `vdisk-nbd`, for tests that need exact control over what is sent.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;
use vdisk_nbd::client::{
    decode_reply, Chunk, ClientConfig, ClientHandshake, ClientProgress, Reply,
};
use vdisk_nbd::{BlockDescriptor, Command, CommandFlags, Negotiated, RequestHeader};

/// A socket of either kind.
pub trait Stream: Read + Write + Send {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

/// A connected client in the transmission phase.
pub struct Raw {
    pub stream: Box<dyn Stream>,
    pub negotiated: Negotiated,
    buf: Vec<u8>,
    pending: HashMap<u64, Pending>,
}

struct Pending {
    command: Command,
    offset: u64,
    length: u32,
    data: Vec<u8>,
    error: Option<u32>,
    message: String,
    extents: Vec<BlockDescriptor>,
}

/// A complete reply.
#[derive(Debug)]
pub struct Done {
    pub cookie: u64,
    /// Raw NBD error (None = success).
    pub error: Option<u32>,
    /// Error message of a structured error chunk.
    pub message: String,
    /// READ data, holes filled with zeros.
    pub data: Vec<u8>,
    /// BLOCK_STATUS descriptors.
    pub extents: Vec<BlockDescriptor>,
}

/// Runs the client handshake on `stream`.
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    cfg: ClientConfig,
) -> io::Result<(Negotiated, Vec<u8>)> {
    let mut hs = ClientHandshake::new(cfg);
    let mut buf = vec![0u8; 64 * 1024];
    let mut input: Vec<u8> = Vec::new();
    loop {
        let progress = hs.feed(&input).map_err(io::Error::other)?;
        input.clear();
        match progress {
            ClientProgress::NeedMore => {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                input.extend_from_slice(&buf[..n]);
            }
            ClientProgress::Send(bytes) => stream.write_all(&bytes)?,
            ClientProgress::Done {
                negotiated,
                leftover,
            } => return Ok((*negotiated, leftover)),
            other => return Err(io::Error::other(format!("unexpected {other:?}"))),
        }
    }
}

impl Raw {
    /// Connects over TCP with the default client configuration.
    pub fn tcp(port: u16, export: &str) -> Self {
        Self::tcp_with(port, ClientConfig::new(export)).expect("handshake")
    }

    /// Connects over TCP with `cfg`.
    pub fn tcp_with(port: u16, cfg: ClientConfig) -> io::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.set_nodelay(true)?;
        Self::on(Box::new(s), cfg)
    }

    /// Connects over the Unix socket.
    pub fn unix(path: &std::path::Path, export: &str) -> Self {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Self::on(Box::new(s), ClientConfig::new(export)).expect("handshake")
    }

    fn on(mut stream: Box<dyn Stream>, cfg: ClientConfig) -> io::Result<Self> {
        let (negotiated, leftover) = handshake(&mut stream, cfg)?;
        Ok(Raw {
            stream,
            negotiated,
            buf: leftover,
            pending: HashMap::new(),
        })
    }

    /// Sends one request (and its payload, if any) without waiting.
    pub fn send(
        &mut self,
        command: Command,
        flags: CommandFlags,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let header = RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        };
        let expect_data = command == Command::Read && length <= 64 << 20;
        self.pending.insert(
            cookie,
            Pending {
                command,
                offset,
                length,
                data: if expect_data {
                    vec![0u8; length as usize]
                } else {
                    Vec::new()
                },
                error: None,
                message: String::new(),
                extents: Vec::new(),
            },
        );
        let mut msg = header.encode().to_vec();
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg)
    }

    /// Waits for the next complete reply (of any request).
    pub fn recv(&mut self) -> io::Result<Done> {
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let Raw { buf, pending, .. } = self;
            let decoded = decode_reply(buf, 64 << 20, |cookie| {
                pending
                    .get(&cookie)
                    .filter(|p| p.command == Command::Read)
                    .map_or(0, |p| p.data.len())
            })
            .map_err(io::Error::other)?;
            let Some((reply, used)) = decoded else {
                let n = self.stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.buf.extend_from_slice(&chunk[..n]);
                continue;
            };
            let finished = match reply {
                Reply::Simple {
                    cookie,
                    error,
                    data,
                } => {
                    let p = pending
                        .get_mut(&cookie)
                        .ok_or_else(|| io::Error::other(format!("unknown cookie {cookie}")))?;
                    if error != 0 {
                        p.error = Some(error);
                    } else {
                        p.data.copy_from_slice(data);
                    }
                    Some(cookie)
                }
                Reply::Chunk { header, chunk } => {
                    let p = pending.get_mut(&header.cookie).ok_or_else(|| {
                        io::Error::other(format!("unknown cookie {}", header.cookie))
                    })?;
                    match chunk {
                        Chunk::OffsetData { offset, data } => {
                            let at = (offset - p.offset) as usize;
                            p.data[at..at + data.len()].copy_from_slice(data);
                        }
                        Chunk::OffsetHole { offset, length } => {
                            let at = (offset - p.offset) as usize;
                            p.data[at..at + length as usize].fill(0);
                        }
                        Chunk::BlockStatus { descriptors, .. } => p.extents = descriptors,
                        Chunk::Error { error, message, .. } => {
                            p.error = Some(error);
                            p.message = message.into_owned();
                        }
                        _ => {}
                    }
                    header.done().then_some(header.cookie)
                }
                other => return Err(io::Error::other(format!("unexpected reply {other:?}"))),
            };
            self.buf.drain(..used);
            if let Some(cookie) = finished {
                let p = self.pending.remove(&cookie).expect("pending");
                return Ok(Done {
                    cookie,
                    error: p.error,
                    message: p.message,
                    data: p.data,
                    extents: p.extents,
                });
            }
        }
    }

    /// Sends one request and waits for its reply (nothing else in flight).
    pub fn call(
        &mut self,
        command: Command,
        flags: CommandFlags,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Done {
        let cookie = 0xC0FFEE;
        self.send(command, flags, cookie, offset, length, payload)
            .expect("send");
        let done = self.recv().expect("reply");
        assert_eq!(done.cookie, cookie);
        done
    }

    pub fn read(&mut self, offset: u64, length: u32) -> Vec<u8> {
        let done = self.call(Command::Read, CommandFlags::empty(), offset, length, &[]);
        assert_eq!(done.error, None, "read {offset}+{length}: {}", done.message);
        done.data
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let done = self.call(
            Command::Write,
            CommandFlags::empty(),
            offset,
            data.len() as u32,
            data,
        );
        assert_eq!(done.error, None, "write {offset}+{}", data.len());
    }

    pub fn flush(&mut self) {
        let done = self.call(Command::Flush, CommandFlags::empty(), 0, 0, &[]);
        assert_eq!(done.error, None, "flush");
    }

    /// Sends NBD_CMD_DISC (without waiting for anything).
    pub fn send_disc(&mut self) {
        let header = RequestHeader {
            flags: CommandFlags::empty(),
            command: Command::Disconnect,
            cookie: 0,
            offset: 0,
            length: 0,
        };
        self.stream.write_all(&header.encode()).expect("send DISC");
    }

    /// Sends NBD_CMD_DISC and waits for the server to close.
    pub fn disconnect(mut self) {
        self.send_disc();
        assert!(
            closed_by_peer(&mut self.stream),
            "server kept the connection"
        );
    }
}

/// True if the peer closes the stream (EOF or reset) before the read
/// timeout; data that arrives first is skipped.
pub fn closed_by_peer<S: Read + ?Sized>(s: &mut S) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
