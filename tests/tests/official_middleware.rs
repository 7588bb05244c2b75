//! The official x402 SDK against the cluster: `deploy/local/demo` runs a resource server with
//! `@x402/express` 2.27 whose facilitator is a 3-node cluster, and a client paying with
//! `@x402/fetch`; the paid request gets its resource, the payment response header names the
//! settlement, and the chain shows exactly one `Transfer` for it. Then the same, with one node
//! (the one the server asks first) killed: the server fails over to the next node.
//!
//! One payment buys one resource: a payer sends one signed payment in five requests at once,
//! spread over three resource servers that each ask another node (v2 with `@x402/express` 2.27,
//! v1 with `x402-express` 1.2): exactly one request gets the resource, the others 402, and the
//! chain shows one transfer.
//!
//! And over TLS: the same SDK pays through `https://` node URLs, trusting the cluster's CA
//! through `NODE_EXTRA_CA_CERTS` (what `X402_TLS=1 deploy/local/quickstart.sh` sets up).

use std::collections::BTreeMap;

use alloy::primitives::B256;
use serde_json::Value;
use x402_tests::devchain::{
    facilitator_toml, signer_keys_csv, DevChain, MERCHANT, PAYER, PAYER_KEY, SIGNER_KEYS_ENV,
};
use x402_tests::resource_server::{paid_tx, pay_with_demo, run_script, ResourceServer};
use x402_tests::{ClusterOptions, LocalCluster};

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
    let tx = paid_tx(&pay_with_demo(&chain, &nodes, None));
    let transfers = chain.token.transfer_logs(0).await;
    assert_eq!(transfers.len(), transfers_before + 1, "{transfers:?}");
    assert_eq!(transfers.last().map(|t| t.tx_hash.to_string()), Some(tx));

    // The node the server asks first is dead: it fails over, the payment still goes through.
    cluster.kill9(1);
    cluster.wait_leader_among(&[2, 3]).await;
    let tx = paid_tx(&pay_with_demo(&chain, &nodes, None));
    let transfers = chain.token.transfer_logs(0).await;
    assert_eq!(transfers.len(), transfers_before + 2);
    assert_eq!(transfers.last().map(|t| t.tx_hash.to_string()), Some(tx));
}

#[tokio::test]
async fn the_official_middleware_pays_through_https_nodes() {
    let chain = DevChain::start(31337).await;
    let cluster = LocalCluster::start_with(3, ClusterOptions::on(&chain).tls()).await;
    let nodes = cluster.urls_csv(&[1, 2, 3]);
    assert!(nodes.starts_with("https://"), "{nodes}");
    let ca = cluster.root().join("tls").join("ca.pem");
    let before = chain.token.transfer_logs(0).await.len();
    // demo.sh hands X402_CACERT to node as NODE_EXTRA_CA_CERTS, as DIR/env does for a user.
    let tx = paid_tx(&pay_with_demo(&chain, &nodes, Some(&ca)));
    let transfers = chain.token.transfer_logs(0).await;
    assert_eq!(transfers.len(), before + 1, "{transfers:?}");
    assert_eq!(transfers.last().map(|t| t.tx_hash.to_string()), Some(tx));
}

/// Copies of one payment sent at once.
const COPIES: usize = 5;

#[tokio::test]
async fn one_payment_sent_five_times_at_once_buys_one_resource() {
    let local = DevChain::start(31337).await;
    let sepolia = DevChain::start(84532).await;
    let toml = facilitator_toml(
        &[
            (&local.network(), None, local.anvil.url(), &local.token),
            (
                &sepolia.network(),
                Some("base-sepolia"),
                sepolia.anvil.url(),
                &sepolia.token,
            ),
        ],
        SIGNER_KEYS_ENV,
    );
    let cluster = LocalCluster::start_with(
        3,
        ClusterOptions::default()
            .toml(toml)
            .env(SIGNER_KEYS_ENV, signer_keys_csv()),
    )
    .await;
    for (chain, script, version) in [(&local, "server.mjs", 2), (&sepolia, "server-v1.mjs", 1)] {
        let servers: Vec<ResourceServer> = (1..=3)
            .map(|id| {
                let mut env = BTreeMap::from([
                    ("X402_NETWORK", chain.network()),
                    ("X402_V1_NETWORK", "base-sepolia".to_owned()),
                    ("X402_TOKEN", chain.token.address.to_checksum(None)),
                    ("X402_TOKEN_NAME", chain.token.name.clone()),
                    ("X402_TOKEN_VERSION", chain.token.version.clone()),
                    ("X402_PAY_TO", MERCHANT.to_checksum(None)),
                    ("X402_FACILITATOR_URL", cluster.url(id).to_owned()),
                ]);
                // Every v1 server names the same resource (v2 payloads carry their own).
                env.insert("X402_RESOURCE", "http://shop.test/paid".to_owned());
                ResourceServer::start(script, &env)
            })
            .collect();
        let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
        let out = run_script(
            "replay.mjs",
            &BTreeMap::from([
                ("X402_SERVER_URLS", urls.join(",")),
                ("X402_PAYER_KEY", PAYER_KEY.to_owned()),
                ("X402_COPIES", COPIES.to_string()),
                ("X402_TOKEN", chain.token.address.to_checksum(None)),
            ]),
        );
        let report: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("replay.mjs printed no JSON ({e}): {out}"));
        assert_eq!(report["version"], version, "{report}");
        let answers = report["answers"].as_array().expect("answers");
        assert_eq!(answers.len(), COPIES, "{report}");
        let paid: Vec<&Value> = answers.iter().filter(|a| a["status"] == 200).collect();
        assert_eq!(
            paid.len(),
            1,
            "v{version}: one resource for one payment: {report}"
        );
        assert!(
            answers
                .iter()
                .filter(|a| a["status"] != 200)
                .all(|a| a["status"] == 402),
            "v{version}: the others are refused with 402: {report}"
        );
        let settle = &paid[0]["settle"];
        assert_eq!(settle["success"], true, "{report}");
        let tx = settle["transaction"].as_str().expect("a transaction");
        let nonce: B256 = report["nonce"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .expect("the payment's nonce");
        let transfers = chain.token.transfers_of_authorization(PAYER, nonce).await;
        assert_eq!(
            transfers.len(),
            1,
            "v{version}: one transfer: {transfers:?}"
        );
        assert_eq!(transfers[0].tx_hash.to_string(), tx);
        println!("v{version}: {report}");
        for s in &servers {
            let log = s.output();
            if !log.is_empty() {
                println!("{}: {log}", s.url);
            }
        }
    }
}
