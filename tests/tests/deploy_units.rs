//! The systemd unit (`deploy/systemd/x402-node.service`) is valid for the systemd it runs
//! under (`systemd-analyze verify`, with `ExecStart` pointed at the binary this run built), and
//! keeps the promises the README makes: restart on failure except for the exit statuses a
//! restart cannot fix (65: the store needs a rebuild, 78: the configuration does not load), an
//! explicit file limit, SIGHUP to reload certificates. The Kubernetes manifests validate against a
//! pinned schema and their configuration runs the real binary; a pod takes its node id from its
//! ordinal.

use std::process::Command;

use x402_tests::cluster::bin_dir;
use x402_tests::devchain::workspace_root;

#[test]
fn the_systemd_unit_verifies_and_keeps_its_exit_status_promises() {
    let unit = std::fs::read_to_string(workspace_root().join("deploy/systemd/x402-node.service"))
        .expect("read the unit");
    for line in [
        "ExecStart=/usr/local/bin/x402-node --config /etc/x402/node.toml",
        "Restart=on-failure",
        "RestartPreventExitStatus=65 78",
        "LimitNOFILE=65536",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    let binary = bin_dir().join("x402-node");
    assert!(binary.is_file(), "{} not built", binary.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x402-node.service");
    let local = unit.replace("/usr/local/bin/x402-node", &binary.to_string_lossy());
    std::fs::write(&path, local).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install Debian's systemd package")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("x402-node.service"),
        "systemd-analyze has something to say about the unit: {said}"
    );
}

/// A StatefulSet pod `x402-2` with `node_id_from_hostname = true` runs as node 3: the binary
/// takes its id from the host name, so one configuration serves every replica.
#[tokio::test]
async fn a_pod_takes_its_node_id_from_its_ordinal() {
    use x402_tests::resource_server::free_port;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node_id_from_hostname = true\nlisten = \"127.0.0.1:{port}\"\n\
             data_dir = {:?}\n\n[bootstrap]\n3 = \"{url}\"\n",
            dir.path().join("data")
        ),
    )
    .expect("write the config");
    let secret = "a-cluster-secret-for-this-test";
    let mut node = tokio::process::Command::new(bin_dir().join("x402-node"));
    node.arg("--config")
        .arg(&config)
        .env_clear()
        .env("HOSTNAME", "x402-2")
        .env("X402_CLUSTER_SECRET", secret)
        .env("X402_ADMIN_TOKEN", secret);
    let status = status_of_running_node(node, &url, secret, "its config").await;
    assert_eq!(status.id, 3, "{status:?}");
}

/// The Kubernetes manifests (`deploy/kubernetes/`) are valid against the pinned Kubernetes
/// schema (1.31, strict: no unknown field), keep the promises the README makes, and the
/// ConfigMap's `node.toml` runs the real binary as pod `x402-1` (node 2).
#[tokio::test]
async fn the_kubernetes_manifests_validate_and_their_config_runs() {
    let manifests = workspace_root().join("deploy/kubernetes/x402.yaml");
    let out = Command::new("python3")
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            "1.31.0",
        ])
        .arg(&manifests)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e})"));
    assert!(
        out.status.success(),
        "kubernetes-validate (pip install kubernetes-validate==1.37.0) refused the manifests: \
         {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&manifests).expect("read the manifests");
    for line in [
        "  podManagementPolicy: Parallel",
        "  publishNotReadyAddresses: true",
        "  maxUnavailable: 1",
        "            - topologyKey: kubernetes.io/hostname",
        "            httpGet: {path: /readyz, port: api}",
        "            httpGet: {path: /livez, port: api}",
        "    node_id_from_hostname = true",
        "      terminationGracePeriodSeconds: 30",
        "    shutdown_timeout_ms = 10000",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "the manifests lack {line:?}"
        );
    }
    let monitor =
        std::fs::read_to_string(workspace_root().join("deploy/kubernetes/servicemonitor.yaml"))
            .expect("read the ServiceMonitor");
    assert!(monitor.contains("kind: ServiceMonitor") && monitor.contains("path: /metrics"));

    // The ConfigMap's node.toml, as the pod reads it, with the pod's paths and ports moved into
    // a temporary directory and free ports by the environment (as overrides, like the
    // StatefulSet's own X402_ADVERTISE_* variables).
    let extract = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
             print([d for d in docs if d['kind'] == 'ConfigMap'][0]['data']['node.toml'])",
        ])
        .arg(&manifests)
        .output()
        .expect("python3 with PyYAML (a dependency of kubernetes-validate)");
    assert!(
        extract.status.success(),
        "{}",
        String::from_utf8_lossy(&extract.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, &extract.stdout).expect("write node.toml");
    let secret = "a-cluster-secret-for-this-test";
    for name in ["cluster-secret", "admin-token"] {
        std::fs::write(dir.path().join(name), secret).expect("write a secret file");
    }
    let (api, peer) = (
        x402_tests::resource_server::free_port(),
        x402_tests::resource_server::free_port(),
    );
    let url = format!("http://127.0.0.1:{api}");
    let mut node = tokio::process::Command::new(bin_dir().join("x402-node"));
    node.arg("--config")
        .arg(&config)
        .env_clear()
        .env("HOSTNAME", "x402-1")
        .env("X402_LISTEN", format!("127.0.0.1:{api}"))
        .env("X402_PEER_LISTEN", format!("127.0.0.1:{peer}"))
        .env("X402_ADVERTISE_URL", &url)
        .env("X402_ADVERTISE_PEER_URL", "http://x402-1.x402-peers:7002")
        .env("X402_DATA_DIR", dir.path().join("data"))
        .env(
            "X402_CLUSTER_SECRET_FILE",
            dir.path().join("cluster-secret"),
        )
        .env("X402_ADMIN_TOKEN_FILE", dir.path().join("admin-token"));
    let status = status_of_running_node(node, &url, secret, "the ConfigMap's node.toml").await;
    assert_eq!(status.id, 2, "{status:?}");
}

/// Starts `node` (an `x402-node` command), waits until its admin API at `url` answers its
/// status with `secret`, stops it and returns that status; if it exits first, fails with what
/// it printed on `what` (the configuration it was given).
async fn status_of_running_node(
    mut node: tokio::process::Command,
    url: &str,
    secret: &str,
    what: &str,
) -> x402_protocol::wire::NodeStatus {
    let mut node = node
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn x402-node");
    let admin = x402_client::AdminClient::new(url, Some(secret), &Default::default())
        .expect("an admin client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match admin.status().await {
            Ok(status) => break status,
            Err(e) => {
                if let Ok(Some(exit)) = node.try_wait() {
                    let mut stderr = String::new();
                    use tokio::io::AsyncReadExt;
                    let _ = node
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut stderr)
                        .await;
                    panic!("x402-node exited ({exit}) on {what}: {stderr}");
                }
                assert!(std::time::Instant::now() < deadline, "no status: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let _ = node.kill().await;
    status
}
