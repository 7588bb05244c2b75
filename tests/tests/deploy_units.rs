//! The systemd unit (`deploy/systemd/x402-node.service`) is valid for the systemd it runs
//! under (`systemd-analyze verify`, with `ExecStart` pointed at the binary this run built), and
//! keeps the promises the README makes: restart on failure except for the exit statuses a
//! restart cannot fix (65: the store needs a rebuild, 78: the configuration does not load), an
//! explicit file limit, SIGHUP to reload certificates.

use std::process::Command;

use x402_tests::cluster::bin_dir;
use x402_tests::devchain::workspace_root;

#[test]
fn the_systemd_unit_verifies_and_keeps_its_exit_status_promises() {
    let unit = std::fs::read_to_string(workspace_root().join("deploy/systemd/x402-node.service"))
        .expect("read the unit");
    for line in [
        "ExecStart=/usr/local/bin/x402-node --config /etc/x402/node.toml",
        "Restart=on-failure",
        "RestartPreventExitStatus=65 78",
        "LimitNOFILE=65536",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    let binary = bin_dir().join("x402-node");
    assert!(binary.is_file(), "{} not built", binary.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x402-node.service");
    let local = unit.replace("/usr/local/bin/x402-node", &binary.to_string_lossy());
    std::fs::write(&path, local).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): install Debian's systemd package")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("x402-node.service"),
        "systemd-analyze has something to say about the unit: {said}"
    );
}
