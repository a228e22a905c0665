//! A blocking client of the management API (what the CLI uses): one HTTP/1.1
//! connection per request over the Unix socket.

use super::types::{ApiError, CommandReply, CommandRequest, JobInfo, StatusReport};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::io;
use std::path::{Path, PathBuf};

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the connection broke.
    #[error("cannot talk to the daemon on {path}: {source}")]
    Io {
        /// The API socket.
        path: String,
        /// What happened.
        #[source]
        source: io::Error,
    },
    /// The daemon answered with an HTTP error.
    #[error("the daemon refused the request ({status}): {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The daemon's explanation.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

/// What `POST /v1/commands` answered.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The command ran; its output.
    Done(CommandReply),
    /// The command runs as a job (`202 Accepted`).
    Job(Box<JobInfo>),
}

/// A client of one daemon's API socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// Connects to the API socket at `path` (and disconnects): succeeds
    /// only if a daemon answers there. `NotFound` / `ConnectionRefused`
    /// mean no daemon runs.
    pub fn connect(path: &Path) -> io::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(tokio::net::UnixStream::connect(path))?;
        Ok(Client {
            path: path.to_path_buf(),
            rt,
        })
    }

    /// The API socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Sends one request; returns the status and body.
    pub fn request(
        &self,
        method: Method,
        uri: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let broken = |e: hyper::Error| io::Error::other(e.to_string());
        self.rt.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.path)
                .await
                .map_err(|e| self.io_error(e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.io_error(broken(e)))?;
            let driver = tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(uri)
                .header(hyper::header::HOST, "vdisk");
            if body.is_some() {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.io_error(broken(e)))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.io_error(broken(e)))?
                .to_bytes();
            driver.abort();
            Ok((status, bytes))
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        status: StatusCode,
        body: &[u8],
    ) -> Result<T, ClientError> {
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
            return Err(ClientError::Http {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `GET /v1/status[?spec=SPEC]`.
    pub fn status(&self, spec: Option<&str>) -> Result<StatusReport, ClientError> {
        let uri = match spec {
            Some(s) => format!("/v1/status?spec={}", percent_encode(s)),
            None => "/v1/status".into(),
        };
        let (status, body) = self.request(Method::GET, &uri, None)?;
        Self::decode(status, &body)
    }

    /// `POST /v1/commands`.
    pub fn command(&self, req: &CommandRequest) -> Result<Submitted, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (status, body) = self.request(Method::POST, "/v1/commands", Some(body))?;
        if status == StatusCode::ACCEPTED {
            return Self::decode(status, &body).map(|j| Submitted::Job(Box::new(j)));
        }
        Self::decode(status, &body).map(Submitted::Done)
    }

    /// `GET /v1/jobs/ID`; `None` if the daemon does not know the job.
    pub fn job(&self, id: u64) -> Result<Option<JobInfo>, ClientError> {
        let (status, body) = self.request(Method::GET, &format!("/v1/jobs/{id}"), None)?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::decode(status, &body).map(Some)
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self.request(Method::GET, "/metrics", None)?;
        if !status.is_success() {
            return Err(ClientError::Http {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_queries() {
        assert_eq!(super::percent_encode("rbd/a b+c@s"), "rbd/a%20b%2Bc@s");
        assert_eq!(super::percent_encode("é&"), "%C3%A9%26");
    }
}
