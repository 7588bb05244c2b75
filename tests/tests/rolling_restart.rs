//! Graceful shutdown under load: every node of a 3-node cluster is stopped with SIGTERM and
//! started again, followers first and the leader last, while `x402ctl bench claims` (replicated
//! writes) and `x402ctl bench verify` (signature checks and nonce claims) keep every node busy.
//! Each node must exit 0; the leader must hand its leadership to a follower before it exits; and
//! neither load generator may see one failed request: a request is either answered, or it found
//! no node listening and went to the next one (a failover, nothing sent). The longest stall each
//! load generator saw is printed. `x402ctl leader move` is tested here too: the same hand-off,
//! asked for by an operator.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use x402_client::bench::BenchReport;
use x402_tests::devchain::{facilitator_toml_with, signer_keys_csv, SIGNER_KEYS_ENV};
use x402_tests::{ClusterOptions, DevChain, LocalCluster};

/// How long both load generators run; the restarts must finish within it.
const LOAD_SECS: u64 = 20;
/// Load kept on each restarted node before the next one is stopped.
const SETTLE_AFTER_RESTART: Duration = Duration::from_secs(1);

/// A load generator running as its own process: its JSON report once it ends.
struct Load {
    name: &'static str,
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts `x402ctl --json ARGS`; returns once its stderr printed a line containing
    /// `started_when` (none: at once).
    async fn start(
        cluster: &LocalCluster,
        name: &'static str,
        args: &[&str],
        started_when: Option<&'static str>,
    ) -> Load {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let mut command = cluster.x402ctl_command(&cluster.ids(), &all);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn x402ctl");
        let stderr = child.stderr.take().expect("piped stderr");
        let (started, is_started) = tokio::sync::oneshot::channel();
        let stderr = tokio::spawn(async move {
            let mut started = Some(started);
            let mut lines = BufReader::new(stderr).lines();
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if started_when.is_none_or(|marker| line.contains(marker)) {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                }
                seen.push(line);
            }
            seen
        });
        if started_when.is_some() {
            tokio::time::timeout(Duration::from_secs(120), is_started)
                .await
                .unwrap_or_else(|_| panic!("{name} did not start within 120 s"))
                .unwrap_or_else(|_| panic!("{name} ended before it started"));
        }
        Load {
            name,
            child,
            stderr,
        }
    }

    async fn report(self) -> BenchReport {
        let out = tokio::time::timeout(
            Duration::from_secs(LOAD_SECS + 60),
            self.child.wait_with_output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{} did not end", self.name))
        .expect("x402ctl output");
        let stderr = self.stderr.await.expect("stderr reader").join("\n");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}): {stdout} {stderr}",
            self.name,
            out.status
        );
        let report: BenchReport = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{}: no JSON report ({e}): {stdout}", self.name));
        assert_eq!(
            report.errors, 0,
            "{}: requests failed during the rolling restart: {report:?}\n{stderr}",
            self.name
        );
        assert!(report.ops > 0, "{}: {report:?}", self.name);
        report
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_under_load_fails_no_request() {
    let chain = DevChain::start(31337).await;
    let network = chain.network();
    let v1_name = chain.v1_name();
    let facilitator = facilitator_toml_with(
        &[(
            &network,
            v1_name.as_deref(),
            chain.anvil.url(),
            &chain.token,
        )],
        SIGNER_KEYS_ENV,
        "onchain_checks = false",
        "",
    );
    let mut cluster = LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(facilitator)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await;
    cluster.wait_converged().await;
    let term_before = max_term(&cluster).await;

    let secs = LOAD_SECS.to_string();
    let token = chain.token.address.to_checksum(None);
    let pay_to = x402_tests::devchain::MERCHANT.to_checksum(None);
    // Signed before its clock starts: its run begins with the "signed" line.
    let verify = Load::start(
        &cluster,
        "bench verify",
        &[
            "bench",
            "verify",
            "--network",
            &network,
            "--asset",
            &token,
            "--pay-to",
            &pay_to,
            "--amount",
            "10000",
            "--token-name",
            &chain.token.name,
            "--token-version",
            &chain.token.version,
            "--payments",
            "150000",
            "--concurrency",
            "6",
            "--duration",
            &secs,
        ],
        Some("signed"),
    )
    .await;
    let claims = Load::start(
        &cluster,
        "bench claims",
        &[
            "bench",
            "claims",
            "--concurrency",
            "12",
            "--duration",
            &secs,
        ],
        None,
    )
    .await;
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Followers first, the leader last, as the upgrade runbook says.
    let leader = cluster.leader_id().await;
    let mut order: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    order.push(leader);
    for id in order {
        let led = cluster.leader_id().await == id;
        let stopping = Instant::now();
        let status = cluster.stop(id);
        let stopped_in = stopping.elapsed();
        assert!(
            status.success(),
            "node {id} exited with {status} on SIGTERM:\n{}",
            cluster.log_text(id)
        );
        let log = cluster.log_text(id);
        if led {
            let handoff: Vec<&str> = log.lines().filter(|l| l.contains("handoff")).collect();
            assert!(
                handoff.iter().any(|l| l.contains("leadership handed off")),
                "node {id} led and exited without handing off:\n{log}"
            );
            eprintln!("node {id}:\n{}", handoff.join("\n"));
        }
        eprintln!("node {id} (leader: {led}) exited 0 in {stopped_in:?}");
        cluster.restart(id);
        wait_ready(&cluster, id).await;
        tokio::time::sleep(SETTLE_AFTER_RESTART).await;
    }
    let restarts_took = load_started.elapsed();
    assert!(
        restarts_took < Duration::from_secs(LOAD_SECS),
        "the restarts took {restarts_took:?}, longer than the load ({LOAD_SECS} s)"
    );

    let claims = claims.report().await;
    let verify = verify.report().await;
    cluster.wait_converged().await;
    let elections = max_term(&cluster).await - term_before;
    eprintln!(
        "rolling restart of 3 nodes in {restarts_took:?} under load; elections: {elections}\n\
         bench claims: {} ops ({:.0}/s), 0 failed, {} failovers, longest stall {:.1} ms\n\
         bench verify: {} ops ({:.0}/s), 0 failed, {} failovers, longest stall {:.1} ms",
        claims.ops,
        claims.ops_per_sec,
        claims.failovers,
        claims.max_stall_ms,
        verify.ops,
        verify.ops_per_sec,
        verify.failovers,
        verify.max_stall_ms
    );
}

/// Waits until node `id` answers `/readyz` with 200: it knows the leader and has applied what
/// a linearizable read through it needs.
async fn wait_ready(cluster: &LocalCluster, id: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cluster.admin(id).readyz().await {
            Ok(r) if r.ready => return,
            answer => assert!(
                Instant::now() < deadline,
                "node {id} not ready 30 s after its restart: {answer:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn max_term(cluster: &LocalCluster) -> u64 {
    cluster
        .statuses()
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok().map(|s| s.term))
        .max()
        .expect("a node answers")
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_move_hands_leadership_to_the_named_voter() {
    let mut cluster = LocalCluster::start(3).await;
    let leader = cluster.leader_id().await;
    let followers: Vec<u64> = cluster
        .ids()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    let term_before = max_term(&cluster).await;

    // Through a follower, which passes it to the leader.
    let to = followers[1];
    let moved: x402_protocol::wire::LeaderMoveResponse = cluster
        .x402ctl_json(
            &[followers[0]],
            &["leader", "move", "--to", &to.to_string()],
        )
        .await;
    assert_eq!(moved.leader, to);
    assert_eq!(cluster.wait_leader().await, to);
    assert_eq!(max_term(&cluster).await, term_before + 1, "one election");

    // Asking for the leader it already has changes nothing.
    let unchanged: x402_protocol::wire::LeaderMoveResponse = cluster
        .x402ctl_json(&[leader], &["leader", "move", "--to", &to.to_string()])
        .await;
    assert_eq!(unchanged.leader, to);
    assert_eq!(max_term(&cluster).await, term_before + 1);

    // Any caught-up voter.
    let any: x402_protocol::wire::LeaderMoveResponse =
        cluster.x402ctl_json(&[to], &["leader", "move"]).await;
    assert_ne!(any.leader, to);
    assert_eq!(cluster.wait_leader().await, any.leader);

    // A node that is not a voter: refused, and nothing changes.
    let out = cluster
        .x402ctl(&[to], &["leader", "move", "--to", "9"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not_a_voter"),
        "{} {stderr}",
        out.status
    );
    assert_eq!(cluster.wait_leader().await, any.leader);

    // Health and versions, as an operator checks them around maintenance.
    let health: x402_protocol::wire::ClusterHealth =
        cluster.x402ctl_json(&cluster.ids(), &["health"]).await;
    assert!(
        health.healthy && health.failure_tolerance == 1,
        "{health:?}"
    );
    let out = cluster.x402ctl(&cluster.ids(), &["version"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("every node that answered runs"),
        "{text}"
    );

    // One voter stopped: no failure tolerance left, `health` says so and fails.
    let leader = any.leader;
    let follower = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    assert!(cluster.stop(follower).success());
    let out = cluster.x402ctl(&cluster.ids(), &["health"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("one more failure stops writes"),
        "{text}"
    );
    // The leader then stops too: the voter left refuses to take over (it is not stopping, but
    // the stopped one cannot), so the leader hands off to it or, failing that, stops as the
    // leader; either way it exits 0 without waiting out its bounds.
    assert!(cluster.stop(leader).success());
}

/// Five voters: the candidate also needs a follower's vote, which a follower refuses until it
/// has missed the old leader's heartbeats for a lease; the hand-off still completes, and a
/// leader stopped with SIGTERM hands off before it exits.
#[tokio::test(flavor = "multi_thread")]
async fn five_voters_hand_off_on_move_and_on_sigterm() {
    let mut cluster = LocalCluster::start(5).await;
    let leader = cluster.leader_id().await;
    let to = cluster.ids().into_iter().find(|id| *id != leader).unwrap();
    let moved: x402_protocol::wire::LeaderMoveResponse = cluster
        .x402ctl_json(&[leader], &["leader", "move", "--to", &to.to_string()])
        .await;
    assert_eq!(moved.leader, to);
    assert_eq!(cluster.wait_leader().await, to);

    assert!(cluster.stop(to).success(), "{}", cluster.log_text(to));
    let log = cluster.log_text(to);
    let handed_off = log
        .lines()
        .find(|l| l.contains("leadership handed off"))
        .unwrap_or_else(|| panic!("node {to} led and exited without handing off:\n{log}"));
    eprintln!("5 voters, SIGTERM of the leader: {handed_off}");
    let next = cluster.wait_leader().await;
    assert_ne!(next, to);
}
