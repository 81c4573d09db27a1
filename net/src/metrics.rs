//! The host's Prometheus metrics: counters and latency histograms kept with atomics on the
//! data path, rendered in the text exposition format (`api::metrics`) on `GET /metrics` of
//! a separate listener.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use api::metrics::Exposition;
use engine::store::Engine;
use tokio::net::TcpListener;

use crate::wire::ErrorCode;

pub use api::metrics::Histogram;

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
        let mut e = Exposition::default();
        let l = |c: &AtomicU64| c.load(Relaxed);
        e.counter(
            "mspace_connections_total",
            "Data-plane connections accepted.",
            l(&self.connections),
        );
        e.gauge(
            "mspace_connections_open",
            "Data-plane connections open now.",
            l(&self.connections_open),
        );
        e.counter(
            "mspace_puts_total",
            "Chunks stored (new or already present).",
            l(&self.puts),
        );
        e.counter(
            "mspace_put_requests_total",
            "Put frames read, answered or not.",
            l(&self.put_requests),
        );
        e.counter(
            "mspace_puts_existing_total",
            "Puts of chunks already stored (nothing written).",
            l(&self.puts_existing),
        );
        e.counter(
            "mspace_put_bytes_total",
            "Chunk bytes received in accepted puts.",
            l(&self.put_bytes),
        );
        e.counter(
            "mspace_gets_total",
            "Chunks, ranges, proofs and manifests served.",
            l(&self.gets),
        );
        e.counter(
            "mspace_get_bytes_total",
            "Bytes served.",
            l(&self.get_bytes),
        );
        let refused: Vec<(String, u64)> = (1..16u16)
            .filter_map(ErrorCode::from_u16)
            .map(|c| (c.name().to_owned(), self.refused(c)))
            .collect();
        e.family(
            "mspace_refused_total",
            "Requests refused, by reason.",
            "counter",
            &refused
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str())], *n))
                .collect::<Vec<_>>(),
        );
        e.histogram(
            "mspace_put_seconds",
            "Time from a put's last byte to its durable acknowledgement.",
            &self.put_latency,
        );
        e.histogram(
            "mspace_get_seconds",
            "Time from a read request to its reply's bytes being ready.",
            &self.get_latency,
        );
        if let Ok(s) = engine.stats() {
            e.gauge("mspace_store_chunks", "Chunks stored.", s.chunks);
            e.gauge(
                "mspace_store_live_bytes",
                "Bytes of live records.",
                s.live_bytes,
            );
            e.gauge(
                "mspace_store_used_bytes",
                "Bytes of segment files.",
                s.used_bytes,
            );
            if s.capacity_bytes != u64::MAX {
                e.gauge(
                    "mspace_store_capacity_bytes",
                    "Configured capacity.",
                    s.capacity_bytes,
                );
            }
            e.counter(
                "mspace_store_corrupt_reads_total",
                "Records that failed their checks when read (never served).",
                s.corrupt_reads,
            );
            e.counter(
                "mspace_store_held_back_total",
                "Requests a shard took only after waiting for room (its callers waited).",
                s.held_back,
            );
        }
        let load = engine.load();
        e.gauge(
            "mspace_store_queued_requests",
            "Requests waiting in the shards' queues.",
            load.queued,
        );
        e.gauge(
            "mspace_store_in_flight_requests",
            "Requests the shards are working on.",
            load.in_flight,
        );
        let free: Vec<(String, u64)> = dirs
            .iter()
            .filter_map(|d| {
                crate::alerts::fs_space(d)
                    .ok()
                    .map(|(_, free)| (d.display().to_string(), free))
            })
            .collect();
        e.family(
            "mspace_dir_free_bytes",
            "Free bytes on each data directory's file system.",
            "gauge",
            &free
                .iter()
                .map(|(d, f)| (vec![("dir", d.as_str())], *f))
                .collect::<Vec<_>>(),
        );
        e.finish()
    }
}

/// Serves `GET /metrics` (`api::metrics::serve`) until the task is dropped: the data
/// plane's and the store's figures, and the alerts' gauge.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    engine: Arc<Engine>,
    dirs: Vec<PathBuf>,
    alerts: Arc<crate::alerts::Watch>,
) {
    api::metrics::serve(
        listener,
        Arc::new(move || {
            let (metrics, engine, dirs, alerts) = (
                Arc::clone(&metrics),
                Arc::clone(&engine),
                dirs.clone(),
                Arc::clone(&alerts),
            );
            Box::pin(async move {
                // The store's figures and statvfs block: off the async workers.
                tokio::task::spawn_blocking(move || {
                    let mut body = metrics.render(&engine, &dirs);
                    alerts.render_metrics(&mut body);
                    body
                })
                .await
                .unwrap_or_default()
            })
        }),
    )
    .await;
}
