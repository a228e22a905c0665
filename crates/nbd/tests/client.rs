//! Client handshake: against this crate's server (loopback) and against
//! hand-written server byte streams.

mod common;

use common::*;
use vdisk_nbd::client::{
    abort_option, encode_option, info_option, meta_context_option, ClientConfig, ClientHandshake,
    ClientProgress,
};
use vdisk_nbd::consts::*;
use vdisk_nbd::{
    BlockSize, Entry, Event, HandshakeConfig, HandshakeError, MetaContext, Negotiated, Progress,
    ServerHandshake, TransmissionFlags,
};

/// Runs client and server against each other in memory, delivering bytes
/// `chunk` at a time. Returns both sides' results.
fn loopback(
    client_cfg: ClientConfig,
    server_cfg: HandshakeConfig,
    chunk: usize,
) -> (Result<Negotiated, HandshakeError>, Option<Negotiated>) {
    let mut server = ServerHandshake::new(server_cfg);
    let mut client = ClientHandshake::new(client_cfg);
    let mut to_client = server.initial_bytes();
    let mut to_server: Vec<u8> = Vec::new();
    let mut server_done = None;
    let mut client_done = None;
    for _ in 0..10_000 {
        // Server side: consume what the client sent.
        if server_done.is_none() && !to_server.is_empty() {
            let n = chunk.min(to_server.len());
            let input: Vec<u8> = to_server.drain(..n).collect();
            let mut input = &input[..];
            loop {
                let p = server.feed(input).expect("server failed");
                input = &[];
                match p {
                    Progress::NeedMore => break,
                    Progress::Reply { bytes, .. } => to_client.extend(bytes),
                    Progress::Event(ev) => match respond(&mut server, &ev).unwrap() {
                        Some(b) => to_client.extend(b),
                        None => return (Err(HandshakeError::Misuse("server hung up")), None),
                    },
                    Progress::Done { negotiated, .. } => {
                        server_done = Some(*negotiated);
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        // Client side.
        if client_done.is_none() && !to_client.is_empty() {
            let n = chunk.min(to_client.len());
            let input: Vec<u8> = to_client.drain(..n).collect();
            let mut input = &input[..];
            loop {
                let p = match client.feed(input) {
                    Ok(p) => p,
                    Err(e) => return (Err(e), server_done),
                };
                input = &[];
                match p {
                    ClientProgress::NeedMore => break,
                    ClientProgress::Send(b) => to_server.extend(b),
                    ClientProgress::Done { negotiated, .. } => {
                        client_done = Some(*negotiated);
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        if let (Some(c), Some(_)) = (&client_done, &server_done) {
            return (Ok(c.clone()), server_done);
        }
    }
    panic!("loopback did not converge");
}

#[test]
fn loopback_full_features() {
    for chunk in [1, 3, 7, 1000] {
        let (client, server) =
            loopback(ClientConfig::new("disk"), HandshakeConfig::default(), chunk);
        let client = client.unwrap();
        let server = server.unwrap();
        assert_eq!(client, server, "both sides agree (chunk {chunk})");
        assert!(client.structured_replies);
        assert_eq!(
            client.meta_contexts,
            vec![MetaContext {
                id: 1,
                name: "base:allocation".into()
            }]
        );
        assert_eq!(client.size, EXPORT_SIZE);
        assert_eq!(client.flags, export_flags() | TransmissionFlags::HAS_FLAGS);
        assert_eq!(
            client.block_size,
            Some(BlockSize {
                minimum: 512,
                preferred: 4096,
                maximum: 32 << 20
            })
        );
        assert!(client.block_size_requested);
        assert_eq!(client.entry, Entry::Go);
        assert!(client.no_zeroes);
    }
}

#[test]
fn loopback_without_structured_replies() {
    let server_cfg = HandshakeConfig {
        structured_replies: false,
        advertise_no_zeroes: false,
        ..HandshakeConfig::default()
    };
    let (client, server) = loopback(ClientConfig::new("disk"), server_cfg, 5);
    let client = client.unwrap();
    assert_eq!(Some(&client), server.as_ref());
    assert!(!client.structured_replies);
    assert!(client.meta_contexts.is_empty());
    assert!(!client.no_zeroes);
}

#[test]
fn loopback_minimal_client() {
    let cfg = ClientConfig {
        structured_replies: false,
        request_block_size: false,
        ..ClientConfig::new("disk")
    };
    let (client, server) = loopback(cfg, HandshakeConfig::default(), 64);
    let client = client.unwrap();
    assert_eq!(Some(&client), server.as_ref());
    assert_eq!(client.block_size, None);
    assert!(!client.block_size_requested);
}

#[test]
fn loopback_unknown_export_is_rejected() {
    let (client, _) = loopback(ClientConfig::new("nope"), HandshakeConfig::default(), 64);
    // SET_META_CONTEXT for "nope" fails first (ignored), then GO fails.
    assert_eq!(
        client,
        Err(HandshakeError::Rejected {
            option: OPT_GO,
            reply: REP_ERR_UNKNOWN,
            message: "no such export".into()
        })
    );
}

// ---------------------------------------------------------------------
// Against hand-written server bytes
// ---------------------------------------------------------------------

fn greeting(flags: u16) -> Vec<u8> {
    [
        b"NBDMAGIC".to_vec(),
        b"IHAVEOPT".to_vec(),
        flags.to_be_bytes().to_vec(),
    ]
    .concat()
}

fn rep(option: u32, typ: u32, data: &[u8]) -> Vec<u8> {
    [
        OPTION_REPLY_MAGIC.to_be_bytes().to_vec(),
        option.to_be_bytes().to_vec(),
        typ.to_be_bytes().to_vec(),
        (data.len() as u32).to_be_bytes().to_vec(),
        data.to_vec(),
    ]
    .concat()
}

fn info_export(size: u64, flags: u16) -> Vec<u8> {
    [
        vec![0, 0],
        size.to_be_bytes().to_vec(),
        flags.to_be_bytes().to_vec(),
    ]
    .concat()
}

/// Feeds `server` to a client in one go and collects what it sends.
fn drive(
    cfg: ClientConfig,
    server: &[u8],
) -> (Vec<u8>, Result<Option<Negotiated>, HandshakeError>) {
    let mut c = ClientHandshake::new(cfg);
    let mut sent = Vec::new();
    let mut input = server;
    loop {
        match c.feed(input) {
            Ok(ClientProgress::NeedMore) => return (sent, Ok(None)),
            Ok(ClientProgress::Send(b)) => sent.extend(b),
            Ok(ClientProgress::Done { negotiated, .. }) => return (sent, Ok(Some(*negotiated))),
            Ok(other) => panic!("{other:?}"),
            Err(e) => return (sent, Err(e)),
        }
        input = &[];
    }
}

#[test]
fn golden_client_opening() {
    // Greeting with FIXED_NEWSTYLE|NO_ZEROES -> client flags 0x00000003,
    // then NBD_OPT_STRUCTURED_REPLY (8) with no data.
    let (sent, r) = drive(ClientConfig::new("disk"), &greeting(3));
    assert_eq!(r, Ok(None));
    let expected = [&[0, 0, 0, 3][..], b"IHAVEOPT", &[0, 0, 0, 8], &[0, 0, 0, 0]].concat();
    assert_eq!(sent, expected);
}

#[test]
fn golden_client_options() {
    // NBD_OPT_GO for "disk" with one request (BLOCK_SIZE = 3): data 12 bytes.
    assert_eq!(
        info_option(OPT_GO, "disk", &[INFO_BLOCK_SIZE]),
        [
            &b"IHAVEOPT"[..],
            &[0, 0, 0, 7],
            &[0, 0, 0, 12],
            &[0, 0, 0, 4],
            b"disk",
            &[0, 1],
            &[0, 3]
        ]
        .concat()
    );
    assert_eq!(
        meta_context_option(OPT_SET_META_CONTEXT, "disk", &["base:allocation"]),
        option(
            OPT_SET_META_CONTEXT,
            &meta_data("disk", &["base:allocation"])
        )
    );
    assert_eq!(
        abort_option(),
        [&b"IHAVEOPT"[..], &[0, 0, 0, 2], &[0, 0, 0, 0]].concat()
    );
    assert_eq!(
        encode_option(OPT_EXPORT_NAME, b"x"),
        option(OPT_EXPORT_NAME, b"x")
    );
}

#[test]
fn go_unsupported_falls_back_to_export_name() {
    let cfg = ClientConfig {
        structured_replies: false,
        ..ClientConfig::new("disk")
    };
    // Old server: no NO_ZEROES, GO unsupported, then EXPORT_NAME reply
    // with 124 zeroes.
    let mut server = greeting(1);
    server.extend(rep(OPT_GO, REP_ERR_UNSUP, b""));
    server.extend(77u64.to_be_bytes());
    server.extend(1u16.to_be_bytes());
    server.extend([0u8; 124]);
    let (sent, r) = drive(cfg.clone(), &server);
    let n = r.unwrap().unwrap();
    assert_eq!(
        (n.size, n.entry, n.no_zeroes),
        (77, Entry::ExportName, false)
    );
    assert!(sent.ends_with(&option(OPT_EXPORT_NAME, b"disk")));
    // Missing one zero byte: not done yet.
    let (_, r) = drive(cfg.clone(), &server[..server.len() - 1]);
    assert_eq!(r, Ok(None));
    // Fallback disabled: rejected.
    let no_fallback = ClientConfig {
        fallback_to_export_name: false,
        ..cfg
    };
    assert!(matches!(
        drive(no_fallback, &server).1,
        Err(HandshakeError::Rejected { .. })
    ));
}

#[test]
fn optional_features_refused_by_server() {
    let mut server = greeting(3);
    server.extend(rep(OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, b""));
    server.extend(rep(OPT_GO, REP_INFO, &info_export(5, 1)));
    server.extend(rep(OPT_GO, REP_ACK, b""));
    let n = drive(ClientConfig::new("disk"), &server)
        .1
        .unwrap()
        .unwrap();
    assert!(!n.structured_replies);
    // SET_META_CONTEXT refused -> no contexts, still connects.
    let mut server = greeting(3);
    server.extend(rep(OPT_STRUCTURED_REPLY, REP_ACK, b""));
    server.extend(rep(
        OPT_SET_META_CONTEXT,
        REP_META_CONTEXT,
        &[&[0, 0, 0, 4][..], b"base:allocation"].concat(),
    ));
    server.extend(rep(OPT_SET_META_CONTEXT, REP_ERR_TOO_BIG, b""));
    server.extend(rep(OPT_GO, REP_INFO, &info_export(5, 1)));
    server.extend(rep(OPT_GO, REP_ACK, b""));
    let n = drive(ClientConfig::new("disk"), &server)
        .1
        .unwrap()
        .unwrap();
    assert!(n.structured_replies);
    assert!(n.meta_contexts.is_empty());
}

#[test]
fn unknown_info_is_ignored_and_export_info_is_required() {
    let cfg = ClientConfig {
        structured_replies: false,
        ..ClientConfig::new("disk")
    };
    let mut server = greeting(3);
    server.extend(rep(OPT_GO, REP_INFO, &[0, 99, 1, 2, 3]));
    server.extend(rep(OPT_GO, REP_INFO, &[&[0, 1][..], b"disk"].concat()));
    server.extend(rep(OPT_GO, REP_ACK, b""));
    assert!(matches!(
        drive(cfg.clone(), &server).1,
        Err(HandshakeError::MalformedReply(_))
    ));
    let mut server = greeting(3);
    server.extend(rep(OPT_GO, REP_INFO, &[0, 0, 1]));
    assert!(matches!(
        drive(cfg.clone(), &server).1,
        Err(HandshakeError::MalformedReply(_))
    ));
    let mut server = greeting(3);
    server.extend(rep(
        OPT_GO,
        REP_INFO,
        &[&[0, 3][..], &[0, 0, 0, 3], &[0, 0, 2, 0], &[0, 0, 2, 0]].concat(),
    ));
    assert!(matches!(
        drive(cfg, &server).1,
        Err(HandshakeError::MalformedReply(_))
    ));
}

#[test]
fn hostile_servers() {
    let cfg = || ClientConfig::new("disk");
    let bad_magic = [b"NBDMAGIX".to_vec(), b"IHAVEOPT".to_vec(), vec![0, 3]].concat();
    assert!(matches!(
        drive(cfg(), &bad_magic).1,
        Err(HandshakeError::BadServerMagic(_))
    ));
    let oldstyle = [
        b"NBDMAGIC".to_vec(),
        CLISERV_MAGIC.to_be_bytes().to_vec(),
        vec![0, 0],
    ]
    .concat();
    assert_eq!(
        drive(cfg(), &oldstyle).1,
        Err(HandshakeError::OldstyleServer)
    );
    assert_eq!(
        drive(cfg(), &greeting(0)).1,
        Err(HandshakeError::NotFixedNewstyle)
    );
    // Unknown handshake flags are ignored.
    assert_eq!(drive(cfg(), &greeting(0xfff1)).1, Ok(None));

    let with = |reply: Vec<u8>| [greeting(3), reply].concat();
    let mut wrong_magic = rep(OPT_STRUCTURED_REPLY, REP_ACK, b"");
    wrong_magic[0] = 9;
    assert!(matches!(
        drive(cfg(), &with(wrong_magic)).1,
        Err(HandshakeError::BadReplyMagic(_))
    ));
    assert_eq!(
        drive(cfg(), &with(rep(OPT_GO, REP_ACK, b""))).1,
        Err(HandshakeError::ReplyForWrongOption {
            expected: OPT_STRUCTURED_REPLY,
            got: OPT_GO
        })
    );
    assert_eq!(
        drive(cfg(), &with(rep(OPT_STRUCTURED_REPLY, REP_SERVER, b""))).1,
        Err(HandshakeError::UnexpectedReply {
            option: OPT_STRUCTURED_REPLY,
            reply: REP_SERVER
        })
    );
    assert_eq!(
        drive(
            cfg(),
            &with(rep(OPT_STRUCTURED_REPLY, REP_ERR_SHUTDOWN, b""))
        )
        .1,
        Err(HandshakeError::ServerShutdown)
    );
    // A huge reply length is refused from the header alone.
    let mut huge = rep(OPT_STRUCTURED_REPLY, REP_ACK, b"");
    huge[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        drive(cfg(), &with(huge)).1,
        Err(HandshakeError::ReplyTooLarge(u32::MAX))
    );
    // Duplicate context ids.
    let ctx = rep(
        OPT_SET_META_CONTEXT,
        REP_META_CONTEXT,
        &[&[0, 0, 0, 1][..], b"base:allocation"].concat(),
    );
    let dup = [rep(OPT_STRUCTURED_REPLY, REP_ACK, b""), ctx.clone(), ctx].concat();
    assert!(matches!(
        drive(cfg(), &with(dup)).1,
        Err(HandshakeError::MalformedReply(_))
    ));
    // After an error, the handshake is over.
    let mut c = ClientHandshake::new(cfg());
    assert!(c.feed(&bad_magic).is_err());
    assert!(matches!(c.feed(&[]), Err(HandshakeError::Misuse(_))));
}

#[test]
fn server_event_matches_client_request() {
    // The server sees exactly what the client asked for.
    let mut server = ServerHandshake::new(HandshakeConfig::default());
    let mut client = ClientHandshake::new(ClientConfig {
        structured_replies: false,
        ..ClientConfig::new("disk")
    });
    let ClientProgress::Send(bytes) = client.feed(&server.initial_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(
        server.feed(&bytes).unwrap(),
        Progress::Event(Event::Info {
            export: "disk".into(),
            requests: vec![INFO_BLOCK_SIZE],
            go: true
        })
    );
}
