//! What every role's alerts share: a [`Severity`], an [`Alert`] of a role's own kinds
//! ([`AlertKind`]), the [`Tracker`] that keeps the active ones and the recent raise and
//! clear [`Event`]s, the `mspace_<role>_alert{kind,severity}` gauge, and the webhook that
//! events are POSTed to as JSON (`docs/wire.md` section 6.1).
//!
//! A role decides which alerts hold with a pure function of what it observed (the host's
//! `net::alerts::evaluate`, the miner's `miner::alerts::evaluate`) and hands the result to
//! [`Tracker::update`] on every look; [`report`] logs and posts what changed.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AlertView;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Money is not at risk yet; it will be if nothing is done.
    Warning,
    /// Money is at risk now (a proof can be missed, a deposit slashed, a vote lost).
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// The miner's alert kind for a miner behind the others (`miner::alerts`); a chain client
/// passes such a miner over.
pub const FALLING_BEHIND: &str = "falling_behind";
/// The miner's alert kind for a miner that saw no new block for a while.
pub const NO_NEW_BLOCKS: &str = "no_new_blocks";

/// A role's alert kinds: each has one severity, so the gauge's labels never change.
pub trait AlertKind: Copy + Ord + std::fmt::Debug + Send + 'static {
    /// Every kind, in the order alerts are listed.
    const ALL: &'static [Self];

    /// The label value in metrics and the name in JSON.
    fn name(self) -> &'static str;

    fn severity(self) -> Severity;

    /// The kind named `s`.
    fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("no alert kind {s:?}"))
    }
}

/// One alert that holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert<K> {
    pub kind: K,
    pub severity: Severity,
    /// What it is about (a data directory, a deal id, a peer), or empty for the whole role.
    pub subject: String,
    pub message: String,
    /// When it was raised (ms since the Unix epoch); 0 until [`Tracker::update`] sets it.
    pub since_ms: u64,
}

impl<K: AlertKind> Alert<K> {
    pub fn new(kind: K, subject: &str, message: String) -> Alert<K> {
        Alert {
            kind,
            severity: kind.severity(),
            subject: subject.to_owned(),
            message,
            since_ms: 0,
        }
    }

    /// As the control plane shows it.
    pub fn view(&self) -> AlertView {
        AlertView {
            kind: self.kind.name().into(),
            severity: self.severity.name().into(),
            subject: self.subject.clone(),
            message: self.message.clone(),
            since_ms: self.since_ms,
        }
    }
}

/// An alert raised or cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event<K> {
    /// "raised" or "cleared".
    pub state: String,
    pub at_ms: u64,
    pub alert: Alert<K>,
}

/// Events kept for a dashboard.
const EVENTS_KEPT: usize = 100;

#[derive(Debug)]
struct Kept<K> {
    active: Vec<Alert<K>>,
    /// Active alerts the operator dismissed (kind, subject): hidden from a dashboard until
    /// they clear (raised again, they show again).
    dismissed: BTreeSet<(K, String)>,
    events: VecDeque<Event<K>>,
}

/// The active alerts of one role and its recent events, shared by its watcher, its control
/// plane, its metrics and its dashboard.
#[derive(Debug)]
pub struct Tracker<K> {
    kept: Mutex<Kept<K>>,
}

impl<K> Default for Tracker<K> {
    fn default() -> Self {
        Tracker {
            kept: Mutex::new(Kept {
                active: Vec::new(),
                dismissed: BTreeSet::new(),
                events: VecDeque::new(),
            }),
        }
    }
}

impl<K: AlertKind> Tracker<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept<K>> {
        self.kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the active set with `found` (an alert that held before keeps its
    /// `since_ms` and takes the new message); the events this makes.
    pub fn update(&self, found: Vec<Alert<K>>, now_ms: u64) -> Vec<Event<K>> {
        let mut s = self.lock();
        let same = |a: &Alert<K>, b: &Alert<K>| a.kind == b.kind && a.subject == b.subject;
        let mut events = Vec::new();
        for old in &s.active {
            if !found.iter().any(|f| same(f, old)) {
                events.push(Event {
                    state: "cleared".into(),
                    at_ms: now_ms,
                    alert: old.clone(),
                });
            }
        }
        let mut next = Vec::with_capacity(found.len());
        for mut f in found {
            match s.active.iter().find(|old| same(old, &f)) {
                Some(old) => f.since_ms = old.since_ms,
                None => {
                    f.since_ms = now_ms;
                    events.push(Event {
                        state: "raised".into(),
                        at_ms: now_ms,
                        alert: f.clone(),
                    });
                }
            }
            next.push(f);
        }
        s.active = next;
        let still: BTreeSet<(K, String)> = s
            .active
            .iter()
            .map(|a| (a.kind, a.subject.clone()))
            .collect();
        s.dismissed.retain(|d| still.contains(d));
        for e in &events {
            if s.events.len() == EVENTS_KEPT {
                s.events.pop_front();
            }
            s.events.push_back(e.clone());
        }
        events
    }

    pub fn active(&self) -> Vec<Alert<K>> {
        self.lock().active.clone()
    }

    /// The active alerts as the control plane shows them, critical first.
    pub fn views(&self) -> Vec<AlertView> {
        let mut active = self.active();
        active.sort_by_key(|a| std::cmp::Reverse(a.severity));
        active.iter().map(Alert::view).collect()
    }

    /// Hides an active alert from a dashboard until it clears; false if none is active.
    pub fn dismiss(&self, kind: K, subject: &str) -> bool {
        let mut s = self.lock();
        let active = s
            .active
            .iter()
            .any(|a| a.kind == kind && a.subject == subject);
        if active {
            s.dismissed.insert((kind, subject.to_owned()));
        }
        active
    }

    pub fn is_dismissed(&self, a: &Alert<K>) -> bool {
        self.lock().dismissed.contains(&(a.kind, a.subject.clone()))
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<Event<K>> {
        self.lock().events.iter().rev().cloned().collect()
    }

    /// The gauge `metric`: 1 for each active kind, 0 for every other, labelled by kind and
    /// severity.
    pub fn render_metrics(&self, metric: &str, help: &str, out: &mut String) {
        let active = self.active();
        let samples: Vec<(Vec<(&str, &str)>, u64)> = K::ALL
            .iter()
            .map(|k| {
                (
                    vec![("kind", k.name()), ("severity", k.severity().name())],
                    u64::from(active.iter().any(|a| a.kind == *k)),
                )
            })
            .collect();
        let mut e = crate::metrics::Exposition::default();
        e.family(metric, help, "gauge", &samples);
        out.push_str(&e.finish());
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `part` is more than `permille` thousandths of `whole`.
pub fn over(part: u64, whole: u64, permille: u64) -> bool {
    whole > 0 && u128::from(part) * 1000 > u128::from(whole) * u128::from(permille)
}

/// `part` in percent of `whole`; 0 for no whole (0, or `u64::MAX`: no limit set).
pub fn percent(part: u64, whole: u64) -> u64 {
    if whole == 0 || whole == u64::MAX {
        return 0;
    }
    u64::try_from(u128::from(part) * 100 / u128::from(whole)).unwrap_or(u64::MAX)
}

/// Posts `event` as JSON to an `http://` URL, with `role` (`"host"`, `"miner"`) naming
/// `who` (its key in hex); the status line's code.
pub async fn post_event<K: Serialize>(
    url: &str,
    role: &str,
    who: &str,
    event: &Event<K>,
) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the webhook must be an http:// URL (put a local relay in front of https)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut body = serde_json::Map::new();
    body.insert(role.to_owned(), serde_json::Value::String(who.to_owned()));
    match serde_json::to_value(event).map_err(|e| e.to_string())? {
        serde_json::Value::Object(fields) => body.extend(fields),
        other => return Err(format!("an event is not a JSON object: {other}")),
    }
    let body = serde_json::Value::Object(body).to_string();
    let post = async {
        let mut s = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 8192 {
            let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&answer);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("no HTTP status in the answer {:?}", line.lines().next()))
    };
    tokio::time::timeout(Duration::from_secs(10), post)
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
}

/// Waits `every` between a watcher's looks; false once `stop` changed (or its sender is
/// gone): the watcher ends.
pub async fn next_look(every: Duration, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(every) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// Logs each event (a raised critical one as an error) and posts it to `webhook`, if one
/// is set (a failed post is logged, not retried).
pub async fn report<K: AlertKind + Serialize>(
    events: &[Event<K>],
    webhook: Option<&str>,
    role: &str,
    who: &str,
) {
    for e in events {
        let kind = e.alert.kind.name();
        match e.alert.severity {
            Severity::Critical if e.state == "raised" => {
                tracing::error!(kind, "alert: {}", e.alert.message);
            }
            _ => tracing::warn!(kind, state = e.state, "alert: {}", e.alert.message),
        }
        if let Some(url) = webhook {
            match post_event(url, role, who, e).await {
                Ok(code) if (200..300).contains(&code) => {}
                Ok(code) => tracing::warn!(url, code, "the alert webhook refused an event"),
                Err(why) => tracing::warn!(url, "the alert webhook: {why}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Test {
        DiskFull,
        ClockSkew,
    }

    impl AlertKind for Test {
        const ALL: &'static [Test] = &[Test::DiskFull, Test::ClockSkew];
        fn name(self) -> &'static str {
            match self {
                Test::DiskFull => "disk_full",
                Test::ClockSkew => "clock_skew",
            }
        }
        fn severity(self) -> Severity {
            Severity::Warning
        }
    }

    #[test]
    fn kinds_parse_by_name_and_refuse_others() {
        assert_eq!(Test::parse("clock_skew"), Ok(Test::ClockSkew));
        assert!(Test::parse("Clock_skew")
            .unwrap_err()
            .contains("no alert kind"));
    }

    #[test]
    fn alerts_keep_their_start_and_events_say_raised_and_cleared() {
        let a = Tracker::<Test>::default();
        let found = |msg: &str| vec![Alert::new(Test::DiskFull, "/d", msg.to_owned())];
        let e = a.update(found("91%"), 10);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].state, "raised");
        assert!(a.update(found("92%"), 20).is_empty());
        assert_eq!(a.active()[0].since_ms, 10);
        assert_eq!(a.active()[0].message, "92%");
        let mut m = String::new();
        a.render_metrics("mspace_test_alert", "Alerts.", &mut m);
        assert!(m.contains("mspace_test_alert{kind=\"disk_full\",severity=\"warning\"} 1"));
        assert!(m.contains("mspace_test_alert{kind=\"clock_skew\",severity=\"warning\"} 0"));
        let e = a.update(vec![], 30);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].state.as_str(), e[0].at_ms), ("cleared", 30));
        assert!(a.active().is_empty());
        let states: Vec<String> = a.events().into_iter().map(|e| e.state).collect();
        // Dismissed while active; forgotten once cleared, so a new raise shows again.
        a.update(found("95%"), 40);
        assert!(a.dismiss(Test::DiskFull, "/d"));
        assert!(!a.dismiss(Test::ClockSkew, ""));
        assert!(a.is_dismissed(&a.active()[0]));
        a.update(vec![], 50);
        a.update(found("96%"), 60);
        assert!(!a.is_dismissed(&a.active()[0]));
        assert_eq!(states, ["cleared", "raised"]);
    }

    #[test]
    fn thresholds_are_exclusive_and_no_whole_is_zero_percent() {
        assert!(!over(900, 1000, 900));
        assert!(over(901, 1000, 900));
        assert!(!over(1, 0, 900));
        assert_eq!(percent(1, u64::MAX), 0);
        assert_eq!(percent(50, 200), 25);
    }

    #[tokio::test]
    async fn a_webhook_that_is_not_http_is_refused_before_connecting() {
        let e = Event {
            state: "raised".into(),
            at_ms: 1,
            alert: Alert::new(Test::DiskFull, "", "x".into()),
        };
        let err = post_event("https://example.org/", "miner", "ab", &e)
            .await
            .unwrap_err();
        assert!(err.contains("http://"), "{err}");
    }
}
