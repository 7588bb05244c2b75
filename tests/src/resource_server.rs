//! Resource servers and paying clients of the official x402 SDKs (`deploy/local/demo`), as
//! processes: `server.mjs` (`@x402/express` 2.27) or `server-v1.mjs` (`x402-express` 1.2) with
//! one node as facilitator, and node scripts run to completion. Their `node_modules` come from
//! `npm ci` in that folder (`scripts/test.sh` runs it); a missing install fails the test and
//! says so.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::devchain::{workspace_root, DevChain, MERCHANT, PAYER_KEY};

/// How long a resource server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The demo folder, with its `node_modules` installed.
pub fn demo_dir() -> PathBuf {
    let dir = workspace_root().join("deploy/local/demo");
    assert!(
        dir.join("node_modules/@x402/express").is_dir()
            && dir.join("node_modules/x402-express").is_dir(),
        "{} has no node_modules: run `npm ci` there (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A free loopback port (a race with other processes is possible, and harmless here: a
/// server that cannot bind fails to start and says so).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One resource server process; killed when dropped.
pub struct ResourceServer {
    child: Child,
    /// `http://127.0.0.1:<port>/paid`.
    pub url: String,
    log: mpsc::Receiver<String>,
}

impl ResourceServer {
    /// Starts `script` (in the demo folder) with `env` and a free port, and waits for its ready
    /// line.
    pub fn start(script: &str, env: &BTreeMap<&str, String>) -> ResourceServer {
        let port = free_port();
        let mut child = Command::new("node")
            .arg(script)
            .current_dir(demo_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start node {script}: {e} (is node installed?)"));
        let (lines, log) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.starts_with("server: ready") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "{script} did not get ready in {READY_TIMEOUT:?}:\n{}",
                        seen.join("\n")
                    );
                }
            }
        }
        ResourceServer {
            child,
            url: format!("http://127.0.0.1:{port}/paid"),
            log,
        }
    }

    /// What the server printed since it got ready.
    pub fn output(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` (in the demo folder) with `env` to its end; its stdout. Panics, with its
/// output, if it fails.
pub fn run_script(script: &str, env: &BTreeMap<&str, String>) -> String {
    let output = Command::new("node")
        .arg(script)
        .current_dir(demo_dir())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("run node {script}: {e} (is node installed?)"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `demo.sh` (a resource server with `@x402/express` whose facilitator is `nodes`, and a
/// client paying it with `@x402/fetch`) on `chain`, trusting `cacert` for https:// nodes (as
/// `X402_CACERT`, which demo.sh hands to node as `NODE_EXTRA_CA_CERTS`). Its stdout; panics if
/// it fails or shows the payer's key.
pub fn pay_with_demo(chain: &DevChain, nodes: &str, cacert: Option<&Path>) -> String {
    let demo = workspace_root().join("deploy/local/demo/demo.sh");
    let mut command = Command::new("bash");
    if let Some(ca) = cacert {
        command.env("X402_CACERT", ca);
    }
    let output = command
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

/// The settlement transaction of a `demo.sh` run (its `paid: tx` line).
pub fn paid_tx(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("paid: tx "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no 'paid: tx' line in:\n{stdout}"))
        .to_owned()
}
