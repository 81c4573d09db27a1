//! The block as miners propose, vote on and store it: a header and the signed transactions,
//! in one canonical byte string whose BLAKE3 (derive_key mode) is the block's id. Votes and
//! commit certificates name a block by that id only, so two nodes agree on a block exactly
//! when they agree on its bytes.
//!
//! Layout (docs/formats.md, "Block"):
//!
//! ```text
//! magic "MSBK" | version u8 = 3 | chain_id u64 | height u64 | timestamp_ms u64
//! | parent [32] (id of block height-1; zeros at height 1) | proposer [32] (ed25519 key)
//! | state_root [32] (hash of the ledger state the block applies to)
//! | reveal [32] | commit [32] (the proposer's seed reveal and next commitment)
//! | tx_count u32 | tx_count x (len u32 | signed transaction bytes)
//! ```

use std::fmt;

use crate::decode::{DecodeError, Reader};
use crate::tx::{AccountId, SignedTx, TX_BYTES_MAX};

pub const BLOCK_MAGIC: &[u8; 4] = b"MSBK";
/// 3: the header carries the proposer's seed reveal and commitment (version 2 had none,
/// version 1 no state root either; both are refused).
pub const BLOCK_VERSION: u8 = 3;
/// Largest encoded block: bounds what a validator holds and verifies per proposal.
pub const BLOCK_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Bytes of the header before the transactions.
pub const BLOCK_HEADER_BYTES: usize = 4 + 1 + 8 + 8 + 8 + 32 + 32 + 32 + 32 + 32 + 4;
/// The BLAKE3 derive_key context of block ids.
pub const BLOCK_ID_CONTEXT: &str = "market.space 2026-11 block id v1";

const WHAT: &str = "block";

/// A block's id: BLAKE3-derive_key(BLOCK_ID_CONTEXT, encoded block).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl fmt::Debug for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BlockId({})",
            data_encoding::HEXLOWER.encode(&self.0[..8])
        )
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl BlockId {
    pub fn of(encoded: &[u8]) -> BlockId {
        BlockId(blake3::derive_key(BLOCK_ID_CONTEXT, encoded))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub chain_id: u64,
    pub height: u64,
    pub timestamp_ms: u64,
    pub parent: BlockId,
    pub proposer: AccountId,
    /// The hash of the ledger state after block `height - 1` (the genesis state's at height
    /// 1): the state this block applies to. A validator whose own ledger hashes otherwise
    /// refuses the block, so a diverging ledger is noticed at the next block.
    pub state_root: [u8; 32],
    /// The value the proposer committed to in its previous block (zeros in its first): the
    /// chain's seed moves on with it (`consensus::ledger::next_seed`).
    pub reveal: [u8; 32],
    /// The proposer's commitment to what its next block will reveal.
    pub commit: [u8; 32],
}

/// A decoded block with the bytes it was decoded from (or encoded to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedBlock {
    pub header: BlockHeader,
    pub txs: Vec<SignedTx>,
    bytes: Vec<u8>,
}

impl EncodedBlock {
    /// Encodes a block. Panics if it exceeds [`BLOCK_BYTES_MAX`]: block builders bound the
    /// bytes they take from the mempool by that limit.
    pub fn new(header: BlockHeader, txs: Vec<SignedTx>) -> EncodedBlock {
        let len = BLOCK_HEADER_BYTES + txs.iter().map(|t| 4 + t.bytes().len()).sum::<usize>();
        assert!(
            len <= BLOCK_BYTES_MAX,
            "block of {len} bytes over the limit"
        );
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(BLOCK_MAGIC);
        b.push(BLOCK_VERSION);
        b.extend_from_slice(&header.chain_id.to_le_bytes());
        b.extend_from_slice(&header.height.to_le_bytes());
        b.extend_from_slice(&header.timestamp_ms.to_le_bytes());
        b.extend_from_slice(&header.parent.0);
        b.extend_from_slice(&header.proposer.0);
        b.extend_from_slice(&header.state_root);
        b.extend_from_slice(&header.reveal);
        b.extend_from_slice(&header.commit);
        let count = u32::try_from(txs.len()).expect("bounded by BLOCK_BYTES_MAX");
        b.extend_from_slice(&count.to_le_bytes());
        for tx in &txs {
            let n = u32::try_from(tx.bytes().len()).expect("bounded by TX_BYTES_MAX");
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(tx.bytes());
        }
        EncodedBlock {
            header,
            txs,
            bytes: b,
        }
    }

    /// Decodes a block; signatures are not checked here (the ledger checks them in a batch).
    pub fn decode(bytes: &[u8]) -> Result<EncodedBlock, DecodeError> {
        if bytes.len() > BLOCK_BYTES_MAX {
            return Err(DecodeError::Invalid {
                what: WHAT,
                field: "length",
                reason: format!("{} bytes, the limit is {BLOCK_BYTES_MAX}", bytes.len()),
            });
        }
        let mut r = Reader::new(WHAT, bytes);
        r.magic(BLOCK_MAGIC)?;
        r.version(BLOCK_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let height = r.u64("height")?;
        if height == 0 {
            return Err(r.invalid("height", "height 0 is the genesis state, not a block"));
        }
        let timestamp_ms = r.u64("timestamp_ms")?;
        let parent = BlockId(r.array("parent")?);
        let proposer = AccountId(r.array("proposer")?);
        let state_root = r.array("state_root")?;
        let reveal = r.array("reveal")?;
        let commit = r.array("commit")?;
        let count = r.u32("tx_count")? as usize;
        // Every transaction takes at least its 4-byte length: a count the rest cannot hold
        // is refused before anything is allocated for it.
        if count > r.remaining() / 4 {
            return Err(r.invalid(
                "tx_count",
                format!("{count} transactions cannot fit in {} bytes", r.remaining()),
            ));
        }
        let mut txs = Vec::with_capacity(count);
        for _ in 0..count {
            let n = r.u32("tx length")? as usize;
            if n > TX_BYTES_MAX {
                return Err(r.invalid(
                    "tx length",
                    format!("{n} bytes, the limit is {TX_BYTES_MAX}"),
                ));
            }
            txs.push(SignedTx::decode(r.take("tx", n)?)?);
        }
        r.finish()?;
        Ok(EncodedBlock {
            header: BlockHeader {
                chain_id,
                height,
                timestamp_ms,
                parent,
                proposer,
                state_root,
                reveal,
                commit,
            },
            txs,
            bytes: bytes.to_vec(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn id(&self) -> BlockId {
        BlockId::of(&self.bytes)
    }
}

/// What a consensus vote is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteKind {
    Prevote = 1,
    Precommit = 2,
}

/// Domain of every consensus signature, so that no vote, proposal or transaction signature
/// can stand for another.
pub const CONSENSUS_SIGNING_DOMAIN: &[u8] = b"market.space consensus v1\0";

/// The bytes a validator signs for a vote: domain | tag 1 | chain_id u64 | kind u8 | height
/// u64 | round i64 | has_value u8 (0 nil, 1 value) | block id [32] (zeros for nil) |
/// validator [32]. The ledger checks equivocation evidence with exactly these bytes.
pub fn vote_sign_bytes(
    chain_id: u64,
    kind: VoteKind,
    height: u64,
    round: i64,
    value: Option<BlockId>,
    validator: &AccountId,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(CONSENSUS_SIGNING_DOMAIN.len() + 1 + 8 + 1 + 8 + 8 + 1 + 64);
    b.extend_from_slice(CONSENSUS_SIGNING_DOMAIN);
    b.push(1);
    b.extend_from_slice(&chain_id.to_le_bytes());
    b.push(kind as u8);
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&round.to_le_bytes());
    b.push(u8::from(value.is_some()));
    b.extend_from_slice(&value.unwrap_or_default().0);
    b.extend_from_slice(&validator.0);
    b
}

/// A validator's signed vote, as equivocation evidence carries it.
/// Encoding (146 bytes): kind u8 (1 prevote, 2 precommit) | height u64 | round i64 |
/// has_value u8 | block id [32] (zeros for nil) | validator [32] | signature [64].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedVote {
    pub kind: VoteKind,
    pub height: u64,
    pub round: i64,
    pub value: Option<BlockId>,
    pub validator: AccountId,
    pub signature: [u8; 64],
}

impl SignedVote {
    pub fn sign_bytes(&self, chain_id: u64) -> Vec<u8> {
        vote_sign_bytes(
            chain_id,
            self.kind,
            self.height,
            self.round,
            self.value,
            &self.validator,
        )
    }

    /// Whether the validator signed this vote for `chain_id` (ZIP-215 rules).
    pub fn verify(&self, chain_id: u64) -> bool {
        ed25519_consensus::VerificationKey::try_from(self.validator.0).is_ok_and(|k| {
            k.verify(
                &ed25519_consensus::Signature::from(self.signature),
                &self.sign_bytes(chain_id),
            )
            .is_ok()
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8);
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.push(u8::from(self.value.is_some()));
        out.extend_from_slice(&self.value.unwrap_or_default().0);
        out.extend_from_slice(&self.validator.0);
        out.extend_from_slice(&self.signature);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<SignedVote, DecodeError> {
        let kind = match r.u8("vote kind")? {
            1 => VoteKind::Prevote,
            2 => VoteKind::Precommit,
            k => {
                return Err(r.invalid(
                    "vote kind",
                    format!("{k} is neither 1 (prevote) nor 2 (precommit)"),
                ))
            }
        };
        let height = r.u64("vote height")?;
        let round = i64::from_le_bytes(r.array("vote round")?);
        let has_value = r.u8("vote has_value")?;
        let id = BlockId(r.array("vote value")?);
        let value = match has_value {
            0 if id == BlockId::default() => None,
            0 => return Err(r.invalid("vote value", "a nil vote carries a zero id")),
            1 => Some(id),
            v => return Err(r.invalid("vote has_value", format!("{v} is neither 0 nor 1"))),
        };
        Ok(SignedVote {
            kind,
            height,
            round,
            value,
            validator: AccountId(r.array("vote validator")?),
            signature: r.array("vote signature")?,
        })
    }
}

/// The bytes a proposer signs for a proposal: domain | tag 2 | chain_id u64 | height u64 |
/// round i64 | pol_round i64 (-1: none) | block id [32] | proposer [32].
pub fn proposal_sign_bytes(
    chain_id: u64,
    height: u64,
    round: i64,
    pol_round: i64,
    value: &BlockId,
    proposer: &AccountId,
) -> Vec<u8> {
    let mut b = Vec::with_capacity(CONSENSUS_SIGNING_DOMAIN.len() + 1 + 8 * 4 + 64);
    b.extend_from_slice(CONSENSUS_SIGNING_DOMAIN);
    b.push(2);
    b.extend_from_slice(&chain_id.to_le_bytes());
    b.extend_from_slice(&height.to_le_bytes());
    b.extend_from_slice(&round.to_le_bytes());
    b.extend_from_slice(&pol_round.to_le_bytes());
    b.extend_from_slice(&value.0);
    b.extend_from_slice(&proposer.0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::{Asset, Tx, TxBody};
    use ed25519_consensus::SigningKey;

    fn block(n: usize) -> EncodedBlock {
        let key = SigningKey::from([7u8; 32]);
        let txs = (0..n)
            .map(|i| {
                Tx {
                    chain_id: 9,
                    signer: AccountId(key.verification_key().to_bytes()),
                    nonce: i as u64,
                    fee: 1,
                    body: TxBody::Transfer {
                        to: AccountId([1; 32]),
                        asset: Asset::Maspc,
                        amount: 5,
                    },
                }
                .sign(&key)
            })
            .collect();
        EncodedBlock::new(
            BlockHeader {
                chain_id: 9,
                height: 3,
                timestamp_ms: 1_700_000_000_000,
                parent: BlockId([2; 32]),
                proposer: AccountId([3; 32]),
                state_root: [4; 32],
                reveal: [5; 32],
                commit: [6; 32],
            },
            txs,
        )
    }

    #[test]
    fn round_trip_keeps_bytes_and_id() {
        for n in [0, 1, 5] {
            let b = block(n);
            let d = EncodedBlock::decode(b.bytes()).unwrap();
            assert_eq!(d, b);
            assert_eq!(d.id(), b.id());
        }
        assert_ne!(block(1).id(), block(2).id());
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let good = block(2).bytes().to_vec();
        for cut in [
            0,
            3,
            5,
            20,
            BLOCK_HEADER_BYTES - 1,
            BLOCK_HEADER_BYTES + 2,
            good.len() - 1,
        ] {
            assert!(EncodedBlock::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(
            EncodedBlock::decode(&extra),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            EncodedBlock::decode(&magic),
            Err(DecodeError::BadMagic { .. })
        ));
        for older in [1, 2] {
            let mut version = good.clone();
            version[4] = older;
            assert!(matches!(
                EncodedBlock::decode(&version),
                Err(DecodeError::UnsupportedVersion { .. })
            ));
        }
        let mut zero_height = good.clone();
        zero_height[13..21].copy_from_slice(&0u64.to_le_bytes());
        assert!(EncodedBlock::decode(&zero_height).is_err());
        let mut huge_count = good.clone();
        huge_count[BLOCK_HEADER_BYTES - 4..BLOCK_HEADER_BYTES]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        let e = EncodedBlock::decode(&huge_count).unwrap_err().to_string();
        assert!(e.contains("tx_count"), "{e}");
        let mut bad_len = good.clone();
        bad_len[BLOCK_HEADER_BYTES..BLOCK_HEADER_BYTES + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(EncodedBlock::decode(&bad_len).is_err());
    }
}
