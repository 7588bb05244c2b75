//! Hosts of their own on one machine: network namespaces (`ip netns`), each with one veth
//! interface and one IPv4 address, all on one bridge in the test's namespace, which holds the
//! bridge's address (the tests' "gateway"). Nodes started in them see only their own address and
//! loopback, as on separate machines; the test process reaches every host through the bridge.
//!
//! Needs root and iproute2 (CI runs as root). If the namespaces cannot be made the test fails
//! and says why: it never passes by skipping. Everything made is removed on drop.

use std::process::Command;

/// One host: a namespace and its address.
#[derive(Clone, Debug)]
pub struct Host {
    pub namespace: String,
    pub ip: String,
}

/// A set of hosts on one bridge.
#[derive(Debug)]
pub struct Hosts {
    bridge: String,
    /// The veths' ends on the bridge (deleting one deletes its pair).
    links: Vec<String>,
    /// The bridge's address in the test's own namespace.
    pub gateway: String,
    pub hosts: Vec<Host>,
}

/// Runs `ip ARGS`; the error says what failed and why.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// Makes `n` hosts (at most 9). Panics, saying why, when this machine cannot.
    pub fn create(n: usize) -> Hosts {
        assert!((1..=9).contains(&n), "1..=9 hosts");
        // Names and the subnet from the process id: tests run in processes of their own.
        let pid = std::process::id();
        let subnet = format!("10.213.{}", pid % 250);
        let mut hosts = Hosts {
            bridge: format!("x4b{}", pid % 10_000_000),
            links: Vec::new(),
            gateway: format!("{subnet}.254"),
            hosts: Vec::new(),
        };
        if let Err(why) = hosts.build(n, pid, &subnet) {
            panic!(
                "cannot make {n} hosts in network namespaces: {why} (this test needs root and \
                 iproute2; it does not skip)"
            );
        }
        hosts
    }

    fn build(&mut self, n: usize, pid: u32, subnet: &str) -> Result<(), String> {
        let bridge = self.bridge.clone();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 1..=n {
            let namespace = format!("x402-{pid}-{i}");
            let outside = format!("x4v{}h{i}", pid % 10_000_000);
            let inside = format!("x4v{}n{i}", pid % 10_000_000);
            let address = format!("{subnet}.{i}");
            ip(&["netns", "add", &namespace])?;
            self.hosts.push(Host {
                namespace: namespace.clone(),
                ip: address.clone(),
            });
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            ip(&["link", "set", &inside, "netns", &namespace])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &inside,
            ])?;
            ip(&["-n", &namespace, "link", "set", &inside, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Host `i` (1-based, as node ids).
    pub fn host(&self, i: u64) -> &Host {
        &self.hosts[i as usize - 1]
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // A namespace whose processes have not exited yet outlives `netns del`, and its veth
        // with it: delete the links first.
        for link in &self.links {
            let _ = ip(&["link", "del", link]);
        }
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.namespace]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
