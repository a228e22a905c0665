//! Transmission-phase requests: decoding, encoding (for the client side) and
//! validation against the negotiated export.
//!
//! Decoding only fails on framing errors (bad magic), after which the stream
//! cannot be resynchronised. Everything else (unknown commands, bad flags,
//! out-of-range offsets) decodes fine and is refused by
//! [`RequestHeader::validate`] with the `NBD_E*` value the server should put
//! in its reply, so the connection survives.
//!
//! A WRITE's payload follows the header on the wire even when the request is
//! invalid, so a server that refuses a WRITE must still consume
//! [`RequestHeader::payload_len`] bytes before reading the next header;
//! [`RequestHeader::check_payload`] bounds that work.

use crate::consts::*;
use crate::error::ProtocolError;
use crate::handshake::Negotiated;
use crate::types::{BlockSize, Command, CommandFlags, Errno, TransmissionFlags};
use crate::wire::Reader;

/// A decoded request header (28 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestHeader {
    /// Command flags, unknown bits preserved.
    pub flags: CommandFlags,
    /// Command.
    pub command: Command,
    /// Opaque cookie (formerly "handle") echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes (payload length for WRITE, effect length otherwise).
    pub length: u32,
}

impl RequestHeader {
    /// Decodes a full header. Fails only on a bad magic (which includes the
    /// extended-header magic, never negotiated here).
    pub fn parse(header: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(header);
        // The array length guarantees every read below succeeds.
        let magic = r.u32().unwrap_or_default();
        if magic != REQUEST_MAGIC {
            return Err(ProtocolError::BadRequestMagic(magic));
        }
        Ok(Self {
            flags: CommandFlags::from_bits(r.u16().unwrap_or_default()),
            command: Command::from_wire(r.u16().unwrap_or_default()),
            cookie: r.u64().unwrap_or_default(),
            offset: r.u64().unwrap_or_default(),
            length: r.u32().unwrap_or_default(),
        })
    }

    /// Decodes a header from the front of `buf`; `Ok(None)` if fewer than
    /// 28 bytes are available. Consumes exactly
    /// [`REQUEST_HEADER_LEN`] bytes on success.
    pub fn try_parse(buf: &[u8]) -> Result<Option<Self>, ProtocolError> {
        match buf.first_chunk::<REQUEST_HEADER_LEN>() {
            Some(head) => Self::parse(head).map(Some),
            None => Ok(None),
        }
    }

    /// Encodes the header (client side). The WRITE payload, if any, goes
    /// after it.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.bits().to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_wire().to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }

    /// Bytes of payload following this header: `length` for WRITE, else 0.
    pub fn payload_len(&self) -> u32 {
        if self.command == Command::Write {
            self.length
        } else {
            0
        }
    }

    /// False only for `NBD_CMD_DISC`, which is never answered.
    pub fn expects_reply(&self) -> bool {
        self.command != Command::Disconnect
    }

    /// Refuses payloads larger than `limit`, which the server would rather
    /// hang up on than read (or discard) — the spec lets either side
    /// hard-disconnect on payloads deemed a denial of service, but says
    /// 32 MiB ([`DEFAULT_MAX_PAYLOAD`]) never is, so `limit` should be at
    /// least that ([`ExportContext::disconnect_limit`]).
    pub fn check_payload(&self, limit: u32) -> Result<(), ProtocolError> {
        let length = self.payload_len();
        if length > limit {
            return Err(ProtocolError::PayloadTooLarge { length, limit });
        }
        Ok(())
    }

    /// Checks the request against what was negotiated. `Err` carries the
    /// error to reply with (the connection stays up).
    ///
    /// Rules, in order (the spec does not rank them):
    ///
    /// 1. Unknown commands, and `NBD_CMD_RESIZE` unless `SEND_RESIZE` was
    ///    advertised → `EINVAL` (SHOULD). `NBD_CMD_DISC` is always `Ok`.
    /// 2. Flags: any bit not valid for the command → `EINVAL` (SHOULD).
    ///    `FUA` is valid on every command but only with `SEND_FUA`; `DF`
    ///    only on READ with `SEND_DF`; `NO_HOLE` only on WRITE_ZEROES;
    ///    `FAST_ZERO` only on WRITE_ZEROES with `SEND_FAST_ZERO`;
    ///    `REQ_ONE` only on BLOCK_STATUS.
    /// 3. Commands that were not advertised → `EINVAL`: FLUSH without
    ///    `SEND_FLUSH`, TRIM without `SEND_TRIM`, WRITE_ZEROES without
    ///    `SEND_WRITE_ZEROES`, BLOCK_STATUS without structured replies and a
    ///    selected meta context. CACHE is accepted even unadvertised,
    ///    because clients are known to send it anyway (spec remark).
    /// 4. WRITE, WRITE_ZEROES, TRIM on a read-only export → `EPERM`.
    /// 5. FLUSH: done (offset/length are reserved-zero, but not checked so
    ///    as not to fail clients that leave junk there).
    /// 6. READ or WRITE longer than `max_payload`: WRITE → `EINVAL`; READ →
    ///    `EOVERFLOW` with structured replies (spec: MAY reject up front),
    ///    else `EINVAL`. Other commands may exceed it (effect length only).
    /// 7. `offset + length` overflowing or past the export size: WRITE and
    ///    WRITE_ZEROES → `ENOSPC`, others → `EINVAL` (SHOULDs).
    /// 8. If a minimum block size above 1 applies: offset and length must be
    ///    multiples of it → `EINVAL`, except that a request ending exactly at
    ///    an unaligned export end may have an unaligned length.
    /// 9. BLOCK_STATUS with length 0 → `EINVAL` (no valid reply exists:
    ///    descriptors must be nonzero yet, with `REQ_ONE`, not exceed the
    ///    request). Other zero lengths are `Ok` (spec: SHOULD NOT
    ///    disconnect; the operation is a no-op).
    pub fn validate(&self, ctx: &ExportContext) -> Result<(), Errno> {
        use Command as C;
        let tf = ctx.flags;
        // 1. command known?
        match self.command {
            C::Disconnect => return Ok(()),
            C::Unknown(_) => return Err(Errno::Inval),
            C::Resize if !tf.contains(TransmissionFlags::SEND_RESIZE) => return Err(Errno::Inval),
            _ => {}
        }
        // 2. flags valid for this command?
        let mut allowed = CommandFlags::empty();
        if tf.contains(TransmissionFlags::SEND_FUA) {
            allowed |= CommandFlags::FUA;
        }
        match self.command {
            C::Read if tf.contains(TransmissionFlags::SEND_DF) && ctx.structured_replies => {
                allowed |= CommandFlags::DF;
            }
            C::WriteZeroes => {
                allowed |= CommandFlags::NO_HOLE;
                if tf.contains(TransmissionFlags::SEND_FAST_ZERO) {
                    allowed |= CommandFlags::FAST_ZERO;
                }
            }
            C::BlockStatus => allowed |= CommandFlags::REQ_ONE,
            _ => {}
        }
        if !allowed.contains(self.flags) {
            return Err(Errno::Inval);
        }
        // 3. command advertised?
        let advertised = match self.command {
            C::Flush => tf.contains(TransmissionFlags::SEND_FLUSH),
            C::Trim => tf.contains(TransmissionFlags::SEND_TRIM),
            C::WriteZeroes => tf.contains(TransmissionFlags::SEND_WRITE_ZEROES),
            C::BlockStatus => ctx.structured_replies && ctx.meta_contexts > 0,
            _ => true,
        };
        if !advertised {
            return Err(Errno::Inval);
        }
        // 4. read-only
        if self.command.is_write() && tf.contains(TransmissionFlags::READ_ONLY) {
            return Err(Errno::Perm);
        }
        // 5. commands without a range
        if matches!(self.command, C::Flush | C::Resize) {
            return Ok(());
        }
        // 6. payload size
        if self.length > ctx.max_payload {
            match self.command {
                C::Write => return Err(Errno::Inval),
                C::Read if ctx.structured_replies => return Err(Errno::Overflow),
                C::Read => return Err(Errno::Inval),
                _ => {}
            }
        }
        // 7. bounds
        let end = self.offset.checked_add(u64::from(self.length));
        if end.is_none_or(|end| end > ctx.size) {
            return Err(match self.command {
                C::Write | C::WriteZeroes => Errno::NoSpc,
                _ => Errno::Inval,
            });
        }
        // 8. alignment
        let min = u64::from(ctx.min_block_size.max(1));
        if min > 1 {
            let ends_at_size = end == Some(ctx.size);
            let len_ok = u64::from(self.length).is_multiple_of(min) || ends_at_size;
            if !self.offset.is_multiple_of(min) || !len_ok {
                return Err(Errno::Inval);
            }
        }
        // 9. zero-length block status
        if self.command == C::BlockStatus && self.length == 0 {
            return Err(Errno::Inval);
        }
        Ok(())
    }
}

/// What [`RequestHeader::validate`] checks against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportContext {
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags sent to the client.
    pub flags: TransmissionFlags,
    /// Minimum block size enforced for alignment (1 = none).
    pub min_block_size: u32,
    /// Maximum READ/WRITE payload.
    pub max_payload: u32,
    /// Structured replies were negotiated.
    pub structured_replies: bool,
    /// Number of metadata contexts selected for this export.
    pub meta_contexts: usize,
}

impl ExportContext {
    /// Context with the spec's default sizing (no alignment, 32 MiB payload),
    /// simple replies and no metadata contexts.
    pub fn new(size: u64, flags: TransmissionFlags) -> Self {
        Self {
            size,
            flags,
            min_block_size: 1,
            max_payload: DEFAULT_MAX_PAYLOAD,
            structured_replies: false,
            meta_contexts: 0,
        }
    }

    /// Context matching a finished handshake. Advertised block sizes are
    /// enforced even if the client did not ask for them: the spec then
    /// requires clean errors, which is what validation produces.
    pub fn from_negotiated(n: &Negotiated) -> Self {
        let bs = n.block_size.unwrap_or(BlockSize::DEFAULT);
        Self {
            size: n.size,
            flags: n.flags,
            min_block_size: bs.minimum,
            max_payload: bs.maximum,
            structured_replies: n.structured_replies,
            meta_contexts: n.meta_contexts.len(),
        }
    }

    /// Largest WRITE payload worth discarding rather than disconnecting:
    /// the advertised maximum, but never below the 32 MiB the spec says is
    /// never a denial of service.
    pub fn disconnect_limit(&self) -> u32 {
        self.max_payload.max(DEFAULT_MAX_PAYLOAD)
    }
}
