//! NBD (Network Block Device) protocol for vdisk, without any I/O.
//!
//! Everything here turns bytes into values and values into bytes; sockets,
//! tasks and timeouts belong to the caller (the vdisk server, or a copier
//! writing to an NBD destination). This keeps the protocol logic testable
//! byte-for-byte and fuzzable, and lets any I/O model drive it.
//!
//! The reference is `doc/proto.md` of the NetworkBlockDevice/nbd project.
//! Only the fixed-newstyle handshake (with a tolerance for plain newstyle
//! clients) and the non-extended transmission headers are implemented; no
//! TLS (the server runs in the spec's NOTLS mode).
//!
//! # Phases
//!
//! ```text
//!  client                                           server
//!    |                                                 |
//!    |   <-- NBDMAGIC, IHAVEOPT, handshake flags --    |  ServerHandshake::initial_bytes
//!    |   -- client flags ------------------------->    |
//!    |                                                 |
//!    |   == option haggling (repeat) =============     |  ServerHandshake::feed
//!    |   -- IHAVEOPT, option, len, data ---------->    |    -> Progress::{Reply, Event, ...}
//!    |   <-- option reply(ies), last one final ---     |  ServerHandshake::reply_*
//!    |                                                 |
//!    |   ends with one of:                             |
//!    |     OPT_GO -> INFO..., ACK                      |  -> Progress::Done  ==> transmission
//!    |     OPT_EXPORT_NAME -> size, flags[, zeroes]    |  -> Progress::Done  ==> transmission
//!    |     OPT_ABORT -> ACK, close                     |  -> Progress::Abort
//!    |                                                 |
//!    |   == transmission ========================     |
//!    |   -- request header (28) [+ WRITE data] --->    |  RequestHeader::parse / validate
//!    |   <-- simple reply (16) [+ READ data] ------    |  reply::simple_reply_header
//!    |   <-- or structured chunks (20 + payload) --    |  reply::write_* / offset_data_header
//!    |   -- NBD_CMD_DISC ------------------------->    |  (no reply; close)
//! ```
//!
//! Client side: [`client::ClientHandshake`], [`RequestHeader::encode`] and
//! [`client::decode_reply`].
//!
//! # Errors
//!
//! Errors returned from decoding ([`HandshakeError`], [`ProtocolError`]) are
//! fatal and mean "hard-disconnect". Everything the spec lets a peer survive
//! is answered on the wire instead (option error replies, `NBD_E*` values
//! from [`RequestHeader::validate`]). No input makes any function panic; the
//! proptest suite and the `handshake_and_requests` fuzz target check that.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod consts;
mod error;
pub mod handshake;
pub mod reply;
pub mod request;
mod types;
mod wire;

pub use error::{EncodeError, HandshakeError, ProtocolError};
pub use handshake::{
    Entry, Event, Handled, HandshakeConfig, Negotiated, Progress, ServerHandshake,
};
pub use request::{ExportContext, RequestHeader};
pub use types::{
    BlockDescriptor, BlockSize, Command, CommandFlags, Errno, MetaContext, OptionError,
    TransmissionFlags,
};
