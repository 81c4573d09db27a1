//! Ledger transactions: what a signer asks the chain to do, their canonical encoding, and
//! ed25519 signatures (ZIP-215 rules, via `ed25519-consensus`, the scheme malachite signs
//! votes with, so every node agrees on which signatures are valid).
//!
//! Canonical means one byte string per value: fixed-width little-endian integers, a tag byte
//! per enum, lengths before variable parts, no trailing bytes; the decoder rejects anything
//! else, so a transaction's id (BLAKE3 of its signed bytes) is a function of its meaning.
//! `docs/formats.md` section 6 describes the layout.

use std::fmt;

use ed25519_consensus::SigningKey;

use crate::decode::{DecodeError, Reader};
use crate::ids::ChunkId;
use crate::receipt::ProxyReceipt;
use crate::ChunkEntry;

pub const TX_VERSION: u8 = 1;
/// Signatures cover this prefix and the unsigned encoding, so a transaction signature can
/// never be replayed as some other message's signature.
pub const TX_SIGNING_DOMAIN: &[u8] = b"market.space tx v1\0";
/// Largest signed transaction a decoder accepts. Bounds the mempool's per-item memory and
/// the chunk list of one deal (see [`DEAL_CHUNKS_MAX`]).
pub const TX_BYTES_MAX: usize = 256 * 1024;
/// Most chunks one upload deal commits to: 4096 x 40-byte entries stays under
/// [`TX_BYTES_MAX`]; with 8 MiB chunks a deal covers 32 GiB, larger files take several deals.
pub const DEAL_CHUNKS_MAX: u32 = 4096;
/// Most proofs one `StorageProofs` transaction carries: the chain samples fewer per host
/// and period (`consensus::ledger::CHALLENGE_SAMPLES`); the bound keeps the transaction
/// within `TX_BYTES_MAX`.
pub const PROOFS_PER_TX_MAX: usize = 32;
/// Longest contractor endpoint (host:port or URL) in bytes.
pub const ENDPOINT_BYTES_MAX: usize = 255;
const WHAT: &str = "transaction";

const _: () = assert!(DEAL_CHUNKS_MAX as usize * 40 + 1024 < TX_BYTES_MAX);

/// An account is its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 32]);

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccountId({})",
            data_encoding::HEXLOWER.encode(&self.0[..8])
        )
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

/// The two assets of the seed: MASP (deposits and stake) and MASPC (what customers pay with).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    Masp = 1,
    Maspc = 2,
}

/// The roles a contractor registers for, each with its own deposit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Host = 1,
    Miner = 2,
    Proxy = 3,
    Exchange = 4,
    Insurer = 5,
}

/// A deal is named by the id of the payment transaction that opened it.
pub type DealId = TxId;

/// Most a commission can be, in thousandths: all of what the host is paid.
pub const COMMISSION_PERMILLE_MAX: u16 = 1000;

/// The exchange that matched a deal and the commission its host agreed to pay it (in its
/// signed offer, `crate::offer`): this many thousandths of each part of the storage fee the
/// host earns go to the exchange instead (`docs/formats.md` section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Broker {
    pub exchange: AccountId,
    /// 0 to [`COMMISSION_PERMILLE_MAX`].
    pub commission_permille: u16,
}

impl Broker {
    /// The exchange's share of `part` (rounded down: the host keeps the remainder).
    pub fn commission(&self, part: u64) -> u64 {
        let c = u128::from(part) * u128::from(self.commission_permille) / 1000;
        u64::try_from(c).expect("at most part")
    }
}

/// Domain separation of an insurer's signed quote.
pub const INSURANCE_CONTEXT: &[u8] = b"market.space 2026-12 insurance quote v1\0";

/// Cover an insurer sold for a deal (the seed's 4.0 and 5.2): the sender pays `premium`
/// MASPC with the deal's payment, and if the host misses a storage proof of the deal the
/// ledger pays the sender `cover` MASP from the insurer's deposit, once. The insurer's
/// signature over [`Insurance::message`] binds the quote to this chain, sender, host,
/// offer and terms, so it cannot be used for another deal (`docs/formats.md` section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insurance {
    pub insurer: AccountId,
    /// MASPC, from the sender.
    pub premium: u64,
    /// MASP, from the insurer's deposit.
    pub cover: u64,
    /// The quote is good until this Unix second (the block's time).
    pub quote_expiry_unix_secs: u64,
    pub signature: [u8; 64],
}

/// What an insurer's quote covers: the deal's payment as the sender will send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsuredDeal {
    pub chain_id: u64,
    pub sender: AccountId,
    pub host: AccountId,
    pub offer: [u8; 16],
    /// The offer's expiry as the payment states it: a quote must expire no later, so that
    /// the chain still remembers the offer as taken while the quote could be used again.
    pub offer_expiry_unix_secs: u64,
    pub storage_fee: u64,
    pub period_blocks: u64,
}

impl Insurance {
    /// The bytes the insurer signs: [`INSURANCE_CONTEXT`], chain id (u64), insurer (32),
    /// sender (32), host (32), offer (16), offer_expiry, storage_fee, period_blocks,
    /// premium, cover, quote_expiry (u64 each, little-endian).
    pub fn message(
        deal: &InsuredDeal,
        insurer: &AccountId,
        premium: u64,
        cover: u64,
        expiry: u64,
    ) -> Vec<u8> {
        let mut m = INSURANCE_CONTEXT.to_vec();
        m.extend_from_slice(&deal.chain_id.to_le_bytes());
        m.extend_from_slice(&insurer.0);
        m.extend_from_slice(&deal.sender.0);
        m.extend_from_slice(&deal.host.0);
        m.extend_from_slice(&deal.offer);
        for v in [
            deal.offer_expiry_unix_secs,
            deal.storage_fee,
            deal.period_blocks,
            premium,
            cover,
            expiry,
        ] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m
    }

    /// The insurer's quote for `deal`.
    pub fn sign(
        key: &SigningKey,
        deal: &InsuredDeal,
        premium: u64,
        cover: u64,
        quote_expiry_unix_secs: u64,
    ) -> Insurance {
        let insurer = AccountId(key.verification_key().to_bytes());
        let m = Self::message(deal, &insurer, premium, cover, quote_expiry_unix_secs);
        Insurance {
            insurer,
            premium,
            cover,
            quote_expiry_unix_secs,
            signature: key.sign(&m).to_bytes(),
        }
    }

    /// Whether the insurer signed this quote for `deal` (and its key is usable).
    pub fn verify(&self, deal: &InsuredDeal) -> bool {
        if check_signer(&self.insurer).is_err() {
            return false;
        }
        let m = Self::message(
            deal,
            &self.insurer,
            self.premium,
            self.cover,
            self.quote_expiry_unix_secs,
        );
        crate::sig::verify(&self.insurer.0, &self.signature, &m)
    }
}

/// BLAKE3 of a signed transaction's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub [u8; 32]);

impl fmt::Debug for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TxId({})", data_encoding::HEXLOWER.encode(&self.0[..8]))
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

/// What a transaction does. Tags are the byte that encodes each variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxBody {
    /// Tag 1: move `amount` of `asset` to `to`.
    Transfer {
        to: AccountId,
        asset: Asset,
        amount: u64,
    },
    /// Tag 2: register as a contractor in `role`, locking `deposit` MASP.
    Register {
        role: Role,
        deposit: u64,
        endpoint: String,
    },
    /// Tag 3: lock `amount` more MASP in an existing registration.
    RaiseDeposit { role: Role, amount: u64 },
    /// Tag 4: start leaving `role`; the deposit stays locked for the unbonding period.
    Unbond { role: Role },
    /// Tag 5: after the unbonding period, take the deposit back and leave `role`.
    Withdraw { role: Role },
    /// Tag 6, the seed's transaction #3: the sender escrows `storage_fee` MASPC for `host` to
    /// keep `chunks` for `period_blocks`, and names the fee receivers pay it per download.
    /// It cites the host's signed offer (`crate::offer`) by id and expiry: the chain takes
    /// one payment per offer, before the offer expires. `broker` names the exchange that
    /// matched the deal and the commission the host's offer agreed to pay it; `insurance`
    /// the insurer's signed quote the sender accepts, whose premium it pays with the fee.
    UploadPayment {
        host: AccountId,
        offer: [u8; 16],
        offer_expiry_unix_secs: u64,
        storage_fee: u64,
        download_fee: u64,
        period_blocks: u64,
        broker: Option<Broker>,
        chunks: Vec<ChunkEntry>,
        insurance: Option<Insurance>,
    },
    /// Tag 7, the seed's transaction #4: the host's CRC32C of every chunk it received, in order.
    UploadCompletion { deal: DealId, crcs: Vec<u32> },
    /// Tag 8, the seed's transaction #7: a receiver pays the deal's download fee for its
    /// sender, `host_part` for its host, and `exchange_part` for `exchange` if there is one.
    /// The ledger holds the sum until the deal's host claims it (`DownloadClaim`, which pays
    /// the three parts out) or, unclaimed, gives it back to the receiver when the claim
    /// window closes.
    DownloadPayment {
        deal: DealId,
        /// The deal's download fee the receiver was quoted and agrees to: the ledger refuses
        /// the payment if the deal's fee is another by then (`FeeChanged`).
        fee: u64,
        host_part: u64,
        exchange: Option<AccountId>,
        exchange_part: u64,
    },
    /// Tag 9: proof of existence: record that `hash` existed at this block.
    RecordHash { hash: [u8; 32] },
    /// Tag 10: a party to `deal` complains about the other, paying (burning) `fee` MASPC.
    Complaint { deal: DealId, fee: u64 },
    /// Tag 11: a host answers its storage challenge for proof period `period` (the
    /// chain's period number: heights `period x P` to `(period + 1) x P - 1`): one verified
    /// slice per sampled leaf, in the challenge's order (see [`crate::proof`]). One such
    /// transaction covers all of the host's deals, whatever their number of chunks.
    StorageProofs { period: u64, proofs: Vec<Vec<u8>> },
    /// Tag 12: evidence that a validator signed two different votes of one kind for the same
    /// height and round; the ledger checks both signatures and slashes its miner deposit.
    Equivocation {
        a: Box<crate::block::SignedVote>,
        b: Box<crate::block::SignedVote>,
    },
    /// Tag 13: the deal's host claims a download payment (by the payment's transaction
    /// id) it is serving: the parts held for it are paid out.
    DownloadClaim { payment: TxId },
    /// Tag 14: the deal's sender changes the fee receivers pay it per download from now on
    /// (payments already made keep the fee they paid).
    SetDownloadFee { deal: DealId, download_fee: u64 },
    /// Tag 15: lock `amount` MASPC more in the signer's proxy allowance, which pays the
    /// proxies that relay for it (and cancel a release under way).
    LockAllowance { amount: u64 },
    /// Tag 16: give back the signer's allowance: what is left of it returns with the first
    /// block `ALLOWANCE_RELEASE_SECS` of block time later (receipts are paid until then).
    ReleaseAllowance,
    /// Tag 17: a proxy redeems receipts its clients signed to it: each is paid once, from
    /// its client's allowance (as much as is left); stale ones are skipped.
    RedeemReceipts { receipts: Vec<ProxyReceipt> },
}

/// Most receipts one `RedeemReceipts` carries (about 94 KB).
pub const RECEIPTS_PER_TX_MAX: usize = 512;

/// An unsigned transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tx {
    /// Which chain this is for: a transaction for a devnet never applies on another chain.
    pub chain_id: u64,
    pub signer: AccountId,
    /// The signer's next nonce: transactions of one account apply in nonce order, once.
    pub nonce: u64,
    /// MASPC burned for inclusion.
    pub fee: u64,
    pub body: TxBody,
}

/// A transaction and its signature, with its encoding kept so the id and the signature check
/// need no re-encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedTx {
    /// Private: what is applied must be exactly what was signed.
    tx: Tx,
    signature: [u8; 64],
    bytes: Vec<u8>,
}

impl fmt::Debug for SignedTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedTx")
            .field("id", &self.id())
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl Asset {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("asset")? {
            1 => Ok(Asset::Masp),
            2 => Ok(Asset::Maspc),
            other => Err(r.invalid("asset", format!("{other} is not 1 (MASP) or 2 (MASPC)"))),
        }
    }
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Host,
        Role::Miner,
        Role::Proxy,
        Role::Exchange,
        Role::Insurer,
    ];

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8("role")?;
        Role::ALL
            .into_iter()
            .find(|role| *role as u8 == tag)
            .ok_or_else(|| r.invalid("role", format!("{tag} is not a role (1 to 5)")))
    }
}

impl Tx {
    /// The canonical unsigned encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(TX_VERSION);
        put_u64(&mut out, self.chain_id);
        out.extend_from_slice(&self.signer.0);
        put_u64(&mut out, self.nonce);
        put_u64(&mut out, self.fee);
        match &self.body {
            TxBody::Transfer { to, asset, amount } => {
                out.push(1);
                out.extend_from_slice(&to.0);
                out.push(*asset as u8);
                put_u64(&mut out, *amount);
            }
            TxBody::Register {
                role,
                deposit,
                endpoint,
            } => {
                out.push(2);
                out.push(*role as u8);
                put_u64(&mut out, *deposit);
                assert!(
                    endpoint.len() <= ENDPOINT_BYTES_MAX,
                    "endpoint longer than ENDPOINT_BYTES_MAX"
                );
                let len = u16::try_from(endpoint.len()).expect("at most ENDPOINT_BYTES_MAX");
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(endpoint.as_bytes());
            }
            TxBody::RaiseDeposit { role, amount } => {
                out.push(3);
                out.push(*role as u8);
                put_u64(&mut out, *amount);
            }
            TxBody::Unbond { role } => out.extend_from_slice(&[4, *role as u8]),
            TxBody::Withdraw { role } => out.extend_from_slice(&[5, *role as u8]),
            TxBody::UploadPayment {
                host,
                offer,
                offer_expiry_unix_secs,
                storage_fee,
                download_fee,
                period_blocks,
                broker,
                chunks,
                insurance,
            } => {
                out.push(6);
                out.extend_from_slice(&host.0);
                out.extend_from_slice(offer);
                put_u64(&mut out, *offer_expiry_unix_secs);
                put_u64(&mut out, *storage_fee);
                put_u64(&mut out, *download_fee);
                put_u64(&mut out, *period_blocks);
                match broker {
                    None => out.push(0),
                    Some(b) => {
                        assert!(
                            b.commission_permille <= COMMISSION_PERMILLE_MAX,
                            "a commission is at most COMMISSION_PERMILLE_MAX"
                        );
                        out.push(1);
                        out.extend_from_slice(&b.exchange.0);
                        out.extend_from_slice(&b.commission_permille.to_le_bytes());
                    }
                }
                assert!(
                    chunks.len() <= DEAL_CHUNKS_MAX as usize,
                    "more than DEAL_CHUNKS_MAX entries"
                );
                put_u32(
                    &mut out,
                    u32::try_from(chunks.len()).expect("at most DEAL_CHUNKS_MAX"),
                );
                for c in chunks {
                    out.extend_from_slice(&c.id.0);
                    put_u32(&mut out, c.sealed_bytes);
                    put_u32(&mut out, c.crc32c);
                }
                match insurance {
                    None => out.push(0),
                    Some(i) => {
                        out.push(1);
                        out.extend_from_slice(&i.insurer.0);
                        put_u64(&mut out, i.premium);
                        put_u64(&mut out, i.cover);
                        put_u64(&mut out, i.quote_expiry_unix_secs);
                        out.extend_from_slice(&i.signature);
                    }
                }
            }
            TxBody::UploadCompletion { deal, crcs } => {
                out.push(7);
                out.extend_from_slice(&deal.0);
                assert!(
                    crcs.len() <= DEAL_CHUNKS_MAX as usize,
                    "more than DEAL_CHUNKS_MAX entries"
                );
                put_u32(
                    &mut out,
                    u32::try_from(crcs.len()).expect("at most DEAL_CHUNKS_MAX"),
                );
                for crc in crcs {
                    put_u32(&mut out, *crc);
                }
            }
            TxBody::DownloadPayment {
                deal,
                fee,
                host_part,
                exchange,
                exchange_part,
            } => {
                out.push(8);
                out.extend_from_slice(&deal.0);
                put_u64(&mut out, *fee);
                put_u64(&mut out, *host_part);
                match exchange {
                    None => out.push(0),
                    Some(x) => {
                        out.push(1);
                        out.extend_from_slice(&x.0);
                    }
                }
                put_u64(&mut out, *exchange_part);
            }
            TxBody::RecordHash { hash } => {
                out.push(9);
                out.extend_from_slice(hash);
            }
            TxBody::Complaint { deal, fee } => {
                out.push(10);
                out.extend_from_slice(&deal.0);
                put_u64(&mut out, *fee);
            }
            TxBody::StorageProofs { period, proofs } => {
                assert!(
                    proofs.len() <= PROOFS_PER_TX_MAX,
                    "more than PROOFS_PER_TX_MAX proofs"
                );
                out.push(11);
                put_u64(&mut out, *period);
                out.extend_from_slice(
                    &u16::try_from(proofs.len())
                        .expect("at most PROOFS_PER_TX_MAX")
                        .to_le_bytes(),
                );
                for proof in proofs {
                    assert!(
                        proof.len() <= crate::proof::PROOF_BYTES_MAX,
                        "proof longer than PROOF_BYTES_MAX"
                    );
                    let len = u16::try_from(proof.len()).expect("at most PROOF_BYTES_MAX");
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(proof);
                }
            }
            TxBody::Equivocation { a, b } => {
                out.push(12);
                a.encode(&mut out);
                b.encode(&mut out);
            }
            TxBody::DownloadClaim { payment } => {
                out.push(13);
                out.extend_from_slice(&payment.0);
            }
            TxBody::SetDownloadFee { deal, download_fee } => {
                out.push(14);
                out.extend_from_slice(&deal.0);
                put_u64(&mut out, *download_fee);
            }
            TxBody::LockAllowance { amount } => {
                out.push(15);
                put_u64(&mut out, *amount);
            }
            TxBody::ReleaseAllowance => out.push(16),
            TxBody::RedeemReceipts { receipts } => {
                assert!(
                    !receipts.is_empty() && receipts.len() <= RECEIPTS_PER_TX_MAX,
                    "1 to RECEIPTS_PER_TX_MAX receipts"
                );
                out.push(17);
                let n = u16::try_from(receipts.len()).expect("at most RECEIPTS_PER_TX_MAX");
                out.extend_from_slice(&n.to_le_bytes());
                for r in receipts {
                    r.encode(&mut out);
                }
            }
        }
        out
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        r.version(TX_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let signer = AccountId(r.array("signer")?);
        let nonce = r.u64("nonce")?;
        let fee = r.u64("fee")?;
        let body = match r.u8("body tag")? {
            1 => TxBody::Transfer {
                to: AccountId(r.array("to")?),
                asset: Asset::decode(r)?,
                amount: r.u64("amount")?,
            },
            2 => {
                let role = Role::decode(r)?;
                let deposit = r.u64("deposit")?;
                let len = usize::from(r.u16("endpoint length")?);
                if len == 0 || len > ENDPOINT_BYTES_MAX {
                    return Err(r.invalid(
                        "endpoint",
                        format!("{len} bytes, the limit is {ENDPOINT_BYTES_MAX}"),
                    ));
                }
                let endpoint = std::str::from_utf8(r.take("endpoint", len)?)
                    .map_err(|e| r.invalid("endpoint", format!("not UTF-8: {e}")))?
                    .to_owned();
                TxBody::Register {
                    role,
                    deposit,
                    endpoint,
                }
            }
            3 => TxBody::RaiseDeposit {
                role: Role::decode(r)?,
                amount: r.u64("amount")?,
            },
            4 => TxBody::Unbond {
                role: Role::decode(r)?,
            },
            5 => TxBody::Withdraw {
                role: Role::decode(r)?,
            },
            6 => {
                let host = AccountId(r.array("host")?);
                let offer = r.array("offer")?;
                let offer_expiry_unix_secs = r.u64("offer_expiry_unix_secs")?;
                let storage_fee = r.u64("storage_fee")?;
                let download_fee = r.u64("download_fee")?;
                let period_blocks = r.u64("period_blocks")?;
                let broker = match r.u8("broker present")? {
                    0 => None,
                    1 => {
                        let exchange = AccountId(r.array("exchange")?);
                        let commission_permille = r.u16("commission_permille")?;
                        if commission_permille > COMMISSION_PERMILLE_MAX {
                            return Err(r.invalid(
                                "commission_permille",
                                format!(
                                    "{commission_permille} is over {COMMISSION_PERMILLE_MAX} (all of the fee)"
                                ),
                            ));
                        }
                        Some(Broker {
                            exchange,
                            commission_permille,
                        })
                    }
                    other => {
                        return Err(r.invalid("broker present", format!("{other} is not 0 or 1")))
                    }
                };
                let count = counted(r, "chunk count", 40)?;
                if count == 0 {
                    return Err(r.invalid("chunk count", "a deal has at least one chunk"));
                }
                let mut chunks = Vec::with_capacity(count);
                for _ in 0..count {
                    chunks.push(ChunkEntry {
                        id: ChunkId(r.array("chunk id")?),
                        sealed_bytes: r.u32("sealed_bytes")?,
                        crc32c: r.u32("crc32c")?,
                    });
                }
                let insurance = match r.u8("insurance present")? {
                    0 => None,
                    1 => {
                        let insurer = AccountId(r.array("insurer")?);
                        let premium = r.u64("premium")?;
                        let cover = r.u64("cover")?;
                        if cover == 0 {
                            return Err(r.invalid("cover", "insurance covers a positive amount"));
                        }
                        Some(Insurance {
                            insurer,
                            premium,
                            cover,
                            quote_expiry_unix_secs: r.u64("quote_expiry")?,
                            signature: r.array("insurer signature")?,
                        })
                    }
                    other => {
                        return Err(r.invalid("insurance present", format!("{other} is not 0 or 1")))
                    }
                };
                TxBody::UploadPayment {
                    host,
                    offer,
                    offer_expiry_unix_secs,
                    storage_fee,
                    download_fee,
                    period_blocks,
                    broker,
                    chunks,
                    insurance,
                }
            }
            7 => {
                let deal = TxId(r.array("deal")?);
                let count = counted(r, "crc count", 4)?;
                let mut crcs = Vec::with_capacity(count);
                for _ in 0..count {
                    crcs.push(r.u32("crc32c")?);
                }
                TxBody::UploadCompletion { deal, crcs }
            }
            8 => {
                let deal = TxId(r.array("deal")?);
                let fee = r.u64("fee")?;
                let host_part = r.u64("host_part")?;
                let exchange = match r.u8("exchange present")? {
                    0 => None,
                    1 => Some(AccountId(r.array("exchange")?)),
                    other => {
                        return Err(r.invalid("exchange present", format!("{other} is not 0 or 1")))
                    }
                };
                {
                    let exchange_part = r.u64("exchange_part")?;
                    if exchange.is_none() && exchange_part != 0 {
                        return Err(
                            r.invalid("exchange_part", "must be 0 when no exchange is named")
                        );
                    }
                    TxBody::DownloadPayment {
                        deal,
                        fee,
                        host_part,
                        exchange,
                        exchange_part,
                    }
                }
            }
            9 => TxBody::RecordHash {
                hash: r.array("hash")?,
            },
            10 => TxBody::Complaint {
                deal: TxId(r.array("deal")?),
                fee: r.u64("fee")?,
            },
            11 => {
                let period = r.u64("period")?;
                let count = usize::from(r.u16("proof count")?);
                if count == 0 || count > PROOFS_PER_TX_MAX {
                    return Err(r.invalid(
                        "proof count",
                        format!("{count}: 1 to {PROOFS_PER_TX_MAX} proofs"),
                    ));
                }
                let mut proofs = Vec::with_capacity(count);
                for _ in 0..count {
                    let len = usize::from(r.u16("proof length")?);
                    if len > crate::proof::PROOF_BYTES_MAX {
                        return Err(r.invalid(
                            "proof length",
                            format!(
                                "{len} bytes, the limit is {}",
                                crate::proof::PROOF_BYTES_MAX
                            ),
                        ));
                    }
                    proofs.push(r.take("proof", len)?.to_vec());
                }
                TxBody::StorageProofs { period, proofs }
            }
            12 => TxBody::Equivocation {
                a: Box::new(crate::block::SignedVote::decode(r)?),
                b: Box::new(crate::block::SignedVote::decode(r)?),
            },
            13 => TxBody::DownloadClaim {
                payment: TxId(r.array("payment")?),
            },
            14 => TxBody::SetDownloadFee {
                deal: TxId(r.array("deal")?),
                download_fee: r.u64("download_fee")?,
            },
            15 => TxBody::LockAllowance {
                amount: r.u64("amount")?,
            },
            16 => TxBody::ReleaseAllowance,
            17 => {
                let n = usize::from(r.u16("receipt count")?);
                if n == 0 || n > RECEIPTS_PER_TX_MAX {
                    return Err(
                        r.invalid("receipt count", format!("{n}: 1 to {RECEIPTS_PER_TX_MAX}"))
                    );
                }
                if r.remaining() < n * crate::receipt::RECEIPT_BYTES {
                    return Err(r.invalid(
                        "receipt count",
                        format!("{n} receipts do not fit in {} bytes", r.remaining()),
                    ));
                }
                let mut receipts = Vec::with_capacity(n);
                for _ in 0..n {
                    receipts.push(ProxyReceipt::read(r)?);
                }
                TxBody::RedeemReceipts { receipts }
            }
            other => {
                return Err(r.invalid(
                    "body tag",
                    format!("{other} is not a transaction kind (1 to 14)"),
                ))
            }
        };
        Ok(Tx {
            chain_id,
            signer,
            nonce,
            fee,
            body,
        })
    }

    /// Signs with `key`, whose public key must be `self.signer`.
    pub fn sign(self, key: &SigningKey) -> SignedTx {
        assert_eq!(
            key.verification_key().to_bytes(),
            self.signer.0,
            "signing with a key that is not the signer's"
        );
        let mut bytes = self.encode();
        assert!(
            bytes.len() + 64 <= TX_BYTES_MAX,
            "transaction larger than TX_BYTES_MAX"
        );
        let signature = key.sign(&signing_message(&bytes)).to_bytes();
        bytes.extend_from_slice(&signature);
        SignedTx {
            tx: self,
            signature,
            bytes,
        }
    }
}

/// Reads a u32 element count and checks it against the deal limit and the bytes left.
fn counted(
    r: &mut Reader<'_>,
    field: &'static str,
    element_bytes: usize,
) -> Result<usize, DecodeError> {
    let count = r.u32(field)?;
    if count > DEAL_CHUNKS_MAX {
        return Err(r.invalid(
            field,
            format!("{count} exceeds the limit of {DEAL_CHUNKS_MAX}"),
        ));
    }
    let count = count as usize;
    if r.remaining() < count * element_bytes {
        return Err(r.invalid(
            field,
            format!(
                "{count} entries need {} bytes, {} remain",
                count * element_bytes,
                r.remaining()
            ),
        ));
    }
    Ok(count)
}

fn signing_message(unsigned: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(TX_SIGNING_DOMAIN.len() + unsigned.len());
    msg.extend_from_slice(TX_SIGNING_DOMAIN);
    msg.extend_from_slice(unsigned);
    msg
}

impl SignedTx {
    /// Decodes a signed transaction (unsigned encoding, then 64 signature bytes). The
    /// signature is not checked here: see [`SignedTx::verify`] and [`verify_batch`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > TX_BYTES_MAX {
            return Err(DecodeError::Invalid {
                what: WHAT,
                field: "length",
                reason: format!("{} bytes, the limit is {TX_BYTES_MAX}", bytes.len()),
            });
        }
        let Some(unsigned_len) = bytes.len().checked_sub(64) else {
            return Err(DecodeError::Truncated {
                what: WHAT,
                field: "signature",
                needed: 64,
                available: bytes.len(),
            });
        };
        let mut r = Reader::new(WHAT, &bytes[..unsigned_len]);
        let tx = Tx::decode(&mut r)?;
        r.finish()?;
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[unsigned_len..]);
        Ok(SignedTx {
            tx,
            signature,
            bytes: bytes.to_vec(),
        })
    }

    pub fn tx(&self) -> &Tx {
        &self.tx
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn id(&self) -> TxId {
        TxId(*blake3::hash(&self.bytes).as_bytes())
    }

    fn unsigned(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - 64]
    }

    /// Checks the signature against the signer's key (ZIP-215 rules).
    pub fn verify(&self) -> Result<(), SignatureError> {
        check_signer(&self.tx.signer)?;
        if crate::sig::verify(
            &self.tx.signer.0,
            &self.signature,
            &signing_message(self.unsigned()),
        ) {
            Ok(())
        } else {
            Err(SignatureError::BadSignature(self.id()))
        }
    }
}

/// Refuses signer keys that are not points of the curve or are of small order
/// ([`crate::sig::usable_key`]).
pub(crate) fn check_signer(signer: &AccountId) -> Result<(), SignatureError> {
    if crate::sig::usable_key(&signer.0) {
        Ok(())
    } else {
        Err(SignatureError::BadKey(*signer))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signer {0} is not a usable ed25519 public key (not on the curve, or of small order)")]
    BadKey(AccountId),
    #[error("transaction {0} has an invalid signature")]
    BadSignature(TxId),
    #[error("a batch of signatures failed; at least one of them is invalid")]
    Batch,
}

/// Verifies many signatures at once (ed25519 batch verification, several times faster per
/// signature than one by one). All valid gives `Ok`; otherwise check them one by one to
/// find the culprit.
pub fn verify_batch<'a>(txs: impl IntoIterator<Item = &'a SignedTx>) -> Result<(), SignatureError> {
    let mut batch = crate::sig::Batch::new();
    for tx in txs {
        check_signer(&tx.tx.signer)?;
        batch.queue(
            &tx.tx.signer.0,
            &tx.signature,
            &signing_message(tx.unsigned()),
        );
    }
    if batch.verify() {
        Ok(())
    } else {
        Err(SignatureError::Batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from([7; 32])
    }

    fn signer() -> AccountId {
        AccountId(key().verification_key().to_bytes())
    }

    fn bodies() -> Vec<TxBody> {
        let deal = TxId([5; 32]);
        vec![
            TxBody::Transfer {
                to: AccountId([1; 32]),
                asset: Asset::Maspc,
                amount: 42,
            },
            TxBody::Register {
                role: Role::Host,
                deposit: 1000,
                endpoint: "host.example:7000".into(),
            },
            TxBody::RaiseDeposit {
                role: Role::Insurer,
                amount: 5,
            },
            TxBody::Unbond { role: Role::Proxy },
            TxBody::Withdraw {
                role: Role::Exchange,
            },
            TxBody::UploadPayment {
                host: AccountId([2; 32]),
                offer: [5; 16],
                offer_expiry_unix_secs: 1_800_000_000,
                storage_fee: 10,
                download_fee: 1,
                period_blocks: 100,
                broker: None,
                insurance: None,
                chunks: vec![ChunkEntry {
                    id: ChunkId([3; 32]),
                    sealed_bytes: 4112,
                    crc32c: 9,
                }],
            },
            TxBody::UploadPayment {
                host: AccountId([2; 32]),
                offer: [5; 16],
                offer_expiry_unix_secs: 1_800_000_000,
                storage_fee: 10,
                download_fee: 1,
                period_blocks: 100,
                broker: Some(Broker {
                    exchange: AccountId([4; 32]),
                    commission_permille: 25,
                }),
                insurance: None,
                chunks: vec![ChunkEntry {
                    id: ChunkId([3; 32]),
                    sealed_bytes: 4112,
                    crc32c: 9,
                }],
            },
            TxBody::UploadCompletion {
                deal,
                crcs: vec![9, 10],
            },
            TxBody::DownloadPayment {
                deal,
                fee: 2,
                host_part: 3,
                exchange: Some(AccountId([4; 32])),
                exchange_part: 1,
            },
            TxBody::DownloadPayment {
                deal,
                fee: 2,
                host_part: 3,
                exchange: None,
                exchange_part: 0,
            },
            TxBody::RecordHash { hash: [6; 32] },
            TxBody::Complaint { deal, fee: 10 },
            TxBody::DownloadClaim {
                payment: TxId([8; 32]),
            },
            TxBody::LockAllowance { amount: 50 },
            TxBody::ReleaseAllowance,
            TxBody::RedeemReceipts {
                receipts: vec![crate::receipt::ProxyReceipt::sign(
                    &key(),
                    &crate::receipt::Relayed {
                        chain_id: 1,
                        proxy: AccountId([4; 32]),
                        session: [6; 16],
                        up_bytes: 10,
                        down_bytes: 20,
                        price_per_gib: 3,
                        expiry_unix_secs: 1000,
                    },
                )],
            },
            TxBody::SetDownloadFee {
                deal,
                download_fee: 0,
            },
            TxBody::StorageProofs {
                period: 2,
                proofs: vec![vec![1, 2, 3], vec![4]],
            },
            TxBody::Equivocation {
                a: Box::new(crate::block::SignedVote {
                    kind: crate::block::VoteKind::Prevote,
                    height: 4,
                    round: 1,
                    value: Some(crate::block::BlockId([7; 32])),
                    validator: AccountId([8; 32]),
                    signature: [9; 64],
                }),
                b: Box::new(crate::block::SignedVote {
                    kind: crate::block::VoteKind::Prevote,
                    height: 4,
                    round: 1,
                    value: None,
                    validator: AccountId([8; 32]),
                    signature: [10; 64],
                }),
            },
        ]
    }

    fn signed(body: TxBody) -> SignedTx {
        Tx {
            chain_id: 1,
            signer: signer(),
            nonce: 3,
            fee: 1,
            body,
        }
        .sign(&key())
    }

    #[test]
    fn every_kind_round_trips_and_verifies() {
        let txs: Vec<SignedTx> = bodies().into_iter().map(signed).collect();
        for tx in &txs {
            let decoded = SignedTx::decode(tx.bytes()).unwrap();
            assert_eq!(&decoded, tx);
            assert_eq!(decoded.id(), tx.id());
            decoded.verify().unwrap();
        }
        verify_batch(&txs).unwrap();
    }

    #[test]
    fn small_order_and_off_curve_signers_are_refused() {
        // All zeros is a point of order 4 and 01 00.. is the identity: under ZIP-215 anyone
        // could sign for them. y = 2 is not on the curve at all.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut y2 = [0u8; 32];
        y2[0] = 2;
        for key in [[0u8; 32], identity, y2] {
            let tx = Tx {
                chain_id: 1,
                signer: AccountId(key),
                nonce: 0,
                fee: 1,
                body: TxBody::RecordHash { hash: [0; 32] },
            };
            let mut bytes = tx.encode();
            bytes.extend_from_slice(&[0u8; 64]);
            let signed = SignedTx::decode(&bytes).unwrap();
            assert_eq!(signed.verify(), Err(SignatureError::BadKey(AccountId(key))));
            assert_eq!(
                verify_batch([&signed]),
                Err(SignatureError::BadKey(AccountId(key)))
            );
        }
    }

    #[test]
    fn signatures_bind_every_byte() {
        let tx = signed(TxBody::Transfer {
            to: AccountId([1; 32]),
            asset: Asset::Masp,
            amount: 42,
        });
        for at in [0, 1, 9, 41, 60, tx.bytes().len() - 1] {
            let mut bytes = tx.bytes().to_vec();
            bytes[at] ^= 0x20;
            // Either it no longer decodes, or its signature fails.
            if let Ok(t) = SignedTx::decode(&bytes) {
                assert!(
                    t.verify().is_err(),
                    "flipping byte {at} kept a valid signature"
                );
                assert!(verify_batch([&tx, &t]).is_err());
            }
        }
    }

    #[test]
    fn malformed_transactions_are_refused() {
        let good = signed(TxBody::Register {
            role: Role::Host,
            deposit: 1000,
            endpoint: "h:1".into(),
        })
        .bytes()
        .to_vec();
        // Offsets: version 0, chain 1..9, signer 9..41, nonce 41..49, fee 49..57, tag 57.
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "signature"),
            ("only a signature", vec![0; 64], "truncated"),
            (
                "version",
                {
                    let mut b = good.clone();
                    b[0] = 2;
                    b
                },
                "version 2",
            ),
            (
                "tag",
                {
                    let mut b = good.clone();
                    b[57] = 18;
                    b
                },
                "transaction kind",
            ),
            (
                "role",
                {
                    let mut b = good.clone();
                    b[58] = 9;
                    b
                },
                "role",
            ),
            (
                "endpoint too long",
                {
                    let mut b = good.clone();
                    b[67..69].copy_from_slice(&1000u16.to_le_bytes());
                    b
                },
                "endpoint",
            ),
            (
                "trailing byte",
                {
                    let mut b = good.clone();
                    b.insert(good.len() - 64, 0);
                    b
                },
                "unexpected bytes",
            ),
            ("oversized", vec![0; TX_BYTES_MAX + 1], "limit"),
            (
                "empty endpoint",
                {
                    let mut b = good.clone();
                    b[67..69].copy_from_slice(&0u16.to_le_bytes());
                    b.drain(69..72);
                    b
                },
                "endpoint",
            ),
        ];
        for (name, bytes, expect) in cases {
            let err = SignedTx::decode(&bytes).expect_err(name).to_string();
            assert!(err.contains(expect), "{name}: {err}");
        }
        let mut huge = signed(TxBody::UploadCompletion {
            deal: TxId([0; 32]),
            crcs: vec![],
        })
        .bytes()
        .to_vec();
        let count_at = 58 + 32;
        huge[count_at..count_at + 4].copy_from_slice(&(DEAL_CHUNKS_MAX + 1).to_le_bytes());
        assert!(SignedTx::decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("limit"));
        huge[count_at..count_at + 4].copy_from_slice(&100u32.to_le_bytes());
        assert!(SignedTx::decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("remain"));
    }

    #[test]
    fn non_canonical_bodies_are_refused() {
        let pay = signed(TxBody::DownloadPayment {
            deal: TxId([1; 32]),
            fee: 0,
            host_part: 0,
            exchange: None,
            exchange_part: 0,
        });
        let mut bytes = pay.bytes().to_vec();
        let part_at = bytes.len() - 64 - 8;
        bytes[part_at] = 5;
        assert!(SignedTx::decode(&bytes)
            .unwrap_err()
            .to_string()
            .contains("no exchange"));
        let deal = signed(TxBody::UploadPayment {
            host: AccountId([2; 32]),
            offer: [0; 16],
            offer_expiry_unix_secs: 0,
            storage_fee: 1,
            download_fee: 0,
            period_blocks: 1,
            broker: None,
            insurance: None,
            chunks: vec![],
        });
        assert!(SignedTx::decode(deal.bytes())
            .unwrap_err()
            .to_string()
            .contains("at least one chunk"));
        // The broker: a flag of 0 or 1, and a commission of at most all of the fee.
        let brokered = signed(TxBody::UploadPayment {
            host: AccountId([2; 32]),
            offer: [0; 16],
            offer_expiry_unix_secs: 0,
            storage_fee: 1,
            download_fee: 0,
            period_blocks: 1,
            broker: Some(Broker {
                exchange: AccountId([3; 32]),
                commission_permille: 1000,
            }),
            insurance: None,
            chunks: vec![ChunkEntry {
                id: ChunkId([3; 32]),
                sealed_bytes: 4112,
                crc32c: 9,
            }],
        });
        let good = brokered.bytes().to_vec();
        SignedTx::decode(&good).expect("a commission of 1000 permille is whole");
        // Header and tag 58, host 32, offer 16, four u64: the flag.
        let flag_at = 58 + 32 + 16 + 32;
        assert_eq!(good[flag_at], 1);
        let mut b = good.clone();
        b[flag_at] = 2;
        let err = SignedTx::decode(&b).unwrap_err().to_string();
        assert!(err.contains("broker present"), "{err}");
        let mut b = good.clone();
        b[flag_at + 33..flag_at + 35].copy_from_slice(&1001u16.to_le_bytes());
        let err = SignedTx::decode(&b).unwrap_err().to_string();
        assert!(err.contains("commission_permille"), "{err}");
        assert_eq!(
            Broker {
                exchange: AccountId([0; 32]),
                commission_permille: 25
            }
            .commission(999),
            24
        );
    }

    #[test]
    fn an_insured_payment_round_trips_and_bad_insurance_is_refused() {
        let insurer = SigningKey::from([9; 32]);
        let terms = InsuredDeal {
            chain_id: 1,
            sender: signer(),
            host: AccountId([2; 32]),
            offer: [4; 16],
            offer_expiry_unix_secs: 0,
            storage_fee: 10,
            period_blocks: 100,
        };
        let quote = Insurance::sign(&insurer, &terms, 3, 500, 77);
        assert!(quote.verify(&terms));
        assert!(!quote.verify(&InsuredDeal {
            period_blocks: 99,
            ..terms
        }));
        let paid = signed(TxBody::UploadPayment {
            host: terms.host,
            offer: terms.offer,
            offer_expiry_unix_secs: 0,
            storage_fee: 10,
            download_fee: 0,
            period_blocks: 100,
            broker: None,
            chunks: vec![ChunkEntry {
                id: ChunkId([3; 32]),
                sealed_bytes: 4112,
                crc32c: 9,
            }],
            insurance: Some(quote),
        });
        let good = paid.bytes().to_vec();
        assert_eq!(SignedTx::decode(&good).unwrap(), paid);
        // The insurance follows the chunk list: flag (1), insurer (32), premium, cover,
        // expiry (u64 each), signature (64), then the transaction's signature (64).
        let flag_at = good.len() - 64 - 64 - 24 - 32 - 1;
        assert_eq!(good[flag_at], 1);
        let mut b = good.clone();
        b[flag_at] = 2;
        let err = SignedTx::decode(&b).unwrap_err().to_string();
        assert!(err.contains("insurance present"), "{err}");
        let mut b = good.clone();
        let cover_at = flag_at + 1 + 32 + 8;
        b[cover_at..cover_at + 8].copy_from_slice(&0u64.to_le_bytes());
        let err = SignedTx::decode(&b).unwrap_err().to_string();
        assert!(err.contains("cover"), "{err}");
        // Cut short inside the insurer's signature.
        let err = SignedTx::decode(&good[..good.len() - 80])
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty());
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = SignedTx::decode(&bytes);
        }
    }
}
