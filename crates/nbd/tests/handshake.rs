//! Server handshake tests, from raw client bytes.
//!
//! Golden vectors are written out by hand from `doc/proto.md`; each one
//! spells out the fields it is made of.

mod common;

use common::*;
use vdisk_nbd::consts::*;
use vdisk_nbd::{
    BlockSize, Entry, Event, Handled, HandshakeConfig, HandshakeError, MetaContext, OptionError,
    Progress, ServerHandshake, TransmissionFlags,
};

fn cfg() -> HandshakeConfig {
    HandshakeConfig::default()
}

fn done(run: &Run) -> (&vdisk_nbd::Negotiated, &[u8]) {
    match run.steps.last() {
        Some(Step::Done(n, leftover)) => (n, leftover),
        other => panic!("handshake did not finish: {other:?} / {:?}", run.error),
    }
}

const REPLY_MAGIC: [u8; 8] = [0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9];

// ---------------------------------------------------------------------
// Golden vectors
// ---------------------------------------------------------------------

#[test]
fn golden_greeting() {
    // "NBDMAGIC", "IHAVEOPT", handshake flags FIXED_NEWSTYLE(bit 0) |
    // NO_ZEROES(bit 1) = 0x0003.
    let expected = [
        0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, // NBDMAGIC
        0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, // IHAVEOPT
        0x00, 0x03,
    ];
    assert_eq!(ServerHandshake::new(cfg()).initial_bytes(), expected);
    // Without NO_ZEROES only bit 0.
    let c = HandshakeConfig {
        advertise_no_zeroes: false,
        ..cfg()
    };
    assert_eq!(ServerHandshake::new(c).initial_bytes()[16..], [0x00, 0x01]);
}

#[test]
fn golden_go_session() {
    // Client: flags 0x00000003, then NBD_OPT_GO (7) for "disk" asking for
    // NBD_INFO_BLOCK_SIZE (3). Data = namelen(4) "disk"(4) count(2) req(2)
    // = 12 bytes.
    let client: Vec<u8> = [
        &[0x00, 0x00, 0x00, 0x03][..],
        b"IHAVEOPT",
        &[0x00, 0x00, 0x00, 0x07], // NBD_OPT_GO
        &[0x00, 0x00, 0x00, 0x0c], // length 12
        &[0x00, 0x00, 0x00, 0x04],
        b"disk",
        &[0x00, 0x01], // one request
        &[0x00, 0x03], // NBD_INFO_BLOCK_SIZE
    ]
    .concat();
    let run = run(cfg(), &client);
    assert_eq!(
        run.steps[0],
        Step::Event(Event::Info {
            export: "disk".into(),
            requests: vec![INFO_BLOCK_SIZE],
            go: true
        })
    );
    let expected: Vec<u8> = [
        // NBD_REP_INFO / NBD_INFO_EXPORT: size 2^30, flags HAS_FLAGS(0) |
        // SEND_FLUSH(2) | SEND_FUA(3) = 0x000d; length 2+8+2 = 12.
        &REPLY_MAGIC[..],
        &[0, 0, 0, 7],
        &[0, 0, 0, 3],
        &[0, 0, 0, 12],
        &[0, 0],
        &[0, 0, 0, 0, 0x40, 0, 0, 0],
        &[0x00, 0x0d],
        // NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: 512, 4096, 32 MiB; length 14.
        &REPLY_MAGIC[..],
        &[0, 0, 0, 7],
        &[0, 0, 0, 3],
        &[0, 0, 0, 14],
        &[0, 3],
        &[0, 0, 0x02, 0],
        &[0, 0, 0x10, 0],
        &[0x02, 0, 0, 0],
        // NBD_REP_ACK, no data.
        &REPLY_MAGIC[..],
        &[0, 0, 0, 7],
        &[0, 0, 0, 1],
        &[0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(&run.output[GREETING_LEN..], &expected[..]);
    let (n, leftover) = done(&run);
    assert_eq!(n.export, "disk");
    assert_eq!(n.size, EXPORT_SIZE);
    assert_eq!(n.flags.bits(), 0x000d);
    assert_eq!(n.entry, Entry::Go);
    assert!(n.block_size_requested);
    assert_eq!(
        n.block_size,
        Some(BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 32 << 20
        })
    );
    assert!(n.no_zeroes);
    assert!(!n.structured_replies);
    assert!(leftover.is_empty());
}

#[test]
fn golden_export_name_with_zeroes() {
    // Client flags only FIXED_NEWSTYLE, so the reply carries 124 zeroes:
    // size(8) flags(2) zeroes(124) = 134 bytes.
    let client = [
        flags(FLAG_C_FIXED_NEWSTYLE),
        option(OPT_EXPORT_NAME, b"disk"),
    ]
    .concat();
    let run = run(cfg(), &client);
    let mut expected = vec![0, 0, 0, 0, 0x40, 0, 0, 0, 0x00, 0x0d];
    expected.extend([0u8; 124]);
    assert_eq!(&run.output[GREETING_LEN..], &expected[..]);
    let (n, _) = done(&run);
    assert_eq!(n.entry, Entry::ExportName);
    assert!(!n.no_zeroes);
}

#[test]
fn golden_export_name_no_zeroes() {
    let client = [modern_flags(), option(OPT_EXPORT_NAME, b"disk")].concat();
    let run = run(cfg(), &client);
    assert_eq!(
        &run.output[GREETING_LEN..],
        &[0, 0, 0, 0, 0x40, 0, 0, 0, 0x00, 0x0d]
    );
    assert!(done(&run).0.no_zeroes);
}

#[test]
fn golden_unsupported_option() {
    // Option 42 with 3 bytes of data -> NBD_REP_ERR_UNSUP (0x80000001)
    // carrying the message "unsupported option" (18 bytes).
    let client = [modern_flags(), option(42, b"xyz")].concat();
    let run = run(cfg(), &client);
    let expected: Vec<u8> = [
        &REPLY_MAGIC[..],
        &[0, 0, 0, 42],
        &[0x80, 0, 0, 1],
        &[0, 0, 0, 18],
        b"unsupported option",
    ]
    .concat();
    assert_eq!(&run.output[GREETING_LEN..], &expected[..]);
    assert_eq!(run.steps, vec![Step::Handled(Handled::Unsupported(42))]);
    assert_eq!(run.error, None);
}

#[test]
fn golden_structured_reply_and_meta_context() {
    // NBD_OPT_STRUCTURED_REPLY (8), no data -> ACK.
    // NBD_OPT_SET_META_CONTEXT (10): namelen 4 "disk", 1 query, querylen 15
    // "base:allocation" = 4+4+4+4+15 = 31 bytes.
    let set: Vec<u8> = [
        &[0, 0, 0, 4][..],
        b"disk",
        &[0, 0, 0, 1],
        &[0, 0, 0, 15],
        b"base:allocation",
    ]
    .concat();
    assert_eq!(set, meta_data("disk", &["base:allocation"]));
    let client = [
        modern_flags(),
        option(OPT_STRUCTURED_REPLY, &[]),
        option(OPT_SET_META_CONTEXT, &set),
    ]
    .concat();
    let run = run(cfg(), &client);
    let expected: Vec<u8> = [
        // ACK to option 8
        &REPLY_MAGIC[..],
        &[0, 0, 0, 8],
        &[0, 0, 0, 1],
        &[0, 0, 0, 0],
        // NBD_REP_META_CONTEXT (4): id 1 + name, length 4 + 15 = 19
        &REPLY_MAGIC[..],
        &[0, 0, 0, 10],
        &[0, 0, 0, 4],
        &[0, 0, 0, 19],
        &[0, 0, 0, 1],
        b"base:allocation",
        // ACK to option 10
        &REPLY_MAGIC[..],
        &[0, 0, 0, 10],
        &[0, 0, 0, 1],
        &[0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(&run.output[GREETING_LEN..], &expected[..]);
}

#[test]
fn golden_list() {
    // One NBD_REP_SERVER (2) per export: namelen(4) + name, then ACK.
    let client = [modern_flags(), option(OPT_LIST, &[])].concat();
    let run = run(cfg(), &client);
    let expected: Vec<u8> = [
        &REPLY_MAGIC[..],
        &[0, 0, 0, 3],
        &[0, 0, 0, 2],
        &[0, 0, 0, 8],
        &[0, 0, 0, 4],
        b"disk",
        &REPLY_MAGIC[..],
        &[0, 0, 0, 3],
        &[0, 0, 0, 2],
        &[0, 0, 0, 9],
        &[0, 0, 0, 5],
        b"disk2",
        &REPLY_MAGIC[..],
        &[0, 0, 0, 3],
        &[0, 0, 0, 1],
        &[0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(&run.output[GREETING_LEN..], &expected[..]);
    assert_eq!(run.steps, vec![Step::Event(Event::ListExports)]);
}

#[test]
fn golden_abort() {
    let client = [modern_flags(), option(OPT_ABORT, &[])].concat();
    let run = run(cfg(), &client);
    let expected: Vec<u8> = [
        &REPLY_MAGIC[..],
        &[0, 0, 0, 2],
        &[0, 0, 0, 1],
        &[0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(&run.output[GREETING_LEN..], &expected[..]);
    assert_eq!(run.steps, vec![Step::Abort]);
}

// ---------------------------------------------------------------------
// Full sessions and partial input
// ---------------------------------------------------------------------

/// A long, realistic session (what qemu/libnbd-style clients send).
fn qemu_like_session() -> Vec<u8> {
    [
        modern_flags(),
        option(OPT_STRUCTURED_REPLY, &[]),
        option(OPT_LIST, &[]),
        option(OPT_LIST_META_CONTEXT, &meta_data("disk", &["base:"])),
        option(OPT_INFO, &go_data("nope", &[])),
        option(OPT_INFO, &go_data("disk", &[INFO_NAME, INFO_BLOCK_SIZE])),
        option(99, &[1, 2, 3]),
        option(
            OPT_SET_META_CONTEXT,
            &meta_data("disk", &["base:allocation"]),
        ),
        option(OPT_GO, &go_data("disk", &[INFO_BLOCK_SIZE])),
    ]
    .concat()
}

#[test]
fn full_session_negotiates_everything() {
    let run = run(cfg(), &qemu_like_session());
    assert_eq!(run.error, None);
    let (n, _) = done(&run);
    assert!(n.structured_replies);
    assert_eq!(
        n.meta_contexts,
        vec![MetaContext {
            id: 1,
            name: "base:allocation".into()
        }]
    );
    let types: Vec<(u32, u32)> = replies(&run).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        types,
        vec![
            (OPT_STRUCTURED_REPLY, REP_ACK),
            (OPT_LIST, REP_SERVER),
            (OPT_LIST, REP_SERVER),
            (OPT_LIST, REP_ACK),
            (OPT_LIST_META_CONTEXT, REP_META_CONTEXT),
            (OPT_LIST_META_CONTEXT, REP_ACK),
            (OPT_INFO, REP_ERR_UNKNOWN),
            (OPT_INFO, REP_INFO),
            (OPT_INFO, REP_INFO),
            (OPT_INFO, REP_ACK),
            (99, REP_ERR_UNSUP),
            (OPT_SET_META_CONTEXT, REP_META_CONTEXT),
            (OPT_SET_META_CONTEXT, REP_ACK),
            (OPT_GO, REP_INFO),
            (OPT_GO, REP_INFO),
            (OPT_GO, REP_ACK),
        ]
    );
}

#[test]
fn bytewise_feed_matches_bulk_feed() {
    let session = qemu_like_session();
    let bulk = run(cfg(), &session);
    let bytewise = run_bytewise(cfg(), &session);
    assert_eq!(bulk, bytewise);
    // And every other split point of a two-chunk feed.
    for split in 0..session.len() {
        let two = run_with(cfg(), &[&session[..split], &session[split..]]);
        assert_eq!(two, bulk, "split at {split}");
    }
}

#[test]
fn leftover_transmission_bytes_are_returned() {
    let request = [
        0x25, 0x60, 0x95, 0x13, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ];
    let client = [
        modern_flags(),
        option(OPT_GO, &go_data("disk", &[])),
        request.to_vec(),
    ]
    .concat();
    let bulk = run(cfg(), &client);
    assert_eq!(done(&bulk).1, &request[..]);
    let bytewise = run_bytewise(cfg(), &client);
    // Fed byte by byte, the request arrives after Done... except the
    // handshake stops at Done, so only what it had buffered is returned.
    assert!(done(&bytewise).1.is_empty());
    let c2 = [
        modern_flags(),
        option(OPT_EXPORT_NAME, b"disk"),
        request.to_vec(),
    ]
    .concat();
    assert_eq!(done(&run(cfg(), &c2)).1, &request[..]);
}

#[test]
fn leftover_includes_data_fed_after_final_reply() {
    let mut hs = ServerHandshake::new(cfg());
    let client = [modern_flags(), option(OPT_EXPORT_NAME, b"disk")].concat();
    let Progress::Event(Event::ExportName(_)) = hs.feed(&client).unwrap() else {
        panic!()
    };
    hs.reply_export_name(1, TransmissionFlags::empty()).unwrap();
    let Progress::Done { leftover, .. } = hs.feed(b"abc").unwrap() else {
        panic!()
    };
    assert_eq!(leftover, b"abc");
    assert!(matches!(hs.feed(&[]), Err(HandshakeError::Misuse(_))));
}

#[test]
fn info_then_continue() {
    let client = [
        modern_flags(),
        option(OPT_INFO, &go_data("disk", &[])),
        option(OPT_INFO, &go_data("disk", &[])),
    ]
    .concat();
    let run = run(cfg(), &client);
    assert_eq!(run.error, None);
    assert_eq!(run.steps.len(), 2);
    assert!(run
        .steps
        .iter()
        .all(|s| matches!(s, Step::Event(Event::Info { go: false, .. }))));
}

#[test]
fn go_unknown_export_then_retry() {
    let client = [
        modern_flags(),
        option(OPT_GO, &go_data("other", &[])),
        option(OPT_GO, &go_data("", &[])),
        option(OPT_GO, &go_data("disk", &[])),
    ]
    .concat();
    let run = run(cfg(), &client);
    let r = replies(&run);
    assert_eq!(r[0].1, REP_ERR_UNKNOWN);
    assert_eq!(r[0].2, b"no such export");
    assert_eq!(r[1].1, REP_ERR_UNKNOWN);
    assert!(!done(&run).0.block_size_requested);
}

#[test]
fn export_name_unknown_hangs_up() {
    let client = [modern_flags(), option(OPT_EXPORT_NAME, b"nope")].concat();
    let run = run(cfg(), &client);
    assert_eq!(run.steps.last(), Some(&Step::HangUp));
}

// ---------------------------------------------------------------------
// Client flags
// ---------------------------------------------------------------------

#[test]
fn unknown_client_flags_are_fatal() {
    let run = run(cfg(), &flags(1 << 5));
    assert_eq!(run.error, Some(HandshakeError::UnknownClientFlags(1 << 5)));
}

#[test]
fn no_zeroes_without_advertising_is_fatal() {
    let c = HandshakeConfig {
        advertise_no_zeroes: false,
        ..cfg()
    };
    assert_eq!(
        run(c, &modern_flags()).error,
        Some(HandshakeError::NoZeroesNotAdvertised)
    );
}

#[test]
fn policy_requirements() {
    let c = HandshakeConfig {
        require_no_zeroes: true,
        ..cfg()
    };
    assert_eq!(
        run(c.clone(), &flags(FLAG_C_FIXED_NEWSTYLE)).error,
        Some(HandshakeError::NoZeroesRequired)
    );
    assert_eq!(run(c, &modern_flags()).error, None);
    let c = HandshakeConfig {
        require_fixed_newstyle: true,
        ..cfg()
    };
    assert_eq!(
        run(c, &flags(0)).error,
        Some(HandshakeError::FixedNewstyleRequired)
    );
}

#[test]
fn plain_newstyle_client_is_honoured() {
    // Client flags 0 (plain newstyle) + EXPORT_NAME: works, with zeroes.
    let run = run(
        cfg(),
        &[flags(0), option(OPT_EXPORT_NAME, b"disk")].concat(),
    );
    assert_eq!(run.output.len(), GREETING_LEN + 134);
    done(&run);
}

// ---------------------------------------------------------------------
// Hostile and malformed input
// ---------------------------------------------------------------------

#[test]
fn bad_option_magic_is_fatal() {
    let mut opt = option(OPT_LIST, &[]);
    opt[0] = b'X';
    let run = run(cfg(), &[modern_flags(), opt].concat());
    assert!(matches!(run.error, Some(HandshakeError::BadOptionMagic(_))));
}

#[test]
fn huge_claimed_length_is_refused_at_the_header() {
    // Only the 16-byte header is fed: the error must come before any data
    // (so nothing was allocated for the claimed 4 GiB).
    let mut header = b"IHAVEOPT".to_vec();
    header.extend(OPT_GO.to_be_bytes());
    header.extend(u32::MAX.to_be_bytes());
    let run = run(cfg(), &[modern_flags(), header].concat());
    assert_eq!(
        run.error,
        Some(HandshakeError::OptionTooLarge {
            option: OPT_GO,
            length: u32::MAX
        })
    );
}

#[test]
fn oversized_export_name_is_fatal() {
    let mut header = b"IHAVEOPT".to_vec();
    header.extend(OPT_EXPORT_NAME.to_be_bytes());
    header.extend((100_000u32).to_be_bytes());
    let run = run(cfg(), &[modern_flags(), header].concat());
    assert!(matches!(
        run.error,
        Some(HandshakeError::OptionTooLarge { .. })
    ));
}

#[test]
fn oversized_option_is_skipped_with_too_big() {
    // 100 KiB of GO data: above max_option_len (64 KiB), below
    // max_discard_len (1 MiB) -> skipped, ERR_TOO_BIG, then a GO works.
    let big = vec![0xAA; 100 * 1024];
    let client = [
        modern_flags(),
        option(OPT_GO, &big),
        option(OPT_GO, &go_data("disk", &[])),
    ]
    .concat();
    let bulk = run(cfg(), &client);
    assert_eq!(bulk.steps[0], Step::Handled(Handled::TooBig(OPT_GO)));
    assert_eq!(replies(&bulk)[0].1, REP_ERR_TOO_BIG);
    done(&bulk);
    // Same result in odd chunk sizes.
    let chunks: Vec<&[u8]> = client.chunks(4093).collect();
    assert_eq!(run_with(cfg(), &chunks), bulk);
}

#[test]
fn discard_never_buffers_the_oversized_data() {
    // Feed header + 900 KiB in one call: succeeds although far above the
    // buffer cap, proving the data is skipped rather than stored.
    let big = vec![0u8; 900 * 1024];
    let mut hs = ServerHandshake::new(cfg());
    let input = [modern_flags(), option(77, &big)].concat();
    match hs.feed(&input).unwrap() {
        Progress::Reply { handled, .. } => assert_eq!(handled, Handled::TooBig(77)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_many_options() {
    let c = HandshakeConfig {
        max_options: 10,
        ..cfg()
    };
    let mut client = modern_flags();
    for _ in 0..10 {
        client.extend(option(1000, &[]));
    }
    let ok = run(
        c.clone(),
        &[client.clone(), option(OPT_GO, &go_data("disk", &[]))].concat(),
    );
    assert_eq!(ok.error, Some(HandshakeError::TooManyOptions(10)));
    let fine = run(c, &client);
    assert_eq!(fine.error, None);
    assert_eq!(fine.steps.len(), 10);
}

#[test]
fn many_unknown_options_then_go() {
    let mut client = modern_flags();
    for i in 0..500u32 {
        client.extend(option(100 + i, &i.to_be_bytes()));
    }
    client.extend(option(OPT_GO, &go_data("disk", &[])));
    let run = run(cfg(), &client);
    assert_eq!(run.steps.len(), 502); // 500 handled + GO event + Done
    done(&run);
}

#[test]
fn unknown_and_reserved_options_get_unsup() {
    for opt in [0, OPT_PEEK_EXPORT, OPT_EXTENDED_HEADERS, 0xffff_ffff] {
        let run = run(cfg(), &[modern_flags(), option(opt, &[])].concat());
        assert_eq!(
            run.steps,
            vec![Step::Handled(Handled::Unsupported(opt))],
            "{opt}"
        );
        assert_eq!(replies(&run)[0].1, REP_ERR_UNSUP);
    }
}

#[test]
fn starttls() {
    let run1 = run(cfg(), &[modern_flags(), option(OPT_STARTTLS, &[])].concat());
    assert_eq!(replies(&run1)[0].1, REP_ERR_UNSUP);
    let run2 = run(
        cfg(),
        &[modern_flags(), option(OPT_STARTTLS, b"x")].concat(),
    );
    assert_eq!(replies(&run2)[0].1, REP_ERR_INVALID);
}

#[test]
fn list_with_data_is_invalid() {
    let run = run(cfg(), &[modern_flags(), option(OPT_LIST, b"x")].concat());
    assert_eq!(run.steps, vec![Step::Handled(Handled::Invalid(OPT_LIST))]);
}

#[test]
fn abort_with_data_is_still_acked() {
    let run = run(
        cfg(),
        &[modern_flags(), option(OPT_ABORT, b"junk")].concat(),
    );
    assert_eq!(run.steps, vec![Step::Abort]);
    assert_eq!(replies(&run)[0].1, REP_ACK);
}

#[test]
fn feed_after_abort_is_misuse() {
    let mut hs = ServerHandshake::new(cfg());
    let input = [modern_flags(), option(OPT_ABORT, &[])].concat();
    assert!(matches!(hs.feed(&input).unwrap(), Progress::Abort { .. }));
    assert!(matches!(hs.feed(&[]), Err(HandshakeError::Misuse(_))));
}

#[test]
fn structured_reply_rules() {
    let r = run(
        cfg(),
        &[modern_flags(), option(OPT_STRUCTURED_REPLY, b"x")].concat(),
    );
    assert_eq!(replies(&r)[0].1, REP_ERR_INVALID);
    let c = HandshakeConfig {
        structured_replies: false,
        ..cfg()
    };
    let r = run(
        c,
        &[modern_flags(), option(OPT_STRUCTURED_REPLY, &[])].concat(),
    );
    assert_eq!(replies(&r)[0].1, REP_ERR_UNSUP);
    // Twice: acknowledged twice.
    let r = run(
        cfg(),
        &[
            modern_flags(),
            option(OPT_STRUCTURED_REPLY, &[]),
            option(OPT_STRUCTURED_REPLY, &[]),
        ]
        .concat(),
    );
    assert_eq!(r.steps, vec![Step::Handled(Handled::StructuredReplies); 2]);
}

#[test]
fn set_meta_context_requires_structured_replies() {
    let r = run(
        cfg(),
        &[
            modern_flags(),
            option(
                OPT_SET_META_CONTEXT,
                &meta_data("disk", &["base:allocation"]),
            ),
        ]
        .concat(),
    );
    assert_eq!(
        r.steps,
        vec![Step::Handled(Handled::Invalid(OPT_SET_META_CONTEXT))]
    );
    assert_eq!(replies(&r)[0].1, REP_ERR_INVALID);
}

fn meta_session(set_queries: &[&str], go_export: &str) -> Run {
    run(
        cfg(),
        &[
            modern_flags(),
            option(OPT_STRUCTURED_REPLY, &[]),
            option(OPT_SET_META_CONTEXT, &meta_data("disk", set_queries)),
            option(OPT_GO, &go_data(go_export, &[])),
        ]
        .concat(),
    )
}

#[test]
fn set_meta_context_selection() {
    let base = vec![MetaContext {
        id: 1,
        name: "base:allocation".into(),
    }];
    assert_eq!(
        done(&meta_session(&["base:allocation"], "disk"))
            .0
            .meta_contexts,
        base
    );
    // Duplicated query selects once.
    assert_eq!(
        done(&meta_session(
            &["base:allocation", "base:allocation"],
            "disk"
        ))
        .0
        .meta_contexts,
        base
    );
    // "base:" MUST be ignored by SET; unknown namespaces and leaves too;
    // queries without a colon are ignored rather than refused.
    for q in [
        &["base:"][..],
        &["qemu:dirty-bitmap:b0"],
        &["base:nope"],
        &["nocolon"],
        &[],
    ] {
        let r = meta_session(q, "disk");
        let rs = replies(&r);
        assert_eq!(rs[1].0, OPT_SET_META_CONTEXT);
        assert_eq!(rs[1].1, REP_ACK, "{q:?}");
        assert!(done(&r).0.meta_contexts.is_empty());
    }
    // GO with a different export name: the selection does not apply.
    let r = meta_session(&["base:allocation"], "disk2");
    let (n, _) = done(&r);
    assert_eq!(n.export, "disk2");
    assert!(n.meta_contexts.is_empty());
}

#[test]
fn failed_set_meta_context_clears_selection() {
    let r = run(
        cfg(),
        &[
            modern_flags(),
            option(OPT_STRUCTURED_REPLY, &[]),
            option(
                OPT_SET_META_CONTEXT,
                &meta_data("disk", &["base:allocation"]),
            ),
            option(
                OPT_SET_META_CONTEXT,
                &meta_data("other", &["base:allocation"]),
            ),
            option(OPT_GO, &go_data("disk", &[])),
        ]
        .concat(),
    );
    let rs = replies(&r);
    assert_eq!(rs[3].1, REP_ERR_UNKNOWN);
    assert!(done(&r).0.meta_contexts.is_empty());
}

#[test]
fn meta_context_survives_export_name_entry() {
    let r = run(
        cfg(),
        &[
            modern_flags(),
            option(OPT_STRUCTURED_REPLY, &[]),
            option(
                OPT_SET_META_CONTEXT,
                &meta_data("disk", &["base:allocation"]),
            ),
            option(OPT_EXPORT_NAME, b"disk"),
        ]
        .concat(),
    );
    let (n, _) = done(&r);
    assert_eq!(n.meta_contexts.len(), 1);
    assert!(n.structured_replies);
}

#[test]
fn list_meta_context_queries() {
    let list = |queries: &[&str]| {
        let r = run(
            cfg(),
            &[
                modern_flags(),
                option(OPT_LIST_META_CONTEXT, &meta_data("disk", queries)),
            ]
            .concat(),
        );
        replies(&r)
            .into_iter()
            .filter(|x| x.1 == REP_META_CONTEXT)
            .map(|x| x.2)
            .collect::<Vec<_>>()
    };
    // id 0 (reserved in LIST replies) + name.
    let base = [&[0, 0, 0, 0][..], b"base:allocation"].concat();
    assert_eq!(list(&[]), vec![base.clone()]);
    assert_eq!(list(&["base:"]), vec![base.clone()]);
    assert_eq!(list(&["base:allocation"]), vec![base.clone()]);
    assert_eq!(list(&["base:", "base:allocation"]), vec![base]);
    assert!(list(&["qemu:"]).is_empty());
    assert!(list(&["base:other"]).is_empty());
    assert!(list(&["nocolon"]).is_empty());
    assert!(list(&[":"]).is_empty());
}

#[test]
fn list_meta_context_unknown_export() {
    let r = run(
        cfg(),
        &[
            modern_flags(),
            option(OPT_LIST_META_CONTEXT, &meta_data("x", &[])),
        ]
        .concat(),
    );
    assert_eq!(replies(&r)[0].1, REP_ERR_UNKNOWN);
}

#[test]
fn custom_meta_contexts_get_index_ids() {
    let c = HandshakeConfig {
        meta_contexts: vec!["base:allocation".into(), "qemu:dirty-bitmap:b0".into()],
        ..cfg()
    };
    let r = run(
        c,
        &[
            modern_flags(),
            option(OPT_STRUCTURED_REPLY, &[]),
            option(
                OPT_SET_META_CONTEXT,
                &meta_data("disk", &["qemu:dirty-bitmap:b0", "base:allocation"]),
            ),
            option(OPT_GO, &go_data("disk", &[])),
        ]
        .concat(),
    );
    let ids: Vec<(u32, String)> = done(&r)
        .0
        .meta_contexts
        .iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    assert_eq!(
        ids,
        vec![
            (1, "base:allocation".into()),
            (2, "qemu:dirty-bitmap:b0".into())
        ]
    );
}

#[test]
fn malformed_info_requests_are_invalid() {
    let mut bad_cases: Vec<Vec<u8>> = vec![
        vec![],                                               // too short
        vec![0, 0, 0, 9, b'd'],                               // name runs past
        go_data("disk", &[1, 1]),                             // duplicate request
        [go_data("disk", &[]), vec![0]].concat(),             // trailing byte
        vec![0, 0, 0, 4, b'd', b'i', b's', b'k', 0xff, 0xff], // count 65535, no data
        vec![0, 0, 0, 2, 0xff, 0xfe, 0, 0],                   // invalid UTF-8
        vec![0, 0, 0, 2, b'a', 0, 0, 0],                      // NUL in name
    ];
    let mut long = go_data(&"a".repeat(4097), &[]);
    bad_cases.push(std::mem::take(&mut long));
    for data in bad_cases {
        for opt in [OPT_INFO, OPT_GO] {
            let r = run(cfg(), &[modern_flags(), option(opt, &data)].concat());
            assert_eq!(
                r.steps,
                vec![Step::Handled(Handled::Invalid(opt))],
                "{data:?}"
            );
            assert_eq!(r.error, None);
        }
    }
}

#[test]
fn malformed_meta_requests_are_invalid() {
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![0, 0, 0, 4, b'd', b'i', b's', b'k'], // no count
        [meta_data("disk", &[]), vec![0]].concat(), // trailing
        // claims 0xffffffff queries with no data: must not allocate for them
        [vec![0, 0, 0, 0], vec![0xff, 0xff, 0xff, 0xff]].concat(),
        [
            vec![0, 0, 0, 0],
            vec![0, 0, 0, 1],
            vec![0, 0, 0, 50],
            b"x".to_vec(),
        ]
        .concat(),
        meta_data("disk", &["a\0b"]),
    ];
    for data in cases {
        let r = run(
            cfg(),
            &[
                modern_flags(),
                option(OPT_STRUCTURED_REPLY, &[]),
                option(OPT_LIST_META_CONTEXT, &data),
            ]
            .concat(),
        );
        assert_eq!(
            r.steps[1],
            Step::Handled(Handled::Invalid(OPT_LIST_META_CONTEXT)),
            "{data:?}"
        );
        let r = run(
            cfg(),
            &[
                modern_flags(),
                option(OPT_STRUCTURED_REPLY, &[]),
                option(OPT_SET_META_CONTEXT, &data),
            ]
            .concat(),
        );
        assert_eq!(
            r.steps[1],
            Step::Handled(Handled::Invalid(OPT_SET_META_CONTEXT)),
            "{data:?}"
        );
    }
}

#[test]
fn invalid_export_name_is_fatal() {
    for name in [&b"a\0b"[..], &[0xff], &[b'a'; 4097]] {
        let r = run(
            cfg(),
            &[modern_flags(), option(OPT_EXPORT_NAME, name)].concat(),
        );
        assert_eq!(r.error, Some(HandshakeError::InvalidExportName));
    }
}

#[test]
fn pipelined_data_beyond_cap_is_fatal() {
    let c = HandshakeConfig {
        max_option_len: 1024,
        ..cfg()
    };
    let mut hs = ServerHandshake::new(c);
    let mut input = [modern_flags(), option(OPT_LIST, &[])].concat();
    input.extend(vec![0u8; 2000]);
    assert_eq!(hs.feed(&input), Err(HandshakeError::BacklogFull));
}

#[test]
fn pipelined_options_are_processed_in_order() {
    // A (non-compliant) client sends everything at once; small enough to
    // buffer, so the answers simply come in order.
    let client = [
        modern_flags(),
        option(OPT_LIST, &[]),
        option(OPT_INFO, &go_data("disk", &[])),
        option(OPT_GO, &go_data("disk", &[])),
    ]
    .concat();
    let r = run(cfg(), &client);
    assert_eq!(r.steps.len(), 4);
    done(&r);
}

// ---------------------------------------------------------------------
// Server-side API misuse and flag fix-ups
// ---------------------------------------------------------------------

fn pending(input: &[u8]) -> ServerHandshake {
    let mut hs = ServerHandshake::new(cfg());
    match hs.feed(input).unwrap() {
        Progress::Event(_) => hs,
        other => panic!("{other:?}"),
    }
}

#[test]
fn misuse_is_reported() {
    let go = [
        modern_flags(),
        option(OPT_GO, &go_data("disk", &[INFO_BLOCK_SIZE])),
    ]
    .concat();
    let mut hs = pending(&go);
    assert!(matches!(hs.reply_ack(), Err(HandshakeError::Misuse(_))));
    assert!(matches!(
        hs.reply_export_name(1, TransmissionFlags::empty()),
        Err(HandshakeError::Misuse(_))
    ));
    assert!(matches!(
        hs.reply_server_list(&["x"]),
        Err(HandshakeError::Misuse(_))
    ));
    assert!(matches!(
        hs.reply_error(OptionError::TlsRequired, ""),
        Err(HandshakeError::Misuse(_))
    ));
    assert!(matches!(
        hs.reply_error(OptionError::BlockSizeRequired, ""),
        Err(HandshakeError::Misuse(_))
    ));
    assert!(matches!(
        hs.reply_block_size(3, 4096, 1 << 20),
        Err(HandshakeError::Misuse(_))
    ));
    assert!(matches!(
        hs.reply_block_size(512, 256, 1 << 20),
        Err(HandshakeError::Misuse(_))
    ));
    assert!(matches!(
        hs.reply_block_size(512, 4096, 1024),
        Err(HandshakeError::Misuse(_))
    ));
    // Misuse of reply methods does not kill the handshake.
    hs.reply_info_export(1, TransmissionFlags::empty()).unwrap();
    assert!(matches!(
        hs.reply_info_export(1, TransmissionFlags::empty()),
        Err(HandshakeError::Misuse(_))
    ));
    hs.reply_ack().unwrap();
    assert!(matches!(hs.reply_ack(), Err(HandshakeError::Misuse(_))));

    let en = [modern_flags(), option(OPT_EXPORT_NAME, b"disk")].concat();
    let mut hs = pending(&en);
    assert!(matches!(
        hs.reply_error(OptionError::UnknownExport, ""),
        Err(HandshakeError::Misuse(_))
    ));
    // Feeding while an event is pending is fatal misuse.
    assert!(matches!(hs.feed(&[]), Err(HandshakeError::Misuse(_))));
}

#[test]
fn block_size_required_allowed_when_not_requested() {
    let go = [modern_flags(), option(OPT_GO, &go_data("disk", &[]))].concat();
    let mut hs = pending(&go);
    let bytes = hs
        .reply_error(OptionError::BlockSizeRequired, "need block size")
        .unwrap();
    assert_eq!(parse_replies(&bytes)[0].1, REP_ERR_BLOCK_SIZE_REQD);
    assert_eq!(hs.feed(&[]).unwrap(), Progress::NeedMore);
}

#[test]
fn transmission_flags_are_fixed_up() {
    let go = [modern_flags(), option(OPT_GO, &go_data("disk", &[]))].concat();
    let mut hs = pending(&go);
    // SEND_DF without structured replies, FAST_ZERO without WRITE_ZEROES,
    // HAS_FLAGS missing.
    let asked = TransmissionFlags::SEND_DF
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::READ_ONLY;
    let bytes = hs.reply_info_export(10, asked).unwrap();
    let info = &parse_replies(&bytes)[0].2;
    assert_eq!(
        &info[10..12],
        &(FLAG_HAS_FLAGS | FLAG_READ_ONLY).to_be_bytes()
    );
    hs.reply_ack().unwrap();
    let Progress::Done { negotiated, .. } = hs.feed(&[]).unwrap() else {
        panic!()
    };
    assert_eq!(
        negotiated.flags,
        TransmissionFlags::HAS_FLAGS | TransmissionFlags::READ_ONLY
    );

    // With structured replies and WRITE_ZEROES both flags survive.
    let go = [
        modern_flags(),
        option(OPT_STRUCTURED_REPLY, &[]),
        option(OPT_GO, &go_data("disk", &[])),
    ]
    .concat();
    let mut hs = ServerHandshake::new(cfg());
    assert!(matches!(hs.feed(&go).unwrap(), Progress::Reply { .. }));
    assert!(matches!(hs.feed(&[]).unwrap(), Progress::Event(_)));
    let asked = TransmissionFlags::SEND_DF
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_WRITE_ZEROES;
    hs.reply_info_export(10, asked).unwrap();
    hs.reply_ack().unwrap();
    let Progress::Done { negotiated, .. } = hs.feed(&[]).unwrap() else {
        panic!()
    };
    assert_eq!(negotiated.flags, asked | TransmissionFlags::HAS_FLAGS);
}

#[test]
fn info_extras_and_server_descriptions() {
    let go = [
        modern_flags(),
        option(OPT_INFO, &go_data("disk", &[INFO_NAME, INFO_DESCRIPTION])),
    ]
    .concat();
    let mut hs = pending(&go);
    let name = hs.reply_info_name("disk").unwrap();
    // NBD_REP_INFO for option 6, length 2 + 4, type NBD_INFO_NAME (1).
    assert_eq!(
        name,
        [
            &REPLY_MAGIC[..],
            &[0, 0, 0, 6],
            &[0, 0, 0, 3],
            &[0, 0, 0, 6],
            &[0, 1],
            b"disk"
        ]
        .concat()
    );
    let desc = hs.reply_info_description(&"x".repeat(5000)).unwrap();
    assert_eq!(parse_replies(&desc)[0].2.len(), 2 + 4096);
    assert!(matches!(
        hs.reply_info_name("a\0"),
        Err(HandshakeError::Misuse(_))
    ));

    let list = [modern_flags(), option(OPT_LIST, &[])].concat();
    let mut hs = pending(&list);
    let s = hs.reply_server("disk", Some("a disk")).unwrap();
    // namelen(4) + "disk" + "a disk" = 14 bytes of data.
    assert_eq!(
        parse_replies(&s)[0].2,
        [&[0, 0, 0, 4][..], b"disk", b"a disk"].concat()
    );
    hs.reply_ack().unwrap();
    assert_eq!(hs.feed(&[]).unwrap(), Progress::NeedMore);
}

#[test]
fn error_messages_are_sanitized() {
    let list = [modern_flags(), option(OPT_LIST, &[])].concat();
    let mut hs = pending(&list);
    let bytes = hs
        .reply_error(OptionError::Policy, &format!("a\0{}", "é".repeat(3000)))
        .unwrap();
    let r = &parse_replies(&bytes)[0];
    assert_eq!(r.1, REP_ERR_POLICY);
    assert!(r.2.len() <= MAX_STRING_LEN);
    assert!(!r.2.contains(&0));
    assert!(std::str::from_utf8(&r.2).is_ok());
}

#[test]
fn info_with_many_requests_is_cheap() {
    // 32 000 distinct information requests fit in one 64 KiB option; the
    // duplicate check must not be quadratic (this would take seconds).
    let many: Vec<u16> = (0..32_000).collect();
    let start = std::time::Instant::now();
    let r = run(
        cfg(),
        &[modern_flags(), option(OPT_INFO, &go_data("disk", &many))].concat(),
    );
    match &r.steps[0] {
        Step::Event(Event::Info { requests, .. }) => assert_eq!(requests.len(), 32_000),
        other => panic!("{other:?}"),
    }
    let mut dup = many.clone();
    dup[31_999] = 0;
    let r = run(
        cfg(),
        &[modern_flags(), option(OPT_INFO, &go_data("disk", &dup))].concat(),
    );
    assert_eq!(r.steps, vec![Step::Handled(Handled::Invalid(OPT_INFO))]);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
