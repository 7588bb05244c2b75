//! The architecture invariants of `ARCHITECTURE.md` that a machine can check: which crate may
//! depend on which, and what the state machine's apply must never read.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use x402_tests::devchain::workspace_root;

/// Each workspace crate and the crates it depends on outside tests (normal dependencies).
fn normal_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
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
                ["x402-simulations", "x402-tests"].contains(&krate.as_str()),
                "{krate} depends on x402-node: only the simulations and the tests may"
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
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        // Stop at the first test module: what follows is not apply.
        let production = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in production.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for name in APPLY_MUST_NOT_READ {
                if code.contains(name) {
                    found.push(format!("{}:{}: {name}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the state machine must read only the command (I6):\n{}",
        found.join("\n")
    );
}
