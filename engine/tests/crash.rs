//! Crash test on the real disk path: a child process puts, deletes and compacts chunks
//! through glommio and O_DIRECT, printing each acknowledgement; the parent kills it with
//! SIGKILL at a random point, reopens the store and checks that every acknowledged chunk
//! reads back intact and every acknowledged delete stayed deleted. Many rounds, on one
//! directory, so later rounds recover from the wreckage of earlier ones.
//!
//! `harness = false`: this file's `main` is the test (parent) and, with `child` as its
//! first argument, the process being killed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use engine::codec::crc32c;
use engine::store::disk::Rng;
use engine::store::{Engine, EngineConfig, StoreError};
use proto::ChunkId;

const ROUNDS: u64 = 10;

fn chunk(i: u64) -> (ChunkId, u32, Vec<u8>) {
    let mut rng = Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5eed);
    let len = 1 + usize::try_from(rng.below(200_000)).unwrap();
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(len);
    (ChunkId::of(&data), crc32c(&data), data)
}

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(vec![dir.to_path_buf()], 2);
    c.segment_bytes = 1 << 20;
    c.checkpoint_every_bytes = 512 << 10;
    c.compact_below = 0.7;
    c.maintenance_every = None;
    c
}

/// The process that gets killed: puts chunks `first..` with 8 in flight, deletes every
/// seventh acknowledged one, and compacts on a second thread, forever.
fn child(dir: &Path, first: u64) {
    let engine = Arc::new(Engine::open(&config(dir)).expect("child: open"));
    let compactor = engine.clone();
    std::thread::spawn(move || loop {
        if let Err(e) = compactor.compact() {
            eprintln!("child: compact: {e}");
        }
    });
    let mut out = std::io::stdout().lock();
    let mut pending = std::collections::VecDeque::new();
    let mut next = first;
    let mut acked = Vec::new();
    let mut count = 0u64;
    loop {
        while pending.len() < 8 {
            let (id, crc, data) = chunk(next);
            pending.push_back((next, engine.put(id, crc, data, 0)));
            next += 1;
        }
        let (i, p) = pending.pop_front().unwrap();
        p.wait().expect("child: put");
        writeln!(out, "P {i}").unwrap();
        out.flush().unwrap();
        acked.push(i);
        count += 1;
        if count.is_multiple_of(7) {
            let victim = acked.remove(acked.len() / 2);
            assert!(engine
                .delete(chunk(victim).0)
                .wait()
                .expect("child: delete"));
            writeln!(out, "D {victim}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Known {
    Stored,
    Deleted,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(Path::new(&args[2]), args[3].parse().unwrap());
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("crash_rounds: test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut known: BTreeMap<u64, Known> = BTreeMap::new();
    // A new seed each run; MSPACE_CRASH_SEED replays one.
    let seed = std::env::var("MSPACE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x5eed_0000);
    println!("crash test seed {seed} (MSPACE_CRASH_SEED={seed} replays the kill points)");
    let mut rng = Rng(seed);
    let mut first = 0u64;
    for round in 0..ROUNDS {
        let kill_after = 20 + rng.below(120);
        let mut proc = Command::new(&exe)
            .args(["child", dir.path().to_str().unwrap(), &first.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let record = |line: &str, known: &mut BTreeMap<u64, Known>| {
            let (what, i) = line.split_once(' ').unwrap();
            let i: u64 = i.parse().unwrap();
            known.insert(
                i,
                if what == "P" {
                    Known::Stored
                } else {
                    Known::Deleted
                },
            );
        };
        for line in lines.by_ref() {
            let line = line.unwrap();
            record(&line, &mut known);
            seen += 1;
            if seen == kill_after {
                break;
            }
        }
        assert_eq!(seen, kill_after, "round {round}: the child died on its own");
        proc.kill().unwrap(); // SIGKILL
        proc.wait().unwrap();
        // Acknowledgements printed before the kill landed still count.
        for line in lines.map_while(Result::ok) {
            if line.len() > 2 {
                record(&line, &mut known);
            }
        }
        first = known.keys().next_back().map_or(0, |k| k + 1) + 100;
        let engine = Engine::open(&config(dir.path())).unwrap();
        let (mut stored, mut deleted) = (0, 0);
        for (&i, &k) in &known {
            let (id, _, data) = chunk(i);
            match (k, engine.get(id).wait()) {
                (Known::Stored, Ok(got)) => {
                    assert!(got == data, "round {round}: chunk {i} reads back wrong");
                    stored += 1;
                }
                (Known::Deleted, Err(StoreError::NotFound(_))) => deleted += 1,
                (k, other) => panic!("round {round}: chunk {i} ({k:?}): {other:?}"),
            }
        }
        let stats = engine.stats().unwrap();
        assert_eq!(stats.corrupt_reads, 0, "round {round}: {stats:?}");
        println!(
            "round {round}: killed after {kill_after} acknowledgements; {stored} chunks intact, \
             {deleted} deletes held, {} bytes of torn tail cut, {} segments",
            stats.truncated_bytes, stats.segments
        );
        engine.shutdown().unwrap();
    }
    println!("test crash_rounds ... ok");
}
