//! Shared test helpers: a scripted "server" around `ServerHandshake` that
//! knows one export, and byte builders for client messages.
#![allow(dead_code)]

use vdisk_nbd::consts::*;
use vdisk_nbd::{
    Event, HandshakeConfig, HandshakeError, Negotiated, OptionError, Progress, ServerHandshake,
    TransmissionFlags,
};

pub const EXPORT: &str = "disk";
/// A second export, to test that meta contexts are bound to a name.
pub const EXPORT2: &str = "disk2";

fn known(name: &str) -> bool {
    name == EXPORT || name == EXPORT2
}
pub const EXPORT_SIZE: u64 = 1 << 30;

pub fn export_flags() -> TransmissionFlags {
    TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_FUA
}

/// One observable step of a handshake run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Handled(vdisk_nbd::Handled),
    Event(Event),
    Abort,
    Done(Box<Negotiated>, Vec<u8>),
    /// Responder decided to hang up (unknown export on EXPORT_NAME).
    HangUp,
}

/// Result of a run: the transcript, all bytes sent to the client, and how
/// it ended (`None` = needs more input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub steps: Vec<Step>,
    pub output: Vec<u8>,
    pub error: Option<HandshakeError>,
}

/// Answers an event like a server with the single export `disk`.
pub fn respond(hs: &mut ServerHandshake, event: &Event) -> Result<Option<Vec<u8>>, HandshakeError> {
    let mut out = Vec::new();
    match event {
        Event::ExportName(name) if known(name) => {
            out.extend(hs.reply_export_name(EXPORT_SIZE, export_flags())?);
        }
        Event::ExportName(_) => return Ok(None),
        Event::ListExports => out.extend(hs.reply_server_list(&[EXPORT, EXPORT2])?),
        Event::Info { export, .. } if known(export) => {
            out.extend(hs.reply_info_export(EXPORT_SIZE, export_flags())?);
            if event.wants_block_size() {
                out.extend(hs.reply_block_size(512, 4096, 32 << 20)?);
            }
            out.extend(hs.reply_ack()?);
        }
        Event::ListMetaContexts { export, .. } if known(export) => {
            out.extend(hs.reply_list_meta_contexts()?)
        }
        Event::SetMetaContexts { export, .. } if known(export) => {
            out.extend(hs.reply_set_meta_contexts()?)
        }
        _ => out.extend(hs.reply_error(OptionError::UnknownExport, "no such export")?),
    }
    Ok(Some(out))
}

/// Feeds `chunks` one after another, answering events with [`respond`].
pub fn run_with(config: HandshakeConfig, chunks: &[&[u8]]) -> Run {
    let mut hs = ServerHandshake::new(config);
    let mut run = Run {
        steps: Vec::new(),
        output: hs.initial_bytes(),
        error: None,
    };
    let mut chunks = chunks.iter();
    let mut input: &[u8] = chunks.next().copied().unwrap_or_default();
    loop {
        let progress = match hs.feed(input) {
            Ok(p) => p,
            Err(e) => {
                run.error = Some(e);
                return run;
            }
        };
        input = &[];
        match progress {
            Progress::NeedMore => match chunks.next() {
                Some(c) => input = c,
                None => return run,
            },
            Progress::Reply { bytes, handled } => {
                run.output.extend(bytes);
                run.steps.push(Step::Handled(handled));
            }
            Progress::Event(event) => {
                run.steps.push(Step::Event(event.clone()));
                match respond(&mut hs, &event) {
                    Ok(Some(bytes)) => run.output.extend(bytes),
                    Ok(None) => {
                        run.steps.push(Step::HangUp);
                        return run;
                    }
                    Err(e) => {
                        run.error = Some(e);
                        return run;
                    }
                }
            }
            Progress::Abort { bytes } => {
                run.output.extend(bytes);
                run.steps.push(Step::Abort);
                return run;
            }
            Progress::Done {
                negotiated,
                leftover,
            } => {
                run.steps.push(Step::Done(negotiated, leftover));
                return run;
            }
            other => panic!("unexpected progress {other:?}"),
        }
    }
}

/// Runs with the whole input in one chunk.
pub fn run(config: HandshakeConfig, input: &[u8]) -> Run {
    run_with(config, &[input])
}

/// Runs feeding one byte at a time.
pub fn run_bytewise(config: HandshakeConfig, input: &[u8]) -> Run {
    let chunks: Vec<&[u8]> = input.chunks(1).collect();
    run_with(config, &chunks)
}

// ---------------------------------------------------------------------
// Client message builders (independent of the crate's client encoders,
// so that server tests do not trust the code under test twice).
// ---------------------------------------------------------------------

pub fn option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = b"IHAVEOPT".to_vec();
    v.extend(option.to_be_bytes());
    v.extend((data.len() as u32).to_be_bytes());
    v.extend(data);
    v
}

pub fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend(name.as_bytes());
    v.extend((infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend(i.to_be_bytes());
    }
    v
}

pub fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend(name.as_bytes());
    v.extend((queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend((q.len() as u32).to_be_bytes());
        v.extend(q.as_bytes());
    }
    v
}

pub fn flags(f: u32) -> Vec<u8> {
    f.to_be_bytes().to_vec()
}

/// Client flags with both bits, the usual modern client.
pub fn modern_flags() -> Vec<u8> {
    flags(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)
}

/// Parses a stream of option replies: (option, type, data) triples.
pub fn parse_replies(mut bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 20, "truncated reply");
        assert_eq!(&bytes[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        let opt = u32::from_be_bytes(bytes[8..12].try_into().unwrap());
        let typ = u32::from_be_bytes(bytes[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[16..20].try_into().unwrap()) as usize;
        out.push((opt, typ, bytes[20..20 + len].to_vec()));
        bytes = &bytes[20 + len..];
    }
    out
}

/// Option replies after the 18-byte greeting.
pub fn replies(run: &Run) -> Vec<(u32, u32, Vec<u8>)> {
    parse_replies(&run.output[GREETING_LEN..])
}
