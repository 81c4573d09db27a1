//! Every role's `/metrics`: a writer of the Prometheus text exposition format (0.0.4) and
//! the small HTTP server that answers `GET /metrics` with it.
//!
//! Why not the `prometheus-client` crate: its text encoder writes OpenMetrics (a
//! counter's `# TYPE` names the family without `_total`, and the output ends in
//! `# EOF`), which `promtool check metrics` (2.42, Debian's) does not read as such: it
//! reports every counter of it as "no help text". Prometheus scrapes both formats; the
//! checker, which the tests run on every role's output, knows only this one.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The text of one scrape, written metric by metric. Names are given whole (with their
/// `_total`, `_bytes`, `_seconds` suffix); HELP and TYPE come first for each.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value (backslash, quote, newline).
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Exposition {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.head(name, help, "counter");
        let _ = writeln!(self.out, "{name} {v}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, v: u64) {
        self.head(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {v}");
    }

    /// A gauge in a fractional base unit (seconds).
    pub fn gauge_f64(&mut self, name: &str, help: &str, v: f64) {
        self.head(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {v}");
    }

    /// A labelled family: one sample per entry of `samples` (label pairs, value).
    pub fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        samples: &[(Vec<(&str, &str)>, u64)],
    ) {
        self.head(name, help, kind);
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {v}", labels(l));
        }
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, help, "histogram");
        let mut cum = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cum += h.counts[i].load(Relaxed);
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        cum += h.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {cum}");
        let _ = writeln!(
            self.out,
            "{name}_sum {}\n{name}_count {cum}",
            h.sum_micros.load(Relaxed) as f64 / 1e6
        );
    }

    /// Text another writer made (in this format), appended as is.
    pub fn raw(&mut self, text: &str) {
        self.out.push_str(text);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Upper bounds of the latency buckets, seconds.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// A latency histogram on atomics.
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
}

/// What renders one scrape: a future, so that a role can ask its node or its store (a
/// renderer that blocks runs its work with `spawn_blocking`).
pub type Render = Arc<dyn Fn() -> futures::future::BoxFuture<'static, String> + Send + Sync>;

/// Serves `GET /metrics` with `render`'s text until the task is dropped. Anything else
/// gets 404; a request larger than 8 KiB or slower than 5 seconds is dropped.
pub async fn serve(listener: TcpListener, render: Render) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let render = Arc::clone(&render);
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
                let body = render().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_prometheus_text() {
        let mut e = Exposition::default();
        e.counter("x_total", "Xs.", 3);
        e.family(
            "y_total",
            "Ys by why.",
            "counter",
            &[(vec![("why", "a \"b\"\nc")], 1)],
        );
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        e.histogram("z_seconds", "Zs.", &h);
        let t = e.finish();
        assert!(t.starts_with("# HELP x_total Xs.\n# TYPE x_total counter\nx_total 3\n"));
        assert!(t.contains("y_total{why=\"a \\\"b\\\"\\nc\"} 1\n"), "{t}");
        assert!(t.contains("z_seconds_bucket{le=\"0.002\"} 0\n"));
        assert!(t.contains("z_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(
            t.contains("z_seconds_bucket{le=\"+Inf\"} 1\nz_seconds_sum 0.003\nz_seconds_count 1\n")
        );
    }
}
