//! `mspace invoice create|show|pay`: wiring for `proto::invoice` (a signed payment
//! request), `engine::sealed_to` (sealed to the payer's key) and the chain (the issuer
//! records the invoice's id, the payer checks that record and pays with a transfer).

use std::path::PathBuf;
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
    /// How long to wait for the recording block.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct OpenArgs {
    /// The sealed invoice (`.msi`).
    invoice: PathBuf,
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

fn open(o: &OpenArgs, pay: bool) -> Result<()> {
    let key = client_key(o.key.as_deref())?;
    let me = key.verification_key().to_bytes();
    let len = std::fs::metadata(&o.invoice)
        .with_context(|| format!("reading {}", o.invoice.display()))?
        .len();
    if len > (SEALED_TO_MAX + SEALED_TO_OVERHEAD) as u64 {
        bail!(
            "{}: {len} bytes, larger than any invoice",
            o.invoice.display()
        );
    }
    let sealed = std::fs::read(&o.invoice)?;
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
        file: None,
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
        _ => println!(
            "not paid: `mspace invoice pay {}` pays it",
            o.invoice.display()
        ),
    }
    Ok(())
}
