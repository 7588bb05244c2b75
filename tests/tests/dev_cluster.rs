//! The cluster harness on the dev chain: nodes started with [`ClusterOptions::on`] load its
//! `[facilitator]` section and signer keys, and form a cluster.

use alloy::primitives::U256;
use x402_tests::devchain::{signer_keys_csv, PAYER, PAYER_FUNDS, SIGNER_KEYS_ENV};
use x402_tests::{ClusterOptions, DevChain, LocalCluster};

#[tokio::test]
async fn a_cluster_starts_on_the_dev_chain() {
    let chain = DevChain::start(31337).await;
    assert_eq!(chain.token.balance_of(PAYER).await, U256::from(PAYER_FUNDS));
    assert_eq!(chain.v1_name().as_deref(), Some("anvil"));
    let options = ClusterOptions::on(&chain);
    assert!(options
        .env
        .iter()
        .any(|(k, v)| k == SIGNER_KEYS_ENV && *v == signer_keys_csv()));
    let mut cluster = LocalCluster::start_with(3, options).await;
    for id in cluster.ids() {
        let config = std::fs::read_to_string(cluster.config_path(id)).unwrap();
        assert!(config.contains(&chain.facilitator_toml()), "{config}");
        cluster.assert_running(id);
    }
    cluster.wait_converged().await;
}
