//! The incremental decoder: bytes in, [`Event`]s out, no I/O.
//!
//! ```text
//! let mut input = &bytes[..];
//! while !input.is_empty() {
//!     let (used, event) = decoder.feed(input)?;
//!     input = &input[used..];
//!     if let Some(event) = event { /* handle it */ }
//! }
//! decoder.finish()?; // at the end of input: was the stream complete?
//! ```
//!
//! Fixed-size fields are gathered in a small buffer (at most
//! [`MAX_META_LEN`] bytes, for an image-meta record; names at most
//! [`MAX_NAME_LEN`]); data payloads are handed out as slices of the input,
//! however long the record says they are.

use crate::error::{show_tag, DecodeError};
use crate::{
    tag, DIFF_V1_BANNER, DIFF_V2_BANNER, IMAGE_DIFFS_V2_BANNER, IMAGE_V2_BANNER, MAX_META_LEN,
    MAX_NAME_LEN,
};

/// The three stream formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// `rbd export-diff`: `rbd diff v1\n`.
    DiffV1,
    /// A lone v2 diff: `rbd diff v2\n` (what export-format 2 holds).
    DiffV2,
    /// `rbd export --export-format 2`: `rbd image v2\n`.
    Image,
}

impl StreamKind {
    /// The banner the stream begins with.
    pub fn banner(self) -> &'static [u8] {
        match self {
            StreamKind::DiffV1 => DIFF_V1_BANNER,
            StreamKind::DiffV2 => DIFF_V2_BANNER,
            StreamKind::Image => IMAGE_V2_BANNER,
        }
    }

    /// What it is, for messages ("an RBD diff (...)").
    pub fn describe(self) -> &'static str {
        match self {
            StreamKind::DiffV1 => "an RBD diff (rbd export-diff, format v1)",
            StreamKind::DiffV2 => "an RBD diff v2",
            StreamKind::Image => "an RBD image export (rbd export --export-format 2)",
        }
    }

    const ALL: [StreamKind; 3] = [StreamKind::DiffV1, StreamKind::DiffV2, StreamKind::Image];

    /// The kind whose banner `bytes` start with, if any.
    pub fn detect(bytes: &[u8]) -> Option<StreamKind> {
        Self::ALL
            .into_iter()
            .find(|k| bytes.starts_with(k.banner()))
    }
}

/// What the decoder found. `Data` borrows from the input given to
/// [`Decoder::feed`]; everything else is owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// Image property `O`: the object size as a power of two.
    Order(u64),
    /// Image property `T`: RBD feature bits.
    Features(u64),
    /// Image property `U`: stripe unit in bytes.
    StripeUnit(u64),
    /// Image property `C`: stripe count.
    StripeCount(u64),
    /// Image property `M`: an image-meta pair.
    Meta { key: String, value: Vec<u8> },
    /// The properties ended; this many diffs follow (one per snapshot,
    /// oldest first, then the head).
    DiffCount(u64),
    /// A diff begins (index 0 for a lone diff).
    DiffStart { index: u64 },
    /// The diff starts from this snapshot (absent: from nothing).
    FromSnap(String),
    /// The diff ends at this snapshot (absent: at the image head).
    ToSnap(String),
    /// Whether the to-snapshot is protected.
    Protected(bool),
    /// The image size at the end of the diff.
    Size(u64),
    /// A v2 record with an unknown tag, skipped (as `rbd` does).
    Skipped { tag: u8, len: u64 },
    /// A data record begins: `len` bytes for image offset `offset` follow
    /// as [`Event::Data`] pieces, in order.
    Write { offset: u64, len: u64 },
    /// A piece of the current data record, for image offset `offset`.
    Data { offset: u64, bytes: &'a [u8] },
    /// The range reads as zeros.
    Zero { offset: u64, len: u64 },
    /// The diff's end record. After the last diff the stream is complete.
    DiffEnd,
}

/// Which part of the stream a skipped record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Image,
    Diff,
}

/// A fixed-size (once its length is known) piece being gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// The stream's own banner.
    Banner,
    /// `rbd image diffs v2\n`.
    DiffsBanner,
    /// `rbd diff v2\n` before each diff of an image stream.
    DiffBanner,
    ImageTag,
    ImageLen(u8),
    ImageValue(u8),
    ImageMeta(u64),
    DiffCount,
    DiffTag,
    DiffLen(u8),
    NameLen(u8, Option<u64>),
    Name(u8, u32),
    SizeValue,
    ProtValue,
    Extent(u8, Option<u64>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Field(Field),
    Payload { offset: u64, remaining: u64 },
    Skip { remaining: u64, section: Section },
    Done,
    Failed(DecodeError),
}

/// What the current diff has declared so far.
#[derive(Debug, Clone, Copy, Default)]
struct DiffSeen {
    v2: bool,
    from: bool,
    to: bool,
    prot: bool,
    size: Option<u64>,
    data: bool,
}

/// Decodes one stream of a known [`StreamKind`], fed in pieces of any size.
#[derive(Debug, Clone)]
pub struct Decoder {
    kind: StreamKind,
    state: State,
    buf: Vec<u8>,
    /// Bytes consumed so far.
    pos: u64,
    /// Where the record being decoded began.
    rec_start: u64,
    diff: DiffSeen,
    diffs_left: u64,
    diff_index: u64,
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

impl Decoder {
    /// A decoder for a stream of `kind`, starting at its banner.
    pub fn new(kind: StreamKind) -> Self {
        Decoder {
            kind,
            state: State::Field(Field::Banner),
            buf: Vec::new(),
            pos: 0,
            rec_start: 0,
            diff: DiffSeen::default(),
            diffs_left: 0,
            diff_index: 0,
        }
    }

    /// The kind of stream this decodes.
    pub fn kind(&self) -> StreamKind {
        self.kind
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether the stream's last end record was decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still to come of the current data record (0 outside one).
    pub fn payload_remaining(&self) -> u64 {
        match self.state {
            State::Payload { remaining, .. } => remaining,
            _ => 0,
        }
    }

    /// Consumes a prefix of `input`; returns how many bytes it used and
    /// the event they completed, if any. Call again with the rest: an
    /// event stops consumption, and `(n, None)` means all of `input` was
    /// used (`n == input.len()`) and more is needed. After the stream's
    /// end, any further byte is [`DecodeError::TrailingData`].
    pub fn feed<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Option<Event<'a>>), DecodeError> {
        let mut used = 0usize;
        loop {
            let avail = input.len() - used;
            match self.state {
                State::Failed(ref e) => return Err(e.clone()),
                State::Done => {
                    if avail > 0 {
                        return Err(self.fail(DecodeError::TrailingData { offset: self.pos }));
                    }
                    return Ok((used, None));
                }
                State::Payload { offset, remaining } => {
                    if remaining == 0 {
                        self.enter(Field::DiffTag);
                        continue;
                    }
                    if avail == 0 {
                        return Ok((used, None));
                    }
                    let n = (avail as u64).min(remaining) as usize;
                    let bytes = &input[used..used + n];
                    self.pos += n as u64;
                    self.state = State::Payload {
                        offset: offset + n as u64,
                        remaining: remaining - n as u64,
                    };
                    return Ok((used + n, Some(Event::Data { offset, bytes })));
                }
                State::Skip { remaining, section } => {
                    if remaining == 0 {
                        self.enter(match section {
                            Section::Image => Field::ImageTag,
                            Section::Diff => Field::DiffTag,
                        });
                        continue;
                    }
                    if avail == 0 {
                        return Ok((used, None));
                    }
                    let n = (avail as u64).min(remaining) as usize;
                    used += n;
                    self.pos += n as u64;
                    self.state = State::Skip {
                        remaining: remaining - n as u64,
                        section,
                    };
                }
                State::Field(f) => {
                    if avail == 0 {
                        return Ok((used, None));
                    }
                    if matches!(f, Field::Banner | Field::DiffsBanner | Field::DiffBanner) {
                        // Byte by byte: a wrong banner is reported as soon
                        // as it differs, not as a truncation.
                        let b = input[used];
                        used += 1;
                        self.pos += 1;
                        self.buf.push(b);
                        match self.banner_step(f) {
                            Err(e) => return Err(self.fail(e)),
                            Ok(false) => continue,
                            Ok(true) => {}
                        }
                    } else {
                        let need = self.need(f);
                        let take = (need - self.buf.len()).min(avail);
                        self.buf.extend_from_slice(&input[used..used + take]);
                        used += take;
                        self.pos += take as u64;
                        if self.buf.len() < need {
                            return Ok((used, None));
                        }
                    }
                    let field = std::mem::take(&mut self.buf);
                    let r = self.complete(f, &field);
                    self.buf = field;
                    self.buf.clear();
                    match r {
                        Err(e) => return Err(self.fail(e)),
                        Ok(Some(ev)) => return Ok((used, Some(ev))),
                        Ok(None) => {}
                    }
                }
            }
        }
    }

    /// Call at the end of the input: an error unless the stream ended with
    /// its (last) end record.
    pub fn finish(&self) -> Result<(), DecodeError> {
        let expected = match &self.state {
            State::Done => return Ok(()),
            State::Failed(e) => return Err(e.clone()),
            State::Payload { offset, remaining } => format!(
                "the data of a 'w' record, at image offset {offset} ({remaining} bytes missing)"
            ),
            State::Skip { remaining, .. } => {
                format!("a skipped record ({remaining} bytes missing)")
            }
            State::Field(Field::Banner) if self.pos == 0 => {
                return Err(DecodeError::Empty {
                    expected: self.kind,
                })
            }
            State::Field(Field::Banner) if !self.kind.banner().starts_with(&self.buf) => {
                return Err(DecodeError::BadBanner {
                    expected: self.kind,
                    found: self.buf.clone(),
                    found_kind: None,
                })
            }
            State::Field(f) => self.describe(*f),
        };
        Err(DecodeError::Truncated {
            offset: self.pos,
            expected,
        })
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.state = State::Failed(e.clone());
        e
    }

    fn enter(&mut self, f: Field) {
        if matches!(f, Field::DiffTag | Field::ImageTag) {
            self.rec_start = self.pos;
        }
        self.buf.clear();
        self.state = State::Field(f);
    }

    /// Bytes field `f` takes (banners are checked byte by byte instead).
    fn need(&self, f: Field) -> usize {
        match f {
            Field::Banner => self.kind.banner().len(),
            Field::DiffsBanner => IMAGE_DIFFS_V2_BANNER.len(),
            Field::DiffBanner => DIFF_V2_BANNER.len(),
            Field::ImageTag | Field::DiffTag | Field::ProtValue => 1,
            Field::NameLen(..) => 4,
            Field::ImageLen(_)
            | Field::ImageValue(_)
            | Field::DiffCount
            | Field::DiffLen(_)
            | Field::SizeValue => 8,
            Field::Extent(..) => 16,
            // Bounded by MAX_META_LEN and MAX_NAME_LEN when entered.
            Field::ImageMeta(len) => len as usize,
            Field::Name(_, len) => len as usize,
        }
    }

    /// What a truncated stream was in the middle of.
    fn describe(&self, f: Field) -> String {
        let diff = if self.kind == StreamKind::Image {
            format!("diff {} of the image export", self.diff_index + 1)
        } else {
            "the diff".to_string()
        };
        match f {
            Field::Banner => format!("the banner {}", crate::error::escape(self.kind.banner())),
            Field::DiffsBanner => {
                format!("the banner {}", crate::error::escape(IMAGE_DIFFS_V2_BANNER))
            }
            Field::DiffBanner => format!(
                "the banner {} of {diff}",
                crate::error::escape(DIFF_V2_BANNER)
            ),
            Field::ImageTag => "the image properties (they end with 'E')".into(),
            Field::ImageLen(t) => format!("the length of image property {}", show_tag(t)),
            Field::ImageValue(t) => format!("image property {}", show_tag(t)),
            Field::ImageMeta(_) => "an image-meta record 'M'".into(),
            Field::DiffCount => "the number of diffs".into(),
            Field::DiffTag => format!("{diff} (it ends with an 'e' record)"),
            Field::DiffLen(t) => format!("the length of record {}", show_tag(t)),
            Field::NameLen(t, _) | Field::Name(t, _) => {
                format!("the snapshot name of record {}", show_tag(t))
            }
            Field::SizeValue => "the size record 's'".into(),
            Field::ProtValue => "the protection record 'p'".into(),
            Field::Extent(t, _) => format!("the extent of record {}", show_tag(t)),
        }
    }

    /// Checks the banner byte just pushed; `Ok(true)` when it is complete.
    fn banner_step(&mut self, f: Field) -> Result<bool, DecodeError> {
        let expected = match f {
            Field::Banner => self.kind.banner(),
            Field::DiffsBanner => IMAGE_DIFFS_V2_BANNER,
            _ => DIFF_V2_BANNER,
        };
        if expected.starts_with(&self.buf) {
            return Ok(self.buf.len() == expected.len());
        }
        if f != Field::Banner {
            return Err(DecodeError::BadInnerBanner {
                offset: self.pos - self.buf.len() as u64,
                expected,
                found: self.buf.clone(),
            });
        }
        // Another kind of stream? Read on while the bytes could still be
        // one, to name it.
        let others: Vec<StreamKind> = StreamKind::ALL
            .into_iter()
            .filter(|k| *k != self.kind && k.banner().starts_with(&self.buf))
            .collect();
        if let Some(k) = others.iter().find(|k| k.banner() == self.buf.as_slice()) {
            return Err(DecodeError::BadBanner {
                expected: self.kind,
                found: self.buf.clone(),
                found_kind: Some(*k),
            });
        }
        if others.is_empty() {
            return Err(DecodeError::BadBanner {
                expected: self.kind,
                found: self.buf.clone(),
                found_kind: None,
            });
        }
        Ok(false)
    }

    fn start_diff(&mut self, v2: bool) -> Option<Event<'static>> {
        self.diff = DiffSeen {
            v2,
            ..DiffSeen::default()
        };
        self.enter(Field::DiffTag);
        Some(Event::DiffStart {
            index: self.diff_index,
        })
    }

    /// Interprets a complete field.
    fn complete(&mut self, f: Field, b: &[u8]) -> Result<Option<Event<'static>>, DecodeError> {
        let at = self.rec_start;
        let mismatch = |tag: u8, len: u64, expected: u64| DecodeError::LengthMismatch {
            tag,
            offset: at,
            len,
            expected,
        };
        Ok(match f {
            Field::Banner => match self.kind {
                StreamKind::DiffV1 => self.start_diff(false),
                StreamKind::DiffV2 => self.start_diff(true),
                StreamKind::Image => {
                    self.enter(Field::ImageTag);
                    None
                }
            },
            Field::DiffsBanner => {
                self.enter(Field::DiffCount);
                None
            }
            Field::DiffBanner => self.start_diff(true),
            Field::ImageTag => {
                let t = b[0];
                if t == tag::IMAGE_END {
                    self.enter(Field::DiffsBanner);
                } else {
                    self.state = State::Field(Field::ImageLen(t));
                }
                None
            }
            Field::ImageLen(t) => {
                let len = le64(b);
                match t {
                    tag::IMAGE_ORDER
                    | tag::IMAGE_FEATURES
                    | tag::IMAGE_STRIPE_UNIT
                    | tag::IMAGE_STRIPE_COUNT => {
                        if len != 8 {
                            return Err(mismatch(t, len, 8));
                        }
                        self.state = State::Field(Field::ImageValue(t));
                        None
                    }
                    tag::IMAGE_META => {
                        if len > MAX_META_LEN {
                            return Err(DecodeError::AbsurdLength {
                                what: "image-meta record 'M'",
                                offset: at,
                                len,
                                max: MAX_META_LEN,
                            });
                        }
                        if len < 8 {
                            return Err(mismatch(t, len, 8));
                        }
                        self.state = State::Field(Field::ImageMeta(len));
                        None
                    }
                    _ => {
                        self.state = State::Skip {
                            remaining: len,
                            section: Section::Image,
                        };
                        Some(Event::Skipped { tag: t, len })
                    }
                }
            }
            Field::ImageValue(t) => {
                let v = le64(b);
                self.enter(Field::ImageTag);
                Some(match t {
                    tag::IMAGE_ORDER => Event::Order(v),
                    tag::IMAGE_FEATURES => Event::Features(v),
                    tag::IMAGE_STRIPE_UNIT => Event::StripeUnit(v),
                    _ => Event::StripeCount(v),
                })
            }
            Field::ImageMeta(len) => {
                // le32 key length, key, le32 value length, value: exactly len.
                let klen = le32(b) as u64;
                let bad = mismatch(tag::IMAGE_META, len, 8 + klen);
                if 4 + klen + 4 > len {
                    return Err(bad);
                }
                let k = &b[4..4 + klen as usize];
                let rest = &b[4 + klen as usize..];
                let vlen = le32(rest) as u64;
                if 8 + klen + vlen != len {
                    return Err(mismatch(tag::IMAGE_META, len, 8 + klen + vlen));
                }
                let key = std::str::from_utf8(k)
                    .map_err(|_| DecodeError::BadName {
                        what: "image-meta key",
                        offset: at,
                        reason: "not UTF-8",
                    })?
                    .to_string();
                let value = rest[4..].to_vec();
                self.enter(Field::ImageTag);
                Some(Event::Meta { key, value })
            }
            Field::DiffCount => {
                let n = le64(b);
                if n == 0 {
                    self.state = State::Done;
                } else {
                    self.diffs_left = n;
                    self.diff_index = 0;
                    self.enter(Field::DiffBanner);
                }
                Some(Event::DiffCount(n))
            }
            Field::DiffTag => {
                let t = b[0];
                if matches!(
                    t,
                    tag::FROM_SNAP | tag::TO_SNAP | tag::SIZE | tag::PROTECTED
                ) {
                    if self.diff.data {
                        return Err(DecodeError::Misplaced { tag: t, offset: at });
                    }
                    let dup = match t {
                        tag::FROM_SNAP => std::mem::replace(&mut self.diff.from, true),
                        tag::TO_SNAP => std::mem::replace(&mut self.diff.to, true),
                        tag::PROTECTED => std::mem::replace(&mut self.diff.prot, true),
                        _ => self.diff.size.is_some(),
                    };
                    if dup {
                        return Err(DecodeError::Duplicate { tag: t, offset: at });
                    }
                }
                if t == tag::END {
                    return Ok(Some(self.end_diff()));
                }
                self.state = State::Field(if self.diff.v2 {
                    Field::DiffLen(t)
                } else {
                    match t {
                        tag::FROM_SNAP | tag::TO_SNAP => Field::NameLen(t, None),
                        tag::SIZE => Field::SizeValue,
                        tag::PROTECTED => Field::ProtValue,
                        tag::WRITE | tag::ZERO => Field::Extent(t, None),
                        _ => {
                            return Err(DecodeError::UnknownTag {
                                tag: t,
                                offset: at,
                                section: "diff",
                            })
                        }
                    }
                });
                None
            }
            Field::DiffLen(t) => {
                let len = le64(b);
                let next = match t {
                    tag::FROM_SNAP | tag::TO_SNAP => {
                        if len < 4 {
                            return Err(mismatch(t, len, 4));
                        }
                        Field::NameLen(t, Some(len))
                    }
                    tag::SIZE if len == 8 => Field::SizeValue,
                    tag::SIZE => return Err(mismatch(t, len, 8)),
                    tag::PROTECTED if len == 1 => Field::ProtValue,
                    tag::PROTECTED => return Err(mismatch(t, len, 1)),
                    tag::WRITE if len >= 16 => Field::Extent(t, Some(len)),
                    tag::WRITE => return Err(mismatch(t, len, 16)),
                    tag::ZERO if len == 16 => Field::Extent(t, Some(len)),
                    tag::ZERO => return Err(mismatch(t, len, 16)),
                    _ => {
                        self.state = State::Skip {
                            remaining: len,
                            section: Section::Diff,
                        };
                        return Ok(Some(Event::Skipped { tag: t, len }));
                    }
                };
                self.state = State::Field(next);
                None
            }
            Field::NameLen(t, rec) => {
                let n = le32(b);
                if n == 0 {
                    return Err(DecodeError::BadName {
                        what: "snapshot name",
                        offset: at,
                        reason: "empty",
                    });
                }
                if n > MAX_NAME_LEN {
                    return Err(DecodeError::AbsurdLength {
                        what: "snapshot name",
                        offset: at,
                        len: n.into(),
                        max: MAX_NAME_LEN.into(),
                    });
                }
                if let Some(len) = rec {
                    if len != 4 + u64::from(n) {
                        return Err(mismatch(t, len, 4 + u64::from(n)));
                    }
                }
                self.state = State::Field(Field::Name(t, n));
                None
            }
            Field::Name(t, _) => {
                let name = std::str::from_utf8(b)
                    .map_err(|_| DecodeError::BadName {
                        what: "snapshot name",
                        offset: at,
                        reason: "not UTF-8",
                    })?
                    .to_string();
                self.enter(Field::DiffTag);
                Some(if t == tag::FROM_SNAP {
                    Event::FromSnap(name)
                } else {
                    Event::ToSnap(name)
                })
            }
            Field::SizeValue => {
                let size = le64(b);
                self.diff.size = Some(size);
                self.enter(Field::DiffTag);
                Some(Event::Size(size))
            }
            Field::ProtValue => {
                self.enter(Field::DiffTag);
                Some(Event::Protected(b[0] != 0))
            }
            Field::Extent(t, rec) => {
                let (offset, len) = (le64(b), le64(&b[8..]));
                let end = offset.checked_add(len).ok_or(DecodeError::ExtentOverflow {
                    tag: t,
                    offset: at,
                    image_offset: offset,
                    len,
                })?;
                if let Some(size) = self.diff.size {
                    if end > size {
                        return Err(DecodeError::ExtentBeyondSize {
                            tag: t,
                            offset: at,
                            image_offset: offset,
                            len,
                            size,
                        });
                    }
                }
                self.diff.data = true;
                if t == tag::ZERO {
                    self.enter(Field::DiffTag);
                    return Ok(Some(Event::Zero { offset, len }));
                }
                if let Some(rl) = rec {
                    // 16 + len cannot overflow: rl >= 16 was checked, and a
                    // mismatch is reported with the saturated value.
                    let expected = len.saturating_add(16);
                    if rl != expected {
                        return Err(mismatch(t, rl, expected));
                    }
                }
                self.state = State::Payload {
                    offset,
                    remaining: len,
                };
                Some(Event::Write { offset, len })
            }
        })
    }

    fn end_diff(&mut self) -> Event<'static> {
        if self.kind == StreamKind::Image {
            self.diffs_left -= 1;
            if self.diffs_left > 0 {
                self.diff_index += 1;
                self.enter(Field::DiffBanner);
                return Event::DiffEnd;
            }
        }
        self.state = State::Done;
        Event::DiffEnd
    }
}

impl Event<'_> {
    /// The event without its borrow: `None` for [`Event::Data`] (whose
    /// bytes belong to the input).
    pub fn into_static(self) -> Option<Event<'static>> {
        Some(match self {
            Event::Order(v) => Event::Order(v),
            Event::Features(v) => Event::Features(v),
            Event::StripeUnit(v) => Event::StripeUnit(v),
            Event::StripeCount(v) => Event::StripeCount(v),
            Event::Meta { key, value } => Event::Meta { key, value },
            Event::DiffCount(n) => Event::DiffCount(n),
            Event::DiffStart { index } => Event::DiffStart { index },
            Event::FromSnap(s) => Event::FromSnap(s),
            Event::ToSnap(s) => Event::ToSnap(s),
            Event::Protected(p) => Event::Protected(p),
            Event::Size(s) => Event::Size(s),
            Event::Skipped { tag, len } => Event::Skipped { tag, len },
            Event::Write { offset, len } => Event::Write { offset, len },
            Event::Zero { offset, len } => Event::Zero { offset, len },
            Event::DiffEnd => Event::DiffEnd,
            Event::Data { .. } => return None,
        })
    }
}
