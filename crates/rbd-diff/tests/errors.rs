//! Bad input, one case per error: the right typed error, at the right
//! byte, with a message that says what is wrong; never a panic.

mod common;
use common::*;
use vdisk_rbd_diff::{DecodeError, Decoder, ErrorClass, Event, StreamKind};

fn le32(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}
fn le64(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// `rbd diff v1\n` followed by `rest`.
fn v1(rest: &[&[u8]]) -> Vec<u8> {
    let mut b = b"rbd diff v1\n".to_vec();
    for r in rest {
        b.extend_from_slice(r);
    }
    b
}

fn err(kind: StreamKind, bytes: &[u8]) -> DecodeError {
    let e = decode_all_ways(kind, bytes).expect_err("must fail");
    // The message is one line.
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "{msg}");
    e
}

#[test]
fn empty_input() {
    let e = err(StreamKind::DiffV1, b"");
    assert_eq!(
        e,
        DecodeError::Empty {
            expected: StreamKind::DiffV1
        }
    );
    assert_eq!(e.class(), ErrorClass::WrongFormat);
    assert!(e.to_string().contains("empty"), "{e}");
}

#[test]
fn wrong_banners_are_named() {
    let e = err(StreamKind::DiffV1, b"rbd diff v2\n...");
    assert!(
        matches!(&e, DecodeError::BadBanner { found_kind: Some(StreamKind::DiffV2), found, .. } if found == b"rbd diff v2\n"),
        "{e:?}"
    );
    let e = err(StreamKind::DiffV1, b"rbd image v2\nO");
    assert!(
        matches!(
            &e,
            DecodeError::BadBanner {
                found_kind: Some(StreamKind::Image),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("export-format 2"), "{e}");
    let e = err(StreamKind::Image, b"rbd diff v1\nt");
    assert!(e.to_string().contains("export-diff"), "{e}");
    // Not RBD at all: refused at the first differing byte.
    let e = err(StreamKind::DiffV1, b"QFI\xfb\0\0\0\x03 a qcow2 image");
    assert_eq!(
        e,
        DecodeError::BadBanner {
            expected: StreamKind::DiffV1,
            found: b"Q".to_vec(),
            found_kind: None,
        }
    );
    assert_eq!(e.class(), ErrorClass::WrongFormat);
    assert!(e.to_string().starts_with("not an RBD diff"), "{e}");
    // A short file that is the start of a banner is truncated, one that
    // is not is a bad banner.
    assert!(matches!(
        err(StreamKind::DiffV1, b"rbd di"),
        DecodeError::Truncated { offset: 6, .. }
    ));
    assert!(matches!(
        err(StreamKind::DiffV1, b"rbd i"),
        DecodeError::BadBanner { .. }
    ));
}

#[test]
fn every_truncation_is_reported() {
    for (kind, file) in [
        (StreamKind::DiffV1, "golden/diff-v1-full.bin"),
        (StreamKind::DiffV1, "golden/diff-v1-incremental.bin"),
        (StreamKind::Image, "golden/image-v2.bin"),
        (StreamKind::DiffV1, "data/sample-s1-s2.rbddiff"),
    ] {
        let bytes = golden(file);
        for cut in 0..bytes.len() {
            let e = decode(kind, &bytes[..cut], 4096).expect_err("truncated");
            match e {
                DecodeError::Empty { .. } => assert_eq!(cut, 0),
                DecodeError::Truncated {
                    offset,
                    ref expected,
                } => {
                    assert_eq!(offset, cut as u64, "{file} cut at {cut}: {e}");
                    assert!(!expected.is_empty());
                    assert!(e.to_string().starts_with("truncated"), "{e}");
                    assert_eq!(e.class(), ErrorClass::Damaged);
                }
                other => panic!("{file} cut at {cut}: {other:?}"),
            }
        }
    }
    // Where it stopped is said.
    let bytes = golden("data/sample-s1-s2.rbddiff");
    let e = decode(StreamKind::DiffV1, &bytes[..100], 4096).unwrap_err();
    assert!(
        e.to_string()
            .contains("the data of a 'w' record, at image offset 4144"),
        "{e}"
    );
}

#[test]
fn trailing_bytes_after_the_end() {
    let mut bytes = golden("golden/diff-v1-head.bin");
    bytes.push(b'x');
    assert_eq!(
        err(StreamKind::DiffV1, &bytes),
        DecodeError::TrailingData { offset: 28 }
    );
}

#[test]
fn unknown_tags() {
    // v1 records have no length: an unknown tag cannot be skipped.
    let b = v1(&[b"s", &le64(4096), b"x"]);
    assert_eq!(
        err(StreamKind::DiffV1, &b),
        DecodeError::UnknownTag {
            tag: b'x',
            offset: 21,
            section: "diff"
        }
    );
    let e = err(StreamKind::DiffV1, &v1(&[b"\x00"]));
    assert!(e.to_string().contains("0x00"), "{e}");
    // v2 records do: skipped, as rbd does, and reported.
    let mut b = b"rbd diff v2\n".to_vec();
    b.extend(
        [
            b"X".as_slice(),
            &le64(3),
            b"abc",
            b"s",
            &le64(8),
            &le64(512),
            b"e",
        ]
        .concat(),
    );
    assert_eq!(
        decode_all_ways(StreamKind::DiffV2, &b).unwrap(),
        vec![
            ev(Event::DiffStart { index: 0 }),
            ev(Event::Skipped { tag: b'X', len: 3 }),
            ev(Event::Size(512)),
            ev(Event::DiffEnd),
        ]
    );
    // A skipped record cut short is a truncation.
    let e = err(StreamKind::DiffV2, &b[..15 + 8]);
    assert!(matches!(e, DecodeError::Truncated { .. }), "{e:?}");
}

#[test]
fn absurd_lengths_are_refused_before_reading() {
    // A 5000-byte snapshot name (rbd's limit is 4096).
    let e = err(StreamKind::DiffV1, &v1(&[b"f", &le32(5000)]));
    assert_eq!(
        e,
        DecodeError::AbsurdLength {
            what: "snapshot name",
            offset: 12,
            len: 5000,
            max: 4096
        }
    );
    let e = err(StreamKind::DiffV1, &v1(&[b"t", &le32(u32::MAX)]));
    assert!(matches!(e, DecodeError::AbsurdLength { .. }), "{e:?}");
    // An extent that runs past 2^64.
    let e = err(StreamKind::DiffV1, &v1(&[b"w", &le64(1), &le64(u64::MAX)]));
    assert!(matches!(e, DecodeError::ExtentOverflow { .. }), "{e:?}");
    // Beyond the declared size.
    let e = err(
        StreamKind::DiffV1,
        &v1(&[b"s", &le64(4096), b"z", &le64(4096), &le64(1)]),
    );
    assert_eq!(
        e,
        DecodeError::ExtentBeyondSize {
            tag: b'z',
            offset: 21,
            image_offset: 4096,
            len: 1,
            size: 4096
        }
    );
    // A huge write (no size record) is streamed, never allocated: the
    // stream simply ends too soon.
    let mut d = Decoder::new(StreamKind::DiffV1);
    let b = v1(&[b"w", &le64(0), &le64(1 << 62), b"tiny"]);
    let (n0, e) = d.feed(&b).unwrap();
    assert_eq!(e, Some(Event::DiffStart { index: 0 }));
    let (n, e) = d.feed(&b[n0..]).unwrap();
    let n = n0 + n;
    assert_eq!(
        e,
        Some(Event::Write {
            offset: 0,
            len: 1 << 62
        })
    );
    let (_, e) = d.feed(&b[n..]).unwrap();
    assert!(matches!(e, Some(Event::Data { bytes, .. }) if bytes == b"tiny"));
    assert!(matches!(d.finish(), Err(DecodeError::Truncated { .. })));
    // Image-meta over 1 MiB.
    let mut b = b"rbd image v2\nM".to_vec();
    b.extend(le64(1 << 30));
    assert!(matches!(
        err(StreamKind::Image, &b),
        DecodeError::AbsurdLength { .. }
    ));
}

#[test]
fn v2_length_fields_must_match() {
    let v2 = |rest: &[&[u8]]| {
        let mut b = b"rbd diff v2\n".to_vec();
        for r in rest {
            b.extend_from_slice(r);
        }
        b
    };
    let e = err(StreamKind::DiffV2, &v2(&[b"s", &le64(9)]));
    assert_eq!(
        e,
        DecodeError::LengthMismatch {
            tag: b's',
            offset: 12,
            len: 9,
            expected: 8
        }
    );
    assert!(e.to_string().contains("'s'"), "{e}");
    let e = err(
        StreamKind::DiffV2,
        &v2(&[b"w", &le64(16 + 5), &le64(0), &le64(4)]),
    );
    assert!(
        matches!(
            e,
            DecodeError::LengthMismatch {
                len: 21,
                expected: 20,
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(StreamKind::DiffV2, &v2(&[b"z", &le64(17)]));
    assert!(matches!(e, DecodeError::LengthMismatch { .. }), "{e:?}");
    let e = err(StreamKind::DiffV2, &v2(&[b"t", &le64(9), &le32(4)]));
    assert!(
        matches!(
            e,
            DecodeError::LengthMismatch {
                len: 9,
                expected: 8,
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(StreamKind::DiffV2, &v2(&[b"p", &le64(2)]));
    assert!(matches!(e, DecodeError::LengthMismatch { .. }), "{e:?}");
    // Image properties.
    let mut b = b"rbd image v2\nO".to_vec();
    b.extend(le64(4));
    assert!(matches!(
        err(StreamKind::Image, &b),
        DecodeError::LengthMismatch { tag: b'O', .. }
    ));
    // An image-meta record whose parts do not add up.
    let mut b = b"rbd image v2\nM".to_vec();
    b.extend([le64(12), le32(2), b"ab".to_vec(), le32(5), b"xx".to_vec()].concat());
    assert!(matches!(
        err(StreamKind::Image, &b),
        DecodeError::LengthMismatch { tag: b'M', .. }
    ));
}

#[test]
fn record_order_and_duplicates() {
    let e = err(StreamKind::DiffV1, &v1(&[b"s", &le64(1), b"s", &le64(2)]));
    assert_eq!(
        e,
        DecodeError::Duplicate {
            tag: b's',
            offset: 21
        }
    );
    let e = err(
        StreamKind::DiffV1,
        &v1(&[b"t", &le32(1), b"a", b"t", &le32(1), b"b"]),
    );
    assert!(
        matches!(e, DecodeError::Duplicate { tag: b't', .. }),
        "{e:?}"
    );
    let e = err(
        StreamKind::DiffV1,
        &v1(&[b"z", &le64(0), &le64(1), b"f", &le32(1), b"a"]),
    );
    assert_eq!(
        e,
        DecodeError::Misplaced {
            tag: b'f',
            offset: 29
        }
    );
    assert!(e.to_string().contains("must come first"), "{e}");
}

#[test]
fn bad_names() {
    let e = err(StreamKind::DiffV1, &v1(&[b"f", &le32(0)]));
    assert!(
        matches!(
            e,
            DecodeError::BadName {
                reason: "empty",
                ..
            }
        ),
        "{e:?}"
    );
    let e = err(StreamKind::DiffV1, &v1(&[b"t", &le32(2), b"\xff\xfe"]));
    assert!(
        matches!(
            e,
            DecodeError::BadName {
                reason: "not UTF-8",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn inner_banners_of_image_streams() {
    let mut b = golden("golden/image-v2.bin");
    // Damage "rbd image diffs v2\n".
    let at = b.windows(5).position(|w| w == b"diffs").unwrap();
    b[at] = b'D';
    let e = err(StreamKind::Image, &b);
    assert!(
        matches!(e, DecodeError::BadInnerBanner { offset, .. } if offset == at as u64 - 10),
        "{e:?}"
    );
    assert!(e.to_string().contains("damaged"), "{e}");
    // Zero diffs: complete after the count.
    let mut b = b"rbd image v2\nE".to_vec();
    b.extend(b"rbd image diffs v2\n");
    b.extend(le64(0));
    assert_eq!(
        decode_all_ways(StreamKind::Image, &b).unwrap(),
        vec![ev(Event::DiffCount(0))]
    );
}

#[test]
fn errors_are_sticky() {
    let mut d = Decoder::new(StreamKind::DiffV1);
    let e = d.feed(b"nope").unwrap_err();
    assert_eq!(d.feed(b"rbd diff v1\n").unwrap_err(), e);
    assert_eq!(d.finish().unwrap_err(), e);
}
