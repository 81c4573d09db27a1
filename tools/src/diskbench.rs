//! Raw-disk baselines for `engine-bench`: fio runs (what the disk can do) and a naive
//! one-file-per-chunk store (what a user would write without us), plus the result table.
//!
//! fio's `--group_reporting` JSON sums `usr`/`sys` CPU time and `job_runtime` over jobs but
//! reports `usr_cpu`/`sys_cpu` as their ratio, the *average per job*; total CPU seconds are
//! therefore `(usr_cpu + sys_cpu) / 100 * job_runtime / 1000`. The per-direction `runtime`
//! is the slowest job's, `io_bytes` the sum, and the percentiles merge all jobs' samples.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;
use serde_json::Value;

/// One line of the comparison table; `None` prints as `-` and serializes as `null`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// What ran, e.g. `fio seqwrite` or `engine put`.
    pub workload: String,
    /// Chunk or block size in bytes.
    pub chunk_bytes: Option<u64>,
    /// Throughput in GB/s (10^9 bytes per second).
    pub gbps: Option<f64>,
    /// Operations per second.
    pub iops: Option<f64>,
    /// Median latency in microseconds.
    pub p50_us: Option<f64>,
    /// 99th-percentile latency in microseconds.
    pub p99_us: Option<f64>,
    /// CPU seconds spent per GB moved.
    pub cpu_s_per_gb: Option<f64>,
    /// Throughput as a multiple of fio's on the same workload.
    pub ratio_fio: Option<f64>,
    /// Throughput as a multiple of the naive store's.
    pub ratio_naive: Option<f64>,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.prec$}"))
}

fn size_label(b: u64) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn format_table(rows: &[Row]) -> String {
    let head = [
        "workload", "chunk", "GB/s", "IOPS", "p50 µs", "p99 µs", "CPU s/GB", "×fio", "×naive",
    ];
    let mut cells = vec![head.map(str::to_owned).to_vec()];
    for r in rows {
        cells.push(vec![
            r.workload.clone(),
            r.chunk_bytes.map_or_else(|| "-".to_owned(), size_label),
            opt(r.gbps, 3),
            opt(r.iops, 0),
            opt(r.p50_us, 0),
            opt(r.p99_us, 0),
            opt(r.cpu_s_per_gb, 3),
            opt(r.ratio_fio, 2),
            opt(r.ratio_naive, 2),
        ]);
    }
    let mut w = [0usize; 9];
    for row in &cells {
        for (c, s) in row.iter().enumerate() {
            w[c] = w[c].max(s.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = format!("{:<1$}", row[0], w[0]);
        for (s, &w) in row.iter().zip(&w).skip(1) {
            line += &format!("  {s:>w$}");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

/// Prints `rows` as an aligned table on stdout.
pub fn print_table(rows: &[Row]) {
    print!("{}", format_table(rows));
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Finds `fio` on `PATH`, running `scripts/bench-deps.sh` to install it when missing.
pub fn ensure_fio() -> Result<PathBuf> {
    if let Some(p) = find_on_path("fio") {
        return Ok(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/bench-deps.sh");
    ensure!(
        script.is_file(),
        "fio is not on PATH and {} is missing: install fio (apt-get install fio)",
        script.display()
    );
    eprintln!("fio is not on PATH; running {}", script.display());
    let status = Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    ensure!(
        status.success(),
        "{} failed ({status}): install fio by hand",
        script.display()
    );
    find_on_path("fio").context("fio is still not on PATH after scripts/bench-deps.sh")
}

/// A fio workload; each job `N` uses the file `fio.N` in the run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FioJob {
    /// Sequential write of the whole file, fsync at the end.
    SeqWrite,
    /// Sequential read of the files `SeqWrite` left.
    SeqRead,
    /// Time-based 4 KiB random reads of the files `SeqWrite` left.
    RandRead4k,
}

/// What one fio run measured, summed over its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct FioResult {
    /// Bytes moved by all jobs.
    pub bytes: u64,
    /// Run time of the slowest job in seconds.
    pub seconds: f64,
    /// I/O operations per second, all jobs.
    pub iops: f64,
    /// `bytes / seconds / 1e9`.
    pub gbps: f64,
    /// Median completion latency in microseconds.
    pub p50_us: f64,
    /// 99th-percentile completion latency in microseconds.
    pub p99_us: f64,
    /// CPU seconds (user + system) spent by all jobs together.
    pub cpu_s: f64,
}

/// Runs one fio workload with io_uring and O_DIRECT in `dir` and parses its JSON.
#[allow(clippy::too_many_arguments)] // mirrors fio's own knobs one to one
pub fn run_fio(
    fio: &Path,
    dir: &Path,
    job: FioJob,
    jobs: usize,
    bytes_per_job: u64,
    block_bytes: u64,
    iodepth: u32,
    runtime_s: u32,
) -> Result<FioResult> {
    let d = dir.to_str().context("fio directory is not UTF-8")?;
    ensure!(
        !d.contains(':'),
        "fio treats ':' in --directory as a separator: {d}"
    );
    let (name, rw): (&str, &[&str]) = match job {
        FioJob::SeqWrite => ("seqwrite", &["--rw=write", "--end_fsync=1"]),
        FioJob::SeqRead => ("seqread", &["--rw=read"]),
        FioJob::RandRead4k => (
            "randread4k",
            &["--rw=randread", "--time_based", "--randrepeat=0"],
        ),
    };
    let fixed = [
        "--ioengine=io_uring",
        "--direct=1",
        "--group_reporting",
        "--output-format=json",
    ];
    let mut args: Vec<String> = fixed.iter().chain(rw).map(|s| (*s).to_owned()).collect();
    let bs = if job == FioJob::RandRead4k {
        4096
    } else {
        block_bytes
    };
    args.extend([
        format!("--numjobs={jobs}"),
        format!("--directory={d}"),
        "--filename_format=fio.$jobnum".to_owned(),
        format!("--size={bytes_per_job}"),
        format!("--bs={bs}"),
        format!("--iodepth={iodepth}"),
        format!("--name={name}"),
    ]);
    if job == FioJob::RandRead4k {
        args.extend(["--norandommap".to_owned(), format!("--runtime={runtime_s}")]);
    }
    let out = Command::new(fio)
        .args(&args)
        .output()
        .with_context(|| format!("cannot run {}", fio.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio {} failed ({}): {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.lines().find(|l| l.starts_with("fio:")).unwrap_or("")
        );
    }
    parse_fio_json(&stdout, job, jobs).with_context(|| format!("fio {}", args.join(" ")))
}

/// Parses fio's `--output-format=json --group_reporting` stdout (warnings before the JSON
/// are skipped). `jobs` is only used to estimate CPU time when fio omits `job_runtime`.
pub fn parse_fio_json(stdout: &str, job: FioJob, jobs: usize) -> Result<FioResult> {
    let start = stdout.find('{').context("fio printed no JSON")?;
    let v: Value = serde_json::Deserializer::from_str(&stdout[start..])
        .into_iter()
        .next()
        .context("fio printed no JSON")?
        .context("fio's JSON does not parse")?;
    let j = v.pointer("/jobs/0").context("fio JSON has no jobs[0]")?;
    let num = |p: &str| {
        j.pointer(p)
            .and_then(Value::as_f64)
            .with_context(|| format!("fio JSON lacks jobs[0]{p}"))
    };
    let err = num("/error")?;
    ensure!(err == 0.0, "fio job reported error {err}");
    let dd = if job == FioJob::SeqWrite {
        "write"
    } else {
        "read"
    };
    let bytes = j
        .pointer(&format!("/{dd}/io_bytes"))
        .and_then(Value::as_u64)
        .with_context(|| format!("fio JSON lacks jobs[0]/{dd}/io_bytes"))?;
    let seconds = num(&format!("/{dd}/runtime"))? / 1e3;
    ensure!(seconds > 0.0 && bytes > 0, "fio moved no {dd} bytes");
    let pct = |key: &str| -> Result<f64> {
        ["clat_ns", "lat_ns"]
            .iter()
            .find_map(|l| {
                j.pointer(&format!("/{dd}/{l}/percentile/{key}"))
                    .and_then(Value::as_f64)
            })
            .map(|ns| ns / 1e3)
            .with_context(|| format!("fio JSON has no {key} percentile for {dd}"))
    };
    let job_ms = match num("/job_runtime") {
        Ok(ms) => ms,
        Err(_) => seconds * 1e3 * jobs as f64,
    };
    Ok(FioResult {
        bytes,
        seconds,
        iops: num(&format!("/{dd}/iops"))?,
        gbps: bytes as f64 / seconds / 1e9,
        p50_us: pct("50.000000")?,
        p99_us: pct("99.000000")?,
        cpu_s: (num("/usr_cpu")? + num("/sys_cpu")?) / 100.0 * job_ms / 1e3,
    })
}

/// Removes the `fio.N` files fio left in `dir`.
pub fn cleanup_fio(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.strip_prefix("fio.") {
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) {
                fs::remove_file(e.path()).with_context(|| format!("cannot remove {name}"))?;
            }
        }
    }
    Ok(())
}

/// Totals of one timed run: bytes, operations, wall time, per-op latencies, CPU time.
#[derive(Debug, Clone, Default)]
pub struct Timed {
    /// Bytes moved.
    pub bytes: u64,
    /// Operations completed.
    pub ops: u64,
    /// Wall-clock seconds for the whole run.
    pub seconds: f64,
    /// Latency of each operation in microseconds, unsorted.
    pub latencies_us: Vec<f64>,
    /// Process CPU seconds (user + system) spent during the run.
    pub cpu_s: f64,
}

impl Timed {
    /// The totals of `ops` operations of `bytes_each` bytes that started at `start`, when
    /// the process had used `cpu0` CPU seconds (see [`cpu_seconds`]).
    pub fn of_run(
        ops: u64,
        bytes_each: u64,
        start: std::time::Instant,
        cpu0: f64,
        latencies_us: Vec<f64>,
    ) -> Timed {
        Timed {
            bytes: ops * bytes_each,
            ops,
            seconds: start.elapsed().as_secs_f64(),
            latencies_us,
            cpu_s: cpu_seconds() - cpu0,
        }
    }

    /// Throughput in GB/s (10^9 bytes per second).
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
    /// Operations per second.
    pub fn iops(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
    /// Median latency in microseconds.
    pub fn p50(&self) -> f64 {
        percentile(&self.latencies_us, 50.0)
    }
    /// 99th-percentile latency in microseconds.
    pub fn p99(&self) -> f64 {
        percentile(&self.latencies_us, 99.0)
    }
    /// CPU seconds per GB moved.
    pub fn cpu_s_per_gb(&self) -> f64 {
        self.cpu_s / (self.bytes as f64 / 1e9)
    }
}

/// Nearest-rank percentile `p` (0..=100) of `values`, which need not be sorted; NaN if empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (p.clamp(0.0, 100.0) / 100.0 * v.len() as f64).ceil();
    v.iter()
        .enumerate()
        .find(|(i, _)| (i + 1) as f64 >= rank)
        .map_or(f64::NAN, |(_, x)| *x)
}

fn tv_secs(t: TimeVal) -> f64 {
    t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6
}

/// User plus system CPU seconds this process (all threads) has used so far; 0 if unknown.
pub fn cpu_seconds() -> f64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .map_or(0.0, |u| tv_secs(u.user_time()) + tv_secs(u.system_time()))
}

/// Runs `op(i)` for `i` in `0..count` on `threads` threads (item `i` on thread `i % threads`),
/// each returning bytes moved, then `finish`; collects latencies, wall and CPU time.
fn timed_spread<F>(
    count: usize,
    threads: usize,
    op: F,
    finish: impl FnOnce() -> Result<()>,
) -> Result<Timed>
where
    F: Fn(usize) -> Result<u64> + Sync,
{
    let threads = threads.max(1);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let work = |t: usize| -> Result<(u64, Vec<f64>)> {
        let (mut bytes, mut lat) = (0u64, Vec::new());
        for i in (t..count).step_by(threads) {
            let start = Instant::now();
            bytes += op(i)?;
            lat.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok((bytes, lat))
    };
    let per_thread: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || work(t))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut timed = Timed::default();
    for r in per_thread {
        let (bytes, lat) = r.map_err(|_| anyhow::anyhow!("a worker thread panicked"))??;
        timed.bytes += bytes;
        timed.latencies_us.extend(lat);
    }
    finish()?;
    timed.seconds = t0.elapsed().as_secs_f64();
    timed.cpu_s = cpu_seconds() - cpu0;
    timed.ops = u64::try_from(timed.latencies_us.len())?;
    Ok(timed)
}

fn naive_dir(dir: &Path) -> PathBuf {
    dir.join("naive")
}

/// Writes chunk `i` to `dir/naive/<i>` (create, write, fsync, then drop it from the page
/// cache), spread over `threads` threads; fsyncs the directory at the end, inside the time.
pub fn naive_put(dir: &Path, chunks: &[Vec<u8>], threads: usize) -> Result<Timed> {
    let nd = naive_dir(dir);
    fs::create_dir_all(&nd).with_context(|| format!("cannot create {}", nd.display()))?;
    let put = |i: usize| -> Result<u64> {
        let path = nd.join(i.to_string());
        let mut f =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(&chunks[i])?;
        f.sync_all()?;
        posix_fadvise(f.as_raw_fd(), 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)?;
        Ok(u64::try_from(chunks[i].len())?)
    };
    let sync_dir = || -> Result<()> {
        File::open(&nd)?
            .sync_all()
            .with_context(|| format!("cannot fsync {}", nd.display()))
    };
    timed_spread(chunks.len(), threads, put, sync_dir)
}

/// Reads `dir/naive/0..count` back with `std::fs::read` on `threads` threads, checking
/// each is `chunk_bytes` long.
pub fn naive_get(dir: &Path, count: usize, chunk_bytes: usize, threads: usize) -> Result<Timed> {
    let nd = naive_dir(dir);
    let get = |i: usize| -> Result<u64> {
        let path = nd.join(i.to_string());
        let data = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let n = data.len();
        ensure!(
            n == chunk_bytes,
            "{} holds {n} bytes, not {chunk_bytes}",
            path.display()
        );
        Ok(u64::try_from(data.len())?)
    };
    timed_spread(count, threads, get, || Ok(()))
}

/// Removes `dir/naive` and everything in it; no error if it is absent.
pub fn naive_cleanup(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(naive_dir(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed real fio-3.33 output: seqwrite, 1 job, 64 MiB, bs 1 MiB, iodepth 8, ext4.
    const SEQWRITE_1JOB: &str = r#"note: fio may print warnings first
{"fio version": "fio-3.33", "jobs": [{"jobname": "seqwrite", "error": 0,
 "read": {"io_bytes": 0, "bw_bytes": 0, "iops": 0.0, "runtime": 0},
 "write": {"io_bytes": 67108864, "bw_bytes": 266305015, "iops": 253.968254, "runtime": 252,
  "clat_ns": {"min": 2134386, "max": 32199965, "mean": 19374385.296875, "percentile":
   {"1.000000": 2146304, "50.000000": 17956864, "99.000000": 32112640}},
  "lat_ns": {"min": 2322579, "max": 32344106, "mean": 19512542.484375}},
 "job_runtime": 251, "usr_cpu": 3.984064, "sys_cpu": 1.195219, "ctx": 59}]}
"#;

    /// Trimmed real fio-3.33 output: randread 4k, 2 jobs, iodepth 32, 10 s.
    const RANDREAD_2JOBS: &str = r#"{"jobs": [{"error": 0, "read": {"io_bytes": 4340203520,
 "bw_bytes": 433976954, "iops": 105951.40486, "runtime": 10001, "clat_ns": {"percentile":
 {"50.000000": 528384, "99.000000": 3063808}}}, "write": {"io_bytes": 0, "runtime": 0},
 "job_runtime": 20000, "usr_cpu": 5.555, "sys_cpu": 42.635}]}"#;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn percentile_nearest_rank() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        let got: Vec<f64> = [50.0, 99.0, 0.0, 100.0, 20.0, 20.1]
            .map(|p| percentile(&v, p))
            .into();
        assert_eq!(got, [3.0, 5.0, 1.0, 5.0, 1.0, 2.0]);
        let ten: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(
            (percentile(&ten, 90.0), percentile(&ten, 99.0)),
            (9.0, 10.0)
        );
        assert_eq!(percentile(&[7.0], 50.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn parses_real_fio_output() {
        let r = parse_fio_json(SEQWRITE_1JOB, FioJob::SeqWrite, 1).unwrap();
        assert_eq!(r.bytes, 64 << 20);
        assert!(close(r.seconds, 0.252) && close(r.gbps, 67_108_864.0 / 0.252 / 1e9));
        assert!(close(r.iops, 253.968254));
        assert!(close(r.p50_us, 17_956.864) && close(r.p99_us, 32_112.64));
        assert!(
            close(r.cpu_s, (3.984064 + 1.195219) / 100.0 * 0.251),
            "{}",
            r.cpu_s
        );
        // group_reporting: usr_cpu + sys_cpu = 48.19 % is the per-job average over the summed
        // 20 s job_runtime, so both jobs together spent 9.638 CPU seconds.
        let r = parse_fio_json(RANDREAD_2JOBS, FioJob::RandRead4k, 2).unwrap();
        assert!(close(r.cpu_s, 9.638) && close(r.p99_us, 3063.808), "{r:?}");
        let old = RANDREAD_2JOBS.replace("\"job_runtime\": 20000,", "");
        let r = parse_fio_json(&old, FioJob::RandRead4k, 2).unwrap();
        assert!(close(r.cpu_s, 0.4819 * 20.002), "{}", r.cpu_s);
        // Percentiles only under lat_ns (fio's lat_percentiles=1) are used too.
        let s = SEQWRITE_1JOB.replace("\"percentile\"", "\"nope\"").replace(
            "\"mean\": 19512542.484375}",
            "\"percentile\": {\"50.000000\": 1000, \"99.000000\": 2000}}",
        );
        let r = parse_fio_json(&s, FioJob::SeqWrite, 1).unwrap();
        assert_eq!((r.p50_us, r.p99_us), (1.0, 2.0));
    }

    #[test]
    fn bad_fio_output_is_an_error() {
        let cases: [&str; 9] = [
            "",
            "fio: engine io_uring not loadable",
            "{\"jobs\": []}",
            "{\"jobs\": [{\"error\": 0}]}",
            &SEQWRITE_1JOB.replace("\"usr_cpu\"", "\"x\""),
            &SEQWRITE_1JOB.replace("\"99.000000\"", "\"98.000000\""),
            &SEQWRITE_1JOB.replace("\"error\": 0", "\"error\": 5"),
            &SEQWRITE_1JOB[..200],
            &SEQWRITE_1JOB.replace("\"io_bytes\": 67108864", "\"x\": 1"),
        ];
        for s in cases {
            assert!(parse_fio_json(s, FioJob::SeqWrite, 1).is_err(), "{s}");
        }
        // The read side of a write run is empty.
        assert!(parse_fio_json(SEQWRITE_1JOB, FioJob::SeqRead, 1).is_err());
    }

    #[test]
    fn naive_round_trip_and_cleanup() {
        let tmp = tempfile::tempdir().unwrap();
        let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 4096]).collect();
        let put = naive_put(tmp.path(), &chunks, 2).unwrap();
        assert_eq!(
            (put.bytes, put.ops, put.latencies_us.len()),
            (5 * 4096, 5, 5)
        );
        assert!(put.seconds > 0.0 && put.gbps() > 0.0 && put.p99() >= put.p50());
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(&fs::read(tmp.path().join(format!("naive/{i}"))).unwrap(), c);
        }
        let get = naive_get(tmp.path(), 5, 4096, 3).unwrap();
        assert_eq!((get.bytes, get.ops), (5 * 4096, 5));
        assert!(naive_get(tmp.path(), 5, 4095, 1).is_err());
        assert!(naive_get(tmp.path(), 6, 4096, 1).is_err());
        naive_cleanup(tmp.path()).unwrap();
        naive_cleanup(tmp.path()).unwrap();
        for n in ["fio.0", "fio.12", "fio.x", "keep"] {
            fs::write(tmp.path().join(n), b"x").unwrap();
        }
        cleanup_fio(tmp.path()).unwrap();
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["fio.x", "keep"]);
    }

    #[test]
    fn table_and_json() {
        let row = Row {
            workload: "naive put".into(),
            chunk_bytes: Some(1 << 20),
            gbps: Some(1.5),
            iops: None,
            p50_us: Some(12.0),
            p99_us: None,
            cpu_s_per_gb: Some(0.25),
            ratio_fio: Some(0.5),
            ratio_naive: None,
        };
        let small = Row {
            chunk_bytes: Some(64 << 10),
            workload: "x".into(),
            ..row.clone()
        };
        let t = format_table(&[row.clone(), small]);
        let l: Vec<&str> = t.lines().collect();
        assert!(l.len() == 3 && l[0].starts_with("workload") && l[0].ends_with("×naive"));
        assert!(l[1].contains("1 MiB") && l[1].contains("1.500") && l[1].ends_with('-'));
        assert!(l[2].contains("64 KiB") && l[1].chars().count() == l[2].chars().count());
        let j = serde_json::to_value(&row).unwrap();
        assert!(j["chunk_bytes"] == 1 << 20 && j["iops"].is_null() && j["ratio_naive"].is_null());
        assert_eq!(j.as_object().unwrap().len(), 9);
        assert!(cpu_seconds() > 0.0);
    }
}
