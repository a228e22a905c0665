//! The changed-block API (issue 5, item 2): `GET /v1/images/{pool}/{image}/changed`
//! and `.../allocated` on an in-process server: exact extents after
//! writes, discards and snapshots, paging with small limits concatenating
//! to the unpaged answer, and clear JSON errors.

#[path = "server/common.rs"]
mod common;

use common::*;
use hyper::{Method, StatusCode};
use serde_json::Value;
use vdisk_engine::changed::{Extent, ExtentPage};
use vdisk_server::api::Client;

fn client(server: &TestServer) -> Client {
    Client::connect(&server.api_socket()).expect("API answers")
}

/// GET `uri`: the status and the JSON body.
fn get(api: &Client, uri: &str) -> (StatusCode, Value) {
    let (status, body) = api.request(Method::GET, uri, None).expect("request");
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{uri}: not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, v)
}

fn page(api: &Client, uri: &str) -> ExtentPage {
    let (status, v) = get(api, uri);
    assert_eq!(status, StatusCode::OK, "{uri}: {v}");
    serde_json::from_value(v).expect("an extent page")
}

/// Every page of `uri` (which has no offset/limit yet) with `limit`.
fn walk(api: &Client, uri: &str, limit: usize) -> Vec<Extent> {
    let sep = if uri.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..10_000 {
        let p = page(api, &format!("{uri}{sep}offset={offset}&limit={limit}"));
        assert!(p.extents.len() <= limit);
        out.extend(p.extents.iter().copied());
        match p.next_offset {
            Some(n) => {
                assert!(n > offset);
                offset = n;
            }
            None => return out,
        }
    }
    panic!("{uri}: paging does not end");
}

fn data(offset: u64, length: u64) -> Extent {
    Extent {
        offset,
        length,
        zero: false,
    }
}

fn zero(offset: u64, length: u64) -> Extent {
    Extent {
        offset,
        length,
        zero: true,
    }
}

/// `rbd/ext` (64 MiB): data, snapshot s1, more data and a discard over
/// s1's data, snapshot s2, then a head-only write.
fn scenario(server: &TestServer) {
    let store = &server.store;
    let img = store
        .create(
            &spec("ext"),
            &vdisk_engine::CreateOptions {
                size: SIZE,
                order: None,
                features: None,
            },
        )
        .expect("create");
    img.write_at(0, &vec![0xab; 64 * K as usize]).unwrap();
    img.write_at(8 * M, &vec![0xab; 4 * K as usize]).unwrap();
    img.write_at(20 * M + 4 * K, &vec![0xab; 8 * K as usize])
        .unwrap();
    store.snap_create(&spec("ext@s1")).unwrap();
    img.write_at(32 * K, &vec![0xcd; 64 * K as usize]).unwrap();
    img.discard(8 * M, 4 * K).unwrap();
    img.write_at(40 * M, &vec![0xcd; 4 * K as usize]).unwrap();
    store.snap_create(&spec("ext@s2")).unwrap();
    img.write_at(60 * M, &vec![0xef; 4 * K as usize]).unwrap();
}

#[test]
fn changed_extents_between_snapshots_and_the_head_are_exact() {
    let server = TestServer::start();
    scenario(&server);
    let api = client(&server);

    let p = page(&api, "/v1/images/rbd/ext/changed?from=s1&to=s2");
    assert_eq!(
        p.extents,
        [
            data(32 * K, 64 * K),
            zero(8 * M, 4 * K),
            data(40 * M, 4 * K)
        ]
    );
    assert_eq!((p.next_offset, p.size), (None, SIZE));

    let head = [
        data(32 * K, 64 * K),
        zero(8 * M, 4 * K),
        data(40 * M, 4 * K),
        data(60 * M, 4 * K),
    ];
    assert_eq!(
        page(&api, "/v1/images/rbd/ext/changed?from=s1").extents,
        head
    );
    assert_eq!(
        page(&api, "/v1/images/rbd/ext/changed?from=s1&to=head").extents,
        head
    );
    assert_eq!(
        page(&api, "/v1/images/rbd/ext/changed?from=s2").extents,
        [data(60 * M, 4 * K)]
    );
    // Without `from`: every data extent (a full backup).
    assert_eq!(
        page(&api, "/v1/images/rbd/ext/changed?to=s1").extents,
        [
            data(0, 64 * K),
            data(8 * M, 4 * K),
            data(20 * M + 4 * K, 8 * K)
        ]
    );
    // The raw JSON, as documented.
    let (_, v) = get(&api, "/v1/images/rbd/ext/changed?from=s2");
    assert_eq!(
        v,
        serde_json::json!({
            "extents": [{"offset": 60 * M, "length": 4 * K, "zero": false}],
            "next_offset": null,
            "size": SIZE
        })
    );
}

#[test]
fn allocated_extents_of_snapshots_and_the_head() {
    let server = TestServer::start();
    scenario(&server);
    let api = client(&server);
    assert_eq!(
        page(&api, "/v1/images/rbd/ext/allocated?snap=s1").extents,
        [
            data(0, 64 * K),
            data(8 * M, 4 * K),
            data(20 * M + 4 * K, 8 * K)
        ]
    );
    // The discard over s1's data is a recorded zero.
    assert_eq!(
        page(&api, "/v1/images/rbd/ext/allocated?snap=s2").extents,
        [
            data(0, 96 * K),
            zero(8 * M, 4 * K),
            data(20 * M + 4 * K, 8 * K),
            data(40 * M, 4 * K)
        ]
    );
    let head = page(&api, "/v1/images/rbd/ext/allocated");
    assert_eq!(head.extents.last(), Some(&data(60 * M, 4 * K)));
    assert!(page(&api, "/v1/images/rbd/blank/allocated")
        .extents
        .is_empty());
    // A clone's parent data is allocated in the clone.
    let child = page(&api, "/v1/images/rbd/child/allocated");
    assert_eq!(child.extents.first().map(|e| e.offset), Some(0));
    assert!(child
        .extents
        .iter()
        .any(|e| e.offset <= 32 * M && e.offset + e.length >= 32 * M + 512 * K && !e.zero));
}

#[test]
fn pages_with_small_limits_concatenate_to_the_unpaged_answer() {
    let server = TestServer::start();
    scenario(&server);
    let api = client(&server);
    for uri in [
        "/v1/images/rbd/ext/changed?from=s1",
        "/v1/images/rbd/ext/changed?from=s1&to=s2",
        "/v1/images/rbd/ext/allocated?snap=s2",
        "/v1/images/rbd/img/changed?from=s1",
        "/v1/images/rbd/img/allocated",
        "/v1/images/rbd/child/allocated",
        "/v1/images/other/disk/allocated",
    ] {
        let full = page(&api, uri).extents;
        assert!(!full.is_empty(), "{uri}");
        for limit in [1, 2, 3] {
            assert_eq!(walk(&api, uri, limit), full, "{uri} limit {limit}");
        }
    }
    // A page that starts inside an extent is clipped to it.
    let p = page(
        &api,
        "/v1/images/rbd/ext/changed?from=s1&offset=40000&limit=1",
    );
    assert_eq!(p.extents, [data(40000, 96 * K - 40000)]);
    assert_eq!(p.next_offset, Some(8 * M));
}

#[test]
fn bad_requests_get_clear_json_errors() {
    let server = TestServer::start();
    scenario(&server);
    let api = client(&server);
    for (uri, status, says) in [
        ("/v1/images/rbd/nope/changed?from=s1", 404, "does not exist"),
        ("/v1/images/nopool/ext/allocated", 404, "does not exist"),
        ("/v1/images/rbd/ext/changed?from=nope", 404, "nope"),
        ("/v1/images/rbd/ext/changed?from=s1&to=nope", 404, "nope"),
        ("/v1/images/rbd/ext/allocated?snap=nope", 404, "nope"),
        ("/v1/images/rbd/ext/changed?from=s2&to=s1", 400, "not older"),
        ("/v1/images/rbd/ext/changed?from=s1&to=s1", 400, "not older"),
        (
            "/v1/images/rbd/ext/changed?from=s1&offset=67108865",
            400,
            "beyond",
        ),
        ("/v1/images/rbd/ext/allocated?offset=-1", 400, "offset"),
        ("/v1/images/rbd/ext/allocated?offset=abc", 400, "offset"),
        ("/v1/images/rbd/ext/allocated?limit=0", 400, "limit"),
        ("/v1/images/rbd/ext/allocated?limit=65537", 400, "limit"),
        ("/v1/images/rbd/ext/allocated?bogus=1", 400, "bogus"),
        ("/v1/images/rbd/ext%40s1/allocated", 400, "snapshot"),
        ("/v1/images/rbd/ext/changed?from=a%2Fb", 400, "invalid name"),
        ("/v1/images/rbd/ext/unknown", 404, "no such endpoint"),
    ] {
        let (got, v) = get(&api, uri);
        assert_eq!(got.as_u16(), status, "{uri}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("{uri}: {v}"));
        assert!(msg.contains(says), "{uri}: {msg:?} should say {says:?}");
    }
    // The end of the image is a valid (empty, last) page.
    let p = page(&api, &format!("/v1/images/rbd/ext/allocated?offset={SIZE}"));
    assert!(p.extents.is_empty() && p.next_offset.is_none());
}
