//! Errors of decoding and encoding. Each message is one sentence saying
//! what is wrong and where (`at byte N` counts from the stream's start);
//! what to do about it is the caller's to add (it knows the file name).

use crate::decode::StreamKind;

/// How a [`DecodeError`] should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input is another kind of file altogether (wrong banner).
    WrongFormat,
    /// The input is damaged or cut short.
    Damaged,
}

/// Why a stream could not be decoded. Once the decoder returned one, it
/// returns the same error on every later call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The stream does not start with the expected banner.
    #[error("not {}: it begins with {} instead of {}{}", expected.describe(), escape(found), escape(expected.banner()), found_kind.map(|k| format!(" (it looks like {})", k.describe())).unwrap_or_default())]
    BadBanner {
        expected: StreamKind,
        /// The bytes read, up to and including the first that differs.
        found: Vec<u8>,
        /// Another kind of stream these bytes begin, if any.
        found_kind: Option<StreamKind>,
    },

    /// Nothing at all.
    #[error("the input is empty; expected {}", expected.describe())]
    Empty { expected: StreamKind },

    /// A banner inside an export-format 2 stream is wrong.
    #[error(
        "damaged stream: expected {} at byte {offset}, found {}",
        escape(expected),
        escape(found)
    )]
    BadInnerBanner {
        offset: u64,
        expected: &'static [u8],
        found: Vec<u8>,
    },

    /// A tag this format does not define, where it cannot be skipped (diff
    /// v1 records carry no length).
    #[error("unknown record tag {} at byte {offset} in the {section}", show_tag(*tag))]
    UnknownTag {
        tag: u8,
        offset: u64,
        section: &'static str,
    },

    /// A v2 record's length field disagrees with its contents.
    #[error("record {} at byte {offset} claims {len} bytes; it must be {expected}", show_tag(*tag))]
    LengthMismatch {
        tag: u8,
        offset: u64,
        len: u64,
        expected: u64,
    },

    /// A length beyond any sane value (names over 4 KiB, metadata over
    /// 1 MiB...), refused before anything is buffered.
    #[error("{what} at byte {offset} is {len} bytes long; the limit is {max}")]
    AbsurdLength {
        what: &'static str,
        offset: u64,
        len: u64,
        max: u64,
    },

    /// An extent whose end does not fit in 64 bits.
    #[error("record {} at byte {offset}: extent {image_offset}+{len} runs past 2^64", show_tag(*tag))]
    ExtentOverflow {
        tag: u8,
        offset: u64,
        image_offset: u64,
        len: u64,
    },

    /// An extent beyond the image size the stream declared.
    #[error("record {} at byte {offset}: extent {image_offset}+{len} ends beyond the image size {size}", show_tag(*tag))]
    ExtentBeyondSize {
        tag: u8,
        offset: u64,
        image_offset: u64,
        len: u64,
        size: u64,
    },

    /// A header record (from/to snapshot, size, protection) twice in one diff.
    #[error("record {} at byte {offset} appears twice in one diff", show_tag(*tag))]
    Duplicate { tag: u8, offset: u64 },

    /// A header record after the first data record.
    #[error("record {} at byte {offset} comes after data records; metadata records must come first", show_tag(*tag))]
    Misplaced { tag: u8, offset: u64 },

    /// A snapshot name or image-meta key that is empty or not UTF-8.
    #[error("{what} at byte {offset} is {reason}")]
    BadName {
        what: &'static str,
        offset: u64,
        reason: &'static str,
    },

    /// The input ended inside a record (or before the end record).
    #[error("truncated: the input ends at byte {offset}, in the middle of {expected}")]
    Truncated { offset: u64, expected: String },

    /// Bytes after the stream's end record.
    #[error("unexpected data at byte {offset}, after the end of the stream")]
    TrailingData { offset: u64 },
}

impl DecodeError {
    /// Whether the input is another kind of file or a damaged one.
    pub fn class(&self) -> ErrorClass {
        match self {
            DecodeError::BadBanner { .. } | DecodeError::Empty { .. } => ErrorClass::WrongFormat,
            _ => ErrorClass::Damaged,
        }
    }
}

/// Misuse of the encoder, or values the formats cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("a snapshot name must be 1 to {max} bytes, not {len}", max = crate::MAX_NAME_LEN)]
    NameLength { len: usize },
    #[error("extent {offset}+{len} ends beyond the image size {size}")]
    ExtentBeyondSize { offset: u64, len: u64, size: u64 },
    #[error("extent {offset}+{len} runs past 2^64")]
    ExtentOverflow { offset: u64, len: u64 },
    #[error("the protection record exists in diff v2 only")]
    ProtectedInV1,
    #[error("image-meta key {key:?} with its value is {len} bytes; the limit is {max}", max = crate::MAX_META_LEN)]
    MetaTooLong { key: String, len: u64 },
    #[error("{0}")]
    Order(&'static str),
}

/// `'w'` for printable tags, `0x00` for the others.
pub(crate) fn show_tag(t: u8) -> String {
    if t.is_ascii_graphic() {
        format!("'{}'", t as char)
    } else {
        format!("0x{t:02x}")
    }
}

/// Bytes as a quoted string with escapes (`"rbd diff v1\n"`).
pub(crate) fn escape(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for &c in b.iter().take(64) {
        s.extend(std::ascii::escape_default(c).map(char::from));
    }
    if b.len() > 64 {
        s.push_str("...");
    }
    s.push('"');
    s
}
