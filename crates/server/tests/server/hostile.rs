//! Clients that break the rules, on raw sockets: each must get an error
//! reply or lose its own connection, never crash the server or disturb
//! other clients. Every test ends by checking that a well-behaved client
//! is still served.

use crate::common::*;
use crate::raw::{closed_by_peer, handshake, Raw};
use std::io::{Read, Write};
use std::sync::Barrier;
use vdisk_nbd::client::{encode_option, ClientConfig};
use vdisk_nbd::consts::*;
use vdisk_nbd::{Command, CommandFlags};

/// A well-behaved client can still read and write.
fn still_serving(server: &TestServer) {
    let mut c = Raw::tcp(server.port, "rbd/blank");
    let data = pattern(42, 8192);
    c.write(60 * M, &data);
    assert_eq!(c.read(60 * M, 8192), data);
    c.flush();
    c.disconnect();
    let mut u = Raw::unix(&server.socket, "img");
    assert_eq!(u.read(0, 4096), content(&server.store, "img")[..4096]);
    u.disconnect();
}

/// Reads the 18-byte greeting and sends the client flags.
fn start_handshake<S: Read + Write>(s: &mut S) {
    let mut greeting = [0u8; GREETING_LEN];
    s.read_exact(&mut greeting).expect("greeting");
    assert_eq!(&greeting[..8], &NBDMAGIC.to_be_bytes());
    s.write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
        .expect("flags");
}

/// Reads one option reply: (option, reply type, data).
fn option_reply<S: Read>(s: &mut S) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; OPTION_REPLY_HEADER_LEN];
    s.read_exact(&mut h).expect("option reply");
    assert_eq!(&h[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    let option = u32::from_be_bytes(h[8..12].try_into().expect("4"));
    let ty = u32::from_be_bytes(h[12..16].try_into().expect("4"));
    let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).expect("option data");
    (option, ty, data)
}

#[test]
fn bad_magic_closes_only_that_connection() {
    let server = TestServer::start();
    // A client speaking transmission while the others are connected.
    let mut bystander = Raw::tcp(server.port, "rbd/img");
    // Garbage instead of an option.
    let mut s = server.connect();
    start_handshake(&mut s);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    assert!(closed_by_peer(&mut s));
    // Garbage before the client flags (unknown flag bits).
    let mut s = server.connect();
    let mut greeting = [0u8; GREETING_LEN];
    s.read_exact(&mut greeting).expect("greeting");
    s.write_all(&[0xff; 64]).expect("send");
    assert!(closed_by_peer(&mut s));
    // A bad request magic in transmission.
    let mut c = Raw::tcp(server.port, "rbd/img");
    c.stream
        .write_all(&[0x42; REQUEST_HEADER_LEN])
        .expect("send");
    assert!(closed_by_peer(&mut c.stream));
    // The bystander is unaffected.
    assert_eq!(
        bystander.read(0, 4096),
        content(&server.store, "img")[..4096]
    );
    bystander.disconnect();
    still_serving(&server);
}

#[test]
fn unknown_and_oversized_options() {
    let server = TestServer::start();
    let mut s = server.connect();
    start_handshake(&mut s);
    // Unknown option: refused, the handshake goes on.
    s.write_all(&encode_option(0x4242, b"junk")).expect("send");
    let (opt, ty, _) = option_reply(&mut s);
    assert_eq!((opt, ty), (0x4242, REP_ERR_UNSUP));
    // STARTTLS: not supported (no TLS yet), the handshake goes on.
    s.write_all(&encode_option(OPT_STARTTLS, b""))
        .expect("send");
    assert_eq!(option_reply(&mut s).1, REP_ERR_UNSUP);
    // Option data over the read limit but under the discard limit: skipped
    // and answered TOO_BIG.
    s.write_all(&encode_option(OPT_LIST, &vec![0u8; 200 * 1024]))
        .expect("send");
    assert_eq!(option_reply(&mut s).1, REP_ERR_TOO_BIG);
    // Still usable: LIST answers servers then ACK.
    s.write_all(&encode_option(OPT_LIST, b"")).expect("send");
    let mut names = Vec::new();
    loop {
        let (_, ty, data) = option_reply(&mut s);
        if ty == REP_ACK {
            break;
        }
        assert_eq!(ty, REP_SERVER);
        let len = u32::from_be_bytes(data[..4].try_into().expect("4")) as usize;
        names.push(String::from_utf8(data[4..4 + len].to_vec()).expect("utf8"));
    }
    assert!(names.iter().any(|n| n == "rbd/img@s1"), "{names:?}");
    // GO for an unknown export: an error reply with a message, not a hang-up.
    let mut go = Vec::new();
    go.extend_from_slice(&11u32.to_be_bytes());
    go.extend_from_slice(b"rbd/nothere");
    go.extend_from_slice(&0u16.to_be_bytes());
    s.write_all(&encode_option(OPT_GO, &go)).expect("send");
    let (_, ty, msg) = option_reply(&mut s);
    assert_eq!(ty, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&msg).contains("does not exist"));
    // An option claiming 4 GiB of data: the server hangs up.
    let mut huge = Vec::new();
    huge.extend_from_slice(&IHAVEOPT.to_be_bytes());
    huge.extend_from_slice(&OPT_GO.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&huge).expect("send");
    assert!(closed_by_peer(&mut s));
    // Old-style EXPORT_NAME of an unknown export: the spec says hang up.
    let mut s = server.connect();
    start_handshake(&mut s);
    s.write_all(&encode_option(OPT_EXPORT_NAME, b"nope"))
        .expect("send");
    assert!(closed_by_peer(&mut s));
    still_serving(&server);
}

#[test]
fn export_name_and_simple_replies() {
    let server = TestServer::start();
    // Old clients: NBD_OPT_EXPORT_NAME, no structured replies.
    let mut s = server.connect();
    start_handshake(&mut s);
    s.write_all(&encode_option(OPT_EXPORT_NAME, b"other/disk"))
        .expect("send");
    let mut answer = [0u8; 10];
    s.read_exact(&mut answer).expect("export info");
    assert_eq!(u64::from_be_bytes(answer[..8].try_into().expect("8")), M);
    // A READ gets a simple reply with the data.
    let read = vdisk_nbd::RequestHeader {
        flags: CommandFlags::empty(),
        command: Command::Read,
        cookie: 7,
        offset: 4096,
        length: 4096,
    };
    s.write_all(&read.encode()).expect("send");
    let mut reply = vec![0u8; SIMPLE_REPLY_HEADER_LEN + 4096];
    s.read_exact(&mut reply).expect("reply");
    assert_eq!(&reply[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&reply[4..8], &0u32.to_be_bytes());
    assert_eq!(
        &reply[SIMPLE_REPLY_HEADER_LEN..],
        &content(&server.store, "other/disk")[4096..8192]
    );

    // GO without structured replies: simple replies, no block status. And
    // without asking for block sizes: then unaligned requests are served.
    let mut cfg = ClientConfig::new("rbd/img");
    cfg.structured_replies = false;
    cfg.request_block_size = false;
    let mut c = Raw::tcp_with(server.port, cfg).expect("handshake");
    assert!(!c.negotiated.structured_replies);
    assert_eq!(
        c.read(M - 100, 200),
        content(&server.store, "img")[M as usize - 100..][..200]
    );
    let done = c.call(Command::BlockStatus, CommandFlags::empty(), 0, 4096, &[]);
    assert_eq!(done.error, Some(EINVAL));
    c.disconnect();
    still_serving(&server);
}

#[test]
fn bad_requests_get_errors_and_the_connection_survives() {
    let server = TestServer::start_with(vdisk_server::Limits {
        max_payload: M as u32,
        ..Default::default()
    });
    let mut c = Raw::tcp(server.port, "rbd/img");
    assert!(c.negotiated.structured_replies);
    let expect = |c: &mut Raw,
                  cmd: Command,
                  flags: CommandFlags,
                  off: u64,
                  len: u32,
                  payload: &[u8],
                  errno: u32| {
        let done = c.call(cmd, flags, off, len, payload);
        assert_eq!(
            done.error,
            Some(errno),
            "{cmd:?} {off}+{len}: {}",
            done.message
        );
    };
    let none = CommandFlags::empty();
    // Out of range: reads and block status EINVAL, writes ENOSPC.
    expect(&mut c, Command::Read, none, SIZE - 4096, 8192, &[], EINVAL);
    expect(
        &mut c,
        Command::Read,
        none,
        u64::MAX - 10,
        4096,
        &[],
        EINVAL,
    );
    expect(&mut c, Command::BlockStatus, none, SIZE, 4096, &[], EINVAL);
    expect(&mut c, Command::Trim, none, SIZE - 4096, 8192, &[], EINVAL);
    expect(&mut c, Command::WriteZeroes, none, SIZE, 4096, &[], ENOSPC);
    // A refused WRITE's payload is read and dropped: the next request is
    // parsed where it starts.
    expect(
        &mut c,
        Command::Write,
        none,
        SIZE - 4096,
        8192,
        &[0xaa; 8192],
        ENOSPC,
    );
    // Larger than the maximum payload (1 MiB here) but not worth a
    // disconnect: refused, payload skipped.
    let big = vec![0xbb; 2 * M as usize];
    expect(
        &mut c,
        Command::Write,
        none,
        0,
        big.len() as u32,
        &big,
        EINVAL,
    );
    // Huge lengths: READ over the payload limit is EOVERFLOW (structured).
    expect(&mut c, Command::Read, none, 0, u32::MAX, &[], EOVERFLOW);
    // Huge effect lengths are fine for TRIM/WRITE_ZEROES if in range, but
    // not beyond the end.
    expect(&mut c, Command::WriteZeroes, none, 0, u32::MAX, &[], ENOSPC);
    // Unknown command, bad flags, misaligned (the client asked for block
    // sizes: minimum 512).
    expect(&mut c, Command::Unknown(99), none, 0, 0, &[], EINVAL);
    expect(
        &mut c,
        Command::Read,
        CommandFlags::REQ_ONE,
        0,
        4096,
        &[],
        EINVAL,
    );
    expect(
        &mut c,
        Command::Read,
        CommandFlags::from_bits(0x8000),
        0,
        4096,
        &[],
        EINVAL,
    );
    expect(&mut c, Command::Read, none, 100, 4096, &[], EINVAL);
    // The error chunk says why.
    let done = c.call(Command::Read, none, SIZE, 4096, &[]);
    assert!(
        done.message.contains("beyond the export size"),
        "{}",
        done.message
    );
    // And the connection still works; nothing was written.
    assert_eq!(c.read(0, 8192), content(&server.store, "img")[..8192]);
    assert_eq!(
        c.read(SIZE - 4096, 4096),
        content(&server.store, "img")[(SIZE - 4096) as usize..]
    );
    // Zero-length requests are no-ops.
    assert_eq!(c.call(Command::Write, none, 0, 0, &[]).error, None);
    assert_eq!(c.call(Command::Read, none, 0, 0, &[]).error, None);
    c.disconnect();

    // Writes to a snapshot: EPERM from the server itself.
    let mut snap = Raw::tcp(server.port, "img@s1");
    expect(&mut snap, Command::Write, none, 0, 4096, &[1; 4096], EPERM);
    // TRIM is not even advertised on a read-only export.
    expect(&mut snap, Command::Trim, none, 0, 4096, &[], EINVAL);
    assert_eq!(snap.read(0, 4096), pattern(1, 4096));
    snap.disconnect();

    // A WRITE whose payload is over every limit (64 MiB): disconnect.
    let mut c = Raw::tcp(server.port, "rbd/img");
    let header = vdisk_nbd::RequestHeader {
        flags: none,
        command: Command::Write,
        cookie: 1,
        offset: 0,
        length: 64 << 20,
    };
    c.stream.write_all(&header.encode()).expect("send");
    assert!(closed_by_peer(&mut c.stream));
    still_serving(&server);
}

#[test]
fn pipelined_requests_complete_in_any_order() {
    let server = TestServer::start();
    let mut c = Raw::tcp(server.port, "rbd/blank");
    let flags = CommandFlags::empty();
    // 100 writes of distinct patterns in flight at once, then reads, block
    // status and a flush, all pipelined.
    for i in 0..100u64 {
        let data = pattern(i, 32 * 1024);
        c.send(Command::Write, flags, i, i * 64 * K, 32 * 1024, &data)
            .expect("send");
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let done = c.recv().expect("reply");
        assert_eq!(done.error, None, "{}", done.message);
        assert!(seen.insert(done.cookie));
    }
    for i in 0..100u64 {
        c.send(Command::Read, flags, 1000 + i, i * 64 * K, 64 * 1024, &[])
            .expect("send");
    }
    c.send(
        Command::BlockStatus,
        flags,
        5000,
        0,
        64 * K as u32 * 100,
        &[],
    )
    .expect("send");
    c.send(Command::Flush, flags, 5001, 0, 0, &[])
        .expect("send");
    for _ in 0..102 {
        let done = c.recv().expect("reply");
        assert_eq!(done.error, None, "{}", done.message);
        match done.cookie {
            5000 => {
                // data 32 KiB, hole 32 KiB, 100 times.
                assert_eq!(done.extents.len(), 200);
                assert!(done.extents.chunks(2).all(|p| p[0].flags == 0
                    && p[0].length == 32 * 1024
                    && p[1].flags == STATE_HOLE | STATE_ZERO));
            }
            5001 => {}
            cookie => {
                let i = cookie - 1000;
                assert_eq!(done.data[..32 * 1024], pattern(i, 32 * 1024)[..]);
                assert!(done.data[32 * 1024..].iter().all(|b| *b == 0));
            }
        }
    }
    // A read starting in a hole: hole, data, hole, data chunks (the data
    // is laid out aligned after the first hole chunk).
    let done = c.call(Command::Read, flags, 32 * K, 128 * 1024, &[]);
    assert_eq!(done.error, None, "{}", done.message);
    let k32 = 32 * 1024;
    assert!(done.data[..k32].iter().all(|b| *b == 0));
    assert_eq!(done.data[k32..2 * k32], pattern(1, k32)[..]);
    assert!(done.data[2 * k32..3 * k32].iter().all(|b| *b == 0));
    assert_eq!(done.data[3 * k32..], pattern(2, k32)[..]);
    // BLOCK_STATUS with REQ_ONE: one extent.
    let done = c.call(
        Command::BlockStatus,
        CommandFlags::REQ_ONE,
        0,
        M as u32,
        &[],
    );
    assert_eq!(done.extents.len(), 1);
    assert_eq!(done.extents[0].length, 32 * 1024);
    c.disconnect();
    // The engine sees all of it.
    let blank = content(&server.store, "blank");
    for i in 0..100u64 {
        let at = (i * 64 * K) as usize;
        assert_eq!(blank[at..at + 32 * 1024], pattern(i, 32 * 1024)[..]);
    }
}

#[test]
fn disconnect_completes_requests_in_flight() {
    let server = TestServer::start();
    let mut c = Raw::tcp(server.port, "rbd/blank");
    // Writes, then DISC right behind them, before any reply was read: the
    // server must still execute and answer every one, then close.
    for i in 0..32u64 {
        let data = pattern(500 + i, 64 * 1024);
        c.send(
            Command::Write,
            CommandFlags::empty(),
            i,
            40 * M + i * 64 * K,
            64 * 1024,
            &data,
        )
        .expect("send");
    }
    c.send_disc();
    for _ in 0..32 {
        let done = c.recv().expect("reply before the close");
        assert_eq!(done.error, None);
    }
    assert!(closed_by_peer(&mut c.stream));
    let blank = content(&server.store, "blank");
    for i in 0..32u64 {
        let at = (40 * M + i * 64 * K) as usize;
        assert_eq!(blank[at..at + 64 * 1024], pattern(500 + i, 64 * 1024)[..]);
    }
}

#[test]
fn clients_vanishing_mid_request() {
    let server = TestServer::start();
    let before = content(&server.store, "img");
    // Mid WRITE payload: half of 1 MiB sent, then gone.
    let mut c = Raw::tcp(server.port, "rbd/img");
    let header = vdisk_nbd::RequestHeader {
        flags: CommandFlags::empty(),
        command: Command::Write,
        cookie: 1,
        offset: 0,
        length: M as u32,
    };
    c.stream.write_all(&header.encode()).expect("send");
    c.stream.write_all(&vec![0xee; 512 * 1024]).expect("send");
    drop(c);
    // Mid header.
    let mut c = Raw::tcp(server.port, "rbd/img");
    c.stream.write_all(&header.encode()[..10]).expect("send");
    drop(c);
    // With many large reads in flight, never reading the replies.
    let mut c = Raw::tcp(server.port, "rbd/img");
    for i in 0..64 {
        c.send(
            Command::Read,
            CommandFlags::empty(),
            i,
            0,
            4 * M as u32,
            &[],
        )
        .expect("send");
    }
    drop(c);
    // Mid handshake.
    let mut s = server.connect();
    start_handshake(&mut s);
    s.write_all(&IHAVEOPT.to_be_bytes()).expect("send");
    drop(s);
    // Nothing half-written reached the image.
    assert!(content(&server.store, "img") == before);
    still_serving(&server);
}

#[test]
fn a_client_that_stops_reading_stalls_only_itself() {
    let server = TestServer::start();
    let expected = content(&server.store, "img@s1");
    // 256 MiB of reads, 4 times the connection's buffer budget, and not a
    // reply read: its socket fills, its replies wait holding the budget,
    // and the server stops reading its requests.
    let mut stalled = Raw::tcp(server.port, "rbd/img@s1");
    for i in 0..64u64 {
        let offset = (i % 16) * 4 * M;
        stalled
            .send(
                Command::Read,
                CommandFlags::empty(),
                i,
                offset,
                4 * M as u32,
                &[],
            )
            .expect("send");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Meanwhile everyone else is served: the engine workers never wait
    // for a client's socket.
    for _ in 0..3 {
        still_serving(&server);
    }
    // Reading at last, the stalled client gets every reply, whole.
    for _ in 0..64 {
        let done = stalled.recv().expect("reply");
        assert_eq!(done.error, None, "{}", done.message);
        let offset = ((done.cookie % 16) * 4 * M) as usize;
        assert!(done.data == expected[offset..offset + 4 * M as usize]);
    }
    stalled.disconnect();
    still_serving(&server);
}

#[test]
fn many_concurrent_connections() {
    const CLIENTS: u64 = 64;
    let server = TestServer::start();
    let barrier = Barrier::new(CLIENTS as usize);
    std::thread::scope(|scope| {
        for i in 0..CLIENTS {
            let (server, barrier) = (&server, &barrier);
            scope.spawn(move || {
                let mut c = if i % 2 == 0 {
                    Raw::tcp(server.port, "rbd/blank")
                } else {
                    Raw::unix(&server.socket, "blank")
                };
                // All connected before anyone does I/O.
                barrier.wait();
                let region = i * M;
                for round in 0..4u64 {
                    let data = pattern(i * 100 + round, 64 * 1024);
                    let off = region + round * 128 * K;
                    c.write(off, &data);
                    assert_eq!(c.read(off, 64 * 1024), data);
                }
                let done = c.call(
                    Command::WriteZeroes,
                    CommandFlags::FUA,
                    region + 64 * K,
                    64 * K as u32,
                    &[],
                );
                assert_eq!(done.error, None);
                c.flush();
                c.disconnect();
            });
        }
    });
    let blank = content(&server.store, "blank");
    for i in 0..CLIENTS {
        for round in 0..4u64 {
            let at = (i * M + round * 128 * K) as usize;
            assert_eq!(
                blank[at..at + 64 * 1024],
                pattern(i * 100 + round, 64 * 1024)[..]
            );
        }
    }
    still_serving(&server);
    if crate::common::have("qemu-img") {
        run(std::process::Command::new("qemu-img").args(["info", &server.tcp("img")]));
    }
}

#[test]
fn connection_limit_refuses_the_excess() {
    let server = TestServer::start_with(vdisk_server::Limits {
        max_connections: 2,
        ..Default::default()
    });
    let a = Raw::tcp(server.port, "img");
    let b = Raw::unix(&server.socket, "img");
    // A third is accepted and closed at once.
    let mut c = server.connect();
    assert!(closed_by_peer(&mut c));
    a.disconnect();
    b.disconnect();
    // Slots are released when connections end.
    let mut ok = None;
    for _ in 0..50 {
        match Raw::tcp_with(server.port, ClientConfig::new("img")) {
            Ok(c) => {
                ok = Some(c);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    ok.expect("a slot was freed").disconnect();
}

#[test]
fn handshake_timeout_closes_idle_clients() {
    let server = TestServer::start_with(vdisk_server::Limits {
        handshake_timeout: std::time::Duration::from_millis(300),
        ..Default::default()
    });
    let mut s = server.connect();
    let mut greeting = [0u8; GREETING_LEN];
    s.read_exact(&mut greeting).expect("greeting");
    let t = std::time::Instant::now();
    assert!(closed_by_peer(&mut s));
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    // A normal handshake is well within it.
    let mut ok = server.connect();
    handshake(&mut ok, ClientConfig::new("img")).expect("handshake");
}

/// A client reading a snapshot pins it: removing the snapshot through the
/// engine (no CLI check in front) is refused while the client is connected
/// and works once it is gone — the data is never released under a reader.
#[test]
fn a_connected_snapshot_reader_holds_snap_rm_off() {
    let server = TestServer::start();
    server.store.snap_create(&spec("img@pin")).unwrap();
    let want = content(&server.store, "img@pin");
    let mut c = Raw::tcp(server.port, "rbd/img@pin");
    let e = server
        .store
        .snap_remove(&spec("img@pin"), &vdisk_engine::NoProgress)
        .unwrap_err();
    assert!(e.to_string().contains("being read by 1 client"), "{e}");
    assert_eq!(c.read(0, 64 * 1024), want[..64 * 1024]);
    c.disconnect();
    // The server drops the handle when it sees the disconnect.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match server
            .store
            .snap_remove(&spec("img@pin"), &vdisk_engine::NoProgress)
        {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("being read"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("snapshot still pinned 10 s after the disconnect: {e}"),
        }
    }
    still_serving(&server);
}
