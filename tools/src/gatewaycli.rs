//! `mspace gateway init|run`: wiring for the `gateway` crate (an S3 endpoint that seals
//! objects on this machine and stores them on a host).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use gateway::GatewayConfig;

use crate::netcli::{init_logs, runtime, wait_for_signal};

#[derive(Args, Debug)]
pub struct GatewayArgs {
    #[command(subcommand)]
    action: GatewayAction,
}

#[derive(Subcommand, Debug)]
enum GatewayAction {
    /// Write a commented default configuration, a key and an S3 secret (refused if the
    /// configuration exists), and print the credentials for S3 clients.
    Init(InitArgs),
    /// Serve S3 (path-style, SigV4) until interrupted.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args, Debug)]
struct InitArgs {
    #[arg(long)]
    config: PathBuf,
    /// Address to serve S3 on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Store on one host through links it mints: its control address (`control_listen`
    /// in its host.toml).
    #[arg(long, requires = "host_token", conflicts_with_all = ["chain", "deal_host"])]
    host_control: Option<String>,
    /// The host's control token (`control_token` in its host.toml).
    #[arg(long, env = "MSPACE_HOST_TOKEN", hide_env_values = true)]
    host_token: Option<String>,
    /// Store as paid deals instead: a miner's control address (repeat: the first that
    /// answers is used).
    #[arg(long, requires = "days")]
    chain: Vec<String>,
    /// With --chain: a host's control address to keep one copy of each object on (repeat
    /// for more copies).
    #[arg(long, conflicts_with = "deal_index")]
    deal_host: Vec<String>,
    /// With --chain, instead of --deal-host: an index of exchanges (repeat for more); each
    /// object's hosts are matched on the nearest live exchange it lists.
    #[arg(long)]
    deal_index: Vec<String>,
    /// With --deal-index: copies (hosts) per object.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    copies: u8,
    /// With --chain: erasure shares K/N instead of copies (N --deal-host, or N hosts
    /// matched through --deal-index): any K of the N hosts rebuild each object.
    #[arg(long, requires = "chain", conflicts_with = "copies")]
    erasure: Option<proto::erasure::Scheme>,
    /// With --chain: days each object is stored.
    #[arg(long)]
    days: Option<u32>,
}

pub fn gateway(args: GatewayArgs) -> Result<()> {
    match args.action {
        GatewayAction::Init(a) => init(&a),
        GatewayAction::Run { config } => run(&config),
    }
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    b
}

fn init(a: &InitArgs) -> Result<()> {
    if a.config.exists() {
        anyhow::bail!("{} exists; it is never replaced", a.config.display());
    }
    let base = crate::netcli::config_folder(&a.config)?;
    let access = format!("MS{}", data_encoding::BASE32_NOPAD.encode(&random(10)));
    let secret = data_encoding::BASE64URL_NOPAD.encode(&random(30));
    let store = match (&a.host_control, &a.host_token, a.days) {
        (Some(c), Some(t), _) => GatewayConfig::host_table(c, t),
        (None, _, Some(days))
            if !a.chain.is_empty() && (!a.deal_host.is_empty() || !a.deal_index.is_empty()) =>
        {
            GatewayConfig::deals_table(
                &a.chain,
                &a.deal_host,
                &a.deal_index,
                a.copies,
                days,
                a.erasure,
            )
        }
        _ => anyhow::bail!(
            "name where objects go: --host-control ADDR --host-token TOKEN (one host, through links), or --chain MINER --days D with --deal-host HOST (paid deals on these hosts) or --deal-index INDEX [--copies N] (hosts matched per object)"
        ),
    };
    let text = GatewayConfig::default_text(&a.listen, &access, &store);
    let parsed: GatewayConfig =
        toml::from_str(&text).context("the configuration written does not parse")?;
    api::config::RoleConfig::check(&parsed).map_err(anyhow::Error::msg)?;
    let secret_file = base.join("gateway.secret");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret_file)
        .with_context(|| format!("create {}", secret_file.display()))?;
    writeln!(f, "{secret}").with_context(|| format!("write {}", secret_file.display()))?;
    crate::registry::write_config(
        &a.config,
        "gateway",
        &text,
        &format!(
            "S3 credentials: access key {access}, secret in {}\nrun it with: mspace gateway run --config {}",
            secret_file.display(),
            a.config.display()
        ),
    )
}

fn run(config: &std::path::Path) -> Result<()> {
    let cfg = GatewayConfig::load(config)?;
    init_logs();
    runtime()?.block_on(async {
        let gw = gateway::Gateway::open(&cfg).await?;
        let addr = gw.local_addr()?;
        if let Some(m) = gw.metrics_addr() {
            println!("metrics on http://{m}/metrics");
        }
        let placement = match (&cfg.host, &cfg.deals) {
            (Some(h), _) => format!("on the host at {}", h.control),
            (None, Some(d)) if d.hosts.is_empty() => format!(
                "as deals of {} days, {} each on hosts matched through {} (paid through {})",
                d.days,
                match &d.erasure {
                    Some(e) => format!("erasure {e} shares"),
                    None if d.copies == 1 => "1 copy".to_owned(),
                    None => format!("{} copies", d.copies),
                },
                d.index
                    .iter()
                    .map(|i| format!("index {i}"))
                    .chain(d.exchanges.iter().map(|x| format!("exchange {x}")))
                    .collect::<Vec<_>>()
                    .join(", "),
                d.chain.join(", ")
            ),
            (None, Some(d)) => format!(
                "as deals of {} days on {}{} (paid through {})",
                d.days,
                d.hosts.join(", "),
                d.erasure
                    .as_ref()
                    .map_or(String::new(), |e| format!(", erasure {e} shares")),
                d.chain.join(", ")
            ),
            (None, None) => String::new(),
        };
        println!(
            "S3 gateway on http://{addr} (access key {}), storing {placement}",
            cfg.access_key
        );
        let serve = tokio::spawn(gw.serve());
        tokio::select! {
            r = serve => r?.context("serving S3")?,
            () = wait_for_signal() => {}
        }
        anyhow::Ok(())
    })
}
