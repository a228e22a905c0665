//! Big-endian cursor and NBD string rules, shared by every decoder.
//!
//! Decoders never index slices directly; they go through [`Reader`], whose
//! methods return `None` on truncation. That is what makes "no panic on any
//! input" easy to audit.

use crate::consts::MAX_STRING_LEN;

/// Bounds-checked big-endian reader over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Validates an NBD string: UTF-8, no NUL, at most 4096 bytes (all MUSTs in
/// the "Conventions" section).
pub(crate) fn nbd_string(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_STRING_LEN || bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// Makes a string we are about to *send* conform to the NBD string rules:
/// drop NUL characters and cut at 4096 bytes on a char boundary. Used for
/// human-readable messages, where sending something beats failing.
pub(crate) fn sanitize_message(message: &str) -> std::borrow::Cow<'_, str> {
    let needs_nul_strip = message.contains('\0');
    if !needs_nul_strip && message.len() <= MAX_STRING_LEN {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len().min(MAX_STRING_LEN));
    for ch in message.chars().filter(|&c| c != '\0') {
        if out.len() + ch.len_utf8() > MAX_STRING_LEN {
            break;
        }
        out.push(ch);
    }
    std::borrow::Cow::Owned(out)
}

/// Appends `value` as a big-endian `u32` length and the bytes.
pub(crate) fn put_str32(out: &mut Vec<u8>, s: &str) {
    // Callers only pass strings already bounded by MAX_STRING_LEN (or by the
    // caller's own data), so the length fits a u32; saturate defensively.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_truncation_is_none() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.bytes(2), None);
        assert_eq!(r.rest(), &[3]);
    }

    #[test]
    fn string_rules() {
        assert_eq!(nbd_string(b"disk"), Some("disk".into()));
        assert_eq!(nbd_string(b""), Some(String::new()));
        assert_eq!(nbd_string(b"a\0b"), None);
        assert_eq!(nbd_string(&[0xff, 0xfe]), None);
        assert!(nbd_string(&[b'a'; 4096]).is_some());
        assert!(nbd_string(&[b'a'; 4097]).is_none());
    }

    #[test]
    fn sanitize_cuts_on_char_boundary() {
        let long = "é".repeat(3000); // 6000 bytes
        let s = sanitize_message(&long);
        assert!(s.len() <= MAX_STRING_LEN);
        assert_eq!(s.len(), 4096);
        assert_eq!(sanitize_message("a\0b"), "ab");
        assert!(matches!(
            sanitize_message("ok"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
