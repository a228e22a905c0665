//! Metadata records and their on-disk encoding.
//!
//! Every value the engine stores in the [`MetaStore`](vdisk_storage::MetaStore)
//! is wrapped in a small envelope:
//!
//! ```text
//!  0      2      3         5            9           13
//!  +------+------+---------+------------+-----------+----------------+
//!  | "vd" | kind | version | body_len   | crc32c    | body (CBOR map)|
//!  |      | u8   | u16 LE  | u32 LE     | of body   | body_len bytes |
//!  +------+------+---------+------------+-----------+----------------+
//! ```
//!
//! The body is a CBOR map with named fields (serde). Decoding is structural:
//! fields this build does not know are skipped whatever they contain (incident
//! 4b: a parser that lost its place on an unknown section bricked a boot
//! loader). A record whose `version` is newer than this build understands is
//! refused with [`Error::UnsupportedVersion`]; whether an image may be opened
//! despite unknown *features* is the image's `features` field's job.

use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const MAGIC: [u8; 2] = *b"vd";
const HEADER: usize = 13;
/// Largest record body accepted (guards allocation on corrupt input).
pub const MAX_BODY: usize = 64 << 20;

/// What a record is; stored in the envelope so a value can't be decoded as
/// the wrong type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Pool = 1,
    Image = 2,
    Object = 3,
    /// A snapshot schedule (`schedule.rs`).
    Schedule = 4,
    /// A batch of data queued for trimming (`trim.rs`).
    Trim = 5,
}

impl Kind {
    /// The newest body version of this kind that this build reads and writes.
    pub fn current_version(self) -> u16 {
        1
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Pool => "pool record",
            Kind::Image => "image record",
            Kind::Object => "object record",
            Kind::Schedule => "schedule record",
            Kind::Trim => "trim batch",
        }
    }
}

/// Encodes `body` in an envelope of `kind` at its current version.
pub fn encode<T: Serialize>(kind: Kind, body: &T) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(&MAGIC);
    buf.push(kind as u8);
    buf.extend_from_slice(&kind.current_version().to_le_bytes());
    buf.extend_from_slice(&[0; 8]);
    // Writing CBOR into a Vec cannot fail for these plain data types.
    if ciborium::into_writer(body, &mut buf).is_err() {
        buf.truncate(HEADER);
    }
    let body_len = (buf.len() - HEADER) as u32;
    let crc = crc32c::crc32c(&buf[HEADER..]);
    buf[5..9].copy_from_slice(&body_len.to_le_bytes());
    buf[9..13].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Decodes an envelope of `kind`. `what` names the record in errors.
pub fn decode<T: DeserializeOwned>(kind: Kind, what: &str, bytes: &[u8]) -> Result<T> {
    let corrupt = |detail: String| Error::Corrupt {
        what: format!("{} of {what}", kind.name()),
        detail,
    };
    if bytes.len() < HEADER {
        return Err(corrupt(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    if bytes[0..2] != MAGIC {
        return Err(corrupt("bad magic".into()));
    }
    if bytes[2] != kind as u8 {
        return Err(corrupt(format!(
            "record kind {} where {} was expected",
            bytes[2], kind as u8
        )));
    }
    let version = u16::from_le_bytes([bytes[3], bytes[4]]);
    if version == 0 {
        return Err(corrupt("version 0".into()));
    }
    if version > kind.current_version() {
        return Err(Error::UnsupportedVersion {
            what: format!("{} of {what}", kind.name()),
            version,
            supported: kind.current_version(),
        });
    }
    let len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
    if len > MAX_BODY || HEADER + len != bytes.len() {
        return Err(corrupt(format!(
            "body length {len} does not match the {} bytes stored",
            bytes.len() - HEADER
        )));
    }
    let crc = u32::from_le_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]);
    if crc32c::crc32c(&bytes[HEADER..]) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    ciborium::from_reader(&bytes[HEADER..]).map_err(|e| corrupt(format!("cannot decode: {e}")))
}

/// A pool: a named storage location for images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub id: u64,
    pub name: String,
    /// Where the data objects live; `None` = `DIR/pools/<name>`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub create_time: u64,
}

/// The parent of a clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    pub pool: u64,
    pub image: u64,
    pub snap: u64,
}

/// A snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapRecord {
    /// Also the newest data generation the snapshot sees.
    pub id: u64,
    pub name: String,
    pub size: u64,
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub create_time: u64,
    /// Generations hidden from this snapshot (inherited from the head at
    /// creation; rollbacks hide generations), inclusive ranges.
    #[serde(default)]
    pub hidden: Vec<(u64, u64)>,
    /// How much of the parent this snapshot still reads through to.
    #[serde(default)]
    pub parent_overlap: Option<u64>,
}

/// An image's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub order: u8,
    pub features: u64,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub create_time: u64,
    /// The data generation head writes go to. Snapshots take `seq` as id and
    /// bump it, so generations ≤ a snapshot's id are frozen.
    pub seq: u64,
    /// Generations hidden from the head (by rollbacks), inclusive ranges.
    #[serde(default)]
    pub hidden: Vec<(u64, u64)>,
    #[serde(default)]
    pub snaps: Vec<SnapRecord>,
    /// The snapshot this image was cloned from (kept while the head or any
    /// snapshot still reads through to it).
    #[serde(default)]
    pub parent: Option<ParentLink>,
    /// How much of the parent the head reads through to (`None`: flattened).
    #[serde(default)]
    pub parent_overlap: Option<u64>,
    #[serde(default)]
    pub snap_limit: Option<u64>,
}

/// RBD's image flag: the object map may be wrong and must be rebuilt.
pub const FLAG_OBJECT_MAP_INVALID: u64 = 1;
/// RBD's image flag: fast-diff data may be wrong.
pub const FLAG_FAST_DIFF_INVALID: u64 = 2;

/// One generation of one object, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub gen: u64,
    #[serde(with = "serde_bytes_compat")]
    pub present: Vec<u8>,
    #[serde(with = "serde_bytes_compat")]
    pub zero: Vec<u8>,
}

/// Which blocks of one object exist in which generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    #[serde(default)]
    pub copied_up: bool,
    #[serde(default)]
    pub versions: Vec<VersionRecord>,
}

/// Serializes `Vec<u8>` as a CBOR byte string (compact) rather than an array.
mod serde_bytes_compat {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    if out.len() >= super::MAX_BODY {
                        return Err(de::Error::custom("byte string too long"));
                    }
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

impl VersionRecord {
    /// Decodes the bitmaps for an object of `blocks` blocks.
    pub fn bitmaps(&self, blocks: usize) -> Option<(Bitmap, Bitmap)> {
        Some((
            Bitmap::from_bytes(blocks, &self.present)?,
            Bitmap::from_bytes(blocks, &self.zero)?,
        ))
    }
}

/// Key layouts of the engine's metadata tables (all integers big-endian so
/// keys sort numerically).
pub mod keys {
    /// `pools`: pool name → [`super::PoolRecord`].
    pub const POOLS: &str = "pools";
    /// `images`: pool id ‖ image id → [`super::ImageRecord`].
    pub const IMAGES: &str = "images";
    /// `names`: pool id ‖ image name → image id (u64 BE).
    pub const NAMES: &str = "names";
    /// `objects`: pool id ‖ image id ‖ object number → [`super::ObjectRecord`].
    pub const OBJECTS: &str = "objects";
    /// `objmap`: pool id ‖ image id ‖ snap id (`u64::MAX` = head) ‖ chunk → 2-bit states.
    pub const OBJMAP: &str = "objmap";
    /// `counters`: name → u64 BE.
    pub const COUNTERS: &str = "counters";
    /// `schedules`: pool id ‖ image id ‖ interval in seconds →
    /// [`crate::schedule::ScheduleRecord`].
    pub const SCHEDULES: &str = "schedules";
    /// `trim`: pool id ‖ image id ‖ batch number → data to release
    /// (`trim::TrimBatch`).
    pub const TRIM: &str = "trim";
    /// `unsynced`: pool id ‖ image id → boot id (ASCII) of an image whose
    /// data was committed without a sync (`crate::unsynced`).
    pub const UNSYNCED: &str = "unsynced";

    pub fn k1(a: u64) -> Vec<u8> {
        a.to_be_bytes().to_vec()
    }
    pub fn k2(a: u64, b: u64) -> Vec<u8> {
        let mut k = k1(a);
        k.extend_from_slice(&b.to_be_bytes());
        k
    }
    pub fn k3(a: u64, b: u64, c: u64) -> Vec<u8> {
        let mut k = k2(a, b);
        k.extend_from_slice(&c.to_be_bytes());
        k
    }
    pub fn k4(a: u64, b: u64, c: u64, d: u64) -> Vec<u8> {
        let mut k = k3(a, b, c);
        k.extend_from_slice(&d.to_be_bytes());
        k
    }
    pub fn name_key(pool: u64, name: &str) -> Vec<u8> {
        let mut k = k1(pool);
        k.extend_from_slice(name.as_bytes());
        k
    }
    /// Reads the big-endian u64 at `at` in a key, if there is one.
    pub fn u64_at(key: &[u8], at: usize) -> Option<u64> {
        key.get(at..at + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageRecord {
        ImageRecord {
            id: 7,
            name: "vm-101-disk-0".into(),
            size: 1 << 30,
            order: 22,
            features: 61,
            flags: 0,
            create_time: 1,
            seq: 1,
            hidden: vec![],
            snaps: vec![],
            parent: None,
            parent_overlap: None,
            snap_limit: None,
        }
    }

    #[test]
    fn roundtrip() {
        let r = image();
        let b = encode(Kind::Image, &r);
        let d: ImageRecord = decode(Kind::Image, "x", &b).unwrap();
        assert_eq!(d, r);
        assert!(decode::<ImageRecord>(Kind::Pool, "x", &b).is_err());
    }

    #[test]
    fn damage_is_detected() {
        let b = encode(Kind::Image, &image());
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(
                decode::<ImageRecord>(Kind::Image, "x", &c).is_err(),
                "flip at {i}"
            );
        }
        for n in 0..b.len() {
            assert!(decode::<ImageRecord>(Kind::Image, "x", &b[..n]).is_err());
        }
    }

    /// Incident 4b: a field this build does not know, whose value is a string
    /// full of braces and quotes, must be skipped structurally.
    #[test]
    fn unknown_fields_are_skipped() {
        #[derive(Serialize)]
        struct Newer {
            #[serde(flatten)]
            base: ImageRecord,
            policy_settings: std::collections::BTreeMap<String, String>,
            future_list: Vec<u32>,
        }
        let mut ps = std::collections::BTreeMap::new();
        ps.insert("migration_threshold".into(), "}} { \"x\": } ]".into());
        let n = Newer {
            base: image(),
            policy_settings: ps,
            future_list: vec![1, 2, 3],
        };
        let b = encode(Kind::Image, &n);
        let d: ImageRecord = decode(Kind::Image, "x", &b).unwrap();
        assert_eq!(d, image());
    }

    #[test]
    fn newer_version_is_refused_by_name() {
        let mut b = encode(Kind::Image, &image());
        b[3] = 9;
        let e = decode::<ImageRecord>(Kind::Image, "rbd/x", &b).unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedVersion { version: 9, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("version 9"));
    }
}
