//! Property tests: no input makes any decoder panic, and chunking never
//! changes what the handshake does.

mod common;

use common::*;
use proptest::prelude::*;
use vdisk_nbd::client::{decode_reply, ClientConfig, ClientHandshake, ClientProgress};
use vdisk_nbd::consts::*;
use vdisk_nbd::{
    CommandFlags, ExportContext, HandshakeConfig, Progress, RequestHeader, ServerHandshake,
    TransmissionFlags,
};

/// Splits `data` at the given (sorted, deduplicated) cut points.
fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut last = 0;
    for p in points {
        out.push(&data[last..p]);
        last = p;
    }
    out.push(&data[last..]);
    out
}

/// A well-formed client option, chosen from the interesting ones.
fn arb_option() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec!["disk", "disk2", "", "nope"]);
    let query = prop::sample::select(vec!["base:", "base:allocation", "qemu:x", "nocolon"]);
    prop_oneof![
        Just(option(OPT_LIST, &[])),
        Just(option(OPT_STRUCTURED_REPLY, &[])),
        Just(option(OPT_STARTTLS, &[])),
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(o, d)| option(o.max(11), &d)),
        (name.clone(), prop::collection::vec(0u16..5, 0..4))
            .prop_map(|(n, r)| option(OPT_INFO, &go_data(n, &r))),
        (name.clone(), prop::collection::vec(query.clone(), 0..3))
            .prop_map(|(n, q)| option(OPT_LIST_META_CONTEXT, &meta_data(n, &q))),
        (name, prop::collection::vec(query, 0..3))
            .prop_map(|(n, q)| option(OPT_SET_META_CONTEXT, &meta_data(n, &q))),
        // Sometimes garbage inside a valid frame.
        (
            prop::sample::select(vec![OPT_INFO, OPT_GO, OPT_LIST_META_CONTEXT]),
            prop::collection::vec(any::<u8>(), 0..24)
        )
            .prop_map(|(o, d)| option(o, &d)),
    ]
}

fn arb_session() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(arb_option(), 0..12),
        prop::sample::select(vec![
            option(OPT_GO, &go_data("disk", &[INFO_BLOCK_SIZE])),
            option(OPT_EXPORT_NAME, b"disk"),
            option(OPT_ABORT, &[]),
            Vec::new(),
        ]),
    )
        .prop_map(|(opts, end)| {
            let mut v = modern_flags();
            for o in opts {
                v.extend(o);
            }
            v.extend(end);
            v
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    /// Arbitrary bytes in arbitrary chunks: the server handshake never
    /// panics (errors are fine).
    #[test]
    fn server_handshake_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = run_with(HandshakeConfig::default(), &split(&data, &cuts));
    }

    /// Arbitrary bytes after a valid prefix reach deeper states.
    #[test]
    fn server_handshake_never_panics_after_prefix(
        prefix in arb_session(),
        data in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let input = [prefix, data].concat();
        let small = HandshakeConfig { max_option_len: 64, max_discard_len: 256, max_options: 8, ..HandshakeConfig::default() };
        let _ = run(small, &input);
        let _ = run(HandshakeConfig::default(), &input);
    }

    /// Well-formed sessions give the same transcript however they are cut.
    #[test]
    fn chunking_is_invisible(
        session in arb_session(),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let whole = run(HandshakeConfig::default(), &session);
        let cut = run_with(HandshakeConfig::default(), &split(&session, &cuts));
        prop_assert_eq!(&whole, &cut);
        prop_assert_eq!(&whole, &run_bytewise(HandshakeConfig::default(), &session));
        prop_assert!(whole.error.is_none(), "{:?}", whole.error);
    }

    /// Request decoding and validation never panic.
    #[test]
    fn request_never_panics(
        header in prop::array::uniform28(any::<u8>()),
        magic_ok in any::<bool>(),
        size in any::<u64>(),
        flags in any::<u16>(),
        min_block in any::<u32>(),
        max_payload in any::<u32>(),
        structured in any::<bool>(),
        contexts in 0usize..3,
    ) {
        let mut header = header;
        if magic_ok {
            header[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        }
        if let Ok(req) = RequestHeader::parse(&header) {
            prop_assert_eq!(req.encode(), header);
            let ctx = ExportContext {
                size,
                flags: TransmissionFlags::from_bits(flags),
                min_block_size: min_block,
                max_payload,
                structured_replies: structured,
                meta_contexts: contexts,
            };
            let _ = req.validate(&ctx);
            let _ = req.check_payload(max_payload);
            let _ = req.flags.unknown() | CommandFlags::KNOWN.bits();
        }
        let _ = RequestHeader::try_parse(&header[..(size % 29) as usize]);
    }

    /// Reply decoding never panics.
    #[test]
    fn reply_decoding_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..256),
        magic in prop::sample::select(vec![SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, 0]),
        read_len in 0usize..64,
    ) {
        let mut buf = magic.to_be_bytes().to_vec();
        buf.extend(&data);
        let _ = decode_reply(&buf, 1024, |_| read_len);
        let _ = decode_reply(&data, u32::MAX, |_| usize::MAX);
    }

    /// The client handshake never panics on arbitrary server bytes.
    #[test]
    fn client_handshake_never_panics(
        data in prop::collection::vec(any::<u8>(), 0..1024),
        valid_greeting in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut input = Vec::new();
        if valid_greeting {
            input.extend(b"NBDMAGICIHAVEOPT\x00\x03");
        }
        input.extend(&data);
        let mut c = ClientHandshake::new(ClientConfig::new("disk"));
        'outer: for chunk in split(&input, &cuts) {
            let mut chunk = chunk;
            loop {
                match c.feed(chunk) {
                    Ok(ClientProgress::NeedMore) => break,
                    Ok(ClientProgress::Send(_)) => {}
                    Ok(_) | Err(_) => break 'outer,
                }
                chunk = &[];
            }
        }
    }
}

#[test]
fn server_handshake_survives_every_prefix_bytewise() {
    // Deterministic sanity companion to the proptests: a feed of every
    // prefix of a real session never errors.
    let session = [
        modern_flags(),
        option(OPT_STRUCTURED_REPLY, &[]),
        option(OPT_GO, &go_data("disk", &[])),
    ]
    .concat();
    for n in 0..session.len() {
        let mut hs = ServerHandshake::new(HandshakeConfig::default());
        let mut input = &session[..n];
        loop {
            match hs.feed(input).unwrap() {
                Progress::NeedMore => break,
                Progress::Reply { .. } => {}
                Progress::Event(ev) => {
                    respond(&mut hs, &ev).unwrap();
                }
                other => panic!("{other:?}"),
            }
            input = &[];
        }
    }
}
