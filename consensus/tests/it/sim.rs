//! The chain under a seeded fault schedule: 4 and 7 validators, each a real engine and
//! block store, over `consensus::node::sim`'s in-memory network (drops, duplicates,
//! delays and reordering, crashes and restarts, partitions, a double-voting validator).
//!
//! Each test runs one seed, fixed so CI is repeatable. Other seeds, and longer runs:
//!
//! ```text
//! MSPACE_SIM_SEED=12345 MSPACE_SIM_HEIGHTS=5000 cargo test -p consensus --test it sim:: -- --nocapture
//! ```
//!
//! A failure prints its schedule and the command that replays it.

use consensus::node::sim::{self, Schedule, Until};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("a hex seed"),
        None => v.parse().expect("a number"),
    })
}

/// Where the nodes keep their stores: memory when the machine has it (fsync is then free,
/// and the simulation is about the protocol, not the disk).
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("a temporary directory")
}

async fn simulate(test: &str, validators: usize, seed: u64, heights: u64) {
    let seed = env_u64("MSPACE_SIM_SEED").unwrap_or(seed);
    let heights = env_u64("MSPACE_SIM_HEIGHTS").unwrap_or(heights);
    let schedule: Schedule = sim::schedule(seed, validators, heights);
    // The schedule exercises every kind of fault it claims to.
    let kinds = |pred: &dyn Fn(&sim::NodeFault) -> bool| {
        schedule.phases.iter().filter(|p| pred(&p.fault)).count()
    };
    let dir = scratch();
    match sim::run(schedule.clone(), dir.path().to_path_buf()).await {
        Ok(report) => {
            println!(
                "{}",
                schedule.to_string().lines().next().unwrap_or_default()
            );
            for (p, (ms, late)) in schedule.phases.iter().zip(&report.phases) {
                println!(
                    "{ms:7} ms {late:3} late  {:?} until {:?}, {:?}",
                    p.fault, p.until, p.links
                );
            }
            let report = sim::Report {
                phases: Vec::new(),
                ..report
            };
            println!("{report:#?}");
            assert!(report.final_height >= schedule.heights());
            assert!(report.blocks_compared >= report.final_height);
            if kinds(&|f| matches!(f, sim::NodeFault::Equivocate { .. })) > 0 {
                assert!(
                    report.double_votes > 0,
                    "the byzantine validator never voted twice"
                );
                assert!(report.slashed_offences > 0);
                assert!(report.deposit_after < report.deposit_before);
            }
            if kinds(&|f| matches!(f, sim::NodeFault::Crash(_))) > 0 {
                assert!(report.crashes > 0);
            }
            assert!(
                report.transfers_committed > 0,
                "no client transfer committed"
            );
            assert!(
                schedule
                    .phases
                    .iter()
                    .any(|p| matches!(p.until, Until::Heights(_)) && p.links.drop_per_mille > 0),
                "the schedule never dropped messages"
            );
            assert!(report.dropped > 0 && report.duplicated > 0);
        }
        Err(failure) => panic!(
            "{failure}\nreplay: MSPACE_SIM_SEED={seed:#x} MSPACE_SIM_HEIGHTS={heights} \
             cargo test -p consensus --test it sim::{test} -- --exact --nocapture"
        ),
    }
}

#[test]
fn schedules_are_a_function_of_the_seed() {
    let a = sim::schedule(7, 4, 1000);
    let b = sim::schedule(7, 4, 1000);
    assert_eq!(a.phases, b.phases);
    assert_eq!(a.byzantine, b.byzantine);
    assert_ne!(sim::schedule(8, 4, 1000).phases, a.phases);
    assert!(a.heights() >= 1000);
    for n in [4, 7] {
        let f = (n - 1) / 3;
        for seed in 0..200 {
            let s = sim::schedule(seed, n, 2000);
            for p in &s.phases {
                // A phase that must progress never has more than f faulty validators.
                let faulty = match &p.fault {
                    sim::NodeFault::None => 0,
                    sim::NodeFault::Crash(c) | sim::NodeFault::Isolate(c) => c.len(),
                    sim::NodeFault::Equivocate { crash } => 1 + crash.len(),
                    sim::NodeFault::Split(side) => {
                        assert!(side.len() * 3 <= 2 * n && (n - side.len()) * 3 <= 2 * n);
                        assert!(matches!(p.until, Until::Millis(_)));
                        continue;
                    }
                };
                assert!(faulty <= f, "seed {seed}: {p:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_validators() {
    simulate("four_validators", 4, 0x4A11, 1200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_validators() {
    simulate("seven_validators", 7, 0x7A11, 700).await;
}
