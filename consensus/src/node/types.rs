//! The chain's types as malachite sees them: its `Context` and the heights, addresses,
//! validators, values (whole blocks), proposals, votes and signatures it is generic over.
//!
//! Every type here has a borsh encoding: the engine's gossip, sync and WAL messages are
//! borsh-encoded with these inside (see `codec`, and docs/formats.md "Consensus messages").
//! Signatures are over the byte strings of `proto::block` (`vote_sign_bytes`,
//! `proposal_sign_bytes`), never over borsh, so that the ledger can check equivocation
//! evidence without this module.

use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;

use async_trait::async_trait;
use borsh::{BorshDeserialize, BorshSerialize};
use ed25519_consensus::{SigningKey, VerificationKey};
use malachitebft_app_channel::app::types::core::{
    self as core, Context, LinearTimeouts, NilOrVal, Round, SignedExtension, SignedMessage,
    SigningScheme, ValidatorProof, VoteExtensionScope, VoteType, VotingPower,
};
use malachitebft_signing::{Error as SigningError, Signer, VerificationResult, Verifier};
use proto::block::{proposal_sign_bytes, vote_sign_bytes, BlockId, EncodedBlock, VoteKind};
use proto::tx::AccountId;

/// A chain height (1 is the first block; 0 is the genesis state).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    BorshSerialize,
    BorshDeserialize,
)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl core::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.checked_add(n).expect("height overflow"))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

/// A validator's address: its ed25519 public key, the same bytes as its ledger account.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Address(pub [u8; 32]);

impl Address {
    pub fn account(&self) -> AccountId {
        AccountId(self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Address({})",
            data_encoding::HEXLOWER.encode(&self.0[..6])
        )
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0[..6]))
    }
}

impl core::Address for Address {}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, BorshSerialize, BorshDeserialize)]
pub struct Sig(pub [u8; 64]);

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sig({})", data_encoding::HEXLOWER.encode(&self.0[..6]))
    }
}

/// The signing scheme: ed25519 with ZIP-215 verification (`ed25519-consensus`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ed25519;

impl SigningScheme for Ed25519 {
    type DecodingError = String;
    type Signature = Sig;
    type PublicKey = VerificationKey;
    type PrivateKey = SigningKey;

    fn decode_signature(bytes: &[u8]) -> Result<Sig, String> {
        <[u8; 64]>::try_from(bytes)
            .map(Sig)
            .map_err(|_| format!("a signature is 64 bytes, not {}", bytes.len()))
    }

    fn encode_signature(signature: &Sig) -> Vec<u8> {
        signature.0.to_vec()
    }

    fn decode_public_key(bytes: &[u8]) -> Result<VerificationKey, String> {
        VerificationKey::try_from(bytes).map_err(|e| format!("bad ed25519 public key: {e}"))
    }

    fn encode_public_key(key: &VerificationKey) -> Vec<u8> {
        key.to_bytes().to_vec()
    }
}

/// A validator and its voting power (its bonded MASP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    pub address: Address,
    pub public_key: VerificationKey,
    pub voting_power: VotingPower,
}

impl core::Validator<MsContext> for Validator {
    fn address(&self) -> &Address {
        &self.address
    }

    fn public_key(&self) -> &VerificationKey {
        &self.public_key
    }

    fn voting_power(&self) -> VotingPower {
        self.voting_power
    }
}

/// The validators of one height, sorted by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Arc<Vec<Validator>>,
    total: VotingPower,
}

impl ValidatorSet {
    /// From the ledger's set (account → stake). Accounts whose bytes are not a valid
    /// ed25519 key cannot sign and are left out; so are zero-power entries.
    pub fn from_stakes<'a>(stakes: impl IntoIterator<Item = (&'a AccountId, &'a u64)>) -> Self {
        let mut validators: Vec<Validator> = stakes
            .into_iter()
            .filter(|(_, p)| **p > 0)
            .filter_map(|(id, p)| {
                Some(Validator {
                    address: Address(id.0),
                    public_key: VerificationKey::try_from(id.0).ok()?,
                    voting_power: *p,
                })
            })
            .collect();
        validators.sort_by_key(|v| v.address);
        let total = validators.iter().map(|v| v.voting_power).sum();
        ValidatorSet {
            validators: Arc::new(validators),
            total,
        }
    }

    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }
}

impl core::ValidatorSet<MsContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }

    fn total_voting_power(&self) -> VotingPower {
        self.total
    }

    fn get_by_address(&self, address: &Address) -> Option<&Validator> {
        self.validators
            .binary_search_by_key(address, |v| v.address)
            .ok()
            .map(|i| &self.validators[i])
    }

    fn get_by_index(&self, index: usize) -> Option<&Validator> {
        self.validators.get(index)
    }
}

/// What consensus decides, as the engine sees it: a block's id. The block itself travels
/// in the [`ProposalPart`] (gossip) and in sync responses, and the node keeps it by id;
/// votes, proposals and the WAL carry only these 32 bytes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct Value {
    pub id: ValueId,
}

impl Value {
    pub fn of(block: &EncodedBlock) -> Value {
        Value {
            id: ValueId(block.id()),
        }
    }
}

impl core::Value for Value {
    type Id = ValueId;

    fn id(&self) -> ValueId {
        self.id
    }
}

/// A block's canonical bytes, checked by `proto::block` whenever they are decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct BlockBytes(pub Arc<Vec<u8>>);

impl BlockBytes {
    pub fn new(block: &EncodedBlock) -> BlockBytes {
        BlockBytes(Arc::new(block.bytes().to_vec()))
    }

    pub fn decode(&self) -> Result<EncodedBlock, proto::DecodeError> {
        EncodedBlock::decode(&self.0)
    }
}

impl fmt::Debug for BlockBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockBytes({} bytes)", self.0.len())
    }
}

impl BorshSerialize for BlockBytes {
    fn serialize<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        self.0.as_slice().serialize(w)
    }
}

impl BorshDeserialize for BlockBytes {
    fn deserialize_reader<R: Read>(r: &mut R) -> std::io::Result<Self> {
        let bytes = read_bounded_bytes(r, proto::block::BLOCK_BYTES_MAX)?;
        EncodedBlock::decode(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(BlockBytes(Arc::new(bytes)))
    }
}

/// Reads a borsh `Vec<u8>` (u32 length, bytes), refusing a length over `max` before
/// allocating, and reading in steps so a lying length cannot reserve memory it has no bytes for.
fn read_bounded_bytes<R: Read>(r: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let len = u32::deserialize_reader(r)? as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, the limit is {max}"),
        ));
    }
    let mut bytes = Vec::new();
    let got = r.take(len as u64).read_to_end(&mut bytes)?;
    if got != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{got} of {len} bytes"),
        ));
    }
    Ok(bytes)
}

/// A block id as consensus votes on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueId(pub BlockId);

impl BorshSerialize for ValueId {
    fn serialize<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.0 .0)
    }
}

impl BorshDeserialize for ValueId {
    fn deserialize_reader<R: Read>(r: &mut R) -> std::io::Result<Self> {
        let mut b = [0u8; 32];
        r.read_exact(&mut b)?;
        Ok(ValueId(BlockId(b)))
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A proposal as the engine gossips, signs and verifies it (with [`SigningProvider`]):
/// it names the block by id; the block's bytes travel in the [`ProposalPart`].
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Proposal {
    pub height: Height,
    pub round: Round,
    pub value: Value,
    pub pol_round: Round,
    pub proposer: Address,
}

impl core::Proposal<MsContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &Value {
        &self.value
    }

    fn take_value(self) -> Value {
        self.value
    }

    fn pol_round(&self) -> Round {
        self.pol_round
    }

    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

/// A whole proposal in one part: the block and the proposer's signature over
/// `proposal_sign_bytes` of its id. Blocks are bounded by `BLOCK_BYTES_MAX`, under the
/// gossip message limit, so one part suffices.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ProposalPart {
    pub height: Height,
    pub round: Round,
    pub pol_round: Round,
    pub proposer: Address,
    pub block: BlockBytes,
    pub signature: Sig,
}

impl ProposalPart {
    pub fn sign_bytes(&self, chain_id: u64) -> Vec<u8> {
        proposal_sign_bytes(
            chain_id,
            self.height.0,
            self.round.as_i64(),
            self.pol_round.as_i64(),
            &BlockId::of(&self.block.0),
            &self.proposer.account(),
        )
    }
}

impl core::ProposalPart<MsContext> for ProposalPart {
    fn is_first(&self) -> bool {
        true
    }

    fn is_last(&self) -> bool {
        true
    }
}

/// A prevote or precommit. Vote extensions are not used (the extension type is `()`).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Vote {
    pub typ: VoteType,
    pub height: Height,
    pub round: Round,
    pub value: NilOrVal<ValueId>,
    pub validator: Address,
    pub extension: Option<SignedExtension<MsContext>>,
}

impl Vote {
    /// A vote without an extension (extensions are disabled on this chain).
    pub fn new(
        typ: VoteType,
        height: Height,
        round: Round,
        value: NilOrVal<ValueId>,
        validator: Address,
    ) -> Vote {
        Vote {
            typ,
            height,
            round,
            value,
            validator,
            extension: None,
        }
    }

    pub fn sign_bytes(&self, chain_id: u64) -> Vec<u8> {
        vote_sign_bytes(
            chain_id,
            match self.typ {
                VoteType::Prevote => VoteKind::Prevote,
                VoteType::Precommit => VoteKind::Precommit,
            },
            self.height.0,
            self.round.as_i64(),
            match self.value {
                NilOrVal::Nil => None,
                NilOrVal::Val(v) => Some(v.0),
            },
            &self.validator.account(),
        )
    }
}

impl core::Vote<MsContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }

    fn round(&self) -> Round {
        self.round
    }

    fn value(&self) -> &NilOrVal<ValueId> {
        &self.value
    }

    fn take_value(self) -> NilOrVal<ValueId> {
        self.value
    }

    fn vote_type(&self) -> VoteType {
        self.typ
    }

    fn validator_address(&self) -> &Address {
        &self.validator
    }

    fn extension(&self) -> Option<&SignedExtension<MsContext>> {
        self.extension.as_ref()
    }

    fn take_extension(&mut self) -> Option<SignedExtension<MsContext>> {
        self.extension.take()
    }

    fn extend(self, extension: SignedExtension<MsContext>) -> Self {
        Vote {
            extension: Some(extension),
            ..self
        }
    }
}

/// The chain's malachite context. `chain_id` is in every signed byte string.
#[derive(Clone, Copy, Debug)]
pub struct MsContext {
    pub chain_id: u64,
}

impl MsContext {
    /// Stake-weighted proposer: BLAKE3 of (height, round) picks a point in the total power;
    /// the validator whose cumulative power covers it proposes. Every node computes the same.
    pub fn proposer_index(set: &ValidatorSet, height: Height, round: Round) -> usize {
        assert!(set.total > 0, "a validator set has power");
        let mut h = blake3::Hasher::new_derive_key("market.space 2026-11 proposer v1");
        h.update(&height.0.to_le_bytes());
        h.update(&round.as_i64().to_le_bytes());
        let x = h.finalize();
        let point = u64::from_le_bytes(x.as_bytes()[..8].try_into().expect("8 bytes")) % set.total;
        let mut acc = 0u64;
        for (i, v) in set.validators.iter().enumerate() {
            acc += v.voting_power;
            if point < acc {
                return i;
            }
        }
        unreachable!("point < total power")
    }
}

impl Context for MsContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = ProposalPart;
    type Proposal = Proposal;
    type Validator = Validator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = LinearTimeouts;
    type Value = Value;
    type Vote = Vote;
    type Extension = ();
    type SigningScheme = Ed25519;

    fn select_proposer<'a>(
        &self,
        set: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a Validator {
        &set.validators[Self::proposer_index(set, height, round)]
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: Value,
        pol_round: Round,
        address: Address,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer: address,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value: NilOrVal<ValueId>,
        address: Address,
    ) -> Vote {
        Vote::new(VoteType::Prevote, height, round, value, address)
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value: NilOrVal<ValueId>,
        address: Address,
    ) -> Vote {
        Vote::new(VoteType::Precommit, height, round, value, address)
    }
}

/// Signs and verifies consensus messages with one validator's key.
#[derive(Clone)]
pub struct SigningProvider {
    pub chain_id: u64,
    key: SigningKey,
}

impl fmt::Debug for SigningProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningProvider({:?})", self.address())
    }
}

impl SigningProvider {
    pub fn new(chain_id: u64, key: SigningKey) -> Self {
        SigningProvider { chain_id, key }
    }

    pub fn address(&self) -> Address {
        Address(self.key.verification_key().to_bytes())
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn sign(&self, bytes: &[u8]) -> Sig {
        Sig(self.key.sign(bytes).to_bytes())
    }

    pub fn verify(bytes: &[u8], sig: &Sig, key: &VerificationKey) -> bool {
        key.verify(&ed25519_consensus::Signature::from(sig.0), bytes)
            .is_ok()
    }

    fn proposal_bytes(&self, p: &Proposal) -> Vec<u8> {
        proposal_sign_bytes(
            self.chain_id,
            p.height.0,
            p.round.as_i64(),
            p.pol_round.as_i64(),
            &p.value.id.0,
            &p.proposer.account(),
        )
    }
}

#[async_trait]
impl Verifier<MsContext> for SigningProvider {
    async fn verify_signed_vote(
        &self,
        vote: &Vote,
        signature: &Sig,
        key: &VerificationKey,
    ) -> Result<VerificationResult, SigningError> {
        Ok(VerificationResult::from_bool(Self::verify(
            &vote.sign_bytes(self.chain_id),
            signature,
            key,
        )))
    }

    async fn verify_signed_proposal(
        &self,
        proposal: &Proposal,
        signature: &Sig,
        key: &VerificationKey,
    ) -> Result<VerificationResult, SigningError> {
        Ok(VerificationResult::from_bool(Self::verify(
            &self.proposal_bytes(proposal),
            signature,
            key,
        )))
    }

    async fn verify_signed_vote_extension(
        &self,
        _scope: &VoteExtensionScope<MsContext>,
        _extension: &(),
        _signature: &Sig,
        _key: &VerificationKey,
    ) -> Result<VerificationResult, SigningError> {
        // Vote extensions are disabled on this chain: none is ever valid.
        Ok(VerificationResult::Invalid)
    }

    async fn verify_validator_proof(
        &self,
        proof: &ValidatorProof<MsContext>,
    ) -> Result<VerificationResult, SigningError> {
        let Ok(key) = Ed25519::decode_public_key(&proof.public_key) else {
            return Ok(VerificationResult::Invalid);
        };
        Ok(VerificationResult::from_bool(Self::verify(
            &proof.preimage(),
            &proof.signature,
            &key,
        )))
    }
}

#[async_trait]
impl Signer<MsContext> for SigningProvider {
    async fn sign_vote(&self, vote: Vote) -> Result<SignedMessage<MsContext, Vote>, SigningError> {
        let signature = self.sign(&vote.sign_bytes(self.chain_id));
        Ok(SignedMessage::new(vote, signature))
    }

    async fn sign_proposal(
        &self,
        proposal: Proposal,
    ) -> Result<SignedMessage<MsContext, Proposal>, SigningError> {
        let signature = self.sign(&self.proposal_bytes(&proposal));
        Ok(SignedMessage::new(proposal, signature))
    }

    async fn sign_vote_extension(
        &self,
        _scope: VoteExtensionScope<MsContext>,
        _extension: (),
    ) -> Result<SignedMessage<MsContext, ()>, SigningError> {
        Err(SigningError::from_source(
            "vote extensions are disabled on this chain".to_string(),
        ))
    }

    async fn sign_validator_proof(
        &self,
        public_key: Vec<u8>,
        peer_id: Vec<u8>,
    ) -> Result<ValidatorProof<MsContext>, SigningError> {
        let preimage = ValidatorProof::<MsContext>::signing_bytes(&public_key, &peer_id);
        Ok(ValidatorProof::new(
            public_key,
            peer_id,
            self.sign(&preimage),
        ))
    }
}
