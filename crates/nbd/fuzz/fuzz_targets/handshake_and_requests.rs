//! Fuzzes every decoder of vdisk-nbd with one input.
//!
//! The first byte picks chunk sizes, the rest is split in two at a point
//! chosen by the second byte: the first part goes to the server handshake
//! (answered like a server with one export), the second part to the
//! request parser/validator, the reply decoder and the client handshake.
//! Nothing may panic; errors are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vdisk_nbd::client::{decode_reply, ClientConfig, ClientHandshake, ClientProgress};
use vdisk_nbd::{
    Event, ExportContext, HandshakeConfig, OptionError, Progress, RequestHeader, ServerHandshake,
    TransmissionFlags,
};

fn answer(hs: &mut ServerHandshake, event: &Event) -> bool {
    let r = match event {
        Event::ExportName(name) if name == "disk" => {
            hs.reply_export_name(1 << 20, TransmissionFlags::SEND_FLUSH)
        }
        Event::ExportName(_) => return false,
        Event::ListExports => hs.reply_server_list(&["disk"]),
        Event::Info { export, .. } if export == "disk" => hs
            .reply_info_export(1 << 20, TransmissionFlags::SEND_FLUSH)
            .and_then(|_| hs.reply_block_size(512, 4096, 1 << 25))
            .and_then(|_| hs.reply_ack()),
        Event::ListMetaContexts { .. } => hs.reply_list_meta_contexts(),
        Event::SetMetaContexts { .. } => hs.reply_set_meta_contexts(),
        _ => hs.reply_error(OptionError::UnknownExport, "no"),
    };
    r.is_ok()
}

fn server(data: &[u8], chunk: usize) -> Option<ExportContext> {
    let config = HandshakeConfig {
        max_option_len: 512,
        max_discard_len: 4096,
        max_options: 64,
        ..HandshakeConfig::default()
    };
    let mut hs = ServerHandshake::new(config);
    let mut chunks = data.chunks(chunk.max(1));
    let mut input: &[u8] = chunks.next().unwrap_or_default();
    loop {
        let progress = hs.feed(input).ok()?;
        input = &[];
        match progress {
            Progress::NeedMore => input = chunks.next()?,
            Progress::Reply { .. } => {}
            Progress::Event(ev) => {
                if !answer(&mut hs, &ev) {
                    return None;
                }
            }
            Progress::Done { negotiated, .. } => {
                return Some(ExportContext::from_negotiated(&negotiated))
            }
            _ => return None,
        }
    }
}

fn transmission(data: &[u8], ctx: &ExportContext) {
    let mut rest = data;
    while let Ok(Some(req)) = RequestHeader::try_parse(rest) {
        let _ = req.validate(ctx);
        let _ = req.check_payload(ctx.disconnect_limit());
        rest = &rest[28..];
        let skip = (req.payload_len() as usize).min(rest.len());
        rest = &rest[skip..];
    }
    let mut rest = data;
    while let Ok(Some((_, used))) = decode_reply(rest, 4096, |c| (c % 64) as usize) {
        rest = &rest[used..];
    }
}

fn client(data: &[u8], chunk: usize) {
    let mut c = ClientHandshake::new(ClientConfig::new("disk"));
    for piece in data.chunks(chunk.max(1)) {
        let mut input = piece;
        loop {
            match c.feed(input) {
                Ok(ClientProgress::NeedMore) => break,
                Ok(ClientProgress::Send(_)) => {}
                _ => return,
            }
            input = &[];
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [chunk, split, body @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk % 32) + 1;
    let at = (usize::from(*split) * body.len()) / 256;
    let (handshake, after) = body.split_at(at);
    let ctx = server(handshake, chunk).unwrap_or_else(|| {
        ExportContext::new(
            1 << 20,
            TransmissionFlags::from_bits(u16::from(*split) << 4),
        )
    });
    transmission(after, &ctx);
    client(body, chunk);
});
