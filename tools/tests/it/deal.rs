//! A storage deal as processes run it: a devnet (one miner, 100 ms blocks, 20-block proof
//! periods), two registered hosts whose agents follow the chain, and `mspace put --host`
//! paying both, uploading, and returning once both completions matched. Both hosts prove
//! three periods and are paid; one is killed, misses its next proofs, is slashed and the
//! sender refunded; the file is downloaded from the other, byte-identical; balances are
//! asserted exactly once both deals are over.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::chain::{json, start_chain_host, start_devnet_with};
use super::mspace;
use super::net::Proc;

const PROOF_PERIOD: u64 = 20;
const PERIODS: u64 = 8;
const HOST_DEPOSIT: u64 = 2000;
const HOST_MASPC: u64 = 100;
const COMPLAINT_FEE: u64 = 10;

struct Host {
    cfg: String,
    control: String,
    key: String,
    proc: Option<Proc>,
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

fn deal(m: &str, id: &str) -> serde_json::Value {
    json(&["chain", "deal", id, "--miner", m, "--json"])
}

fn account(m: &str, key: &str) -> serde_json::Value {
    json(&["chain", "account", key, "--miner", m, "--json"])
}

/// Follows the chain block by block until `done` holds of the deal (or 600 blocks pass).
/// Checks `done` at every block (waiting for each in turn), at most `blocks` times;
/// whether it came true.
fn until(m: &str, blocks: usize, mut done: impl FnMut() -> bool) -> bool {
    let mut height = json(&["chain", "status", "--miner", m, "--json"])["height"]
        .as_u64()
        .unwrap();
    for _ in 0..blocks {
        if done() {
            return true;
        }
        height += 1;
        json(&[
            "chain",
            "block",
            &height.to_string(),
            "--wait",
            "30s",
            "--miner",
            m,
            "--json",
        ]);
    }
    done()
}

/// A devnet of one miner (100 ms blocks, 20-block proof periods) and `hosts` registered,
/// funded hosts whose agents follow it; `slot` picks the devnet's ports, `extra` adds
/// `mspace devnet` options.
struct Market {
    _net: super::chain::Devnet,
    m0: String,
    /// The client's key file (the devnet's funded account).
    client: String,
    hosts: Vec<Host>,
}

fn start_market(dir: &Path, slot: u32, hosts: usize, extra: &[&str]) -> Market {
    let d = dir.join("net");
    let period = PROOF_PERIOD.to_string();
    let mut args = vec!["--block-time-ms", "100", "--proof-period-blocks", &period];
    args.extend_from_slice(extra);
    let (net, base) = start_devnet_with(&d, 1, slot, &args);
    let m0 = format!("127.0.0.1:{}", base + 1);
    let client = s(&d.join("client.key"));
    let status = json(&["chain", "status", "--miner", &m0, "--json"]);
    assert_eq!(status["proof_period_blocks"], PROOF_PERIOD);
    let transfer = |to: &str, asset: &str, amount: u64| {
        json(&[
            "chain",
            "transfer",
            "--key",
            &client,
            "--to",
            to,
            "--asset",
            asset,
            "--amount",
            &amount.to_string(),
            "--miner",
            &m0,
            "--wait",
            "60s",
            "--json",
        ]);
    };
    let hosts = (0..hosts)
        .map(|i| {
            let cfg = s(&dir.join(format!("host{i}/host.toml")));
            let data = dir.join(format!("host{i}/data"));
            let (control, _, proc, key) = start_chain_host(Path::new(&cfg), &data, &m0);
            transfer(&key, "masp", HOST_DEPOSIT);
            transfer(&key, "maspc", HOST_MASPC);
            json(&[
                "host",
                "register",
                "--config",
                &cfg,
                "--deposit",
                &HOST_DEPOSIT.to_string(),
                "--json",
            ]);
            Host {
                cfg,
                control,
                key,
                proc: Some(proc),
            }
        })
        .collect();
    Market {
        _net: net,
        m0,
        client,
        hosts,
    }
}

/// An exchange on a market's devnet.
struct Exchange {
    addr: String,
    key: String,
    /// Its `/metrics` address.
    metrics: String,
    proc: Proc,
}

/// `mspace exchange init` under `dir/name` with `extra` options, its config passed through
/// `edit`, run with `env`, then funded by the client (1,000 MASP, 10 MASPC) and registered
/// on the chain with a deposit of 1,000.
fn start_exchange(
    dir: &Path,
    name: &str,
    m0: &str,
    client: &str,
    extra: &[&str],
    edit: impl FnOnce(String) -> String,
    env: &[(&str, &str)],
) -> Exchange {
    let cfg = s(&dir.join(name).join("exchange.toml"));
    let addr = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let mut args = vec![
        "exchange", "init", "--config", &cfg, "--listen", &addr, "--chain", m0,
    ];
    args.extend_from_slice(extra);
    let init = mspace(&args, &[]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let key = init
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("exchange key "))
        .unwrap()
        .to_owned();
    let metrics = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "# metrics_listen = \"127.0.0.1:9403\"",
        &format!("metrics_listen = \"{metrics}\""),
    );
    std::fs::write(&cfg, edit(text)).unwrap();
    let proc = super::net::start(
        &["exchange", "run", "--config", &cfg],
        env,
        "exchange listening on",
    );
    for (asset, amount) in [("masp", "1000"), ("maspc", "10")] {
        json(&[
            "chain", "transfer", "--key", client, "--to", &key, "--asset", asset, "--amount",
            amount, "--miner", m0, "--wait", "60s", "--json",
        ]);
    }
    json(&[
        "exchange",
        "register",
        "--config",
        &cfg,
        "--deposit",
        "1000",
        "--json",
    ]);
    Exchange {
        addr,
        key,
        proc,
        metrics,
    }
}

/// `mspace index init` under `dir/index` and `mspace index run --config` on a free
/// loopback port (an environment override of the file's `listen`), following the chain
/// at `m0`.
fn start_index(dir: &Path, m0: &str) -> (String, Proc) {
    let cfg = s(&dir.join("index/index.toml"));
    let init = mspace(&["index", "init", "--config", &cfg, "--chain", m0], &[]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let again = mspace(&["index", "init", "--config", &cfg, "--chain", m0], &[]);
    assert_ne!(again.code, 0, "an existing configuration is never replaced");
    let ix = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let proc = super::net::start(
        &["index", "run", "--config", &cfg],
        &[("MSPACE_INDEX__LISTEN", ix.as_str())],
        &format!("index listening on {ix}"),
    );
    (ix, proc)
}

/// Each operator points its host at the exchange `ex` (or its replicas) with its price,
/// and restarts it.
fn ask_on(hosts: &mut [Host], ex: &[&str], prices: &[u64]) {
    for (h, price) in hosts.iter_mut().zip(prices) {
        drop(h.proc.take());
        let text = std::fs::read_to_string(&h.cfg)
            .unwrap()
            .replace("exchanges = []", &format!("exchanges = {ex:?}"))
            .replace(
                "price_per_gib_day = 10",
                &format!("price_per_gib_day = {price}"),
            );
        std::fs::write(&h.cfg, text).unwrap();
        h.proc = Some(super::net::start(
            &["host", "--config", &h.cfg],
            &[],
            "agent following the chain",
        ));
    }
}

/// Follows the chain until the index at `ix` lists one exchange and the exchange at `ex`
/// holds `asks` asks; the index's listing.
fn wait_listed(m0: &str, ix: &str, ex: &str, asks: usize) -> serde_json::Value {
    let listed = || json(&["index", "status", "--index", ix, "--json"]);
    assert!(
        until(m0, 200, || listed().as_array().unwrap().len() == 1),
        "the exchange was never listed: {}",
        listed()
    );
    let status = || json(&["exchange", "status", "--exchange", ex, "--json"]);
    assert!(
        until(m0, 200, || status()["asks"].as_array().unwrap().len()
            == asks),
        "the hosts' asks never reached the book: {}",
        status()
    );
    listed()
}

/// The hosts a `put --dry-run --json` matched, with their prices, best first.
fn picked(stdout: &str) -> Vec<(String, u64)> {
    let rows: serde_json::Value = serde_json::from_str(stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_owned(),
                r["price_per_gib_day"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Chunks a host's store holds.
fn stored(cfg: &str) -> u64 {
    json(&["host", "status", "--config", cfg, "--json"])["chunks"]
        .as_u64()
        .unwrap()
}

/// The public key (hex) of a key file.
/// The dashboard address a host's configuration names.
fn dashboard_of(cfg: &str) -> String {
    std::fs::read_to_string(cfg)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("dashboard_listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the host serves a dashboard")
        .to_owned()
}

fn pubkey(key_file: &str) -> String {
    let k = std::fs::read_to_string(key_file).unwrap();
    let seed: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
        .decode(k.trim().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    data_encoding::HEXLOWER.encode(
        &ed25519_consensus::SigningKey::from(seed)
            .verification_key()
            .to_bytes(),
    )
}

fn wait_deal(
    m: &str,
    id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    if until(m, 600, || {
        last = deal(m, id);
        done(&last)
    }) {
        return last;
    }
    panic!("deal {id} never {what}: {last}");
}

#[test]
fn a_deal_on_two_hosts_is_proven_paid_slashed_after_a_kill_and_downloaded_from_the_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let miner_metrics = super::net::free_port("127.0.0.1").to_string();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 2, 2, &["--metrics-base", &miner_metrics]);
    let client_key = pubkey(&client);
    let before = account(&m0, &client_key);

    // The file: 3 chunks of 64 KiB and a short one.
    let file = dir.path().join("photo.bin");
    let bytes: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(&file, &bytes).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    let state = s(&dir.path().join("client-state"));
    let env = [("MSPACE_STATE_DIR", state.as_str())];
    let blocks = (PROOF_PERIOD * PERIODS).to_string();
    let put = mspace(
        &[
            "put",
            &s(&file),
            "--host",
            &hosts[0].control,
            "--host",
            &hosts[1].control,
            "--chain",
            &m0,
            "--days",
            "1",
            "--period-blocks",
            &blocks,
            "--chunk-size",
            "64KiB",
            "--key",
            &client,
            "--passphrase-file",
            &s(&pass),
            "--json",
        ],
        &env,
    );
    assert_eq!(put.code, 0, "{}", put.stderr);
    let out: serde_json::Value = serde_json::from_str(&put.stdout).unwrap();
    let deals: Vec<String> = out["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deal"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deals.len(), 2, "{out}");
    assert_eq!(out["chunks"], 4);
    for (d, h) in deals.iter().zip(&hosts) {
        let v = deal(&m0, d);
        assert_eq!(v["host"], h.key.as_str());
        assert_eq!(v["sender"], client_key.as_str());
        assert_eq!(v["state"], "active", "{v}");
        assert_eq!(v["chunks"], 5, "four chunks and the manifest");
        assert_eq!(v["periods"], PERIODS);
    }
    let fee = out["deals"][0]["storage_fee"].as_u64().unwrap();
    assert_eq!(fee, 10, "price 10 x 1 started GiB x 1 day");

    // Three periods proven and paid on both.
    for d in &deals {
        let v = wait_deal(&m0, d, "proved three periods", |v| {
            v["proven"].as_u64() >= Some(3)
        });
        assert_eq!(v["missed"], 0, "{v}");
        // Each period but the last pays fee / 8 = 1 MASPC, the last the remainder.
        assert!(v["paid"].as_u64().unwrap() >= 3, "{v}");
    }
    // Proof of existence: the file's hash recorded by the client, found again; a second
    // record is refused. A complaint by a party of the deal is taken, by a stranger not.
    let rec = json(&[
        "chain",
        "record",
        &s(&file),
        "--key",
        &client,
        "--miner",
        &m0,
        "--json",
    ]);
    assert_eq!(rec["by"], client_key.as_str());
    assert_eq!(rec["hash"], blake3::hash(&bytes).to_hex().as_str());
    let again = json(&[
        "chain",
        "record",
        "--verify",
        &s(&file),
        "--miner",
        &m0,
        "--json",
    ]);
    assert_eq!(again, rec);
    let twice = mspace(
        &[
            "chain",
            "record",
            &s(&file),
            "--key",
            &client,
            "--miner",
            &m0,
        ],
        &[],
    );
    assert!(
        twice.stderr.contains("already recorded"),
        "{}",
        twice.stderr
    );
    let stranger = s(&dir.path().join("host0/host.key"));
    let refused = mspace(
        &[
            "chain", "complain", "--deal", &deals[1], "--key", &stranger, "--miner", &m0,
        ],
        &[],
    );
    assert!(
        refused.stderr.contains("only the deal's sender"),
        "{}",
        refused.stderr
    );
    json(&[
        "chain", "complain", "--deal", &deals[1], "--key", &client, "--miner", &m0, "--json",
    ]);

    // `mspace deals` lists both for the sender.
    let listed = json(&["deals", "--key", &client, "--chain", &m0, "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // Host 1 dies: its next challenge goes unanswered.
    drop(hosts[1].proc.take());
    let lost = wait_deal(&m0, &deals[1], "missed a proof", |v| {
        v["missed"].as_u64() >= Some(1)
    });
    assert!(lost["refunded"].as_u64().unwrap() >= 1, "{lost}");

    // The file comes back from the surviving host, through the deal's download link: the
    // get names both deals and their hosts, leaves out the dead one and fetches every
    // chunk from the other.
    let back = dir.path().join("back.bin");
    let get = mspace(
        &[
            "get",
            "--deal",
            &deals[1],
            "--host",
            &hosts[1].control,
            "--deal",
            &deals[0],
            "--host",
            &hosts[0].control,
            "--out",
            &s(&back),
            "--key",
            &client,
            "--passphrase-file",
            &s(&pass),
            "--json",
        ],
        &env,
    );
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let got: serde_json::Value = serde_json::from_str(&get.stdout).unwrap();
    assert_eq!(got["served"].as_array().unwrap().len(), 1, "{got}");
    assert!(
        got["lost"][0]
            .as_str()
            .unwrap()
            .starts_with(hosts[1].control.as_str()),
        "{got}"
    );

    // Both deals run out; then the chain is quiet and every balance is exact.
    let ended = |v: &serde_json::Value| v["state"] == "ended";
    let kept = wait_deal(&m0, &deals[0], "ended", ended);
    let lost = wait_deal(&m0, &deals[1], "ended", ended);
    assert_eq!(kept["proven"], PERIODS);
    assert_eq!(kept["paid"], fee);
    let missed = lost["missed"].as_u64().unwrap();
    assert_eq!(lost["proven"].as_u64().unwrap() + missed, PERIODS);
    assert_eq!(
        lost["paid"].as_u64().unwrap() + lost["refunded"].as_u64().unwrap(),
        fee
    );

    // The surviving host's agent sees its deal over and releases the file: its record
    // and every chunk leave the store.
    until(&m0, 100, || stored(&hosts[0].cfg) == 0);
    assert_eq!(
        stored(&hosts[0].cfg),
        0,
        "host0 still stores the ended deal's chunks"
    );
    // Host 1 was down when its deal ended: it still holds the chunks, and releases them
    // when it starts again (its held deals are on its disk).
    let held = dir.path().join("host1/host-state/deals");
    let held_count = || std::fs::read_dir(&held).unwrap().count();
    assert_eq!(held_count(), 1, "host1 holds its deal on disk");
    hosts[1].proc = Some(super::net::start(
        &["host", "--config", &hosts[1].cfg],
        &[],
        "agent following the chain",
    ));
    until(&m0, 100, || held_count() == 0 && stored(&hosts[1].cfg) == 0);
    assert_eq!(
        stored(&hosts[1].cfg),
        0,
        "host1 kept the chunks of a deal that ended while it was down"
    );
    assert_eq!(held_count(), 0, "host1 forgot the released deal");

    let after = account(&m0, &client_key);
    let nonce = |a: &serde_json::Value| a["nonce"].as_u64().unwrap();
    let sent_txs = nonce(&after) - nonce(&before);
    assert_eq!(sent_txs, 4, "one payment per host, a record, a complaint");
    assert_eq!(
        after["maspc"].as_u64().unwrap(),
        before["maspc"].as_u64().unwrap() - 2 * fee - sent_txs - COMPLAINT_FEE
            + lost["refunded"].as_u64().unwrap()
    );
    assert_eq!(
        after["masp"].as_u64().unwrap(),
        before["masp"].as_u64().unwrap() + 100 * missed,
        "each missed proof moves 100 MASP of the host's deposit to the sender"
    );
    for (h, v) in hosts.iter().zip([&kept, &lost]) {
        let a = account(&m0, &h.key);
        // Every transaction the host sent cost 1 MASPC: registration, completion, proofs.
        assert_eq!(
            a["maspc"].as_u64().unwrap(),
            HOST_MASPC - nonce(&a) + v["paid"].as_u64().unwrap(),
            "{a}"
        );
        let missed = v["missed"].as_u64().unwrap();
        assert_eq!(
            a["registrations"][0]["deposit"].as_u64().unwrap(),
            HOST_DEPOSIT - 100 * missed,
            "{a}"
        );
    }

    // Host 0's dashboard in a real browser: its deal, proofs and earnings, refreshed live
    // (the deal has ended by now: what it earned and proved stays).
    let python = super::gateway::installed("scripts/browser.sh");
    let shot =
        std::env::var("MSPACE_SCREENSHOT").unwrap_or_else(|_| s(&dir.path().join("dashboard.png")));
    let url = format!("http://{}/", dashboard_of(&hosts[0].cfg));
    let check = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/dashboard-check.py"))
        .args(["--url", &url, "--key", &hosts[0].key, "--min-deals", "1"])
        .args([
            "--min-proven",
            "3",
            "--min-earned",
            "3",
            "--screenshot",
            &shot,
        ])
        .output()
        .unwrap();
    let seen = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{seen}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    println!("the dashboard showed {seen}");
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));

    // The miner's metrics, as Prometheus and its Grafana dashboard read them.
    let m = super::net::check_metrics("miner", &format!("127.0.0.1:{miner_metrics}"));
    let height: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("mspace_miner_height "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(height > PROOF_PERIOD * PERIODS, "{m}");
    assert!(m.contains("mspace_miner_validators 1\n"), "{m}");
}

/// A file too large for one deal (8,300 chunks of 4 KiB: three deals of at most 4,096
/// entries) whose `put` is killed as soon as its first part is paid; the same command again
/// loses its host (killed mid-upload); once the host is back, the command a third time
/// pays only the parts not paid yet, uploads every part under its own deal's link
/// (resuming what the host has), and records the file with the last. The file comes back
/// whole through the last part's deal, and once the three deals are over the host's store
/// is empty: the parts before the last wait for the file's record to go before their
/// chunks do.
#[test]
fn a_file_paid_in_parts_survives_a_killed_put_and_a_killed_host_and_is_released_whole() {
    const CHUNKS: usize = 8_300;
    const PARTS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(
        dir.path(),
        3,
        1,
        // 4,096 chunks uploaded and read back per part take more than the default 100
        // blocks (10 s here) on a loaded two-core machine.
        &["--completion-timeout-blocks", "1000"],
    );

    let file = dir.path().join("big.bin");
    let mut bytes = vec![0u8; CHUNKS * 4096 - 1000];
    blake3::Hasher::new()
        .update(b"resume")
        .finalize_xof()
        .fill(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    let state = s(&dir.path().join("client-state"));
    let control = hosts[0].control.clone();
    let args = [
        "put",
        &s(&file),
        "--host",
        &control,
        "--chain",
        &m0,
        "--days",
        "1",
        "--period-blocks",
        "400",
        "--chunk-size",
        "4KiB",
        "--key",
        &client,
        "--passphrase-file",
        &s(&pass),
        "--json",
    ];
    let deals = || json(&["deals", "--key", &client, "--chain", &m0, "--json"]);
    let nonce = |k: &str| {
        json(&["chain", "account", k, "--miner", &m0, "--json"])["nonce"]
            .as_u64()
            .unwrap()
    };
    let sender = pubkey(&client);
    let nonce_before = nonce(&sender);
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mspace"))
            .args(args)
            .env("MSPACE_STATE_DIR", &state)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    // Killed as soon as its first payment is on chain.
    loop {
        if !deals().as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "put ended before paying"
        );
    }
    first.kill().unwrap();
    let status = first.wait().unwrap();
    assert!(
        status.code().is_none(),
        "put finished before it was killed: {status}"
    );
    // A payment the killed run had in flight is committed by the next block.
    until(&m0, 2, || false);
    let paid_before: Vec<String> = deals()
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(paid_before.len() < PARTS, "{paid_before:?}");

    // The same command again; its host is killed once it stored a thousand chunks more.
    let cfg = hosts[0].cfg.clone();
    let at_start = stored(&cfg);
    let mut second = spawn();
    while stored(&cfg) < at_start + 1000 {
        assert!(
            second.try_wait().unwrap().is_none(),
            "put ended before the host was killed"
        );
    }
    drop(hosts[0].proc.take());
    let lost = second.wait_with_output().unwrap();
    assert_ne!(
        lost.status.code(),
        Some(0),
        "put succeeded without its host"
    );
    let why = String::from_utf8_lossy(&lost.stderr);
    assert!(why.contains("storing"), "{why}");
    hosts[0].proc = Some(super::net::start(
        &["host", "--config", &cfg],
        &[],
        "agent following the chain",
    ));
    let host = &hosts[0];

    // A third time, with the host back: the same sealing, the parts already paid taken as
    // they are, what the host holds not sent again.
    let again = mspace(&args, &[("MSPACE_STATE_DIR", state.as_str())]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let out: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(out["chunks"], CHUNKS);
    let parts: Vec<String> = out["deals"][0]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(parts.len(), PARTS, "{out}");
    assert_eq!(out["deals"][0]["deal"], parts[PARTS - 1].as_str());
    for p in &paid_before {
        assert!(parts.contains(p), "the rerun paid {p} again: {out}");
    }
    assert_eq!(
        nonce(&sender) - nonce_before,
        PARTS as u64,
        "each part is paid once over the three runs"
    );
    let listed = deals();
    assert_eq!(listed.as_array().unwrap().len(), PARTS, "{listed}");
    let mut covered = 0;
    for (i, id) in parts.iter().enumerate() {
        let v = deal(&m0, id);
        assert_eq!(v["state"], "active", "{v}");
        covered += v["chunks"].as_u64().unwrap();
        if i + 1 < PARTS {
            assert_eq!(v["chunks"], 4096, "{v}");
        }
    }
    assert_eq!(
        covered,
        CHUNKS as u64 + 1,
        "every chunk and the manifest, once"
    );

    // The file comes back through the deal holding its manifest.
    let back = dir.path().join("back.bin");
    let get = mspace(
        &[
            "get",
            "--deal",
            &parts[PARTS - 1],
            "--host",
            &host.control,
            "--out",
            &s(&back),
            "--key",
            &client,
            "--passphrase-file",
            &s(&pass),
        ],
        &[("MSPACE_STATE_DIR", state.as_str())],
    );
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert!(std::fs::read(&back).unwrap() == bytes);

    // All three end; the host releases the file's record and every chunk of every part.
    for id in &parts {
        let v = wait_deal(&m0, id, "ended", |v| v["state"] == "ended");
        // No part was active while the host was down: every period proven and paid.
        assert_eq!(v["missed"], 0, "{v}");
        assert_eq!(v["paid"], v["storage_fee"], "{v}");
    }
    let held = dir.path().join("host0/host-state/deals");
    let held_count = || std::fs::read_dir(&held).unwrap().count();
    until(&m0, 300, || held_count() == 0 && stored(&host.cfg) == 0);
    assert_eq!(stored(&host.cfg), 0, "chunks of ended parts are left");
    assert_eq!(held_count(), 0, "ended parts are still held");
}

/// A sender that lies: its payments state a wrong CRC32C for chunk 1 (the client's own
/// deal code, handed a doctored chunk list as a modified client would send), and it uploads
/// the true chunks through each deal's link. The host's agent completes with the CRCs it
/// computed itself; the chain names chunk 1 to both sides and refunds the escrow, the host
/// is paid nothing and keeps its deposit; the client pays again on a fresh offer, twice, and
/// then gives up naming the chunk; the host drops the chunks it holds for nothing.
#[test]
fn a_payment_whose_crcs_differ_from_the_hosts_is_refunded_retried_and_given_up() {
    use std::sync::{Arc, Mutex};
    const PERIOD_BLOCKS: u64 = 40;
    const CHUNK: u32 = 65_536;
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        hosts,
    } = start_market(dir.path(), 4, 1, &[]);
    let host = &hosts[0];
    let file = dir.path().join("lie.bin");
    let mut bytes = vec![0u8; 3 * CHUNK as usize - 100];
    blake3::Hasher::new()
        .update(b"lie")
        .finalize_xof()
        .fill(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    let pass = b"correct horse battery staple".to_vec();
    let seed: [u8; 32] = data_encoding::HEXLOWER_PERMISSIVE
        .decode(std::fs::read_to_string(&client).unwrap().trim().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    let sender = pubkey(&client);
    let sender_before = account(&m0, &sender)["maspc"].as_u64().unwrap();
    let host_before = account(&m0, &host.key);

    let job = net::deal::DealJob {
        file: file.clone(),
        hosts: vec![host.control.clone()],
        chain: vec![m0.clone()],
        days: 1,
        period_blocks: Some(PERIOD_BLOCKS),
        key: ed25519_consensus::SigningKey::from(seed),
        passphrase: zeroize::Zeroizing::new(pass.clone()),
        kdf: proto::KdfParams::DEFAULT,
        chunk_bytes: CHUNK,
        workers: 1,
        journal_dir: dir.path().join("journal"),
        via: Vec::new(),
        max_proxy_price: net::client::PROXY_PRICE_MAX_DEFAULT,
        host_keys: Vec::new(),
        max_price_per_gib_day: None,
        exchange: None,
        download_fee: 0,
        insurance: None,
        erasure: None,
        batches: None,
    };
    let plan = net::client::plan_deal(
        &file,
        &pass,
        CHUNK,
        proto::KdfParams::DEFAULT,
        1,
        &|_, _| {},
        None,
        None,
    )
    .unwrap();
    let mut entries = plan.entries_of(None);
    assert_eq!(entries.len(), 4, "three chunks and the manifest");
    entries[1].crc32c ^= 1;
    let preset = net::client::Preset {
        plan,
        entries: 0..entries.len(),
        share: None,
        batch: None,
    };
    let said = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&said);
    let report: net::deal::Report = Arc::new(move |m: &str| log.lock().unwrap().push(m.to_owned()));
    let err = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(net::deal::place_entries(&job, preset, &entries, report))
        .expect_err("a lying sender's deal was placed")
        .to_string();
    let said = said.lock().unwrap().join("\n");
    assert!(
        err.contains("the host's CRCs differed from ours at chunks [1] in 3 deals"),
        "{err}\n{said}"
    );
    assert_eq!(
        said.matches("differ at chunks [1]: refunded; paying again")
            .count(),
        2,
        "{said}"
    );

    // Both sides see each deal's outcome: the sender's and the host's lists, `chain deal`.
    let listed = json(&["deals", "--account", &sender, "--chain", &m0, "--json"]);
    let deals = listed.as_array().unwrap();
    assert_eq!(deals.len(), 3, "{listed}");
    for d in deals {
        assert_eq!(d["state"], "mismatched", "{d}");
        assert_eq!(
            d["detail"]["Mismatched"]["chunks"],
            serde_json::json!([1]),
            "{d}"
        );
        assert_eq!(d["refunded"], d["storage_fee"], "{d}");
        assert_eq!(
            (d["paid"].as_u64(), d["escrow"].as_u64()),
            (Some(0), Some(0)),
            "{d}"
        );
    }
    let host_listed = json(&["deals", "--account", &host.key, "--chain", &m0, "--json"]);
    assert_eq!(host_listed, listed);
    let id = deals[0]["id"].as_str().unwrap();
    let words = mspace(&["chain", "deal", id, "--miner", &m0], &[]);
    assert_eq!(words.code, 0, "{}", words.stderr);
    assert!(
        words.stdout.contains("mismatched at chunks [1]"),
        "{}",
        words.stdout
    );
    // The sender paid only the three payments' fees; the host got nothing and lost no
    // deposit, its three completions' fees aside.
    assert_eq!(
        account(&m0, &sender)["maspc"].as_u64().unwrap(),
        sender_before - 3 * net::deal::PAYMENT_FEE
    );
    let host_after = account(&m0, &host.key);
    assert_eq!(
        host_after["registrations"][0]["deposit"],
        host_before["registrations"][0]["deposit"]
    );
    assert_eq!(
        host_after["maspc"].as_u64().unwrap(),
        host_before["maspc"].as_u64().unwrap() - 3,
        "the host paid its completions' fees and was paid nothing"
    );
    // The host keeps nothing it is not paid for.
    assert!(
        until(&m0, 100, || stored(&host.cfg) == 0),
        "the host still holds {} chunks of refunded deals",
        stored(&host.cfg)
    );
}

/// The market's first steps as processes: an index; an exchange registered on the chain
/// and listed there by its lister; three registered hosts asking 30, 10 and 20 MASPC per
/// GiB per day on it (each through its own bidder, signed); a sender's `put --index`
/// (`--dry-run`) and `put --exchange --copies 2` matched to the two cheapest,
/// then paid, uploaded and completed on each; requests outside the exchange's profile,
/// from a key with no account on chain, or above every ask's price, refused by name; a key
/// that keeps asking without dealing, banned; the exchange killed, and a sender going
/// through the index told that no exchange answers.
#[test]
fn an_exchange_matches_a_put_to_the_cheapest_hosts_asking_there() {
    const PRICES: [u64; 3] = [30, 10, 20];
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 5, 3, &[]);
    let (ix, _index) = start_index(dir.path(), &m0);
    // Two answered requests in a row with no deal after them ban a key. The exchange
    // registers on the chain (funded by the client), and its lister gets it listed on the
    // index.
    let Exchange {
        addr: ex,
        key: ex_key,
        proc: ex_proc,
        metrics: ex_metrics,
    } = start_exchange(
        dir.path(),
        "exchange",
        &m0,
        &client,
        &[
            "--max-days",
            "365",
            "--commission-permille",
            "100",
            "--index",
            &ix,
        ],
        |text| {
            assert!(text.contains("strikes_to_ban = 20"), "{text}");
            text.replace("strikes_to_ban = 20", "strikes_to_ban = 2")
        },
        &[],
    );
    ask_on(&mut hosts, &[&ex], &PRICES);
    let listed = wait_listed(&m0, &ix, &ex, PRICES.len());
    assert_eq!(listed[0]["key"], ex_key.as_str());
    assert_eq!(listed[0]["addr"], ex.as_str());
    let status = || json(&["exchange", "status", "--exchange", &ex, "--json"]);

    let (file, _, pass, state) = client_files(dir.path(), "market", 300_000);
    // Through the exchange by name, or through the index.
    let put_via = |via: [&str; 2], extra: &[&str], key: &str| {
        let mut args = vec![
            "put",
            file.to_str().unwrap(),
            via[0],
            via[1],
            "--chain",
            &m0,
            "--copies",
            "2",
            "--chunk-size",
            "64KiB",
            "--key",
            key,
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--json",
        ];
        if !extra.contains(&"--days") {
            args.extend_from_slice(&["--days", "1"]);
        }
        args.extend_from_slice(extra);
        mspace(&args, &[("MSPACE_STATE_DIR", state.as_str())])
    };
    let put = |extra: &[&str], key: &str| put_via(["--exchange", &ex], extra, key);
    let cheapest = [hosts[1].key.clone(), hosts[2].key.clone()];

    let dry = put_via(["--index", &ix], &["--dry-run"], &client);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(
        picked(dry.stdout.as_str()),
        vec![(cheapest[0].clone(), 10), (cheapest[1].clone(), 20)]
    );
    // Erasure shares 2/3 ask the exchange for three distinct hosts, each for half the file
    // (from another funded key: this exchange bans a key after two requests with no deal).
    let (asker, _) = funded_receiver(dir.path(), "asker", &m0, &client, 10);
    let dry = mspace(
        &[
            "put",
            file.to_str().unwrap(),
            "--index",
            &ix,
            "--erasure",
            "2/3",
            "--chain",
            &m0,
            "--days",
            "1",
            "--chunk-size",
            "64KiB",
            "--key",
            &asker,
            "--dry-run",
        ],
        &[("MSPACE_STATE_DIR", state.as_str())],
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("3 host(s) matched for erasure 2/3 shares, one per host, of 164.55 KiB"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        json(&["deals", "--key", &client, "--chain", &m0, "--json"]),
        serde_json::json!([])
    );

    let st = status();
    assert_eq!(
        (st["key"].as_str(), st["commission_permille"].as_u64()),
        (Some(ex_key.as_str()), Some(100)),
        "{st}"
    );
    let ex_maspc = || account(&m0, &ex_key)["maspc"].as_u64().unwrap();
    let ex_before = ex_maspc();
    // Priced as 30 days (300 and 600 MASPC), run as two proof periods.
    let paid = put(&["--days", "30", "--period-blocks", "40"], &client);
    assert_eq!(paid.code, 0, "{}", paid.stderr);
    let out: serde_json::Value = serde_json::from_str(&paid.stdout).unwrap();
    // Its milestones: matched, then the first chunk out, then done.
    let t = &out["timings"];
    let ms = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("no {k} in {t}"));
    assert!(
        ms("matched_ms") <= ms("first_byte_ms") && ms("first_byte_ms") <= ms("total_ms"),
        "{t}"
    );
    let placed: Vec<&str> = out["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        placed,
        vec![cheapest[0].as_str(), cheapest[1].as_str()],
        "{out}"
    );
    // Each payment names the exchange and the commission the host's offer promised it;
    // the chain pays it 10% of each part the host earns, and the host the rest.
    let ids: Vec<String> = out["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deal"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        let v = deal(&m0, id);
        assert_eq!(v["state"], "active", "{v}");
        assert_eq!(v["exchange"], ex_key.as_str(), "{v}");
        assert_eq!(v["commission_permille"], 100, "{v}");
    }
    assert!(
        until(&m0, 400, || ids
            .iter()
            .all(|id| deal(&m0, id)["state"] == "ended")),
        "the deals did not run their two periods"
    );
    let mut commissions = 0;
    for (id, fee) in ids.iter().zip([300, 600]) {
        let v = deal(&m0, id);
        assert_eq!(
            (
                v["storage_fee"].as_u64(),
                v["proven"].as_u64(),
                v["commission_paid"].as_u64(),
                v["paid"].as_u64()
            ),
            (Some(fee), Some(2), Some(fee / 10), Some(fee - fee / 10)),
            "{v}"
        );
        commissions += fee / 10;
    }
    assert_eq!(ex_maspc(), ex_before + commissions);

    // Refusals, each naming why; nothing paid for any.
    let nobody = dir.path().join("nobody.key");
    std::fs::write(&nobody, "07".repeat(32)).unwrap();
    for (extra, key, says) in [
        (
            &["--days", "400"][..],
            client.as_str(),
            "takes storage of 1 to 365 days",
        ),
        (&[][..], nobody.to_str().unwrap(), "no account on the chain"),
        (
            &["--max-price", "5"][..],
            client.as_str(),
            "matched 0 host(s) for 2 copies",
        ),
        // New hosts are rated below the top of the scale.
        (
            &["--min-rating", "1000"][..],
            client.as_str(),
            "matched 0 host(s) for 2 copies",
        ),
    ] {
        let mut args = vec!["--dry-run"];
        args.extend_from_slice(extra);
        let r = put(&args, key);
        assert_ne!(r.code, 0, "{args:?} was not refused");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    // An exchange that dies while the sender negotiates: exchange B, registered on the
    // chain and listed on a second index (the only exchange there), answers the client's
    // probe and its first call (its terms), then exits as the signed request reaches it
    // (fault injection). The sender, given both indexes, asks the indexes again: the
    // second lists nothing it has not tried, the first lists exchange A, which matches.
    let ix_b = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let _index_b = super::net::start(
        &["index", "run", "--listen", &ix_b, "--chain", &m0],
        &[],
        "index listening on",
    );
    let Exchange {
        addr: exb,
        proc: mut exb_proc,
        ..
    } = start_exchange(
        dir.path(),
        "exchange-b",
        &m0,
        &client,
        &["--index", &ix_b],
        |t| t,
        &[(exchange::FAULT_ENV, "exit-on-request")],
    );
    let listed_b = || json(&["index", "status", "--index", &ix_b, "--json"]);
    assert!(
        until(&m0, 200, || listed_b().as_array().unwrap().len() == 1),
        "exchange B was never listed: {}",
        listed_b()
    );
    let r = mspace(
        &[
            "put",
            file.to_str().unwrap(),
            "--index",
            &ix_b,
            "--index",
            &ix,
            "--chain",
            &m0,
            "--copies",
            "2",
            "--days",
            "1",
            "--key",
            &client,
            "--dry-run",
        ],
        &[("MSPACE_STATE_DIR", state.as_str())],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for says in [
        format!("exchange {exb} stopped answering while negotiating"),
        "asking the index again for an exchange not tried yet".to_owned(),
        format!("index {ix_b} lists 0 live exchange(s) that answer not tried yet"),
        format!("index {ix} lists 1 live exchange(s) that answer not tried yet"),
        "2 host(s) matched".to_owned(),
        format!("matched by exchange {ex_key} at {ex}"),
    ] {
        assert!(r.stdout.contains(&says), "no {says:?} in:\n{}", r.stdout);
    }
    assert_eq!(
        exb_proc.0.wait().unwrap().code(),
        Some(3),
        "exchange B exited by its fault injection"
    );
    // Flood control: the dry run before the paid put was one strike, the deals after it
    // cleared it; the dry run just answered (after exchange B died) is another, then two
    // more dry runs in a row: the second finds two answers with no deal after them, and
    // the key is banned, saying until when.
    let r = put(&["--dry-run"], &client);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for _ in 0..2 {
        let r = put(&["--dry-run"], &client);
        assert_ne!(r.code, 0, "a key asking without dealing was not banned");
        assert!(
            r.stderr.contains("this key is banned until"),
            "{}",
            r.stderr
        );
    }
    let st = status();
    assert_eq!(st["refused"]["outside the profile"], 1, "{st}");
    assert_eq!(st["refused"]["no account"], 1, "{st}");
    assert_eq!(st["refused"]["banned"], 2, "{st}");
    // Six from the client, one from the erasure asker.
    assert_eq!(st["requests_matched"], 7, "{st}");
    let m = super::net::check_metrics("exchange", &ex_metrics);
    assert!(
        m.contains("mspace_exchange_requests_matched_total 7\n"),
        "{m}"
    );
    assert!(
        m.contains("mspace_exchange_refused_total{reason=\"banned\"} 2\n"),
        "{m}"
    );

    // The exchange dies: the index still lists it until its listing lapses, but a sender
    // probing it finds no exchange that answers, and says so.
    drop(ex_proc);
    let r = put_via(["--index", &ix], &["--dry-run"], &client);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("the index lists no exchange that answers"),
        "{}",
        r.stderr
    );
    assert_eq!(
        json(&["deals", "--key", &client, "--chain", &m0, "--json"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Hosts that bid request by request: host 0 keeps a standing ask at 20 MASPC per GiB per
/// day, host 1 posts no ask and watches the exchange for forwarded requests, bidding 10.
/// A sender's put of two copies through the exchange is matched to host 1 by its bid and
/// host 0 by its ask, paid (naming the exchange) and stored; a request host 1 would not
/// take (under its price) gets a signed pass and matches nothing. Then the exchange dies
/// and the file comes back with `get --file` through the emergency links its record keeps,
/// from both hosts, and from one when the other dies.
#[test]
fn a_host_bidding_request_by_request_is_matched_and_the_file_comes_back_by_emergency_links() {
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 6, 2, &[]);
    let Exchange {
        addr: ex,
        key: ex_key,
        proc: ex_proc,
        ..
    } = start_exchange(
        dir.path(),
        "exchange",
        &m0,
        &client,
        &[],
        |text| {
            assert!(
                text.contains("bid_window_ms = 500"),
                "the default bid window"
            );
            text
        },
        &[],
    );
    for (i, h) in hosts.iter_mut().enumerate() {
        drop(h.proc.take());
        let mut text = std::fs::read_to_string(&h.cfg)
            .unwrap()
            .replace("exchanges = []", &format!("exchanges = [{ex:?}]"));
        if i == 1 {
            assert!(text.contains("post_asks = true\nbid_on_requests = false"));
            // A dear egress price, so that the exchange's commission on a download shows.
            text = text
                .replace("post_asks = true", "post_asks = false")
                .replace("bid_on_requests = false", "bid_on_requests = true")
                .replace(
                    "egress_price_per_gib = 1\n",
                    // 2^30 per GiB: one MASPC per byte.
                    "egress_price_per_gib = 1073741824\n",
                );
        } else {
            text = text.replace("price_per_gib_day = 10", "price_per_gib_day = 20");
        }
        std::fs::write(&h.cfg, text).unwrap();
        h.proc = Some(super::net::start(
            &["host", "--config", &h.cfg],
            &[],
            "agent following the chain",
        ));
    }
    let status = || json(&["exchange", "status", "--exchange", &ex, "--json"]);
    assert!(
        until(&m0, 200, || {
            let st = status();
            st["asks"].as_array().unwrap().len() == 1 && st["watchers"] == 1
        }),
        "host 0's ask and host 1's watch never reached the exchange: {}",
        status()
    );
    assert_eq!(status()["asks"][0]["host"], hosts[0].key.as_str());

    let (file, bytes, pass, state) = client_files(dir.path(), "bid", 200_000);
    let put = |extra: &[&str]| {
        let mut args = vec![
            "put",
            file.to_str().unwrap(),
            "--exchange",
            &ex,
            "--chain",
            &m0,
            "--days",
            "1",
            "--chunk-size",
            "64KiB",
            "--key",
            &client,
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        mspace(&args, &[("MSPACE_STATE_DIR", state.as_str())])
    };
    // Two copies: host 1 by its bid (10), host 0 by its ask (20).
    let r = put(&["--copies", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let placed = &out["deals"][0];
    assert_eq!(out["deals"][1]["host"], hosts[0].key.as_str(), "{out}");
    assert_eq!(out["emergency_links"], 2, "{out}");
    let manifest = out["manifest_id"].as_str().unwrap().to_owned();
    assert_eq!(placed["host"], hosts[1].key.as_str(), "{out}");
    let v = wait_deal(
        &m0,
        placed["deal"].as_str().unwrap(),
        "became active",
        |v| v["state"] == "active",
    );
    assert_eq!(v["exchange"], ex_key.as_str(), "{v}");
    assert_eq!(v["commission_permille"], 20, "{v}");
    assert!(stored(&hosts[1].cfg) > 0, "host 1 stored nothing");
    // Its operator cannot drop a file a deal paid for (it stays until the deal ends).
    let before = stored(&hosts[1].cfg);
    let kept = mspace(&["host", "drop", "--config", &hosts[1].cfg, &manifest], &[]);
    assert_ne!(kept.code, 0);
    assert!(kept.stderr.contains("paid for by deal"), "{}", kept.stderr);
    assert_eq!(stored(&hosts[1].cfg), before);

    // A receiver buys a download of the deal the exchange matched: of host 1's 1,000 MASPC
    // price, the exchange is paid its 20 per mille by the chain when the host claims.
    let deal_id = placed["deal"].as_str().unwrap().to_owned();
    let ex_maspc = || account(&m0, &ex_key)["maspc"].as_u64().unwrap();
    // What the exchange earns apart from this download: its storage commissions.
    let storage_commission = || {
        (0..2)
            .map(|i| {
                deal(&m0, out["deals"][i]["deal"].as_str().unwrap())["commission_paid"]
                    .as_u64()
                    .unwrap()
            })
            .sum::<u64>()
    };
    let before = ex_maspc() - storage_commission();
    let share = mspace(
        &["share", &manifest, "--chain", &m0, "--json"],
        &[("MSPACE_STATE_DIR", state.as_str())],
    );
    assert_eq!(share.code, 0, "{}", share.stderr);
    let share: serde_json::Value = serde_json::from_str(&share.stdout).unwrap();
    let price = deal(&m0, &deal_id)["bytes"].as_u64().unwrap();
    let commission = price * 20 / 1000;
    let (buyer, _) = funded_receiver(dir.path(), "buyer", &m0, &client, price + 1);
    let got = json(&[
        "get",
        share["share"].as_str().unwrap(),
        "--out",
        dir.path().join("bought.bin").to_str().unwrap(),
        "--key",
        &buyer,
        "--chain",
        &m0,
        "--max-fee",
        &price.to_string(),
        "--json",
    ]);
    assert_eq!(got["payments"][0]["deal"], deal_id.as_str(), "{got}");
    assert_eq!(got["payments"][0]["total"], price, "{got}");
    assert_eq!(got["payments"][0]["host_part"], price - commission, "{got}");
    wait_deal(&m0, &deal_id, "had its download claimed", |v| {
        v["downloads"] == 1
    });
    assert_eq!(ex_maspc() - storage_commission(), before + commission);
    let st = status();
    assert_eq!(
        (
            st["requests_forwarded"].as_u64(),
            st["bids"].as_u64(),
            st["bids_matched"].as_u64(),
            st["asks"].as_array().unwrap().len()
        ),
        (Some(1), Some(1), Some(1), 1),
        "{st}"
    );

    // Under host 1's price: it passes, host 0's ask is dearer too; nothing matches.
    let r = put(&["--copies", "1", "--max-price", "5", "--dry-run"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("matched 0 host(s) for 1 copies"),
        "{}",
        r.stderr
    );
    assert_eq!(status()["passes"], 1);
    // Two copies: the bid (10) first, then the ask (20).
    let r = put(&["--copies", "2", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        picked(r.stdout.as_str()),
        vec![(hosts[1].key.clone(), 10), (hosts[0].key.clone(), 20)]
    );
    let st = status();
    assert_eq!(
        (st["bids"].as_u64(), st["bids_matched"].as_u64()),
        (Some(2), Some(2)),
        "{st}"
    );
    // The exchange is gone; the file comes back from both copies through the emergency
    // links its record keeps (no exchange, index, miner or control plane asked), and
    // from one when the other host dies.
    drop(ex_proc);
    let get = |out: &Path| {
        let r = mspace(
            &[
                "get",
                "--file",
                &manifest,
                "--out",
                &s(out),
                "--key",
                &client,
                "--passphrase-file",
                pass.to_str().unwrap(),
                "--json",
            ],
            &[("MSPACE_STATE_DIR", state.as_str())],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(std::fs::read(out).unwrap(), bytes);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let got = get(&dir.path().join("back1.bin"));
    let served: u64 = got["served"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["chunks"].as_u64().unwrap())
        .sum();
    assert_eq!(got["served"].as_array().unwrap().len(), 2, "{got}");
    assert_eq!(served, out["chunks"].as_u64().unwrap(), "{got}");
    drop(hosts[0].proc.take());
    let got = get(&dir.path().join("back2.bin"));
    assert_eq!(got["served"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(got["lost"].as_array().unwrap().len(), 1, "{got}");
}

/// Proof of existence: `mspace certify FILE` records the file's BLAKE3 on the chain and
/// writes its certificate (JSON and text); `--verify` checks it against a miner, with and
/// without the file; certifying again with the same key states the same record, another
/// key is refused (the first record stands); an altered certificate, one of another file,
/// one of a hash never recorded, and garbage are all refused, each saying why.
#[test]
fn a_certificate_verifies_against_the_chain_and_a_forged_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net");
    let (_net, base) = start_devnet_with(&d, 1, 7, &["--block-time-ms", "100"]);
    let m0 = format!("127.0.0.1:{}", base + 1);
    let client = s(&d.join("client.key"));
    let file = dir.path().join("song.flac");
    std::fs::write(&file, b"the first recording of this song").unwrap();
    let f = s(&file);
    let made = mspace(
        &["certify", &f, "--key", &client, "--chain", &m0, "--json"],
        &[],
    );
    assert_eq!(made.code, 0, "{}", made.stderr);
    let cert: serde_json::Value = serde_json::from_str(&made.stdout).unwrap();
    assert_eq!(
        cert["hash"],
        blake3::hash(b"the first recording of this song")
            .to_hex()
            .as_str()
    );
    assert_eq!(cert["by"], pubkey(&client).as_str());
    let cert_path = s(&dir.path().join("song.flac.cert.json"));
    let text = std::fs::read_to_string(dir.path().join("song.flac.cert.txt")).unwrap();
    assert!(text.contains("Market.space proof of existence"), "{text}");
    assert!(
        text.contains(&format!("block {}", cert["height"])),
        "{text}"
    );
    let verify = |cert: &str, file: Option<&str>| {
        let mut args = vec!["certify", "--verify", cert];
        args.extend(file);
        args.extend(["--chain", &m0]);
        mspace(&args, &[])
    };
    for file in [Some(f.as_str()), None] {
        let ok = verify(&cert_path, file);
        assert_eq!(ok.code, 0, "{}", ok.stderr);
        assert!(ok.stdout.starts_with("valid:"), "{}", ok.stdout);
    }
    // The same key again: the same record, no second transaction.
    let again = mspace(
        &["certify", &f, "--key", &client, "--chain", &m0, "--json"],
        &[],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    let again: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(again["height"], cert["height"]);
    // Another key: refused, naming the first record.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "09".repeat(32)).unwrap();
    let r = mspace(&["certify", &f, "--key", &s(&other), "--chain", &m0], &[]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("already recorded at height"),
        "{}",
        r.stderr
    );

    let forged = |change: &dyn Fn(&mut serde_json::Value), name: &str| {
        let mut c = cert.clone();
        change(&mut c);
        let p = dir.path().join(name);
        std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
        s(&p)
    };
    let later = forged(
        &|c| c["height"] = serde_json::json!(c["height"].as_u64().unwrap() + 1),
        "later.json",
    );
    let stolen = forged(
        &|c| c["by"] = serde_json::json!("09".repeat(32)),
        "stolen.json",
    );
    let never = forged(
        &|c| c["hash"] = serde_json::json!("0f".repeat(32)),
        "never.json",
    );
    let garbage = s(&dir.path().join("garbage.json"));
    std::fs::write(&garbage, b"{\"version\": 1}").unwrap();
    let changed = dir.path().join("changed.flac");
    std::fs::write(&changed, b"a later recording of this song").unwrap();
    for (cert, file, says) in [
        (later.as_str(), None, "it was altered"),
        (stolen.as_str(), None, "it was altered"),
        (never.as_str(), None, "this chain has no record"),
        (garbage.as_str(), None, "not a certificate"),
        (cert_path.as_str(), Some(s(&changed)), "the file's BLAKE3"),
    ] {
        let r = verify(cert, file.as_deref());
        assert_ne!(r.code, 0, "{cert} verified");
        assert!(r.stderr.contains(says), "{cert}: {}", r.stderr);
    }
}

/// A sender's files under `dir`: `<tag>.bin` of `len` bytes drawn from the tag (its path
/// and bytes), a passphrase file, and the client's state directory (as text).
fn client_files(dir: &Path, tag: &str, len: usize) -> (PathBuf, Vec<u8>, PathBuf, String) {
    let file = dir.join(format!("{tag}.bin"));
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(tag.as_bytes())
        .finalize_xof()
        .fill(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    let pass = dir.join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    (file, bytes, pass, s(&dir.join("client-state")))
}

/// A key file (hex seed) for a receiver, funded by the client with `maspc`.
fn funded_receiver(dir: &Path, name: &str, m0: &str, client: &str, maspc: u64) -> (String, String) {
    let file = s(&dir.join(format!("{name}.key")));
    let seed = blake3::hash(name.as_bytes());
    std::fs::write(&file, data_encoding::HEXLOWER.encode(seed.as_bytes())).unwrap();
    let key = pubkey(&file);
    json(&[
        "chain",
        "transfer",
        "--key",
        client,
        "--to",
        &key,
        "--asset",
        "maspc",
        "--amount",
        &maspc.to_string(),
        "--miner",
        m0,
        "--wait",
        "60s",
        "--json",
    ]);
    (file, key)
}

#[test]
fn a_shared_file_is_sold_to_receivers_and_a_payment_its_host_never_served_comes_back() {
    const FEE: u64 = 5;
    const FUNDS: u64 = 100;
    const WINDOW: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(
        dir.path(),
        8,
        2,
        &["--completion-timeout-blocks", &WINDOW.to_string()],
    );
    // Host 1 asks nothing for egress: its downloads cost the sender's fee alone.
    drop(hosts[1].proc.take());
    let text = std::fs::read_to_string(&hosts[1].cfg).unwrap();
    assert!(
        text.contains("egress_price_per_gib = 1\n"),
        "the default egress price"
    );
    std::fs::write(
        &hosts[1].cfg,
        text.replace("egress_price_per_gib = 1\n", "egress_price_per_gib = 0\n"),
    )
    .unwrap();
    hosts[1].proc = Some(super::net::start(
        &["host", "--config", &hosts[1].cfg],
        &[],
        "agent following the chain",
    ));

    let (file, bytes, pass, state) = client_files(dir.path(), "song", 150_000);
    let env = [("MSPACE_STATE_DIR", state.as_str())];
    let r = mspace(
        &[
            "put",
            file.to_str().unwrap(),
            "--host",
            &hosts[0].control,
            "--host",
            &hosts[1].control,
            "--chain",
            &m0,
            "--days",
            "1",
            "--chunk-size",
            "64KiB",
            "--key",
            &client,
            "--passphrase-file",
            pass.to_str().unwrap(),
            "--download-fee",
            &FEE.to_string(),
            "--json",
        ],
        &env,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let put: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let manifest = put["manifest_id"].as_str().unwrap().to_owned();
    let deals: Vec<String> = (0..2)
        .map(|i| put["deals"][i]["deal"].as_str().unwrap().to_owned())
        .collect();

    // The sender's share names both copies, at the fee it set.
    let shared = |extra: &[&str]| {
        let mut args = vec![
            "share", &manifest, "--chain", &m0, "--key", &client, "--json",
        ];
        args.extend_from_slice(extra);
        let r = mspace(&args, &env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let sh = shared(&[]);
    let share = sh["share"].as_str().unwrap().to_owned();
    assert!(share.starts_with("msf1-"), "{sh}");
    for (i, c) in sh["copies"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["deal"], deals[i].as_str(), "{sh}");
        assert_eq!(c["download_fee"], FEE, "{sh}");
    }
    // A deal id finds the same file.
    let by_deal = mspace(&["share", &deals[1], "--chain", &m0, "--json"], &env);
    let by_deal: serde_json::Value = serde_json::from_str(&by_deal.stdout).unwrap();
    assert_eq!(by_deal["share"], share.as_str());

    let run_share = |text: &str, key: &str, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "get",
            text,
            "--out",
            out.to_str().unwrap(),
            "--key",
            key,
            "--chain",
            &m0,
            "--json",
        ];
        args.extend_from_slice(extra);
        mspace(&args, &[])
    };
    let run_get = |key: &str, out: &Path, extra: &[&str]| run_share(&share, key, out, extra);
    let get = |key: &str, out: &Path| {
        let r = run_get(key, out, &[]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            std::fs::read(out).unwrap(),
            bytes,
            "the file came back different"
        );
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let maspc = |key: &str| account(&m0, key)["maspc"].as_u64().unwrap();
    // Three receivers buy it from the first copy: the sender's fee and host 0's egress
    // price (1 MASPC for a started GiB), and the payment transaction's own fee. The
    // sender's balance rises by exactly three fees once host 0 claims them.
    let buyers: Vec<(String, String)> = ["alice", "bob", "frank"]
        .iter()
        .map(|n| funded_receiver(dir.path(), n, &m0, &client, FUNDS))
        .collect();
    let (erin_file, erin) = funded_receiver(dir.path(), "erin", &m0, &client, FUNDS);
    let sender = pubkey(&client);
    let sender_before = maspc(&sender);
    let mut first_payment = String::new();
    for (i, (file_key, key)) in buyers.iter().enumerate() {
        let got = get(file_key, &dir.path().join(format!("buyer{i}.bin")));
        let paid = got["payments"].as_array().unwrap();
        assert_eq!(paid.len(), 1, "{got}");
        assert_eq!(
            (&paid[0]["deal"], &paid[0]["total"], &paid[0]["served"]),
            (
                &serde_json::json!(deals[0]),
                &serde_json::json!(FEE + 1),
                &serde_json::json!(true)
            ),
            "{got}"
        );
        assert_eq!(maspc(key), FUNDS - (FEE + 1) - 1);
        if i == 0 {
            first_payment = paid[0]["payment"].as_str().unwrap().to_owned();
        }
    }
    // A receiver that allows less than the price pays nothing and gets nothing.
    let r = run_get(
        &erin_file,
        &dir.path().join("erin.bin"),
        &["--max-fee", "4"],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("more than the 4 allowed"), "{}", r.stderr);
    assert!(!dir.path().join("erin.bin").exists());
    assert_eq!(maspc(&erin), FUNDS);
    // The host itself gives no link without a payment, nor for another key's payment.
    let ask_link = |receiver: &str, payment: Option<&str>| -> String {
        let id = |h: &str| -> [u8; 32] {
            data_encoding::HEXLOWER
                .decode(h.as_bytes())
                .unwrap()
                .try_into()
                .unwrap()
        };
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let c = api::host_client(&hosts[0].control).await.unwrap();
            c.download_link(
                tarpc::context::current(),
                id(&deals[0]),
                id(receiver),
                payment.map(id),
            )
            .await
            .unwrap()
            .unwrap_err()
            .to_string()
        })
    };
    let e = ask_link(&erin, None);
    assert!(e.contains("costs 6 MASPC (5 to its sender, 1 to"), "{e}");
    let e = ask_link(&erin, Some(&first_payment));
    assert!(e.contains("its link is for that key only"), "{e}");
    // Host 0's agent claims the three: the sender sees them in `mspace deals`, and in its
    // balance.
    let v = wait_deal(&m0, &deals[0], "had its downloads claimed", |v| {
        v["downloads"] == 3
    });
    assert_eq!(v["download_income"], 3 * FEE, "{v}");
    assert_eq!(maspc(&sender), sender_before + 3 * FEE);
    let listed = mspace(&["deals", "--key", &client, "--chain", &m0, "--json"], &[]);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == deals[0].as_str())
        .unwrap();
    assert_eq!(
        (&mine["downloads"], &mine["download_income"]),
        (&serde_json::json!(3), &serde_json::json!(3 * FEE))
    );

    // Host 0 now dies once a receiver has paid it: the receiver goes on to the second copy
    // and pays there (the sender's fee alone), and the first payment, never claimed, comes
    // back when its window closes.
    drop(hosts[0].proc.take());
    hosts[0].proc = Some(super::net::start(
        &["host", "--config", &hosts[0].cfg],
        &[("MSPACE_HOST_FAULT", "exit-on-download-link")],
        "agent following the chain",
    ));
    let (carol_file, carol) = funded_receiver(dir.path(), "carol", &m0, &client, FUNDS);
    let got = get(&carol_file, &dir.path().join("carol.bin"));
    let paid = got["payments"].as_array().unwrap();
    assert_eq!(paid.len(), 2, "{got}");
    assert_eq!(
        (&paid[0]["deal"], &paid[0]["served"]),
        (&serde_json::json!(deals[0]), &serde_json::json!(false)),
        "{got}"
    );
    assert_eq!(
        (&paid[1]["deal"], &paid[1]["total"], &paid[1]["served"]),
        (
            &serde_json::json!(deals[1]),
            &serde_json::json!(FEE),
            &serde_json::json!(true)
        ),
        "{got}"
    );
    assert_eq!(got["deal"], deals[1].as_str());
    let deadline = paid[0]["deadline"].as_u64().unwrap();
    let after_both = FUNDS - (FEE + 1) - FEE - 2;
    assert_eq!(maspc(&carol), after_both);
    assert!(
        until(&m0, 2 * usize::try_from(WINDOW).unwrap(), || maspc(&carol)
            == after_both + FEE + 1),
        "the unserved payment never came back (deadline {deadline}): {}",
        maspc(&carol)
    );
    let status = json(&["chain", "status", "--miner", &m0, "--json"]);
    // Given back at the end of the deadline's own block, not before.
    assert!(status["height"].as_u64().unwrap() >= deadline, "{status}");
    wait_deal(&m0, &deals[1], "had carol's download claimed", |v| {
        v["downloads"] == 1
    });
    // The sender's earnings: four paid downloads, one fee each.
    let earned = json(&["earnings", "--key", &client, "--chain", &m0, "--json"]);
    assert_eq!(
        (&earned["downloads"], &earned["download_income"]),
        (&serde_json::json!(4), &serde_json::json!(4 * FEE)),
        "{earned}"
    );
    let host_earned = json(&[
        "earnings",
        "--account",
        &hosts[0].key,
        "--chain",
        &m0,
        "--json",
    ]);
    assert_eq!(host_earned["downloads_served"], 3, "{host_earned}");
    assert_eq!(
        deal(&m0, &deals[0])["downloads"],
        3,
        "the dead host claimed nothing more"
    );

    // The sender makes it free: host 1 (no egress price) then gives a link without any
    // payment; host 0, dead, is left out.
    let sh = shared(&["--set-fee", "0"]);
    assert!(
        sh["copies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["download_fee"] == 0),
        "{sh}"
    );
    let (dave_file, dave) = funded_receiver(dir.path(), "dave", &m0, &client, FUNDS);
    let got = get(&dave_file, &dir.path().join("dave.bin"));
    assert_eq!(got["payments"], serde_json::json!([]), "{got}");
    assert_eq!(got["failed"].as_array().unwrap().len(), 1, "{got}");
    assert_eq!(maspc(&dave), FUNDS);
    // A share bound to dave's key: dave opens it, erin (holding the same text) cannot, and
    // the text shows neither the file's key nor its copies.
    let bound = shared(&["--to", &dave]);
    let bound = bound["share"].as_str().unwrap().to_owned();
    assert!(bound.starts_with("msb1-"), "{bound}");
    let r = run_share(&bound, &dave_file, &dir.path().join("dave2.bin"), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read(dir.path().join("dave2.bin")).unwrap(), bytes);
    let r = run_share(&bound, &erin_file, &dir.path().join("erin2.bin"), &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not for this one"), "{}", r.stderr);

    // A share cut short is refused before anything is asked.
    let r = mspace(
        &[
            "get",
            &share[..share.len() - 4],
            "--out",
            "x",
            "--chain",
            &m0,
        ],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("file share"), "{}", r.stderr);
}

/// The seed in a key file.
fn seed_of(key_file: &str) -> [u8; 32] {
    data_encoding::HEXLOWER_PERMISSIVE
        .decode(std::fs::read_to_string(key_file).unwrap().trim().as_bytes())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn an_invoice_is_paid_exactly_once_to_its_issuer_and_an_altered_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        hosts,
    } = start_market(dir.path(), 9, 1, &[]);
    let payer = pubkey(&client);
    let (issuer_file, issuer) = funded_receiver(dir.path(), "studio", &m0, &client, 100);
    let (other_file, _) = funded_receiver(dir.path(), "other", &m0, &client, 10);
    let maspc = |key: &str| account(&m0, key)["maspc"].as_u64().unwrap();
    let pdf = dir.path().join("mastering.pdf");
    std::fs::write(&pdf, b"%PDF-1.7 track 4").unwrap();
    let inv = dir.path().join("track4.msi");
    let created = json(&[
        "invoice",
        "create",
        "--to",
        &payer,
        "--amount",
        "250",
        "--memo",
        "Mastering, track 4",
        "--attach",
        pdf.to_str().unwrap(),
        "--key",
        &issuer_file,
        "--chain",
        &m0,
        "--out",
        inv.to_str().unwrap(),
        "--json",
    ]);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["issuer"], issuer.as_str());
    // Sealed to the payer: another key cannot read it.
    let state = s(&dir.path().join("payer-state"));
    let env = [("MSPACE_STATE_DIR", state.as_str())];
    let open = |verb: &str, file: &Path, key: &str, extra: &[&str]| {
        let mut args = vec![
            "invoice",
            verb,
            file.to_str().unwrap(),
            "--key",
            key,
            "--chain",
            &m0,
            "--json",
        ];
        args.extend_from_slice(extra);
        mspace(&args, &env)
    };
    let r = open("show", &inv, &other_file, &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("sealed to key"), "{}", r.stderr);
    let out = dir.path().join("got.pdf");
    let r = open(
        "show",
        &inv,
        &client,
        &["--attachment-out", out.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let shown: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        (
            &shown["id"],
            &shown["amount"],
            &shown["memo"],
            &shown["paid_tx"]
        ),
        (
            &serde_json::json!(id),
            &serde_json::json!(250),
            &serde_json::json!("Mastering, track 4"),
            &serde_json::Value::Null
        )
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"%PDF-1.7 track 4");

    // Altered in transit: a flipped byte, or an amount changed and sealed again to the
    // payer (the issuer's signature no longer holds); and one the issuer never recorded.
    let sealed = std::fs::read(&inv).unwrap();
    let mut flipped = sealed.clone();
    let n = flipped.len() - 20;
    flipped[n] ^= 1;
    let payer_seed = seed_of(&client);
    let mut plain = engine::sealed_to::open_from(&payer_seed, &sealed).unwrap();
    plain[77] ^= 0x10; // the amount's low byte: 250 becomes 234
    let forged = engine::sealed_to::seal_to(&seed_pub(&payer_seed), &plain).unwrap();
    let unrecorded = proto::invoice::Invoice {
        chain_id: json(&["chain", "status", "--miner", &m0, "--json"])["chain_id"]
            .as_u64()
            .unwrap(),
        issuer: seed_pub(&seed_of(&issuer_file)),
        payer: seed_pub(&payer_seed),
        amount: 5,
        created_unix_secs: 1,
        nonce: [9; 16],
        memo: String::new(),
        attachment: None,
    }
    .sign(&ed25519_consensus::SigningKey::from(seed_of(&issuer_file)))
    .unwrap();
    let unrecorded =
        engine::sealed_to::seal_to(&seed_pub(&payer_seed), unrecorded.as_bytes()).unwrap();
    let before = (maspc(&payer), maspc(&issuer));
    for (name, bytes, says) in [
        ("flipped", flipped, "altered or damaged"),
        ("forged", forged, "signature"),
        ("unrecorded", unrecorded, "never stood by it"),
    ] {
        let f = dir.path().join(format!("{name}.msi"));
        std::fs::write(&f, bytes).unwrap();
        let r = open("pay", &f, &client, &[]);
        assert_ne!(r.code, 0, "{name} was paid");
        assert!(r.stderr.contains(says), "{name}: {}", r.stderr);
    }
    assert_eq!(
        (maspc(&payer), maspc(&issuer)),
        before,
        "a refused invoice moved coins"
    );

    // Paid: exactly its amount to exactly its issuer (and the payer's fee); once.
    let r = open("pay", &inv, &client, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let paid: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(paid["paid_height"].as_u64().is_some(), "{paid}");
    assert_eq!(maspc(&issuer), before.1 + 250);
    assert_eq!(maspc(&payer), before.0 - 250 - 1);
    let r = open("pay", &inv, &client, &[]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("already paid"), "{}", r.stderr);
    assert_eq!(maspc(&issuer), before.1 + 250);

    // Delivered through the system: the sealed invoice stored as a small deal paid by the
    // issuer, and a share only the payer's key opens; `pay` fetches it (the host's egress
    // price, 1 MASPC, and the download payment's fee), checks it and pays it.
    let blocks = (PROOF_PERIOD * PERIODS).to_string();
    let track5 = dir.path().join("track5.msi");
    let delivered = json(&[
        "invoice",
        "create",
        "--to",
        &payer,
        "--amount",
        "40",
        "--memo",
        "Mastering, track 5",
        "--key",
        &issuer_file,
        "--chain",
        &m0,
        "--out",
        track5.to_str().unwrap(),
        "--host",
        &hosts[0].control,
        "--days",
        "1",
        "--period-blocks",
        &blocks,
        "--json",
    ]);
    let share = delivered["delivery"].as_str().unwrap().to_owned();
    assert!(share.starts_with("msb1-"), "{delivered}");
    let d = deal(&m0, delivered["deals"][0].as_str().unwrap());
    assert_eq!(d["state"], "active", "{d}");
    assert_eq!(d["sender"], issuer.as_str());
    let by_share = |verb: &str, key: &str| {
        mspace(
            &[
                "invoice", verb, &share, "--key", key, "--chain", &m0, "--json",
            ],
            &env,
        )
    };
    let r = by_share("show", &other_file);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not for this one"), "{}", r.stderr);
    let before = (maspc(&payer), maspc(&issuer));
    let r = by_share("pay", &client);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let paid: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(paid["memo"], "Mastering, track 5", "{paid}");
    assert!(paid["paid_height"].as_u64().is_some(), "{paid}");
    assert_eq!(maspc(&issuer), before.1 + 40);
    assert_eq!(
        maspc(&payer),
        before.0 - 40 - 1 - 1 - 1,
        "the amount and its fee, the download and its fee"
    );
    let r = by_share("pay", &client);
    assert!(r.stderr.contains("already paid"), "{}", r.stderr);
}

/// The public key of a seed.
fn seed_pub(seed: &[u8; 32]) -> [u8; 32] {
    ed25519_consensus::SigningKey::from(*seed)
        .verification_key()
        .to_bytes()
}

/// `mspace put` of a test file (its path, passphrase file and client state directory) as a
/// deal of 64 KiB chunks for `PERIODS` proof periods on `host`, with `extra` options.
fn put_on(
    (file, pass, state): (&Path, &Path, &str),
    host: &str,
    m0: &str,
    client: &str,
    extra: &[&str],
) -> super::Run {
    let blocks = (PROOF_PERIOD * PERIODS).to_string();
    let (file, pass) = (s(file), s(pass));
    let mut args = vec![
        "put",
        &file,
        "--host",
        host,
        "--chain",
        m0,
        "--days",
        "1",
        "--period-blocks",
        &blocks,
        "--chunk-size",
        "64KiB",
        "--key",
        client,
        "--passphrase-file",
        &pass,
        "--json",
    ];
    args.extend_from_slice(extra);
    mspace(&args, &[("MSPACE_STATE_DIR", state)])
}

/// The insurer's side (issue 16): `mspace insure init|register|run`; a put that asks for
/// more cover than the insurer's deposit, or for a dearer premium than the sender accepts,
/// stops before anything is paid; an insured put pays the premium with the fee; its host
/// is killed, misses a proof, and the chain pays the sender the cover from the insurer's
/// deposit, once.
#[test]
fn an_insured_deal_whose_host_is_killed_pays_the_sender_the_cover_from_the_insurers_deposit() {
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 10, 1, &[]);
    let client_key = pubkey(&client);

    // The insurer: a key, a config, 10,000 MASP of deposit on the chain.
    let cfg = s(&dir.path().join("insurer/insurer.toml"));
    let addr = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let init = mspace(
        &[
            "insure", "init", "--config", &cfg, "--listen", &addr, "--chain", &m0,
        ],
        &[],
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let insurer = init
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("insurer key "))
        .unwrap()
        .to_owned();
    for (asset, amount) in [("masp", "10000"), ("maspc", "10")] {
        json(&[
            "chain", "transfer", "--key", &client, "--to", &insurer, "--asset", asset, "--amount",
            amount, "--miner", &m0, "--wait", "60s", "--json",
        ]);
    }
    json(&[
        "insure",
        "register",
        "--config",
        &cfg,
        "--deposit",
        "10000",
        "--json",
    ]);
    let _proc = super::net::start(
        &["insure", "run", "--config", &cfg],
        &[],
        "insurer listening on",
    );
    let status = json(&["insure", "status", "--insurer", &addr, "--json"]);
    assert_eq!(
        (&status["deposit"], &status["exposure"], &status["free"]),
        (&10_000.into(), &0.into(), &10_000.into()),
        "{status}"
    );

    let (file, _, pass, state) = client_files(dir.path(), "insured", 100_000);
    let put = |cover: &str, max_premium: &str| {
        put_on(
            (&file, &pass, &state),
            &hosts[0].control,
            &m0,
            &client,
            &[
                "--insurer",
                &addr,
                "--cover",
                cover,
                "--max-premium",
                max_premium,
            ],
        )
    };
    let nonce = || account(&m0, &client_key)["nonce"].as_u64().unwrap();
    let nonce0 = nonce();
    // Refused before paying: more cover than the host's deposit backs (the insurer
    // recovers a claim from it); a premium over the limit.
    let beyond = put("2001", "100");
    assert_ne!(beyond.code, 0);
    assert!(
        beyond
            .stderr
            .contains("the host's deposit backs 2000 MASP more of cover, not 2001"),
        "{}",
        beyond.stderr
    );
    // 1,500 x 100 ppm x 1 day x 1.5 (rated 500) = 0.225: 1 MASPC.
    let dear = put("1500", "0");
    assert_ne!(dear.code, 0);
    assert!(
        dear.stderr
            .contains("asks a premium of 1 MASPC, over the 0 accepted"),
        "{}",
        dear.stderr
    );
    assert_eq!(nonce(), nonce0, "nothing was paid");

    let before = account(&m0, &client_key);
    let ok = put("1500", "1");
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let out: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    let id = out["deals"][0]["deal"].as_str().unwrap().to_owned();
    let fee = out["deals"][0]["storage_fee"].as_u64().unwrap();
    let v = deal(&m0, &id);
    assert_eq!(v["insurance"]["insurer"], insurer.as_str(), "{v}");
    assert_eq!(
        (&v["insurance"]["cover"], &v["insurance"]["premium"]),
        (&1500.into(), &1.into())
    );
    assert_eq!(v["insurance"]["state"], "running", "{v}");
    let after = account(&m0, &client_key);
    assert_eq!(
        after["maspc"].as_u64().unwrap(),
        before["maspc"].as_u64().unwrap() - fee - 1 - 1,
        "the fee, the premium and the payment's fee"
    );
    let ins = account(&m0, &insurer);
    assert_eq!(
        ins["maspc"],
        10 - 1 + 1,
        "the premium is the insurer's: {ins}"
    );
    assert_eq!(ins["registrations"][0]["exposure"], 1500, "{ins}");
    let host = account(&m0, &hosts[0].key);
    assert_eq!(host["registrations"][0]["exposure"], 1500, "{host}");
    let status = json(&["insure", "status", "--insurer", &addr, "--json"]);
    assert_eq!(
        (&status["exposure"], &status["free"]),
        (&1500.into(), &8500.into()),
        "{status}"
    );
    assert_eq!(status["quoted"], 2, "{status}");
    assert_eq!(status["refused"]["host_deposit"], 1, "{status}");
    // What is left of the host's deposit backs 500 more.
    let more = put("1000", "100");
    assert!(
        more.stderr
            .contains("backs 500 MASP more of cover, not 1000"),
        "{}",
        more.stderr
    );

    // The host dies; its next proof is missed; the cover is paid, once.
    drop(hosts[0].proc.take());
    let masp = |a: &serde_json::Value| a["masp"].as_u64().unwrap();
    let paid = wait_deal(&m0, &id, "missed a proof", |v| {
        v["missed"].as_u64() >= Some(1)
    });
    assert_eq!(paid["insurance"]["state"], "paid_out", "{paid}");
    assert_eq!(paid["insurance"]["paid"], 1500, "{paid}");
    // Read between two equal views of the sender's and the host's MASP: no period closed
    // between.
    let view = || {
        let (a, h) = (account(&m0, &client_key), account(&m0, &hosts[0].key));
        (masp(&a), h["registrations"][0]["deposit"].as_u64().unwrap())
    };
    let (now, host_deposit, missed) = loop {
        let a = view();
        let missed = deal(&m0, &id)["missed"].as_u64().unwrap();
        if view() == a {
            break (a.0, a.1, missed);
        }
    };
    assert_eq!(
        now,
        masp(&after) + 1500 + 100 * missed,
        "the cover, and 100 MASP of the host's deposit per missed proof"
    );
    // The insurer recovered the cover from the host's deposit.
    let ins = account(&m0, &insurer);
    assert_eq!(ins["registrations"][0]["deposit"], 10_000, "{ins}");
    assert_eq!(ins["registrations"][0]["exposure"], 0, "{ins}");
    assert_eq!(host_deposit, HOST_DEPOSIT - 1500 - 100 * missed);
    let listed = json(&["deals", "--key", &client, "--chain", &m0, "--json"]);
    assert_eq!(listed[0]["insurance"]["state"], "paid_out", "{listed}");
}

/// Proxies paid per byte (issue 16): the client locks an allowance, uploads through a
/// priced proxy, signs a receipt at the proxy's price; the proxy keeps it on disk and
/// redeems it on the chain. The proxy is made to exit right after its batch is committed
/// and before it records that (the worst moment); restarted, it finds the batch on the
/// chain and is not paid twice. The allowance pays exactly what the receipts state.
#[test]
fn a_proxy_is_paid_its_receipts_from_the_clients_allowance_once_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        hosts,
    } = start_market(dir.path(), 11, 1, &[]);
    let client_key = pubkey(&client);
    let allowance = json(&[
        "chain",
        "allowance",
        "--key",
        &client,
        "--lock",
        "1000",
        "--miner",
        &m0,
        "--json",
    ]);
    assert_eq!(allowance["allowance"], 1000, "{allowance}");
    let (proxy_file, proxy_key) = funded_receiver(dir.path(), "proxy", &m0, &client, 10);
    let state = dir.path().join("proxy-state");
    let addr = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    // A million MASPC per GiB: a few hundred KiB relayed cost a few hundred.
    let proxy_args = [
        "proxy",
        "--listen",
        &addr,
        "--allow-private",
        "--key",
        &proxy_file,
        "--chain",
        &m0,
        "--state",
        &s(&state),
        "--price-per-gib",
        "1000000",
        "--redeem-every",
        "1",
    ];
    let mut proxy = super::net::start(
        &proxy_args,
        &[("MSPACE_PROXY_FAULT", "exit-after-redeem")],
        "proxy listening on",
    );

    let (file, bytes, pass, cstate) = client_files(dir.path(), "relayed", 300_000);
    let put = put_on(
        (&file, &pass, &cstate),
        &hosts[0].control,
        &m0,
        &client,
        &["--via", &addr, "--max-proxy-price", "1000000"],
    );
    assert_eq!(put.code, 0, "{}", put.stderr);

    // The proxy redeems, is committed, and exits before it moves the receipts.
    let status = proxy.0.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(3),
        "the proxy exits where it was told to"
    );
    let pending = |sub: &str| -> Vec<proto::receipt::ProxyReceipt> {
        let mut v: Vec<_> = std::fs::read_dir(state.join(sub))
            .unwrap()
            .map(|e| {
                proto::receipt::ProxyReceipt::from_bytes(&std::fs::read(e.unwrap().path()).unwrap())
                    .unwrap()
            })
            .collect();
        v.sort_by_key(|r| r.session);
        v
    };
    let receipts = pending("pending");
    assert_eq!(receipts.len(), 1, "one session through the proxy");
    let r = &receipts[0];
    assert_eq!(r.client.0, seed_pub(&seed_of(&client)));
    assert!(
        r.up_bytes > bytes.len() as u64,
        "the upload went through the proxy: {r:?}"
    );
    let owed = r.amount();
    assert!(owed > 200 && owed < 1000, "{owed}");
    assert!(state.join("batch").exists(), "the batch it did not finish");
    let paid = account(&m0, &proxy_key);
    assert_eq!(
        paid["maspc"].as_u64().unwrap(),
        10 + owed - 1,
        "paid once, less the fee: {paid}"
    );
    assert_eq!(account(&m0, &client_key)["allowance"], 1000 - owed);

    // Restarted, it finds its batch on the chain: the receipt moves to redeemed/ and
    // nothing is paid twice.
    let _proxy = super::net::start(&proxy_args, &[], "proxy listening on");
    until(&m0, 100, || {
        !state.join("batch").exists() && pending("pending").is_empty()
    });
    assert!(!state.join("batch").exists());
    assert_eq!(pending("redeemed"), receipts);
    // A few more rounds: still paid once.
    let h = json(&["chain", "status", "--miner", &m0, "--json"])["height"]
        .as_u64()
        .unwrap();
    until(&m0, 30, || {
        json(&["chain", "status", "--miner", &m0, "--json"])["height"]
            .as_u64()
            .unwrap()
            >= h + 20
    });
    assert_eq!(account(&m0, &proxy_key)["maspc"], 10 + owed - 1);
    assert_eq!(account(&m0, &client_key)["allowance"], 1000 - owed);

    // The rest of the allowance comes back once released.
    let released = json(&[
        "chain",
        "allowance",
        "--key",
        &client,
        "--release",
        "--miner",
        &m0,
        "--json",
    ]);
    assert!(
        released["allowance_release_at"].as_u64().is_some(),
        "{released}"
    );
}

/// A gateway storing as paid deals on the devnet at `m0` (`where_to`: `--deal-host`s or
/// `--deal-index` and `--copies`), its key funded with 500 MASPC by `client`, running.
struct DealGateway {
    _proc: Proc,
    s3: String,
    access: String,
    dir: std::path::PathBuf,
    python: String,
    key_file: String,
}

impl DealGateway {
    /// scripts/s3-check.py's `phase` against it; its table.
    fn check(&self, phase: &str) -> String {
        let out = Command::new(&self.python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/s3-check.py"))
            .args([
                "--endpoint",
                &format!("http://{}", self.s3),
                "--access-key",
                &self.access,
            ])
            .args(["--secret-file", &s(&self.dir.join("gw/gateway.secret"))])
            .args(["--work", &s(&self.dir.join("work")), "--phase", phase])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{shown}");
        assert!(
            out.status.success(),
            "{shown}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shown
    }

    /// The deals the gateway's key paid for.
    fn deals(&self, m0: &str) -> Vec<serde_json::Value> {
        json(&["deals", "--key", &self.key_file, "--chain", m0, "--json"])
            .as_array()
            .unwrap()
            .clone()
    }
}

fn start_deal_gateway(dir: &Path, m0: &str, client: &str, where_to: &[&str]) -> DealGateway {
    let python = super::gateway::installed("scripts/s3-clients.sh");
    let cfg = s(&dir.join("gw/gateway.toml"));
    let s3 = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let blocks = (PROOF_PERIOD * PERIODS).to_string();
    let mut args = vec![
        "gateway", "init", "--config", &cfg, "--listen", &s3, "--chain", m0, "--days", "1",
    ];
    args.extend_from_slice(where_to);
    let init = mspace(&args, &[]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    let access = super::gateway::access_key(&init.stdout);
    let gw_key = init
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("gateway key "))
        .unwrap()
        .to_owned();
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "# period_blocks = 1000",
            &format!("period_blocks = {blocks}"),
        ),
    )
    .unwrap();
    json(&[
        "chain", "transfer", "--key", client, "--to", &gw_key, "--asset", "maspc", "--amount",
        "500", "--miner", m0, "--wait", "60s", "--json",
    ]);
    let proc = super::net::start(&["gateway", "run", "--config", &cfg], &[], "S3 gateway on");
    DealGateway {
        _proc: proc,
        s3,
        access,
        dir: dir.to_path_buf(),
        python,
        key_file: s(&dir.join("gw/gateway.key")),
    }
}

/// The deals per host of the S3 table's `deal-put`: one for the object of one PUT, and one
/// for each of the three parts of the multipart one (each part is sealed and paid for as
/// it arrives, a file of its own).
const DEALS_PER_HOST: usize = 1 + 3;

/// A gateway paying each object as deals on `hosts` hosts (`--deal-host` each, and `extra`
/// init options) stores the S3 table's two objects, then reads them back with host
/// `killed` dead: each file is a deal on each host, all active.
fn gateway_deals_survive_a_killed_host(slot: u32, hosts: usize, extra: &[&str], killed: usize) {
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        hosts: mut running,
    } = start_market(dir.path(), slot, hosts, &[]);
    let mut args: Vec<&str> = running
        .iter()
        .flat_map(|h| ["--deal-host", h.control.as_str()])
        .collect();
    args.extend_from_slice(extra);
    let gw = start_deal_gateway(dir.path(), &m0, &client, &args);
    let check = |phase: &str| gw.check(phase);
    assert!(check("deal-put").contains("3 checks, 0 differ from S3"));
    // Two objects, four files: a deal for each on each host, active.
    let listed = gw.deals(&m0);
    assert_eq!(listed.len(), DEALS_PER_HOST * hosts, "{listed:?}");
    for h in &running {
        let on: Vec<_> = listed
            .iter()
            .filter(|d| d["host"] == h.key.as_str())
            .collect();
        assert_eq!(on.len(), DEALS_PER_HOST, "{listed:?}");
        assert!(on.iter().all(|d| d["state"] == "active"), "{listed:?}");
    }
    drop(running[killed].proc.take());
    assert!(check("deal-get").contains("3 checks, 0 differ from S3"));
}

/// The S3 gateway storing through the market's deal flow: `mspace gateway init --chain
/// --deal-host H --deal-host H --days D` pays each object (each part of a multipart one)
/// as a deal on each host from the
/// gateway's own funded key (a PUT answers once both hosts' CRCs matched on chain), and
/// reads it back through the deals' links; with one host killed, every object still comes
/// back, from the other copy.
#[test]
fn a_gateway_stores_objects_as_paid_deals_and_reads_them_from_the_surviving_copy() {
    gateway_deals_survive_a_killed_host(12, 2, &[], 0);
}

/// The gateway storing each object as erasure shares 2/3 (`mspace gateway init --erasure
/// 2/3` with three --deal-host): three deals an object, each host paid for about half of
/// it; with one host killed every object still reads back, rebuilt from the other two.
#[test]
fn a_gateway_stores_objects_as_erasure_shares_and_rebuilds_them_without_a_host() {
    gateway_deals_survive_a_killed_host(16, 3, &["--erasure", "2/3"], 1);
}

/// A gateway with no hosts of its own: each object's two hosts are matched through the
/// index on the exchange it lists, the two cheapest of three asks, and paid as deals that
/// name the exchange; the objects read back through the deals' links.
#[test]
fn a_gateway_matches_each_objects_hosts_through_an_index() {
    const PRICES: [u64; 3] = [30, 10, 20];
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 14, 3, &[]);
    let (ix, _index) = start_index(dir.path(), &m0);
    let ex = start_exchange(
        dir.path(),
        "exchange",
        &m0,
        &client,
        &["--max-days", "365", "--index", &ix],
        |text| text,
        &[],
    );
    ask_on(&mut hosts, &[&ex.addr], &PRICES);
    wait_listed(&m0, &ix, &ex.addr, PRICES.len());
    let gw = start_deal_gateway(
        dir.path(),
        &m0,
        &client,
        &["--deal-index", &ix, "--copies", "2"],
    );
    assert!(gw.check("deal-put").contains("3 checks, 0 differ from S3"));
    // Each file (the object, and each part of the multipart one) matched on its own,
    // always to the two cheaper hosts.
    let deals = gw.deals(&m0);
    assert_eq!(deals.len(), 2 * DEALS_PER_HOST, "{deals:?}");
    for (h, price) in hosts.iter().zip(PRICES) {
        let on = deals.iter().filter(|d| d["host"] == h.key.as_str()).count();
        assert_eq!(
            on,
            if price == 30 { 0 } else { DEALS_PER_HOST },
            "{deals:?}"
        );
    }
    assert!(gw.check("deal-get").contains("3 checks, 0 differ from S3"));
}

#[test]
fn erasure_shares_on_three_hosts_are_paid_proven_and_the_file_comes_back_from_any_two() {
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 15, 3, &[]);
    let (file, bytes, pass, state) = client_files(dir.path(), "shares", 300_000);
    let env = [("MSPACE_STATE_DIR", state.as_str())];
    let blocks = (PROOF_PERIOD * PERIODS).to_string();
    let mut args = vec!["put".to_owned(), s(&file), "--erasure".into(), "2/3".into()];
    for h in &hosts {
        args.extend(["--host".to_owned(), h.control.clone()]);
    }
    args.extend(
        [
            "--chain",
            &m0,
            "--days",
            "1",
            "--period-blocks",
            &blocks,
            "--chunk-size",
            "64KiB",
            "--key",
            &client,
            "--passphrase-file",
            &s(&pass),
            "--json",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let put = mspace(&args, &env);
    assert_eq!(put.code, 0, "{}", put.stderr);
    let out: serde_json::Value = serde_json::from_str(&put.stdout).unwrap();
    assert_eq!(out["erasure"], "2/3", "{out}");
    assert_eq!(out["chunks"], 5);
    let deals: Vec<String> = out["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deal"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deals.len(), 3, "{out}");
    // Each host is paid for one share of each chunk and the manifest: about half the
    // sealed file (2/3: each share is half a chunk).
    let sealed = 300_000 + 5 * 16;
    for (d, h) in deals.iter().zip(&hosts) {
        let v = deal(&m0, d);
        assert_eq!(v["host"], h.key.as_str());
        assert_eq!(v["state"], "active", "{v}");
        assert_eq!(v["chunks"], 6, "five shares and the manifest");
        let paid_for = v["bytes"].as_u64().unwrap();
        assert!(
            paid_for > sealed / 2 && paid_for < sealed / 2 + 8_000,
            "deal {d} covers {paid_for} bytes of a {sealed}-byte sealed file"
        );
    }

    // Selling downloads needs a full copy per receiver's host: refused, saying why.
    let manifest = out["manifest_id"].as_str().unwrap();
    let shared = mspace(&["share", manifest, "--chain", &m0], &env);
    assert_ne!(shared.code, 0);
    assert!(
        shared.stderr.contains("stored as erasure shares (2/3)"),
        "{}",
        shared.stderr
    );

    // The hosts prove their shares like any chunks.
    for d in &deals {
        let v = wait_deal(&m0, d, "proved a period", |v| {
            v["proven"].as_u64() >= Some(1)
        });
        assert_eq!(v["missed"], 0, "{v}");
    }

    // One host killed: the file comes back from the two others, by the deals and by the
    // record's emergency links alike.
    drop(hosts[2].proc.take());
    let get = |how: &[&str], name: &str| {
        let back = dir.path().join(name);
        let mut a = vec!["get"];
        a.extend_from_slice(how);
        let back_s = s(&back);
        let pass_s = s(&pass);
        a.extend_from_slice(&[
            "--out",
            &back_s,
            "--key",
            &client,
            "--passphrase-file",
            &pass_s,
            "--json",
        ]);
        (mspace(&a, &env), back)
    };
    let controls: Vec<String> = hosts.iter().map(|h| h.control.clone()).collect();
    let by_deals: Vec<&str> = deals
        .iter()
        .zip(&controls)
        .flat_map(|(d, c)| ["--deal", d.as_str(), "--host", c.as_str()])
        .collect();
    let (got, back) = get(&by_deals, "by-deals.bin");
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let (got, back) = get(&["--file", manifest], "by-record.bin");
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let g: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
    assert_eq!(g["lost"].as_array().unwrap().len(), 1, "{g}");

    // A second host gone: one share of each chunk is not enough, and nothing is written.
    drop(hosts[1].proc.take());
    let (got, back) = get(&by_deals, "one-left.bin");
    assert_ne!(got.code, 0);
    assert!(
        got.stderr.contains("of the 2 erasure shares"),
        "{}",
        got.stderr
    );
    assert!(!back.exists());
}

/// Hosts with room for part of a file only (`capacity_bytes`): a put asking for a whole copy
/// is matched to none, and the refusal says to allow `--spread`; with `--spread` the
/// exchange fills one copy with batches down its order (two chunks on each of the two
/// cheapest hosts, one by its standing ask and one by its bid on the forwarded request, the
/// last chunk on the third), each batch its own deal, paid, proven and
/// recorded with its chunks only; `get --file` fetches each chunk from its batch's host,
/// and with one batch's host gone names the chunk no host holds and writes nothing.
#[test]
fn a_copy_spread_over_hosts_with_room_for_part_of_it_comes_back_from_their_batches() {
    const PRICES: [u64; 3] = [30, 10, 20];
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 18, 3, &[]);
    let ex = start_exchange(dir.path(), "exchange", &m0, &client, &[], |t| t, &[]);
    // Room for two 64 KiB chunks and the manifest, not three; one shard, since the
    // engine divides the capacity among its shards and chunks go to them by their id.
    for h in &hosts {
        let text = std::fs::read_to_string(&h.cfg).unwrap();
        assert!(text.contains("\ncapacity_bytes = 0\n"), "{text}");
        assert!(text.contains("\nshards = 0\n"), "{text}");
        let mut text = text
            .replace("\ncapacity_bytes = 0\n", "\ncapacity_bytes = 163840\n")
            .replace("\nshards = 0\n", "\nshards = 1\n");
        // Host 2 bids request by request instead of keeping an ask.
        if h.cfg == hosts[2].cfg {
            assert!(text.contains("post_asks = true\nbid_on_requests = false"));
            text = text
                .replace("post_asks = true", "post_asks = false")
                .replace("bid_on_requests = false", "bid_on_requests = true");
        }
        std::fs::write(&h.cfg, text).unwrap();
    }
    ask_on(&mut hosts, &[&ex.addr], &PRICES);
    let book = || json(&["exchange", "status", "--exchange", &ex.addr, "--json"]);
    assert!(
        until(&m0, 200, || {
            let b = book();
            b["asks"].as_array().unwrap().len() == 2 && b["watchers"] == 1
        }),
        "hosts 0 and 1's asks and host 2's watch never reached the exchange: {}",
        book()
    );
    let (file, bytes, pass, state) = client_files(dir.path(), "spread", 300_000);
    let env = [("MSPACE_STATE_DIR", state.as_str())];
    let blocks = (PROOF_PERIOD * PERIODS).to_string();
    let put_with = |extra: &[&str], fault: &[(&str, &str)]| {
        let mut args = vec![
            "put",
            file.to_str().unwrap(),
            "--exchange",
            &ex.addr,
            "--copies",
            "1",
            "--chain",
            &m0,
            "--days",
            "1",
            "--period-blocks",
            &blocks,
            "--chunk-size",
            "64KiB",
            "--key",
            &client,
            "--passphrase-file",
            pass.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let env: Vec<(&str, &str)> = env.iter().chain(fault).copied().collect();
        mspace(&args, &env)
    };
    let put = |extra: &[&str]| put_with(extra, &[]);
    let whole = put(&["--json"]);
    assert_ne!(whole.code, 0);
    assert!(
        whole.stderr.contains("matched 0 host(s) for 1 copies")
            && whole.stderr.contains("allow --spread"),
        "{}",
        whole.stderr
    );
    let dry = put(&["--spread", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stderr, book());
    let rows: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    let by_price = [&hosts[1], &hosts[2], &hosts[0]];
    let unit = 64 * 1024 + 16;
    let envelope = 64 + 24 + 255 + 40 * 5 + 16;
    let last = 300_000 - 4 * 64 * 1024 + 16;
    let want: Vec<(String, u64, u64)> = by_price
        .iter()
        .zip([2 * unit + envelope, 2 * unit + envelope, last + envelope])
        .map(|(h, b)| (h.key.clone(), 1, b))
        .collect();
    let got: Vec<(String, u64, u64)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_owned(),
                r["copy"].as_u64().unwrap(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{rows}");
    // The dry run's request took that room on the book like any request; the hosts' next
    // asks (posted every 15 s) state their room again.
    let full = || {
        book()["asks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["free_bytes"] == 163_840)
    };
    assert!(!full(), "{}", book());
    assert!(
        until(&m0, 400, full),
        "the asks never stated their room again: {}",
        book()
    );

    // A put killed as soon as its first batch is paid; run again, it goes on with the
    // batches the exchange matched before (the hosts' room has changed since), finds that
    // deal on the chain and pays the other two only.
    let killed = put_with(
        &["--spread", "--json"],
        &[(net::deal::FAULT_ENV, "exit-after-payment")],
    );
    assert_eq!(killed.code, 3, "{}", killed.stderr);
    let paid = || -> Vec<String> {
        json(&["deals", "--key", &client, "--chain", &m0, "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = paid();
    assert_eq!(first.len(), 1, "{first:?}");
    let stored = put(&["--spread", "--json"]);
    assert_eq!(stored.code, 0, "{}", stored.stderr);
    assert_eq!(paid().len(), 3, "no batch paid twice");
    let out: serde_json::Value = serde_json::from_str(&stored.stdout).unwrap();
    let deals: Vec<String> = out["deals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["deal"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        (deals.len(), out["spread_copies"].as_u64()),
        (3, Some(1)),
        "{out}"
    );
    assert_eq!(
        deals[0], first[0],
        "the killed run's deal is the first batch's: {out}"
    );
    // Each batch is a deal of its chunks and the manifest envelope, with its host.
    for ((d, h), chunks) in deals.iter().zip(by_price).zip([3, 3, 2]) {
        let v = deal(&m0, d);
        assert_eq!(v["host"], h.key.as_str(), "{v}");
        assert_eq!(v["state"], "active", "{v}");
        assert_eq!(v["chunks"], chunks, "{v}");
    }
    for d in &deals {
        let v = wait_deal(&m0, d, "proved a period", |v| {
            v["proven"].as_u64() >= Some(1)
        });
        assert_eq!(v["missed"], 0, "{v}");
    }

    let manifest = out["manifest_id"].as_str().unwrap();
    // Selling downloads needs a full copy on each host a receiver buys from: refused.
    let shared = mspace(&["share", manifest, "--chain", &m0], &env);
    assert_ne!(shared.code, 0);
    assert!(
        shared
            .stderr
            .contains("1 copy spread over 3 hosts in batches"),
        "{}",
        shared.stderr
    );
    let get = |name: &str| {
        let back = dir.path().join(name);
        let got = mspace(
            &[
                "get",
                "--file",
                manifest,
                "--out",
                back.to_str().unwrap(),
                "--key",
                &client,
                "--passphrase-file",
                pass.to_str().unwrap(),
                "--json",
            ],
            &env,
        );
        (got, back)
    };
    let (got, back) = get("back.bin");
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);
    let g: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
    let served: Vec<u64> = g["served"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["chunks"].as_u64().unwrap())
        .collect();
    assert_eq!(
        served,
        vec![2, 2, 1],
        "each chunk from its batch's host: {g}"
    );

    // The last batch's host gone: its chunk is named missing, nothing is written.
    drop(hosts[0].proc.take());
    let (got, back) = get("short.bin");
    assert_ne!(got.code, 0);
    assert!(
        got.stderr.contains("chunk 4 (id") && got.stderr.contains("is missing"),
        "{}",
        got.stderr
    );
    assert!(!back.exists());
}

/// One exchange run as three replicas (`mspace exchange init --replica ...`), each its own
/// process with its own raft file: hosts ask at every replica, every replica's book shows
/// each ask once; the leader is killed, and a put's request at a follower is matched on the
/// book the survivors kept (after they elected a new leader); the killed replica, run
/// again, catches up from its raft file and the new leader, and matches too.
#[test]
fn an_exchange_of_three_replicas_keeps_its_book_when_its_leader_dies() {
    const PRICES: [u64; 3] = [30, 10, 20];
    let dir = tempfile::tempdir().unwrap();
    let Market {
        _net,
        m0,
        client,
        mut hosts,
    } = start_market(dir.path(), 17, 3, &[]);
    let free = || format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let rafts: Vec<String> = (0..3).map(|_| free()).collect();
    let addrs: Vec<String> = (0..3).map(|_| free()).collect();
    let set: Vec<String> = rafts
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}={r}", i + 1))
        .collect();
    let mut cfgs = Vec::new();
    let mut key = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        let cfg = s(&dir.path().join(format!("ex{i}/exchange.toml")));
        let id = (i + 1).to_string();
        let mut args = vec![
            "exchange",
            "init",
            "--config",
            &cfg,
            "--listen",
            addr,
            "--chain",
            &m0,
            "--replica-id",
            &id,
        ];
        for r in &set {
            args.extend_from_slice(&["--replica", r]);
        }
        let init = mspace(&args, &[]);
        assert_eq!(init.code, 0, "{}", init.stderr);
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(
            text.contains(&format!("[replication]\nid = {id}")),
            "{text}"
        );
        if i == 0 {
            key = init
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("exchange key "))
                .unwrap()
                .to_owned();
        } else {
            // Every replica holds the exchange's one key.
            std::fs::copy(
                dir.path().join("ex0/exchange.key"),
                dir.path().join(format!("ex{i}/exchange.key")),
            )
            .unwrap();
        }
        cfgs.push(cfg);
    }
    // A replica set of two is refused by name.
    let two = mspace(
        &[
            "exchange",
            "init",
            "--config",
            &s(&dir.path().join("two/exchange.toml")),
            "--chain",
            &m0,
            "--replica-id",
            "1",
            "--replica",
            &set[0],
            "--replica",
            &set[1],
        ],
        &[],
    );
    assert_ne!(two.code, 0);
    assert!(two.stderr.contains("from 3"), "{}", two.stderr);
    let run = |i: usize| {
        super::net::start(
            &["exchange", "run", "--config", &cfgs[i]],
            &[],
            "exchange listening on",
        )
    };
    let mut procs: Vec<Option<Proc>> = (0..3).map(|i| Some(run(i))).collect();
    for (asset, amount) in [("masp", "1000"), ("maspc", "10")] {
        json(&[
            "chain", "transfer", "--key", &client, "--to", &key, "--asset", asset, "--amount",
            amount, "--miner", &m0, "--wait", "60s", "--json",
        ]);
    }
    json(&[
        "exchange",
        "register",
        "--config",
        &cfgs[0],
        "--deposit",
        "1000",
        "--json",
    ]);
    let status = |i: usize| json(&["exchange", "status", "--exchange", &addrs[i], "--json"]);
    let leader_of = |i: usize| status(i)["replica"]["leader"].as_u64();
    assert!(
        until(&m0, 100, || leader_of(0).is_some()),
        "no leader: {}",
        status(0)
    );
    let leader = usize::try_from(leader_of(0).unwrap() - 1).unwrap();
    let other = (leader + 1) % 3;
    for i in 0..3 {
        assert_eq!(status(i)["key"], key.as_str());
        assert_eq!(status(i)["replica"]["id"], i as u64 + 1);
    }
    // The hosts name every replica: each ask, posted through all three, is on the book
    // once (the same signed ask again is no refusal).
    let every: Vec<&str> = addrs.iter().map(String::as_str).collect();
    ask_on(&mut hosts, &every, &PRICES);
    let asks = |i: usize| status(i)["asks"].as_array().unwrap().len();
    assert!(
        until(&m0, 200, || (0..3).all(|i| asks(i) == PRICES.len())),
        "the asks did not reach every replica's book: {} {} {}",
        status(0),
        status(1),
        status(2)
    );
    for i in 0..3 {
        let refused = status(i)["refused"].clone();
        assert!(refused.get("stale ask").is_none(), "{refused}");
    }

    // The leader dies; the request at a follower waits out the election.
    drop(procs[leader].take());
    let (file, _, pass, state) = client_files(dir.path(), "replicas", 100_000);
    let dry = |at: usize| {
        let put = mspace(
            &[
                "put",
                file.to_str().unwrap(),
                "--exchange",
                &addrs[at],
                "--chain",
                &m0,
                "--copies",
                "2",
                "--days",
                "1",
                "--key",
                &client,
                "--passphrase-file",
                pass.to_str().unwrap(),
                "--dry-run",
                "--json",
            ],
            &[("MSPACE_STATE_DIR", state.as_str())],
        );
        assert_eq!(put.code, 0, "{}", put.stderr);
        picked(&put.stdout)
    };
    let cheapest = vec![(hosts[1].key.clone(), 10), (hosts[2].key.clone(), 20)];
    assert_eq!(dry(other), cheapest);
    let now_leading = leader_of(other).expect("a leader among the survivors");
    assert_ne!(now_leading, leader as u64 + 1, "{}", status(other));

    // The killed replica comes back: from its raft file and the new leader it holds the
    // same book, and answers.
    procs[leader] = Some(run(leader));
    let applied = |i: usize| status(i)["replica"]["last_applied"].as_u64();
    let target = applied(other).unwrap();
    assert!(
        until(&m0, 100, || applied(leader).is_some_and(|a| a >= target)
            && asks(leader) == PRICES.len()),
        "the restarted replica did not catch up: {}",
        status(leader)
    );
    assert_eq!(dry(leader), cheapest);
}
