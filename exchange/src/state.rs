//! What an exchange must not forget, as a deterministic state machine: the book, the
//! requests answered (each is answered once) and the flood control's keys (rates, strikes,
//! bans). Every change is a [`Command`] applied by [`State::apply`], which reads nothing but
//! the command and the state (the time is in the command): a standalone exchange applies
//! its commands in turn under a lock, and replicas ([`crate::replica`]) apply the same
//! commands in the order of their Raft log, so they hold the same book and answer a request
//! the same way.
//!
//! What the server checks before a command exists (signatures, expiry, the chain's
//! accounts, the usage profile, the per-address rate) is not here: a command is what passed
//! those checks, with what the chain said (a host's rating, a sender's deals) in it.

use std::collections::{BTreeMap, BTreeSet};

use market::book::{bid_entry, Book, Entry, Match};
use market::flood::{Flood, FloodPolicy, FloodRefusal};
use proto::market::{Ask, Bid, Request};
use serde::{Deserialize, Serialize};

/// A change to an exchange's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A host's checked ask, with its rating on the chain, posted at `now` (Unix seconds).
    Ask { ask: Ask, rating: u32, now: u64 },
    /// A sender's checked request at `now`: the sender's open and active deals on the
    /// chain as (deal id, host), read just before (they settle its last answer and mark the
    /// deals it had when this one is answered), and the bids of the hosts that bid on it,
    /// each with its host's rating.
    Request {
        req: Request,
        now: u64,
        deals: Vec<([u8; 32], [u8; 32])>,
        bids: Vec<(Bid, u32)>,
    },
}

/// What one entry of a replicated log carries: one command, or commands proposed together
/// (a replica gathers those that arrive while its last proposal is on its way), applied in
/// order. Not nested: a decoder never recurses more than a level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    One(Command),
    Batch(Vec<Command>),
}

/// What applying a log entry gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    One(Outcome),
    /// A [`Proposal::Batch`]'s outcomes, in its order.
    Batch(Vec<Outcome>),
    /// An entry that carries no command (Raft's own: a leader's blank entry, a membership
    /// change).
    Nothing,
}

/// What applying a [`Command`] gave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The ask is on the book.
    Posted,
    /// The book refused the ask (the reason, for the host).
    AskRefused(String),
    /// The hosts matched, best first, and whether each was a standing ask (else a bid).
    Matched(Vec<(Match, bool)>),
    /// The request's key is over its rate or banned.
    Flooded(FloodRefusal),
    /// This request (sender, nonce) was answered already.
    Replayed,
}

/// A request's (sender, nonce).
type RequestKey = ([u8; 32], [u8; 16]);

/// The requests answered, until their expiry, with an index by expiry so that forgetting
/// the expired ones costs only what expired (not a scan of every request at each one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    /// Each request held, with its expiry.
    keys: BTreeMap<RequestKey, u64>,
    by_expiry: BTreeSet<(u64, RequestKey)>,
}

impl Answered {
    /// Records a request answered now; false if it was answered already.
    pub fn insert(&mut self, key: RequestKey, expiry: u64, now: u64) -> bool {
        while let Some(&(at, k)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            self.keys.remove(&k);
        }
        if self.keys.contains_key(&key) {
            return false;
        }
        self.keys.insert(key, expiry);
        self.by_expiry.insert((expiry, key));
        true
    }

    /// Whether [`Answered::insert`] would refuse `key` at `now` (changing nothing).
    pub fn holds(&self, key: &RequestKey, now: u64) -> bool {
        self.keys.get(key).is_some_and(|at| *at > now)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The exchange's state: see the module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    book: Book,
    answered: Answered,
    flood: Flood,
}

impl State {
    pub fn new(flood: FloodPolicy) -> State {
        State {
            book: Book::new(),
            answered: Answered::default(),
            flood: Flood::new(flood),
        }
    }

    pub fn book(&self) -> &Book {
        &self.book
    }

    pub fn flood(&self) -> &Flood {
        &self.flood
    }

    pub fn answered(&self) -> &Answered {
        &self.answered
    }

    /// Applies `cmd`: the same state and command give the same state and outcome anywhere.
    pub fn apply(&mut self, cmd: Command) -> Outcome {
        match cmd {
            Command::Ask { ask, rating, now } => match self.book.post(ask, rating, now) {
                Ok(()) => Outcome::Posted,
                Err(e) => Outcome::AskRefused(e.to_string()),
            },
            Command::Request {
                req,
                now,
                deals,
                bids,
            } => self.request(&req, now, &deals, &bids),
        }
    }

    /// Applies a log entry's proposal.
    pub fn apply_proposal(&mut self, p: Proposal) -> Applied {
        match p {
            Proposal::One(c) => Applied::One(self.apply(c)),
            Proposal::Batch(cmds) => {
                Applied::Batch(cmds.into_iter().map(|c| self.apply(c)).collect())
            }
        }
    }

    fn request(
        &mut self,
        req: &Request,
        now: u64,
        deals: &[([u8; 32], [u8; 32])],
        bids: &[(Bid, u32)],
    ) -> Outcome {
        if let Err(e) = self.flood.admit_key(req.sender, now) {
            return Outcome::Flooded(e);
        }
        // The key's last answer: did a deal with one of its hosts follow? Its deals when
        // that answer was given do not count.
        if let Some(o) = self.flood.outstanding(&req.sender) {
            let dealt = o.followed_by(deals);
            if let Err(e) = self.flood.settle(req.sender, dealt, now) {
                return Outcome::Flooded(e);
            }
        }
        if !self
            .answered
            .insert((req.sender, req.nonce), req.expiry_unix_secs, now)
        {
            return Outcome::Replayed;
        }
        let bids: Vec<Entry> = bids
            .iter()
            .filter_map(|(bid, rating)| bid_entry(bid, req, *rating, self.book.stamp()))
            .collect();
        self.book.expire(now);
        let got = self.book.take_with(req, &bids, now);
        let hosts: Vec<[u8; 32]> = got.iter().map(|(m, _)| m.host).collect();
        if !hosts.is_empty() {
            let known = deals
                .iter()
                .filter(|(_, host)| hosts.contains(host))
                .map(|(id, _)| *id)
                .collect();
            self.flood.answered(req.sender, hosts, known);
        }
        Outcome::Matched(got)
    }

    /// The state as bytes (a snapshot): `docs/formats.md` section 25.
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    /// A snapshot's state, refused with a clear error if the bytes are not one, or hold a
    /// book or a replay set that contradicts itself.
    pub fn from_bytes(bytes: &[u8]) -> Result<State, crate::codec::CodecError> {
        const WHAT: &str = "an exchange state";
        let s: State = crate::codec::decode(WHAT, bytes)?;
        s.book
            .check()
            .map_err(|e| crate::codec::invalid(WHAT, format!("its book: {e}")))?;
        let a = &s.answered;
        let consistent = a.keys.len() == a.by_expiry.len()
            && a.by_expiry.iter().all(|(at, k)| a.keys.get(k) == Some(at));
        if !consistent {
            return Err(crate::codec::invalid(
                WHAT,
                "its answered requests and their expiries disagree".into(),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_request_is_answered_once_until_it_expires() {
        let mut a = Answered::default();
        let k = |n: u8| ([n; 32], [n; 16]);
        assert!(a.insert(k(1), 100, 10));
        assert!(!a.insert(k(1), 100, 50), "a replay before its expiry");
        assert!(a.holds(&k(1), 99) && !a.holds(&k(1), 100) && !a.holds(&k(2), 50));
        assert!(a.insert(k(2), 200, 50));
        // At its expiry it is forgotten (it could not be answered again anyway).
        assert!(a.insert(k(1), 300, 100));
        assert!(!a.insert(k(2), 200, 150));
        assert_eq!((a.keys.len(), a.by_expiry.len()), (2, 2));
        assert!(a.insert(k(3), 400, 1000));
        assert_eq!((a.keys.len(), a.by_expiry.len()), (1, 1));
    }

    fn ask(host: u8, seq: u64, price: u64, addr: &str) -> Ask {
        Ask {
            chain_id: 1,
            host: [host; 32],
            seq,
            price_per_gib_day: price,
            free_bytes: 1 << 40,
            min_days: 1,
            max_days: 365,
            deposit: 1000,
            expiry_unix_secs: 10_000,
            region: String::new(),
            addr: addr.into(),
        }
    }

    fn req(sender: u8, nonce: u8, copies: u8) -> Request {
        Request {
            chain_id: 1,
            sender: [sender; 32],
            nonce: [nonce; 16],
            bytes: 1 << 20,
            days: 30,
            copies,
            max_price_per_gib_day: 100,
            download_fee: 0,
            min_rating: 0,
            expiry_unix_secs: 5_000,
            region: String::new(),
            spread: None,
        }
    }

    fn request(r: Request, now: u64) -> Command {
        Command::Request {
            req: r,
            now,
            deals: Vec::new(),
            bids: Vec::new(),
        }
    }

    fn hosts(o: &Outcome) -> Vec<u8> {
        match o {
            Outcome::Matched(m) => m.iter().map(|(m, _)| m.host[0]).collect(),
            other => panic!("not matched: {other:?}"),
        }
    }

    /// Two copies of the state given the same commands end alike and answer alike, and a
    /// copy restored from a snapshot goes on as the original does.
    #[test]
    fn replicas_applying_the_same_commands_answer_alike() {
        let cmds = vec![
            Command::Ask {
                ask: ask(1, 1, 10, "10.0.1.1:1"),
                rating: 500,
                now: 100,
            },
            Command::Ask {
                ask: ask(2, 1, 5, "10.0.2.1:1"),
                rating: 500,
                now: 101,
            },
            Command::Ask {
                ask: ask(3, 1, 5, "10.0.3.1:1"),
                rating: 900,
                now: 102,
            },
            request(req(9, 1, 2), 103),
            Command::Ask {
                ask: ask(2, 1, 1, "10.0.2.1:1"),
                rating: 500,
                now: 104,
            },
            request(req(9, 1, 2), 105),
            request(req(8, 1, 3), 106),
        ];
        let mut a = State::new(FloodPolicy::default());
        let mut b = State::new(FloodPolicy::default());
        let outs: Vec<Outcome> = cmds.iter().map(|c| a.apply(c.clone())).collect();
        assert_eq!(outs[0], Outcome::Posted);
        // Price, then rating: host 3 (5, rated 900) before host 2 (5, rated 500).
        assert_eq!(hosts(&outs[3]), vec![3, 2]);
        assert!(matches!(&outs[4], Outcome::AskRefused(e) if e.contains("not newer")));
        assert_eq!(outs[5], Outcome::Replayed);
        assert_eq!(hosts(&outs[6]), vec![3, 2, 1]);
        let snapshot = State::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(snapshot, a);
        for (c, want) in cmds.iter().zip(&outs) {
            assert_eq!(&b.apply(c.clone()), want);
        }
        assert_eq!(a, b);
        // The same commands as one batch give the same outcomes and state.
        let mut c = State::new(FloodPolicy::default());
        assert_eq!(
            c.apply_proposal(Proposal::Batch(cmds.clone())),
            Applied::Batch(outs.clone())
        );
        assert_eq!(c, a);
        let next = request(req(7, 1, 1), 107);
        let mut restored = snapshot;
        assert_eq!(restored.apply(next.clone()), a.apply(next));
        assert_eq!(restored, a);
    }

    #[test]
    fn a_key_over_its_rate_is_refused_by_the_log_too() {
        let mut s = State::new(FloodPolicy {
            per_key_per_min: 2,
            ..FloodPolicy::default()
        });
        assert!(matches!(
            s.apply(request(req(9, 1, 1), 10)),
            Outcome::Matched(_)
        ));
        assert!(matches!(
            s.apply(request(req(9, 2, 1), 11)),
            Outcome::Matched(_)
        ));
        assert_eq!(
            s.flood().check_key(&[9; 32], 12).unwrap_err(),
            FloodRefusal::KeyRate {
                limit: 2,
                retry_at: 70
            }
        );
        assert!(matches!(
            s.apply(request(req(9, 3, 1), 12)),
            Outcome::Flooded(FloodRefusal::KeyRate { .. })
        ));
    }

    #[test]
    fn a_snapshot_that_is_not_one_is_refused() {
        let good = State::new(FloodPolicy::default()).to_bytes();
        for bad in [
            &b""[..],
            &good[..good.len() - 1],
            &[0xff; 64][..],
            &[&good[..], &[0][..]].concat(),
        ] {
            let e = State::from_bytes(bad).unwrap_err().to_string();
            assert!(e.contains("an exchange state"), "{e}");
        }
        // Well-formed bytes of a state that contradicts itself.
        let mut s = State::new(FloodPolicy::default());
        s.apply(request(req(9, 1, 1), 10));
        s.answered.by_expiry.clear();
        let e = State::from_bytes(&s.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("disagree"), "{e}");
        // Two maps of one value in another order: (1, 2) written as (2, 1).
        let mut two = State::new(FloodPolicy::default());
        two.apply(request(req(1, 1, 1), 10));
        two.apply(request(req(2, 1, 1), 10));
        let bytes = two.to_bytes();
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let swapped = swap(&bytes, &k1, &k2);
        let e = State::from_bytes(&swapped).unwrap_err().to_string();
        assert!(e.contains("one encoding"), "{e}");
    }

    /// `bytes` with every run of 32 `a`s and 32 `b`s exchanged.
    fn swap(bytes: &[u8], a: &[u8; 32], b: &[u8; 32]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let mut i = 0;
        while i + 32 <= out.len() {
            if out[i..i + 32] == a[..] {
                out[i..i + 32].copy_from_slice(b);
                i += 32;
            } else if out[i..i + 32] == b[..] {
                out[i..i + 32].copy_from_slice(a);
                i += 32;
            } else {
                i += 1;
            }
        }
        out
    }
}
