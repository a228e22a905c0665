//! Fuzzes every reader of vdisk-rbd-diff with one input.
//!
//! The first byte picks the stream kind (low 2 bits) and the piece size
//! the decoder is fed in (the rest); the input after it goes to the
//! decoder, to `DiffReader` (reading every payload), split in two at a
//! point chosen by the second byte to `merge_diffs`, and as text to the
//! sidecar parser. Nothing may panic or loop; errors are fine. Each
//! input also gets a valid banner prepended once, to reach the records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdisk_rbd_diff::sum::SumFile;
use vdisk_rbd_diff::{merge_diffs, Decoder, DiffReader, Event, StreamKind};

fn decode(kind: StreamKind, data: &[u8], chunk: usize) {
    let mut d = Decoder::new(kind);
    for piece in data.chunks(chunk.max(1)) {
        let mut input = piece;
        while !input.is_empty() {
            match d.feed(input) {
                Ok((used, ev)) => {
                    assert!(used <= input.len());
                    assert!(used > 0 || ev.is_some(), "the decoder made no progress");
                    if let Some(Event::Data { bytes, .. }) = ev {
                        assert_eq!(bytes.len(), used);
                    }
                    input = &input[used..];
                }
                Err(_) => return,
            }
        }
    }
    let _ = d.finish();
}

fn read(kind: StreamKind, data: &[u8]) {
    let mut r = DiffReader::new(data, kind);
    let mut buf = [0u8; 4096];
    while let Ok(Some(ev)) = r.next_event() {
        if let Event::Write { .. } = ev {
            while let Ok(n) = r.read_data(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let kind = match head & 3 {
        0 => StreamKind::DiffV1,
        1 => StreamKind::DiffV2,
        _ => StreamKind::Image,
    };
    let chunk = usize::from(head >> 2) + 1;
    decode(kind, rest, chunk);
    let mut with_banner = kind.banner().to_vec();
    with_banner.extend_from_slice(rest);
    decode(kind, &with_banner, chunk);
    read(kind, &with_banner);

    let split = rest.first().map_or(0, |b| usize::from(*b)).min(rest.len());
    let (a, b) = rest.split_at(split);
    let mut a1 = b"rbd diff v1\n".to_vec();
    a1.extend_from_slice(a);
    let mut b1 = b"rbd diff v1\n".to_vec();
    b1.extend_from_slice(b);
    let _ = merge_diffs(&a1[..], &b1[..], std::io::sink());

    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = SumFile::parse(text);
    }
});
