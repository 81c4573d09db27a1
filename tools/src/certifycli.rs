//! `mspace certify`: wiring for `api::certificate` (proof of existence on the chain).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use api::certificate::Certificate;
use api::chain::ChainClient;
use clap::Args;
use proto::tx::TxBody;

use crate::netcli::runtime;

#[derive(Args, Debug)]
pub struct CertifyArgs {
    /// The file to certify; with --verify, the certificate (`.cert.json`).
    what: PathBuf,
    /// With --verify: the file the certificate should be of (its hash is compared too).
    file: Option<PathBuf>,
    /// Check a certificate against the chain instead of making one.
    #[arg(long)]
    verify: bool,
    /// The recording account's key file (needed to certify).
    #[arg(long, required_unless_present = "verify")]
    key: Option<PathBuf>,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, default_value = "127.0.0.1:27001")]
    chain: Vec<String>,
    /// Where to write the certificate: `<out>.json` and `<out>.txt` [default: the file's
    /// path with `.cert` appended].
    #[arg(long)]
    out: Option<PathBuf>,
    /// How long to wait for the recording block.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
    #[arg(long)]
    json: bool,
}

/// BLAKE3 of a file's bytes (hex) and its size.
fn file_hash(path: &Path) -> std::io::Result<(String, u64)> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    let size = std::fs::metadata(path)?.len();
    Ok((h.finalize().to_hex().to_string(), size))
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn certify(a: CertifyArgs) -> Result<()> {
    if a.verify {
        return verify(&a);
    }
    if a.file.is_some() {
        bail!("one file at a time (a second path is for --verify: the certified file)");
    }
    let key = net::config::read_key(a.key.as_deref().context("--key is needed to certify")?)?;
    let (hash_hex, size) =
        file_hash(&a.what).with_context(|| format!("reading {}", a.what.display()))?;
    let me = miner::hex(&key.verification_key().to_bytes());
    let base = a
        .out
        .clone()
        .unwrap_or_else(|| with_suffix(&a.what, ".cert"));
    let name = a
        .what
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cert = runtime()?.block_on(async {
        let mut chain = ChainClient::connect(&a.chain).await?;
        let chain_id = chain.status().await?.chain_id;
        let hash: [u8; 32] = data_encoding::HEXLOWER
            .decode(hash_hex.as_bytes())
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("a BLAKE3 hash is 32 bytes")?;
        let record = match chain.hash_record(hash).await? {
            // Already recorded by this key: the certificate states that first record.
            Some(r) if r.by == me => r,
            Some(r) => bail!(
                "{hash_hex} was already recorded at height {} by {}: the first record stands, and a certificate names it (ask its holder, or check it with `mspace chain record {} --verify`)",
                r.height,
                r.by,
                a.what.display()
            ),
            None => {
                chain
                    .submit(&key, TxBody::RecordHash { hash }, 1, a.wait)
                    .await
                    .map_err(|e| anyhow::anyhow!("recording {hash_hex}: {e}"))?;
                chain
                    .hash_record(hash)
                    .await?
                    .context("the recording block was decided but the chain holds no record")?
            }
        };
        anyhow::Ok(Certificate::new(&record, &name, size, chain_id))
    })?;
    let (json_path, text_path) = (with_suffix(&base, ".json"), with_suffix(&base, ".txt"));
    for (path, body) in [(&json_path, cert.to_json()), (&text_path, cert.to_text())] {
        std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        println!("{}", cert.to_json());
    } else {
        print!("{}", cert.to_text());
        println!(
            "\ncertificate written to {} and {}",
            json_path.display(),
            text_path.display()
        );
    }
    Ok(())
}

fn verify(a: &CertifyArgs) -> Result<()> {
    let bytes = std::fs::read(&a.what).with_context(|| format!("reading {}", a.what.display()))?;
    let cert = Certificate::from_json(&bytes).with_context(|| a.what.display().to_string())?;
    let file = match &a.file {
        Some(f) => Some(
            file_hash(f)
                .with_context(|| format!("reading {}", f.display()))?
                .0,
        ),
        None => None,
    };
    let (chain_id, record) = runtime()?.block_on(async {
        let mut chain = ChainClient::connect(&a.chain).await?;
        let id = chain.status().await?.chain_id;
        anyhow::Ok((id, chain.hash_record(cert.hash_bytes()).await?))
    })?;
    cert.check(file.as_deref(), chain_id, record.as_ref())
        .context("the certificate does not hold")?;
    if a.json {
        println!("{}", cert.to_json());
    } else {
        println!(
            "valid: {} was recorded at height {} of chain {} ({} ms since the Unix epoch) by {}{}",
            cert.hash,
            cert.height,
            cert.chain_id,
            cert.timestamp_ms,
            cert.by,
            if file.is_some() {
                ", and the file hashes to it"
            } else {
                " (no file given: only the record is checked)"
            }
        );
    }
    Ok(())
}
