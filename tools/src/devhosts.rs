//! The hosts and exchanges of `mspace devnet --hosts N --exchanges M`: each host its own
//! `mspace host` process with its own store directory and key, funded from the devnet's
//! client key, registered on the chain with a deposit, its agent following the devnet's
//! miners and its bidder asking on every exchange; each exchange its own `mspace exchange
//! run` process, registered on the chain too and listed on the devnet's index (one `mspace
//! index run` process).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::chain::ChainClient;
use ed25519_consensus::SigningKey;
use net::config::read_key;
use net::host_config::HostConfig;
use proto::tx::{AccountId, Asset, Role, TxBody};
use serde::{Deserialize, Serialize};

/// Each devnet host's deposit (MASP) and fee money (MASPC), from the client key.
pub const HOST_DEPOSIT: u64 = 10_000;
pub const HOST_FEES: u64 = 10_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetHost {
    pub config: PathBuf,
    /// Data plane and control plane, on 127.0.0.1.
    pub listen: String,
    pub control: String,
    pub key: String,
}

/// What a devnet host asks on the exchanges: host `i` asks 10 + i MASPC per GiB per day,
/// so that an exchange's ranking shows (host0 is the cheapest).
pub fn host_price(i: usize) -> u64 {
    10 + u64::try_from(i).unwrap_or(u64::MAX - 10)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetExchange {
    pub config: PathBuf,
    pub listen: String,
}

impl DevnetExchange {
    pub fn log(&self) -> PathBuf {
        self.config.with_file_name("exchange.log")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.config.with_file_name("exchange.pid")
    }
}

/// What a devnet exchange charges a matched host: 10% (the most a host pays by default),
/// so the demo's small fees still show a commission.
pub const DEVNET_COMMISSION_PERMILLE: u16 = 100;

/// Writes exchange `i`'s folder under `dir` with `mspace exchange init` (port `port`,
/// listed on `index`).
pub fn init_exchange(
    exe: &Path,
    dir: &Path,
    i: usize,
    port: u16,
    miners: &[String],
    index: &str,
) -> Result<DevnetExchange> {
    let config = dir.join(format!("exchange{i}")).join("exchange.toml");
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(exe);
    cmd.args(["exchange", "init", "--config"])
        .arg(&config)
        .args(["--listen", &listen, "--index", index])
        .args([
            "--commission-permille",
            &DEVNET_COMMISSION_PERMILLE.to_string(),
        ]);
    for m in miners {
        cmd.args(["--chain", m]);
    }
    let out = cmd.output().context("run mspace exchange init")?;
    if !out.status.success() {
        bail!(
            "exchange{i}: mspace exchange init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(DevnetExchange { config, listen })
}

/// Starts `mspace <args>` with its output appended to `log` and its pid in `pid_file`
/// (written whole, then renamed: a reader never sees half a pid).
fn spawn_logged(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    log: &Path,
    pid_file: &Path,
) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start mspace {:?}", args.first()))?;
    let tmp = pid_file.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", child.id()))?;
    std::fs::rename(&tmp, pid_file)?;
    Ok(child)
}

/// The devnet's index (with exchanges): `mspace index run` on `listen`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DevnetIndex {
    pub listen: String,
    /// Its folder: `index.log`, `index.pid`.
    pub dir: PathBuf,
}

/// Starts `mspace index run` for `ix` over `miners`.
pub fn spawn_index(exe: &Path, ix: &DevnetIndex, miners: &[String]) -> Result<Child> {
    std::fs::create_dir_all(&ix.dir)?;
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "index".as_ref(),
        "run".as_ref(),
        "--listen".as_ref(),
        ix.listen.as_ref(),
    ];
    for m in miners {
        args.push("--chain".as_ref());
        args.push(m.as_ref());
    }
    spawn_logged(
        exe,
        &args,
        &ix.dir.join("index.log"),
        &ix.dir.join("index.pid"),
    )
}

/// Starts `mspace exchange run --config` (log `exchange.log`, pid `exchange.pid`).
pub fn spawn_exchange(exe: &Path, e: &DevnetExchange) -> Result<Child> {
    spawn_logged(
        exe,
        &[
            "exchange".as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            e.config.as_os_str(),
        ],
        &e.log(),
        &e.pid_file(),
    )
}

impl DevnetHost {
    pub fn log(&self) -> PathBuf {
        self.config.with_file_name("host.log")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.config.with_file_name("host.pid")
    }
}

/// Writes host `i`'s folder under `dir` with `mspace host init` (ports `port` and
/// `port + 1`, the miners as its chain, asking [`host_price`] on `exchanges`).
pub fn init_host(
    exe: &Path,
    dir: &Path,
    i: usize,
    port: u16,
    miners: &[String],
    exchanges: &[String],
) -> Result<DevnetHost> {
    let hdir = dir.join(format!("host{i}"));
    let config = hdir.join("host.toml");
    let listen = format!("127.0.0.1:{port}");
    let control = format!("127.0.0.1:{}", port + 1);
    let mut cmd = Command::new(exe);
    cmd.args(["host", "init", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(hdir.join("data"))
        .args(["--listen", &listen, "--control-listen", &control]);
    for m in miners {
        cmd.args(["--chain", m]);
    }
    for e in exchanges {
        cmd.args(["--exchange", e]);
    }
    cmd.args(["--price", &host_price(i).to_string()]);
    let out = cmd.output().context("run mspace host init")?;
    if !out.status.success() {
        bail!(
            "host{i}: mspace host init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg = HostConfig::load(&config)?;
    let key = read_key(&cfg.key_file)?;
    Ok(DevnetHost {
        config,
        listen,
        control,
        key: miner::hex(&key.verification_key().to_bytes()),
    })
}

/// Starts `mspace host --config` with its output appended to `host.log` and its pid in
/// `host.pid`.
pub fn spawn_host(exe: &Path, h: &DevnetHost) -> Result<Child> {
    spawn_logged(
        exe,
        &["host".as_ref(), "--config".as_ref(), h.config.as_os_str()],
        &h.log(),
        &h.pid_file(),
    )
}

/// Waits up to 60 s for `addr` to accept connections while `child` runs.
pub fn wait_listening(addr: &str, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "{what} exited ({status}) while starting; see {}",
                log.display()
            );
        }
        if Instant::now() > deadline {
            bail!("{what} is not listening on {addr} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A devnet exchange's deposit (MASP, the role's minimum) and fee money (MASPC).
pub const EXCHANGE_DEPOSIT: u64 = 1_000;
pub const EXCHANGE_FEES: u64 = 1_000;

/// Funds `key` from `client` with `deposit` MASP and `fees` MASPC and registers it in `role`
/// with that deposit and `endpoint`, unless it is registered in `role` already.
async fn fund_and_register_one(
    chain: &mut ChainClient,
    client: &SigningKey,
    key: &SigningKey,
    role: Role,
    (deposit, fees): (u64, u64),
    endpoint: &str,
) -> Result<()> {
    let wait = Duration::from_secs(60);
    let me = AccountId(key.verification_key().to_bytes());
    let view = chain.account(me).await?;
    if view
        .registrations
        .iter()
        .any(|r| r.role == miner::role_name(role))
    {
        return Ok(());
    }
    for (asset, amount) in [(Asset::Masp, deposit), (Asset::Maspc, fees)] {
        chain
            .submit(
                client,
                TxBody::Transfer {
                    to: me,
                    asset,
                    amount,
                },
                1,
                wait,
            )
            .await
            .context("funding")?;
    }
    chain
        .submit(
            key,
            TxBody::Register {
                role,
                deposit,
                endpoint: endpoint.to_owned(),
            },
            1,
            wait,
        )
        .await
        .context("registering")?;
    Ok(())
}

/// Funds each host and exchange not yet registered from `client` and registers it
/// ([`HOST_DEPOSIT`], [`EXCHANGE_DEPOSIT`]); one already registered is left as it is.
pub async fn fund_and_register(
    hosts: &[DevnetHost],
    exchanges: &[DevnetExchange],
    client: &SigningKey,
    miners: &[String],
) -> Result<()> {
    let mut chain = ChainClient::connect(miners).await?;
    for (i, e) in exchanges.iter().enumerate() {
        let cfg = exchange::Config::load(&e.config)?;
        let key = read_key(&cfg.key_file)?;
        fund_and_register_one(
            &mut chain,
            client,
            &key,
            Role::Exchange,
            (EXCHANGE_DEPOSIT, EXCHANGE_FEES),
            &e.listen,
        )
        .await
        .with_context(|| format!("exchange{i}"))?;
    }
    for (i, h) in hosts.iter().enumerate() {
        let cfg = HostConfig::load(&h.config)?;
        let key = read_key(&cfg.key_file)?;
        fund_and_register_one(
            &mut chain,
            client,
            &key,
            Role::Host,
            (HOST_DEPOSIT, HOST_FEES),
            &h.listen,
        )
        .await
        .with_context(|| format!("host{i}"))?;
    }
    Ok(())
}
