//! `mspace insure init|run|register|unbond|withdraw|status`: wiring for the `insurer` crate.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use insurer::{Config, Insurer};

use crate::netcli::{init_logs, runtime, wait_for_signal};

#[derive(Args, Debug)]
pub struct InsureArgs {
    #[command(subcommand)]
    action: InsureAction,
}

#[derive(Subcommand, Debug)]
enum InsureAction {
    /// Write a commented default configuration and a new key (refused if the file exists).
    Init(InitArgs),
    /// Run the insurer: senders ask it for quotes before they pay a deal.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Register this insurer on the chain with a deposit (MASP), from its key: the
    /// deposit bounds the cover it can sell and pays its claims.
    Register(crate::registry::RegistryArgs),
    /// Start unbonding (refused by the chain while any cover sold still runs).
    Unbond(crate::registry::RegistryArgs),
    /// Take back the deposit once unbonding is over.
    Withdraw(crate::registry::RegistryArgs),
    /// Ask a running insurer for its deposit, exposure, policy and counters.
    Status {
        /// The insurer's address (host:port).
        #[arg(long)]
        insurer: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct InitArgs {
    #[arg(long)]
    config: PathBuf,
    /// Address to serve quotes on.
    #[arg(long, default_value = "127.0.0.1:7600")]
    listen: String,
    /// A miner's control address (repeat: the first that answers is used).
    #[arg(long, required = true)]
    chain: Vec<String>,
    /// Premium per day of cover, in millionths of the cover, for a host rated 1000 (a
    /// host rated 0 pays twice this; one whose deposit is under the cover, 1.5 x more).
    #[arg(long, default_value_t = insurer::PolicyConfig::default().rate_ppm_per_day)]
    rate_ppm_per_day: u64,
    /// Hosts rated lower on the chain are not covered (0 to 1000).
    #[arg(long, default_value_t = insurer::PolicyConfig::default().min_rating)]
    min_rating: u32,
    /// The most cover sold on one deal (MASP).
    #[arg(long, default_value_t = insurer::PolicyConfig::default().max_cover_per_deal)]
    max_cover_per_deal: u64,
}

pub fn insure(args: InsureArgs) -> Result<()> {
    match args.action {
        InsureAction::Init(a) => init(&a),
        InsureAction::Run { config } => run(&config),
        InsureAction::Status { insurer, json } => status(&insurer, json),
        InsureAction::Register(a) => registry(crate::registry::Op::Register, &a),
        InsureAction::Unbond(a) => registry(crate::registry::Op::Unbond, &a),
        InsureAction::Withdraw(a) => registry(crate::registry::Op::Withdraw, &a),
    }
}

fn registry(op: crate::registry::Op, a: &crate::registry::RegistryArgs) -> Result<()> {
    let cfg = Config::load(&a.config)?;
    let key = net::config::read_key(&cfg.key_file)?;
    crate::registry::run(
        proto::tx::Role::Insurer,
        op,
        &key,
        cfg.registered_addr(),
        &cfg.chain,
        a,
    )
}

fn init(a: &InitArgs) -> Result<()> {
    let chain = a
        .chain
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"# Market.space insurer configuration (mspace insure run --config <this file>).

# Senders ask for quotes here (InsurerApi, tarpc).
listen = "{listen}"

# Miners' control addresses: hosts' ratings and deposits, and this insurer's own deposit
# and exposure, are read there.
chain = [{chain}]

# The insurer's key: its account on the chain (`mspace insure register --deposit N`),
# paid the premiums and charged the claims. Keep it secret, keep a backup.
key_file = "insurer.key"

# The address the registration names, if senders reach this insurer by another name.
# public_addr = "insurer.example.net:7600"

# How cover is priced: premium = cover x rate_ppm_per_day x started days / 1,000,000,
# x (2000 - host rating) / 1000, x 1.5 if the host's deposit is under the cover; at least 1.
# Cover is refused for hosts rated under min_rating, above max_cover_per_deal, and beyond
# the deposit less the cover already sold or quoted. A quote is good for quote_life_secs.
[policy]
rate_ppm_per_day = {rate}
min_rating = {min_rating}
max_cover_per_deal = {max_cover}
quote_life_secs = {life}
"#,
        listen = a.listen,
        rate = a.rate_ppm_per_day,
        min_rating = a.min_rating,
        max_cover = a.max_cover_per_deal,
        life = insurer::QUOTE_LIFE_SECS_DEFAULT,
    );
    let parsed: Config =
        toml::from_str(&text).context("the configuration written does not parse")?;
    parsed.check().map_err(anyhow::Error::msg)?;
    crate::registry::write_config(
        &a.config,
        "insurer",
        &text,
        &format!(
            "fund it, then: mspace insure register --config {0} --deposit N; mspace insure run --config {0}",
            a.config.display()
        ),
    )
}

fn run(config: &std::path::Path) -> Result<()> {
    let cfg = Config::load(config)?;
    init_logs();
    runtime()?.block_on(async {
        let chain = api::chain::ChainClient::connect(&cfg.chain)
            .await
            .with_context(|| format!("no miner answers at {}", cfg.chain.join(", ")))?;
        let key = net::config::read_key(&cfg.key_file)?;
        let ins = Insurer::new(key, cfg.policy, chain)
            .await
            .map_err(anyhow::Error::msg)?;
        let (bound_tx, bound) = tokio::sync::oneshot::channel();
        let l = cfg.listen.clone();
        let serve = tokio::spawn(api::serve_control!(
            api::InsurerApi::serve(ins),
            l,
            bound_tx
        ));
        let Ok(bound) = bound.await else {
            let e = serve.await?;
            return Err(anyhow::anyhow!("cannot listen on {}: {e:?}", cfg.listen));
        };
        println!("insurer listening on {bound}");
        wait_for_signal().await;
        anyhow::Ok(())
    })
}

#[derive(serde::Serialize)]
struct StatusJson {
    key: String,
    chain_id: u64,
    version: String,
    deposit: u64,
    exposure: u64,
    free: u64,
    rate_ppm_per_day: u64,
    min_rating: u32,
    max_cover_per_deal: u64,
    quote_life_secs: u64,
    quoted: u64,
    refused: std::collections::BTreeMap<String, u64>,
}

fn status(addr: &str, json: bool) -> Result<()> {
    let s = runtime()?.block_on(async {
        let c = api::insurer_client(addr)
            .await
            .with_context(|| format!("cannot reach the insurer at {addr}"))?;
        anyhow::Ok(c.status(tarpc::context::current()).await?)
    })?;
    let p = &s.policy;
    if json {
        let j = StatusJson {
            key: miner::hex(&s.key),
            chain_id: s.chain_id,
            version: s.version.clone(),
            deposit: s.deposit,
            exposure: s.exposure,
            free: s.free,
            rate_ppm_per_day: p.rate_ppm_per_day,
            min_rating: p.min_rating,
            max_cover_per_deal: p.max_cover_per_deal,
            quote_life_secs: p.quote_life_secs,
            quoted: s.quoted,
            refused: s.refused.iter().cloned().collect(),
        };
        println!("{}", serde_json::to_string(&j)?);
        return Ok(());
    }
    println!(
        "insurer {addr} (version {}), chain {}, key {}",
        s.version,
        s.chain_id,
        miner::hex(&s.key)
    );
    println!(
        "deposit {} MASP, covering {} MASP of running deals, {} MASP free for new cover",
        s.deposit, s.exposure, s.free
    );
    println!(
        "policy: {} ppm of the cover per day, hosts rated {} or more, at most {} MASP per deal, quotes good {} s",
        p.rate_ppm_per_day, p.min_rating, p.max_cover_per_deal, p.quote_life_secs
    );
    println!("quotes given: {}", s.quoted);
    for (why, n) in &s.refused {
        println!("refused ({why}): {n}");
    }
    Ok(())
}
