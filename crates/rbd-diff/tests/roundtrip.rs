//! Properties: what the encoder writes, the decoder reads back the same
//! however the bytes are cut; merging two diffs equals applying both;
//! arbitrary and damaged input never panics and never loops.

mod common;
use common::*;
use proptest::prelude::*;
use vdisk_rbd_diff::{
    encode_image_header, merge_diffs, Decoder, DiffEncoder, DiffHeader, Event, ImageHeader,
    MergeError, StreamKind,
};

/// A diff: header and ascending, non-overlapping extents within the size.
#[derive(Debug, Clone)]
struct Diff {
    header: DiffHeader,
    /// (offset, length, data: none for a zero extent).
    extents: Vec<Extent>,
}

type Extent = (u64, u64, Option<Vec<u8>>);

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,16}"
}

/// Extents for an image of `size` bytes.
fn extents(size: u64) -> impl Strategy<Value = Vec<Extent>> {
    prop::collection::vec((0u64..3000, 0u64..3000, any::<bool>(), any::<u8>()), 0..12).prop_map(
        move |raw| {
            let (mut ext, mut pos) = (Vec::new(), 0u64);
            for (gap, len, write, seed) in raw {
                let off = pos + gap;
                if off >= size {
                    break;
                }
                let len = len.min(size - off);
                let data =
                    write.then(|| (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect());
                ext.push((off, len, data));
                pos = off + len;
            }
            ext
        },
    )
}

fn diff(v2: bool) -> impl Strategy<Value = Diff> {
    (
        prop::option::of(name()),
        prop::option::of(name()),
        any::<bool>(),
        0u64..20_000,
    )
        .prop_flat_map(move |(from, to, prot, size)| {
            extents(size).prop_map(move |extents| Diff {
                header: DiffHeader {
                    from_snap: from.clone(),
                    protected: (v2 && to.is_some()).then_some(prot),
                    to_snap: to.clone(),
                    size,
                },
                extents,
            })
        })
}

fn encode(d: &Diff, v2: bool, out: &mut Vec<u8>) {
    let mut enc = if v2 {
        DiffEncoder::v2()
    } else {
        DiffEncoder::v1()
    };
    enc.header(&d.header, out).unwrap();
    for (off, len, data) in &d.extents {
        match data {
            Some(b) => enc.write(*off, b, out).unwrap(),
            None => enc.zero(*off, *len, out).unwrap(),
        }
    }
    enc.end(out).unwrap();
}

fn expected(d: &Diff, index: u64) -> Vec<Rec> {
    let mut r = vec![ev(Event::DiffStart { index })];
    if let Some(f) = &d.header.from_snap {
        r.push(ev(Event::FromSnap(f.clone())));
    }
    if let Some(t) = &d.header.to_snap {
        r.push(ev(Event::ToSnap(t.clone())));
    }
    if let Some(p) = d.header.protected {
        r.push(ev(Event::Protected(p)));
    }
    r.push(ev(Event::Size(d.header.size)));
    for (off, len, data) in &d.extents {
        r.push(match data {
            Some(b) => w(*off, b),
            None => ev(Event::Zero {
                offset: *off,
                len: *len,
            }),
        });
    }
    r.push(ev(Event::DiffEnd));
    r
}

/// Feeds everything, checking progress; the outcome only.
fn drain(kind: StreamKind, bytes: &[u8], chunk: usize) -> Result<(), vdisk_rbd_diff::DecodeError> {
    let mut d = Decoder::new(kind);
    for piece in bytes.chunks(chunk.max(1)) {
        let mut input = piece;
        while !input.is_empty() {
            let (used, ev) = d.feed(input)?;
            assert!(used > 0 || ev.is_some(), "no progress");
            if let Some(Event::Data { bytes, .. }) = ev {
                assert_eq!(bytes.len(), used);
            }
            input = &input[used..];
        }
    }
    d.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn diff_round_trips(d in diff(false), chunk in 1usize..200) {
        let mut b = Vec::new();
        encode(&d, false, &mut b);
        prop_assert_eq!(decode(StreamKind::DiffV1, &b, chunk).unwrap(), expected(&d, 0));
    }

    #[test]
    fn diff_v2_round_trips(d in diff(true), chunk in 1usize..200) {
        let mut b = Vec::new();
        encode(&d, true, &mut b);
        prop_assert_eq!(decode(StreamKind::DiffV2, &b, chunk).unwrap(), expected(&d, 0));
    }

    #[test]
    fn image_round_trips(
        diffs in prop::collection::vec(diff(true), 1..4),
        order in 12u64..26,
        features in any::<u64>(),
        meta in prop::collection::vec((".{0,20}", prop::collection::vec(any::<u8>(), 0..40)), 0..3),
        chunk in 1usize..300,
    ) {
        let h = ImageHeader { order, features, stripe_unit: 1 << order, stripe_count: 1, meta: meta.clone() };
        let mut b = Vec::new();
        encode_image_header(&h, diffs.len() as u64, &mut b).unwrap();
        for d in &diffs {
            encode(d, true, &mut b);
        }
        let mut want = vec![
            ev(Event::Order(order)), ev(Event::Features(features)),
            ev(Event::StripeUnit(1 << order)), ev(Event::StripeCount(1)),
        ];
        for (key, value) in meta {
            want.push(ev(Event::Meta { key, value }));
        }
        want.push(ev(Event::DiffCount(diffs.len() as u64)));
        for (i, d) in diffs.iter().enumerate() {
            want.extend(expected(d, i as u64));
        }
        prop_assert_eq!(decode(StreamKind::Image, &b, chunk).unwrap(), want);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        prefix in 0usize..4,
        body in prop::collection::vec(any::<u8>(), 0..600),
        chunk in 1usize..64,
    ) {
        let banners: [&[u8]; 4] = [b"", b"rbd diff v1\n", b"rbd diff v2\n", b"rbd image v2\n"];
        let mut b = banners[prefix].to_vec();
        b.extend(body);
        for kind in [StreamKind::DiffV1, StreamKind::DiffV2, StreamKind::Image] {
            let _ = drain(kind, &b, chunk);
        }
    }

    #[test]
    fn damaged_streams_never_panic(
        d in diff(true),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        chunk in 1usize..64,
    ) {
        let mut b = Vec::new();
        encode_image_header(&ImageHeader { order: 22, features: 1, stripe_unit: 4 << 20, stripe_count: 1, meta: vec![] }, 1, &mut b).unwrap();
        encode(&d, true, &mut b);
        for (i, v) in flips {
            let i = i.index(b.len());
            b[i] = v;
        }
        let _ = drain(StreamKind::Image, &b, chunk);
        let c = cut.index(b.len());
        prop_assert!(drain(StreamKind::Image, &b[..c], chunk).is_err());
    }

    /// `merge-diff A B` applied to any base equals applying A then B.
    #[test]
    fn merge_equals_applying_both(
        base in prop::collection::vec(any::<u8>(), 0..12_000),
        a in diff(false),
        b in diff(false),
        a_from in prop::option::of(Just("s1".to_string())),
        b_to in prop::option::of(Just("s3".to_string())),
    ) {
        let mut a = a;
        let mut b = b;
        a.header.from_snap = a_from;
        a.header.to_snap = Some("s2".into());
        b.header.from_snap = Some("s2".into());
        b.header.to_snap = b_to;
        let (mut ab, mut bb) = (Vec::new(), Vec::new());
        encode(&a, false, &mut ab);
        encode(&b, false, &mut bb);
        let mut merged = Vec::new();
        let sum = merge_diffs(&ab[..], &bb[..], &mut merged).unwrap();
        prop_assert_eq!(sum.bytes, merged.len() as u64);
        prop_assert_eq!(&sum.from_snap, &a.header.from_snap);
        prop_assert_eq!(&sum.to_snap, &b.header.to_snap);
        let recs = decode(StreamKind::DiffV1, &merged, 97).unwrap();
        let mut seq = Model(base.clone());
        seq.apply(&decode(StreamKind::DiffV1, &ab, 4096).unwrap());
        seq.apply(&decode(StreamKind::DiffV1, &bb, 4096).unwrap());
        let mut one = Model(base);
        one.apply(&recs);
        prop_assert_eq!(one, seq);
        // The merged extents ascend too, so merges chain.
        let mut last = 0;
        for r in &recs {
            let (off, len) = match r {
                Rec::Write { offset, data } => (*offset, data.len() as u64),
                Rec::Ev(Event::Zero { offset, len }) => (*offset, *len),
                _ => continue,
            };
            prop_assert!(off >= last);
            last = off + len;
        }
    }
}

#[test]
fn merge_of_the_ceph_samples() {
    let a = golden("data/sample-full-s1.rbddiff");
    let b = golden("data/sample-s1-s2.rbddiff");
    let mut out = Vec::new();
    let s = merge_diffs(&a[..], &b[..], &mut out).unwrap();
    assert_eq!(
        (s.from_snap, s.to_snap.as_deref(), s.size),
        (None, Some("s2"), 12 << 20)
    );
    let mut m = Model(Vec::new());
    m.apply(&decode(StreamKind::DiffV1, &out, 4096).unwrap());
    let mut sum = vdisk_rbd_diff::sum::Summer::new();
    sum.update(&m.0);
    assert_eq!(
        vdisk_rbd_diff::sum::hex(&sum.finish().sha256),
        "1ed9a22ede50b2e1e1a68e15705c80854e3daa18ab9a2e4db0d6d6f712296f7c"
    );
}

#[test]
fn merge_refusals() {
    let a = golden("data/sample-full-s1.rbddiff");
    let b = golden("data/sample-s1-s2.rbddiff");
    // Not consecutive: s1→s2 then nothing→s1.
    let e = merge_diffs(&b[..], &a[..], &mut Vec::new()).unwrap_err();
    assert!(matches!(e, MergeError::NotAChain { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "the first diff ends at snapshot \"s2\" but the second starts from an empty image; \
         only consecutive diffs merge"
    );
    // Truncated second diff.
    let e = merge_diffs(&a[..], &b[..b.len() - 1], &mut Vec::new()).unwrap_err();
    assert!(
        e.to_string().starts_with("the second diff: truncated"),
        "{e}"
    );
    // An image export is not a diff.
    let img = golden("golden/image-v2.bin");
    let e = merge_diffs(&img[..], &b[..], &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("export-format 2"), "{e}");
    // Extents out of order.
    let mut enc = DiffEncoder::v1();
    let mut un = Vec::new();
    enc.header(
        &DiffHeader {
            from_snap: Some("s2".into()),
            size: 8192,
            ..DiffHeader::default()
        },
        &mut un,
    )
    .unwrap();
    enc.zero(4096, 10, &mut un).unwrap();
    enc.zero(0, 10, &mut un).unwrap();
    enc.end(&mut un).unwrap();
    let mut ok = Vec::new();
    let mut enc = DiffEncoder::v1();
    enc.header(
        &DiffHeader {
            to_snap: Some("s2".into()),
            size: 8192,
            ..DiffHeader::default()
        },
        &mut ok,
    )
    .unwrap();
    enc.end(&mut ok).unwrap();
    let e = merge_diffs(&ok[..], &un[..], &mut Vec::new()).unwrap_err();
    assert!(
        matches!(
            e,
            MergeError::Unordered {
                offset: 0,
                previous_end: 4106,
                ..
            }
        ),
        "{e:?}"
    );
    // No size record.
    let mut nosize = b"rbd diff v1\nt".to_vec();
    nosize.extend(2u32.to_le_bytes());
    nosize.extend(b"s2e");
    let e = merge_diffs(&nosize[..], &b[..], &mut Vec::new()).unwrap_err();
    assert!(matches!(e, MergeError::MissingSize(_)), "{e:?}");
}

#[test]
fn encoder_refuses_misuse() {
    let mut out = Vec::new();
    let mut enc = DiffEncoder::v1();
    assert!(
        enc.zero(0, 1, &mut out).is_err(),
        "extent before the header"
    );
    assert!(enc
        .header(
            &DiffHeader {
                protected: Some(true),
                ..DiffHeader::default()
            },
            &mut out
        )
        .is_err());
    assert!(enc
        .header(
            &DiffHeader {
                to_snap: Some(String::new()),
                ..DiffHeader::default()
            },
            &mut out
        )
        .is_err());
    assert!(enc
        .header(
            &DiffHeader {
                to_snap: Some("x".repeat(4097)),
                ..DiffHeader::default()
            },
            &mut out
        )
        .is_err());
    enc.header(
        &DiffHeader {
            size: 100,
            ..DiffHeader::default()
        },
        &mut out,
    )
    .unwrap();
    assert!(enc.zero(90, 11, &mut out).is_err(), "beyond the size");
    assert!(enc.write_header(u64::MAX, 2, &mut out).is_err(), "overflow");
    enc.end(&mut out).unwrap();
    assert!(enc.end(&mut out).is_err(), "twice");
    assert!(enc.zero(0, 1, &mut out).is_err(), "after the end");
}
