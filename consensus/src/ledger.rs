//! The ledger: a pure function from (state, block) to (state, receipts).
//!
//! No clocks, disks or sockets: time is the block's height and timestamp. Every rule
//! rejects what breaks it with a typed [`TxError`] and leaves the state untouched: each
//! handler checks everything before it writes anything, and a block with one bad
//! transaction is rejected whole (its proposer should have left it out).
//!
//! Supply: MASP and MASPC are conserved. Nothing is minted yet (block rewards come with the
//! validator set); fees and complaint fees are burned, and `State::burned` counts them.
//! After every block, in debug builds, balances + deposits + escrow + burned must equal the
//! genesis supply of each asset.
//!
//! Validators: miners' deposits are their stake. The set is recomputed at the end of every
//! block whose height is a multiple of [`EPOCH_BLOCKS`] and applies from the next block, so
//! every node knows the set of a height before it votes on it.
//!
//! Storage proofs are per host, not per deal: the chain's heights are cut into proof
//! periods of `Params::proof_period_blocks`; at the start of each period every host with
//! active deals is challenged on [`CHALLENGE_SAMPLES`] leaves drawn uniformly over all the
//! chunks of those deals, and answers them all in one `StorageProofs` transaction. When the
//! period closes, each covered deal pays its part of the escrow to the host if the answer
//! came (less the commission of the exchange that matched the deal, if its payment named
//! one, paid to that exchange), or refunds it to its sender and moves
//! [`SLASH_PER_MISSED_PROOF`] of the host's deposit to the sender if not. The chain's proof bytes and work per period thus grow
//! with the number of hosts, not with the chunks they store.
//!
//! Randomness: the sample derives from the chain's seed, which every block moves on with
//! a value its proposer committed to in its previous block (commit-reveal, [`next_seed`]).
//! A proposer cannot choose what it reveals (the ledger refuses a reveal that does not
//! hash to its commitment) and the seed does not depend on a block's contents, so no one
//! can grind transactions, timestamps or reveals to steer challenges. What remains is the
//! bias of every commit-reveal beacon: the proposer of the block that closes a period
//! knows the next seed before it proposes and may withhold its block; the next round's
//! proposer then reveals another value. Withholding costs it the round and gives a
//! colluding host a second draw of its challenges, not a chosen one (docs/formats.md,
//! section 8, works out what that is worth to a cheating host).
//!
//! Equivocation: a transaction carrying two conflicting votes signed by one validator for
//! the same height, round and kind burns [`SLASH_EQUIVOCATION_PERCENT`] of its miner deposit,
//! once per offence; its voting power drops at the next epoch boundary.
//!
//! Insurance: a payment may carry an insurer's signed quote ([`proto::tx::Insurance`]); the
//! sender pays its premium with the fee (held until the completion matches, then the
//! insurer's; back to the sender if the deal never starts), the exposure of the insurer and
//! of the host grows by the cover (never beyond either's deposit; an insurer cannot unbond
//! while any runs), and the deal's first missed proof pays the cover from the insurer's
//! deposit to the sender, the insurer recovering it from the host's deposit. A sender and
//! a host that collude against an insurer thus gain nothing the host does not lose.
//!
//! Not yet here: block rewards.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use proto::tx::{
    verify_batch, AccountId, Asset, Broker, DealId, Role, SignedTx, TxBody, TxId,
    COMMISSION_PERMILLE_MAX, DEAL_CHUNKS_MAX, ENDPOINT_BYTES_MAX,
};
use proto::ChunkEntry;
use thiserror::Error;

/// Smallest fee a transaction pays, in MASPC: every transaction costs something, which
/// bounds how cheaply the chain can be flooded.
pub const FEE_MIN: u64 = 1;
/// Blocks a deposit stays locked after `Unbond`: long enough for misbehaviour discovered
/// late to still be slashed.
pub const UNBONDING_BLOCKS: u64 = 1000;
/// Seconds (of block time) between a `ReleaseAllowance` and the allowance's return: twice
/// a receipt's life, so every receipt the client signed before it can still be redeemed.
pub const ALLOWANCE_RELEASE_SECS: u64 = 2 * proto::receipt::RECEIPT_LIFE_SECS;
/// The furthest a redeemed receipt's expiry may be from the block's time: the ledger
/// remembers each redeemed receipt until its expiry, so this bounds that memory.
pub const RECEIPT_EXPIRY_MAX_SECS: u64 = 2 * proto::receipt::RECEIPT_LIFE_SECS;
/// Blocks a host has to complete (#4) a paid deal; after that the escrow goes back to the
/// sender and the host's capacity is free again, so an unanswered or unwanted deal cannot
/// lock either side's coins or the host's deposit for long.
pub const COMPLETION_TIMEOUT_BLOCKS: u64 = 100;
/// Sealed bytes of upload a deal is granted one more block for, on top of the fixed
/// completion timeout (see [`completion_deadline`]): 32 MiB a block is about 5.6 MB/s at
/// 6-second blocks, so a full 32 GiB deal has 1,124 blocks (under two hours) instead of
/// asking for 55 MB/s, while a small deal keeps the fixed timeout.
pub const COMPLETION_BYTES_PER_BLOCK: u64 = 32 << 20;
/// Blocks per proof period: each host with active deals is challenged once per period, and
/// each of its deals paid one part of its fee per answered challenge.
pub const PROOF_PERIOD_BLOCKS: u64 = 100;
/// Leaves sampled per host and period. A host that lost a fraction f of its chunks is
/// caught in one period with probability 1 - (1 - f)^16: 15% for f = 1%, 81% for 10%,
/// 99% for 25%; over 30 periods, 99.2% for f = 1%.
pub const CHALLENGE_SAMPLES: usize = 16;
/// Longest storage period a deal may ask for (about 1.9 years of 6-second blocks); keeps
/// the number of proof periods within a u32.
pub const DEAL_PERIOD_BLOCKS_MAX: u64 = PROOF_PERIOD_BLOCKS * 100_000;
/// MASP taken from a host's deposit, and given to the sender, per deal covered by a missed
/// challenge.
pub const SLASH_PER_MISSED_PROOF: u64 = 100;
/// BLAKE3 `derive_key` context of challenge derivation.
pub const CHALLENGE_CONTEXT: &str = "market.space 2026-12 storage challenge v2";
/// BLAKE3 `derive_key` context of the chain's seed chain ([`next_seed`]).
pub const SEED_CONTEXT: &str = "market.space 2026-12 block seed v1";
/// BLAKE3 `derive_key` context of a validator's reveals ([`reveal_share`]).
pub const REVEAL_CONTEXT: &str = "market.space 2026-12 seed reveal v1";
/// BLAKE3 `derive_key` context of the commitment to a reveal ([`seed_commitment`]).
pub const COMMIT_CONTEXT: &str = "market.space 2026-12 seed commitment v1";
/// BLAKE3 `derive_key` context of a validator's reveal secret, derived from its signing key
/// ([`reveal_secret`]).
pub const SECRET_CONTEXT: &str = "market.space 2026-12 seed secret v1";
/// Blocks per epoch: the validator set changes only at these boundaries.
pub const EPOCH_BLOCKS: u64 = 100;
/// A validator's stake stays locked past the end of the epoch it validated in, so that it
/// can still be slashed for what it signed there.
const _: () = assert!(UNBONDING_BLOCKS > 2 * EPOCH_BLOCKS);
/// A validator caught signing two different votes for one height, round and kind loses this
/// share (percent, rounded up) of its miner deposit, burned.
pub const SLASH_EQUIVOCATION_PERCENT: u64 = 10;
/// Smallest complaint fee, in MASPC (burned): complaints must cost the complainer.
pub const COMPLAINT_FEE_MIN: u64 = 10;
/// Base deposit per role, in MASP.
pub const fn deposit_base(role: Role) -> u64 {
    match role {
        Role::Host => 1_000,
        Role::Miner => 10_000,
        Role::Proxy => 100,
        Role::Exchange => 1_000,
        Role::Insurer => 10_000,
    }
}
/// A host's deposit grows with what it stores: this much MASP per started GiB committed.
pub const HOST_DEPOSIT_PER_GIB: u64 = 10;
const GIB: u64 = 1 << 30;

/// The deposit a host needs to hold `bytes` of deals: base + 10 MASP per started GiB.
/// (Slashings will raise it too once they exist.)
pub fn host_deposit_min(bytes: u64) -> u64 {
    deposit_base(Role::Host)
        .saturating_add(bytes.div_ceil(GIB).saturating_mul(HOST_DEPOSIT_PER_GIB))
}

/// The last height at which a deal opened at `opened_height` over `chunks` can still be
/// completed: the fixed timeout plus one block per whole [`COMPLETION_BYTES_PER_BLOCK`] of
/// the deal's sealed bytes. At the end of that block an uncompleted deal expires.
/// `None` on overflow (a deal whose deadline would not fit is refused).
pub fn completion_deadline(
    params: &Params,
    opened_height: u64,
    chunks: &[ChunkEntry],
) -> Option<u64> {
    opened_height
        .checked_add(params.completion_timeout_blocks)?
        .checked_add(entries_bytes(chunks) / COMPLETION_BYTES_PER_BLOCK)
}

/// The deal rules' timing, fixed at genesis: a public chain keeps the defaults
/// ([`PROOF_PERIOD_BLOCKS`], [`COMPLETION_TIMEOUT_BLOCKS`]); a devnet shortens them so a
/// whole deal fits in a demo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Blocks per proof period (at least 1).
    pub proof_period_blocks: u64,
    /// Blocks a host has to complete a paid deal (at least 1).
    pub completion_timeout_blocks: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            proof_period_blocks: PROOF_PERIOD_BLOCKS,
            completion_timeout_blocks: COMPLETION_TIMEOUT_BLOCKS,
        }
    }
}

impl Params {
    /// Longest storage period a deal may ask for: 100,000 proof periods.
    pub fn deal_period_blocks_max(&self) -> u64 {
        self.proof_period_blocks.saturating_mul(100_000)
    }
}

/// The chain's starting point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Genesis {
    pub chain_id: u64,
    pub params: Params,
    /// (account, MASP, MASPC)
    pub accounts: Vec<(AccountId, u64, u64)>,
    /// The first validators: (account, stake in MASP, endpoint). Each becomes a miner
    /// registration whose deposit is its stake, on top of its account balances.
    pub validators: Vec<(AccountId, u64, String)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub masp: u64,
    pub maspc: u64,
    /// The nonce the account's next transaction must carry.
    pub nonce: u64,
}

impl Account {
    fn balance(&self, asset: Asset) -> u64 {
        match asset {
            Asset::Masp => self.masp,
            Asset::Maspc => self.maspc,
        }
    }

    fn balance_mut(&mut self, asset: Asset) -> &mut u64 {
        match asset {
            Asset::Masp => &mut self.masp,
            Asset::Maspc => &mut self.maspc,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// MASP locked.
    pub deposit: u64,
    pub endpoint: String,
    pub since_height: u64,
    /// Set by `Unbond`: from this height on, `Withdraw` returns the deposit.
    pub unbonding_until: Option<u64>,
    /// An insurer's exposure: MASP of cover it sold on deals still running (it may sell
    /// cover only up to its deposit, and cannot unbond while any runs). 0 for other roles.
    pub exposure: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DealState {
    /// Paid (#3); waiting for the host's completion (#4).
    AwaitingCompletion,
    /// CRCs matched: storage time runs from `start_height`.
    Active { start_height: u64 },
    /// CRCs differed at these chunk indices; the escrow went back to the sender.
    Mismatched { chunks: Vec<u32> },
    /// The host did not complete within [`COMPLETION_TIMEOUT_BLOCKS`]; the escrow went back.
    Expired,
    /// The storage period ended at `end_height`; every proof period has been paid to the
    /// host (proven) or back to the sender (missed).
    Ended { end_height: u64 },
}

/// One sampled leaf of a host's challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub deal: DealId,
    /// Which chunk of the deal, and which 1 KiB leaf of it.
    pub chunk: u32,
    pub leaf: u64,
}

/// A host's storage challenge for one proof period (design.md section 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostChallenge {
    /// The chain's period number: heights `period x P` to `(period + 1) x P - 1`.
    pub period: u64,
    /// The last height a proof is accepted at: the period's last block.
    pub due: u64,
    /// The deals the period covers (active at its start), in id order: each is paid, or
    /// refunded, one part when the period closes.
    pub deals: Vec<DealId>,
    pub samples: Vec<Sample>,
    pub answered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deal {
    pub sender: AccountId,
    pub host: AccountId,
    /// The id of the host's offer the payment cited.
    pub offer: [u8; 16],
    pub storage_fee: u64,
    pub download_fee: u64,
    pub period_blocks: u64,
    pub chunks: Vec<ChunkEntry>,
    pub opened_height: u64,
    /// MASPC held for the host; paid out one part per proven period.
    pub escrow: u64,
    pub state: DealState,
    /// Proof periods of the storage period: ceil(period_blocks / proof_period_blocks).
    pub parts: u32,
    /// The first proof period the deal is covered in (the one after its completion); it
    /// ends with period `first_period + parts - 1`.
    pub first_period: u64,
    /// Proof periods answered (paid to the host) and missed (refunded to the sender).
    pub proven: u32,
    pub missed: u32,
    /// MASPC of the fee paid to the host so far, and refunded to the sender.
    pub paid: u64,
    pub refunded: u64,
    /// The exchange that matched the deal and the host's commission to it.
    pub broker: Option<Broker>,
    /// MASPC of the fee paid to the exchange so far: its commission on each part the host
    /// earned (`paid` is the host's share after it).
    pub commission_paid: u64,
    /// Download payments the host claimed, and the download fees they paid the sender.
    pub downloads: u64,
    pub download_income: u64,
    /// The insurer's cover the sender bought with the payment, if any.
    pub insurance: Option<Policy>,
}

/// An insurer's cover of one deal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub insurer: AccountId,
    /// MASPC the sender paid: held with the deal until its completion matches (then the
    /// insurer's), back to the sender if it never does.
    pub premium: u64,
    /// MASP the insurer pays the sender, once, at the deal's first missed proof.
    pub cover: u64,
    pub state: PolicyState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyState {
    /// Paid for, the deal not yet complete: the premium is held, the cover reserved.
    Pending,
    /// The deal runs: a missed proof pays out.
    Running,
    /// Paid out `paid` MASP (the cover, or what was left of the insurer's deposit).
    PaidOut { paid: u64 },
    /// The deal ended (or never started) without a claim: the cover is released.
    Lapsed,
}

/// A receiver's download payment, held until the deal's host claims it or the claim
/// window closes. It stays listed (claimed or not) until then, so that a host can still
/// show a receiver the link it paid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Download {
    pub deal: DealId,
    pub receiver: AccountId,
    /// The deal's download fee at the time of payment (for its sender).
    pub fee: u64,
    pub host_part: u64,
    pub exchange: Option<AccountId>,
    pub exchange_part: u64,
    pub paid_height: u64,
    /// The last height at which the host may claim it; at the end of that block an
    /// unclaimed payment goes back to the receiver and the record is dropped.
    pub deadline: u64,
    pub claimed: bool,
}

impl Download {
    /// What the receiver paid: held while unclaimed.
    pub fn total(&self) -> u64 {
        self.fee + self.host_part + self.exchange_part
    }
}

impl Deal {
    /// What one proof period pays: an equal share of the fee, the remainder with the last.
    pub fn part(&self, period: u32) -> u64 {
        let parts = u64::from(self.parts.max(1));
        let share = self.storage_fee / parts;
        if u64::from(period) + 1 == parts {
            share + self.storage_fee % parts
        } else {
            share
        }
    }

    pub fn bytes(&self) -> u64 {
        entries_bytes(&self.chunks)
    }

    fn holds_host_capacity(&self) -> bool {
        matches!(
            self.state,
            DealState::AwaitingCompletion | DealState::Active { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRecord {
    pub height: u64,
    pub timestamp_ms: u64,
    pub by: AccountId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complaint {
    pub deal: DealId,
    pub by: AccountId,
    pub against: AccountId,
    pub height: u64,
    pub fee: u64,
}

/// Chain metrics of one contractor, the inputs of [`rating`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Height of its first registration or deal.
    pub first_seen_height: u64,
    /// Deals it completed as host with matching CRCs.
    pub deals_taken: u64,
    /// Of those, deals whose storage period ran to its end.
    pub deals_ended: u64,
    /// Paid deals it let expire without completing.
    pub deals_expired: u64,
    /// Completions whose CRCs did not match.
    pub mismatches: u64,
    pub complaints_against: u64,
    pub complaints_filed: u64,
    /// Storage challenges answered with a valid proof, and missed.
    pub proofs_passed: u64,
    pub proofs_missed: u64,
    /// Times its deposit was slashed.
    pub slashings: u64,
}

/// Rating of a contractor at `height`, 0 to 1000 (the seed, 4.1.2): a pure function of the
/// chain's metrics, so every node and client computes the same number.
///
/// 500 to start; up to +150 for time in the system (1 point per 1000 blocks); up to +250
/// for work done (2 per deal taken, 10 per deal served to its end, 1 per proof passed);
/// -50 per expired deal, -20 per CRC mismatch, -30 per complaint against it, -40 per
/// missed proof, -100 per slashing. Clamped to 0..=1000.
pub fn rating(stats: &Stats, height: u64) -> u32 {
    let age = (height.saturating_sub(stats.first_seen_height) / 1000).min(150);
    let work = stats
        .deals_taken
        .saturating_mul(2)
        .saturating_add(stats.deals_ended.saturating_mul(10))
        .saturating_add(stats.proofs_passed)
        .min(250);
    let penalty = stats
        .deals_expired
        .saturating_mul(50)
        .saturating_add(stats.mismatches.saturating_mul(20))
        .saturating_add(stats.complaints_against.saturating_mul(30))
        .saturating_add(stats.proofs_missed.saturating_mul(40))
        .saturating_add(stats.slashings.saturating_mul(100));
    let score = (500 + age + work).saturating_sub(penalty).min(1000);
    u32::try_from(score).expect("clamped to 1000")
}

/// Per-asset amounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Supply {
    pub masp: u64,
    pub maspc: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    pub chain_id: u64,
    pub params: Params,
    /// Height of the last applied block (0: genesis).
    pub height: u64,
    pub timestamp_ms: u64,
    /// The seed of the last applied block.
    pub seed: [u8; 32],
    pub accounts: BTreeMap<AccountId, Account>,
    pub registrations: BTreeMap<(AccountId, Role), Registration>,
    pub deals: BTreeMap<DealId, Deal>,
    pub hashes: BTreeMap<[u8; 32], HashRecord>,
    pub complaints: Vec<Complaint>,
    /// What the chain has seen of each contractor; [`rating`] is a function of it.
    pub stats: BTreeMap<AccountId, Stats>,
    /// Validators for the blocks after `height`, with their voting power (stake).
    pub validators: BTreeMap<AccountId, u64>,
    /// When each deal awaiting completion expires: (height, deal).
    pub deadlines: BTreeSet<(u64, DealId)>,
    /// Download payments within their claim window, by payment id; with their deadlines.
    pub downloads: BTreeMap<TxId, Download>,
    pub download_deadlines: BTreeSet<(u64, TxId)>,
    /// The open challenge of each host with active deals, for the current proof period.
    pub challenges: BTreeMap<AccountId, HostChallenge>,
    /// Offers a payment has cited, with their expiry (Unix seconds): each is taken once,
    /// and forgotten once the chain's time is past its expiry (it could not be cited again).
    pub offers_used: BTreeMap<(AccountId, [u8; 16]), u64>,
    /// Each client's proxy allowance: MASPC that pays the receipts proxies redeem.
    pub allowances: BTreeMap<AccountId, Allowance>,
    /// Allowances being released: (the Unix second from which the first block returns
    /// what is left, client).
    pub allowance_releases: BTreeSet<(u64, AccountId)>,
    /// Receipts redeemed, by (proxy, client, session), with their expiry (Unix seconds):
    /// each is paid once, and forgotten once the chain's time is past its expiry (it could
    /// not be redeemed again).
    pub receipts_redeemed: BTreeMap<(AccountId, AccountId, [u8; 16]), u64>,
    pub genesis_supply: Supply,
    pub burned: Supply,
    /// Equivocations already punished: (validator, height, round, vote kind).
    pub equivocations: BTreeSet<(AccountId, u64, i64, u8)>,
    /// Each proposer's commitment to the value its next block must reveal.
    pub seed_commits: BTreeMap<AccountId, SeedCommit>,
}

/// A client's proxy allowance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowance {
    /// MASPC left.
    pub amount: u64,
    /// Set by `ReleaseAllowance`: the first block whose time (Unix seconds) is at least
    /// this gives back what is left.
    pub release_at: Option<u64>,
}

/// What a proposer's next block must reveal: a value whose [`seed_commitment`] is `commit`,
/// the proposer's `next`-th reveal (honest nodes derive it, [`reveal_share`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedCommit {
    pub commit: [u8; 32],
    pub next: u64,
}

/// A block as the ledger sees it; consensus metadata (votes, rounds, signatures) lives in
/// the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub height: u64,
    pub timestamp_ms: u64,
    /// The validator that built the block: one of the validators of this height.
    pub proposer: AccountId,
    /// The value the proposer committed to in its previous block (zeros in its first).
    pub reveal: [u8; 32],
    /// The proposer's commitment to the value its next block will reveal.
    pub commit: [u8; 32],
    pub txs: Vec<SignedTx>,
}

impl Block {
    /// The block `proposer` builds on `state`, revealing and committing from `secret` as an
    /// honest proposer does ([`State::entropy`]).
    pub fn build(
        state: &State,
        proposer: AccountId,
        secret: &[u8; 32],
        timestamp_ms: u64,
        txs: Vec<SignedTx>,
    ) -> Block {
        let (reveal, commit) = state.entropy(&proposer, secret);
        Block {
            height: state.height + 1,
            timestamp_ms,
            proposer,
            reveal,
            commit,
            txs,
        }
    }
}

/// A validator's secret for its reveals: derived from its signing key, so that a node that
/// restarts reveals exactly what it committed to, with nothing more to keep on disk.
pub fn reveal_secret(signing_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(SECRET_CONTEXT, signing_key)
}

/// A validator's `n`-th reveal: BLAKE3-derive_key(REVEAL_CONTEXT, secret || n (u64 LE)).
pub fn reveal_share(secret: &[u8; 32], n: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(REVEAL_CONTEXT);
    h.update(secret);
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

/// The commitment a block carries to its proposer's next reveal:
/// BLAKE3-derive_key(COMMIT_CONTEXT, reveal).
pub fn seed_commitment(reveal: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key(COMMIT_CONTEXT, reveal)
}

/// The seed after `block` on `state`, and the proposer's commitment record after it; or
/// why the block's proposer or reveal is refused. The seed is
/// BLAKE3-derive_key(SEED_CONTEXT, previous seed || height (u64 LE) || proposer || reveal):
/// a function of the previous seed and a value the proposer committed to before that seed
/// was known, and of nothing the proposer chooses while building the block. A proposer's
/// first block (no commitment on chain yet) must reveal zeros: it only commits.
pub fn next_seed(state: &State, block: &Block) -> Result<([u8; 32], SeedCommit), BlockError> {
    if !state.validators.contains_key(&block.proposer) {
        return Err(BlockError::NotAValidator {
            proposer: block.proposer,
        });
    }
    let next = match state.seed_commits.get(&block.proposer) {
        Some(c) => {
            if seed_commitment(&block.reveal) != c.commit {
                return Err(BlockError::Reveal {
                    proposer: block.proposer,
                    reason: format!(
                        "it does not match the commitment of the proposer's block before (reveal {})",
                        c.next
                    ),
                });
            }
            c.next + 1
        }
        None => {
            if block.reveal != [0; 32] {
                return Err(BlockError::Reveal {
                    proposer: block.proposer,
                    reason: "a proposer's first block commits and reveals zeros".into(),
                });
            }
            0
        }
    };
    let mut h = blake3::Hasher::new_derive_key(SEED_CONTEXT);
    h.update(&state.seed);
    h.update(&block.height.to_le_bytes());
    h.update(&block.proposer.0);
    h.update(&block.reveal);
    Ok((
        *h.finalize().as_bytes(),
        SeedCommit {
            commit: block.commit,
            next,
        },
    ))
}

/// What applying a transaction did, for the parties to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Receipt {
    Applied,
    /// A proxy was paid `paid` MASPC for `receipts` receipts of its batch (less than they
    /// state when a client's allowance ran out; stale receipts are not counted).
    ReceiptsRedeemed {
        proxy: AccountId,
        receipts: usize,
        paid: u64,
    },
    DealOpened {
        deal: DealId,
    },
    /// The host's CRCs matched the sender's: storage time starts.
    DealMatched {
        deal: DealId,
        sender: AccountId,
        host: AccountId,
        start_height: u64,
    },
    /// The CRCs differed at these chunks: both parties are told, the escrow is refunded,
    /// and the sender may upload again under a new deal (the seed: "Miner reports it to both").
    DealMismatch {
        deal: DealId,
        sender: AccountId,
        host: AccountId,
        chunks: Vec<u32>,
    },
    HashRecorded {
        hash: [u8; 32],
    },
    /// A validator's equivocation was proven: `slashed` MASP of its miner deposit burned.
    Slashed {
        validator: AccountId,
        slashed: u64,
    },
    /// A receiver's download payment is held for the deal's host to claim until
    /// `deadline` (a height).
    DownloadPaid {
        payment: TxId,
        deadline: u64,
    },
    /// A host answered its challenge: its `deals` are paid their part when the period
    /// closes.
    ProofsAccepted {
        host: AccountId,
        period: u64,
        deals: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxError {
    #[error("transaction is for chain {found}, this is chain {expected}")]
    WrongChain { expected: u64, found: u64 },
    #[error("account {0} does not exist")]
    UnknownAccount(AccountId),
    #[error("nonce {found} is not the account's next nonce {expected} (replayed or out of order)")]
    BadNonce { expected: u64, found: u64 },
    #[error("fee {found} is below the minimum {min}")]
    FeeTooLow { min: u64, found: u64 },
    #[error("overdraft: needs {need} {asset:?}, the account has {have}")]
    Overdraft { asset: Asset, need: u64, have: u64 },
    #[error("the amount must be positive")]
    ZeroAmount,
    #[error("an amount overflowed")]
    Overflow,
    #[error("already registered as {0:?}")]
    AlreadyRegistered(Role),
    #[error("not registered as {0:?}")]
    NotRegistered(Role),
    #[error("deposit {have} is below the {need} MASP this requires")]
    DepositTooLow { need: u64, have: u64 },
    #[error("endpoint is empty or longer than {ENDPOINT_BYTES_MAX} bytes")]
    BadEndpoint,
    #[error("the {0:?} registration is unbonding")]
    Unbonding(Role),
    #[error("the {0:?} registration is not unbonding: send Unbond first")]
    NotUnbonding(Role),
    #[error("the deposit unlocks at height {until}")]
    StillUnbonding { until: u64 },
    #[error("the host still holds {0} deals")]
    HasOpenDeals(usize),
    #[error("no proxy allowance to release")]
    NoAllowance,
    #[error("the allowance is already being released (from Unix second {at})")]
    AllowanceReleasing { at: u64 },
    #[error("receipt {index}: {reason}")]
    BadReceipt { index: usize, reason: &'static str },
    #[error("the insurer still covers {0} MASP of running deals")]
    StillCovering(u64),
    #[error("{0} is not a registered, bonded insurer")]
    NotAnInsurer(AccountId),
    #[error("the insurer's quote expired at {expiry} (Unix seconds); this block's time is {now}: ask for a new quote")]
    QuoteExpired { expiry: u64, now: u64 },
    #[error("the insurer's signature does not cover this payment's terms")]
    BadQuote,
    #[error(
        "the insurer can cover {free} MASP more, not {cover}: its deposit bounds its exposure"
    )]
    CoverExceeded { free: u64, cover: u64 },
    #[error("the host's deposit backs {free} MASP more of cover, not {cover}")]
    HostCoverExceeded { free: u64, cover: u64 },
    #[error("the host's offer expired at {expiry} (Unix seconds); this block's time is {now}: ask the host for a new offer")]
    OfferExpired { expiry: u64, now: u64 },
    #[error("this offer of the host was already paid for: an offer is taken once")]
    OfferUsed,
    #[error("host {0} is not a registered, bonded host")]
    NotAHost(AccountId),
    #[error("{0} is not a registered, bonded exchange (or its commission is over 1000 permille)")]
    NotAnExchange(AccountId),
    #[error("a deal needs 1 to {DEAL_CHUNKS_MAX} chunks, a positive storage fee and period")]
    BadDealTerms,
    #[error("deal {0} does not exist")]
    UnknownDeal(DealId),
    #[error("only the deal's host may complete it")]
    NotDealHost,
    #[error("only the deal's sender or host may do this")]
    NotDealParty,
    #[error("only the deal's sender may do this")]
    NotDealSender,
    #[error("no download payment {0} within its claim window (never made, or refunded)")]
    UnknownDownload(TxId),
    #[error("this download payment was already claimed")]
    AlreadyClaimed,
    #[error("the deal's download fee is {now}, not the {agreed} the payment agreed to: ask for a new quote")]
    FeeChanged { agreed: u64, now: u64 },
    #[error("the deal is not waiting for its completion (completed already, or failed)")]
    NotAwaitingCompletion,
    #[error("the completion lists {found} CRCs, the deal has {expected} chunks")]
    CrcCount { expected: usize, found: usize },
    #[error("the deal is not active")]
    DealNotActive,
    #[error("an exchange part is paid, but no exchange is named")]
    ExchangePartWithoutExchange,
    #[error("no open storage challenge of this host for proof period {period}")]
    NoOpenChallenge { period: u64 },
    #[error("the storage proof is invalid: {0}")]
    BadProof(String),
    #[error("this hash was first recorded at height {height}")]
    AlreadyRecorded { height: u64 },
    #[error("not evidence of equivocation: {0}")]
    BadEvidence(&'static str),
    #[error("this equivocation was already punished")]
    AlreadyPunished,
    #[error("complaint fee {found} is below the minimum {min}")]
    ComplaintFeeTooLow { min: u64, found: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BlockError {
    #[error("block height {found}, expected {expected}")]
    WrongHeight { expected: u64, found: u64 },
    #[error("block timestamp {found} ms is before the previous block's {previous} ms")]
    TimeWentBack { previous: u64, found: u64 },
    #[error("transaction {index} has an invalid signature: {error}")]
    Signature {
        index: usize,
        error: proto::tx::SignatureError,
    },
    #[error("transaction {index} ({id}) is invalid: {error}")]
    Tx {
        index: usize,
        id: proto::tx::TxId,
        error: TxError,
    },
    #[error("the block's proposer {proposer} is not a validator of its height")]
    NotAValidator { proposer: AccountId },
    #[error("the seed reveal of proposer {proposer} is refused: {reason}")]
    Reveal { proposer: AccountId, reason: String },
}

impl State {
    /// What `proposer`'s next block reveals and commits to, for a proposer whose reveal
    /// secret is `secret` ([`reveal_secret`]): its next share and the commitment to the one
    /// after (a first block reveals zeros and commits to share 0).
    pub fn entropy(&self, proposer: &AccountId, secret: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
        match self.seed_commits.get(proposer) {
            Some(c) => (
                reveal_share(secret, c.next),
                seed_commitment(&reveal_share(secret, c.next + 1)),
            ),
            None => ([0; 32], seed_commitment(&reveal_share(secret, 0))),
        }
    }

    pub fn genesis(g: &Genesis) -> State {
        let mut accounts = BTreeMap::new();
        let mut supply = Supply::default();
        for &(id, masp, maspc) in &g.accounts {
            let a: &mut Account = accounts.entry(id).or_default();
            a.masp = a.masp.checked_add(masp).expect("genesis MASP overflows");
            a.maspc = a.maspc.checked_add(maspc).expect("genesis MASPC overflows");
            supply.masp = supply
                .masp
                .checked_add(masp)
                .expect("genesis MASP supply overflows");
            supply.maspc = supply
                .maspc
                .checked_add(maspc)
                .expect("genesis MASPC supply overflows");
        }
        let mut registrations = BTreeMap::new();
        for (id, stake, endpoint) in &g.validators {
            assert!(
                *stake >= deposit_base(Role::Miner),
                "genesis validator stake below the miner deposit"
            );
            supply.masp = supply
                .masp
                .checked_add(*stake)
                .expect("genesis MASP supply overflows");
            let reg = Registration {
                deposit: *stake,
                endpoint: endpoint.clone(),
                since_height: 0,
                unbonding_until: None,
                exposure: 0,
            };
            assert!(
                registrations.insert((*id, Role::Miner), reg).is_none(),
                "validator listed twice in genesis"
            );
        }
        assert!(
            g.params.proof_period_blocks > 0 && g.params.completion_timeout_blocks > 0,
            "genesis deal timings must be positive"
        );
        let mut state = State {
            chain_id: g.chain_id,
            params: g.params,
            height: 0,
            timestamp_ms: 0,
            seed: [0; 32],
            accounts,
            registrations,
            deals: BTreeMap::new(),
            hashes: BTreeMap::new(),
            complaints: Vec::new(),
            stats: BTreeMap::new(),
            validators: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            downloads: BTreeMap::new(),
            download_deadlines: BTreeSet::new(),
            challenges: BTreeMap::new(),
            offers_used: BTreeMap::new(),
            allowances: BTreeMap::new(),
            allowance_releases: BTreeSet::new(),
            receipts_redeemed: BTreeMap::new(),
            seed_commits: BTreeMap::new(),
            genesis_supply: supply,
            burned: Supply::default(),
            equivocations: BTreeSet::new(),
        };
        state.validators = state.bonded_miners();
        state
    }

    /// The stats of `who`, created (first seen now) if the chain had none.
    fn stats_mut(&mut self, who: AccountId) -> &mut Stats {
        let height = self.height;
        self.stats.entry(who).or_insert_with(|| Stats {
            first_seen_height: height,
            ..Stats::default()
        })
    }

    /// Miners with a bonded (not unbonding) deposit, and their stake.
    fn bonded_miners(&self) -> BTreeMap<AccountId, u64> {
        self.registrations
            .iter()
            .filter(|((_, role), r)| *role == Role::Miner && r.unbonding_until.is_none())
            .map(|((id, _), r)| (*id, r.deposit))
            .collect()
    }

    /// The validator set that decides block `height`, with voting powers: the set chosen at
    /// the last epoch boundary before it. Known for the next block only; older sets are the
    /// node's to keep.
    pub fn validators_for(&self, height: u64) -> Option<&BTreeMap<AccountId, u64>> {
        (height == self.height + 1).then_some(&self.validators)
    }

    pub fn account(&self, id: &AccountId) -> Account {
        self.accounts.get(id).copied().unwrap_or_default()
    }

    /// Bytes of deals a host holds or is about to (paid, not failed).
    pub fn host_committed_bytes(&self, host: &AccountId) -> u64 {
        self.open_deals_of(host).map(Deal::bytes).sum()
    }

    /// The deals a host holds capacity for: paid and awaiting completion, or active.
    pub fn open_deals_of<'a>(&'a self, host: &'a AccountId) -> impl Iterator<Item = &'a Deal> + 'a {
        self.deals
            .values()
            .filter(move |d| d.host == *host && d.holds_host_capacity())
    }

    /// Everything that exists of each asset: balances, deposits, escrow and burned coins.
    pub fn total_supply(&self) -> Supply {
        let mut s = self.burned;
        for a in self.accounts.values() {
            s.masp += a.masp;
            s.maspc += a.maspc;
        }
        s.masp += self.registrations.values().map(|r| r.deposit).sum::<u64>();
        s.maspc += self.held_maspc();
        s
    }

    /// MASPC the ledger holds for others: deals' escrow and premiums awaiting their
    /// completion, unclaimed download payments, proxy allowances.
    pub fn held_maspc(&self) -> u64 {
        let escrow = self.deals.values().map(|d| d.escrow).sum::<u64>();
        let premiums = self
            .deals
            .values()
            .filter_map(|d| d.insurance)
            .filter(|p| p.state == PolicyState::Pending)
            .map(|p| p.premium)
            .sum::<u64>();
        let downloads = self
            .downloads
            .values()
            .filter(|d| !d.claimed)
            .map(Download::total)
            .sum::<u64>();
        let allowances = self.allowances.values().map(|a| a.amount).sum::<u64>();
        escrow + premiums + downloads + allowances
    }

    /// A hash of the whole state, equal on every node that applied the same blocks.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("market.space 2026-12 ledger state v6");
        let u = |h: &mut blake3::Hasher, v: u64| {
            h.update(&v.to_le_bytes());
        };
        u(&mut h, self.chain_id);
        u(&mut h, self.params.proof_period_blocks);
        u(&mut h, self.params.completion_timeout_blocks);
        u(&mut h, self.height);
        u(&mut h, self.timestamp_ms);
        h.update(&self.seed);
        u(&mut h, self.accounts.len() as u64);
        for (id, a) in &self.accounts {
            h.update(&id.0);
            for v in [a.masp, a.maspc, a.nonce] {
                u(&mut h, v);
            }
        }
        u(&mut h, self.registrations.len() as u64);
        for ((id, role), r) in &self.registrations {
            h.update(&id.0);
            h.update(&[*role as u8]);
            for v in [
                r.deposit,
                r.since_height,
                r.unbonding_until.map_or(0, |x| x + 1),
                r.exposure,
                r.endpoint.len() as u64,
            ] {
                u(&mut h, v);
            }
            h.update(r.endpoint.as_bytes());
        }
        u(&mut h, self.deals.len() as u64);
        for (id, d) in &self.deals {
            h.update(&id.0);
            h.update(&d.sender.0);
            h.update(&d.host.0);
            h.update(&d.offer);
            for v in [
                d.storage_fee,
                d.download_fee,
                d.period_blocks,
                d.opened_height,
                d.escrow,
                u64::from(d.parts),
                d.first_period,
                u64::from(d.proven),
                u64::from(d.missed),
                d.paid,
                d.refunded,
                d.commission_paid,
                d.downloads,
                d.download_income,
                d.chunks.len() as u64,
            ] {
                u(&mut h, v);
            }
            match &d.broker {
                None => u(&mut h, 0),
                Some(b) => {
                    u(&mut h, 1);
                    h.update(&b.exchange.0);
                    u(&mut h, u64::from(b.commission_permille));
                }
            }
            match &d.insurance {
                None => u(&mut h, 0),
                Some(p) => {
                    u(&mut h, 1);
                    h.update(&p.insurer.0);
                    let (state, paid) = match p.state {
                        PolicyState::Pending => (0, 0),
                        PolicyState::Running => (1, 0),
                        PolicyState::PaidOut { paid } => (2, paid),
                        PolicyState::Lapsed => (3, 0),
                    };
                    for v in [p.premium, p.cover, state, paid] {
                        u(&mut h, v);
                    }
                }
            }
            for c in &d.chunks {
                h.update(&c.id.0);
                u(
                    &mut h,
                    (u64::from(c.sealed_bytes) << 32) | u64::from(c.crc32c),
                );
            }
            match &d.state {
                DealState::AwaitingCompletion => u(&mut h, 0),
                DealState::Active { start_height } => {
                    u(&mut h, 1);
                    u(&mut h, *start_height);
                }
                DealState::Expired => u(&mut h, 3),
                DealState::Ended { end_height } => {
                    u(&mut h, 4);
                    u(&mut h, *end_height);
                }
                DealState::Mismatched { chunks } => {
                    u(&mut h, 2);
                    u(&mut h, chunks.len() as u64);
                    for c in chunks {
                        u(&mut h, u64::from(*c));
                    }
                }
            }
        }
        u(&mut h, self.hashes.len() as u64);
        for (hash, rec) in &self.hashes {
            h.update(hash);
            u(&mut h, rec.height);
            u(&mut h, rec.timestamp_ms);
            h.update(&rec.by.0);
        }
        u(&mut h, self.deadlines.len() as u64);
        for (at, deal) in &self.deadlines {
            u(&mut h, *at);
            h.update(&deal.0);
        }
        u(&mut h, self.downloads.len() as u64);
        for (id, d) in &self.downloads {
            h.update(&id.0);
            h.update(&d.deal.0);
            h.update(&d.receiver.0);
            match &d.exchange {
                None => u(&mut h, 0),
                Some(x) => {
                    u(&mut h, 1);
                    h.update(&x.0);
                }
            }
            for v in [
                d.fee,
                d.host_part,
                d.exchange_part,
                d.paid_height,
                d.deadline,
                u64::from(d.claimed),
            ] {
                u(&mut h, v);
            }
        }
        u(&mut h, self.download_deadlines.len() as u64);
        for (at, id) in &self.download_deadlines {
            u(&mut h, *at);
            h.update(&id.0);
        }
        u(&mut h, self.challenges.len() as u64);
        for (host, c) in &self.challenges {
            h.update(&host.0);
            for v in [
                c.period,
                c.due,
                u64::from(c.answered),
                c.deals.len() as u64,
                c.samples.len() as u64,
            ] {
                u(&mut h, v);
            }
            for d in &c.deals {
                h.update(&d.0);
            }
            for smp in &c.samples {
                h.update(&smp.deal.0);
                u(&mut h, u64::from(smp.chunk));
                u(&mut h, smp.leaf);
            }
        }
        u(&mut h, self.offers_used.len() as u64);
        for ((host, offer), expiry) in &self.offers_used {
            h.update(&host.0);
            h.update(offer);
            u(&mut h, *expiry);
        }
        u(&mut h, self.allowances.len() as u64);
        for (id, a) in &self.allowances {
            h.update(&id.0);
            u(&mut h, a.amount);
            u(&mut h, a.release_at.map_or(0, |x| x + 1));
        }
        u(&mut h, self.allowance_releases.len() as u64);
        for (at, id) in &self.allowance_releases {
            u(&mut h, *at);
            h.update(&id.0);
        }
        u(&mut h, self.receipts_redeemed.len() as u64);
        for ((proxy, client, session), expiry) in &self.receipts_redeemed {
            h.update(&proxy.0);
            h.update(&client.0);
            h.update(session);
            u(&mut h, *expiry);
        }
        u(&mut h, self.validators.len() as u64);
        for (id, power) in &self.validators {
            h.update(&id.0);
            u(&mut h, *power);
        }
        u(&mut h, self.stats.len() as u64);
        for (id, st) in &self.stats {
            h.update(&id.0);
            for v in [
                st.first_seen_height,
                st.deals_taken,
                st.deals_ended,
                st.deals_expired,
                st.mismatches,
                st.complaints_against,
                st.complaints_filed,
                st.proofs_passed,
                st.proofs_missed,
                st.slashings,
            ] {
                u(&mut h, v);
            }
        }
        u(&mut h, self.complaints.len() as u64);
        for c in &self.complaints {
            h.update(&c.deal.0);
            h.update(&c.by.0);
            h.update(&c.against.0);
            u(&mut h, c.height);
            u(&mut h, c.fee);
        }
        for v in [
            self.genesis_supply.masp,
            self.genesis_supply.maspc,
            self.burned.masp,
            self.burned.maspc,
        ] {
            u(&mut h, v);
        }
        u(&mut h, self.equivocations.len() as u64);
        for (who, height, round, kind) in &self.equivocations {
            h.update(&who.0);
            u(&mut h, *height);
            h.update(&round.to_le_bytes());
            h.update(&[*kind]);
        }
        u(&mut h, self.seed_commits.len() as u64);
        for (who, c) in &self.seed_commits {
            h.update(&who.0);
            h.update(&c.commit);
            u(&mut h, c.next);
        }
        *h.finalize().as_bytes()
    }
}

/// Applies a block: all its transactions or none. Signatures are checked in one batch.
pub fn apply(state: &State, block: &Block) -> Result<(State, Vec<Receipt>), BlockError> {
    apply_verified(state, block, &HashSet::new())
}

/// [`apply`], for a node that already checked the signatures of the transactions in
/// `verified` (when its mempool admitted them): only the others are checked, in one batch.
pub fn apply_verified(
    state: &State,
    block: &Block,
    verified: &HashSet<TxId>,
) -> Result<(State, Vec<Receipt>), BlockError> {
    if block.height != state.height + 1 {
        return Err(BlockError::WrongHeight {
            expected: state.height + 1,
            found: block.height,
        });
    }
    if block.timestamp_ms < state.timestamp_ms {
        return Err(BlockError::TimeWentBack {
            previous: state.timestamp_ms,
            found: block.timestamp_ms,
        });
    }
    let (seed, commit) = next_seed(state, block)?;
    let unchecked = || {
        block
            .txs
            .iter()
            .enumerate()
            .filter(|(_, tx)| verified.is_empty() || !verified.contains(&tx.id()))
    };
    if verify_batch(unchecked().map(|(_, tx)| tx)).is_err() {
        // Find the culprit one by one; the batch only says that one exists.
        for (index, tx) in unchecked() {
            tx.verify()
                .map_err(|error| BlockError::Signature { index, error })?;
        }
    }
    let mut next = state.clone();
    next.height = block.height;
    next.timestamp_ms = block.timestamp_ms;
    next.seed = seed;
    next.seed_commits.insert(block.proposer, commit);
    let mut receipts = Vec::with_capacity(block.txs.len());
    for (index, tx) in block.txs.iter().enumerate() {
        let receipt = apply_tx(&mut next, tx).map_err(|error| BlockError::Tx {
            index,
            id: tx.id(),
            error,
        })?;
        receipts.push(receipt);
    }
    end_block(&mut next);
    debug_assert_eq!(
        next.total_supply(),
        next.genesis_supply,
        "supply not conserved at height {}",
        next.height
    );
    Ok((next, receipts))
}

/// What happens at the end of every block, after its transactions: deals awaiting
/// completion past their deadline expire (refund); at the last block of a proof period
/// every host's challenge closes (its covered deals paid, or refunded with a slash; deals
/// at their last part end) and the next period's challenges are issued; at an epoch
/// boundary the validator set is recomputed.
fn end_block(state: &mut State) {
    while let Some(&(at, deal_id)) = state.deadlines.first() {
        if at > state.height {
            break;
        }
        state.deadlines.pop_first();
        let deal = state
            .deals
            .get_mut(&deal_id)
            .expect("a deadline names an existing deal");
        assert_eq!(
            deal.state,
            DealState::AwaitingCompletion,
            "only deals awaiting completion have deadlines"
        );
        let (sender, host) = (deal.sender, deal.host);
        let escrow = std::mem::take(&mut deal.escrow);
        deal.refunded += escrow;
        deal.state = DealState::Expired;
        credit_maspc(state, sender, escrow);
        end_cover(state, &deal_id);
        state.stats_mut(host).deals_expired += 1;
    }
    while let Some(&(at, id)) = state.download_deadlines.first() {
        if at > state.height {
            break;
        }
        state.download_deadlines.pop_first();
        let d = state
            .downloads
            .remove(&id)
            .expect("a download deadline names a held payment");
        if !d.claimed {
            credit_maspc(state, d.receiver, d.total());
        }
    }
    let now = state.timestamp_ms / 1000;
    state.offers_used.retain(|_, expiry| *expiry >= now);
    state.receipts_redeemed.retain(|_, expiry| *expiry >= now);
    while let Some(&(at, who)) = state.allowance_releases.first() {
        if at > now {
            break;
        }
        state.allowance_releases.pop_first();
        let a = state
            .allowances
            .remove(&who)
            .expect("a release names an allowance");
        credit_maspc(state, who, a.amount);
    }
    let p = state.params.proof_period_blocks;
    if (state.height + 1).is_multiple_of(p) {
        let period = state.height / p;
        close_period(state, period);
        issue_challenges(state, period + 1);
    }
    if state.height.is_multiple_of(EPOCH_BLOCKS) {
        let bonded = state.bonded_miners();
        // A chain without validators could never decide another block: if every miner is
        // unbonding, the current set stays until someone bonds again.
        if !bonded.is_empty() {
            state.validators = bonded;
        }
    }
}

/// Closes proof period `period`: each host's covered deals get their part, to the host if
/// it answered, else back to the sender with a slash; a deal paid its last part ends.
fn close_period(state: &mut State, period: u64) {
    let height = state.height;
    let challenges = std::mem::take(&mut state.challenges);
    for (host, c) in challenges {
        debug_assert_eq!(c.period, period, "challenges live one period");
        let mut slashed_any = false;
        for deal_id in &c.deals {
            let deal = state.deals.get_mut(deal_id).expect("a covered deal exists");
            let k = deal.proven + deal.missed;
            let part = deal.part(k);
            deal.escrow -= part;
            let sender = deal.sender;
            if c.answered {
                let commission = deal.broker.map(|b| (b.exchange, b.commission(part)));
                let to_exchange = commission.map_or(0, |(_, c)| c);
                deal.paid += part - to_exchange;
                deal.commission_paid += to_exchange;
                deal.proven += 1;
                credit_maspc(state, host, part - to_exchange);
                if let Some((exchange, c)) = commission {
                    credit_maspc(state, exchange, c);
                }
            } else {
                deal.refunded += part;
                deal.missed += 1;
                credit_maspc(state, sender, part);
                slashed_any |= slash_host(state, host, sender) > 0;
                pay_cover(state, deal_id);
            }
            let deal = state.deals.get_mut(deal_id).expect("still there");
            if deal.proven + deal.missed == deal.parts {
                assert_eq!(deal.escrow, 0, "every part of an ended deal is paid out");
                deal.state = DealState::Ended { end_height: height };
                end_cover(state, deal_id);
                state.stats_mut(host).deals_ended += 1;
            }
        }
        let st = state.stats_mut(host);
        if c.answered {
            st.proofs_passed += 1;
        } else {
            st.proofs_missed += 1;
            if slashed_any {
                st.slashings += 1;
            }
        }
    }
}

/// Issues the challenges of proof period `period` to every host with deals covered in it,
/// from the seed of the block that ends the previous period.
fn issue_challenges(state: &mut State, period: u64) {
    let p = state.params.proof_period_blocks;
    let mut per_host: BTreeMap<AccountId, Vec<DealId>> = BTreeMap::new();
    for (id, d) in &state.deals {
        if matches!(d.state, DealState::Active { .. }) && d.first_period <= period {
            per_host.entry(d.host).or_default().push(*id);
        }
    }
    for (host, deals) in per_host {
        let samples = sample(&state.seed, &host, period, &deals, &state.deals);
        state.challenges.insert(
            host,
            HostChallenge {
                period,
                due: (period + 1) * p - 1,
                deals,
                samples,
                answered: false,
            },
        );
    }
}

/// Adds MASPC to an account in end-of-block processing, which cannot fail: every balance is
/// part of the total supply, which fits in a u64.
fn credit_maspc(state: &mut State, who: AccountId, amount: u64) {
    let a = state.accounts.entry(who).or_default();
    a.maspc = a
        .maspc
        .checked_add(amount)
        .expect("balances are bounded by the supply");
}

/// Checks an insurer's quote carried by a payment: a bonded insurer, unexpired and
/// expiring no later than the offer, signed for exactly these terms, within what the
/// insurer's deposit can still cover and what the host's deposit still backs.
fn check_cover(
    state: &State,
    i: &proto::tx::Insurance,
    deal: &proto::tx::InsuredDeal,
    now: u64,
) -> Result<(), TxError> {
    let reg = state
        .registrations
        .get(&(i.insurer, Role::Insurer))
        .filter(|r| r.unbonding_until.is_none())
        .ok_or(TxError::NotAnInsurer(i.insurer))?;
    if i.quote_expiry_unix_secs < now {
        return Err(TxError::QuoteExpired {
            expiry: i.quote_expiry_unix_secs,
            now,
        });
    }
    if i.quote_expiry_unix_secs > deal.offer_expiry_unix_secs || !i.verify(deal) {
        return Err(TxError::BadQuote);
    }
    let free = reg.deposit.saturating_sub(reg.exposure);
    if i.cover > free {
        return Err(TxError::CoverExceeded {
            free,
            cover: i.cover,
        });
    }
    let host = state
        .registrations
        .get(&(deal.host, Role::Host))
        .ok_or(TxError::NotAHost(deal.host))?;
    let backed = host.deposit.saturating_sub(host.exposure);
    if i.cover > backed {
        return Err(TxError::HostCoverExceeded {
            free: backed,
            cover: i.cover,
        });
    }
    Ok(())
}

/// A deal's completion matched: its premium goes to the insurer and the cover runs.
fn start_cover(state: &mut State, deal: &DealId) {
    let d = state.deals.get_mut(deal).expect("a started deal exists");
    let Some(p) = d.insurance.as_mut() else {
        return;
    };
    debug_assert_eq!(p.state, PolicyState::Pending);
    p.state = PolicyState::Running;
    let (insurer, premium) = (p.insurer, p.premium);
    credit_maspc(state, insurer, premium);
}

/// A deal ended, expired or failed: a cover not paid out lapses and stops counting against
/// the insurer's deposit; a premium still held (the deal never started) goes back to the
/// sender.
fn end_cover(state: &mut State, deal: &DealId) {
    let d = state.deals.get_mut(deal).expect("an ending deal exists");
    let sender = d.sender;
    let Some(p) = d.insurance.as_mut() else {
        return;
    };
    let refund = match p.state {
        PolicyState::Pending => p.premium,
        PolicyState::Running => 0,
        PolicyState::PaidOut { .. } | PolicyState::Lapsed => return,
    };
    p.state = PolicyState::Lapsed;
    let (insurer, cover, host) = (p.insurer, p.cover, d.host);
    release_exposure(state, (insurer, Role::Insurer), cover);
    release_exposure(state, (host, Role::Host), cover);
    credit_maspc(state, sender, refund);
}

/// The deal's host missed a proof: a running cover pays the sender from the insurer's
/// deposit (at most what is left of it), once, and the insurer recovers the cover from the
/// host's deposit (at most what is left of it), which backed it.
fn pay_cover(state: &mut State, deal: &DealId) {
    let d = state.deals.get_mut(deal).expect("a covered deal exists");
    let (sender, host) = (d.sender, d.host);
    let Some(p) = d.insurance.as_mut() else {
        return;
    };
    if p.state != PolicyState::Running {
        return;
    }
    let (insurer, cover) = (p.insurer, p.cover);
    let reg = state
        .registrations
        .get_mut(&(insurer, Role::Insurer))
        .expect("an insurer with exposure cannot withdraw");
    let paid = reg.deposit.min(cover);
    reg.deposit -= paid;
    state
        .deals
        .get_mut(deal)
        .and_then(|d| d.insurance.as_mut())
        .expect("checked above")
        .state = PolicyState::PaidOut { paid };
    release_exposure(state, (insurer, Role::Insurer), cover);
    release_exposure(state, (host, Role::Host), cover);
    let recovered = state
        .registrations
        .get_mut(&(host, Role::Host))
        .map_or(0, |h| {
            let r = h.deposit.min(cover);
            h.deposit -= r;
            r
        });
    state
        .registrations
        .get_mut(&(insurer, Role::Insurer))
        .expect("still registered")
        .deposit += recovered;
    let a = state.accounts.entry(sender).or_default();
    a.masp = a
        .masp
        .checked_add(paid)
        .expect("balances are bounded by the supply");
}

fn release_exposure(state: &mut State, who: (AccountId, Role), cover: u64) {
    let reg = state
        .registrations
        .get_mut(&who)
        .expect("an insurer or host with exposure cannot withdraw");
    reg.exposure = reg
        .exposure
        .checked_sub(cover)
        .expect("exposure counts every running cover");
}

/// Moves up to [`SLASH_PER_MISSED_PROOF`] MASP from the host's deposit to `to`; returns it.
fn slash_host(state: &mut State, host: AccountId, to: AccountId) -> u64 {
    let Some(reg) = state.registrations.get_mut(&(host, Role::Host)) else {
        return 0;
    };
    let slashed = reg.deposit.min(SLASH_PER_MISSED_PROOF);
    reg.deposit -= slashed;
    let a = state.accounts.entry(to).or_default();
    a.masp = a
        .masp
        .checked_add(slashed)
        .expect("balances are bounded by the supply");
    slashed
}

/// The leaves a host must prove in `period`: [`CHALLENGE_SAMPLES`] draws, each uniform over
/// every chunk of `deals` (in the given order) and then over the chunk's leaves. Draw i is
/// BLAKE3-derive_key(CHALLENGE_CONTEXT, seed || host || period (u64 LE) || i (u32 LE)):
/// its first 8 bytes (u64 LE) modulo the chunk count pick the chunk, the next 8 modulo the
/// chunk's leaf count pick the leaf.
pub fn sample(
    seed: &[u8; 32],
    host: &AccountId,
    period: u64,
    deals: &[DealId],
    all: &BTreeMap<DealId, Deal>,
) -> Vec<Sample> {
    let mut ends = Vec::with_capacity(deals.len());
    let mut total = 0u64;
    for d in deals {
        total += all[d].chunks.len() as u64;
        ends.push(total);
    }
    if total == 0 {
        return Vec::new();
    }
    (0u32..)
        .take(CHALLENGE_SAMPLES)
        .map(|i| {
            let mut h = blake3::Hasher::new_derive_key(CHALLENGE_CONTEXT);
            h.update(seed);
            h.update(&host.0);
            h.update(&period.to_le_bytes());
            h.update(&i.to_le_bytes());
            let out = h.finalize();
            let word = |k: usize| {
                u64::from_le_bytes(out.as_bytes()[k..k + 8].try_into().expect("8 bytes"))
            };
            let x = word(0) % total;
            let at = ends.partition_point(|&e| e <= x);
            let before = if at == 0 { 0 } else { ends[at - 1] };
            let deal = deals[at];
            let chunk = usize::try_from(x - before).expect("below a deal's chunk count");
            let entry = &all[&deal].chunks[chunk];
            let leaf = word(8) % proto::proof::leaf_count(u64::from(entry.sealed_bytes));
            Sample {
                deal,
                chunk: u32::try_from(chunk).expect("at most DEAL_CHUNKS_MAX"),
                leaf,
            }
        })
        .collect()
}

/// Sealed bytes of a list of chunks (at most DEAL_CHUNKS_MAX x 64 MiB: no overflow).
fn entries_bytes(chunks: &[ChunkEntry]) -> u64 {
    chunks.iter().map(|c| u64::from(c.sealed_bytes)).sum()
}

/// The signer's registration in `role`, or the typed refusal.
fn registration<'s>(
    state: &'s State,
    who: &AccountId,
    role: Role,
) -> Result<&'s Registration, TxError> {
    state
        .registrations
        .get(&(*who, role))
        .ok_or(TxError::NotRegistered(role))
}

fn sub(have: u64, need: u64, asset: Asset) -> Result<u64, TxError> {
    have.checked_sub(need)
        .ok_or(TxError::Overdraft { asset, need, have })
}

fn add(a: u64, b: u64) -> Result<u64, TxError> {
    a.checked_add(b).ok_or(TxError::Overflow)
}

/// Applies one transaction whose signature was already checked, at `state.height` and
/// `state.timestamp_ms`. On error the state is unchanged: every check runs before any write.
pub fn apply_tx(state: &mut State, signed: &SignedTx) -> Result<Receipt, TxError> {
    let tx = signed.tx();
    if tx.chain_id != state.chain_id {
        return Err(TxError::WrongChain {
            expected: state.chain_id,
            found: tx.chain_id,
        });
    }
    let signer = state
        .accounts
        .get(&tx.signer)
        .copied()
        .ok_or(TxError::UnknownAccount(tx.signer))?;
    if tx.nonce != signer.nonce {
        return Err(TxError::BadNonce {
            expected: signer.nonce,
            found: tx.nonce,
        });
    }
    if tx.fee < FEE_MIN {
        return Err(TxError::FeeTooLow {
            min: FEE_MIN,
            found: tx.fee,
        });
    }
    // The signer's account after the fee, before the body: each body below checks against
    // it and the state, then commits `me` and its other writes together.
    let mut me = signer;
    me.maspc = sub(me.maspc, tx.fee, Asset::Maspc)?;
    me.nonce += 1;
    let height = state.height;
    let burned_fee = add(state.burned.maspc, tx.fee)?;

    let receipt = match &tx.body {
        TxBody::Transfer { to, asset, amount } => {
            if *amount == 0 {
                return Err(TxError::ZeroAmount);
            }
            *me.balance_mut(*asset) = sub(me.balance(*asset), *amount, *asset)?;
            if *to == tx.signer {
                *me.balance_mut(*asset) = add(me.balance(*asset), *amount)?;
                state.accounts.insert(tx.signer, me);
            } else {
                let mut dest = state.account(to);
                *dest.balance_mut(*asset) = add(dest.balance(*asset), *amount)?;
                state.accounts.insert(tx.signer, me);
                state.accounts.insert(*to, dest);
            }
            Receipt::Applied
        }
        TxBody::Register {
            role,
            deposit,
            endpoint,
        } => {
            if state.registrations.contains_key(&(tx.signer, *role)) {
                return Err(TxError::AlreadyRegistered(*role));
            }
            if endpoint.is_empty() || endpoint.len() > ENDPOINT_BYTES_MAX {
                return Err(TxError::BadEndpoint);
            }
            let need = deposit_base(*role);
            if *deposit < need {
                return Err(TxError::DepositTooLow {
                    need,
                    have: *deposit,
                });
            }
            me.masp = sub(me.masp, *deposit, Asset::Masp)?;
            state.accounts.insert(tx.signer, me);
            let reg = Registration {
                deposit: *deposit,
                endpoint: endpoint.clone(),
                since_height: height,
                unbonding_until: None,
                exposure: 0,
            };
            state.registrations.insert((tx.signer, *role), reg);
            state.stats_mut(tx.signer);
            Receipt::Applied
        }
        TxBody::RaiseDeposit { role, amount } => {
            if *amount == 0 {
                return Err(TxError::ZeroAmount);
            }
            let reg = registration(state, &tx.signer, *role)?;
            if reg.unbonding_until.is_some() {
                return Err(TxError::Unbonding(*role));
            }
            let deposit = add(reg.deposit, *amount)?;
            me.masp = sub(me.masp, *amount, Asset::Masp)?;
            state.accounts.insert(tx.signer, me);
            state
                .registrations
                .get_mut(&(tx.signer, *role))
                .expect("checked above")
                .deposit = deposit;
            Receipt::Applied
        }
        TxBody::Unbond { role } => {
            let reg = registration(state, &tx.signer, *role)?;
            if reg.unbonding_until.is_some() {
                return Err(TxError::Unbonding(*role));
            }
            if *role == Role::Host {
                let open = state.open_deals_of(&tx.signer).count();
                if open > 0 {
                    return Err(TxError::HasOpenDeals(open));
                }
            }
            if reg.exposure > 0 {
                return Err(TxError::StillCovering(reg.exposure));
            }
            let until = add(height, UNBONDING_BLOCKS)?;
            state.accounts.insert(tx.signer, me);
            state
                .registrations
                .get_mut(&(tx.signer, *role))
                .expect("checked above")
                .unbonding_until = Some(until);
            Receipt::Applied
        }
        TxBody::Withdraw { role } => {
            let reg = registration(state, &tx.signer, *role)?;
            let until = reg.unbonding_until.ok_or(TxError::NotUnbonding(*role))?;
            if height < until {
                return Err(TxError::StillUnbonding { until });
            }
            me.masp = add(me.masp, reg.deposit)?;
            state.accounts.insert(tx.signer, me);
            state.registrations.remove(&(tx.signer, *role));
            Receipt::Applied
        }
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
            let now = state.timestamp_ms / 1000;
            if *offer_expiry_unix_secs < now {
                return Err(TxError::OfferExpired {
                    expiry: *offer_expiry_unix_secs,
                    now,
                });
            }
            if state.offers_used.contains_key(&(*host, *offer)) {
                return Err(TxError::OfferUsed);
            }
            let chunk_max = u64::from(proto::CHUNK_BYTES_MAX + proto::TAG_BYTES);
            if chunks.is_empty()
                || chunks.len() > DEAL_CHUNKS_MAX as usize
                || chunks
                    .iter()
                    .any(|c| c.sealed_bytes == 0 || u64::from(c.sealed_bytes) > chunk_max)
                || *storage_fee == 0
                || *period_blocks == 0
                || *period_blocks > state.params.deal_period_blocks_max()
                || *storage_fee < period_blocks.div_ceil(state.params.proof_period_blocks)
            {
                return Err(TxError::BadDealTerms);
            }
            let reg = state
                .registrations
                .get(&(*host, Role::Host))
                .ok_or(TxError::NotAHost(*host))?;
            if reg.unbonding_until.is_some() || *host == tx.signer {
                return Err(TxError::NotAHost(*host));
            }
            if let Some(b) = broker {
                // Checked by the decoder too; the ledger does not rely on it.
                let bonded = state
                    .registrations
                    .get(&(b.exchange, Role::Exchange))
                    .is_some_and(|r| r.unbonding_until.is_none());
                if !bonded || b.commission_permille > COMMISSION_PERMILLE_MAX {
                    return Err(TxError::NotAnExchange(b.exchange));
                }
            }
            let bytes = entries_bytes(chunks);
            let need = host_deposit_min(add(state.host_committed_bytes(host), bytes)?);
            if reg.deposit < need {
                return Err(TxError::DepositTooLow {
                    need,
                    have: reg.deposit,
                });
            }
            let policy = match insurance {
                None => None,
                Some(i) => {
                    let insured = proto::tx::InsuredDeal {
                        chain_id: state.chain_id,
                        sender: tx.signer,
                        host: *host,
                        offer: *offer,
                        offer_expiry_unix_secs: *offer_expiry_unix_secs,
                        storage_fee: *storage_fee,
                        period_blocks: *period_blocks,
                    };
                    check_cover(state, i, &insured, now)?;
                    Some(Policy {
                        insurer: i.insurer,
                        premium: i.premium,
                        cover: i.cover,
                        state: PolicyState::Pending,
                    })
                }
            };
            let premium = policy.map_or(0, |p| p.premium);
            me.maspc = sub(me.maspc, add(*storage_fee, premium)?, Asset::Maspc)?;
            // The period must fit after the completion deadline.
            let deadline =
                completion_deadline(&state.params, height, chunks).ok_or(TxError::BadDealTerms)?;
            add(deadline, *period_blocks).map_err(|_| TxError::BadDealTerms)?;
            let deal_id = signed.id();
            state.deadlines.insert((deadline, deal_id));
            state
                .offers_used
                .insert((*host, *offer), *offer_expiry_unix_secs);
            state.accounts.insert(tx.signer, me);
            if let Some(p) = policy {
                for who in [(p.insurer, Role::Insurer), (*host, Role::Host)] {
                    state
                        .registrations
                        .get_mut(&who)
                        .expect("checked by check_cover")
                        .exposure += p.cover;
                }
            }
            state.deals.insert(
                deal_id,
                Deal {
                    sender: tx.signer,
                    host: *host,
                    offer: *offer,
                    storage_fee: *storage_fee,
                    download_fee: *download_fee,
                    period_blocks: *period_blocks,
                    chunks: chunks.clone(),
                    opened_height: height,
                    escrow: *storage_fee,
                    state: DealState::AwaitingCompletion,
                    parts: 0,
                    first_period: 0,
                    proven: 0,
                    missed: 0,
                    paid: 0,
                    refunded: 0,
                    broker: *broker,
                    commission_paid: 0,
                    downloads: 0,
                    download_income: 0,
                    insurance: policy,
                },
            );
            Receipt::DealOpened { deal: deal_id }
        }
        TxBody::UploadCompletion { deal, crcs } => {
            let d = state.deals.get(deal).ok_or(TxError::UnknownDeal(*deal))?;
            if d.host != tx.signer {
                return Err(TxError::NotDealHost);
            }
            if d.state != DealState::AwaitingCompletion {
                return Err(TxError::NotAwaitingCompletion);
            }
            if crcs.len() != d.chunks.len() {
                return Err(TxError::CrcCount {
                    expected: d.chunks.len(),
                    found: crcs.len(),
                });
            }
            let differing: Vec<u32> = (0u32..)
                .zip(d.chunks.iter().zip(crcs))
                .filter(|(_, (c, crc))| c.crc32c != **crc)
                .map(|(i, _)| i)
                .collect();
            let (sender, host, escrow) = (d.sender, d.host, d.escrow);
            let timeout = completion_deadline(&state.params, d.opened_height, &d.chunks)
                .expect("checked when the deal was paid");
            let (period, period_len) = (d.period_blocks, state.params.proof_period_blocks);
            let refunded = if differing.is_empty() {
                None
            } else {
                let mut a = state.account(&sender);
                a.maspc = add(a.maspc, escrow)?;
                Some(a)
            };
            // Every check has passed: write.
            let removed = state.deadlines.remove(&(timeout, *deal));
            debug_assert!(removed, "an awaiting deal has its completion deadline");
            state.accounts.insert(tx.signer, me);
            let d = state.deals.get_mut(deal).expect("checked above");
            match refunded {
                None => {
                    // Covered from the next proof period on, for `parts` periods.
                    d.parts = u32::try_from(period.div_ceil(period_len))
                        .expect("period_blocks <= deal_period_blocks_max");
                    d.first_period = height / period_len + 1;
                    d.state = DealState::Active {
                        start_height: height,
                    };
                    start_cover(state, deal);
                    state.stats_mut(host).deals_taken += 1;
                    Receipt::DealMatched {
                        deal: *deal,
                        sender,
                        host,
                        start_height: height,
                    }
                }
                Some(refunded) => {
                    d.refunded += d.escrow;
                    d.escrow = 0;
                    d.state = DealState::Mismatched {
                        chunks: differing.clone(),
                    };
                    state.accounts.insert(sender, refunded);
                    end_cover(state, deal);
                    state.stats_mut(host).mismatches += 1;
                    Receipt::DealMismatch {
                        deal: *deal,
                        sender,
                        host,
                        chunks: differing,
                    }
                }
            }
        }
        TxBody::DownloadPayment {
            deal,
            fee: agreed,
            host_part,
            exchange,
            exchange_part,
        } => {
            let d = state.deals.get(deal).ok_or(TxError::UnknownDeal(*deal))?;
            if !matches!(d.state, DealState::Active { .. }) {
                return Err(TxError::DealNotActive);
            }
            if d.download_fee != *agreed {
                return Err(TxError::FeeChanged {
                    agreed: *agreed,
                    now: d.download_fee,
                });
            }
            if exchange.is_none() && *exchange_part != 0 {
                return Err(TxError::ExchangePartWithoutExchange);
            }
            let fee = d.download_fee;
            let total = add(add(fee, *host_part)?, *exchange_part)?;
            if total == 0 {
                return Err(TxError::ZeroAmount);
            }
            me.maspc = sub(me.maspc, total, Asset::Maspc)?;
            let deadline = height
                .checked_add(state.params.completion_timeout_blocks)
                .ok_or(TxError::Overflow)?;
            let id = signed.id();
            state.accounts.insert(tx.signer, me);
            state.downloads.insert(
                id,
                Download {
                    deal: *deal,
                    receiver: tx.signer,
                    fee,
                    host_part: *host_part,
                    exchange: *exchange,
                    exchange_part: *exchange_part,
                    paid_height: height,
                    deadline,
                    claimed: false,
                },
            );
            state.download_deadlines.insert((deadline, id));
            Receipt::DownloadPaid {
                payment: id,
                deadline,
            }
        }
        TxBody::DownloadClaim { payment } => {
            let p = *state
                .downloads
                .get(payment)
                .ok_or(TxError::UnknownDownload(*payment))?;
            let d = state
                .deals
                .get_mut(&p.deal)
                .expect("a download names an existing deal");
            if d.host != tx.signer {
                return Err(TxError::NotDealHost);
            }
            if p.claimed {
                return Err(TxError::AlreadyClaimed);
            }
            // Statistics: they saturate rather than refuse a payment the host is owed.
            d.downloads = d.downloads.saturating_add(1);
            d.download_income = d.download_income.saturating_add(p.fee);
            let sender = d.sender;
            state.accounts.insert(tx.signer, me);
            for (who, amount) in [
                (Some(sender), p.fee),
                (Some(tx.signer), p.host_part),
                (p.exchange, p.exchange_part),
            ] {
                if let (Some(who), true) = (who, amount > 0) {
                    credit_maspc(state, who, amount);
                }
            }
            state
                .downloads
                .get_mut(payment)
                .expect("checked above")
                .claimed = true;
            Receipt::Applied
        }
        TxBody::SetDownloadFee { deal, download_fee } => {
            let d = state
                .deals
                .get_mut(deal)
                .ok_or(TxError::UnknownDeal(*deal))?;
            if d.sender != tx.signer {
                return Err(TxError::NotDealSender);
            }
            if !d.holds_host_capacity() {
                return Err(TxError::DealNotActive);
            }
            d.download_fee = *download_fee;
            state.accounts.insert(tx.signer, me);
            Receipt::Applied
        }
        TxBody::LockAllowance { amount } => {
            if *amount == 0 {
                return Err(TxError::ZeroAmount);
            }
            me.maspc = sub(me.maspc, *amount, Asset::Maspc)?;
            let mut a = state
                .allowances
                .get(&tx.signer)
                .copied()
                .unwrap_or_default();
            a.amount = add(a.amount, *amount)?;
            if let Some(at) = a.release_at.take() {
                state.allowance_releases.remove(&(at, tx.signer));
            }
            state.accounts.insert(tx.signer, me);
            state.allowances.insert(tx.signer, a);
            Receipt::Applied
        }
        TxBody::ReleaseAllowance => {
            let a = state
                .allowances
                .get(&tx.signer)
                .copied()
                .ok_or(TxError::NoAllowance)?;
            if let Some(at) = a.release_at {
                return Err(TxError::AllowanceReleasing { at });
            }
            let at = add(state.timestamp_ms / 1000, ALLOWANCE_RELEASE_SECS)?;
            state.accounts.insert(tx.signer, me);
            state.allowance_releases.insert((at, tx.signer));
            state
                .allowances
                .get_mut(&tx.signer)
                .expect("checked above")
                .release_at = Some(at);
            Receipt::Applied
        }
        TxBody::RedeemReceipts { receipts } => {
            // What only the proxy can get wrong refuses the batch: it checked each receipt
            // when it took it.
            let now = state.timestamp_ms / 1000;
            for (index, r) in receipts.iter().enumerate() {
                let bad = |reason| TxError::BadReceipt { index, reason };
                if r.proxy != tx.signer {
                    return Err(bad("it names another proxy"));
                }
                if r.chain_id != state.chain_id {
                    return Err(bad("it is for another chain"));
                }
                if r.expiry_unix_secs > now.saturating_add(RECEIPT_EXPIRY_MAX_SECS) {
                    return Err(bad("it expires too far ahead"));
                }
            }
            if !proto::receipt::verify_all(receipts) {
                let index = receipts.iter().position(|r| !r.verify()).unwrap_or(0);
                return Err(TxError::BadReceipt {
                    index,
                    reason: "its client's signature does not verify",
                });
            }
            // What time can make stale is skipped, so the rest of the batch is paid: a
            // receipt expired, redeemed already (or twice in the batch), or whose client's
            // allowance is empty (it stays redeemable if the client locks more).
            let mut seen = BTreeSet::new();
            let mut left: BTreeMap<AccountId, u64> = BTreeMap::new();
            let mut paid = 0u64;
            let mut taken = Vec::new();
            for r in receipts {
                let id = (r.proxy, r.client, r.session);
                if r.expiry_unix_secs < now
                    || state.receipts_redeemed.contains_key(&id)
                    || seen.contains(&id)
                {
                    continue;
                }
                let have = left
                    .entry(r.client)
                    .or_insert_with(|| state.allowances.get(&r.client).map_or(0, |a| a.amount));
                let owed = r.amount();
                if owed > 0 && *have == 0 {
                    continue;
                }
                // What is left of the allowance, if less: the proxy's risk.
                let pay = owed.min(*have);
                *have -= pay;
                paid = add(paid, pay)?;
                seen.insert(id);
                taken.push((id, r.expiry_unix_secs));
            }
            // Every check has passed: write.
            me.maspc = add(me.maspc, paid)?;
            state.accounts.insert(tx.signer, me);
            for (client, amount) in left {
                if let Some(a) = state.allowances.get_mut(&client) {
                    a.amount = amount;
                }
            }
            let count = taken.len();
            state.receipts_redeemed.extend(taken);
            Receipt::ReceiptsRedeemed {
                proxy: tx.signer,
                receipts: count,
                paid,
            }
        }
        TxBody::RecordHash { hash } => {
            if let Some(rec) = state.hashes.get(hash) {
                return Err(TxError::AlreadyRecorded { height: rec.height });
            }
            state.accounts.insert(tx.signer, me);
            state.hashes.insert(
                *hash,
                HashRecord {
                    height,
                    timestamp_ms: state.timestamp_ms,
                    by: tx.signer,
                },
            );
            Receipt::HashRecorded { hash: *hash }
        }
        TxBody::StorageProofs { period, proofs } => {
            let c = state
                .challenges
                .get(&tx.signer)
                .filter(|c| c.period == *period && !c.answered)
                .ok_or(TxError::NoOpenChallenge { period: *period })?;
            if proofs.len() != c.samples.len() {
                return Err(TxError::BadProof(format!(
                    "{} proofs for the {} sampled leaves",
                    proofs.len(),
                    c.samples.len()
                )));
            }
            for (i, (smp, proof)) in c.samples.iter().zip(proofs).enumerate() {
                let d = &state.deals[&smp.deal];
                let entry = &d.chunks[usize::try_from(smp.chunk).expect("a chunk index")];
                proto::proof::verify(&entry.id, u64::from(entry.sealed_bytes), smp.leaf, proof)
                    .map_err(|e| TxError::BadProof(format!("sample {i}: {e}")))?;
            }
            let deals = c.deals.len();
            state.accounts.insert(tx.signer, me);
            state
                .challenges
                .get_mut(&tx.signer)
                .expect("checked above")
                .answered = true;
            Receipt::ProofsAccepted {
                host: tx.signer,
                period: *period,
                deals,
            }
        }
        TxBody::Equivocation { a, b } => {
            let bad = TxError::BadEvidence;
            if a.validator != b.validator {
                return Err(bad("the votes are by different validators"));
            }
            if (a.kind, a.height, a.round) != (b.kind, b.height, b.round) {
                return Err(bad("the votes are for different heights, rounds or kinds"));
            }
            if a.value == b.value {
                return Err(bad("the votes are for the same value"));
            }
            if a.height > height + 1 {
                return Err(bad("the votes are for a height not reached yet"));
            }
            if !a.verify(state.chain_id) || !b.verify(state.chain_id) {
                return Err(bad("a vote's signature does not verify"));
            }
            let key = (a.validator, a.height, a.round, a.kind as u8);
            if state.equivocations.contains(&key) {
                return Err(TxError::AlreadyPunished);
            }
            let reg = state
                .registrations
                .get(&(a.validator, Role::Miner))
                .ok_or(TxError::NotRegistered(Role::Miner))?;
            let slashed = reg
                .deposit
                .saturating_mul(SLASH_EQUIVOCATION_PERCENT)
                .div_ceil(100)
                .min(reg.deposit);
            let burned_masp = add(state.burned.masp, slashed)?;
            state.accounts.insert(tx.signer, me);
            state
                .registrations
                .get_mut(&(a.validator, Role::Miner))
                .expect("checked above")
                .deposit -= slashed;
            state.burned.masp = burned_masp;
            state.equivocations.insert(key);
            state.stats_mut(a.validator).slashings += 1;
            Receipt::Slashed {
                validator: a.validator,
                slashed,
            }
        }
        TxBody::Complaint { deal, fee } => {
            let d = state.deals.get(deal).ok_or(TxError::UnknownDeal(*deal))?;
            let against = if tx.signer == d.sender {
                d.host
            } else if tx.signer == d.host {
                d.sender
            } else {
                return Err(TxError::NotDealParty);
            };
            if *fee < COMPLAINT_FEE_MIN {
                return Err(TxError::ComplaintFeeTooLow {
                    min: COMPLAINT_FEE_MIN,
                    found: *fee,
                });
            }
            me.maspc = sub(me.maspc, *fee, Asset::Maspc)?;
            let burned = add(burned_fee, *fee)?;
            state.accounts.insert(tx.signer, me);
            state.complaints.push(Complaint {
                deal: *deal,
                by: tx.signer,
                against,
                height,
                fee: *fee,
            });
            state.burned.maspc = burned;
            state.stats_mut(against).complaints_against += 1;
            state.stats_mut(tx.signer).complaints_filed += 1;
            return Ok(Receipt::Applied);
        }
    };
    state.burned.maspc = burned_fee;
    Ok(receipt)
}
