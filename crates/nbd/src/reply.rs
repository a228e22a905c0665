//! Transmission-phase reply encoders (server side).
//!
//! Data-carrying replies come in two forms: a `*_header` function returning
//! a fixed-size array, so the caller can `writev(header, data)` without
//! copying the data, and a `write_*` function appending everything to a
//! `Vec<u8>` for small replies.
//!
//! Which reply kinds to use is the caller's job: without structured replies
//! only simple replies are allowed; with them, READ MUST use structured
//! chunks and BLOCK_STATUS always does.

use crate::consts::*;
use crate::error::EncodeError;
use crate::types::{BlockDescriptor, Errno};
use crate::wire::sanitize_message;

/// Size of the OFFSET_DATA header: 20-byte chunk header + 8-byte offset.
pub const OFFSET_DATA_HEADER_LEN: usize = CHUNK_HEADER_LEN + 8;

/// Simple reply header. For a successful READ, `length` bytes of data must
/// follow; for errors nothing may follow.
pub fn simple_reply_header(cookie: u64, error: Option<Errno>) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_HEADER_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.map_or(0, Errno::to_wire).to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Appends a simple reply header (see [`simple_reply_header`]).
pub fn write_simple_reply(out: &mut Vec<u8>, cookie: u64, error: Option<Errno>) {
    out.extend_from_slice(&simple_reply_header(cookie, error));
}

/// Generic structured chunk header: magic, flags (only `DONE` is set here),
/// type, cookie, payload length.
pub fn chunk_header(
    done: bool,
    chunk_type: u16,
    cookie: u64,
    length: u32,
) -> [u8; CHUNK_HEADER_LEN] {
    let flags = if done { REPLY_FLAG_DONE } else { 0 };
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// Header of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk for `data_len` bytes at
/// `offset`; the caller sends the data right after it. Refuses empty data
/// (length MUST be at least 9) and data over `u32::MAX - 8` bytes.
pub fn offset_data_header(
    cookie: u64,
    offset: u64,
    data_len: usize,
    done: bool,
) -> Result<[u8; OFFSET_DATA_HEADER_LEN], EncodeError> {
    if data_len == 0 {
        return Err(EncodeError::EmptyData);
    }
    let length = u32::try_from(data_len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .ok_or(EncodeError::TooLong)?;
    let mut out = [0u8; OFFSET_DATA_HEADER_LEN];
    out[..CHUNK_HEADER_LEN].copy_from_slice(&chunk_header(
        done,
        REPLY_TYPE_OFFSET_DATA,
        cookie,
        length,
    ));
    out[CHUNK_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    Ok(out)
}

/// Appends a whole `NBD_REPLY_TYPE_OFFSET_DATA` chunk (copies `data`).
pub fn write_offset_data(
    out: &mut Vec<u8>,
    cookie: u64,
    offset: u64,
    data: &[u8],
    done: bool,
) -> Result<(), EncodeError> {
    out.extend_from_slice(&offset_data_header(cookie, offset, data.len(), done)?);
    out.extend_from_slice(data);
    Ok(())
}

/// Appends an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `length` zero bytes at
/// `offset` (length MUST be nonzero).
pub fn write_offset_hole(
    out: &mut Vec<u8>,
    cookie: u64,
    offset: u64,
    length: u32,
    done: bool,
) -> Result<(), EncodeError> {
    if length == 0 {
        return Err(EncodeError::EmptyHole);
    }
    out.extend_from_slice(&chunk_header(done, REPLY_TYPE_OFFSET_HOLE, cookie, 12));
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    Ok(())
}

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for one metadata context.
/// Needs 1..=2^20 descriptors, each with a nonzero length; the caller is
/// responsible for the spec's rules on their sum and for `REQ_ONE`.
pub fn write_block_status(
    out: &mut Vec<u8>,
    cookie: u64,
    context_id: u32,
    descriptors: &[BlockDescriptor],
    done: bool,
) -> Result<(), EncodeError> {
    if descriptors.is_empty() {
        return Err(EncodeError::NoDescriptors);
    }
    if descriptors.len() > MAX_BLOCK_STATUS_DESCRIPTORS {
        return Err(EncodeError::TooManyDescriptors);
    }
    if descriptors.iter().any(|d| d.length == 0) {
        return Err(EncodeError::ZeroLengthDescriptor);
    }
    // At most 4 + 8 * 2^20 bytes: always fits.
    let length = u32::try_from(4 + 8 * descriptors.len()).map_err(|_| EncodeError::TooLong)?;
    out.reserve(CHUNK_HEADER_LEN + length as usize);
    out.extend_from_slice(&chunk_header(done, REPLY_TYPE_BLOCK_STATUS, cookie, length));
    out.extend_from_slice(&context_id.to_be_bytes());
    for d in descriptors {
        out.extend_from_slice(&d.length.to_be_bytes());
        out.extend_from_slice(&d.flags.to_be_bytes());
    }
    Ok(())
}

fn write_error_chunk(
    out: &mut Vec<u8>,
    cookie: u64,
    error: Errno,
    message: &str,
    offset: Option<u64>,
    done: bool,
) {
    let message = sanitize_message(message);
    // sanitize_message caps at 4096 bytes, so both conversions are exact.
    let msg_len = message.len() as u16;
    let (chunk_type, extra) = match offset {
        Some(_) => (REPLY_TYPE_ERROR_OFFSET, 8),
        None => (REPLY_TYPE_ERROR, 0),
    };
    let length = 6 + u32::from(msg_len) + extra;
    out.extend_from_slice(&chunk_header(done, chunk_type, cookie, length));
    out.extend_from_slice(&error.to_wire().to_be_bytes());
    out.extend_from_slice(&msg_len.to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    if let Some(offset) = offset {
        out.extend_from_slice(&offset.to_be_bytes());
    }
}

/// Appends an `NBD_REPLY_TYPE_ERROR` chunk. The message is cut to 4096
/// bytes (on a char boundary) and stripped of NULs rather than refused.
pub fn write_error(out: &mut Vec<u8>, cookie: u64, error: Errno, message: &str, done: bool) {
    write_error_chunk(out, cookie, error, message, None, done);
}

/// Appends an `NBD_REPLY_TYPE_ERROR_OFFSET` chunk (error at `offset`,
/// which MUST lie within the request).
pub fn write_error_offset(
    out: &mut Vec<u8>,
    cookie: u64,
    error: Errno,
    message: &str,
    offset: u64,
    done: bool,
) {
    write_error_chunk(out, cookie, error, message, Some(offset), done);
}

/// Appends the final empty `NBD_REPLY_TYPE_NONE` chunk (always `DONE`).
pub fn write_none_done(out: &mut Vec<u8>, cookie: u64) {
    out.extend_from_slice(&chunk_header(true, REPLY_TYPE_NONE, cookie, 0));
}
