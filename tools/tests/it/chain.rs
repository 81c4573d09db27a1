//! The chain as its users run it: `mspace miner init`, `mspace devnet` (four miner
//! processes on loopback), and the `mspace chain` client, with a miner killed by SIGKILL
//! and restarted while transfers flow.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::mspace;

/// The devnet process; on drop it is asked to stop (it stops its miners), and any miner
/// still running is killed through its pid file.
pub(crate) struct Devnet {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Devnet {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        for i in 0..4 {
            if let Ok(p) = std::fs::read_to_string(self.dir.join(format!("miner{i}/miner.pid"))) {
                if let Ok(p) = p.trim().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

pub(crate) fn json(args: &[&str]) -> serde_json::Value {
    let r = mspace(args, &[]);
    assert_eq!(r.code, 0, "mspace {args:?}: {}", r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn pid_of(dir: &Path, i: usize) -> i32 {
    std::fs::read_to_string(dir.join(format!("miner{i}/miner.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// `mspace host init` with its data in `data`, loopback ports and `chain` as its miner,
/// then `mspace host`; returns its control and data addresses, the process and its key.
pub(crate) fn start_chain_host(
    cfg: &Path,
    data: &Path,
    chain: &str,
) -> (String, String, super::net::Proc, String) {
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let control = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let listen = format!("127.0.0.1:{}", super::net::free_port("127.0.0.1"));
    let init = mspace(
        &[
            "host",
            "init",
            "--config",
            &s(cfg),
            "--data-dir",
            &s(data),
            "--listen",
            &listen,
            "--control-listen",
            &control,
            "--chain",
            chain,
            "--dashboard-listen",
            &format!("127.0.0.1:{}", super::net::free_port("127.0.0.1")),
        ],
        &[],
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    // Its watcher (alerts, the dashboard's figures) looks every second.
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(cfg, text.replace("every_secs = 10", "every_secs = 1")).unwrap();
    // A host on a chain prints this line last, once its control plane and agent run.
    let proc = super::net::start(
        &["host", "--config", &s(cfg)],
        &[],
        "agent following the chain",
    );
    let key = json(&["host", "status", "--config", &s(cfg), "--json"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    (control, listen, proc, key)
}

/// Starts `mspace devnet --validators n` in `d` (block time 200 ms) on eight ports a
/// validator from a range picked by this process's id and `slot`, below the kernel's
/// ephemeral range (32768 and up) so that no outgoing connection holds one of them; returns
/// once every miner is started, with the first port.
fn start_devnet(d: &Path, n: u32, slot: u32) -> (Devnet, u32) {
    start_devnet_with(d, n, slot, &["--block-time-ms", "200"])
}

/// [`start_devnet`] with these options (block time, proof period). Each process takes a
/// range of 16 slots x 16 ports (slots 0 to 15, one per test: chain.rs takes 0, 1 and 13,
/// deal.rs 2 to 12 and 14), so two test processes whose ids differ modulo 48 never share a port.
/// The first of the 16 ports of devnet slot `slot` (0 to 31) for this test process: the
/// slots of one process never overlap, and processes (by pid) take other ranges, all
/// above the 10,000-20,000 that `free_port` hands out.
fn slot_base(slot: u32) -> u32 {
    assert!(slot < 32, "slots 0 to 31");
    20_000 + (std::process::id() % 24) * 512 + slot * 16
}

pub(crate) fn start_devnet_with(d: &Path, n: u32, slot: u32, extra: &[&str]) -> (Devnet, u32) {
    start_devnet_env(d, n, slot, extra, &[])
}

/// [`start_devnet_with`] with these variables in the devnet's environment (its miners
/// inherit them: `MSPACE_MINER__...` overrides).
fn start_devnet_env(
    d: &Path,
    n: u32,
    slot: u32,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Devnet, u32) {
    let base = slot_base(slot);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mspace"))
        .args([
            "devnet",
            "--validators",
            &n.to_string(),
            "--dir",
            d.to_str().unwrap(),
            "--base-port",
            &base.to_string(),
        ])
        .args(extra)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let net = Devnet {
        child,
        dir: d.to_path_buf(),
    };
    // The devnet prints its layout, then "try: ..." when every miner is started.
    let mut out = BufReader::new(out);
    let mut layout = String::new();
    loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "devnet ended: {layout}"
        );
        layout.push_str(&line);
        if line.starts_with("try:") {
            break;
        }
    }
    assert!(layout.contains(&format!("{n} validators")), "{layout}");
    // What it prints later is read and dropped (a closed pipe would fail its next line).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (net, base)
}

#[test]
fn miner_init_writes_a_config_and_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("v.key");
    assert_eq!(
        mspace(
            &[
                "host",
                "init",
                "--config",
                d.join("h/host.toml").to_str().unwrap(),
                "--data-dir",
                d.join("h/data").to_str().unwrap()
            ],
            &[]
        )
        .code,
        0
    );
    std::fs::copy(d.join("h/host.key"), &key).unwrap();
    let genesis = d.join("genesis.toml");
    std::fs::write(
        &genesis,
        "chain_id = 5\n[[validators]]\nkey = \"00\"\nstake = 1\nendpoint = \"x\"\n",
    )
    .unwrap();
    let cfg = d.join("m/miner.toml");
    let data = d.join("m/data");
    let args = [
        "miner",
        "init",
        "--config",
        cfg.to_str().unwrap(),
        "--genesis",
        genesis.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/1",
    ];
    let r = mspace(&args, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("# The chain's genesis"), "{text}");
    assert!(d.join("m/miner.key").exists());
    let again = mspace(&args, &[]);
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("exists"), "{}", again.stderr);
    // A bad genesis is refused with the reason, before anything starts.
    let run = mspace(&["miner", "--config", cfg.to_str().unwrap()], &[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("below the miner deposit"),
        "{}",
        run.stderr
    );
    // A bad p2p address is refused by init.
    let bad = mspace(
        &[
            "miner",
            "init",
            "--config",
            d.join("n/miner.toml").to_str().unwrap(),
            "--genesis",
            genesis.to_str().unwrap(),
            "--data-dir",
            d.join("n/data").to_str().unwrap(),
            "--p2p-listen",
            "127.0.0.1:80",
        ],
        &[],
    );
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("p2p address"), "{}", bad.stderr);
}

#[test]
fn devnet_keeps_every_acknowledged_transfer_through_a_sigkilled_miner() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net");
    let (net, base) = start_devnet(&d, 4, 0);
    let control = |i: u32| format!("127.0.0.1:{}", base + 2 * i + 1);
    let m0 = control(0);
    // The first block, waited for on miner 0.
    let b1 = json(&[
        "chain", "block", "1", "--wait", "60s", "--miner", &m0, "--json",
    ]);
    assert_eq!(b1["height"], 1);

    let status = json(&["chain", "status", "--miner", &m0, "--json"]);
    let validators = status["validators"].as_array().unwrap();
    assert_eq!(validators.len(), 4);
    let to = validators[0][0].as_str().unwrap().to_string();
    let key = d.join("client.key");
    let before = json(&["chain", "account", &to, "--miner", &m0, "--json"])["maspc"]
        .as_u64()
        .unwrap();

    let mut acked = Vec::new();
    let killed_pid = pid_of(&d, 1);
    for i in 0..8 {
        if i == 3 {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(killed_pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
        let t = json(&[
            "chain",
            "transfer",
            "--key",
            key.to_str().unwrap(),
            "--to",
            &to,
            "--amount",
            "7",
            "--wait",
            "60s",
            "--miner",
            &m0,
            "--json",
        ]);
        acked.push((
            t["tx"].as_str().unwrap().to_string(),
            t["height"].as_u64().unwrap(),
        ));
    }
    let last = acked.last().unwrap().1;
    // Every miner, the restarted one too (`block --wait` also waits for a miner that is
    // starting to listen), reaches the last height and holds every acknowledged transfer
    // in the same block.
    let mut tip = None;
    for i in 0..4 {
        let m = control(i);
        let b = json(&[
            "chain",
            "block",
            &last.to_string(),
            "--wait",
            "60s",
            "--miner",
            &m,
            "--json",
        ]);
        let id = tip.get_or_insert_with(|| b["id"].clone());
        assert_eq!(&b["id"], id, "miner {i} decided another block at {last}");
        for (tx, h) in &acked {
            let t = json(&["chain", "tx", tx, "--miner", &m, "--json"]);
            assert_eq!(t["height"].as_u64(), Some(*h), "miner {i}, tx {tx}");
        }
    }
    // Miner 1 answered: the devnet started it again, under a new pid.
    assert_ne!(
        pid_of(&d, 1),
        killed_pid,
        "the killed miner was not restarted"
    );
    let after = json(&["chain", "account", &to, "--miner", &control(1), "--json"]);
    assert_eq!(after["maspc"].as_u64().unwrap(), before + 8 * 7);
    // A transfer the ledger cannot pay is refused at once, with the reason.
    let poor = d.join("miner2/miner.key");
    let r = mspace(
        &[
            "chain",
            "transfer",
            "--key",
            poor.to_str().unwrap(),
            "--to",
            &to,
            "--amount",
            "999999999999",
            "--miner",
            &m0,
        ],
        &[],
    );
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("refused") || r.stderr.contains("overdraft"),
        "{}",
        r.stderr
    );
    drop(net);
}

#[test]
fn contractors_register_unbond_and_withdraw_on_a_devnet_and_a_host_offers_only_while_backed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net");
    let (net, base) = start_devnet(&d, 1, 1);
    let m0 = format!("127.0.0.1:{}", base + 1);
    let client = d.join("client.key");
    let s = |p: &Path| p.to_str().unwrap().to_owned();

    // A host on this chain, running, with its control plane.
    let cfg = dir.path().join("host/host.toml");
    let (control, listen, _host, host_key) =
        start_chain_host(&cfg, &dir.path().join("host/data"), &m0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let offer = |bytes: u64| {
        rt.block_on(async {
            let c = api::host_client(&control).await.unwrap();
            c.offer(
                tarpc::context::current(),
                api::StorageRequest {
                    bytes,
                    days: 30,
                    via: None,
                },
            )
            .await
            .unwrap()
        })
    };
    assert_eq!(
        offer(1 << 30).refusal,
        Some(api::OfferRefusal::NotRegistered)
    );
    // The client's MASP (for a deposit) and 100 MASPC (for fees) to an account.
    let fund = |to: &str, masp: &str| {
        for (asset, amount) in [("masp", masp), ("maspc", "100")] {
            json(&[
                "chain",
                "transfer",
                "--key",
                &s(&client),
                "--to",
                to,
                "--asset",
                asset,
                "--amount",
                amount,
                "--miner",
                &m0,
                "--wait",
                "60s",
                "--json",
            ]);
        }
    };

    // Registering needs MASP for the deposit and MASPC for the fee: the client pays both.
    let register = |deposit: &str| {
        mspace(
            &[
                "host",
                "register",
                "--config",
                &s(&cfg),
                "--deposit",
                deposit,
            ],
            &[],
        )
    };
    let r = register("1500");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("holds 0 MASPC"), "{}", r.stderr);
    fund(&host_key, "5000");
    let low = register("900");
    assert_ne!(low.code, 0);
    assert!(low.stderr.contains("at least 1000 MASP"), "{}", low.stderr);
    let reg = json(&[
        "host",
        "register",
        "--config",
        &s(&cfg),
        "--deposit",
        "1500",
        "--json",
    ]);
    assert_eq!(reg["op"], "register");
    assert_eq!(reg["registration"]["deposit"], 1500);
    assert_eq!(reg["registration"]["endpoint"], listen.as_str());
    assert_eq!(reg["masp"], 3500);
    let again = register("1500");
    assert!(
        again.stderr.contains("already registered"),
        "{}",
        again.stderr
    );

    // Backed: 1 GiB needs 1,010 MASP of deposit; 100 GiB needs 2,000, more than it holds.
    // The offer is signed by the host, for this chain, backed by its deposit: what
    // `mspace offer` checks and prints.
    let ok = offer(1 << 30);
    assert!(ok.signed.is_some(), "{ok:?}");
    let shown = json(&[
        "offer", "--host", &control, "--miner", &m0, "--bytes", "1GiB", "--days", "30", "--json",
    ]);
    assert_eq!(shown["host"], host_key.as_str());
    assert_eq!(shown["deposit"], 1500);
    assert_eq!(shown["total_maspc"], 10 * 30);
    let other = data_encoding::HEXLOWER.encode(
        &ed25519_consensus::SigningKey::from([3u8; 32])
            .verification_key()
            .to_bytes(),
    );
    let wrong_key = mspace(
        &[
            "offer",
            "--host",
            &control,
            "--host-key",
            &other,
            "--bytes",
            "1GiB",
            "--days",
            "30",
        ],
        &[],
    );
    assert!(
        wrong_key.stderr.contains("another host"),
        "{}",
        wrong_key.stderr
    );
    assert_eq!(
        offer(100 << 30).refusal,
        Some(api::OfferRefusal::DepositTooLow {
            have: 1500,
            need: 2000
        })
    );

    // Unbonding: no new storage; the deposit comes back only after the unbonding period.
    let unbond = json(&["host", "unbond", "--config", &s(&cfg), "--json"]);
    let until = unbond["registration"]["unbonding_until"].as_u64().unwrap();
    assert!(until > unbond["height"].as_u64().unwrap());
    assert_eq!(
        offer(1 << 30).refusal,
        Some(api::OfferRefusal::Unbonding { until })
    );
    let early = mspace(&["host", "withdraw", "--config", &s(&cfg)], &[]);
    assert_ne!(early.code, 0);
    assert!(
        early
            .stderr
            .contains(&format!("unbonding until height {until}")),
        "{}",
        early.stderr
    );

    // A second validator: a new miner key registers with a stake, through miner 0.
    let genesis = d.join("genesis.toml");
    let mcfg = dir.path().join("m2/miner.toml");
    let r = mspace(
        &[
            "miner",
            "init",
            "--config",
            &s(&mcfg),
            "--genesis",
            &s(&genesis),
            "--data-dir",
            &s(&dir.path().join("m2/data")),
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/1",
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mkey = r.stdout.trim().rsplit(' ').next().unwrap().to_owned();
    fund(&mkey, "20000");
    let reg = json(&[
        "miner",
        "register",
        "--config",
        &s(&mcfg),
        "--deposit",
        "10000",
        "--miner",
        &m0,
        "--json",
    ]);
    assert_eq!(reg["role"], "miner");
    assert_eq!(reg["registration"]["deposit"], 10_000);
    let acct = json(&["chain", "account", &mkey, "--miner", &m0, "--json"]);
    assert_eq!(acct["registrations"][0]["role"], "miner");
    let unbond = json(&[
        "miner",
        "unbond",
        "--config",
        &s(&mcfg),
        "--miner",
        &m0,
        "--json",
    ]);
    assert!(unbond["registration"]["unbonding_until"].as_u64().is_some());
    let early = mspace(
        &["miner", "withdraw", "--config", &s(&mcfg), "--miner", &m0],
        &[],
    );
    assert!(
        early.stderr.contains("unbonding until height"),
        "{}",
        early.stderr
    );
    drop(net);
}

/// Waits (60 s at most) for the webhook's event that `want` accepts.
fn posted(
    rx: &std::sync::mpsc::Receiver<serde_json::Value>,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    loop {
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no event {what} posted in 60 s"));
        if want(&e) {
            return e;
        }
    }
}

/// The kinds of the alerts `mspace chain status` shows for the miner at `control`.
fn alert_kinds(control: &str) -> Vec<String> {
    let s = json(&["chain", "status", "--miner", control, "--json"]);
    s["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// Asks `mspace chain status` until `done` holds for the miner's alert kinds (60 s at
/// most); the last kinds.
fn alerts_until(control: &str, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let kinds = alert_kinds(control);
        if done(&kinds) {
            return kinds;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still {kinds:?} after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_miner_cut_off_from_its_peers_raises_alerts_and_clears_them_once_it_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("net");
    // Every miner looks every second (an override from the environment).
    let every = [("MSPACE_MINER__ALERTS__EVERY_SECS", "1")];
    let base = slot_base(13);
    let metrics_base = (base + 8).to_string();
    let (net, base) = start_devnet_env(
        &d,
        4,
        13,
        &["--block-time-ms", "200", "--metrics-base", &metrics_base],
        &every,
    );
    let control = |i: u32| format!("127.0.0.1:{}", base + 2 * i + 1);
    json(&[
        "chain",
        "block",
        "3",
        "--wait",
        "60s",
        "--miner",
        &control(0),
        "--json",
    ]);
    // A healthy network: no alerts anywhere.
    for i in 0..4 {
        alerts_until(
            &control(i),
            &format!("miner {i} healthy"),
            <[String]>::is_empty,
        );
    }

    // Miner 3 restarts on another p2p port and dials ports nobody listens on: cut off
    // from the others, whose heights it still reads on their control planes.
    let (hook, events) = super::net::webhook_receiver();
    let cfg3 = d.join("miner3/miner.toml");
    let healthy = std::fs::read_to_string(&cfg3)
        .unwrap()
        .replace(
            "# webhook = \"http://127.0.0.1:9900/alerts\"",
            &format!("webhook = \"{hook}\""),
        )
        .replace("behind_blocks = 10", "behind_blocks = 3")
        .replace("missed_votes = 10", "missed_votes = 1");
    let p2p3 = format!("/ip4/127.0.0.1/tcp/{}", base + 6);
    let nowhere = |i: u32| format!("/ip4/127.0.0.1/tcp/{}", base + 12 + i);
    let mut cut = healthy.replace(&p2p3, &nowhere(3));
    for i in 0..3 {
        cut = cut.replace(&format!("/ip4/127.0.0.1/tcp/{}", base + 2 * i), &nowhere(i));
    }
    assert_ne!(
        cut, healthy,
        "the p2p addresses were not found in miner3.toml"
    );
    std::fs::write(&cfg3, &cut).unwrap();
    let key3 = json(&["chain", "status", "--miner", &control(3), "--json"])["validator"]
        .as_str()
        .unwrap()
        .to_owned();
    let kill3 = || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid_of(&d, 3)),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    kill3();
    let from3 = |kind: &'static str, state: &'static str| {
        let key3 = key3.clone();
        move |e: &serde_json::Value| {
            e["miner"] == key3.as_str() && e["alert"]["kind"] == kind && e["state"] == state
        }
    };
    let e = posted(
        &events,
        "falling_behind raised",
        from3("falling_behind", "raised"),
    );
    assert_eq!(e["alert"]["severity"], "critical");
    assert!(
        e["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("block(s) behind the miner at 127.0.0.1:"),
        "{e}"
    );
    let kinds = alerts_until(&control(3), "miner 3 cut off", |k| {
        k.contains(&"falling_behind".to_string()) && k.contains(&"peers_lost".to_string())
    });
    println!("miner 3 cut off: {kinds:?}");
    // The others see one peer gone: in their status and their metrics.
    alerts_until(&control(0), "miner 0 without miner 3", |k| {
        k.contains(&"peers_lost".to_string())
    });
    let m0 = super::net::check_metrics("miner", &format!("127.0.0.1:{metrics_base}"));
    assert!(
        m0.contains("mspace_miner_alert{kind=\"peers_lost\",severity=\"warning\"} 1\n"),
        "{m0}"
    );
    assert!(
        m0.contains("mspace_miner_alert{kind=\"falling_behind\",severity=\"critical\"} 0\n"),
        "{m0}"
    );
    assert!(m0.contains("mspace_miner_connected_peers 2\n"), "{m0}");
    let s0 = json(&["chain", "status", "--miner", &control(0), "--json"]);
    let lost = s0["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "peers_lost")
        .unwrap()
        .clone();
    assert!(
        lost["message"]
            .as_str()
            .unwrap()
            .starts_with("connected to 2 of 3 configured peers"),
        "{lost}"
    );

    // Back on its own port: it syncs the blocks it missed, its alerts clear, and its
    // signature is missing from those blocks' commits.
    std::fs::write(&cfg3, &healthy).unwrap();
    kill3();
    posted(
        &events,
        "falling_behind cleared",
        from3("falling_behind", "cleared"),
    );
    let kinds = alerts_until(&control(3), "miner 3 caught up", |k| {
        k == ["missed_votes".to_string()]
    });
    assert_eq!(kinds, ["missed_votes"]);
    let s3 = json(&["chain", "status", "--miner", &control(3), "--json"]);
    let missed = s3["alerts"][0]["message"].as_str().unwrap().to_owned();
    assert!(
        missed.contains("this validator's signature is missing from"),
        "{missed}"
    );
    alerts_until(&control(0), "miner 0 with miner 3 again", |k| {
        !k.contains(&"peers_lost".to_string())
    });
    // The human form shows the alerts too.
    let human = mspace(&["chain", "status", "--miner", &control(3)], &[]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("missed_votes"), "{}", human.stdout);
    drop(net);
}
