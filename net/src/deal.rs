//! The sender's side of a storage deal (the seed's table 2, with the host reached
//! directly): ask each host for a signed offer and check it, seal the file once to learn
//! every chunk's CRC32C and BLAKE3 root ([`client::plan_deal`]), pay each host with an
//! `UploadPayment` carrying them, ask the host for the deal's upload link, upload (sealing
//! again: no encrypted copy on disk, see `DealPlan`), and follow the chain until the host's
//! completion matched (storage runs) or did not (pay again, bounded by
//! `market::sender::ATTEMPTS_MAX`).
//!
//! The decisions (terms, what to do after an upload) are `market`'s; this is the shell
//! that talks to hosts and miners.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api::chain::ChainClient;
use api::{DealStage, HostApiClient, StorageRequest};
use ed25519_consensus::SigningKey;
use market::sender::{after_upload, Next, Seen};
use proto::link::Link;
use proto::market::Spread;
use proto::offer::{Offer, SignedOffer};
use proto::tx::{AccountId, TxBody, TxId};
use proto::{KdfParams, ShareKey};

use crate::client::{
    journal_path_for, mtime_nanos, plan_deal, put_file, DealPlan, Preset, PutJob, PENDING_DEAL_ID,
};
use crate::journal::{Journal, JournalHeader};
use crate::{hex, parse_hex32, NetError};

/// Fee of the payment transaction (MASPC).
pub const PAYMENT_FEE: u64 = 1;
/// How long a payment may take to be committed.
const COMMIT_WAIT: Duration = Duration::from_secs(60);
/// How many blocks the sender waits for a host to see a committed payment before its
/// link request is given up (a host's miner may be a block or two behind).
const LINK_TRIES: u32 = 20;

/// What a paid upload needs.
#[derive(Clone, Debug)]
pub struct DealJob {
    pub file: PathBuf,
    /// Hosts' control addresses: one copy (one deal) on each.
    pub hosts: Vec<String>,
    /// Miners' control addresses.
    pub chain: Vec<String>,
    pub days: u32,
    /// Blocks of storage, instead of `days` x `market::terms::BLOCKS_PER_DAY` (devnets).
    pub period_blocks: Option<u64>,
    /// The sender's key: its account pays, and it is the links' bearer.
    pub key: SigningKey,
    pub passphrase: zeroize::Zeroizing<Vec<u8>>,
    /// How the passphrase becomes the file's key (`KdfParams::DEFAULT` for a person's
    /// passphrase; a program with a random one may use Argon2's minimum).
    pub kdf: KdfParams,
    pub chunk_bytes: u32,
    pub workers: usize,
    pub journal_dir: PathBuf,
    pub via: Vec<String>,
    /// The most a proxy of `via` may charge, MASPC per GiB relayed.
    pub max_proxy_price: u64,
    /// The key each host in `hosts` must answer with (an exchange matched these), in the
    /// same order; empty: whatever key each host states.
    pub host_keys: Vec<[u8; 32]>,
    /// The most the sender pays, MASPC per GiB per day: a dearer offer is refused.
    pub max_price_per_gib_day: Option<u64>,
    /// The key of the exchange that matched `hosts`: each host's offer must name it (with
    /// the commission the host pays it), and the payment carries it to the chain.
    pub exchange: Option<[u8; 32]>,
    /// MASPC each receiver pays the sender per download (`mspace share`); 0: free.
    pub download_fee: u64,
    /// Cover to buy from an insurer with each deal's payment.
    pub insurance: Option<Cover>,
    /// Store N erasure shares of each chunk, one per host (`hosts` has N, all distinct),
    /// of which any K rebuild it, instead of a full copy on each host.
    pub erasure: Option<proto::erasure::Scheme>,
    /// Copies spread over several hosts, as an exchange matched them; `None`: a full copy
    /// on each host.
    pub batches: Option<Batches>,
}

/// Copies spread in batches: what each host of [`DealJob::hosts`] holds, and which hosts
/// make each copy.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batches {
    /// The request's terms: the unit (a sealed chunk) and the overhead (the envelope).
    pub spread: Spread,
    /// For each host, the bytes it holds: a batch of consecutive chunks and the envelope.
    pub bytes: Vec<u64>,
    /// Each copy's hosts (consecutive, in order), as [`copies_of`] grouped them.
    pub copies: Vec<std::ops::Range<usize>>,
}

/// The cover a sender buys with each payment: the insurer's quote is asked for just before
/// paying and carried in the payment; a dearer or missing quote stops the deal unpaid.
#[derive(Clone, Debug)]
pub struct Cover {
    /// The insurer's control address.
    pub insurer: String,
    /// MASP the insurer pays the sender if the host misses a proof of the deal.
    pub cover: u64,
    /// The most the sender pays for it, MASPC.
    pub max_premium: u64,
}

/// What an exchange answered a request with.
#[derive(Clone, Debug)]
pub struct Matched {
    /// The exchange's address and key (its account on the chain).
    pub addr: String,
    pub key: [u8; 32],
    /// What a host matched there pays it, in thousandths of what it earns.
    pub commission_permille: u16,
    /// The hosts matched, best first (with batches, copy after copy).
    pub hosts: Vec<api::ExchangeMatch>,
    /// The request's batches, if it allowed copies spread over several hosts.
    pub spread: Option<Spread>,
    /// Each copy's hosts in `hosts` ([`copies_of`]): one each without batches.
    pub copies: Vec<std::ops::Range<usize>>,
}

/// What a sender asks an exchange for.
#[derive(Clone, Debug)]
pub struct MarketAsk {
    /// Exchanges' control addresses, tried in order until one answers.
    pub exchanges: Vec<String>,
    pub copies: u8,
    /// The most the sender pays, MASPC per GiB per day.
    pub max_price_per_gib_day: u64,
    /// Hosts wanted in this region (empty: any).
    pub region: String,
    /// Only hosts rated at least this on the chain (0..=1000).
    pub min_rating: u16,
    /// Let a copy be spread over several hosts, each holding a batch of its chunks (hosts
    /// with room for part of the file take part in it); full copies only otherwise.
    pub spread: bool,
}

/// Fault injection for the process tests: `exit-after-payment` ends the process as soon as
/// a deal's payment is committed (a put killed mid-way, deterministically).
pub const FAULT_ENV: &str = "MSPACE_DEAL_FAULT";

/// What an exchange matched for a paid put, kept beside the put's pending journal
/// (`<journal>.match`, JSON) from before its first payment until every copy is placed: a
/// rerun after a kill places the file on the same hosts and batches instead of asking the
/// exchange again (which would match other batches, the hosts' room having changed), so the
/// deals the killed run paid are found and not paid twice.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedMatch {
    /// The exchange's key (hex): the offers name it.
    pub exchange: String,
    pub hosts: Vec<String>,
    /// The keys the exchange matched, hex, one per host.
    pub host_keys: Vec<String>,
    pub batches: Option<Batches>,
}

fn match_path(job: &DealJob) -> PathBuf {
    let mut p = journal_path_for(&job.journal_dir, &PENDING_DEAL_ID, &job.file).into_os_string();
    p.push(".match");
    PathBuf::from(p)
}

/// The match an interrupted put of `job.file` was placing, if its pending journal still
/// stands for the file as it is now (same size, modification time and chunk size) and the
/// match was kept with it.
pub fn saved_match(job: &DealJob) -> Option<SavedMatch> {
    let file = std::fs::metadata(&job.file).ok()?;
    let pending = journal_path_for(&job.journal_dir, &PENDING_DEAL_ID, &job.file);
    Journal::find(
        &pending,
        &PENDING_DEAL_ID,
        file.len(),
        mtime_nanos(&file),
        job.chunk_bytes,
    )?;
    SavedMatch::from_json(&std::fs::read(match_path(job)).ok()?)
}

impl SavedMatch {
    /// The match as it is kept (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings, numbers and lists encode")
    }

    /// A kept match read back: at most [`crate::record::RECORD_BYTES_MAX`] bytes of JSON
    /// whose lists agree in length and whose keys are 32-byte hex; `None` for anything else
    /// (the put then asks an exchange again, as a new one would). The batches are checked
    /// again against the sealing when the file is placed ([`batch_ranges`]).
    pub fn from_json(bytes: &[u8]) -> Option<SavedMatch> {
        if bytes.len() > crate::record::RECORD_BYTES_MAX {
            return None;
        }
        let saved: SavedMatch = serde_json::from_slice(bytes).ok()?;
        let consistent = saved.hosts.len() == saved.host_keys.len()
            && saved.host_keys.iter().all(|k| parse_hex32(k).is_some())
            && parse_hex32(&saved.exchange).is_some()
            && saved
                .batches
                .as_ref()
                .is_none_or(|b| b.bytes.len() == saved.hosts.len());
        consistent.then_some(saved)
    }
}

/// `job` with the hosts, keys, exchange and batches of `saved`.
pub fn resume_match(job: &mut DealJob, saved: &SavedMatch) {
    job.hosts = saved.hosts.clone();
    job.host_keys = saved
        .host_keys
        .iter()
        .filter_map(|k| parse_hex32(k))
        .collect();
    job.exchange = parse_hex32(&saved.exchange);
    job.batches = saved.batches.clone();
}

/// How long a sender's request lives on an exchange.
pub const REQUEST_LIFE_SECS: u64 = 120;

/// Sealed bytes of `file_bytes` in chunks of `chunk_bytes`, with its manifest (an upper
/// bound: what offers and requests are asked for before sealing).
pub fn sealed_estimate(file_bytes: u64, chunk_bytes: u32) -> u64 {
    let chunks = proto::Manifest::chunk_count_for(file_bytes, chunk_bytes);
    file_bytes + chunks * u64::from(proto::TAG_BYTES) + proto::Manifest::envelope_bytes_max(chunks)
}

/// The batches a request for `file_bytes` in chunks of `chunk_bytes` allows: whole sealed
/// chunks, and the largest manifest envelope each batch host also stores; `None` for an
/// empty file (nothing to spread).
pub fn spread_for(file_bytes: u64, chunk_bytes: u32) -> Option<Spread> {
    let chunks = proto::Manifest::chunk_count_for(file_bytes, chunk_bytes);
    // A file over the chunk limit (refused when it is sealed) has no batches either.
    let overhead = u32::try_from(proto::Manifest::envelope_bytes_max(chunks)).ok()?;
    (chunks > 0).then(|| Spread {
        unit_bytes: chunk_bytes + proto::TAG_BYTES,
        overhead_bytes: overhead,
    })
}

/// Groups the hosts an exchange matched into copies: with batches, consecutive hosts whose
/// batches (their bytes less the overhead) add up to the copy's chunks, each a whole number
/// of units but a copy's last; without, a host a copy. An answer that does not add up (an
/// exchange that broke the rule) is an error; a copy left unfinished at the end is not
/// counted.
pub fn copies_of(
    hosts: &[api::ExchangeMatch],
    bytes: u64,
    spread: Option<Spread>,
) -> Result<Vec<std::ops::Range<usize>>, NetError> {
    let Some(sp) = spread else {
        return Ok((0..hosts.len()).map(|i| i..i + 1).collect());
    };
    let whole = sp.chunk_bytes_of(bytes);
    let overhead = u64::from(sp.overhead_bytes);
    let unit = u64::from(sp.unit_bytes);
    let (mut copies, mut start, mut left) = (Vec::new(), 0, whole);
    for (i, m) in hosts.iter().enumerate() {
        let batch = m
            .bytes
            .checked_sub(overhead)
            .filter(|b| *b > 0 && (*b == left || (*b < left && unit > 0 && *b % unit == 0)));
        let Some(batch) = batch else {
            return Err(NetError::Protocol(format!(
                "the exchange matched host {} for {} bytes, not a batch of whole {unit}-byte units (or the {left} bytes left of its copy) and the {overhead} every batch holds",
                m.addr, m.bytes
            )));
        };
        left -= batch;
        if left == 0 {
            copies.push(start..i + 1);
            start = i + 1;
            left = whole;
        }
    }
    Ok(copies)
}

/// What each host stores of the file (an upper bound, as [`sealed_estimate`]): the sealed
/// file, or with an erasure scheme one share of each chunk and the manifest.
pub fn stored_estimate(
    file_bytes: u64,
    chunk_bytes: u32,
    erasure: Option<proto::erasure::Scheme>,
) -> u64 {
    let Some(scheme) = erasure else {
        return sealed_estimate(file_bytes, chunk_bytes);
    };
    let chunks = proto::Manifest::chunk_count_for(file_bytes, chunk_bytes);
    let full = u64::from(scheme.share_bytes(chunk_bytes + proto::TAG_BYTES));
    chunks * full + 4096
}

/// How long a sender waits for an exchange's answer when it measures the round trip.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The exchanges the first index that answers lists, nearest first by the round trip
/// measured from here (connecting and asking the exchange's version, within
/// [`PROBE_TIMEOUT`]); one that does not answer is left out.
pub async fn nearest_exchanges(
    indexes: &[String],
) -> Result<Vec<(api::ExchangeInfo, Duration)>, NetError> {
    let mut unreachable = Vec::new();
    let mut listed = None;
    for ix in indexes {
        let answer = match api::index_client(ix).await {
            Ok(c) => c.exchanges(tarpc::context::current()).await,
            Err(e) => {
                unreachable.push(format!("{ix}: {e}"));
                continue;
            }
        };
        match answer {
            Ok(list) => {
                listed = Some(list);
                break;
            }
            Err(e) => unreachable.push(format!("{ix}: {e}")),
        }
    }
    let Some(listed) = listed else {
        return Err(NetError::Protocol(format!(
            "no index answers: {}",
            unreachable.join("; ")
        )));
    };
    let probes = listed.into_iter().map(|e| async move {
        let t = std::time::Instant::now();
        let ok = tokio::time::timeout(PROBE_TIMEOUT, api::exchange_client(&e.addr)).await;
        matches!(ok, Ok(Ok(_))).then(|| (e, t.elapsed()))
    });
    let mut alive: Vec<(api::ExchangeInfo, Duration)> = futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    alive.sort_by_key(|(e, rtt)| (*rtt, e.key));
    Ok(alive)
}

/// How an attempt on a list of exchanges ended.
enum Tried {
    Matched(Matched),
    /// An exchange answered with a refusal, or too few hosts: final, whatever the others
    /// would say (a sender does not shop its request around refusals).
    Refused(NetError),
    /// None answered: why, for each.
    Unanswered(Vec<String>),
}

/// Asks the first exchange that answers to match a signed request for `job`'s file: the
/// hosts matched, best first. Refused requests (outside the exchange's profile, a sender
/// with no account) and an answer with fewer hosts than copies are errors saying so; an
/// exchange that does not answer, or dies before it has answered, is passed over for the
/// next (`report` says so).
pub async fn match_on_exchange(
    job: &DealJob,
    ask: &MarketAsk,
    report: &Report,
) -> Result<Matched, NetError> {
    match try_exchanges(job, ask, &ask.exchanges, report).await? {
        Tried::Matched(m) => Ok(m),
        Tried::Refused(e) => Err(e),
        Tried::Unanswered(why) => Err(NetError::Protocol(format!(
            "no exchange answers: {}",
            why.join("; ")
        ))),
    }
}

/// Exchanges at most that [`match_through_index`] tries through the indexes.
pub const INDEX_ATTEMPTS: usize = 4;

/// Matches through the exchanges the indexes list: the nearest one not tried yet
/// ([`nearest_exchanges`], asking the indexes in the order given and passing to the next
/// when one does not answer or lists nothing untried). When that exchange does not answer,
/// or dies before it has answered, asks the indexes again (the listing may have changed)
/// and goes on with the next nearest, up to [`INDEX_ATTEMPTS`] exchanges; last tries
/// those in `ask.exchanges` (named by the sender) not tried yet.
pub async fn match_through_index(
    job: &DealJob,
    ask: &MarketAsk,
    indexes: &[String],
    report: &Report,
) -> Result<Matched, NetError> {
    let mut tried: Vec<String> = Vec::new();
    let mut why = Vec::new();
    let mut any_index = false;
    for attempt in 0..INDEX_ATTEMPTS {
        if attempt > 0 {
            report("asking the index again for an exchange not tried yet");
        }
        let mut next = None;
        for ix in indexes {
            let near = match nearest_exchanges(std::slice::from_ref(ix)).await {
                Ok(near) => near,
                Err(e) => {
                    report(&format!("{e}: trying the next index"));
                    continue;
                }
            };
            any_index = true;
            let fresh: Vec<_> = near
                .into_iter()
                .filter(|(e, _)| !tried.contains(&e.addr))
                .collect();
            let shown: Vec<String> = fresh
                .iter()
                .map(|(e, rtt)| format!("{} ({:.1} ms)", e.addr, rtt.as_secs_f64() * 1e3))
                .collect();
            report(&format!(
                "index {ix} lists {} live exchange(s) that answer{}, nearest first: {}",
                shown.len(),
                if tried.is_empty() {
                    ""
                } else {
                    " not tried yet"
                },
                if shown.is_empty() {
                    "none".to_owned()
                } else {
                    shown.join(", ")
                }
            ));
            if let Some((e, _)) = fresh.into_iter().next() {
                next = Some(e.addr);
                break;
            }
        }
        let Some(ex) = next else { break };
        tried.push(ex.clone());
        match try_exchanges(job, ask, std::slice::from_ref(&ex), report).await? {
            Tried::Matched(m) => return Ok(m),
            Tried::Refused(e) => return Err(e),
            Tried::Unanswered(w) => why.extend(w),
        }
    }
    if !any_index && ask.exchanges.is_empty() {
        return Err(NetError::Protocol(format!(
            "no index answers ({}): try later, or name an exchange with --exchange",
            indexes.join(", ")
        )));
    }
    let named: Vec<String> = ask
        .exchanges
        .iter()
        .filter(|a| !tried.contains(a))
        .cloned()
        .collect();
    if !named.is_empty() {
        match try_exchanges(job, ask, &named, report).await? {
            Tried::Matched(m) => return Ok(m),
            Tried::Refused(e) => return Err(e),
            Tried::Unanswered(w) => why.extend(w),
        }
    }
    Err(NetError::Protocol(if why.is_empty() {
        "the index lists no exchange that answers: try later, or name one with --exchange"
            .to_owned()
    } else {
        format!(
            "the index lists no exchange that answers: {}",
            why.join("; ")
        )
    }))
}

async fn try_exchanges(
    job: &DealJob,
    ask: &MarketAsk,
    exchanges: &[String],
    report: &Report,
) -> Result<Tried, NetError> {
    let mut chain = ChainClient::connect(&job.chain).await.map_err(chain_err)?;
    let chain_id = chain.status().await.map_err(chain_err)?.chain_id;
    let size = std::fs::metadata(&job.file)?.len();
    let mut nonce = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let spread = if ask.spread && job.erasure.is_none() {
        spread_for(size, job.chunk_bytes)
    } else {
        None
    };
    let bytes = stored_estimate(size, job.chunk_bytes, job.erasure);
    let request = proto::market::Request {
        chain_id,
        sender: job.key.verification_key().to_bytes(),
        nonce,
        bytes,
        days: job.days,
        copies: ask.copies,
        max_price_per_gib_day: ask.max_price_per_gib_day,
        download_fee: job.download_fee,
        min_rating: ask.min_rating,
        expiry_unix_secs: crate::now_secs() + REQUEST_LIFE_SECS,
        region: ask.region.clone(),
        spread,
    };
    let signed = proto::market::Signed::sign(request, &job.key).to_bytes();
    let mut unreachable = Vec::new();
    for ex in exchanges {
        let ctx = tarpc::context::current;
        let answer = match api::exchange_client(ex).await {
            Ok(c) => match c.terms(ctx()).await {
                Ok(t) if t.chain_id != chain_id => {
                    return Ok(Tried::Refused(NetError::Protocol(format!(
                        "exchange {ex} serves chain {}, not this client's {chain_id}",
                        t.chain_id
                    ))))
                }
                Ok(t) => c
                    .request(ctx(), signed.clone())
                    .await
                    .map(|m| m.map(|m| (t, m))),
                Err(e) => Err(e),
            },
            Err(e) => {
                report(&format!(
                    "exchange {ex} does not answer ({e}): trying the next"
                ));
                unreachable.push(format!("{ex}: {e}"));
                continue;
            }
        };
        let (terms, matched) = match answer {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                return Ok(Tried::Refused(NetError::Protocol(format!(
                    "exchange {ex} refuses: {e}"
                ))))
            }
            Err(e) => {
                // Connected, then lost before the answer: the exchange died or hung
                // while negotiating. The request is signed with a fresh nonce per
                // attempt list, so the next exchange takes it as new.
                report(&format!(
                    "exchange {ex} stopped answering while negotiating ({e}): trying the next"
                ));
                unreachable.push(format!("{ex}: {e}"));
                continue;
            }
        };
        let copies = match copies_of(&matched, bytes, spread) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Tried::Refused(NetError::Protocol(format!(
                    "exchange {ex}: {e}"
                ))))
            }
        };
        if copies.len() < usize::from(ask.copies) {
            return Ok(Tried::Refused(NetError::Protocol(format!(
                "exchange {ex} matched {} for {} copies at {} MASPC per GiB per day at most: raise --max-price, ask for fewer copies{} or try later",
                match spread {
                    None => format!("{} host(s)", matched.len()),
                    Some(_) => format!("{} copies (spread or whole)", copies.len()),
                },
                ask.copies,
                ask.max_price_per_gib_day,
                if spread.is_some() { "" } else { ", allow --spread" }
            ))));
        }
        // Copies beyond those asked for are not used (nor paid).
        let mut copies = copies;
        copies.truncate(usize::from(ask.copies));
        let used = copies.last().map_or(0, |c| c.end);
        if used > crate::record::RECORD_COPIES_MAX {
            return Ok(Tried::Refused(NetError::Protocol(format!(
                "exchange {ex} spread the copies over {used} hosts, more than the {} a file's record lists: ask for fewer copies, or try when hosts with more room ask there",
                crate::record::RECORD_COPIES_MAX
            ))));
        }
        return Ok(Tried::Matched(Matched {
            addr: ex.clone(),
            key: terms.key,
            commission_permille: terms.profile.commission_permille,
            hosts: matched[..used].to_vec(),
            spread,
            copies,
        }));
    }
    Ok(Tried::Unanswered(unreachable))
}

/// One copy placed.
#[derive(Clone, Debug)]
pub struct Placed {
    pub host_addr: String,
    pub host: [u8; 32],
    /// The deal holding the file's manifest (its last part): the one to download by.
    pub deal: TxId,
    /// Every deal of this copy, in file order (one unless the file has more chunks than
    /// one deal covers, `DEAL_CHUNKS_MAX`); `deal` is the last.
    pub parts: Vec<TxId>,
    /// Paid into escrow over all parts.
    pub storage_fee: u64,
    pub period_blocks: u64,
    /// When storage started, for the last part to start.
    pub start_height: u64,
    /// Deals paid for this copy (more than its parts after CRC mismatches).
    pub attempts: u32,
    /// When this run sent the copy's first chunk (None: nothing sent in this run).
    pub first_sent: Option<std::time::Instant>,
}

#[derive(Debug)]
pub struct DealDone {
    pub plan: DealPlan,
    pub share_key: ShareKey,
    pub placed: Vec<Placed>,
}

/// Asks each copy's host for its emergency link (`HostApi::emergency_link`): the link's
/// text, or why there is none, per copy in order.
pub async fn emergency_links(placed: &[Placed]) -> Vec<Result<String, String>> {
    let asks = placed.iter().map(|p| async move {
        let c = api::host_client(&p.host_addr)
            .await
            .map_err(|e| format!("{}: {e}", p.host_addr))?;
        c.emergency_link(tarpc::context::current(), p.deal.0)
            .await
            .map_err(|e| format!("{}: {e}", p.host_addr))?
            .map_err(|e| format!("{}: {e}", p.host_addr))
    });
    futures::future::join_all(asks).await
}

/// What the sender reports as it goes (for a progress line).
pub type Report = Arc<dyn Fn(&str) + Send + Sync>;

fn chain_err(e: impl std::fmt::Display) -> NetError {
    NetError::Protocol(format!("chain: {e}"))
}

fn rpc_err(e: impl std::fmt::Display) -> NetError {
    NetError::Protocol(format!("host control plane: {e}"))
}

/// Asks `host` for an offer covering `bytes` for `days` (through exchange `via`, if one
/// matched the host) and checks it: the offer must name exactly that exchange.
async fn checked_offer(
    client: &HostApiClient,
    chain_id: u64,
    bytes: u64,
    days: u32,
    via: Option<[u8; 32]>,
) -> Result<Offer, NetError> {
    let ctx = tarpc::context::current;
    let status = client.status(ctx()).await.map_err(rpc_err)?;
    let key: [u8; 32] = data_encoding::HEXLOWER
        .decode(status.key.as_bytes())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| NetError::Protocol("the host states a malformed key".into()))?;
    let answer = client
        .offer(ctx(), StorageRequest { bytes, days, via })
        .await
        .map_err(rpc_err)?;
    let Some(signed) = answer.signed else {
        return Err(NetError::Protocol(match answer.refusal {
            Some(r) => format!("the host makes no offer: {r}"),
            None => "the host makes no offer and says no reason".into(),
        }));
    };
    let signed = SignedOffer::from_bytes(&signed)
        .map_err(|e| NetError::Protocol(format!("the host's offer: {e}")))?;
    let offer = *signed
        .check(&key, chain_id, crate::now_secs(), bytes, u64::from(days))
        .map_err(|e| NetError::Protocol(format!("the host's offer is refused: {e}")))?;
    let named = offer.broker.map(|b| b.exchange.0);
    if named != via {
        let say = |x: Option<[u8; 32]>| {
            x.map_or("no exchange".to_owned(), |k| {
                format!("exchange {}", data_encoding::HEXLOWER.encode(&k))
            })
        };
        return Err(NetError::Protocol(format!(
            "the host's offer names {}, but this sender came through {}",
            say(named),
            say(via)
        )));
    }
    Ok(offer)
}

/// Stores `job.file` as one deal per host; `progress(done, total)` counts plaintext bytes
/// of the current pass, `report` says what happens.
pub async fn store(
    job: &DealJob,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
    report: Report,
) -> Result<DealDone, NetError> {
    if job.hosts.is_empty() || job.chain.is_empty() {
        return Err(NetError::Config(
            "a deal needs a host and a miner to pay through".into(),
        ));
    }
    let mut chain = ChainClient::connect(&job.chain).await.map_err(chain_err)?;
    let status = chain.status().await.map_err(chain_err)?;
    let size = std::fs::metadata(&job.file)?.len();
    let batched = job.batches.is_some();
    let batch_hosts = job.batches.as_ref().map_or(0, |b| b.bytes.len());
    if batched && (batch_hosts != job.hosts.len() || job.erasure.is_some()) {
        return Err(NetError::Config(format!(
            "batches are given for {batch_hosts} of {} hosts{}: one each, full copies only",
            job.hosts.len(),
            if job.erasure.is_some() {
                " with erasure shares"
            } else {
                ""
            }
        )));
    }
    if let Some(scheme) = job.erasure {
        if job.hosts.len() != usize::from(scheme.n()) {
            return Err(NetError::Config(format!(
                "erasure {scheme} stores one share of each chunk on each of {} hosts; {} given",
                scheme.n(),
                job.hosts.len()
            )));
        }
    }
    let sealed_estimate = stored_estimate(size, job.chunk_bytes, job.erasure);
    // Offers first: nothing is sealed for hosts that will not take the file.
    let mut hosts = Vec::new();
    for (i, addr) in job.hosts.iter().enumerate() {
        let client = api::host_client(addr)
            .await
            .map_err(|e| NetError::Protocol(format!("cannot reach the host at {addr}: {e}")))?;
        let offer = checked_offer(
            &client,
            status.chain_id,
            job.batches
                .as_ref()
                .and_then(|b| b.bytes.get(i).copied())
                .unwrap_or(sealed_estimate),
            job.days,
            job.exchange,
        )
        .await
        .map_err(|e| NetError::Protocol(format!("{addr}: {e}")))?;
        if let Some(k) = job.host_keys.get(i) {
            if offer.host != *k {
                return Err(NetError::Protocol(format!(
                    "{addr}: the exchange matched host {} there, but host {} answers",
                    data_encoding::HEXLOWER.encode(k),
                    data_encoding::HEXLOWER.encode(&offer.host)
                )));
            }
        }
        if let Some(most) = job.max_price_per_gib_day {
            if offer.price_per_gib_day > most {
                return Err(NetError::Protocol(format!(
                    "{addr}: the host's offer asks {} MASPC per GiB per day, more than the {most} at most this sender pays",
                    offer.price_per_gib_day
                )));
            }
        }
        report(&format!(
            "{addr}: offer {} MASPC per GiB per day, deposit {} MASP{}",
            offer.price_per_gib_day,
            offer.deposit,
            offer.broker.map_or(String::new(), |b| format!(
                ", commission {} per mille to the exchange",
                b.commission_permille
            ))
        ));
        if (job.erasure.is_some() || batched)
            && hosts
                .iter()
                .any(|(_, _, o): &(_, _, Offer)| o.host == offer.host)
        {
            return Err(NetError::Protocol(format!(
                "{addr}: host {} holds another {} already: they go to distinct hosts",
                data_encoding::HEXLOWER.encode(&offer.host),
                if batched { "batch" } else { "share" }
            )));
        }
        hosts.push((addr.clone(), client, offer));
    }
    // The plan is journaled before any payment: a run killed after paying seals the
    // same chunks again and finds its deals on the chain instead of paying twice.
    let pending = journal_path_for(&job.journal_dir, &PENDING_DEAL_ID, &job.file);
    let _one_run = Journal::lock(&pending)?;
    let mtime = mtime_nanos(&std::fs::metadata(&job.file)?);
    let found = Journal::find(&pending, &PENDING_DEAL_ID, size, mtime, job.chunk_bytes)
        .map(|(h, _)| (h.salt, h.file_id));
    let (file, pass, kdf) = (job.file.clone(), job.passphrase.clone(), job.kdf);
    let (chunk_bytes, workers, erasure) = (job.chunk_bytes, job.workers, job.erasure);
    let p = Arc::clone(&progress);
    let plan = tokio::task::spawn_blocking(move || {
        plan_deal(&file, &pass, chunk_bytes, kdf, workers, &*p, found, erasure)
    })
    .await
    .map_err(|e| NetError::Protocol(format!("the sealing task failed: {e}")))??;
    let pending = Journal::start(
        &pending,
        JournalHeader {
            link: PENDING_DEAL_ID,
            file_bytes: size,
            mtime_nanos: mtime,
            chunk_bytes: plan.chunk_bytes,
            kdf: plan.kdf,
            salt: plan.salt,
            file_id: plan.file_id,
        },
        Vec::new(),
    )?;
    if found.is_some() {
        report("resuming an interrupted paid upload: the same sealing; its deals are looked up on chain");
    }
    // What an exchange matched is kept with the journal, before any payment.
    let saved = match_path(job);
    if let Some(exchange) = job.exchange {
        let m = SavedMatch {
            exchange: hex(&exchange),
            hosts: job.hosts.clone(),
            host_keys: job.host_keys.iter().map(|k| hex(k)).collect(),
            batches: job.batches.clone(),
        };
        crate::record::write_durably(&saved, &m.to_json())?;
    }
    // The chunks each host holds: all of them, or with batches its batch.
    let objects: Vec<std::ops::Range<usize>> = match &job.batches {
        Some(b) => batch_ranges(&plan, b)?,
        None => vec![0..plan.chunks.len(); hosts.len()],
    };
    // What a host may be paid for: the whole file (every copy alike), with an erasure
    // scheme one share of each chunk, `candidates[i]` for share `i`, or with batches host
    // `i`'s batch and the manifest envelope, `candidates[i]`.
    let candidates: Vec<Vec<proto::ChunkEntry>> = match job.erasure {
        Some(scheme) => (0..scheme.n()).map(|i| plan.entries_of(Some(i))).collect(),
        None if batched => objects
            .iter()
            .map(|r| [&plan.chunks[r.clone()], &[plan.manifest][..]].concat())
            .collect(),
        None => vec![plan.entries_of(None)],
    };
    let parts = plan.parts();
    // Deals an interrupted run paid for this very plan: open, with this sender, each
    // covering exactly one part's entries. With shares, a host keeps the share its earlier
    // deal covers, whatever its place among the hosts now (an exchange may list them in
    // another order): that share is not paid for again.
    let me = AccountId(job.key.verification_key().to_bytes());
    let mut earlier: Vec<Earlier> = Vec::new();
    let mut assigned: Vec<Option<usize>> = if batched {
        (0..hosts.len()).map(Some).collect()
    } else {
        vec![None; hosts.len()]
    };
    // A part holding only the manifest envelope (a file of a multiple of DEAL_CHUNKS_MAX
    // chunks) is the same for every share: it says nothing of the host's share, and is
    // matched to the host once its share is known.
    let manifest_only = |p: &std::ops::Range<usize>| p.start >= plan.chunks.len();
    let mut envelopes: Vec<Earlier> = Vec::new();
    if found.is_some() {
        for v in chain.deals_of(me, true).await.map_err(chain_err)? {
            let id = parse_tx(&v.id)?;
            let Some(full) = chain.deal(id).await.map_err(chain_err)? else {
                continue;
            };
            let Some(h) = hosts
                .iter()
                .position(|(_, _, o)| data_encoding::HEXLOWER.encode(&o.host) == full.host)
            else {
                continue;
            };
            let same = |entries: &[proto::ChunkEntry], part: &std::ops::Range<usize>| {
                let want = &entries[part.clone()];
                full.entries.len() == want.len()
                    && full.entries.iter().zip(want).all(|(a, b)| {
                        (a.id, a.sealed_bytes, a.crc32c) == (b.id.0, b.sealed_bytes, b.crc32c)
                    })
            };
            if batched {
                // A host's earlier deal counts if it covers a part of its batch now.
                let mine = plan.parts_of(objects[h].clone());
                if let Some(part) = mine.iter().position(|p| same(&candidates[h], p)) {
                    earlier.push(Earlier {
                        host: full.host,
                        part,
                        deal: id,
                        stage: full.stage,
                    });
                }
                continue;
            }
            if let Some(part) = parts
                .iter()
                .position(|p| manifest_only(p) && same(&candidates[0], p))
            {
                envelopes.push(Earlier {
                    host: full.host,
                    part,
                    deal: id,
                    stage: full.stage,
                });
                continue;
            }
            let found = candidates.iter().enumerate().find_map(|(c, entries)| {
                // A share already kept by another host is not this host's.
                let free = job.erasure.is_none()
                    || assigned[h] == Some(c)
                    || (assigned[h].is_none() && !assigned.contains(&Some(c)));
                let part = parts
                    .iter()
                    .position(|p| !manifest_only(p) && same(entries, p))?;
                free.then_some((c, part))
            });
            if let Some((c, part)) = found {
                assigned[h] = Some(c);
                earlier.push(Earlier {
                    host: full.host,
                    part,
                    deal: id,
                    stage: full.stage,
                });
            }
        }
    }
    // The other hosts take the shares left, in order.
    for h in 0..hosts.len() {
        if assigned[h].is_none() {
            let free = (0..candidates.len())
                .find(|c| job.erasure.is_none() || !assigned.contains(&Some(*c)))
                .expect("as many shares as hosts");
            assigned[h] = Some(free);
        }
    }
    let assigned: Vec<usize> = assigned.into_iter().flatten().collect();
    earlier.extend(envelopes);
    let share_of = |h: usize| {
        job.erasure
            .map(|_| u8::try_from(assigned[h]).expect("n <= 32"))
    };
    let bytes: u64 = assigned
        .iter()
        .flat_map(|&c| &candidates[c])
        .map(|e| u64::from(e.sealed_bytes))
        .sum();
    if batched {
        let said: Vec<String> = hosts
            .iter()
            .zip(&objects)
            .map(|((addr, _, _), r)| format!("{addr} chunks {}..{}", r.start, r.end))
            .collect();
        report(&format!(
            "copies spread over {} hosts in batches (each with the manifest): {}",
            hosts.len(),
            said.join(", ")
        ));
    }
    report(&format!(
        "sealed {} chunks and the manifest{}: {bytes} bytes under deal{}",
        plan.chunks.len(),
        match job.erasure {
            Some(s) => format!(
                " as erasure {s} shares (any {} of the {} hosts rebuild the file)",
                s.k(),
                s.n()
            ),
            None => String::new(),
        },
        if parts.len() > 1 {
            format!(
                ", paid as {} deals per copy (a deal covers at most {} chunks)",
                parts.len(),
                proto::tx::DEAL_CHUNKS_MAX
            )
        } else {
            String::new()
        }
    ));
    let mut placed = Vec::new();
    let mut share_key = None;
    for (h, (addr, client, first_offer)) in hosts.iter().enumerate() {
        let host_hex = data_encoding::HEXLOWER.encode(&first_offer.host);
        let entries = &candidates[assigned[h]];
        let mut copy: Option<Placed> = None;
        let host_parts = plan.parts_of(objects[h].clone());
        for (k, part) in host_parts.iter().enumerate() {
            let name = if host_parts.len() > 1 {
                format!("{addr} (part {} of {})", k + 1, host_parts.len())
            } else {
                addr.clone()
            };
            let part_entries = &entries[part.clone()];
            let preset =
                Preset::of_batch(plan.clone(), objects[h].clone(), part.clone(), share_of(h));
            let ctx = PartCtx {
                name: &name,
                addr,
                client,
                entries: part_entries,
                resume: earlier.iter().find(|e| e.part == k && e.host == host_hex),
                preset,
                chain_id: status.chain_id,
                proof_period_blocks: status.proof_period_blocks,
                host: first_offer.host,
            };
            let (one, key) = place_part(&mut chain, job, &ctx, &progress, &report).await?;
            if key.is_some() {
                share_key = key;
            }
            copy = Some(match copy {
                None => one,
                Some(c) => Placed {
                    deal: one.deal,
                    parts: [c.parts, one.parts].concat(),
                    storage_fee: c.storage_fee + one.storage_fee,
                    start_height: one.start_height.max(c.start_height),
                    attempts: c.attempts + one.attempts,
                    first_sent: c.first_sent.or(one.first_sent),
                    ..c
                },
            });
        }
        placed.push(copy.expect("a plan has at least one part"));
    }
    // Every copy is placed: nothing to resume any more.
    match std::fs::remove_file(&saved) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    pending.remove()?;
    let share_key = match share_key {
        Some(k) => k,
        None => plan.share_key(&job.passphrase)?,
    };
    Ok(DealDone {
        plan,
        share_key,
        placed,
    })
}

/// The chunks each host holds when copies are spread in `batches`: in each copy, a host
/// before the last holds as many consecutive chunks as its batch has units (each chunk but
/// the file's last is exactly a unit), the next going on where it stopped, and the copy's
/// last host the rest, which must fit its bytes beside the manifest envelope. Batches that
/// end a copy early, or leave the last host more than it holds, are an error (an exchange
/// that broke the rule; the sealing never exceeds the estimate an honest one matched).
pub fn batch_ranges(
    plan: &DealPlan,
    batches: &Batches,
) -> Result<Vec<std::ops::Range<usize>>, NetError> {
    let n = plan.chunks.len();
    let unit = u64::from(batches.spread.unit_bytes).max(1);
    let overhead = u64::from(batches.spread.overhead_bytes);
    let envelope = u64::from(plan.manifest.sealed_bytes);
    let mut out = vec![0..0; batches.bytes.len()];
    let mut next = 0;
    for copy in &batches.copies {
        if copy.start != next || copy.is_empty() || copy.end > batches.bytes.len() {
            return Err(NetError::Protocol(format!(
                "the batches' copies do not list the {} hosts in order",
                batches.bytes.len()
            )));
        }
        next = copy.end;
        let mut i = 0;
        let last = copy.end - 1;
        for (h, (held, range)) in batches.bytes[copy.start..last]
            .iter()
            .zip(&mut out[copy.start..last])
            .enumerate()
        {
            let k = usize::try_from(held.saturating_sub(overhead) / unit).unwrap_or(usize::MAX);
            if k == 0 || k >= n - i {
                return Err(NetError::Protocol(format!(
                    "host {} of the batches holds {held} bytes: {k} chunks from chunk {i} of {n}, which does not leave the copy's last host a chunk",
                    copy.start + h + 1,
                )));
            }
            *range = i..i + k;
            i += k;
        }
        let need: u64 = plan.chunks[i..]
            .iter()
            .map(|c| u64::from(c.sealed_bytes))
            .sum::<u64>()
            + envelope;
        if need > batches.bytes[last] {
            return Err(NetError::Protocol(format!(
                "host {} of the batches holds {} bytes, short of the {need} of chunks {i}..{n} and the manifest envelope",
                last + 1,
                batches.bytes[last]
            )));
        }
        out[last] = i..n;
    }
    if next != batches.bytes.len() {
        return Err(NetError::Protocol(format!(
            "the batches' copies name {next} of the {} hosts",
            batches.bytes.len()
        )));
    }
    Ok(out)
}

/// Places one part of `preset.plan` on the host at `job.hosts[0]` as [`store`] places each
/// part (a fresh offer for every payment, upload through the deal's link, the chain followed
/// until the host's completion matched, paid again after a mismatch up to
/// `market::sender::ATTEMPTS_MAX` deals), paying for `entries` as the chunk list. [`store`]
/// passes exactly the plan's entries of the part; a list that differs from the sealing is
/// what a lying or broken client would send, and what the chain's CRC comparison exists to
/// catch (the process tests play such a client through this).
pub async fn place_entries(
    job: &DealJob,
    preset: Preset,
    entries: &[proto::ChunkEntry],
    report: Report,
) -> Result<Placed, NetError> {
    let addr = job
        .hosts
        .first()
        .ok_or_else(|| NetError::Config("a deal needs a host".into()))?;
    let mut chain = ChainClient::connect(&job.chain).await.map_err(chain_err)?;
    let status = chain.status().await.map_err(chain_err)?;
    let client = api::host_client(addr)
        .await
        .map_err(|e| NetError::Protocol(format!("cannot reach the host at {addr}: {e}")))?;
    let bytes: u64 = entries.iter().map(|e| u64::from(e.sealed_bytes)).sum();
    let first = checked_offer(&client, status.chain_id, bytes, job.days, job.exchange).await?;
    let ctx = PartCtx {
        name: addr,
        addr,
        client: &client,
        host: first.host,
        entries,
        resume: None,
        preset,
        chain_id: status.chain_id,
        proof_period_blocks: status.proof_period_blocks,
    };
    let progress: Arc<dyn Fn(u64, u64) + Send + Sync> = Arc::new(|_, _| {});
    Ok(place_part(&mut chain, job, &ctx, &progress, &report)
        .await?
        .0)
}

/// A deal an interrupted run paid for a part of this plan.
struct Earlier {
    /// The host's key, hex.
    host: String,
    /// Which part of [`DealPlan::parts`].
    part: usize,
    deal: TxId,
    stage: DealStage,
}

/// One part of the file on one host.
struct PartCtx<'a> {
    /// For messages: the host's address, and the part if there are several.
    name: &'a str,
    addr: &'a str,
    client: &'a HostApiClient,
    host: [u8; 32],
    entries: &'a [proto::ChunkEntry],
    resume: Option<&'a Earlier>,
    preset: Preset,
    chain_id: u64,
    proof_period_blocks: u64,
}

/// Places one part on one host: pays it (unless an interrupted run did), uploads it and
/// follows the chain until the host's completion matched; on a mismatch pays again, on a
/// fresh offer, up to `market::sender::ATTEMPTS_MAX` deals. Returns the part as placed,
/// and the file's share key if this run uploaded.
async fn place_part(
    chain: &mut ChainClient,
    job: &DealJob,
    part: &PartCtx<'_>,
    progress: &Arc<dyn Fn(u64, u64) + Send + Sync>,
    report: &Report,
) -> Result<(Placed, Option<ShareKey>), NetError> {
    let name = part.name;
    let bytes: u64 = part.entries.iter().map(|e| u64::from(e.sealed_bytes)).sum();
    let mut resume = part.resume.map(|e| (e.deal, e.stage.clone()));
    let mut share_key = None;
    let mut attempt = 1u32;
    let mut first_sent: Option<std::time::Instant> = None;
    loop {
        let (deal, paid_at, fee, period_blocks) = match resume.take() {
            Some((deal, stage)) => {
                report(&format!(
                    "{name}: deal {deal} was paid by an interrupted run ({stage}): not paying again"
                ));
                let view = chain.deal(deal).await.map_err(chain_err)?.ok_or_else(|| {
                    NetError::Protocol("the paid deal vanished from the chain".into())
                })?;
                let height = chain.status().await.map_err(chain_err)?.height;
                (deal, height, view.storage_fee, view.period_blocks)
            }
            None => {
                // A fresh offer for every payment: the chain takes an offer once.
                let offer =
                    checked_offer(part.client, part.chain_id, bytes, job.days, job.exchange)
                        .await
                        .map_err(|e| NetError::Protocol(format!("{name}: {e}")))?;
                if offer.host != part.host {
                    return Err(NetError::Protocol(format!(
                        "{name}: the host's key changed since its first offer"
                    )));
                }
                let terms = market::terms::terms(
                    offer.price_per_gib_day,
                    bytes,
                    u64::from(job.days),
                    job.period_blocks,
                    part.proof_period_blocks,
                )
                .map_err(|e| NetError::Config(e.to_string()))?;
                let (deal, at) =
                    pay(chain, job, name, &offer, part.entries, &terms, report).await?;
                if std::env::var(FAULT_ENV).as_deref() == Ok("exit-after-payment") {
                    // Fault injection for the process tests: a put killed with a deal paid.
                    std::process::exit(3);
                }
                (deal, at, terms.storage_fee, terms.period_blocks)
            }
        };
        let placed_at = |start_height| Placed {
            host_addr: part.addr.to_owned(),
            host: part.host,
            deal,
            parts: vec![deal],
            storage_fee: fee,
            period_blocks,
            start_height,
            attempts: attempt,
            first_sent: None,
        };
        if let Some(start_height) = active_since(chain, &deal).await? {
            report(&format!(
                "{name}: storage already runs from height {start_height}"
            ));
            return Ok((placed_at(start_height), share_key));
        }
        let link = deal_link(chain, part.client, &deal, paid_at).await?;
        let put = PutJob {
            file: job.file.clone(),
            link,
            via: job.via.clone(),
            max_proxy_price: job.max_proxy_price,
            key: job.key.clone(),
            passphrase: job.passphrase.clone(),
            chunk_bytes: job.chunk_bytes,
            workers: job.workers,
            kdf: part.preset.plan.kdf,
            journal_dir: job.journal_dir.clone(),
            preset: Some(part.preset.clone()),
        };
        let done = put_file(&put, Arc::clone(progress)).await?;
        first_sent = first_sent.or(done.first_sent);
        report(&format!(
            "{name}: uploaded ({} chunks sent, {} already there); waiting for the host's completion",
            done.sent_chunks, done.skipped_chunks
        ));
        share_key = Some(done.share_key);
        match wait_completion(chain, &deal, attempt).await? {
            Next::Placed { start_height } => {
                report(&format!(
                    "{name}: the host's CRCs match: storage runs from height {start_height}"
                ));
                return Ok((
                    Placed {
                        first_sent,
                        ..placed_at(start_height)
                    },
                    share_key,
                ));
            }
            Next::PayAgain { chunks } => {
                report(&format!(
                    "{name}: the host's CRCs differ at chunks {chunks:?}: refunded; paying again"
                ));
                attempt += 1;
            }
            Next::GiveUp(why) => return Err(NetError::Protocol(format!("{name}: {why}"))),
            Next::Wait => unreachable!("wait_completion returns a decision"),
        }
    }
}

/// Pays `offer`'s host for `entries` on `terms`; returns the deal and the height it was
/// committed at.
async fn pay(
    chain: &mut ChainClient,
    job: &DealJob,
    addr: &str,
    offer: &Offer,
    entries: &[proto::ChunkEntry],
    terms: &market::terms::Terms,
    report: &Report,
) -> Result<(TxId, u64), NetError> {
    let insurance = match &job.insurance {
        None => None,
        Some(c) => Some(insure(chain, job, c, offer, terms, report).await?),
    };
    let body = TxBody::UploadPayment {
        host: AccountId(offer.host),
        offer: offer.id,
        offer_expiry_unix_secs: offer.expiry_unix_secs,
        storage_fee: terms.storage_fee,
        download_fee: job.download_fee,
        period_blocks: terms.period_blocks,
        broker: offer.broker,
        chunks: entries.to_vec(),
        insurance,
    };
    let committed = chain
        .submit(&job.key, body, PAYMENT_FEE, COMMIT_WAIT)
        .await
        .map_err(|e| NetError::Protocol(format!("paying {addr}: {e}")))?;
    let deal = parse_tx(&committed.tx)?;
    report(&format!(
        "{addr}: paid {} MASPC into escrow for {} blocks: deal {} at height {}",
        terms.storage_fee, terms.period_blocks, committed.tx, committed.height
    ));
    Ok((deal, committed.height))
}

/// The insurer's signed quote for paying `offer` on `terms`, checked: for these terms
/// and this chain, the cover asked for, at most the premium the sender accepts.
async fn insure(
    chain: &mut ChainClient,
    job: &DealJob,
    c: &Cover,
    offer: &Offer,
    terms: &market::terms::Terms,
    report: &Report,
) -> Result<proto::tx::Insurance, NetError> {
    let fail = |why: String| NetError::Protocol(format!("insurer {}: {why}", c.insurer));
    let chain_id = chain.status().await.map_err(chain_err)?.chain_id;
    let sender = job.key.verification_key().to_bytes();
    let client = api::insurer_client(&c.insurer)
        .await
        .map_err(|e| fail(format!("cannot reach it: {e}")))?;
    let quote = client
        .quote(
            tarpc::context::current(),
            api::QuoteRequest {
                sender,
                host: offer.host,
                offer: offer.id,
                offer_expiry_unix_secs: offer.expiry_unix_secs,
                storage_fee: terms.storage_fee,
                period_blocks: terms.period_blocks,
                cover: c.cover,
            },
        )
        .await
        .map_err(rpc_err)?
        .map_err(|e| fail(format!("no quote: {e}")))?;
    let i = quote
        .insurance()
        .ok_or_else(|| fail("a signature that is not 64 bytes".into()))?;
    let insured = proto::tx::InsuredDeal {
        chain_id,
        sender: AccountId(sender),
        host: AccountId(offer.host),
        offer: offer.id,
        offer_expiry_unix_secs: offer.expiry_unix_secs,
        storage_fee: terms.storage_fee,
        period_blocks: terms.period_blocks,
    };
    if i.cover != c.cover || !i.verify(&insured) {
        return Err(fail(
            "its quote is not signed for these terms (another chain, or altered)".into(),
        ));
    }
    if i.premium > c.max_premium {
        return Err(fail(format!(
            "asks a premium of {} MASPC, over the {} accepted (--max-premium)",
            i.premium, c.max_premium
        )));
    }
    report(&format!(
        "insurer {}: covers {} MASP for a premium of {} MASPC, paid with the fee",
        c.insurer, i.cover, i.premium
    ));
    Ok(i)
}

/// The deal's start height if storage already runs.
async fn active_since(chain: &mut ChainClient, deal: &TxId) -> Result<Option<u64>, NetError> {
    Ok(
        match chain.deal(*deal).await.map_err(chain_err)?.map(|v| v.stage) {
            Some(DealStage::Active { start_height, .. }) => Some(start_height),
            _ => None,
        },
    )
}

pub(crate) fn parse_tx(hex: &str) -> Result<TxId, NetError> {
    data_encoding::HEXLOWER
        .decode(hex.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .map(TxId)
        .ok_or_else(|| NetError::Protocol(format!("malformed transaction id {hex}")))
}

/// The deal's upload link from its host, asked again at each block while the host's
/// miner has not seen the payment yet.
async fn deal_link(
    chain: &mut ChainClient,
    host: &HostApiClient,
    deal: &TxId,
    paid_at: u64,
) -> Result<Link, NetError> {
    let mut last = String::new();
    for i in 0..u64::from(LINK_TRIES) {
        match host
            .deal_link(tarpc::context::current(), deal.0, false)
            .await
            .map_err(rpc_err)?
        {
            Ok(text) => return Link::parse(&text).map_err(NetError::from),
            Err(api::ControlError::Invalid(e)) if e.starts_with("no deal") => last = e,
            Err(e) => {
                return Err(NetError::Protocol(format!(
                    "the host refuses the link: {e}"
                )))
            }
        }
        chain
            .block(paid_at + 1 + i, Duration::from_secs(5))
            .await
            .map_err(chain_err)?;
    }
    Err(NetError::Protocol(format!(
        "the host did not see the payment within {LINK_TRIES} blocks: {last}"
    )))
}

/// Follows the chain until the deal leaves its completion stage; returns the decision.
async fn wait_completion(
    chain: &mut ChainClient,
    deal: &TxId,
    attempt: u32,
) -> Result<Next, NetError> {
    loop {
        let view =
            chain.deal(*deal).await.map_err(chain_err)?.ok_or_else(|| {
                NetError::Protocol("the paid deal vanished from the chain".into())
            })?;
        let seen = match view.stage {
            DealStage::AwaitingCompletion { .. } => Seen::Awaiting,
            DealStage::Active { start_height, .. } => Seen::Active { start_height },
            DealStage::Mismatched { chunks } => Seen::Mismatched { chunks },
            DealStage::Expired => Seen::Expired,
            DealStage::Ended { .. } => Seen::Ended,
        };
        match after_upload(&seen, attempt) {
            Next::Wait => {
                let height = chain.status().await.map_err(chain_err)?.height;
                chain
                    .block(height + 1, Duration::from_secs(5))
                    .await
                    .map_err(chain_err)?;
            }
            decided => return Ok(decided),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use proto::{ChunkEntry, ChunkId, FileId};

    /// A plan of `chunks` chunks of 10 sealed bytes (the last `last`) and an envelope of 3.
    fn plan(chunks: usize, last: u32) -> DealPlan {
        let entry = |i: usize, len: u32| ChunkEntry {
            id: ChunkId(blake3::hash(&i.to_le_bytes()).into()),
            sealed_bytes: len,
            crc32c: 0,
        };
        DealPlan {
            salt: [0; 16],
            file_id: FileId([0; 16]),
            kdf: KdfParams::DEFAULT,
            chunk_bytes: 10,
            file_bytes: 0,
            chunks: (0..chunks)
                .map(|i| entry(i, if i + 1 == chunks { last } else { 10 }))
                .collect(),
            manifest: entry(usize::MAX, 3),
            erasure: None,
        }
    }

    /// Units of 10 bytes and an overhead of 5 (above the envelope's 3, as the bound is).
    const SPREAD: Spread = Spread {
        unit_bytes: 10,
        overhead_bytes: 5,
    };

    fn batches(bytes: &[u64], copies: &[std::ops::Range<usize>]) -> Batches {
        Batches {
            spread: SPREAD,
            bytes: bytes.to_vec(),
            copies: copies.to_vec(),
        }
    }

    fn matched(bytes: &[u64]) -> Vec<api::ExchangeMatch> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| api::ExchangeMatch {
                host: [u8::try_from(i).unwrap(); 32],
                addr: format!("h{i}:1"),
                price_per_gib_day: 1,
                rating: 0,
                region: String::new(),
                deposit: 0,
                bytes: b,
            })
            .collect()
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a copy of hosts 0..2
    fn a_kept_match_reads_back_and_anything_else_is_ignored() {
        let good = SavedMatch {
            exchange: "ab".repeat(32),
            hosts: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            host_keys: vec!["01".repeat(32), "02".repeat(32)],
            batches: Some(batches(&[25, 19], &[0..2])),
        };
        let json = SavedMatch::to_json;
        assert_eq!(SavedMatch::from_json(&json(&good)), Some(good.clone()));
        let mut short_keys = good.clone();
        short_keys.host_keys.pop();
        let mut bad_key = good.clone();
        bad_key.host_keys[1] = "zz".repeat(32);
        let mut bad_exchange = good.clone();
        bad_exchange.exchange = "ab".repeat(31);
        let mut short_batches = good.clone();
        short_batches.batches = Some(batches(&[25], &[0..1]));
        let huge = [b" ".repeat(crate::record::RECORD_BYTES_MAX), json(&good)].concat();
        for bad in [
            json(&short_keys),
            json(&bad_key),
            json(&bad_exchange),
            json(&short_batches),
            huge,
            b"{".to_vec(),
            b"\xff\xfe".to_vec(),
            b"{\"exchange\": 1}".to_vec(),
        ] {
            assert_eq!(
                SavedMatch::from_json(&bad),
                None,
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // a copy of hosts 0..2
    fn batches_cover_each_copy_in_order_and_a_short_one_is_refused() {
        // Chunks of 10, 10, 10, 4 bytes: a copy of 34 chunk bytes.
        let p = plan(4, 4);
        let b = batches(&[25, 19, 39], &[0..2, 2..3]);
        let got = batch_ranges(&p, &b).unwrap();
        assert_eq!(
            got,
            vec![0..2, 2..4, 0..4],
            "two hosts make a copy, the third one"
        );
        // A short last chunk that would fit beside the real envelope in the bound's spare
        // bytes stays with the copy's last host, as the exchange matched it.
        let p1 = plan(4, 1);
        let got = batch_ranges(&p1, &batches(&[35, 6], &[0..2])).unwrap();
        assert_eq!(got, vec![0..3, 3..4]);
        for (b, says) in [
            // A host before the last that would take every chunk.
            (
                batches(&[45, 9], &[0..2]),
                "does not leave the copy's last host",
            ),
            // A host before the last with room for no unit.
            (batches(&[14, 40], &[0..2]), "0 chunks from chunk 0"),
            // The last host short of the rest.
            (
                batches(&[25, 16], &[0..2]),
                "short of the 17 of chunks 2..4",
            ),
            // Copies that skip or leave out hosts.
            (
                batches(&[39, 39], &[1..2]),
                "do not list the 2 hosts in order",
            ),
            (batches(&[39, 39], &[0..1]), "name 1 of the 2 hosts"),
        ] {
            let e = batch_ranges(&p, &b).unwrap_err().to_string();
            assert!(e.contains(says), "{b:?}: {e}");
        }
    }

    #[test]
    fn an_exchange_answer_is_grouped_into_copies_and_one_that_does_not_add_up_refused() {
        let sp = Some(Spread {
            unit_bytes: 10,
            overhead_bytes: 3,
        });
        // A copy of 34 chunk bytes (37 on one host).
        let got = copies_of(&matched(&[23, 17, 37, 13]), 37, sp).unwrap();
        assert_eq!(
            got,
            vec![0..2, 2..3],
            "the unfinished third copy is not counted"
        );
        assert_eq!(
            copies_of(&matched(&[37, 37]), 37, None).unwrap(),
            vec![0..1, 1..2]
        );
        // Nothing held, less than the overhead, more than is left, part of a unit.
        for bad in [&[3u64][..], &[2], &[23, 38], &[18, 19]] {
            let e = copies_of(&matched(bad), 37, sp).unwrap_err().to_string();
            assert!(
                e.contains("not a batch of whole 10-byte units"),
                "{bad:?}: {e}"
            );
        }
    }
}
