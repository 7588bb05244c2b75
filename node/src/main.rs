//! `x402-node`: run one replica of an x402-cluster, rebuild its store from a peer, or reset an
//! impossible vote.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use x402_node::cluster::breakers::ClusterBreakers;
use x402_node::config::{Config, LogFormat};
use x402_node::facilitator::Facilitator;
use x402_node::http;
use x402_node::metrics::Metrics;
use x402_node::node::{self, NodeSetup};
use x402_node::seams::{SystemClock, TokioConnector};
use x402_node::serve;
use x402_node::tls::server::{ServerFiles, ServerTls};
use x402_raft_store::storage::{open_sled_stores, FlushObserver, SledOptions};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Parser)]
#[command(
    name = "x402-node",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("X402_BUILD_COMMIT"), ")"),
    about = "One replica of an x402-cluster"
)]
struct Cli {
    /// TOML configuration file; every key can be overridden by X402_<KEY> (nested: `__`).
    #[arg(long, short, env = "X402_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default).
    Run,
    /// Replace this node's store (when it will not open) with a snapshot from a healthy peer.
    /// Stop the node first; the old data directory is moved aside, never deleted.
    Rebuild {
        /// URL of a healthy member, e.g. http://10.0.0.2:7001
        #[arg(long)]
        from: String,
    },
    /// Replace an impossible vote (a term above 2^48, which only a forged peer message can
    /// bring) that makes the node panic at every election. Stop the node first. The new vote is
    /// for this node, not committed, in `--term` (default: the highest term of its log plus
    /// 2^20, above any term it could have voted in). A sane vote is never lowered.
    ResetVote {
        #[arg(long)]
        term: Option<u64>,
    },
}

/// Exit status when the node stops itself because Raft can no longer run (EX_SOFTWARE).
const EXIT_RAFT_STOPPED: i32 = 70;
/// Exit status when the store will not open and must be rebuilt (EX_DATAERR): a restart cannot
/// help, so supervisors are told not to (systemd's `RestartPreventExitStatus`).
const EXIT_STORE_NEEDS_REBUILD: i32 = 65;
/// Exit status of a configuration that does not load (EX_CONFIG): a restart cannot help either.
const EXIT_BAD_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Crash-only: a panic anywhere (a task of the Raft core included) leaves state nobody has
    // reasoned about, so the process ends at once and its supervisor restarts it from disk,
    // rather than lingering with a dead core that still answers as if it led.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("fatal: x402-node panicked; aborting so that it restarts from its durable state");
        std::process::abort();
    }));
    // The configuration first: it says how to log. Its errors are printed as they are.
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(config).await,
            Command::Rebuild { from } => {
                let moved = x402_node::rebuild::rebuild(&config, &from)
                    .await
                    .map_err(|e| e.to_string())?;
                println!(
                    "rebuilt {} from {from}; the old store was moved to {}",
                    config.data_dir.display(),
                    moved.display()
                );
                println!(
                    "node {id} is a learner now: start it, then once it has caught up run \
                     `x402ctl members promote {id}`",
                    id = config.node_id
                );
                Ok(())
            }
            Command::ResetVote { term } => {
                let reset =
                    x402_raft_store::storage::reset_vote(&config.data_dir, config.node_id, term)
                        .map_err(|e| e.to_string())?;
                println!(
                    "vote of node {} reset from {} to {} (highest term in its log: {}); start it",
                    config.node_id,
                    reset
                        .old
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "none".into()),
                    reset.new,
                    reset.max_log_term
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr, filtered by `RUST_LOG` (default `info,openraft=warn`): text, or one JSON
/// object per line (`log_format = "json"`: time, level, target, message and fields).
fn init_logging(format: LogFormat) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,openraft=warn".into())
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(false).init(),
    }
}

/// Logs, once at start-up, what each RPC URL answers to `eth_chainId`: a wrong chain, a refused
/// certificate or a dead URL is named here rather than found in the first refused payment.
async fn report_rpc_urls(facilitator: Arc<Facilitator>) {
    for r in facilitator.probe_rpc_urls().await {
        match r.answer {
            Ok(id) if id == r.expected => {
                tracing::info!(network = %r.network, rpc = %r.endpoint, "RPC URL answers")
            }
            Ok(id) => tracing::error!(network = %r.network, rpc = %r.endpoint, chain_id = id,
                "RPC URL serves another chain than its network names; payments on it will fail"),
            Err(e) => tracing::warn!(network = %r.network, rpc = %r.endpoint, error = %e,
                "RPC URL does not answer (retried on every call)"),
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let secrets = config.secrets().map_err(|e| e.to_string())?;
    tracing::info!(
        node_id = config.node_id,
        listen = %config.listen,
        peer_listen = config.peer_listen.as_deref().unwrap_or("(listen)"),
        advertise_url = %config.advertise_url,
        member_url = %config.member_url(),
        data_dir = %config.data_dir.display(),
        "starting x402-node"
    );
    let breakers = Arc::new(ClusterBreakers::new(config.breaker.clone()));
    let facilitator = Arc::new(
        Facilitator::from_settings(&config.facilitator, breakers.clone())
            .map_err(|e| e.to_string())?,
    );
    for n in facilitator.networks.values() {
        tracing::info!(
            network = %n.caip2,
            v1_name = n.v1_name.as_deref().unwrap_or("-"),
            signers = ?n.signer_addresses(),
            onchain_checks = config.facilitator.onchain_checks,
            "facilitator network"
        );
    }
    tokio::spawn(report_rpc_urls(facilitator.clone()));
    let metrics = Metrics::new(config.node_id).map_err(|e| e.to_string())?;
    let fsync = metrics.fsync_seconds.clone();
    let observer: FlushObserver = Arc::new(move |d| fsync.observe(d.as_secs_f64()));
    let (log, state_machine) = open_sled_stores(
        &config.data_dir,
        SledOptions {
            cache_bytes: config.storage.cache_mb << 20,
            flush_observer: Some(observer),
        },
    )
    .map_err(|e| {
        if e.needs_rebuild() {
            eprintln!("error: {e}");
            std::process::exit(EXIT_STORE_NEEDS_REBUILD);
        }
        e.to_string()
    })?;
    let bind = |address: String| async move {
        tokio::net::TcpListener::bind(&address)
            .await
            .map(|l| l.tap_io(no_delay as fn(&mut tokio::net::TcpStream)))
            .map_err(|e| format!("cannot listen on {address}: {e}"))
    };
    // Listening before Raft starts: peers that find nobody listening back off.
    let listener = bind(config.listen.clone()).await?;
    let peer_listener = match &config.peer_listen {
        Some(address) => Some(bind(address.clone()).await?),
        None => None,
    };
    let (api_limits, peer_limits) = serve::ServeLimits::from_config(&config.limits);
    let every = Duration::from_millis(config.tls.reload_check_ms);
    let mut reloaded = Vec::new();
    let mut listener_tls = |name: &'static str, files: Option<ServerFiles>| {
        let Some(files) = files else {
            return Ok(None);
        };
        let tls =
            ServerTls::load(files).map_err(|e| format!("[tls] for the {name} listener: {e}"))?;
        tokio::spawn(tls.clone().watch(name, every));
        reloaded.push((name, tls.clone()));
        Ok::<_, String>(Some(serve::ListenerTls {
            name,
            config: tls,
            handshakes: metrics.tls_handshakes.clone(),
        }))
    };
    let api_tls = listener_tls("api", config.tls.api_files().map_err(|e| e.to_string())?)?;
    let peer_tls = listener_tls("peer", config.tls.peer_files().map_err(|e| e.to_string())?)?;
    tokio::spawn(reload_on_sighup(reloaded));
    if api_tls.is_some() {
        tracing::info!(listen = %config.listen, "the API is served over TLS");
    }
    if peer_tls.is_some() {
        tracing::info!(peer_listen = ?config.peer_listen, "peers speak mutual TLS");
    }
    let app = node::start(NodeSetup {
        config,
        secrets,
        clock: Arc::new(SystemClock),
        connector: Arc::new(TokioConnector),
        peer_tls: peer_tls.as_ref().map(|tls| tls.config.clone()),
        metrics,
        log,
        state_machine,
        facilitator,
        breakers,
    })
    .await
    .map_err(|e| e.to_string())?;
    let routers = http::Routers::new(app.clone());
    let watchdog = tokio::spawn(exit_when_raft_stops(app.raft.clone()));
    let shutdown_timeout = api_limits.drain_timeout;
    // Each listener serves until told to stop; the order of the stops is the shutdown sequence.
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_peers, peers_stopped) = tokio::sync::oneshot::channel::<()>();
    let (api, peers) = match peer_listener {
        Some(peer_listener) => {
            let peers = tokio::spawn(serve::serve(
                peer_listener,
                routers.peer.clone(),
                peer_limits,
                peer_tls,
                async move {
                    let _ = peers_stopped.await;
                },
            ));
            let api = tokio::spawn(serve::serve(
                listener,
                routers.api.clone(),
                api_limits,
                api_tls,
                async move {
                    let _ = api_stopped.await;
                },
            ));
            (api, Some(peers))
        }
        None => {
            // One listener for both: it stops when the peers' would (last).
            let api = tokio::spawn(serve::serve(
                listener,
                routers.single(),
                api_limits,
                api_tls,
                async move {
                    let _ = peers_stopped.await;
                },
            ));
            drop(api_stopped);
            (api, None)
        }
    };
    shutdown_signal().await;
    // The shutdown sequence. Not ready first, so load balancers stop sending here. Leadership
    // moves while every listener still serves: the candidate's vote request must reach this
    // node (also when peers share the API listener), and requests still arriving are forwarded
    // to the new leader. Then the API drains within its bound; then Raft stops.
    tracing::info!(
        shutdown_timeout_ms = shutdown_timeout.as_millis() as u64,
        "shutdown requested: not ready from now on"
    );
    app.begin_shutdown();
    hand_off_if_leading(&app).await;
    let _ = stop_api.send(());
    let last_to_stop = match peers {
        Some(peers) => {
            let _ = api.await;
            tracing::info!("client requests drained");
            // Leadership can only have come back if the new leader failed meanwhile.
            hand_off_if_leading(&app).await;
            peers
        }
        None => api,
    };
    let _ = stop_peers.send(());
    let _ = last_to_stop.await;
    // A requested shutdown stops the core too; that is not a failure.
    watchdog.abort();
    let _ = app.raft.shutdown().await;
    tracing::info!("shut down");
    Ok(())
}

/// How long a leader shutting down tries to hand its leadership over. Past it the node stops
/// anyway and the others elect after an election timeout, as after a crash.
const SHUTDOWN_HANDOFF_BOUND: Duration = Duration::from_secs(5);

/// If this node leads, hands its leadership to a caught-up voter (not leading, or a
/// single-voter cluster: nothing to do).
async fn hand_off_if_leading(app: &x402_node::node::App) {
    use x402_node::cluster::handoff::HandOffError;
    match app.hand_off(None, SHUTDOWN_HANDOFF_BOUND).await {
        Ok(_) | Err(HandOffError::NotLeader(_) | HandOffError::NoOtherVoter) => {}
        Err(HandOffError::NoWillingVoter) => {
            tracing::info!("every other voter is stopping too; stopping as the leader")
        }
        Err(e) => {
            tracing::warn!(error = %e, "stopping as the leader; the others elect after a timeout")
        }
    }
}

/// Ends the process when the Raft core stops on its own (a storage error, for example): a node
/// without a core cannot serve, and only a restart can bring it back.
async fn exit_when_raft_stops(raft: x402_raft_store::Raft) {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            tracing::error!(error = %fatal, "the Raft core stopped; exiting");
            std::process::exit(EXIT_RAFT_STOPPED);
        }
        if metrics.changed().await.is_err() {
            tracing::error!("the Raft core is gone; exiting");
            std::process::exit(EXIT_RAFT_STOPPED);
        }
    }
}

/// Nagle off on every accepted connection: a TLS handshake is several small writes in a row,
/// and with Nagle each waited for the client's delayed ACK (40 ms per new TLS connection,
/// measured: 840 new connections/s instead of thousands).
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot switch Nagle off on a connection");
    }
}

/// Reads every listener's TLS files again on each `SIGHUP` (besides the file watch).
async fn reload_on_sighup(listeners: Vec<(&'static str, Arc<ServerTls>)>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; TLS files are still watched");
            return;
        };
        while hangups.recv().await.is_some() {
            for (name, tls) in &listeners {
                match tls.reload() {
                    Ok(()) => tracing::info!(listener = name, "TLS certificate reloaded (SIGHUP)"),
                    Err(e) => tracing::warn!(listener = name, error = %e,
                        "TLS files do not load; still serving the previous certificate"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = listeners;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
