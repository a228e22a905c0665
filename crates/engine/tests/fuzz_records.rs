//! Fuzz-style tests (proptest, no cargo-fuzz) of the metadata decoders:
//! `record::decode` of every record kind and `ObjectMeta::from_record` must
//! never panic (nor allocate without bound) on arbitrary or damaged bytes,
//! and what they accept must be internally consistent.
//!
//! Mutations are applied to the CBOR body and the envelope is then re-sealed
//! (length and checksum fixed up), so that the body decoder itself is
//! exercised rather than stopped by the checksum.
//!
//! `VDISK_TEST_LONG=1`: 20× the cases.

mod common;

use common::scaled;
use proptest::prelude::*;
use vdisk_engine::object::ObjectMeta;
use vdisk_engine::record::{
    self, ImageRecord, Kind, ObjectRecord, ParentLink, PoolRecord, SnapRecord, VersionRecord,
};

const HEADER: usize = 13;

fn pool() -> PoolRecord {
    PoolRecord {
        id: 1,
        name: "rbd".into(),
        path: Some("/srv/{pool}\"}".into()),
        create_time: 1_700_000_000,
    }
}

fn image() -> ImageRecord {
    ImageRecord {
        id: 0x2a,
        name: "vm-101-disk-0".into(),
        size: 10 << 30,
        order: 22,
        features: 61,
        flags: 0,
        create_time: 1_700_000_000,
        seq: 9,
        hidden: vec![(3, 4), (6, 6)],
        snaps: vec![
            SnapRecord {
                id: 2,
                name: "daily".into(),
                size: 10 << 30,
                protected: true,
                create_time: 1_700_000_100,
                hidden: vec![],
                parent_overlap: Some(1 << 30),
            },
            SnapRecord {
                id: 5,
                name: "weekly".into(),
                size: 8 << 30,
                protected: false,
                create_time: 1_700_000_200,
                hidden: vec![(3, 4)],
                parent_overlap: None,
            },
        ],
        parent: Some(ParentLink {
            pool: 1,
            image: 7,
            snap: 3,
        }),
        parent_overlap: Some(1 << 30),
        snap_limit: Some(5),
    }
}

fn object() -> ObjectRecord {
    ObjectRecord {
        copied_up: true,
        versions: vec![
            VersionRecord {
                gen: 0,
                present: vec![0xff; 128],
                zero: vec![0; 128],
            },
            VersionRecord {
                gen: 4,
                present: vec![0x0f; 128],
                zero: vec![0x05; 128],
            },
        ],
    }
}

/// Encodings of valid records of every kind.
fn samples() -> Vec<(Kind, Vec<u8>)> {
    vec![
        (Kind::Pool, record::encode(Kind::Pool, &pool())),
        (Kind::Image, record::encode(Kind::Image, &image())),
        (Kind::Object, record::encode(Kind::Object, &object())),
        (
            Kind::Object,
            record::encode(
                Kind::Object,
                &ObjectRecord {
                    copied_up: false,
                    versions: vec![],
                },
            ),
        ),
    ]
}

/// Fixes the envelope's body length and checksum after the body changed.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER {
        return;
    }
    let len = (bytes.len() - HEADER) as u32;
    let crc = crc32c::crc32c(&bytes[HEADER..]);
    bytes[5..9].copy_from_slice(&len.to_le_bytes());
    bytes[9..13].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes `bytes` as every kind; object records that decode are also run
/// through `ObjectMeta::from_record` with object sizes of every order.
fn decode_all(bytes: &[u8]) {
    let _ = record::decode::<PoolRecord>(Kind::Pool, "fuzz", bytes);
    if let Ok(r) = record::decode::<ImageRecord>(Kind::Image, "fuzz", bytes) {
        // What decodes re-encodes to something that decodes the same.
        let again = record::encode(Kind::Image, &r);
        assert_eq!(
            record::decode::<ImageRecord>(Kind::Image, "fuzz", &again).unwrap(),
            r
        );
    }
    if let Ok(r) = record::decode::<ObjectRecord>(Kind::Object, "fuzz", bytes) {
        check_object(&r);
    }
}

/// `from_record` never panics; what it accepts satisfies its invariants and
/// round-trips.
fn check_object(r: &ObjectRecord) {
    for order in [12u32, 13, 16, 22, 25] {
        let blocks = 1usize << (order - 12);
        for max_gen in [0u64, 4, u64::MAX] {
            if let Ok(m) = ObjectMeta::from_record(r, blocks, max_gen) {
                let mut last = None;
                for v in &m.versions {
                    assert!(last.is_none_or(|l| v.gen > l), "generations out of order");
                    assert!(v.gen <= max_gen);
                    assert_eq!(v.present.len(), blocks);
                    assert!(!v.zero.and_not(&v.present).any(), "zero ⊄ present");
                    last = Some(v.gen);
                }
                let back = ObjectMeta::from_record(&m.to_record(), blocks, max_gen).unwrap();
                assert_eq!(back, m);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        mask: u8,
    },
    Set {
        at: usize,
        value: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        n: usize,
    },
    Truncate {
        at: usize,
    },
    /// Overwrite a window with an interesting CBOR header byte followed by a
    /// huge length (allocation bombs).
    HugeLength {
        at: usize,
        major: u8,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Mutation::Set { at, value }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..32).prop_map(|(at, n)| Mutation::Remove { at, n }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 0u8..8).prop_map(|(at, major)| Mutation::HugeLength { at, major }),
    ]
}

fn apply(body: &mut Vec<u8>, m: &Mutation) {
    if body.is_empty() {
        body.push(0);
    }
    let pos = |at: usize, len: usize| at % len.max(1);
    match m {
        Mutation::Flip { at, mask } => {
            let i = pos(*at, body.len());
            body[i] ^= mask;
        }
        Mutation::Set { at, value } => {
            let i = pos(*at, body.len());
            body[i] = *value;
        }
        Mutation::Insert { at, bytes } => {
            let i = pos(*at, body.len() + 1);
            body.splice(i..i, bytes.iter().copied());
        }
        Mutation::Remove { at, n } => {
            let i = pos(*at, body.len());
            let e = (i + n).min(body.len());
            body.drain(i..e);
        }
        Mutation::Truncate { at } => {
            let i = pos(*at, body.len() + 1);
            body.truncate(i);
        }
        Mutation::HugeLength { at, major } => {
            let i = pos(*at, body.len());
            // Major type in the top 3 bits, 27 = an 8-byte length follows.
            let mut bomb = vec![(major << 5) | 27];
            bomb.extend_from_slice(&(u64::MAX / 3).to_be_bytes());
            body.splice(i..(i + 1).min(body.len()), bomb);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: scaled(2000, 40_000) as u32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes, raw and sealed in a valid envelope of each kind.
    #[test]
    fn decode_never_panics_on_arbitrary_bytes(
        body in prop::collection::vec(any::<u8>(), 0..600),
        kind in 1u8..=4,
        version in 0u16..3,
    ) {
        decode_all(&body);
        let mut env = vec![b'v', b'd', kind];
        env.extend_from_slice(&version.to_le_bytes());
        env.extend_from_slice(&[0; 8]);
        env.extend_from_slice(&body);
        reseal(&mut env);
        decode_all(&env);
    }

    /// Valid encodings with a few mutations of the body, resealed (and once
    /// not resealed: the checksum must then catch it).
    #[test]
    fn decode_never_panics_on_mutated_records(
        which in 0usize..4,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let (_, valid) = samples().swap_remove(which);
        let mut body = valid[HEADER..].to_vec();
        for m in &mutations {
            apply(&mut body, m);
        }
        let mut bytes = valid[..HEADER].to_vec();
        bytes.extend_from_slice(&body);
        if bytes != valid {
            // Damage without resealing is always refused.
            for kind in [Kind::Pool, Kind::Image, Kind::Object] {
                let r = record::decode::<ObjectRecord>(kind, "fuzz", &bytes);
                prop_assert!(r.is_err());
            }
        }
        reseal(&mut bytes);
        decode_all(&bytes);
    }

    /// `from_record` on structurally valid records with arbitrary contents.
    #[test]
    fn object_meta_from_any_record_never_panics(
        copied_up in any::<bool>(),
        versions in prop::collection::vec(
            (0u64..12, prop::collection::vec(any::<u8>(), 0..140), prop::collection::vec(any::<u8>(), 0..140)),
            0..6,
        ),
    ) {
        let r = ObjectRecord {
            copied_up,
            versions: versions
                .into_iter()
                .map(|(gen, present, zero)| VersionRecord { gen, present, zero })
                .collect(),
        };
        check_object(&r);
        decode_all(&record::encode(Kind::Object, &r));
    }
}

#[test]
fn samples_decode() {
    for (kind, bytes) in samples() {
        match kind {
            Kind::Pool => {
                record::decode::<PoolRecord>(kind, "sample", &bytes).unwrap();
            }
            Kind::Image => {
                record::decode::<ImageRecord>(kind, "sample", &bytes).unwrap();
            }
            Kind::Object => {
                let r = record::decode::<ObjectRecord>(kind, "sample", &bytes).unwrap();
                ObjectMeta::from_record(&r, 1024, 4).unwrap();
            }
            other => panic!("no samples of {other:?} are made"),
        }
    }
}
