//! The network seam on turmoil: a listener `x402_node::serve::serve` accepts connections from, and
//! a connector the node's peer client (and the simulated clients) open streams with. Both speak
//! turmoil's simulated TCP, so partitions, latency and crashes apply to every byte.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use x402_node::seams::{BoxedStream, ConnectFuture, Connector};

/// Pause after a failed `accept` before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(5);

/// A turmoil TCP listener usable with axum's (and the node's) `serve`.
pub struct TurmoilListener(pub turmoil::net::TcpListener);

impl TurmoilListener {
    /// Binds `addr` (turmoil only accepts `0.0.0.0`, `::` or localhost) on the current host.
    pub async fn bind(addr: &str) -> io::Result<Self> {
        Ok(Self(turmoil::net::TcpListener::bind(addr).await?))
    }
}

impl axum::serve::Listener for TurmoilListener {
    type Io = turmoil::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Opens turmoil TCP streams to `host:port` authorities (host names resolve through turmoil's
/// DNS, e.g. `node-2:7001`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    fn connect<'a>(&'a self, authority: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(authority).await?;
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}
