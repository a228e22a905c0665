//! Decoding of transmission-phase replies (client side).

use std::borrow::Cow;

use crate::consts::*;
use crate::error::ProtocolError;
use crate::types::{BlockDescriptor, Errno};
use crate::wire::Reader;

/// Header of a structured reply chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkHeader {
    /// Reply flags (clients MUST ignore unknown ones).
    pub flags: u16,
    /// Chunk type.
    pub chunk_type: u16,
    /// Cookie of the request this chunk answers.
    pub cookie: u64,
    /// Payload length following the header.
    pub length: u32,
}

impl ChunkHeader {
    /// `NBD_REPLY_FLAG_DONE`: last chunk of this reply.
    pub fn done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }

    /// Error chunk types have bit 15 set.
    pub fn is_error(&self) -> bool {
        self.chunk_type & REPLY_TYPE_FLAG_ERROR != 0
    }
}

/// A reply header: simple (16 bytes) or structured chunk (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyHeader {
    /// Simple reply; for a successful READ the data follows (its length is
    /// only known from the request).
    Simple {
        /// Cookie.
        cookie: u64,
        /// Raw error value (0 = success).
        error: u32,
    },
    /// Structured reply chunk; `length` bytes of payload follow.
    Chunk(ChunkHeader),
}

impl ReplyHeader {
    /// Decodes a header from the front of `buf`: `Ok(None)` if more bytes
    /// are needed, else the header and its size. Fails on an unknown magic.
    pub fn try_parse(buf: &[u8]) -> Result<Option<(Self, usize)>, ProtocolError> {
        let mut r = Reader::new(buf);
        let Some(magic) = r.u32() else {
            return Ok(None);
        };
        match magic {
            SIMPLE_REPLY_MAGIC => {
                let (Some(error), Some(cookie)) = (r.u32(), r.u64()) else {
                    return Ok(None);
                };
                Ok(Some((
                    Self::Simple { cookie, error },
                    SIMPLE_REPLY_HEADER_LEN,
                )))
            }
            STRUCTURED_REPLY_MAGIC => {
                let (Some(flags), Some(chunk_type), Some(cookie), Some(length)) =
                    (r.u16(), r.u16(), r.u64(), r.u32())
                else {
                    return Ok(None);
                };
                let header = ChunkHeader {
                    flags,
                    chunk_type,
                    cookie,
                    length,
                };
                Ok(Some((Self::Chunk(header), CHUNK_HEADER_LEN)))
            }
            other => Err(ProtocolError::BadReplyMagic(other)),
        }
    }

    /// The cookie.
    pub fn cookie(&self) -> u64 {
        match self {
            Self::Simple { cookie, .. } => *cookie,
            Self::Chunk(h) => h.cookie,
        }
    }
}

/// A decoded structured chunk payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Chunk<'a> {
    /// `NBD_REPLY_TYPE_NONE`.
    None,
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    OffsetData {
        /// Export offset of `data`.
        offset: u64,
        /// The data (at least one byte).
        data: &'a [u8],
    },
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`: `length` zero bytes at `offset`.
    OffsetHole {
        /// Export offset.
        offset: u64,
        /// Hole size (nonzero).
        length: u32,
    },
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    BlockStatus {
        /// Metadata context id.
        context_id: u32,
        /// At least one descriptor, each with nonzero length.
        descriptors: Vec<BlockDescriptor>,
    },
    /// `NBD_REPLY_TYPE_ERROR`, `NBD_REPLY_TYPE_ERROR_OFFSET`, or an unknown
    /// error type (the request failed but the connection can continue).
    Error {
        /// The chunk type.
        chunk_type: u16,
        /// Raw error value (nonzero); see [`Errno::from_wire_lenient`].
        error: u32,
        /// Human-readable message (invalid UTF-8 replaced).
        message: Cow<'a, str>,
        /// Offset of `NBD_REPLY_TYPE_ERROR_OFFSET`.
        offset: Option<u64>,
    },
}

impl<'a> Chunk<'a> {
    /// Decodes the payload of a chunk, checking the spec's length rules.
    /// `payload` must be exactly `header.length` bytes.
    pub fn parse(header: &ChunkHeader, payload: &'a [u8]) -> Result<Self, ProtocolError> {
        let malformed = ProtocolError::MalformedChunk;
        if payload.len() != header.length as usize {
            return Err(malformed("payload length differs from the header"));
        }
        let mut r = Reader::new(payload);
        match header.chunk_type {
            REPLY_TYPE_NONE => {
                if header.length != 0 {
                    return Err(malformed("NONE chunk with a payload"));
                }
                if !header.done() {
                    return Err(malformed("NONE chunk without the DONE flag"));
                }
                Ok(Self::None)
            }
            REPLY_TYPE_OFFSET_DATA => {
                if header.length < 9 {
                    return Err(malformed("OFFSET_DATA shorter than 9 bytes"));
                }
                let offset = r.u64().ok_or(malformed("OFFSET_DATA"))?;
                Ok(Self::OffsetData {
                    offset,
                    data: r.rest(),
                })
            }
            REPLY_TYPE_OFFSET_HOLE => {
                if header.length != 12 {
                    return Err(malformed("OFFSET_HOLE length is not 12"));
                }
                let offset = r.u64().ok_or(malformed("OFFSET_HOLE"))?;
                let length = r.u32().ok_or(malformed("OFFSET_HOLE"))?;
                if length == 0 {
                    return Err(malformed("OFFSET_HOLE of size 0"));
                }
                Ok(Self::OffsetHole { offset, length })
            }
            REPLY_TYPE_BLOCK_STATUS => {
                let len = header.length as usize;
                if len < 12 || !(len - 4).is_multiple_of(8) {
                    return Err(malformed("BLOCK_STATUS length is not 4 + 8n, n >= 1"));
                }
                let context_id = r.u32().ok_or(malformed("BLOCK_STATUS"))?;
                let mut descriptors = Vec::with_capacity(r.remaining() / 8);
                while r.remaining() > 0 {
                    let (Some(length), Some(flags)) = (r.u32(), r.u32()) else {
                        return Err(malformed("BLOCK_STATUS"));
                    };
                    if length == 0 {
                        return Err(malformed("BLOCK_STATUS descriptor of length 0"));
                    }
                    descriptors.push(BlockDescriptor { length, flags });
                }
                Ok(Self::BlockStatus {
                    context_id,
                    descriptors,
                })
            }
            t if t & REPLY_TYPE_FLAG_ERROR != 0 => {
                let error = r
                    .u32()
                    .ok_or(malformed("error chunk shorter than 6 bytes"))?;
                let msg_len = r
                    .u16()
                    .ok_or(malformed("error chunk shorter than 6 bytes"))?;
                if error == 0 {
                    return Err(malformed("error chunk with error 0"));
                }
                let message = r
                    .bytes(usize::from(msg_len))
                    .ok_or(malformed("error message longer than the chunk"))?;
                let message = String::from_utf8_lossy(message);
                let offset = if t == REPLY_TYPE_ERROR_OFFSET {
                    let offset = r.u64().ok_or(malformed("ERROR_OFFSET without offset"))?;
                    if r.remaining() != 0 {
                        return Err(malformed("ERROR_OFFSET with trailing bytes"));
                    }
                    Some(offset)
                } else {
                    // ERROR and unknown error types: trailing fields (if any)
                    // are not ours to interpret.
                    None
                };
                Ok(Self::Error {
                    chunk_type: t,
                    error,
                    message,
                    offset,
                })
            }
            other => Err(ProtocolError::UnknownChunkType(other)),
        }
    }

    /// For error chunks, the error as an [`Errno`] (unknown values map to
    /// `EINVAL` as the spec advises).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Error { error, .. } => Some(Errno::from_wire_lenient(*error)),
            _ => None,
        }
    }
}

/// A complete reply message decoded from a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply<'a> {
    /// Simple reply; `data` is non-empty only for a successful READ.
    Simple {
        /// Cookie.
        cookie: u64,
        /// Raw error value (0 = success).
        error: u32,
        /// Read data.
        data: &'a [u8],
    },
    /// One structured chunk.
    Chunk {
        /// Its header (cookie, `done()`...).
        header: ChunkHeader,
        /// Its payload.
        chunk: Chunk<'a>,
    },
}

/// Decodes one complete reply from the front of `buf`.
///
/// Returns `Ok(None)` until the whole message (header and payload) is in
/// `buf`, then the reply and the number of bytes it used. Chunks whose
/// payload exceeds `max_chunk_len` are refused up front, so a hostile
/// length never makes the caller buffer it. `simple_data_len` is asked, for
/// a successful simple reply, how many data bytes follow (the READ length
/// for that cookie, 0 otherwise) — the simple reply format does not say.
pub fn decode_reply<'a>(
    buf: &'a [u8],
    max_chunk_len: u32,
    simple_data_len: impl FnOnce(u64) -> usize,
) -> Result<Option<(Reply<'a>, usize)>, ProtocolError> {
    let Some((header, header_len)) = ReplyHeader::try_parse(buf)? else {
        return Ok(None);
    };
    let payload_len = match header {
        ReplyHeader::Simple { cookie, error: 0 } => simple_data_len(cookie),
        ReplyHeader::Simple { .. } => 0,
        ReplyHeader::Chunk(h) => {
            if h.length > max_chunk_len {
                return Err(ProtocolError::ChunkTooLarge {
                    length: h.length,
                    limit: max_chunk_len,
                });
            }
            h.length as usize
        }
    };
    let total = header_len.saturating_add(payload_len);
    let Some(payload) = buf.get(header_len..total) else {
        return Ok(None);
    };
    let reply = match header {
        ReplyHeader::Simple { cookie, error } => Reply::Simple {
            cookie,
            error,
            data: payload,
        },
        ReplyHeader::Chunk(header) => Reply::Chunk {
            header,
            chunk: Chunk::parse(&header, payload)?,
        },
    };
    Ok(Some((reply, total)))
}
