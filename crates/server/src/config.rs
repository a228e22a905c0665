//! What the server listens on and the limits it enforces.

use crate::error::{Error, Result};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where to listen and how much to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// TCP addresses to listen on (empty: no TCP). Port 0 picks a free port;
    /// [`crate::Server::local_addrs`] tells which.
    pub listen: Vec<SocketAddr>,
    /// Unix socket to listen on (`None`: none). A stale socket file left by
    /// a previous run is replaced; one a live server answers on is not.
    pub socket: Option<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Several clients may write one image at once (`vdisk serve
    /// --shared`). Off: a second read-write connection to an image from
    /// another client is refused (see [`crate::registry`] for what "the
    /// same client" means).
    pub shared: bool,
    /// Unix socket of the management API (`None`: no API). `vdisk serve`
    /// puts it at `DIR/api.sock`, where the CLI looks for it. Created mode
    /// 0600; a stale one is replaced, a live one refused.
    pub api_socket: Option<PathBuf>,
}

impl Default for ServeConfig {
    /// `127.0.0.1:10809`, no Unix socket, default limits, one writer per
    /// image, no API.
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT))],
            socket: None,
            limits: Limits::default(),
            shared: false,
            api_socket: None,
        }
    }
}

/// Resource limits. Every one of them bounds what a client (hostile or
/// just busy) can make the server hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are accepted and closed at once
    /// (so the client fails fast instead of hanging in the backlog).
    pub max_connections: usize,
    /// Largest READ/WRITE payload, advertised as the maximum block size.
    /// At least 4 KiB. Requests over it are refused with an error; WRITEs
    /// over `max(this, 32 MiB)` close the connection (their payload is
    /// not worth reading just to discard it).
    pub max_payload: u32,
    /// Requests of one connection being executed at once; the connection
    /// reads no further request until one completes.
    pub max_in_flight: usize,
    /// Bytes of READ/WRITE buffers one connection may hold at once
    /// (requests executing or replies not yet sent). At least
    /// `max_payload`.
    pub max_in_flight_bytes: usize,
    /// Time a client gets to finish the handshake.
    pub handshake_timeout: Duration,
    /// At shutdown, time given to in-flight requests to complete before
    /// connections are closed regardless.
    pub drain_timeout: Duration,
    /// Quick requests (reads and writes up to 64 KiB) and non-FUA writes
    /// up to 4 MiB run on their connection's reader thread instead of an
    /// engine worker (see `transmission::Inline`).
    pub inline: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_payload: 32 << 20,
            max_in_flight: 128,
            max_in_flight_bytes: 64 << 20,
            handshake_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            inline: true,
        }
    }
}

impl Limits {
    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidConfig(what));
        if self.max_connections == 0 || self.max_in_flight == 0 {
            return bad("max_connections and max_in_flight must be at least 1".into());
        }
        if self.max_payload < 4096 {
            return bad(format!(
                "max_payload {} is below 4096, the preferred block size",
                self.max_payload
            ));
        }
        if self.max_in_flight_bytes < self.max_payload as usize {
            return bad(format!(
                "max_in_flight_bytes {} is below max_payload {}: a maximal request could never run",
                self.max_in_flight_bytes, self.max_payload
            ));
        }
        // Permits are taken per byte, `u32` at a time, from a semaphore
        // whose capacity tokio caps at `usize::MAX >> 3`.
        if self.max_in_flight_bytes > (usize::MAX >> 3) {
            return bad("max_in_flight_bytes is too large".into());
        }
        Ok(())
    }
}

/// Parses one `--listen` value: `ADDR:PORT` (`127.0.0.1:10809`,
/// `[::1]:10809`, `localhost:10809`), or `none` (returns no address).
/// A host name may stand for several addresses; all are returned.
pub fn parse_listen(value: &str) -> Result<Vec<SocketAddr>> {
    if value.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let bad = |reason: String| Error::InvalidListen {
        value: value.to_owned(),
        reason,
    };
    if value.rsplit_once(':').is_none_or(|(host, port)| {
        host.is_empty() || port.is_empty() || port.parse::<u16>().is_err()
    }) {
        return Err(bad(
            "expected ADDR:PORT, e.g. 127.0.0.1:10809 or [::]:10809".into(),
        ));
    }
    let addrs: Vec<SocketAddr> = value
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve it: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("it resolves to no address".into()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values() {
        assert_eq!(parse_listen("none").unwrap(), vec![]);
        assert_eq!(
            parse_listen("127.0.0.1:10809").unwrap(),
            vec![SocketAddr::from(([127, 0, 0, 1], 10809))]
        );
        assert_eq!(parse_listen("[::1]:0").unwrap().len(), 1);
        assert!(parse_listen("localhost:10809")
            .unwrap()
            .iter()
            .all(|a| a.port() == 10809 && a.ip().is_loopback()));
        for bad in [
            "",
            "10809",
            "127.0.0.1",
            "127.0.0.1:",
            ":10809",
            "host:99999",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().validate().is_ok());
        for bad in [
            Limits {
                max_in_flight_bytes: 1 << 20,
                ..Limits::default()
            },
            Limits {
                max_payload: 512,
                ..Limits::default()
            },
            Limits {
                max_connections: 0,
                ..Limits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} was accepted");
        }
    }
}
