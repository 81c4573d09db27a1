//! The gateway's metrics (`metrics_listen` in gateway.toml): HTTP requests by method and
//! status, in flight, refused for load or time, their latency, body bytes, and what the
//! gateway stored on and read from its host.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use api::metrics::{Exposition, Histogram};

#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, status code) to count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub in_flight: AtomicU64,
    pub slowed_down: AtomicU64,
    pub timed_out: AtomicU64,
    pub latency: Histogram,
    /// Content-Length of requests and answers that carried one.
    pub received_bytes: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Objects sealed and stored on the host, and their plaintext bytes.
    pub stored_objects: AtomicU64,
    pub stored_bytes: AtomicU64,
    /// Plaintext bytes read back from the host for GETs.
    pub read_bytes: AtomicU64,
    /// Sealed files removed from their host after their last object was deleted.
    pub dropped_files: AtomicU64,
}

impl Metrics {
    pub fn answered(&self, method: &str, code: u16) {
        let mut r = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *r.entry((method.to_owned(), code)).or_default() += 1;
    }

    /// The text of `/metrics`; `orphans`: the sealed files the index holds as named by no
    /// object, waiting to be removed from their host.
    pub fn render(&self, orphans: u64) -> String {
        let mut e = Exposition::default();
        let requests: Vec<((String, String), u64)> = self
            .requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((m, c), n)| ((m.clone(), c.to_string()), *n))
            .collect();
        e.family(
            "mspace_gateway_requests_total",
            "S3 requests answered, by HTTP method and status code.",
            "counter",
            &requests
                .iter()
                .map(|((m, c), n)| (vec![("method", m.as_str()), ("code", c.as_str())], *n))
                .collect::<Vec<_>>(),
        );
        let l = |c: &AtomicU64| c.load(Relaxed);
        e.gauge(
            "mspace_gateway_requests_in_flight",
            "Requests being served now.",
            l(&self.in_flight),
        );
        e.counter(
            "mspace_gateway_slowed_down_total",
            "Requests answered 503 SlowDown: max_requests were being served.",
            l(&self.slowed_down),
        );
        e.counter(
            "mspace_gateway_timed_out_total",
            "Requests answered 503 RequestTimeout after request_timeout_secs.",
            l(&self.timed_out),
        );
        e.histogram(
            "mspace_gateway_request_seconds",
            "Time from a request's headers to its answer's headers.",
            &self.latency,
        );
        e.counter(
            "mspace_gateway_received_bytes_total",
            "Body bytes of requests (as their Content-Length said).",
            l(&self.received_bytes),
        );
        e.counter(
            "mspace_gateway_sent_bytes_total",
            "Body bytes of answers (as their Content-Length said).",
            l(&self.sent_bytes),
        );
        e.counter(
            "mspace_gateway_stored_objects_total",
            "Objects sealed and stored on the host.",
            l(&self.stored_objects),
        );
        e.counter(
            "mspace_gateway_stored_bytes_total",
            "Plaintext bytes of the objects stored.",
            l(&self.stored_bytes),
        );
        e.counter(
            "mspace_gateway_read_bytes_total",
            "Plaintext bytes read back from the host, verified, for GETs.",
            l(&self.read_bytes),
        );
        e.gauge(
            "mspace_gateway_orphan_files",
            "Sealed files no object names any more, waiting to be removed from their host.",
            orphans,
        );
        e.counter(
            "mspace_gateway_dropped_files_total",
            "Sealed files removed from their host after their last object was deleted.",
            l(&self.dropped_files),
        );
        e.finish()
    }
}
