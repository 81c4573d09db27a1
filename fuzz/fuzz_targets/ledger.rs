//! Structured fuzzing of the ledger: the input drives a sequence of transactions among
//! five accounts (every kind, valid or not), each applied as its own block. Invariants
//! after every step: supply of both assets conserved, a rejected block leaves the state
//! untouched, and replaying the accepted blocks from genesis gives the same state hash.
#![no_main]

use consensus::ledger::{apply, Block, Genesis, State};
use ed25519_consensus::SigningKey;
use libfuzzer_sys::fuzz_target;
use proto::tx::{AccountId, Asset, Role, SignedTx, Tx, TxBody, TxId};
use proto::{ChunkEntry, ChunkId};

const ACCOUNTS: u8 = 5;

fn key(i: u8) -> SigningKey {
    SigningKey::from([i + 1; 32])
}

fn id(i: u8) -> AccountId {
    AccountId(key(i).verification_key().to_bytes())
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn amount(&mut self) -> Option<u64> {
        let hi = u64::from(self.byte()?);
        let lo = u64::from(self.byte()?);
        Some((hi << 8 | lo) * 37)
    }
}

fuzz_target!(|data: &[u8]| {
    let accounts = (0..ACCOUNTS - 1).map(|i| (id(i), 50_000, 50_000)).collect();
    // Account 3 also validates, so unbonding and withdrawing a miner's stake get exercised.
    let validators = vec![(id(3), 20_000, "v3:1".to_string())];
    let genesis = State::genesis(&Genesis {
        chain_id: 1,
        // Short deal timings, so a few blocks reach completion deadlines and proof periods.
        params: consensus::ledger::Params {
            proof_period_blocks: 2,
            completion_timeout_blocks: 3,
        },
        accounts,
        validators,
    });
    let mut state = genesis.clone();
    let mut nonces = [0u64; ACCOUNTS as usize];
    let mut deals: Vec<TxId> = Vec::new();
    let mut payments: Vec<TxId> = Vec::new();
    let mut accepted = Vec::new();
    let mut input = Input(data);
    while let (Some(kind), Some(who), Some(arg)) = (input.byte(), input.byte(), input.byte()) {
        let who = who % ACCOUNTS;
        let other = id(arg % ACCOUNTS);
        let role = Role::ALL[usize::from(arg % 5)];
        let deal = deals
            .get(usize::from(arg))
            .copied()
            .unwrap_or(TxId([arg; 32]));
        let Some(amount) = input.amount() else { break };
        let body = match kind % 16 {
            0 => TxBody::Transfer {
                to: other,
                asset: if arg % 2 == 0 {
                    Asset::Masp
                } else {
                    Asset::Maspc
                },
                amount,
            },
            1 => TxBody::Register {
                role,
                deposit: amount,
                endpoint: "e:1".into(),
            },
            2 => TxBody::RaiseDeposit { role, amount },
            3 => TxBody::Unbond { role },
            4 => TxBody::Withdraw { role },
            5 => {
                let chunks = (0..1 + arg % 4)
                    .map(|i| ChunkEntry {
                        id: ChunkId([i; 32]),
                        sealed_bytes: 1 << 20,
                        crc32c: u32::from(i),
                    })
                    .collect();
                TxBody::UploadPayment {
                    host: other,
                    // Few distinct offers, some expired: replays and expiry get exercised.
                    offer: [arg % 4; 16],
                    offer_expiry_unix_secs: u64::from(kind),
                    storage_fee: amount,
                    download_fee: amount / 7,
                    period_blocks: 10,
                    // Now and then through an "exchange" (registered or not), at any
                    // commission: the split must conserve the supply.
                    broker: (arg % 3 == 0).then(|| proto::tx::Broker {
                        exchange: id(kind % ACCOUNTS),
                        commission_permille: u16::try_from(amount % 1001).expect("<= 1000"),
                    }),
                    // Now and then insured by an "insurer" (registered or not) for any
                    // cover: premiums held and paid, exposure and payouts must conserve it.
                    insurance: (arg % 5 == 1).then(|| {
                        let terms = proto::tx::InsuredDeal {
                            chain_id: 1,
                            sender: id(who),
                            host: other,
                            offer: [arg % 4; 16],
                            offer_expiry_unix_secs: u64::from(kind),
                            storage_fee: amount,
                            period_blocks: 10,
                        };
                        proto::tx::Insurance::sign(
                            &key(kind % ACCOUNTS),
                            &terms,
                            amount / 11,
                            amount / 2 + 1,
                            u64::from(kind) * 3,
                        )
                    }),
                    chunks,
                }
            }
            6 => TxBody::UploadCompletion {
                deal,
                crcs: (0..1 + arg % 4)
                    .map(|i| u32::from(i ^ (kind >> 7)))
                    .collect(),
            },
            7 => TxBody::DownloadPayment {
                deal,
                // Mostly a fee a deal could have (its own at payment is amount / 7).
                fee: if arg % 4 == 0 { amount } else { amount / 7 },
                host_part: amount / 3,
                exchange: (arg % 2 == 1).then_some(other),
                exchange_part: amount / 5,
            },
            8 => TxBody::RecordHash { hash: [arg; 32] },
            9 => TxBody::Complaint { deal, fee: amount },
            10 => TxBody::DownloadClaim {
                payment: payments
                    .get(usize::from(arg))
                    .copied()
                    .unwrap_or(TxId([arg; 32])),
            },
            11 => TxBody::SetDownloadFee {
                deal,
                download_fee: amount,
            },
            12 => TxBody::LockAllowance { amount },
            13 => TxBody::ReleaseAllowance,
            // Receipts from a client to a proxy, for any bytes and price, some expired,
            // some for another chain, a few sessions only: replays and allowances running
            // out get exercised.
            14 => TxBody::RedeemReceipts {
                receipts: (0..1 + arg % 3)
                    .map(|i| {
                        proto::receipt::ProxyReceipt::sign(
                            &key(kind % ACCOUNTS),
                            &proto::receipt::Relayed {
                                chain_id: 1 + u64::from(arg % 7 == 0),
                                proxy: id(who),
                                session: [arg.wrapping_add(i) % 5; 16],
                                up_bytes: amount << 20,
                                down_bytes: amount << 10,
                                price_per_gib: u64::from(arg),
                                expiry_unix_secs: u64::from(kind) * 5,
                            },
                        )
                    })
                    .collect(),
            },
            // A storage proof made of input bytes: it must never verify by accident, and a
            // refused one must leave the state alone.
            _ => {
                let len = usize::from(arg) * 8;
                let proof = input
                    .0
                    .get(..len.min(input.0.len()))
                    .unwrap_or_default()
                    .to_vec();
                let _ = deal;
                TxBody::StorageProofs {
                    period: u64::from(arg % 3),
                    proofs: vec![proof; usize::from(arg % 3)],
                }
            }
        };
        // Mostly the right nonce, sometimes a replayed or skipped one.
        let nonce = match kind >> 6 {
            0 if nonces[usize::from(who)] > 0 => nonces[usize::from(who)] - 1,
            1 => nonces[usize::from(who)] + 1,
            _ => nonces[usize::from(who)],
        };
        let tx: SignedTx = Tx {
            chain_id: 1,
            signer: id(who),
            nonce,
            fee: 1,
            body,
        }
        .sign(&key(who));
        let mut block = Block::build(
            &state,
            id(3),
            &[0x5E; 32],
            state.height * 1000,
            vec![tx.clone()],
        );
        // Now and then a reveal the proposer did not commit to: always refused.
        let forged_reveal = arg % 17 == 16;
        if forged_reveal {
            block.reveal[0] ^= 1;
        }
        let before = state.hash();
        match apply(&state, &block) {
            Ok((next, receipts)) => {
                assert!(!forged_reveal, "a reveal not committed to was accepted");
                assert_eq!(
                    nonce,
                    nonces[usize::from(who)],
                    "a wrong nonce was accepted"
                );
                nonces[usize::from(who)] += 1;
                match receipts.first() {
                    Some(consensus::ledger::Receipt::DealOpened { deal }) => deals.push(*deal),
                    Some(consensus::ledger::Receipt::DownloadPaid { payment, .. }) => {
                        payments.push(*payment)
                    }
                    _ => {}
                }
                state = next;
                accepted.push(block);
            }
            Err(_) => assert_eq!(state.hash(), before, "a rejected block changed the state"),
        }
        assert_eq!(
            state.total_supply(),
            state.genesis_supply,
            "supply not conserved"
        );
    }
    let mut replay = genesis;
    for block in &accepted {
        replay = apply(&replay, block)
            .expect("an accepted block applies again")
            .0;
    }
    assert_eq!(replay.hash(), state.hash());
});
