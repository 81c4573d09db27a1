//! `mspace host|miner register|unbond|withdraw`: the registry transactions of a contractor,
//! signed with the role's own key and submitted through `miner::ChainClient`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use api::chain::{ChainClient, Committed};
use clap::Args;
use ed25519_consensus::SigningKey;
use proto::tx::{AccountId, Role, TxBody};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct RegistryArgs {
    /// The role's configuration file (its key and, for a host, its miners).
    #[arg(long)]
    pub config: PathBuf,
    /// MASP to lock as the deposit (register only; at least the role's minimum).
    #[arg(long)]
    pub deposit: Option<u64>,
    /// A miner's control address to submit through (repeat; default: the configuration's).
    #[arg(long = "miner")]
    pub miners: Vec<String>,
    /// Fee in MASPC, burned.
    #[arg(long, default_value_t = 1)]
    pub fee: u64,
    /// How long to wait for the transaction to be committed.
    #[arg(long, default_value = "30s", value_parser = crate::netcli::parse_duration)]
    pub wait: Duration,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Which registry transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Register,
    Unbond,
    Withdraw,
}

#[derive(Debug, Serialize)]
struct RegistryJson {
    role: String,
    op: Op,
    account: String,
    #[serde(flatten)]
    committed: Committed,
    /// The registration after the transaction (absent once withdrawn).
    registration: Option<api::RegistrationView>,
    masp: u64,
}

/// Submits `op` for `role` as `key`. `endpoint` is what a register records (where others
/// reach the role); `default_miners` come from the role's configuration.
pub fn run(
    role: Role,
    op: Op,
    key: &SigningKey,
    endpoint: &str,
    default_miners: &[String],
    a: &RegistryArgs,
) -> Result<()> {
    let miners = if a.miners.is_empty() {
        default_miners.to_vec()
    } else {
        a.miners.clone()
    };
    if miners.is_empty() {
        bail!(
            "no miner to submit to: give --miner HOST:PORT, or list miners in {}",
            a.config.display()
        );
    }
    let body = match (op, a.deposit) {
        (Op::Register, Some(deposit)) => TxBody::Register {
            role,
            deposit,
            endpoint: endpoint.to_string(),
        },
        (Op::Register, None) => bail!("register needs --deposit <MASP>"),
        (_, Some(_)) => bail!("--deposit is for register only"),
        (Op::Unbond, None) => TxBody::Unbond { role },
        (Op::Withdraw, None) => TxBody::Withdraw { role },
    };
    let me = AccountId(key.verification_key().to_bytes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt
        .block_on(async {
            let mut chain = ChainClient::connect(&miners).await?;
            precheck(role, op, a, &chain.account(me).await?)?;
            let committed = chain.submit(key, body, a.fee, a.wait).await?;
            let account = chain.account(me).await?;
            let name = miner::role_name(role);
            anyhow::Ok(RegistryJson {
                registration: account.registrations.into_iter().find(|r| r.role == name),
                role: name,
                op,
                account: miner::hex(&me.0),
                committed,
                masp: account.masp,
            })
        })
        .with_context(|| format!("{op:?} as {role:?}").to_lowercase())?;
    if a.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "{} {}: committed at height {} (tx {}); registration now {:?}, {} MASP free",
            out.role,
            format!("{:?}", out.op).to_lowercase(),
            out.committed.height,
            out.committed.tx,
            out.registration,
            out.masp
        );
    }
    Ok(())
}

/// Refuses, before anything is signed, what the ledger would refuse for a reason the account
/// shows (the ledger stays the judge: this only spares waiting for a transaction that no
/// block will take).
fn precheck(role: Role, op: Op, a: &RegistryArgs, acct: &api::AccountView) -> Result<()> {
    let name = miner::role_name(role);
    let reg = acct.registrations.iter().find(|r| r.role == name);
    if acct.maspc < a.fee {
        bail!(
            "the account holds {} MASPC, less than the fee of {}",
            acct.maspc,
            a.fee
        );
    }
    match (op, reg) {
        (Op::Register, Some(r)) => bail!(
            "{} is already registered as {name} with a deposit of {} MASP",
            acct.key,
            r.deposit
        ),
        (Op::Register, None) => {
            let deposit = a.deposit.unwrap_or(0);
            let min = consensus::ledger::deposit_base(role);
            if deposit < min {
                bail!("a {name} deposit is at least {min} MASP, not {deposit}");
            }
            if acct.masp < deposit {
                bail!(
                    "the account holds {} MASP, less than the deposit of {deposit}",
                    acct.masp
                );
            }
        }
        (_, None) => bail!("{} is not registered as {name}", acct.key),
        (Op::Unbond, Some(r)) => {
            if let Some(until) = r.unbonding_until {
                bail!("the {name} deposit is already unbonding, until height {until}");
            }
        }
        (Op::Withdraw, Some(r)) => match r.unbonding_until {
            None => bail!("the {name} deposit is bonded: unbond it first"),
            Some(until) if acct.height < until => bail!(
                "the {name} deposit is unbonding until height {until}; the chain is at {}",
                acct.height
            ),
            Some(_) => {}
        },
    }
    Ok(())
}

/// Writes a role's configuration `text` at `config` and a new key `<role>.key` beside it,
/// then prints both paths, `<role> key <hex>` (what scripts read) and `next`.
pub fn write_config(config: &std::path::Path, role: &str, text: &str, next: &str) -> Result<()> {
    let base = crate::netcli::config_folder(config)?;
    let key_file = base.join(format!("{role}.key"));
    let key = net::config::write_new_key(&key_file)?;
    std::fs::write(config, text).with_context(|| format!("write {}", config.display()))?;
    println!(
        "wrote {} and the key {}",
        config.display(),
        key_file.display()
    );
    println!(
        "{role} key {}",
        miner::hex(&key.verification_key().to_bytes())
    );
    println!("{next}");
    Ok(())
}
