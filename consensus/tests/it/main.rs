//! The ledger, table by table: every transaction kind, every rejection, and properties over
//! random transaction sequences.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use consensus::ledger::{
    apply, apply_tx, host_deposit_min, Block, BlockError, DealState, Genesis, Receipt, State,
    TxError, COMPLAINT_FEE_MIN, EPOCH_BLOCKS, UNBONDING_BLOCKS,
};
use ed25519_consensus::SigningKey;
use proto::tx::{AccountId, Asset, DealId, Role, SignedTx, Tx, TxBody, TxId};
use proto::{ChunkEntry, ChunkId};

const CHAIN: u64 = 7;
/// Accounts 0..4 start with this much of each asset.
const START: u64 = 1_000_000;
/// The reveal secret of the genesis validator, id 7.
const VALIDATOR_SECRET: [u8; 32] = [0x5E; 32];

fn key(i: u8) -> SigningKey {
    SigningKey::from([i + 1; 32])
}

fn id(i: u8) -> AccountId {
    AccountId(key(i).verification_key().to_bytes())
}

struct Chain {
    state: State,
    nonces: [u64; 8],
}

impl Chain {
    fn new() -> Chain {
        let accounts = (0..4).map(|i| (id(i), START, START)).collect();
        let validators = vec![(id(7), 20_000, "v7:26656".to_string())];
        Chain {
            state: State::genesis(&Genesis {
                chain_id: CHAIN,
                params: Default::default(),
                accounts,
                validators,
            }),
            nonces: [0; 8],
        }
    }

    fn tx(&mut self, who: u8, body: TxBody) -> SignedTx {
        let nonce = self.nonces[usize::from(who)];
        Tx {
            chain_id: CHAIN,
            signer: id(who),
            nonce,
            fee: 1,
            body,
        }
        .sign(&key(who))
    }

    /// The next block, built by the genesis validator (id 7) as an honest proposer would.
    fn block(&self, txs: Vec<SignedTx>) -> Block {
        Block::build(
            &self.state,
            id(7),
            &VALIDATOR_SECRET,
            self.state.height * 1000 + 1000,
            txs,
        )
    }

    /// Applies one transaction in its own block and expects success.
    fn ok(&mut self, who: u8, body: TxBody) -> Receipt {
        let tx = self.tx(who, body);
        let (next, mut receipts) =
            apply(&self.state, &self.block(vec![tx])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next.total_supply(), next.genesis_supply);
        self.state = next;
        self.nonces[usize::from(who)] += 1;
        receipts.remove(0)
    }

    /// Applies empty blocks until the chain is at `height` (proof periods close and open
    /// on the way, as on a running chain).
    fn advance_to(&mut self, height: u64) {
        while self.state.height < height {
            let (next, _) =
                apply(&self.state, &self.block(vec![])).unwrap_or_else(|e| panic!("{e}"));
            self.state = next;
        }
    }

    /// Applies one transaction and expects this rejection. `apply_tx` itself must leave the
    /// state exactly as it was (it checks before it writes), which is what lets a block
    /// builder try transactions one by one on a single working state.
    fn err(&mut self, who: u8, body: TxBody) -> TxError {
        let tx = self.tx(who, body);
        let mut working = self.state.clone();
        working.height += 1;
        working.timestamp_ms = self.state.height * 1000 + 1000;
        let untouched = working.clone();
        let direct = apply_tx(&mut working, &tx).expect_err("the transaction must be rejected");
        assert_eq!(
            working, untouched,
            "apply_tx wrote before failing ({direct})"
        );
        match apply(&self.state, &self.block(vec![tx])) {
            Err(BlockError::Tx { error, .. }) => {
                assert_eq!(error, direct);
                error
            }
            other => panic!("expected a transaction error, got {other:?}"),
        }
    }

    fn bal(&self, who: u8) -> (u64, u64) {
        let a = self.state.account(&id(who));
        (a.masp, a.maspc)
    }
}

/// A new offer id each call (each payment cites its own offer).
fn fresh_offer() -> [u8; 16] {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    id
}

/// The sealed bytes of test chunk `i` (the ledger never sees them; storage proofs do).
fn chunk_data(i: u32, bytes: u32) -> Vec<u8> {
    let mut out = vec![0u8; usize::try_from(bytes).unwrap()];
    blake3::Hasher::new()
        .update(&i.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

fn chunks(n: u32, bytes: u32) -> Vec<ChunkEntry> {
    (0..n)
        .map(|i| ChunkEntry {
            id: ChunkId::of(&chunk_data(i, bytes)),
            sealed_bytes: bytes,
            crc32c: 1000 + i,
        })
        .collect()
}

/// Host `host`'s answer to its open challenge: a proof over each sampled leaf.
fn proofs_for(c: &Chain, host: u8) -> TxBody {
    let ch = &c.state.challenges[&id(host)];
    let proofs = ch
        .samples
        .iter()
        .map(|smp| {
            let entry = c.state.deals[&smp.deal].chunks[usize::try_from(smp.chunk).unwrap()];
            let data = chunk_data(smp.chunk, entry.sealed_bytes);
            assert_eq!(ChunkId::of(&data), entry.id);
            proto::proof::prove(&data, smp.leaf).unwrap()
        })
        .collect();
    TxBody::StorageProofs {
        period: ch.period,
        proofs,
    }
}

/// Advances to the first block of the deal's first proof period: its host's challenge is
/// open.
fn to_first_period(c: &mut Chain, deal: DealId) -> u64 {
    let first = c.state.deals[&deal].first_period;
    c.advance_to(first * c.state.params.proof_period_blocks);
    first
}

/// Registers account 1 as a host and opens a deal from account 0 with `n` chunks.
fn with_deal(c: &mut Chain, n: u32) -> DealId {
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 5_000,
            endpoint: "host1:7000".into(),
        },
    );
    let body = TxBody::UploadPayment {
        host: id(1),
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 500,
        download_fee: 30,
        period_blocks: 100,
        broker: None,
        insurance: None,
        chunks: chunks(n, 1 << 20),
    };
    match c.ok(0, body) {
        Receipt::DealOpened { deal } => deal,
        other => panic!("{other:?}"),
    }
}

#[test]
fn transfers_move_coins_and_burn_the_fee() {
    let mut c = Chain::new();
    c.ok(
        0,
        TxBody::Transfer {
            to: id(5),
            asset: Asset::Masp,
            amount: 300,
        },
    );
    c.ok(
        0,
        TxBody::Transfer {
            to: id(1),
            asset: Asset::Maspc,
            amount: 40,
        },
    );
    assert_eq!(c.bal(0), (START - 300, START - 40 - 2));
    assert_eq!(c.bal(5), (300, 0));
    assert_eq!(c.bal(1), (START, START + 40));
    assert_eq!(c.state.burned.maspc, 2);
    assert_eq!(c.state.account(&id(0)).nonce, 2);
}

#[test]
fn every_common_rejection_is_typed_and_changes_nothing() {
    let mut c = Chain::new();
    assert_eq!(
        c.err(
            0,
            TxBody::Transfer {
                to: id(1),
                asset: Asset::Masp,
                amount: START + 1
            }
        ),
        TxError::Overdraft {
            asset: Asset::Masp,
            need: START + 1,
            have: START
        }
    );
    assert_eq!(
        c.err(
            0,
            TxBody::Transfer {
                to: id(1),
                asset: Asset::Masp,
                amount: 0
            }
        ),
        TxError::ZeroAmount
    );
    // The fee itself can overdraw.
    c.ok(
        2,
        TxBody::Transfer {
            to: id(3),
            asset: Asset::Maspc,
            amount: START - 1,
        },
    );
    assert_eq!(
        c.err(2, TxBody::RecordHash { hash: [1; 32] }),
        TxError::Overdraft {
            asset: Asset::Maspc,
            need: 1,
            have: 0
        }
    );
    // An account that never received anything cannot sign.
    assert_eq!(
        c.err(6, TxBody::RecordHash { hash: [1; 32] }),
        TxError::UnknownAccount(id(6))
    );

    let replay = c.tx(0, TxBody::RecordHash { hash: [2; 32] });
    let (next, _) = apply(&c.state, &c.block(vec![replay.clone()])).unwrap();
    c.state = next;
    let again = apply(&c.state, &c.block(vec![replay]));
    assert!(
        matches!(
            again,
            Err(BlockError::Tx {
                error: TxError::BadNonce {
                    expected: 1,
                    found: 0
                },
                ..
            })
        ),
        "{again:?}"
    );

    let wrong_chain = Tx {
        chain_id: CHAIN + 1,
        signer: id(0),
        nonce: 1,
        fee: 1,
        body: TxBody::RecordHash { hash: [3; 32] },
    }
    .sign(&key(0));
    assert!(matches!(
        apply(&c.state, &c.block(vec![wrong_chain])),
        Err(BlockError::Tx {
            error: TxError::WrongChain { .. },
            ..
        })
    ));
    let free = Tx {
        chain_id: CHAIN,
        signer: id(0),
        nonce: 1,
        fee: 0,
        body: TxBody::RecordHash { hash: [3; 32] },
    }
    .sign(&key(0));
    assert!(matches!(
        apply(&c.state, &c.block(vec![free])),
        Err(BlockError::Tx {
            error: TxError::FeeTooLow { .. },
            ..
        })
    ));
}

#[test]
fn blocks_apply_whole_or_not_at_all() {
    let mut c = Chain::new();
    let good = c.tx(
        0,
        TxBody::Transfer {
            to: id(1),
            asset: Asset::Masp,
            amount: 5,
        },
    );
    let bad = c.tx(
        1,
        TxBody::Transfer {
            to: id(0),
            asset: Asset::Masp,
            amount: START * 2,
        },
    );
    let before = c.state.hash();
    let result = apply(&c.state, &c.block(vec![good.clone(), bad]));
    assert!(
        matches!(result, Err(BlockError::Tx { index: 1, .. })),
        "{result:?}"
    );
    assert_eq!(c.state.hash(), before);

    // A forged signature: the signed bytes altered after signing.
    let mut bytes = good.bytes().to_vec();
    let amount_at = bytes.len() - 64 - 8;
    bytes[amount_at] ^= 1;
    let forged = SignedTx::decode(&bytes).unwrap();
    assert!(matches!(
        apply(&c.state, &c.block(vec![good.clone(), forged])),
        Err(BlockError::Signature { index: 1, .. })
    ));

    assert!(matches!(
        apply(
            &c.state,
            &Block {
                height: 5,
                timestamp_ms: 1,
                proposer: id(7),
                reveal: [0; 32],
                commit: [0; 32],
                txs: vec![]
            }
        ),
        Err(BlockError::WrongHeight {
            expected: 1,
            found: 5
        })
    ));
    c.state.timestamp_ms = 10_000;
    assert!(matches!(
        apply(
            &c.state,
            &Block {
                height: 1,
                timestamp_ms: 9_999,
                proposer: id(7),
                reveal: [0; 32],
                commit: [0; 32],
                txs: vec![]
            }
        ),
        Err(BlockError::TimeWentBack { .. })
    ));
}

#[test]
fn the_seed_moves_only_with_committed_reveals_of_validators() {
    let mut c = Chain::new();
    // A proposer's first block commits and reveals nothing.
    let first = c.block(vec![]);
    assert_eq!(first.reveal, [0; 32]);
    let mut revealing = first.clone();
    revealing.reveal = [1; 32];
    assert!(matches!(
        apply(&c.state, &revealing),
        Err(BlockError::Reveal { proposer, .. }) if proposer == id(7)
    ));
    // Only a validator of the height may propose.
    let mut stranger = first.clone();
    stranger.proposer = id(0);
    assert!(matches!(
        apply(&c.state, &stranger),
        Err(BlockError::NotAValidator { proposer }) if proposer == id(0)
    ));
    c.state = apply(&c.state, &first).unwrap().0;
    let commit = c.state.seed_commits[&id(7)];
    assert_eq!(commit.commit, first.commit);
    assert_eq!(commit.next, 0);

    // From then on each block must open the previous commitment: no other value will do,
    // so the proposer cannot pick the seed by picking its reveal.
    let honest = c.block(vec![]);
    assert_eq!(
        honest.reveal,
        consensus::ledger::reveal_share(&VALIDATOR_SECRET, 0)
    );
    assert_eq!(
        consensus::ledger::seed_commitment(&honest.reveal),
        first.commit
    );
    for forged in [
        [0u8; 32],
        consensus::ledger::reveal_share(&VALIDATOR_SECRET, 1),
        [9; 32],
    ] {
        let mut b = honest.clone();
        b.reveal = forged;
        let e = apply(&c.state, &b).unwrap_err();
        assert!(matches!(e, BlockError::Reveal { .. }), "{e}");
        assert!(e.to_string().contains("commitment"), "{e}");
    }
    // The seed does not depend on what the block carries, so grinding transactions or
    // timestamps changes nothing: the same reveal on another body gives the same seed.
    let tx = c.tx(0, TxBody::RecordHash { hash: [4; 32] });
    let mut other_body = honest.clone();
    other_body.txs = vec![tx];
    other_body.timestamp_ms += 777;
    let (a, _) = apply(&c.state, &honest).unwrap();
    let (b, _) = apply(&c.state, &other_body).unwrap();
    assert_eq!(a.seed, b.seed);
    assert_ne!(a.seed, c.state.seed);
    // The commitment may be anything the proposer chooses, but it is fixed before the
    // seed it will move is known; the chain keeps it for the proposer's next block.
    let mut recommitted = honest.clone();
    recommitted.commit = [3; 32];
    let (r, _) = apply(&c.state, &recommitted).unwrap();
    assert_eq!(r.seed, a.seed);
    assert_eq!(r.seed_commits[&id(7)].commit, [3; 32]);
    assert_eq!(r.seed_commits[&id(7)].next, 1);
    assert_ne!(r.hash(), a.hash(), "commitments are part of the state root");
    c.state = a;
    // An honest proposer goes on: reveal 1 opens the commitment of block 2.
    let third = c.block(vec![]);
    assert_eq!(
        third.reveal,
        consensus::ledger::reveal_share(&VALIDATOR_SECRET, 1)
    );
    c.state = apply(&c.state, &third).unwrap().0;
    assert_eq!(c.state.seed_commits[&id(7)].next, 2);
}

#[test]
fn contractor_registry_locks_and_returns_deposits() {
    let mut c = Chain::new();
    let reg = |deposit| TxBody::Register {
        role: Role::Miner,
        deposit,
        endpoint: "10.0.0.1:26656".into(),
    };
    assert_eq!(
        c.err(0, reg(9_999)),
        TxError::DepositTooLow {
            need: 10_000,
            have: 9_999
        }
    );
    assert_eq!(
        c.err(
            0,
            TxBody::Register {
                role: Role::Proxy,
                deposit: 100,
                endpoint: String::new()
            }
        ),
        TxError::BadEndpoint
    );
    c.ok(0, reg(10_000));
    assert_eq!(
        c.err(0, reg(10_000)),
        TxError::AlreadyRegistered(Role::Miner)
    );
    c.ok(
        0,
        TxBody::RaiseDeposit {
            role: Role::Miner,
            amount: 500,
        },
    );
    assert_eq!(c.bal(0).0, START - 10_500);
    assert_eq!(
        c.err(
            0,
            TxBody::RaiseDeposit {
                role: Role::Host,
                amount: 5
            }
        ),
        TxError::NotRegistered(Role::Host)
    );
    assert_eq!(
        c.err(0, TxBody::Withdraw { role: Role::Miner }),
        TxError::NotUnbonding(Role::Miner)
    );
    c.ok(0, TxBody::Unbond { role: Role::Miner });
    let until = c.state.height + UNBONDING_BLOCKS;
    assert_eq!(
        c.err(0, TxBody::Unbond { role: Role::Miner }),
        TxError::Unbonding(Role::Miner)
    );
    assert_eq!(
        c.err(
            0,
            TxBody::RaiseDeposit {
                role: Role::Miner,
                amount: 1
            }
        ),
        TxError::Unbonding(Role::Miner)
    );
    assert_eq!(
        c.err(0, TxBody::Withdraw { role: Role::Miner }),
        TxError::StillUnbonding { until }
    );
    c.state.height = until - 1; // empty blocks pass; the next block is at `until`
    c.ok(0, TxBody::Withdraw { role: Role::Miner });
    assert_eq!(c.bal(0).0, START);
    assert!(!c.state.registrations.contains_key(&(id(0), Role::Miner)));
}

#[test]
fn upload_deal_matches_crcs_and_starts_storage_time() {
    let mut c = Chain::new();
    let deal = with_deal(&mut c, 3);
    assert_eq!(c.bal(0).1, START - 500 - 1);
    assert_eq!(c.state.deals[&deal].escrow, 500);
    let crcs = vec![1000, 1001, 1002];
    assert_eq!(
        c.err(
            2,
            TxBody::UploadCompletion {
                deal,
                crcs: crcs.clone()
            }
        ),
        TxError::NotDealHost
    );
    assert_eq!(
        c.err(
            1,
            TxBody::UploadCompletion {
                deal,
                crcs: vec![1000]
            }
        ),
        TxError::CrcCount {
            expected: 3,
            found: 1
        }
    );
    let height = c.state.height + 1;
    assert_eq!(
        c.ok(
            1,
            TxBody::UploadCompletion {
                deal,
                crcs: crcs.clone()
            }
        ),
        Receipt::DealMatched {
            deal,
            sender: id(0),
            host: id(1),
            start_height: height
        }
    );
    assert_eq!(
        c.state.deals[&deal].state,
        DealState::Active {
            start_height: height
        }
    );
    assert_eq!(
        c.err(1, TxBody::UploadCompletion { deal, crcs }),
        TxError::NotAwaitingCompletion
    );
    assert_eq!(
        c.err(1, TxBody::Unbond { role: Role::Host }),
        TxError::HasOpenDeals(1)
    );
}

#[test]
fn crc_mismatch_reports_the_chunks_to_both_and_refunds() {
    let mut c = Chain::new();
    let deal = with_deal(&mut c, 4);
    let before = c.bal(0).1;
    let receipt = c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 7, 1002, 9],
        },
    );
    assert_eq!(
        receipt,
        Receipt::DealMismatch {
            deal,
            sender: id(0),
            host: id(1),
            chunks: vec![1, 3]
        }
    );
    assert_eq!(c.bal(0).1, before + 500);
    assert_eq!(c.state.deals[&deal].escrow, 0);
    // The failed deal holds no capacity: the host may leave.
    c.ok(1, TxBody::Unbond { role: Role::Host });
}

#[test]
fn deal_terms_and_host_capacity_are_enforced() {
    let mut c = Chain::new();
    let pay = |host, chunks, fee| TxBody::UploadPayment {
        host,
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: fee,
        download_fee: 0,
        period_blocks: 10,
        broker: None,
        insurance: None,
        chunks,
    };
    assert_eq!(
        c.err(0, pay(id(1), chunks(1, 100), 10)),
        TxError::NotAHost(id(1))
    );
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 1_010,
            endpoint: "h:1".into(),
        },
    );
    assert_eq!(c.err(0, pay(id(1), vec![], 10)), TxError::BadDealTerms);
    assert_eq!(
        c.err(0, pay(id(1), chunks(1, 100), 0)),
        TxError::BadDealTerms
    );
    assert_eq!(
        c.err(1, pay(id(1), chunks(1, 100), 10)),
        TxError::NotAHost(id(1))
    );
    // 1 GiB fits a 1,010 MASP deposit; a second GiB needs 1,020.
    c.ok(0, pay(id(1), chunks(1024, 1 << 20), 10));
    assert_eq!(
        c.err(0, pay(id(1), chunks(1, 1), 10)),
        TxError::DepositTooLow {
            need: host_deposit_min((1 << 30) + 1),
            have: 1_010
        }
    );
    c.ok(
        1,
        TxBody::RaiseDeposit {
            role: Role::Host,
            amount: 10,
        },
    );
    c.ok(0, pay(id(1), chunks(1, 1), 10));
    assert_eq!(
        c.err(0, pay(id(1), chunks(1, 1), START)),
        TxError::Overdraft {
            asset: Asset::Maspc,
            need: START,
            // two storage fees, their two transaction fees, and this transaction's own fee
            have: START - 10 - 10 - 2 - 1
        }
    );
}

#[test]
fn a_download_payment_is_held_until_the_host_claims_it_or_comes_back_at_its_deadline() {
    let mut c = Chain::new();
    let deal = with_deal(&mut c, 2);
    let pay = TxBody::DownloadPayment {
        deal,
        fee: 30,
        host_part: 5,
        exchange: Some(id(3)),
        exchange_part: 2,
    };
    assert_eq!(c.err(2, pay.clone()), TxError::DealNotActive);
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 1001],
        },
    );
    let bals = |c: &Chain| (c.bal(0).1, c.bal(1).1, c.bal(3).1, c.bal(2).1);
    let (s, h, x, r) = bals(&c);
    let Receipt::DownloadPaid { payment, deadline } = c.ok(2, pay) else {
        panic!("a download payment is held")
    };
    assert_eq!(
        deadline,
        c.state.height + c.state.params.completion_timeout_blocks
    );
    // Held by the ledger: it left the receiver and reached nobody yet.
    assert_eq!(bals(&c), (s, h, x, r - 37 - 1));
    let conserved = |c: &Chain| {
        assert_eq!(c.state.total_supply(), c.state.genesis_supply);
    };
    conserved(&c);
    // Only the deal's host claims it, once; the claim pays the three parts.
    let claim = TxBody::DownloadClaim { payment };
    assert_eq!(c.err(0, claim.clone()), TxError::NotDealHost);
    c.ok(1, claim.clone());
    assert_eq!(bals(&c), (s + 30, h + 5 - 1, x + 2, r - 38));
    assert_eq!(c.err(1, claim), TxError::AlreadyClaimed);
    let d = &c.state.deals[&deal];
    assert_eq!((d.downloads, d.download_income), (1, 30));
    conserved(&c);

    // The sender alone changes its fee; payments made later pay the new one.
    let fee = |f| TxBody::SetDownloadFee {
        deal,
        download_fee: f,
    };
    assert_eq!(c.err(1, fee(7)), TxError::NotDealSender);
    c.ok(0, fee(7));
    // A payment made on the old quote is refused, not charged the new fee.
    assert_eq!(
        c.err(
            3,
            TxBody::DownloadPayment {
                deal,
                fee: 30,
                host_part: 5,
                exchange: None,
                exchange_part: 0,
            }
        ),
        TxError::FeeChanged { agreed: 30, now: 7 }
    );
    let Receipt::DownloadPaid {
        payment: unclaimed,
        deadline: late,
    } = c.ok(
        3,
        TxBody::DownloadPayment {
            deal,
            fee: 7,
            host_part: 5,
            exchange: None,
            exchange_part: 0,
        },
    )
    else {
        panic!("held")
    };
    assert_eq!(c.state.downloads[&unclaimed].fee, 7);
    // A free download is no payment.
    c.ok(0, fee(0));
    assert_eq!(
        c.err(
            2,
            TxBody::DownloadPayment {
                deal,
                fee: 0,
                host_part: 0,
                exchange: None,
                exchange_part: 0
            }
        ),
        TxError::ZeroAmount
    );
    // Unclaimed, it stays held through its deadline's block and comes back whole after.
    let r3 = c.bal(3).1;
    c.advance_to(late - 1);
    assert_eq!(c.bal(3).1, r3);
    assert!(c.state.downloads.contains_key(&unclaimed));
    c.advance_to(late);
    assert_eq!(c.bal(3).1, r3 + 12);
    assert!(
        c.state.downloads.is_empty(),
        "the claimed one is dropped at its deadline too"
    );
    assert_eq!(
        c.err(1, TxBody::DownloadClaim { payment: unclaimed }),
        TxError::UnknownDownload(unclaimed)
    );
    assert_eq!(c.state.deals[&deal].downloads, 1);
    conserved(&c);
    assert_eq!(
        c.err(
            2,
            TxBody::DownloadPayment {
                deal: TxId([9; 32]),
                fee: 0,
                host_part: 1,
                exchange: None,
                exchange_part: 0
            }
        ),
        TxError::UnknownDeal(TxId([9; 32]))
    );
    assert_eq!(
        c.err(
            0,
            TxBody::SetDownloadFee {
                deal: TxId([9; 32]),
                download_fee: 1
            }
        ),
        TxError::UnknownDeal(TxId([9; 32]))
    );
}

#[test]
fn proof_of_existence_keeps_the_first_record() {
    let mut c = Chain::new();
    assert_eq!(
        c.ok(2, TxBody::RecordHash { hash: [4; 32] }),
        Receipt::HashRecorded { hash: [4; 32] }
    );
    let rec = c.state.hashes[&[4; 32]];
    assert_eq!((rec.height, rec.timestamp_ms, rec.by), (1, 1000, id(2)));
    assert_eq!(
        c.err(3, TxBody::RecordHash { hash: [4; 32] }),
        TxError::AlreadyRecorded { height: 1 }
    );
}

#[test]
fn complaints_are_for_parties_and_cost_a_burned_fee() {
    let mut c = Chain::new();
    let deal = with_deal(&mut c, 1);
    assert_eq!(
        c.err(
            3,
            TxBody::Complaint {
                deal,
                fee: COMPLAINT_FEE_MIN
            }
        ),
        TxError::NotDealParty
    );
    assert_eq!(
        c.err(0, TxBody::Complaint { deal, fee: 1 }),
        TxError::ComplaintFeeTooLow {
            min: COMPLAINT_FEE_MIN,
            found: 1
        }
    );
    let burned = c.state.burned.maspc;
    c.ok(
        0,
        TxBody::Complaint {
            deal,
            fee: COMPLAINT_FEE_MIN,
        },
    );
    assert_eq!(c.state.burned.maspc, burned + 1 + COMPLAINT_FEE_MIN);
    assert_eq!(
        (c.state.complaints[0].by, c.state.complaints[0].against),
        (id(0), id(1))
    );
}

#[test]
fn unanswered_deals_expire_and_finished_deals_pay_the_host() {
    use consensus::ledger::COMPLETION_TIMEOUT_BLOCKS;
    let mut c = Chain::new();
    let waiting = with_deal(&mut c, 1);
    let opened = c.state.height;
    let sender_before = c.bal(0).1;
    c.state.height = opened + COMPLETION_TIMEOUT_BLOCKS - 1;
    c.ok(2, TxBody::RecordHash { hash: [8; 32] });
    assert_eq!(c.state.deals[&waiting].state, DealState::Expired);
    assert_eq!(
        c.bal(0).1,
        sender_before + 500,
        "the escrow went back to the sender"
    );
    assert_eq!(
        c.err(
            1,
            TxBody::UploadCompletion {
                deal: waiting,
                crcs: vec![1000]
            }
        ),
        TxError::NotAwaitingCompletion
    );

    let body = TxBody::UploadPayment {
        host: id(1),
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 700,
        download_fee: 0,
        period_blocks: 50,
        broker: None,
        insurance: None,
        chunks: chunks(2, 4096),
    };
    let Receipt::DealOpened { deal } = c.ok(0, body) else {
        panic!("no deal")
    };
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 1001],
        },
    );
    let start = c.state.height;
    let host_before = c.bal(1).1;
    assert_eq!(
        c.err(1, TxBody::Unbond { role: Role::Host }),
        TxError::HasOpenDeals(1)
    );
    // One proof period (50 blocks, covered from the next period on): the answered
    // challenge pays the whole fee when the period closes.
    assert!(start < c.state.deals[&deal].first_period * 100);
    let first = to_first_period(&mut c, deal);
    let proof = proofs_for(&c, 1);
    c.ok(1, proof);
    c.advance_to((first + 1) * 100 - 1);
    assert_eq!(
        c.state.deals[&deal].state,
        DealState::Ended {
            end_height: (first + 1) * 100 - 1
        }
    );
    assert_eq!(
        c.bal(1).1,
        host_before + 700 - 1,
        "the escrow went to the host for its proof (less the proof's fee)"
    );
    assert_eq!(c.state.deals[&deal].escrow, 0);
    c.ok(1, TxBody::Unbond { role: Role::Host });
    assert!(c.state.deadlines.is_empty());
}

#[test]
fn a_larger_deal_gets_a_longer_completion_window() {
    use consensus::ledger::{
        completion_deadline, COMPLETION_BYTES_PER_BLOCK, COMPLETION_TIMEOUT_BLOCKS,
    };
    let mut c = Chain::new();
    with_deal(&mut c, 1);
    // 8 chunks of 64 MiB (ids never checked before a proof): 16 blocks more than a small deal.
    let big: Vec<ChunkEntry> = (0..8u8)
        .map(|i| ChunkEntry {
            id: ChunkId([i; 32]),
            sealed_bytes: proto::CHUNK_BYTES_MAX,
            crc32c: u32::from(i),
        })
        .collect();
    assert_eq!(
        8 * u64::from(proto::CHUNK_BYTES_MAX) / COMPLETION_BYTES_PER_BLOCK,
        16
    );
    let body = TxBody::UploadPayment {
        host: id(1),
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 100,
        download_fee: 0,
        period_blocks: 100,
        broker: None,
        insurance: None,
        chunks: big.clone(),
    };
    let Receipt::DealOpened { deal } = c.ok(0, body) else {
        panic!("no deal")
    };
    let opened = c.state.height;
    let deadline = completion_deadline(&c.state.params, opened, &big).unwrap();
    assert_eq!(deadline, opened + COMPLETION_TIMEOUT_BLOCKS + 16);
    // Still open past a small deal's deadline (which has expired the first deal), and
    // expired at the end of its own deadline's block.
    c.advance_to(deadline - 1);
    assert_eq!(c.state.deals[&deal].state, DealState::AwaitingCompletion);
    c.advance_to(deadline);
    assert_eq!(c.state.deals[&deal].state, DealState::Expired);
    assert_eq!(c.state.deals[&deal].refunded, 100);
}

#[test]
fn ratings_follow_the_chain_metrics() {
    use consensus::ledger::{rating, Stats};
    let fresh = Stats {
        first_seen_height: 0,
        ..Stats::default()
    };
    let cases = [
        ("new contractor", fresh, 0, 500),
        ("old, idle", fresh, 1_000_000, 650),
        (
            "busy host",
            Stats {
                deals_taken: 30,
                deals_ended: 20,
                ..fresh
            },
            0,
            750,
        ),
        (
            "flaky host",
            Stats {
                deals_taken: 10,
                deals_expired: 3,
                mismatches: 2,
                ..fresh
            },
            10_000,
            500 + 10 + 20 - 150 - 40,
        ),
        (
            "hopeless",
            Stats {
                complaints_against: 100,
                ..fresh
            },
            0,
            0,
        ),
    ];
    for (name, stats, height, want) in cases {
        assert_eq!(rating(&stats, height), want, "{name}");
    }

    // The ledger keeps the metrics: a served deal, an expired one, a mismatch, a complaint.
    let mut c = Chain::new();
    let served = with_deal(&mut c, 1);
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal: served,
            crcs: vec![1000],
        },
    );
    let first = to_first_period(&mut c, served);
    let proof = proofs_for(&c, 1);
    c.ok(1, proof);
    let pay = |period| TxBody::UploadPayment {
        host: id(1),
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 5,
        download_fee: 0,
        period_blocks: period,
        broker: None,
        insurance: None,
        chunks: chunks(1, 10),
    };
    let Receipt::DealOpened { deal: bad } = c.ok(0, pay(10)) else {
        panic!()
    };
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal: bad,
            crcs: vec![1],
        },
    );
    c.ok(0, pay(10));
    c.ok(
        0,
        TxBody::Complaint {
            deal: served,
            fee: COMPLAINT_FEE_MIN,
        },
    );
    c.advance_to((first + 2) * 100);
    c.ok(2, TxBody::RecordHash { hash: [5; 32] });
    let host = c.state.stats[&id(1)];
    assert_eq!(
        (
            host.deals_taken,
            host.deals_ended,
            host.deals_expired,
            host.mismatches,
            host.complaints_against
        ),
        (1, 1, 1, 1, 1)
    );
    assert_eq!(c.state.stats[&id(0)].complaints_filed, 1);
    assert_eq!(
        (host.proofs_passed, host.proofs_missed, host.slashings),
        (1, 0, 0)
    );
    assert_eq!(
        rating(&host, c.state.height),
        500 + 2 + 10 + 1 - 50 - 20 - 30
    );
}

#[test]
fn storage_proofs_pay_per_period_and_missed_ones_slash() {
    use consensus::ledger::{CHALLENGE_SAMPLES, PROOF_PERIOD_BLOCKS as P, SLASH_PER_MISSED_PROOF};
    let mut c = Chain::new();
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 5_000,
            endpoint: "h:1".into(),
        },
    );
    // 250 blocks: three proof periods paying 100, 100 and 101.
    let body = TxBody::UploadPayment {
        host: id(1),
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 301,
        download_fee: 0,
        period_blocks: 250,
        broker: None,
        insurance: None,
        chunks: chunks(3, 5000),
    };
    let Receipt::DealOpened { deal } = c.ok(0, body) else {
        panic!()
    };
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 1001, 1002],
        },
    );
    assert_eq!(c.state.deals[&deal].parts, 3);
    assert!(
        c.state.challenges.is_empty(),
        "covered from the next period"
    );
    let first = to_first_period(&mut c, deal);
    let ch = c.state.challenges[&id(1)].clone();
    assert_eq!(
        (ch.period, ch.due, ch.deals.clone()),
        (first, (first + 1) * P - 1, vec![deal])
    );
    assert_eq!(ch.samples.len(), CHALLENGE_SAMPLES);
    let good = proofs_for(&c, 1);

    // Refusals: a host without a challenge, the wrong period, a proof that does not
    // verify, too few proofs.
    assert_eq!(
        c.err(2, good.clone()),
        TxError::NoOpenChallenge { period: first }
    );
    let TxBody::StorageProofs { proofs, .. } = &good else {
        unreachable!()
    };
    let wrong_period = TxBody::StorageProofs {
        period: first + 1,
        proofs: proofs.clone(),
    };
    assert_eq!(
        c.err(1, wrong_period),
        TxError::NoOpenChallenge { period: first + 1 }
    );
    let mut forged = proofs.clone();
    let last = forged[3].len() - 1;
    forged[3][last] ^= 1;
    let TxError::BadProof(why) = c.err(
        1,
        TxBody::StorageProofs {
            period: first,
            proofs: forged,
        },
    ) else {
        panic!("a forged proof must be refused as such")
    };
    assert!(why.starts_with("sample 3:"), "{why}");
    assert!(matches!(
        c.err(
            1,
            TxBody::StorageProofs {
                period: first,
                proofs: proofs[1..].to_vec()
            }
        ),
        TxError::BadProof(_)
    ));

    let host_maspc = c.bal(1).1;
    assert_eq!(
        c.ok(1, good.clone()),
        Receipt::ProofsAccepted {
            host: id(1),
            period: first,
            deals: 1
        }
    );
    assert_eq!(c.err(1, good), TxError::NoOpenChallenge { period: first });
    // Paid when the period closes.
    c.advance_to((first + 1) * P - 2);
    assert_eq!(c.bal(1).1, host_maspc - 1);
    c.advance_to((first + 1) * P - 1);
    assert_eq!(c.bal(1).1, host_maspc - 1 + 100);

    // Period 2 goes unanswered: its part goes back to the sender, with a slice of deposit.
    let (sender_masp, sender_maspc) = c.bal(0);
    assert_eq!(c.state.challenges[&id(1)].period, first + 1);
    c.advance_to((first + 2) * P - 1);
    assert_eq!(
        c.bal(0),
        (sender_masp + SLASH_PER_MISSED_PROOF, sender_maspc + 100)
    );
    assert_eq!(
        c.state.registrations[&(id(1), Role::Host)].deposit,
        5_000 - SLASH_PER_MISSED_PROOF
    );
    let st = c.state.stats[&id(1)];
    assert_eq!(
        (st.proofs_passed, st.proofs_missed, st.slashings),
        (1, 1, 1)
    );

    // The last period is answered: it pays the remainder, and the deal ends.
    c.advance_to((first + 2) * P);
    let last = proofs_for(&c, 1);
    c.ok(1, last);
    c.advance_to((first + 3) * P - 1);
    let d = &c.state.deals[&deal];
    assert_eq!(
        (
            d.escrow,
            d.paid,
            d.refunded,
            d.proven,
            d.missed,
            d.state.clone()
        ),
        (
            0,
            201,
            100,
            2,
            1,
            DealState::Ended {
                end_height: (first + 3) * P - 1
            }
        )
    );
    assert_eq!(c.state.stats[&id(1)].deals_ended, 1);
    assert!(
        c.state.challenges.is_empty(),
        "no active deal: no challenge"
    );
}

#[test]
fn an_exchanges_commission_is_paid_from_each_part_the_host_earns() {
    use consensus::ledger::PROOF_PERIOD_BLOCKS as P;
    use proto::tx::Broker;
    let mut c = Chain::new();
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 5_000,
            endpoint: "h:1".into(),
        },
    );
    c.ok(
        2,
        TxBody::Register {
            role: Role::Exchange,
            deposit: 1_000,
            endpoint: "x:1".into(),
        },
    );
    let pay = |exchange: u8, commission_permille| TxBody::UploadPayment {
        host: id(1),
        offer: fresh_offer(),
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 301,
        download_fee: 0,
        period_blocks: 250,
        broker: Some(Broker {
            exchange: id(exchange),
            commission_permille,
        }),
        insurance: None,
        chunks: chunks(3, 5000),
    };
    // Only a bonded exchange can be named.
    assert_eq!(c.err(0, pay(3, 50)), TxError::NotAnExchange(id(3)));
    let Receipt::DealOpened { deal } = c.ok(0, pay(2, 50)) else {
        panic!()
    };
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 1001, 1002],
        },
    );
    let first = to_first_period(&mut c, deal);
    let (host0, exchange0) = (c.bal(1).1, c.bal(2).1);
    // Period 1 proven: 100, of which 5% to the exchange (the host paid 1 for its proof).
    let proof = proofs_for(&c, 1);
    c.ok(1, proof);
    c.advance_to((first + 1) * P - 1);
    assert_eq!((c.bal(1).1, c.bal(2).1), (host0 - 1 + 95, exchange0 + 5));
    // Period 2 missed: the part goes back to the sender whole; the exchange gets nothing.
    c.advance_to((first + 2) * P - 1);
    assert_eq!(c.bal(2).1, exchange0 + 5);
    // Period 3 proven: 101, commission rounded down (5), the host keeps the rest.
    c.advance_to((first + 2) * P);
    let proof = proofs_for(&c, 1);
    c.ok(1, proof);
    c.advance_to((first + 3) * P - 1);
    assert_eq!(
        (c.bal(1).1, c.bal(2).1),
        (host0 - 2 + 95 + 96, exchange0 + 10)
    );
    let d = &c.state.deals[&deal];
    assert_eq!(
        (d.paid, d.commission_paid, d.refunded, d.escrow),
        (191, 10, 100, 0)
    );
    assert!(matches!(d.state, DealState::Ended { .. }));
    // An exchange that is leaving takes no new deals.
    c.ok(
        2,
        TxBody::Unbond {
            role: Role::Exchange,
        },
    );
    assert_eq!(c.err(0, pay(2, 50)), TxError::NotAnExchange(id(2)));
}

#[test]
fn one_challenge_covers_every_deal_of_a_host_and_samples_across_them() {
    use consensus::ledger::PROOF_PERIOD_BLOCKS as P;
    let mut c = Chain::new();
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 50_000,
            endpoint: "h:1".into(),
        },
    );
    // Five deals of 40 chunks each; one challenge per period samples over all 200 chunks.
    let mut deals = Vec::new();
    for _ in 0..5 {
        let Receipt::DealOpened { deal } = c.ok(
            0,
            TxBody::UploadPayment {
                host: id(1),
                offer: fresh_offer(),
                offer_expiry_unix_secs: u64::MAX,
                storage_fee: 1000,
                download_fee: 0,
                period_blocks: 10 * P,
                broker: None,
                insurance: None,
                chunks: chunks(40, 4096),
            },
        ) else {
            panic!()
        };
        c.ok(
            1,
            TxBody::UploadCompletion {
                deal,
                crcs: (1000..1040).collect(),
            },
        );
        deals.push(deal);
    }
    let first = to_first_period(&mut c, deals[0]);
    let mut seen = std::collections::BTreeSet::new();
    for period in first..first + 6 {
        c.advance_to(period * P);
        let ch = &c.state.challenges[&id(1)];
        assert_eq!(ch.deals.len(), 5, "one challenge for all five deals");
        seen.extend(ch.samples.iter().map(|s| s.deal));
        let proof = proofs_for(&c, 1);
        let TxBody::StorageProofs { proofs, .. } = &proof else {
            unreachable!()
        };
        let bytes: usize = proofs.iter().map(Vec::len).sum();
        assert!(bytes < 16 * 5120, "one transaction of {bytes} proof bytes");
        c.ok(1, proof);
    }
    c.advance_to((first + 6) * P - 1);
    assert_eq!(
        seen.len(),
        5,
        "over six periods the samples reached every deal"
    );
    for d in &deals {
        assert_eq!((c.state.deals[d].proven, c.state.deals[d].paid), (6, 600));
    }
}

#[test]
fn an_exchange_part_needs_an_exchange() {
    let mut c = Chain::new();
    let deal = with_deal(&mut c, 1);
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000],
        },
    );
    let body = TxBody::DownloadPayment {
        deal,
        fee: 30,
        host_part: 0,
        exchange: None,
        exchange_part: 1000,
    };
    assert_eq!(c.err(2, body), TxError::ExchangePartWithoutExchange);
}

#[test]
fn the_last_validator_cannot_leave_the_set_empty() {
    let mut c = Chain::new();
    c.state.height = EPOCH_BLOCKS - 1;
    // Account 7 is the only validator; give it fees to pay with, then unbond it.
    c.ok(
        0,
        TxBody::Transfer {
            to: id(7),
            asset: Asset::Maspc,
            amount: 10,
        },
    );
    c.ok(7, TxBody::Unbond { role: Role::Miner });
    c.state.height = 2 * EPOCH_BLOCKS - 1;
    c.ok(2, TxBody::RecordHash { hash: [3; 32] });
    let set = c.state.validators_for(c.state.height + 1).unwrap();
    assert_eq!(set.get(&id(7)), Some(&20_000));
}

#[test]
fn validator_set_follows_miner_stake_at_epoch_boundaries() {
    let mut c = Chain::new();
    let set = |c: &Chain| c.state.validators_for(c.state.height + 1).unwrap().clone();
    assert_eq!(
        set(&c).into_iter().collect::<Vec<_>>(),
        vec![(id(7), 20_000)]
    );
    assert_eq!(c.state.genesis_supply.masp, 4 * START + 20_000);
    c.ok(
        0,
        TxBody::Register {
            role: Role::Miner,
            deposit: 30_000,
            endpoint: "m0:26656".into(),
        },
    );
    assert!(
        !set(&c).contains_key(&id(0)),
        "stake counts only from the next epoch"
    );
    c.state.height = EPOCH_BLOCKS - 1;
    c.ok(2, TxBody::RecordHash { hash: [0; 32] });
    assert_eq!(set(&c).get(&id(0)), Some(&30_000));
    c.ok(
        0,
        TxBody::RaiseDeposit {
            role: Role::Miner,
            amount: 5_000,
        },
    );
    c.ok(0, TxBody::Unbond { role: Role::Miner });
    assert_eq!(
        set(&c).get(&id(0)),
        Some(&30_000),
        "unchanged inside the epoch"
    );
    c.state.height = 2 * EPOCH_BLOCKS - 1;
    c.ok(2, TxBody::RecordHash { hash: [1; 32] });
    assert!(
        !set(&c).contains_key(&id(0)),
        "an unbonding miner leaves at the boundary"
    );
    assert!(c.state.validators_for(c.state.height + 2).is_none());
}

#[cfg(feature = "node")]
mod node;
#[cfg(feature = "node")]
mod sim;

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Transfer {
            from: u8,
            to: u8,
            masp: bool,
            amount: u64,
        },
        Record {
            from: u8,
            hash: u8,
        },
        Replay,
        SkipNonce {
            from: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..5, 0u8..6, any::<bool>(), 0u64..(START / 2)).prop_map(
                |(from, to, masp, amount)| Op::Transfer {
                    from,
                    to,
                    masp,
                    amount
                }
            ),
            (0u8..5, 0u8..4).prop_map(|(from, hash)| Op::Record { from, hash }),
            Just(Op::Replay),
            (0u8..4).prop_map(|from| Op::SkipNonce { from }),
        ]
    }

    /// Applies each op as its own block; returns the chain and the accepted blocks.
    fn run(ops: &[Op]) -> (Chain, Vec<Block>) {
        let mut c = Chain::new();
        let mut accepted: Vec<Block> = Vec::new();
        let mut last: Option<SignedTx> = None;
        for op in ops {
            let tx = match op {
                Op::Transfer {
                    from,
                    to,
                    masp,
                    amount,
                } => {
                    let asset = if *masp { Asset::Masp } else { Asset::Maspc };
                    c.tx(
                        *from,
                        TxBody::Transfer {
                            to: id(*to),
                            asset,
                            amount: *amount,
                        },
                    )
                }
                Op::Record { from, hash } => c.tx(*from, TxBody::RecordHash { hash: [*hash; 32] }),
                Op::Replay => match &last {
                    Some(tx) => tx.clone(),
                    None => continue,
                },
                Op::SkipNonce { from } => {
                    let nonce = c.nonces[usize::from(*from)] + 1;
                    Tx {
                        chain_id: CHAIN,
                        signer: id(*from),
                        nonce,
                        fee: 1,
                        body: TxBody::RecordHash { hash: [99; 32] },
                    }
                    .sign(&key(*from))
                }
            };
            let block = c.block(vec![tx.clone()]);
            let before = c.state.hash();
            match apply(&c.state, &block) {
                Ok((next, _)) => {
                    assert!(
                        !matches!(op, Op::Replay | Op::SkipNonce { .. }),
                        "{op:?} was accepted"
                    );
                    c.nonces[signer_index(&tx)] += 1;
                    c.state = next;
                    accepted.push(block);
                    last = Some(tx);
                }
                Err(_) => assert_eq!(c.state.hash(), before),
            }
            assert_eq!(
                c.state.total_supply(),
                c.state.genesis_supply,
                "supply after {op:?}"
            );
        }
        (c, accepted)
    }

    fn signer_index(tx: &SignedTx) -> usize {
        (0..8)
            .find(|&i| id(i).0 == tx.tx().signer.0)
            .map(usize::from)
            .expect("a test key")
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn supply_is_conserved_and_replays_refused(ops in proptest::collection::vec(op(), 1..60)) {
            let (c, blocks) = run(&ops);
            // The same blocks give the same state hash from genesis, every time.
            let mut again = Chain::new().state;
            for b in &blocks {
                again = apply(&again, b).unwrap().0;
            }
            prop_assert_eq!(again.hash(), c.state.hash());
            prop_assert_eq!(again, c.state);
        }
    }
}

mod mempool {
    use super::*;
    use consensus::mempool::{Mempool, MempoolError, MempoolLimits};

    fn transfer(who: u8, nonce: u64, fee: u64, amount: u64) -> SignedTx {
        let body = TxBody::Transfer {
            to: id(5),
            asset: Asset::Maspc,
            amount,
        };
        Tx {
            chain_id: CHAIN,
            signer: id(who),
            nonce,
            fee,
            body,
        }
        .sign(&key(who))
    }

    #[test]
    fn admission_refuses_what_can_never_apply() {
        let c = Chain::new();
        let mut pool = Mempool::new(MempoolLimits {
            max_nonce_gap: 3,
            ..MempoolLimits::default()
        });
        let tx = transfer(0, 0, 1, 5);
        pool.insert(tx.clone(), &c.state).unwrap();
        assert_eq!(pool.insert(tx, &c.state), Err(MempoolError::Duplicate));
        assert_eq!(
            pool.insert(transfer(0, 4, 1, 5), &c.state),
            Err(MempoolError::NonceGap { next: 0, nonce: 4 })
        );
        assert_eq!(
            pool.insert(transfer(0, 0, 1, 6), &c.state),
            Err(MempoolError::NonceTaken)
        );
        let free = Tx {
            chain_id: CHAIN,
            signer: id(1),
            nonce: 0,
            fee: 0,
            body: TxBody::RecordHash { hash: [1; 32] },
        }
        .sign(&key(1));
        assert!(matches!(
            pool.insert(free, &c.state),
            Err(MempoolError::FeeTooLow { .. })
        ));
        let other_chain = Tx {
            chain_id: 99,
            signer: id(1),
            nonce: 0,
            fee: 1,
            body: TxBody::RecordHash { hash: [1; 32] },
        }
        .sign(&key(1));
        assert!(matches!(
            pool.insert(other_chain, &c.state),
            Err(MempoolError::WrongChain { .. })
        ));
        let good = transfer(1, 0, 1, 5);
        let mut bytes = good.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(
            pool.insert(SignedTx::decode(&bytes).unwrap(), &c.state),
            Err(MempoolError::Signature(_))
        ));
        // A higher fee replaces the waiting transaction with the same nonce.
        pool.insert(transfer(0, 0, 9, 6), &c.state).unwrap();
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn accounts_that_cannot_pay_are_refused_and_pruned() {
        let mut c = Chain::new();
        let mut pool = Mempool::new(MempoolLimits::default());
        // A key the chain has never seen: no balance, no admission.
        let stranger = Tx {
            chain_id: CHAIN,
            signer: id(6),
            nonce: 0,
            fee: 1_000_000,
            body: TxBody::RecordHash { hash: [1; 32] },
        }
        .sign(&key(6));
        assert_eq!(
            pool.insert(stranger, &c.state),
            Err(MempoolError::UnknownAccount)
        );
        // Fees of everything waiting must fit the balance.
        pool.insert(transfer(0, 0, 100, 1), &c.state).unwrap();
        pool.insert(transfer(0, 1, 600_000, 1), &c.state).unwrap();
        let over = START - 600_100 + 1;
        assert_eq!(
            pool.insert(transfer(0, 2, over, 1), &c.state),
            Err(MempoolError::CannotPayFees { balance: START })
        );
        // Once the balance shrinks, the tail it no longer covers is pruned.
        c.ok(
            0,
            TxBody::Transfer {
                to: id(1),
                asset: Asset::Maspc,
                amount: START / 2,
            },
        );
        pool.prune(&c.state);
        assert_eq!(
            pool.len(),
            0,
            "nonce 0 was used by the block; nonce 1's fee no longer fits"
        );
    }

    #[test]
    fn a_refused_replacement_changes_nothing() {
        let c = Chain::new();
        let first = transfer(0, 0, 1, 1);
        let limits = MempoolLimits {
            max_bytes: first.bytes().len() + 1,
            ..MempoolLimits::default()
        };
        let mut pool = Mempool::new(limits);
        pool.insert(first, &c.state).unwrap();
        // A bigger replacement (an upload payment) does not fit, and there is nothing to evict.
        let bigger = Tx {
            chain_id: CHAIN,
            signer: id(0),
            nonce: 0,
            fee: 5,
            body: TxBody::RecordHash { hash: [2; 32] },
        };
        let bigger = Tx {
            body: TxBody::Register {
                role: Role::Proxy,
                deposit: 100,
                endpoint: "x".repeat(200),
            },
            ..bigger
        }
        .sign(&key(0));
        assert_eq!(pool.insert(bigger, &c.state), Err(MempoolError::Full));
        assert_eq!(pool.len(), 1);
        assert_eq!(
            pool.build(&c.state, 1, 1000, 10, 1 << 20).len(),
            1,
            "the original is still there"
        );
    }

    #[test]
    fn a_full_pool_evicts_the_cheapest_tail_only_for_a_better_rate() {
        let c = Chain::new();
        let mut pool = Mempool::new(MempoolLimits {
            max_txs: 3,
            ..MempoolLimits::default()
        });
        pool.insert(transfer(0, 0, 5, 1), &c.state).unwrap();
        pool.insert(transfer(0, 1, 1, 1), &c.state).unwrap();
        pool.insert(transfer(1, 0, 3, 1), &c.state).unwrap();
        assert_eq!(
            pool.insert(transfer(2, 0, 1, 1), &c.state),
            Err(MempoolError::Full)
        );
        pool.insert(transfer(2, 0, 4, 1), &c.state).unwrap();
        assert_eq!(pool.len(), 3);
        // Account 0's tail (nonce 1, fee 1) went, its head stayed.
        let built = pool.build(&c.state, 1, 1000, 10, 1 << 20);
        let fees: Vec<u64> = built.iter().map(|t| t.tx().fee).collect();
        assert_eq!(fees, [5, 4, 3]);
    }

    #[test]
    fn built_blocks_apply_and_respect_nonces_fees_and_limits() {
        let mut c = Chain::new();
        let mut pool = Mempool::new(MempoolLimits::default());
        // Account 0: three in a row, fee 2. Account 1: fee 7, then one that overdraws, then
        // one after it (stranded by the refusal). Account 2: a gap (nonce 1 without 0).
        for n in 0..3 {
            pool.insert(transfer(0, n, 2, 10), &c.state).unwrap();
        }
        pool.insert(transfer(1, 0, 7, 10), &c.state).unwrap();
        pool.insert(transfer(1, 1, 7, START * 2), &c.state).unwrap();
        pool.insert(transfer(1, 2, 7, 10), &c.state).unwrap();
        pool.insert(transfer(2, 1, 50, 10), &c.state).unwrap();
        let built = pool.build(&c.state, 1, 1000, 100, 1 << 20);
        let picked: Vec<(AccountId, u64)> = built
            .iter()
            .map(|t| (t.tx().signer, t.tx().nonce))
            .collect();
        assert_eq!(picked, [(id(1), 0), (id(0), 0), (id(0), 1), (id(0), 2)]);
        let (next, _) = apply(
            &c.state,
            &Block::build(&c.state, id(7), &VALIDATOR_SECRET, 1000, built),
        )
        .unwrap();
        c.state = next;
        pool.prune(&c.state);
        assert_eq!(
            pool.len(),
            2,
            "the refused transaction is dropped; the one it strands and account 2's wait"
        );
        assert_eq!(
            pool.build(&c.state, 2, 2000, 1, 1 << 20).len(),
            0,
            "account 1's next one overdraws; account 2 still has a gap"
        );
        let limited = {
            let mut p = Mempool::new(MempoolLimits::default());
            for n in 0..5 {
                p.insert(transfer(3, n, 1, 1), &c.state).unwrap();
            }
            p.build(&c.state, 2, 2000, 2, 1 << 20).len()
        };
        assert_eq!(limited, 2);
    }
}

#[test]
fn equivocation_evidence_slashes_a_validator_once_and_bad_evidence_is_refused() {
    use proto::block::{BlockId, SignedVote, VoteKind};
    let vote = |who: u8, chain: u64, round: i64, value: Option<BlockId>| {
        let mut v = SignedVote {
            kind: VoteKind::Prevote,
            height: 1,
            round,
            value,
            validator: id(who),
            signature: [0; 64],
        };
        v.signature = key(who).sign(&v.sign_bytes(chain)).to_bytes();
        v
    };
    let x = Some(BlockId([1; 32]));
    let y = Some(BlockId([2; 32]));
    let mut c = Chain::new();
    let deposit = c.state.registrations[&(id(7), Role::Miner)].deposit;
    let ev = |a: SignedVote, b: SignedVote| TxBody::Equivocation {
        a: Box::new(a),
        b: Box::new(b),
    };

    // What is not evidence changes nothing.
    assert!(matches!(
        c.err(0, ev(vote(7, CHAIN, 0, x), vote(7, CHAIN, 0, x))),
        TxError::BadEvidence(_)
    ));
    assert!(matches!(
        c.err(0, ev(vote(7, CHAIN, 0, x), vote(7, CHAIN, 1, y))),
        TxError::BadEvidence(_)
    ));
    assert!(matches!(
        c.err(0, ev(vote(7, CHAIN, 0, x), vote(6, CHAIN, 0, y))),
        TxError::BadEvidence(_)
    ));
    assert!(matches!(
        c.err(0, ev(vote(7, CHAIN, 0, x), vote(7, CHAIN + 1, 0, y))),
        TxError::BadEvidence(_)
    ));
    let mut forged = vote(7, CHAIN, 0, y);
    forged.signature[3] ^= 1;
    assert!(matches!(
        c.err(0, ev(vote(7, CHAIN, 0, x), forged)),
        TxError::BadEvidence(_)
    ));
    // Two votes by an account that is no validator: nothing to slash.
    assert_eq!(
        c.err(0, ev(vote(2, CHAIN, 0, x), vote(2, CHAIN, 0, None))),
        TxError::NotRegistered(Role::Miner)
    );

    // Real evidence (a value and nil also conflict): 10% of the deposit is burned, once.
    let r = c.ok(0, ev(vote(7, CHAIN, 0, x), vote(7, CHAIN, 0, None)));
    let slashed = deposit.div_ceil(10);
    assert_eq!(
        r,
        Receipt::Slashed {
            validator: id(7),
            slashed
        }
    );
    assert_eq!(
        c.state.registrations[&(id(7), Role::Miner)].deposit,
        deposit - slashed
    );
    assert_eq!(c.state.burned.masp, slashed);
    assert_eq!(c.state.stats[&id(7)].slashings, 1);
    assert_eq!(
        c.err(1, ev(vote(7, CHAIN, 0, y), vote(7, CHAIN, 0, x))),
        TxError::AlreadyPunished
    );
    // Another round is another offence.
    c.ok(1, ev(vote(7, CHAIN, 2, y), vote(7, CHAIN, 2, x)));
    assert_eq!(c.state.stats[&id(7)].slashings, 2);
}

#[test]
fn a_payment_cites_an_unexpired_offer_once() {
    let mut c = Chain::new();
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 5_000,
            endpoint: "h:1".into(),
        },
    );
    let pay = |offer: [u8; 16], expiry: u64| TxBody::UploadPayment {
        host: id(1),
        offer,
        offer_expiry_unix_secs: expiry,
        storage_fee: 10,
        download_fee: 0,
        period_blocks: 100,
        broker: None,
        insurance: None,
        chunks: chunks(1, 4096),
    };
    c.ok(0, pay([1; 16], u64::MAX));
    // Replayed, by the same sender or another: refused.
    assert_eq!(c.err(0, pay([1; 16], u64::MAX)), TxError::OfferUsed);
    assert_eq!(c.err(2, pay([1; 16], u64::MAX)), TxError::OfferUsed);
    // Past its expiry (the block's time, in seconds): refused, naming both times.
    let now = c.state.height + 1;
    assert_eq!(
        c.err(0, pay([2; 16], now - 1)),
        TxError::OfferExpired {
            expiry: now - 1,
            now
        }
    );
    // An offer is remembered until its expiry passes, then forgotten (it could not be
    // cited again anyway).
    c.ok(0, pay([3; 16], now + 2));
    assert!(c.state.offers_used.contains_key(&(id(1), [3; 16])));
    c.advance_to(c.state.height + 3);
    assert!(!c.state.offers_used.contains_key(&(id(1), [3; 16])));
    assert!(c.state.offers_used.contains_key(&(id(1), [1; 16])));
    assert_eq!(
        c.state
            .deals
            .values()
            .filter(|d| d.offer == [3; 16])
            .count(),
        1
    );
}

#[test]
fn an_insured_deal_pays_its_cover_from_the_insurers_deposit_at_the_first_missed_proof() {
    use consensus::ledger::{PolicyState, SLASH_PER_MISSED_PROOF};
    use proto::tx::{Insurance, InsuredDeal};
    let mut c = Chain::new();
    c.ok(
        1,
        TxBody::Register {
            role: Role::Host,
            deposit: 20_000,
            endpoint: "h:1".into(),
        },
    );
    // Account 2 insures, with a deposit of 10,000 MASP.
    c.ok(
        2,
        TxBody::Register {
            role: Role::Insurer,
            deposit: 10_000,
            endpoint: "i:1".into(),
        },
    );
    let offer = fresh_offer();
    let terms = InsuredDeal {
        chain_id: CHAIN,
        sender: id(0),
        host: id(1),
        offer,
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 301,
        period_blocks: 250,
    };
    let pay = |insurance| TxBody::UploadPayment {
        host: id(1),
        offer,
        offer_expiry_unix_secs: u64::MAX,
        storage_fee: 301,
        download_fee: 0,
        period_blocks: 250,
        broker: None,
        insurance: Some(insurance),
        chunks: chunks(3, 5000),
    };
    let quote = |cover, expiry| Insurance::sign(&key(2), &terms, 40, cover, expiry);
    // Refusals: cover beyond the deposit, an expired quote, a quote for other terms or
    // altered in transit, a quote from someone who is not an insurer.
    assert_eq!(
        c.err(0, pay(quote(10_001, u64::MAX))),
        TxError::CoverExceeded {
            free: 10_000,
            cover: 10_001
        }
    );
    assert!(matches!(
        c.err(0, pay(quote(6_000, 1))),
        TxError::QuoteExpired { expiry: 1, .. }
    ));
    let mut cheaper = quote(6_000, u64::MAX);
    cheaper.premium = 1;
    assert_eq!(c.err(0, pay(cheaper)), TxError::BadQuote);
    let other_terms = Insurance::sign(
        &key(2),
        &InsuredDeal {
            storage_fee: 300,
            ..terms
        },
        40,
        6_000,
        u64::MAX,
    );
    assert_eq!(c.err(0, pay(other_terms)), TxError::BadQuote);
    let stranger = Insurance::sign(&key(3), &terms, 40, 6_000, u64::MAX);
    assert_eq!(c.err(0, pay(stranger)), TxError::NotAnInsurer(id(3)));
    // A quote that outlives the offer could be used again once the chain forgets the
    // offer: refused.
    let short_offer = InsuredDeal {
        offer_expiry_unix_secs: 1_000_000,
        ..terms
    };
    let outliving = Insurance::sign(&key(2), &short_offer, 40, 6_000, 1_000_001);
    assert_eq!(
        c.err(
            0,
            TxBody::UploadPayment {
                host: id(1),
                offer,
                offer_expiry_unix_secs: 1_000_000,
                storage_fee: 301,
                download_fee: 0,
                period_blocks: 250,
                broker: None,
                insurance: Some(outliving),
                chunks: chunks(3, 5000),
            }
        ),
        TxError::BadQuote
    );

    // Paid: the fee and the premium leave the sender; the premium is held until the
    // completion, the cover counts against the insurer's deposit at once.
    let (_, maspc0) = c.bal(0);
    let Receipt::DealOpened { deal } = c.ok(0, pay(quote(6_000, u64::MAX))) else {
        panic!()
    };
    assert_eq!(c.bal(0).1, maspc0 - 301 - 40 - 1);
    let exposure = |c: &Chain| c.state.registrations[&(id(2), Role::Insurer)].exposure;
    let host_exposure = |c: &Chain| c.state.registrations[&(id(1), Role::Host)].exposure;
    assert_eq!(exposure(&c), 6_000);
    assert_eq!(
        host_exposure(&c),
        6_000,
        "the host's deposit backs the cover"
    );
    assert_eq!(
        c.state.deals[&deal].insurance.unwrap().state,
        PolicyState::Pending
    );
    // No more cover than what is left, and no unbonding while covering.
    assert_eq!(
        c.err(
            2,
            TxBody::Unbond {
                role: Role::Insurer
            }
        ),
        TxError::StillCovering(6_000)
    );
    let insurer_maspc = c.bal(2).1;
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 1001, 1002],
        },
    );
    assert_eq!(
        c.bal(2).1,
        insurer_maspc + 40,
        "the premium is the insurer's"
    );
    assert_eq!(
        c.state.deals[&deal].insurance.unwrap().state,
        PolicyState::Running
    );

    // The host misses its first proof: the sender gets the cover from the insurer's
    // deposit (and the host's slash), once; the next miss pays no second cover.
    let first = to_first_period(&mut c, deal);
    let (masp0, _) = c.bal(0);
    c.advance_to((first + 1) * c.state.params.proof_period_blocks);
    assert_eq!(c.state.deals[&deal].missed, 1);
    assert_eq!(c.bal(0).0, masp0 + 6_000 + SLASH_PER_MISSED_PROOF);
    let insurer = &c.state.registrations[&(id(2), Role::Insurer)];
    assert_eq!((insurer.deposit, insurer.exposure), (10_000, 0));
    let host = &c.state.registrations[&(id(1), Role::Host)];
    assert_eq!(
        (host.deposit, host.exposure),
        (20_000 - SLASH_PER_MISSED_PROOF - 6_000, 0)
    );
    assert_eq!(
        c.state.deals[&deal].insurance.unwrap().state,
        PolicyState::PaidOut { paid: 6_000 }
    );
    c.advance_to((first + 2) * c.state.params.proof_period_blocks);
    assert_eq!(c.state.deals[&deal].missed, 2);
    assert_eq!(c.bal(0).0, masp0 + 6_000 + 2 * SLASH_PER_MISSED_PROOF);

    // A deal that never starts gives the premium back and frees the cover.
    let offer = fresh_offer();
    let terms = InsuredDeal { offer, ..terms };
    let quote = Insurance::sign(&key(2), &terms, 40, 1_000, u64::MAX);
    let (_, before) = c.bal(0);
    let Receipt::DealOpened { deal } = c.ok(
        0,
        TxBody::UploadPayment {
            host: id(1),
            offer,
            offer_expiry_unix_secs: u64::MAX,
            storage_fee: 301,
            download_fee: 0,
            period_blocks: 250,
            broker: None,
            insurance: Some(quote),
            chunks: chunks(3, 5000),
        },
    ) else {
        panic!()
    };
    assert_eq!((exposure(&c), host_exposure(&c)), (1_000, 1_000));
    c.ok(
        1,
        TxBody::UploadCompletion {
            deal,
            crcs: vec![1000, 1001, 7],
        },
    );
    assert_eq!(
        c.bal(0).1,
        before - 1,
        "fee and premium back; the payment's fee burned"
    );
    assert_eq!((exposure(&c), host_exposure(&c)), (0, 0));
    assert_eq!(
        c.state.deals[&deal].insurance.unwrap().state,
        PolicyState::Lapsed
    );

    // A host's deposit backs no more cover than it holds: a host with 1,500 MASP cannot
    // be insured for 2,000 (the insurer would recover only three quarters).
    c.ok(
        3,
        TxBody::Register {
            role: Role::Host,
            deposit: 1_500,
            endpoint: "h:3".into(),
        },
    );
    let offer = fresh_offer();
    let thin = InsuredDeal {
        host: id(3),
        offer,
        ..terms
    };
    assert_eq!(
        c.err(
            0,
            TxBody::UploadPayment {
                host: id(3),
                offer,
                offer_expiry_unix_secs: u64::MAX,
                storage_fee: 301,
                download_fee: 0,
                period_blocks: 250,
                broker: None,
                insurance: Some(Insurance::sign(&key(2), &thin, 40, 2_000, u64::MAX)),
                chunks: chunks(1, 5000),
            }
        ),
        TxError::HostCoverExceeded {
            free: 1_500,
            cover: 2_000
        }
    );
    c.ok(
        2,
        TxBody::Unbond {
            role: Role::Insurer,
        },
    );
}

#[test]
fn a_proxy_redeems_receipts_once_from_its_clients_allowance() {
    use consensus::ledger::ALLOWANCE_RELEASE_SECS;
    use proto::receipt::{ProxyReceipt, Relayed};
    let mut c = Chain::new();
    // Account 0 locks an allowance of 100; account 2 is the proxy.
    assert_eq!(
        c.err(0, TxBody::LockAllowance { amount: 0 }),
        TxError::ZeroAmount
    );
    assert_eq!(c.err(0, TxBody::ReleaseAllowance), TxError::NoAllowance);
    let (_, maspc0) = c.bal(0);
    c.ok(0, TxBody::LockAllowance { amount: 100 });
    assert_eq!(c.bal(0).1, maspc0 - 100 - 1);
    assert_eq!(c.state.allowances[&id(0)].amount, 100);
    let relayed = |session: u8, bytes: u64| Relayed {
        chain_id: CHAIN,
        proxy: id(2),
        session: [session; 16],
        up_bytes: bytes,
        down_bytes: bytes,
        price_per_gib: 10,
        expiry_unix_secs: 1_000_000,
    };
    // 2 GiB at 10 per GiB: 20; 1 GiB + 2 bytes: 11.
    let a = ProxyReceipt::sign(&key(0), &relayed(1, 1 << 30));
    let b = ProxyReceipt::sign(&key(0), &relayed(2, (1 << 29) + 1));
    let redeem = |rs: Vec<ProxyReceipt>| TxBody::RedeemReceipts { receipts: rs };
    let redeemed = |receipts, paid| Receipt::ReceiptsRedeemed {
        proxy: id(2),
        receipts,
        paid,
    };
    // What the proxy should have caught refuses the batch, naming the receipt: one for
    // another proxy, another chain, expiring too far ahead (the ledger remembers redeemed
    // receipts until they expire), or forged.
    let bad = |index, reason| TxError::BadReceipt { index, reason };
    assert_eq!(
        c.err(3, redeem(vec![a.clone()])),
        bad(0, "it names another proxy")
    );
    let other_chain = ProxyReceipt::sign(
        &key(0),
        &Relayed {
            chain_id: CHAIN + 1,
            ..relayed(3, 5)
        },
    );
    assert_eq!(
        c.err(2, redeem(vec![a.clone(), other_chain])),
        bad(1, "it is for another chain")
    );
    let forever = ProxyReceipt::sign(
        &key(0),
        &Relayed {
            expiry_unix_secs: u64::MAX,
            ..relayed(3, 5)
        },
    );
    assert_eq!(
        c.err(2, redeem(vec![forever])),
        bad(0, "it expires too far ahead")
    );
    let mut forged = b.clone();
    forged.up_bytes *= 4;
    assert_eq!(
        c.err(2, redeem(vec![a.clone(), forged])),
        bad(1, "its client's signature does not verify")
    );
    // What time makes stale is skipped and the rest paid: an expired receipt, one twice
    // in the batch. 20 + 11 from the allowance to the proxy.
    let expired = ProxyReceipt::sign(
        &key(0),
        &Relayed {
            expiry_unix_secs: 0,
            ..relayed(3, 5)
        },
    );
    let (_, proxy0) = c.bal(2);
    assert_eq!(
        c.ok(2, redeem(vec![expired, a.clone(), a.clone(), b.clone()])),
        redeemed(2, 31)
    );
    assert_eq!(c.bal(2).1, proxy0 + 31 - 1);
    assert_eq!(c.state.allowances[&id(0)].amount, 69);
    // Never twice.
    assert_eq!(c.ok(2, redeem(vec![b.clone()])), redeemed(0, 0));
    // A receipt beyond what is left is paid what is left; one with nothing left to pay
    // it stays redeemable, and is paid once the client locks more.
    let big = ProxyReceipt::sign(&key(0), &relayed(4, 10 << 30));
    assert_eq!(c.ok(2, redeem(vec![big])), redeemed(1, 69));
    assert_eq!(c.state.allowances[&id(0)].amount, 0);
    let late = ProxyReceipt::sign(&key(0), &relayed(5, 1 << 29));
    assert_eq!(c.ok(2, redeem(vec![late.clone()])), redeemed(0, 0));
    c.ok(0, TxBody::LockAllowance { amount: 50 });
    assert_eq!(c.ok(2, redeem(vec![late.clone()])), redeemed(1, 10));
    assert_eq!(c.ok(2, redeem(vec![late])), redeemed(0, 0));
    assert_eq!(c.state.allowances[&id(0)].amount, 40);

    // Locking more cancels a release under way.
    c.ok(0, TxBody::ReleaseAllowance);
    c.ok(0, TxBody::LockAllowance { amount: 5 });
    assert_eq!(c.state.allowances[&id(0)].release_at, None);
    assert!(c.state.allowance_releases.is_empty());
    // Release: what is left returns ALLOWANCE_RELEASE_SECS of block time later (twice a
    // receipt's life); receipts are paid until then.
    c.ok(0, TxBody::ReleaseAllowance);
    let at = c.state.timestamp_ms / 1000 + ALLOWANCE_RELEASE_SECS;
    assert_eq!(
        c.err(0, TxBody::ReleaseAllowance),
        TxError::AllowanceReleasing { at }
    );
    c.ok(
        2,
        redeem(vec![ProxyReceipt::sign(&key(0), &relayed(6, 1 << 29))]),
    );
    assert_eq!(c.state.allowances[&id(0)].amount, 35);
    let (_, before) = c.bal(0);
    let at_time = |c: &mut Chain, secs: u64| {
        let block = Block::build(&c.state, id(7), &VALIDATOR_SECRET, secs * 1000, vec![]);
        c.state = apply(&c.state, &block).unwrap_or_else(|e| panic!("{e}")).0;
    };
    at_time(&mut c, at - 1);
    assert_eq!(c.state.allowances[&id(0)].amount, 35);
    at_time(&mut c, at);
    assert!(!c.state.allowances.contains_key(&id(0)));
    assert!(c.state.allowance_releases.is_empty());
    assert_eq!(c.bal(0).1, before + 35);
    assert_eq!(c.state.total_supply(), c.state.genesis_supply);
}
