//! `consensus::node::NodeState` without an engine: what a miner does with each message
//! (propose, judge a proposal, commit a decision, serve and take sync), on real block
//! stores in temporary directories, and the codec's refusal of malformed messages.

use bytes::Bytes;
use consensus::ledger::Genesis;
use consensus::node::codec::BorshCodec;
use consensus::node::state::{ChainParams, NodeState};
use consensus::node::types::{Height, MsContext, ProposalPart, Sig, ValidatorSet, ValueId};
use ed25519_consensus::SigningKey;
use malachitebft_app_channel::app::engine::host::SyncedValueOutcome;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::codec::Codec;
use malachitebft_app_channel::app::types::core::{CommitCertificate, Round, Validity};
use proto::tx::{AccountId, Asset, SignedTx, Tx, TxBody};

const CHAIN: u64 = 11;
const NOW: u64 = 1_800_000_000_000;

fn vkey(i: u8) -> SigningKey {
    SigningKey::from([40 + i; 32])
}

fn client() -> SigningKey {
    SigningKey::from([9; 32])
}

fn acct(k: &SigningKey) -> AccountId {
    AccountId(k.verification_key().to_bytes())
}

fn genesis() -> Genesis {
    Genesis {
        chain_id: CHAIN,
        params: Default::default(),
        accounts: std::iter::once((acct(&client()), 0, 1_000_000))
            .chain((0..4).map(|i| (acct(&vkey(i)), 0, 1_000)))
            .collect(),
        validators: (0..4)
            .map(|i| (acct(&vkey(i)), 20_000, format!("v{i}")))
            .collect(),
    }
}

fn open(dir: &std::path::Path, i: u8) -> NodeState {
    NodeState::open(
        &dir.join(format!("v{i}")),
        vkey(i),
        ChainParams::new(genesis()),
    )
    .unwrap()
}

fn transfer(nonce: u64, amount: u64) -> SignedTx {
    Tx {
        chain_id: CHAIN,
        signer: acct(&client()),
        nonce,
        fee: 1,
        body: TxBody::Transfer {
            to: acct(&vkey(0)),
            asset: Asset::Maspc,
            amount,
        },
    }
    .sign(&client())
}

fn cert(height: Height, id: ValueId) -> CommitCertificate<MsContext> {
    CommitCertificate {
        height,
        round: Round::new(0),
        value_id: id,
        commit_signatures: vec![],
    }
}

/// Index of the validator (0..4) that proposes `height` in round 0.
fn proposer_of(nodes: &[NodeState], height: Height) -> usize {
    proposer_at(nodes, height, Round::new(0))
}

fn proposer_at(nodes: &[NodeState], height: Height, round: Round) -> usize {
    let set: ValidatorSet = nodes[0].validator_set();
    let a = set.validators()[MsContext::proposer_index(&set, height, round)].address;
    nodes.iter().position(|n| n.address() == a).unwrap()
}

#[test]
fn a_proposal_is_judged_valid_by_peers_and_every_node_commits_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        let r = n.submit(vec![transfer(0, 5), transfer(1, 6)]);
        assert!(r.iter().all(Result::is_ok), "node {i}: {r:?}");
    }
    for h in 1..=3u64 {
        let height = Height(h);
        let p = proposer_of(&nodes, height);
        let (value, part) = nodes[p].propose(height, Round::new(0), NOW + h).unwrap();
        for (i, n) in nodes.iter_mut().enumerate() {
            if i == p {
                continue;
            }
            let pv = n.received_part(part.clone(), NOW + h).unwrap().unwrap();
            assert_eq!(pv.validity, Validity::Valid, "node {i} at {h}");
            assert_eq!(pv.value, value.value);
        }
        for n in &mut nodes {
            let c = n.decided(&cert(height, value.value.id)).unwrap();
            assert_eq!(c.height, h);
        }
    }
    let hash = nodes[0].ledger().hash();
    assert!(nodes.iter().all(|n| n.ledger().hash() == hash));
    assert_eq!(nodes[0].ledger().account(&acct(&client())).nonce, 2);
    // Both transfers are in the first block, once.
    let b1 = consensus::node::state::ledger_block(
        &proto::block::EncodedBlock::decode(&nodes[1].store().block(1).unwrap().unwrap()).unwrap(),
    );
    assert_eq!(b1.txs.len(), 2);
    assert!(nodes[2].tx_height(&transfer(0, 5).id()).is_some());

    // A restarted node rebuilds the same state from its block store.
    drop(nodes);
    let again = open(dir.path(), 2);
    assert_eq!(again.ledger().hash(), hash);
    assert_eq!(again.tip().0, 3);
}

#[test]
fn forged_misattributed_and_invalid_proposals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    let height = Height(1);
    let p = proposer_of(&nodes, height);
    let other = (p + 1) % 4;
    let judge = (p + 2) % 4;
    let (_, part) = nodes[p].propose(height, Round::new(0), NOW).unwrap();

    // A bit flipped in the signature.
    let mut forged = part.clone();
    forged.signature.0[0] ^= 1;
    assert!(nodes[judge].received_part(forged, NOW).unwrap().is_none());

    // A validator that is not this round's proposer, signing correctly for itself.
    let (_, mut wrong) = nodes[p].propose(height, Round::new(0), NOW).unwrap();
    wrong.proposer = nodes[other].address();
    wrong.signature = nodes[other].signer().sign(&wrong.sign_bytes(CHAIN));
    assert!(nodes[judge].received_part(wrong, NOW).unwrap().is_none());

    // Signed by the right proposer, but its header names another validator as the block's
    // builder: it would reveal and commit the seed in that validator's name.
    let mut header = part.block.decode().unwrap().header;
    header.proposer = nodes[other].address().account();
    let mut in_another_name = ProposalPart {
        block: consensus::node::types::BlockBytes::new(&proto::block::EncodedBlock::new(
            header,
            Vec::new(),
        )),
        signature: Sig([0; 64]),
        ..part.clone()
    };
    in_another_name.signature = nodes[p].signer().sign(&in_another_name.sign_bytes(CHAIN));
    assert!(nodes[judge]
        .received_part(in_another_name, NOW)
        .unwrap()
        .is_none());

    // Signed by the right proposer, but the block does not apply: a transfer whose nonce
    // the ledger has not reached.
    let bad_block = proto::block::EncodedBlock::new(
        proto::block::BlockHeader {
            chain_id: CHAIN,
            height: 1,
            timestamp_ms: NOW,
            parent: proto::block::BlockId::default(),
            proposer: nodes[p].address().account(),
            state_root: nodes[judge].ledger().hash(),
            reveal: [0; 32],
            commit: [0; 32],
        },
        vec![transfer(5, 1)],
    );
    let mut invalid = ProposalPart {
        block: consensus::node::types::BlockBytes::new(&bad_block),
        signature: Sig([0; 64]),
        ..part.clone()
    };
    invalid.signature = nodes[p].signer().sign(&invalid.sign_bytes(CHAIN));
    let pv = nodes[judge].received_part(invalid, NOW).unwrap().unwrap();
    assert_eq!(pv.validity, Validity::Invalid);

    // The same proposer's second block for that round is not judged: its first stands.
    assert!(nodes[judge]
        .received_part(part.clone(), NOW)
        .unwrap()
        .is_none());

    // A block stamped far in the future of the judge's clock is invalid (another judge,
    // which has seen no part of this round yet).
    let fresh = (p + 3) % 4;
    let pv = nodes[fresh]
        .received_part(part.clone(), NOW - 60_000)
        .unwrap()
        .unwrap();
    assert_eq!(pv.validity, Validity::Invalid);

    // A part from another chain's signatures does not verify here.
    let mut other_chain = part;
    other_chain.signature = nodes[p].signer().sign(&other_chain.sign_bytes(CHAIN + 1));
    assert!(nodes[judge]
        .received_part(other_chain, NOW)
        .unwrap()
        .is_none());
}

#[test]
fn after_a_restart_a_proposer_repeats_its_proposal_for_the_round_never_another() {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    let p = proposer_of(&nodes, Height(1));
    drop(nodes);
    let mut n = open(dir.path(), u8::try_from(p).unwrap());
    let (v1, _) = n.propose(Height(1), Round::new(0), NOW).unwrap();
    drop(n);
    let mut n = open(dir.path(), u8::try_from(p).unwrap());
    // New transactions arrived since: still the same value for round 0.
    let _ = n.submit(vec![transfer(0, 1)]);
    let (v2, _) = n.propose(Height(1), Round::new(0), NOW + 5).unwrap();
    assert_eq!(v1.value, v2.value);
    // A new round may carry a new block.
    let (v3, _) = n.propose(Height(1), Round::new(1), NOW + 5).unwrap();
    assert_ne!(v3.value, v1.value);
}

#[test]
fn a_lagging_node_takes_blocks_by_sync_and_refuses_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    // Nodes 0..3 decide two blocks, in the first round one of them proposes; node 3 sees
    // none of it.
    let mut parts = Vec::new();
    for h in 1..=2u64 {
        let height = Height(h);
        let round = (0..)
            .map(Round::new)
            .find(|r| proposer_at(&nodes, height, *r) < 3)
            .unwrap();
        let p = proposer_at(&nodes, height, round);
        let (value, part) = nodes[p].propose(height, round, NOW).unwrap();
        parts.push((round, part.clone()));
        for (i, n) in nodes.iter_mut().enumerate().take(3) {
            if i != p {
                n.received_part(part.clone(), NOW).unwrap();
            }
            n.decided(&CommitCertificate {
                round,
                ..cert(height, value.value.id)
            })
            .unwrap();
        }
    }
    let served = nodes[0].decided_values(Height(1)..=Height(5)).unwrap();
    assert_eq!(served.len(), 2);
    let lag = &mut nodes[3];
    // Height 2's proposal arrives before height 1 is decided here: it cannot be judged yet,
    // so the engine is told nothing (no verdict without a check) until height 2 starts.
    let (round2, part2) = parts[1].clone();
    assert!(lag.received_part(part2, NOW).unwrap().is_none());
    for (h, raw) in (1u64..).zip(&served) {
        let proposer = consensus::node::types::Address(
            proto::block::EncodedBlock::decode(&raw.value_bytes)
                .unwrap()
                .header
                .proposer
                .0,
        );
        let out = lag.synced_value(Height(h), Round::new(0), proposer, &raw.value_bytes, NOW);
        let SyncedValueOutcome::Verdict(pv) = out else {
            panic!("height {h}: {out:?}");
        };
        assert_eq!(pv.validity, Validity::Valid);
        lag.decided(&raw.certificate.trim_vote_extensions())
            .unwrap();
        if h == 1 {
            let kept = lag.started_round(Height(2), round2, NOW).unwrap();
            assert_eq!(kept.len(), 1);
            assert_eq!(kept[0].validity, Validity::Valid);
        }
    }
    assert_eq!(nodes[3].ledger().hash(), nodes[0].ledger().hash());
    let someone = nodes[0].address();
    let garbage = nodes[3].synced_value(Height(3), Round::new(0), someone, b"MSBK junk", NOW);
    assert!(matches!(garbage, SyncedValueOutcome::PeerFault));
}

#[test]
fn a_batch_with_one_bad_signature_admits_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = open(dir.path(), 0);
    let good = transfer(0, 1);
    let mut bytes = transfer(1, 1).bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = SignedTx::decode(&bytes).unwrap();
    let r = n.submit(vec![good.clone(), bad, good]);
    assert!(r[0].is_ok());
    assert!(r[1].is_err(), "a forged signature was admitted");
    assert!(r[2].is_err(), "a duplicate was admitted");
    assert_eq!(n.mempool.len(), 1);
}

#[test]
fn the_codec_round_trips_parts_and_refuses_malformed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = open(dir.path(), 0);
    let (_, part) = n.propose(Height(1), Round::new(0), NOW).unwrap();
    let msg = StreamMessage::new(
        StreamId::new(Bytes::from_static(b"id")),
        0,
        StreamContent::Data(part.clone()),
    );
    let codec = BorshCodec;
    let bytes = Codec::<StreamMessage<ProposalPart>>::encode(&codec, &msg).unwrap();
    let back: StreamMessage<ProposalPart> = codec.decode(bytes.clone()).unwrap();
    assert_eq!(back, msg);
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        let r: Result<StreamMessage<ProposalPart>, _> = codec.decode(bytes.slice(..cut));
        assert!(r.is_err(), "cut at {cut}");
    }
    let mut extra = bytes.to_vec();
    extra.push(0);
    let r: Result<StreamMessage<ProposalPart>, _> = codec.decode(Bytes::from(extra));
    assert!(r.is_err(), "trailing bytes accepted");
    // A part whose block bytes are not a block is refused while decoding.
    let mut broken = bytes.to_vec();
    let at = broken.windows(4).position(|w| w == b"MSBK").unwrap();
    broken[at] = b'X';
    let r: Result<StreamMessage<ProposalPart>, _> = codec.decode(Bytes::from(broken));
    assert!(r.unwrap_err().to_string().contains("block"));
}

#[test]
fn a_caught_double_vote_becomes_a_slashing_transaction_in_the_next_block() {
    use consensus::node::types::Vote;
    use malachitebft_app_channel::app::types::core::{NilOrVal, SignedMessage, VoteType};
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    let height = Height(1);
    let p = proposer_of(&nodes, height);
    let offender = (p + 1) % 4;
    let vote = |n: &NodeState, id: u8| {
        let v = Vote::new(
            VoteType::Prevote,
            height,
            Round::new(0),
            NilOrVal::Val(ValueId(proto::block::BlockId([id; 32]))),
            n.address(),
        );
        let sig = n.signer().sign(&v.sign_bytes(CHAIN));
        SignedMessage::new(v, sig)
    };
    let (a, b) = (vote(&nodes[offender], 1), vote(&nodes[offender], 2));
    let who = nodes[offender].address().account();
    nodes[p].report_equivocation(&a, &b).unwrap();
    // Reported twice (the engine may see it again): the mempool keeps one.
    assert!(nodes[p].report_equivocation(&a, &b).is_err());
    let before = nodes[p].ledger().registrations[&(who, proto::tx::Role::Miner)].deposit;
    let (value, part) = nodes[p].propose(height, Round::new(0), NOW).unwrap();
    let mut slashed = None;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != p {
            let pv = n.received_part(part.clone(), NOW).unwrap().unwrap();
            assert_eq!(pv.validity, Validity::Valid);
        }
        let c = n.decided(&cert(height, value.value.id)).unwrap();
        slashed = c.receipts.iter().find_map(|r| match r {
            consensus::ledger::Receipt::Slashed { validator, slashed } if *validator == who => {
                Some(*slashed)
            }
            _ => None,
        });
        let after = n.ledger().registrations[&(who, proto::tx::Role::Miner)].deposit;
        assert_eq!(after, before - before.div_ceil(10), "node {i}");
    }
    assert_eq!(slashed, Some(before.div_ceil(10)));
}

/// The codec's robustness in every test run (the libFuzzer target `consensus_msg` is heavier:
/// it builds malachite): random bytes and random mutations of valid messages decode to a
/// value or an error, never a panic, and what decodes encodes back to the same bytes.
mod codec_robustness {
    use super::*;
    use proptest::prelude::*;

    fn valid_part() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut n = open(dir.path(), 0);
        let _ = n.submit(vec![transfer(0, 1)]);
        let (_, part) = n.propose(Height(1), Round::new(0), NOW).unwrap();
        let msg = StreamMessage::new(
            StreamId::new(Bytes::from_static(b"s")),
            0,
            StreamContent::Data(part),
        );
        Codec::<StreamMessage<ProposalPart>>::encode(&BorshCodec, &msg)
            .unwrap()
            .to_vec()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            consensus::node::codec::check_roundtrip(&bytes);
        }
    }

    #[test]
    fn mutated_messages_never_panic() {
        let good = valid_part();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = usize::try_from(next() % b.len() as u64).unwrap();
                match next() % 3 {
                    0 => b[at] ^= 1 << (next() % 8),
                    1 => b.truncate(at),
                    _ => b.insert(at, u8::try_from(next() % 256).unwrap()),
                }
                if b.is_empty() {
                    break;
                }
            }
            consensus::node::codec::check_roundtrip(&b);
        }
    }
}

#[test]
fn a_block_built_on_another_ledger_state_is_refused_and_stops_a_node_it_is_decided_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    let height = Height(1);
    let p = proposer_of(&nodes, height);
    let judge = (p + 1) % 4;
    let (_, part) = nodes[p].propose(height, Round::new(0), NOW).unwrap();
    // Signed by the right proposer and applying cleanly, but its header names another
    // state: the judge's ledger (or the proposer's) diverged.
    let block = proto::block::EncodedBlock::new(
        proto::block::BlockHeader {
            chain_id: CHAIN,
            height: 1,
            timestamp_ms: NOW,
            parent: proto::block::BlockId::default(),
            proposer: nodes[p].address().account(),
            state_root: [9; 32],
            reveal: [0; 32],
            commit: [0; 32],
        },
        Vec::new(),
    );
    let mut diverged = ProposalPart {
        block: consensus::node::types::BlockBytes::new(&block),
        signature: Sig([0; 64]),
        ..part
    };
    diverged.signature = nodes[p].signer().sign(&diverged.sign_bytes(CHAIN));
    let pv = nodes[judge].received_part(diverged, NOW).unwrap().unwrap();
    assert_eq!(pv.validity, Validity::Invalid);
    // Decided all the same (by a quorum whose ledgers agree among themselves): this node's
    // ledger is not the chain's, and it stops with that reason instead of going on.
    let e = nodes[judge]
        .decided(&cert(height, ValueId(block.id())))
        .unwrap_err()
        .to_string();
    assert!(e.contains("diverged"), "{e}");
    assert_eq!(nodes[judge].tip().0, 0, "nothing was committed");
}

#[test]
fn votes_missing_from_commit_certificates_are_counted_and_survive_a_restart() {
    use malachitebft_app_channel::app::types::core::CommitSignature;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeState> = (0..4).map(|i| open(dir.path(), i)).collect();
    let signers: Vec<_> = nodes.iter().take(3).map(NodeState::address).collect();
    for h in 1..=3u64 {
        let height = Height(h);
        let p = proposer_of(&nodes, height);
        let (value, part) = nodes[p].propose(height, Round::new(0), NOW + h).unwrap();
        for (i, n) in nodes.iter_mut().enumerate() {
            if i != p {
                n.received_part(part.clone(), NOW + h).unwrap();
            }
            // Nodes 0 to 2 signed every commit; node 3 signed only height 2's.
            let mut by = signers.clone();
            if h == 2 {
                by.push(n.address());
            }
            n.decided(&CommitCertificate {
                commit_signatures: by
                    .into_iter()
                    .map(|a| CommitSignature::new(a, Sig([7; 64])))
                    .collect(),
                ..cert(height, value.value.id)
            })
            .unwrap();
        }
    }
    let v = nodes[0].votes();
    assert_eq!((v.heights, v.missed, v.last_missed), (3, 0, None));
    let v = nodes[3].votes();
    assert_eq!((v.heights, v.missed, v.last_missed), (3, 2, Some(3)));
    // Rebuilt from the block store's certificates on a restart.
    drop(nodes);
    let again = open(dir.path(), 3);
    assert_eq!(again.votes(), v);
}
