use std::time::Duration;
use x402_simulations::cluster::{SimCluster, SimOptions};
use x402_simulations::workload::WorkloadOptions;

#[test]
fn scratch() {
    let mut c = SimCluster::new(SimOptions::new(42));
    let w = c.start_workload(WorkloadOptions::default());
    c.run_until_ms(2000);
    let old = c.leader().unwrap();
    println!("{:#?}", c.statuses());
    c.crash(old);
    for _ in 0..6 {
        c.run_for(Duration::from_millis(500));
        for (id, s) in c.statuses() {
            match s {
                Ok(s) => println!(
                    "node-{id} {:?} t{} L{:?} c{:?} a{:?} last{:?} snap{:?} purged{:?} claims {}",
                    s.role,
                    s.term,
                    s.leader_id,
                    s.committed,
                    s.applied,
                    s.last_log,
                    s.snapshot,
                    s.purged,
                    s.claims
                ),
                Err(e) => println!("node-{id} {e}"),
            }
        }
    }
    for a in w.history().attempts.iter().filter(|a| a.end_ms >= 1900) {
        println!("{a:?}");
    }
}
