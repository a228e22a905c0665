//! Reply encoders (server) and decoders (client), with golden vectors from
//! the spec's reply layouts.

use vdisk_nbd::client::{decode_reply, Chunk, ChunkHeader, Reply, ReplyHeader};
use vdisk_nbd::consts::*;
use vdisk_nbd::reply::*;
use vdisk_nbd::{BlockDescriptor, EncodeError, Errno, ProtocolError};

const COOKIE: u64 = 0x0102_0304_0506_0708;
const COOKIE_BYTES: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const SMAGIC: [u8; 4] = [0x66, 0x8e, 0x33, 0xef];

#[test]
fn golden_simple_reply() {
    // magic 0x67446698, error EINVAL (22 = 0x16), cookie.
    let h = simple_reply_header(COOKIE, Some(Errno::Inval));
    assert_eq!(
        h,
        [[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0x16], COOKIE_BYTES].concat()[..]
    );
    let mut v = Vec::new();
    write_simple_reply(&mut v, COOKIE, None);
    assert_eq!(
        v,
        [[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0], COOKIE_BYTES].concat()
    );
}

#[test]
fn golden_offset_data() {
    // flags DONE (0x0001), type OFFSET_DATA (1), length 8 + 4 = 12,
    // offset 0x200, then the data.
    let h = offset_data_header(COOKIE, 0x200, 4, true).unwrap();
    let expected = [
        &SMAGIC[..],
        &[0, 1, 0, 1],
        &COOKIE_BYTES,
        &[0, 0, 0, 12],
        &[0, 0, 0, 0, 0, 0, 2, 0],
    ]
    .concat();
    assert_eq!(&h[..], &expected[..]);
    let mut v = Vec::new();
    write_offset_data(&mut v, COOKIE, 0x200, b"abcd", true).unwrap();
    assert_eq!(v, [expected, b"abcd".to_vec()].concat());
    assert_eq!(
        offset_data_header(COOKIE, 0, 0, true),
        Err(EncodeError::EmptyData)
    );
    assert_eq!(
        offset_data_header(COOKIE, 0, u32::MAX as usize - 7, true),
        Err(EncodeError::TooLong)
    );
    assert!(offset_data_header(COOKIE, 0, u32::MAX as usize - 8, true).is_ok());
}

#[test]
fn golden_offset_hole() {
    // flags 0 (not done), type 2, length 12, offset 0x1000, size 0x2000.
    let mut v = Vec::new();
    write_offset_hole(&mut v, COOKIE, 0x1000, 0x2000, false).unwrap();
    let expected = [
        &SMAGIC[..],
        &[0, 0, 0, 2],
        &COOKIE_BYTES,
        &[0, 0, 0, 12],
        &[0, 0, 0, 0, 0, 0, 0x10, 0],
        &[0, 0, 0x20, 0],
    ]
    .concat();
    assert_eq!(v, expected);
    assert_eq!(
        write_offset_hole(&mut v, COOKIE, 0, 0, true),
        Err(EncodeError::EmptyHole)
    );
}

#[test]
fn golden_block_status() {
    // type 5, length 4 + 2*8 = 20, context id 1,
    // (4096, 0) and (8192, HOLE|ZERO = 3).
    let mut v = Vec::new();
    let d = [
        BlockDescriptor {
            length: 4096,
            flags: 0,
        },
        BlockDescriptor {
            length: 8192,
            flags: STATE_HOLE | STATE_ZERO,
        },
    ];
    write_block_status(&mut v, COOKIE, 1, &d, true).unwrap();
    let expected = [
        &SMAGIC[..],
        &[0, 1, 0, 5],
        &COOKIE_BYTES,
        &[0, 0, 0, 20],
        &[0, 0, 0, 1],
        &[0, 0, 0x10, 0, 0, 0, 0, 0],
        &[0, 0, 0x20, 0, 0, 0, 0, 3],
    ]
    .concat();
    assert_eq!(v, expected);
    let mut w = Vec::new();
    assert_eq!(
        write_block_status(&mut w, 1, 1, &[], true),
        Err(EncodeError::NoDescriptors)
    );
    let zero = [BlockDescriptor {
        length: 0,
        flags: 0,
    }];
    assert_eq!(
        write_block_status(&mut w, 1, 1, &zero, true),
        Err(EncodeError::ZeroLengthDescriptor)
    );
    let many = vec![
        BlockDescriptor {
            length: 1,
            flags: 0
        };
        MAX_BLOCK_STATUS_DESCRIPTORS + 1
    ];
    assert_eq!(
        write_block_status(&mut w, 1, 1, &many, true),
        Err(EncodeError::TooManyDescriptors)
    );
    assert!(w.is_empty(), "failed encodes must not write anything");
}

#[test]
fn golden_errors_and_none() {
    // ERROR (0x8001): error EIO (5), message length 3, "bad": length 9.
    let mut v = Vec::new();
    write_error(&mut v, COOKIE, Errno::Io, "bad", true);
    let expected = [
        &SMAGIC[..],
        &[0, 1, 0x80, 1],
        &COOKIE_BYTES,
        &[0, 0, 0, 9],
        &[0, 0, 0, 5],
        &[0, 3],
        b"bad",
    ]
    .concat();
    assert_eq!(v, expected);
    // ERROR_OFFSET (0x8002): + offset 0x10: length 6 + 3 + 8 = 17.
    let mut v = Vec::new();
    write_error_offset(&mut v, COOKIE, Errno::NoSpc, "bad", 0x10, false);
    let expected = [
        &SMAGIC[..],
        &[0, 0, 0x80, 2],
        &COOKIE_BYTES,
        &[0, 0, 0, 17],
        &[0, 0, 0, 28],
        &[0, 3],
        b"bad",
        &[0, 0, 0, 0, 0, 0, 0, 0x10],
    ]
    .concat();
    assert_eq!(v, expected);
    // NONE: flags DONE, type 0, length 0.
    let mut v = Vec::new();
    write_none_done(&mut v, COOKIE);
    assert_eq!(
        v,
        [&SMAGIC[..], &[0, 1, 0, 0], &COOKIE_BYTES, &[0, 0, 0, 0]].concat()
    );
}

#[test]
fn long_error_message_is_cut() {
    let mut v = Vec::new();
    write_error(&mut v, 1, Errno::Io, &"x".repeat(10_000), true);
    assert_eq!(v.len(), CHUNK_HEADER_LEN + 6 + MAX_STRING_LEN);
    match decode_reply(&v, u32::MAX, |_| 0).unwrap().unwrap().0 {
        Reply::Chunk {
            chunk: Chunk::Error { message, .. },
            ..
        } => assert_eq!(message.len(), MAX_STRING_LEN),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------

#[test]
fn encoded_chunks_decode_back() {
    let mut stream = Vec::new();
    write_offset_data(&mut stream, 1, 512, b"hello", false).unwrap();
    write_offset_hole(&mut stream, 1, 0, 512, false).unwrap();
    write_block_status(
        &mut stream,
        2,
        9,
        &[BlockDescriptor {
            length: 7,
            flags: 1,
        }],
        true,
    )
    .unwrap();
    write_error_offset(&mut stream, 1, Errno::Io, "eio", 600, false);
    write_error(&mut stream, 1, Errno::Shutdown, "", false);
    write_none_done(&mut stream, 1);
    write_simple_reply(&mut stream, 3, None);
    stream.extend(b"READDATA");
    write_simple_reply(&mut stream, 4, Some(Errno::Perm));

    let mut chunks = Vec::new();
    let mut pos = 0;
    while pos < stream.len() {
        let (reply, used) = decode_reply(&stream[pos..], 1 << 20, |c| if c == 3 { 8 } else { 0 })
            .unwrap()
            .unwrap();
        chunks.push(format!("{reply:?}"));
        if let Reply::Chunk { header, chunk } = &reply {
            assert_eq!(chunk.errno().is_some(), header.is_error());
        }
        pos += used;
    }
    let expected = [
        "OffsetData { offset: 512, data: [104, 101, 108, 108, 111] }",
        "OffsetHole { offset: 0, length: 512 }",
        "BlockStatus { context_id: 9, descriptors: [BlockDescriptor { length: 7, flags: 1 }] }",
        "Error { chunk_type: 32770, error: 5, message: \"eio\", offset: Some(600) }",
        "Error { chunk_type: 32769, error: 108, message: \"\", offset: None }",
        "chunk: None",
        "Simple { cookie: 3, error: 0, data: [82, 69, 65, 68, 68, 65, 84, 65] }",
        "Simple { cookie: 4, error: 1, data: [] }",
    ];
    for (got, want) in chunks.iter().zip(expected) {
        assert!(got.contains(want), "{got} !~ {want}");
    }
    assert_eq!(chunks.len(), expected.len());
}

#[test]
fn partial_replies_need_more() {
    let mut v = Vec::new();
    write_offset_data(&mut v, 1, 0, b"xyz", true).unwrap();
    for n in 0..v.len() {
        assert_eq!(decode_reply(&v[..n], 1 << 20, |_| 0), Ok(None), "{n}");
    }
    let mut s = Vec::new();
    write_simple_reply(&mut s, 1, None);
    s.extend([1, 2]);
    assert_eq!(decode_reply(&s, 1 << 20, |_| 3), Ok(None));
}

#[test]
fn hostile_replies() {
    // Bad magic.
    assert_eq!(
        decode_reply(&[1, 2, 3, 4], 100, |_| 0),
        Err(ProtocolError::BadReplyMagic(0x0102_0304))
    );
    // Huge chunk length refused before buffering.
    let h = [
        &SMAGIC[..],
        &[0, 0, 0, 1],
        &COOKIE_BYTES,
        &[0xff, 0xff, 0xff, 0xff],
    ]
    .concat();
    assert_eq!(
        decode_reply(&h, 1 << 20, |_| 0),
        Err(ProtocolError::ChunkTooLarge {
            length: u32::MAX,
            limit: 1 << 20
        })
    );
    let chunk = |flags: u16, ty: u16, payload: &[u8]| {
        let mut v = SMAGIC.to_vec();
        v.extend(flags.to_be_bytes());
        v.extend(ty.to_be_bytes());
        v.extend(COOKIE_BYTES);
        v.extend((payload.len() as u32).to_be_bytes());
        v.extend(payload);
        v
    };
    let malformed = [
        chunk(0, REPLY_TYPE_NONE, &[]),                  // NONE without DONE
        chunk(1, REPLY_TYPE_NONE, &[0]),                 // NONE with payload
        chunk(1, REPLY_TYPE_OFFSET_DATA, &[0; 8]),       // no data
        chunk(1, REPLY_TYPE_OFFSET_HOLE, &[0; 11]),      // wrong length
        chunk(1, REPLY_TYPE_OFFSET_HOLE, &[0; 12]),      // zero-size hole
        chunk(1, REPLY_TYPE_BLOCK_STATUS, &[0; 4]),      // no descriptors
        chunk(1, REPLY_TYPE_BLOCK_STATUS, &[0; 13]),     // not 4 + 8n
        chunk(1, REPLY_TYPE_BLOCK_STATUS, &[0; 12]),     // zero-length extent
        chunk(1, REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0]),    // < 6 bytes
        chunk(1, REPLY_TYPE_ERROR, &[0, 0, 0, 0, 0, 0]), // error 0
        chunk(1, REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 9, b'x']), // message too long
        chunk(1, REPLY_TYPE_ERROR_OFFSET, &[0, 0, 0, 5, 0, 0, 1, 2]), // no offset
        chunk(
            1,
            REPLY_TYPE_ERROR_OFFSET,
            &[0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        ), // trailing
    ];
    for m in &malformed {
        assert!(
            matches!(
                decode_reply(m, 1 << 20, |_| 0),
                Err(ProtocolError::MalformedChunk(_))
            ),
            "{m:?}"
        );
    }
    // Unknown non-error type: fatal; unknown error type: a survivable error.
    assert_eq!(
        decode_reply(&chunk(1, 77, &[]), 100, |_| 0),
        Err(ProtocolError::UnknownChunkType(77))
    );
    let unknown_error = chunk(1, 0x8077, &[0, 0, 0, 99, 0, 2, b'h', b'i', 7, 7]);
    let (r, _) = decode_reply(&unknown_error, 100, |_| 0).unwrap().unwrap();
    match r {
        Reply::Chunk { chunk, .. } => {
            assert_eq!(chunk.errno(), Some(Errno::Inval)); // 99 is not a spec value
            assert!(matches!(
                chunk,
                Chunk::Error {
                    chunk_type: 0x8077,
                    error: 99,
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    // Invalid UTF-8 in a message is replaced, not fatal.
    let bad_utf8 = chunk(1, REPLY_TYPE_ERROR, &[0, 0, 0, 5, 0, 1, 0xff]);
    let (r, _) = decode_reply(&bad_utf8, 100, |_| 0).unwrap().unwrap();
    assert!(matches!(
        r,
        Reply::Chunk {
            chunk: Chunk::Error { .. },
            ..
        }
    ));
}

#[test]
fn chunk_parse_checks_payload_length() {
    let h = ChunkHeader {
        flags: 1,
        chunk_type: REPLY_TYPE_NONE,
        cookie: 0,
        length: 5,
    };
    assert!(Chunk::parse(&h, &[]).is_err());
    let (hdr, n) = ReplyHeader::try_parse(&simple_reply_header(9, None))
        .unwrap()
        .unwrap();
    assert_eq!((hdr.cookie(), n), (9, 16));
}
