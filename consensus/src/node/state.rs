//! What a miner does with each message of the engine, as plain synchronous methods on
//! [`NodeState`]: build a proposal, judge a received or synced one, commit a decision,
//! answer sync requests. The async loop in `run` only moves messages between the engine's
//! channels and these methods, so everything here is tested without an engine or a socket.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use ed25519_consensus::{SigningKey, VerificationKey};
use malachitebft_app_channel::app::consensus::ProposedValue;
use malachitebft_app_channel::app::engine::host::SyncedValueOutcome;
use malachitebft_app_channel::app::types::core::{
    CommitCertificate, ExtendedCommitCertificate, HeightParams, LinearTimeouts, NilOrVal, Round,
    SignedMessage, ValidatorSet as _, Validity, VoteExtensions, VoteType,
};
use malachitebft_app_channel::app::types::sync::RawDecidedValue;
use malachitebft_app_channel::app::types::LocallyProposedValue;
use proto::block::{BlockHeader, BlockId, EncodedBlock};
use proto::tx::{SignedTx, Tx, TxBody, TxId};

use super::store::{Store, StoreError};
use super::types::{
    Address, BlockBytes, Height, MsContext, ProposalPart, SigningProvider, ValidatorSet, Value,
    ValueId, Vote,
};
use crate::ledger::{self, Block, Genesis, Receipt, State};
use crate::mempool::{Mempool, MempoolError, MempoolLimits};

/// Proposals for at most this many heights past the next one are kept until their height
/// comes (a peer slightly ahead); farther ones are dropped (sync brings those blocks).
pub const FUTURE_HEIGHTS_KEPT: u64 = 4;

/// How far ahead of a validator's clock a proposed block's timestamp may be.
pub const CLOCK_DRIFT_MAX_MS: u64 = 10_000;

/// A miner's chain settings (the parts the engine does not own).
#[derive(Clone, Debug)]
pub struct ChainParams {
    pub genesis: Genesis,
    /// Blocks are paced to this interval when there is no load (the engine's target time).
    pub block_time: Duration,
    pub max_block_txs: usize,
    pub max_block_bytes: usize,
    pub mempool: MempoolLimits,
    pub timeouts: LinearTimeouts,
}

impl ChainParams {
    pub fn new(genesis: Genesis) -> ChainParams {
        ChainParams {
            genesis,
            block_time: Duration::from_millis(500),
            max_block_txs: 20_000,
            max_block_bytes: proto::block::BLOCK_BYTES_MAX,
            mempool: MempoolLimits::default(),
            timeouts: LinearTimeouts {
                propose: Duration::from_millis(1000),
                propose_delta: Duration::from_millis(250),
                prevote: Duration::from_millis(500),
                prevote_delta: Duration::from_millis(250),
                precommit: Duration::from_millis(500),
                precommit_delta: Duration::from_millis(250),
                rebroadcast: Duration::from_millis(2000),
                max_timeout: Duration::from_secs(30),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored block {height} does not apply to the state before it: {reason} (the block store does not belong to this genesis, or is corrupt)")]
    Replay { height: u64, reason: String },
    #[error("decided block {0} is unknown to this node")]
    UnknownDecided(BlockId),
    #[error("decided block {height} does not apply: {reason}")]
    DecidedInvalid { height: u64, reason: String },
}

/// A block this node has seen proposed (or synced) for the next heights, by id.
#[derive(Debug, Clone)]
struct Seen {
    part: ProposalPart,
    block: EncodedBlock,
    /// The ledger after this block, when it was judged valid on top of the current tip:
    /// a decision then commits it without executing the block again.
    applied: Option<Box<(State, Vec<Receipt>)>>,
}

/// What a decision did, for subscribers (clients waiting for their transactions).
#[derive(Debug, Clone)]
pub struct Committed {
    pub height: u64,
    /// The consensus round that decided it (0 when the first proposal went through).
    pub round: i64,
    pub id: BlockId,
    pub timestamp_ms: u64,
    pub txs: Vec<TxId>,
    pub receipts: Vec<Receipt>,
}

/// Heights this node was a validator at, the last of which [`NodeState::votes`] looks at.
pub const VOTES_KEPT: usize = 100;

/// This node's votes over the last heights it was a validator at (at most [`VOTES_KEPT`]):
/// a vote is missed when the height's commit certificate does not carry this node's
/// signature (it was down, behind, or its precommit came after the quorum's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Votes {
    /// Heights looked at.
    pub heights: u64,
    pub missed: u64,
    /// The last height whose certificate lacks this node's signature.
    pub last_missed: Option<u64>,
}

#[derive(Debug)]
pub struct NodeState {
    pub ctx: MsContext,
    params: ChainParams,
    signer: SigningProvider,
    /// The secret this node's seed reveals derive from (`ledger::reveal_secret` of its key).
    reveal_secret: [u8; 32],
    /// The ledger after the last decided block.
    ledger: State,
    /// `ledger.hash()`, computed once per decided block: the state root the next block's
    /// header must carry.
    ledger_root: [u8; 32],
    /// The next height's validators, as the engine takes them: built from the ledger's
    /// stake when that changes (at epoch boundaries), not for every message.
    validators: ValidatorSet,
    /// Id of the last decided block (zeros before the first).
    tip: BlockId,
    store: Store,
    pub mempool: Mempool,
    /// Blocks proposed or synced for heights above the tip, by id.
    seen: HashMap<BlockId, Seen>,
    /// Which block holds each committed transaction.
    tx_heights: HashMap<TxId, u64>,
    /// Signatures this node already checked (at admission), so a block's check skips them.
    verified: std::collections::HashSet<TxId>,
    /// Equivocations this node reported, so each is reported once.
    reported: std::collections::HashSet<(proto::tx::AccountId, u64, i64, u8)>,
    /// (height, signed) for the last [`VOTES_KEPT`] heights this node was a validator at:
    /// whether that height's commit certificate carries its signature.
    votes: std::collections::VecDeque<(u64, bool)>,
}

impl NodeState {
    /// Opens the block store under `dir` and rebuilds the ledger by applying every stored
    /// block to the genesis state.
    pub fn open(dir: &Path, key: SigningKey, params: ChainParams) -> Result<NodeState, NodeError> {
        let chain_id = params.genesis.chain_id;
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Db(format!("cannot create {}: {e}", dir.display())))?;
        let store = Store::open(&Store::path_in(dir))?;
        let mut ledger = State::genesis(&params.genesis);
        let mut tip = BlockId::default();
        let mut tx_heights = HashMap::new();
        let me = proto::tx::AccountId(key.verification_key().to_bytes());
        // The last heights this node was a validator at; their certificates are read after.
        let mut voted = std::collections::VecDeque::with_capacity(VOTES_KEPT);
        store.for_each_block(1, |height, bytes| {
            let replay = |reason: String| NodeError::Replay { height, reason };
            let block = EncodedBlock::decode(bytes).map_err(|e| replay(e.to_string()))?;
            if block.header.height != height || block.header.parent != tip {
                return Err(replay("it does not follow the block before it".into()));
            }
            // The chain agreed on this root: a ledger rebuilt otherwise (another build of
            // the rules) must not go on as if it were the chain's.
            if let Some(why) = root_mismatch(&block.header, &ledger.hash()) {
                return Err(replay(why));
            }
            if ledger.validators.contains_key(&me) {
                if voted.len() == VOTES_KEPT {
                    voted.pop_front();
                }
                voted.push_back(height);
            }
            let (next, _) =
                ledger::apply(&ledger, &ledger_block(&block)).map_err(|e| replay(e.to_string()))?;
            ledger = next;
            tip = block.id();
            for tx in &block.txs {
                tx_heights.insert(tx.id(), height);
            }
            Ok(())
        })?;
        let mut votes = std::collections::VecDeque::with_capacity(VOTES_KEPT);
        for height in voted {
            let signed = store
                .certificate(height)?
                .is_some_and(|c| c.commit_signatures.iter().any(|s| s.address.0 == me.0));
            votes.push_back((height, signed));
        }
        Ok(NodeState {
            ctx: MsContext { chain_id },
            reveal_secret: ledger::reveal_secret(&key.to_bytes()),
            signer: SigningProvider::new(chain_id, key),
            mempool: Mempool::new(params.mempool),
            params,
            validators: ValidatorSet::from_stakes(&ledger.validators),
            ledger_root: ledger.hash(),
            ledger,
            tip,
            store,
            seen: HashMap::new(),
            tx_heights,
            verified: Default::default(),
            reported: Default::default(),
            votes,
        })
    }

    /// This node's votes over the last heights it was a validator at.
    pub fn votes(&self) -> Votes {
        Votes {
            heights: self.votes.len() as u64,
            missed: self.votes.iter().filter(|(_, signed)| !signed).count() as u64,
            last_missed: self
                .votes
                .iter()
                .rev()
                .find(|(_, signed)| !signed)
                .map(|(h, _)| *h),
        }
    }

    pub fn address(&self) -> Address {
        self.signer.address()
    }

    pub fn signer(&self) -> &SigningProvider {
        &self.signer
    }

    pub fn ledger(&self) -> &State {
        &self.ledger
    }

    pub fn tip(&self) -> (u64, BlockId) {
        (self.ledger.height, self.tip)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn tx_height(&self, id: &TxId) -> Option<u64> {
        self.tx_heights.get(id).copied()
    }

    pub fn next_height(&self) -> Height {
        Height(self.ledger.height + 1)
    }

    /// The validators of the next height, from the ledger's stake.
    pub fn validator_set(&self) -> ValidatorSet {
        self.validators.clone()
    }

    pub fn height_params(&self) -> HeightParams<MsContext> {
        HeightParams::new(
            self.validator_set(),
            self.params.timeouts,
            Some(self.params.block_time),
        )
    }

    /// Admits clients' transactions, their signatures checked here in one batch, once for
    /// this node (a block's check skips them). One result per transaction.
    pub fn submit(&mut self, txs: Vec<SignedTx>) -> Vec<Result<TxId, MempoolError>> {
        self.submit_checked(check_signatures(txs))
    }

    /// Admits transactions whose signatures [`check_signatures`] checked (the node's task
    /// has it done off the loop that answers the engine).
    pub fn submit_checked(
        &mut self,
        txs: Vec<Result<SignedTx, MempoolError>>,
    ) -> Vec<Result<TxId, MempoolError>> {
        txs.into_iter()
            .map(|t| {
                let tx = t?;
                let id = tx.id();
                if self.tx_heights.contains_key(&id) {
                    return Err(MempoolError::Duplicate);
                }
                self.mempool.insert_verified(tx, &self.ledger)?;
                self.verified.insert(id);
                Ok(id)
            })
            .collect()
    }

    /// Builds, signs and keeps this node's proposal for (height, round). After a restart
    /// the proposal kept for that round is returned again, never a second, different one.
    pub fn propose(
        &mut self,
        height: Height,
        round: Round,
        now_ms: u64,
    ) -> Result<(LocallyProposedValue<MsContext>, ProposalPart), NodeError> {
        let me = self.address();
        if let Some(part) = self
            .store
            .pending(height, round)?
            .into_iter()
            .find(|p| p.proposer == me)
        {
            let block = part.block.decode().expect("kept blocks were encoded here");
            return Ok(self.keep_own(part, block, None));
        }
        assert_eq!(
            height,
            self.next_height(),
            "the engine proposes at the next height"
        );
        let timestamp_ms = now_ms.max(self.ledger.timestamp_ms);
        let (reveal, commit) = self.ledger.entropy(&me.account(), &self.reveal_secret);
        let header = BlockHeader {
            chain_id: self.ctx.chain_id,
            height: height.0,
            timestamp_ms,
            parent: self.tip,
            proposer: me.account(),
            state_root: self.ledger_root,
            reveal,
            commit,
        };
        let txs = self.mempool.build(
            &self.ledger,
            height.0,
            timestamp_ms,
            self.params.max_block_txs,
            self.params.max_block_bytes - proto::block::BLOCK_HEADER_BYTES,
        );
        let block = EncodedBlock::new(header.clone(), txs);
        // Never sign a block this node would refuse (the engine counts its own proposal as
        // valid): if the builder and the ledger ever disagree, propose an empty block.
        let (block, applied) = match self.judge(&block, timestamp_ms, true) {
            Ok(a) => (block, Some(Box::new(a))),
            Err(e) => {
                tracing::error!(
                    height = height.0,
                    "the built block does not apply ({e}); proposing an empty block"
                );
                let empty = EncodedBlock::new(header, Vec::new());
                let a = self.judge(&empty, timestamp_ms, true).ok().map(Box::new);
                (empty, a)
            }
        };
        let mut part = ProposalPart {
            height,
            round,
            pol_round: Round::Nil,
            proposer: me,
            block: BlockBytes::new(&block),
            signature: super::types::Sig([0; 64]),
        };
        part.signature = self.signer.sign(&part.sign_bytes(self.ctx.chain_id));
        self.store.put_pending(&part)?;
        Ok(self.keep_own(part, block, applied))
    }

    /// Remembers this node's proposal (to commit or restream it) and returns it.
    fn keep_own(
        &mut self,
        part: ProposalPart,
        block: EncodedBlock,
        applied: Option<Box<(State, Vec<Receipt>)>>,
    ) -> (LocallyProposedValue<MsContext>, ProposalPart) {
        let value = LocallyProposedValue::new(part.height, part.round, Value::of(&block));
        self.remember(part.clone(), block, applied);
        (value, part)
    }

    /// Keeps a block seen for a height above the tip, by id, for its decision or a restream.
    fn remember(
        &mut self,
        part: ProposalPart,
        block: EncodedBlock,
        applied: Option<Box<(State, Vec<Receipt>)>>,
    ) {
        self.seen.insert(
            block.id(),
            Seen {
                part,
                block,
                applied,
            },
        );
    }

    /// Judges a proposal received from the network. `None`: not for this node to judge
    /// (a forged or misattributed part, an old height); it is dropped.
    pub fn received_part(
        &mut self,
        part: ProposalPart,
        now_ms: u64,
    ) -> Result<Option<ProposedValue<MsContext>>, NodeError> {
        let next = self.next_height();
        // Old heights are done; far ones cannot be judged and would only fill the store.
        if part.height < next || part.height.0 > next.0 + FUTURE_HEIGHTS_KEPT {
            return Ok(None);
        }
        let Ok(block) = part.block.decode() else {
            return Ok(None);
        };
        // The part must be signed by the validator it names; at the next height that must
        // also be the round's proposer (future heights are checked when they come).
        let Ok(key) = VerificationKey::try_from(part.proposer.0) else {
            return Ok(None);
        };
        if !SigningProvider::verify(&part.sign_bytes(self.ctx.chain_id), &part.signature, &key) {
            return Ok(None);
        }
        // A new proposal's header must name the validator that signed it: its seed reveal
        // is checked against that validator's commitment, and no one may reveal (or commit)
        // in another's name. A re-proposal of a value locked in an earlier round (pol_round
        // set) keeps its builder's header; the engine takes it only with the polka of that
        // round, which honest validators gave when the builder's own part came.
        if part.pol_round == Round::Nil && block.header.proposer != part.proposer.account() {
            return Ok(None);
        }
        let set = self.validator_set();
        if part.height == next {
            if set.count() == 0 || self.ctx_proposer(&set, next, part.round) != part.proposer {
                return Ok(None);
            }
        } else if set.get_by_address(&part.proposer).is_none() {
            // A later height's proposer is checked when that height comes; until then only
            // a current validator's part is kept, so strangers cannot fill the store.
            return Ok(None);
        }
        // A proposer that signs two blocks for one round gets its first one judged; the
        // second is dropped (the engine holds the evidence of the conflict).
        if self.store.put_pending(&part)? != part {
            return Ok(None);
        }
        if part.height > next {
            // A later height's proposal cannot be judged yet (its parent is not decided
            // here): it is kept, and given to the engine, judged, when that height's round
            // starts (`started_round`). Answering now would be a verdict without a check.
            return Ok(None);
        }
        let (validity, applied) = match self.judge(&block, now_ms, true) {
            Ok(applied) => (Validity::Valid, Some(Box::new(applied))),
            Err(_) => (Validity::Invalid, None),
        };
        let value = Value::of(&block);
        let pv = ProposedValue {
            height: part.height,
            round: part.round,
            valid_round: part.pol_round,
            proposer: part.proposer,
            value,
            validity,
        };
        self.remember(part, block, applied);
        Ok(Some(pv))
    }

    fn ctx_proposer(&self, set: &ValidatorSet, height: Height, round: Round) -> Address {
        set.validators()[MsContext::proposer_index(set, height, round)].address
    }

    /// The proposals this node kept for (height, round), judged again (after a restart).
    pub fn started_round(
        &mut self,
        height: Height,
        round: Round,
        now_ms: u64,
    ) -> Result<Vec<ProposedValue<MsContext>>, NodeError> {
        let mut out = Vec::new();
        for part in self.store.pending(height, round)? {
            if let Some(pv) = self.received_part(part, now_ms)? {
                out.push(pv);
            }
        }
        Ok(out)
    }

    /// Every rule a block must meet before this node votes for it: it extends our tip, its
    /// time is sane, and the ledger applies it; returns what applying it gives. `clock`:
    /// whether to hold the timestamp against this node's clock (not for a block synced with
    /// its commit certificate: it is decided already, and a slow local clock must not stall
    /// the node).
    fn judge(
        &self,
        block: &EncodedBlock,
        now_ms: u64,
        clock: bool,
    ) -> Result<(State, Vec<Receipt>), String> {
        let h = &block.header;
        if h.chain_id != self.ctx.chain_id {
            return Err(format!("block for chain {}", h.chain_id));
        }
        if h.height != self.ledger.height + 1 {
            return Err(format!(
                "height {} is not the next, {}",
                h.height,
                self.ledger.height + 1
            ));
        }
        if h.parent != self.tip {
            return Err("its parent is not our last block".into());
        }
        if let Some(why) = root_mismatch(h, &self.ledger_root) {
            return Err(why);
        }
        if clock && h.timestamp_ms > now_ms.saturating_add(CLOCK_DRIFT_MAX_MS) {
            return Err(format!("timestamp {} ms is in the future", h.timestamp_ms));
        }
        self.apply(block).map_err(|e| e.to_string())
    }

    fn apply(&self, block: &EncodedBlock) -> Result<(State, Vec<Receipt>), ledger::BlockError> {
        ledger::apply_verified(&self.ledger, &ledger_block(block), &self.verified)
    }

    /// Commits a decided block: durable in the store first, then applied.
    pub fn decided(&mut self, cert: &CommitCertificate<MsContext>) -> Result<Committed, NodeError> {
        let id = cert.value_id.0;
        // Taken, not cloned (it holds the block and the state it gives): committing drops
        // every kept block at this height anyway.
        let seen = match self.seen.remove(&id) {
            Some(s) => s,
            None => {
                // After a restart: the block was kept when it was proposed, in this round
                // or an earlier one.
                let mut found = None;
                for r in 0..=cert.round.as_u32().unwrap_or(0) {
                    found = self
                        .store
                        .pending(cert.height, Round::new(r))?
                        .into_iter()
                        .find(|p| BlockId::of(&p.block.0) == id);
                    if found.is_some() {
                        break;
                    }
                }
                let part = found.ok_or(NodeError::UnknownDecided(id))?;
                let block = part.block.decode().expect("kept blocks decode");
                Seen {
                    part,
                    block,
                    applied: None,
                }
            }
        };
        self.commit(seen.block, seen.applied, cert)
    }

    fn commit(
        &mut self,
        block: EncodedBlock,
        applied: Option<Box<(State, Vec<Receipt>)>>,
        cert: &CommitCertificate<MsContext>,
    ) -> Result<Committed, NodeError> {
        let height = block.header.height;
        // A quorum decided this block on top of a state this node does not have: its ledger
        // diverged, and it must stop rather than serve a ledger the chain does not hold.
        if let Some(why) = root_mismatch(&block.header, &self.ledger_root) {
            return Err(NodeError::DecidedInvalid {
                height,
                reason: format!("{why}: this node's ledger diverged from the chain's"),
            });
        }
        // What was judged on top of the current tip is reused; anything else is applied now.
        let (next, receipts) = match applied {
            Some(a) if block.header.parent == self.tip && height == self.ledger.height + 1 => *a,
            _ => self.apply(&block).map_err(|e| NodeError::DecidedInvalid {
                height,
                reason: e.to_string(),
            })?,
        };
        self.store
            .put_decided(Height(height), block.bytes(), cert)?;
        let me = self.address();
        if self
            .ledger
            .validators
            .contains_key(&proto::tx::AccountId(me.0))
        {
            if self.votes.len() == VOTES_KEPT {
                self.votes.pop_front();
            }
            let signed = cert.commit_signatures.iter().any(|s| s.address == me);
            self.votes.push_back((height, signed));
        }
        if next.validators != self.ledger.validators {
            self.validators = ValidatorSet::from_stakes(&next.validators);
        }
        self.ledger = next;
        self.ledger_root = self.ledger.hash();
        self.tip = block.id();
        let txs: Vec<TxId> = block.txs.iter().map(|t| t.id()).collect();
        for id in &txs {
            self.tx_heights.insert(*id, height);
        }
        self.mempool.prune(&self.ledger);
        // Only what still waits keeps its checked signature.
        let pool = &self.mempool;
        self.verified.retain(|id| pool.contains(id));
        self.seen.retain(|_, s| s.block.header.height > height);
        Ok(Committed {
            height,
            round: cert.round.as_i64(),
            id: block.id(),
            timestamp_ms: block.header.timestamp_ms,
            txs,
            receipts,
        })
    }

    /// Decided blocks with their certificates, for peers syncing.
    pub fn decided_values(
        &self,
        range: RangeInclusive<Height>,
    ) -> Result<Vec<RawDecidedValue<MsContext>>, NodeError> {
        let mut out = Vec::new();
        for h in range.start().0..=range.end().0 {
            let (Some(block), Some(cert)) = (self.store.block(h)?, self.store.certificate(h)?)
            else {
                break;
            };
            out.push(RawDecidedValue::new(
                Bytes::from(block),
                ExtendedCommitCertificate::from_commit_certificate_and_extensions(
                    cert,
                    VoteExtensions::default(),
                ),
            ));
        }
        Ok(out)
    }

    /// Judges a block a peer sent in sync.
    pub fn synced_value(
        &mut self,
        height: Height,
        round: Round,
        proposer: Address,
        bytes: &[u8],
        now_ms: u64,
    ) -> SyncedValueOutcome<MsContext> {
        let Ok(block) = EncodedBlock::decode(bytes) else {
            return SyncedValueOutcome::PeerFault;
        };
        // The header names who built the block; a later round's proposer may have proposed
        // it again (a locked value), so only the height must match.
        if block.header.height != height.0 {
            return SyncedValueOutcome::PeerFault;
        }
        let (validity, applied) = match self.judge(&block, now_ms, false) {
            Ok(a) => (Validity::Valid, Some(Box::new(a))),
            Err(_) => (Validity::Invalid, None),
        };
        let value = Value::of(&block);
        let part = ProposalPart {
            height,
            round,
            pol_round: Round::Nil,
            proposer,
            block: BlockBytes::new(&block),
            signature: super::types::Sig([0; 64]),
        };
        self.remember(part, block, applied);
        SyncedValueOutcome::Verdict(ProposedValue {
            height,
            round,
            valid_round: Round::Nil,
            proposer,
            value,
            validity,
        })
    }

    /// This node's part for a proposal it must stream again.
    pub fn restream(&self, id: &ValueId) -> Option<ProposalPart> {
        self.seen.get(&id.0).map(|s| s.part.clone())
    }

    /// Turns two conflicting votes the engine caught into a ledger transaction, signed by
    /// this miner and put in its own mempool: once in a block, the offender's deposit is
    /// slashed (`ledger`, `TxBody::Equivocation`).
    pub fn report_equivocation(
        &mut self,
        a: &SignedMessage<MsContext, Vote>,
        b: &SignedMessage<MsContext, Vote>,
    ) -> Result<TxId, MempoolError> {
        let (va, vb) = (signed_vote(a), signed_vote(b));
        let offence = (va.validator, va.height, va.round, va.kind as u8);
        if self.ledger.equivocations.contains(&offence) || !self.reported.insert(offence) {
            return Err(MempoolError::Duplicate);
        }
        let me = self.address().account();
        let tx = Tx {
            chain_id: self.ctx.chain_id,
            signer: me,
            nonce: self.mempool.next_nonce(&me, &self.ledger),
            fee: ledger::FEE_MIN,
            body: TxBody::Equivocation {
                a: Box::new(va),
                b: Box::new(vb),
            },
        }
        .sign(self.signer.key());
        let id = tx.id();
        self.submit(vec![tx]).pop().expect("one result")?;
        Ok(id)
    }

    /// Lowest height whose block this node can serve.
    pub fn history_min_height(&self) -> Height {
        Height(1)
    }
}

/// Checks transactions' signatures in one batch (one by one only when the batch fails, to
/// find which); a transaction whose signature fails becomes its error.
pub fn check_signatures(txs: Vec<SignedTx>) -> Vec<Result<SignedTx, MempoolError>> {
    let batch_ok = proto::tx::verify_batch(&txs).is_ok();
    txs.into_iter()
        .map(|t| {
            if !batch_ok {
                t.verify()?;
            }
            Ok(t)
        })
        .collect()
}

/// A vote and its signature as the ledger reads them.
pub fn signed_vote(v: &SignedMessage<MsContext, Vote>) -> proto::block::SignedVote {
    proto::block::SignedVote {
        kind: match v.message.typ {
            VoteType::Prevote => proto::block::VoteKind::Prevote,
            VoteType::Precommit => proto::block::VoteKind::Precommit,
        },
        height: v.message.height.0,
        round: v.message.round.as_i64(),
        value: match v.message.value {
            NilOrVal::Nil => None,
            NilOrVal::Val(id) => Some(id.0),
        },
        validator: v.message.validator.account(),
        signature: v.signature.0,
    }
}

/// The ledger's view of a block: its height, time, proposer, seed reveal and commitment,
/// and transactions.
pub fn ledger_block(block: &EncodedBlock) -> Block {
    Block {
        height: block.header.height,
        timestamp_ms: block.header.timestamp_ms,
        proposer: block.header.proposer,
        reveal: block.header.reveal,
        commit: block.header.commit,
        txs: block.txs.clone(),
    }
}

/// Why a block's state root is not `ours`, if it is not.
fn root_mismatch(header: &BlockHeader, ours: &[u8; 32]) -> Option<String> {
    (header.state_root != *ours).then(|| {
        format!(
            "its state root {} is not the hash of the ledger it applies to here, {}",
            data_encoding::HEXLOWER.encode(&header.state_root[..8]),
            data_encoding::HEXLOWER.encode(&ours[..8])
        )
    })
}
