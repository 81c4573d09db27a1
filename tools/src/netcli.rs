//! The network commands of `mspace`: `host` (init, run, link), `proxy`, `put` and `get`.
//! The only place the tokio runtime, the engine's shards and the network meet.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::registry::Op;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ed25519_consensus::SigningKey;
use engine::store::{Engine, EngineConfig};
use net::client::{get_file, put_file, GetJob, Key, PutJob};
use net::config::{read_key, write_new_key, Limits};
use net::host::Host;
use net::host_config::HostConfig;
use net::state::HostState;
use proto::link::{Grant, Link};
use proto::{ChunkId, KdfParams};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::{
    format_bytes, format_rate, parse_bytes, parse_chunk_size, progress_bar, read_passphrase,
};

/// Where the client keeps its key and upload journals: `MSPACE_STATE_DIR`, else
/// `$XDG_STATE_HOME/mspace`, else `~/.local/state/mspace`.
pub fn state_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("MSPACE_STATE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Ok(PathBuf::from(d).join("mspace"));
    }
    let home = std::env::var_os("HOME").context("neither MSPACE_STATE_DIR nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/mspace"))
}

/// Parses a duration: a number and a unit, `s`, `m`, `h` or `d` (`90s`, `10m`, `7d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 10m, 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: give a unit, s, m, h or d")),
    };
    let total = n
        .checked_mul(secs)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    if total == 0 {
        return Err("a duration of zero grants nothing".into());
    }
    Ok(Duration::from_secs(total))
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HostArgs {
    #[command(subcommand)]
    action: Option<HostAction>,
    /// The host's configuration file (written by `mspace host init`).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum HostAction {
    /// Write a commented default configuration, a new host key and the directories.
    Init(HostInitArgs),
    /// Mint a temporary link (printed alone): `--upload --bytes N` or `--download <MANIFEST_ID>`.
    Link(LinkArgs),
    /// Ask a running host for its status over its control plane.
    Status(StatusArgs),
    /// Remove a file uploaded through links minted for the control token (its record and
    /// the chunks nothing else holds) from a running host. A file a deal paid for is
    /// refused: it stays until the deal ends.
    Drop(DropArgs),
    /// Register this host on the chain with a deposit (MASP), from its key.
    Register(crate::registry::RegistryArgs),
    /// Start unbonding this host's deposit (it can be withdrawn after the unbonding period).
    Unbond(crate::registry::RegistryArgs),
    /// Take back this host's deposit once unbonding is over.
    Withdraw(crate::registry::RegistryArgs),
}

#[derive(Args, Debug)]
struct DropArgs {
    #[arg(long)]
    config: PathBuf,
    /// The file's manifest id (hex).
    manifest: String,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[arg(long)]
    config: PathBuf,
    /// Print the status as one JSON object (`api::HostStatus`) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct HostInitArgs {
    /// The configuration file to write (refused if it exists).
    #[arg(long)]
    config: PathBuf,
    /// Directory for chunks (created).
    #[arg(long)]
    data_dir: PathBuf,
    /// Address the data plane listens on, host:port.
    #[arg(long, default_value = "0.0.0.0:7400")]
    listen: String,
    /// Address of the control plane (status, offers, link minting); keep it private.
    #[arg(long, default_value = "127.0.0.1:7401")]
    control_listen: String,
    /// A miner's control address (host:port), for registering and for the chain's view of
    /// this host (repeat: the first that answers is used).
    #[arg(long = "chain")]
    chain: Vec<String>,
    /// An exchange's control address (host:port) to keep a standing ask on (repeat for
    /// several; needs --chain).
    #[arg(long = "exchange", requires = "chain")]
    exchange: Vec<String>,
    /// The price to ask, in MASPC base units per GiB per day.
    #[arg(long, default_value_t = 10)]
    price: u64,
    /// Serve the dashboard (a web page; its two actions need the control token) on this
    /// address, host:port; keep it private.
    #[arg(long)]
    dashboard_listen: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["upload", "download"])))]
struct LinkArgs {
    #[arg(long)]
    config: PathBuf,
    /// Grant uploading, up to --bytes.
    #[arg(long, requires = "bytes")]
    upload: bool,
    /// Bytes the upload link allows in all (8GiB, 100MiB, ...).
    #[arg(long, value_parser = parse_bytes)]
    bytes: Option<u64>,
    /// Grant reading the sealed file with this manifest id (hex).
    #[arg(long, value_name = "MANIFEST_ID")]
    download: Option<String>,
    /// How long the link is valid: 90s, 10m, 24h, 7d.
    #[arg(long, value_parser = parse_duration)]
    ttl: Duration,
    /// Only the holder of this ed25519 public key (hex) may use the link.
    #[arg(long)]
    bearer: Option<String>,
}

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to accept clients on; connections to hosts leave from this address too.
    #[arg(long)]
    listen: String,
    /// Relay to loopback and private addresses too (a local test network). A public proxy
    /// refuses them, so strangers cannot reach its own network through it.
    #[arg(long)]
    allow_private: bool,
    /// The proxy's key file (hex seed; created if missing): the account its clients'
    /// receipts pay. Without it the proxy relays for free.
    #[arg(long, requires_all = ["chain", "state"])]
    key: Option<PathBuf>,
    /// A miner's control address (repeat: the first that answers): the chain the receipts
    /// are paid on, redeemed there in batches.
    #[arg(long, requires = "key")]
    chain: Vec<String>,
    /// What the proxy charges, MASPC per GiB relayed (both ways), from each client's
    /// allowance; clients refuse more than their --max-proxy-price.
    #[arg(long, default_value_t = 0, requires = "key")]
    price_per_gib: u64,
    /// Where accepted receipts are kept (pending/, redeemed/, rejected/): each is on disk
    /// before the client is told it was accepted.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Seconds between rounds of redeeming the pending receipts.
    #[arg(long, default_value_t = 60, requires = "key", value_parser = clap::value_parser!(u64).range(1..))]
    redeem_every: u64,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("to").required(true).args(["link", "host", "exchange", "index"])))]
#[command(group(clap::ArgGroup::new("market").multiple(true).args(["host", "exchange", "index"])))]
#[command(group(clap::ArgGroup::new("find").multiple(true).args(["exchange", "index"])))]
pub struct PutArgs {
    /// The file to upload: read, sealed and sent in one pass.
    pub(crate) file: PathBuf,
    /// An upload link from the host (mspace://...), for an upload outside the chain.
    #[arg(long)]
    link: Option<String>,
    /// Store the file as a paid deal with the host at this control address (host:port):
    /// its signed offer is checked, the payment carrying every chunk's CRC32C and BLAKE3
    /// root goes on chain, the host grants the deal's upload link, and the command returns
    /// once the host's completion matched. Repeat for one copy (one deal) per host.
    #[arg(long, requires_all = ["chain", "days"], conflicts_with = "find")]
    pub(crate) host: Vec<String>,
    /// Or find hosts through an exchange (host:port; repeat: the first that answers is
    /// used): a signed request for --copies copies at --max-price at most, matched against
    /// the hosts' standing asks; each matched host's own signed offer is then checked and
    /// paid as with --host.
    #[arg(long, requires_all = ["chain", "days"])]
    pub(crate) exchange: Vec<String>,
    /// Or ask an index (host:port; repeat: the first that answers) which exchanges are
    /// alive, and use them nearest first (round trip measured from here), then any
    /// --exchange given.
    #[arg(long, requires_all = ["chain", "days"])]
    pub(crate) index: Vec<String>,
    /// Copies wanted through --exchange, each on another host.
    #[arg(long, default_value_t = 1, requires = "find", value_parser = clap::value_parser!(u8).range(1..=16))]
    pub(crate) copies: u8,
    /// Instead of full copies: erasure shares K/N (e.g. 4/6). Each chunk's ciphertext
    /// becomes N shares, one on each of N distinct hosts (N --host, or N matched through
    /// --exchange/--index), of which any K rebuild it: each host stores and is paid for
    /// about 1/K of the file, and the file survives the loss of N-K hosts. `mspace get`
    /// rebuilds from whichever hosts answer.
    #[arg(long, requires = "market", conflicts_with = "copies")]
    pub(crate) erasure: Option<proto::erasure::Scheme>,
    /// Through --exchange/--index: let each copy be spread over several hosts, each
    /// holding a batch of consecutive chunks and the file's manifest, so that hosts with
    /// room for part of the file take part in it (per-batch offers). Each batch is a deal
    /// of its own, proven and paid like a copy; `mspace get` fetches every chunk from the
    /// host of its batch, and a copy is whole only while all its hosts are.
    #[arg(long, requires = "find", conflicts_with = "erasure")]
    pub(crate) spread: bool,
    /// The most to pay, MASPC per GiB per day: a dearer offer is refused [default: any
    /// price with --host, 1000 with --exchange].
    #[arg(long)]
    pub(crate) max_price: Option<u64>,
    /// Only hosts rated at least this on the chain (0 to 1000), through --exchange/--index.
    #[arg(long, default_value_t = 0, requires = "find", value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub(crate) min_rating: u16,
    /// Hosts in this region only, through --exchange (e.g. eu-west).
    #[arg(long, requires = "find", default_value = "")]
    pub(crate) region: String,
    /// With --exchange: print the hosts matched (price, rating, region, deposit, the
    /// estimated fee) and stop, paying nothing.
    #[arg(long, requires = "find")]
    pub(crate) dry_run: bool,
    /// A miner's control address to pay through (repeat: the first that answers is used).
    #[arg(long)]
    pub(crate) chain: Vec<String>,
    /// Days of storage (with --host): the price is per GiB per day.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) days: Option<u32>,
    /// MASPC each receiver of the file pays you per download (`mspace share` prints what
    /// they need; `mspace share --set-fee` changes it later) [default: 0, free but for the
    /// host's egress price].
    #[arg(long, default_value_t = 0, requires = "market")]
    pub(crate) download_fee: u64,
    /// Insure each deal with the insurer at this control address (host:port): its quote
    /// for --cover is asked for before paying, and its premium paid with the fee; if the
    /// host then misses a proof, the chain pays you the cover from the insurer's deposit.
    #[arg(long, requires_all = ["market", "cover"])]
    pub(crate) insurer: Option<String>,
    /// MASP of cover per deal, with --insurer.
    #[arg(long, requires = "insurer", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) cover: Option<u64>,
    /// The most to pay an insurer per deal, MASPC: a dearer quote stops the put before
    /// anything is paid.
    #[arg(long, requires = "insurer", default_value_t = 100)]
    pub(crate) max_premium: u64,
    /// Blocks of storage instead of days x 14,400 (a devnet with short proof periods).
    #[arg(long, requires = "market", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) period_blocks: Option<u64>,
    /// Relay through this proxy (host:port); repeat to chain proxies in order.
    #[arg(long)]
    pub(crate) via: Vec<String>,
    /// The most a --via proxy may charge, MASPC per GiB relayed (paid from your proxy
    /// allowance, `mspace chain allowance`): a dearer proxy is refused before any byte.
    #[arg(long, default_value_t = net::client::PROXY_PRICE_MAX_DEFAULT)]
    pub(crate) max_proxy_price: u64,
    /// Plaintext bytes per chunk: 4KiB to 64MiB, a multiple of 4KiB.
    #[arg(long, default_value = "8MiB", value_parser = parse_chunk_size)]
    pub(crate) chunk_size: u32,
    /// Read the passphrase from this file; otherwise MSPACE_PASSPHRASE or a prompt.
    #[arg(long)]
    pub(crate) passphrase_file: Option<PathBuf>,
    /// Worker threads for sealing [default: one per core].
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// The client's key file: its account pays for deals, it proves a link's bearer and
    /// signs proxy receipts [default: client.key in the state directory, created on first
    /// use].
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// Print one JSON object: the object of `mspace seal --json` plus the upload's counts
    /// (and the deals, with --host).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("from").required(true).multiple(true).args(["link", "deal", "file"])))]
pub struct GetArgs {
    /// A download link from the host (mspace://...); several links to copies of one file
    /// on several hosts: chunks are fetched from all at once, and a host that fails is
    /// left to the others. Or a file share (msf1-..., from `mspace share`): the download
    /// is bought from a copy's host, paid on --chain with --key unless it is free, and
    /// opened with the share's key; a copy whose host fails is left for the next.
    link: Vec<String>,
    /// Or the id of a deal of yours (hex): the download link comes from the deal's host,
    /// at the control address --host, and only your --key can use it. Repeat --deal and
    /// --host in pairs (the first --deal with the first --host, ...) to fetch from every
    /// host holding a copy at once.
    #[arg(long, requires = "host")]
    deal: Vec<String>,
    /// The deal's host's control address (host:port), one per --deal.
    #[arg(long, requires = "deal")]
    host: Vec<String>,
    /// Or the manifest id of a file you stored as deals (`mspace put`'s "manifest id"):
    /// every copy its record lists is fetched at once through the hosts' emergency links,
    /// with no exchange, index, miner or host control plane asked.
    #[arg(long)]
    file: Option<String>,
    /// The file to write; it appears only once every chunk has been verified.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    unlock: crate::UnlockArgs,
    /// Relay through this proxy; repeat to chain.
    #[arg(long)]
    via: Vec<String>,
    /// The most a --via proxy may charge, MASPC per GiB relayed (paid from your proxy
    /// allowance, `mspace chain allowance`): a dearer proxy is refused before any byte.
    #[arg(long, default_value_t = net::client::PROXY_PRICE_MAX_DEFAULT)]
    max_proxy_price: u64,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    workers: Option<usize>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// With a share: a miner's control address to pay through (repeat: the first that
    /// answers is used).
    #[arg(long, default_value = "127.0.0.1:27001")]
    chain: Vec<String>,
    /// With a share: the most to pay for one download, MASPC (the sender's fee and the
    /// host's price together); a dearer copy is refused before anything is paid.
    #[arg(long, default_value_t = 100)]
    max_fee: u64,
    #[arg(long)]
    json: bool,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs to stderr, filtered by MSPACE_LOG (default: info; malachite's and libp2p's chatter
/// at warn).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MSPACE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,tarpc=warn,libp2p=warn,informalsystems_malachitebft=warn,malachitebft=warn",
        )
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn host(args: HostArgs) -> Result<()> {
    match args.action {
        Some(HostAction::Init(a)) => host_init(&a),
        Some(HostAction::Link(a)) => host_link(&a),
        Some(HostAction::Status(a)) => host_status(&a),
        Some(HostAction::Drop(a)) => host_drop(&a),
        Some(HostAction::Register(a)) => host_registry(Op::Register, &a),
        Some(HostAction::Unbond(a)) => host_registry(Op::Unbond, &a),
        Some(HostAction::Withdraw(a)) => host_registry(Op::Withdraw, &a),
        None => {
            let Some(config) = args.config else {
                bail!("give --config <FILE> (write one with `mspace host init`)");
            };
            host_run(&config)
        }
    }
}

/// `mspace host register|unbond|withdraw`: the host's key signs; a register records the
/// address links name as the host's endpoint.
fn host_registry(op: Op, a: &crate::registry::RegistryArgs) -> Result<()> {
    let cfg = HostConfig::load(&a.config)?;
    let key = read_key(&cfg.key_file)?;
    crate::registry::run(
        proto::tx::Role::Host,
        op,
        &key,
        cfg.link_addr(),
        &cfg.chain,
        a,
    )
}

/// For `init` commands: refuses an existing configuration file, creates the folder it goes
/// in (where its key goes too) and returns that folder.
pub fn config_folder(config: &Path) -> Result<&Path> {
    if config.exists() {
        bail!("{} exists: not replacing a configuration", config.display());
    }
    let base = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(base).with_context(|| format!("create {}", base.display()))?;
    Ok(base)
}

fn host_init(a: &HostInitArgs) -> Result<()> {
    let base = config_folder(&a.config)?;
    let data = std::path::absolute(&a.data_dir).context("resolve --data-dir")?;
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    let mut token = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut token);
    let text = HostConfig::default_text(
        &data,
        &a.listen,
        &a.control_listen,
        &data_encoding::HEXLOWER.encode(&token),
        &a.chain,
        &a.exchange,
        a.price,
    );
    let text = match &a.dashboard_listen {
        Some(addr) => HostConfig::with_dashboard(&text, addr),
        None => text,
    };
    // Check what we write loads, before writing anything.
    toml::from_str::<HostConfig>(&text).context("the default configuration does not parse")?;
    let key_path = base.join("host.key");
    let key = write_new_key(&key_path)?;
    std::fs::write(&a.config, text).with_context(|| format!("write {}", a.config.display()))?;
    std::fs::create_dir_all(base.join("host-state")).context("create the state directory")?;
    println!(
        "wrote {} and the key {}",
        a.config.display(),
        key_path.display()
    );
    println!(
        "host key {}",
        data_encoding::HEXLOWER.encode(&key.verification_key().to_bytes())
    );
    println!("run it with: mspace host --config {}", a.config.display());
    Ok(())
}

fn host_link(a: &LinkArgs) -> Result<()> {
    let cfg = HostConfig::load(&a.config)?;
    let key = read_key(&cfg.key_file)?;
    let grant = match (&a.download, a.bytes) {
        (Some(m), _) => Grant::Download {
            manifest: m
                .parse::<ChunkId>()
                .map_err(|e| anyhow::anyhow!("--download: {e}"))?,
        },
        (None, Some(bytes)) => Grant::Upload { bytes_max: bytes },
        (None, None) => bail!("--upload needs --bytes"),
    };
    let bearer = match &a.bearer {
        None => None,
        Some(hex) => Some(
            data_encoding::HEXLOWER_PERMISSIVE
                .decode(hex.as_bytes())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .context("--bearer: a public key is 64 hex digits")?,
        ),
    };
    let mut id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let link = Link::sign(
        &key,
        cfg.link_addr(),
        grant,
        bearer,
        net::now_secs()
            .checked_add(a.ttl.as_secs())
            .context("--ttl is too long")?,
        id,
    )?;
    println!("{link}");
    Ok(())
}

fn host_drop(a: &DropArgs) -> Result<()> {
    let cfg = HostConfig::load(&a.config)?;
    let manifest = a
        .manifest
        .parse::<ChunkId>()
        .map_err(|e| anyhow::anyhow!("the manifest id: {e}"))?;
    let addr = cfg
        .control_listen
        .context("the configuration has no control_listen")?;
    let token = cfg
        .control_token
        .context("the configuration has no control_token: nothing was uploaded for it")?;
    let removed = runtime()?.block_on(async {
        let client = api::host_client(&addr)
            .await
            .with_context(|| format!("cannot reach the host's control plane at {addr}"))?;
        client
            .drop_object(tarpc::context::current(), token, manifest.0)
            .await?
            .map_err(|e| anyhow::anyhow!("the host keeps manifest {manifest}: {e}"))
    })?;
    println!("removed manifest {manifest} and {removed} chunk(s) nothing else held");
    Ok(())
}

fn host_status(a: &StatusArgs) -> Result<()> {
    let cfg = HostConfig::load(&a.config)?;
    let addr = cfg
        .control_listen
        .context("the configuration has no control_listen")?;
    let status = runtime()?.block_on(async {
        let client = api::host_client(&addr)
            .await
            .with_context(|| format!("cannot reach the host's control plane at {addr}"))?;
        anyhow::Ok(client.status(tarpc::context::current()).await?)
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        print!("{}", status_text(&status));
    }
    Ok(())
}

/// `mspace host status` for a person: what is stored, then each alert, critical first.
fn status_text(s: &api::HostStatus) -> String {
    use crate::format_bytes;
    let stored = if s.capacity_bytes == u64::MAX {
        format!("{} (no capacity limit)", format_bytes(s.live_bytes))
    } else {
        format!(
            "{} of {} ({}%)",
            format_bytes(s.live_bytes),
            format_bytes(s.capacity_bytes),
            api::alerts::percent(s.live_bytes, s.capacity_bytes)
        )
    };
    let mut out = format!(
        "host {} (mspace {})\ndata plane   {}\nstored       {} in {} chunks\nconnections  {} open\n",
        s.key, s.version, s.data_addr, stored, s.chunks, s.connections_open
    );
    if s.alerts.is_empty() {
        out.push_str("alerts       none\n");
    } else {
        out.push_str(&format!("alerts       {}\n", s.alerts.len()));
        for a in &s.alerts {
            let since = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.since_ms),
            );
            out.push_str(&format!(
                "  {:<8} {} since {since}: {}\n",
                a.severity, a.kind, a.message
            ));
        }
    }
    out
}

#[derive(Args, Debug)]
pub struct OfferArgs {
    /// The host's control address (host:port).
    #[arg(long)]
    host: String,
    /// The host's public key (hex) the offer must be signed by [default: the key the host
    /// states in its status].
    #[arg(long)]
    host_key: Option<String>,
    /// A miner's control address: the offer must be for that chain [default: the chain the
    /// offer names].
    #[arg(long)]
    miner: Option<String>,
    /// Bytes to store (8GiB, 100MiB, ...).
    #[arg(long, value_parser = parse_bytes)]
    bytes: u64,
    /// Days to store them.
    #[arg(long)]
    days: u32,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct OfferJson {
    host: String,
    chain_id: u64,
    id: String,
    price_per_gib_day: u64,
    proof_period_blocks: u64,
    max_days: u64,
    bytes_max: u64,
    deposit: u64,
    expiry_unix_secs: u64,
    /// What storing the bytes asked for the days asked costs at this price (MASPC):
    /// price x started GiB x days.
    total_maspc: u64,
    /// The signed offer (`docs/formats.md` section 16), hex.
    offer: String,
}

/// `mspace offer`: asks a host's control plane for a signed offer and checks it.
pub fn offer(a: OfferArgs) -> Result<()> {
    let hex = miner::hex;
    let out = runtime()?.block_on(async {
        let host = api::host_client(&a.host)
            .await
            .with_context(|| format!("cannot reach the host's control plane at {}", a.host))?;
        let ctx = tarpc::context::current;
        let key = match &a.host_key {
            Some(k) => k.clone(),
            None => host.status(ctx()).await?.key,
        };
        let key = miner::parse_key_hex(&key)?.0;
        let answer = host
            .offer(
                ctx(),
                api::StorageRequest {
                    bytes: a.bytes,
                    days: a.days,
                    via: None,
                },
            )
            .await?;
        let Some(bytes) = answer.signed else {
            match answer.refusal {
                Some(r) => bail!("the host makes no offer: {r}"),
                None => bail!("the host makes no offer and says no reason"),
            }
        };
        let signed = proto::offer::SignedOffer::from_bytes(&bytes)
            .context("the host's offer does not decode")?;
        let chain_id = match &a.miner {
            Some(m) => {
                let c = api::miner_client(m)
                    .await
                    .with_context(|| format!("cannot reach the miner at {m}"))?;
                c.status(ctx())
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .chain_id
            }
            None => signed.offer.chain_id,
        };
        let o = signed.check(&key, chain_id, net::now_secs(), a.bytes, u64::from(a.days))?;
        let gib = a.bytes.div_ceil(1 << 30);
        anyhow::Ok(OfferJson {
            host: hex(&o.host),
            chain_id: o.chain_id,
            id: hex(&o.id),
            price_per_gib_day: o.price_per_gib_day,
            proof_period_blocks: o.proof_period_blocks,
            max_days: o.max_days,
            bytes_max: o.bytes_max,
            deposit: o.deposit,
            expiry_unix_secs: o.expiry_unix_secs,
            total_maspc: o
                .price_per_gib_day
                .saturating_mul(gib)
                .saturating_mul(u64::from(a.days)),
            offer: hex(&bytes),
        })
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "host {} offers {} MASPC per GiB per day (this request: {} MASPC), proofs every {} \
             blocks, up to {} days and {}, backed by a deposit of {} MASP on chain {}; valid \
             until {} (Unix seconds)",
            out.host,
            out.price_per_gib_day,
            out.total_maspc,
            out.proof_period_blocks,
            out.max_days,
            format_bytes(out.bytes_max),
            out.deposit,
            out.chain_id,
            out.expiry_unix_secs
        );
    }
    Ok(())
}

fn host_run(config: &Path) -> Result<()> {
    init_logs();
    let cfg = HostConfig::load(config)?;
    let key = read_key(&cfg.key_file)?;
    for d in &cfg.data_dirs {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let shards = if cfg.shards == 0 {
        engine::seal::default_workers()
    } else {
        cfg.shards
    };
    let mut ecfg = EngineConfig::new(cfg.data_dirs.clone(), shards);
    ecfg.pin = cfg.shards == 0 && shards > 1;
    ecfg.outboard_cache_bytes = cfg.outboard_cache_mib.saturating_mul(1 << 20);
    if cfg.capacity_bytes > 0 {
        ecfg.capacity_bytes = Some(cfg.capacity_bytes);
    }
    let started = Instant::now();
    let engine = Arc::new(Engine::open(&ecfg).context("opening the chunk store")?);
    let stats = engine.stats()?;
    tracing::info!(
        chunks = stats.chunks,
        secs = started.elapsed().as_secs_f64(),
        "store open"
    );
    let state = HostState::open(&cfg.state_dir)?;
    let host = Arc::new(Host::new(
        Arc::clone(&engine),
        &key,
        state,
        cfg.limits.clone(),
        cfg.retention_days.saturating_mul(86_400),
    ));
    // A base price set from the dashboard outlives restarts (delete the file, or set an
    // empty price there, to go back to host.toml's).
    let price_file = cfg.state_dir.join("price");
    match std::fs::read_to_string(&price_file) {
        Ok(t) => {
            let p: u64 = t.trim().parse().with_context(|| {
                format!(
                    "{}: not a price (delete it to use host.toml's)",
                    price_file.display()
                )
            })?;
            host.set_price_override(Some(p));
            tracing::info!(price = p, "base price set from the dashboard earlier");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", price_file.display())),
    }
    let rt = runtime()?;
    rt.block_on(async {
        let addr = tokio::net::lookup_host(&cfg.listen)
            .await
            .with_context(|| format!("cannot resolve {}", cfg.listen))?
            .next()
            .with_context(|| format!("{} resolves to no address", cfg.listen))?;
        let (stop, stopped) = watch::channel(false);
        // One acceptor per shard, on the shard's core.
        let (bound, acceptors) = net::host::serve_on_cores(&host, addr, shards, ecfg.pin, &stopped)
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        println!(
            "host {} listening on {bound} with {shards} acceptors (links name {})",
            data_encoding::HEXLOWER.encode(&key.verification_key().to_bytes()),
            cfg.link_addr()
        );
        if let Some(m) = &cfg.metrics_listen {
            let ml = TcpListener::bind(m)
                .await
                .with_context(|| format!("cannot listen on {m} for metrics"))?;
            println!("metrics on http://{}/metrics", ml.local_addr()?);
            tokio::spawn(net::metrics::serve_metrics(
                ml,
                Arc::clone(host.metrics()),
                Arc::clone(&engine),
                cfg.data_dirs.clone(),
                Arc::clone(host.watch()),
            ));
        }
        if let Some(addr) = &cfg.dashboard_listen {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the dashboard"))?;
            println!("dashboard on http://{}/", l.local_addr()?);
            let d = net::dashboard::Dashboard {
                host: Arc::clone(&host),
                token: cfg.control_token.clone(),
                price_file: cfg.state_dir.join("price"),
                price_configured: cfg.price_per_gib_day,
                engine: Arc::clone(&engine),
                metrics: Arc::clone(host.metrics()),
                watch: Arc::clone(host.watch()),
                dirs: cfg.data_dirs.clone(),
                key: data_encoding::HEXLOWER.encode(&key.verification_key().to_bytes()),
                data_addr: cfg.link_addr().to_string(),
                follows_chain: !cfg.chain.is_empty(),
                slash_per_deal: consensus::ledger::SLASH_PER_MISSED_PROOF,
                started_ms: net::alerts::now_ms(),
            };
            tokio::spawn(async move {
                if let Err(e) = net::dashboard::serve(l, d).await {
                    tracing::error!(error = %e, "the dashboard stopped");
                }
            });
        }
        tokio::spawn(net::alerts::run(
            net::alerts::Watcher {
                engine: Arc::clone(&engine),
                dirs: cfg.data_dirs.clone(),
                chain: cfg.chain.clone(),
                host_key: key.verification_key().to_bytes(),
                watch: Arc::clone(host.watch()),
                metrics: Arc::clone(host.metrics()),
                webhook: cfg.alerts.webhook.clone(),
                every: std::time::Duration::from_secs(cfg.alerts.every_secs),
                rules: cfg.alerts.rules(),
                deposit_for: consensus::ledger::host_deposit_min,
            },
            stopped.clone(),
        ));
        if let Some(c) = &cfg.control_listen {
            let control = net::control::HostControl {
                host: Arc::clone(&host),
                key: key.clone(),
                link_addr: cfg.link_addr().to_string(),
                token: cfg.control_token.clone(),
                pricing: cfg.pricing(),
                max_days: cfg.max_days,
                proof_period_blocks: consensus::ledger::PROOF_PERIOD_BLOCKS,
                chain: cfg.chain.clone(),
                deposit_for: consensus::ledger::host_deposit_min,
                brokers: net::control::Brokers::new(cfg.commission_max_permille),
                egress_price_per_gib: cfg.egress_price_per_gib,
            };
            let (bound_tx, bound) = tokio::sync::oneshot::channel();
            let addr = c.clone();
            let bidder = net::bidder::Bidder {
                control: control.clone(),
                exchanges: cfg.exchanges.clone(),
                addr: cfg.public_control_addr.clone().unwrap_or_else(|| c.clone()),
                region: cfg.region.clone(),
                post_asks: cfg.post_asks,
                bid_on_requests: cfg.bid_on_requests,
            };
            tokio::spawn(async move {
                if let Err(e) = net::control::serve_host_control(control, &addr, bound_tx).await {
                    tracing::error!(error = %e, addr, "control plane stopped");
                }
            });
            let bound = bound
                .await
                .with_context(|| format!("cannot listen on {c} for the control plane"))?;
            println!("control plane on {bound}");
            if !bidder.exchanges.is_empty() {
                let how = match (cfg.post_asks, cfg.bid_on_requests) {
                    (true, true) => "asking and bidding on requests at",
                    (false, true) => "bidding on requests at",
                    _ => "asking",
                };
                println!(
                    "{how} {} MASPC per GiB per day on exchanges {}",
                    cfg.price_per_gib_day,
                    bidder.exchanges.join(", ")
                );
                tokio::spawn(net::bidder::run(bidder, stopped.clone()));
            }
        }
        if !cfg.chain.is_empty() {
            let (stats, _) = watch::channel(net::agent::AgentStats::default());
            tokio::spawn(net::agent::run(
                Arc::clone(&host),
                key.clone(),
                cfg.chain.clone(),
                stats,
                stopped.clone(),
            ));
            println!("agent following the chain through {}", cfg.chain.join(", "));
        }
        wait_for_signal().await;
        tracing::info!("stopping: no new connections");
        let _ = stop.send(true);
        drop(stopped);
        tokio::task::spawn_blocking(move || {
            for a in acceptors {
                let _ = a.join();
            }
        })
        .await?;
        anyhow::Ok(())
    })?;
    drop(rt);
    drop(host);
    match Arc::try_unwrap(engine) {
        Ok(e) => e.shutdown().context("closing the store")?,
        Err(_) => tracing::warn!("connections still hold the store; it closes as they end"),
    }
    Ok(())
}

/// Binds `addr` and serves `/metrics` there (`api::metrics::serve`) from a task; says where.
pub(crate) async fn serve_metrics_on(addr: &str, render: api::metrics::Render) -> Result<()> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    println!("metrics on http://{}/metrics", l.local_addr()?);
    tokio::spawn(api::metrics::serve(l, render));
    Ok(())
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn proxy(args: ProxyArgs) -> Result<()> {
    init_logs();
    runtime()?.block_on(async {
        let listener = TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let (stop, stopped) = watch::channel(false);
        let store = match &args.state {
            Some(d) => Some(
                net::redeem::ReceiptStore::open(d)
                    .with_context(|| format!("cannot use {} for receipts", d.display()))?,
            ),
            None => None,
        };
        let mut redeemer = None;
        let identity = match &args.key {
            None => net::proxy::Identity::unpaid(),
            Some(path) => {
                let key = if path.exists() {
                    read_key(path)?
                } else {
                    write_new_key(path)?
                };
                let mut chain = api::chain::ChainClient::connect(&args.chain)
                    .await
                    .with_context(|| format!("no miner answers at {}", args.chain.join(", ")))?;
                let chain_id = chain.status().await?.chain_id;
                redeemer = Some(net::redeem::Redeemer::new(
                    key.clone(),
                    chain,
                    store.clone().context("--key needs --state")?,
                ));
                net::proxy::Identity {
                    key,
                    chain_id,
                    price_per_gib: args.price_per_gib,
                }
            }
        };
        println!(
            "proxy {} on chain {} at {} MASPC per GiB",
            miner::hex(&identity.key.verification_key().to_bytes()),
            identity.chain_id,
            identity.price_per_gib
        );
        let proxy = Arc::new(net::proxy::Proxy::paid(
            Limits::default(),
            args.allow_private,
            identity,
            store,
        ));
        let redeeming = redeemer.map(|r| {
            tokio::spawn(r.run(
                std::time::Duration::from_secs(args.redeem_every),
                stopped.clone(),
            ))
        });
        println!("proxy listening on {}", listener.local_addr()?);
        let server = tokio::spawn(net::proxy::serve(Arc::clone(&proxy), listener, stopped));
        wait_for_signal().await;
        let _ = stop.send(true);
        let _ = server.await;
        if let Some(r) = redeeming {
            let _ = r.await;
        }
        tracing::info!(receipts = proxy.receipts().len(), "proxy stopped");
        anyhow::Ok(())
    })
}

/// The client's key: `path`, or `client.key` in the state directory, created on first use.
pub(crate) fn client_key(path: Option<&Path>) -> Result<SigningKey> {
    if let Some(p) = path {
        return Ok(read_key(p)?);
    }
    let dir = state_dir()?;
    let p = dir.join("client.key");
    if p.exists() {
        return Ok(read_key(&p)?);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(write_new_key(&p)?)
}

pub(crate) fn workers(n: Option<usize>) -> Result<usize> {
    match n {
        Some(0) => bail!("--workers must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(engine::seal::default_workers()),
    }
}

pub(crate) fn bar_progress(bar: &indicatif::ProgressBar) -> Arc<dyn Fn(u64, u64) + Send + Sync> {
    let bar = bar.clone();
    Arc::new(move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
}

/// A proxy that refused its receipt does not undo the transfer: say so, and go on.
fn warn_receipts(r: &net::client::Receipts) {
    for e in &r.errors {
        tracing::warn!("receipt not accepted: {e}");
    }
}

#[derive(Serialize)]
struct PutJson {
    #[serde(flatten)]
    sealed: crate::SealJson,
    link_id: String,
    sent_chunks: u64,
    skipped_chunks: u64,
    host_saw: String,
    proxy_receipts: usize,
    timings: crate::PutTimings,
}

pub fn put(args: PutArgs) -> Result<()> {
    let Some(link) = &args.link else {
        return crate::dealcli::put(args);
    };
    let link = Link::parse(link).context("reading --link")?;
    if !matches!(link.grant, Grant::Upload { .. }) {
        bail!("this is a download link; `mspace put` needs an upload link (mspace host link --upload)");
    }
    let meta = std::fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", args.file.display());
    }
    let key = client_key(args.key.as_deref())?;
    let passphrase = read_passphrase(args.passphrase_file.as_deref(), true)?;
    let job = PutJob {
        file: args.file.clone(),
        link: link.clone(),
        via: args.via.clone(),
        max_proxy_price: args.max_proxy_price,
        key,
        passphrase,
        chunk_bytes: args.chunk_size,
        workers: workers(args.workers)?,
        kdf: KdfParams::DEFAULT,
        journal_dir: state_dir()?,
        preset: None,
    };
    init_logs();
    let bar = progress_bar(meta.len(), !args.json, "uploading");
    let started = Instant::now();
    let t0 = started;
    let done = runtime()?
        .block_on(put_file(&job, bar_progress(&bar)))
        .with_context(|| format!("uploading {} to {}", args.file.display(), link.addr))?;
    bar.finish_and_clear();
    warn_receipts(&done.receipts);
    let m = &done.manifest;
    let sealed = crate::SealJson::new(
        done.file_id,
        done.manifest_id,
        &done.share_key,
        m,
        None,
        None,
    );
    if args.json {
        let json = PutJson {
            sealed,
            link_id: data_encoding::HEXLOWER.encode(&link.id),
            sent_chunks: done.sent_chunks,
            skipped_chunks: done.skipped_chunks,
            host_saw: done.peer_seen.clone(),
            proxy_receipts: done.receipts.accepted.len(),
            timings: crate::PutTimings::new(t0, None, done.first_sent),
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "uploaded {} ({}, {} chunks: {} sent, {} already on the host) to {} in {secs:.2} s ({})",
            if m.name.is_empty() { "file" } else { &m.name },
            format_bytes(m.file_bytes),
            m.chunks.len(),
            done.sent_chunks,
            done.skipped_chunks,
            link.addr,
            format_rate(m.file_bytes, secs)
        );
        println!("  manifest id  {}", done.manifest_id);
        println!("  share key    {}", done.share_key);
        println!(
            "Ask the host for a download link to manifest {} to fetch it.",
            done.manifest_id
        );
    }
    Ok(())
}

/// A deal's download link, from its host's control plane.
fn deal_download_link(deal: &str, host: &str) -> Result<String> {
    let id: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
        .decode(deal.trim().as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("--deal {deal:?} is not a 32-byte id in hex"))?;
    runtime()?.block_on(async {
        let c = api::host_client(host)
            .await
            .with_context(|| format!("cannot reach the host's control plane at {host}"))?;
        c.deal_link(tarpc::context::current(), id, true)
            .await?
            .map_err(|e| anyhow::anyhow!("the host gives no download link for the deal: {e}"))
    })
}

#[derive(Serialize)]
struct GetJson {
    #[serde(flatten)]
    opened: crate::OpenJson,
    host_saw: String,
    /// Chunks each host sent, by address.
    served: Vec<ServedJson>,
    /// Hosts left out (unreachable, or failed while sending), with why.
    lost: Vec<String>,
}

#[derive(Serialize)]
struct ServedJson {
    host: String,
    chunks: u64,
}

pub fn get(args: GetArgs) -> Result<()> {
    if let Some(first) = args.link.first() {
        let text = first.trim();
        let bound = text.starts_with(net::receive::BOUND_SHARE_PREFIX);
        if bound || text.starts_with(proto::fileshare::FILE_SHARE_PREFIX) {
            if args.link.len() > 1 || !args.deal.is_empty() || args.file.is_some() {
                bail!("a share is given alone (it names every copy of the file)");
            }
            engine::sealed_dir::check_open_target(&args.out, args.force)?;
            init_logs();
            let key = client_key(args.key.as_deref())?;
            let share = if bound {
                net::receive::open_bound_share(text, &key)?
            } else {
                text.parse().context("reading the share")?
            };
            return crate::sharecli::get_shared(&crate::sharecli::SharedGet {
                share,
                out: args.out.clone(),
                force: args.force,
                key,
                chain: args.chain.clone(),
                max_fee: args.max_fee,
                workers: workers(args.workers)?,
                via: args.via.clone(),
                max_proxy_price: args.max_proxy_price,
                json: args.json,
            });
        }
    }
    if args.deal.len() != args.host.len() {
        bail!(
            "{} --deal but {} --host: give one --host (the deal's host's control address) per --deal",
            args.deal.len(),
            args.host.len()
        );
    }
    if args.link.is_empty() && args.deal.is_empty() && args.file.is_none() {
        bail!("give a link, --deal and --host, or --file");
    }
    let mut texts = args.link.clone();
    let mut unreachable = Vec::new();
    if let Some(manifest) = &args.file {
        let state = state_dir()?;
        let record = net::record::FileRecord::load(&state, manifest.trim())?;
        for c in &record.copies {
            match &c.link {
                Some(l) => texts.push(l.clone()),
                None => unreachable.push(format!(
                    "{}: no emergency link ({})",
                    c.host_addr,
                    c.link_error.as_deref().unwrap_or("none recorded")
                )),
            }
        }
    }
    for (deal, host) in args.deal.iter().zip(&args.host) {
        match deal_download_link(deal, host) {
            Ok(t) => texts.push(t),
            // With other copies to fetch from, a host that gives no link is left out.
            Err(e) if args.deal.len() + args.link.len() > 1 => {
                unreachable.push(format!("{host}: {e:#}"));
            }
            Err(e) => return Err(e),
        }
    }
    if texts.is_empty() {
        bail!(
            "no host of the deals gives a download link: {}",
            unreachable.join("; ")
        );
    }
    for u in &unreachable {
        eprintln!("left out {u}");
    }
    let links = texts
        .iter()
        .map(|t| Link::parse(t).context("reading the link"))
        .collect::<Result<Vec<Link>>>()?;
    let link = links[0].clone();
    if !matches!(link.grant, Grant::Download { .. }) {
        bail!("this is an upload link; `mspace get` needs a download link (mspace host link --download <MANIFEST_ID>)");
    }
    engine::sealed_dir::check_open_target(&args.out, args.force)?;
    let unlock = args.unlock.read()?;
    let job = GetJob {
        links,
        via: args.via.clone(),
        max_proxy_price: args.max_proxy_price,
        key: client_key(args.key.as_deref())?,
        unlock,
        out: args.out.clone(),
        overwrite: args.force,
        workers: workers(args.workers)?,
    };
    init_logs();
    let bar = progress_bar(0, !args.json, "downloading");
    let started = Instant::now();
    let done = runtime()?
        .block_on(get_file(&job, bar_progress(&bar)))
        .with_context(|| {
            let from: Vec<&str> = job.links.iter().map(|l| l.addr.as_str()).collect();
            format!(
                "downloading from {} into {}",
                from.join(", "),
                args.out.display()
            )
        })?;
    bar.finish_and_clear();
    warn_receipts(&done.receipts);
    let m = &done.manifest;
    if args.json {
        let json = GetJson {
            opened: crate::OpenJson::new(done.file_id, done.manifest_id, m, &args.out),
            host_saw: done.peer_seen,
            served: done
                .served
                .iter()
                .map(|(h, n)| ServedJson {
                    host: h.clone(),
                    chunks: *n,
                })
                .collect(),
            lost: unreachable.iter().cloned().chain(done.lost).collect(),
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "downloaded {} ({}, {} chunks, all verified) into {} in {secs:.2} s ({})",
            if m.name.is_empty() { "file" } else { &m.name },
            format_bytes(m.file_bytes),
            m.chunks.len(),
            args.out.display(),
            format_rate(m.file_bytes, secs)
        );
        if done.served.len() > 1 {
            let from: Vec<String> = done
                .served
                .iter()
                .map(|(h, n)| format!("{n} from {h}"))
                .collect();
            println!("  chunks: {}", from.join(", "));
        }
        for l in &done.lost {
            println!("  left out {l}");
        }
    }
    Ok(())
}

/// The demo's network steps: a host (its own store) and a proxy on loopback in this
/// process, the sample uploaded through an upload link (sealed on the way), downloaded
/// through the proxy with the share key, and compared. Returns the downloaded file.
pub fn demo_network(dir: &Path, sample: &Path, pass: &[u8], step: &mut u32) -> Result<PathBuf> {
    let rt = runtime()?;
    let shards = engine::seal::default_workers();
    let mut ecfg = EngineConfig::new(vec![dir.join("host-data")], shards);
    ecfg.maintenance_every = None;
    let engine = Arc::new(Engine::open(&ecfg)?);
    let key = SigningKey::new(rand_core::OsRng);
    let state = HostState::open(&dir.join("host-state"))?;
    let host = Arc::new(Host::new(
        Arc::clone(&engine),
        &key,
        state,
        Limits::default(),
        86_400,
    ));
    let out = dir.join("downloaded.bin");
    rt.block_on(async {
        let (_stop, stopped) = watch::channel(false);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let host_addr = listener.local_addr()?.to_string();
        tokio::spawn(net::host::serve(Arc::clone(&host), listener, stopped.clone()));
        // The proxy listens on a loopback address of its own, so the host sees it apart.
        let proxy_listener = match TcpListener::bind("127.0.0.2:0").await {
            Ok(l) => l,
            Err(_) => TcpListener::bind("127.0.0.1:0").await?,
        };
        let proxy_addr = proxy_listener.local_addr()?.to_string();
        let proxy = Arc::new(net::proxy::Proxy::new(Limits::default(), true));
        tokio::spawn(net::proxy::serve(Arc::clone(&proxy), proxy_listener, stopped));
        let expiry = net::now_secs() + 600;
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let up = Link::sign(&key, &host_addr, Grant::Upload { bytes_max: 64 << 30 }, None, expiry, id)?;
        println!("{step}. started a host on {host_addr} and a proxy on {proxy_addr}; the host signed an upload link:\n   {up}");
        *step += 1;

        let client = SigningKey::new(rand_core::OsRng);
        let t = Instant::now();
        let job = PutJob {
            file: sample.to_owned(),
            link: up,
            via: Vec::new(),
            max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
            key: client.clone(),
            passphrase: zeroize::Zeroizing::new(pass.to_vec()),
            chunk_bytes: proto::CHUNK_BYTES_DEFAULT,
            workers: engine::seal::default_workers(),
            kdf: KdfParams::DEFAULT,
            journal_dir: dir.join("client-state"),
            preset: None,
        };
        let done = put_file(&job, Arc::new(|_, _| {})).await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{step}. `mspace put`: read, sealed and uploaded {} in one pass, {} chunks, no encrypted copy on disk ({secs:.2} s, {}); the host signed for the file",
            format_bytes(done.manifest.file_bytes),
            done.manifest.chunks.len(),
            format_rate(done.manifest.file_bytes, secs)
        );
        *step += 1;

        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        let down = Link::sign(&key, &host_addr, Grant::Download { manifest: done.manifest_id }, None, expiry, id)?;
        let t = Instant::now();
        let job = GetJob {
            links: vec![down],
            via: vec![proxy_addr.clone()],
            max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
            key: client,
            unlock: Key::Share(Box::new(done.share_key.clone())),
            out: out.clone(),
            overwrite: true,
            workers: engine::seal::default_workers(),
        };
        let got = get_file(&job, Arc::new(|_, _| {})).await?;
        let secs = t.elapsed().as_secs_f64();
        if !got.peer_seen.starts_with(proxy_addr.split(':').next().unwrap_or("")) {
            bail!("the host saw {} instead of the proxy", got.peer_seen);
        }
        println!(
            "{step}. `mspace get` through the proxy with the share key: verified and decrypted into {} ({secs:.2} s, {}); the host saw only the proxy ({}), which holds {} signed receipt(s) for the bytes it relayed",
            out.display(),
            format_rate(got.manifest.file_bytes, secs),
            got.peer_seen,
            proxy.receipts().len()
        );
        *step += 1;
        anyhow::Ok(())
    })?;
    drop(rt);
    drop(host);
    if let Ok(e) = Arc::try_unwrap(engine) {
        e.shutdown()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_like_people_write_them() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["", "10", "m", "1w", "0s", "-5m", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
