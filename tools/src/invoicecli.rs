//! `mspace invoice create|show|pay`: wiring for `proto::invoice` (a signed payment
//! request), `engine::sealed_to` (sealed to the payer's key) and the chain (the issuer
//! records the invoice's id, the payer checks that record and pays with a transfer).
//! Delivered through the system, the sealed invoice is stored as a small deal
//! (`net::deal::store`) and the payer is given a share bound to its key
//! (`net::receive::bind_share`), which `show` and `pay` fetch (`net::receive::fetch_shared`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use api::chain::ChainClient;
use clap::{Args, Subcommand};
use engine::sealed_to::{open_from, seal_to, sealed_recipient, SEALED_TO_MAX, SEALED_TO_OVERHEAD};
use proto::invoice::{Attachment, Invoice, SignedInvoice};
use proto::tx::{AccountId, Asset, SignedTx, Tx, TxBody};
use serde::Serialize;

use crate::netcli::{client_key, runtime, state_dir};
use miner::hex;

#[derive(Args, Debug)]
pub struct InvoiceArgs {
    #[command(subcommand)]
    action: InvoiceAction,
}

#[derive(Subcommand, Debug)]
enum InvoiceAction {
    /// Write a signed invoice for a payer, sealed to the payer's key, and record its id on
    /// the chain (which timestamps it).
    Create(CreateArgs),
    /// Open an invoice sealed to your key and check it (the issuer's signature, the
    /// issuer's record on the chain), paying nothing.
    Show(OpenArgs),
    /// Check an invoice as `show` does, then pay exactly its amount to exactly its issuer
    /// (once: a second payment of the same invoice is refused).
    Pay(OpenArgs),
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// The payer's public key (hex): only its key opens the invoice.
    #[arg(long)]
    to: String,
    /// MASPC asked.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    amount: u64,
    /// What it is for (at most 1,024 bytes).
    #[arg(long, default_value = "")]
    memo: String,
    /// A file sent with the invoice (its name, size and BLAKE3 are signed with it).
    #[arg(long)]
    attach: Option<PathBuf>,
    /// The issuer's key file: it signs, records the invoice and is paid.
    #[arg(long)]
    key: PathBuf,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, default_value = "127.0.0.1:27001")]
    chain: Vec<String>,
    /// Where to write the sealed invoice [default: invoice-<first 16 hex digits of its id>.msi].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Deliver it through the system: store the sealed invoice as a small deal (paid by
    /// you) with the host at this control address (repeat: one copy per host), and print
    /// a share sealed to the payer's key (`msb1-...`) for `mspace invoice pay`.
    #[arg(long)]
    host: Vec<String>,
    /// Days the delivered invoice is kept.
    #[arg(long, default_value_t = 30, requires = "host", value_parser = clap::value_parser!(u32).range(1..))]
    days: u32,
    /// Blocks of storage instead of days x 14,400 (a devnet).
    #[arg(long, requires = "host", value_parser = clap::value_parser!(u64).range(1..))]
    period_blocks: Option<u64>,
    /// How long to wait for the recording block.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct OpenArgs {
    /// The sealed invoice (`.msi`), or the share of one delivered through the system
    /// (`msb1-...`, bound to your key): it is fetched first.
    invoice: String,
    /// With a share: the most to pay to download the invoice, MASPC (the host's price).
    #[arg(long, default_value_t = 10)]
    max_fee: u64,
    /// The payer's key file [default: the client key in the state directory].
    #[arg(long)]
    key: Option<PathBuf>,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, default_value = "127.0.0.1:27001")]
    chain: Vec<String>,
    /// Write the invoice's attachment here (it is checked against the invoice either way).
    #[arg(long)]
    attachment_out: Option<PathBuf>,
    /// How long to wait for the payment's block.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct InvoiceJson {
    id: String,
    issuer: String,
    payer: String,
    amount: u64,
    memo: String,
    created_unix_secs: u64,
    attachment: Option<String>,
    /// The block that recorded the id, and its time.
    recorded_height: u64,
    recorded_ms: u64,
    file: Option<String>,
    /// Delivered through the system: the share bound to the payer's key, and the deals
    /// holding the invoice.
    delivery: Option<String>,
    deals: Vec<String>,
    /// With `pay`: the transfer's id and block.
    paid_tx: Option<String>,
    paid_height: Option<u64>,
}

pub fn invoice(a: InvoiceArgs) -> Result<()> {
    match a.action {
        InvoiceAction::Create(c) => create(&c),
        InvoiceAction::Show(o) => open(&o, false),
        InvoiceAction::Pay(o) => open(&o, true),
    }
}

fn create(c: &CreateArgs) -> Result<()> {
    let key = net::config::read_key(&c.key)?;
    let payer = miner::parse_key_hex(&c.to).context("--to")?.0;
    let attached = match &c.attach {
        None => None,
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            if bytes.len() > SEALED_TO_MAX / 2 {
                bail!(
                    "{}: {} bytes; an attachment is at most {} bytes (store larger files as deals and share them)",
                    p.display(),
                    bytes.len(),
                    SEALED_TO_MAX / 2
                );
            }
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Some((name, bytes))
        }
    };
    let mut nonce = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let rt = runtime()?;
    let mut chain = rt.block_on(ChainClient::connect(&c.chain))?;
    let chain_id = rt.block_on(chain.status())?.chain_id;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signed = Invoice {
        chain_id,
        issuer: key.verification_key().to_bytes(),
        payer,
        amount: c.amount,
        created_unix_secs: created,
        nonce,
        memo: c.memo.clone(),
        attachment: attached.as_ref().map(|(name, bytes)| Attachment {
            name: name.clone(),
            bytes: bytes.len() as u64,
            blake3: *blake3::hash(bytes).as_bytes(),
        }),
    }
    .sign(&key)
    .map_err(anyhow::Error::msg)?;
    let id = signed.id();
    let mut plain = signed.as_bytes().to_vec();
    if let Some((_, bytes)) = &attached {
        plain.extend_from_slice(bytes);
    }
    let sealed = seal_to(&payer, &plain)?;
    let recorded = rt
        .block_on(chain.submit(&key, TxBody::RecordHash { hash: id }, 1, c.wait))
        .context("recording the invoice on the chain")?;
    let record = rt
        .block_on(chain.hash_record(id))?
        .context("the chain does not show the invoice's record")?;
    let out = c
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("invoice-{}.msi", &hex(&id)[..16])));
    net::record::write_durably(&out, &sealed)?;
    let (delivery, deals) = if c.host.is_empty() {
        (None, Vec::new())
    } else {
        let (share, deals) = rt
            .block_on(deliver(&key, &out, c, &payer))
            .context("delivering the invoice as a deal")?;
        (Some(share), deals)
    };
    let json = InvoiceJson {
        id: hex(&id),
        issuer: hex(&signed.invoice.issuer),
        payer: hex(&payer),
        amount: c.amount,
        memo: c.memo.clone(),
        created_unix_secs: created,
        attachment: attached.map(|(n, _)| n),
        recorded_height: recorded.height,
        recorded_ms: record.timestamp_ms,
        file: Some(out.display().to_string()),
        delivery,
        deals,
        paid_tx: None,
        paid_height: None,
    };
    if c.json {
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!(
            "invoice {} for {} MASPC to {}, recorded on the chain at height {}: send {} to the payer (sealed to its key; `mspace invoice pay {}` checks and pays it)",
            json.id,
            json.amount,
            json.payer,
            json.recorded_height,
            out.display(),
            out.display()
        );
    }
    Ok(())
}

/// Stores the sealed invoice at `file` as a deal with each of `c.host`, paid by `key`;
/// the share bound to `payer` and the deals.
async fn deliver(
    key: &ed25519_consensus::SigningKey,
    file: &Path,
    c: &CreateArgs,
    payer: &[u8; 32],
) -> Result<(String, Vec<String>)> {
    // The file key comes from a passphrase no one keeps: the share carries the key.
    let mut pass = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut pass);
    let job = net::deal::DealJob {
        file: file.to_owned(),
        hosts: c.host.clone(),
        chain: c.chain.clone(),
        days: c.days,
        period_blocks: c.period_blocks,
        key: key.clone(),
        passphrase: zeroize::Zeroizing::new(hex(&pass).into_bytes()),
        kdf: proto::KdfParams::DEFAULT,
        chunk_bytes: 64 << 10,
        workers: 1,
        journal_dir: state_dir()?,
        via: Vec::new(),
        max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
        host_keys: Vec::new(),
        max_price_per_gib_day: None,
        exchange: None,
        download_fee: 0,
        insurance: None,
        erasure: None,
        batches: None,
    };
    let quiet: net::deal::Report = Arc::new(|_: &str| {});
    let done = net::deal::store(&job, Arc::new(|_, _| {}), quiet).await?;
    let copies = done
        .placed
        .iter()
        .map(|p| proto::fileshare::ShareCopy {
            deal: p.deal,
            host_addr: p.host_addr.clone(),
        })
        .collect();
    let share =
        proto::fileshare::FileShare::new(done.share_key, copies).map_err(anyhow::Error::msg)?;
    let deals = done.placed.iter().map(|p| p.deal.to_string()).collect();
    Ok((net::receive::bind_share(&share, payer)?, deals))
}

/// The sealed invoice `o.invoice` names: a file, or a share fetched into the state
/// directory first (paying at most `o.max_fee` for the download).
fn invoice_file(o: &OpenArgs, key: &ed25519_consensus::SigningKey) -> Result<PathBuf> {
    let text = o.invoice.trim();
    if !text.starts_with(net::receive::BOUND_SHARE_PREFIX) {
        return Ok(PathBuf::from(&o.invoice));
    }
    let share = net::receive::open_bound_share(text, key)?;
    let dir = state_dir()?.join("invoices");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!(
        "received-{}.msi",
        &blake3::hash(text.as_bytes()).to_hex()[..16]
    ));
    if out.exists() {
        // Fetched by an earlier run: not bought twice (it is checked as any invoice is).
        return Ok(out);
    }
    let quiet: net::deal::Report = Arc::new(|_: &str| {});
    let purchase = net::receive::Purchase {
        share: &share,
        chain: &o.chain,
        key,
        max_total: o.max_fee,
        report: &quiet,
    };
    let job = net::client::GetJob {
        links: Vec::new(),
        via: Vec::new(),
        max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
        key: key.clone(),
        unlock: net::client::Key::Share(Box::new(share.key.clone())),
        out: out.clone(),
        overwrite: true,
        workers: 1,
    };
    runtime()?
        .block_on(net::receive::fetch_shared(
            &purchase,
            &job,
            Arc::new(|_, _| {}),
        ))
        .map_err(|tried| {
            let why: Vec<String> = tried.iter().filter_map(|t| t.failure()).collect();
            anyhow::anyhow!(
                "the delivered invoice could not be fetched: {}",
                why.join("; ")
            )
        })?;
    Ok(out)
}

fn open(o: &OpenArgs, pay: bool) -> Result<()> {
    let key = client_key(o.key.as_deref())?;
    let me = key.verification_key().to_bytes();
    let path = invoice_file(o, &key)?;
    let len = std::fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > (SEALED_TO_MAX + SEALED_TO_OVERHEAD) as u64 {
        bail!("{}: {len} bytes, larger than any invoice", path.display());
    }
    let sealed = std::fs::read(&path)?;
    let to = sealed_recipient(&sealed).context("reading the invoice")?;
    if to != me {
        bail!(
            "this invoice is sealed to key {}, not to yours ({})",
            hex(&to),
            hex(&me)
        );
    }
    let plain = open_from(key.as_bytes(), &sealed).context("opening the invoice")?;
    let (signed, rest) = SignedInvoice::decode(&plain).context("checking the invoice")?;
    let inv = &signed.invoice;
    if inv.payer != me {
        bail!("the invoice is made out to {}, not to you", hex(&inv.payer));
    }
    match &inv.attachment {
        None if !rest.is_empty() => bail!("the invoice carries bytes it does not list"),
        Some(a) if rest.len() as u64 != a.bytes || *blake3::hash(rest).as_bytes() != a.blake3 => {
            bail!(
                "the attachment does not match what the invoice signs ({})",
                a.name
            )
        }
        _ => {}
    }
    let id = signed.id();
    let rt = runtime()?;
    let mut chain = rt.block_on(ChainClient::connect(&o.chain))?;
    let chain_id = rt.block_on(chain.status())?.chain_id;
    if chain_id != inv.chain_id {
        bail!(
            "the invoice is for chain {}, the miner's is {chain_id}",
            inv.chain_id
        );
    }
    let record = rt.block_on(chain.hash_record(id))?.with_context(|| {
        format!(
            "the chain holds no record of invoice {}: its issuer never stood by it; refusing it",
            hex(&id)
        )
    })?;
    if record.by != hex(&inv.issuer) {
        bail!(
            "invoice {} was recorded by {}, not by its issuer {}: refusing it",
            hex(&id),
            record.by,
            hex(&inv.issuer)
        );
    }
    if let (Some(a), Some(out)) = (&inv.attachment, &o.attachment_out) {
        net::record::write_durably(out, rest)
            .with_context(|| format!("writing {} to {}", a.name, out.display()))?;
    }
    let mut json = InvoiceJson {
        id: hex(&id),
        issuer: hex(&inv.issuer),
        payer: hex(&me),
        amount: inv.amount,
        memo: inv.memo.clone(),
        created_unix_secs: inv.created_unix_secs,
        attachment: inv.attachment.as_ref().map(|a| a.name.clone()),
        recorded_height: record.height,
        recorded_ms: record.timestamp_ms,
        file: Some(path.display().to_string()),
        delivery: None,
        deals: Vec::new(),
        paid_tx: None,
        paid_height: None,
    };
    if pay {
        let paid = state_dir()?
            .join("invoices")
            .join(format!("{}.paid", hex(&id)));
        if let Ok(text) = std::fs::read_to_string(&paid) {
            bail!(
                "invoice {} is already paid from here: {}",
                hex(&id),
                text.trim()
            );
        }
        let dir = paid.parent().expect("a folder").to_owned();
        std::fs::create_dir_all(&dir)?;
        // The transfer is written down before it is sent: a run that did not see it
        // committed sends that same transaction again (one nonce: it lands once), never a
        // second payment.
        let paying = dir.join(format!("{}.paying", hex(&id)));
        let earlier = match std::fs::read(&paying) {
            Ok(b) => Some(SignedTx::decode(&b).context("the earlier payment's record")?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let me_id = AccountId(me);
        let next_nonce = rt.block_on(chain.account(me_id))?.nonce;
        let tx = match earlier {
            Some(t) if rt.block_on(chain.may_land(&t))? => t,
            // Its nonce went to another transaction and it is not on the chain: it can
            // never land, so a new one is made.
            _ => {
                let t = Tx {
                    chain_id,
                    signer: me_id,
                    nonce: next_nonce,
                    fee: 1,
                    body: TxBody::Transfer {
                        to: AccountId(inv.issuer),
                        asset: Asset::Maspc,
                        amount: inv.amount,
                    },
                }
                .sign(&key);
                net::record::write_durably(&paying, t.bytes())?;
                t
            }
        };
        let height = match rt.block_on(chain.send_once(&tx, o.wait)) {
            Ok(h) => h,
            Err(api::chain::ChainError::NotCommitted { tx, secs }) => bail!(
                "payment {tx} was not committed within {secs} s: run `mspace invoice pay` again (it sends this same transaction, never a second payment)"
            ),
            Err(e) => bail!("the payment: {e}"),
        };
        net::record::write_durably(
            &paid,
            format!("transaction {} at height {height}\n", tx.id()).as_bytes(),
        )?;
        let _ = std::fs::remove_file(&paying);
        json.paid_tx = Some(tx.id().to_string());
        json.paid_height = Some(height);
    }
    if o.json {
        println!("{}", serde_json::to_string(&json)?);
        return Ok(());
    }
    println!("invoice {}", json.id);
    println!(
        "  from   {} (recorded at height {}, its signature checked)",
        json.issuer, json.recorded_height
    );
    println!("  amount {} MASPC", json.amount);
    if !json.memo.is_empty() {
        println!("  memo   {}", json.memo);
    }
    if let Some(a) = &inv.attachment {
        println!("  attachment {} ({} bytes, checked)", a.name, a.bytes);
    }
    match (&json.paid_tx, json.paid_height) {
        (Some(tx), Some(h)) => println!(
            "paid: {} MASPC to {} (transaction {tx}, height {h})",
            json.amount, json.issuer
        ),
        _ => println!("not paid: `mspace invoice pay {}` pays it", path.display()),
    }
    Ok(())
}
