//! The network commands as processes: `mspace host init/link`, a running host with its
//! metrics, a client killed with SIGKILL mid-upload and resumed, a download through a
//! proxy process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::mspace;

/// A loopback port nobody listens on right now, for a child process to bind. Taken below
/// the kernel's ephemeral range (32768 and up) and the devnets' slots (20000 to 32287): a
/// port the kernel picked (bind to port 0) could be handed to another test's outgoing
/// connection before the child binds it, and the child would fail to start. Each test
/// process counts up through its own block of ports, so none is given out twice.
pub(crate) fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const PORTS: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 50) * 200;
    for _ in 0..PORTS {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + n) % PORTS).unwrap();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {FIRST}..{}", FIRST + PORTS);
}

/// `mspace host init` of a host on loopback with a control plane; fails the test if refused.
/// `extra` adds options.
pub(crate) fn init_host(cfg: &str, data: &str, listen: &str, control: &str, extra: &[&str]) {
    let mut args = vec![
        "host",
        "init",
        "--config",
        cfg,
        "--data-dir",
        data,
        "--listen",
        listen,
        "--control-listen",
        control,
    ];
    args.extend_from_slice(extra);
    let init = mspace(&args, &[]);
    assert_eq!(init.code, 0, "{}", init.stderr);
}

/// A child process killed when dropped, so a failing test leaves nothing running.
/// A child process, killed when dropped, with the last MiB of its stderr (read all along).
pub(crate) struct Proc(pub(crate) Child, Arc<Mutex<Vec<u8>>>);

impl Proc {
    /// The last MiB of what it wrote to stderr so far.
    pub(crate) fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.1.lock().unwrap()).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mspace <args>` and waits for the line of its stdout that contains `ready`.
pub(crate) fn start(args: &[&str], env: &[(&str, &str)], ready: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mspace"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    // Its stderr is drained all along (a full pipe would stall it); the last of it is
    // kept to say why, should it stop before it is ready.
    let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let mut err = child.stderr.take().unwrap();
    let keep = std::sync::Arc::clone(&tail);
    let drained = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut t = keep.lock().unwrap();
            t.extend_from_slice(&buf[..n]);
            let over = t.len().saturating_sub(1 << 20);
            t.drain(..over);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            let _ = drained.join();
            panic!(
                "mspace {args:?} exited before printing {ready:?}; its stderr ended with:\n{}",
                String::from_utf8_lossy(&tail.lock().unwrap())
            );
        }
        if line.contains(ready) {
            break;
        }
    }
    // What it prints later is read and dropped: a closed pipe would make its next line
    // fail (and a Rust program panic).
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Proc(child, tail)
}

fn metric(addr: &str, name: &str) -> u64 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
        .parse()
        .unwrap()
}

/// A role's `/metrics` on `addr`, checked: `promtool check metrics` (scripts/promtool.sh
/// installs it) finds nothing to say, and every metric the role's Grafana dashboard
/// (deploy/grafana/ROLE.json) graphs is declared. The text, for more checks.
pub(crate) fn check_metrics(role: &str, addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let text = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap();
    let promtool = super::gateway::installed("scripts/promtool.sh");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool on the {role}'s metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let board = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../deploy/grafana/{role}.json")),
    )
    .unwrap();
    let board: serde_json::Value = serde_json::from_str(&board).unwrap();
    let mut exprs = Vec::new();
    for p in board["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_owned());
        }
    }
    let declared: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut graphed = 0;
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !word.starts_with("mspace_") {
                continue;
            }
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|x| word.strip_suffix(x))
                .filter(|b| declared.contains(b))
                .unwrap_or(word);
            assert!(
                declared.contains(&base),
                "deploy/grafana/{role}.json graphs {word}, which the {role} does not export"
            );
            graphed += 1;
        }
    }
    assert!(
        graphed >= exprs.len(),
        "every panel graphs a metric of the {role}"
    );
    text
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn write_random(path: &Path, len: usize) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for _ in 0..len / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.write_all(&x.to_le_bytes()).unwrap();
    }
}

#[test]
fn a_host_a_killed_and_resumed_upload_and_a_download_through_a_proxy() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let data_port = free_port("127.0.0.1");
    let metrics_port = free_port("127.0.0.1");
    let control = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let listen = format!("127.0.0.1:{data_port}");
    let metrics = format!("127.0.0.1:{metrics_port}");
    let cfg = d("host/host.toml");

    init_host(&cfg, &d("data"), &listen, &control, &[]);
    let again = mspace(
        &[
            "host",
            "init",
            "--config",
            &cfg,
            "--data-dir",
            &d("data"),
            "--listen",
            &listen,
        ],
        &[],
    );
    assert_ne!(again.code, 0, "an existing configuration is never replaced");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "# metrics_listen = \"127.0.0.1:9400\"",
            &format!("metrics_listen = \"{metrics}\""),
        ),
    )
    .unwrap();
    let _host = start(&["host", "--config", &cfg], &[], "control plane on");
    let status = mspace(&["host", "status", "--config", &cfg, "--json"], &[]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(json(&status.stdout)["data_addr"], listen.as_str());
    let text = mspace(&["host", "status", "--config", &cfg], &[]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    // (Alerts depend on the machine: a full disk raises one.)
    assert!(
        text.stdout.contains(&format!("data plane   {listen}\n"))
            && text.stdout.contains("\nalerts       "),
        "{}",
        text.stdout
    );

    let link = mspace(
        &[
            "host", "link", "--config", &cfg, "--upload", "--bytes", "1GiB", "--ttl", "10m",
        ],
        &[],
    );
    assert_eq!(link.code, 0, "{}", link.stderr);
    let up = link.stdout.trim().to_owned();
    assert!(up.starts_with(&format!("mspace://{listen}/")), "{up}");
    let bad = mspace(
        &[
            "host",
            "link",
            "--config",
            &cfg,
            "--download",
            "xyz",
            "--ttl",
            "10m",
        ],
        &[],
    );
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--download"), "{}", bad.stderr);

    // An upload killed with SIGKILL once the host has stored a hundred chunks.
    let file = d("input.bin");
    write_random(Path::new(&file), 96 << 20);
    std::fs::write(d("pass"), "a long enough passphrase\n").unwrap();
    let state = d("client-state");
    let env = [("MSPACE_STATE_DIR", state.as_str())];
    let put_args = [
        "put",
        file.as_str(),
        "--link",
        up.as_str(),
        "--passphrase-file",
        &d("pass"),
        "--chunk-size",
        "64KiB",
        "--json",
    ];
    let mut first = Command::new(env!("CARGO_BIN_EXE_mspace"));
    first
        .args(put_args)
        .env("MSPACE_STATE_DIR", &state)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut first = Proc(first.spawn().unwrap(), Arc::default());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while metric(&metrics, "mspace_puts_total") < 100 {
        assert!(
            first.0.try_wait().unwrap().is_none(),
            "the upload ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the upload made no progress"
        );
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // Whatever the host was still writing for the dead client is done once its
    // connection is gone.
    while metric(&metrics, "mspace_connections_open") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the host kept the dead client's connection"
        );
    }
    let stored_before = metric(&metrics, "mspace_puts_total");
    assert!(
        stored_before < 1536,
        "the kill came after the upload finished"
    );

    let resumed = mspace(&put_args, &env);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let put = json(&resumed.stdout);
    let chunks = put["chunks"].as_array().unwrap().len() as u64;
    assert_eq!(chunks, 1536);
    let skipped = put["skipped_chunks"].as_u64().unwrap();
    let sent = put["sent_chunks"].as_u64().unwrap();
    assert!(
        skipped >= stored_before,
        "{skipped} skipped, but the host had {stored_before}"
    );
    assert_eq!(sent + skipped, chunks);
    // A resumed upload still sends (the chunks the host lacked): a first byte, no match.
    let t = &put["timings"];
    assert!(t["matched_ms"].is_null(), "{t}");
    assert!(
        t["first_byte_ms"].as_u64().unwrap() <= t["total_ms"].as_u64().unwrap(),
        "{t}"
    );
    // Every chunk reached the host exactly once over both runs: a chunk acknowledged (or
    // stored) before the kill and sent again would be counted twice.
    assert_eq!(metric(&metrics, "mspace_put_requests_total"), chunks);

    // The download, through a proxy on its own loopback address.
    let proxy_addr = format!("127.0.0.7:{}", free_port("127.0.0.7"));
    let _proxy = start(
        &["proxy", "--listen", &proxy_addr, "--allow-private"],
        &[],
        "proxy listening",
    );
    let manifest = put["manifest_id"].as_str().unwrap();
    let link = mspace(
        &[
            "host",
            "link",
            "--config",
            &cfg,
            "--download",
            manifest,
            "--ttl",
            "1m",
        ],
        &[],
    );
    let down = link.stdout.trim().to_owned();
    let out = d("back.bin");
    let got = mspace(
        &[
            "get",
            &down,
            "--out",
            &out,
            "--passphrase-file",
            &d("pass"),
            "--via",
            &proxy_addr,
            "--json",
        ],
        &env,
    );
    assert_eq!(got.code, 0, "{}", got.stderr);
    let got = json(&got.stdout);
    assert!(
        got["host_saw"].as_str().unwrap().starts_with("127.0.0.7:"),
        "{got}"
    );
    assert!(super::same_file(Path::new(&file), Path::new(&out)));

    // With the share key, directly; a second download refuses to overwrite.
    let share = put["share_key"].as_str().unwrap();
    let out2 = d("shared.bin");
    let got = mspace(&["get", &down, "--out", &out2, "--share-key", share], &env);
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(super::same_file(Path::new(&file), Path::new(&out2)));
    let again = mspace(&["get", &down, "--out", &out2, "--share-key", share], &env);
    assert_ne!(again.code, 0);
    // Links used for the other operation are refused before any work.
    let wrong = mspace(
        &[
            "put",
            &file,
            "--link",
            &down,
            "--passphrase-file",
            &d("pass"),
        ],
        &env,
    );
    assert!(
        wrong.stderr.contains("needs an upload link"),
        "{}",
        wrong.stderr
    );
    let wrong = mspace(
        &[
            "get",
            &up,
            "--out",
            &d("x"),
            "--passphrase-file",
            &d("pass"),
        ],
        &env,
    );
    assert!(
        wrong.stderr.contains("needs a download link"),
        "{}",
        wrong.stderr
    );
    assert!(metric(&metrics, "mspace_store_chunks") >= 1537);
}

/// Receives the webhook's POSTs on a loopback port: each body, as JSON, down the channel.
pub(crate) fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    let listener = TcpListener::bind(("127.0.0.1", free_port("127.0.0.1"))).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let mut r = BufReader::new(s);
            let mut len = 0usize;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

/// Waits for the webhook's event raising alert `kind`.
fn raised(rx: &std::sync::mpsc::Receiver<serde_json::Value>, kind: &str) -> serde_json::Value {
    loop {
        let e = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {kind} alert posted in 60 s"));
        if e["alert"]["kind"] == kind && e["state"] == "raised" {
            return e;
        }
    }
}

#[test]
fn a_host_raises_alerts_in_its_status_its_metrics_and_to_its_webhook() {
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n).to_str().unwrap().to_owned();
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let control = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let metrics = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    // A miner address nobody answers on.
    let chain = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let cfg = d("host/host.toml");
    let dashboard = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    init_host(
        &cfg,
        &d("data"),
        &listen,
        &control,
        &["--chain", &chain, "--dashboard-listen", &dashboard],
    );
    let (hook, events) = webhook_receiver();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            "# metrics_listen = \"127.0.0.1:9400\"",
            &format!("metrics_listen = \"{metrics}\""),
        )
        .replace(
            "# webhook = \"http://127.0.0.1:9900/alerts\"",
            &format!("webhook = \"{hook}\""),
        )
        // A store one thousandth full raises the capacity alert (and any data directory's
        // file system is fuller than that: the disk alert too).
        .replace("fill_permille = 900", "fill_permille = 1")
        .replace("capacity_bytes = 0", "capacity_bytes = 1073741824");
    std::fs::write(&cfg, text).unwrap();
    // A key of a table from the environment (every second, not host.toml's 10); a key
    // that does not exist is refused by name.
    let every = [("MSPACE_HOST__ALERTS__EVERY_SECS", "1")];
    let typo = mspace(
        &["host", "status", "--config", &cfg],
        &[("MSPACE_HOST__LSTEN", "x")],
    );
    assert_ne!(typo.code, 0);
    assert!(
        typo.stderr.contains("MSPACE_HOST__LSTEN"),
        "{}",
        typo.stderr
    );
    let _host = start(&["host", "--config", &cfg], &every, "control plane on");

    let e = raised(&events, "chain_unreachable");
    assert_eq!(e["alert"]["severity"], "critical");
    assert_eq!(e["host"].as_str().unwrap().len(), 64);
    let text = mspace(&["host", "status", "--config", &cfg], &[]);
    assert!(
        text.stdout.contains("  critical chain_unreachable since "),
        "{}",
        text.stdout
    );
    let status = mspace(&["host", "status", "--config", &cfg, "--json"], &[]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    let alerts = json(&status.stdout)["alerts"].clone();
    let shown: Vec<(&str, &str)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["kind"].as_str().unwrap(), a["severity"].as_str().unwrap()))
        .collect();
    assert_eq!(
        shown,
        [("chain_unreachable", "critical"), ("disk_full", "warning")]
    );
    assert_eq!(alerts[1]["subject"].as_str(), Some(d("data").as_str()));
    assert!(alerts[0]["message"]
        .as_str()
        .unwrap()
        .contains("no configured miner answers"));
    let gauge = |kind: &str, severity: &str| {
        metric(
            &metrics,
            &format!("mspace_host_alert{{kind=\"{kind}\",severity=\"{severity}\"}}"),
        )
    };
    assert_eq!(gauge("chain_unreachable", "critical"), 1);
    assert_eq!(gauge("capacity_high", "warning"), 0);

    // Stored bytes past the threshold raise the capacity alert.
    let link = mspace(
        &[
            "host", "link", "--config", &cfg, "--upload", "--bytes", "64MiB", "--ttl", "10m",
        ],
        &[],
    );
    assert_eq!(link.code, 0, "{}", link.stderr);
    let file = d("input.bin");
    write_random(Path::new(&file), 4 << 20);
    std::fs::write(d("pass"), "a long enough passphrase\n").unwrap();
    let put = mspace(
        &[
            "put",
            &file,
            "--link",
            link.stdout.trim(),
            "--passphrase-file",
            &d("pass"),
        ],
        &[("MSPACE_STATE_DIR", d("client-state").as_str())],
    );
    assert_eq!(put.code, 0, "{}", put.stderr);
    let e = raised(&events, "capacity_high");
    assert_eq!(e["alert"]["severity"], "warning");
    assert!(e["alert"]["message"]
        .as_str()
        .unwrap()
        .contains("of its capacity"));
    assert_eq!(gauge("capacity_high", "warning"), 1);
    check_metrics("host", &metrics);

    // The dashboard's actions need the control token: a wrong one changes nothing.
    let token = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("control_token = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_owned();
    let page = || -> serde_json::Value {
        let answer = http(&dashboard, "GET", "/status.json", "");
        json(answer.split_once("\r\n\r\n").unwrap().1)
    };
    assert_eq!(page()["price"], 10);
    let wrong = http(&dashboard, "POST", "/price", "token=nope&price=25");
    assert!(wrong.starts_with("HTTP/1.1 403"), "{wrong}");
    // Garbage with the right token: refused, saying why, and nothing changes.
    for (path, form, says) in [
        (
            "/price",
            format!("token={token}&price=abc"),
            "not a whole number",
        ),
        (
            "/price",
            format!("token={token}&price=-3"),
            "not a whole number",
        ),
        (
            "/alerts/dismiss",
            format!("token={token}&kind=nonsense&subject="),
            "no alert kind",
        ),
    ] {
        let r = http(&dashboard, "POST", path, &form);
        assert!(r.starts_with("HTTP/1.1 400") && r.contains(says), "{r}");
    }
    assert_eq!(page()["price"], 10);
    let set = http(
        &dashboard,
        "POST",
        "/price",
        &format!("token={token}&price=25"),
    );
    assert!(set.starts_with("HTTP/1.1 303"), "{set}");
    assert_eq!(
        (page()["price"].as_u64(), page()["price_set_here"].as_bool()),
        (Some(25), Some(true))
    );
    let dir = d("data");
    let body = format!(
        "token={token}&kind=disk_full&subject={}",
        dir.replace('/', "%2F")
    );
    let dismissed = http(&dashboard, "POST", "/alerts/dismiss", &body);
    assert!(dismissed.starts_with("HTTP/1.1 303"), "{dismissed}");
    let p = page();
    let kinds: Vec<&str> = p["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"disk_full"), "{p}");
    assert_eq!(p["dismissed"], 1, "{p}");
    // Dismissed on the dashboard only: the status and the metrics still say it.
    let status = json(&mspace(&["host", "status", "--config", &cfg, "--json"], &[]).stdout);
    assert!(status["alerts"].to_string().contains("disk_full"));
    assert_eq!(gauge("disk_full", "warning"), 1);
    let again = http(
        &dashboard,
        "POST",
        "/alerts/dismiss",
        &format!("token={token}&kind=clock_skew&subject="),
    );
    assert!(again.starts_with("HTTP/1.1 404"), "{again}");

    // The price outlives a restart; a price file that is not one stops the host at start,
    // naming it, and is left as it was.
    drop(_host);
    let price_file = Path::new(&d("host")).join("host-state/price");
    std::fs::write(&price_file, "twenty\n").unwrap();
    let bad = mspace(&["host", "--config", &cfg], &[]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("not a price"), "{}", bad.stderr);
    assert_eq!(std::fs::read_to_string(&price_file).unwrap(), "twenty\n");
    std::fs::write(&price_file, "25\n").unwrap();
    let _host = start(&["host", "--config", &cfg], &every, "control plane on");
    assert_eq!(page()["price"], 25);
}

/// One HTTP/1.1 request on `addr`; the whole answer (status line, headers, body).
fn http(addr: &str, method: &str, path: &str, form: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}
