//! `mspace host` killed with SIGKILL at random points while two clients put and delete
//! chunks through the data plane. After every restart: every chunk the host acknowledged
//! reads back intact through a download link, every acknowledged delete stayed deleted,
//! the upload records still name every acknowledged chunk (`Have`), and the link is
//! charged at least every byte it was acknowledged for (the grants log).
//!
//! A delete announced and not answered before the kill may have happened or not; from the
//! first restart on, the outcome seen must stay. `MSPACE_CRASH_ROUNDS` sets the rounds (4
//! by default, what CI runs), `MSPACE_CRASH_SEED` replays one run's kill points:
//! `MSPACE_CRASH_ROUNDS=1000 cargo test -p tools --test it host_crash -- --nocapture`.

use std::collections::BTreeMap;

use ed25519_consensus::SigningKey;
use engine::store::disk::Rng;
use net::client::Conn;
use net::wire::{Reply, Request};
use net::NetError;
use proto::link::Link;
use proto::ChunkId;
use tokio::sync::mpsc;

use super::mspace;
use super::net::{free_port, start};

const ROUNDS_DEFAULT: u64 = 4;
/// Chunk sizes 1 byte to this; the link allows far more than any run sends.
const CHUNK_BYTES_MAX: u64 = 150_000;
const LINK_BYTES: u64 = 1 << 40;
/// Chunks of older files read back per round, besides the newest file (all of it); the
/// last round reads every file whole.
const SAMPLE_OLDER: usize = 64;

fn chunk(i: u64) -> (ChunkId, u32, Vec<u8>) {
    let mut rng = Rng(i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x4057);
    let len = 1 + usize::try_from(rng.below(CHUNK_BYTES_MAX)).unwrap();
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        data.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    data.truncate(len);
    (ChunkId::of(&data), engine::codec::crc32c(&data), data)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Known {
    Stored,
    Deleted,
    /// Delete sent, no answer before the kill.
    Announced,
}

enum Event {
    /// Chunk `i`, its id and length, acknowledged as stored.
    Put(u64, ChunkId, u64),
    Announce(u64),
    Delete(u64),
}

/// One client: puts chunks `first, first + step, ...`, and deletes every fifth it was
/// acknowledged for, announcing each delete before sending it; ends when the host dies.
/// A refusal from a live host is a failure of the test, not an end.
async fn client(link: Link, first: u64, step: u64, events: mpsc::UnboundedSender<Event>) {
    let key = SigningKey::from([7u8; 32]);
    let Ok(mut c) = Conn::open(&link, &[], &key, 0).await else {
        return;
    };
    let gone = |e: NetError| {
        if let NetError::Remote { code, message } = e {
            panic!("the host refused: {code:?} {message}")
        }
    };
    let mut acked = Vec::new();
    let mut i = first;
    let mut count = 0u64;
    loop {
        let (id, crc32c, bytes) = chunk(i);
        let len = bytes.len() as u64;
        match c.call(Request::Put { id, crc32c, bytes }).await {
            Ok(Reply::Stored { existing: false }) => {}
            Ok(other) => panic!("chunk {i}: {other:?}"),
            Err(e) => return gone(e),
        }
        let _ = events.send(Event::Put(i, id, len));
        acked.push((i, id));
        i += step;
        count += 1;
        if count.is_multiple_of(5) {
            let (victim, id) = acked.remove(acked.len() / 2);
            let _ = events.send(Event::Announce(victim));
            match c.call(Request::Delete { id }).await {
                Ok(Reply::Deleted { removed: true }) => {}
                Ok(other) => panic!("delete of chunk {victim}: {other:?}"),
                Err(e) => return gone(e),
            }
            let _ = events.send(Event::Delete(victim));
        }
    }
}

fn link_of(out: &str) -> Link {
    Link::parse(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_host_killed_at_random_points_keeps_every_acknowledged_chunk() {
    let rounds: u64 = std::env::var("MSPACE_CRASH_ROUNDS")
        .ok()
        .map_or(ROUNDS_DEFAULT, |s| {
            s.parse().expect("MSPACE_CRASH_ROUNDS: a number")
        });
    let seed = std::env::var("MSPACE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) ^ 0x4057_0000);
    println!(
        "host crash test seed {seed}, {rounds} rounds (MSPACE_CRASH_SEED={seed} \
         MSPACE_CRASH_ROUNDS={rounds} replays the kill points)"
    );
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let cfg = d("host/host.toml");
    let init = mspace(
        &[
            "host",
            "init",
            "--config",
            &cfg,
            "--data-dir",
            &d("data"),
            "--listen",
            &listen,
        ],
        &[],
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let minted = mspace(
        &[
            "host",
            "link",
            "--config",
            &cfg,
            "--upload",
            "--bytes",
            &LINK_BYTES.to_string(),
            "--ttl",
            "1d",
        ],
        &[],
    );
    assert_eq!(minted.code, 0, "{}", minted.stderr);
    let up = link_of(&minted.stdout);
    let key = SigningKey::from([7u8; 32]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut known: BTreeMap<u64, Known> = BTreeMap::new();
    // Each tracked chunk's id, kept rather than regenerated from its bytes every round.
    let mut ids: BTreeMap<u64, ChunkId> = BTreeMap::new();
    let mut acked_bytes = 0u64;
    // Files recorded after each restart: a download link and the chunks it reads.
    let mut files: Vec<(Link, Vec<u64>)> = Vec::new();
    let mut first = 0u64;
    let (mut announced_stayed, mut announced_took, mut reads) = (0u64, 0u64, 0u64);
    for round in 0..=rounds {
        let mut host = start(&["host", "--config", &cfg], &[], "listening on");

        // Check what the killed host acknowledged.
        let mut c = rt.block_on(Conn::open(&up, &[], &key, 0)).unwrap();
        let charged = LINK_BYTES - c.upload_bytes_left;
        assert!(
            charged >= acked_bytes,
            "round {round}: the link is charged {charged} bytes, {acked_bytes} were acknowledged"
        );
        let tracked: Vec<u64> = known.keys().copied().collect();
        let present = rt
            .block_on(c.have(&tracked.iter().map(|i| ids[i]).collect::<Vec<_>>()))
            .unwrap();
        let mut new_file = Vec::new();
        for i in tracked {
            let here = present.contains(&ids[&i]);
            let k = known.get_mut(&i).unwrap();
            match (*k, here) {
                (Known::Stored, true) => {}
                (Known::Deleted, false) => {}
                (Known::Announced, _) => {
                    *k = if here {
                        announced_stayed += 1;
                        Known::Stored
                    } else {
                        announced_took += 1;
                        Known::Deleted
                    };
                }
                (k, here) => panic!(
                    "round {round}: chunk {i} ({k:?}) is {} after the restart",
                    if here { "there" } else { "missing" }
                ),
            }
            if *k == Known::Stored && !files.iter().any(|(_, f)| f.contains(&i)) {
                new_file.push(i);
            }
        }
        // The chunks stored since the last file become a file, read back through a
        // download link: every byte acknowledged is checked against what was sent.
        if !new_file.is_empty() {
            let envelope = format!("crash round {round}").into_bytes();
            let manifest = ChunkId::of(&envelope);
            let reply = rt
                .block_on(c.call(Request::PutObject {
                    manifest,
                    chunks: new_file.iter().map(|i| ids[i]).collect(),
                    envelope,
                }))
                .unwrap();
            assert!(matches!(reply, Reply::ObjectStored { .. }), "{reply:?}");
            let minted = mspace(
                &[
                    "host",
                    "link",
                    "--config",
                    &cfg,
                    "--download",
                    &manifest.to_hex(),
                    "--ttl",
                    "1d",
                ],
                &[],
            );
            assert_eq!(minted.code, 0, "{}", minted.stderr);
            files.push((link_of(&minted.stdout), new_file));
        }
        // Which chunks to read: the newest file whole, a sample of older ones (all of
        // them in the last round).
        let mut picks: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        if let Some((_, newest)) = files.last() {
            picks.insert(files.len() - 1, newest.clone());
        }
        let older = files.len().saturating_sub(1);
        if round == rounds {
            for (n, (_, chunks)) in files.iter().enumerate().take(older) {
                picks.insert(n, chunks.clone());
            }
        } else if older > 0 {
            for _ in 0..SAMPLE_OLDER {
                let n = usize::try_from(rng.below(older as u64)).unwrap();
                let chunks = &files[n].1;
                let i = chunks[usize::try_from(rng.below(chunks.len() as u64)).unwrap()];
                picks.entry(n).or_default().push(i);
            }
        }
        for (n, chunks) in picks {
            let mut down = rt.block_on(Conn::open(&files[n].0, &[], &key, 0)).unwrap();
            for i in chunks {
                let (id, _, data) = chunk(i);
                match rt.block_on(down.call(Request::Get { id })) {
                    Ok(Reply::Data(got)) => {
                        assert!(got == data, "round {round}: chunk {i} reads back wrong")
                    }
                    other => panic!("round {round}: chunk {i}: {other:?}"),
                }
                reads += 1;
            }
        }
        drop(c);
        if round == rounds {
            break;
        }

        // Two clients put and delete until the host is killed after `kill_after` events.
        let kill_after = 10 + rng.below(80);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let clients: Vec<_> = (0..2)
            .map(|k| rt.spawn(client(up.clone(), first + k, 2, tx.clone())))
            .collect();
        drop(tx);
        let mut seen = 0;
        rt.block_on(async {
            while let Some(ev) = rx.recv().await {
                match ev {
                    Event::Put(i, id, len) => {
                        known.insert(i, Known::Stored);
                        ids.insert(i, id);
                        acked_bytes += len;
                    }
                    Event::Announce(i) => {
                        known.insert(i, Known::Announced);
                    }
                    Event::Delete(i) => {
                        known.insert(i, Known::Deleted);
                    }
                }
                seen += 1;
                if seen == kill_after {
                    host.0.kill().unwrap(); // SIGKILL
                    host.0.wait().unwrap();
                }
            }
        });
        for c in clients {
            rt.block_on(c).unwrap();
        }
        assert!(
            seen >= kill_after,
            "round {round}: the clients stopped after {seen} events, before the kill"
        );
        println!("round {round}: host killed after {kill_after} events ({seen} seen)");
        first = known.keys().next_back().map_or(0, |k| k + 1) + 10;
        drop(host);
    }
    let stored = known.values().filter(|k| **k == Known::Stored).count();
    println!(
        "host crash test: {rounds} kills, {} chunks tracked ({stored} stored), {reads} reads \
         checked, {announced_stayed} announced deletes undone by the kill, {announced_took} \
         done, {acked_bytes} bytes acknowledged, {} files",
        known.len(),
        files.len()
    );
}
