//! Quick requests and large writes run on the connection's reader thread
//! (`Inline`), the rest on the worker pool: both paths, and requests of
//! both kinds in flight together, must give the same answers.

use crate::common::*;
use crate::raw::Raw;
use std::collections::HashMap;
use vdisk_nbd::{Command, CommandFlags};

/// 4 KiB and 128 KiB writes (run inline) and FUA writes (always on the
/// pool) pipelined on one connection, then read back pipelined (128 KiB
/// reads on the pool): every reply arrives, carries the right data, and
/// the engine holds the same bytes.
fn pipelined_mix(inline: bool) {
    let server = TestServer::start_with(vdisk_server::Limits {
        inline,
        ..Default::default()
    });
    let mut c = Raw::tcp(server.port, "rbd/blank");
    // Non-overlapping slots of 256 KiB: request i writes at i * 256 KiB.
    let slot = 256 * K;
    let mut wrote: HashMap<u64, Vec<u8>> = HashMap::new();
    for i in 0..96u64 {
        let (len, flags) = match i % 8 {
            3 => (4 * K, CommandFlags::FUA),
            6 => (128 * K, CommandFlags::empty()),
            _ => (4 * K, CommandFlags::empty()),
        };
        let data = pattern(1000 + i, len as usize);
        c.send(Command::Write, flags, i, i * slot, len as u32, &data)
            .expect("send write");
        wrote.insert(i, data);
    }
    for _ in 0..wrote.len() {
        let done = c.recv().expect("write reply");
        assert_eq!(done.error, None, "write {}: {}", done.cookie, done.message);
    }
    for (&i, data) in &wrote {
        c.send(
            Command::Read,
            CommandFlags::empty(),
            i,
            i * slot,
            data.len() as u32,
            &[],
        )
        .expect("send read");
    }
    for _ in 0..wrote.len() {
        let done = c.recv().expect("read reply");
        assert_eq!(done.error, None, "read {}: {}", done.cookie, done.message);
        assert!(
            done.data == wrote[&done.cookie],
            "read {} differs",
            done.cookie
        );
    }
    c.flush();
    c.disconnect();
    let held = content(&server.store, "blank");
    for (&i, data) in &wrote {
        let at = (i * slot) as usize;
        assert!(
            held[at..at + data.len()] == data[..],
            "the engine holds other bytes for write {i}"
        );
    }
}

#[test]
fn pipelined_small_and_large_requests_with_the_reader_path_on() {
    pipelined_mix(true);
}

#[test]
fn pipelined_small_and_large_requests_all_on_the_pool() {
    pipelined_mix(false);
}
