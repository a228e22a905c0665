//! Fuzzes what reads every value of `meta.redb`: `record::decode` for each
//! `Kind`, then `ObjectMeta::from_record` — the input a corrupt, damaged or
//! newer database feeds the engine.
//!
//! The first byte picks how the rest is used:
//! - `0`: as a stored value (magic, kind, version, length, checksum checks);
//! - `1`: as the CBOR body of a well-formed envelope, so it gets past the
//!   checksum into the CBOR decoder;
//! - otherwise: a pool, image or object record built from the bytes, with
//!   an unknown field of arbitrary CBOR (nested maps, strings full of braces:
//!   incident 4b) inserted anywhere among the known ones, and byte edits to
//!   the encoded body, re-enveloped with a correct checksum.
//!
//! Nothing may panic. What decodes re-encodes to the same record; an object
//! record `from_record` accepts comes back unchanged from `to_record`; an
//! unedited record with an unknown field decodes to the record without it.
#![no_main]

use ciborium::Value;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use vdisk_engine::object::ObjectMeta;
use vdisk_engine::record::{
    self, ImageRecord, Kind, ObjectRecord, ParentLink, PoolRecord, SnapRecord, VersionRecord,
};
use vdisk_engine::schedule::{RunResult, ScheduleRecord, ScheduledSnap, Skipped};

const KINDS: [Kind; 4] = [Kind::Pool, Kind::Image, Kind::Object, Kind::Schedule];

/// A stored value: "vd", kind, version, body length, crc32c, body.
fn envelope(kind: u8, version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + body.len());
    out.extend_from_slice(b"vd");
    out.push(kind);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(kind: Kind, rec: &T) {
    let again: T = record::decode(kind, "fuzz", &record::encode(kind, rec))
        .expect("a re-encoded record decodes");
    assert_eq!(&again, rec, "record changed in a round trip");
}

fn object_meta(rec: &ObjectRecord, blocks: usize, max_gen: u64) {
    if let Ok(m) = ObjectMeta::from_record(rec, blocks, max_gen) {
        assert_eq!(m.blocks(), blocks);
        assert_eq!(
            &m.to_record(),
            rec,
            "object record changed through ObjectMeta"
        );
    }
}

/// Decodes `bytes` as every kind; checks what decodes.
fn decode_all(bytes: &[u8], blocks: usize, max_gen: u64) {
    if let Ok(p) = record::decode::<PoolRecord>(Kind::Pool, "fuzz", bytes) {
        round_trip(Kind::Pool, &p);
    }
    if let Ok(i) = record::decode::<ImageRecord>(Kind::Image, "fuzz", bytes) {
        round_trip(Kind::Image, &i);
    }
    if let Ok(o) = record::decode::<ObjectRecord>(Kind::Object, "fuzz", bytes) {
        round_trip(Kind::Object, &o);
        object_meta(&o, blocks, max_gen);
    }
    if let Ok(s) = record::decode::<ScheduleRecord>(Kind::Schedule, "fuzz", bytes) {
        round_trip(Kind::Schedule, &s);
    }
}

fn pool(u: &mut Unstructured<'_>) -> Result<PoolRecord> {
    Ok(PoolRecord {
        id: u.arbitrary()?,
        name: u.arbitrary()?,
        path: u.arbitrary()?,
        create_time: u.arbitrary()?,
    })
}

fn snap(u: &mut Unstructured<'_>) -> Result<SnapRecord> {
    Ok(SnapRecord {
        id: u.arbitrary()?,
        name: u.arbitrary()?,
        size: u.arbitrary()?,
        protected: u.arbitrary()?,
        create_time: u.arbitrary()?,
        hidden: u.arbitrary()?,
        parent_overlap: u.arbitrary()?,
    })
}

fn image(u: &mut Unstructured<'_>) -> Result<ImageRecord> {
    let mut snaps = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        snaps.push(snap(u)?);
    }
    let parent = if u.arbitrary()? {
        Some(ParentLink {
            pool: u.arbitrary()?,
            image: u.arbitrary()?,
            snap: u.arbitrary()?,
        })
    } else {
        None
    };
    Ok(ImageRecord {
        id: u.arbitrary()?,
        name: u.arbitrary()?,
        size: u.arbitrary()?,
        order: u.arbitrary()?,
        features: u.arbitrary()?,
        flags: u.arbitrary()?,
        create_time: u.arbitrary()?,
        seq: u.arbitrary()?,
        hidden: u.arbitrary()?,
        snaps,
        parent,
        parent_overlap: u.arbitrary()?,
        snap_limit: u.arbitrary()?,
    })
}

fn schedule(u: &mut Unstructured<'_>) -> Result<ScheduleRecord> {
    let mut snaps = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        snaps.push(ScheduledSnap {
            id: u.arbitrary()?,
            name: u.arbitrary()?,
        });
    }
    let last_result = if u.arbitrary()? {
        Some(RunResult {
            time: u.arbitrary()?,
            ok: u.arbitrary()?,
            snapshot: u.arbitrary()?,
            missed: u.arbitrary()?,
            removed: u.arbitrary()?,
            skipped: vec![Skipped {
                name: u.arbitrary()?,
                reason: u.arbitrary()?,
            }],
            error: u.arbitrary()?,
        })
    } else {
        None
    };
    Ok(ScheduleRecord {
        pool_id: u.arbitrary()?,
        image_id: u.arbitrary()?,
        pool: u.arbitrary()?,
        image: u.arbitrary()?,
        every: u.arbitrary()?,
        keep: u.arbitrary()?,
        created: u.arbitrary()?,
        last_run: u.arbitrary()?,
        next_due: u.arbitrary()?,
        runs: u.arbitrary()?,
        last_result,
        snaps,
        disabled: u.arbitrary()?,
    })
}

/// Mostly well-formed for `blocks` (ascending generations, bitmaps of the
/// right size, zero ⊆ present), sometimes not.
fn object(u: &mut Unstructured<'_>, blocks: usize) -> Result<ObjectRecord> {
    let len = blocks.div_ceil(8);
    let mut gen = 0u64;
    let mut versions = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        gen = if u.ratio(1, 8)? {
            u.arbitrary()?
        } else {
            gen.saturating_add(u.int_in_range(1..=3)?)
        };
        let mut present: Vec<u8> = (0..len).map(|_| u.arbitrary()).collect::<Result<_>>()?;
        if blocks % 8 != 0 && u.ratio(7, 8)? {
            if let Some(last) = present.last_mut() {
                *last &= (1u8 << (blocks % 8)) - 1;
            }
        }
        let mut zero = Vec::with_capacity(len);
        for p in &present {
            zero.push(p & u.arbitrary::<u8>()?);
        }
        if u.ratio(1, 16)? {
            zero.push(u.arbitrary()?);
        }
        versions.push(VersionRecord { gen, present, zero });
    }
    Ok(ObjectRecord {
        copied_up: u.arbitrary()?,
        versions,
    })
}

/// Arbitrary CBOR, at most `depth` levels of nesting.
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let choice = u.int_in_range(0..=if depth == 0 { 5 } else { 8 })?;
    Ok(match choice {
        0 => Value::Integer(u.arbitrary::<i64>()?.into()),
        1 => Value::Bytes(u.arbitrary()?),
        2 => Value::Float(u.arbitrary()?),
        3 => Value::Text(u.arbitrary::<String>()? + "}"),
        4 => Value::Bool(u.arbitrary()?),
        5 => Value::Null,
        // Not 2 and 3 (bignums): those must wrap a byte string.
        6 => Value::Tag(
            u.int_in_range(4..=u64::MAX)?,
            Box::new(value(u, depth - 1)?),
        ),
        7 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| value(u, depth - 1)).collect::<Result<_>>()?)
        }
        _ => {
            let mut entries = Vec::new();
            for _ in 0..u.int_in_range(0..=4)? {
                entries.push((value(u, depth - 1)?, value(u, depth - 1)?));
            }
            Value::Map(entries)
        }
    })
}

/// `rec` as a CBOR map with an unknown field (key "x-…") inserted.
fn with_unknown<T: Serialize>(u: &mut Unstructured<'_>, rec: &T) -> Result<Vec<u8>> {
    let Ok(Value::Map(mut entries)) = Value::serialized(rec) else {
        panic!("a record serializes to a CBOR map");
    };
    let key = Value::Text(format!("x-{}", u.arbitrary::<String>()?));
    let at = u.int_in_range(0..=entries.len())?;
    entries.insert(at, (key, value(u, 6)?));
    let mut body = Vec::new();
    ciborium::into_writer(&Value::Map(entries), &mut body).expect("CBOR into a Vec");
    Ok(body)
}

/// Flips, inserts, deletes bytes or truncates; true if anything changed.
fn edit(u: &mut Unstructured<'_>, body: &mut Vec<u8>) -> Result<bool> {
    let mut edited = false;
    for _ in 0..u.int_in_range(0..=4)? {
        if body.is_empty() {
            break;
        }
        let at = u.choose_index(body.len())?;
        match u.int_in_range(0..=3)? {
            0 => body[at] ^= u.int_in_range(1..=255)?,
            1 => body.insert(at, u.arbitrary()?),
            2 => {
                body.remove(at);
            }
            _ => body.truncate(at),
        }
        edited = true;
    }
    Ok(edited)
}

fn structured(u: &mut Unstructured<'_>, blocks: usize, max_gen: u64) -> Result<()> {
    let kind = *u.choose(&KINDS)?;
    let (mut body, check): (Vec<u8>, Box<dyn Fn(&[u8])>) = match kind {
        Kind::Pool => {
            let rec = pool(u)?;
            let body = with_unknown(u, &rec)?;
            let check = move |b: &[u8]| {
                let got: PoolRecord =
                    record::decode(Kind::Pool, "fuzz", b).expect("an unknown field is skipped");
                assert_eq!(got, rec);
            };
            (body, Box::new(check))
        }
        Kind::Image => {
            let rec = image(u)?;
            let body = with_unknown(u, &rec)?;
            let check = move |b: &[u8]| {
                let got: ImageRecord =
                    record::decode(Kind::Image, "fuzz", b).expect("an unknown field is skipped");
                assert_eq!(got, rec);
            };
            (body, Box::new(check))
        }
        Kind::Object => {
            let rec = object(u, blocks)?;
            let body = with_unknown(u, &rec)?;
            let check = move |b: &[u8]| {
                let got: ObjectRecord =
                    record::decode(Kind::Object, "fuzz", b).expect("an unknown field is skipped");
                assert_eq!(got, rec);
                object_meta(&got, blocks, max_gen);
            };
            (body, Box::new(check))
        }
        Kind::Schedule => {
            let rec = schedule(u)?;
            let body = with_unknown(u, &rec)?;
            let check = move |b: &[u8]| {
                let got: ScheduleRecord = record::decode(Kind::Schedule, "fuzz", b)
                    .expect("an unknown field is skipped");
                assert_eq!(got, rec);
            };
            (body, Box::new(check))
        }
        // Kinds not in KINDS are never chosen.
        #[allow(unreachable_patterns)]
        other => unreachable!("{other:?} is not in KINDS"),
    };
    let edited = edit(u, &mut body)?;
    let stored = envelope(kind as u8, kind.current_version(), &body);
    if !edited {
        check(&stored);
    }
    decode_all(&stored, blocks, max_gen);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let [mode, b0, b1, g, rest @ ..] = data else {
        return;
    };
    // 1..=8192 blocks: objects of 4 KiB to 32 MiB (orders 12..=25), and
    // sizes in between.
    let blocks = usize::from(u16::from_le_bytes([*b0, *b1]) % 8192) + 1;
    let max_gen = u64::from(*g);
    match mode {
        0 => decode_all(rest, blocks, max_gen),
        1 => {
            let (kind, version) = match rest {
                [k, v, ..] => (k % 4, u16::from(v % 3)),
                _ => (3, 1),
            };
            let body = rest.get(2..).unwrap_or_default();
            decode_all(&envelope(kind, version, body), blocks, max_gen);
        }
        _ => {
            let _ = structured(&mut Unstructured::new(rest), blocks, max_gen);
        }
    }
});
