//! The host agent's decisions. At every block the agent lists its open deals on the chain
//! and asks [`Agent::plan`] what to do; it carries the actions out and reports back
//! ([`Agent::learned`], [`Agent::submitted`], [`Agent::closed`]).
//!
//! The plan is level-triggered: it is computed from the chain's state and the store's
//! contents, not from events, so an agent that restarts, misses blocks or moves to another
//! miner just plans again from what it sees. What it remembers is only what saves work:
//! the chunk lists of deals (fetched once), and which transactions it sent at which height
//! (not sent again before [`RESEND_AFTER_BLOCKS`] unless the chain has moved past them).

use std::collections::{BTreeMap, BTreeSet};

use crate::Id;

/// Blocks after which a completion or proof that has not landed is sent again (a miner
/// that lost it, a mempool that dropped it).
pub const RESEND_AFTER_BLOCKS: u64 = 5;

/// An open deal of this host, as the chain lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenDeal {
    pub id: Id,
    pub stage: Stage,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Paid; the completion is accepted up to this height.
    Awaiting {
        deadline: u64,
    },
    Active,
}

/// The host's challenge for the current proof period: one proof per sampled leaf, all in
/// one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub period: u64,
    /// (chunk, leaf) in order.
    pub samples: Vec<(Id, u64)>,
    /// The last height a proof is accepted at.
    pub due: u64,
    pub answered: bool,
}

/// What the agent should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the deal's chunk list from the chain, then [`Agent::learned`].
    FetchChunks { deal: Id },
    /// Every chunk of this paid deal is stored: read each back, compute its CRC32C, and
    /// submit the completion.
    Complete { deal: Id, chunks: Vec<Id> },
    /// Answer the host's challenge from the store: one proof per sample, in order, in
    /// one transaction.
    Prove {
        period: u64,
        samples: Vec<(Id, u64)>,
    },
    /// The deal is no longer listed open: ask the chain whether it is over, then
    /// [`Agent::closed`] (or, if a lagging miner still has it open, nothing).
    CheckClosed { deal: Id },
}

/// What a submitted transaction was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Sent {
    Completion(Id),
    Proofs(u64),
}

/// The agent's memory between blocks.
#[derive(Debug, Default)]
pub struct Agent {
    /// Chunk lists of the deals seen open.
    chunks: BTreeMap<Id, Vec<Id>>,
    /// What was submitted, at which height.
    sent: BTreeMap<Sent, u64>,
}

impl Agent {
    pub fn new() -> Agent {
        Agent::default()
    }

    /// What to do at `height`, given the host's open deals, the deals its store still
    /// holds data for (`held`: granted and not yet released, as recorded on its disk), its
    /// challenge and which chunks its store holds. A held deal that is not open (it ended
    /// while the host was down, or before this agent started) has its chunk list fetched,
    /// then is checked and released like any other deal that closed.
    pub fn plan(
        &mut self,
        height: u64,
        open: &[OpenDeal],
        held: &[Id],
        challenge: Option<&Challenge>,
        stored: impl Fn(&Id) -> bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let listed: BTreeSet<Id> = open.iter().map(|d| d.id).collect();
        for deal in self.chunks.keys().filter(|d| !listed.contains(*d)) {
            actions.push(Action::CheckClosed { deal: *deal });
        }
        for deal in held {
            if !listed.contains(deal) && !self.chunks.contains_key(deal) {
                actions.push(Action::FetchChunks { deal: *deal });
            }
        }
        let due_again = |sent: &BTreeMap<Sent, u64>, what: Sent| match sent.get(&what) {
            None => true,
            Some(at) => height >= at.saturating_add(RESEND_AFTER_BLOCKS),
        };
        for d in open {
            let Some(chunks) = self.chunks.get(&d.id) else {
                actions.push(Action::FetchChunks { deal: d.id });
                continue;
            };
            match d.stage {
                Stage::Awaiting { deadline } => {
                    if height <= deadline
                        && chunks.iter().all(&stored)
                        && due_again(&self.sent, Sent::Completion(d.id))
                    {
                        actions.push(Action::Complete {
                            deal: d.id,
                            chunks: chunks.clone(),
                        });
                    }
                }
                Stage::Active => {}
            }
        }
        if let Some(c) = challenge {
            if !c.answered
                && height <= c.due
                && !c.samples.is_empty()
                && due_again(&self.sent, Sent::Proofs(c.period))
            {
                actions.push(Action::Prove {
                    period: c.period,
                    samples: c.samples.clone(),
                });
            }
        }
        // What was sent for deals no longer open, or periods past, is forgotten.
        self.sent.retain(|s, _| match s {
            Sent::Completion(d) => open
                .iter()
                .any(|o| o.id == *d && matches!(o.stage, Stage::Awaiting { .. })),
            Sent::Proofs(p) => challenge.is_some_and(|c| c.period == *p),
        });
        actions
    }

    /// The chunk list of `deal`, read from the chain.
    pub fn learned(&mut self, deal: Id, chunks: Vec<Id>) {
        self.chunks.insert(deal, chunks);
    }

    /// `action`'s transaction was submitted at `height`.
    pub fn submitted(&mut self, action: &Action, height: u64) {
        let what = match action {
            Action::Complete { deal, .. } => Sent::Completion(*deal),
            Action::Prove { period, .. } => Sent::Proofs(*period),
            Action::FetchChunks { .. } | Action::CheckClosed { .. } => return,
        };
        self.sent.insert(what, height);
    }

    /// The chain says `deal` is over (ended, expired or refused): returns its chunks that
    /// no other deal of this host still covers, which the host may delete.
    pub fn closed(&mut self, deal: &Id) -> Vec<Id> {
        let Some(chunks) = self.chunks.remove(deal) else {
            return Vec::new();
        };
        let kept: BTreeSet<&Id> = self.chunks.values().flatten().collect();
        let mut free: Vec<Id> = chunks.into_iter().filter(|c| !kept.contains(c)).collect();
        free.sort_unstable();
        free.dedup();
        free
    }

    /// The chunk list of `deal`, if known.
    pub fn chunks_of(&self, deal: &Id) -> Vec<Id> {
        self.chunks.get(deal).cloned().unwrap_or_default()
    }

    /// Deals whose chunk lists the agent holds.
    pub fn known(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> Id {
        [b; 32]
    }

    fn awaiting(d: u8, deadline: u64) -> OpenDeal {
        OpenDeal {
            id: id(d),
            stage: Stage::Awaiting { deadline },
        }
    }

    fn active(d: u8) -> OpenDeal {
        OpenDeal {
            id: id(d),
            stage: Stage::Active,
        }
    }

    fn challenge(period: u64, due: u64, answered: bool) -> Challenge {
        Challenge {
            period,
            samples: vec![(id(102), 7), (id(103), 9)],
            due,
            answered,
        }
    }

    fn prove(period: u64) -> Action {
        Action::Prove {
            period,
            samples: vec![(id(102), 7), (id(103), 9)],
        }
    }

    #[test]
    fn a_table_of_situations_and_the_plan_for_each() {
        // (deals open, challenge, chunks stored, sent before (action, height), height) -> plan
        type Case = (
            &'static str,
            Vec<OpenDeal>,
            Option<Challenge>,
            Vec<u8>,
            Vec<(Action, u64)>,
            u64,
            Vec<Action>,
        );
        let complete = |d: u8| Action::Complete {
            deal: id(d),
            chunks: vec![id(d + 10), id(d + 20)],
        };
        let cases: Vec<Case> = vec![
            ("nothing open", vec![], None, vec![], vec![], 10, vec![]),
            (
                "paid, nothing uploaded yet: wait",
                vec![awaiting(1, 50)],
                None,
                vec![],
                vec![],
                10,
                vec![],
            ),
            (
                "paid, half uploaded: wait",
                vec![awaiting(1, 50)],
                None,
                vec![11],
                vec![],
                10,
                vec![],
            ),
            (
                "paid and all uploaded: complete",
                vec![awaiting(1, 50)],
                None,
                vec![11, 21],
                vec![],
                10,
                vec![complete(1)],
            ),
            (
                "completion sent 2 blocks ago: not again yet",
                vec![awaiting(1, 50)],
                None,
                vec![11, 21],
                vec![(complete(1), 8)],
                10,
                vec![],
            ),
            (
                "completion sent 5 blocks ago and still awaiting: again",
                vec![awaiting(1, 50)],
                None,
                vec![11, 21],
                vec![(complete(1), 5)],
                10,
                vec![complete(1)],
            ),
            (
                "past the completion deadline: nothing (the chain refunds)",
                vec![awaiting(1, 9)],
                None,
                vec![11, 21],
                vec![],
                10,
                vec![],
            ),
            (
                "open challenge: prove every sample at once",
                vec![active(2)],
                Some(challenge(0, 20, false)),
                vec![],
                vec![],
                10,
                vec![prove(0)],
            ),
            (
                "challenge answered: nothing",
                vec![active(2)],
                Some(challenge(0, 20, true)),
                vec![],
                vec![],
                10,
                vec![],
            ),
            (
                "proofs sent last block: not again",
                vec![active(2)],
                Some(challenge(0, 20, false)),
                vec![],
                vec![(prove(0), 9)],
                10,
                vec![],
            ),
            (
                "proofs for the last period sent, a new period opened: prove it",
                vec![active(2)],
                Some(challenge(1, 40, false)),
                vec![],
                vec![(prove(0), 9)],
                10,
                vec![prove(1)],
            ),
            (
                "challenge past due: nothing (missed)",
                vec![active(2)],
                Some(challenge(0, 9, false)),
                vec![],
                vec![],
                10,
                vec![],
            ),
            (
                "a deal to complete and a challenge: both",
                vec![awaiting(1, 50), active(2), active(3)],
                Some(challenge(3, 20, false)),
                vec![11, 21],
                vec![],
                10,
                vec![complete(1), prove(3)],
            ),
        ];
        for (name, open, ch, stored, sent, height, want) in cases {
            let mut a = Agent::new();
            for d in &open {
                let n = d.id[0];
                a.learned(d.id, vec![id(n + 10), id(n + 20)]);
            }
            for (action, at) in &sent {
                a.submitted(action, *at);
            }
            let stored: Vec<Id> = stored.into_iter().map(id).collect();
            let got = a.plan(height, &open, &[], ch.as_ref(), |c| stored.contains(c));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_deal_seen_for_the_first_time_is_fetched_and_one_gone_is_checked() {
        let mut a = Agent::new();
        assert_eq!(
            a.plan(1, &[awaiting(1, 50)], &[], None, |_| true),
            vec![Action::FetchChunks { deal: id(1) }]
        );
        a.learned(id(1), vec![id(11)]);
        assert_eq!(
            a.plan(2, &[awaiting(1, 50)], &[], None, |_| true),
            vec![Action::Complete {
                deal: id(1),
                chunks: vec![id(11)]
            }]
        );
        // Gone from the open list: checked every block until the chain says it is over.
        let gone = vec![Action::CheckClosed { deal: id(1) }];
        assert_eq!(a.plan(3, &[], &[], None, |_| true), gone);
        assert_eq!(a.plan(4, &[], &[], None, |_| true), gone);
        assert_eq!(a.closed(&id(1)), vec![id(11)]);
        assert_eq!(a.plan(5, &[], &[], None, |_| true), vec![]);
        assert_eq!(a.known(), 0);
    }

    #[test]
    fn a_held_deal_that_closed_while_the_host_was_down_is_fetched_checked_and_released() {
        // A fresh agent (the host restarted): deal 1 is still held on disk but no longer
        // open; deal 2 is open and shares a chunk with it.
        let mut a = Agent::new();
        let held = [id(1), id(2)];
        assert_eq!(
            a.plan(7, &[active(2)], &held, None, |_| true),
            vec![
                Action::FetchChunks { deal: id(1) },
                Action::FetchChunks { deal: id(2) }
            ]
        );
        a.learned(id(2), vec![id(12), id(14)]);
        a.learned(id(1), vec![id(11), id(12)]);
        assert_eq!(
            a.plan(7, &[active(2)], &held, None, |_| true),
            vec![Action::CheckClosed { deal: id(1) }]
        );
        assert_eq!(a.closed(&id(1)), vec![id(11)]);
        // Released: the host no longer holds it, and nothing more is planned for it.
        assert_eq!(a.plan(8, &[active(2)], &[id(2)], None, |_| true), vec![]);
        // Held and open (a deal granted and paid): nothing more than for any open deal.
        assert_eq!(a.plan(9, &[active(2)], &[id(2)], None, |_| true), vec![]);
    }

    #[test]
    fn a_closed_deal_releases_only_chunks_no_other_deal_covers() {
        let mut a = Agent::new();
        a.learned(id(1), vec![id(11), id(12), id(13)]);
        a.learned(id(2), vec![id(12), id(14)]);
        assert_eq!(a.closed(&id(1)), vec![id(11), id(13)]);
        assert_eq!(a.closed(&id(1)), Vec::<Id>::new(), "released once");
        assert_eq!(a.closed(&id(2)), vec![id(12), id(14)]);
    }

    #[test]
    fn what_was_sent_is_forgotten_once_the_chain_moves_on() {
        let mut a = Agent::new();
        a.learned(id(2), vec![id(102)]);
        a.submitted(&prove(0), 10);
        let _ = a.plan(
            11,
            &[active(2)],
            &[],
            Some(&challenge(1, 40, false)),
            |_| true,
        );
        assert!(!a.sent.contains_key(&Sent::Proofs(0)));
    }
}
