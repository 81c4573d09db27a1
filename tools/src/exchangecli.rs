//! `mspace exchange init|run|status|register|unbond|withdraw` and `mspace index run|status`:
//! wiring for the `exchange` crate.

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use exchange::{Config, Exchange};

use crate::netcli::{init_logs, runtime, wait_for_signal};

#[derive(Args, Debug)]
pub struct ExchangeArgs {
    #[command(subcommand)]
    action: ExchangeAction,
}

#[derive(Subcommand, Debug)]
enum ExchangeAction {
    /// Write a commented default configuration (refused if the file exists).
    Init(InitArgs),
    /// Run the exchange: hosts post their asks, senders' requests are matched.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Register this exchange on the chain with a deposit (MASP), from its key: indexes
    /// list only registered exchanges.
    Register(crate::registry::RegistryArgs),
    /// Start unbonding this exchange's deposit.
    Unbond(crate::registry::RegistryArgs),
    /// Take back this exchange's deposit once unbonding is over.
    Withdraw(crate::registry::RegistryArgs),
    /// Ask a running exchange for its profile, its book and its counters.
    Status {
        /// The exchange's address (host:port).
        #[arg(long)]
        exchange: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct InitArgs {
    #[arg(long)]
    config: PathBuf,
    /// Address to serve hosts and senders on.
    #[arg(long, default_value = "127.0.0.1:7500")]
    listen: String,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, required = true)]
    chain: Vec<String>,
    /// The usage profile: smallest request taken, in bytes.
    #[arg(long, default_value_t = 0)]
    min_bytes: u64,
    #[arg(long, default_value_t = 1)]
    min_days: u32,
    #[arg(long, default_value_t = 36_500)]
    max_days: u32,
    /// A region served (repeat; none: any).
    #[arg(long)]
    region: Vec<String>,
    /// The commission hosts matched here pay, in thousandths of what they earn from each
    /// deal (paid to the exchange's account by the chain).
    #[arg(long, default_value_t = exchange::COMMISSION_PERMILLE_DEFAULT)]
    commission_permille: u16,
    /// How long a request waits for the bids of hosts that bid request by request, in
    /// milliseconds (0: requests are matched on the standing asks alone).
    #[arg(long, default_value_t = exchange::BID_WINDOW_MS_DEFAULT)]
    bid_window_ms: u64,
    /// An index to keep this exchange listed on (repeat).
    #[arg(long)]
    index: Vec<String>,
    /// Run as one of the exchange's replicas: every replica as ID=IP:PORT, the address
    /// replicas reach it on (repeat, 3 or 5 times; the same list for every replica).
    #[arg(long, value_name = "ID=IP:PORT", requires = "replica_id")]
    replica: Vec<String>,
    /// This replica's ID among --replica.
    #[arg(long, requires = "replica")]
    replica_id: Option<u64>,
}

pub fn exchange(args: ExchangeArgs) -> Result<()> {
    match args.action {
        ExchangeAction::Init(a) => init(&a),
        ExchangeAction::Run { config } => run(&config),
        ExchangeAction::Status { exchange, json } => status(&exchange, json),
        ExchangeAction::Register(a) => registry(crate::registry::Op::Register, &a),
        ExchangeAction::Unbond(a) => registry(crate::registry::Op::Unbond, &a),
        ExchangeAction::Withdraw(a) => registry(crate::registry::Op::Withdraw, &a),
    }
}

fn registry(op: crate::registry::Op, a: &crate::registry::RegistryArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let key = net::config::read_key(&cfg.key_file)?;
    crate::registry::run(
        proto::tx::Role::Exchange,
        op,
        &key,
        cfg.listed_addr(),
        &cfg.chain,
        a,
    )
}

fn init(a: &InitArgs) -> Result<()> {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        r#"# Market.space exchange configuration (mspace exchange run --config <this file>).

# Hosts post their asks and senders their requests here (ExchangeApi, tarpc).
listen = "{listen}"

# Miners' control addresses: asking hosts must be registered there, senders must have an
# account there.
chain = [{chain}]

# The exchange's key: its account on the chain (`mspace exchange register`), and the
# signer of its listings on indexes. Keep it secret, keep a backup.
key_file = "exchange.key"

# Indexes to keep this exchange listed on (re-listed every 10 s), so senders find it.
indexes = [{indexes}]
# Where the exchange is (e.g. "eu-west"); empty: unsaid.
region = ""
# The address its listings give, if senders reach it by another name than `listen`.
# public_addr = "exchange.example.net:7500"
# Prometheus metrics at http://<metrics_listen>/metrics (the book, matches, refusals).
# metrics_listen = "127.0.0.1:9403"

# The usage profile: every request outside it is refused, naming the term.
[profile]
# Smallest request taken, in bytes (0: any).
min_bytes = {min_bytes}
# Storage lengths taken, in days.
min_days = {min_days}
max_days = {max_days}
# Regions served (empty: any).
regions = [{regions}]
# The commission a host matched here pays, in thousandths of each part of the deal's fee
# it earns: the host's offer names it, the sender's payment carries it, the chain pays it
# to this exchange's account.
commission_permille = {commission_permille}
# How long a request waits for the bids of the hosts watching for requests here (each
# answers with a bid or a pass; it waits only until all have), in milliseconds; 0: none
# forwarded, matched on the standing asks alone.
bid_window_ms = {bid_window_ms}

# Flood control: requests a minute per key and per address (more are refused until the
# minute is over), and a ban of ban_secs for a key whose last strikes_to_ban answered
# requests in a row were followed by no deal with the hosts matched.
[flood]
per_key_per_min = 60
per_addr_per_min = 240
strikes_to_ban = 20
ban_secs = 3600
"#,
        listen = a.listen,
        commission_permille = a.commission_permille,
        bid_window_ms = a.bid_window_ms,
        chain = list(&a.chain),
        min_bytes = a.min_bytes,
        min_days = a.min_days,
        max_days = a.max_days,
        regions = list(&a.region),
        indexes = list(&a.index),
    ) + &replication_text(a)?;
    let parsed: Config =
        toml::from_str(&text).context("the configuration written does not parse")?;
    parsed.check().map_err(anyhow::Error::msg)?;
    crate::registry::write_config(
        &a.config,
        "exchange",
        &text,
        &format!(
            "run it with: mspace exchange run --config {}",
            a.config.display()
        ),
    )
}

/// The `[replication]` section `init` writes for `--replica`, if any.
fn replication_text(a: &InitArgs) -> Result<String> {
    let Some(id) = a.replica_id else {
        return Ok(String::new());
    };
    let mut rows = String::new();
    for r in &a.replica {
        let (rid, addr) = r
            .split_once('=')
            .with_context(|| format!("--replica {r}: write ID=IP:PORT"))?;
        let rid: u64 = rid
            .parse()
            .with_context(|| format!("--replica {r}: the ID is a number"))?;
        rows.push_str(&format!(
            "[[replication.replicas]]\nid = {rid}\nraft = {addr:?}\n\n"
        ));
    }
    Ok(format!(
        r#"
# This exchange runs as several replicas (Raft, among machines you run): its book, the
# requests it answered and its bans survive the loss of a minority of them. Every replica
# holds the same key_file (copy it), lists the same replicas and has its own id; only the
# leader keeps the exchange listed on the indexes. Keep the raft addresses on your own
# network: replicas trust each other.
[replication]
id = {id}
# This replica's Raft log, vote and snapshot.
raft_file = "exchange-raft.redb"

{rows}"#
    ))
}

fn run(config: &std::path::Path) -> Result<()> {
    let cfg = Config::load(config)?;
    init_logs();
    runtime()?.block_on(async {
        let chain = api::chain::ChainClient::connect(&cfg.chain)
            .await
            .with_context(|| format!("no miner answers at {}", cfg.chain.join(", ")))?;
        let key = net::config::read_key(&cfg.key_file)?;
        let public = key.verification_key().to_bytes();
        let ex = match &cfg.replication {
            None => Exchange::new(public, cfg.profile.clone(), cfg.flood.policy(), chain).await,
            Some(r) => {
                let replica = exchange::replica::Replica::start(
                    r,
                    &r.raft_file,
                    cfg.flood.policy(),
                    &key.to_bytes(),
                )
                .await
                .map_err(anyhow::Error::msg)?;
                println!(
                    "exchange replica {} of {:?}, raft on {}",
                    r.id,
                    r.replicas.iter().map(|r| r.id).collect::<Vec<_>>(),
                    r.own_addr()
                );
                let (profile, flood) = (cfg.profile.clone(), cfg.flood.policy());
                Exchange::replicated(public, profile, flood, chain, replica).await
            }
        }
        .map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.listen))?;
        let bound = listener.local_addr()?;
        if !cfg.indexes.is_empty() {
            let lister = exchange::lister::Lister {
                key,
                chain_id: ex.chain_id(),
                addr: cfg.listed_addr().to_owned(),
                region: cfg.region.clone(),
                indexes: cfg.indexes.clone(),
            };
            match ex.replica() {
                None => tokio::spawn(exchange::lister::run(lister)),
                Some(r) => tokio::spawn(exchange::lister::run_while_leading(lister, r.leading())),
            };
        }
        if let Some(m) = &cfg.metrics_listen {
            let ex = ex.clone();
            crate::netcli::serve_metrics_on(
                m,
                Arc::new(move || {
                    let text = ex.render_metrics();
                    Box::pin(async move { text })
                }),
            )
            .await?;
        }
        tokio::spawn(exchange::serve(ex.clone(), listener));
        println!("exchange listening on {bound}");
        wait_for_signal().await;
        if let Some(r) = ex.replica() {
            r.shutdown().await;
        }
        anyhow::Ok(())
    })
}

fn status(addr: &str, json: bool) -> Result<()> {
    let s = runtime()?.block_on(async {
        let c = api::exchange_client(addr)
            .await
            .with_context(|| format!("cannot reach the exchange at {addr}"))?;
        anyhow::Ok(c.status(tarpc::context::current()).await?)
    })?;
    if json {
        println!("{}", serde_json::to_string(&StatusJson::from(&s))?);
        return Ok(());
    }
    let p = &s.profile;
    println!(
        "exchange {addr} (version {}), chain {}, key {}",
        s.version,
        s.chain_id,
        miner::hex(&s.key)
    );
    println!(
        "profile: requests of at least {} bytes, {} to {} days, regions {}",
        p.min_bytes,
        p.min_days,
        p.max_days,
        if p.regions.is_empty() {
            "any".to_owned()
        } else {
            p.regions.join(", ")
        }
    );
    println!(
        "commission: {} per mille of what a matched host earns",
        p.commission_permille
    );
    println!("{} ask(s) on the book:", s.asks.len());
    for a in &s.asks {
        println!(
            "  {} at {}: {} MASPC per GiB per day, rating {}, region {}, deposit {} MASP, room {}",
            miner::hex(&a.host),
            a.addr,
            a.price_per_gib_day,
            a.rating,
            if a.region.is_empty() { "-" } else { &a.region },
            a.deposit,
            crate::format_bytes(a.bytes)
        );
    }
    println!("requests matched: {}", s.requests_matched);
    println!(
        "bidding request by request: {} host(s) watching, bid window {} ms, {} request(s) forwarded, {} bid(s), {} pass(es), {} host(s) matched by a bid",
        s.watchers, p.bid_window_ms, s.requests_forwarded, s.bids, s.passes, s.bids_matched
    );
    for (why, n) in &s.refused {
        println!("refused ({why}): {n}");
    }
    if let Some(r) = &s.replica {
        println!(
            "replica {} of {:?}: leader {}, term {}, log applied through {}",
            r.id,
            r.replicas,
            r.leader
                .map_or_else(|| "unknown (an election?)".to_owned(), |l| l.to_string()),
            r.term,
            r.last_applied
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        );
    }
    Ok(())
}

/// A host on an exchange's book, or matched there, for people and scripts.
#[derive(serde::Serialize)]
pub(crate) struct AskJson {
    pub host: String,
    pub addr: String,
    pub price_per_gib_day: u64,
    pub rating: u32,
    pub region: String,
    pub deposit: u64,
}

impl From<&api::ExchangeMatch> for AskJson {
    fn from(a: &api::ExchangeMatch) -> Self {
        AskJson {
            host: miner::hex(&a.host),
            addr: a.addr.clone(),
            price_per_gib_day: a.price_per_gib_day,
            rating: a.rating,
            region: a.region.clone(),
            deposit: a.deposit,
        }
    }
}

/// An ask on the book, as `exchange status --json` prints it.
#[derive(serde::Serialize)]
struct BookAskJson {
    #[serde(flatten)]
    ask: AskJson,
    /// The room left on it: what the host stated, less what matches took since.
    free_bytes: u64,
}

#[derive(serde::Serialize)]
struct StatusJson {
    key: String,
    chain_id: u64,
    version: String,
    min_bytes: u64,
    min_days: u32,
    max_days: u32,
    regions: Vec<String>,
    commission_permille: u16,
    bid_window_ms: u64,
    asks: Vec<BookAskJson>,
    requests_matched: u64,
    watchers: u32,
    requests_forwarded: u64,
    bids: u64,
    passes: u64,
    bids_matched: u64,
    refused: std::collections::BTreeMap<String, u64>,
    /// This process's place among the exchange's replicas (null: it runs alone).
    replica: Option<api::ExchangeReplica>,
}

impl From<&api::ExchangeStatus> for StatusJson {
    fn from(s: &api::ExchangeStatus) -> Self {
        StatusJson {
            key: miner::hex(&s.key),
            chain_id: s.chain_id,
            version: s.version.clone(),
            min_bytes: s.profile.min_bytes,
            min_days: s.profile.min_days,
            max_days: s.profile.max_days,
            regions: s.profile.regions.clone(),
            commission_permille: s.profile.commission_permille,
            bid_window_ms: s.profile.bid_window_ms,
            asks: s
                .asks
                .iter()
                .map(|a| BookAskJson {
                    ask: a.into(),
                    free_bytes: a.bytes,
                })
                .collect(),
            requests_matched: s.requests_matched,
            watchers: s.watchers,
            requests_forwarded: s.requests_forwarded,
            bids: s.bids,
            passes: s.passes,
            bids_matched: s.bids_matched,
            refused: s.refused.iter().cloned().collect(),
            replica: s.replica.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    action: IndexAction,
}

#[derive(Subcommand, Debug)]
enum IndexAction {
    /// Write a commented configuration (refused if the file exists).
    Init {
        #[arg(long)]
        config: PathBuf,
        /// Address to serve exchanges and senders on.
        #[arg(long, default_value = "127.0.0.1:7600")]
        listen: String,
        /// A miner's control address (repeat: the first that answers is used).
        #[arg(long, required = true)]
        chain: Vec<String>,
    },
    /// Run an index: exchanges registered on the chain list themselves here (signed,
    /// renewed), senders ask which are alive. From `--config` (with `MSPACE_INDEX__*`
    /// overrides), or from `--listen` and `--chain`.
    Run {
        #[arg(long, conflicts_with_all = ["listen", "chain"])]
        config: Option<PathBuf>,
        /// Address to serve exchanges and senders on [default: 127.0.0.1:7600].
        #[arg(long)]
        listen: Option<String>,
        /// A miner's control address (repeat: the first that answers is used).
        #[arg(long)]
        chain: Vec<String>,
    },
    /// The live exchanges an index lists.
    Status {
        #[arg(long)]
        index: String,
        #[arg(long)]
        json: bool,
    },
}

pub fn index(args: IndexArgs) -> Result<()> {
    match args.action {
        IndexAction::Init {
            config,
            listen,
            chain,
        } => {
            crate::netcli::config_folder(&config)?;
            let text = exchange::index::IndexConfig::default_text(&listen, &chain);
            exchange::index::IndexConfig::parse(&text).map_err(anyhow::Error::msg)?;
            std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
            println!("wrote {}", config.display());
            println!(
                "run it with: mspace index run --config {}",
                config.display()
            );
            Ok(())
        }
        IndexAction::Run {
            config,
            listen,
            chain,
        } => {
            let (listen, chain) = match config {
                Some(path) => {
                    let c =
                        exchange::index::IndexConfig::load(&path).map_err(anyhow::Error::msg)?;
                    (c.listen, c.chain)
                }
                None if chain.is_empty() => {
                    anyhow::bail!("give --config FILE (mspace index init), or --chain MINER")
                }
                None => (listen.unwrap_or_else(|| "127.0.0.1:7600".into()), chain),
            };
            init_logs();
            runtime()?.block_on(async {
                let c = api::chain::ChainClient::connect(&chain)
                    .await
                    .with_context(|| format!("no miner answers at {}", chain.join(", ")))?;
                let ix = exchange::index::Index::new(c)
                    .await
                    .map_err(anyhow::Error::msg)?;
                let (bound_tx, bound) = tokio::sync::oneshot::channel();
                let l = listen.clone();
                let serve =
                    tokio::spawn(api::serve_control!(api::IndexApi::serve(ix), l, bound_tx));
                let Ok(bound) = bound.await else {
                    let e = serve.await?;
                    return Err(anyhow::anyhow!("cannot listen on {listen}: {e:?}"));
                };
                println!("index listening on {bound}");
                wait_for_signal().await;
                anyhow::Ok(())
            })
        }
        IndexAction::Status { index, json } => {
            let list = runtime()?.block_on(async {
                let c = api::index_client(&index)
                    .await
                    .with_context(|| format!("cannot reach the index at {index}"))?;
                anyhow::Ok(c.exchanges(tarpc::context::current()).await?)
            })?;
            let rows: Vec<ListedJson> = list.iter().map(ListedJson::from).collect();
            if json {
                println!("{}", serde_json::to_string(&rows)?);
            } else {
                println!("{} live exchange(s) on {index}:", rows.len());
                for r in &rows {
                    println!(
                        "  {} at {} (region {}), listed until {}",
                        r.key,
                        r.addr,
                        if r.region.is_empty() { "-" } else { &r.region },
                        r.expiry_unix_secs
                    );
                }
            }
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
struct ListedJson {
    key: String,
    addr: String,
    region: String,
    expiry_unix_secs: u64,
}

impl From<&api::ExchangeInfo> for ListedJson {
    fn from(e: &api::ExchangeInfo) -> Self {
        ListedJson {
            key: miner::hex(&e.key),
            addr: e.addr.clone(),
            region: e.region.clone(),
            expiry_unix_secs: e.expiry_unix_secs,
        }
    }
}
