//! The deal flow's decisions against the real ledger, under random interleavings: senders
//! pay hosts, uploads arrive (or not), hosts crash (losing the agent's memory, and
//! sometimes chunks), blocks pass; each host's agent plans from what the chain and its
//! store say, and its transactions go into the next block. After every block: MASP and
//! MASPC are conserved (balances + deposits + escrow + burned = genesis), every deal's fee
//! is exactly escrow + paid + refunded, paid is the sum of the parts of its proven periods
//! (a proven period is paid once), and a period is paid only if its host answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use consensus::ledger::{apply, completion_deadline, Block, DealState, Genesis, Params, State};
use ed25519_consensus::SigningKey;
use market::host::{Action, Agent, Challenge, OpenDeal, Stage};
use proptest::prelude::*;
use proto::tx::{AccountId, Role, SignedTx, Tx, TxBody, TxId};
use proto::{ChunkEntry, ChunkId};

const P: u64 = 5;
const HOSTS: u8 = 2;
const SENDERS: u8 = 2;
const CHUNK: u32 = 4096 + 16;

fn key(i: u8) -> SigningKey {
    SigningKey::from([i + 1; 32])
}

fn id(i: u8) -> AccountId {
    AccountId(key(i).verification_key().to_bytes())
}

/// Sealed bytes of chunk `n` (every deal names chunks by a global counter).
fn data(n: u32) -> Vec<u8> {
    let mut out = vec![0u8; CHUNK as usize];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

#[derive(Clone, Debug)]
enum Op {
    /// Sender pays host for `chunks` chunks over `parts` periods.
    Pay {
        sender: u8,
        host: u8,
        chunks: u8,
        parts: u8,
    },
    /// The host receives every chunk paid to it so far.
    Upload { host: u8 },
    /// The host's process restarts: the agent forgets; with `lose`, its store loses a chunk.
    Crash { host: u8, lose: bool },
    /// Blocks pass, each host's agent acting at each.
    Blocks(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..SENDERS, 0..HOSTS, 1u8..4, 1u8..4).prop_map(|(s, h, chunks, parts)| Op::Pay {
            sender: s,
            host: h,
            chunks,
            parts
        }),
        (0..HOSTS).prop_map(|host| Op::Upload { host }),
        (0..HOSTS, any::<bool>()).prop_map(|(host, lose)| Op::Crash { host, lose }),
        (1u8..8).prop_map(Op::Blocks),
    ]
}

struct World {
    state: State,
    nonces: BTreeMap<u8, u64>,
    agents: Vec<Agent>,
    /// What each host's store holds: chunk id -> its bytes' counter.
    stores: Vec<BTreeMap<ChunkId, u32>>,
    /// Chunks paid to each host and not yet received.
    inbound: Vec<Vec<(ChunkId, u32)>>,
    next_chunk: u32,
    /// Proof periods each host answered.
    answered: BTreeSet<(u8, u64)>,
    pending: Vec<SignedTx>,
}

impl World {
    fn new() -> World {
        let accounts = (0..HOSTS + SENDERS)
            .map(|i| (id(i), 100_000, 100_000))
            .collect();
        let mut w = World {
            state: consensus::ledger::State::genesis(&Genesis {
                chain_id: 1,
                params: Params {
                    proof_period_blocks: P,
                    completion_timeout_blocks: 3 * P,
                },
                accounts,
                validators: vec![(AccountId([9; 32]), 20_000, "v".into())],
            }),
            nonces: BTreeMap::new(),
            agents: (0..HOSTS).map(|_| Agent::new()).collect(),
            stores: vec![BTreeMap::new(); usize::from(HOSTS)],
            inbound: vec![Vec::new(); usize::from(HOSTS)],
            next_chunk: 0,
            answered: BTreeSet::new(),
            pending: Vec::new(),
        };
        for h in 0..HOSTS {
            let tx = w.tx(
                h,
                TxBody::Register {
                    role: Role::Host,
                    deposit: 20_000,
                    endpoint: format!("h{h}"),
                },
            );
            w.pending.push(tx);
        }
        w.block();
        w
    }

    fn tx(&mut self, who: u8, body: TxBody) -> SignedTx {
        let n = self.nonces.entry(who).or_default();
        let tx = Tx {
            chain_id: 1,
            signer: id(who),
            nonce: *n,
            fee: 1,
            body,
        }
        .sign(&key(who));
        *n += 1;
        tx
    }

    /// Applies the pending transactions that the ledger takes (as a block builder would),
    /// in one block; refused ones are dropped and their signer's nonce taken back.
    fn block(&mut self) {
        let mut working = self.state.clone();
        working.height += 1;
        let mut txs = Vec::new();
        for tx in std::mem::take(&mut self.pending) {
            if consensus::ledger::apply_tx(&mut working, &tx).is_ok() {
                txs.push(tx);
            }
        }
        // Nonces follow the chain: a refused transaction's nonce is free again.
        for i in 0..HOSTS + SENDERS {
            self.nonces.insert(i, working.account(&id(i)).nonce);
        }
        let b = Block::build(
            &self.state,
            AccountId([9; 32]),
            &[0x5E; 32],
            (self.state.height + 1) * 1000,
            txs,
        );
        for tx in &b.txs {
            if let TxBody::StorageProofs { period, .. } = tx.tx().body {
                let h = (0..HOSTS).find(|h| id(*h) == tx.tx().signer).unwrap();
                self.answered.insert((h, period));
            }
        }
        let before: BTreeMap<TxId, (u32, u32)> = self
            .state
            .deals
            .iter()
            .map(|(id, d)| (*id, (d.proven, d.missed)))
            .collect();
        self.state = apply(&self.state, &b).unwrap().0;
        self.check();
        // A period settles when its last block is applied: each covered deal is paid if
        // and only if its host answered that period, once.
        let height = self.state.height;
        for (deal, d) in &self.state.deals {
            let (proven, missed) = before.get(deal).copied().unwrap_or((0, 0));
            if (d.proven, d.missed) == (proven, missed) {
                continue;
            }
            assert_eq!((height + 1) % P, 0, "deal {deal} settled mid-period");
            let h = (0..HOSTS).find(|h| id(*h) == d.host).unwrap();
            let answered = self.answered.contains(&(h, height / P));
            assert_eq!(
                (d.proven - proven, d.missed - missed),
                if answered { (1, 0) } else { (0, 1) },
                "deal {deal} at the close of period {}: answered {answered}",
                height / P
            );
        }
    }

    /// Each host's agent plans from the chain and its store; its transactions wait for
    /// the next block.
    fn agents_act(&mut self) {
        let height = self.state.height;
        for h in 0..HOSTS {
            let me = id(h);
            let open: Vec<OpenDeal> = self
                .state
                .deals
                .iter()
                .filter(|(_, d)| d.host == me)
                .filter_map(|(id, d)| {
                    let stage = match d.state {
                        DealState::AwaitingCompletion => Stage::Awaiting {
                            deadline: completion_deadline(
                                &self.state.params,
                                d.opened_height,
                                &d.chunks,
                            )
                            .expect("checked at payment"),
                        },
                        DealState::Active { .. } => Stage::Active,
                        _ => return None,
                    };
                    Some(OpenDeal { id: id.0, stage })
                })
                .collect();
            let challenge = self.state.challenges.get(&me).map(|c| Challenge {
                period: c.period,
                samples: c
                    .samples
                    .iter()
                    .map(|s| {
                        let e = self.state.deals[&s.deal].chunks[s.chunk as usize];
                        (e.id.0, s.leaf)
                    })
                    .collect(),
                due: c.due,
                answered: c.answered,
            });
            // What a host holds is what it took: the deals its agent follows.
            let held: Vec<[u8; 32]> = open.iter().map(|d| d.id).collect();
            let store = &self.stores[usize::from(h)];
            let mut actions =
                self.agents[usize::from(h)].plan(height, &open, &held, challenge.as_ref(), |c| {
                    store.contains_key(&ChunkId(*c))
                });
            // Chunk lists fetched from the chain, then planned again.
            for a in actions.clone() {
                match a {
                    Action::FetchChunks { deal } => {
                        let chunks = self.state.deals[&TxId(deal)]
                            .chunks
                            .iter()
                            .map(|c| c.id.0)
                            .collect();
                        self.agents[usize::from(h)].learned(deal, chunks);
                    }
                    Action::CheckClosed { deal } => {
                        let _ = self.agents[usize::from(h)].closed(&deal);
                    }
                    _ => {}
                }
            }
            let store = &self.stores[usize::from(h)];
            actions =
                self.agents[usize::from(h)].plan(height, &open, &held, challenge.as_ref(), |c| {
                    store.contains_key(&ChunkId(*c))
                });
            for a in actions {
                let body = match &a {
                    Action::Complete { deal, chunks } => TxBody::UploadCompletion {
                        deal: TxId(*deal),
                        crcs: chunks
                            .iter()
                            .map(|c| engine_crc(&data(self.stores[usize::from(h)][&ChunkId(*c)])))
                            .collect(),
                    },
                    Action::Prove { period, samples } => {
                        // A sample of a lost chunk cannot be proved: the whole answer fails.
                        let Some(proofs) = samples
                            .iter()
                            .map(|(c, leaf)| {
                                let n = self.stores[usize::from(h)].get(&ChunkId(*c))?;
                                proto::proof::prove(&data(*n), *leaf).ok()
                            })
                            .collect::<Option<Vec<_>>>()
                        else {
                            continue;
                        };
                        TxBody::StorageProofs {
                            period: *period,
                            proofs,
                        }
                    }
                    _ => continue,
                };
                let tx = self.tx(h, body);
                self.pending.push(tx);
                self.agents[usize::from(h)].submitted(&a, height);
            }
        }
    }

    fn check(&self) {
        let s = &self.state;
        assert_eq!(
            s.total_supply(),
            s.genesis_supply,
            "supply at height {}",
            s.height
        );
        for (id, d) in &s.deals {
            assert_eq!(
                d.escrow + d.paid + d.refunded,
                d.storage_fee,
                "deal {id}: escrow + paid + refunded = fee"
            );
            assert!(d.proven + d.missed <= d.parts, "deal {id}: periods counted");
            match d.state {
                DealState::AwaitingCompletion => assert_eq!((d.paid, d.refunded), (0, 0)),
                DealState::Mismatched { .. } | DealState::Expired => {
                    assert_eq!(
                        (d.paid, d.refunded, d.proven + d.missed),
                        (0, d.storage_fee, 0)
                    );
                }
                DealState::Active { .. } | DealState::Ended { .. } => {
                    // Periods settle in order, each once: paid + refunded is the sum of the
                    // first proven + missed parts, and paid is that of the proven ones.
                    let settled: u64 = (0..d.proven + d.missed).map(|k| d.part(k)).sum();
                    assert_eq!(d.paid + d.refunded, settled, "deal {id}: settled parts");
                    let share = d.part(0);
                    let last = d.part(d.parts - 1);
                    let p = u64::from(d.proven);
                    assert!(
                        d.paid == p * share || (p > 0 && d.paid == (p - 1) * share + last),
                        "deal {id}: paid {} for {p} proven periods",
                        d.paid
                    );
                    if let DealState::Ended { .. } = d.state {
                        assert_eq!(d.proven + d.missed, d.parts, "deal {id} ended early");
                        assert_eq!(d.escrow, 0);
                    }
                }
            }
        }
        // A period whose host never answered paid nothing: every host that was paid for
        // period q answered it.
        for h in 0..HOSTS {
            let st = s.stats.get(&id(h)).copied().unwrap_or_default();
            let answered = self.answered.iter().filter(|(x, _)| *x == h).count() as u64;
            assert!(
                st.proofs_passed <= answered,
                "host {h}: paid periods it never answered"
            );
        }
    }
}

fn engine_crc(bytes: &[u8]) -> u32 {
    u32::try_from(crc_fast::checksum(
        crc_fast::CrcAlgorithm::Crc32Iscsi,
        bytes,
    ))
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_every_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        for op in ops {
            match op {
                Op::Pay { sender, host, chunks, parts } => {
                    let entries: Vec<ChunkEntry> = (0..chunks)
                        .map(|_| {
                            let n = w.next_chunk;
                            w.next_chunk += 1;
                            let bytes = data(n);
                            let e = ChunkEntry {
                                id: ChunkId::of(&bytes),
                                sealed_bytes: CHUNK,
                                crc32c: engine_crc(&bytes),
                            };
                            w.inbound[usize::from(host)].push((e.id, n));
                            e
                        })
                        .collect();
                    let body = TxBody::UploadPayment {
                        host: id(host),
                        offer: w.next_chunk.to_le_bytes().repeat(4).try_into().unwrap(),
                        offer_expiry_unix_secs: u64::MAX,
                        storage_fee: 10 * u64::from(parts),
                        download_fee: 0,
                        period_blocks: P * u64::from(parts),
                        broker: None,
                        insurance: None,
                        chunks: entries,
                    };
                    let tx = w.tx(HOSTS + sender, body);
                    w.pending.push(tx);
                    w.block();
                }
                Op::Upload { host } => {
                    for (c, n) in std::mem::take(&mut w.inbound[usize::from(host)]) {
                        w.stores[usize::from(host)].insert(c, n);
                    }
                }
                Op::Crash { host, lose } => {
                    w.agents[usize::from(host)] = Agent::new();
                    if lose {
                        let first = w.stores[usize::from(host)].keys().next().copied();
                        if let Some(c) = first {
                            w.stores[usize::from(host)].remove(&c);
                        }
                    }
                }
                Op::Blocks(n) => {
                    for _ in 0..n {
                        w.agents_act();
                        w.block();
                    }
                }
            }
        }
        // Then long enough for every deal to end or expire, the agents acting.
        for _ in 0..(3 * P + 4 * P + 2) {
            w.agents_act();
            w.block();
        }
        for d in w.state.deals.values() {
            prop_assert!(
                !matches!(d.state, DealState::AwaitingCompletion | DealState::Active { .. }),
                "a deal still open: {:?}", d.state
            );
        }
    }
}
