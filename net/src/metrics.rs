//! The host's Prometheus metrics: counters and latency histograms kept with atomics on the
//! data path, rendered in the text exposition format on `GET /metrics` of a separate
//! listener.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use engine::store::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::wire::ErrorCode;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {cum}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
    }
}

/// Every counter the data plane keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    pub connections: AtomicU64,
    pub connections_open: AtomicU64,
    pub puts: AtomicU64,
    /// Put frames read (before the store answers).
    pub put_requests: AtomicU64,
    /// Puts of chunks the host already had (a resumed upload should send none).
    pub puts_existing: AtomicU64,
    pub put_bytes: AtomicU64,
    pub gets: AtomicU64,
    pub get_bytes: AtomicU64,
    pub refused: [AtomicU64; 16],
    pub put_latency: Histogram,
    pub get_latency: Histogram,
}

impl Metrics {
    pub fn refuse(&self, code: ErrorCode) {
        self.refused[(code as usize) & 15].fetch_add(1, Relaxed);
    }

    pub fn refused(&self, code: ErrorCode) -> u64 {
        self.refused[(code as usize) & 15].load(Relaxed)
    }

    /// The text exposition, with the store's figures and each data directory's free space.
    pub fn render(&self, engine: &Engine, dirs: &[PathBuf]) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut out,
            "mspace_connections_total",
            "Data-plane connections accepted.",
            self.connections.load(Relaxed),
        );
        gauge(
            &mut out,
            "mspace_connections_open",
            "Data-plane connections open now.",
            self.connections_open.load(Relaxed),
        );
        counter(
            &mut out,
            "mspace_puts_total",
            "Chunks stored (new or already present).",
            self.puts.load(Relaxed),
        );
        counter(
            &mut out,
            "mspace_put_requests_total",
            "Put frames read, answered or not.",
            self.put_requests.load(Relaxed),
        );
        counter(
            &mut out,
            "mspace_puts_existing_total",
            "Puts of chunks already stored (nothing written).",
            self.puts_existing.load(Relaxed),
        );
        counter(
            &mut out,
            "mspace_put_bytes_total",
            "Chunk bytes received in accepted puts.",
            self.put_bytes.load(Relaxed),
        );
        counter(
            &mut out,
            "mspace_gets_total",
            "Chunks, ranges, proofs and manifests served.",
            self.gets.load(Relaxed),
        );
        counter(
            &mut out,
            "mspace_get_bytes_total",
            "Bytes served.",
            self.get_bytes.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP mspace_refused_total Requests refused, by reason.\n# TYPE mspace_refused_total counter");
        for code in 1..16u16 {
            if let Some(c) = ErrorCode::from_u16(code) {
                let _ = writeln!(
                    out,
                    "mspace_refused_total{{reason=\"{}\"}} {}",
                    c.name(),
                    self.refused(c)
                );
            }
        }
        self.put_latency.render(
            &mut out,
            "mspace_put_seconds",
            "Time from a put's last byte to its durable acknowledgement.",
        );
        self.get_latency.render(
            &mut out,
            "mspace_get_seconds",
            "Time from a read request to its reply's bytes being ready.",
        );
        if let Ok(s) = engine.stats() {
            gauge(&mut out, "mspace_store_chunks", "Chunks stored.", s.chunks);
            gauge(
                &mut out,
                "mspace_store_live_bytes",
                "Bytes of live records.",
                s.live_bytes,
            );
            gauge(
                &mut out,
                "mspace_store_used_bytes",
                "Bytes of segment files.",
                s.used_bytes,
            );
            if s.capacity_bytes != u64::MAX {
                gauge(
                    &mut out,
                    "mspace_store_capacity_bytes",
                    "Configured capacity.",
                    s.capacity_bytes,
                );
            }
            counter(
                &mut out,
                "mspace_store_corrupt_reads_total",
                "Records that failed their checks when read (never served).",
                s.corrupt_reads,
            );
            counter(
                &mut out,
                "mspace_store_held_back_total",
                "Requests a shard took only after waiting for room (its callers waited).",
                s.held_back,
            );
        }
        let load = engine.load();
        gauge(
            &mut out,
            "mspace_store_queued_requests",
            "Requests waiting in the shards' queues.",
            load.queued,
        );
        gauge(
            &mut out,
            "mspace_store_in_flight_requests",
            "Requests the shards are working on.",
            load.in_flight,
        );
        let _ = writeln!(out, "# HELP mspace_dir_free_bytes Free bytes on each data directory's file system.\n# TYPE mspace_dir_free_bytes gauge");
        for d in dirs {
            if let Ok((_, free)) = crate::alerts::fs_space(d) {
                let _ = writeln!(
                    out,
                    "mspace_dir_free_bytes{{dir=\"{}\"}} {free}",
                    d.display().to_string().replace('"', "'")
                );
            }
        }
        out
    }
}

/// Serves `GET /metrics` until the task is dropped. Anything else gets 404; a request
/// larger than 8 KiB or slower than 5 seconds is dropped.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    dirs: Vec<PathBuf>,
    alerts: Arc<crate::alerts::Watch>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, engine, dirs, alerts) = (
            metrics.clone(),
            engine.clone(),
            dirs.clone(),
            alerts.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    let k = s.read(&mut buf[n..]).await.ok()?;
                    if k == 0 {
                        return None;
                    }
                    n += k;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        return Some(());
                    }
                }
                None
            })
            .await;
            if !matches!(read, Ok(Some(()))) {
                return;
            }
            let ok = buf[..n].starts_with(b"GET /metrics ");
            let (status, body) = if ok {
                let body = tokio::task::spawn_blocking(move || {
                    let mut body = metrics.render(&engine, &dirs);
                    alerts.render_metrics(&mut body);
                    body
                })
                .await
                .unwrap_or_default();
                ("200 OK", body)
            } else {
                (
                    "404 Not Found",
                    "only /metrics is served here\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
