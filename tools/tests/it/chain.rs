//! The chain as its users run it: `mspace miner init`, `mspace devnet` (four miner
//! processes on loopback), and the `mspace chain` client, with a miner killed by SIGKILL
//! and restarted while transfers flow.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::mspace;

/// The devnet process; on drop it is asked to stop (it stops its miners), and any miner
/// still running is killed through its pid file.
struct Devnet {
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

fn json(args: &[&str]) -> serde_json::Value {
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
    // Eight ports from a range picked by this process's id, below the kernel's ephemeral
    // range (32768 and up) so that no outgoing connection holds one of them.
    let base = 20_000 + (std::process::id() % 700) * 16;
    let base_s = base.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mspace"))
        .args([
            "devnet",
            "--validators",
            "4",
            "--dir",
            d.to_str().unwrap(),
            "--base-port",
            &base_s,
            "--block-time-ms",
            "200",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let net = Devnet {
        child,
        dir: d.clone(),
    };
    // The devnet prints its layout, then "try: ..." when every miner is started.
    let mut lines = BufReader::new(out).lines();
    let mut layout = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        layout.push_str(&line);
        layout.push('\n');
        if line.starts_with("try:") {
            break;
        }
    }
    assert!(layout.contains("4 validators"), "{layout}");
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
