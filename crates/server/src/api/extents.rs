//! `GET /v1/images/{pool}/{image}/changed` and `.../allocated`: changed and
//! allocated extents, paged by byte offset, from metadata only (see
//! `vdisk_engine::changed`). What backup tools and CSI's SnapshotMetadata
//! service need: "what changed between snapshot A and B (or the head)",
//! "what does snapshot S hold".
//!
//! ```text
//! GET /v1/images/rbd/vm1/changed?from=s1&to=s2&offset=0&limit=1024
//! GET /v1/images/rbd/vm1/allocated?snap=s2&offset=0&limit=1024
//! 200 {"extents": [{"offset": 0, "length": 4096, "zero": false}], "next_offset": null, "size": 1073741824}
//! ```
//!
//! Errors: `400` for bad parameters (unknown ones included, `from` not
//! older than `to`, an offset beyond the size, a limit outside
//! 1..=65536), `404` for an unknown pool, image or snapshot; always
//! `{"error": "..."}`.

use super::{api_error, ApiState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::sync::Arc;
use vdisk_engine::changed::DEFAULT_LIMIT;
use vdisk_engine::spec::validate_name;
use vdisk_engine::{ErrorKind, ImageSpec};

/// The query of `changed`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangedQuery {
    /// The older snapshot; none: every data extent of `to`.
    from: Option<String>,
    /// The newer snapshot, or `head` (default).
    to: Option<String>,
    offset: Option<u64>,
    limit: Option<usize>,
}

/// The query of `allocated`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllocatedQuery {
    /// The snapshot; none: the head.
    snap: Option<String>,
    offset: Option<u64>,
    limit: Option<usize>,
}

/// `pool/image[@snap]` from the path and a snapshot name (`head` and
/// none: the head); `Err`: why the request is bad.
fn spec_of(pool: &str, image: &str, snap: Option<&str>) -> Result<ImageSpec, String> {
    let spec = ImageSpec::parse_image(&format!("{pool}/{image}")).map_err(|e| e.to_string())?;
    match snap {
        None | Some("head") => Ok(spec),
        Some(s) => {
            validate_name(s).map_err(|e| e.to_string())?;
            Ok(spec.with_snap(s))
        }
    }
}

/// An engine error as an API error.
fn engine_error(e: &vdisk_engine::Error) -> Response {
    let status = match e.kind() {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Refused | ErrorKind::AlreadyExists => StatusCode::CONFLICT,
        ErrorKind::Unsupported => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut msg = e.to_string();
    if let Some(h) = e.hint() {
        msg.push_str(&format!(" ({h})"));
    }
    api_error(status, msg)
}

/// Runs `f` (engine work) on the blocking pool; its page as JSON.
async fn page(
    f: impl FnOnce() -> vdisk_engine::Result<vdisk_engine::changed::ExtentPage> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(p)) => Json(p).into_response(),
        Ok(Err(e)) => engine_error(&e),
        Err(e) => api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn changed(
    State(st): State<Arc<ApiState>>,
    UrlPath((pool, image)): UrlPath<(String, String)>,
    query: Result<Query<ChangedQuery>, QueryRejection>,
) -> Response {
    st.registry.api_request();
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let spec = match spec_of(&pool, &image, q.to.as_deref()) {
        Ok(s) => s,
        Err(msg) => return api_error(StatusCode::BAD_REQUEST, msg),
    };
    if let Some(f) = &q.from {
        if let Err(e) = validate_name(f) {
            return api_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    }
    let store = st.store.clone();
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(DEFAULT_LIMIT));
    page(move || store.changed_extents(&spec, q.from.as_deref(), offset, limit)).await
}

pub(crate) async fn allocated(
    State(st): State<Arc<ApiState>>,
    UrlPath((pool, image)): UrlPath<(String, String)>,
    query: Result<Query<AllocatedQuery>, QueryRejection>,
) -> Response {
    st.registry.api_request();
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let spec = match spec_of(&pool, &image, q.snap.as_deref()) {
        Ok(s) => s,
        Err(msg) => return api_error(StatusCode::BAD_REQUEST, msg),
    };
    let store = st.store.clone();
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(DEFAULT_LIMIT));
    page(move || store.allocated_extents(&spec, offset, limit)).await
}
