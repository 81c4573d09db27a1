//! The market steps of `mspace demo`: a devnet of four miners, three hosts and two
//! exchanges as processes (`mspace devnet --hosts 3 --exchanges 2`, short proof periods,
//! an index), the hosts' asks on both exchanges, one exchange killed, the sender finding
//! the other through the index and matched by it to the two cheapest hosts, the file
//! stored as a deal on those two, and again as erasure shares 2/3 on all three hosts,
//! three proof periods proven and paid, one host killed (its next challenge missed: its
//! deposit slashed, the sender refunded), a miner killed under the agents that follow it
//! (they move on and keep proving), the file downloaded from the surviving host and
//! rebuilt from the two live hosts' shares, a
//! receiver buying a download with the sender's share (`net::receive::buy`: the dead copy
//! left out before paying, the other host paid and claiming), and the balances of the
//! sender, the hosts and the chain's totals printed at each step.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use api::chain::ChainClient;
use api::DealView;
use ed25519_consensus::SigningKey;
use net::client::{get_file, GetJob, Key};
use net::config::read_key;
use net::deal::{match_on_exchange, nearest_exchanges, store, DealJob, MarketAsk};
use proto::tx::{AccountId, TxId};

use crate::chaincli::DevnetLayout;

const PROOF_PERIOD: u64 = 20;
/// The deals' length in proof periods: long enough that the last steps (the emergency
/// links, the paid download) still find the deals running on a slow machine. With 8, a CI
/// run found its deal ended just before the paid download.
const PERIODS: u64 = 16;

/// The devnet child; stopped (SIGTERM: it stops its miners and hosts) when dropped.
struct Devnet(Child);

impl Drop for Devnet {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

/// A first port with `n` free ports after it on 127.0.0.1, between 10000 and 20000: below
/// the kernel's ephemeral range, and below the ports the tests' devnets take (20000 up).
/// The search starts at a place drawn from the process id, so that demos run side by side
/// do not race for the same ports, and wraps around to try every candidate once.
/// What the demo's receivers pay the sender per download.
const DOWNLOAD_FEE: u64 = 5;

fn free_ports(n: u16) -> Result<u16> {
    const LOW: u16 = 10_000;
    const HIGH: u16 = 20_000;
    let slots = (HIGH - LOW) / n.max(1);
    let first = u16::try_from(std::process::id() % u32::from(slots)).unwrap_or(0);
    for k in 0..slots {
        let base = LOW + ((first + k) % slots) * n;
        let free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports on 127.0.0.1 between {LOW} and {HIGH}")
}

fn start_devnet(dir: &Path) -> Result<(Devnet, DevnetLayout)> {
    let exe = std::env::current_exe().context("find this binary")?;
    // Four miners' pairs, the hosts' range (16 pairs), the exchanges' (4), the index.
    let base = free_ports(8 + 32 + 4 + 1)?;
    let mut child = Command::new(exe)
        .args([
            "devnet",
            "--validators",
            "4",
            "--hosts",
            "3",
            "--exchanges",
            "2",
            "--dir",
        ])
        .arg(dir)
        .args(["--base-port", &base.to_string(), "--block-time-ms", "100"])
        .args(["--proof-period-blocks", &PROOF_PERIOD.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start mspace devnet")?;
    let out = child.stdout.take().context("the devnet's output")?;
    let net = Devnet(child);
    let mut out = BufReader::new(out);
    loop {
        let mut line = String::new();
        if out.read_line(&mut line)? == 0 {
            bail!(
                "the devnet stopped while starting (logs in {})",
                dir.display()
            );
        }
        if line.starts_with("try:") {
            break;
        }
    }
    // What it prints later is read and dropped.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let layout: DevnetLayout =
        serde_json::from_str(&std::fs::read_to_string(dir.join("devnet.json"))?)?;
    Ok((net, layout))
}

fn key_of(hex: &str) -> Result<AccountId> {
    miner::parse_key_hex(hex).map_err(anyhow::Error::msg)
}

/// Balances of the sender and the hosts, and the chain's totals, in two lines.
async fn balances(chain: &mut ChainClient, sender: AccountId, hosts: &[AccountId]) -> Result<()> {
    let s = chain.account(sender).await?;
    let mut line = format!("   sender {} MASP {} MASPC", s.masp, s.maspc);
    for (i, h) in hosts.iter().enumerate() {
        let a = chain.account(*h).await?;
        let deposit = a
            .registrations
            .iter()
            .find(|r| r.role == "host")
            .map_or(0, |r| r.deposit);
        line += &format!(" | host{i} {} MASPC, deposit {deposit} MASP", a.maspc);
    }
    let st = chain.status().await?;
    println!("{line}");
    println!(
        "   chain at height {}: supply {} MASP {} MASPC (genesis {} / {}), deposits {} MASP, escrow {} MASPC, burned {} MASPC{}",
        st.height,
        st.supply[0],
        st.supply[1],
        st.genesis_supply[0],
        st.genesis_supply[1],
        st.deposits[0],
        st.escrow[1],
        st.burned[1],
        if st.supply == st.genesis_supply { ": conserved" } else { ": NOT CONSERVED" }
    );
    if st.supply != st.genesis_supply {
        bail!("the chain's supply is not conserved");
    }
    Ok(())
}

/// Follows the chain until `done` holds of the deal.
async fn wait_deal(
    chain: &mut ChainClient,
    deal: TxId,
    what: &str,
    done: impl Fn(&DealView) -> bool,
) -> Result<DealView> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = chain.deal(deal).await?.context("the deal vanished")?;
        if done(&v) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("deal {deal} never {what} within 10 minutes");
        }
        let h = chain.status().await?.height;
        chain.block(h + 1, Duration::from_secs(10)).await?;
    }
}

/// Runs the market steps from `step` on; `sample` is the file to store, `pass` its
/// passphrase; returns the downloaded copy.
pub fn demo_market(dir: &Path, sample: &Path, pass: &[u8], step: &mut u32) -> Result<PathBuf> {
    let t = Instant::now();
    let (net, layout) = start_devnet(&dir.join("devnet"))?;
    let miners: Vec<String> = layout.miners.iter().map(|m| m.control.clone()).collect();
    println!(
        "{step}. `mspace devnet --validators 4 --hosts 3 --exchanges 2`: four miner, three host and two exchange processes and an index, each exchange registered on the chain and listed on the index, each host funded and registered with a deposit of {} MASP, its agent following the chain, its bidder asking 10, 11 or 12 MASPC per GiB per day on both exchanges; proof periods of {PROOF_PERIOD} blocks ({:.1} s)",
        crate::devhosts::HOST_DEPOSIT,
        t.elapsed().as_secs_f64()
    );
    *step += 1;
    let client: SigningKey = read_key(&layout.client_key)?;
    let sender = AccountId(client.verification_key().to_bytes());
    let hosts: Vec<AccountId> = layout
        .hosts
        .iter()
        .map(|h| key_of(&h.key))
        .collect::<Result<_>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let mut chain = ChainClient::connect(&miners).await?;
        balances(&mut chain, sender, &hosts).await?;

        // Once registered, the exchanges are listed on the index and the hosts' asks reach
        // both books; then one exchange dies and the sender goes through the index.
        let t = Instant::now();
        let index = layout
            .index
            .as_ref()
            .context("the devnet has no index")?
            .listen
            .clone();
        let ix = api::index_client(&index).await?;
        let ex1 = api::exchange_client(&layout.exchanges[1].listen).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ex1.status(tarpc::context::current()).await?.asks.len() < layout.hosts.len()
            || ix.exchanges(tarpc::context::current()).await?.len() < layout.exchanges.len()
        {
            if Instant::now() > deadline {
                bail!("the exchanges were not listed, or the hosts' asks did not reach exchange1, within a minute");
            }
            let h = chain.status().await?.height;
            chain.block(h + 1, Duration::from_secs(10)).await?;
        }
        let pid: i32 = std::fs::read_to_string(layout.exchanges[0].pid_file())?
            .trim()
            .parse()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        let mut job = DealJob {
            file: sample.to_owned(),
            hosts: Vec::new(),
            chain: miners.clone(),
            // Priced as 30 days (10 or 11 MASPC per GiB per day: 300 or 330 MASPC, 18 to
            // 21 per period), run as sixteen short periods.
            days: 30,
            period_blocks: Some(PROOF_PERIOD * PERIODS),
            key: client.clone(),
            passphrase: zeroize::Zeroizing::new(pass.to_vec()),
            kdf: proto::KdfParams::DEFAULT,
            chunk_bytes: proto::CHUNK_BYTES_DEFAULT,
            workers: engine::seal::default_workers(),
            journal_dir: dir.join("client-state"),
            via: Vec::new(),
            max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
            host_keys: Vec::new(),
            max_price_per_gib_day: None,
            exchange: None,
            download_fee: DOWNLOAD_FEE,
            insurance: None,
            erasure: None,
            batches: None,
        };
        let listed = ix.exchanges(tarpc::context::current()).await?.len();
        let near = nearest_exchanges(std::slice::from_ref(&index)).await?;
        let exchanges: Vec<String> = near.iter().map(|(e, _)| e.addr.clone()).collect();
        if exchanges != [layout.exchanges[1].listen.clone()] {
            bail!("the killed exchange0 answered, or exchange1 did not: {exchanges:?}");
        }
        let matched = match_on_exchange(
            &job,
            &MarketAsk {
                exchanges,
                copies: 2,
                max_price_per_gib_day: 20,
                region: String::new(),
                min_rating: 0,
                spread: false,
            },
            &(Arc::new(|_: &str| {}) as net::deal::Report),
        )
        .await?;
        let named: Vec<String> = matched
            .hosts
            .iter()
            .map(|m| {
                let i = layout.hosts.iter().position(|h| h.key == miner::hex(&m.host));
                format!(
                    "host{} at {} MASPC",
                    i.map_or("?".to_owned(), |i| i.to_string()),
                    m.price_per_gib_day
                )
            })
            .collect();
        println!(
            "{step}. exchange0 killed (SIGKILL); `mspace put --index --copies 2`: the index listed {listed} exchanges, exchange0 did not answer the client's probe, so the signed request went on to exchange1, which matched the two cheapest of three asks: {} ({:.1} s)",
            named.join(" and "),
            t.elapsed().as_secs_f64()
        );
        *step += 1;
        if matched.hosts.iter().map(|m| miner::hex(&m.host)).ne(layout.hosts[..2].iter().map(|h| h.key.clone())) {
            bail!("exchange1 did not match host0 and host1, the two cheapest: {named:?}");
        }
        job.hosts = matched.hosts.iter().map(|m| m.addr.clone()).collect();
        job.host_keys = matched.hosts.iter().map(|m| m.host).collect();
        job.exchange = Some(matched.key);
        job.max_price_per_gib_day = Some(20);
        let t = Instant::now();
        let done = store(&job, Arc::new(|_, _| {}), Arc::new(|_: &str| {})).await?;
        println!(
            "{step}. `mspace put` to the matched hosts: offers checked against the keys matched, the file sealed once for its {} chunks' CRC32C and BLAKE3 roots, paid into escrow on chain ({} and {} MASPC), uploaded through each host's deal link, and both hosts' own CRCs matched on chain ({:.1} s)",
            done.plan.chunks.len() + 1,
            done.placed[0].storage_fee,
            done.placed[1].storage_fee,
            t.elapsed().as_secs_f64()
        );
        *step += 1;
        balances(&mut chain, sender, &hosts).await?;
        let deals: Vec<TxId> = done.placed.iter().map(|p| p.deal).collect();

        // The same file again, as erasure shares 2/3 on all three hosts.
        let t = Instant::now();
        let scheme: proto::erasure::Scheme = "2/3".parse().map_err(anyhow::Error::msg)?;
        let shares_job = DealJob {
            hosts: layout.hosts.iter().map(|h| h.control.clone()).collect(),
            host_keys: Vec::new(),
            exchange: None,
            download_fee: 0,
            erasure: Some(scheme),
            ..job.clone()
        };
        let sharing = store(&shares_job, Arc::new(|_, _| {}), Arc::new(|_: &str| {})).await?;
        let share_links = net::deal::emergency_links(&sharing.placed)
            .await
            .into_iter()
            .map(|l| {
                l.map_err(|e| anyhow::anyhow!("no emergency link: {e}"))
                    .and_then(|t| Ok(proto::link::Link::parse(&t)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let shared_bytes: Vec<String> = sharing
            .plan
            .erasure
            .iter()
            .flat_map(|e| (0..e.scheme.n()).map(|i| sharing.plan.stored_by(Some(i))))
            .map(|s| crate::format_bytes(s.iter().map(|c| u64::from(c.sealed_bytes)).sum()))
            .collect();
        println!(
            "{step}. `mspace put --erasure 2/3` on host0, host1 and host2: each sealed chunk coded into three Reed-Solomon shares, any two of which rebuild it; each host paid for and storing one share of every chunk ({}) where a copy is {} ({:.1} s)",
            shared_bytes.join(", "),
            crate::format_bytes(
                sharing
                    .plan
                    .chunks
                    .iter()
                    .map(|c| u64::from(c.sealed_bytes))
                    .sum()
            ),
            t.elapsed().as_secs_f64()
        );
        *step += 1;
        // What `mspace put` keeps in the file's record: each host's emergency link.
        let emergency = net::deal::emergency_links(&done.placed).await;
        let links = emergency
            .iter()
            .map(|l| {
                l.as_ref()
                    .map_err(|e| anyhow::anyhow!("no emergency link: {e}"))
                    .and_then(|t| Ok(proto::link::Link::parse(t)?))
            })
            .collect::<Result<Vec<_>>>()?;

        let t = Instant::now();
        let mut paid = Vec::new();
        let mut commission = Vec::new();
        for d in &deals {
            let v = wait_deal(&mut chain, *d, "proved three periods", |v| v.proven >= 3).await?;
            if v.exchange.as_deref() != Some(&miner::hex(&matched.key)) {
                bail!("deal {d} does not name exchange1: {:?}", v.exchange);
            }
            if v.commission_paid == 0 {
                bail!("deal {d} paid exchange1 no commission in three periods: {v:?}");
            }
            paid.push(v.paid);
            commission.push((v.commission_paid, v.commission_permille));
        }
        println!(
            "{step}. three proof periods: each host answered the chain's 16 sampled leaves per period in one transaction, and each period paid its part of the escrow: {} and {} MASPC to the hosts so far, and {} and {} MASPC to exchange1, the commission ({} per mille) each host's offer promised it and each payment carried ({:.1} s)",
            paid[0],
            paid[1],
            commission[0].0,
            commission[1].0,
            commission[0].1,
            t.elapsed().as_secs_f64()
        );
        *step += 1;
        balances(&mut chain, sender, &hosts).await?;

        let victim = &layout.hosts[1];
        let pid: i32 = std::fs::read_to_string(victim.pid_file())?.trim().parse()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        let t = Instant::now();
        let lost = wait_deal(&mut chain, deals[1], "missed a proof", |v| v.missed >= 1).await?;
        println!(
            "{step}. host1 killed (SIGKILL): its next challenge went unanswered; for its copy's deal the chain refunded that period's part to the sender ({} MASPC so far) and moved {} MASP of host1's deposit to the sender (its erasure share's deal is slashed the same way) ({:.1} s)",
            lost.refunded,
            100 * u64::from(lost.missed),
            t.elapsed().as_secs_f64()
        );
        *step += 1;
        balances(&mut chain, sender, &hosts).await?;

        // A miner dies under the agents and clients that follow it: they move on.
        let t = Instant::now();
        let before = chain.deal(deals[0]).await?.context("the deal vanished")?.proven;
        let miner0 = layout.miners[0].config.with_file_name("miner.pid");
        let pid: i32 = std::fs::read_to_string(&miner0)?.trim().parse()?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        let after = wait_deal(&mut chain, deals[0], "proved another period", |v| {
            v.proven > before
        })
        .await?;
        println!(
            "{step}. miner0 killed (SIGKILL; the devnet restarts it): the agents and this client lost their miner, went on with the next one that answered, and host0 had {} periods proven ({:.1} s)",
            after.proven,
            t.elapsed().as_secs_f64()
        );
        *step += 1;

        let t = Instant::now();
        let out = dir.join("downloaded-from-deal.bin");
        let got = get_file(
            &GetJob {
                links,
                via: Vec::new(),
                max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
                key: client.clone(),
                unlock: Key::Share(Box::new(done.share_key.clone())),
                out: out.clone(),
                overwrite: true,
                workers: engine::seal::default_workers(),
            },
            Arc::new(|_, _| {}),
        )
        .await?;
        if got.served.first().map(|s| s.1) != Some(got.manifest.chunks.len() as u64) || got.lost.len() != 1 {
            bail!("the get did not come from host0 alone with host1 left out: {:?}, {:?}", got.served, got.lost);
        }
        println!(
            "{step}. `mspace get --file`: both copies' emergency links from the file's record (download links bound to the sender's key, valid for the deal's length, used with no exchange, index, miner or control plane asked): host1 is dead and left out, all {} chunks came from host0, verified and decrypted ({:.1} s)",
            got.manifest.chunks.len(),
            t.elapsed().as_secs_f64()
        );
        *step += 1;

        // The erasure shares come back from the two live hosts: host1's are rebuilt.
        let t = Instant::now();
        let rebuilt = dir.join("downloaded-from-shares.bin");
        let got = get_file(
            &GetJob {
                links: share_links,
                via: Vec::new(),
                max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
                key: client.clone(),
                unlock: Key::Share(Box::new(sharing.share_key.clone())),
                out: rebuilt.clone(),
                overwrite: true,
                workers: engine::seal::default_workers(),
            },
            Arc::new(|_, _| {}),
        )
        .await?;
        if std::fs::read(&rebuilt)? != std::fs::read(&out)? || got.lost.len() != 1 {
            bail!("the file did not come back from the two live hosts' shares: {:?}", got.lost);
        }
        println!(
            "{step}. `mspace get --file` of the erasure-coded copy: host1 is dead and left out; host0 and host2 sent {} and {} shares, every chunk rebuilt from two shares, verified and decrypted, byte-identical ({:.1} s)",
            got.served[0].1,
            got.served[1].1,
            t.elapsed().as_secs_f64()
        );
        *step += 1;

        // A receiver buys a download through the sender's share; the dead host's copy
        // comes first and is left out before anything is paid.
        let t = Instant::now();
        let receiver = SigningKey::new(rand_core::OsRng);
        let receiver_id = AccountId(receiver.verification_key().to_bytes());
        let funding = proto::tx::TxBody::Transfer {
            to: receiver_id,
            asset: proto::tx::Asset::Maspc,
            amount: 100,
        };
        let funded = chain
            .submit(&client, funding, 1, Duration::from_secs(60))
            .await?;
        // Every miner holds the funding block before the receiver's client picks one: the
        // miner restarted in the step before may still be syncing, and would not know the
        // receiver's account yet.
        for m in &miners {
            let mut one = ChainClient::connect(std::slice::from_ref(m)).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while one
                .block(funded.height, Duration::from_secs(10))
                .await?
                .is_none()
            {
                if Instant::now() >= deadline {
                    bail!("miner {m} has not reached height {} in 60 s", funded.height);
                }
            }
        }
        let copies = done
            .placed
            .iter()
            .rev()
            .map(|p| proto::fileshare::ShareCopy {
                deal: p.deal,
                host_addr: p.host_addr.clone(),
            })
            .collect();
        let share = proto::fileshare::FileShare::new(done.share_key.clone(), copies)
            .map_err(anyhow::Error::msg)?;
        let quiet: net::deal::Report = Arc::new(|_: &str| {});
        let purchase = net::receive::Purchase {
            share: &share,
            chain: &miners,
            key: &receiver,
            max_total: 100,
            report: &quiet,
        };
        let bought_file = dir.join("bought.bin");
        let job = GetJob {
            links: Vec::new(),
            via: Vec::new(),
            max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
            key: receiver.clone(),
            unlock: Key::Share(Box::new(share.key.clone())),
            out: bought_file.clone(),
            overwrite: true,
            workers: engine::seal::default_workers(),
        };
        let fetched = net::receive::fetch_shared(&purchase, &job, Arc::new(|_, _| {}))
            .await
            .map_err(|tried| anyhow::anyhow!("no copy sold the receiver a download: {tried:?}"))?;
        // The dead copies were left out before anything was paid to them.
        let (served, skipped) = fetched.tried.split_last().expect("a copy served it");
        if skipped.iter().any(|t| t.payment.is_some()) {
            bail!("the receiver paid a copy that did not serve it: {skipped:?}");
        }
        let skipped = skipped.len();
        let (Some(terms), Some(payment)) = (&served.terms, &served.payment) else {
            bail!("the download was not paid: {served:?}");
        };
        if std::fs::read(&bought_file)? != std::fs::read(&out)? {
            bail!("the receiver's download differs from the file");
        }
        let claimed = wait_deal(&mut chain, deals[0], "had the download claimed", |v| {
            v.downloads >= 1
        })
        .await?;
        println!(
            "{step}. `mspace share` / `mspace get msf1-...`: a receiver (a new key, funded with 100 MASPC) bought a download with the sender's share: {skipped} dead copy left out before paying, host0 quoted {} MASPC to the sender and {} to itself (signed), the receiver paid {} MASPC on chain (payment {}), host0 bound a link to the receiver's key and its agent claimed the payment; the file came back byte-identical and the sender's deal shows {} download, {} MASPC earned ({:.1} s)",
            terms.download_fee,
            terms.host_part,
            payment.total,
            payment.id,
            claimed.downloads,
            claimed.download_income,
            t.elapsed().as_secs_f64()
        );
        *step += 1;
        balances(&mut chain, sender, &hosts).await?;
        anyhow::Ok(out)
    })?;
    drop(net);
    Ok(out)
}
