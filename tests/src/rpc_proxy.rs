//! A tiny HTTP reverse proxy for tests: it sits between the nodes and anvil's JSON-RPC endpoint
//! and can be switched at run time into failure modes (503, hang, refuse), so a test can make the
//! chain's RPC fail for every node at once (a cluster-wide circuit breaker) and heal it again.
//!
//! ```ignore
//! let proxy = RpcProxy::start(anvil.url()).await?;    // point the nodes' rpc_urls at proxy.url()
//! proxy.set_mode(ProxyMode::FailHttp503);
//! proxy.reset_counts();
//! // ... drive the cluster ...
//! assert!(proxy.failed_requests() <= LIMIT);         // calls that reached the failing endpoint
//! proxy.set_mode(ProxyMode::Forward);
//! ```
//!
//! It runs inside the test's tokio runtime; dropping the [`RpcProxy`] stops the listener and every
//! connection (including hanging ones). Each forwarded request opens its own HTTP/1 connection to
//! the upstream: simple, and nothing outlives the proxy but a finishing upstream call.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy does with each request it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Pass the request to the upstream and its answer (status, content-type, body) back.
    Forward,
    /// Answer `503 Service Unavailable` without asking the upstream.
    FailHttp503,
    /// Read the request and never answer (until the proxy is dropped).
    Hang,
    /// Close the connection as soon as a request arrives, without answering.
    Refuse,
}

const MODES: [ProxyMode; 4] = [
    ProxyMode::Forward,
    ProxyMode::FailHttp503,
    ProxyMode::Hang,
    ProxyMode::Refuse,
];

struct Shared {
    /// `host:port` of the upstream (the `Host` header).
    authority: String,
    mode: AtomicU8,
    requests: AtomicU64,
    failed: AtomicU64,
}

/// A running proxy (on `127.0.0.1` unless started elsewhere); stops on `Drop`.
pub struct RpcProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl RpcProxy {
    /// Listens on 127.0.0.1:0 and forwards every request (POST JSON-RPC, any path) to `upstream`
    /// (e.g. `"http://127.0.0.1:8545"`; plain `http://` only). Starts in [`ProxyMode::Forward`].
    pub async fn start(upstream: &str) -> io::Result<RpcProxy> {
        Self::start_on(upstream, "127.0.0.1").await
    }

    /// [`RpcProxy::start`] listening on `ip` (a free port): e.g. the bridge address of
    /// [`crate::netns::Hosts`], so nodes in namespaces reach a chain on this host's loopback.
    pub async fn start_on(upstream: &str, ip: &str) -> io::Result<RpcProxy> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("upstream {upstream:?}: {why}"),
            )
        };
        let uri: Uri = upstream.parse().map_err(|e| invalid(&format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(invalid("not an http:// URL"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?;
        let authority = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            authority,
            mode: AtomicU8::new(0),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(RpcProxy { addr, shared, task })
    }

    /// `http://IP:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies to every request received from now on, on new and open connections alike.
    pub fn set_mode(&self, mode: ProxyMode) {
        let index = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        self.shared.mode.store(index as u8, SeqCst);
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        self.shared.mode()
    }

    /// Requests received since the start (or the last [`reset_counts`](Self::reset_counts)).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(SeqCst)
    }

    /// Requests received while failing (any mode but `Forward`), hence not forwarded.
    pub fn failed_requests(&self) -> u64 {
        self.shared.failed.load(SeqCst)
    }

    /// Resets both counters, e.g. to count the calls that reached the failing endpoint in a phase.
    pub fn reset_counts(&self) {
        self.shared.requests.store(0, SeqCst);
        self.shared.failed.store(0, SeqCst);
    }
}

impl Drop for RpcProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it aborts them too.
        self.task.abort();
    }
}

impl Shared {
    fn mode(&self) -> ProxyMode {
        MODES[usize::from(self.mode.load(SeqCst)) % MODES.len()]
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, shared.clone()));
                }
                Err(e) => {
                    eprintln!("rpc_proxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| handle(shared.clone(), request));
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    match served {
        // A user error is our own Refuse: the connection is closed on purpose.
        Err(e) if !e.is_user() => eprintln!("rpc_proxy: connection: {e}"),
        _ => {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> io::Result<Response<Full<Bytes>>> {
    shared.requests.fetch_add(1, SeqCst);
    let mode = shared.mode();
    if mode != ProxyMode::Forward {
        shared.failed.fetch_add(1, SeqCst);
    }
    match mode {
        ProxyMode::Forward => Ok(forward(&shared.authority, request)
            .await
            .unwrap_or_else(|e| {
                eprintln!("rpc_proxy: upstream {}: {e}", shared.authority);
                text(StatusCode::BAD_GATEWAY, format!("rpc_proxy: upstream: {e}"))
            })),
        ProxyMode::FailHttp503 => Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "rpc_proxy: failing on purpose".into(),
        )),
        ProxyMode::Hang => std::future::pending().await,
        ProxyMode::Refuse => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "rpc_proxy: refusing",
        )),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Sends `request` (method, path and query, content-type, body) to `authority` on a new HTTP/1
/// connection; answers the upstream's status, content-type and body.
async fn forward(
    authority: &str,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outgoing = Request::builder()
        .method(parts.method)
        .uri(path)
        .header(HOST, authority);
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        outgoing = outgoing.header(CONTENT_TYPE, content_type);
    }
    let outgoing = outgoing.body(Full::new(body.collect().await?.to_bytes()))?;
    send(authority, outgoing).await
}

/// One request on a new HTTP/1 connection to `authority`, the answer read whole.
async fn send(
    authority: &str,
    request: Request<Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let stream = TcpStream::connect(authority).await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Ends when `sender` is dropped and the exchange is over.
    tokio::spawn(connection);
    let (parts, body) = sender.send_request(request).await?.into_parts();
    let mut response = Response::builder().status(parts.status);
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        response = response.header(CONTENT_TYPE, content_type);
    }
    Ok(response.body(Full::new(body.collect().await?.to_bytes()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    /// An upstream that answers each request with its body and content-type, and its path in
    /// `x-path` (dropped with the runtime).
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|request: Request<Incoming>| async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request.headers().get(CONTENT_TYPE).cloned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let mut response = Response::builder().header("x-path", path);
                        if let Some(content_type) = content_type {
                            response = response.header(CONTENT_TYPE, content_type);
                        }
                        Ok::<_, hyper::Error>(response.body(Full::new(body)).unwrap())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn post(proxy: &RpcProxy, path: &str, body: &'static str) -> Request<Full<Bytes>> {
        Request::post(path)
            .header(HOST, proxy.url().trim_start_matches("http://"))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    async fn call(proxy: &RpcProxy, body: &'static str) -> Result<Response<Full<Bytes>>, BoxError> {
        send(
            proxy.url().trim_start_matches("http://"),
            post(proxy, "/", body),
        )
        .await
    }

    async fn body_of(response: Response<Full<Bytes>>) -> Bytes {
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn modes_switch_at_run_time() {
        let proxy = RpcProxy::start(&echo_server().await).await.unwrap();
        assert!(proxy.url().starts_with("http://127.0.0.1:"));
        assert_eq!(proxy.mode(), ProxyMode::Forward);

        // Forward: body, content-type, status and path pass through.
        let json = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
        let authority = proxy.url().trim_start_matches("http://").to_owned();
        let response = send(&authority, post(&proxy, "/some/path?q=1", json))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers().get(CONTENT_TYPE),
            Some(&HeaderValue::from_static("application/json"))
        );
        assert_eq!(body_of(response).await, json);
        assert_eq!((proxy.requests(), proxy.failed_requests()), (1, 0));

        // FailHttp503: answered by the proxy, counted as failed.
        proxy.set_mode(ProxyMode::FailHttp503);
        for _ in 0..2 {
            assert_eq!(
                call(&proxy, "{}").await.unwrap().status(),
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        assert_eq!((proxy.requests(), proxy.failed_requests()), (3, 2));

        // Refuse: the client sees the connection closed without an answer.
        proxy.set_mode(ProxyMode::Refuse);
        assert!(call(&proxy, "{}").await.is_err());
        assert_eq!((proxy.requests(), proxy.failed_requests()), (4, 3));

        // Hang: no answer within the client's deadline.
        proxy.set_mode(ProxyMode::Hang);
        let hung = tokio::time::timeout(Duration::from_millis(300), call(&proxy, "{}")).await;
        assert!(hung.is_err(), "a hanging proxy answered: {hung:?}");
        assert_eq!((proxy.requests(), proxy.failed_requests()), (5, 4));

        // Back to Forward, with counts of this phase only.
        proxy.reset_counts();
        proxy.set_mode(ProxyMode::Forward);
        assert_eq!(body_of(call(&proxy, "[1,2]").await.unwrap()).await, "[1,2]");
        assert_eq!((proxy.requests(), proxy.failed_requests()), (1, 0));
    }

    /// Clients keep connections alive (alloy's reqwest pools them): a mode applies to them too.
    #[tokio::test(flavor = "multi_thread")]
    async fn modes_apply_to_open_connections() {
        let proxy = RpcProxy::start(&echo_server().await).await.unwrap();
        let stream = TcpStream::connect(proxy.url().trim_start_matches("http://"))
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(post(&proxy, "/", "a")).await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "a"
        );
        proxy.set_mode(ProxyMode::FailHttp503);
        sender.ready().await.unwrap(); // the previous exchange is over
        let response = sender.send_request(post(&proxy, "/", "b")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        response.into_body().collect().await.unwrap();
        proxy.set_mode(ProxyMode::Refuse);
        sender.ready().await.unwrap();
        assert!(sender.send_request(post(&proxy, "/", "c")).await.is_err());
        assert_eq!((proxy.requests(), proxy.failed_requests()), (3, 2));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn upstream_down_is_502_and_drop_stops_the_listener() {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let proxy = RpcProxy::start(&dead_url).await.unwrap();
        assert_eq!(
            call(&proxy, "{}").await.unwrap().status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!((proxy.requests(), proxy.failed_requests()), (1, 0));
        assert!(RpcProxy::start("https://127.0.0.1:1").await.is_err());

        let authority = proxy.url().trim_start_matches("http://").to_owned();
        drop(proxy);
        for _ in 0..100 {
            if TcpStream::connect(&authority).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy still listens after Drop");
    }
}
