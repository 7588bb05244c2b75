//! `x402ctl tls init`: a CA and per-node certificates for the nodes' `[tls]` section (the
//! files and their roles: [`x402_tls::issue`]).

use std::path::Path;

use super::CtlError;

/// Hosts every certificate names when none is given: a cluster on one machine.
const DEFAULT_HOSTS: [&str; 2] = ["127.0.0.1", "localhost"];

/// Nodes issued for when `--nodes` is not given.
const DEFAULT_NODES: u64 = 3;

/// `--nodes` of `tls init`: one count (the global `--nodes` holds node URLs elsewhere).
pub(super) fn node_count(nodes: &[String]) -> Result<u64, CtlError> {
    match nodes {
        [] => Ok(DEFAULT_NODES),
        [count] => count.parse().map_err(|_| {
            CtlError::Usage(format!(
                "tls init takes --nodes N, a number of nodes; got {count:?} (X402_NODES holds \
                 URLs: pass --nodes N)"
            ))
        }),
        _ => Err(CtlError::Usage("tls init takes one --nodes N".into())),
    }
}

/// Issues the certificates and says what to put where.
pub(super) fn init(
    dir: &Path,
    nodes: u64,
    hosts: &[String],
    json: bool,
) -> Result<String, CtlError> {
    let hosts: Vec<String> = if hosts.is_empty() {
        DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect()
    } else {
        hosts.to_vec()
    };
    let issued =
        x402_tls::issue::init(dir, nodes, &hosts).map_err(|e| CtlError::Usage(e.to_string()))?;
    if json {
        let nodes: Vec<_> = issued
            .nodes
            .iter()
            .map(
                |(id, cert, key)| serde_json::json!({"id": id, "cert_file": cert, "key_file": key}),
            )
            .collect();
        let out = serde_json::json!({
            "ca_file": issued.ca_cert, "ca_key": issued.ca_key, "hosts": hosts, "nodes": nodes,
        });
        return Ok(format!("{out}\n"));
    }
    let mut out = format!(
        "wrote a CA and {} node certificates for {} into {}\n\
         CA: {} (clients: --cacert / X402_CACERT; keep {} offline)\n",
        issued.nodes.len(),
        hosts.join(", "),
        dir.display(),
        issued.ca_cert.display(),
        issued.ca_key.display(),
    );
    for (id, cert, key) in &issued.nodes {
        out.push_str(&format!(
            "node {id}: [tls] cert_file = {:?}, key_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
    }
    Ok(out)
}
