//! Three replicas of one exchange on loopback: commands proposed at any replica are applied
//! alike by all; the leader stopped, the other two elect another and go on with the book
//! intact; the stopped one, started again from its raft file, catches up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use exchange::replica::{Replica, ReplicaAddr, ReplicationConfig};
use exchange::state::{Command, Outcome};
use market::flood::FloodPolicy;
use proto::market::{Ask, Request};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three replicas on free loopback ports.
fn replica_set() -> Vec<ReplicaAddr> {
    (1..=3)
        .map(|id| ReplicaAddr {
            id,
            raft: format!("127.0.0.1:{}", free_port()),
        })
        .collect()
}

fn ask(host: u8, price: u64) -> Command {
    Command::Ask {
        ask: Ask {
            chain_id: 1,
            host: [host; 32],
            seq: 1,
            price_per_gib_day: price,
            free_bytes: 1 << 40,
            min_days: 1,
            max_days: 365,
            deposit: 1000,
            expiry_unix_secs: u64::MAX,
            region: String::new(),
            addr: format!("10.0.{host}.1:7000"),
        },
        rating: 500,
        now: 100,
    }
}

fn request(sender: u8, nonce: u8) -> Command {
    Command::Request {
        req: Request {
            chain_id: 1,
            sender: [sender; 32],
            nonce: [nonce; 16],
            bytes: 1 << 20,
            days: 30,
            copies: 2,
            max_price_per_gib_day: 100,
            download_fee: 0,
            min_rating: 0,
            expiry_unix_secs: u64::MAX,
            region: String::new(),
            spread: None,
        },
        now: 200,
        deals: Vec::new(),
        bids: Vec::new(),
    }
}

fn matched(o: &Outcome) -> Vec<u8> {
    match o {
        Outcome::Matched(m) => m.iter().map(|(m, _)| m.host[0]).collect(),
        other => panic!("not matched: {other:?}"),
    }
}

async fn start(cfg: &ReplicationConfig, dir: &std::path::Path) -> Replica {
    Replica::start(
        cfg,
        &dir.join(format!("raft-{}.redb", cfg.id)),
        FloodPolicy::default(),
        &[7; 32],
    )
    .await
    .unwrap()
}

/// Waits until `r` has applied through `index` (its metrics say so when it has).
async fn applied(r: &Replica, index: u64) {
    let mut m = r.metrics();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if m.borrow_and_update()
                .last_applied
                .is_some_and(|l| l.index >= index)
            {
                return;
            }
            m.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("replica {} never applied {index}", r.view().id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_keep_the_book_through_the_loss_of_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replica_set();
    let cfg = |id| ReplicationConfig {
        id,
        raft_file: "unused".into(),
        replicas: replicas.clone(),
    };
    let mut rs = Vec::new();
    for id in 1..=3 {
        rs.push(Some(start(&cfg(id), dir.path()).await));
    }
    // Asks proposed at each replica in turn (followers pass theirs to the leader).
    for (i, (host, price)) in [(1u8, 30u64), (2, 10), (3, 20)].into_iter().enumerate() {
        let r = rs[i].as_ref().unwrap();
        assert_eq!(r.propose(ask(host, price)).await.unwrap(), Outcome::Posted);
    }
    let first = rs[2]
        .as_ref()
        .unwrap()
        .propose(request(9, 1))
        .await
        .unwrap();
    assert_eq!(matched(&first), vec![2, 3]);
    // The leader applied all before it answered: the others follow it there.
    let last = rs
        .iter()
        .flatten()
        .filter_map(|r| r.view().last_applied)
        .max()
        .unwrap();
    for r in rs.iter().flatten() {
        applied(r, last).await;
        assert_eq!(r.read(|s| s.book().len()), 3);
        assert_eq!(r.read(|s| s.answered().len()), 1);
    }
    let states: Vec<_> = rs.iter().flatten().map(|r| r.read(Clone::clone)).collect();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "replicas differ");

    // The leader goes; the other two elect another and answer with the book they hold.
    let leader = rs[0].as_ref().unwrap().view().leader.unwrap();
    let dead = rs[usize::try_from(leader - 1).unwrap()].take().unwrap();
    dead.shutdown().await;
    drop(dead);
    let survivor = rs.iter().flatten().next().unwrap().clone();
    let again = survivor.propose(request(9, 1)).await;
    let again =
        again.unwrap_or_else(|e| panic!("{e}: {:?}", survivor.metrics().borrow().running_state));
    assert_eq!(again, Outcome::Replayed, "the answered request survived");
    let second = survivor.propose(request(8, 1)).await.unwrap();
    assert_eq!(matched(&second), vec![2, 3]);
    let new_leader = survivor.view().leader.unwrap();
    assert_ne!(new_leader, leader);

    // The old leader, started again from its file, catches up with what it missed.
    let back = start(&cfg(leader), dir.path()).await;
    let last = survivor.view().last_applied.unwrap();
    applied(&back, last).await;
    assert_eq!(back.read(Clone::clone), survivor.read(Clone::clone));
    assert_eq!(
        back.propose(request(7, 1)).await.map(|o| matched(&o)),
        Ok(vec![2, 3])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_the_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = replica_set();
    let cfg = ReplicationConfig {
        id: 1,
        raft_file: "unused".into(),
        replicas: replicas.clone(),
    };
    // Replica 1 with the exchange's key; 2 and 3 with another: no vote of theirs counts
    // and none of 1's reaches them, so nothing is ever committed.
    let good = start(&cfg, dir.path()).await;
    let mut others = Vec::new();
    for id in 2..=3 {
        let c = ReplicationConfig { id, ..cfg.clone() };
        others.push(
            Replica::start(
                &c,
                &dir.path().join(format!("raft-{id}.redb")),
                FloodPolicy::default(),
                &[8; 32],
            )
            .await
            .unwrap(),
        );
    }
    let e = good.propose(ask(1, 10)).await.unwrap_err();
    assert!(e.contains("no leader"), "{e}");
    assert_eq!(good.read(|s| s.book().len()), 0);
}
