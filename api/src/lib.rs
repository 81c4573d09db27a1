//! The control plane's service definitions: tarpc services (bincode over TCP,
//! length-delimited frames of at most [`CONTROL_FRAME_MAX`] bytes) for what the market's
//! roles ask each other, their request and response types, and the codec that refuses
//! hostile bytes ([`SafeBincode`]). Chunk bytes never travel here; they use the data plane
//! (`net`). Byte-level framing: `docs/wire.md` section 5.
//!
//! - [`HostApi`]: a host's status, storage and download offers, and link minting for an
//!   operator or, later, an exchange (authorized by the host's control token). Implemented
//!   by `net::control::HostControl`.
//! - [`MinerApi`]: submitting transactions to a miner and reading its chain; implemented by
//!   the miner (`tools`), over `consensus::node`.
//! - [`ExchangeApi`]: an exchange's book; [`IndexApi`]: the index of live exchanges (both in
//!   the `exchange` crate).
//!
//! Every service answers `api_version()` with its `*_API_VERSION`; the clients here ask it
//! on connecting and refuse a peer speaking another version, naming both.
//!
//! [`chain::ChainClient`] is the client of the chain every role uses: failover among
//! miners, signing with the account's next nonce, following blocks.
//!
//! Invariant: this crate has no I/O beyond the control plane's sockets and depends on no
//! other crate of the workspace but `proto` (identities and transactions), so the exchange,
//! the index, the gateway and the dashboard can speak to hosts and miners without the data
//! plane, the engine or the ledger.

use serde::{Deserialize, Serialize};
use tarpc::tokio_serde::formats::Bincode;

pub mod alerts;
pub mod certificate;
pub mod chain;
pub mod config;
pub mod metrics;

/// Version of [`HostApi`]'s requests and responses: bumped on any change to them.
pub const HOST_API_VERSION: u32 = 8;
/// Version of [`MinerApi`].
pub const MINER_API_VERSION: u32 = 7;
/// Longest a client may ask a miner to wait for a block.
pub const BLOCK_WAIT_MAX_MS: u64 = 10_000;
/// Most deals one `deals_of` answer lists (the newest first).
pub const DEALS_LISTED_MAX: usize = 1000;
/// Version of [`ExchangeApi`].
pub const EXCHANGE_API_VERSION: u32 = 6;
/// Version of [`IndexApi`].
pub const INDEX_API_VERSION: u32 = 2;
/// Version of [`InsurerApi`].
pub const INSURER_API_VERSION: u32 = 1;

/// Largest control-plane frame either side accepts.
pub const CONTROL_FRAME_MAX: usize = 1 << 20;
/// Control connections served at once per peer address.
/// (32: one machine may run a host's agent, its bidder, its control plane's chain lookups,
/// an exchange and clients at once, all from one address; 8 was exceeded on a loaded
/// two-core machine running a market on loopback, and a refused connection reads as a
/// broken channel to its client.)
pub const CONTROL_CHANNELS_PER_PEER: u32 = 32;
/// Requests in flight per control connection.
pub const CONTROL_REQUESTS_PER_CHANNEL: usize = 32;
/// Longest link a host mints through the control plane.
pub const LINK_TTL_MAX_SECS: u64 = 30 * 86_400;

/// Why a control request was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    #[error("not authorized: {0}")]
    Unauthorized(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("not available: {0}")]
    Unavailable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's ed25519 public key, hex.
    pub key: String,
    /// The data plane's address, as links name it.
    pub data_addr: String,
    pub chunks: u64,
    pub live_bytes: u64,
    /// Configured capacity (`u64::MAX` when unset).
    pub capacity_bytes: u64,
    pub connections_open: u64,
    pub version: String,
    /// The alerts that hold now (the host's `[alerts]`), most severe first.
    pub alerts: Vec<AlertView>,
}

/// One alert a host raises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertView {
    /// A host's: `chain_unreachable`, `deposit_low`, `proof_missed`, `proof_due`,
    /// `capacity_high`, `disk_full`, `data_dir_failing`, `clock_skew`. A miner's:
    /// `falling_behind`, `no_new_blocks`, `peers_lost`, `missed_votes`.
    pub kind: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// A data directory or a deal id, or empty.
    pub subject: String,
    pub message: String,
    /// Raised at (ms since the Unix epoch).
    pub since_ms: u64,
}

/// What a sender asks of a host before paying (the seed's request, #1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageRequest {
    pub bytes: u64,
    pub days: u32,
    /// The exchange that matched the sender to this host, if one did: the host's offer
    /// then names it and the commission the host pays it (a host refuses an exchange it
    /// does not ask at).
    pub via: Option<[u8; 32]>,
}

/// Why a host does not take a storage request: machine-readable, so a client (or an
/// exchange) can tell a full host from one the chain does not back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum OfferRefusal {
    #[error("the request is not one a host can take: {0}")]
    BadTerms(String),
    #[error("the host has {free_bytes} bytes free")]
    Full { free_bytes: u64 },
    #[error("the host is not registered on the chain")]
    NotRegistered,
    #[error("the host's deposit is unbonding (until height {until}): it takes no new storage")]
    Unbonding { until: u64 },
    #[error("the host's deposit of {have} MASP backs less than it would store: {need} needed")]
    DepositTooLow { have: u64, need: u64 },
    #[error("the host cannot read its registration from the chain: {0}")]
    ChainUnreachable(String),
}

/// A host's answer (#2): its signed offer, or why it makes none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageOffer {
    /// The offer, `proto::offer::SignedOffer` bytes (`docs/formats.md` section 16), when
    /// the host takes the request.
    pub signed: Option<Vec<u8>>,
    /// Why not, otherwise.
    pub refusal: Option<OfferRefusal>,
    /// Bytes the host can still take.
    pub free_bytes: u64,
}

/// A host's price for one download of a deal's file (#6 of the seed's flow): what the
/// receiver's `DownloadPayment` must carry. The sender's fee is the deal's as the chain
/// states it now; `host_part` is the host's egress price for the deal's bytes. Signed by
/// the host over [`download_terms_message`], so a receiver can show what it was quoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadTerms {
    pub deal: [u8; 32],
    /// The file the deal holds (its last chunk): what the link will grant.
    pub manifest: [u8; 32],
    pub bytes: u64,
    pub download_fee: u64,
    pub host_part: u64,
    /// The exchange that matched the deal and its commission on the host's price, when
    /// the deal names one: the receiver pays it to the exchange (the host gets the rest).
    pub exchange: Option<[u8; 32]>,
    pub exchange_part: u64,
    /// The quote stands until then (Unix seconds).
    pub expiry_unix_secs: u64,
    /// ed25519 by the deal's host (64 bytes).
    pub signature: Vec<u8>,
}

/// Domain of a download quote's signature.
pub const DOWNLOAD_TERMS_CONTEXT: &[u8] = b"market.space download terms v1";

impl DownloadTerms {
    /// The receiver pays this in all (fee + host part), if not free.
    pub fn total(&self) -> u64 {
        self.download_fee
            .saturating_add(self.host_part)
            .saturating_add(self.exchange_part)
    }
}

/// The bytes a host signs for [`DownloadTerms`]: the context (30 bytes), deal (32),
/// manifest (32), then bytes, download_fee, host_part and expiry as u64 little-endian,
/// then the exchange: 0, or 1 and its key (32), and exchange_part (u64).
pub fn download_terms_message(t: &DownloadTerms) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOWNLOAD_TERMS_CONTEXT.len() + 96);
    m.extend_from_slice(DOWNLOAD_TERMS_CONTEXT);
    m.extend_from_slice(&t.deal);
    m.extend_from_slice(&t.manifest);
    for v in [t.bytes, t.download_fee, t.host_part, t.expiry_unix_secs] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    match &t.exchange {
        None => m.push(0),
        Some(x) => {
            m.push(1);
            m.extend_from_slice(x);
        }
    }
    m.extend_from_slice(&t.exchange_part.to_le_bytes());
    m
}

/// A host's answer to a download request (#6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadOffer {
    /// Whether the host holds the file (its manifest and chunk list).
    pub available: bool,
    pub chunks: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkGrant {
    Upload { bytes_max: u64 },
    Download { manifest: [u8; 32] },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRequest {
    /// The host's control token (from its configuration).
    pub token: String,
    pub grant: LinkGrant,
    pub ttl_secs: u64,
    /// Only this ed25519 key may use the link, if set.
    pub bearer: Option<[u8; 32]>,
}

/// A host's control service.
#[tarpc::service]
pub trait HostApi {
    async fn status() -> HostStatus;
    async fn offer(request: StorageRequest) -> StorageOffer;
    async fn download_offer(manifest: [u8; 32]) -> DownloadOffer;
    /// A signed link in its text form (`mspace://...`).
    async fn mint_link(request: LinkRequest) -> Result<String, ControlError>;
    /// [`HOST_API_VERSION`]. Its method number (4) never changes, so that a peer of any
    /// version can ask it; methods added later come after it.
    async fn api_version() -> u32;
    /// A link for a deal on the chain whose host this is, usable only by the deal's sender:
    /// to upload exactly the deal's bytes while it awaits completion (`download: false`),
    /// or to read back its file (the deal's last chunk is the manifest) while it is
    /// active or ended (while the host still holds it). The host checks the deal on the
    /// chain; no token is needed, the payment is the authorization.
    async fn deal_link(deal: [u8; 32], download: bool) -> Result<String, ControlError>;
    /// An emergency link for an active deal of this host: a download link as
    /// `deal_link(deal, true)` gives, for the deal's sender only, but valid for the deal's
    /// whole nominal length and a day more. The sender keeps it with its record of the file,
    /// so the file comes back through the host's data plane alone, when no exchange, index,
    /// miner or control plane answers.
    async fn emergency_link(deal: [u8; 32]) -> Result<String, ControlError>;
    /// What one download of an active deal's file costs here (a signed quote).
    async fn download_terms(deal: [u8; 32]) -> Result<DownloadTerms, ControlError>;
    /// A download link for the deal's file bound to `receiver`'s key: for `payment`, a
    /// `DownloadPayment` of that receiver for this deal on the chain, within its claim
    /// window, carrying at least this host's price (the host then claims it); with no
    /// payment, only for a file whose download is free here. Asking again for the same
    /// payment gives the same link's id again (a resumed download).
    async fn download_link(
        deal: [u8; 32],
        receiver: [u8; 32],
        payment: Option<[u8; 32]>,
    ) -> Result<String, ControlError>;
    /// Removes a file uploaded through links minted for the control `token`: its record,
    /// its envelope and every chunk no other link or recorded file holds; the chunks
    /// removed. Refused (Invalid) for a file a held deal paid for, which stays until the
    /// deal ends; Invalid with "no file" when none is recorded.
    async fn drop_object(token: String, manifest: [u8; 32]) -> Result<u64, ControlError>;
}

/// A miner's service: submitting transactions and reading the chain. Implemented by the
/// miner (`mspace miner`), over its running node.
#[tarpc::service]
pub trait MinerApi {
    /// Signed transactions in their canonical encoding (`proto::tx`); one answer each, in
    /// order: its id, or why the mempool refused it. Accepted ones are relayed to the other
    /// miners.
    async fn submit_txs(txs: Vec<Vec<u8>>) -> Result<Vec<Result<[u8; 32], String>>, ControlError>;
    /// Like `submit_txs`, from another miner: admitted here, not relayed further.
    async fn relay_txs(txs: Vec<Vec<u8>>) -> Result<(), ControlError>;
    async fn status() -> Result<ChainStatus, ControlError>;
    async fn account(key: [u8; 32]) -> Result<AccountView, ControlError>;
    /// A deal with its chunk list.
    async fn deal(id: [u8; 32]) -> Result<Option<DealView>, ControlError>;
    /// The decided block at `height`; if it is not decided yet, waits up to `wait_ms` for it.
    async fn block(height: u64, wait_ms: u64) -> Result<Option<BlockView>, ControlError>;
    /// The height of the block that holds transaction `id`, if it is committed.
    async fn tx_height(id: [u8; 32]) -> Result<Option<u64>, ControlError>;
    /// [`MINER_API_VERSION`]. Its method number (7) never changes; methods added later
    /// come after it.
    async fn api_version() -> u32;
    /// Deals `key` is the sender or host of, newest first, at most [`DEALS_LISTED_MAX`],
    /// without their chunk lists; `open`: only those awaiting completion or active.
    async fn deals_of(key: [u8; 32], open: bool) -> Result<Vec<DealView>, ControlError>;
    /// The host's storage challenge for the current proof period, if it has one.
    async fn challenge(host: [u8; 32]) -> Result<Option<ChallengeView>, ControlError>;
    /// Where a hash was recorded on the chain (proof of existence), if it was.
    async fn hash_record(hash: [u8; 32]) -> Result<Option<HashRecordView>, ControlError>;
    /// A download payment within its claim window, claimed or not.
    async fn download(payment: [u8; 32]) -> Result<Option<DownloadView>, ControlError>;
}

/// A receiver's download payment as the chain holds it (`consensus::ledger::Download`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadView {
    pub payment: String,
    pub deal: String,
    pub receiver: String,
    pub fee: u64,
    pub host_part: u64,
    pub exchange: Option<String>,
    pub exchange_part: u64,
    pub paid_height: u64,
    /// The last height the host may claim it at; unclaimed, it goes back to the receiver
    /// at the end of that block.
    pub deadline: u64,
    pub claimed: bool,
}

/// A miner's view of its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub chain_id: u64,
    /// This miner's validator key (hex).
    pub validator: String,
    /// Height of the last decided block.
    pub height: u64,
    /// Its id (hex).
    pub tip: String,
    pub timestamp_ms: u64,
    /// (validator key hex, voting power) of the next height.
    pub validators: Vec<(String, u64)>,
    pub mempool_txs: usize,
    /// The chain's deal timings (its genesis parameters).
    pub proof_period_blocks: u64,
    pub completion_timeout_blocks: u64,
    /// [MASP, MASPC]: what exists now (balances + deposits + escrow + burned), what the
    /// genesis created (equal, or the ledger is broken), and of it: held in deposits, held
    /// in deals' escrow, burned by fees.
    pub supply: [u64; 2],
    pub genesis_supply: [u64; 2],
    pub deposits: [u64; 2],
    pub escrow: [u64; 2],
    pub burned: [u64; 2],
    /// The miner's alerts that hold now (its `[alerts]`), most severe first.
    pub alerts: Vec<AlertView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationView {
    pub role: String,
    pub deposit: u64,
    pub endpoint: String,
    pub since_height: u64,
    pub unbonding_until: Option<u64>,
    /// An insurer's cover of running deals, MASP (bounded by its deposit); 0 otherwise.
    pub exposure: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub key: String,
    pub masp: u64,
    pub maspc: u64,
    pub nonce: u64,
    pub registrations: Vec<RegistrationView>,
    /// MASPC locked for proxies (their receipts are paid from it), and the Unix second
    /// from which what is left returns, once released.
    pub allowance: u64,
    pub allowance_release_at: Option<u64>,
    /// The ledger's rating of this account as a contractor (0..=1000).
    pub rating: u32,
    /// At which height the answer was read.
    pub height: u64,
}

impl AccountView {
    /// Whether the account holds a registration in `role` (`host`, `exchange`, ...) with a
    /// deposit, not unbonding.
    pub fn bonded(&self, role: &str) -> bool {
        self.registrations
            .iter()
            .any(|r| r.role == role && r.unbonding_until.is_none() && r.deposit > 0)
    }
}

/// Where a deal stands on the chain.
///
/// (Externally tagged in serde: bincode cannot carry an internally tagged enum.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DealStage {
    /// Paid; the host has until `deadline` to complete it.
    AwaitingCompletion {
        deadline: u64,
    },
    /// The CRCs matched: storage runs from `start_height` to `end_height`.
    Active {
        start_height: u64,
        end_height: u64,
    },
    /// The host's CRCs differed at these chunks: nothing was paid, the escrow went back.
    Mismatched {
        chunks: Vec<u32>,
    },
    /// Not completed in time: the escrow went back.
    Expired,
    Ended {
        end_height: u64,
    },
}

impl DealStage {
    /// One word for the stage: `awaiting-completion`, `active`, `mismatched`, `expired`,
    /// `ended`.
    pub fn name(&self) -> &'static str {
        match self {
            DealStage::AwaitingCompletion { .. } => "awaiting-completion",
            DealStage::Active { .. } => "active",
            DealStage::Mismatched { .. } => "mismatched",
            DealStage::Expired => "expired",
            DealStage::Ended { .. } => "ended",
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(
            self,
            DealStage::AwaitingCompletion { .. } | DealStage::Active { .. }
        )
    }
}

impl std::fmt::Display for DealStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DealStage::AwaitingCompletion { deadline } => {
                write!(
                    f,
                    "paid, awaiting the host's completion until height {deadline}"
                )
            }
            DealStage::Active {
                start_height,
                end_height,
            } => write!(f, "active from height {start_height} to {end_height}"),
            DealStage::Mismatched { chunks } => {
                write!(f, "CRCs mismatched at chunks {chunks:?}: refunded")
            }
            DealStage::Expired => write!(f, "expired uncompleted: refunded"),
            DealStage::Ended { end_height } => write!(f, "ended at height {end_height}"),
        }
    }
}

/// A host's storage challenge for the current proof period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeView {
    /// The chain's period number.
    pub period: u64,
    /// The last height a proof is accepted at.
    pub due: u64,
    pub answered: bool,
    /// Deals the period covers.
    pub deals: u32,
    /// The leaves to prove, in order: one proof each in the `StorageProofs` transaction.
    pub samples: Vec<SampleView>,
}

/// One sampled leaf: the deal, the chunk's index in it and its id, the 1 KiB leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleView {
    pub deal: [u8; 32],
    pub chunk: u32,
    pub chunk_id: [u8; 32],
    pub leaf: u64,
}

/// A hash recorded on the chain: by whom, in which block, at what time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashRecordView {
    pub hash: String,
    pub height: u64,
    /// The recording block's timestamp (ms since the Unix epoch, as its proposer set it).
    pub timestamp_ms: u64,
    /// The signer of the recording transaction (hex).
    pub by: String,
}

/// One chunk a deal covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealChunk {
    pub id: [u8; 32],
    pub sealed_bytes: u32,
    pub crc32c: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealView {
    pub id: String,
    pub sender: String,
    pub host: String,
    /// The id of the host's offer the payment cited.
    pub offer: [u8; 16],
    pub stage: DealStage,
    pub storage_fee: u64,
    pub download_fee: u64,
    pub period_blocks: u64,
    pub opened_height: u64,
    /// MASPC still held for the host.
    pub escrow: u64,
    /// Of the fee: paid to the host for proven periods (after the commission), refunded to
    /// the sender.
    pub paid: u64,
    pub refunded: u64,
    /// The exchange that matched the deal (hex) and the host's commission to it, in
    /// thousandths of each part the host earns; what it was paid so far.
    pub exchange: Option<String>,
    pub commission_permille: u16,
    pub commission_paid: u64,
    /// Download payments the host claimed, and the fees they paid the sender.
    pub downloads: u64,
    pub download_income: u64,
    /// The insurer's cover the sender bought with the payment.
    pub insurance: Option<InsuranceView>,
    /// Proof periods in all, proven and missed so far.
    pub parts: u32,
    pub proven: u32,
    pub missed: u32,
    pub chunks: usize,
    pub bytes: u64,
    /// The first proof period the deal is covered in (0 before its completion).
    pub first_period: u64,
    /// The chunks, in deal order (empty in `deals_of` answers).
    pub entries: Vec<DealChunk>,
}

/// An insurer's cover of a deal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsuranceView {
    /// The insurer's key (hex).
    pub insurer: String,
    /// MASPC the sender paid; MASP the insurer pays at the deal's first missed proof.
    pub premium: u64,
    pub cover: u64,
    /// "pending" (until the completion), "running", "paid_out" or "lapsed".
    pub state: String,
    /// MASP paid out to the sender.
    pub paid: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockView {
    pub height: u64,
    pub id: String,
    pub parent: String,
    pub timestamp_ms: u64,
    pub proposer: String,
    /// Ids of its transactions, in order.
    pub txs: Vec<[u8; 32]>,
    pub bytes: usize,
}

/// An exchange's service (`exchange::Exchange`): hosts post standing asks, senders post
/// requests and are answered with the hosts they are matched to. Asks and requests are
/// signed messages in their own encoding (`proto::market`, `docs/formats.md` section 17),
/// carried here as bytes; nothing of them goes on chain.
#[tarpc::service]
pub trait ExchangeApi {
    /// A host's `SignedAsk`: on the book until it expires or the host posts a newer one.
    async fn post_ask(ask: Vec<u8>) -> Result<(), ControlError>;
    /// A sender's `SignedRequest`: the hosts it is matched to, best first (at most its
    /// copies; fewer, or none, when fewer asks qualify).
    async fn request(request: Vec<u8>) -> Result<Vec<ExchangeMatch>, ControlError>;
    async fn status() -> ExchangeStatus;
    /// [`EXCHANGE_API_VERSION`].
    async fn api_version() -> u32;
    /// Who the exchange is and what it charges: a host reads it before posting an ask.
    /// (Appended after `api_version`, whose method number never changes.)
    async fn terms() -> ExchangeTerms;
    /// A host that bids request by request (registered on the chain with a deposit) waits
    /// here for the requests the exchange forwards: those still open for bids with a
    /// `seq` above `after`, answered at once if there are any, else when one arrives or
    /// after [`WATCH_WAIT_SECS`] (then possibly none). Asking keeps the host a watcher for
    /// [`WATCHER_LIFE_SECS`]: each request waits for every watcher's bid or pass, for at
    /// most the profile's `bid_window_ms`.
    async fn watch_requests(
        host: [u8; 32],
        after: u64,
    ) -> Result<Vec<ForwardedRequest>, ControlError>;
    /// A host's `SignedBid` (`proto::market`) on a forwarded request still open: a price
    /// for that request alone, or a pass.
    async fn bid(bid: Vec<u8>) -> Result<(), ControlError>;
}

/// Longest [`ExchangeApi::watch_requests`] waits before answering with nothing (under
/// tarpc's default deadline of 10 s).
pub const WATCH_WAIT_SECS: u64 = 5;
/// How long after its last [`ExchangeApi::watch_requests`] a host counts as watching.
pub const WATCHER_LIFE_SECS: u64 = 15;

/// A request an exchange forwards to the hosts that bid by themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedRequest {
    /// Its place in the exchange's forwarding order (from 1).
    pub seq: u64,
    /// The sender's `SignedRequest`, as sent: `proto::market::request_id` of these bytes
    /// names it in a bid.
    pub request: Vec<u8>,
}

/// A host a request was matched to: where to ask it for its signed offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeMatch {
    /// The host's key (its ask was signed by it; its offer must be too).
    pub host: [u8; 32],
    /// Its control-plane address.
    pub addr: String,
    pub price_per_gib_day: u64,
    /// Its rating on the chain (0..=1000).
    pub rating: u32,
    pub region: String,
    /// Its deposit on the chain (MASP) when it asked.
    pub deposit: u64,
    /// In a request's answer, what the host holds of it: the request's bytes (a whole
    /// copy), or with batches allowed its batch and the overhead. In the book's listing
    /// (`status`): the room left on its ask.
    pub bytes: u64,
}

/// What an exchange takes (seed 4.3: each exchange states its own usage profile); every
/// request outside it is refused, saying which term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeProfile {
    /// Smallest request, in bytes (0: any; a request whose size is not yet known passes).
    pub min_bytes: u64,
    pub min_days: u32,
    pub max_days: u32,
    /// Regions it serves (empty: any).
    pub regions: Vec<String>,
    /// What a host matched here pays the exchange: thousandths of each part of a deal's
    /// fee the host earns, carried in the deal's payment and paid by the ledger.
    pub commission_permille: u16,
    /// How long a request waits for the bids of hosts that bid by themselves, in
    /// milliseconds (0: requests are not forwarded; matched on the standing asks alone).
    pub bid_window_ms: u64,
}

/// An exchange's key, chain and terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeTerms {
    /// Its key: its account on the chain, where its commission is paid.
    pub key: [u8; 32],
    pub chain_id: u64,
    pub profile: ExchangeProfile,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeStatus {
    pub key: [u8; 32],
    pub chain_id: u64,
    pub profile: ExchangeProfile,
    /// Asks on the book now.
    pub asks: Vec<ExchangeMatch>,
    pub requests_matched: u64,
    /// Hosts watching for forwarded requests now.
    pub watchers: u32,
    /// Requests forwarded to them; bids and passes received; hosts matched by a bid.
    pub requests_forwarded: u64,
    pub bids: u64,
    pub passes: u64,
    pub bids_matched: u64,
    /// Requests refused, by reason.
    pub refused: Vec<(String, u64)>,
    pub version: String,
    /// This process's place among the exchange's replicas, if it is one.
    pub replica: Option<ExchangeReplica>,
}

/// One replica of an exchange run as several (`exchange::replica`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeReplica {
    pub id: u64,
    /// The replica leading now, as this one knows (none during an election).
    pub leader: Option<u64>,
    pub term: u64,
    /// The last log index applied to this replica's state.
    pub last_applied: Option<u64>,
    /// Every replica's id.
    pub replicas: Vec<u64>,
}

/// A live exchange as an index lists it (from its signed listing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeInfo {
    /// The exchange's key (registered on the chain as an exchange).
    pub key: [u8; 32],
    /// Its `ExchangeApi` address.
    pub addr: String,
    pub region: String,
    /// Its listing lapses at this Unix second unless renewed.
    pub expiry_unix_secs: u64,
}

/// An index's service (`exchange::index::Index`): which exchanges are alive and where.
/// Senders measure the round trip to each themselves and take the nearest.
#[tarpc::service]
pub trait IndexApi {
    /// An exchange's `SignedListing` (`proto::market`): listed until it expires or the
    /// exchange posts a newer one.
    async fn post_listing(listing: Vec<u8>) -> Result<(), ControlError>;
    /// The live exchanges, in key order.
    async fn exchanges() -> Vec<ExchangeInfo>;
    /// [`INDEX_API_VERSION`].
    async fn api_version() -> u32;
}

/// An insurer's service (`insurer::Insurer`, `mspace insure run`): quotes for the cover of
/// a deal a sender is about to pay, priced from the host's rating and deposit on the chain
/// and refused beyond what the insurer's deposit can still cover.
#[tarpc::service]
pub trait InsurerApi {
    /// A signed quote (`proto::tx::Insurance`) for the payment described, or the reason
    /// there is none.
    async fn quote(request: QuoteRequest) -> Result<Quote, ControlError>;
    async fn status() -> InsurerStatus;
    /// [`INSURER_API_VERSION`].
    async fn api_version() -> u32;
}

/// The payment a sender is about to make and the cover it wants (MASP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuoteRequest {
    pub sender: [u8; 32],
    pub host: [u8; 32],
    pub offer: [u8; 16],
    /// The offer's expiry as the payment will state it: the quote expires no later.
    pub offer_expiry_unix_secs: u64,
    pub storage_fee: u64,
    pub period_blocks: u64,
    pub cover: u64,
}

/// An insurer's signed quote: the sender puts it in its payment as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub insurer: [u8; 32],
    pub premium: u64,
    pub cover: u64,
    pub quote_expiry_unix_secs: u64,
    /// 64 bytes: the insurer's signature over `proto::tx::Insurance::message`.
    pub signature: Vec<u8>,
}

impl Quote {
    /// The quote as a payment carries it (`None` if the signature is not 64 bytes).
    pub fn insurance(&self) -> Option<proto::tx::Insurance> {
        Some(proto::tx::Insurance {
            insurer: proto::tx::AccountId(self.insurer),
            premium: self.premium,
            cover: self.cover,
            quote_expiry_unix_secs: self.quote_expiry_unix_secs,
            signature: self.signature.as_slice().try_into().ok()?,
        })
    }
}

/// How an insurer prices and bounds its cover (`insurer.toml`'s `[policy]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsurerPolicyView {
    pub rate_ppm_per_day: u64,
    pub min_rating: u32,
    pub max_cover_per_deal: u64,
    pub quote_life_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsurerStatus {
    pub key: [u8; 32],
    pub chain_id: u64,
    /// On the chain: its deposit, the cover of running deals, what it can still cover.
    pub deposit: u64,
    pub exposure: u64,
    pub free: u64,
    pub policy: InsurerPolicyView,
    pub quoted: u64,
    /// Quotes refused, by reason.
    pub refused: Vec<(String, u64)>,
    pub version: String,
}

/// tarpc's bincode codec behind a guard: tarpc 0.37 decodes a request's deadline as
/// `Instant::now() + duration`, which panics when a peer sends a huge duration (found by
/// the `control` fuzz target). Requests with a deadline over [`DEADLINE_MAX_SECS`] are
/// refused before decoding ([`PreCheck`]), and any other panic while decoding is a decode
/// error that ends that connection alone.
#[derive(Debug)]
pub struct SafeBincode<Item, SinkItem>(std::marker::PhantomData<fn() -> (Item, SinkItem)>);

impl<Item, SinkItem> Default for SafeBincode<Item, SinkItem> {
    fn default() -> Self {
        SafeBincode(std::marker::PhantomData)
    }
}

/// A check on a message's bytes before they are decoded.
pub trait PreCheck {
    fn check(_bytes: &[u8]) -> Result<(), &'static str> {
        Ok(())
    }
}

/// bincode's variable-length integer (its default options): one byte below 251, else a tag
/// (251, 252, 253 for 2, 4, 8 little-endian bytes) then the value.
fn varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let take = |n: usize| {
        let v = rest.get(..n)?;
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(v);
        Some((u64::from_le_bytes(b), &rest[n..]))
    };
    match tag {
        0..=250 => Some((u64::from(tag), rest)),
        251 => take(2),
        252 => take(4),
        253 => take(8),
        _ => None,
    }
}

/// Longest deadline a control request may carry.
pub const DEADLINE_MAX_SECS: u64 = 86_400;

/// A client's message starts (for a request, variant 0) with its context, whose first field
/// is the deadline's seconds: refused when over [`DEADLINE_MAX_SECS`], before tarpc adds it
/// to the clock and panics on overflow.
impl<T> PreCheck for tarpc::ClientMessage<T> {
    fn check(bytes: &[u8]) -> Result<(), &'static str> {
        match varint(bytes) {
            Some((0, rest)) => match varint(rest) {
                Some((secs, _)) if secs <= DEADLINE_MAX_SECS => Ok(()),
                _ => Err("a request deadline that is missing or too far away"),
            },
            _ => Ok(()),
        }
    }
}

impl<T> PreCheck for tarpc::Response<T> {}

impl<Item, SinkItem> tarpc::tokio_serde::Deserializer<Item> for SafeBincode<Item, SinkItem>
where
    for<'a> Item: Deserialize<'a>,
    Item: PreCheck,
{
    type Error = std::io::Error;

    fn deserialize(
        self: std::pin::Pin<&mut Self>,
        src: &tarpc::tokio_util::bytes::BytesMut,
    ) -> Result<Item, Self::Error> {
        Item::check(src).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let codec = std::pin::pin!(Bincode::<Item, SinkItem>::default());
            codec.deserialize(src)
        }))
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a control message that cannot be decoded",
            ))
        })
    }
}

impl<Item, SinkItem: Serialize> tarpc::tokio_serde::Serializer<SinkItem>
    for SafeBincode<Item, SinkItem>
{
    type Error = std::io::Error;

    fn serialize(
        self: std::pin::Pin<&mut Self>,
        item: &SinkItem,
    ) -> Result<tarpc::tokio_util::bytes::Bytes, Self::Error> {
        let codec = std::pin::pin!(Bincode::<Item, SinkItem>::default());
        codec.serialize(item)
    }
}

/// A control-plane transport over `stream`: length-delimited frames of at most
/// [`CONTROL_FRAME_MAX`] bytes, [`SafeBincode`] inside.
pub fn transport<Item, SinkItem>(
    stream: tokio::net::TcpStream,
) -> tarpc::serde_transport::Transport<
    tokio::net::TcpStream,
    Item,
    SinkItem,
    SafeBincode<Item, SinkItem>,
>
where
    for<'a> Item: Deserialize<'a>,
    Item: PreCheck,
    SinkItem: Serialize,
{
    let framed = tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(CONTROL_FRAME_MAX)
        .new_framed(stream);
    tarpc::serde_transport::new(framed, SafeBincode::default())
}

/// Serves a tarpc service on `addr` with the control plane's transport and limits
/// ([`CONTROL_CHANNELS_PER_PEER`], [`CONTROL_REQUESTS_PER_CHANNEL`]) until the task is
/// dropped; returns the bound address once listening, through `bound`. A macro, because
/// tarpc's `Serve` cannot promise a `Send` response future to generic code.
#[macro_export]
macro_rules! serve_control {
    ($service:expr, $addr:expr, $bound:expr) => {{
        use $crate::__reexport::*;
        async move {
            let service = $service;
            let listener = tokio::net::TcpListener::bind($addr).await?;
            let _ = $bound.send(listener.local_addr()?);
            futures::stream::unfold(listener, |l| async move {
                let accepted = l.accept().await.ok().map(|(s, _)| s);
                Some((accepted, l))
            })
            .filter_map(futures::future::ready)
            .map(|s| BaseChannel::with_defaults($crate::transport(s)))
            .max_channels_per_key($crate::CONTROL_CHANNELS_PER_PEER, |t| {
                t.transport()
                    .peer_addr()
                    .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip())
            })
            .map(|channel| {
                channel
                    .max_concurrent_requests($crate::CONTROL_REQUESTS_PER_CHANNEL)
                    .execute(service.clone())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    })
            })
            .buffer_unordered(1024)
            .for_each(|()| async {})
            .await;
            std::io::Result::Ok(())
        }
    }};
}

#[doc(hidden)]
pub mod __reexport {
    pub use futures::prelude::*;
    pub use futures::{self, future};
    pub use tarpc::server::incoming::Incoming;
    pub use tarpc::server::{BaseChannel, Channel};
    pub use tokio;
}

/// Refuses a peer whose service speaks another version than this build's.
fn check_version(service: &str, addr: &str, theirs: u32, ours: u32) -> std::io::Result<()> {
    if theirs == ours {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{addr} speaks {service} version {theirs}, this build speaks version {ours}: \
                 upgrade the older side"
            ),
        ))
    }
}

fn rpc_io(e: tarpc::client::RpcError) -> std::io::Error {
    std::io::Error::other(format!("asking the version: {e}"))
}

/// `pub async fn $name(addr) -> io::Result<$client>`: connects, asks the peer's version and
/// refuses another than `$version`, naming both.
macro_rules! versioned_client {
    ($(#[$doc:meta])* $name:ident, $client:ident, $service:literal, $version:ident, nodelay: $nodelay:expr) => {
        $(#[$doc])*
        pub async fn $name(addr: &str) -> std::io::Result<$client> {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            if $nodelay {
                stream.set_nodelay(true)?;
            }
            let c = $client::new(tarpc::client::Config::default(), transport(stream)).spawn();
            let v = c
                .api_version(tarpc::context::current())
                .await
                .map_err(rpc_io)?;
            check_version($service, addr, v, $version)?;
            Ok(c)
        }
    };
}

versioned_client!(
    /// A client of a host's control plane, after checking it speaks [`HOST_API_VERSION`].
    host_client, HostApiClient, "HostApi", HOST_API_VERSION, nodelay: false
);
versioned_client!(
    /// A client of an exchange, after checking it speaks [`EXCHANGE_API_VERSION`].
    exchange_client, ExchangeApiClient, "ExchangeApi", EXCHANGE_API_VERSION, nodelay: false
);
versioned_client!(
    /// A client of an index, after checking it speaks [`INDEX_API_VERSION`].
    index_client, IndexApiClient, "IndexApi", INDEX_API_VERSION, nodelay: false
);
versioned_client!(
    /// A client of an insurer, after checking it speaks [`INSURER_API_VERSION`].
    insurer_client, InsurerApiClient, "InsurerApi", INSURER_API_VERSION, nodelay: false
);
versioned_client!(
    /// A client of a miner's control plane, after checking it speaks [`MINER_API_VERSION`].
    miner_client, MinerApiClient, "MinerApi", MINER_API_VERSION, nodelay: true
);

/// A 32-byte id or key from lowercase hex, as the chain's views ([`chain`], `MinerApi`)
/// write them; `None` if it is not one.
pub fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    data_encoding::HEXLOWER
        .decode(s.as_bytes())
        .ok()?
        .try_into()
        .ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn only_64_lowercase_hex_digits_are_an_id() {
        let id = [0xab; 32];
        assert_eq!(parse_hex32(&"ab".repeat(32)), Some(id));
        for bad in [
            "AB".repeat(32),
            "ab".repeat(31),
            "ab".repeat(33),
            format!("{}zz", "ab".repeat(31)),
            String::new(),
        ] {
            assert_eq!(parse_hex32(&bad), None, "{bad}");
        }
    }
    use tarpc::tokio_serde::{Deserializer, Serializer};
    use tarpc::{ClientMessage, Response};

    type Server = SafeBincode<ClientMessage<HostApiRequest>, Response<HostApiResponse>>;

    #[test]
    fn a_huge_deadline_is_a_decode_error_not_a_panic() {
        // The fuzz target's find: tarpc adds this duration to `Instant::now()`.
        for b64 in [&b"AP3t/f0BAAABgUg="[..], b"AP39ANDQ0NDQ0NABSA=="] {
            let bytes = data_encoding::BASE64.decode(b64).unwrap();
            let mut codec = Server::default();
            let r = std::pin::Pin::new(&mut codec).deserialize(&bytes[..].into());
            assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidData);
        }
        assert_eq!(varint(&[250]), Some((250, &[][..])));
        assert_eq!(varint(&[251, 1, 2]), Some((0x201, &[][..])));
        assert_eq!(varint(&[253, 1]), None);
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        assert!(check_version("MinerApi", "m:1", 1, 1).is_ok());
        let e = check_version("MinerApi", "m:1", 2, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2") && e.contains("version 1"), "{e}");
    }

    #[test]
    fn requests_round_trip_and_garbage_is_refused() {
        let msg: ClientMessage<HostApiRequest> = ClientMessage::Request(tarpc::Request {
            context: tarpc::context::current(),
            id: 7,
            message: HostApiRequest::Offer {
                request: StorageRequest {
                    bytes: 1 << 30,
                    days: 30,
                    via: Some([7; 32]),
                },
            },
        });
        let mut client =
            SafeBincode::<Response<HostApiResponse>, ClientMessage<HostApiRequest>>::default();
        let bytes = std::pin::Pin::new(&mut client).serialize(&msg).unwrap();
        let mut server = Server::default();
        let back = std::pin::Pin::new(&mut server)
            .deserialize(&bytes[..].into())
            .unwrap();
        let ClientMessage::Request(r) = back else {
            panic!("not a request")
        };
        assert_eq!(r.id, 7);
        for bad in [&b""[..], &[0xff; 3], &bytes[..bytes.len() - 1]] {
            assert!(std::pin::Pin::new(&mut server)
                .deserialize(&bad.into())
                .is_err());
        }
    }
}
