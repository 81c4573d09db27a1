//! A storage deal as processes run it: a devnet (one miner, 100 ms blocks, 20-block proof
//! periods), two registered hosts whose agents follow the chain, and `mspace put --host`
//! paying both, uploading, and returning once both completions matched. Both hosts prove
//! three periods and are paid; one is killed, misses its next proofs, is slashed and the
//! sender refunded; the file is downloaded from the other, byte-identical; balances are
//! asserted exactly once both deals are over.

use std::path::Path;

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
    let d = dir.path().join("net");
    let period = PROOF_PERIOD.to_string();
    let (_net, base) = start_devnet_with(
        &d,
        1,
        2,
        &["--block-time-ms", "100", "--proof-period-blocks", &period],
    );
    let m0 = format!("127.0.0.1:{}", base + 1);
    let client = s(&d.join("client.key"));
    let client_pub = json(&["chain", "status", "--miner", &m0, "--json"]);
    assert_eq!(client_pub["proof_period_blocks"], PROOF_PERIOD);

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
    let mut hosts: Vec<Host> = Vec::new();
    for i in 0..2 {
        let cfg = s(&dir.path().join(format!("host{i}/host.toml")));
        let data = dir.path().join(format!("host{i}/data"));
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
        hosts.push(Host {
            cfg,
            control,
            key,
            proc: Some(proc),
        });
    }
    let client_key = {
        let k = std::fs::read_to_string(&client).unwrap();
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
    };
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

    // The file comes back from the surviving host, through the deal's download link.
    let back = dir.path().join("back.bin");
    let get = mspace(
        &[
            "get",
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
        ],
        &env,
    );
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(std::fs::read(&back).unwrap(), bytes);

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
    let stored = |cfg: &str| {
        json(&["host", "status", "--config", cfg])["chunks"]
            .as_u64()
            .unwrap()
    };
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
}

#[test]
fn a_put_killed_after_paying_resumes_its_deal_without_paying_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net");
    let period = PROOF_PERIOD.to_string();
    let (_net, base) = start_devnet_with(
        &d,
        1,
        3,
        &["--block-time-ms", "100", "--proof-period-blocks", &period],
    );
    let m0 = format!("127.0.0.1:{}", base + 1);
    let client = s(&d.join("client.key"));
    let cfg = dir.path().join("host/host.toml");
    let (control, _, _host, key) = start_chain_host(&cfg, &dir.path().join("host/data"), &m0);
    for (asset, amount) in [("masp", HOST_DEPOSIT), ("maspc", HOST_MASPC)] {
        json(&[
            "chain",
            "transfer",
            "--key",
            &client,
            "--to",
            &key,
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
    }
    json(&[
        "host",
        "register",
        "--config",
        &s(&cfg),
        "--deposit",
        &HOST_DEPOSIT.to_string(),
        "--json",
    ]);

    // 96 MiB in 1 MiB chunks: the upload outlasts the payment by long enough to be killed.
    let file = dir.path().join("big.bin");
    let mut bytes = vec![0u8; 96 << 20];
    blake3::Hasher::new()
        .update(b"resume")
        .finalize_xof()
        .fill(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple").unwrap();
    let state = s(&dir.path().join("client-state"));
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
        "1MiB",
        "--key",
        &client,
        "--passphrase-file",
        &s(&pass),
        "--json",
    ];
    let deals = || json(&["deals", "--key", &client, "--chain", &m0, "--json"]);
    let mut first = std::process::Command::new(env!("CARGO_BIN_EXE_mspace"))
        .args(args)
        .env("MSPACE_STATE_DIR", &state)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed as soon as its payment is on chain.
    let paid = loop {
        let list = deals();
        if let Some(d) = list.as_array().unwrap().first() {
            break d["id"].as_str().unwrap().to_owned();
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "put ended before paying"
        );
    };
    first.kill().unwrap();
    let status = first.wait().unwrap();
    assert!(
        status.code().is_none(),
        "put finished before it was killed: {status}"
    );
    let nonce = |k: &str| {
        json(&["chain", "account", k, "--miner", &m0, "--json"])["nonce"]
            .as_u64()
            .unwrap()
    };
    let sender = deals()[0]["sender"].as_str().unwrap().to_owned();
    let paid_nonce = nonce(&sender);

    // The same command again: the same sealing, the same deal, no second payment.
    let again = mspace(&args, &[("MSPACE_STATE_DIR", state.as_str())]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let out: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(out["deals"][0]["deal"], paid.as_str(), "{out}");
    assert_eq!(nonce(&sender), paid_nonce, "no second payment");
    let listed = deals();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["state"], "active");
    // And the file comes back.
    let back = dir.path().join("back.bin");
    let get = mspace(
        &[
            "get",
            "--deal",
            &paid,
            "--host",
            &control,
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
}
