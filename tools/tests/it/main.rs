//! The `mspace` binary as a user drives it: arguments, passphrase sources, JSON output,
//! exit codes and error messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub(crate) struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub(crate) fn mspace(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mspace"));
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("MSPACE_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new(len: usize) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect();
        fs::write(tmp.path().join("input.bin"), data).unwrap();
        fs::write(tmp.path().join("pass"), "hunter2 is not a passphrase\n").unwrap();
        Fixture { tmp }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_owned()
    }

    /// `mspace open <sealed> --out <out> <extra...>`.
    fn open(&self, out: &str, extra: &[&str]) -> Run {
        let (sealed, out) = (self.s("sealed"), self.s(out));
        let mut args = vec!["open", sealed.as_str(), "--out", out.as_str()];
        args.extend_from_slice(extra);
        mspace(&args, &[])
    }

    fn seal_json(&self, chunk: &str) -> serde_json::Value {
        let run = mspace(
            &[
                "seal",
                &self.s("input.bin"),
                "--out",
                &self.s("sealed"),
                "--chunk-size",
                chunk,
                "--passphrase-file",
                &self.s("pass"),
                "--json",
            ],
            &[],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        serde_json::from_str(&run.stdout).unwrap()
    }
}

pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    fs::read(a).unwrap() == fs::read(b).unwrap()
}

#[test]
fn seal_json_then_open_with_passphrase_and_share_key() {
    let f = Fixture::new(300_000);
    let json = f.seal_json("64KiB");
    for key in ["file_id", "manifest_id", "share_key"] {
        assert!(json[key].is_string(), "{key} missing from {json}");
    }
    let chunks = json["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 5);
    assert_eq!(json["file_bytes"], 300_000);
    let mut plain = 0;
    for c in chunks {
        let bytes = fs::read(f.p("sealed").join(c["id"].as_str().unwrap())).unwrap();
        assert_eq!(c["bytes"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(
            c["crc32c"].as_u64().unwrap(),
            u64::from(engine::codec::crc32c(&bytes))
        );
        plain += c["plain_bytes"].as_u64().unwrap();
    }
    assert_eq!(plain, 300_000);

    let run = f.open("a.bin", &["--passphrase-file", &f.s("pass")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("all verified"), "{}", run.stdout);
    assert!(same_file(&f.p("input.bin"), &f.p("a.bin")));

    let share = json["share_key"].as_str().unwrap();
    let run = f.open("b.bin", &["--share-key", share, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let opened: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(opened["file_id"], json["file_id"]);
    assert!(same_file(&f.p("input.bin"), &f.p("b.bin")));

    // The share key can stay out of argv: from a file, or from the environment.
    fs::write(f.p("share"), format!("{share}\n")).unwrap();
    let run = f.open("c.bin", &["--share-key-file", &f.s("share")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(same_file(&f.p("input.bin"), &f.p("c.bin")));
    let run = mspace(
        &["open", &f.s("sealed"), "--out", &f.s("d.bin")],
        &[("MSPACE_SHARE_KEY", share)],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(same_file(&f.p("input.bin"), &f.p("d.bin")));
}

#[test]
fn hopeless_commands_fail_before_asking_for_a_passphrase() {
    let f = Fixture::new(100);
    // No passphrase source at all: each error must be the real problem, not "no passphrase".
    let cases: [(&[&str], &str); 3] = [
        (
            &["seal", &f.s("missing"), "--out", &f.s("x")],
            "cannot read",
        ),
        (
            &[
                "seal",
                &f.s("input.bin"),
                "--out",
                f.tmp.path().to_str().unwrap(),
            ],
            "not empty",
        ),
        (
            &["open", f.tmp.path().to_str().unwrap(), "--out", &f.s("o")],
            "not a sealed directory",
        ),
    ];
    for (args, expect) in cases {
        let run = mspace(args, &[]);
        assert_eq!(run.code, 1, "{args:?}");
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn passphrase_comes_from_the_environment_or_is_refused() {
    let f = Fixture::new(1000);
    let pass = [("MSPACE_PASSPHRASE", "from the environment")];
    let run = mspace(&["seal", &f.s("input.bin"), "--out", &f.s("sealed")], &pass);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("share key"), "{}", run.stdout);
    let run = mspace(&["open", &f.s("sealed"), "--out", &f.s("out.bin")], &pass);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(same_file(&f.p("input.bin"), &f.p("out.bin")));

    // No file, no variable, no terminal: a clear error, not a hang.
    let run = f.open("again.bin", &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no passphrase"), "{}", run.stderr);
    assert!(!f.p("again.bin").exists());
}

#[test]
fn bad_arguments_are_refused_before_any_work() {
    let f = Fixture::new(10);
    let cases: [(&[&str], &str); 5] = [
        (
            &["seal", "x", "--out", "y", "--chunk-size", "1KiB"],
            "range",
        ),
        (
            &["seal", "x", "--out", "y", "--chunk-size", "12345"],
            "multiple of 4096",
        ),
        (
            &["seal", "x", "--out", "y", "--chunk-size", "8 furlongs"],
            "unknown unit",
        ),
        (
            &[
                "open",
                "d",
                "--out",
                "o",
                "--passphrase-file",
                "p",
                "--share-key",
                "k",
            ],
            "cannot be used with",
        ),
        (&["open", "d"], "--out"),
    ];
    for (args, expect) in cases {
        let run = mspace(args, &[]);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(expect), "{args:?}: {}", run.stderr);
    }
    f.seal_json("4KiB");
    let run = f.open("o", &["--share-key", "mss1-nope"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("share key"), "{}", run.stderr);
}

#[test]
fn wrong_keys_and_damage_fail_clearly_and_write_nothing() {
    let f = Fixture::new(200_000);
    let json = f.seal_json("64KiB");
    fs::write(f.p("wrong"), "not the passphrase").unwrap();
    let run = f.open("o", &["--passphrase-file", &f.s("wrong")]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("wrong passphrase"), "{}", run.stderr);

    let chunk = &json["chunks"][1];
    let path = f.p("sealed").join(chunk["id"].as_str().unwrap());
    let mut bytes = fs::read(&path).unwrap();
    bytes[7] ^= 4;
    fs::write(&path, bytes).unwrap();
    let run = f.open("o", &["--share-key", json["share_key"].as_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains(&format!("chunk 1 (id {})", chunk["id"].as_str().unwrap())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("CRC32C"), "{}", run.stderr);
    let left: Vec<_> = fs::read_dir(f.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        left.iter()
            .all(|n| ["input.bin", "pass", "wrong", "sealed"].contains(&n.as_str())),
        "{left:?}"
    );
}

#[test]
fn an_existing_output_is_replaced_only_with_force() {
    let f = Fixture::new(5000);
    f.seal_json("4KiB");
    fs::write(f.p("out"), "keep me").unwrap();
    let args = [
        "open",
        &f.s("sealed"),
        "--out",
        &f.s("out"),
        "--passphrase-file",
        &f.s("pass"),
    ];
    let run = mspace(&args, &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(fs::read_to_string(f.p("out")).unwrap(), "keep me");
    let mut forced = args.to_vec();
    forced.push("--force");
    assert_eq!(mspace(&forced, &[]).code, 0);
    assert!(same_file(&f.p("input.bin"), &f.p("out")));
}

#[test]
fn demo_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let run = mspace(
        &[
            "demo",
            "--size",
            "9MiB",
            "--dir",
            tmp.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("byte-identical"), "{}", run.stdout);
    assert!(
        run.stdout.contains("refused, no output written"),
        "{}",
        run.stdout
    );
    // The market: a deal on two hosts, proofs paid, a killed host slashed, supply kept.
    for said in [
        "exchange0 killed",
        "the index listed 2 exchanges, exchange0 did not answer the client's probe, so the signed request went on to exchange1, which matched the two cheapest of three asks: host0 at 10 MASPC and host1 at 11 MASPC",
        "both hosts' own CRCs matched on chain",
        "three proof periods",
        "MASPC to exchange1, the commission (100 per mille) each host's offer promised it",
        "moved 100 MASP of host1's deposit to the sender",
        "miner0 killed",
        "host1 is dead and left out, all",
        "`mspace put --erasure 2/3` on host0, host1 and host2",
        "every chunk rebuilt from two shares, verified and decrypted, byte-identical",
        "the file downloaded from the deal is byte-identical",
        "1 dead copy left out before paying, host0 quoted 5 MASPC to the sender and 1 to itself",
        "the sender's deal shows 1 download, 5 MASPC earned",
    ] {
        assert!(
            run.stdout.contains(said),
            "{said:?} missing:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("NOT CONSERVED"), "{}", run.stdout);
    assert_eq!(
        run.stdout.matches(": conserved").count(),
        5,
        "{}",
        run.stdout
    );
    assert!(run.stdout.ends_with("demo passed\n"), "{}", run.stdout);
}
mod chain;
mod deal;
mod gateway;
mod host_crash;
mod net;

/// The systemd units in deploy/systemd start this binary and pass `systemd-analyze verify`
/// with nothing to say (an unknown key is only a warning there, so any output fails).
#[test]
fn the_deploy_units_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for e in fs::read_dir(&units).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_owned();
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("/usr/local/bin/mspace", env!("CARGO_BIN_EXE_mspace"));
        // Each starts `mspace <role> ...` with a subcommand this binary has.
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap();
        let role: Vec<&str> = exec.split_whitespace().skip(1).take(2).collect();
        let help = mspace(&[role[0], "--help"], &[]);
        assert_eq!(help.code, 0, "{name}: mspace {} does not exist", role[0]);
        fs::write(tmp.path().join(&name), text).unwrap();
        names.push(tmp.path().join(&name));
    }
    assert_eq!(names.len(), 5, "host, miner, exchange, index, gateway");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(&names)
        .output()
        .expect("systemd-analyze (Debian's systemd) runs");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mspace completions SHELL` prints a script the shell parses; `mspace man --out DIR`
/// writes a page per subcommand.
#[test]
fn completions_and_man_pages_are_generated() {
    let tmp = tempfile::tempdir().unwrap();
    let bash = mspace(&["completions", "bash"], &[]);
    assert_eq!(bash.code, 0, "{}", bash.stderr);
    assert!(
        bash.stdout.contains("complete -F _mspace"),
        "{}",
        bash.stdout
    );
    assert!(
        bash.stdout.contains("gateway"),
        "every subcommand is completed"
    );
    let script = tmp.path().join("mspace.bash");
    fs::write(&script, &bash.stdout).unwrap();
    let parsed = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let bad = mspace(&["completions", "tcsh"], &[]);
    assert_ne!(bad.code, 0);
    let man = mspace(
        &["man", "--out", tmp.path().join("man").to_str().unwrap()],
        &[],
    );
    assert_eq!(man.code, 0, "{}", man.stderr);
    let pages: Vec<String> = fs::read_dir(tmp.path().join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for want in [
        "mspace.1",
        "mspace-host.1",
        "mspace-gateway.1",
        "mspace-put.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} in {pages:?}");
    }
    let page = fs::read_to_string(tmp.path().join("man/mspace-gateway.1")).unwrap();
    assert!(page.contains(".TH mspace-gateway"), "{page}");
}
