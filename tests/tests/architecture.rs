//! The architecture invariants of `ARCHITECTURE.md` that a machine can check: which crate may
//! depend on which, what the state machine's apply must never read, and what the node's domain
//! modules must never name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use x402_tests::devchain::workspace_root;

/// What `cargo ARGS` prints, run in the workspace (it must succeed).
fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("cargo {args:?} does not run: {e}"));
    assert!(
        output.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each workspace crate and the crates it depends on outside tests (normal dependencies).
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let stdout = cargo(&[
        "metadata",
        "--no-deps",
        "--offline",
        "--format-version",
        "1",
    ]);
    let metadata: serde_json::Value =
        serde_json::from_str(&stdout).expect("cargo metadata prints JSON");
    let packages = metadata["packages"].as_array().expect("a package list");
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("a dependency list")
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("a name").to_string())
                .collect();
            (p["name"].as_str().expect("a name").to_string(), deps)
        })
        .collect()
}

#[test]
fn dependency_edges_point_down() {
    let deps = normal_dependencies();
    let of = |krate: &str| {
        deps.get(krate)
            .unwrap_or_else(|| panic!("{krate} is not in the workspace"))
    };
    let forbid = |krate: &str, forbidden: &[&str], why: &str| {
        let found: Vec<&str> = forbidden
            .iter()
            .copied()
            .filter(|f| of(krate).contains(*f))
            .collect();
        assert!(found.is_empty(), "{krate} depends on {found:?}: {why}");
    };
    forbid(
        "x402-raft-store",
        &[
            "axum",
            "hyper",
            "hyper-util",
            "alloy",
            "reqwest",
            "x402-protocol",
            "x402-node",
            "x402-client",
        ],
        "the replicated state knows no HTTP, no Ethereum and no other crate of ours",
    );
    forbid(
        "x402-protocol",
        &[
            "x402-raft-store",
            "x402-node",
            "x402-client",
            "axum",
            "hyper",
            "tokio",
            "clap",
        ],
        "the protocol crate holds what node and clients agree on, no transport, no CLI",
    );
    forbid(
        "x402-tls",
        &[
            "x402-raft-store",
            "x402-protocol",
            "x402-node",
            "x402-client",
            "axum",
            "hyper",
            "alloy",
        ],
        "the TLS crate is configuration of rustls, shared by server and clients",
    );
    forbid(
        "x402-client",
        &["x402-node", "x402-raft-store", "axum"],
        "clients talk to a cluster over HTTP, they never link the server",
    );
    forbid(
        "x402-node",
        &["x402-client", "turmoil", "proptest", "tempfile"],
        "the server takes wire types from x402-protocol, and carries no test support",
    );
    for (krate, its_deps) in &deps {
        if its_deps.contains("x402-node") {
            assert!(
                ["x402-dev", "x402-simulations", "x402-tests"].contains(&krate.as_str()),
                "{krate} depends on x402-node: only the dev support, the simulations and the \
                 tests may"
            );
        }
        if its_deps.contains("x402-dev") {
            assert!(
                ["x402-simulations", "x402-tests"].contains(&krate.as_str()),
                "{krate} depends on x402-dev: the in-memory chain and the dev chain are test \
                 support, only the simulations and the tests may link them"
            );
        }
    }
}

/// Names whose presence in the state machine's code would make apply read something other than
/// the command: a clock, randomness, the environment, I/O, or an order-dependent map.
const APPLY_MUST_NOT_READ: &[&str] = &[
    "SystemTime",
    "Instant::now",
    "thread_rng",
    "rand::",
    "std::env",
    "std::fs",
    "HashMap",
    "HashSet",
    "tokio::",
];

#[test]
fn apply_reads_only_the_command() {
    let state = workspace_root().join("raft-store/src");
    let mut files = vec![state.join("state.rs")];
    for entry in std::fs::read_dir(state.join("state")).expect("raft-store/src/state") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Test modules may use anything; the model is a test oracle.
        if name.ends_with("tests.rs") || name == "model.rs" {
            continue;
        }
        files.push(path);
    }
    assert!(
        files.len() > 5,
        "the state machine's files were not found: {files:?}"
    );
    let found = lines_naming(&files, APPLY_MUST_NOT_READ);
    assert!(
        found.is_empty(),
        "the state machine must read only the command (I6):\n{}",
        found.join("\n")
    );
}

/// Each `file:line: name` where production code (before the first test module, outside
/// comments) of `files` names one of `names`.
fn lines_naming(files: &[PathBuf], names: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in production.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for name in names {
                if code.contains(name) {
                    found.push(format!("{}:{}: {name}", file.display(), n + 1));
                }
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The node's domain modules and what they must not name: the node that assembles them and
/// the HTTP layer that routes to them sit above them (they take narrow contexts, and return
/// domain errors that `http/` maps to answers).
const DOMAIN_MUST_NOT_NAME: &[&str] = &[
    "crate::node",
    "crate::http",
    "IntoResponse",
    "axum::response",
];

#[test]
fn the_node_domain_knows_neither_the_node_nor_http() {
    let src = workspace_root().join("node/src");
    let mut files = Vec::new();
    for module in ["access", "chain", "cluster", "config", "facilitator"] {
        files.extend(rust_files(&src.join(module)));
        let file = src.join(format!("{module}.rs"));
        if file.exists() {
            files.push(file);
        }
    }
    assert!(
        files.len() > 20,
        "the node's domain files were not found: {files:?}"
    );
    let found = lines_naming(&files, DOMAIN_MUST_NOT_NAME);
    assert!(
        found.is_empty(),
        "domain code names what sits above it:\n{}",
        found.join("\n")
    );
}

/// One TLS stack: nothing in the build links OpenSSL, native-tls or a second rustls provider.
#[test]
fn one_tls_stack_rustls_with_ring() {
    // What this machine builds (features applied, normal and build dependencies of every
    // workspace crate): the lock file also lists optional crates that nothing enables.
    let text = cargo(&[
        "tree",
        "--workspace",
        "--offline",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for forbidden in [
        "openssl",
        "openssl-sys",
        "native-tls",
        "aws-lc-rs",
        "aws-lc-sys",
    ] {
        assert!(
            !names.contains(forbidden),
            "{forbidden} is in the build: every TLS connection is rustls with ring (x402-tls)"
        );
    }
    assert!(
        names.contains("ring") && names.contains("rustls"),
        "{names:?}"
    );
}
