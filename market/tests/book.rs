//! The order book under random sequences of asks, withdrawals, expiries and requests: no
//! match outside a request's terms, no host twice in one answer, no ask matched beyond the
//! room it stated, every qualifying ask better than a matched one is matched too, and two
//! books fed the same sequence answer the same (what lets replicas agree). Requests come
//! with random bids (and passes) from hosts with or without an ask on the book.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use market::book::{bid_entry, network, Book, Entry, Match};
use proptest::prelude::*;
use proto::market::{Ask, Bid, Request};

#[derive(Clone, Debug)]
enum Op {
    Post {
        host: u8,
        price: u64,
        free: u64,
        min_days: u32,
        span: u32,
        life: u64,
        region: bool,
        rating: u32,
    },
    Withdraw(u8),
    Tick(u64),
    Request {
        sender: u8,
        bytes: u64,
        days: u32,
        copies: u8,
        max_price: u64,
        region: bool,
        min_rating: u16,
        /// (host, price or a pass, rating, room offered).
        bids: Vec<(u8, Option<u64>, u32, u64)>,
        /// Batches allowed: (unit, overhead).
        spread: Option<(u32, u32)>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..6,
            1u64..20,
            0u64..200,
            1u32..20,
            0u32..40,
            1u64..50,
            any::<bool>(),
            0u32..1000
        )
            .prop_map(
                |(host, price, free, min_days, span, life, region, rating)| Op::Post {
                    host,
                    price,
                    free,
                    min_days,
                    span,
                    life,
                    region,
                    rating,
                }
            ),
        (0u8..6).prop_map(Op::Withdraw),
        (1u64..10).prop_map(Op::Tick),
        (
            0u8..8,
            0u64..120,
            1u32..40,
            1u8..5,
            1u64..20,
            any::<bool>(),
            0u16..1000,
            proptest::collection::vec(
                (
                    0u8..8,
                    proptest::option::of(1u64..20),
                    0u32..1000,
                    1u64..200
                ),
                0..4
            ),
            proptest::option::of((1u32..40, 0u32..10))
        )
            .prop_map(
                |(sender, bytes, days, copies, max_price, region, min_rating, bids, spread)| {
                    Op::Request {
                        sender,
                        bytes,
                        days,
                        copies,
                        max_price,
                        region,
                        min_rating,
                        bids,
                        spread,
                    }
                }
            ),
    ]
}

/// The documented rule written plainly: every qualifying ask and bid sorted, one per host,
/// one per network, the first `copies` (or with batches, the first that fill `copies`
/// copies, each taking what its room allows of what is left of its copy); whether each came
/// from the book. The book walks an ordered index instead; both must agree.
fn reference(asks: &[Entry], bids: &[Entry], req: &Request, now: u64) -> Vec<(Match, bool)> {
    let mut fit: Vec<(&Entry, bool)> = asks
        .iter()
        .map(|e| (e, true))
        .chain(bids.iter().map(|e| (e, false)))
        .filter(|(e, _)| Book::qualifies(e, req, now))
        .collect();
    fit.sort_by_key(|(e, _)| {
        (
            e.ask.price_per_gib_day,
            std::cmp::Reverse(e.rating),
            e.posted,
            e.ask.host,
        )
    });
    let mut hosts = std::collections::BTreeSet::new();
    let mut used = std::collections::BTreeSet::new();
    let fit: Vec<(&Entry, bool)> = fit
        .into_iter()
        .filter(|(e, _)| hosts.insert(e.ask.host))
        .filter(|(e, _)| used.insert(network(&e.ask.addr)))
        .collect();
    let Some(sp) = req.spread else {
        return fit
            .into_iter()
            .take(usize::from(req.copies))
            .map(|(e, on_book)| (e.to_match(req.bytes), on_book))
            .collect();
    };
    let (unit, overhead) = (u64::from(sp.unit_bytes), u64::from(sp.overhead_bytes));
    let whole = req.bytes - overhead;
    let mut copies: Vec<Vec<(Match, bool)>> = vec![Vec::new()];
    let mut left = whole;
    for (e, on_book) in fit {
        if copies.len() > usize::from(req.copies) {
            break;
        }
        let fits = e.ask.free_bytes - overhead;
        let batch = if fits >= left {
            left
        } else {
            fits / unit * unit
        };
        assert!(batch > 0, "a qualifying ask takes something");
        copies
            .last_mut()
            .unwrap()
            .push((e.to_match(batch + overhead), on_book));
        left -= batch;
        if left == 0 {
            copies.push(Vec::new());
            left = whole;
        }
    }
    copies.pop();
    copies
        .into_iter()
        .take(usize::from(req.copies))
        .flatten()
        .collect()
}

fn region(eu: bool) -> String {
    if eu {
        "eu".into()
    } else {
        "us".into()
    }
}

proptest! {
    #[test]
    fn matches_keep_every_request_and_ask_term(ops in proptest::collection::vec(op(), 1..120)) {
        let (mut a, mut b) = (Book::new(), Book::new());
        let mut now = 0u64;
        let mut seq = BTreeMap::<u8, u64>::new();
        // Room each host stated in its latest ask, and what was taken from it since.
        let mut room = BTreeMap::<u8, (u64, u64)>::new();
        for op in ops {
            match op {
                Op::Post { host, price, free, min_days, span, life, region: eu, rating } => {
                    let s = seq.entry(host).or_default();
                    *s += 1;
                    let ask = Ask {
                        chain_id: 1,
                        host: [host; 32],
                        seq: *s,
                        price_per_gib_day: price,
                        free_bytes: free,
                        min_days,
                        max_days: min_days + span,
                        deposit: 0,
                        expiry_unix_secs: now + life,
                        region: region(eu),
                        addr: format!("10.0.{}.{host}:1", host % 3),
                    };
                    a.post(ask.clone(), rating, now).unwrap();
                    b.post(ask, rating, now).unwrap();
                    room.insert(host, (free, 0));
                }
                Op::Withdraw(h) => {
                    prop_assert_eq!(a.withdraw(&[h; 32]), b.withdraw(&[h; 32]));
                    room.remove(&h);
                }
                Op::Tick(dt) => {
                    now += dt;
                    prop_assert_eq!(a.expire(now), b.expire(now));
                }
                Op::Request { sender, bytes, days, copies, max_price, region: eu, min_rating, bids, spread } => {
                    let spread = spread
                        .map(|(unit, overhead)| proto::market::Spread { unit_bytes: unit, overhead_bytes: overhead })
                        .filter(|sp| bytes > u64::from(sp.overhead_bytes));
                    let req = Request {
                        chain_id: 1,
                        sender: [sender; 32],
                        nonce: [0; 16],
                        bytes,
                        days,
                        copies,
                        max_price_per_gib_day: max_price,
                        download_fee: 0,
                        min_rating,
                        expiry_unix_secs: now + 10,
                        region: if sender % 2 == 0 { region(eu) } else { String::new() },
                        spread,
                    };
                    let mut entries = Vec::new();
                    let mut bidders = std::collections::BTreeSet::new();
                    // One answer per host, as an exchange takes them.
                    for (host, price, rating, room) in bids {
                        if !bidders.insert(host) {
                            continue;
                        }
                        let bid = Bid {
                            chain_id: 1,
                            host: [host; 32],
                            request: [0; 32],
                            price_per_gib_day: price,
                            deposit: 0,
                            expiry_unix_secs: now + 5,
                            region: region(host % 2 == 0),
                            addr: format!("10.0.{}.{host}:1", host % 3),
                            free_bytes: if price.is_some() { room } else { 0 },
                        };
                        let t = a.stamp();
                        prop_assert_eq!(t, b.stamp());
                        entries.extend(bid_entry(&bid, &req, rating, t));
                    }
                    let before: Vec<_> = a.asks().cloned().collect();
                    let want = reference(&before, &entries, &req, now);
                    let got = a.take_with(&req, &entries, now);
                    prop_assert_eq!(&got, &want);
                    prop_assert_eq!(&got, &b.take_with(&req, &entries, now), "replicas agree");
                    // Whole copies: one match each. Batches: the matches fill whole copies in
                    // turn, each batch within its match's bytes, whole units but a copy's last.
                    match spread {
                        None => {
                            prop_assert!(got.len() <= usize::from(copies));
                            prop_assert!(got.iter().all(|(m, _)| m.bytes == bytes));
                        }
                        Some(sp) => {
                            let overhead = u64::from(sp.overhead_bytes);
                            let mut left = bytes - overhead;
                            let mut filled = 0;
                            for (m, _) in &got {
                                prop_assert!(m.bytes > overhead, "an empty batch");
                                let batch = m.bytes - overhead;
                                prop_assert!(batch <= left, "a batch beyond its copy");
                                prop_assert!(batch == left || batch % u64::from(sp.unit_bytes) == 0);
                                left -= batch;
                                if left == 0 {
                                    filled += 1;
                                    left = bytes - overhead;
                                }
                            }
                            prop_assert_eq!(left, bytes - overhead, "a copy left unfinished");
                            prop_assert!(filled <= copies);
                        }
                    }
                    let mut seen = std::collections::BTreeSet::new();
                    for (m, on_book) in &want {
                        prop_assert!(seen.insert(m.host), "a host twice in one answer");
                        let from = if *on_book { &before } else { &entries };
                        let e = from.iter().find(|e| e.ask.host == m.host).unwrap();
                        prop_assert!(Book::qualifies(e, &req, now), "outside the terms: {:?}", e);
                        if *on_book {
                            let r = room.get_mut(&m.host[0]).unwrap();
                            r.1 += m.bytes;
                            prop_assert!(r.1 <= r.0, "host {} matched beyond its room", m.host[0]);
                        }
                    }
                    // One copy per network; nothing qualifying on a network not yet used but
                    // left out ranks above a matched ask, and nothing such is left out while
                    // copies are wanted.
                    let nets: std::collections::BTreeSet<String> =
                        got.iter().map(|(m, _)| network(&m.addr)).collect();
                    prop_assert_eq!(nets.len(), got.len(), "two copies on one network");
                    let left: Vec<_> = before
                        .iter()
                        .chain(&entries)
                        .filter(|e| Book::qualifies(e, &req, now))
                        .filter(|e| !seen.contains(&e.ask.host))
                        .filter(|e| !nets.contains(&network(&e.ask.addr)))
                        .collect();
                    if got.len() < usize::from(copies) && spread.is_none() {
                        prop_assert!(left.is_empty());
                    }
                    if let Some((worst, _)) = got.last() {
                        for e in left {
                            prop_assert!(e.ask.price_per_gib_day >= worst.price_per_gib_day);
                        }
                    }
                }
            }
        }
        prop_assert_eq!(a, b);
    }
}
