//! An exchange's order book (the seed's 4.3, 4.4): hosts' standing asks, and the matching
//! of a sender's request against them. Pure: the exchange's server checks signatures,
//! accounts and rates, and feeds this the checked messages with the time and each host's
//! rating read from the chain; replicas fed the same sequence hold the same book.
//!
//! Matching rule: an ask qualifies if it has not expired, its price is at most the
//! request's, the request's days fall within its range, it has room for the request's
//! bytes, its region is the one asked (or any, if the request names none), its host's
//! rating is at least the request's floor, and it is not the sender's own. Qualifying asks
//! are ranked by price (lowest first), then rating (highest first), then time on the book
//! (earliest first), then host key, so the order is total and every replica picks the same
//! hosts; going down that order, an ask is matched unless one already matched is on the
//! same network ([`network`]: one copy per /24), until `copies` are matched.
//! Taking a match reserves the request's bytes from the ask's free bytes, so an ask is never
//! matched beyond the room it stated.
//!
//! Batches (per-batch offers): a request with a [`proto::market::Spread`] lets a copy be
//! spread over several hosts. An ask then qualifies with room for one batch (a whole chunk
//! after the overhead every batch holds, or the whole copy if that is smaller) instead of
//! the whole copy; going down the same order, each ask matched takes the largest batch its
//! room allows of what is left of the current copy ([`proto::market::Spread::batch_of`]),
//! and a copy is complete when nothing of it is left, the next ask starting the next copy.
//! Only complete copies are matched: the hosts of a copy the book cannot finish are left
//! out, and reserve nothing. A match states the bytes it holds (its batch and the
//! overhead), and taking it reserves those.
//!
//! Bids: a host may also answer one forwarded request with a bid ([`proto::market::Bid`]);
//! the exchange turns each into an entry for exactly that request ([`bid_entry`]: room for
//! its bytes, its days only) stamped on the book's clock ([`Book::stamp`]), and matching
//! ([`Book::matches_with`]) walks the asks and the bids together in the same order, a host
//! matched at most once (by its better-ranked entry). A bid reserves nothing: it is for
//! that request alone.

use std::collections::{BTreeMap, BTreeSet};

use proto::market::{Ask, Bid, Request};

/// The failure domain of a host's address, for "one copy per network": a public or private
/// IPv4 address's /24, an IPv6 address's /48, a name itself (lowercased), and a loopback
/// address with its port (a local test network: each host its own domain).
pub fn network(addr: &str) -> String {
    use std::net::{IpAddr, SocketAddr};
    match addr.parse::<SocketAddr>() {
        Ok(sa) if sa.ip().is_loopback() => format!("loopback {sa}"),
        Ok(SocketAddr::V4(v4)) => {
            let o = v4.ip().octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(SocketAddr::V6(v6)) => {
            let s = v6.ip().segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        Err(_) => {
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            match host.parse::<IpAddr>() {
                Ok(ip) => network(&SocketAddr::new(ip, 0).to_string()),
                Err(_) => host.to_ascii_lowercase(),
            }
        }
    }
}

/// An ask as the book holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub ask: Ask,
    /// The host's rating from the chain (0..=1000) when the ask was posted.
    pub rating: u32,
    /// Arrival order on this book: time priority.
    pub posted: u64,
}

impl Entry {
    /// The ask as a match names it, holding `bytes` of the request.
    pub fn to_match(&self, bytes: u64) -> Match {
        Match {
            host: self.ask.host,
            addr: self.ask.addr.clone(),
            price_per_gib_day: self.ask.price_per_gib_day,
            rating: self.rating,
            region: self.ask.region.clone(),
            deposit: self.ask.deposit,
            bytes,
        }
    }
}

/// A bid on `req` as an entry that qualifies for exactly that request (`None` for a pass),
/// with the bidding host's `rating` and the time `posted` ([`Book::stamp`]): room for the
/// bytes the bid offers, at most the request's (with a spread request, less is a batch).
pub fn bid_entry(bid: &Bid, req: &Request, rating: u32, posted: u64) -> Option<Entry> {
    let price = bid.price_per_gib_day?;
    Some(Entry {
        ask: Ask {
            chain_id: bid.chain_id,
            host: bid.host,
            seq: 0,
            price_per_gib_day: price,
            free_bytes: bid.free_bytes.min(req.bytes),
            min_days: req.days,
            max_days: req.days,
            deposit: bid.deposit,
            expiry_unix_secs: bid.expiry_unix_secs,
            region: bid.region.clone(),
            addr: bid.addr.clone(),
        },
        rating,
        posted,
    })
}

/// A host matched to a request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Match {
    pub host: [u8; 32],
    pub addr: String,
    pub price_per_gib_day: u64,
    pub rating: u32,
    pub region: String,
    pub deposit: u64,
    /// What the host holds of the request: its bytes (a whole copy), or with a spread
    /// request its batch and the overhead.
    pub bytes: u64,
}

/// Why the book refuses an ask.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("ask {got} is not newer than the host's ask {held} on this book (a replay?)")]
    Stale { held: u64, got: u64 },
    #[error("the ask expired at {expiry} (now {now})")]
    Expired { expiry: u64, now: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Book {
    asks: BTreeMap<[u8; 32], Entry>,
    /// Highest `seq` seen per host, kept after its ask is withdrawn or expires so that an
    /// old ask cannot be replayed onto the book.
    seqs: BTreeMap<[u8; 32], u64>,
    next: u64,
    /// Every ask's rank key, in matching order: a request walks it from the cheapest and
    /// stops past its price, instead of sorting the book.
    order: BTreeSet<Rank>,
}

/// An ask's place in matching order: price, then rating (highest first), then time on the
/// book, then host.
type Rank = (u64, std::cmp::Reverse<u32>, u64, [u8; 32]);

fn rank(e: &Entry) -> Rank {
    (
        e.ask.price_per_gib_day,
        std::cmp::Reverse(e.rating),
        e.posted,
        e.ask.host,
    )
}

impl Book {
    pub fn new() -> Book {
        Book::default()
    }

    /// Puts `ask` on the book, replacing its host's earlier ask (the new one queues behind
    /// the asks already there). The very ask on the book posted again (a host that names
    /// several replicas of one exchange, or retries) changes nothing, not even the room
    /// matches took from it; another ask under a number already seen is a replay.
    pub fn post(&mut self, ask: Ask, rating: u32, now_unix_secs: u64) -> Result<(), BookError> {
        if now_unix_secs >= ask.expiry_unix_secs {
            return Err(BookError::Expired {
                expiry: ask.expiry_unix_secs,
                now: now_unix_secs,
            });
        }
        if let Some(&held) = self.seqs.get(&ask.host) {
            // The room matches took is the one field the book changes on its copy.
            let same = |e: &Entry| {
                e.ask.free_bytes <= ask.free_bytes
                    && Ask {
                        free_bytes: e.ask.free_bytes,
                        ..ask.clone()
                    } == e.ask
            };
            if self.asks.get(&ask.host).is_some_and(same) {
                return Ok(());
            }
            if ask.seq <= held {
                return Err(BookError::Stale { held, got: ask.seq });
            }
        }
        self.seqs.insert(ask.host, ask.seq);
        let posted = self.next;
        self.next += 1;
        let e = Entry {
            ask,
            rating,
            posted,
        };
        self.order.insert(rank(&e));
        if let Some(old) = self.asks.insert(e.ask.host, e) {
            self.order.remove(&rank(&old));
        }
        Ok(())
    }

    /// Takes the host's ask off the book; whether it had one.
    pub fn withdraw(&mut self, host: &[u8; 32]) -> bool {
        match self.asks.remove(host) {
            Some(e) => self.order.remove(&rank(&e)),
            None => false,
        }
    }

    /// Drops the asks expired at `now_unix_secs`; how many.
    pub fn expire(&mut self, now_unix_secs: u64) -> usize {
        let gone: Vec<[u8; 32]> = self
            .asks
            .values()
            .filter(|e| now_unix_secs >= e.ask.expiry_unix_secs)
            .map(|e| e.ask.host)
            .collect();
        for h in &gone {
            self.withdraw(h);
        }
        gone.len()
    }

    /// Whether the book holds together (as one read from elsewhere must): each ask under
    /// its host, in matching order once, its `seq` the highest held for the host, and every
    /// arrival time before the next.
    pub fn check(&self) -> Result<(), String> {
        for (host, e) in &self.asks {
            if e.ask.host != *host {
                return Err("an ask under another host's key".into());
            }
            if self.seqs.get(host).is_none_or(|held| *held < e.ask.seq) {
                return Err("an ask newer than its host's highest seq".into());
            }
            if e.posted >= self.next {
                return Err("an ask posted after the book's clock".into());
            }
            if !self.order.contains(&rank(e)) {
                return Err("an ask missing from matching order".into());
            }
        }
        if self.order.len() != self.asks.len() {
            return Err("matching order names asks the book does not hold".into());
        }
        Ok(())
    }

    pub fn asks(&self) -> impl Iterator<Item = &Entry> {
        self.asks.values()
    }

    pub fn len(&self) -> usize {
        self.asks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.asks.is_empty()
    }

    /// Whether `e` qualifies for `req` at `now_unix_secs` (the module's rule).
    pub fn qualifies(e: &Entry, req: &Request, now_unix_secs: u64) -> bool {
        let a = &e.ask;
        now_unix_secs < a.expiry_unix_secs
            && a.price_per_gib_day <= req.max_price_per_gib_day
            && (a.min_days..=a.max_days).contains(&req.days)
            && Book::has_room(a.free_bytes, req)
            && (req.region.is_empty() || a.region == req.region)
            && a.host != req.sender
            && a.chain_id == req.chain_id
            && e.rating >= u32::from(req.min_rating)
    }

    /// Whether an ask with `room` free bytes has room for `req`: for its bytes (a request
    /// of unknown size, 0 bytes, fits any), or with a spread request for a batch of a fresh
    /// copy.
    pub fn has_room(room: u64, req: &Request) -> bool {
        match req.spread {
            None => room >= req.bytes,
            Some(sp) => sp.batch_of(room, sp.chunk_bytes_of(req.bytes)) > 0,
        }
    }

    /// The next arrival time on this book, for a bid ([`bid_entry`]).
    pub fn stamp(&mut self) -> u64 {
        let t = self.next;
        self.next += 1;
        t
    }

    /// The hosts `req` would be matched to now, best first, at most `req.copies`.
    pub fn matches(&self, req: &Request, now_unix_secs: u64) -> Vec<Match> {
        self.matches_with(req, &[], now_unix_secs)
    }

    /// [`Book::matches`] over the asks and `bids` (entries from [`bid_entry`] for `req`)
    /// together: each in rank order, a host matched once.
    pub fn matches_with(&self, req: &Request, bids: &[Entry], now_unix_secs: u64) -> Vec<Match> {
        self.walk(req, bids, now_unix_secs)
            .into_iter()
            .map(|(e, _, bytes)| e.to_match(bytes))
            .collect()
    }

    /// The entries matched, best first, whether each is a standing ask on the book, and the
    /// bytes each holds.
    fn walk<'a>(
        &'a self,
        req: &Request,
        bids: &'a [Entry],
        now_unix_secs: u64,
    ) -> Vec<(&'a Entry, bool, u64)> {
        let mut bids: Vec<&Entry> = bids.iter().collect();
        bids.sort_by_key(|e| rank(e));
        let mut bids = bids.into_iter().peekable();
        let mut asks = self
            .order
            .iter()
            .take_while(|r| r.0 <= req.max_price_per_gib_day)
            .map(|r| &self.asks[&r.3])
            .peekable();
        let merged = std::iter::from_fn(|| match (asks.peek(), bids.peek()) {
            (Some(a), Some(b)) if rank(b) < rank(a) => bids.next().map(|b| (b, false)),
            (Some(_), _) => asks.next().map(|a| (a, true)),
            (None, _) => bids.next().map(|b| (b, false)),
        });
        let mut hosts = BTreeSet::new();
        let mut nets = BTreeSet::new();
        let fit = merged
            .filter(|(e, _)| Book::qualifies(e, req, now_unix_secs))
            .filter(|(e, _)| hosts.insert(e.ask.host))
            .filter(|(e, _)| nets.insert(network(&e.ask.addr)));
        let Some(sp) = req.spread else {
            return fit
                .take(usize::from(req.copies))
                .map(|(e, on_book)| (e, on_book, req.bytes))
                .collect();
        };
        let whole = sp.chunk_bytes_of(req.bytes);
        let overhead = u64::from(sp.overhead_bytes);
        let (mut done, mut copy, mut left, mut copies) = (Vec::new(), Vec::new(), whole, 0);
        for (e, on_book) in fit {
            if copies == req.copies {
                break;
            }
            // Never 0: an ask that qualifies takes at least a unit, or all that is left.
            let batch = sp.batch_of(e.ask.free_bytes, left);
            copy.push((e, on_book, batch + overhead));
            left -= batch;
            if left == 0 {
                done.append(&mut copy);
                left = whole;
                copies += 1;
            }
        }
        done
    }

    /// [`Book::matches`], reserving the request's bytes from each matched ask.
    pub fn take(&mut self, req: &Request, now_unix_secs: u64) -> Vec<Match> {
        self.take_with(req, &[], now_unix_secs)
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    }

    /// [`Book::matches_with`], reserving the bytes each holds from each standing ask matched
    /// (a bid reserves nothing); with each match, whether it was a standing ask (else a
    /// bid).
    pub fn take_with(
        &mut self,
        req: &Request,
        bids: &[Entry],
        now_unix_secs: u64,
    ) -> Vec<(Match, bool)> {
        let got: Vec<(Match, bool)> = self
            .walk(req, bids, now_unix_secs)
            .into_iter()
            .map(|(e, on_book, bytes)| (e.to_match(bytes), on_book))
            .collect();
        for (m, on_book) in &got {
            if *on_book {
                let e = self.asks.get_mut(&m.host).expect("matched from the book");
                e.ask.free_bytes -= m.bytes;
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ask(host: u8, price: u64) -> Ask {
        Ask {
            chain_id: 1,
            host: [host; 32],
            seq: 1,
            price_per_gib_day: price,
            free_bytes: 100,
            min_days: 1,
            max_days: 30,
            deposit: 1000,
            expiry_unix_secs: 100,
            region: "eu".into(),
            addr: format!("h{host}:1"),
        }
    }

    fn req() -> Request {
        Request {
            chain_id: 1,
            sender: [0xee; 32],
            nonce: [0; 16],
            bytes: 40,
            days: 10,
            copies: 2,
            max_price_per_gib_day: 10,
            download_fee: 0,
            min_rating: 0,
            expiry_unix_secs: 100,
            region: String::new(),
            spread: None,
        }
    }

    /// A change to the test request.
    type Change = fn(&mut Request);

    fn hosts(m: &[Match]) -> Vec<u8> {
        m.iter().map(|m| m.host[0]).collect()
    }

    #[test]
    fn a_spread_copy_fills_batches_in_whole_units_down_the_order() {
        // Hosts 1..=5 at prices 1..=5 with room 25, 100, 14, 15, 60; chunks of at most 10
        // bytes, 5 bytes of overhead per batch, a copy of 45 chunk bytes (50 on one host).
        let mut b = Book::new();
        for (h, room) in [(1, 25), (2, 100), (3, 14), (4, 15), (5, 60)] {
            let mut a = ask(h, u64::from(h));
            a.free_bytes = room;
            b.post(a, 0, 0).unwrap();
        }
        let mut r = req();
        r.bytes = 50;
        r.copies = 1;
        let held = |m: &[Match]| m.iter().map(|m| (m.host[0], m.bytes)).collect::<Vec<_>>();
        // Whole copies: host 1 has no room for 50 bytes, host 2 does.
        assert_eq!(held(&b.matches(&r, 0)), vec![(2, 50)]);
        r.spread = Some(proto::market::Spread {
            unit_bytes: 10,
            overhead_bytes: 5,
        });
        // Host 1 takes 2 units (20 + 5), host 2 the 25 left (+ 5).
        assert_eq!(held(&b.matches(&r, 0)), vec![(1, 25), (2, 30)]);
        // Two copies: host 3 has no room for a unit after the overhead; the second copy
        // starts on host 4 (one unit), host 5 takes the 35 left.
        r.copies = 2;
        let took = b.take(&r, 0);
        assert_eq!(held(&took), vec![(1, 25), (2, 30), (4, 15), (5, 40)]);
        let room: Vec<u64> = b.asks().map(|e| e.ask.free_bytes).collect();
        assert_eq!(room, vec![0, 70, 14, 0, 20]);
        // What is left (host 2: 70, host 5: 20) makes one copy more, not two: the hosts
        // of the copy the book cannot finish are not matched and reserve nothing.
        let took = b.take(&r, 0);
        assert_eq!(held(&took), vec![(2, 50)]);
        let room: Vec<u64> = b.asks().map(|e| e.ask.free_bytes).collect();
        assert_eq!(room, vec![0, 20, 14, 0, 20]);
        // A request of unknown size (0 bytes) fits any ask, an empty one too.
        let mut unknown = req();
        (unknown.bytes, unknown.copies) = (0, 1);
        assert_eq!(held(&b.matches(&unknown, 0)), vec![(1, 0)]);
    }

    #[test]
    fn a_book_that_contradicts_itself_is_found_out() {
        let mut b = Book::new();
        assert_eq!(b.check(), Ok(()));
        b.post(
            Ask {
                chain_id: 1,
                host: [1; 32],
                seq: 3,
                price_per_gib_day: 5,
                free_bytes: 1,
                min_days: 1,
                max_days: 1,
                deposit: 1,
                expiry_unix_secs: 10,
                region: String::new(),
                addr: "10.0.0.1:1".into(),
            },
            1,
            0,
        )
        .unwrap();
        assert_eq!(b.check(), Ok(()));
        let mut unordered = b.clone();
        unordered.order.clear();
        assert!(unordered.check().unwrap_err().contains("matching order"));
        let mut replayable = b.clone();
        replayable.seqs.insert([1; 32], 2);
        assert!(replayable.check().unwrap_err().contains("highest seq"));
        let mut early = b.clone();
        early.next = 0;
        assert!(early.check().unwrap_err().contains("clock"));
    }

    #[test]
    fn each_term_of_a_request_filters_and_ranks_as_documented() {
        let mut b = Book::new();
        for (h, price, rating) in [
            (1, 5, 500),
            (2, 3, 500),
            (3, 5, 900),
            (4, 11, 999),
            (5, 3, 500),
        ] {
            b.post(ask(h, price), rating, 0).unwrap();
        }
        // Price, then rating, then time on the book; 4 is too dear.
        let mut r = req();
        r.copies = 16;
        assert_eq!(hosts(&b.matches(&r, 0)), vec![2, 5, 3, 1]);
        let cases: Vec<(&str, Change, Vec<u8>)> = vec![
            ("two copies", |_| {}, vec![2, 5]),
            ("cheaper", |r| r.max_price_per_gib_day = 4, vec![2, 5]),
            ("too long", |r| r.days = 31, vec![]),
            ("too big", |r| r.bytes = 101, vec![]),
            ("other region", |r| r.region = "us".into(), vec![]),
            ("same region", |r| r.region = "eu".into(), vec![2, 5]),
            ("own ask", |r| r.sender = [2; 32], vec![5, 3]),
            ("rated 900 or more", |r| r.min_rating = 900, vec![3]),
            ("other chain", |r| r.chain_id = 2, vec![]),
        ];
        for (what, change, want) in cases {
            let mut r = req();
            change(&mut r);
            assert_eq!(hosts(&b.matches(&r, 0)), want, "{what}");
        }
        // Expired asks match nothing, and go.
        assert!(b.matches(&req(), 100).is_empty());
        assert_eq!(b.expire(100), 5);
    }

    #[test]
    fn one_copy_per_network() {
        let cases = [
            ("203.0.113.7:7401", "203.0.113.0/24"),
            ("10.1.2.3:1", "10.1.2.0/24"),
            ("[2001:db8:1:2::5]:7401", "2001:db8:1::/48"),
            ("Host.Example.NET:7401", "host.example.net"),
            ("127.0.0.1:7401", "loopback 127.0.0.1:7401"),
        ];
        for (addr, net) in cases {
            assert_eq!(network(addr), net, "{addr}");
        }
        let mut b = Book::new();
        for (h, price, addr) in [
            (1, 1, "203.0.113.7:1"),
            (2, 2, "203.0.113.9:1"),
            (3, 3, "198.51.100.1:1"),
        ] {
            let mut a = ask(h, price);
            a.addr = addr.into();
            b.post(a, 0, 0).unwrap();
        }
        // Host 2 shares host 1's /24: the second copy goes to host 3.
        assert_eq!(hosts(&b.matches(&req(), 0)), vec![1, 3]);
    }

    fn bid(host: u8, price: Option<u64>) -> Bid {
        Bid {
            chain_id: 1,
            host: [host; 32],
            request: [0; 32],
            price_per_gib_day: price,
            deposit: 1000,
            expiry_unix_secs: 100,
            region: "eu".into(),
            addr: format!("h{host}:1"),
            free_bytes: if price.is_some() { 1 << 20 } else { 0 },
        }
    }

    #[test]
    fn bids_rank_among_the_asks_once_per_host_and_reserve_nothing() {
        let mut b = Book::new();
        for (h, price) in [(1, 5), (2, 3), (3, 7)] {
            b.post(ask(h, price), 500, 0).unwrap();
        }
        let r = {
            let mut r = req();
            r.copies = 4;
            r
        };
        let entry = |b: &mut Book, h, price, rating| {
            let t = b.stamp();
            bid_entry(&bid(h, price), &r, rating, t)
        };
        // Host 4 bids 4 (between 3 and 5); host 1 bids 2 under its own ask of 5, and is
        // matched once, at its bid; host 5 passes; host 6 bids over the price; host 7 bids
        // 3 like host 2's ask, rated higher, so first of the two.
        let bids: Vec<Entry> = [
            entry(&mut b, 4, Some(4), 500),
            entry(&mut b, 1, Some(2), 500),
            entry(&mut b, 5, None, 500),
            entry(&mut b, 6, Some(11), 900),
            entry(&mut b, 7, Some(3), 600),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(bids.len(), 4, "a pass is no entry");
        let got = b.matches_with(&r, &bids, 0);
        assert_eq!(hosts(&got), vec![1, 7, 2, 4]);
        assert_eq!(got[0].price_per_gib_day, 2);
        // A bid is for its request's terms alone: not for more bytes or other days.
        let mut bigger = r.clone();
        bigger.bytes += 1;
        assert_eq!(hosts(&b.matches_with(&bigger, &bids, 0)), vec![2, 1, 3]);
        let mut longer = r.clone();
        longer.days += 1;
        assert_eq!(hosts(&b.matches_with(&longer, &bids, 0)), vec![2, 1, 3]);
        // Taking reserves room on the asks matched (host 2's), not on a bid's host's ask.
        let mut two = r.clone();
        two.copies = 3;
        let taken = b.take_with(&two, &bids, 0);
        let by: Vec<(u8, bool)> = taken.iter().map(|(m, a)| (m.host[0], *a)).collect();
        assert_eq!(by, vec![(1, false), (7, false), (2, true)]);
        let room: Vec<u64> = b.asks().map(|e| e.ask.free_bytes).collect();
        assert_eq!(room, vec![100, 60, 100]);
    }

    #[test]
    fn taking_reserves_room_and_stale_asks_are_refused() {
        let mut b = Book::new();
        b.post(ask(1, 1), 0, 0).unwrap();
        b.post(ask(2, 2), 0, 0).unwrap();
        let mut r = req();
        r.copies = 1;
        assert_eq!(hosts(&b.take(&r, 0)), vec![1]);
        assert_eq!(hosts(&b.take(&r, 0)), vec![1]);
        // Posted again, the ask on the book gets no room back: host 1 has 20 bytes left,
        // the third goes to host 2.
        assert_eq!(b.post(ask(1, 1), 0, 0), Ok(()));
        // Another ask under the same number is a replay.
        assert_eq!(
            b.post(ask(1, 5), 0, 0),
            Err(BookError::Stale { held: 1, got: 1 })
        );
        assert_eq!(hosts(&b.take(&r, 0)), vec![2]);
        // A newer ask replaces the old one and queues behind host 2's.
        let mut newer = ask(1, 2);
        newer.seq = 2;
        b.post(newer, 0, 0).unwrap();
        r.copies = 2;
        assert_eq!(hosts(&b.matches(&r, 0)), vec![2, 1]);
        assert!(b.withdraw(&[1; 32]));
        let mut old = ask(1, 2);
        old.seq = 2;
        // Once withdrawn, the same ask is a replay.
        assert_eq!(
            b.post(old.clone(), 0, 0),
            Err(BookError::Stale { held: 2, got: 2 })
        );
        old.seq = 1;
        assert!(matches!(b.post(old, 0, 0), Err(BookError::Stale { .. })));
        assert_eq!(
            b.post(ask(3, 1), 0, 100),
            Err(BookError::Expired {
                expiry: 100,
                now: 100
            })
        );
    }
}
