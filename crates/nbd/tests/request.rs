//! Request header decoding and validation.

use vdisk_nbd::consts::*;
use vdisk_nbd::{
    BlockSize, Command, CommandFlags, Entry, Errno, ExportContext, Negotiated, ProtocolError,
    RequestHeader, TransmissionFlags,
};

/// Golden READ request, from the spec's request layout:
/// magic 0x25609513, flags FUA (bit 0), type READ (0),
/// cookie 0x0102030405060708, offset 0x1000, length 0x200.
const READ_FUA: [u8; 28] = [
    0x25, 0x60, 0x95, 0x13, // NBD_REQUEST_MAGIC
    0x00, 0x01, // command flags: FUA
    0x00, 0x00, // NBD_CMD_READ
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // cookie
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, // offset 4096
    0x00, 0x00, 0x02, 0x00, // length 512
];

fn req(command: Command, flags: CommandFlags, offset: u64, length: u32) -> RequestHeader {
    RequestHeader {
        flags,
        command,
        cookie: 7,
        offset,
        length,
    }
}

fn all_flags() -> TransmissionFlags {
    TransmissionFlags::HAS_FLAGS
        | TransmissionFlags::SEND_FLUSH
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_DF
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_CACHE
}

fn ctx() -> ExportContext {
    ExportContext {
        structured_replies: true,
        meta_contexts: 1,
        ..ExportContext::new(1 << 20, all_flags())
    }
}

#[test]
fn golden_parse_and_encode() {
    let h = RequestHeader::parse(&READ_FUA).unwrap();
    assert_eq!(
        h,
        RequestHeader {
            flags: CommandFlags::FUA,
            command: Command::Read,
            cookie: 0x0102_0304_0506_0708,
            offset: 4096,
            length: 512
        }
    );
    assert_eq!(h.encode(), READ_FUA);
    assert_eq!(h.payload_len(), 0);
    assert!(h.expects_reply());
}

#[test]
fn bad_magic() {
    let mut b = READ_FUA;
    b[0] = 0x26;
    assert_eq!(
        RequestHeader::parse(&b),
        Err(ProtocolError::BadRequestMagic(0x2660_9513))
    );
    // Extended-header magic is not negotiated, hence also refused.
    b[..4].copy_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
    assert!(RequestHeader::parse(&b).is_err());
}

#[test]
fn try_parse_partial() {
    for n in 0..28 {
        assert_eq!(RequestHeader::try_parse(&READ_FUA[..n]), Ok(None));
    }
    let mut more = READ_FUA.to_vec();
    more.extend([9, 9, 9]);
    assert!(RequestHeader::try_parse(&more).unwrap().is_some());
}

#[test]
fn unknown_command_and_flags_decode_fine() {
    let mut b = READ_FUA;
    b[4..6].copy_from_slice(&0xffffu16.to_be_bytes());
    b[6..8].copy_from_slice(&0x1234u16.to_be_bytes());
    let h = RequestHeader::parse(&b).unwrap();
    assert_eq!(h.command, Command::Unknown(0x1234));
    assert_eq!(h.flags.bits(), 0xffff);
    assert_eq!(h.flags.unknown(), 0xffe0);
    assert_eq!(h.encode(), b);
    assert_eq!(h.validate(&ctx()), Err(Errno::Inval));
}

#[test]
fn payload_len_only_for_write() {
    assert_eq!(
        req(Command::Write, CommandFlags::empty(), 0, 99).payload_len(),
        99
    );
    for c in [
        Command::Read,
        Command::Trim,
        Command::WriteZeroes,
        Command::Cache,
        Command::BlockStatus,
    ] {
        assert_eq!(req(c, CommandFlags::empty(), 0, 99).payload_len(), 0);
    }
    assert!(!req(Command::Disconnect, CommandFlags::empty(), 0, 0).expects_reply());
}

#[test]
fn check_payload_limits_writes() {
    let w = req(Command::Write, CommandFlags::empty(), 0, u32::MAX);
    assert_eq!(
        w.check_payload(DEFAULT_MAX_PAYLOAD),
        Err(ProtocolError::PayloadTooLarge {
            length: u32::MAX,
            limit: DEFAULT_MAX_PAYLOAD
        })
    );
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 0, u32::MAX).check_payload(0),
        Ok(())
    );
    let mut c = ctx();
    c.max_payload = 4096;
    assert_eq!(c.disconnect_limit(), DEFAULT_MAX_PAYLOAD);
}

#[test]
fn valid_requests_pass() {
    let c = ctx();
    let ok = [
        req(Command::Read, CommandFlags::FUA, 0, 4096),
        req(Command::Read, CommandFlags::DF, 4096, 4096),
        req(Command::Write, CommandFlags::FUA, (1 << 20) - 512, 512),
        req(Command::Flush, CommandFlags::empty(), 0, 0),
        req(Command::Flush, CommandFlags::empty(), 77, 88), // junk tolerated
        req(Command::Trim, CommandFlags::FUA, 0, 1 << 20),
        req(
            Command::WriteZeroes,
            CommandFlags::NO_HOLE | CommandFlags::FAST_ZERO,
            0,
            1 << 20,
        ),
        req(Command::Cache, CommandFlags::empty(), 0, 1 << 20),
        req(Command::BlockStatus, CommandFlags::REQ_ONE, 0, 1 << 20),
        req(Command::Disconnect, CommandFlags::from_bits(0xffff), 1, 1),
        // zero-length read/write at the very end: allowed no-ops
        req(Command::Read, CommandFlags::empty(), 1 << 20, 0),
        req(Command::Write, CommandFlags::empty(), 0, 0),
    ];
    for r in ok {
        assert_eq!(r.validate(&c), Ok(()), "{r:?}");
    }
}

#[test]
fn flags_not_valid_for_command() {
    let c = ctx();
    let bad = [
        req(Command::Read, CommandFlags::NO_HOLE, 0, 1),
        req(Command::Read, CommandFlags::REQ_ONE, 0, 1),
        req(Command::Write, CommandFlags::DF, 0, 1),
        req(Command::Write, CommandFlags::FAST_ZERO, 0, 1),
        req(Command::Trim, CommandFlags::NO_HOLE, 0, 1),
        req(Command::BlockStatus, CommandFlags::DF, 0, 1),
        req(Command::Cache, CommandFlags::from_bits(1 << 9), 0, 1),
        req(Command::Flush, CommandFlags::from_bits(1 << 5), 0, 0),
    ];
    for r in bad {
        assert_eq!(r.validate(&c), Err(Errno::Inval), "{r:?}");
    }
}

#[test]
fn flags_need_advertising() {
    let mut c = ctx();
    c.flags = TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_WRITE_ZEROES;
    assert_eq!(
        req(Command::Write, CommandFlags::FUA, 0, 1).validate(&c),
        Err(Errno::Inval)
    );
    assert_eq!(
        req(Command::Read, CommandFlags::DF, 0, 1).validate(&c),
        Err(Errno::Inval)
    );
    assert_eq!(
        req(Command::WriteZeroes, CommandFlags::FAST_ZERO, 0, 1).validate(&c),
        Err(Errno::Inval)
    );
    assert_eq!(
        req(Command::WriteZeroes, CommandFlags::NO_HOLE, 0, 1).validate(&c),
        Ok(())
    );
    // DF also needs structured replies.
    let mut c = ctx();
    c.structured_replies = false;
    assert_eq!(
        req(Command::Read, CommandFlags::DF, 0, 1).validate(&c),
        Err(Errno::Inval)
    );
}

#[test]
fn commands_need_advertising() {
    let c = ExportContext::new(1 << 20, TransmissionFlags::HAS_FLAGS);
    for cmd in [
        Command::Flush,
        Command::Trim,
        Command::WriteZeroes,
        Command::BlockStatus,
        Command::Resize,
    ] {
        assert_eq!(
            req(cmd, CommandFlags::empty(), 0, 1).validate(&c),
            Err(Errno::Inval),
            "{cmd:?}"
        );
    }
    // CACHE is accepted unadvertised (clients send it anyway).
    assert_eq!(
        req(Command::Cache, CommandFlags::empty(), 0, 1).validate(&c),
        Ok(())
    );
    // BLOCK_STATUS needs both structured replies and a context.
    let mut c = ctx();
    c.meta_contexts = 0;
    assert_eq!(
        req(Command::BlockStatus, CommandFlags::empty(), 0, 1).validate(&c),
        Err(Errno::Inval)
    );
    // RESIZE passes through when advertised (the caller implements it).
    let mut c = ctx();
    c.flags |= TransmissionFlags::SEND_RESIZE;
    assert_eq!(
        req(Command::Resize, CommandFlags::empty(), 1 << 40, 0).validate(&c),
        Ok(())
    );
}

#[test]
fn read_only_export() {
    let mut c = ctx();
    c.flags |= TransmissionFlags::READ_ONLY;
    for cmd in [Command::Write, Command::WriteZeroes, Command::Trim] {
        assert_eq!(
            req(cmd, CommandFlags::empty(), 0, 1).validate(&c),
            Err(Errno::Perm),
            "{cmd:?}"
        );
        // EPERM wins over out-of-range.
        assert_eq!(
            req(cmd, CommandFlags::empty(), 1 << 30, 1).validate(&c),
            Err(Errno::Perm)
        );
    }
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 0, 1).validate(&c),
        Ok(())
    );
    assert_eq!(
        req(Command::Flush, CommandFlags::empty(), 0, 0).validate(&c),
        Ok(())
    );
}

#[test]
fn out_of_range() {
    let c = ctx();
    let size = 1u64 << 20;
    let cases = [
        (Command::Write, Errno::NoSpc),
        (Command::WriteZeroes, Errno::NoSpc),
        (Command::Read, Errno::Inval),
        (Command::Trim, Errno::Inval),
        (Command::Cache, Errno::Inval),
        (Command::BlockStatus, Errno::Inval),
    ];
    for (cmd, errno) in cases {
        assert_eq!(
            req(cmd, CommandFlags::empty(), size - 1, 2).validate(&c),
            Err(errno),
            "{cmd:?}"
        );
        assert_eq!(
            req(cmd, CommandFlags::empty(), size + 1, 0).validate(&c),
            Err(errno),
            "{cmd:?}"
        );
        // offset + length overflows u64
        assert_eq!(
            req(cmd, CommandFlags::empty(), u64::MAX, 2).validate(&c),
            Err(errno),
            "{cmd:?}"
        );
        assert_eq!(
            req(cmd, CommandFlags::empty(), size - 1, 1).validate(&c),
            Ok(()),
            "{cmd:?}"
        );
    }
    // A huge-sized export does not overflow either.
    let big = ExportContext::new(u64::MAX, all_flags());
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), u64::MAX - 1, 1).validate(&big),
        Ok(())
    );
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), u64::MAX, 1).validate(&big),
        Err(Errno::Inval)
    );
}

#[test]
fn payload_limits() {
    let mut c = ctx();
    c.size = u64::MAX;
    let max = c.max_payload;
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 0, max).validate(&c),
        Ok(())
    );
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 0, max + 1).validate(&c),
        Err(Errno::Overflow)
    );
    assert_eq!(
        req(Command::Write, CommandFlags::empty(), 0, max + 1).validate(&c),
        Err(Errno::Inval)
    );
    c.structured_replies = false;
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 0, max + 1).validate(&c),
        Err(Errno::Inval)
    );
    // Effect-only commands may exceed the payload limit.
    for cmd in [Command::Trim, Command::WriteZeroes, Command::Cache] {
        assert_eq!(
            req(cmd, CommandFlags::empty(), 0, u32::MAX).validate(&c),
            Ok(()),
            "{cmd:?}"
        );
    }
}

#[test]
fn alignment() {
    let mut c = ctx();
    c.min_block_size = 512;
    c.size = 10 * 512 + 100; // unaligned end
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 512, 1024).validate(&c),
        Ok(())
    );
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 1, 512).validate(&c),
        Err(Errno::Inval)
    );
    assert_eq!(
        req(Command::Write, CommandFlags::empty(), 512, 100).validate(&c),
        Err(Errno::Inval)
    );
    // The unaligned tail is reachable.
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 10 * 512, 100).validate(&c),
        Ok(())
    );
    assert_eq!(
        req(Command::Read, CommandFlags::empty(), 9 * 512, 612).validate(&c),
        Ok(())
    );
}

#[test]
fn zero_length_block_status() {
    assert_eq!(
        req(Command::BlockStatus, CommandFlags::empty(), 0, 0).validate(&ctx()),
        Err(Errno::Inval)
    );
    assert_eq!(
        req(Command::Trim, CommandFlags::empty(), 0, 0).validate(&ctx()),
        Ok(())
    );
}

#[test]
fn context_from_negotiated() {
    let n = Negotiated {
        export: "disk".into(),
        size: 4096,
        flags: TransmissionFlags::HAS_FLAGS,
        structured_replies: true,
        meta_contexts: vec![],
        block_size: Some(BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 20,
        }),
        block_size_requested: true,
        no_zeroes: true,
        entry: Entry::Go,
    };
    let c = ExportContext::from_negotiated(&n);
    assert_eq!(c.min_block_size, 512);
    assert_eq!(c.max_payload, 1 << 20);
    assert_eq!(c.meta_contexts, 0);
    assert!(c.structured_replies);
    let n2 = Negotiated {
        block_size: None,
        ..n
    };
    let c = ExportContext::from_negotiated(&n2);
    assert_eq!((c.min_block_size, c.max_payload), (1, DEFAULT_MAX_PAYLOAD));
}

#[test]
fn command_roundtrip_and_errno() {
    for v in 0..=20u16 {
        assert_eq!(Command::from_wire(v).to_wire(), v);
    }
    for e in [
        EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN,
    ] {
        assert_eq!(Errno::from_wire(e).unwrap().to_wire(), e);
    }
    assert_eq!(Errno::from_wire(0), None);
    assert_eq!(Errno::from_wire_lenient(1234), Errno::Inval);
    let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
    assert_eq!(Errno::from_io_error(&io), Errno::NoSpc);
    let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    assert_eq!(Errno::from_io_error(&io), Errno::Perm);
    let io = std::io::Error::other("x");
    assert_eq!(Errno::from_io_error(&io), Errno::Io);
    assert_eq!(
        format!("{:?}", CommandFlags::FUA | CommandFlags::from_bits(0x100)),
        "CommandFlags(FUA | 0x100)"
    );
}
