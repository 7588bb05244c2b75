//! [`LocalCluster`]: real `x402-node` processes on 127.0.0.1, for end-to-end tests.
//!
//! `LocalCluster::start(n)` picks free loopback ports (bind port 0, read it, release it), writes
//! one config TOML per node (with any [`ClusterOptions::toml`] fragments, e.g. a `[facilitator]`
//! section from [`crate::devchain`]) plus the cluster secret and admin token files in a temporary
//! directory (the same layout `deploy/local/up.sh` writes), spawns the nodes with their
//! stdout/stderr appended to `<tmp>/node<id>/node.log`, and returns once every node names the
//! same leader and that leader says it leads.
//!
//! Nodes are addressed by their Raft id (1..=n for the founding members). The harness can
//! `kill9` a node (SIGKILL, nothing flushed), `stop` it (SIGTERM), `restart` it on the same
//! port and data directory, start an extra node with no bootstrap members (membership tests),
//! and wait for an agreed leader or for every node to reach the same applied index and state
//! hash.
//!
//! Never leaves processes behind: every child is SIGKILLed and reaped on `Drop`, and on Linux
//! each child also gets `PR_SET_PDEATHSIG = SIGKILL`, so even a test process killed by a timeout
//! takes its nodes with it. When a test panics, `Drop` prints the tail of every node's log (and
//! keeps the directory when `X402_TEST_KEEP_DIR` is set).
//!
//! Binaries come from `X402_BIN_DIR` (set by `scripts/test.sh`), falling back to
//! `<workspace>/target/debug`; build them with `cargo build -p x402-node -p x402-client --bins`.
//! Every inherited `X402_*` variable is removed from the children's environment (an operator's
//! `X402_ADMIN_TOKEN` would otherwise override the harness's), then [`ClusterOptions::env`] is
//! applied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response};
use tempfile::TempDir;
use x402_client::{AdminClient, ClientError, HttpClient, HttpConfig};
use x402_dev::devchain::{signer_keys_csv, DevChain, SIGNER_KEYS_ENV};
use x402_dev::process::{die_with_parent, toml_str};
use x402_protocol::wire::{NodeStatus, Role};

use crate::netns::Hosts;

/// How long a cluster may take to elect a leader every node agrees on.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long nodes may take to reach the same applied index and state hash.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of the nodes.
pub const POLL: Duration = Duration::from_millis(100);
/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 60;

/// Settings applied to every node of a cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// Extra environment for every node, e.g. `("X402_RAFT__SNAPSHOT_AFTER_LOGS", "100")`.
    pub env: Vec<(String, String)>,
    /// TOML fragments added to every node's config, in order (see [`ClusterOptions::toml`]).
    pub toml: Vec<String>,
    /// Serve every node's API over TLS and peers over mutual TLS (see [`ClusterOptions::tls`]).
    pub tls: bool,
    /// Run node `i` on host `i` of these (see [`ClusterOptions::on_hosts`]).
    pub hosts: Option<std::sync::Arc<Hosts>>,
}

impl ClusterOptions {
    /// Options of nodes that settle on `chain`: its `[facilitator]` section and the signer keys
    /// in [`crate::devchain::SIGNER_KEYS_ENV`]; add more with [`ClusterOptions::env`] /
    /// [`ClusterOptions::toml`].
    pub fn on(chain: &DevChain) -> Self {
        ClusterOptions::default()
            .toml(chain.facilitator_toml())
            .env(SIGNER_KEYS_ENV, signer_keys_csv())
    }

    /// Serves every node's API over TLS: a cluster CA and node certificates are issued into
    /// `<root>/tls` (as `x402ctl tls init` does), node URLs are `https://`, and the harness's
    /// client and `x402ctl` trust that CA (`X402_CACERT`). Peers speak mutual TLS with the
    /// same certificates (`peer_ca_file`), and their member URLs are `https://` too.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Runs node `i` in network namespace `i` of `hosts`, listening on that host's address only
    /// (its certificates name every host's address). The harness and `x402ctl` reach the nodes
    /// through the bridge.
    pub fn on_hosts(mut self, hosts: std::sync::Arc<Hosts>) -> Self {
        self.hosts = Some(hosts);
        self
    }

    /// Adds one environment setting for every node.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Adds a TOML fragment to every node's config, e.g. the `[facilitator]` section of
    /// [`crate::devchain::facilitator_toml`]. Fragments go after the node's own top-level keys
    /// and before its `[bootstrap]` table, so a fragment may hold top-level keys as well as
    /// tables (a key the harness writes itself, such as `node_id`, must not be repeated).
    pub fn toml(mut self, fragment: impl Into<String>) -> Self {
        self.toml.push(fragment.into());
        self
    }
}

/// One node process and its files.
struct NodeProc {
    url: String,
    /// Where its peers reach it (its own port for the peer API).
    peer_url: String,
    config: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of real `x402-node` processes on loopback. See the module documentation.
pub struct LocalCluster {
    /// `None` only while `Drop` decides whether to keep it.
    dir: Option<TempDir>,
    root: PathBuf,
    bin_dir: PathBuf,
    options: ClusterOptions,
    admin_token: String,
    cluster_secret: String,
    nodes: BTreeMap<u64, NodeProc>,
    http: HttpClient,
}

impl LocalCluster {
    /// Starts an `n`-node cluster with default settings and waits for an agreed leader.
    pub async fn start(n: u64) -> Self {
        Self::start_with(n, ClusterOptions::default()).await
    }

    /// Starts an `n`-node cluster (ids 1..=n, all bootstrap members) and waits for an agreed
    /// leader.
    pub async fn start_with(n: u64, options: ClusterOptions) -> Self {
        assert!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::Builder::new()
            .prefix("x402-cluster-")
            .tempdir()
            .expect("create the cluster's temporary directory");
        let root = dir.path().to_path_buf();
        let bin_dir = bin_dir();
        for bin in ["x402-node", "x402ctl"] {
            assert!(
                bin_dir.join(bin).is_file(),
                "{} not found: run `cargo build -p x402-node -p x402-client --bins` \
                 (or set X402_BIN_DIR)",
                bin_dir.join(bin).display()
            );
        }
        let cluster_secret = random_secret();
        let admin_token = random_secret();
        write_secret(&root.join("cluster-secret"), &cluster_secret);
        write_secret(&root.join("admin-token"), &admin_token);

        // Spare certificates for nodes a test adds later (`start_extra_node`).
        let roots = if options.tls {
            let mut hosts = vec!["127.0.0.1".to_string(), "localhost".to_string()];
            if let Some(on) = &options.hosts {
                hosts.extend(on.hosts.iter().map(|h| h.ip.clone()));
            }
            let issued = x402_tls::issue::init(&root.join("tls"), n + 2, &hosts)
                .expect("issue the cluster's certificates");
            x402_tls::Roots::File(issued.ca_cert)
        } else {
            x402_tls::Roots::None
        };
        let mut cluster = Self {
            dir: Some(dir),
            root,
            bin_dir,
            options,
            admin_token,
            cluster_secret,
            nodes: BTreeMap::new(),
            http: HttpClient::new(&HttpConfig {
                timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(2),
                // Below the shortest keep-alive a test gives its nodes.
                pool_idle_timeout: Duration::from_secs(1),
                roots,
                ..HttpConfig::default()
            })
            .expect("the cluster's client reads its CA"),
        };
        // Each node listens for clients and for peers on ports of their own, as in production;
        // members know each other by their peer URLs.
        let ports = free_ports(2 * n as usize);
        let pairs: Vec<(u16, u16)> = ports.chunks(2).map(|p| (p[0], p[1])).collect();
        let bootstrap: BTreeMap<u64, String> = (1..=n)
            .zip(&pairs)
            .map(|(id, (_, peer))| {
                let host = cluster.host_ip(id);
                (id, format!("{}://{host}:{peer}", cluster.scheme()))
            })
            .collect();
        for (id, ports) in (1..=n).zip(pairs) {
            cluster.add_node(id, ports, &bootstrap);
        }
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster.wait_leader().await;
        cluster
    }

    /// The address node `id` listens on: its host's, or loopback.
    fn host_ip(&self, id: u64) -> String {
        match &self.options.hosts {
            Some(hosts) => hosts.host(id).ip.clone(),
            None => "127.0.0.1".to_owned(),
        }
    }

    /// A file holding the cluster's CA and the CA of `fresh` (a `tls init` directory): what
    /// clients and peers trust while the cluster moves from one to the other.
    pub fn both_cas(&self, fresh: &Path) -> PathBuf {
        let read = |path: PathBuf| {
            fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        };
        let both = self.root.join("both-cas.pem");
        let text = read(self.root.join("tls").join("ca.pem")) + &read(fresh.join("ca.pem"));
        fs::write(&both, text).expect("write both CAs");
        both
    }

    /// Moves every node of a TLS cluster to the certificates in `fresh` (made by `tls init` with
    /// another CA, node files `node<N>.pem`/`.key`) as an operator does: `both` (see
    /// [`LocalCluster::both_cas`]) into the peer CA file first, a pause for every node to read
    /// it, then each running node's new pair (atomic renames: what secret managers do). The
    /// nodes pick the files up themselves (the file watch), or at once on SIGHUP.
    pub async fn rotate_tls_to(&self, fresh: &Path, both: &Path) {
        assert!(self.options.tls, "rotate_tls_to needs ClusterOptions::tls");
        let tls = self.root.join("tls");
        swap_in(both, &tls.join("ca.pem"));
        // reload_check_ms is 200 in these clusters.
        tokio::time::sleep(Duration::from_millis(800)).await;
        for id in self.running_ids() {
            for ext in ["key", "pem"] {
                swap_in(
                    &fresh.join(format!("node{id}.{ext}")),
                    &tls.join(format!("node{id}.{ext}")),
                );
            }
        }
    }

    /// `https` when the cluster speaks TLS, else `http`.
    fn scheme(&self) -> &'static str {
        if self.options.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Starts a node `id` with no bootstrap members (it waits to be added to the cluster) and
    /// waits until it serves HTTP. Returns its URL.
    pub async fn start_extra_node(&mut self, id: u64) -> String {
        assert!(!self.nodes.contains_key(&id), "node {id} already exists");
        let ports = free_ports(2);
        self.add_node(id, (ports[0], ports[1]), &BTreeMap::new());
        self.spawn(id);
        self.wait_live(id).await;
        self.url(id).to_owned()
    }

    // ---------------------------------------------------------------------------------------
    // Accessors.

    /// Ids of every node the harness knows (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes whose process is running.
    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn url(&self, id: u64) -> &str {
        &self.node(id).url
    }

    /// Node `id`'s peer API URL (what its membership entry records).
    pub fn peer_url(&self, id: u64) -> &str {
        &self.node(id).peer_url
    }

    /// Every node's URL, comma separated (the format of `X402_NODES`).
    pub fn urls_csv(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| self.url(*id))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    pub fn config_path(&self, id: u64) -> &Path {
        &self.node(id).config
    }

    /// The node's combined stdout and stderr so far.
    pub fn log_text(&self, id: u64) -> String {
        fs::read_to_string(&self.node(id).log).unwrap_or_default()
    }

    /// The temporary directory holding every node's files.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn cluster_secret(&self) -> &str {
        &self.cluster_secret
    }

    /// An admin client for node `id`, authenticated with the admin token.
    pub fn admin(&self, id: u64) -> AdminClient {
        AdminClient::with_http(self.http.clone(), self.url(id), Some(&self.admin_token))
            .expect("admin client")
    }

    /// Admin clients for `ids`, in order.
    pub fn admins(&self, ids: &[u64]) -> Vec<AdminClient> {
        ids.iter().map(|id| self.admin(*id)).collect()
    }

    /// The harness's HTTP client (for raw requests, see [`LocalCluster::raw`]).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Sends a raw request to node `id`: any method, path, headers and body; `/raft/*` goes to
    /// the node's peer port (where the peer API lives), everything else to its API port.
    pub async fn raw(
        &self,
        id: u64,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response<Bytes>, ClientError> {
        let base = if path.starts_with("/raft/") {
            self.peer_url(id)
        } else {
            self.url(id)
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        for (name, value) in headers {
            request = request.header(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let request = request.body(Full::new(body.into())).expect("request");
        self.http.send(request).await
    }

    // ---------------------------------------------------------------------------------------
    // Processes.

    /// Node `id`'s `/metrics` text.
    pub async fn metrics_text(&self, id: u64) -> String {
        let reply = self
            .raw(id, Method::GET, "/metrics", &[], Vec::new())
            .await
            .unwrap_or_else(|e| panic!("GET /metrics on node {id}: {e}"));
        String::from_utf8_lossy(reply.body()).into_owned()
    }

    /// The process id of running node `id` (to send it a signal).
    pub fn pid(&self, id: u64) -> u32 {
        self.node(id)
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"))
            .id()
    }

    /// SIGKILLs node `id` and reaps it: nothing is flushed, nothing is said to peers.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops node `id` with SIGTERM (a graceful shutdown), SIGKILL after 10 s.
    pub fn stop(&mut self, id: u64) -> ExitStatus {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        // SAFETY: plain kill(2) on a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                return child.wait().expect("reap the node");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts node `id` again, on the same port, config and data directory. Does not wait: use
    /// [`LocalCluster::wait_live`], [`LocalCluster::wait_leader`] or
    /// [`LocalCluster::wait_converged`].
    pub fn restart(&mut self, id: u64) {
        assert!(
            self.node(id).child.is_none(),
            "node {id} is still running; kill9 or stop it first"
        );
        self.spawn(id);
    }

    /// Waits until node `id`'s process exits on its own (e.g. a store that will not open);
    /// panics if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, id: u64, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            let child = node.child.as_mut().expect("node is running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                node.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} still runs after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Panics if node `id`'s process has exited (a crash), naming its exit status.
    pub fn assert_running(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let child = node
            .child
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("node {id} exited: {status}");
        }
    }

    /// Runs `x402-node --config <node id's config> ARGS` to completion (e.g. `rebuild`), with
    /// the same environment as the node, and returns its output.
    /// Runs `x402-node rebuild --from <leader>` for node `id` (which must be stopped) and
    /// returns where its old data directory was moved. Panics if the rebuild fails.
    pub async fn rebuild_from_leader(&mut self, id: u64) -> PathBuf {
        let leader = self.leader_id().await;
        let leader_url = self.url(leader).to_owned();
        let out = self
            .run_node_command(
                id,
                &["rebuild", "--from", &leader_url],
                Duration::from_secs(120),
            )
            .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "rebuild failed ({}): stdout {stdout:?} stderr {stderr:?}",
            out.status
        );
        stdout
            .lines()
            .find_map(|line| line.rsplit_once("moved to "))
            .map(|(_, path)| PathBuf::from(path.trim()))
            .unwrap_or_else(|| panic!("rebuild did not say where the old store went: {stdout:?}"))
    }

    /// A rebuilt node lost its vote, so `rebuild` brings it back as a learner: wait until it
    /// has caught up, then promote it to voter again (as an operator would).
    pub async fn promote_rebuilt(&self, id: u64) {
        self.wait_converged().await;
        let leader = self.leader_id().await;
        self.admin(leader)
            .promote(id)
            .await
            .expect("promote the rebuilt node");
    }

    pub async fn run_node_command(
        &self,
        id: u64,
        args: &[&str],
        timeout: Duration,
    ) -> std::process::Output {
        let mut command = tokio::process::Command::new(self.bin("x402-node"));
        command.arg("--config").arg(self.config_path(id)).args(args);
        clean_env(command.as_std_mut());
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        run_with_timeout(command, timeout).await
    }

    /// Runs `x402ctl ARGS` against `nodes` (as `X402_NODES`) with the admin token in
    /// `X402_ADMIN_TOKEN`, and returns its output.
    pub async fn x402ctl(&self, nodes: &[u64], args: &[&str]) -> std::process::Output {
        run_with_timeout(self.x402ctl_command(nodes, args), Duration::from_secs(60)).await
    }

    /// The command [`LocalCluster::x402ctl`] runs, for a caller that spawns it itself (a load
    /// generator running while the test restarts nodes).
    pub fn x402ctl_command(&self, nodes: &[u64], args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.bin("x402ctl"));
        clean_env(command.as_std_mut());
        command
            .args(args)
            .env("X402_NODES", self.urls_csv(nodes))
            .env("X402_ADMIN_TOKEN", &self.admin_token);
        if self.options.tls {
            command.env("X402_CACERT", self.root.join("tls").join("ca.pem"));
        }
        command
    }

    /// Runs `x402ctl --json ARGS` against `nodes`, asserts it succeeded and decodes what it
    /// printed.
    pub async fn x402ctl_json<T: serde::de::DeserializeOwned>(
        &self,
        nodes: &[u64],
        args: &[&str],
    ) -> T {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.x402ctl(nodes, &all).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "x402ctl {args:?} failed ({}): stdout {stdout:?} stderr {stderr:?}",
            out.status
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("x402ctl {args:?} printed no valid JSON ({e}): {stdout:?}"))
    }

    // ---------------------------------------------------------------------------------------
    // Waiting.

    /// Every running node's status, or why it did not answer.
    pub async fn statuses(&self) -> Vec<(u64, Result<NodeStatus, ClientError>)> {
        self.statuses_of(&self.running_ids()).await
    }

    pub async fn statuses_of(&self, ids: &[u64]) -> Vec<(u64, Result<NodeStatus, ClientError>)> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push((*id, self.admin(*id).status().await));
        }
        out
    }

    /// Node `id`'s status; panics if it does not answer.
    pub async fn status(&self, id: u64) -> NodeStatus {
        self.admin(id)
            .status()
            .await
            .unwrap_or_else(|e| panic!("status of node {id}: {e}"))
    }

    /// Waits until node `id` answers `/livez`.
    pub async fn wait_live(&self, id: u64) {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let answer = self.raw(id, Method::GET, "/livez", &[], Bytes::new()).await;
            if matches!(&answer, Ok(r) if r.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} does not answer /livez: {answer:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The leader every running node names (and which says it leads); waits for one.
    pub async fn wait_leader(&self) -> u64 {
        self.wait_leader_among(&self.running_ids()).await
    }

    /// The leader all of `ids` name, which is one of them and says it leads; waits for one.
    pub async fn wait_leader_among(&self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let statuses = self.statuses_of(ids).await;
            if let Some(leader) = agreed_leader(&statuses) {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no leader agreed by nodes {ids:?} within {LEADER_TIMEOUT:?}:\n{}",
                describe(&statuses)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Alias of [`LocalCluster::wait_leader`]: the current agreed leader.
    pub async fn leader_id(&self) -> u64 {
        self.wait_leader().await
    }

    /// Waits until every running node reports the same applied index and state hash; returns
    /// their statuses.
    pub async fn wait_converged(&self) -> Vec<NodeStatus> {
        self.wait_converged_among(&self.running_ids()).await
    }

    /// Waits until all of `ids` report the same (non-empty) applied index, the same state hash
    /// and the same claims count, and agree on a leader; returns their statuses.
    pub async fn wait_converged_among(&self, ids: &[u64]) -> Vec<NodeStatus> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let statuses = self.statuses_of(ids).await;
            if agreed_leader(&statuses).is_some() {
                let ok: Vec<NodeStatus> = statuses
                    .iter()
                    .filter_map(|(_, s)| s.as_ref().ok().cloned())
                    .collect();
                let first = &ok[0];
                if first.applied.is_some()
                    && ok.iter().all(|s| {
                        s.applied == first.applied
                            && s.state_hash == first.state_hash
                            && s.claims == first.claims
                    })
                {
                    return ok;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nodes {ids:?} did not converge within {CONVERGE_TIMEOUT:?}:\n{}",
                describe(&statuses)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Internals.

    fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// Writes node `id`'s directory and config.
    fn add_node(
        &mut self,
        id: u64,
        (port, peer_port): (u16, u16),
        bootstrap: &BTreeMap<u64, String>,
    ) {
        let dir = self.root.join(format!("node{id}"));
        fs::create_dir_all(&dir).expect("create node directory");
        let scheme = self.scheme();
        let host = self.host_ip(id);
        let url = format!("{scheme}://{host}:{port}");
        let data_dir = dir.join("data");
        let config = dir.join("config.toml");
        let mut toml = format!(
            "node_id = {id}\nlisten = \"{host}:{port}\"\nadvertise_url = {}\n\
             peer_listen = \"{host}:{peer_port}\"\n\
             data_dir = {}\ncluster_secret_file = {}\nadmin_token_file = {}\n\n",
            toml_str(&url),
            toml_str(&data_dir.to_string_lossy()),
            toml_str(&self.root.join("cluster-secret").to_string_lossy()),
            toml_str(&self.root.join("admin-token").to_string_lossy()),
        );
        for fragment in &self.options.toml {
            toml.push_str(fragment);
            if !fragment.ends_with('\n') {
                toml.push('\n');
            }
            toml.push('\n');
        }
        if self.options.tls {
            let tls = self.root.join("tls");
            let _ = writeln!(
                toml,
                "[tls]\ncert_file = {}\nkey_file = {}\npeer_ca_file = {}\nreload_check_ms = 200\n",
                toml_str(&tls.join(format!("node{id}.pem")).to_string_lossy()),
                toml_str(&tls.join(format!("node{id}.key")).to_string_lossy()),
                toml_str(&tls.join("ca.pem").to_string_lossy()),
            );
        }
        toml.push_str("[bootstrap]\n");
        for (member, member_url) in bootstrap {
            let _ = writeln!(toml, "{member} = {}", toml_str(member_url));
        }
        fs::write(&config, toml).expect("write node config");
        self.nodes.insert(
            id,
            NodeProc {
                url,
                peer_url: format!("{scheme}://{host}:{peer_port}"),
                config,
                data_dir,
                log: dir.join("node.log"),
                child: None,
            },
        );
    }

    fn spawn(&mut self, id: u64) {
        let bin = self.bin("x402-node");
        let env = self.options.env.clone();
        let namespace = self
            .options
            .hosts
            .as_ref()
            .map(|hosts| hosts.host(id).namespace.clone());
        let node = self.nodes.get_mut(&id).expect("known node");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        // `ip netns exec` enters the namespace and execs the node: the child is the node itself.
        let mut command = match namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &namespace]).arg(bin);
                command
            }
            None => Command::new(bin),
        };
        command
            .arg("--config")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        clean_env(&mut command);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,openraft=warn");
        }
        command.envs(env);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn x402-node {id}: {e}"));
        node.child = Some(child);
    }

    fn print_log_tails(&mut self) {
        for (id, node) in &mut self.nodes {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            let state = match node.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => "running".to_owned(),
                Some(Ok(Some(status))) => format!("exited: {status}"),
                Some(Err(e)) => format!("unknown: {e}"),
                None => "stopped by the test".to_owned(),
            };
            eprintln!(
                "----- node {id} ({}, {state}) log: last {} of {} lines of {} -----",
                node.url,
                lines.len() - from,
                lines.len(),
                node.log.display()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
        eprintln!("----- end of node logs -----");
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            // Before the kill, so the tails say which nodes were still running.
            self.print_log_tails();
        }
        for node in self.nodes.values_mut() {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if panicking {
            if std::env::var_os("X402_TEST_KEEP_DIR").is_some() {
                if let Some(dir) = self.dir.take() {
                    let kept = dir.keep();
                    eprintln!("kept the cluster's files in {}", kept.display());
                }
            } else {
                eprintln!("(set X402_TEST_KEEP_DIR=1 to keep the cluster's files)");
            }
        }
    }
}

/// The leader all answers name, if every node answered, the leader is among them and says it
/// leads.
fn agreed_leader(statuses: &[(u64, Result<NodeStatus, ClientError>)]) -> Option<u64> {
    let mut leader = None;
    for (_, status) in statuses {
        let status = status.as_ref().ok()?;
        let named = status.leader_id?;
        if *leader.get_or_insert(named) != named {
            return None;
        }
    }
    let leader = leader?;
    statuses
        .iter()
        .any(|(id, s)| *id == leader && matches!(s, Ok(s) if s.role == Role::Leader))
        .then_some(leader)
}

/// One line per node, for failure messages.
pub fn describe(statuses: &[(u64, Result<NodeStatus, ClientError>)]) -> String {
    let mut out = String::new();
    for (id, status) in statuses {
        let _ = match status {
            Ok(s) => writeln!(
                out,
                "  node {id}: {:?} term {} leader {:?} committed {:?} applied {:?} last_log {:?} \
                 snapshot {:?} purged {:?} claims {} hash {} members {:?}",
                s.role,
                s.term,
                s.leader_id,
                s.committed,
                s.applied,
                s.last_log,
                s.snapshot,
                s.purged,
                s.claims,
                &s.state_hash[..s.state_hash.len().min(12)],
                s.members
                    .iter()
                    .map(|m| (m.id, m.voter))
                    .collect::<Vec<_>>()
            ),
            Err(e) => writeln!(out, "  node {id}: {e}"),
        };
    }
    out
}

/// `X402_BIN_DIR`, or `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("X402_BIN_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => crate::devchain::workspace_root()
            .join("target")
            .join("debug"),
    }
}

/// `n` distinct free loopback ports: bind port 0, read it, release it. Another process may take
/// one before the node binds it; that shows up as "cannot listen" in the node's log.
fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are picked, so the kernel hands out distinct ports.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_secret(path: &Path, secret: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("create secret file");
    io::Write::write_all(&mut file, secret.as_bytes()).expect("write secret file");
}

/// Removes every inherited `X402_*` variable (and `X402_CONFIG`) from a child's environment.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("X402_") {
            command.env_remove(key);
        }
    }
}

async fn run_with_timeout(
    mut command: tokio::process::Command,
    timeout: Duration,
) -> std::process::Output {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let program = format!("{:?}", command.as_std().get_program());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("run {program}: {e}")),
        Err(_) => panic!("{program} did not finish within {timeout:?}"),
    }
}

/// Replaces `dst` with `src`'s bytes atomically (write beside, rename), as secret managers do.
pub fn swap_in(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("swap");
    fs::copy(src, &tmp)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), tmp.display()));
    fs::rename(&tmp, dst).unwrap_or_else(|e| panic!("rename to {}: {e}", dst.display()));
}
