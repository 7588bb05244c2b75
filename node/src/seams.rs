//! The seams that let the same node code run in production and inside turmoil simulations.
//!
//! Network (listening and connecting), the wall clock and the bytes on disk are the only things
//! that differ between the two worlds (ARCHITECTURE.md, "Seams"). Listening goes through axum's
//! [`axum::serve::Listener`]; connecting through [`Connector`]; time through [`Clock`]. Storage is
//! chosen by whoever builds the node (sled or memory stores of `x402-raft-store`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};

/// Wall-clock time as the node sees it: stamped into commands and used for `validBefore` checks.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a broken machine; saturate rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A byte stream to a peer.
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> PeerStream for T {}

pub type BoxedStream = Box<dyn PeerStream>;
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + Send + 'a>>;

/// Opens byte streams to `host:port` authorities.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, authority: &'a str) -> ConnectFuture<'a>;
}

pub type SharedConnector = Arc<dyn Connector>;

/// Plain TCP through tokio, with Nagle off (small RPCs must not wait 40 ms for an ACK).
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioConnector;

impl Connector for TokioConnector {
    fn connect<'a>(&'a self, authority: &'a str) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}
