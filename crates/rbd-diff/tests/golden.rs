//! Golden streams (written byte by byte from Ceph's spec by
//! tests/golden/make.py, and two files written by Ceph's own `rbd
//! export-diff`): the decoder reads them, the encoder writes them again
//! byte for byte.

mod common;
use common::*;
use vdisk_rbd_diff::{
    encode_image_header, DiffEncoder, DiffHeader, Event, ImageHeader, StreamKind,
};

#[test]
fn v1_full_diff() {
    let bytes = golden("golden/diff-v1-full.bin");
    let recs = decode_all_ways(StreamKind::DiffV1, &bytes).unwrap();
    assert_eq!(
        recs,
        vec![
            ev(Event::DiffStart { index: 0 }),
            ev(Event::ToSnap("snap1".into())),
            ev(Event::Size(8192)),
            w(0, b"hello"),
            ev(Event::Zero {
                offset: 4096,
                len: 4096
            }),
            ev(Event::DiffEnd),
        ]
    );
    let mut enc = DiffEncoder::v1();
    let mut out = Vec::new();
    enc.header(
        &DiffHeader {
            to_snap: Some("snap1".into()),
            size: 8192,
            ..DiffHeader::default()
        },
        &mut out,
    )
    .unwrap();
    enc.write(0, b"hello", &mut out).unwrap();
    enc.zero(4096, 4096, &mut out).unwrap();
    enc.end(&mut out).unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn v1_incremental_diff() {
    let bytes = golden("golden/diff-v1-incremental.bin");
    let recs = decode_all_ways(StreamKind::DiffV1, &bytes).unwrap();
    assert_eq!(
        recs,
        vec![
            ev(Event::DiffStart { index: 0 }),
            ev(Event::FromSnap("a".into())),
            ev(Event::ToSnap("b".into())),
            ev(Event::Size(1 << 20)),
            ev(Event::Zero {
                offset: 0,
                len: 512
            }),
            w(512, b"abc"),
            ev(Event::DiffEnd),
        ]
    );
    let mut enc = DiffEncoder::v1();
    let mut out = Vec::new();
    enc.header(
        &DiffHeader {
            from_snap: Some("a".into()),
            to_snap: Some("b".into()),
            protected: None,
            size: 1 << 20,
        },
        &mut out,
    )
    .unwrap();
    enc.zero(0, 512, &mut out).unwrap();
    enc.write_header(512, 3, &mut out).unwrap();
    out.extend_from_slice(b"abc");
    enc.end(&mut out).unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn v1_diff_to_head() {
    let bytes = golden("golden/diff-v1-head.bin");
    let recs = decode_all_ways(StreamKind::DiffV1, &bytes).unwrap();
    assert_eq!(
        recs,
        vec![
            ev(Event::DiffStart { index: 0 }),
            ev(Event::FromSnap("b".into())),
            ev(Event::Size(4096)),
            ev(Event::DiffEnd),
        ]
    );
    let mut enc = DiffEncoder::v1();
    let mut out = Vec::new();
    enc.header(
        &DiffHeader {
            from_snap: Some("b".into()),
            size: 4096,
            ..DiffHeader::default()
        },
        &mut out,
    )
    .unwrap();
    enc.end(&mut out).unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn image_v2_export() {
    let bytes = golden("golden/image-v2.bin");
    let recs = decode_all_ways(StreamKind::Image, &bytes).unwrap();
    assert_eq!(
        recs,
        vec![
            ev(Event::Order(22)),
            ev(Event::Features(1)),
            ev(Event::StripeUnit(4 << 20)),
            ev(Event::StripeCount(1)),
            ev(Event::Meta {
                key: "conf_rbd_cache".into(),
                value: b"false".to_vec()
            }),
            ev(Event::DiffCount(2)),
            ev(Event::DiffStart { index: 0 }),
            ev(Event::ToSnap("s1".into())),
            ev(Event::Protected(true)),
            ev(Event::Size(8192)),
            w(0, b"data"),
            ev(Event::DiffEnd),
            ev(Event::DiffStart { index: 1 }),
            ev(Event::FromSnap("s1".into())),
            ev(Event::Size(8192)),
            ev(Event::Zero {
                offset: 4096,
                len: 4096
            }),
            ev(Event::DiffEnd),
        ]
    );
    let mut out = Vec::new();
    encode_image_header(
        &ImageHeader {
            order: 22,
            features: 1,
            stripe_unit: 4 << 20,
            stripe_count: 1,
            meta: vec![("conf_rbd_cache".into(), b"false".to_vec())],
        },
        2,
        &mut out,
    )
    .unwrap();
    let mut d1 = DiffEncoder::v2();
    d1.header(
        &DiffHeader {
            from_snap: None,
            to_snap: Some("s1".into()),
            protected: Some(true),
            size: 8192,
        },
        &mut out,
    )
    .unwrap();
    d1.write(0, b"data", &mut out).unwrap();
    d1.end(&mut out).unwrap();
    let mut d2 = DiffEncoder::v2();
    d2.header(
        &DiffHeader {
            from_snap: Some("s1".into()),
            to_snap: None,
            protected: None,
            size: 8192,
        },
        &mut out,
    )
    .unwrap();
    d2.zero(4096, 4096, &mut out).unwrap();
    d2.end(&mut out).unwrap();
    assert_eq!(out, bytes);
}

/// The files Ceph 16.2.15's `rbd export-diff` wrote (tests/data/README.md).
#[test]
fn ceph_written_diffs() {
    let full = decode_all_ways(StreamKind::DiffV1, &golden("data/sample-full-s1.rbddiff")).unwrap();
    let mut b = vec![0u8; 512];
    b.extend(std::iter::repeat_n(b'B', 4096));
    assert_eq!(
        full,
        vec![
            ev(Event::DiffStart { index: 0 }),
            ev(Event::ToSnap("s1".into())),
            ev(Event::Size(8 << 20)),
            w(0, &[b'A'; 4096]),
            w(1 << 20, &b),
            w(3 << 20, &[b'D'; 65536]),
            ev(Event::DiffEnd),
        ]
    );
    let incr = decode_all_ways(StreamKind::DiffV1, &golden("data/sample-s1-s2.rbddiff")).unwrap();
    assert_eq!(
        incr,
        vec![
            ev(Event::DiffStart { index: 0 }),
            ev(Event::FromSnap("s1".into())),
            ev(Event::ToSnap("s2".into())),
            ev(Event::Size(12 << 20)),
            w(4096, &[b'C'; 4096]),
            ev(Event::Zero {
                offset: 3 << 20,
                len: 65536
            }),
            ev(Event::DiffEnd),
        ]
    );
    // Applying both to an empty image gives the image Ceph exported.
    let mut m = Model(Vec::new());
    m.apply(&full);
    m.apply(&incr);
    assert_eq!(m.0.len(), 12 << 20);
    assert_eq!(&m.0[4096..8192], &[b'C'; 4096][..]);
    assert!(m.0[3 << 20..(3 << 20) + 65536].iter().all(|b| *b == 0));
    let mut sum = vdisk_rbd_diff::sum::Summer::new();
    sum.update(&m.0);
    assert_eq!(
        vdisk_rbd_diff::sum::hex(&sum.finish().sha256),
        "1ed9a22ede50b2e1e1a68e15705c80854e3daa18ab9a2e4db0d6d6f712296f7c",
        "sha256 of `rbd export rbd/sample@s2 -`"
    );
}
