//! The sidecar (checksums, parse, version rules) and `DiffReader` over
//! readers that return one byte at a time or fail.

mod common;
use common::*;
use std::io::Read;
use vdisk_rbd_diff::sum::{ImageIdentity, SnapIdentity, SumError, SumFile, Summer, SUM_CHUNK};
use vdisk_rbd_diff::{DecodeError, DiffReader, Event, ReadError, StreamKind};

fn sums_of(b: &[u8]) -> vdisk_rbd_diff::sum::Sums {
    let mut s = Summer::new();
    s.update(b);
    s.finish()
}

fn sidecar(b: &[u8]) -> SumFile {
    SumFile::new(
        "rbd diff v1",
        Some(ImageIdentity {
            pool: "rbd".into(),
            name: "vm1".into(),
            id: "2a".into(),
        }),
        Some(SnapIdentity {
            name: "s1".into(),
            size: Some(8 << 20),
        }),
        Some(SnapIdentity {
            name: "s2".into(),
            size: Some(12 << 20),
        }),
        12 << 20,
        Some("ab".repeat(32)),
        &sums_of(b),
    )
}

#[test]
fn summer_is_independent_of_pieces() {
    let data = random(3 * SUM_CHUNK as usize + 12345);
    let whole = sums_of(&data);
    assert_eq!(whole.crc32c.len(), 4);
    assert_eq!(whole.length, data.len() as u64);
    let mut s = Summer::new();
    for piece in data.chunks(999_983) {
        s.update(piece);
    }
    assert_eq!(s.finish(), whole);
    assert_eq!(
        whole.crc32c[1],
        crc32c::crc32c(&data[SUM_CHUNK as usize..2 * SUM_CHUNK as usize])
    );
    assert!(sums_of(b"").crc32c.is_empty());
}

fn random(n: usize) -> Vec<u8> {
    let mut x = 0x9e3779b97f4a7c15u64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn sidecar_round_trip_and_checks() {
    let data = random(SUM_CHUNK as usize + 100);
    let s = sidecar(&data);
    let text = s.to_json();
    let back = SumFile::parse(&text).unwrap();
    assert_eq!(back, s);
    back.check(&sums_of(&data)).unwrap();

    // One damaged byte in the second chunk: located.
    let mut bad = data.clone();
    bad[SUM_CHUNK as usize + 7] ^= 1;
    let e = back.check(&sums_of(&bad)).unwrap_err();
    assert!(
        matches!(e, SumError::Chunk { start, end, .. } if start == SUM_CHUNK && end == SUM_CHUNK + 100),
        "{e:?}"
    );
    assert!(e.to_string().contains("damaged"), "{e}");
    // Cut short.
    let e = back.check(&sums_of(&data[..100])).unwrap_err();
    assert!(matches!(e, SumError::Length { .. }), "{e:?}");
}

#[test]
fn sidecar_parsing_rules() {
    let s = sidecar(b"hello");
    let mut v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
    // Unknown fields are ignored.
    v["future_field"] = serde_json::json!({"nested": [1, "}"]});
    assert_eq!(SumFile::parse(&v.to_string()).unwrap(), s);
    // A newer version is refused before anything else is read.
    let mut newer = v.clone();
    newer["version"] = 2.into();
    newer["crc32c"] = "changed meaning".into();
    assert_eq!(
        SumFile::parse(&newer.to_string()).unwrap_err(),
        SumError::Version(2)
    );
    let mut other = v.clone();
    other["format"] = "something-else".into();
    assert!(matches!(
        SumFile::parse(&other.to_string()),
        Err(SumError::Format(_))
    ));
    let mut bad = v.clone();
    bad["crc32c"] = serde_json::json!(["12", "34"]);
    assert!(matches!(
        SumFile::parse(&bad.to_string()),
        Err(SumError::Inconsistent(_))
    ));
    let mut bad = v.clone();
    bad["sha256"] = "xyz".into();
    assert!(matches!(
        SumFile::parse(&bad.to_string()),
        Err(SumError::Inconsistent(_))
    ));
    assert!(matches!(
        SumFile::parse("not json"),
        Err(SumError::Parse(_))
    ));
    assert!(matches!(SumFile::parse("{}"), Err(SumError::Parse(_))));
}

/// Returns one byte per read, with an interruption now and then.
struct Dribble<'a>(&'a [u8], usize);

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 += 1;
        if self.1.is_multiple_of(5) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        if self.0.is_empty() || buf.is_empty() {
            return Ok(0);
        }
        buf[0] = self.0[0];
        self.0 = &self.0[1..];
        Ok(1)
    }
}

#[test]
fn reader_pulls_records_and_data() {
    let bytes = golden("data/sample-s1-s2.rbddiff");
    for dribble in [false, true] {
        let inner: Box<dyn Read> = if dribble {
            Box::new(Dribble(&bytes, 0))
        } else {
            Box::new(&bytes[..])
        };
        let mut r = DiffReader::new(inner, StreamKind::DiffV1);
        let mut recs = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            if let Event::Write { offset, len } = e {
                let mut data = vec![0u8; len as usize];
                // In two reads.
                r.read_data_exact(&mut data[..100]).unwrap();
                r.read_data_exact(&mut data[100..]).unwrap();
                assert_eq!(r.read_data(&mut [0u8; 8]).unwrap(), 0);
                recs.push(w(offset, &data));
            } else {
                recs.push(ev(e));
            }
        }
        assert_eq!(recs, decode(StreamKind::DiffV1, &bytes, 4096).unwrap());
    }
    // Unread data is skipped by next_event.
    let mut r = DiffReader::new(&bytes[..], StreamKind::DiffV1);
    let mut kinds = Vec::new();
    while let Some(ev) = r.next_event().unwrap() {
        kinds.push(std::mem::discriminant(&ev));
    }
    assert_eq!(kinds.len(), 7);
    assert_eq!(r.decoder().position(), bytes.len() as u64);
}

#[test]
fn reader_reports_truncation_and_io_errors() {
    let bytes = golden("data/sample-s1-s2.rbddiff");
    let mut r = DiffReader::new(&bytes[..200], StreamKind::DiffV1);
    let e = loop {
        match r.next_event() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a truncated stream ended cleanly"),
            Err(e) => break e,
        }
    };
    assert!(matches!(
        e,
        ReadError::Decode(DecodeError::Truncated { offset: 200, .. })
    ));
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let e = DiffReader::new(Broken, StreamKind::DiffV1)
        .next_event()
        .unwrap_err();
    assert!(matches!(e, ReadError::Io(_)) && e.to_string() == "disk on fire");
}
