//! Client side (for copying *to* NBD destinations): a sans-IO fixed-newstyle
//! handshake and transmission reply decoding.
//!
//! The handshake sends, one at a time as the spec requires:
//!
//! 1. client flags (`FIXED_NEWSTYLE`, plus `NO_ZEROES` if offered);
//! 2. `NBD_OPT_STRUCTURED_REPLY` (if configured);
//! 3. `NBD_OPT_SET_META_CONTEXT` with the configured queries (if structured
//!    replies were acknowledged and there are queries);
//! 4. `NBD_OPT_GO` with `NBD_INFO_BLOCK_SIZE` (if configured); on
//!    `NBD_REP_ERR_UNSUP` it falls back to `NBD_OPT_EXPORT_NAME`.
//!
//! An error reply to steps 2 or 3 just means "without that feature"; only
//! `NBD_REP_ERR_SHUTDOWN` is fatal there (the client MUST then
//! soft-disconnect with [`abort_option`]).
//!
//! ```
//! use vdisk_nbd::client::{ClientConfig, ClientHandshake, ClientProgress};
//!
//! # fn run(server_bytes: &[&[u8]]) -> Result<(), vdisk_nbd::HandshakeError> {
//! let mut hs = ClientHandshake::new(ClientConfig::new("disk0"));
//! let mut chunks = server_bytes.iter();
//! let mut input: &[u8] = &[];
//! loop {
//!     let progress = hs.feed(input)?;
//!     input = &[];
//!     match progress {
//!         ClientProgress::NeedMore => match chunks.next() {
//!             Some(c) => input = c, // read from the socket
//!             None => return Ok(()),
//!         },
//!         ClientProgress::Send(bytes) => { let _ = bytes; /* write to the socket */ }
//!         ClientProgress::Done { negotiated, .. } => {
//!             println!("size {}", negotiated.size);
//!             return Ok(());
//!         }
//!         _ => return Ok(()),
//!     }
//! }
//! # }
//! # run(&[]).unwrap();
//! ```

mod transmission;

pub use transmission::{decode_reply, Chunk, ChunkHeader, Reply, ReplyHeader};

use std::collections::HashSet;

use crate::consts::*;
use crate::error::HandshakeError;
use crate::handshake::{Entry, Negotiated};
use crate::types::{BlockSize, MetaContext, TransmissionFlags};
use crate::wire::{nbd_string, put_str32, Reader};

/// What the client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Export to open ("" = default export).
    pub export: String,
    /// Ask for structured replies. Default true.
    pub structured_replies: bool,
    /// Meta contexts to select (only with structured replies). Default
    /// `["base:allocation"]`.
    pub meta_contexts: Vec<String>,
    /// Ask for `NBD_INFO_BLOCK_SIZE` in `NBD_OPT_GO` (and thereby promise to
    /// obey it). Default true.
    pub request_block_size: bool,
    /// Fall back to `NBD_OPT_EXPORT_NAME` if `NBD_OPT_GO` is unsupported.
    /// Default true.
    pub fallback_to_export_name: bool,
    /// Largest option reply payload accepted. Default 64 KiB.
    pub max_reply_len: u32,
}

impl ClientConfig {
    /// Defaults for `export`.
    pub fn new(export: impl Into<String>) -> Self {
        Self {
            export: export.into(),
            structured_replies: true,
            meta_contexts: vec![CONTEXT_BASE_ALLOCATION.to_owned()],
            request_block_size: true,
            fallback_to_export_name: true,
            max_reply_len: 64 * 1024,
        }
    }
}

/// Result of [`ClientHandshake::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientProgress {
    /// All input consumed; read more from the server.
    NeedMore,
    /// Send these bytes to the server, then call `feed(&[])`.
    Send(Vec<u8>),
    /// Handshake complete.
    Done {
        /// What was negotiated (`size`, `flags`, contexts with their ids...).
        negotiated: Box<Negotiated>,
        /// Bytes already received beyond the handshake.
        leftover: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Reply(u32),
    ExportNameReply,
    Closed,
}

/// Client-side handshake state machine. See the module docs.
#[derive(Debug)]
pub struct ClientHandshake {
    config: ClientConfig,
    state: State,
    rx: Vec<u8>,
    no_zeroes: bool,
    structured: bool,
    contexts: Vec<MetaContext>,
    context_ids: HashSet<u32>,
    export_info: Option<(u64, TransmissionFlags)>,
    block_size: Option<BlockSize>,
}

enum Step {
    Continue,
    Yield(ClientProgress),
}

impl ClientHandshake {
    /// Starts a handshake; nothing is sent before the server greeting.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            state: State::Greeting,
            rx: Vec::new(),
            no_zeroes: false,
            structured: false,
            contexts: Vec::new(),
            context_ids: HashSet::new(),
            export_info: None,
            block_size: None,
        }
    }

    /// Feeds bytes from the server; returns at most one step. After
    /// [`ClientProgress::Send`], send the bytes and call `feed(&[])`.
    /// Errors are fatal.
    pub fn feed(&mut self, input: &[u8]) -> Result<ClientProgress, HandshakeError> {
        let result = self.feed_inner(input);
        if result.is_err() {
            self.state = State::Closed;
        }
        result
    }

    fn feed_inner(&mut self, input: &[u8]) -> Result<ClientProgress, HandshakeError> {
        if self.state == State::Closed {
            return Err(HandshakeError::Misuse("handshake is over"));
        }
        // Replies are bounded by `max_reply_len`, and the caller only feeds
        // more after `NeedMore`, so this buffer stays small.
        self.rx.extend_from_slice(input);
        loop {
            let need = match self.state {
                State::Greeting => GREETING_LEN,
                State::Reply(_) => {
                    let Some(header) = self.rx.get(..OPTION_REPLY_HEADER_LEN) else {
                        return Ok(ClientProgress::NeedMore);
                    };
                    let mut r = Reader::new(header);
                    let _ = r.bytes(16);
                    let len = r.u32().unwrap_or_default();
                    if len > self.config.max_reply_len {
                        return Err(HandshakeError::ReplyTooLarge(len));
                    }
                    OPTION_REPLY_HEADER_LEN + len as usize
                }
                State::ExportNameReply => {
                    10 + if self.no_zeroes {
                        0
                    } else {
                        EXPORT_NAME_ZEROES
                    }
                }
                State::Closed => return Err(HandshakeError::Misuse("handshake is over")),
            };
            if self.rx.len() < need {
                return Ok(ClientProgress::NeedMore);
            }
            let rest = self.rx.split_off(need);
            let message = std::mem::replace(&mut self.rx, rest);
            if let Step::Yield(p) = self.process(&message)? {
                return Ok(p);
            }
        }
    }

    fn process(&mut self, message: &[u8]) -> Result<Step, HandshakeError> {
        let mut r = Reader::new(message);
        match self.state {
            State::Greeting => {
                let magic = r.u64().unwrap_or_default();
                if magic != NBDMAGIC {
                    return Err(HandshakeError::BadServerMagic(magic));
                }
                let magic = r.u64().unwrap_or_default();
                if magic == CLISERV_MAGIC {
                    return Err(HandshakeError::OldstyleServer);
                }
                if magic != IHAVEOPT {
                    return Err(HandshakeError::BadServerMagic(magic));
                }
                let flags = r.u16().unwrap_or_default();
                if flags & FLAG_FIXED_NEWSTYLE == 0 {
                    return Err(HandshakeError::NotFixedNewstyle);
                }
                // Unknown handshake flags are ignored (SHOULD).
                self.no_zeroes = flags & FLAG_NO_ZEROES != 0;
                let mut client_flags = FLAG_C_FIXED_NEWSTYLE;
                if self.no_zeroes {
                    client_flags |= FLAG_C_NO_ZEROES;
                }
                let mut out = client_flags.to_be_bytes().to_vec();
                // The flags get no reply, so the first option can follow at once.
                let first = if self.config.structured_replies {
                    self.state = State::Reply(OPT_STRUCTURED_REPLY);
                    encode_option(OPT_STRUCTURED_REPLY, &[])
                } else {
                    self.go()
                };
                out.extend(first);
                Ok(Step::Yield(ClientProgress::Send(out)))
            }
            State::Reply(option) => {
                let magic = r.u64().unwrap_or_default();
                let got = r.u32().unwrap_or_default();
                let reply = r.u32().unwrap_or_default();
                let _len = r.u32();
                let data = r.rest();
                if magic != OPTION_REPLY_MAGIC {
                    return Err(HandshakeError::BadReplyMagic(magic));
                }
                if got != option {
                    return Err(HandshakeError::ReplyForWrongOption {
                        expected: option,
                        got,
                    });
                }
                self.option_reply(option, reply, data)
            }
            State::ExportNameReply => {
                let size = r.u64().unwrap_or_default();
                let flags = TransmissionFlags::from_bits(r.u16().unwrap_or_default());
                self.export_info = Some((size, flags));
                self.done(Entry::ExportName)
            }
            State::Closed => Err(HandshakeError::Misuse("handshake is over")),
        }
    }

    fn go(&mut self) -> Vec<u8> {
        self.state = State::Reply(OPT_GO);
        let requests: &[u16] = if self.config.request_block_size {
            &[INFO_BLOCK_SIZE]
        } else {
            &[]
        };
        info_option(OPT_GO, &self.config.export, requests)
    }

    fn done(&mut self, entry: Entry) -> Result<Step, HandshakeError> {
        let Some((size, flags)) = self.export_info else {
            return Err(HandshakeError::MalformedReply(
                "NBD_REP_ACK to NBD_OPT_GO without NBD_INFO_EXPORT",
            ));
        };
        self.state = State::Closed;
        let negotiated = Negotiated {
            export: self.config.export.clone(),
            size,
            flags,
            structured_replies: self.structured,
            meta_contexts: std::mem::take(&mut self.contexts),
            block_size: self.block_size,
            block_size_requested: self.config.request_block_size && entry == Entry::Go,
            no_zeroes: self.no_zeroes,
            entry,
        };
        Ok(Step::Yield(ClientProgress::Done {
            negotiated: Box::new(negotiated),
            leftover: std::mem::take(&mut self.rx),
        }))
    }

    fn option_reply(
        &mut self,
        option: u32,
        reply: u32,
        data: &[u8],
    ) -> Result<Step, HandshakeError> {
        let unexpected = HandshakeError::UnexpectedReply { option, reply };
        if reply & REP_FLAG_ERROR != 0 {
            if reply == REP_ERR_SHUTDOWN {
                return Err(HandshakeError::ServerShutdown);
            }
            return match option {
                // Optional features: carry on without them.
                OPT_STRUCTURED_REPLY => {
                    let next = self.after_structured_reply();
                    Ok(Step::Yield(ClientProgress::Send(next)))
                }
                OPT_SET_META_CONTEXT => {
                    self.contexts.clear();
                    self.context_ids.clear();
                    Ok(Step::Yield(ClientProgress::Send(self.go())))
                }
                OPT_GO if reply == REP_ERR_UNSUP && self.config.fallback_to_export_name => {
                    self.state = State::ExportNameReply;
                    self.block_size = None;
                    self.export_info = None;
                    let name = self.config.export.clone();
                    Ok(Step::Yield(ClientProgress::Send(encode_option(
                        OPT_EXPORT_NAME,
                        name.as_bytes(),
                    ))))
                }
                _ => Err(HandshakeError::Rejected {
                    option,
                    reply,
                    message: String::from_utf8_lossy(data).into_owned(),
                }),
            };
        }
        match (option, reply) {
            (OPT_STRUCTURED_REPLY, REP_ACK) => {
                self.structured = true;
                let next = self.after_structured_reply();
                Ok(Step::Yield(ClientProgress::Send(next)))
            }
            (OPT_SET_META_CONTEXT, REP_META_CONTEXT) => {
                let mut r = Reader::new(data);
                let id = r
                    .u32()
                    .ok_or(HandshakeError::MalformedReply("short NBD_REP_META_CONTEXT"))?;
                let name = nbd_string(r.rest())
                    .ok_or(HandshakeError::MalformedReply("bad context name"))?;
                // A set, not a scan of `contexts`: the server controls how
                // many replies arrive.
                if !self.context_ids.insert(id) {
                    return Err(HandshakeError::MalformedReply("duplicate context id"));
                }
                self.contexts.push(MetaContext { id, name });
                Ok(Step::Continue)
            }
            (OPT_SET_META_CONTEXT, REP_ACK) => Ok(Step::Yield(ClientProgress::Send(self.go()))),
            (OPT_GO, REP_INFO) => {
                self.info(data)?;
                Ok(Step::Continue)
            }
            (OPT_GO, REP_ACK) => self.done(Entry::Go),
            _ => Err(unexpected),
        }
    }

    fn after_structured_reply(&mut self) -> Vec<u8> {
        if self.structured && !self.config.meta_contexts.is_empty() {
            self.state = State::Reply(OPT_SET_META_CONTEXT);
            meta_context_option(
                OPT_SET_META_CONTEXT,
                &self.config.export,
                &self.config.meta_contexts,
            )
        } else {
            self.go()
        }
    }

    fn info(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        let mut r = Reader::new(data);
        let malformed = HandshakeError::MalformedReply;
        let info = r.u16().ok_or(malformed("short NBD_REP_INFO"))?;
        match info {
            INFO_EXPORT => {
                let size = r.u64();
                let flags = r.u16();
                match (size, flags, r.remaining()) {
                    (Some(size), Some(flags), 0) => {
                        self.export_info = Some((size, TransmissionFlags::from_bits(flags)));
                    }
                    _ => return Err(malformed("NBD_INFO_EXPORT length is not 12")),
                }
            }
            INFO_BLOCK_SIZE => {
                let (min, pref, max) = (r.u32(), r.u32(), r.u32());
                match (min, pref, max, r.remaining()) {
                    (Some(minimum), Some(preferred), Some(maximum), 0) => {
                        let bs = BlockSize {
                            minimum,
                            preferred,
                            maximum,
                        };
                        if !bs.is_valid() {
                            return Err(malformed("NBD_INFO_BLOCK_SIZE violates the spec"));
                        }
                        self.block_size = Some(bs);
                    }
                    _ => return Err(malformed("NBD_INFO_BLOCK_SIZE length is not 14")),
                }
            }
            // Names, descriptions and unknown items are ignored (MUST ignore
            // unknown ones; we have no use for the others).
            _ => {}
        }
        Ok(())
    }
}

/// Encodes one client option: `IHAVEOPT`, option, length, data.
pub fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_HEADER_LEN + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// `NBD_OPT_ABORT`, for a soft disconnect during the handshake.
pub fn abort_option() -> Vec<u8> {
    encode_option(OPT_ABORT, &[])
}

/// Encodes `NBD_OPT_INFO` or `NBD_OPT_GO` (`option`) for `export` with the
/// given information requests.
pub fn info_option(option: u32, export: &str, requests: &[u16]) -> Vec<u8> {
    let mut data = Vec::with_capacity(6 + export.len() + 2 * requests.len());
    put_str32(&mut data, export);
    let count = u16::try_from(requests.len()).unwrap_or(u16::MAX);
    data.extend_from_slice(&count.to_be_bytes());
    for r in requests.iter().take(usize::from(count)) {
        data.extend_from_slice(&r.to_be_bytes());
    }
    encode_option(option, &data)
}

/// Encodes `NBD_OPT_LIST_META_CONTEXT` or `NBD_OPT_SET_META_CONTEXT`
/// (`option`) for `export` with `queries`.
pub fn meta_context_option<S: AsRef<str>>(option: u32, export: &str, queries: &[S]) -> Vec<u8> {
    let mut data = Vec::new();
    put_str32(&mut data, export);
    let count = u32::try_from(queries.len()).unwrap_or(u32::MAX);
    data.extend_from_slice(&count.to_be_bytes());
    for q in queries {
        put_str32(&mut data, q.as_ref());
    }
    encode_option(option, &data)
}
