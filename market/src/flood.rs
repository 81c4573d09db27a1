//! An exchange's flood control (the seed's 4.4, point 10): how many requests a key and an
//! address may make a minute, and a ban for a key that keeps asking without ever taking
//! what it is offered. Pure: the exchange passes the time, the peer's address and whether a
//! deal followed the key's last answered request (it reads that from the chain: the key's
//! deals when the request was answered, and now).
//!
//! Rules: each key and each address has a fixed one-minute window (starting at its first
//! request in the window) of at most `per_key_per_min` / `per_addr_per_min` requests; one
//! more is refused until the window ends. An answered request that matched hosts is
//! outstanding until the key's next request; if no deal with one of those hosts was opened
//! since, that is a strike; `strikes_to_ban` strikes in a row ban the key for `ban_secs`,
//! and a deal clears the strikes (until then, each further strike bans again). A refusal
//! says until when. Idle state is forgotten once a minute, so memory follows the keys and
//! addresses active lately.

use std::collections::BTreeMap;

/// The limits; `exchange.toml`'s `[flood]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FloodPolicy {
    pub per_key_per_min: u32,
    pub per_addr_per_min: u32,
    pub strikes_to_ban: u32,
    pub ban_secs: u64,
}

impl Default for FloodPolicy {
    fn default() -> Self {
        FloodPolicy {
            per_key_per_min: 60,
            per_addr_per_min: 240,
            strikes_to_ban: 20,
            ban_secs: 3600,
        }
    }
}

/// Why a request is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum FloodRefusal {
    #[error("this key is banned until {until} (Unix seconds): {strikes} requests in a row were answered and no deal followed")]
    Banned { until: u64, strikes: u32 },
    #[error(
        "more than {limit} requests a minute from this key: try again at {retry_at} (Unix seconds)"
    )]
    KeyRate { limit: u32, retry_at: u64 },
    #[error("more than {limit} requests a minute from this address: try again at {retry_at} (Unix seconds)")]
    AddrRate { limit: u32, retry_at: u64 },
}

impl FloodRefusal {
    /// One word for counting refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            FloodRefusal::Banned { .. } => "banned",
            FloodRefusal::KeyRate { .. } => "key rate",
            FloodRefusal::AddrRate { .. } => "address rate",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Window {
    start: u64,
    count: u32,
}

impl Window {
    /// Counts one request at `now` if the window has room.
    fn take(&mut self, now: u64, limit: u32) -> Result<(), u64> {
        // A fresh window starts at its first request.
        if self.count == 0 || now >= self.start + 60 {
            *self = Window {
                start: now,
                count: 0,
            };
        }
        if self.count >= limit {
            return Err(self.start + 60);
        }
        self.count += 1;
        Ok(())
    }
}

/// A key's standing.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct KeyState {
    window: Window,
    strikes: u32,
    banned_until: u64,
    /// The last answered request that matched hosts, not yet settled.
    outstanding: Option<Outstanding>,
}

/// An answered request that matched hosts: a deal with one of `hosts` that is not among
/// `known_deals` (the key's deals with them when it was answered) settles it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outstanding {
    pub hosts: Vec<[u8; 32]>,
    pub known_deals: Vec<[u8; 32]>,
}

impl Outstanding {
    /// Whether a deal `(id, host)` of the key now is one that followed the answer.
    pub fn followed_by(&self, deals: &[([u8; 32], [u8; 32])]) -> bool {
        deals
            .iter()
            .any(|(id, host)| self.hosts.contains(host) && !self.known_deals.contains(id))
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flood {
    policy: FloodPolicy,
    keys: BTreeMap<[u8; 32], KeyState>,
    addrs: BTreeMap<[u8; 16], Window>,
    pruned_at: u64,
}

impl Flood {
    pub fn new(policy: FloodPolicy) -> Flood {
        Flood {
            policy,
            ..Flood::default()
        }
    }

    /// Counts a request from `addr` (an IPv6 or IPv4-mapped address), before its signature
    /// is even checked.
    pub fn admit_addr(&mut self, addr: [u8; 16], now: u64) -> Result<(), FloodRefusal> {
        if now >= self.pruned_at + 60 {
            self.prune(now);
        }
        let limit = self.policy.per_addr_per_min;
        self.addrs
            .entry(addr)
            .or_default()
            .take(now, limit)
            .map_err(|retry_at| FloodRefusal::AddrRate { limit, retry_at })
    }

    /// Counts a request signed by `key`: refused while the key is banned or over its rate.
    pub fn admit_key(&mut self, key: [u8; 32], now: u64) -> Result<(), FloodRefusal> {
        let limit = self.policy.per_key_per_min;
        let k = self.keys.entry(key).or_default();
        if now < k.banned_until {
            return Err(FloodRefusal::Banned {
                until: k.banned_until,
                strikes: k.strikes,
            });
        }
        k.window
            .take(now, limit)
            .map_err(|retry_at| FloodRefusal::KeyRate { limit, retry_at })
    }

    /// The key's outstanding answer, if any.
    /// What [`Flood::admit_key`] would answer at `now`, changing nothing: a replica checks
    /// a request against its copy of the state before reading the chain for it, and the
    /// replicated log then admits it for good.
    pub fn check_key(&self, key: &[u8; 32], now: u64) -> Result<(), FloodRefusal> {
        let Some(k) = self.keys.get(key) else {
            return Ok(());
        };
        if now < k.banned_until {
            return Err(FloodRefusal::Banned {
                until: k.banned_until,
                strikes: k.strikes,
            });
        }
        let limit = self.policy.per_key_per_min;
        let mut window = k.window;
        window
            .take(now, limit)
            .map_err(|retry_at| FloodRefusal::KeyRate { limit, retry_at })
    }

    pub fn outstanding(&self, key: &[u8; 32]) -> Option<&Outstanding> {
        self.keys.get(key).and_then(|k| k.outstanding.as_ref())
    }

    /// Settles the key's outstanding answer: `dealt` says whether a deal with one of its
    /// hosts was opened since. A strike that reaches the limit bans the key from `now`.
    pub fn settle(&mut self, key: [u8; 32], dealt: bool, now: u64) -> Result<(), FloodRefusal> {
        let (strikes_to_ban, ban_secs) = (self.policy.strikes_to_ban, self.policy.ban_secs);
        let k = self.keys.entry(key).or_default();
        if k.outstanding.take().is_none() {
            return Ok(());
        }
        if dealt {
            k.strikes = 0;
            return Ok(());
        }
        k.strikes += 1;
        if k.strikes >= strikes_to_ban {
            k.banned_until = now.saturating_add(ban_secs);
            return Err(FloodRefusal::Banned {
                until: k.banned_until,
                strikes: k.strikes,
            });
        }
        Ok(())
    }

    /// Records an answered request that matched `hosts`, when the key's deals with them
    /// were `known_deals`.
    pub fn answered(&mut self, key: [u8; 32], hosts: Vec<[u8; 32]>, known_deals: Vec<[u8; 32]>) {
        if !hosts.is_empty() {
            self.keys.entry(key).or_default().outstanding =
                Some(Outstanding { hosts, known_deals });
        }
    }

    /// Forgets what no longer matters at `now`: windows over, keys neither banned nor
    /// striking nor outstanding; keeps memory to the keys and addresses active lately.
    pub fn prune(&mut self, now: u64) {
        self.pruned_at = now;
        self.addrs.retain(|_, w| now < w.start + 60);
        self.keys.retain(|_, k| {
            now < k.window.start + 60
                || now < k.banned_until
                || k.strikes > 0
                || k.outstanding.is_some()
        });
    }

    /// Keys and addresses held.
    pub fn len(&self) -> (usize, usize) {
        (self.keys.len(), self.addrs.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn policy() -> FloodPolicy {
        FloodPolicy {
            per_key_per_min: 3,
            per_addr_per_min: 5,
            strikes_to_ban: 2,
            ban_secs: 100,
        }
    }

    #[test]
    fn only_a_new_deal_with_a_matched_host_follows_an_answer() {
        let o = Outstanding {
            hosts: vec![[7; 32], [8; 32]],
            known_deals: vec![[1; 32]],
        };
        // The deal the key had with host 7 when it was answered does not count, however
        // recently it was opened; a new one with host 8 does; one with another host not.
        assert!(!o.followed_by(&[([1; 32], [7; 32])]));
        assert!(!o.followed_by(&[([2; 32], [9; 32])]));
        assert!(o.followed_by(&[([1; 32], [7; 32]), ([3; 32], [8; 32])]));
    }

    #[test]
    fn rates_are_per_minute_per_key_and_per_address() {
        let mut f = Flood::new(policy());
        let (a, b) = ([1; 32], [2; 32]);
        for _ in 0..3 {
            // A check changes nothing: checked any number of times, still admitted once.
            f.check_key(&a, 1000).unwrap();
            f.check_key(&a, 1000).unwrap();
            f.admit_key(a, 1000).unwrap();
        }
        assert_eq!(f.check_key(&a, 1010), f.admit_key(a, 1010));
        assert_eq!(
            f.admit_key(a, 1010),
            Err(FloodRefusal::KeyRate {
                limit: 3,
                retry_at: 1060
            })
        );
        f.admit_key(b, 1010).unwrap();
        f.admit_key(a, 1060).unwrap();
        for _ in 0..5 {
            f.admit_addr([9; 16], 50).unwrap();
        }
        assert_eq!(
            f.admit_addr([9; 16], 109),
            Err(FloodRefusal::AddrRate {
                limit: 5,
                retry_at: 110
            })
        );
        f.admit_addr([8; 16], 109).unwrap();
        f.admit_addr([9; 16], 110).unwrap();
        let e = FloodRefusal::KeyRate {
            limit: 3,
            retry_at: 1060,
        }
        .to_string();
        assert!(e.contains("try again at 1060"), "{e}");
    }

    #[test]
    fn answers_without_deals_ban_for_a_while_and_a_deal_forgives() {
        let mut f = Flood::new(policy());
        let k = [1; 32];
        let host = vec![[7; 32]];
        // Nothing outstanding: nothing to settle.
        f.settle(k, false, 0).unwrap();
        // An answer that matched nothing is not outstanding.
        f.answered(k, Vec::new(), Vec::new());
        assert_eq!(f.outstanding(&k), None);
        f.answered(k, host.clone(), vec![[5; 32]]);
        assert_eq!(
            f.outstanding(&k),
            Some(&Outstanding {
                hosts: host.clone(),
                known_deals: vec![[5; 32]]
            })
        );
        f.settle(k, false, 10).unwrap(); // strike 1
        f.answered(k, host.clone(), Vec::new());
        f.settle(k, true, 11).unwrap(); // a deal: forgiven
        f.answered(k, host.clone(), Vec::new());
        f.settle(k, false, 12).unwrap(); // strike 1
        f.answered(k, host.clone(), Vec::new());
        let ban = f.settle(k, false, 13).unwrap_err(); // strike 2: banned
        assert_eq!(
            ban,
            FloodRefusal::Banned {
                until: 113,
                strikes: 2
            }
        );
        assert!(ban.to_string().contains("banned until 113"), "{ban}");
        assert_eq!(f.admit_key(k, 112).unwrap_err().reason(), "banned");
        f.admit_key(k, 113).unwrap();
        // Memory: an idle key without strikes goes; one with strikes stays.
        f.prune(1000);
        assert_eq!(f.len(), (1, 0));
        f.answered(k, host, Vec::new());
        f.settle(k, true, 1001).unwrap();
        f.prune(2000);
        assert_eq!(f.len(), (0, 0));
    }
}
