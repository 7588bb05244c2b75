//! Bad input changes nothing and never kills a node: a table of malformed, unauthenticated,
//! oversized and misdirected requests, sent to every node, each answered with the expected status
//! (and an `ErrorBody {code, error}` where the API promises one). Afterwards every node is
//! alive, its applied index, claims and state hash are unchanged, and it still takes writes.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use x402_protocol::wire::{to_hex, ClaimOutcome, ErrorBody};
use x402_tests::workload::{self, ASSET};
use x402_tests::LocalCluster;

const JSON: &str = "application/json";

/// Where a case is sent.
#[derive(Clone, Copy, PartialEq)]
enum Target {
    Every,
    LeaderOnly,
}

struct Case {
    name: &'static str,
    target: Target,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    /// `Authorization` header value.
    auth: Option<String>,
    body: Vec<u8>,
    status: StatusCode,
    /// The `ErrorBody.code` expected; `None` when the answer is not an ErrorBody (404, 405).
    code: Option<&'static str>,
    /// Text the `ErrorBody.error` must contain (names the offending field).
    mentions: Option<&'static str>,
    /// The `x402-cluster-id` header (peer calls carry the cluster's own unless a case says).
    cluster: Option<String>,
}

fn claim_json(asset: &str, payer: &str, nonce: &str, fingerprint: &str) -> Vec<u8> {
    format!(
        r#"{{"chain_id":31337,"asset":"{asset}","payer":"{payer}","nonce":"{nonce}","fingerprint":"{fingerprint}","valid_before":{}}}"#,
        workload::unix_now() + 3600
    )
    .into_bytes()
}

fn cases(admin: &str, secret: &str, cluster_id: &str) -> Vec<Case> {
    let admin = format!("Bearer {admin}");
    let peer = format!("Bearer {secret}");
    let asset = to_hex(&ASSET);
    let payer = to_hex(&[0x11; 20]);
    let nonce = to_hex(&[0x22; 32]);
    let fp = to_hex(&[0x33; 32]);
    let good = claim_json(&asset, &payer, &nonce, &fp);
    let mut oversized = good.clone();
    oversized.pop(); // the closing brace
    oversized.extend_from_slice(br#","padding":""#);
    oversized.extend(std::iter::repeat_n(b'x', 70_000));
    oversized.extend_from_slice(br#""}"#);

    let claim =
        |name, content_type, auth: Option<&String>, body: Vec<u8>, status, code, mentions| Case {
            name,
            target: Target::Every,
            method: Method::POST,
            path: "/admin/claims",
            content_type,
            auth: auth.cloned(),
            body,
            status,
            code,
            mentions,
            cluster: None,
        };
    let peer_call = |name, path, auth: Option<String>, body: &[u8], status, code| Case {
        name,
        target: Target::Every,
        method: Method::POST,
        path,
        content_type: Some("application/octet-stream"),
        auth,
        body: body.to_vec(),
        status,
        code,
        mentions: None,
        cluster: Some(cluster_id.to_owned()),
    };
    let bad = StatusCode::BAD_REQUEST;
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let unauthorized = StatusCode::UNAUTHORIZED;
    let a = Some(&admin);
    let j = Some(JSON);
    vec![
        claim(
            "malformed JSON",
            j,
            a,
            br#"{"chain_id": 1,"#.to_vec(),
            bad,
            Some("bad_request"),
            None,
        ),
        claim(
            "empty body",
            j,
            a,
            Vec::new(),
            bad,
            Some("bad_request"),
            None,
        ),
        claim(
            "not JSON at all",
            j,
            a,
            b"\xff\xfe\x00garbage".to_vec(),
            bad,
            Some("bad_request"),
            None,
        ),
        claim(
            "wrong content type",
            Some("text/plain"),
            a,
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type"),
            None,
        ),
        claim(
            "no content type",
            None,
            a,
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type"),
            None,
        ),
        claim(
            "missing fields",
            j,
            a,
            br#"{"chain_id":31337}"#.to_vec(),
            unprocessable,
            Some("invalid_body"),
            Some("missing field"),
        ),
        claim(
            "array instead of object",
            j,
            a,
            b"[1,2,3]".to_vec(),
            unprocessable,
            Some("invalid_body"),
            None,
        ),
        claim(
            "chain_id is a string",
            j,
            a,
            String::from_utf8(good.clone())
                .unwrap()
                .replace("31337", "\"31337\"")
                .into_bytes(),
            unprocessable,
            Some("invalid_body"),
            None,
        ),
        claim(
            "negative chain_id",
            j,
            a,
            String::from_utf8(good.clone())
                .unwrap()
                .replace("31337", "-1")
                .into_bytes(),
            unprocessable,
            Some("invalid_body"),
            None,
        ),
        claim(
            "asset is bad hex",
            j,
            a,
            claim_json(&format!("0x{}", "zz".repeat(20)), &payer, &nonce, &fp),
            bad,
            Some("bad_request"),
            Some("asset"),
        ),
        claim(
            "asset has no 0x",
            j,
            a,
            claim_json(&asset[2..], &payer, &nonce, &fp),
            bad,
            Some("bad_request"),
            Some("asset"),
        ),
        claim(
            "payer too short",
            j,
            a,
            claim_json(&asset, &to_hex(&[0x11; 19]), &nonce, &fp),
            bad,
            Some("bad_request"),
            Some("payer"),
        ),
        claim(
            "payer odd length",
            j,
            a,
            claim_json(&asset, &format!("{payer}1"), &nonce, &fp),
            bad,
            Some("bad_request"),
            Some("payer"),
        ),
        claim(
            "nonce too long",
            j,
            a,
            claim_json(&asset, &payer, &to_hex(&[0x22; 33]), &fp),
            bad,
            Some("bad_request"),
            Some("nonce"),
        ),
        claim(
            "nonce empty",
            j,
            a,
            claim_json(&asset, &payer, "0x", &fp),
            bad,
            Some("bad_request"),
            Some("nonce"),
        ),
        claim(
            "fingerprint wrong length",
            j,
            a,
            claim_json(&asset, &payer, &nonce, &to_hex(&[0x33; 20])),
            bad,
            Some("bad_request"),
            Some("fingerprint"),
        ),
        claim(
            "fingerprint bad hex",
            j,
            a,
            claim_json(&asset, &payer, &nonce, &format!("0x{}", "g".repeat(64))),
            bad,
            Some("bad_request"),
            Some("fingerprint"),
        ),
        claim(
            "oversized body",
            j,
            a,
            oversized,
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("body_too_large"),
            None,
        ),
        claim(
            "no token",
            j,
            None,
            good.clone(),
            unauthorized,
            Some("unauthorized"),
            None,
        ),
        claim(
            "wrong token",
            j,
            Some(&"Bearer wrong-token-wrong-token".to_owned()),
            good.clone(),
            unauthorized,
            Some("unauthorized"),
            None,
        ),
        claim(
            "token without Bearer",
            j,
            Some(&admin[7..].to_owned()),
            good.clone(),
            unauthorized,
            Some("unauthorized"),
            None,
        ),
        Case {
            name: "status without token",
            target: Target::Every,
            method: Method::GET,
            path: "/admin/status",
            content_type: None,
            auth: None,
            body: Vec::new(),
            status: unauthorized,
            code: Some("unauthorized"),
            mentions: None,
            cluster: None,
        },
        Case {
            name: "init on a formed cluster",
            target: Target::Every,
            method: Method::POST,
            path: "/admin/init",
            content_type: j,
            auth: a.cloned(),
            body: b"{}".to_vec(),
            status: StatusCode::CONFLICT,
            code: Some("already_initialized"),
            mentions: None,
            cluster: None,
        },
        Case {
            name: "add a learner with a bad URL",
            target: Target::Every,
            method: Method::POST,
            path: "/admin/members/add",
            content_type: j,
            auth: a.cloned(),
            body: br#"{"id":9,"url":"not a url"}"#.to_vec(),
            status: bad,
            code: Some("bad_request"),
            mentions: None,
            cluster: None,
        },
        Case {
            name: "promote a node that is not a member",
            target: Target::LeaderOnly,
            method: Method::POST,
            path: "/admin/members/promote",
            content_type: j,
            auth: a.cloned(),
            body: br#"{"id":99}"#.to_vec(),
            status: bad,
            code: Some("bad_request"),
            mentions: Some("not a member"),
            cluster: None,
        },
        peer_call(
            "garbage append with the cluster secret",
            "/raft/append",
            Some(peer.clone()),
            b"\x01\x02garbage-not-bincode\xff\xff\xff\xff",
            bad,
            Some("bad_request"),
        ),
        peer_call(
            "empty append with the cluster secret",
            "/raft/append",
            Some(peer.clone()),
            b"",
            bad,
            Some("bad_request"),
        ),
        peer_call(
            "garbage vote with the cluster secret",
            "/raft/vote",
            Some(peer.clone()),
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            bad,
            Some("bad_request"),
        ),
        peer_call(
            "garbage snapshot chunk with the cluster secret",
            "/raft/snapshot",
            Some(peer.clone()),
            b"\x07garbage",
            bad,
            Some("bad_request"),
        ),
        peer_call(
            "garbage propose with the cluster secret",
            "/raft/propose",
            Some(peer.clone()),
            b"\x00\x00\x00\x09",
            bad,
            Some("bad_request"),
        ),
        Case {
            cluster: None,
            ..peer_call(
                "garbage append without a cluster id",
                "/raft/append",
                Some(peer.clone()),
                b"\x01\x02garbage",
                StatusCode::FORBIDDEN,
                Some("no_cluster_id"),
            )
        },
        Case {
            cluster: Some("ab".repeat(16)),
            ..peer_call(
                "garbage append from another cluster",
                "/raft/append",
                Some(peer.clone()),
                b"\x01\x02garbage",
                StatusCode::FORBIDDEN,
                Some("other_cluster"),
            )
        },
        Case {
            cluster: Some("not-hex".into()),
            ..peer_call(
                "vote with an unreadable cluster id",
                "/raft/vote",
                Some(peer.clone()),
                b"\x01",
                StatusCode::FORBIDDEN,
                Some("bad_cluster_id"),
            )
        },
        peer_call(
            "append with a wrong secret",
            "/raft/append",
            Some("Bearer wrong-secret-wrong-secret".to_owned()),
            b"\x01",
            unauthorized,
            Some("unauthorized"),
        ),
        peer_call(
            "append with the admin token",
            "/raft/append",
            Some(admin.clone()),
            b"\x01",
            unauthorized,
            Some("unauthorized"),
        ),
        peer_call(
            "propose without a secret",
            "/raft/propose",
            None,
            b"\x01",
            unauthorized,
            Some("unauthorized"),
        ),
        Case {
            name: "unknown path",
            target: Target::Every,
            method: Method::GET,
            path: "/no/such/path",
            content_type: None,
            auth: None,
            body: Vec::new(),
            status: StatusCode::NOT_FOUND,
            code: None,
            mentions: None,
            cluster: None,
        },
        Case {
            name: "wrong method",
            target: Target::Every,
            method: Method::GET,
            path: "/admin/claims",
            content_type: None,
            auth: a.cloned(),
            body: Vec::new(),
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: None,
            mentions: None,
            cluster: None,
        },
    ]
}

#[tokio::test]
async fn bad_input_changes_nothing_and_kills_no_node() {
    let mut cluster = LocalCluster::start(3).await;
    let salt = workload::new_salt();
    let all = cluster.ids();
    workload::claim_many(&cluster.admins(&all), salt, 0..10, 2).await;
    let before = cluster.wait_converged().await;
    let leader = cluster.leader_id().await;

    let mut failures = Vec::new();
    let cluster_id = cluster
        .status(1)
        .await
        .cluster_id
        .expect("the cluster has an id");
    for case in cases(cluster.admin_token(), cluster.cluster_secret(), &cluster_id) {
        let targets = match case.target {
            Target::Every => all.clone(),
            Target::LeaderOnly => vec![leader],
        };
        for id in targets {
            let mut headers = Vec::new();
            if let Some(ct) = case.content_type {
                headers.push(("content-type", ct));
            }
            if let Some(auth) = &case.auth {
                headers.push(("authorization", auth.as_str()));
            }
            if let Some(id) = &case.cluster {
                headers.push(("x402-cluster-id", id.as_str()));
            }
            let answer = cluster
                .raw(
                    id,
                    case.method.clone(),
                    case.path,
                    &headers,
                    Bytes::from(case.body.clone()),
                )
                .await;
            let response = match answer {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{} (node {id}): no answer: {e}", case.name));
                    continue;
                }
            };
            let status = response.status();
            let body = response.into_body();
            let text = String::from_utf8_lossy(&body);
            if status != case.status {
                failures.push(format!(
                    "{} (node {id}): expected {}, got {status}: {text}",
                    case.name, case.status
                ));
                continue;
            }
            let Some(code) = case.code else { continue };
            match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(error) => {
                    if error.code != code || error.error.is_empty() {
                        failures.push(format!(
                            "{} (node {id}): expected code {code:?}, got {error:?}",
                            case.name
                        ));
                    } else if let Some(word) = case.mentions {
                        if !error.error.contains(word) {
                            failures.push(format!(
                                "{} (node {id}): the error should mention {word:?}: {error:?}",
                                case.name
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!(
                    "{} (node {id}): {status} without an ErrorBody ({e}): {text}",
                    case.name
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad requests were not answered as expected:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    // Every node still runs, and nothing was written.
    for &id in &all {
        cluster.assert_running(id);
    }
    let after = cluster.wait_converged().await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (a.claims, &a.state_hash),
            (b.claims, &b.state_hash),
            "node {}'s state changed under bad input",
            a.id
        );
        if a.term == b.term {
            assert_eq!(a.applied, b.applied, "node {} applied writes", a.id);
        } else {
            // An election (a loaded machine) appends a blank entry per new term; nothing else.
            eprintln!(
                "note: term {} -> {} during the test; applied {:?} -> {:?}",
                b.term, a.term, b.applied, a.applied
            );
            let terms = a.term - b.term;
            assert!(
                a.applied.unwrap() - b.applied.unwrap() <= terms,
                "node {} applied more than the blank entries of {terms} new terms",
                a.id
            );
        }
    }

    // And the cluster still takes writes, through every node.
    for &id in &all {
        let answer = cluster
            .admin(id)
            .claim(&workload::claim(salt, 100 + id))
            .await
            .unwrap();
        assert_eq!(answer.outcome, ClaimOutcome::Accepted);
    }
    let last = cluster.wait_converged().await;
    assert!(last.iter().all(|s| s.claims == before[0].claims + 3));
}
