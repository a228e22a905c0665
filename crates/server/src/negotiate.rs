//! Drives the sans-IO [`ServerHandshake`] over a socket and answers its
//! events from the store. The export a client enters transmission on is
//! registered here ([`Registry::conn_opened`]), which is also where a
//! second writer of an image is refused (one writer per image).

use crate::exports::{self, Refusal};
use crate::registry::{ConnGuard, ImageRef, Peer, Registry};
use crate::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};
use vdisk_engine::{Image, Store};
use vdisk_nbd::consts::{INFO_DESCRIPTION, INFO_NAME};
use vdisk_nbd::{
    Event, HandshakeConfig, HandshakeError, Negotiated, OptionError, Progress, ServerHandshake,
};

/// Preferred block size advertised: the engine's copy-on-write block.
const PREFERRED_BLOCK: u32 = 4096;
/// Minimum block size advertised: clients that asked for block sizes do
/// their own read-modify-write below it (the engine would do it anyway, but
/// a sector is what every client expects).
const MINIMUM_BLOCK: u32 = 512;

/// How a handshake ended (once per connection: its size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Outcome {
    /// The client entered transmission on `image`.
    Transmission {
        negotiated: Box<Negotiated>,
        image: Image,
        /// Request bytes the client sent along with the end of the
        /// handshake.
        leftover: Vec<u8>,
        /// The connection's registration; dropping it unregisters it.
        conn: ConnGuard,
    },
    /// The client aborted, went away, or asked for an export that does not
    /// exist with `NBD_OPT_EXPORT_NAME` (which has no error reply).
    Closed(&'static str),
}

/// Why a handshake failed (the connection is dropped).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NegotiateError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] HandshakeError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who is negotiating, for the registry.
#[derive(Debug, Clone)]
pub(crate) struct Client<'a> {
    pub registry: &'a Registry,
    /// Connection id ([`Registry::next_conn_id`]).
    pub id: u64,
    pub peer: &'a Peer,
}

/// Runs the handshake to its end. The caller bounds it in time.
pub(crate) async fn negotiate<R, W>(
    rd: &mut R,
    wr: &mut W,
    store: &Store,
    limits: &Limits,
    client: Client<'_>,
) -> Result<Outcome, NegotiateError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hs = ServerHandshake::new(HandshakeConfig::default());
    wr.write_all(&hs.initial_bytes()).await?;
    wr.flush().await?;
    // The image the last successful NBD_OPT_GO / EXPORT_NAME resolved,
    // registered.
    let mut chosen: Option<(Image, ConnGuard)> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut progress = hs.feed(&[])?;
    loop {
        match progress {
            Progress::NeedMore => {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Ok(Outcome::Closed(
                        "client closed the connection during the handshake",
                    ));
                }
                progress = hs.feed(&buf[..n])?;
                continue;
            }
            Progress::Reply { bytes, handled } => {
                debug!(?handled, "option answered");
                wr.write_all(&bytes).await?;
            }
            Progress::Event(event) => match answer(&mut hs, event, store, limits, &client).await? {
                Answer::Send(bytes, opened) => {
                    if let Some(opened) = opened {
                        chosen = Some(*opened);
                    }
                    wr.write_all(&bytes).await?;
                }
                Answer::HangUp(why) => return Ok(Outcome::Closed(why)),
            },
            Progress::Abort { bytes } => {
                // The client may already be gone; the ACK is a courtesy.
                let _ = wr.write_all(&bytes).await;
                let _ = wr.flush().await;
                return Ok(Outcome::Closed("client aborted the handshake"));
            }
            Progress::Done {
                negotiated,
                leftover,
            } => {
                let (image, conn) = chosen.ok_or_else(|| {
                    NegotiateError::Internal("handshake finished without an export".into())
                })?;
                return Ok(Outcome::Transmission {
                    negotiated,
                    image,
                    leftover,
                    conn,
                });
            }
            other => {
                return Err(NegotiateError::Internal(format!(
                    "unexpected handshake progress {other:?}"
                )))
            }
        }
        wr.flush().await?;
        progress = hs.feed(&[])?;
    }
}

enum Answer {
    /// Bytes to send; the image (registered) if this answer enters
    /// transmission on it.
    Send(Vec<u8>, Option<Box<(Image, ConnGuard)>>),
    /// Close without answering (`NBD_OPT_EXPORT_NAME` of an export that
    /// cannot be served: it has no error reply), and why.
    HangUp(&'static str),
}

/// Runs `f` against the store on the blocking pool (the engine is
/// synchronous and may do metadata I/O).
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, NegotiateError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| NegotiateError::Internal(format!("export lookup failed: {e}")))
}

/// Registers the connection on `image`: refused (with the message for the
/// client) when it would be a second writer of the image.
fn register(client: &Client<'_>, image: &Image, key: ImageRef) -> Result<ConnGuard, String> {
    client.registry.conn_opened(
        client.id,
        client.peer.clone(),
        key,
        &exports::canonical_name(image),
        !image.is_snapshot(),
    )
}

/// Opens an export and finds its image's identity (pool, id), which a
/// rename does not change.
fn resolve_with_ref(store: &Store, name: &str) -> Result<(Image, ImageRef), Refusal> {
    let image = exports::resolve(store, name)?;
    let rec = store.record(image.spec()).map_err(|e| Refusal {
        kind: OptionError::Policy,
        message: e.to_string(),
    })?;
    let key = ImageRef {
        pool: image.spec().pool.clone(),
        id: rec.id,
    };
    Ok((image, key))
}

async fn answer(
    hs: &mut ServerHandshake,
    event: Event,
    store: &Store,
    limits: &Limits,
    client: &Client<'_>,
) -> Result<Answer, NegotiateError> {
    let resolve = |name: String| blocking(store, move |s| exports::resolve(s, &name));
    let open = |name: String| blocking(store, move |s| resolve_with_ref(s, &name));
    let bytes = match event {
        Event::ListExports => match blocking(store, exports::list).await? {
            Ok(list) => {
                let mut out = Vec::new();
                for entry in &list {
                    out.extend(hs.reply_server(&entry.name, Some(&entry.description))?);
                }
                out.extend(hs.reply_ack()?);
                out
            }
            Err(e) => hs.reply_error(OptionError::Policy, &format!("cannot list exports: {e}"))?,
        },
        Event::Info {
            export,
            requests,
            go,
        } => match open(export.clone()).await? {
            Ok((image, key)) => {
                // NBD_OPT_GO enters transmission: register the connection
                // first (NBD_OPT_INFO only asks).
                let conn = if go {
                    match register(client, &image, key) {
                        Ok(g) => Some(g),
                        Err(message) => {
                            info!(export, %message, "second writer refused");
                            let bytes = hs.reply_error(OptionError::Policy, &message)?;
                            return Ok(Answer::Send(bytes, None));
                        }
                    }
                } else {
                    None
                };
                let mut out = hs.reply_info_export(image.size(), exports::flags(&image))?;
                if requests.contains(&INFO_NAME) {
                    out.extend(hs.reply_info_name(&exports::canonical_name(&image))?);
                }
                if requests.contains(&INFO_DESCRIPTION) {
                    let what = if image.is_snapshot() {
                        "vdisk snapshot (read-only)"
                    } else {
                        "vdisk image"
                    };
                    out.extend(hs.reply_info_description(what)?);
                }
                // Sent even when not requested, as the spec allows; only
                // clients that asked are held to it (see transmission).
                out.extend(hs.reply_block_size(
                    MINIMUM_BLOCK,
                    PREFERRED_BLOCK,
                    limits.max_payload,
                )?);
                out.extend(hs.reply_ack()?);
                return Ok(Answer::Send(out, conn.map(|c| Box::new((image, c)))));
            }
            Err(Refusal { kind, message }) => {
                debug!(export, %message, "export refused");
                hs.reply_error(kind, &message)?
            }
        },
        Event::ExportName(export) => match open(export.clone()).await? {
            Ok((image, key)) => {
                let conn = match register(client, &image, key) {
                    Ok(g) => g,
                    Err(message) => {
                        // NBD_OPT_EXPORT_NAME has no error reply.
                        info!(export, %message, "second writer refused; closing");
                        return Ok(Answer::HangUp(
                            "second writer refused (NBD_OPT_EXPORT_NAME has no error reply)",
                        ));
                    }
                };
                let out = hs.reply_export_name(image.size(), exports::flags(&image))?;
                return Ok(Answer::Send(out, Some(Box::new((image, conn)))));
            }
            Err(Refusal { message, .. }) => {
                debug!(export, %message, "export refused");
                return Ok(Answer::HangUp(
                    "client asked for an unknown export with NBD_OPT_EXPORT_NAME",
                ));
            }
        },
        Event::ListMetaContexts { export, .. } => match resolve(export).await? {
            Ok(_) => hs.reply_list_meta_contexts()?,
            Err(Refusal { kind, message }) => hs.reply_error(kind, &message)?,
        },
        Event::SetMetaContexts { export, .. } => match resolve(export).await? {
            Ok(_) => hs.reply_set_meta_contexts()?,
            Err(Refusal { kind, message }) => hs.reply_error(kind, &message)?,
        },
        other => hs.reply_error(
            OptionError::Unsupported,
            &format!("option not supported by this server: {other:?}"),
        )?,
    };
    Ok(Answer::Send(bytes, None))
}
