//! The host's dashboard: one server-rendered page (axum, askama) an operator reads at a
//! glance, its live part refreshed every 5 s by htmx (vendored in net/assets, embedded in
//! the binary), and the same figures as JSON. It shows what the store, the data plane's
//! counters and the watcher ([`crate::alerts`]) know. Two actions, each refused without
//! the host's control token in the form: dismiss an alert (hidden here until it clears)
//! and set the base price (kept in the state directory's `price` file, read again at
//! start); with no control token configured there are none.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use askama::Template;
use std::collections::HashMap;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use engine::store::Engine;
use serde::Serialize;

use crate::alerts::{percent, AlertKind, Sample, Watch};
use crate::metrics::Metrics;
use crate::wire::ErrorCode;

const HTMX: &str = include_str!("../assets/htmx.min.js");

/// What the dashboard reads.
#[derive(Clone)]
pub struct Dashboard {
    pub host: Arc<crate::host::Host>,
    /// The control token the actions need; None: no actions.
    pub token: Option<String>,
    /// Where a price set here is kept (`<state_dir>/price`).
    pub price_file: PathBuf,
    /// The base price of the configuration (MASPC per GiB per day).
    pub price_configured: u64,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub watch: Arc<Watch>,
    pub dirs: Vec<PathBuf>,
    /// The host's key (hex) and the address its links name.
    pub key: String,
    pub data_addr: String,
    /// Whether the host follows a chain (else the chain part says so).
    pub follows_chain: bool,
    /// MASP a missed proof moves from the deposit, per deal (the ledger's rule).
    pub slash_per_deal: u64,
    pub started_ms: u64,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AlertRow {
    pub severity: String,
    pub kind: String,
    pub subject: String,
    pub message: String,
    pub since: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventRow {
    pub at: String,
    pub state: String,
    pub kind: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DirRow {
    pub path: String,
    pub total: String,
    pub free: String,
    pub used_percent: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DealRow {
    pub id: String,
    pub stage: String,
    pub bytes: String,
    pub fee: u64,
    pub paid: u64,
    pub escrow: u64,
    pub proven: u32,
    pub missed: u32,
    pub downloads: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChainPart {
    pub height: u64,
    pub seen: String,
    pub registered: bool,
    pub deposit: u64,
    pub deposit_needed: u64,
    pub at_risk: u64,
    pub rating: u32,
    pub masp: u64,
    pub maspc: u64,
    pub active: usize,
    pub awaiting: usize,
    pub ended: usize,
    /// MASPC paid to the host for proven periods, held in escrow for periods to come,
    /// earned from downloads; paid per proven period on average.
    pub earned: u64,
    pub pending: u64,
    pub download_income: u64,
    pub per_period: u64,
    pub proven: u64,
    pub missed: u64,
    pub challenge: String,
    pub deals: Vec<DealRow>,
}

/// Everything the page shows (also `GET /status.json`).
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    pub key: String,
    pub data_addr: String,
    pub version: String,
    pub uptime: String,
    pub updated: String,
    pub alerts: Vec<AlertRow>,
    pub events: Vec<EventRow>,
    pub chunks: u64,
    pub live: String,
    pub capacity: String,
    pub used_percent: u64,
    pub dirs: Vec<DirRow>,
    pub bytes_in: String,
    pub bytes_out: String,
    pub connections_open: u64,
    pub refused: Vec<(String, u64)>,
    pub follows_chain: bool,
    pub chain: Option<ChainPart>,
    /// The base price asked now, whether it was set here (over the configuration's), and
    /// whether the actions are on (a control token is configured).
    pub price: u64,
    pub price_set_here: bool,
    pub actions: bool,
    /// Active alerts dismissed here (not in `alerts`).
    pub dismissed: usize,
    /// Inline SVG charts (numbers only: nothing from outside the host goes into them).
    #[serde(skip)]
    pub stored_chart: String,
    #[serde(skip)]
    pub traffic_chart: String,
    /// MASPC earned over time: each proven period's payments as a step.
    pub earnings_chart: String,
}

/// The whole page.
#[derive(Template)]
#[template(path = "dashboard.html")]
struct Full<'a> {
    p: &'a Page,
}

/// The live part alone (what htmx swaps in every 5 s).
#[derive(Template)]
#[template(path = "dashboard_live.html")]
struct Live<'a> {
    p: &'a Page,
}

/// Bytes for people: 1.5 GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A duration for people: 3 d 4 h, 5 min 2 s.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A line chart of `series` (oldest first) as inline SVG, `w` x `h` pixels, labelled with
/// its last value; empty series draw an empty frame.
pub fn chart(title: &str, series: &[(String, Vec<f64>, &str)], w: u32, h: u32) -> String {
    use std::fmt::Write as _;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\"><title>{title}</title><rect x=\"0.5\" y=\"0.5\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#ccd\"/>",
        w - 1,
        h - 1
    );
    let max = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let (pad, top) = (4.0, 18.0);
    let (fw, fh) = (f64::from(w) - 2.0 * pad, f64::from(h) - top - pad);
    for (i, (label, v, colour)) in series.iter().enumerate() {
        if v.len() >= 2 {
            let step = fw / (v.len() - 1) as f64;
            let pts: Vec<String> = v
                .iter()
                .enumerate()
                .map(|(k, y)| {
                    format!(
                        "{:.1},{:.1}",
                        pad + step * k as f64,
                        top + fh - fh * (y / max)
                    )
                })
                .collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                pts.join(" ")
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"13\" font-size=\"11\" fill=\"{colour}\">{label}</text>",
            6 + i * 170
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The charts: bytes stored, bytes per second in and out between samples, and MASPC
/// earned.
fn charts(samples: &[Sample]) -> (String, String, String) {
    let stored: Vec<u64> = samples.iter().map(|s| s.live_bytes).collect();
    let rate = |f: fn(&Sample) -> u64| -> Vec<u64> {
        samples
            .windows(2)
            .map(|w| {
                let ms = w[1].at_ms.saturating_sub(w[0].at_ms).max(1);
                f(&w[1]).saturating_sub(f(&w[0])).saturating_mul(1000) / ms
            })
            .collect()
    };
    let (r_in, r_out) = (rate(|s| s.put_bytes), rate(|s| s.get_bytes));
    let last = |v: &[u64]| v.last().copied().unwrap_or(0);
    let f = |v: &[u64]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let stored_chart = chart(
        "bytes stored",
        &[(
            format!("stored: {}", bytes(last(&stored))),
            f(&stored),
            "#2b6cb0",
        )],
        520,
        120,
    );
    let traffic_chart = chart(
        "bytes per second in and out",
        &[
            (format!("in: {}/s", bytes(last(&r_in))), f(&r_in), "#2f855a"),
            (
                format!("out: {}/s", bytes(last(&r_out))),
                f(&r_out),
                "#c05621",
            ),
        ],
        520,
        120,
    );
    let earned: Vec<u64> = samples.iter().map(|s| s.earned_maspc).collect();
    let earnings_chart = chart(
        "MASPC earned (storage and downloads)",
        &[(
            format!("earned: {} MASPC", last(&earned)),
            f(&earned),
            "#6b46c1",
        )],
        520,
        120,
    );
    (stored_chart, traffic_chart, earnings_chart)
}

fn chain_part(d: &Dashboard, now: u64) -> Option<ChainPart> {
    let c = d.watch.chain()?;
    let reg = c.account.registrations.iter().find(|r| r.role == "host");
    let open: Vec<&api::DealView> = c.deals.iter().filter(|v| v.stage.is_open()).collect();
    let active = c
        .deals
        .iter()
        .filter(|v| matches!(v.stage, api::DealStage::Active { .. }))
        .count();
    let awaiting = c
        .deals
        .iter()
        .filter(|v| matches!(v.stage, api::DealStage::AwaitingCompletion { .. }))
        .count();
    let earned: u64 = c.deals.iter().map(|v| v.paid).sum();
    let proven: u64 = c.deals.iter().map(|v| u64::from(v.proven)).sum();
    let mut rows: Vec<&api::DealView> = c.deals.iter().collect();
    rows.sort_by_key(|v| std::cmp::Reverse(v.opened_height));
    Some(ChainPart {
        height: c.status.height,
        seen: ago(now.saturating_sub(c.at_ms)),
        registered: reg.is_some(),
        deposit: reg.map_or(0, |r| r.deposit),
        deposit_needed: c.deposit_needed,
        at_risk: d.slash_per_deal.saturating_mul(active as u64),
        rating: c.account.rating,
        masp: c.account.masp,
        maspc: c.account.maspc,
        active,
        awaiting,
        ended: c.deals.len() - active - awaiting,
        earned,
        pending: open.iter().map(|v| v.escrow).sum(),
        download_income: c.deals.iter().map(|v| v.download_income).sum(),
        per_period: earned.checked_div(proven).unwrap_or(0),
        proven,
        missed: c.deals.iter().map(|v| u64::from(v.missed)).sum(),
        challenge: match &c.challenge {
            None => "no challenge this period (no deal to prove)".into(),
            Some(ch) if ch.answered => format!("period {}: proven", ch.period),
            Some(ch) => format!(
                "period {}: {} leaves over {} deals to prove by height {} ({} blocks left)",
                ch.period,
                ch.samples.len(),
                ch.deals,
                ch.due,
                ch.due.saturating_sub(c.status.height)
            ),
        },
        deals: rows
            .into_iter()
            .take(50)
            .map(|v| DealRow {
                id: v.id.chars().take(16).collect(),
                stage: v.stage.name().into(),
                bytes: bytes(v.bytes),
                fee: v.storage_fee,
                paid: v.paid,
                escrow: v.escrow,
                proven: v.proven,
                missed: v.missed,
                downloads: v.downloads,
            })
            .collect(),
    })
}

impl Dashboard {
    /// The page's figures now.
    pub fn page(&self) -> Page {
        let now = crate::alerts::now_ms();
        let stats = self.engine.stats().ok();
        let (chunks, live, cap) = stats.map_or((0, 0, u64::MAX), |s| {
            (s.chunks, s.live_bytes, s.capacity_bytes)
        });
        let dirs = self
            .dirs
            .iter()
            .map(|d| {
                let (total, free) = crate::alerts::fs_space(d).unwrap_or((0, 0));
                DirRow {
                    path: d.display().to_string(),
                    total: bytes(total),
                    free: bytes(free),
                    used_percent: percent(total.saturating_sub(free), total),
                }
            })
            .collect();
        let mut alerts = self.watch.alerts.active();
        alerts.sort_by_key(|a| std::cmp::Reverse(a.severity));
        let all = alerts.len();
        alerts.retain(|a| !self.watch.alerts.is_dismissed(a));
        let dismissed = all - alerts.len();
        let refused = (1..16u16)
            .filter_map(ErrorCode::from_u16)
            .map(|c| (c.name().to_owned(), self.metrics.refused(c)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let (stored_chart, traffic_chart, earnings_chart) = charts(&self.watch.samples());
        Page {
            key: self.key.clone(),
            data_addr: self.data_addr.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: ago(now.saturating_sub(self.started_ms)),
            updated: format!("{} ms since the epoch", now),
            alerts: alerts
                .into_iter()
                .map(|a| AlertRow {
                    severity: a.severity.name().into(),
                    kind: a.kind.name().into(),
                    subject: a.subject,
                    message: a.message,
                    since: ago(now.saturating_sub(a.since_ms)),
                })
                .collect(),
            events: self
                .watch
                .alerts
                .events()
                .into_iter()
                .take(10)
                .map(|e| EventRow {
                    at: ago(now.saturating_sub(e.at_ms)),
                    state: e.state,
                    kind: e.alert.kind.name().into(),
                    message: e.alert.message,
                })
                .collect(),
            chunks,
            live: bytes(live),
            capacity: if cap == u64::MAX {
                "no limit set".into()
            } else {
                bytes(cap)
            },
            used_percent: percent(live, cap),
            dirs,
            bytes_in: bytes(self.metrics.put_bytes.load(Relaxed)),
            bytes_out: bytes(self.metrics.get_bytes.load(Relaxed)),
            connections_open: self.metrics.connections_open.load(Relaxed),
            refused,
            follows_chain: self.follows_chain,
            chain: chain_part(self, now),
            price: self.host.price_override().unwrap_or(self.price_configured),
            price_set_here: self.host.price_override().is_some(),
            actions: self.token.is_some(),
            dismissed,
            stored_chart,
            traffic_chart,
            earnings_chart,
        }
    }

    /// Whether `given` is the control token (compared as the control plane does).
    fn token_ok(&self, given: Option<&String>) -> bool {
        match (&self.token, given) {
            (Some(t), Some(g)) => crate::control::same_secret(t, g),
            _ => false,
        }
    }

    /// POST /price: `token`, `price` (MASPC per GiB per day; empty: back to the
    /// configuration's).
    fn set_price(&self, form: &HashMap<String, String>) -> Response {
        if !self.token_ok(form.get("token")) {
            return refused();
        }
        let wanted = match form.get("price").map(|p| p.trim()) {
            None | Some("") => None,
            Some(p) => match p.parse::<u64>() {
                Ok(v) if v < u64::MAX => Some(v),
                _ => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("price {p:?} is not a whole number of MASPC"),
                    )
                        .into_response()
                }
            },
        };
        let kept = match wanted {
            Some(v) => std::fs::write(&self.price_file, format!("{v}\n")),
            None => match std::fs::remove_file(&self.price_file) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = kept {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "cannot keep the price in {}: {e}",
                    self.price_file.display()
                ),
            )
                .into_response();
        }
        self.host.set_price_override(wanted);
        tracing::info!(price = ?wanted, "base price set from the dashboard");
        Redirect::to("/").into_response()
    }

    /// POST /alerts/dismiss: `token`, `kind`, `subject`.
    fn dismiss(&self, form: &HashMap<String, String>) -> Response {
        if !self.token_ok(form.get("token")) {
            return refused();
        }
        let kind = match form.get("kind").map(|k| k.parse::<crate::alerts::Kind>()) {
            Some(Ok(k)) => k,
            Some(Err(e)) => return (StatusCode::BAD_REQUEST, e).into_response(),
            None => return (StatusCode::BAD_REQUEST, "no kind").into_response(),
        };
        let subject = form.get("subject").map_or("", String::as_str);
        if self.watch.alerts.dismiss(kind, subject) {
            Redirect::to("/").into_response()
        } else {
            (StatusCode::NOT_FOUND, "no such alert is active").into_response()
        }
    }

    pub fn router(self) -> Router {
        let d = Arc::new(self);
        let (a, b, c) = (Arc::clone(&d), Arc::clone(&d), Arc::clone(&d));
        let (e, f) = (Arc::clone(&d), d);
        Router::new()
            .route(
                "/",
                get(move || async move { render(&Full { p: &a.page() }) }),
            )
            .route(
                "/live",
                get(move || async move { render(&Live { p: &b.page() }) }),
            )
            .route(
                "/status.json",
                get(move || async move { axum::Json(c.page()) }),
            )
            .route(
                "/price",
                post(move |Form(form): Form<HashMap<String, String>>| async move {
                    e.set_price(&form)
                }),
            )
            .route(
                "/alerts/dismiss",
                post(move |Form(form): Form<HashMap<String, String>>| async move {
                    f.dismiss(&form)
                }),
            )
            .route(
                "/htmx.min.js",
                get(|| async {
                    (
                        [
                            (header::CONTENT_TYPE, "text/javascript"),
                            (header::CACHE_CONTROL, "max-age=86400"),
                        ],
                        HTMX,
                    )
                }),
            )
    }
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the control token (control_token in host.toml) is missing or wrong",
    )
        .into_response()
}

fn render(t: &impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page did not render: {e}"),
        )
            .into_response(),
    }
}

/// Serves the dashboard on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, d: Dashboard) -> std::io::Result<()> {
    axum::serve(listener, d.router()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(ago(59_999), "59 s");
        assert_eq!(ago(3_600_000 + 120_000), "1 h 2 min");
        assert_eq!(ago(90_000_000), "1 d 1 h");
        assert_eq!(percent(1, 0), 0);
        assert_eq!(percent(1, u64::MAX), 0);
        assert_eq!(percent(45, 50), 90);
    }

    fn page() -> Page {
        Page {
            key: "ab".repeat(32),
            data_addr: "127.0.0.1:7400".into(),
            version: "0.1.0".into(),
            uptime: "5 s".into(),
            updated: String::new(),
            alerts: vec![AlertRow {
                severity: "critical".into(),
                kind: "data_dir_failing".into(),
                subject: "/d".into(),
                message: "/d/<script>alert(1)</script> fails".into(),
                since: "1 s".into(),
            }],
            events: vec![],
            chunks: 7,
            live: bytes(7 << 20),
            capacity: "no limit set".into(),
            used_percent: 0,
            dirs: vec![],
            bytes_in: bytes(0),
            bytes_out: bytes(0),
            connections_open: 0,
            refused: vec![("NotFound".into(), 2)],
            follows_chain: true,
            chain: Some(ChainPart {
                height: 9,
                seen: "1 s".into(),
                registered: true,
                deposit: 1500,
                deposit_needed: 1001,
                at_risk: 100,
                rating: 640,
                masp: 1,
                maspc: 2,
                active: 1,
                awaiting: 0,
                ended: 3,
                earned: 42,
                pending: 5,
                download_income: 0,
                per_period: 14,
                proven: 3,
                missed: 0,
                challenge: "period 2: proven".into(),
                deals: vec![],
            }),
            price: 12,
            price_set_here: true,
            actions: true,
            dismissed: 1,
            stored_chart: chart("s", &[], 10, 10),
            traffic_chart: chart("t", &[], 10, 10),
            earnings_chart: chart("e", &[], 10, 10),
        }
    }

    #[test]
    fn the_page_shows_the_figures_and_escapes_what_it_did_not_write() {
        let p = page();
        let html = Full { p: &p }.render().unwrap();
        for want in [
            "<b id=\"deals-active\">1</b>",
            "<b id=\"earned\">42</b>",
            "<b id=\"proven\">3</b>",
            "<b id=\"rating\">640</b>",
            "<b id=\"chunks\">7</b>",
            "7.0 MiB",
            "hx-get=\"/live\"",
            "<script src=\"/htmx.min.js\"></script>",
            "NotFound",
            "action=\"/alerts/dismiss\"",
            "<b id=\"price\">12</b>",
            "1 dismissed",
        ] {
            assert!(html.contains(want), "{want} missing");
        }
        assert!(
            !html.contains("<script>alert(1)"),
            "an alert's text is escaped"
        );
        assert!(
            html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"),
            "escaped, not dropped"
        );
        let live = Live { p: &p }.render().unwrap();
        assert!(live.starts_with("<main id=\"live\""));
        assert!(!live.contains("<html"));
        let off = Page {
            chain: None,
            follows_chain: false,
            ..page()
        };
        let html = Full { p: &off }.render().unwrap();
        assert!(html.contains("follows no chain"));
    }

    #[test]
    fn a_chart_draws_its_series_scaled_into_its_frame() {
        let svg = chart("t", &[("a".into(), vec![0.0, 5.0, 10.0], "#000")], 100, 50);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // First point at the bottom left, last at the top right of the frame.
        assert!(
            svg.contains("points=\"4.0,46.0 50.0,32.0 96.0,18.0\""),
            "{svg}"
        );
        let empty = chart("t", &[("a".into(), vec![], "#000")], 100, 50);
        assert!(!empty.contains("polyline"));
        let (s, t, e) = charts(&[
            Sample {
                at_ms: 0,
                live_bytes: 0,
                put_bytes: 0,
                get_bytes: 0,
                earned_maspc: 0,
            },
            Sample {
                at_ms: 2000,
                live_bytes: 4096,
                put_bytes: 4096,
                get_bytes: 0,
                earned_maspc: 33,
            },
        ]);
        assert!(s.contains("stored: 4.0 KiB"), "{s}");
        assert!(t.contains("in: 2.0 KiB/s"), "{t}");
        assert!(e.contains("earned: 33 MASPC"), "{e}");
    }
}
