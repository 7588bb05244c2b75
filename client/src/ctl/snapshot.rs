//! `x402ctl snapshot`: asks every node to snapshot its state now (each node snapshots its own
//! state machine; it is not a replicated command), e.g. before a backup or to purge the log.

use serde::Serialize;

use super::{json_line, on_every_node, or_dash, CtlError, Output};
use crate::admin::AdminClient;
use crate::wire::UnreachableNode;

/// `snapshot --json`.
#[derive(Debug, Serialize)]
struct SnapshotReport {
    snapshots: Vec<NodeSnapshot>,
    failed: Vec<UnreachableNode>,
}

#[derive(Debug, Serialize)]
struct NodeSnapshot {
    url: String,
    last_log_index: Option<u64>,
}

pub(super) async fn run(nodes: Vec<AdminClient>, json: bool) -> Result<Output, CtlError> {
    let mut report = SnapshotReport {
        snapshots: Vec::new(),
        failed: Vec::new(),
    };
    for (url, answer) in on_every_node(nodes, |n| async move { n.trigger_snapshot().await }).await {
        match answer {
            Ok(snap) => report.snapshots.push(NodeSnapshot {
                url,
                last_log_index: snap.last_log_index,
            }),
            Err(e) => report.failed.push(UnreachableNode {
                url,
                error: e.to_string(),
            }),
        }
    }
    let stdout = if json {
        json_line(&report)?
    } else {
        render(&report)
    };
    Ok(Output {
        stdout,
        failed: !report.failed.is_empty(),
    })
}

fn render(report: &SnapshotReport) -> String {
    let mut out = String::new();
    for s in &report.snapshots {
        out.push_str(&format!(
            "{}: snapshot up to log index {}\n",
            s.url,
            or_dash(s.last_log_index)
        ));
    }
    for f in &report.failed {
        out.push_str(&format!("{}: failed: {}\n", f.url, f.error));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_successes_and_failures() {
        let report = SnapshotReport {
            snapshots: vec![NodeSnapshot {
                url: "http://a:1".into(),
                last_log_index: Some(99),
            }],
            failed: vec![UnreachableNode {
                url: "http://b:2".into(),
                error: "timeout".into(),
            }],
        };
        assert_eq!(
            render(&report),
            "http://a:1: snapshot up to log index 99\nhttp://b:2: failed: timeout\n"
        );
    }
}
