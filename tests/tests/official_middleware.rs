//! The official x402 SDK against the cluster: `deploy/local/demo` runs a resource server with
//! `@x402/express` 2.27 whose facilitator is a 3-node cluster, and a client paying with
//! `@x402/fetch`; the paid request gets its resource, the payment response header names the
//! settlement, and the chain shows exactly one `Transfer` for it. Then the same, with one node
//! (the one the server asks first) killed: the server fails over to the next node.

use std::net::TcpListener;
use std::process::Command;

use x402_tests::devchain::{
    facilitator_toml, signer_keys_csv, workspace_root, DevChain, MERCHANT, PAYER_KEY,
    SIGNER_KEYS_ENV,
};
use x402_tests::{ClusterOptions, LocalCluster};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs demo.sh against `nodes`; its stdout.
fn pay_through(chain: &DevChain, nodes: &str) -> String {
    let demo = workspace_root().join("deploy/local/demo/demo.sh");
    let output = Command::new("bash")
        .arg(demo)
        .env("X402_NODES", nodes)
        .env("X402_NETWORK", chain.network())
        .env("X402_TOKEN", chain.token.address.to_checksum(None))
        .env("X402_TOKEN_NAME", &chain.token.name)
        .env("X402_TOKEN_VERSION", &chain.token.version)
        .env("X402_PAY_TO", MERCHANT.to_checksum(None))
        .env("X402_PAYER_KEY", PAYER_KEY)
        .env("X402_RPC_URL", chain.anvil.url())
        .env("PORT", free_port().to_string())
        .output()
        .expect("run demo.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo.sh failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        !stdout.contains(PAYER_KEY) && !stderr.contains(PAYER_KEY),
        "the key leaked"
    );
    stdout
}

fn paid_tx(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("paid: tx "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no 'paid: tx' line in:\n{stdout}"))
        .to_owned()
}

#[tokio::test]
async fn the_official_middleware_gets_paid_through_any_node() {
    let chain = DevChain::start(31337).await;
    let toml = facilitator_toml(
        &[(&chain.network(), None, chain.anvil.url(), &chain.token)],
        SIGNER_KEYS_ENV,
    );
    let mut cluster = LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(toml)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await;
    let transfers_before = chain.token.transfer_logs(0).await.len();
    let nodes = cluster.urls_csv(&[1, 2, 3]);
    let tx = paid_tx(&pay_through(&chain, &nodes));
    let transfers = chain.token.transfer_logs(0).await;
    assert_eq!(transfers.len(), transfers_before + 1, "{transfers:?}");
    assert_eq!(transfers.last().map(|t| t.tx_hash.to_string()), Some(tx));

    // The node the server asks first is dead: it fails over, the payment still goes through.
    cluster.kill9(1);
    cluster.wait_leader_among(&[2, 3]).await;
    let tx = paid_tx(&pay_through(&chain, &nodes));
    let transfers = chain.token.transfer_logs(0).await;
    assert_eq!(transfers.len(), transfers_before + 2);
    assert_eq!(transfers.last().map(|t| t.tx_hash.to_string()), Some(tx));
}
