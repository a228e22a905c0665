//! Encoders: records appended to a `Vec<u8>` the caller writes out.
//! They write exactly what `rbd` writes (same records, same order), and
//! refuse what the decoder would refuse.

use crate::error::EncodeError;
use crate::{
    tag, StreamKind, DIFF_V1_BANNER, DIFF_V2_BANNER, IMAGE_DIFFS_V2_BANNER, IMAGE_V2_BANNER,
    MAX_META_LEN, MAX_NAME_LEN,
};

/// The metadata records of a diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffHeader {
    /// `f`: the snapshot the diff starts from (none: from an empty image).
    pub from_snap: Option<String>,
    /// `t`: the snapshot the diff ends at (none: the image head).
    pub to_snap: Option<String>,
    /// `p` (v2 only): whether the to-snapshot is protected. `rbd` writes it
    /// in v2 whenever there is a to-snapshot.
    pub protected: Option<bool>,
    /// `s`: the image size at the end of the diff.
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Data,
    Ended,
}

/// Writes one diff (v1, or v2 as inside export-format 2): [`header`]
/// first, then extents in any order, then [`end`].
///
/// [`header`]: DiffEncoder::header
/// [`end`]: DiffEncoder::end
#[derive(Debug, Clone)]
pub struct DiffEncoder {
    v2: bool,
    stage: Stage,
    size: u64,
}

fn put_name(out: &mut Vec<u8>, v2: bool, t: u8, name: &str) -> Result<(), EncodeError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN as usize {
        return Err(EncodeError::NameLength { len: name.len() });
    }
    out.push(t);
    if v2 {
        out.extend_from_slice(&(4 + name.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    Ok(())
}

impl DiffEncoder {
    /// An encoder for `rbd diff v1` (`export-diff`).
    pub fn v1() -> Self {
        DiffEncoder {
            v2: false,
            stage: Stage::Start,
            size: 0,
        }
    }

    /// An encoder for `rbd diff v2` (each diff of export-format 2).
    pub fn v2() -> Self {
        DiffEncoder {
            v2: true,
            ..Self::v1()
        }
    }

    /// The kind of diff written.
    pub fn kind(&self) -> StreamKind {
        if self.v2 {
            StreamKind::DiffV2
        } else {
            StreamKind::DiffV1
        }
    }

    fn expect(&self, stage: Stage, what: &'static str) -> Result<(), EncodeError> {
        if self.stage == stage {
            Ok(())
        } else {
            Err(EncodeError::Order(what))
        }
    }

    /// The banner and metadata records: `f`, `t`, `p` (v2), `s`.
    pub fn header(&mut self, h: &DiffHeader, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.expect(Stage::Start, "the diff header was already written")?;
        if h.protected.is_some() && !self.v2 {
            return Err(EncodeError::ProtectedInV1);
        }
        let mut o = Vec::new();
        o.extend_from_slice(if self.v2 {
            DIFF_V2_BANNER
        } else {
            DIFF_V1_BANNER
        });
        if let Some(f) = &h.from_snap {
            put_name(&mut o, self.v2, tag::FROM_SNAP, f)?;
        }
        if let Some(t) = &h.to_snap {
            put_name(&mut o, self.v2, tag::TO_SNAP, t)?;
        }
        if let Some(p) = h.protected {
            o.push(tag::PROTECTED);
            o.extend_from_slice(&1u64.to_le_bytes());
            o.push(u8::from(p));
        }
        o.push(tag::SIZE);
        if self.v2 {
            o.extend_from_slice(&8u64.to_le_bytes());
        }
        o.extend_from_slice(&h.size.to_le_bytes());
        out.extend_from_slice(&o);
        self.size = h.size;
        self.stage = Stage::Data;
        Ok(())
    }

    fn extent(
        &mut self,
        t: u8,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.expect(Stage::Data, "extents go between the header and the end")?;
        let end = offset
            .checked_add(len)
            .ok_or(EncodeError::ExtentOverflow { offset, len })?;
        if end > self.size {
            return Err(EncodeError::ExtentBeyondSize {
                offset,
                len,
                size: self.size,
            });
        }
        out.push(t);
        if self.v2 {
            let rec = if t == tag::WRITE { 16 + len } else { 16 };
            out.extend_from_slice(&rec.to_le_bytes());
        }
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        Ok(())
    }

    /// A `w` record with its data.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.write_header(offset, data.len() as u64, out)?;
        out.extend_from_slice(data);
        Ok(())
    }

    /// The head of a `w` record of `len` bytes; the caller writes exactly
    /// `len` data bytes after it.
    pub fn write_header(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        self.extent(tag::WRITE, offset, len, out)
    }

    /// A `z` record.
    pub fn zero(&mut self, offset: u64, len: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.extent(tag::ZERO, offset, len, out)
    }

    /// The `e` record.
    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.expect(Stage::Data, "the end comes after the header, once")?;
        out.push(tag::END);
        self.stage = Stage::Ended;
        Ok(())
    }
}

/// The properties of an export-format 2 stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageHeader {
    /// Object size as a power of two.
    pub order: u64,
    /// RBD feature bits.
    pub features: u64,
    /// Stripe unit in bytes (the object size when not striped).
    pub stripe_unit: u64,
    /// Stripe count (1 when not striped).
    pub stripe_count: u64,
    /// Image-meta pairs, written in this order (`rbd` sorts them by key).
    pub meta: Vec<(String, Vec<u8>)>,
}

/// Everything before the first diff of an export-format 2 stream: the
/// banner, the properties, `E`, the diffs banner and `diff_count` (one per
/// snapshot plus one for the head). Each diff follows, written with
/// [`DiffEncoder::v2`].
pub fn encode_image_header(
    h: &ImageHeader,
    diff_count: u64,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let mut o = Vec::new();
    o.extend_from_slice(IMAGE_V2_BANNER);
    for (t, v) in [
        (tag::IMAGE_ORDER, h.order),
        (tag::IMAGE_FEATURES, h.features),
        (tag::IMAGE_STRIPE_UNIT, h.stripe_unit),
        (tag::IMAGE_STRIPE_COUNT, h.stripe_count),
    ] {
        o.push(t);
        o.extend_from_slice(&8u64.to_le_bytes());
        o.extend_from_slice(&v.to_le_bytes());
    }
    for (k, v) in &h.meta {
        let len = 8 + k.len() as u64 + v.len() as u64;
        if len > MAX_META_LEN {
            return Err(EncodeError::MetaTooLong {
                key: k.chars().take(80).collect(),
                len,
            });
        }
        o.push(tag::IMAGE_META);
        o.extend_from_slice(&len.to_le_bytes());
        o.extend_from_slice(&(k.len() as u32).to_le_bytes());
        o.extend_from_slice(k.as_bytes());
        o.extend_from_slice(&(v.len() as u32).to_le_bytes());
        o.extend_from_slice(v);
    }
    o.push(tag::IMAGE_END);
    o.extend_from_slice(IMAGE_DIFFS_V2_BANNER);
    o.extend_from_slice(&diff_count.to_le_bytes());
    out.extend_from_slice(&o);
    Ok(())
}
