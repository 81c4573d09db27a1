//! `mspace gateway` as S3 clients use it: a host and a gateway as processes, then boto3,
//! the AWS CLI and rclone (installed by scripts/s3-clients.sh) through every operation
//! and its S3 error codes (scripts/s3-check.py prints the table); then the gateway killed
//! with SIGKILL in the middle of a PUT and started again: what was acknowledged is there,
//! the torn PUT left nothing visible and nothing in the spool, a multipart upload goes on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::mspace;
use super::net::{free_port, init_host, start, Proc};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The python an installer script of the repo prints (scripts/s3-clients.sh: boto3 and
/// the AWS CLI; scripts/browser.sh: selenium and Chromium), installed once, then reused.
pub(crate) fn installed(script: &str) -> String {
    let out = Command::new(repo().join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The S3 access key `mspace gateway init` printed.
pub(crate) fn access_key(init_stdout: &str) -> String {
    init_stdout
        .split("access key ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned()
}

/// scripts/s3-check.py against a gateway, in `phase`.
pub(crate) fn s3_check(
    python: &str,
    endpoint: &str,
    access: &str,
    secret: &str,
    work: &str,
    phase: &str,
) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(repo().join("scripts/s3-check.py"))
        .args(["--endpoint", endpoint, "--access-key", access])
        .args(["--secret-file", secret, "--work", work, "--phase", phase]);
    cmd
}

fn spool_leftovers(spool: &Path) -> Vec<String> {
    std::fs::read_dir(spool)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect()
}

#[test]
fn s3_clients_get_s3_answers_and_a_killed_gateway_loses_nothing_acknowledged() {
    let python = installed("scripts/s3-clients.sh");
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let control = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let host_cfg = d("host/host.toml");
    init_host(&host_cfg, &d("data"), &listen, &control, &[]);
    let text = std::fs::read_to_string(&host_cfg).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("control_token = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_owned();
    let _host = start(&["host", "--config", &host_cfg], &[], "control plane on");

    let gw_cfg = d("gw/gateway.toml");
    let s3 = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let init = mspace(
        &[
            "gateway",
            "init",
            "--config",
            &gw_cfg,
            "--listen",
            &s3,
            "--host-control",
            &control,
        ],
        &[("MSPACE_HOST_TOKEN", token.as_str())],
    );
    assert_eq!(init.code, 0, "{}", init.stderr);
    let access = access_key(&init.stdout);
    let again = mspace(
        &[
            "gateway",
            "init",
            "--config",
            &gw_cfg,
            "--host-control",
            &control,
            "--host-token",
            &token,
        ],
        &[],
    );
    assert_ne!(again.code, 0, "an existing configuration is never replaced");
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let text = std::fs::read_to_string(&gw_cfg).unwrap();
    std::fs::write(
        &gw_cfg,
        text.replace(
            "# metrics_listen = \"127.0.0.1:9402\"",
            &format!("metrics_listen = \"{metrics}\""),
        ),
    )
    .unwrap();
    let endpoint = format!("http://{s3}");
    let secret = d("gw/gateway.secret");
    let check = |phase: &str, extra: &[&str]| {
        let mut cmd = s3_check(&python, &endpoint, &access, &secret, &d("work"), phase);
        cmd.args(extra);
        cmd
    };

    // Lifecycle sweeps every second (from the environment, over gateway.toml's hour).
    // Orphaned files go at once (no grace for reads in flight: none is).
    let sweep = [
        ("MSPACE_GATEWAY__LIFECYCLE_EVERY_SECS", "1"),
        ("MSPACE_GATEWAY__ORPHAN_GRACE_SECS", "0"),
        // Each answer logged (method, path, status, peer): a check that fails shows them.
        ("MSPACE_LOG", "info,gateway=debug"),
    ];
    let mut gw = start(
        &["gateway", "run", "--config", &gw_cfg],
        &sweep,
        "S3 gateway on",
    );
    let table = check("table", &["--big-mib", "24"]).output().unwrap();
    let shown = String::from_utf8_lossy(&table.stdout);
    println!("{shown}");
    assert!(
        table.status.success(),
        "{shown}\n{}\nthe gateway's answers other than 2xx, and its connection errors:\n{}",
        String::from_utf8_lossy(&table.stderr),
        gw.stderr_tail()
            .lines()
            .filter(|l| !l.contains("status=2") || l.contains("connection"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(shown.contains("checks, 0 differ from S3"), "{shown}");
    // Every row of the table was a check that ran (no client skipped).
    assert!(shown.lines().filter(|l| l.starts_with("ok ")).count() >= 60);

    // What the gateway counted, as Prometheus and its Grafana dashboard read it.
    let m = super::net::check_metrics("gateway", &metrics);
    for (line, why) in [
        (
            "mspace_gateway_requests_total{method=\"PUT\",code=\"200\"}",
            "PUTs answered",
        ),
        (
            "mspace_gateway_requests_total{method=\"GET\",code=\"404\"}",
            "NoSuchKey",
        ),
        (
            "mspace_gateway_requests_total{method=\"PUT\",code=\"412\"}",
            "PreconditionFailed",
        ),
        ("mspace_gateway_stored_objects_total ", "objects stored"),
        ("mspace_gateway_read_bytes_total ", "bytes read"),
    ] {
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "{why}: {line} missing or 0 in\n{m}");
    }

    // Deleting an object removes its sealed file from the host once no object (a copy, a
    // version) names it any more.
    let chunks = || {
        let s = mspace(&["host", "status", "--config", &host_cfg, "--json"], &[]);
        assert_eq!(s.code, 0, "{}", s.stderr);
        serde_json::from_str::<serde_json::Value>(&s.stdout).unwrap()["chunks"]
            .as_u64()
            .unwrap()
    };
    let phase = |p: &str| {
        let out = check(p, &[]).output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{shown}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shown
    };
    // Once the index holds no orphaned file, every one was removed from the host.
    let settled = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !super::net::check_metrics("gateway", &metrics)
            .contains("mspace_gateway_orphan_files 0\n")
        {
            assert!(
                Instant::now() < deadline,
                "{what}: files still wait to be removed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        chunks()
    };
    let before = settled("after the table");
    phase("drop-put");
    let stored = settled("after the puts");
    // 20 MiB in 8 MiB chunks: three chunks and the manifest; the multipart object's two
    // parts, a chunk and a manifest each. The first upload of its part 1 and the aborted
    // upload's part left nothing.
    assert_eq!(stored, before + 4 + 4);
    phase("drop-delete-a");
    assert_eq!(
        settled("after deleting the object and the multipart one"),
        stored - 4,
        "the copy still names the file; the multipart object's parts are gone"
    );
    phase("drop-delete-b");
    assert_eq!(
        settled("after deleting the copy"),
        before,
        "the host kept the deleted file"
    );

    // A PUT torn by SIGKILL.
    let mut before = check("crash-before", &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(before.stdout.take().unwrap()).lines();
    let mut upload = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("UPLOAD ") {
            upload = Some(id.to_owned());
        }
        if line == "MID-PUT" {
            break;
        }
    }
    let upload = upload.expect("the crash phase printed its upload id");
    // The gateway is spooling the PUT's body when it is killed.
    let spool = PathBuf::from(d("gw/spool"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_dir(&spool).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("tmp-")
            && e.metadata().is_ok_and(|m| m.len() > 0)
    }) {
        assert!(
            Instant::now() < deadline,
            "the gateway never spooled the PUT"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = gw.0.kill();
    let _ = gw.0.wait();
    drop(before.stdin.take());
    let _ = before.kill();
    let _ = before.wait();
    drop(gw);
    let _gw: Proc = start(
        &["gateway", "run", "--config", &gw_cfg],
        &sweep,
        "S3 gateway on",
    );
    assert!(
        spool_leftovers(&spool).is_empty(),
        "the restarted gateway cleans its spool: {:?}",
        spool_leftovers(&spool)
    );
    let after = check("crash-after", &["--upload", &upload])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&after.stdout);
    println!("{shown}");
    assert!(
        after.status.success(),
        "{shown}\n{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert!(shown.contains("5 checks, 0 differ from S3"), "{shown}");
}
