//! Server side of the fixed-newstyle handshake, as a sans-IO state machine.
//!
//! # Driving it
//!
//! ```
//! use vdisk_nbd::handshake::{Event, HandshakeConfig, Progress, ServerHandshake};
//! use vdisk_nbd::{OptionError, TransmissionFlags};
//!
//! # fn run(client_bytes: &[&[u8]]) -> Result<(), vdisk_nbd::HandshakeError> {
//! let mut hs = ServerHandshake::new(HandshakeConfig::default());
//! let mut to_client = hs.initial_bytes();
//! let mut chunks = client_bytes.iter();
//! let mut input: &[u8] = chunks.next().copied().unwrap_or_default();
//! loop {
//!     // Every call consumes all of `input`; call again with `&[]` after
//!     // answering to let the handshake look at what it buffered.
//!     let progress = hs.feed(input)?;
//!     input = &[];
//!     match progress {
//!         Progress::NeedMore => match chunks.next() {
//!             Some(c) => input = c,   // in real life: read from the socket
//!             None => return Ok(()),  // peer closed
//!         },
//!         Progress::Reply { bytes, .. } => to_client.extend(bytes),
//!         Progress::Event(Event::Info { export, .. }) if export == "disk0" => {
//!             to_client.extend(hs.reply_info_export(1 << 30, TransmissionFlags::SEND_FLUSH)?);
//!             to_client.extend(hs.reply_ack()?);
//!         }
//!         Progress::Event(Event::ListExports) => {
//!             to_client.extend(hs.reply_server_list(&["disk0"])?);
//!         }
//!         Progress::Event(Event::ExportName(name)) if name == "disk0" => {
//!             to_client.extend(hs.reply_export_name(1 << 30, TransmissionFlags::empty())?);
//!         }
//!         Progress::Event(Event::ExportName(_)) => return Ok(()), // MUST hang up
//!         Progress::Event(Event::ListMetaContexts { .. }) => {
//!             to_client.extend(hs.reply_list_meta_contexts()?);
//!         }
//!         Progress::Event(Event::SetMetaContexts { .. }) => {
//!             to_client.extend(hs.reply_set_meta_contexts()?);
//!         }
//!         Progress::Event(_) => {
//!             to_client.extend(hs.reply_error(OptionError::UnknownExport, "no such export")?);
//!         }
//!         Progress::Abort { bytes } => { to_client.extend(bytes); return Ok(()); }
//!         Progress::Done { negotiated, leftover } => {
//!             // switch to the transmission phase with `negotiated`;
//!             // `leftover` are request bytes the client already sent.
//!             let _ = (negotiated, leftover);
//!             return Ok(());
//!         }
//!         _ => return Ok(()),
//!     }
//! }
//! # }
//! # run(&[]).unwrap();
//! ```
//!
//! # Behaviour where the spec leaves room
//!
//! * **Client without `NBD_FLAG_C_FIXED_NEWSTYLE`**: honoured as fixed
//!   newstyle (the spec says servers MAY), unless
//!   [`HandshakeConfig::require_fixed_newstyle`].
//! * **Oversized option data** (over [`HandshakeConfig::max_option_len`]):
//!   skipped without being stored and answered with `NBD_REP_ERR_TOO_BIG`
//!   once skipped, up to [`HandshakeConfig::max_discard_len`]; beyond that,
//!   and for `NBD_OPT_EXPORT_NAME` (which has no error reply), a hard
//!   disconnect ([`HandshakeError::OptionTooLarge`]).
//! * **Too many options** (over [`HandshakeConfig::max_options`]): hard
//!   disconnect, as the spec allows for denial of service.
//! * **Unknown options** (including `NBD_OPT_PEEK_EXPORT` and
//!   `NBD_OPT_EXTENDED_HEADERS`): `NBD_REP_ERR_UNSUP`, handshake continues.
//! * **`NBD_OPT_STARTTLS`**: `NBD_REP_ERR_UNSUP` (NOTLS mode, no TLS support
//!   at all), or `NBD_REP_ERR_INVALID` if it carried data.
//! * **Data on `NBD_OPT_LIST` / `NBD_OPT_STRUCTURED_REPLY`**:
//!   `NBD_REP_ERR_INVALID` (spec: SHOULD). Data on `NBD_OPT_ABORT` is
//!   ignored (spec: SHOULD ignore).
//! * **Repeated `NBD_OPT_STRUCTURED_REPLY`**: acknowledged again (spec: MAY
//!   fail; acknowledging is harmless).
//! * **`NBD_OPT_SET_META_CONTEXT` before structured replies**:
//!   `NBD_REP_ERR_INVALID`. **`NBD_OPT_LIST_META_CONTEXT` before structured
//!   replies** is answered normally (spec: MAY fail; listing is harmless).
//! * **Malformed `NBD_OPT_INFO`/`GO`/`*_META_CONTEXT` data** (lengths
//!   running past the option, trailing bytes, strings that are not valid NBD
//!   strings, duplicate information requests): `NBD_REP_ERR_INVALID`.
//! * **Meta context queries** without a colon or with unknown namespaces
//!   select nothing and are not an error (spec: MAY fail / MUST ignore).
//!   A query ending in `:` (empty leaf) lists every supported context in
//!   that namespace for `LIST` and selects nothing for `SET`.
//! * **Context ids**: the context at index *i* of
//!   [`HandshakeConfig::meta_contexts`] always gets id *i + 1*; `LIST`
//!   replies carry id 0 as the spec recommends.
//! * **Transmission flags** passed by the caller are fixed up to the MUSTs:
//!   `HAS_FLAGS` is always set, `SEND_DF` is cleared without structured
//!   replies and `SEND_FAST_ZERO` is cleared without `SEND_WRITE_ZEROES`.
//! * **Pipelining**: a client MUST wait for the final reply before sending
//!   another option; bytes that arrive early are buffered up to one maximal
//!   option (then [`HandshakeError::BacklogFull`]) and handed back in
//!   [`Progress::Done::leftover`] if they turn out to be transmission data.

use crate::consts::*;
use crate::error::HandshakeError;
use crate::types::{BlockSize, MetaContext, OptionError, TransmissionFlags};
use crate::wire::{nbd_string, put_str32, sanitize_message, Reader};

/// Handshake-level policy of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Largest option data the server reads into memory. Default 64 KiB,
    /// far above what any legitimate option needs (strings are at most
    /// 4 KiB).
    pub max_option_len: u32,
    /// Largest oversized option data the server skips (without storing it)
    /// to answer `NBD_REP_ERR_TOO_BIG`; anything larger is a hard
    /// disconnect. Default 1 MiB.
    pub max_discard_len: u32,
    /// Options accepted per connection before hard-disconnecting as a
    /// denial of service. Default 1024.
    pub max_options: u32,
    /// Advertise `NBD_FLAG_NO_ZEROES`. Default true.
    pub advertise_no_zeroes: bool,
    /// Refuse clients that do not set `NBD_FLAG_C_NO_ZEROES`. Default false.
    pub require_no_zeroes: bool,
    /// Refuse clients that do not set `NBD_FLAG_C_FIXED_NEWSTYLE`.
    /// Default false (the spec lets servers honour fixed newstyle anyway).
    pub require_fixed_newstyle: bool,
    /// Accept `NBD_OPT_STRUCTURED_REPLY`. Default true.
    pub structured_replies: bool,
    /// Metadata contexts offered on every export, in id order (id = index
    /// + 1). Default: just `base:allocation`.
    pub meta_contexts: Vec<String>,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        Self {
            max_option_len: 64 * 1024,
            max_discard_len: 1024 * 1024,
            max_options: 1024,
            advertise_no_zeroes: true,
            require_no_zeroes: false,
            require_fixed_newstyle: false,
            structured_replies: true,
            meta_contexts: vec![CONTEXT_BASE_ALLOCATION.to_owned()],
        }
    }
}

/// An option the server must answer with its knowledge of the exports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// `NBD_OPT_EXPORT_NAME`: answer with
    /// [`ServerHandshake::reply_export_name`], or hard-disconnect if the
    /// export does not exist (this option has no error reply).
    ExportName(String),
    /// `NBD_OPT_LIST`: answer with [`ServerHandshake::reply_server_list`]
    /// (or [`ServerHandshake::reply_server`]s and
    /// [`ServerHandshake::reply_ack`]), or an error.
    ListExports,
    /// `NBD_OPT_INFO` (`go == false`) or `NBD_OPT_GO` (`go == true`): answer
    /// with [`ServerHandshake::reply_info_export`] (mandatory), optional
    /// other info replies, then [`ServerHandshake::reply_ack`]; or
    /// [`ServerHandshake::reply_error`].
    Info {
        /// Export name ("" = default export).
        export: String,
        /// `NBD_INFO_*` items the client asked for, in its order, no
        /// duplicates.
        requests: Vec<u16>,
        /// True for `NBD_OPT_GO`: a successful reply enters transmission.
        go: bool,
    },
    /// `NBD_OPT_LIST_META_CONTEXT`: if the export exists answer with
    /// [`ServerHandshake::reply_list_meta_contexts`], else
    /// [`ServerHandshake::reply_error`] (`UnknownExport`).
    ListMetaContexts {
        /// Export name.
        export: String,
        /// Queries, e.g. `base:` or `base:allocation`.
        queries: Vec<String>,
    },
    /// `NBD_OPT_SET_META_CONTEXT`: like `ListMetaContexts`, answered with
    /// [`ServerHandshake::reply_set_meta_contexts`]. Any previous selection
    /// is already dropped, as the spec requires even on failure.
    SetMetaContexts {
        /// Export name.
        export: String,
        /// Queries.
        queries: Vec<String>,
    },
}

impl Event {
    /// True if an `Info` event asks for `NBD_INFO_BLOCK_SIZE`.
    pub fn wants_block_size(&self) -> bool {
        matches!(self, Self::Info { requests, .. } if requests.contains(&INFO_BLOCK_SIZE))
    }
}

/// What the handshake answered by itself (for logging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// `NBD_OPT_STRUCTURED_REPLY` acknowledged.
    StructuredReplies,
    /// Option answered `NBD_REP_ERR_UNSUP` (unknown, STARTTLS, or disabled).
    Unsupported(u32),
    /// Option answered `NBD_REP_ERR_INVALID` (malformed or out of order).
    Invalid(u32),
    /// Option answered `NBD_REP_ERR_TOO_BIG` after skipping its data.
    TooBig(u32),
}

/// Result of [`ServerHandshake::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// All input consumed; read more from the client.
    NeedMore,
    /// The handshake answered an option itself: send `bytes`, then call
    /// `feed(&[])`.
    Reply {
        /// Bytes to send to the client.
        bytes: Vec<u8>,
        /// What happened.
        handled: Handled,
    },
    /// An option needing the caller's answer (see [`Event`]); answer with
    /// the `reply_*` methods, send their bytes, then call `feed(&[])`.
    Event(Event),
    /// `NBD_OPT_ABORT`: send `bytes` (the `NBD_REP_ACK`), then close.
    Abort {
        /// Bytes to send before closing.
        bytes: Vec<u8>,
    },
    /// Handshake complete: enter transmission.
    Done {
        /// What was negotiated.
        negotiated: Box<Negotiated>,
        /// Bytes already received that belong to the transmission phase.
        leftover: Vec<u8>,
    },
}

/// How the client entered transmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `NBD_OPT_GO`.
    Go,
    /// `NBD_OPT_EXPORT_NAME`.
    ExportName,
}

/// Outcome of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Export name the client chose.
    pub export: String,
    /// Export size sent to the client.
    pub size: u64,
    /// Transmission flags sent to the client (after fix-ups).
    pub flags: TransmissionFlags,
    /// Structured replies negotiated: `NBD_CMD_READ` MUST be answered with
    /// structured replies.
    pub structured_replies: bool,
    /// Contexts selected by the last `NBD_OPT_SET_META_CONTEXT`, if it named
    /// this export; empty otherwise (block status then gets `NBD_EINVAL`).
    pub meta_contexts: Vec<MetaContext>,
    /// Block size constraints sent in the `NBD_OPT_GO` reply, if any.
    pub block_size: Option<BlockSize>,
    /// The client asked for `NBD_INFO_BLOCK_SIZE` in `NBD_OPT_GO`, so it
    /// promised to obey `block_size`.
    pub block_size_requested: bool,
    /// The client negotiated `NBD_FLAG_C_NO_ZEROES`.
    pub no_zeroes: bool,
    /// How transmission was entered.
    pub entry: Entry,
}

#[derive(Debug)]
enum Pending {
    ExportName(String),
    List,
    Info {
        export: String,
        block_size_requested: bool,
        go: bool,
        export_info: Option<(u64, TransmissionFlags)>,
        block_size: Option<BlockSize>,
    },
    ListMeta {
        queries: Vec<String>,
    },
    SetMeta {
        export: String,
        queries: Vec<String>,
    },
}

#[derive(Debug)]
enum Phase {
    ClientFlags,
    OptionHeader,
    OptionData { option: u32, len: u32 },
    Discard { option: u32, remaining: u32 },
    Pending(Pending),
    Finished(Box<Negotiated>),
    Closed,
}

enum Step {
    Continue,
    Yield(Progress),
}

/// Server-side handshake state machine. See the module docs.
#[derive(Debug)]
pub struct ServerHandshake {
    config: HandshakeConfig,
    phase: Phase,
    /// Received but unprocessed bytes. Holds at most one message being
    /// assembled plus a bounded backlog (see `backlog_cap`).
    rx: Vec<u8>,
    options_seen: u32,
    client_flags: u32,
    structured: bool,
    /// Export named by the last SET_META_CONTEXT and what it selected.
    meta_selection: Option<(String, Vec<MetaContext>)>,
}

impl ServerHandshake {
    /// Creates the state machine; send [`Self::initial_bytes`] first.
    pub fn new(config: HandshakeConfig) -> Self {
        Self {
            config,
            phase: Phase::ClientFlags,
            rx: Vec::new(),
            options_seen: 0,
            client_flags: 0,
            structured: false,
            meta_selection: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HandshakeConfig {
        &self.config
    }

    /// The 18-byte server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
    pub fn initial_bytes(&self) -> Vec<u8> {
        let mut flags = FLAG_FIXED_NEWSTYLE;
        if self.config.advertise_no_zeroes {
            flags |= FLAG_NO_ZEROES;
        }
        let mut out = Vec::with_capacity(GREETING_LEN);
        out.extend_from_slice(&NBDMAGIC.to_be_bytes());
        out.extend_from_slice(&IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out
    }

    /// Client flags received (0 before they arrive).
    pub fn client_flags(&self) -> u32 {
        self.client_flags
    }

    /// True once `NBD_OPT_STRUCTURED_REPLY` was acknowledged.
    pub fn structured_replies(&self) -> bool {
        self.structured
    }

    /// Feeds bytes from the client. All of `input` is taken (buffered if not
    /// yet needed). Returns at most one [`Progress`] item; after handling
    /// it, call `feed(&[])` again until it returns [`Progress::NeedMore`].
    ///
    /// Any error is fatal: drop the connection. Calling `feed` while an
    /// [`Event`] is unanswered is a [`HandshakeError::Misuse`].
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, HandshakeError> {
        let result = self.feed_inner(input);
        if result.is_err() {
            self.phase = Phase::Closed;
            self.rx = Vec::new();
        }
        result
    }

    fn backlog_cap(&self) -> usize {
        OPTION_HEADER_LEN + self.config.max_option_len as usize
    }

    fn stash(&mut self, input: &[u8]) -> Result<(), HandshakeError> {
        if self.rx.len().saturating_add(input.len()) > self.backlog_cap() {
            return Err(HandshakeError::BacklogFull);
        }
        // `reserve_exact`: no doubling, so the buffer's capacity stays within
        // the cap, not twice it.
        self.rx.reserve_exact(input.len());
        self.rx.extend_from_slice(input);
        Ok(())
    }

    fn feed_inner(&mut self, mut input: &[u8]) -> Result<Progress, HandshakeError> {
        match &self.phase {
            Phase::Pending(_) => {
                self.stash(input)?;
                return Err(HandshakeError::Misuse(
                    "feed called while an event is waiting for its reply",
                ));
            }
            Phase::Finished(_) => {
                // Whatever arrives now is transmission data; the caller gets
                // all of it back, so no cap is needed here.
                self.rx.extend_from_slice(input);
                let Phase::Finished(negotiated) = std::mem::replace(&mut self.phase, Phase::Closed)
                else {
                    return Err(HandshakeError::Misuse("internal phase error"));
                };
                return Ok(Progress::Done {
                    negotiated,
                    leftover: std::mem::take(&mut self.rx),
                });
            }
            Phase::Closed => return Err(HandshakeError::Misuse("handshake is over")),
            _ => {}
        }
        loop {
            if let Phase::Discard { option, remaining } = &mut self.phase {
                // Skip without storing: the point of discarding is to never
                // hold the oversized data.
                let from_rx = (*remaining as usize).min(self.rx.len());
                self.rx.drain(..from_rx);
                *remaining -= from_rx as u32; // from_rx <= remaining
                let from_input = (*remaining as usize).min(input.len());
                input = &input[from_input..];
                *remaining -= from_input as u32;
                if *remaining > 0 {
                    return Ok(Progress::NeedMore);
                }
                let option = *option;
                self.phase = Phase::OptionHeader;
                self.stash(input)?;
                return Ok(Progress::Reply {
                    bytes: error_reply(option, OptionError::TooBig, "option data too long"),
                    handled: Handled::TooBig(option),
                });
            }
            let need = match self.phase {
                Phase::ClientFlags => 4,
                Phase::OptionHeader => OPTION_HEADER_LEN,
                Phase::OptionData { len, .. } => len as usize,
                _ => return Err(HandshakeError::Misuse("internal phase error")),
            };
            if self.rx.len() < need {
                let take = (need - self.rx.len()).min(input.len());
                self.rx.reserve_exact(take);
                self.rx.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.rx.len() < need {
                    return Ok(Progress::NeedMore);
                }
            }
            let rest = self.rx.split_off(need);
            let message = std::mem::replace(&mut self.rx, rest);
            match self.process(&message)? {
                Step::Continue => {}
                Step::Yield(progress) => {
                    if !matches!(progress, Progress::Abort { .. }) {
                        self.stash(input)?;
                    }
                    return Ok(progress);
                }
            }
        }
    }

    fn process(&mut self, message: &[u8]) -> Result<Step, HandshakeError> {
        let mut r = Reader::new(message);
        match self.phase {
            Phase::ClientFlags => {
                let flags = r.u32().unwrap_or_default();
                if flags & !CLIENT_FLAGS_KNOWN != 0 {
                    return Err(HandshakeError::UnknownClientFlags(flags));
                }
                let no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                if no_zeroes && !self.config.advertise_no_zeroes {
                    return Err(HandshakeError::NoZeroesNotAdvertised);
                }
                if !no_zeroes && self.config.require_no_zeroes {
                    return Err(HandshakeError::NoZeroesRequired);
                }
                if flags & FLAG_C_FIXED_NEWSTYLE == 0 && self.config.require_fixed_newstyle {
                    return Err(HandshakeError::FixedNewstyleRequired);
                }
                self.client_flags = flags;
                self.phase = Phase::OptionHeader;
                Ok(Step::Continue)
            }
            Phase::OptionHeader => {
                let magic = r.u64().unwrap_or_default();
                let option = r.u32().unwrap_or_default();
                let len = r.u32().unwrap_or_default();
                if magic != IHAVEOPT {
                    return Err(HandshakeError::BadOptionMagic(magic));
                }
                self.options_seen = self.options_seen.saturating_add(1);
                if self.options_seen > self.config.max_options {
                    return Err(HandshakeError::TooManyOptions(self.config.max_options));
                }
                if len > self.config.max_option_len {
                    if option == OPT_EXPORT_NAME || len > self.config.max_discard_len {
                        return Err(HandshakeError::OptionTooLarge {
                            option,
                            length: len,
                        });
                    }
                    self.phase = Phase::Discard {
                        option,
                        remaining: len,
                    };
                } else {
                    self.phase = Phase::OptionData { option, len };
                }
                Ok(Step::Continue)
            }
            Phase::OptionData { option, .. } => self.handle_option(option, message),
            _ => Err(HandshakeError::Misuse("internal phase error")),
        }
    }

    /// Answers an option without the caller; back to reading options.
    fn auto(&mut self, option: u32, reply: Result<(), (OptionError, &str)>) -> Step {
        self.phase = Phase::OptionHeader;
        let (bytes, handled) = match reply {
            Ok(()) => (
                option_reply(option, REP_ACK, &[]),
                Handled::StructuredReplies,
            ),
            Err((kind, msg)) => {
                let handled = match kind {
                    OptionError::Unsupported => Handled::Unsupported(option),
                    OptionError::TooBig => Handled::TooBig(option),
                    _ => Handled::Invalid(option),
                };
                (error_reply(option, kind, msg), handled)
            }
        };
        Step::Yield(Progress::Reply { bytes, handled })
    }

    fn pend(&mut self, pending: Pending, event: Event) -> Step {
        self.phase = Phase::Pending(pending);
        Step::Yield(Progress::Event(event))
    }

    fn handle_option(&mut self, option: u32, data: &[u8]) -> Result<Step, HandshakeError> {
        use OptionError::{Invalid, Unsupported};
        Ok(match option {
            OPT_EXPORT_NAME => {
                let name = nbd_string(data).ok_or(HandshakeError::InvalidExportName)?;
                self.pend(Pending::ExportName(name.clone()), Event::ExportName(name))
            }
            OPT_ABORT => {
                // Data is ignored, as the spec recommends.
                self.phase = Phase::Closed;
                Step::Yield(Progress::Abort {
                    bytes: option_reply(option, REP_ACK, &[]),
                })
            }
            OPT_LIST if !data.is_empty() => {
                self.auto(option, Err((Invalid, "NBD_OPT_LIST takes no data")))
            }
            OPT_LIST => self.pend(Pending::List, Event::ListExports),
            OPT_STARTTLS if !data.is_empty() => {
                self.auto(option, Err((Invalid, "NBD_OPT_STARTTLS takes no data")))
            }
            OPT_STARTTLS => self.auto(option, Err((Unsupported, "TLS is not supported"))),
            OPT_INFO | OPT_GO => match parse_info_request(data) {
                Ok((export, requests)) => {
                    let go = option == OPT_GO;
                    let pending = Pending::Info {
                        export: export.clone(),
                        block_size_requested: requests.contains(&INFO_BLOCK_SIZE),
                        go,
                        export_info: None,
                        block_size: None,
                    };
                    self.pend(
                        pending,
                        Event::Info {
                            export,
                            requests,
                            go,
                        },
                    )
                }
                Err(msg) => self.auto(option, Err((Invalid, msg))),
            },
            OPT_STRUCTURED_REPLY if !data.is_empty() => self.auto(
                option,
                Err((Invalid, "NBD_OPT_STRUCTURED_REPLY takes no data")),
            ),
            OPT_STRUCTURED_REPLY if !self.config.structured_replies => self.auto(
                option,
                Err((Unsupported, "structured replies are disabled")),
            ),
            OPT_STRUCTURED_REPLY => {
                self.structured = true;
                self.auto(option, Ok(()))
            }
            OPT_LIST_META_CONTEXT => match parse_meta_request(data) {
                Ok((export, queries)) => self.pend(
                    Pending::ListMeta {
                        queries: queries.clone(),
                    },
                    Event::ListMetaContexts { export, queries },
                ),
                Err(msg) => self.auto(option, Err((Invalid, msg))),
            },
            OPT_SET_META_CONTEXT => {
                // "replaces all previously-set metadata contexts (including
                // when this command fails)".
                self.meta_selection = None;
                if !self.structured {
                    return Ok(
                        self.auto(option, Err((Invalid, "negotiate structured replies first")))
                    );
                }
                match parse_meta_request(data) {
                    Ok((export, queries)) => self.pend(
                        Pending::SetMeta {
                            export: export.clone(),
                            queries: queries.clone(),
                        },
                        Event::SetMetaContexts { export, queries },
                    ),
                    Err(msg) => self.auto(option, Err((Invalid, msg))),
                }
            }
            _ => self.auto(option, Err((Unsupported, "unsupported option"))),
        })
    }

    // ------------------------------------------------------------------
    // Replies to events
    // ------------------------------------------------------------------

    fn pending(&mut self) -> Result<&mut Pending, HandshakeError> {
        match &mut self.phase {
            Phase::Pending(p) => Ok(p),
            _ => Err(HandshakeError::Misuse("no event is waiting for a reply")),
        }
    }

    fn sanitize_flags(&self, flags: TransmissionFlags) -> TransmissionFlags {
        let mut flags = flags.with(TransmissionFlags::HAS_FLAGS);
        if !self.structured {
            flags = flags.without(TransmissionFlags::SEND_DF);
        }
        if !flags.contains(TransmissionFlags::SEND_WRITE_ZEROES) {
            flags = flags.without(TransmissionFlags::SEND_FAST_ZERO);
        }
        flags
    }

    fn contexts_for(&self, export: &str) -> Vec<MetaContext> {
        match &self.meta_selection {
            Some((name, contexts)) if name == export => contexts.clone(),
            _ => Vec::new(),
        }
    }

    /// Answers [`Event::ListExports`] in full: one `NBD_REP_SERVER` per name,
    /// then `NBD_REP_ACK`.
    pub fn reply_server_list<S: AsRef<str>>(
        &mut self,
        names: &[S],
    ) -> Result<Vec<u8>, HandshakeError> {
        if !matches!(self.pending()?, Pending::List) {
            return Err(HandshakeError::Misuse(
                "reply_server_list outside NBD_OPT_LIST",
            ));
        }
        let mut out = Vec::new();
        for name in names {
            out.extend(self.reply_server(name.as_ref(), None)?);
        }
        out.extend(self.reply_ack()?);
        Ok(out)
    }

    /// One `NBD_REP_SERVER` for [`Event::ListExports`] (not final: finish
    /// with [`Self::reply_ack`]). `description` is optional human text.
    pub fn reply_server(
        &mut self,
        name: &str,
        description: Option<&str>,
    ) -> Result<Vec<u8>, HandshakeError> {
        if !matches!(self.pending()?, Pending::List) {
            return Err(HandshakeError::Misuse("reply_server outside NBD_OPT_LIST"));
        }
        check_string(name)?;
        let mut data = Vec::with_capacity(4 + name.len());
        put_str32(&mut data, name);
        if let Some(d) = description {
            data.extend_from_slice(sanitize_message(d).as_bytes());
        }
        Ok(option_reply(OPT_LIST, REP_SERVER, &data))
    }

    fn info_pending(&mut self) -> Result<(&mut Pending, u32), HandshakeError> {
        let p = self.pending()?;
        match p {
            Pending::Info { go, .. } => {
                let option = if *go { OPT_GO } else { OPT_INFO };
                Ok((p, option))
            }
            _ => Err(HandshakeError::Misuse("info reply outside NBD_OPT_INFO/GO")),
        }
    }

    /// `NBD_REP_INFO` / `NBD_INFO_EXPORT` for [`Event::Info`] (mandatory
    /// before [`Self::reply_ack`]; not final). Flags are fixed up, see the
    /// module docs.
    pub fn reply_info_export(
        &mut self,
        size: u64,
        flags: TransmissionFlags,
    ) -> Result<Vec<u8>, HandshakeError> {
        let flags = self.sanitize_flags(flags);
        let (pending, option) = self.info_pending()?;
        let Pending::Info { export_info, .. } = pending else {
            return Err(HandshakeError::Misuse("internal phase error"));
        };
        if export_info.is_some() {
            return Err(HandshakeError::Misuse("NBD_INFO_EXPORT sent twice"));
        }
        *export_info = Some((size, flags));
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        data.extend_from_slice(&size.to_be_bytes());
        data.extend_from_slice(&flags.bits().to_be_bytes());
        Ok(option_reply(option, REP_INFO, &data))
    }

    /// `NBD_INFO_NAME` (canonical export name) for [`Event::Info`].
    pub fn reply_info_name(&mut self, name: &str) -> Result<Vec<u8>, HandshakeError> {
        check_string(name)?;
        let (_, option) = self.info_pending()?;
        let mut data = INFO_NAME.to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        Ok(option_reply(option, REP_INFO, &data))
    }

    /// `NBD_INFO_DESCRIPTION` for [`Event::Info`] (cut to 4096 bytes).
    pub fn reply_info_description(&mut self, text: &str) -> Result<Vec<u8>, HandshakeError> {
        let (_, option) = self.info_pending()?;
        let mut data = INFO_DESCRIPTION.to_be_bytes().to_vec();
        data.extend_from_slice(sanitize_message(text).as_bytes());
        Ok(option_reply(option, REP_INFO, &data))
    }

    /// `NBD_INFO_BLOCK_SIZE` for [`Event::Info`]. The values must satisfy
    /// the spec's MUSTs ([`BlockSize::is_valid`]).
    pub fn reply_block_size(
        &mut self,
        minimum: u32,
        preferred: u32,
        maximum: u32,
    ) -> Result<Vec<u8>, HandshakeError> {
        let bs = BlockSize {
            minimum,
            preferred,
            maximum,
        };
        if !bs.is_valid() {
            return Err(HandshakeError::Misuse("block sizes violate the spec"));
        }
        let (pending, option) = self.info_pending()?;
        if let Pending::Info { block_size, .. } = pending {
            *block_size = Some(bs);
        }
        let mut data = Vec::with_capacity(14);
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        data.extend_from_slice(&minimum.to_be_bytes());
        data.extend_from_slice(&preferred.to_be_bytes());
        data.extend_from_slice(&maximum.to_be_bytes());
        Ok(option_reply(option, REP_INFO, &data))
    }

    /// Final `NBD_REP_ACK` for [`Event::ListExports`] or [`Event::Info`].
    /// After an `NBD_OPT_GO`, the next `feed` returns [`Progress::Done`].
    pub fn reply_ack(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let no_zeroes = self.client_flags & FLAG_C_NO_ZEROES != 0;
        let structured = self.structured;
        let (option, next) = match self.pending()? {
            Pending::List => (OPT_LIST, None),
            Pending::Info {
                export_info: None, ..
            } => {
                return Err(HandshakeError::Misuse(
                    "NBD_INFO_EXPORT must be sent before NBD_REP_ACK",
                ))
            }
            Pending::Info { go: false, .. } => (OPT_INFO, None),
            Pending::Info {
                export,
                block_size_requested,
                go: true,
                export_info: Some((size, flags)),
                block_size,
            } => {
                let negotiated = Negotiated {
                    export: export.clone(),
                    size: *size,
                    flags: *flags,
                    structured_replies: structured,
                    meta_contexts: Vec::new(),
                    block_size: *block_size,
                    block_size_requested: *block_size_requested,
                    no_zeroes,
                    entry: Entry::Go,
                };
                (OPT_GO, Some(negotiated))
            }
            _ => {
                return Err(HandshakeError::Misuse(
                    "reply_ack is only for NBD_OPT_LIST/INFO/GO",
                ))
            }
        };
        self.phase = match next {
            Some(mut negotiated) => {
                negotiated.meta_contexts = self.contexts_for(&negotiated.export);
                Phase::Finished(Box::new(negotiated))
            }
            None => Phase::OptionHeader,
        };
        Ok(option_reply(option, REP_ACK, &[]))
    }

    /// Final error reply to the pending event. Not possible for
    /// [`Event::ExportName`] (hang up instead). `TlsRequired` is refused
    /// (NOTLS mode MUST NOT send it), as is `BlockSizeRequired` when the
    /// client did request block sizes (MUST NOT).
    pub fn reply_error(
        &mut self,
        kind: OptionError,
        message: &str,
    ) -> Result<Vec<u8>, HandshakeError> {
        if kind == OptionError::TlsRequired {
            return Err(HandshakeError::Misuse(
                "NBD_REP_ERR_TLS_REQD is forbidden without TLS",
            ));
        }
        let option = match self.pending()? {
            Pending::ExportName(_) => {
                return Err(HandshakeError::Misuse(
                    "NBD_OPT_EXPORT_NAME has no error reply; disconnect instead",
                ))
            }
            Pending::Info {
                block_size_requested: true,
                ..
            } if kind == OptionError::BlockSizeRequired => {
                return Err(HandshakeError::Misuse(
                    "client already requested NBD_INFO_BLOCK_SIZE",
                ))
            }
            Pending::List => OPT_LIST,
            Pending::Info { go, .. } => {
                if *go {
                    OPT_GO
                } else {
                    OPT_INFO
                }
            }
            Pending::ListMeta { .. } => OPT_LIST_META_CONTEXT,
            Pending::SetMeta { .. } => OPT_SET_META_CONTEXT,
        };
        self.phase = Phase::OptionHeader;
        Ok(error_reply(option, kind, message))
    }

    /// Answers [`Event::ListMetaContexts`] in full: the supported contexts
    /// matching the queries (all of them for no query), with id 0, then
    /// `NBD_REP_ACK`.
    pub fn reply_list_meta_contexts(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let Pending::ListMeta { queries } = self.pending()? else {
            return Err(HandshakeError::Misuse(
                "reply_list_meta_contexts outside NBD_OPT_LIST_META_CONTEXT",
            ));
        };
        let queries = std::mem::take(queries);
        let mut out = Vec::new();
        for name in &self.config.meta_contexts {
            if queries.is_empty() || queries.iter().any(|q| list_query_matches(q, name)) {
                out.extend(meta_context_reply(OPT_LIST_META_CONTEXT, 0, name));
            }
        }
        out.extend(option_reply(OPT_LIST_META_CONTEXT, REP_ACK, &[]));
        self.phase = Phase::OptionHeader;
        Ok(out)
    }

    /// Answers [`Event::SetMetaContexts`] in full: selects the supported
    /// contexts named exactly by a query, replies with their ids, then
    /// `NBD_REP_ACK`. The selection applies if the client then enters
    /// transmission with the same export name.
    pub fn reply_set_meta_contexts(&mut self) -> Result<Vec<u8>, HandshakeError> {
        let Pending::SetMeta { export, queries } = self.pending()? else {
            return Err(HandshakeError::Misuse(
                "reply_set_meta_contexts outside NBD_OPT_SET_META_CONTEXT",
            ));
        };
        let export = std::mem::take(export);
        let queries = std::mem::take(queries);
        let mut selected = Vec::new();
        let mut out = Vec::new();
        for (index, name) in self.config.meta_contexts.iter().enumerate() {
            if queries.iter().any(|q| q == name) {
                let id = u32::try_from(index + 1).unwrap_or(u32::MAX);
                out.extend(meta_context_reply(OPT_SET_META_CONTEXT, id, name));
                selected.push(MetaContext {
                    id,
                    name: name.clone(),
                });
            }
        }
        out.extend(option_reply(OPT_SET_META_CONTEXT, REP_ACK, &[]));
        self.meta_selection = Some((export, selected));
        self.phase = Phase::OptionHeader;
        Ok(out)
    }

    /// Answers [`Event::ExportName`]: size, flags and (unless `NO_ZEROES`
    /// was negotiated) 124 zero bytes. The next `feed` returns
    /// [`Progress::Done`].
    pub fn reply_export_name(
        &mut self,
        size: u64,
        flags: TransmissionFlags,
    ) -> Result<Vec<u8>, HandshakeError> {
        let flags = self.sanitize_flags(flags);
        let Pending::ExportName(export) = self.pending()? else {
            return Err(HandshakeError::Misuse(
                "reply_export_name outside NBD_OPT_EXPORT_NAME",
            ));
        };
        let export = std::mem::take(export);
        let no_zeroes = self.client_flags & FLAG_C_NO_ZEROES != 0;
        let mut out = Vec::with_capacity(10 + EXPORT_NAME_ZEROES);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&flags.bits().to_be_bytes());
        if !no_zeroes {
            out.resize(out.len() + EXPORT_NAME_ZEROES, 0);
        }
        let meta_contexts = self.contexts_for(&export);
        self.phase = Phase::Finished(Box::new(Negotiated {
            export,
            size,
            flags,
            structured_replies: self.structured,
            meta_contexts,
            block_size: None,
            block_size_requested: false,
            no_zeroes,
            entry: Entry::ExportName,
        }));
        Ok(out)
    }
}

fn check_string(s: &str) -> Result<(), HandshakeError> {
    if s.len() > MAX_STRING_LEN || s.contains('\0') {
        return Err(HandshakeError::Misuse("not a valid NBD string"));
    }
    Ok(())
}

/// `base:` style wildcard: a query with an empty leaf name lists every
/// context of its namespace; otherwise names must match exactly.
fn list_query_matches(query: &str, name: &str) -> bool {
    if query == name {
        return true;
    }
    match query.split_once(':') {
        Some((ns, "")) if !ns.is_empty() => name
            .split_once(':')
            .is_some_and(|(name_ns, _)| name_ns == ns),
        _ => false,
    }
}

/// Encodes one option reply (header + data).
pub fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Data comes from this module only: bounded well below 4 GiB.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Encodes an error option reply with a human-readable message (cut to
/// 4096 bytes, NULs removed).
pub fn error_reply(option: u32, kind: OptionError, message: &str) -> Vec<u8> {
    option_reply(option, kind.to_wire(), sanitize_message(message).as_bytes())
}

fn meta_context_reply(option: u32, id: u32, name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(4 + name.len());
    data.extend_from_slice(&id.to_be_bytes());
    data.extend_from_slice(name.as_bytes());
    option_reply(option, REP_META_CONTEXT, &data)
}

/// Parses `NBD_OPT_INFO` / `NBD_OPT_GO` data.
fn parse_info_request(data: &[u8]) -> Result<(String, Vec<u16>), &'static str> {
    let mut r = Reader::new(data);
    let name_len = r.u32().ok_or("option data too short")?;
    let name = r
        .bytes(name_len as usize)
        .ok_or("export name runs past the option data")?;
    let export = nbd_string(name).ok_or("export name is not a valid string")?;
    let count = r.u16().ok_or("missing information request count")?;
    // Capacity from what is actually present, never from the claimed count.
    let mut requests = Vec::with_capacity((count as usize).min(r.remaining() / 2));
    for _ in 0..count {
        let info = r
            .u16()
            .ok_or("information requests run past the option data")?;
        requests.push(info);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes after information requests");
    }
    // Duplicate check on a sorted copy: O(n log n), where a `contains` per
    // item would let 32 Ki requests cost ~10^9 comparisons.
    let mut sorted = requests.clone();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err("duplicate information request");
    }
    Ok((export, requests))
}

/// Parses `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT` data.
fn parse_meta_request(data: &[u8]) -> Result<(String, Vec<String>), &'static str> {
    let mut r = Reader::new(data);
    let name_len = r.u32().ok_or("option data too short")?;
    let name = r
        .bytes(name_len as usize)
        .ok_or("export name runs past the option data")?;
    let export = nbd_string(name).ok_or("export name is not a valid string")?;
    let count = r.u32().ok_or("missing query count")?;
    let mut queries = Vec::with_capacity((count as usize).min(r.remaining() / 4));
    for _ in 0..count {
        let len = r.u32().ok_or("queries run past the option data")?;
        let q = r
            .bytes(len as usize)
            .ok_or("query runs past the option data")?;
        queries.push(nbd_string(q).ok_or("query is not a valid string")?);
    }
    if r.remaining() != 0 {
        return Err("trailing bytes after queries");
    }
    Ok((export, queries))
}
