//! Error types.
//!
//! Every error returned while *decoding* peer input means "the peer broke a
//! mandatory rule (or looks hostile): hard-disconnect". Recoverable protocol
//! conditions are never errors here; they are answered on the wire instead
//! (an option error reply, an `NBD_E*` in a reply).

use thiserror::Error;

/// Fatal handshake failures (server or client side).
///
/// On any of these the connection should be dropped (a hard disconnect in
/// the spec's terms). `Misuse` signals a bug in the calling code, not in
/// the peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    // ----- server side: client misbehaviour -----
    /// The client set flags the server does not know (spec: MUST drop).
    #[error("client sent unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// The client set `NBD_FLAG_C_NO_ZEROES` although the server did not
    /// advertise `NBD_FLAG_NO_ZEROES` (spec: MUST drop).
    #[error("client set NO_ZEROES although the server did not advertise it")]
    NoZeroesNotAdvertised,
    /// Server policy requires `NBD_FLAG_C_NO_ZEROES` and the client lacked it.
    #[error("client did not set NO_ZEROES, which this server requires")]
    NoZeroesRequired,
    /// Server policy requires `NBD_FLAG_C_FIXED_NEWSTYLE` and the client
    /// lacked it.
    #[error("client does not speak fixed newstyle, which this server requires")]
    FixedNewstyleRequired,
    /// An option did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// An option claimed more data than the server is willing to read or
    /// skip; answering is impossible without reading it, so we disconnect.
    #[error("option {option} claims {length} bytes of data, over the limit")]
    OptionTooLarge {
        /// Option number.
        option: u32,
        /// Claimed data length.
        length: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` carried a name that is not a valid NBD string;
    /// this option has no error reply, so the spec mandates a disconnect.
    #[error("NBD_OPT_EXPORT_NAME with an invalid export name")]
    InvalidExportName,
    /// The client sent more options than the configured cap (treated as a
    /// denial of service, which the spec allows to hard-disconnect).
    #[error("client sent more than {0} options")]
    TooManyOptions(u32),
    /// The client kept sending data while an answer was pending, beyond what
    /// the server buffers.
    #[error("client sent too much data without waiting for replies")]
    BacklogFull,

    // ----- client side: server misbehaviour -----
    /// The server greeting did not start with `NBDMAGIC`.
    #[error("bad server magic {0:#018x}")]
    BadServerMagic(u64),
    /// The server uses the oldstyle handshake, which this crate does not
    /// speak.
    #[error("server uses the oldstyle handshake")]
    OldstyleServer,
    /// The server does not support fixed newstyle.
    #[error("server does not support fixed newstyle negotiation")]
    NotFixedNewstyle,
    /// An option reply had a wrong magic.
    #[error("bad option reply magic {0:#018x}")]
    BadReplyMagic(u64),
    /// An option reply named an option we did not send.
    #[error("reply for option {got} while waiting for option {expected}")]
    ReplyForWrongOption {
        /// The option we sent.
        expected: u32,
        /// The option named in the reply.
        got: u32,
    },
    /// An option reply's payload is larger than the client accepts.
    #[error("option reply of {0} bytes exceeds the limit")]
    ReplyTooLarge(u32),
    /// An option reply's payload does not match its type.
    #[error("malformed option reply: {0}")]
    MalformedReply(&'static str),
    /// A reply type that makes no sense for the option it answers.
    #[error("unexpected reply type {reply:#x} to option {option}")]
    UnexpectedReply {
        /// Option number.
        option: u32,
        /// Reply type.
        reply: u32,
    },
    /// The server refused the export (error reply to `NBD_OPT_GO`).
    #[error("server refused option {option} with reply {reply:#x}: {message}")]
    Rejected {
        /// Option number.
        option: u32,
        /// Error reply type.
        reply: u32,
        /// Message sent by the server (may be empty).
        message: String,
    },
    /// The server is shutting down (`NBD_REP_ERR_SHUTDOWN`); the client
    /// MUST now soft-disconnect (send [`crate::client::abort_option`]).
    #[error("server is shutting down")]
    ServerShutdown,

    // ----- caller bugs -----
    /// The calling code used the API out of order.
    #[error("API misuse: {0}")]
    Misuse(&'static str),
}

/// Fatal transmission-phase framing errors: the byte stream can no longer be
/// trusted and the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A request header did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    /// A write payload larger than the caller is willing to read or discard.
    #[error("request payload of {length} bytes exceeds the limit of {limit}")]
    PayloadTooLarge {
        /// Payload length claimed by the request.
        length: u32,
        /// Configured limit.
        limit: u32,
    },
    /// A reply did not start with a simple or structured reply magic.
    #[error("bad reply magic {0:#010x}")]
    BadReplyMagic(u32),
    /// A structured reply chunk's payload is larger than the client accepts.
    #[error("reply chunk of {length} bytes exceeds the limit of {limit}")]
    ChunkTooLarge {
        /// Payload length claimed by the chunk.
        length: u32,
        /// Configured limit.
        limit: u32,
    },
    /// A structured chunk of a known type whose payload is inconsistent.
    #[error("malformed reply chunk: {0}")]
    MalformedChunk(&'static str),
    /// A non-error chunk type this crate does not know (spec: the client
    /// MUST hard-disconnect).
    #[error("unknown structured reply chunk type {0}")]
    UnknownChunkType(u16),
}

/// Reasons a reply encoder refuses its arguments (caller bugs: the result
/// would violate the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// `NBD_REPLY_TYPE_OFFSET_DATA` must carry at least one byte.
    #[error("OFFSET_DATA chunk needs at least one byte of data")]
    EmptyData,
    /// Chunk payload would not fit the 32-bit length field.
    #[error("chunk payload does not fit a 32-bit length")]
    TooLong,
    /// `NBD_REPLY_TYPE_OFFSET_HOLE` size must be nonzero.
    #[error("OFFSET_HOLE chunk needs a nonzero size")]
    EmptyHole,
    /// `NBD_REPLY_TYPE_BLOCK_STATUS` needs at least one descriptor.
    #[error("BLOCK_STATUS chunk needs at least one descriptor")]
    NoDescriptors,
    /// More than 2^20 descriptors in one chunk.
    #[error("BLOCK_STATUS chunk with more than 2^20 descriptors")]
    TooManyDescriptors,
    /// A block status descriptor with length 0.
    #[error("BLOCK_STATUS descriptor with zero length")]
    ZeroLengthDescriptor,
}
