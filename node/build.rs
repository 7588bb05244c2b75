//! Records the commit the node is built from, for `x402_build_info{commit}` and `--version`:
//! `X402_BUILD_COMMIT` when the builder sets it (a container build without `.git`), else what
//! `git rev-parse HEAD` said when this crate was last built (re-run when HEAD or a branch moves),
//! else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=X402_BUILD_COMMIT");
    // A new commit or a checkout changes HEAD (or the ref it names).
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = std::env::var("X402_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=X402_BUILD_COMMIT={commit}");
}
