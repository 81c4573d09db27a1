//! `mspace share`: wiring for `proto::fileshare` (what a receiver needs to buy a download
//! of a file stored as deals) and the sender's `SetDownloadFee`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use api::chain::ChainClient;
use clap::Args;
use net::record::{FileRecord, RecordError};
use proto::fileshare::{FileShare, ShareCopy};
use proto::tx::{TxBody, TxId};
use serde::Serialize;

use crate::netcli::{client_key, runtime, state_dir};

#[derive(Args, Debug)]
pub struct ShareArgs {
    /// The file's manifest id (as `mspace put` printed it) or the id of one of its deals,
    /// hex: the file's record in the state directory names its copies and share key.
    what: String,
    /// First set the fee each receiver pays you per download, MASPC (a `SetDownloadFee`
    /// transaction per copy's deal; payments already made keep their fee). 0: free but
    /// for the host's egress price.
    #[arg(long)]
    set_fee: Option<u64>,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, default_value = "127.0.0.1:27001")]
    chain: Vec<String>,
    /// The sender's key file [default: the client key in the state directory].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Seal the share to this receiver's public key (hex): only its key opens it
    /// (`msb1-...`), so whoever else sees the text learns nothing of the file.
    #[arg(long)]
    to: Option<String>,
    /// How long to wait for each fee change's block.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct ShareJson {
    share: String,
    manifest_id: String,
    name: String,
    copies: Vec<CopyJson>,
}

#[derive(Serialize)]
struct CopyJson {
    deal: String,
    host_addr: String,
    /// The deal's download fee as the chain states it; `None` if no miner answered.
    download_fee: Option<u64>,
}

/// The record of the file `what` names: by manifest id, or the one listing deal `what`.
fn find_record(state: &Path, what: &str) -> Result<FileRecord> {
    match FileRecord::load(state, what) {
        Ok(r) => return Ok(r),
        Err(RecordError::Missing(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = state.join("files");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "no file stored from here has manifest or deal {what} (no records in {})",
                dir.display()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        let Some(manifest) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|_| path.extension().is_some_and(|e| e == "json"))
        else {
            continue;
        };
        // A record that cannot be read is not the one asked for; it is named if none is.
        if let Ok(r) = FileRecord::load(state, manifest) {
            if r.copies.iter().any(|c| c.deal == what) {
                return Ok(r);
            }
        }
    }
    bail!(
        "no file stored from here has manifest or deal {what} (records in {})",
        dir.display()
    )
}

pub fn share(a: ShareArgs) -> Result<()> {
    let what = a.what.trim().to_ascii_lowercase();
    let state = state_dir()?;
    let record = find_record(&state, &what)?;
    let Some(key_text) = &record.share_key else {
        bail!(
            "the record of {} was written before records kept the share key: share the key \
             `mspace put` printed, with each deal and its host's control address",
            record.manifest_id
        );
    };
    if let Some(scheme) = &record.erasure {
        bail!(
            "{} is stored as erasure shares ({scheme}): a receiver would have to buy a download \
             from K hosts, which `mspace share` does not do yet; share a file stored as full \
             copies",
            record.manifest_id
        );
    }
    if let Some(n) = record.spread_copies {
        bail!(
            "{} is stored as {n} cop{} spread over {} hosts in batches: a receiver would have to buy \
             a download from every host of a copy, which `mspace share` does not do yet; share a \
             file stored as full copies",
            record.manifest_id,
            if n == 1 { "y" } else { "ies" },
            record.copies.len()
        );
    }
    let key: proto::ShareKey = key_text.parse().context("the record's share key")?;
    let mut copies = Vec::new();
    for c in &record.copies {
        let deal: [u8; 32] = data_encoding::HEXLOWER
            .decode(c.deal.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("the record's deal id")?;
        copies.push(ShareCopy {
            deal: TxId(deal),
            host_addr: c.host_addr.clone(),
        });
    }
    let share = FileShare::new(key, copies.clone()).map_err(anyhow::Error::msg)?;
    let fees: Vec<Option<u64>> = runtime()?.block_on(async {
        let mut chain = match ChainClient::connect(&a.chain).await {
            Ok(c) => c,
            Err(e) if a.set_fee.is_none() => {
                eprintln!("no miner answers ({e}): the fees are not shown");
                return Ok(vec![None; copies.len()]);
            }
            Err(e) => return Err(anyhow::Error::from(e)),
        };
        if let Some(fee) = a.set_fee {
            let key = client_key(a.key.as_deref())?;
            for c in &copies {
                let body = TxBody::SetDownloadFee {
                    deal: c.deal,
                    download_fee: fee,
                };
                let done = chain
                    .submit(&key, body, 1, a.wait)
                    .await
                    .with_context(|| format!("setting the download fee of deal {}", c.deal))?;
                if !a.json {
                    println!(
                        "deal {}: receivers pay you {fee} MASPC per download from height {}",
                        c.deal, done.height
                    );
                }
            }
        }
        let mut fees = Vec::new();
        for c in &copies {
            fees.push(chain.deal(c.deal).await?.map(|d| d.download_fee));
        }
        Ok(fees)
    })?;
    let text = match &a.to {
        None => share.to_string(),
        Some(k) => net::receive::bind_share(&share, &miner::parse_key_hex(k).context("--to")?.0)?,
    };
    let json = ShareJson {
        share: text,
        manifest_id: record.manifest_id.clone(),
        name: record.name.clone(),
        copies: copies
            .iter()
            .zip(&fees)
            .map(|(c, f)| CopyJson {
                deal: c.deal.to_string(),
                host_addr: c.host_addr.clone(),
                download_fee: *f,
            })
            .collect(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&json)?);
        return Ok(());
    }
    println!(
        "share of {} ({} cop{}):",
        if record.name.is_empty() {
            "the file"
        } else {
            &record.name
        },
        copies.len(),
        if copies.len() == 1 { "y" } else { "ies" }
    );
    for c in &json.copies {
        match c.download_fee {
            Some(f) => println!(
                "  deal {} at {}: {f} MASPC to you per download, plus the host's price",
                c.deal, c.host_addr
            ),
            None => println!("  deal {} at {}", c.deal, c.host_addr),
        }
    }
    println!("{}", json.share);
    println!(
        "A receiver gets the file with: mspace get <the share above> --out FILE (it pays on \
         the chain with its own key; the share holds the file's key: give it to receivers only)"
    );
    Ok(())
}

/// `mspace get SHARE`: what the command line gave.
#[derive(Debug)]
pub struct SharedGet {
    pub share: FileShare,
    pub out: PathBuf,
    pub force: bool,
    pub key: ed25519_consensus::SigningKey,
    pub chain: Vec<String>,
    pub max_fee: u64,
    pub workers: usize,
    pub via: Vec<String>,
    pub max_proxy_price: u64,
    pub json: bool,
}

#[derive(Serialize)]
struct SharedGetJson {
    #[serde(flatten)]
    opened: crate::OpenJson,
    /// The copy that served it.
    deal: String,
    host_addr: String,
    /// What was paid, for each copy tried in turn (the last served the file; one whose
    /// host failed comes back after its deadline unless that host claimed it).
    payments: Vec<PaymentJson>,
    /// Copies left out, with why.
    failed: Vec<String>,
}

#[derive(Serialize)]
struct PaymentJson {
    deal: String,
    payment: String,
    total: u64,
    download_fee: u64,
    host_part: u64,
    height: u64,
    deadline: u64,
    served: bool,
}

/// Buys and downloads the shared file from its copies in turn, until one serves it
/// (`net::receive::fetch_shared`), and says what was paid to whom.
pub fn get_shared(g: &SharedGet) -> Result<()> {
    let quiet = g.json;
    let report: net::deal::Report = std::sync::Arc::new(move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    });
    let purchase = net::receive::Purchase {
        share: &g.share,
        chain: &g.chain,
        key: &g.key,
        max_total: g.max_fee,
        report: &report,
    };
    let job = net::client::GetJob {
        links: Vec::new(),
        via: g.via.clone(),
        max_proxy_price: g.max_proxy_price,
        key: g.key.clone(),
        unlock: net::client::Key::Share(Box::new(g.share.key.clone())),
        out: g.out.clone(),
        overwrite: g.force,
        workers: g.workers,
    };
    let bar = crate::progress_bar(0, !g.json, "downloading");
    let started = std::time::Instant::now();
    let result = runtime()?.block_on(net::receive::fetch_shared(
        &purchase,
        &job,
        crate::netcli::bar_progress(&bar),
    ));
    bar.finish_and_clear();
    let (done, tried) = match result {
        Ok(f) => (Some(f.done), f.tried),
        Err(tried) => (None, tried),
    };
    let payments: Vec<PaymentJson> = tried
        .iter()
        .filter_map(|t| {
            let (p, terms) = (t.payment.as_ref()?, t.terms.as_ref()?);
            Some(PaymentJson {
                deal: t.copy.deal.to_string(),
                payment: p.id.to_string(),
                total: p.total,
                download_fee: terms.download_fee,
                host_part: terms.host_part,
                height: p.height,
                deadline: p.deadline,
                served: t.error.is_none(),
            })
        })
        .collect();
    let failed: Vec<String> = tried.iter().filter_map(|t| t.failure()).collect();
    let Some(done) = done else {
        unserved_note(&payments);
        bail!(
            "no copy of the shared file could be downloaded: {}",
            failed.join("; ")
        )
    };
    let copy = &tried.last().expect("the copy that served it").copy;
    let m = &done.manifest;
    if g.json {
        let json = SharedGetJson {
            opened: crate::OpenJson::new(done.file_id, done.manifest_id, m, &g.out),
            deal: copy.deal.to_string(),
            host_addr: copy.host_addr.clone(),
            payments,
            failed,
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "downloaded {} ({}, {} chunks, all verified) into {} in {secs:.2} s ({}) from host {}",
            crate::shown_name(&m.name),
            crate::format_bytes(m.file_bytes),
            m.chunks.len(),
            g.out.display(),
            crate::format_rate(m.file_bytes, secs),
            copy.host_addr
        );
        unserved_note(&payments);
    }
    Ok(())
}

/// Says what happens to payments whose host did not serve the file.
fn unserved_note(payments: &[PaymentJson]) {
    for p in payments.iter().filter(|p| !p.served) {
        eprintln!(
            "payment {} ({} MASPC, deal {}) was not served: unless its host claimed it, it \
             comes back to you after height {}",
            p.payment, p.total, p.deal, p.deadline
        );
    }
}
