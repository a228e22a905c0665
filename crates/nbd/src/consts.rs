//! Wire constants of the NBD protocol, named after `doc/proto.md` of the
//! reference implementation (the `NBD_` prefix is dropped).
//!
//! All multi-byte values travel in network (big-endian) byte order.
//! Typed wrappers built on these numbers ([`crate::Command`], [`crate::Errno`],
//! [`crate::TransmissionFlags`]...) are re-exported at the crate root; the raw
//! numbers are kept public so that callers can log or match on them.

// ---------------------------------------------------------------------------
// Magic numbers
// ---------------------------------------------------------------------------

/// `NBDMAGIC` (ASCII `"NBDMAGIC"`): first 8 bytes of every server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT` (ASCII `"IHAVEOPT"`): newstyle greeting magic, and the prefix
/// of every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle `cliserv_magic`; only recognised to give a precise error.
pub const CLISERV_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every fixed-newstyle option reply (`0x3e889045565a9`).
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// `NBD_REQUEST_MAGIC`: first 4 bytes of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// `NBD_SIMPLE_REPLY_MAGIC` (formerly `NBD_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// `NBD_STRUCTURED_REPLY_MAGIC`.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// `NBD_EXTENDED_REQUEST_MAGIC` (experimental extension; never negotiated
/// by this crate, recognised only to report it precisely).
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// `NBD_EXTENDED_REPLY_MAGIC` (experimental extension; never negotiated).
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

// ---------------------------------------------------------------------------
// Handshake flags (16 bits, server -> client)
// ---------------------------------------------------------------------------

/// Handshake flag bit 0: the server speaks fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag bit 1: the server can omit the 124 zero bytes after
/// `NBD_OPT_EXPORT_NAME` if the client asks for it.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;

// ---------------------------------------------------------------------------
// Client flags (32 bits, client -> server)
// ---------------------------------------------------------------------------

/// Client flag bit 0: the client speaks fixed newstyle.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag bit 1: omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;
/// Every client flag this crate understands; any other bit is fatal.
pub const CLIENT_FLAGS_KNOWN: u32 = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;

// ---------------------------------------------------------------------------
// Option numbers
// ---------------------------------------------------------------------------

/// `NBD_OPT_EXPORT_NAME`: choose an export and enter transmission (no error
/// reply possible).
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`: soft disconnect during option haggling.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`: list exports.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_PEEK_EXPORT`: withdrawn, never used.
pub const OPT_PEEK_EXPORT: u32 = 4;
/// `NBD_OPT_STARTTLS`: upgrade the session to TLS.
pub const OPT_STARTTLS: u32 = 5;
/// `NBD_OPT_INFO`: describe an export without entering transmission.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`: describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`: negotiate structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`: list metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;
/// `NBD_OPT_EXTENDED_HEADERS` (experimental; answered with `ERR_UNSUP`).
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// ---------------------------------------------------------------------------
// Option reply types
// ---------------------------------------------------------------------------

/// Bit 31 marks every option reply type that is an error.
pub const REP_FLAG_ERROR: u32 = 1 << 31;
/// `NBD_REP_ACK`: option accepted / list finished.
pub const REP_ACK: u32 = 1;
/// `NBD_REP_SERVER`: one export in reply to `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// `NBD_REP_INFO`: one information item for `NBD_OPT_INFO` / `NBD_OPT_GO`.
pub const REP_INFO: u32 = 3;
/// `NBD_REP_META_CONTEXT`: one metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// `NBD_REP_ERR_UNSUP`: option unknown to this server.
pub const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
/// `NBD_REP_ERR_POLICY`: forbidden by server policy.
pub const REP_ERR_POLICY: u32 = REP_FLAG_ERROR | 2;
/// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = REP_FLAG_ERROR | 3;
/// `NBD_REP_ERR_PLATFORM`: unsupported on this platform / build.
pub const REP_ERR_PLATFORM: u32 = REP_FLAG_ERROR | 4;
/// `NBD_REP_ERR_TLS_REQD`: TLS must be initiated first.
pub const REP_ERR_TLS_REQD: u32 = REP_FLAG_ERROR | 5;
/// `NBD_REP_ERR_UNKNOWN`: the export does not exist.
pub const REP_ERR_UNKNOWN: u32 = REP_FLAG_ERROR | 6;
/// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
pub const REP_ERR_SHUTDOWN: u32 = REP_FLAG_ERROR | 7;
/// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must request
/// `NBD_INFO_BLOCK_SIZE` first.
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = REP_FLAG_ERROR | 8;
/// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
pub const REP_ERR_TOO_BIG: u32 = REP_FLAG_ERROR | 9;

// ---------------------------------------------------------------------------
// Information types (NBD_REP_INFO payload, NBD_OPT_INFO/GO requests)
// ---------------------------------------------------------------------------

/// `NBD_INFO_EXPORT`: size and transmission flags (mandatory on success).
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_NAME`: canonical export name.
pub const INFO_NAME: u16 = 1;
/// `NBD_INFO_DESCRIPTION`: human-readable description.
pub const INFO_DESCRIPTION: u16 = 2;
/// `NBD_INFO_BLOCK_SIZE`: minimum / preferred / maximum payload sizes.
pub const INFO_BLOCK_SIZE: u16 = 3;

// ---------------------------------------------------------------------------
// Transmission flags (16 bits)
// ---------------------------------------------------------------------------

/// Bit 0: MUST always be set.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Bit 1: export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// Bit 2: `NBD_CMD_FLUSH` supported.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Bit 3: `NBD_CMD_FLAG_FUA` supported.
pub const FLAG_SEND_FUA: u16 = 1 << 3;
/// Bit 4: rotational medium hint.
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
/// Bit 5: `NBD_CMD_TRIM` supported.
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
/// Bit 6: `NBD_CMD_WRITE_ZEROES` (and `NBD_CMD_FLAG_NO_HOLE`) supported.
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// Bit 7: `NBD_CMD_FLAG_DF` supported (requires structured replies).
pub const FLAG_SEND_DF: u16 = 1 << 7;
/// Bit 8: flush/FUA effects are visible across connections.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
/// Bit 9: `NBD_CMD_RESIZE` (experimental extension).
pub const FLAG_SEND_RESIZE: u16 = 1 << 9;
/// Bit 10: `NBD_CMD_CACHE` understood.
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
/// Bit 11: `NBD_CMD_FLAG_FAST_ZERO` supported.
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// ---------------------------------------------------------------------------
// Commands (request "type" field)
// ---------------------------------------------------------------------------

/// `NBD_CMD_READ`.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE` (payload of *length* bytes follows the header).
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`: soft disconnect, no reply.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// `NBD_CMD_RESIZE` (experimental extension).
pub const CMD_RESIZE: u16 = 8;

// ---------------------------------------------------------------------------
// Command flags (16 bits)
// ---------------------------------------------------------------------------

/// Bit 0: force unit access.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// Bit 1: `NBD_CMD_WRITE_ZEROES` must not punch a hole.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// Bit 2: don't fragment the `NBD_CMD_READ` structured reply.
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// Bit 3: `NBD_CMD_BLOCK_STATUS` wants one extent only.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// Bit 4: `NBD_CMD_WRITE_ZEROES` must fail fast if not faster than a write.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// ---------------------------------------------------------------------------
// Structured reply flags and chunk types
// ---------------------------------------------------------------------------

/// Structured reply flag bit 0: final chunk of this reply.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
/// `NBD_REPLY_TYPE_NONE`: empty final chunk.
pub const REPLY_TYPE_NONE: u16 = 0;
/// `NBD_REPLY_TYPE_OFFSET_DATA`: offset + data.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// `NBD_REPLY_TYPE_OFFSET_HOLE`: offset + hole size.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// `NBD_REPLY_TYPE_BLOCK_STATUS`: context id + descriptors.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Bit 15 marks every error chunk type.
pub const REPLY_TYPE_FLAG_ERROR: u16 = 1 << 15;
/// `NBD_REPLY_TYPE_ERROR` (2^15 + 1).
pub const REPLY_TYPE_ERROR: u16 = REPLY_TYPE_FLAG_ERROR | 1;
/// `NBD_REPLY_TYPE_ERROR_OFFSET` (2^15 + 2).
pub const REPLY_TYPE_ERROR_OFFSET: u16 = REPLY_TYPE_FLAG_ERROR | 2;

// ---------------------------------------------------------------------------
// Error values (reply "error" field)
// ---------------------------------------------------------------------------

/// `NBD_EPERM`: operation not permitted.
pub const EPERM: u32 = 1;
/// `NBD_EIO`: input/output error.
pub const EIO: u32 = 5;
/// `NBD_ENOMEM`: cannot allocate memory.
pub const ENOMEM: u32 = 12;
/// `NBD_EINVAL`: invalid argument.
pub const EINVAL: u32 = 22;
/// `NBD_ENOSPC`: no space left on device.
pub const ENOSPC: u32 = 28;
/// `NBD_EOVERFLOW`: value too large.
pub const EOVERFLOW: u32 = 75;
/// `NBD_ENOTSUP`: operation not supported.
pub const ENOTSUP: u32 = 95;
/// `NBD_ESHUTDOWN`: server is shutting down.
pub const ESHUTDOWN: u32 = 108;

// ---------------------------------------------------------------------------
// base:allocation metadata context
// ---------------------------------------------------------------------------

/// Name of the only metadata context the spec defines.
pub const CONTEXT_BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` status bit 0: the extent is a hole.
pub const STATE_HOLE: u32 = 1 << 0;
/// `base:allocation` status bit 1: the extent reads as zeroes.
pub const STATE_ZERO: u32 = 1 << 1;

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// Server greeting: NBDMAGIC + IHAVEOPT + 16-bit handshake flags.
pub const GREETING_LEN: usize = 18;
/// Option header sent by the client: IHAVEOPT + option + length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Option reply header: magic + option + type + length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Reserved zero bytes after an `NBD_OPT_EXPORT_NAME` reply unless
/// `NO_ZEROES` was negotiated.
pub const EXPORT_NAME_ZEROES: usize = 124;
/// Transmission request header.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Simple reply header.
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Structured reply chunk header.
pub const CHUNK_HEADER_LEN: usize = 20;
/// Longest string the spec allows (export names, messages, queries).
pub const MAX_STRING_LEN: usize = 4096;
/// The payload size every server SHOULD accept and never deem a denial of
/// service: 2^25 = 32 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 25;
/// Servers SHOULD NOT put more than 2^20 descriptors in one block status
/// chunk; the encoder refuses more.
pub const MAX_BLOCK_STATUS_DESCRIPTORS: usize = 1 << 20;
