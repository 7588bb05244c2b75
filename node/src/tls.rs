//! The node's side of TLS: [`x402_tls`] (roots, client and server configurations), plus the
//! HTTP client of JSON-RPC endpoints built on it.

pub use x402_tls::*;

/// The HTTP client of JSON-RPC endpoints: `http://` and, verified against `roots`, `https://`.
/// Redirects are not followed (an RPC endpoint that redirects is misconfigured, and a redirect
/// could carry a request, key in its URL, to another host).
pub fn rpc_http_client(roots: &Roots) -> Result<reqwest::Client, TlsError> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(client_config(roots)?)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| TlsError::Client(e.to_string()))
}
