//! `/readyz`, `/livez` and `/metrics` as a load balancer and Prometheus see them: every node of a
//! healthy cluster is ready; with 2 of 3 nodes gone the survivor is alive but not ready (503 with
//! reasons) and refuses writes quickly instead of hanging; the metrics a dashboard needs exist
//! and move.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use x402_protocol::wire::Readiness;
use x402_tests::metrics::sample;
use x402_tests::workload;
use x402_tests::LocalCluster;

async fn get(cluster: &LocalCluster, id: u64, path: &str) -> (StatusCode, Bytes) {
    let response = cluster
        .raw(id, Method::GET, path, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("GET {path} on node {id}: {e}"));
    (response.status(), response.into_body())
}

#[tokio::test]
async fn readiness_and_metrics() {
    let mut cluster = LocalCluster::start(3).await;
    let salt = workload::new_salt();
    let all = cluster.ids();
    workload::claim_many(&cluster.admins(&all), salt, 0..30, 3).await;
    let statuses = cluster.wait_converged().await;

    // Healthy: every node live and ready.
    for &id in &all {
        let (status, body) = get(&cluster, id, "/livez").await;
        assert_eq!(status, StatusCode::OK, "livez of node {id}");
        assert_eq!(&body[..], b"ok");
        let (status, body) = get(&cluster, id, "/readyz").await;
        let readiness: Readiness = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("readyz of node {id} is not a Readiness ({e}): {body:?}"));
        assert_eq!(status, StatusCode::OK, "readyz of node {id}: {readiness:?}");
        assert!(
            readiness.ready && readiness.reasons.is_empty(),
            "{readiness:?}"
        );
    }

    // Metrics: present, and in line with what the node reports.
    for s in &statuses {
        let (status, body) = get(&cluster, s.id, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).expect("metrics are text");
        for name in [
            "x402_raft_term",
            "x402_raft_applied_index",
            "x402_proposal_seconds",
            "x402_fsync_seconds",
        ] {
            assert!(
                text.contains(name),
                "/metrics of node {} lacks {name}:\n{text}",
                s.id
            );
        }
        assert_eq!(
            sample(&text, "x402_raft_term", &[]),
            Some(s.term as f64),
            "node {}",
            s.id
        );
        let applied = sample(&text, "x402_raft_applied_index", &[]).unwrap();
        assert!(
            applied >= s.applied.unwrap() as f64,
            "node {}: metric applied {applied} < status applied {:?}",
            s.id,
            s.applied
        );
        // What runs, and that it knows a leader.
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            sample(&text, "x402_build_info", &[("version", version)]),
            Some(1.0),
            "node {}: x402_build_info{{version=\"{version}\"}}:\n{text}",
            s.id
        );
        assert!(!text.contains("commit=\"\""), "the build names its commit");
        assert_eq!(
            sample(&text, "x402_has_leader", &[]),
            Some(1.0),
            "node {}",
            s.id
        );
        // Every node made its log durable at least once per write batch.
        let fsyncs = sample(&text, "x402_fsync_seconds_count", &[]).unwrap_or(0.0);
        assert!(fsyncs >= 1.0, "node {} counted {fsyncs} fsyncs", s.id);
        // Every node took claims (claim_many spreads them), so each timed proposals.
        let proposals = sample(&text, "x402_proposal_seconds_count", &[]).unwrap_or(0.0);
        assert!(
            proposals >= 1.0,
            "node {} timed {proposals} proposals",
            s.id
        );
    }

    // `x402ctl check`: one applied index, one state hash.
    let out = cluster.x402ctl(&all, &["check"]).await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "x402ctl check: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.starts_with("3 nodes agree at applied index "),
        "{said}"
    );

    // Kill two of three (the leader among them): the survivor cannot reach a quorum.
    let leader = cluster.leader_id().await;
    let survivor = *all.iter().find(|&&i| i != leader).unwrap();
    for &id in &all {
        if id != survivor {
            cluster.kill9(id);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let readiness = loop {
        let (status, body) = get(&cluster, survivor, "/readyz").await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            let readiness: Readiness = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("503 readyz is not a Readiness ({e}): {body:?}"));
            break readiness;
        }
        assert_eq!(status, StatusCode::OK, "readyz answered {status}: {body:?}");
        assert!(
            Instant::now() < deadline,
            "the survivor of a 3-node cluster still says ready without a quorum"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!readiness.ready, "{readiness:?}");
    assert!(
        !readiness.reasons.is_empty() && readiness.reasons.iter().all(|r| !r.is_empty()),
        "a not-ready node must say why: {readiness:?}"
    );
    // It stops naming a leader (a dashboard's "no leader" is this on every node).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = get(&cluster, survivor, "/metrics").await;
        let text = String::from_utf8_lossy(&body).into_owned();
        if sample(&text, "x402_has_leader", &[]) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor still names a leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alive though, and it keeps saying not ready.
    let (status, _) = get(&cluster, survivor, "/livez").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&cluster, survivor, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // A write without a quorum fails within the write deadline (3 s by default), not never, and
    // never claims success.
    let started = Instant::now();
    let answer = cluster
        .admin(survivor)
        .claim(&workload::claim(salt, 1_000))
        .await;
    let took = started.elapsed();
    let err = answer.expect_err("a write without a quorum cannot succeed");
    let status = err.status();
    assert!(
        matches!(
            status,
            Some(StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
        ),
        "write without a quorum answered {err}"
    );
    assert!(took < Duration::from_secs(8), "the write took {took:?}");
    // Status and metrics still answer on the survivor.
    cluster.status(survivor).await;
    let (status, _) = get(&cluster, survivor, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    cluster.assert_running(survivor);
}

#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    let cluster = LocalCluster::start_with(
        1,
        x402_tests::ClusterOptions::default().toml("log_format = \"json\""),
    )
    .await;
    workload::claim_many(&cluster.admins(&[1]), workload::new_salt(), 0..5, 1).await;
    let log = cluster.log_text(1);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "a node that started logs: {log}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["level"].is_string(), "{line}");
        assert!(object["target"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"message\":\"starting x402-node\"")),
        "the start-up line, as JSON: {log}"
    );
}
