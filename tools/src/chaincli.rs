//! The chain's commands: `mspace miner` (a validator), `mspace devnet` (a local network of
//! miner processes), and `mspace chain ...` (a client: status, account, deal, block,
//! transfer). The miner wires `consensus::node` (malachite) to its control plane
//! (`api::MinerApi`, tarpc).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use api::chain::{context_for, ChainClient, Committed};
use api::{miner_client, BlockView, MinerApi};
use clap::{Args, Subcommand};
use consensus::ledger::Genesis;
use consensus::node::{ChainParams, NodeConfig, NodeHandle, NodeState};
use ed25519_consensus::SigningKey;
use miner::{
    hex, parse_key_hex, GenesisAccount, GenesisFile, GenesisValidator, MinerConfig, MinerService,
    Relay,
};
use net::config::{read_key, write_new_key};
use proto::tx::{AccountId, Asset, Tx, TxBody};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::registry::Op;

// ---------------------------------------------------------------------------------------
// `mspace miner`

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MinerArgs {
    #[command(subcommand)]
    action: Option<MinerAction>,
    /// The miner's configuration file (written by `mspace miner init`).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum MinerAction {
    /// Write a commented default configuration and a new validator key.
    Init(MinerInitArgs),
    /// Register this miner's key as a validator with a stake (MASP); it votes from the next
    /// epoch on.
    Register(crate::registry::RegistryArgs),
    /// Start unbonding this miner's stake (it stops voting at the next epoch).
    Unbond(crate::registry::RegistryArgs),
    /// Take back this miner's stake once unbonding is over.
    Withdraw(crate::registry::RegistryArgs),
}

#[derive(Args, Debug)]
struct MinerInitArgs {
    /// The configuration file to write (refused if it exists); the key goes beside it.
    #[arg(long)]
    config: PathBuf,
    /// The chain's genesis file.
    #[arg(long)]
    genesis: PathBuf,
    /// Directory for the block store and the WAL (created).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "miner")]
    moniker: String,
    /// libp2p listen address.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/27000")]
    p2p_listen: String,
    /// Control-plane address (clients submit and query here).
    #[arg(long, default_value = "127.0.0.1:27100")]
    control_listen: String,
    /// Another validator's p2p address (repeat).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Another miner's control address to relay transactions to (repeat).
    #[arg(long = "relay-to")]
    relay_to: Vec<String>,
}

pub fn miner(args: MinerArgs) -> Result<()> {
    match args.action {
        Some(MinerAction::Init(a)) => {
            let key = miner_init(&a)?;
            println!(
                "wrote {} and its key; validator key (public): {}",
                a.config.display(),
                hex(&key.verification_key().to_bytes())
            );
            Ok(())
        }
        Some(MinerAction::Register(a)) => miner_registry(Op::Register, &a),
        Some(MinerAction::Unbond(a)) => miner_registry(Op::Unbond, &a),
        Some(MinerAction::Withdraw(a)) => miner_registry(Op::Withdraw, &a),
        None => {
            let Some(config) = args.config else {
                bail!("give --config <FILE> (write one with `mspace miner init`)");
            };
            miner_run(&config)
        }
    }
}

/// `mspace miner register|unbond|withdraw`: the validator key signs, submitted through the
/// miner's own control plane unless `--miner` names others; a register records that
/// control address as the endpoint.
fn miner_registry(op: Op, a: &crate::registry::RegistryArgs) -> Result<()> {
    let cfg = MinerConfig::load(&a.config)?;
    let key = read_key(&cfg.key_file)?;
    crate::registry::run(
        proto::tx::Role::Miner,
        op,
        &key,
        &cfg.control_listen,
        std::slice::from_ref(&cfg.control_listen),
        a,
    )
}

fn miner_init(a: &MinerInitArgs) -> Result<SigningKey> {
    let base = crate::netcli::config_folder(&a.config)?;
    let data = std::path::absolute(&a.data_dir).context("resolve --data-dir")?;
    let genesis = std::path::absolute(&a.genesis).context("resolve --genesis")?;
    let text = MinerConfig::default_text(
        &a.moniker,
        &data,
        &genesis,
        &a.p2p_listen,
        &a.control_listen,
        &a.peers,
        &a.relay_to,
    );
    toml::from_str::<MinerConfig>(&text).context("the default configuration does not parse")?;
    for p in a.peers.iter().chain([&a.p2p_listen]) {
        p.parse::<consensus::node::Multiaddr>()
            .with_context(|| format!("{p:?} is not a p2p address like /ip4/127.0.0.1/tcp/27000"))?;
    }
    let key = write_new_key(&base.join("miner.key"))?;
    std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
    std::fs::write(&a.config, text).with_context(|| format!("write {}", a.config.display()))?;
    Ok(key)
}

fn miner_run(config: &Path) -> Result<()> {
    crate::netcli::init_logs();
    let cfg = MinerConfig::load(config)?;
    let genesis = GenesisFile::load(&cfg.genesis_file)?;
    let key = read_key(&cfg.key_file)?;
    let mut params = ChainParams::new(genesis);
    params.block_time = Duration::from_millis(cfg.block_time_ms);
    let node_cfg = NodeConfig {
        moniker: cfg.moniker.clone(),
        dir: cfg.data_dir.clone(),
        p2p_listen: cfg
            .p2p_listen
            .parse()
            .with_context(|| format!("p2p_listen {:?}", cfg.p2p_listen))?,
        peers: cfg
            .peers
            .iter()
            .map(|p| p.parse().with_context(|| format!("peer {p:?}")))
            .collect::<Result<_>>()?,
        params,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async move {
        let (node, engine, task) = consensus::node::start(node_cfg, key.clone())
            .await
            .map_err(|e| anyhow!(e))?;
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let relay = Relay::start(cfg.relay_to.clone());
        let alerts = std::sync::Arc::new(api::alerts::Tracker::default());
        let (_stop_alerts, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(miner::alerts::run(
            miner::alerts::Watcher {
                node: node.clone(),
                alerts: alerts.clone(),
                peers_configured: cfg.peers.len(),
                others: cfg.relay_to.clone(),
                config: cfg.alerts.clone(),
                key_hex: miner::hex(&key.verification_key().to_bytes()),
            },
            stop_rx,
        ));
        let service = MinerService {
            node,
            relay,
            alerts,
        };
        if let Some(m) = &cfg.metrics_listen {
            let s = service.clone();
            crate::netcli::serve_metrics_on(
                m,
                std::sync::Arc::new(move || {
                    let s = s.clone();
                    Box::pin(async move { s.render_metrics().await })
                }),
            )
            .await?;
        }
        let listen = cfg.control_listen.clone();
        let control = tokio::spawn(api::serve_control!(service.serve(), listen, bound_tx));
        let bound = bound_rx
            .await
            .map_err(|_| anyhow!("cannot listen on {}", cfg.control_listen))?;
        println!(
            "miner {} running: p2p {} control {}",
            cfg.moniker, cfg.p2p_listen, bound
        );
        tokio::select! {
            r = task => match r {
                Ok(Ok(())) => info!("node stopped"),
                Ok(Err(e)) => bail!("node failed: {e}"),
                Err(e) => bail!("node task: {e}"),
            },
            r = control => bail!("control plane stopped: {r:?}"),
            () = shutdown_signal() => info!("stopping"),
        }
        engine.actor.stop(None);
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

// ---------------------------------------------------------------------------------------
// `mspace devnet`

#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// How many validators (miner processes).
    #[arg(long, default_value_t = 4)]
    pub validators: usize,
    /// Directory for the network: genesis, one folder per miner, the client key. An
    /// existing devnet there is started again as it was.
    #[arg(long)]
    pub dir: PathBuf,
    /// First port: miner i listens on base+2i (p2p) and base+2i+1 (control), on 127.0.0.1.
    #[arg(long, default_value_t = 27000)]
    pub base_port: u16,
    /// Target time between blocks when idle, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub block_time_ms: u64,
    /// Blocks per storage proof period in this devnet's genesis [default: the ledger's
    /// 100]. Short periods make a whole deal fit in a demo.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub proof_period_blocks: Option<u64>,
    /// Blocks a host has to complete a paid deal in this devnet's genesis [default: the
    /// ledger's 100]. With short blocks, a longer window leaves time for large uploads.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub completion_timeout_blocks: Option<u64>,
    /// Hosts to run beside the miners (0 to 16): each an `mspace host` process with its
    /// own store, key and ports (after the miners'), funded from the client key, registered
    /// with a deposit of 10,000 MASP, its agent following the miners. A host that exits is
    /// not restarted.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=16))]
    pub hosts: u16,
    /// Exchanges to run (0 to 4): each an `mspace exchange run` process on its own port
    /// (after the hosts' range); every host keeps an ask on each (host i asks 10 + i MASPC
    /// per GiB per day). Set when the devnet is made: its hosts are written for them. An
    /// exchange that exits is not restarted.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=4))]
    pub exchanges: u16,
    /// Serve each miner's /metrics: miner i on 127.0.0.1:(this + i). Set when the devnet
    /// is made.
    #[arg(long)]
    pub metrics_base: Option<u16>,
}

/// What `devnet` writes into its directory, and reads again on a restart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetLayout {
    pub chain_id: u64,
    pub genesis: PathBuf,
    /// The funded client account's key file.
    pub client_key: PathBuf,
    pub miners: Vec<DevnetMiner>,
    #[serde(default)]
    pub hosts: Vec<crate::devhosts::DevnetHost>,
    #[serde(default)]
    pub exchanges: Vec<crate::devhosts::DevnetExchange>,
    /// With exchanges: the index they list themselves on.
    #[serde(default)]
    pub index: Option<crate::devhosts::DevnetIndex>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetMiner {
    pub config: PathBuf,
    pub p2p: String,
    pub control: String,
    pub key: String,
}

/// Writes (or reads back) a devnet's files: a client key funded in the genesis, one key,
/// configuration and data directory per validator, all on loopback.
pub fn devnet_layout(a: &DevnetArgs) -> Result<DevnetLayout> {
    let layout_path = a.dir.join("devnet.json");
    if layout_path.exists() {
        let text = std::fs::read_to_string(&layout_path)?;
        let l: DevnetLayout = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a devnet layout", layout_path.display()))?;
        if l.miners.len() != a.validators {
            bail!(
                "{} holds a devnet of {} validators, not {}",
                a.dir.display(),
                l.miners.len(),
                a.validators
            );
        }
        return Ok(l);
    }
    if !(1..=32).contains(&a.validators) {
        bail!("--validators must be 1 to 32");
    }
    std::fs::create_dir_all(&a.dir).with_context(|| format!("create {}", a.dir.display()))?;
    let dir = std::path::absolute(&a.dir)?;
    let client_key_path = dir.join("client.key");
    let client = write_new_key(&client_key_path)?;
    let port = |i: usize, k: usize| -> Result<u16> {
        u16::try_from(usize::from(a.base_port) + 2 * i + k).context("ports past 65535")
    };
    let mut miners = Vec::new();
    let mut keys = Vec::new();
    for i in 0..a.validators {
        let mdir = dir.join(format!("miner{i}"));
        std::fs::create_dir_all(&mdir)?;
        let key = write_new_key(&mdir.join("miner.key"))?;
        keys.push(key.verification_key().to_bytes());
        miners.push(DevnetMiner {
            config: mdir.join("miner.toml"),
            p2p: format!("/ip4/127.0.0.1/tcp/{}", port(i, 0)?),
            control: format!("127.0.0.1:{}", port(i, 1)?),
            key: hex(&key.verification_key().to_bytes()),
        });
    }
    let mut seed = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let chain_id = u64::from_le_bytes(seed) >> 16;
    let genesis = GenesisFile {
        chain_id,
        proof_period_blocks: a.proof_period_blocks,
        completion_timeout_blocks: a.completion_timeout_blocks,
        accounts: std::iter::once(GenesisAccount {
            key: hex(&client.verification_key().to_bytes()),
            masp: 1_000_000,
            maspc: 1_000_000_000,
        })
        .chain(keys.iter().map(|k| GenesisAccount {
            key: hex(k),
            masp: 0,
            maspc: 1_000_000,
        }))
        .collect(),
        validators: miners
            .iter()
            .map(|m| GenesisValidator {
                key: m.key.clone(),
                stake: 100_000,
                endpoint: m.control.clone(),
            })
            .collect(),
    };
    let genesis_path = dir.join("genesis.toml");
    std::fs::write(&genesis_path, toml::to_string(&genesis)?)?;
    for (i, m) in miners.iter().enumerate() {
        let others = |f: fn(&DevnetMiner) -> String| -> Vec<String> {
            miners
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, o)| f(o))
                .collect()
        };
        let mut text = MinerConfig::default_text(
            &format!("miner{i}"),
            &dir.join(format!("miner{i}")).join("data"),
            &genesis_path,
            &m.p2p,
            &m.control,
            &others(|o| o.p2p.clone()),
            &others(|o| o.control.clone()),
        );
        text = text.replace(
            "block_time_ms = 500",
            &format!("block_time_ms = {}", a.block_time_ms),
        );
        if let Some(base) = a.metrics_base {
            let port = u16::try_from(usize::from(base) + i).context("ports past 65535")?;
            text = text.replace(
                "# metrics_listen = \"127.0.0.1:9404\"",
                &format!("metrics_listen = \"127.0.0.1:{port}\""),
            );
        }
        std::fs::write(&m.config, text)?;
        MinerConfig::load(&m.config)?;
    }
    let layout = DevnetLayout {
        chain_id,
        genesis: genesis_path,
        client_key: client_key_path,
        miners,
        hosts: Vec::new(),
        exchanges: Vec::new(),
        index: None,
    };
    std::fs::write(&layout_path, serde_json::to_string_pretty(&layout)?)?;
    Ok(layout)
}

/// Stops the miners that still run: SIGTERM (they checkpoint and close), then waits.
fn stop_children(children: &mut [std::process::Child]) {
    for c in children.iter_mut() {
        if let (Ok(None), Ok(pid)) = (c.try_wait(), i32::try_from(c.id())) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

/// Starts a devnet's miners as child processes and supervises them until interrupted.
pub fn devnet(a: DevnetArgs) -> Result<()> {
    let mut layout = devnet_layout(&a)?;
    let exe = std::env::current_exe().context("find this binary")?;
    let hosts_wanted = usize::from(a.hosts);
    let exchanges_wanted = usize::from(a.exchanges);
    if layout.exchanges.len() != exchanges_wanted
        && (!layout.exchanges.is_empty() || !layout.hosts.is_empty())
    {
        bail!(
            "{} holds a devnet with {} exchanges, not {exchanges_wanted} (its hosts were written for them)",
            a.dir.display(),
            layout.exchanges.len()
        );
    }
    if layout.hosts.len() > hosts_wanted {
        bail!(
            "{} holds a devnet with {} hosts, not {hosts_wanted}",
            a.dir.display(),
            layout.hosts.len()
        );
    }
    if layout.hosts.len() < hosts_wanted || layout.exchanges.len() < exchanges_wanted {
        let controls: Vec<String> = layout.miners.iter().map(|m| m.control.clone()).collect();
        let dir = layout
            .genesis
            .parent()
            .context("the devnet directory")?
            .to_owned();
        // Ports: the miners', then 16 hosts' pairs, then 4 exchanges', then the index.
        let after_miners = usize::from(a.base_port) + 2 * layout.miners.len();
        if exchanges_wanted > 0 && layout.index.is_none() {
            let port = u16::try_from(after_miners + 36).context("ports past 65535")?;
            layout.index = Some(crate::devhosts::DevnetIndex {
                listen: format!("127.0.0.1:{port}"),
                dir: dir.join("index"),
            });
        }
        let index = layout
            .index
            .as_ref()
            .map(|ix| ix.listen.clone())
            .unwrap_or_default();
        for i in layout.exchanges.len()..exchanges_wanted {
            let port = u16::try_from(after_miners + 32 + i).context("ports past 65535")?;
            layout.exchanges.push(crate::devhosts::init_exchange(
                &exe, &dir, i, port, &controls, &index,
            )?);
        }
        let exchanges: Vec<String> = layout.exchanges.iter().map(|e| e.listen.clone()).collect();
        for i in layout.hosts.len()..hosts_wanted {
            let port = u16::try_from(after_miners + 2 * i).context("ports past 65535")?;
            layout.hosts.push(crate::devhosts::init_host(
                &exe, &dir, i, port, &controls, &exchanges,
            )?);
        }
        std::fs::write(
            dir.join("devnet.json"),
            serde_json::to_string_pretty(&layout)?,
        )?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Signals are taken from here on, before any miner starts, so none is lost.
    let (mut term, mut int) = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let spawn = |m: &DevnetMiner| -> Result<std::process::Child> {
        let log = m.config.with_file_name("miner.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = std::process::Command::new(&exe)
            .args(["miner", "--config"])
            .arg(&m.config)
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start a miner")?;
        // Written whole, then renamed: a reader never sees half a pid.
        let pid = m.config.with_file_name("miner.pid");
        let tmp = pid.with_extension("pid.tmp");
        std::fs::write(&tmp, format!("{}\n", child.id()))?;
        std::fs::rename(&tmp, &pid)?;
        Ok(child)
    };
    let mut children = Vec::new();
    for m in &layout.miners {
        match spawn(m) {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_children(&mut children);
                return Err(e);
            }
        }
    }
    // Ready when every miner's control plane accepts connections.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, m) in layout.miners.iter().enumerate() {
        while std::net::TcpStream::connect(&m.control).is_err() {
            let failed = if let Ok(Some(status)) = children[i].try_wait() {
                Some(format!(
                    "miner{i} exited ({status}) while starting; see {}",
                    m.config.with_file_name("miner.log").display()
                ))
            } else if Instant::now() > deadline {
                Some(format!(
                    "miner{i} is not listening on {} after 60 s",
                    m.control
                ))
            } else {
                None
            };
            if let Some(why) = failed {
                stop_children(&mut children);
                bail!(why);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The exchanges, then the hosts: started, then funded and registered once the chain
    // decides blocks (their bidders keep asking until they are).
    let mut hosts: Vec<std::process::Child> = Vec::new();
    let mut exchanges: Vec<std::process::Child> = Vec::new();
    let mut index_proc: Vec<std::process::Child> = Vec::new();
    let started_hosts = (|| -> Result<()> {
        let controls: Vec<String> = layout.miners.iter().map(|m| m.control.clone()).collect();
        if let Some(ix) = &layout.index {
            let mut c = crate::devhosts::spawn_index(&exe, ix, &controls)?;
            let waited = crate::devhosts::wait_listening(
                &ix.listen,
                &mut c,
                "the index",
                &ix.dir.join("index.log"),
            );
            index_proc.push(c);
            waited?;
        }
        for (i, e) in layout.exchanges.iter().enumerate() {
            let mut c = crate::devhosts::spawn_exchange(&exe, e)?;
            let waited = crate::devhosts::wait_listening(
                &e.listen,
                &mut c,
                &format!("exchange{i}"),
                &e.log(),
            );
            exchanges.push(c);
            waited?;
        }
        for (i, h) in layout.hosts.iter().enumerate() {
            let mut c = crate::devhosts::spawn_host(&exe, h)?;
            let waited =
                crate::devhosts::wait_listening(&h.control, &mut c, &format!("host{i}"), &h.log());
            hosts.push(c);
            waited?;
        }
        if !layout.hosts.is_empty() || !layout.exchanges.is_empty() {
            let client = read_key(&layout.client_key)?;
            rt.block_on(crate::devhosts::fund_and_register(
                &layout.hosts,
                &layout.exchanges,
                &client,
                &controls,
            ))?;
        }
        Ok(())
    })();
    if let Err(e) = started_hosts {
        stop_children(&mut hosts);
        stop_children(&mut exchanges);
        stop_children(&mut index_proc);
        stop_children(&mut children);
        return Err(e);
    }
    println!(
        "devnet: chain {} with {} validators, {} hosts and {} exchanges in {}",
        layout.chain_id,
        layout.miners.len(),
        layout.hosts.len(),
        layout.exchanges.len(),
        a.dir.display()
    );
    for (i, m) in layout.miners.iter().enumerate() {
        println!(
            "  miner{i}: control {}  p2p {}  key {}  log {}",
            m.control,
            m.p2p,
            &m.key[..16],
            m.config.with_file_name("miner.log").display()
        );
    }
    for (i, h) in layout.hosts.iter().enumerate() {
        println!(
            "  host{i}: data {}  control {}  key {}  deposit {} MASP  log {}",
            h.listen,
            h.control,
            &h.key[..16],
            crate::devhosts::HOST_DEPOSIT,
            h.log().display()
        );
    }
    if let Some(ix) = &layout.index {
        println!(
            "  index: {}  log {}",
            ix.listen,
            ix.dir.join("index.log").display()
        );
    }
    for (i, e) in layout.exchanges.iter().enumerate() {
        println!(
            "  exchange{i}: {}  deposit {} MASP  log {}",
            e.listen,
            crate::devhosts::EXCHANGE_DEPOSIT,
            e.log().display()
        );
    }
    if let Some(ix) = &layout.index {
        if !layout.hosts.is_empty() {
            println!(
                "find hosts through the index: mspace put FILE --index {} --copies 2 --chain {} --days 1 --key {}",
                ix.listen,
                layout.miners[0].control,
                layout.client_key.display()
            );
        }
    }
    if let Some(h) = layout.hosts.first() {
        println!(
            "store a file as a deal: mspace put FILE --host {} --chain {} --days 1 --key {}",
            h.control,
            layout.miners[0].control,
            layout.client_key.display()
        );
    }
    println!(
        "client key (funded): {}\ntry: mspace chain status --miner {}",
        layout.client_key.display(),
        layout.miners[0].control
    );
    // Until interrupted. A miner that exits is reported and started again (its pid file
    // is rewritten): it rebuilds its state from its block store and catches up by sync.
    rt.block_on(async {
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        let mut started = vec![Instant::now(); children.len()];
        let mut given_up = vec![false; children.len()];
        let mut hosts_gone = vec![false; hosts.len()];
        let mut exchanges_gone = vec![false; exchanges.len()];
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = poll.tick() => {
                    for (i, c) in exchanges.iter_mut().enumerate() {
                        if !exchanges_gone[i] {
                            if let Ok(Some(status)) = c.try_wait() {
                                eprintln!("exchange{i} exited ({status}); exchanges are not restarted (log: {})", layout.exchanges[i].log().display());
                                exchanges_gone[i] = true;
                            }
                        }
                    }
                    for (i, c) in hosts.iter_mut().enumerate() {
                        if !hosts_gone[i] {
                            if let Ok(Some(status)) = c.try_wait() {
                                eprintln!("host{i} exited ({status}); hosts are not restarted (log: {})", layout.hosts[i].log().display());
                                hosts_gone[i] = true;
                            }
                        }
                    }
                    for (i, c) in children.iter_mut().enumerate() {
                        if given_up[i] {
                            continue;
                        }
                        if let Ok(Some(status)) = c.try_wait() {
                            let m = &layout.miners[i];
                            let log = m.config.with_file_name("miner.log");
                            // A miner that fails on its own right after starting (a bad
                            // configuration) would fail again; one killed by a signal is restarted.
                            if status.code().is_some() && started[i].elapsed() < Duration::from_secs(3) {
                                eprintln!("miner{i} exited ({status}) right after starting: not restarting it (log: {})", log.display());
                                given_up[i] = true;
                                continue;
                            }
                            eprintln!("miner{i} exited ({status}); restarting it (log: {})", log.display());
                            match spawn(m) {
                                Ok(new) => {
                                    *c = new;
                                    started[i] = Instant::now();
                                }
                                Err(e) => eprintln!("miner{i} cannot restart: {e:#}"),
                            }
                        }
                    }
                }
            }
        }
    });
    stop_children(&mut hosts);
    stop_children(&mut exchanges);
    stop_children(&mut index_proc);
    stop_children(&mut children);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `mspace chain ...`: the client.

#[derive(Args, Debug)]
pub struct ChainArgs {
    #[command(subcommand)]
    action: ChainAction,
    /// A miner's control address.
    #[arg(long, global = true, default_value = "127.0.0.1:27001")]
    miner: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum ChainAction {
    /// The miner's view: height, tip, validators, mempool.
    Status,
    /// An account's balances, nonce, registrations and rating.
    Account {
        /// ed25519 public key, hex.
        key: String,
    },
    /// A storage deal.
    Deal {
        /// The deal id (the id of the payment transaction that opened it), hex.
        id: String,
    },
    /// A decided block (waits up to --wait for it).
    Block {
        height: u64,
        #[arg(long, default_value = "0s", value_parser = crate::netcli::parse_duration)]
        wait: Duration,
    },
    /// Sign and submit a transfer, then wait until a block holds it.
    Transfer(TransferArgs),
    /// Which block holds a transaction (by id, hex), if any.
    Tx { id: String },
    /// Proof of existence: record a file's BLAKE3 hash (or a given hash) on the chain,
    /// signed with --key; with --verify, show where and when it was recorded, and by whom.
    Record(RecordArgs),
    /// File a complaint about a deal you are the sender or host of (the fee is burned).
    Complain(ComplainArgs),
    /// Your proxy allowance: `--lock N` MASPC more for the proxies that relay for you
    /// (`--via`; each redeems your signed receipts from it), or `--release` what is left
    /// (back after 14 days, twice a receipt's life, while proxies may still redeem).
    Allowance(AllowanceArgs),
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// A file (its BLAKE3 hash is recorded) or a 32-byte hash in hex.
    what: String,
    /// Look the hash up instead of recording it.
    #[arg(long)]
    verify: bool,
    /// The recording account's key file (needed to record).
    #[arg(long, required_unless_present = "verify")]
    key: Option<PathBuf>,
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("op").required(true).args(["lock", "release"])))]
struct AllowanceArgs {
    /// The client's key file.
    #[arg(long)]
    key: PathBuf,
    /// MASPC to lock.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    lock: Option<u64>,
    /// Start giving back what is left.
    #[arg(long)]
    release: bool,
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
}

#[derive(Args, Debug)]
struct ComplainArgs {
    /// The deal id (hex).
    #[arg(long)]
    deal: String,
    /// The complaining party's key file: the deal's sender or host.
    #[arg(long)]
    key: PathBuf,
    /// Complaint fee in MASPC, burned (at least the ledger's 10).
    #[arg(long, default_value_t = consensus::ledger::COMPLAINT_FEE_MIN)]
    fee: u64,
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
}

/// The hash `what` names: a file's BLAKE3, or the hex of a 32-byte hash (a path wins).
fn hash_of(what: &str) -> Result<[u8; 32]> {
    let path = Path::new(what);
    if path.exists() {
        let mut h = blake3::Hasher::new();
        h.update_reader(
            std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?,
        )
        .with_context(|| format!("read {}", path.display()))?;
        return Ok(*h.finalize().as_bytes());
    }
    parse_id(what).with_context(|| format!("{what:?} is neither a file nor a 32-byte hash in hex"))
}

#[derive(Args, Debug)]
struct TransferArgs {
    /// The sender's key file (hex ed25519 seed).
    #[arg(long)]
    key: PathBuf,
    /// The receiving account (public key, hex).
    #[arg(long)]
    to: String,
    #[arg(long)]
    amount: u64,
    /// maspc (the coin) or masp (deposits and stake).
    #[arg(long, default_value = "maspc")]
    asset: String,
    /// Fee in MASPC, burned.
    #[arg(long, default_value_t = 1)]
    fee: u64,
    /// How long to wait for the transfer to be committed.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    wait: Duration,
}

#[derive(Debug, Serialize)]
struct TxJson {
    tx: String,
    /// The height of the block holding it; absent while it is not committed.
    height: Option<u64>,
}

fn rpc_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("miner: {e}")
}

pub fn chain(a: ChainArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // `block --wait` also waits for a miner that is (re)starting to listen.
        let patience = match &a.action {
            ChainAction::Block { wait, .. } => *wait,
            _ => Duration::ZERO,
        };
        let deadline = Instant::now() + patience;
        let c = loop {
            match miner_client(&a.miner).await {
                Ok(c) => break c,
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("connect to the miner at {}", a.miner)))
                }
            }
        };
        let ctx = tarpc::context::current;
        let print = |v: &dyn erased::Show, json: bool| v.show(json);
        match a.action {
            ChainAction::Status => {
                let s = c.status(ctx()).await.map_err(rpc_err)?.map_err(rpc_err)?;
                print(&s, a.json)
            }
            ChainAction::Account { key } => {
                let k = parse_key_hex(&key)?;
                let v = c
                    .account(ctx(), k.0)
                    .await
                    .map_err(rpc_err)?
                    .map_err(rpc_err)?;
                print(&v, a.json)
            }
            ChainAction::Deal { id } => {
                let id = parse_id(&id)?;
                match c.deal(ctx(), id).await.map_err(rpc_err)?.map_err(rpc_err)? {
                    Some(d) if a.json => print(&crate::dealcli::DealJson::from(&d), true),
                    Some(d) => {
                        crate::dealcli::print_deal(&d);
                        Ok(())
                    }
                    None => bail!("no deal {}", hex(&id)),
                }
            }
            ChainAction::Block { height, wait } => {
                // The miner waits at most BLOCK_WAIT_MAX_MS a call: ask again until --wait.
                let deadline = Instant::now() + wait;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                    match c
                        .block(context_for(left), height, ms.min(api::BLOCK_WAIT_MAX_MS))
                        .await
                        .map_err(rpc_err)?
                        .map_err(rpc_err)?
                    {
                        Some(b) => return print(&BlockJson::from(b), a.json),
                        None if left.is_zero() => bail!("block {height} is not decided yet"),
                        None => {}
                    }
                }
            }
            ChainAction::Transfer(t) => {
                let r = transfer(&a.miner, &t).await?;
                print(&r, a.json)
            }
            ChainAction::Record(r) => {
                let hash = hash_of(&r.what)?;
                let existing = c.hash_record(ctx(), hash).await.map_err(rpc_err)?.map_err(rpc_err)?;
                if let (false, Some(v)) = (r.verify, &existing) {
                    bail!(
                        "{} was already recorded at height {} by {}: the first record stands",
                        v.hash,
                        v.height,
                        v.by
                    );
                }
                if !r.verify {
                    let key = read_key(r.key.as_deref().context("--key is needed to record")?)?;
                    let mut chain = ChainClient::connect(std::slice::from_ref(&a.miner)).await?;
                    chain
                        .submit(&key, TxBody::RecordHash { hash }, 1, r.wait)
                        .await
                        .map_err(|e| anyhow!("recording {}: {e}", hex(&hash)))?;
                }
                match c.hash_record(ctx(), hash).await.map_err(rpc_err)?.map_err(rpc_err)? {
                    Some(v) if a.json => print(&v, true),
                    Some(v) => {
                        println!(
                            "{} recorded at height {}, block time {} ms since the Unix epoch, by {}",
                            v.hash, v.height, v.timestamp_ms, v.by
                        );
                        Ok(())
                    }
                    None => bail!("{} is not recorded on this chain", hex(&hash)),
                }
            }
            ChainAction::Complain(k) => {
                let deal = parse_id(&k.deal)?;
                let key = read_key(&k.key)?;
                // What the ledger would refuse is refused here, with the reason.
                let me = hex(&key.verification_key().to_bytes());
                let Some(d) = c.deal(ctx(), deal).await.map_err(rpc_err)?.map_err(rpc_err)? else {
                    bail!("no deal {} on this chain", hex(&deal));
                };
                if d.sender != me && d.host != me {
                    bail!("only the deal's sender ({}) or host ({}) may complain", d.sender, d.host);
                }
                if k.fee < consensus::ledger::COMPLAINT_FEE_MIN {
                    bail!(
                        "a complaint's fee is at least {} MASPC",
                        consensus::ledger::COMPLAINT_FEE_MIN
                    );
                }
                let mut chain = ChainClient::connect(std::slice::from_ref(&a.miner)).await?;
                let r = chain
                    .submit(
                        &key,
                        TxBody::Complaint {
                            deal: proto::tx::TxId(deal),
                            fee: k.fee,
                        },
                        1,
                        k.wait,
                    )
                    .await
                    .map_err(|e| anyhow!("complaining about deal {}: {e}", hex(&deal)))?;
                print(&r, a.json)
            }
            ChainAction::Allowance(l) => {
                let key = read_key(&l.key)?;
                let body = match l.lock {
                    Some(amount) => TxBody::LockAllowance { amount },
                    None => TxBody::ReleaseAllowance,
                };
                let mut chain = ChainClient::connect(std::slice::from_ref(&a.miner)).await?;
                chain
                    .submit(&key, body, 1, l.wait)
                    .await
                    .map_err(|e| anyhow!("the allowance: {e}"))?;
                let v = chain
                    .account(proto::tx::AccountId(key.verification_key().to_bytes()))
                    .await?;
                if a.json {
                    print(&v, true)
                } else {
                    match v.allowance_release_at {
                        Some(t) => println!(
                            "proxy allowance {} MASPC, returning with the first block from Unix second {t} (proxies redeem your receipts until then)",
                            v.allowance
                        ),
                        None => println!("proxy allowance {} MASPC", v.allowance),
                    }
                    Ok(())
                }
            }
            ChainAction::Tx { id } => {
                let id = parse_id(&id)?;
                let height = c
                    .tx_height(ctx(), id)
                    .await
                    .map_err(rpc_err)?
                    .map_err(rpc_err)?;
                print(
                    &TxJson {
                        tx: hex(&id),
                        height,
                    },
                    a.json,
                )
            }
        }
    })
}

/// A block for people: ids in hex.
#[derive(Debug, Serialize)]
struct BlockJson {
    height: u64,
    id: String,
    parent: String,
    timestamp_ms: u64,
    proposer: String,
    bytes: usize,
    txs: Vec<String>,
}

impl From<BlockView> for BlockJson {
    fn from(b: BlockView) -> Self {
        BlockJson {
            height: b.height,
            id: b.id,
            parent: b.parent,
            timestamp_ms: b.timestamp_ms,
            proposer: b.proposer,
            bytes: b.bytes,
            txs: b.txs.iter().map(|t| hex(t)).collect(),
        }
    }
}

fn parse_id(s: &str) -> Result<[u8; 32]> {
    let b = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.trim().as_bytes())
        .map_err(|e| anyhow!("{s:?} is not hex: {e}"))?;
    b.try_into()
        .map_err(|b: Vec<u8>| anyhow!("an id is 32 bytes, this is {}", b.len()))
}

async fn transfer(miner: &str, t: &TransferArgs) -> Result<Committed> {
    let key = read_key(&t.key)?;
    let me = AccountId(key.verification_key().to_bytes());
    let to = parse_key_hex(&t.to)?;
    let asset = match t.asset.as_str() {
        "maspc" => Asset::Maspc,
        "masp" => Asset::Masp,
        other => bail!("--asset is maspc or masp, not {other:?}"),
    };
    let mut chain = ChainClient::connect(&[miner.to_string()]).await?;
    let account = chain.account(me).await?;
    let have = match asset {
        Asset::Maspc => account.maspc,
        Asset::Masp => account.masp,
    };
    let need = t.amount + if asset == Asset::Maspc { t.fee } else { 0 };
    if have < need || account.maspc < t.fee {
        bail!(
            "overdraft: the transfer needs {need} {} (and a fee of {} MASPC); the account holds {} MASP and {} MASPC",
            t.asset, t.fee, account.masp, account.maspc
        );
    }
    let body = TxBody::Transfer {
        to,
        asset,
        amount: t.amount,
    };
    Ok(chain.submit(&key, body, t.fee, t.wait).await?)
}

/// Printing a view as text or JSON.
mod erased {
    use serde::Serialize;

    pub trait Show {
        fn show(&self, json: bool) -> anyhow::Result<()>;
    }

    impl<T: Serialize + std::fmt::Debug> Show for T {
        fn show(&self, json: bool) -> anyhow::Result<()> {
            if json {
                println!("{}", serde_json::to_string(self)?);
            } else {
                println!(
                    "{}",
                    toml::to_string_pretty(self).unwrap_or_else(|_| format!("{self:#?}"))
                );
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// A local network in this process (the demo and chain-bench).

/// A genesis for a local network: these validators with 100,000 MASP staked each, and
/// these funded accounts.
pub fn local_genesis(
    chain_id: u64,
    validators: &[SigningKey],
    accounts: Vec<(AccountId, u64, u64)>,
) -> Genesis {
    Genesis {
        chain_id,
        params: Default::default(),
        accounts,
        validators: validators
            .iter()
            .map(|k| {
                (
                    AccountId(k.verification_key().to_bytes()),
                    100_000,
                    "local".to_string(),
                )
            })
            .collect(),
    }
}

/// Starts one full node per key in this process (malachite over libp2p on `ports` of
/// 127.0.0.1, each node's WAL and block store under `dir`), each peered with all others.
pub async fn start_local(
    dir: &Path,
    keys: &[SigningKey],
    ports: &[u16],
    params: &ChainParams,
) -> Result<(Vec<NodeHandle>, Vec<consensus::node::EngineHandle>)> {
    let addr = |p: u16| -> Result<consensus::node::Multiaddr> {
        format!("/ip4/127.0.0.1/tcp/{p}")
            .parse()
            .map_err(|e| anyhow!("address: {e}"))
    };
    let mut nodes = Vec::new();
    let mut engines = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let cfg = NodeConfig {
            moniker: format!("v{i}"),
            dir: dir.join(format!("v{i}")),
            p2p_listen: addr(ports[i])?,
            peers: ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| addr(*p))
                .collect::<Result<_>>()?,
            params: params.clone(),
        };
        let (h, e, _) = consensus::node::start(cfg, k.clone())
            .await
            .map_err(|e| anyhow!(e))?;
        nodes.push(h);
        engines.push(e);
    }
    Ok((nodes, engines))
}

// ---------------------------------------------------------------------------------------
// The demo's chain step.

/// Starts four validators in this process (each a full node: malachite over libp2p on
/// loopback, WAL, redb block store, under `dir`), commits a signed transfer, and checks
/// that every validator holds the same block with it. Prints numbered steps from `step`.
pub fn demo_chain(dir: &Path, step: &mut u32) -> Result<()> {
    let keys: Vec<SigningKey> = (0..4).map(|_| SigningKey::new(rand_core::OsRng)).collect();
    let client = SigningKey::new(rand_core::OsRng);
    let me = AccountId(client.verification_key().to_bytes());
    let to = AccountId(keys[0].verification_key().to_bytes());
    let mut params = ChainParams::new(local_genesis(1, &keys, vec![(me, 0, 1_000_000)]));
    params.block_time = Duration::from_millis(200);
    // Free loopback ports, asked of the kernel (released just before the nodes bind them).
    let ports: Vec<u16> = (0..4)
        .map(|_| {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        })
        .collect::<std::io::Result<_>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = Instant::now();
        let (nodes, engines) = start_local(&dir.join("chain"), &keys, &ports, &params).await?;
        let mut blocks = nodes[0].subscribe();
        let first = tokio::time::timeout(Duration::from_secs(60), blocks.recv())
            .await
            .context("the validators decided no block within 60 s")??;
        println!(
            "{step}. four validators on loopback (malachite over libp2p, WAL, redb) decided block {} after {:.2} s",
            first.height,
            start.elapsed().as_secs_f64()
        );
        *step += 1;
        let nonce = nodes[0]
            .query(move |s: &NodeState| s.mempool.next_nonce(&me, s.ledger()))
            .await?;
        let tx = Tx {
            chain_id: 1,
            signer: me,
            nonce,
            fee: 1,
            body: TxBody::Transfer {
                to,
                asset: Asset::Maspc,
                amount: 10,
            },
        }
        .sign(&client);
        let id = tx.id();
        let sent = Instant::now();
        // Every validator gets it, as the miners' relay would deliver it.
        for n in &nodes {
            if let Some(Err(e)) = n.submit(vec![tx.clone()]).await?.pop() {
                bail!("a validator refused the transfer: {e}");
            }
        }
        let height = loop {
            let c = tokio::time::timeout(Duration::from_secs(30), blocks.recv())
                .await
                .context("the transfer was not committed within 30 s")??;
            if c.txs.contains(&id) {
                break c.height;
            }
        };
        let latency = sent.elapsed();
        let mut ids = Vec::new();
        for n in &nodes {
            // A validator may trail the first by a block: wait for it to reach the height.
            let mut sub = n.subscribe();
            loop {
                let (at, block) = n
                    .query(move |s: &NodeState| (s.tx_height(&id), s.store().block(height).ok().flatten()))
                    .await?;
                if let (Some(at), Some(block)) = (at, block) {
                    ids.push((at, proto::block::BlockId::of(&block)));
                    break;
                }
                tokio::time::timeout(Duration::from_secs(30), sub.recv())
                    .await
                    .context("a validator did not reach the transfer's block")??;
            }
        }
        if ids.iter().any(|x| *x != ids[0]) {
            bail!("the validators disagree on block {height}: {ids:?}");
        }
        let balance = nodes[1]
            .query(move |s: &NodeState| s.ledger().account(&to).maspc)
            .await?;
        if balance != 10 {
            bail!("the receiver holds {balance} MASPC, not 10");
        }
        println!(
            "{step}. a signed transfer was committed in block {height} {} ms after it was sent; all four validators hold the same block ({}) and the receiver's 10 MASPC",
            latency.as_millis(),
            &ids[0].1.to_string()[..16]
        );
        *step += 1;
        for e in engines {
            e.actor.stop(None);
        }
        Ok(())
    })
}
