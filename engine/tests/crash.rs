//! Crash test on the real disk path: a child process puts, deletes and compacts chunks
//! through glommio and O_DIRECT, printing each acknowledgement; the parent kills it with
//! SIGKILL at a random point, reopens the store and checks that every acknowledged chunk
//! reads back intact and every acknowledged delete stayed deleted. Many rounds, on one
//! directory, so later rounds recover from the wreckage of earlier ones.
//!
//! A delete the child announced but was killed before it was acknowledged may have reached
//! the disk or not: the parent accepts either outcome, for those chunks only, and from then
//! on expects the outcome it saw to stay. If it changes later, a write of the killed process
//! landed after the store was reopened (what the store's fence on segment files prevents,
//! `engine::store::disk::DmaDisk`), and the test says so by name.
//!
//! `MSPACE_CRASH_ROUNDS` sets the number of rounds (10 by default, what CI runs);
//! `MSPACE_CRASH_SEED` replays one run's kill points. The long run recorded in
//! docs/BENCHMARKS.md:
//! `MSPACE_CRASH_ROUNDS=1000 cargo test --release -p engine --test crash`.
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

/// Rounds when `MSPACE_CRASH_ROUNDS` is not set: CI's short run.
const ROUNDS_DEFAULT: u64 = 10;
/// Chunks stored in the last this many rounds are all read back every round; older ones
/// the parent deletes itself (acknowledged deletes, checked from then on), so a long run
/// keeps a bounded store while its index and tombstones keep growing.
const WINDOW_ROUNDS: u64 = 16;
/// Older entries (stored or deleted) checked per round, besides the window; the last
/// round checks every entry.
const SAMPLE_OLDER: usize = 256;

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
/// seventh acknowledged one (announcing it first), and compacts on a second thread,
/// forever.
fn child(dir: &Path, first: u64) {
    let engine = Arc::new(Engine::open(&config(dir)).expect("child: open"));
    let compactor = engine.clone();
    std::thread::spawn(move || loop {
        if let Err(e) = compactor.compact() {
            eprintln!("child: compact: {e}");
        }
    });
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    };
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
        say(format!("P {i}"));
        acked.push(i);
        count += 1;
        if count.is_multiple_of(7) {
            let victim = acked.remove(acked.len() / 2);
            say(format!("A {victim}"));
            assert!(engine
                .delete(chunk(victim).0)
                .wait()
                .expect("child: delete"));
            say(format!("D {victim}"));
        }
    }
}

/// What the parent knows of chunk `i`.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Known {
    /// Its put was acknowledged.
    Stored,
    /// Its delete was acknowledged (by the child or the parent).
    Deleted,
    /// Its delete was announced and not acknowledged before the kill: either outcome.
    Announced,
}

#[derive(Clone, Copy)]
struct Entry {
    known: Known,
    /// The round whose child stored it.
    round: u64,
    /// For an announced delete: the round whose reopen saw its outcome.
    resolved_in: Option<u64>,
}

#[derive(Default, Debug)]
struct Totals {
    kills: u64,
    reads_checked: u64,
    deletes_checked: u64,
    announced_stayed: u64,
    announced_took: u64,
    torn_bytes_cut: u64,
    fence_waits: u64,
    parent_deletes: u64,
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
    let rounds: u64 = std::env::var("MSPACE_CRASH_ROUNDS")
        .ok()
        .map_or(ROUNDS_DEFAULT, |s| {
            s.parse().expect("MSPACE_CRASH_ROUNDS: a number")
        });
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut known: BTreeMap<u64, Entry> = BTreeMap::new();
    // A new seed each run; MSPACE_CRASH_SEED replays one.
    let seed = std::env::var("MSPACE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x5eed_0000);
    println!(
        "crash test seed {seed}, {rounds} rounds (MSPACE_CRASH_SEED={seed} \
         MSPACE_CRASH_ROUNDS={rounds} replays the kill points)"
    );
    let mut rng = Rng(seed);
    let mut first = 0u64;
    let mut t = Totals::default();
    for round in 0..rounds {
        let kill_after = 20 + rng.below(120);
        let mut proc = Command::new(&exe)
            .args(["child", dir.path().to_str().unwrap(), &first.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(proc.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let record = |line: &str, known: &mut BTreeMap<u64, Entry>| {
            let (what, i) = line.split_once(' ').unwrap();
            let i: u64 = i.parse().unwrap();
            let e = known.entry(i).or_insert(Entry {
                known: Known::Stored,
                round,
                resolved_in: None,
            });
            e.known = match what {
                "P" => Known::Stored,
                "A" => Known::Announced,
                "D" => Known::Deleted,
                other => panic!("the child said {other:?}"),
            };
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
        t.kills += 1;
        // Acknowledgements printed before the kill landed still count.
        for line in lines.map_while(Result::ok) {
            if line.len() > 2 {
                record(&line, &mut known);
            }
        }
        first = known.keys().next_back().map_or(0, |k| k + 1) + 100;
        let engine = Engine::open(&config(dir.path())).unwrap();

        // Which entries to check this round: the window, a sample of older ones, or all.
        let last = round + 1 == rounds;
        let older: Vec<u64> = known
            .iter()
            .filter(|(_, e)| e.round + WINDOW_ROUNDS <= round)
            .map(|(&i, _)| i)
            .collect();
        let mut check: Vec<u64> = known
            .iter()
            .filter(|(_, e)| last || e.round + WINDOW_ROUNDS > round)
            .map(|(&i, _)| i)
            .collect();
        if !last && !older.is_empty() {
            for _ in 0..SAMPLE_OLDER.min(older.len()) {
                check.push(older[usize::try_from(rng.below(older.len() as u64)).unwrap()]);
            }
        }
        let (mut stored, mut deleted) = (0, 0);
        for i in check {
            let e = known.get_mut(&i).unwrap();
            let (id, _, data) = chunk(i);
            let got = engine.get(id).wait();
            let outcome = match &got {
                Ok(bytes) => {
                    assert!(*bytes == data, "round {round}: chunk {i} reads back wrong");
                    Known::Stored
                }
                Err(StoreError::NotFound(_)) => Known::Deleted,
                Err(other) => panic!("round {round}: chunk {i} ({:?}): {other}", e.known),
            };
            match (e.known, e.resolved_in) {
                (Known::Announced, _) => {
                    // Killed between announcing and acknowledging: either outcome, and
                    // from now on the one seen here.
                    if outcome == Known::Stored {
                        t.announced_stayed += 1;
                    } else {
                        t.announced_took += 1;
                    }
                    e.known = outcome;
                    e.resolved_in = Some(round);
                }
                (k, Some(r)) if k != outcome => panic!(
                    "round {round}: chunk {i}: the delete its writer announced before being \
                     killed read as {k:?} at the reopen of round {r} and as {outcome:?} now: \
                     a write of the killed process landed after the store was reopened"
                ),
                (k, None) if k != outcome => {
                    panic!(
                        "round {round}: chunk {i} ({k:?}): {got:?}",
                        got = got.map(|_| ())
                    )
                }
                _ => {}
            }
            match outcome {
                Known::Stored => stored += 1,
                _ => deleted += 1,
            }
        }
        t.reads_checked += stored;
        t.deletes_checked += deleted;
        let stats = engine.stats().unwrap();
        assert_eq!(stats.corrupt_reads, 0, "round {round}: {stats:?}");
        t.torn_bytes_cut += stats.truncated_bytes;
        t.fence_waits += stats.fence_waits;

        // Keep the store bounded: what fell out of the window is deleted by the parent.
        let mut retired = 0;
        for i in older {
            let e = known.get_mut(&i).unwrap();
            if e.known == Known::Stored {
                assert!(engine.delete(chunk(i).0).wait().unwrap(), "chunk {i}");
                e.known = Known::Deleted;
                e.resolved_in = None;
                retired += 1;
            }
        }
        t.parent_deletes += retired;
        println!(
            "round {round}: killed after {kill_after} lines; {stored} chunks intact, {deleted} \
             deletes held, {} bytes of torn tail cut, {} segments waited for in-flight writes, \
             {} segments, {retired} retired",
            stats.truncated_bytes, stats.fence_waits, stats.segments
        );
        engine.shutdown().unwrap();
    }
    println!("crash test totals over {rounds} rounds: {t:?}");
    println!("test crash_rounds ... ok");
}
