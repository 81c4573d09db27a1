//! The deal commands: `mspace put --host` (a file stored as paid deals, `net::deal`),
//! `mspace deals` (a sender's or host's deals), and how a deal is shown.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use api::chain::ChainClient;
use api::DealView;
use clap::Args;
use net::deal::{match_on_exchange, match_through_index, store, DealJob, MarketAsk};
use proto::tx::AccountId;
use serde::Serialize;

use crate::netcli::{bar_progress, client_key, runtime, state_dir, workers, PutArgs};
use crate::{format_bytes, progress_bar, read_passphrase};

#[derive(Serialize)]
struct PlacedJson {
    host: String,
    host_addr: String,
    /// The deal holding the manifest: `mspace get --deal` takes this one.
    deal: String,
    /// Every deal of this copy in file order (several for a file over one deal's limit).
    parts: Vec<String>,
    storage_fee: u64,
    period_blocks: u64,
    start_height: u64,
    attempts: u32,
}

/// The most a sender pays through an exchange unless it says (`--max-price`): MASPC per
/// GiB per day.
pub const EXCHANGE_MAX_PRICE_DEFAULT: u64 = 1000;

/// A host an exchange matched, as `put --exchange --dry-run --json` prints it.
#[derive(Serialize)]
struct MatchJson {
    #[serde(flatten)]
    ask: crate::exchangecli::AskJson,
    /// Which copy the host holds (from 1); with --spread several hosts may share one.
    copy: usize,
    /// What it holds: the whole estimate, or its batch and the manifest.
    bytes: u64,
    /// MASPC for the whole storage at this price (an estimate before sealing).
    estimated_fee: u64,
}

#[derive(Serialize)]
struct DealPutJson {
    file_id: String,
    manifest_id: String,
    share_key: String,
    chunks: usize,
    file_bytes: u64,
    /// The erasure scheme K/N (absent: each deal holds a full copy).
    #[serde(skip_serializing_if = "Option::is_none")]
    erasure: Option<String>,
    /// With copies spread in batches (`--spread`): how many copies the deals make (each
    /// deal then holds a batch of consecutive chunks and the manifest).
    #[serde(skip_serializing_if = "Option::is_none")]
    spread_copies: Option<usize>,
    deals: Vec<PlacedJson>,
    /// The file's record (deals, hosts, emergency links) under the state directory.
    record: String,
    /// Hosts that gave an emergency link.
    emergency_links: usize,
    timings: crate::PutTimings,
}

/// `mspace put FILE --host ADDR --chain MINER --days D`.
pub fn put(args: PutArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut matched_at = None;
    // With copies spread in batches: how many copies the hosts make.
    let mut spread_copies = None;
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", args.file.display());
    }
    let key = client_key(args.key.as_deref())?;
    let mut job = DealJob {
        file: args.file.clone(),
        hosts: args.host.clone(),
        chain: args.chain.clone(),
        days: args.days.context("--days is required with --host")?,
        period_blocks: args.period_blocks,
        key,
        passphrase: zeroize::Zeroizing::new(Vec::new()),
        kdf: proto::KdfParams::DEFAULT,
        chunk_bytes: args.chunk_size,
        workers: workers(args.workers)?,
        journal_dir: state_dir()?,
        via: args.via.clone(),
        max_proxy_price: args.max_proxy_price,
        host_keys: Vec::new(),
        max_price_per_gib_day: args.max_price,
        exchange: None,
        download_fee: args.download_fee,
        insurance: args.insurer.clone().map(|insurer| net::deal::Cover {
            insurer,
            cover: args.cover.unwrap_or_default(),
            max_premium: args.max_premium,
        }),
        erasure: args.erasure,
        batches: None,
    };
    crate::netcli::init_logs();
    let market = !args.exchange.is_empty() || !args.index.is_empty();
    // A put killed after its exchange matched goes on with that match (its deals are found
    // on the chain), not with a new one.
    let saved = (market && !args.dry_run)
        .then(|| net::deal::saved_match(&job))
        .flatten();
    if let Some(saved) = &saved {
        net::deal::resume_match(&mut job, saved);
        job.max_price_per_gib_day = Some(args.max_price.unwrap_or(EXCHANGE_MAX_PRICE_DEFAULT));
        spread_copies = saved.batches.as_ref().map(|b| b.copies.len());
        if !args.json {
            println!(
                "resuming an interrupted put: the {} host(s) exchange {} matched for it before (not asked again)",
                job.hosts.len(),
                saved.exchange
            );
        }
        matched_at = Some(Instant::now());
    } else if market {
        let quiet = args.json;
        let say: net::deal::Report = Arc::new(move |line: &str| {
            if !quiet {
                println!("{line}");
            }
        });
        let ask = MarketAsk {
            exchanges: args.exchange.clone(),
            copies: args.erasure.map_or(args.copies, |s| s.n()),
            max_price_per_gib_day: args.max_price.unwrap_or(EXCHANGE_MAX_PRICE_DEFAULT),
            region: args.region.clone(),
            min_rating: args.min_rating,
            spread: args.spread,
        };
        job.max_price_per_gib_day = Some(ask.max_price_per_gib_day);
        let matched = if args.index.is_empty() {
            runtime()?.block_on(match_on_exchange(&job, &ask, &say))
        } else {
            runtime()?.block_on(match_through_index(&job, &ask, &args.index, &say))
        }
        .context("finding hosts through an exchange")?;
        let bytes = net::deal::stored_estimate(meta.len(), job.chunk_bytes, job.erasure);
        let copies = &matched.copies;
        let rows: Vec<MatchJson> = matched
            .hosts
            .iter()
            .enumerate()
            .map(|(i, m)| MatchJson {
                ask: m.into(),
                copy: copies
                    .iter()
                    .position(|c| c.contains(&i))
                    .map_or(0, |c| c + 1),
                bytes: m.bytes,
                // The fee's rule (market::terms) before its one-MASPC-per-period floor.
                estimated_fee: m
                    .price_per_gib_day
                    .saturating_mul(m.bytes.div_ceil(1 << 30))
                    .saturating_mul(u64::from(job.days)),
            })
            .collect();
        if args.dry_run {
            if args.json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!(
                    "{} host(s) matched for {} of {} for {} days (nothing paid):",
                    rows.len(),
                    match job.erasure {
                        Some(s) => format!("erasure {s} shares, one per host,"),
                        None if matched.spread.is_some() => {
                            format!("{} copies, each whole or spread in batches,", args.copies)
                        }
                        None => format!("{} copies", args.copies),
                    },
                    format_bytes(bytes),
                    job.days
                );
                println!(
                    "  {:<64}  {:<21}  {:>4}  {:>10}  {:>9}  {:>6}  {:<10}  {:>9}  {:>9}",
                    "host",
                    "address",
                    "copy",
                    "holds",
                    "price",
                    "rating",
                    "region",
                    "deposit",
                    "fee"
                );
                for r in &rows {
                    println!(
                        "  {:<64}  {:<21}  {:>4}  {:>10}  {:>9}  {:>6}  {:<10}  {:>9}  {:>9}",
                        r.ask.host,
                        r.ask.addr,
                        r.copy,
                        format_bytes(r.bytes),
                        r.ask.price_per_gib_day,
                        r.ask.rating,
                        if r.ask.region.is_empty() {
                            "-"
                        } else {
                            &r.ask.region
                        },
                        r.ask.deposit,
                        r.estimated_fee
                    );
                }
                println!("  (price: MASPC per GiB per day; deposit: MASP; fee: MASPC for the whole storage)");
                println!(
                    "  matched by exchange {} at {}: each host pays it {} per mille of what it earns",
                    miner::hex(&matched.key),
                    matched.addr,
                    matched.commission_permille
                );
            }
            return Ok(());
        }
        if !args.json {
            for r in &rows {
                println!(
                    "matched host {} at {}: {} MASPC per GiB per day, rating {}{}",
                    r.ask.host,
                    r.ask.addr,
                    r.ask.price_per_gib_day,
                    r.ask.rating,
                    if matched.spread.is_some() {
                        format!(", copy {}, holding {}", r.copy, format_bytes(r.bytes))
                    } else {
                        String::new()
                    }
                );
            }
        }
        job.hosts = matched.hosts.iter().map(|m| m.addr.clone()).collect();
        job.host_keys = matched.hosts.iter().map(|m| m.host).collect();
        if let Some(spread) = matched
            .spread
            .filter(|_| copies.iter().any(|c| c.len() > 1))
        {
            job.batches = Some(net::deal::Batches {
                spread,
                bytes: matched.hosts.iter().map(|m| m.bytes).collect(),
                copies: copies.to_vec(),
            });
            spread_copies = Some(copies.len());
        }
        job.exchange = Some(matched.key);
        matched_at = Some(Instant::now());
    }
    job.passphrase = read_passphrase(args.passphrase_file.as_deref(), true)?;
    let bar = progress_bar(meta.len(), !args.json, "sealing and uploading");
    let quiet = args.json;
    let b = bar.clone();
    let report: net::deal::Report = Arc::new(move |line: &str| {
        if !quiet {
            b.println(line);
        }
    });
    let started = Instant::now();
    let done = runtime()?
        .block_on(store(&job, bar_progress(&bar), report))
        .with_context(|| format!("storing {} as a deal", args.file.display()))?;
    bar.finish_and_clear();
    let timings = crate::PutTimings::new(
        t0,
        matched_at,
        done.placed.iter().filter_map(|p| p.first_sent).min(),
    );
    let hex = miner::hex;
    // The record of the file, with each host's emergency link: `mspace get --file` reads it.
    let links = runtime()?.block_on(net::deal::emergency_links(&done.placed));
    let record = net::record::FileRecord {
        version: net::record::RECORD_VERSION,
        manifest_id: done.plan.manifest.id.to_hex(),
        name: args
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        file_bytes: done.plan.file_bytes,
        copies: done
            .placed
            .iter()
            .zip(&links)
            .map(|(p, l)| net::record::CopyRecord {
                host: hex(&p.host),
                host_addr: p.host_addr.clone(),
                deal: hex(&p.deal.0),
                link: l.as_ref().ok().cloned(),
                link_error: l.as_ref().err().cloned(),
            })
            .collect(),
        share_key: Some(done.share_key.to_string()),
        erasure: job.erasure.map(|s| s.to_string()),
        spread_copies: spread_copies.and_then(|n| u32::try_from(n).ok()),
    };
    let state = state_dir()?;
    let record_path = record
        .save(&state)
        .with_context(|| format!("writing the file's record under {}", state.display()))?;
    let json = DealPutJson {
        record: record_path.display().to_string(),
        emergency_links: links.iter().filter(|l| l.is_ok()).count(),
        timings,
        file_id: done.plan.file_id.to_hex(),
        manifest_id: done.plan.manifest.id.to_hex(),
        share_key: done.share_key.to_string(),
        chunks: done.plan.chunks.len(),
        file_bytes: done.plan.file_bytes,
        erasure: job.erasure.map(|s| s.to_string()),
        spread_copies,
        deals: done
            .placed
            .iter()
            .map(|p| PlacedJson {
                host: hex(&p.host),
                host_addr: p.host_addr.clone(),
                deal: hex(&p.deal.0),
                parts: p.parts.iter().map(|d| hex(&d.0)).collect(),
                storage_fee: p.storage_fee,
                period_blocks: p.period_blocks,
                start_height: p.start_height,
                attempts: p.attempts,
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!(
            "stored {} ({}, {} chunks) as {} in {:.2} s:",
            args.file.display(),
            format_bytes(json.file_bytes),
            json.chunks,
            match job.erasure {
                Some(s) => format!(
                    "erasure {s} shares on {} hosts (any {} rebuild it)",
                    json.deals.len(),
                    s.k()
                ),
                None if spread_copies.is_some() => format!(
                    "{} cop{} spread over {} hosts in batches (each host a deal of its chunks and the manifest)",
                    spread_copies.unwrap_or_default(),
                    if spread_copies == Some(1) { "y" } else { "ies" },
                    json.deals.len()
                ),
                None if json.deals.len() == 1 => "1 copy".to_owned(),
                None => format!("{} copies", json.deals.len()),
            },
            started.elapsed().as_secs_f64()
        );
        for d in &json.deals {
            println!(
                "  deal {} with host {} ({}): {} MASPC in escrow for {} blocks from height {}",
                d.deal, d.host, d.host_addr, d.storage_fee, d.period_blocks, d.start_height
            );
            if d.parts.len() > 1 {
                println!(
                    "    the file is paid as {} deals on this host (a deal covers at most {} chunks): {}",
                    d.parts.len(),
                    proto::tx::DEAL_CHUNKS_MAX,
                    d.parts.join(", ")
                );
            }
        }
        println!("  manifest id  {}", json.manifest_id);
        println!("  share key    {}", json.share_key);
        println!(
            "  record       {} (emergency links from {} of {} hosts)",
            json.record,
            json.emergency_links,
            json.deals.len()
        );
        for e in links.iter().filter_map(|l| l.as_ref().err()) {
            println!("  no emergency link from {e}");
        }
        println!("Follow them with `mspace deals --chain {}`; get the file back with `mspace get --file {}` (every copy at once, through the emergency links alone).", job.chain[0], json.manifest_id);
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DealsArgs {
    /// The account's key file [default: the client key in the state directory].
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// Or the account's public key, hex (a host's, a sender's).
    #[arg(long, conflicts_with = "key")]
    account: Option<String>,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, default_value = "127.0.0.1:27001")]
    chain: Vec<String>,
    /// Only the deals awaiting completion or active.
    #[arg(long)]
    open: bool,
    #[arg(long)]
    json: bool,
}

/// A deal for people and scripts: ids in hex, the stage in words and as data.
#[derive(Debug, Serialize)]
pub struct DealJson {
    pub id: String,
    pub sender: String,
    pub host: String,
    /// One word: awaiting-completion, active, mismatched, expired, ended.
    pub state: &'static str,
    /// The stage in words.
    pub stage: String,
    pub detail: api::DealStage,
    pub storage_fee: u64,
    pub escrow: u64,
    pub paid: u64,
    pub refunded: u64,
    /// The exchange that matched the deal (hex), the host's commission to it in
    /// thousandths of each part it earns, and what it was paid so far.
    pub exchange: Option<String>,
    pub commission_permille: u16,
    pub commission_paid: u64,
    /// MASPC still to be paid out or refunded (the escrow).
    pub owed: u64,
    pub periods: u32,
    pub proven: u32,
    pub missed: u32,
    pub period_blocks: u64,
    pub opened_height: u64,
    pub chunks: usize,
    pub bytes: u64,
    /// The first proof period the deal is covered in.
    pub first_period: u64,
    /// What each receiver pays the sender per download; downloads paid and claimed by
    /// the host, and the fees they brought the sender.
    pub download_fee: u64,
    pub downloads: u64,
    pub download_income: u64,
    /// The insurer's cover bought with the payment: premium, cover, its state and what
    /// it paid out.
    pub insurance: Option<api::InsuranceView>,
}

impl From<&DealView> for DealJson {
    fn from(v: &DealView) -> Self {
        DealJson {
            id: v.id.clone(),
            sender: v.sender.clone(),
            host: v.host.clone(),
            state: v.stage.name(),
            stage: v.stage.to_string(),
            detail: v.stage.clone(),
            storage_fee: v.storage_fee,
            escrow: v.escrow,
            paid: v.paid,
            refunded: v.refunded,
            exchange: v.exchange.clone(),
            commission_permille: v.commission_permille,
            commission_paid: v.commission_paid,
            owed: v.escrow,
            periods: v.parts,
            proven: v.proven,
            missed: v.missed,
            period_blocks: v.period_blocks,
            opened_height: v.opened_height,
            chunks: v.chunks,
            bytes: v.bytes,
            first_period: v.first_period,
            download_fee: v.download_fee,
            downloads: v.downloads,
            download_income: v.download_income,
            insurance: v.insurance.clone(),
        }
    }
}

/// Prints a deal in a few lines.
pub fn print_deal(v: &DealView) {
    let d = DealJson::from(v);
    println!("deal {}", d.id);
    println!("  sender {}  host {}", d.sender, d.host);
    println!("  {} (opened at height {})", d.stage, d.opened_height);
    println!(
        "  fee {} MASPC: {} paid to the host, {} refunded, {} in escrow",
        d.storage_fee, d.paid, d.refunded, d.escrow
    );
    if let Some(x) = &d.exchange {
        println!(
            "  matched by exchange {x}: {} per mille of the host's earnings, {} MASPC paid to it",
            d.commission_permille, d.commission_paid
        );
    }
    println!(
        "  {} proof periods from period {}: {} proven, {} missed",
        d.periods, d.first_period, d.proven, d.missed
    );
    println!("  {} chunks, {}", d.chunks, format_bytes(d.bytes));
    println!(
        "  downloads at {} MASPC each to the sender: {} paid, {} MASPC earned",
        d.download_fee, d.downloads, d.download_income
    );
    if let Some(i) = &d.insurance {
        println!(
            "  insured by {} for {} MASP (premium {} MASPC): {}, {} MASP paid out",
            i.insurer, i.cover, i.premium, i.state, i.paid
        );
    }
}

/// `mspace deals`.
/// The account `a` names (its key file, its public key, or the client's) and its deals.
fn deals_of(a: &DealsArgs) -> Result<(AccountId, Vec<DealView>)> {
    let who = match &a.account {
        Some(k) => miner::parse_key_hex(k)?,
        None => AccountId(client_key(a.key.as_deref())?.verification_key().to_bytes()),
    };
    let views = runtime()?.block_on(async {
        let mut c = ChainClient::connect(&a.chain).await?;
        c.deals_of(who, a.open).await
    })?;
    Ok((who, views))
}

pub fn deals(a: DealsArgs) -> Result<()> {
    let (who, views) = deals_of(&a)?;
    if a.json {
        let all: Vec<DealJson> = views.iter().map(DealJson::from).collect();
        println!("{}", serde_json::to_string(&all)?);
        return Ok(());
    }
    if views.is_empty() {
        println!("no deals for {}", miner::hex(&who.0));
    }
    for v in &views {
        let role = if v.host == miner::hex(&who.0) {
            "as host"
        } else {
            "as sender"
        };
        println!("({role})");
        print_deal(v);
    }
    Ok(())
}

/// What an account earned from its deals, as the chain states it (`mspace earnings`).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct EarningsJson {
    pub account: String,
    /// As a sender: download fees its receivers paid (claimed by the hosts), and how many.
    pub download_income: u64,
    pub downloads: u64,
    /// As a sender: storage fees refunded to it for periods its hosts missed.
    pub refunded: u64,
    /// As a host: storage fees paid to it for proven periods (after commissions), still
    /// in escrow for it, and downloads it served (claimed).
    pub storage_paid: u64,
    pub storage_escrow: u64,
    pub downloads_served: u64,
    /// Deals counted (the newest 1,000 at most).
    pub deals_as_sender: usize,
    pub deals_as_host: usize,
}

/// Sums an account's deals.
pub fn earnings_of(account: &str, views: &[DealView]) -> EarningsJson {
    let mut e = EarningsJson {
        account: account.to_owned(),
        ..EarningsJson::default()
    };
    for v in views {
        if v.sender == account {
            e.deals_as_sender += 1;
            e.download_income += v.download_income;
            e.downloads += v.downloads;
            e.refunded += v.refunded;
        }
        if v.host == account {
            e.deals_as_host += 1;
            e.storage_paid += v.paid;
            e.storage_escrow += v.escrow;
            e.downloads_served += v.downloads;
        }
    }
    e
}

/// `mspace earnings`.
pub fn earnings(a: DealsArgs) -> Result<()> {
    let (who, views) = deals_of(&a)?;
    let e = earnings_of(&miner::hex(&who.0), &views);
    if a.json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(());
    }
    println!("earnings of {}", e.account);
    println!(
        "  as a sender ({} deals): {} MASPC from {} paid downloads, {} MASPC of storage refunded",
        e.deals_as_sender, e.download_income, e.downloads, e.refunded
    );
    println!(
        "  as a host ({} deals): {} MASPC of storage paid, {} MASPC still in escrow, {} downloads served",
        e.deals_as_host, e.storage_paid, e.storage_escrow, e.downloads_served
    );
    Ok(())
}
