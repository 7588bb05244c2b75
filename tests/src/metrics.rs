//! Reading a node's `/metrics` (the Prometheus text format).

/// The value of the first sample of `name` (`name{labels} value` or `name value`) whose labels
/// include every `key="value"` of `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `x402_tls_handshakes_total{listener,result}` (0 before the first one).
pub fn tls_handshakes(text: &str, listener: &str, result: &str) -> f64 {
    let labels = [("listener", listener), ("result", result)];
    sample(text, "x402_tls_handshakes_total", &labels).unwrap_or(0.0)
}
