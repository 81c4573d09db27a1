//! The host chunk store end to end: on real disks through glommio, and on the in-memory
//! twin that tears writes, flips bits, fills up and fails fsync.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeSet;
use std::path::Path;

use engine::codec::crc32c;
use engine::store::disk::{MemDisk, Rng};
use engine::store::record::{encode_record, scan, Layout, RecordHeader, RecordKind};
use engine::store::{Engine, EngineConfig, Load, PutOutcome, StoreError};
use proto::{proof, ChunkId};

/// A deterministic chunk: its id, CRC32C and bytes.
fn chunk(seed: u64, len: usize) -> (ChunkId, u32, Vec<u8>) {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ len as u64);
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(len);
    (ChunkId::of(&data), crc32c(&data), data)
}

fn cfg(dirs: &[&Path], shards: usize) -> EngineConfig {
    let mut c = EngineConfig::new(dirs.iter().map(|d| d.to_path_buf()).collect(), shards);
    c.maintenance_every = None;
    c
}

fn mem_cfg(shards: usize) -> EngineConfig {
    let mut c = EngineConfig::new(Vec::new(), shards);
    c.maintenance_every = None;
    c
}

fn open_mem(c: &EngineConfig, disks: &[MemDisk]) -> Engine {
    Engine::open_on(c, disks.iter().map(|d| vec![d.clone()]).collect()).unwrap()
}

fn put(e: &Engine, c: &(ChunkId, u32, Vec<u8>)) -> Result<PutOutcome, StoreError> {
    e.put(c.0, c.1, c.2.clone(), 0).wait()
}

const SIZES: [usize; 8] = [
    1,
    1000,
    1024,
    16 * 1024,
    16 * 1024 + 1,
    64 * 1024 + 16,
    200_000,
    (1 << 20) + 16,
];

#[test]
fn put_get_range_prove_delete_on_real_disks() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cfg(&[a.path(), b.path()], 2);
    let e = Engine::open(&c).unwrap();
    let chunks: Vec<_> = (0..24)
        .map(|i| chunk(i, SIZES[i as usize % SIZES.len()]))
        .collect();
    for ch in &chunks {
        assert_eq!(put(&e, ch).unwrap(), PutOutcome::Stored);
    }
    assert_eq!(put(&e, &chunks[0]).unwrap(), PutOutcome::Existing);
    // "Existing" is no shortcut past the checks: other bytes under a stored id are refused.
    let (id, crc, data) = &chunks[5];
    let mut junk = data.clone();
    junk[0] ^= 1;
    let crc_junk = engine::codec::crc32c(&junk);
    assert!(matches!(
        e.put(*id, crc_junk, junk.clone(), 0).wait(),
        Err(StoreError::IdMismatch { .. })
    ));
    assert!(matches!(
        e.put(*id, *crc ^ 1, data.clone(), 0).wait(),
        Err(StoreError::CrcMismatch { .. })
    ));
    for (id, _, data) in &chunks {
        assert_eq!(&e.get(*id).wait().unwrap(), data);
        let len = data.len() as u64;
        for r in [
            0..len,
            0..1,
            len - 1..len,
            len / 3..len / 2,
            len / 2..len / 2,
        ] {
            let got = e.get_range(*id, r.clone()).wait().unwrap();
            assert_eq!(got, data[r.start as usize..r.end as usize], "{len} {r:?}");
        }
        let leaves = proof::leaf_count(len);
        for leaf in [0, leaves / 2, leaves - 1] {
            let p = e.prove(*id, leaf).wait().unwrap();
            assert_eq!(p, proof::prove(data, leaf).unwrap());
            proof::verify(id, len, leaf, &p).unwrap();
        }
        assert!(matches!(
            e.prove(*id, leaves).wait(),
            Err(StoreError::Leaf { .. })
        ));
        assert!(matches!(
            e.get_range(*id, 0..len + 1).wait(),
            Err(StoreError::Range { .. })
        ));
    }
    // Both data directories hold records, for both shards (ids pick shard and volume).
    for d in [a.path(), b.path()] {
        for s in 0..2 {
            let bytes: u64 = std::fs::read_dir(d.join(format!("shard-{s}")))
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".msd"))
                .map(|e| e.metadata().unwrap().len())
                .sum();
            assert!(bytes > 0, "{} shard {s} holds nothing", d.display());
        }
    }
    // Every rejection, and nothing stored by any of them.
    let (id, crc, data) = chunk(99, 5000);
    assert!(matches!(
        e.put(id, crc ^ 1, data.clone(), 0).wait(),
        Err(StoreError::CrcMismatch { .. })
    ));
    let other = chunk(98, 5000).0;
    assert!(matches!(
        e.put(other, crc, data.clone(), 0).wait(),
        Err(StoreError::IdMismatch { .. })
    ));
    assert!(matches!(
        e.put(id, crc32c(&[]), Vec::new(), 0).wait(),
        Err(StoreError::Size(0))
    ));
    assert_eq!(e.get(id).wait(), Err(StoreError::NotFound(id)));
    assert_eq!(e.get(other).wait(), Err(StoreError::NotFound(other)));
    // Delete.
    let gone = chunks[3].0;
    assert!(e.delete(gone).wait().unwrap());
    assert!(!e.delete(gone).wait().unwrap());
    assert_eq!(e.get(gone).wait(), Err(StoreError::NotFound(gone)));
    let stats = e.stats().unwrap();
    assert_eq!(stats.chunks, 23);
    assert_eq!(stats.corrupt_reads, 0);
    e.shutdown().unwrap();

    // A restart from the checkpoint, then one with no checkpoint at all (full scan): the
    // same chunks, the deleted one still gone.
    for drop_checkpoints in [false, true] {
        if drop_checkpoints {
            for d in [a.path(), b.path()] {
                for s in 0..2 {
                    std::fs::remove_file(d.join(format!("shard-{s}/index.msix"))).unwrap();
                }
            }
        }
        let e = Engine::open(&c).unwrap();
        for (i, (id, _, data)) in chunks.iter().enumerate() {
            if i == 3 {
                assert_eq!(e.get(*id).wait(), Err(StoreError::NotFound(*id)));
            } else {
                assert_eq!(
                    &e.get(*id).wait().unwrap(),
                    data,
                    "restart {drop_checkpoints}"
                );
            }
        }
        e.shutdown().unwrap();
    }
}

/// Waits (a bounded time) until the store's load is `want`.
fn until_load(e: &Engine, want: Load) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while e.load() != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the load stayed {:?}, not {want:?}",
            e.load()
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_flood_of_puts_waits_in_its_callers_not_in_the_store() {
    use futures_lite::future::{block_on, poll_once};
    let disk = MemDisk::new();
    let mut c = mem_cfg(1);
    c.queue_depth = 2;
    c.in_flight_max = 5;
    c.put_bytes_in_flight = 3 * 4096;
    let e = open_mem(&c, std::slice::from_ref(&disk));
    let chunks: Vec<_> = (0..40).map(|i| chunk(1000 + i, 4096)).collect();
    let put = |ch: &(ChunkId, u32, Vec<u8>)| e.put(ch.0, ch.1, ch.2.clone(), 0).wait();
    // With every sync held no put can finish. Of 39 callers, the shard takes 3 puts (their
    // bytes bind before the count), takes a fourth and waits for room, 2 more fill its
    // queue, and the other 33 callers wait to send theirs.
    let hold = disk.hold_syncs();
    std::thread::scope(|s| {
        let callers: Vec<_> = chunks[..39]
            .iter()
            .map(|ch| s.spawn(move || put(ch)))
            .collect();
        let saturated = Load {
            queued: 2,
            in_flight: 3,
            put_bytes: 3 * 4096,
            full_shards: 1,
        };
        until_load(&e, saturated);
        // Async callers wait too, whatever the request; one that gives up before it is
        // sent has not made it.
        let (id, crc, data) = chunks[39].clone();
        assert!(block_on(poll_once(e.put_async(id, crc, data, 0))).is_none());
        assert!(block_on(poll_once(e.stat_async(chunks[0].0))).is_none());
        assert_eq!(e.load(), saturated);
        drop(hold);
        for c in callers {
            assert_eq!(c.join().unwrap().unwrap(), PutOutcome::Stored);
        }
    });
    let st = e.stats().unwrap();
    assert_eq!(st.chunks, 39);
    assert_eq!(st.in_flight_peak, 3, "{st:?}");
    assert_eq!(st.put_bytes_peak, 3 * 4096, "{st:?}");
    assert!(st.held_back >= 1, "{st:?}");
    assert_eq!(e.stat(chunks[39].0).wait().unwrap(), None);
    assert_eq!(
        block_on(block_on(e.stat_async(chunks[0].0)).recv()).unwrap(),
        Some(4096)
    );
    // Reads are held back by the count alone.
    let gets: Vec<_> = chunks[..39].iter().map(|ch| e.get(ch.0)).collect();
    for (g, ch) in gets.into_iter().zip(&chunks) {
        assert_eq!(g.wait().unwrap(), ch.2);
    }
    assert!(e.stats().unwrap().in_flight_peak <= 5);
    // A request leaves the count just after its answer is sent.
    until_load(&e, Load::default());
}

#[test]
fn a_torn_tail_on_a_real_disk_is_truncated_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&[dir.path()], 1);
    let chunks: Vec<_> = (0..5).map(|i| chunk(i, 30_000)).collect();
    let e = Engine::open(&c).unwrap();
    for ch in &chunks {
        put(&e, ch).unwrap();
    }
    e.shutdown().unwrap();
    // The active segment (the newest) ends in a record cut after two of its nine sectors,
    // as a crash mid-write leaves it.
    let (last, mut torn, at) = with_record_appended(dir.path(), 66, 30_000);
    torn.truncate(at + 8192);
    std::fs::write(&last, &torn).unwrap();
    let e = Engine::open(&c).unwrap();
    let stats = e.stats().unwrap();
    assert_eq!(stats.truncated_bytes, 8192, "{stats:?}");
    for (id, _, data) in &chunks {
        assert_eq!(&e.get(*id).wait().unwrap(), data);
    }
    // Writing goes on after the truncated tail.
    let more = chunk(77, 9000);
    put(&e, &more).unwrap();
    e.shutdown().unwrap();
    let e = Engine::open(&c).unwrap();
    assert_eq!(e.get(more.0).wait().unwrap(), more.2);
    assert_eq!(e.stats().unwrap().truncated_bytes, 0);
}

/// The same index checkpoint in version 1 (56-byte entries, no record layouts), as an
/// engine before record layout 2 wrote it. Every entry must be of layout 1.
fn checkpoint_as_version_1(v2: &[u8]) -> Vec<u8> {
    let segments = u32::from_le_bytes(v2[12..16].try_into().unwrap()) as usize;
    let head = 24 + 16 * segments;
    let mut v1 = v2[..head].to_vec();
    v1[4] = 1;
    for entry in v2[head..v2.len() - 4].chunks(64) {
        assert_eq!(entry[56], 1, "an entry of layout 2");
        v1.extend_from_slice(&entry[..56]);
    }
    let sum = crc32c(&v1);
    v1.extend_from_slice(&sum.to_le_bytes());
    v1
}

/// Puts `chunks` with `depth` in flight and crashes `disk` once `crash_after` of them are
/// acknowledged: the crash image, and which chunks were acknowledged (the engine is gone).
fn puts_until_crash(
    e: Engine,
    disk: &MemDisk,
    chunks: &[(ChunkId, u32, Vec<u8>)],
    depth: usize,
    crash_after: usize,
    rng: &mut Rng,
) -> (MemDisk, Vec<usize>) {
    let mut pending = std::collections::VecDeque::new();
    let mut acked = Vec::new();
    let mut next = 0;
    let image = loop {
        while pending.len() < depth && next < chunks.len() {
            let (id, crc, data) = chunks[next].clone();
            pending.push_back((next, e.put(id, crc, data, 0)));
            next += 1;
        }
        let (i, p) = pending.pop_front().unwrap();
        p.wait().unwrap();
        acked.push(i);
        if acked.len() == crash_after {
            break disk.crash(rng);
        }
    };
    drop(pending);
    drop(e);
    (image, acked)
}

/// Puts, many in flight at once, with the twin crashing at a random instant: every
/// chunk acknowledged before the crash reads back intact afterwards, and nothing else
/// reads back wrong.
#[test]
fn torn_writes_never_lose_an_acknowledged_chunk() {
    for round in 0..12u64 {
        let disk = MemDisk::new();
        let mut c = mem_cfg(1);
        c.segment_bytes = 256 * 1024;
        c.checkpoint_every_bytes = 300 * 1024;
        let e = open_mem(&c, std::slice::from_ref(&disk));
        let mut rng = Rng(round);
        let crash_after = 10 + rng.below(60) as usize;
        let chunks: Vec<_> = (0..200)
            .map(|i| chunk(round * 1000 + i, 1 + rng.below(70_000) as usize))
            .collect();
        // Keep many puts in flight; crash after `crash_after` acknowledgements.
        let (image, acked) = puts_until_crash(e, &disk, &chunks, 16, crash_after, &mut rng);
        let e = open_mem(&c, std::slice::from_ref(&image));
        for (i, (id, _, data)) in chunks.iter().enumerate() {
            match e.get(*id).wait() {
                Ok(got) => assert_eq!(&got, data, "round {round}: chunk {i} reads back wrong"),
                Err(StoreError::NotFound(_)) => {
                    assert!(
                        !acked.contains(&i),
                        "round {round}: acknowledged chunk {i} lost"
                    )
                }
                Err(other) => panic!("round {round}: chunk {i}: {other}"),
            }
        }
        // The recovered store keeps working, and survives a second crash.
        let extra = chunk(round * 1000 + 999, 20_000);
        put(&e, &extra).unwrap();
        let image2 = image.crash(&mut rng);
        drop(e);
        let e = open_mem(&c, &[image2]);
        assert_eq!(e.get(extra.0).wait().unwrap(), extra.2);
        for &i in &acked {
            assert_eq!(e.get(chunks[i].0).wait().unwrap(), chunks[i].2);
        }
    }
}

#[test]
fn flipped_bits_are_reported_as_corruption_never_served() {
    let disk = MemDisk::new();
    // Every read from the disk: no outboard kept in memory.
    let mut c = mem_cfg(1);
    c.outboard_cache_bytes = 0;
    let e = open_mem(&c, std::slice::from_ref(&disk));
    let big = chunk(1, 100_000); // 25 groups of 4 KiB: 24 parents, an outboard of 1,536 bytes
    let small = chunk(2, 3000);
    put(&e, &big).unwrap();
    put(&e, &small).unwrap();
    let seg = disk
        .file_names()
        .into_iter()
        .find(|n| n.ends_with(".msd") && disk.file_len(n).unwrap() > 0)
        .unwrap();
    // big's record is first at offset 0: header sector, payload from 4096, outboard.
    disk.flip_bit(&seg, 4096 + 20_000, 3); // payload, group 4
    assert!(matches!(
        e.get(big.0).wait(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        e.get_range(big.0, 16_384..20_480).wait(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        e.prove(big.0, 19).wait(),
        Err(StoreError::Corrupt { .. })
    ));
    // Other groups still verify and are served.
    assert_eq!(
        e.get_range(big.0, 40_000..50_000).wait().unwrap(),
        big.2[40_000..50_000]
    );
    assert_eq!(
        e.prove(big.0, 60).wait().unwrap(),
        proof::prove(&big.2, 60).unwrap()
    );
    // The outboard (the root pair.s right half: the sibling of every left-side leaf), then a header.
    disk.flip_bit(&seg, 4096 + 100_000 + 40, 0);
    assert!(matches!(
        e.prove(big.0, 60).wait(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        e.get_range(big.0, 40_000..50_000).wait(),
        Err(StoreError::Corrupt { .. })
    ));
    let small_at = 26 * 4096; // Layout::V2.span(100_000): 4096 + 100_000 + 1,536 bytes, 26 sectors
    disk.flip_bit(&seg, small_at + 45, 1);
    assert!(matches!(
        e.get(small.0).wait(),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(e.stats().unwrap().corrupt_reads >= 6);
}

#[test]
fn a_kept_outboard_makes_a_challenge_one_read_and_a_damaged_one_is_never_kept() {
    let disk = MemDisk::new();
    let e = open_mem(&mem_cfg(1), std::slice::from_ref(&disk));
    let big = chunk(1, 100_000); // 25 groups, an outboard of 1,536 bytes after the payload
    let other = chunk(2, 100_000);
    put(&e, &big).unwrap();
    put(&e, &other).unwrap();
    let reads = |f: &dyn Fn()| {
        let before = disk.reads();
        f();
        disk.reads() - before
    };
    // The first challenge reads the group and the outboard; later ones the group alone,
    // and the proofs are the same.
    let first = reads(&|| {
        assert_eq!(
            e.prove(big.0, 3).wait().unwrap(),
            proof::prove(&big.2, 3).unwrap()
        );
    });
    assert_eq!(first, 2);
    for leaf in [3, 50, 97] {
        let n = reads(&|| {
            assert_eq!(
                e.prove(big.0, leaf).wait().unwrap(),
                proof::prove(&big.2, leaf).unwrap()
            );
        });
        assert_eq!(n, 1, "leaf {leaf}");
    }
    // A range read uses the kept outboard too.
    let n = reads(&|| {
        assert_eq!(
            e.get_range(big.0, 40_000..50_000).wait().unwrap(),
            big.2[40_000..50_000]
        );
    });
    assert_eq!(n, 1);
    // The other chunk's outboard damaged on disk, in the root pair's right half (the
    // sibling of every leaf of the left half): a challenge of the right half (leaf 70)
    // still verifies, but the outboard is not kept, so each challenge reads it again, and
    // one of the left half (leaf 60) is refused.
    let seg = disk
        .file_names()
        .into_iter()
        .find(|n| n.ends_with(".msd") && disk.file_len(n).unwrap() > 0)
        .unwrap();
    let other_at = 26 * 4096; // Layout::V2.span(100_000): 26 sectors
    disk.flip_bit(&seg, other_at + 4096 + 100_000 + 40, 0); // the root pair's right half
    for _ in 0..2 {
        let n = reads(&|| {
            assert_eq!(
                e.prove(other.0, 70).wait().unwrap(),
                proof::prove(&other.2, 70).unwrap()
            );
        });
        assert_eq!(n, 2, "a damaged outboard is read every time, never kept");
    }
    assert!(matches!(
        e.prove(other.0, 60).wait(),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn failed_fsync_and_failed_writes_lose_nothing_acknowledged() {
    for (name, arm) in [
        (
            "fsync",
            (|d: &MemDisk| d.fail_syncs_after(3)) as fn(&MemDisk),
        ),
        ("write", |d: &MemDisk| d.fail_writes_after(4)),
        ("enospc", |d: &MemDisk| d.set_capacity(Some(200_000))),
    ] {
        let disk = MemDisk::new();
        let mut c = mem_cfg(1);
        c.segment_bytes = 128 * 1024;
        let e = open_mem(&c, std::slice::from_ref(&disk));
        arm(&disk);
        let chunks: Vec<_> = (0..12).map(|i| chunk(i + 50, 30_000)).collect();
        let mut acked = Vec::new();
        let mut failures = 0;
        // All in flight at once, so segments break with batches pending.
        let pending: Vec<_> = chunks
            .iter()
            .map(|(id, crc, data)| e.put(*id, *crc, data.clone(), 0))
            .collect();
        for (i, p) in pending.into_iter().enumerate() {
            match p.wait() {
                Ok(_) => acked.push(i),
                Err(StoreError::Io(_) | StoreError::Full { .. }) => failures += 1,
                Err(other) => panic!("{name}: {other}"),
            }
        }
        assert!(
            failures > 0 && !acked.is_empty(),
            "{name}: {failures} failures"
        );
        for &i in &acked {
            assert_eq!(e.get(chunks[i].0).wait().unwrap(), chunks[i].2, "{name}");
        }
        // Healed, the store takes writes again (in a new segment), and a crash keeps
        // everything acknowledged.
        disk.heal();
        for (i, ch) in chunks.iter().enumerate() {
            if !acked.contains(&i) {
                put(&e, ch).unwrap();
                acked.push(i);
            }
        }
        let image = disk.crash(&mut Rng(7));
        drop(e);
        let e = open_mem(&c, &[image]);
        for &i in &acked {
            assert_eq!(
                e.get(chunks[i].0).wait().unwrap(),
                chunks[i].2,
                "{name} after crash"
            );
        }
    }
}

#[test]
fn configured_capacity_is_a_clean_full_error() {
    let disk = MemDisk::new();
    let mut c = mem_cfg(1);
    c.capacity_bytes = Some(100 * 1024);
    let e = open_mem(&c, std::slice::from_ref(&disk));
    let a = chunk(1, 60_000);
    let b = chunk(2, 60_000);
    put(&e, &a).unwrap();
    assert!(matches!(put(&e, &b), Err(StoreError::Full { .. })));
    assert_eq!(e.get(a.0).wait().unwrap(), a.2);
    let s = e.stats().unwrap();
    assert_eq!(s.capacity_bytes, 100 * 1024);
    assert!(s.used_bytes <= s.capacity_bytes);
}

#[test]
fn expired_chunks_are_not_served_and_compaction_frees_them() {
    let disk = MemDisk::new();
    let mut c = mem_cfg(1);
    c.segment_bytes = 64 * 1024;
    let e = open_mem(&c, std::slice::from_ref(&disk));
    let past = 1_000_000_000; // 2001
    let old: Vec<_> = (0..6).map(|i| chunk(i, 20_000)).collect();
    for (id, crc, data) in &old {
        e.put(*id, *crc, data.clone(), past).wait().unwrap();
        assert_eq!(e.get(*id).wait(), Err(StoreError::NotFound(*id)));
    }
    let keep = chunk(100, 20_000);
    put(&e, &keep).unwrap();
    let before = e.stats().unwrap();
    assert!(e.compact().unwrap() >= 2);
    let after = e.stats().unwrap();
    assert!(after.used_bytes < before.used_bytes, "{before:?} {after:?}");
    assert_eq!(after.chunks, 1);
    assert_eq!(e.get(keep.0).wait().unwrap(), keep.2);
}

/// Compaction while puts and gets go on from another thread, with the twin crashing in
/// the middle: live chunks survive, deleted ones stay deleted.
#[test]
fn compaction_under_load_and_crash_keeps_live_and_deleted_apart() {
    for round in 0..4u64 {
        let disk = MemDisk::new();
        let mut c = mem_cfg(1);
        c.segment_bytes = 128 * 1024;
        c.checkpoint_every_bytes = 256 * 1024;
        let e = std::sync::Arc::new(open_mem(&c, std::slice::from_ref(&disk)));
        let chunks: Vec<_> = (0..60)
            .map(|i| chunk(round * 100 + i, 9_000 + (i as usize * 97) % 20_000))
            .collect();
        for ch in &chunks {
            put(&e, ch).unwrap();
        }
        let mut deleted = BTreeSet::new();
        for i in (0..60).filter(|i| i % 4 != 0) {
            assert!(e.delete(chunks[i].0).wait().unwrap());
            deleted.insert(i);
        }
        let live: Vec<usize> = (0..60).filter(|i| !deleted.contains(i)).collect();
        let segments_before = e.stats().unwrap().segments;
        // Load on another thread: new puts and reads of live chunks, checked.
        let load = {
            let (e, chunks, live) = (e.clone(), chunks.clone(), live.clone());
            std::thread::spawn(move || {
                let mut added = Vec::new();
                for k in 0..40u64 {
                    let extra = chunk(round * 100 + 1000 + k, 12_000);
                    put(&e, &extra).unwrap();
                    added.push(extra);
                    let i = live[k as usize % live.len()];
                    assert_eq!(e.get(chunks[i].0).wait().unwrap(), chunks[i].2);
                }
                added
            })
        };
        let compacted = e.compact().unwrap();
        let added = load.join().unwrap();
        assert!(compacted > 0);
        let stats = e.stats().unwrap();
        assert!(stats.segments < segments_before + 10, "{stats:?}");
        for &i in &live {
            assert_eq!(e.get(chunks[i].0).wait().unwrap(), chunks[i].2);
        }
        for &i in &deleted {
            assert_eq!(
                e.get(chunks[i].0).wait(),
                Err(StoreError::NotFound(chunks[i].0))
            );
        }
        // A crash now, and a restart with no checkpoint at all: same answer.
        let image = disk.crash(&mut Rng(round));
        let e2 = open_mem(&c, std::slice::from_ref(&image));
        let bare = image.crash(&mut Rng(round + 1));
        bare.remove_file("index.msix"); // the next open scans every segment
        let e3 = open_mem(&c, &[bare]);
        for engine in [&e2, &e3] {
            for &i in &live {
                assert_eq!(engine.get(chunks[i].0).wait().unwrap(), chunks[i].2);
            }
            for &i in &deleted {
                assert_eq!(
                    engine.get(chunks[i].0).wait(),
                    Err(StoreError::NotFound(chunks[i].0)),
                    "deleted chunk {i} came back"
                );
            }
            for x in &added {
                assert_eq!(engine.get(x.0).wait().unwrap(), x.2);
            }
        }
    }
}

/// A store of layout-1 records (16 KiB groups, written before layout 2) opened by an
/// engine that writes layout 2: both kinds read, range-read and prove alike, through puts
/// torn by a crash, a compaction that copies old records next to new ones, and restarts
/// from the checkpoint and by a full scan.
#[test]
fn a_store_of_layout_1_records_goes_on_in_layout_2_across_crashes_and_compaction() {
    let check = |e: &Engine, ch: &(ChunkId, u32, Vec<u8>), what: &str| {
        assert_eq!(e.get(ch.0).wait().unwrap(), ch.2, "{what}");
        let len = ch.2.len();
        assert_eq!(
            e.get_range(ch.0, (len / 3) as u64..len as u64)
                .wait()
                .unwrap(),
            ch.2[len / 3..],
            "{what}"
        );
        let leaves = proof::leaf_count(len as u64);
        for leaf in [0, leaves / 2, leaves - 1] {
            assert_eq!(
                e.prove(ch.0, leaf).wait().unwrap(),
                proof::prove(&ch.2, leaf).unwrap(),
                "{what}: leaf {leaf}"
            );
        }
    };
    for round in 0..3u64 {
        let disk = MemDisk::new();
        let mut old = mem_cfg(1);
        old.record_layout = Layout::V1;
        old.segment_bytes = 256 * 1024;
        old.checkpoint_every_bytes = 300 * 1024;
        let mut rng = Rng(round + 40);
        let sizes = |rng: &mut Rng| 1 + rng.below(90_000) as usize;
        let v1: Vec<_> = (0..30)
            .map(|i| chunk(round * 1000 + i, sizes(&mut rng)))
            .collect();
        // Every third chunk until 2096, to be stored again, for longer, in layout 2.
        let until = |i: usize| {
            if i.is_multiple_of(3) {
                4_000_000_000
            } else {
                0
            }
        };
        let e = open_mem(&old, std::slice::from_ref(&disk));
        for (i, (id, crc, data)) in v1.iter().enumerate() {
            e.put(*id, *crc, data.clone(), until(i)).wait().unwrap();
        }
        let image = disk.crash(&mut rng);
        drop(e);
        // What an engine before layout 2 left: its checkpoint in version 1.
        let cp = image
            .file_bytes("index.msix")
            .expect("a checkpoint was written");
        assert_eq!(cp[4], 2);
        image.replace_file("index.msix", checkpoint_as_version_1(&cp));
        // The upgraded engine: the old records read as they are.
        let mut new = old.clone();
        new.record_layout = Layout::V2;
        let e = open_mem(&new, std::slice::from_ref(&image));
        assert!(
            e.stats().unwrap().checkpoint_entries > 0,
            "the version-1 checkpoint is read"
        );
        for (i, ch) in v1.iter().enumerate() {
            check(&e, ch, &format!("round {round}: layout-1 chunk {i}"));
        }
        // Stored again for ever: a new record, in layout 2, for the same bytes (its
        // layout-1 outboard is kept in memory by the checks above, and must not serve it).
        for (i, ch) in v1.iter().enumerate().filter(|(i, _)| until(*i) != 0) {
            assert_eq!(put(&e, ch).unwrap(), PutOutcome::Stored);
            check(
                &e,
                ch,
                &format!("round {round}: chunk {i} again, in layout 2"),
            );
        }
        // New puts, many in flight, torn by a crash after some acknowledgements.
        let v2: Vec<_> = (0..30)
            .map(|i| chunk(round * 1000 + 500 + i, sizes(&mut rng)))
            .collect();
        let crash_after = 5 + rng.below(20) as usize;
        let (image, acked) = puts_until_crash(e, &image, &v2, 8, crash_after, &mut rng);
        let e = open_mem(&new, std::slice::from_ref(&image));
        for &i in &acked {
            check(&e, &v2[i], &format!("round {round}: layout-2 chunk {i}"));
        }
        // Half of the old chunks deleted, then compaction copies the rest beside new
        // records; a crash, then restarts from the checkpoint and by a full scan.
        let mut deleted = BTreeSet::new();
        for i in (0..v1.len()).filter(|i| i % 2 == 0) {
            assert!(e.delete(v1[i].0).wait().unwrap());
            deleted.insert(i);
        }
        let extra = chunk(round * 1000 + 999, 50_000);
        put(&e, &extra).unwrap();
        assert!(e.compact().unwrap() > 0, "round {round}: nothing compacted");
        let image = image.crash(&mut rng);
        drop(e);
        let bare = image.crash(&mut rng);
        bare.remove_file("index.msix");
        for (how, img) in [("checkpoint", image), ("full scan", bare)] {
            let e = open_mem(&new, &[img]);
            for (i, ch) in v1.iter().enumerate() {
                if deleted.contains(&i) {
                    assert_eq!(e.get(ch.0).wait(), Err(StoreError::NotFound(ch.0)));
                } else {
                    check(&e, ch, &format!("round {round} {how}: layout-1 chunk {i}"));
                }
            }
            for &i in &acked {
                check(
                    &e,
                    &v2[i],
                    &format!("round {round} {how}: layout-2 chunk {i}"),
                );
            }
            check(&e, &extra, &format!("round {round} {how}: extra"));
        }
    }
}

#[test]
fn the_index_costs_few_bytes_per_chunk() {
    let disk = MemDisk::new();
    let e = open_mem(&mem_cfg(1), std::slice::from_ref(&disk));
    for i in 0..3000 {
        put(&e, &chunk(i, 100)).unwrap();
    }
    let s = e.stats().unwrap();
    let per = s.index_bytes as f64 / s.chunks as f64;
    assert!((52.0..=128.0).contains(&per), "{per} bytes per chunk");
}

/// Puts, deletes and re-puts of the same ids on one thread, two compactions racing each
/// other on two more, and crash images taken while all of it runs: in each image (opened
/// from its checkpoint, then again by a full scan), every chunk whose put was acknowledged
/// before the image (and not deleted since) reads back, and every acknowledged delete
/// holds. Two volumes per shard, so ids stay on theirs.
#[test]
fn crashes_during_compaction_deletes_and_re_puts() {
    use std::sync::{mpsc, Arc, Mutex};
    for round in 0..4u64 {
        let vols = [MemDisk::new(), MemDisk::new()];
        let mut c = mem_cfg(1);
        c.segment_bytes = 64 * 1024;
        c.checkpoint_every_bytes = 128 * 1024;
        c.compact_below = 0.9;
        let e = Arc::new(Engine::open_on(&c, vec![vols.to_vec()]).unwrap());
        let chunks: Vec<_> = (0..60)
            .map(|i| chunk(round * 1000 + i, 3_000 + (i as usize * 577) % 9_000))
            .collect();
        for ch in &chunks {
            put(&e, ch).unwrap();
        }
        // (stored, deleted): an id is in one of them only while no operation on it is in
        // flight; the worker takes it out before it starts one and puts it back after the
        // acknowledgement, and images are taken holding this lock.
        type Sets = (BTreeSet<usize>, BTreeSet<usize>);
        let sets: Arc<Mutex<Sets>> = Arc::new(Mutex::new(((0..60).collect(), BTreeSet::new())));
        let (progress, steps) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let compactors: Vec<_> = (0..2)
            .map(|_| {
                let (e, stop) = (e.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        e.compact().unwrap();
                    }
                })
            })
            .collect();
        let worker = {
            let (e, chunks, sets) = (e.clone(), chunks.clone(), sets.clone());
            std::thread::spawn(move || {
                for pass in 0..3 {
                    for i in (0..60).filter(|i| (i + pass) % 3 != 0) {
                        let ch = &chunks[i];
                        let was_stored = {
                            let mut s = sets.lock().unwrap();
                            s.1.remove(&i);
                            s.0.remove(&i)
                        };
                        if was_stored {
                            assert!(e.delete(ch.0).wait().unwrap());
                            sets.lock().unwrap().1.insert(i);
                        } else {
                            put(&e, ch).unwrap();
                            sets.lock().unwrap().0.insert(i);
                        }
                        progress.send(()).unwrap();
                    }
                }
            })
        };
        let mut rng = Rng(round);
        let mut images = Vec::new();
        for _ in 0..5 {
            for _ in 0..1 + rng.below(20) {
                if steps.recv().is_err() {
                    break;
                }
            }
            // What was acknowledged before the image is taken must be in it.
            let held = sets.lock().unwrap();
            let imgs: Vec<MemDisk> = vols.iter().map(|v| v.crash(&mut rng)).collect();
            images.push((imgs, held.0.clone(), held.1.clone()));
            drop(held);
        }
        worker.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in compactors {
            t.join().unwrap();
        }
        assert!(
            e.stats().unwrap().compacted_segments > 0,
            "round {round}: nothing was compacted"
        );
        for (k, (imgs, s, d)) in images.into_iter().enumerate() {
            for full_scan in [false, true] {
                let imgs: Vec<MemDisk> = imgs.iter().map(|i| i.crash(&mut Rng(9))).collect();
                if full_scan {
                    for i in &imgs {
                        i.remove_file("index.msix");
                    }
                }
                let e = Engine::open_on(&c, vec![imgs]).unwrap();
                for &i in &s {
                    let got = e.get(chunks[i].0).wait();
                    assert!(
                        got.as_ref() == Ok(&chunks[i].2),
                        "round {round} image {k} full scan {full_scan}: chunk {i}: {:?}",
                        got.map(|g| g.len())
                    );
                }
                for &i in &d {
                    assert_eq!(e.get(chunks[i].0).wait(), Err(StoreError::NotFound(chunks[i].0)), "round {round} image {k} full scan {full_scan}: deleted chunk {i} came back");
                }
                assert_eq!(e.stats().unwrap().corrupt_reads, 0);
            }
        }
    }
}

/// A tombstone that compaction carries forward (its target segment still exists) lands
/// after a later put of the same id; a full scan must not let it delete that put.
#[test]
fn a_carried_tombstone_never_deletes_a_later_put() {
    let disk = MemDisk::new();
    let mut c = mem_cfg(1);
    c.segment_bytes = 64 * 1024; // four 16,000-byte chunks (16 KiB records) a segment
    let e = open_mem(&c, std::slice::from_ref(&disk));
    let x = chunk(1, 16_000);
    let filler: Vec<_> = (10..16).map(|i| chunk(i, 16_000)).collect();
    put(&e, &x).unwrap(); // segment 1: x, a, a, a (stays 3/4 live: not compacted)
    for f in &filler[..3] {
        put(&e, f).unwrap();
    }
    assert!(e.delete(x.0).wait().unwrap()); // segment 2: its tombstone, targeting segment 1
    for f in &filler[3..] {
        put(&e, f).unwrap();
    }
    for f in &filler[3..] {
        assert!(e.delete(f.0).wait().unwrap()); // segment 2 is now all dead
    }
    put(&e, &x).unwrap(); // segment 3: x again
    assert!(e.compact().unwrap() >= 1);
    assert_eq!(e.get(x.0).wait().unwrap(), x.2);
    let image = disk.crash(&mut Rng(1));
    drop(e);
    for full_scan in [false, true] {
        let img = image.crash(&mut Rng(2));
        if full_scan {
            assert!(img.remove_file("index.msix"));
        }
        let e = open_mem(&c, &[img]);
        assert_eq!(e.get(x.0).wait().unwrap(), x.2, "full scan {full_scan}");
        for f in &filler[..3] {
            assert_eq!(e.get(f.0).wait().unwrap(), f.2);
        }
        for f in &filler[3..] {
            assert_eq!(e.get(f.0).wait(), Err(StoreError::NotFound(f.0)));
        }
    }
}

/// A record of a format version this engine does not read is data, not a torn write: the
/// store refuses to open and cuts nothing.
#[test]
fn a_record_of_another_format_version_stops_the_open_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    // Two shards: shard 0 refuses to open, shard 1 opens and must let go of its files.
    let c = cfg(&[dir.path()], 2);
    let kept = chunk(1, 5_000);
    let e = Engine::open(&c).unwrap();
    put(&e, &kept).unwrap();
    e.shutdown().unwrap();
    let (last, mut bytes, at) = with_record_appended(dir.path(), 2, 5_000);
    bytes[at + 4] = 3; // a version 3 header, checksum made valid again
    let sum = crc32c(&bytes[at..at + 60]);
    bytes[at + 60..at + 64].copy_from_slice(&sum.to_le_bytes());
    std::fs::write(&last, &bytes).unwrap();
    let err = Engine::open(&c).unwrap_err();
    assert!(
        err.to_string().contains("another format at byte")
            && err
                .to_string()
                .contains("record version 3 is not supported"),
        "{err}"
    );
    assert_eq!(std::fs::read(&last).unwrap(), bytes, "nothing was cut");
    // Once the record is gone the store opens again in this same process: the failed open
    // left no volume locked and no segment held.
    std::fs::write(&last, &bytes[..at]).unwrap();
    let e = Engine::open(&c).unwrap();
    assert_eq!(e.get(kept.0).wait().unwrap(), kept.2);
    // While it is open, a second store on the same directories is refused by name.
    let again = Engine::open(&c).unwrap_err();
    assert!(
        matches!(&again, StoreError::InUse(m) if m.contains("in use by another process")),
        "{again}"
    );
    e.shutdown().unwrap();
}

/// The newest segment of shard 0 in `dir`, its bytes up to its last record with a whole
/// record of chunk `(seed, len)` appended (not written back), and where that record starts.
fn with_record_appended(dir: &Path, seed: u64, len: usize) -> (std::path::PathBuf, Vec<u8>, usize) {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("shard-0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "msd"))
        .collect();
    segs.sort();
    let last = segs.pop().unwrap();
    let seq: u32 = last.file_stem().unwrap().to_str().unwrap()[4..]
        .parse()
        .unwrap();
    let (id, crc, data) = chunk(seed, len);
    let header = RecordHeader {
        kind: RecordKind::Chunk,
        id,
        payload_bytes: u32::try_from(len).unwrap(),
        payload_crc32c: crc,
        expiry_unix_secs: 0,
        layout: Layout::V2,
        segment_seq: seq,
    };
    // After the last record: the segment's blocks are reserved ahead (zeros past it).
    let mut bytes = std::fs::read(&last).unwrap();
    let at = usize::try_from(scan(&bytes, seq, 0, true).1.offset()).unwrap();
    bytes.truncate(at);
    encode_record(&header, &data, &mut bytes);
    (last, bytes, at)
}
