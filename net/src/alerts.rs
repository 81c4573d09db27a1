//! The host's alerts: raised before money is at risk, each with a severity, shown by
//! `mspace host status` and the dashboard, exported as the `mspace_host_alert` gauge and
//! posted to a webhook when raised and when cleared.
//!
//! [`evaluate`] is a pure function from what the host observed ([`Observation`]) to the
//! alerts that hold; [`Watch`] keeps the active ones, the recent raise/clear events, the
//! last look at the chain and a short history of samples (the dashboard's charts);
//! [`run`] observes every few seconds (the store, each data directory with a small
//! write-sync-read probe, the chain) and posts the events.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api::alerts::over;
use api::chain::ChainClient;
use engine::store::Engine;
use proto::tx::AccountId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use api::alerts::{now_ms, percent, AlertKind, Severity};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// No configured miner answers: proofs and completions cannot be sent.
    ChainUnreachable,
    /// The host's deposit is below what the bytes of its open deals require.
    DepositLow,
    /// An open deal of this host has missed a proof period.
    ProofMissed,
    /// This period's challenge is unanswered and its last height is near.
    ProofDue,
    /// The store holds more than the threshold of its configured capacity.
    CapacityHigh,
    /// A data directory's file system is fuller than the threshold.
    DiskFull,
    /// A data directory fails the write-sync-read probe.
    DataDirFailing,
    /// The chain's block times and this machine's clock disagree.
    ClockSkew,
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::parse(s)
    }
}

impl AlertKind for Kind {
    const ALL: &'static [Kind] = &[
        Kind::ChainUnreachable,
        Kind::DepositLow,
        Kind::ProofMissed,
        Kind::ProofDue,
        Kind::CapacityHigh,
        Kind::DiskFull,
        Kind::DataDirFailing,
        Kind::ClockSkew,
    ];

    fn severity(self) -> Severity {
        match self {
            Kind::CapacityHigh | Kind::DiskFull | Kind::ClockSkew => Severity::Warning,
            _ => Severity::Critical,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::ChainUnreachable => "chain_unreachable",
            Kind::DepositLow => "deposit_low",
            Kind::ProofMissed => "proof_missed",
            Kind::ProofDue => "proof_due",
            Kind::CapacityHigh => "capacity_high",
            Kind::DiskFull => "disk_full",
            Kind::DataDirFailing => "data_dir_failing",
            Kind::ClockSkew => "clock_skew",
        }
    }
}

/// One alert of the host.
pub type Alert = api::alerts::Alert<Kind>;
/// A host's alert raised or cleared.
pub type Event = api::alerts::Event<Kind>;

/// One data directory as the probe saw it.
#[derive(Clone, Debug, Default)]
pub struct DirSeen {
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Why the probe failed, if it did.
    pub error: Option<String>,
}

/// What the chain said about this host.
#[derive(Clone, Debug, Default)]
pub struct ChainSeen {
    pub height: u64,
    /// The tip's timestamp (ms) and when this host first saw that tip (ms, its own clock).
    pub tip_ms: u64,
    pub tip_seen_ms: u64,
    /// The host registration's deposit (MASP); None when not registered.
    pub deposit: Option<u64>,
    /// What the ledger requires for `stored_bytes` (the bytes of open deals).
    pub deposit_needed: u64,
    pub stored_bytes: u64,
    /// Open deals with missed proofs: (deal id hex, missed periods).
    pub missed: Vec<(String, u32)>,
    /// This period's challenge: (period, last height a proof is taken, answered).
    pub challenge: Option<(u64, u64, bool)>,
}

#[derive(Clone, Debug)]
pub enum ChainState {
    /// No chain configured: nothing to say about it.
    NotFollowed,
    Unreachable(String),
    Seen(ChainSeen),
}

/// Everything [`evaluate`] looks at.
#[derive(Clone, Debug)]
pub struct Observation {
    pub live_bytes: u64,
    /// `u64::MAX` when no capacity is configured.
    pub capacity_bytes: u64,
    pub dirs: Vec<DirSeen>,
    pub chain: ChainState,
}

/// Thresholds.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Capacity or disk fill that raises a warning, in thousandths (900: 90%).
    #[serde(default = "default_fill")]
    pub fill_permille: u64,
    /// Blocks before a challenge's last height at which an unanswered one is an alert.
    #[serde(default = "default_due")]
    pub proof_due_blocks: u64,
    /// Clock difference against the chain's block times that raises a warning, ms.
    #[serde(default = "default_skew")]
    pub clock_skew_ms: u64,
}

fn default_fill() -> u64 {
    900
}
fn default_due() -> u64 {
    5
}
fn default_skew() -> u64 {
    30_000
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            fill_permille: default_fill(),
            proof_due_blocks: default_due(),
            clock_skew_ms: default_skew(),
        }
    }
}

fn alert(kind: Kind, subject: &str, message: String) -> Alert {
    Alert::new(kind, subject, message)
}

/// The alerts that hold for `o`, in [`Kind`] order.
pub fn evaluate(o: &Observation, rules: &Rules) -> Vec<Alert> {
    let mut out = Vec::new();
    match &o.chain {
        ChainState::NotFollowed => {}
        ChainState::Unreachable(why) => out.push(alert(
            Kind::ChainUnreachable,
            "",
            format!("no configured miner answers ({why}): completions and proofs cannot be sent"),
        )),
        ChainState::Seen(c) => {
            if let Some(deposit) = c.deposit {
                if deposit < c.deposit_needed {
                    out.push(alert(Kind::DepositLow, "",
                        format!(
                            "the deposit of {deposit} MASP is below the {} MASP that {} bytes of open deals require",
                            c.deposit_needed, c.stored_bytes
                        ),
                    ));
                }
            } else if c.stored_bytes > 0 {
                out.push(alert(
                    Kind::DepositLow,
                    "",
                    format!(
                        "not registered as a host, with {} bytes of open deals",
                        c.stored_bytes
                    ),
                ));
            }
            for (deal, missed) in &c.missed {
                out.push(alert(
                    Kind::ProofMissed,
                    deal,
                    format!("deal {deal} missed {missed} proof period(s): each cost deposit"),
                ));
            }
            if let Some((period, due, false)) = c.challenge {
                if due >= c.height && due - c.height <= rules.proof_due_blocks {
                    out.push(alert(Kind::ProofDue, "",
                        format!(
                            "period {period}'s challenge is unanswered and closes at height {due} ({} block(s) left)",
                            due - c.height
                        ),
                    ));
                }
            }
            let skew = c.tip_seen_ms.abs_diff(c.tip_ms);
            if c.tip_ms > 0 && skew > rules.clock_skew_ms {
                out.push(alert(Kind::ClockSkew, "",
                    format!(
                        "block {} is stamped {} ms from when this host saw it: check this machine's clock (NTP)",
                        c.height, skew
                    ),
                ));
            }
        }
    }
    if o.capacity_bytes != u64::MAX && over(o.live_bytes, o.capacity_bytes, rules.fill_permille) {
        out.push(alert(
            Kind::CapacityHigh,
            "",
            format!(
                "the store holds {}% of its capacity ({} of {} bytes)",
                percent(o.live_bytes, o.capacity_bytes),
                o.live_bytes,
                o.capacity_bytes
            ),
        ));
    }
    for d in &o.dirs {
        let used = d.total_bytes.saturating_sub(d.free_bytes);
        if d.error.is_none() && over(used, d.total_bytes, rules.fill_permille) {
            out.push(alert(
                Kind::DiskFull,
                &d.path,
                format!(
                    "{} is {}% full ({} bytes free)",
                    d.path,
                    percent(used, d.total_bytes),
                    d.free_bytes
                ),
            ));
        }
    }
    for d in &o.dirs {
        if let Some(e) = &d.error {
            out.push(alert(
                Kind::DataDirFailing,
                &d.path,
                format!("{} fails a write-sync-read probe: {e}", d.path),
            ));
        }
    }
    out.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    out
}

/// Samples kept for the dashboard's charts (at one a look, 10 s apart by default: 4 hours).
const SAMPLES_KEPT: usize = 1440;

/// The store and traffic at one look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    pub live_bytes: u64,
    /// Totals since the host started.
    pub put_bytes: u64,
    pub get_bytes: u64,
    /// MASPC its deals paid it so far (storage and downloads), as the chain said at the
    /// last look that reached it.
    pub earned_maspc: u64,
}

/// The chain's view of this host at the last look that reached it.
#[derive(Clone, Debug)]
pub struct ChainSnapshot {
    pub at_ms: u64,
    pub status: api::ChainStatus,
    pub account: api::AccountView,
    /// Every deal this host holds or held, as `deals_of` lists them.
    pub deals: Vec<api::DealView>,
    pub challenge: Option<api::ChallengeView>,
    /// The deposit the ledger requires for the bytes of the open deals.
    pub deposit_needed: u64,
}

#[derive(Debug, Default)]
struct State {
    chain: Option<ChainSnapshot>,
    samples: VecDeque<Sample>,
}

/// What the watcher saw: the alerts (active, dismissed, recent events), the chain's view
/// of the host and the samples, shared by the watcher, the control plane, the metrics and
/// the dashboard.
#[derive(Debug, Default)]
pub struct Watch {
    pub alerts: api::alerts::Tracker<Kind>,
    state: Mutex<State>,
}

impl Watch {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_chain(&self, c: ChainSnapshot) {
        self.lock().chain = Some(c);
    }

    /// The last look at the chain that reached it, if any did.
    pub fn chain(&self) -> Option<ChainSnapshot> {
        self.lock().chain.clone()
    }

    pub fn push_sample(&self, s: Sample) {
        let mut st = self.lock();
        if st.samples.len() == SAMPLES_KEPT {
            st.samples.pop_front();
        }
        st.samples.push_back(s);
    }

    /// Oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().copied().collect()
    }

    /// The `mspace_host_alert` gauge: 1 for each active alert, 0 for every kind not
    /// active, labelled by kind and severity.
    pub fn render_metrics(&self, out: &mut String) {
        self.alerts.render_metrics(
            "mspace_host_alert",
            "Alerts the host raises (1 while active), by kind and severity.",
            out,
        );
    }
}

/// What [`run`] watches and where it reports.
#[derive(Clone)]
pub struct Watcher {
    pub engine: Arc<Engine>,
    pub dirs: Vec<PathBuf>,
    pub chain: Vec<String>,
    pub host_key: [u8; 32],
    pub watch: Arc<Watch>,
    /// The data plane's counters (the samples' traffic).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `http://host:port/path` to POST each event to, as JSON.
    pub webhook: Option<String>,
    pub every: Duration,
    pub rules: Rules,
    /// The ledger's deposit rule for a host storing this many bytes.
    pub deposit_for: fn(u64) -> u64,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("dirs", &self.dirs)
            .field("chain", &self.chain)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// The size and the free bytes (for unprivileged writers) of `dir`'s file system.
pub fn fs_space(dir: &std::path::Path) -> Result<(u64, u64), String> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statvfs: {e}"))?;
    Ok((
        st.blocks().saturating_mul(st.fragment_size()),
        st.blocks_available().saturating_mul(st.fragment_size()),
    ))
}

/// A data directory's file system figures and a small write, sync, read and removal.
fn probe_dir(dir: &std::path::Path) -> DirSeen {
    let path = dir.display().to_string();
    let mut seen = DirSeen {
        path,
        ..DirSeen::default()
    };
    match fs_space(dir) {
        Ok((total, free)) => (seen.total_bytes, seen.free_bytes) = (total, free),
        Err(e) => {
            seen.error = Some(e);
            return seen;
        }
    }
    let file = dir.join(".mspace-probe");
    let probe = || -> std::io::Result<()> {
        use std::io::{Read, Write};
        let stamp = now_ms().to_le_bytes();
        let mut f = std::fs::File::create(&file)?;
        f.write_all(&stamp)?;
        f.sync_all()?;
        let mut back = Vec::new();
        std::fs::File::open(&file)?.read_to_end(&mut back)?;
        std::fs::remove_file(&file)?;
        if back != stamp {
            return Err(std::io::Error::other("read back other bytes than written"));
        }
        Ok(())
    };
    if let Err(e) = probe() {
        seen.error = Some(e.to_string());
    }
    seen
}

/// What the chain says about the host; `last_tip` remembers when each tip was first seen.
async fn observe_chain(
    client: &mut Option<ChainClient>,
    addrs: &[String],
    key: AccountId,
    last_tip: &mut (u64, u64),
    deposit_for: fn(u64) -> u64,
    watch: &Watch,
) -> ChainState {
    if addrs.is_empty() {
        return ChainState::NotFollowed;
    }
    if client.is_none() {
        match ChainClient::connect(addrs).await {
            Ok(c) => *client = Some(c),
            Err(e) => return ChainState::Unreachable(e.to_string()),
        }
    }
    let Some(c) = client.as_mut() else {
        return ChainState::Unreachable("no client".into());
    };
    let read = async {
        let status = c.status().await?;
        let account = c.account(key).await?;
        let deals = c.deals_of(key, false).await?;
        let challenge = c.challenge(key).await?;
        Ok::<_, api::chain::ChainError>((status, account, deals, challenge))
    };
    let (status, account, deals, challenge) = match read.await {
        Ok(r) => r,
        Err(e) => {
            *client = None;
            return ChainState::Unreachable(e.to_string());
        }
    };
    if status.height != last_tip.0 {
        *last_tip = (status.height, now_ms());
    }
    let host_hex = data_encoding::HEXLOWER.encode(&key.0);
    let hosted: Vec<api::DealView> = deals.into_iter().filter(|d| d.host == host_hex).collect();
    let mine: Vec<&api::DealView> = hosted.iter().filter(|d| d.stage.is_open()).collect();
    let stored_bytes: u64 = mine.iter().map(|d| d.bytes).sum();
    let deposit_needed = deposit_for(stored_bytes);
    let seen = ChainState::Seen(ChainSeen {
        height: status.height,
        tip_ms: status.timestamp_ms,
        tip_seen_ms: last_tip.1,
        deposit: account
            .registrations
            .iter()
            .find(|r| r.role == "host")
            .map(|r| r.deposit),
        deposit_needed,
        stored_bytes,
        missed: mine
            .iter()
            .filter(|d| d.missed > 0)
            .map(|d| (d.id.clone(), d.missed))
            .collect(),
        challenge: challenge
            .as_ref()
            .map(|ch| (ch.period, ch.due, ch.answered)),
    });
    watch.set_chain(ChainSnapshot {
        at_ms: now_ms(),
        status,
        account,
        deals: hosted,
        challenge,
        deposit_needed,
    });
    seen
}

/// Observes every `w.every` until `stop` turns true; updates `w.alerts` and posts each
/// raise and clear to the webhook (a failed post is logged, not retried).
pub async fn run(w: Watcher, mut stop: watch::Receiver<bool>) {
    let key = AccountId(w.host_key);
    let host_hex = data_encoding::HEXLOWER.encode(&w.host_key);
    let mut client = None;
    let mut last_tip = (u64::MAX, 0);
    loop {
        let (live_bytes, capacity_bytes) = match w.engine.stats() {
            Ok(s) => (s.live_bytes, s.capacity_bytes),
            Err(_) => (0, u64::MAX),
        };
        let dirs = w.dirs.clone();
        let dirs = tokio::task::spawn_blocking(move || dirs.iter().map(|d| probe_dir(d)).collect())
            .await
            .unwrap_or_default();
        let chain = observe_chain(
            &mut client,
            &w.chain,
            key,
            &mut last_tip,
            w.deposit_for,
            &w.watch,
        )
        .await;
        w.watch.push_sample(Sample {
            at_ms: now_ms(),
            live_bytes,
            put_bytes: w
                .metrics
                .put_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            get_bytes: w
                .metrics
                .get_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            earned_maspc: w.watch.chain().map_or(0, |c| {
                c.deals.iter().map(|d| d.paid + d.download_income).sum()
            }),
        });
        let o = Observation {
            live_bytes,
            capacity_bytes,
            dirs,
            chain,
        };
        let events = w.watch.alerts.update(evaluate(&o, &w.rules), now_ms());
        api::alerts::report(&events, w.webhook.as_deref(), "host", &host_hex).await;
        if !api::alerts::next_look(w.every, &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Observation {
        Observation {
            live_bytes: 10,
            capacity_bytes: 1000,
            dirs: vec![DirSeen {
                path: "/d".into(),
                total_bytes: 1000,
                free_bytes: 500,
                error: None,
            }],
            chain: ChainState::Seen(ChainSeen {
                height: 100,
                tip_ms: 1_000_000,
                tip_seen_ms: 1_000_400,
                deposit: Some(5000),
                deposit_needed: 1000,
                stored_bytes: 10,
                missed: vec![],
                challenge: Some((4, 120, false)),
            }),
        }
    }

    fn kinds(o: &Observation) -> Vec<(Kind, Severity)> {
        evaluate(o, &Rules::default())
            .iter()
            .map(|a| (a.kind, a.severity))
            .collect()
    }

    #[test]
    fn json_names_are_the_metric_labels() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            let s = k.severity();
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }

    #[test]
    fn a_healthy_host_has_no_alerts() {
        assert!(kinds(&quiet()).is_empty());
        let mut o = quiet();
        o.chain = ChainState::NotFollowed;
        assert!(kinds(&o).is_empty());
    }

    #[test]
    fn each_rule_raises_its_alert_at_its_threshold() {
        let seen = |o: &mut Observation| match &mut o.chain {
            ChainState::Seen(c) => c.clone(),
            _ => unreachable!(),
        };
        let with = |f: &dyn Fn(&mut ChainSeen)| {
            let mut o = quiet();
            let mut c = seen(&mut o);
            f(&mut c);
            o.chain = ChainState::Seen(c);
            o
        };
        assert_eq!(
            kinds(&with(&|c| c.deposit = Some(999))),
            [(Kind::DepositLow, Severity::Critical)]
        );
        assert!(kinds(&with(&|c| c.deposit = Some(1000))).is_empty());
        assert_eq!(
            kinds(&with(&|c| c.deposit = None)),
            [(Kind::DepositLow, Severity::Critical)]
        );
        assert_eq!(
            kinds(&with(
                &|c| c.missed = vec![("ab".into(), 1), ("cd".into(), 2)]
            )),
            [
                (Kind::ProofMissed, Severity::Critical),
                (Kind::ProofMissed, Severity::Critical)
            ]
        );
        // Due at 120: 5 blocks before it is the alert's edge; answered, none.
        assert_eq!(
            kinds(&with(&|c| c.height = 115)),
            [(Kind::ProofDue, Severity::Critical)]
        );
        assert!(kinds(&with(&|c| c.height = 114)).is_empty());
        assert!(kinds(&with(&|c| {
            c.height = 119;
            c.challenge = Some((4, 120, true));
        }))
        .is_empty());
        assert_eq!(
            kinds(&with(&|c| c.tip_seen_ms = c.tip_ms + 30_001)),
            [(Kind::ClockSkew, Severity::Warning)]
        );
        assert_eq!(
            kinds(&with(&|c| c.tip_seen_ms = c.tip_ms - 30_001)),
            [(Kind::ClockSkew, Severity::Warning)]
        );
        assert!(kinds(&with(&|c| c.tip_seen_ms = c.tip_ms + 30_000)).is_empty());

        let mut o = quiet();
        o.chain = ChainState::Unreachable("refused".into());
        assert_eq!(kinds(&o), [(Kind::ChainUnreachable, Severity::Critical)]);
        let mut o = quiet();
        o.live_bytes = 901;
        assert_eq!(kinds(&o), [(Kind::CapacityHigh, Severity::Warning)]);
        o.live_bytes = 900;
        assert!(kinds(&o).is_empty());
        o.capacity_bytes = u64::MAX;
        o.live_bytes = u64::MAX - 1;
        assert!(kinds(&o).is_empty(), "no capacity set: no capacity alert");
        let mut o = quiet();
        o.dirs[0].free_bytes = 99;
        assert_eq!(kinds(&o), [(Kind::DiskFull, Severity::Warning)]);
        o.dirs[0].error = Some("EIO".into());
        assert_eq!(kinds(&o), [(Kind::DataDirFailing, Severity::Critical)]);
    }

    #[test]
    fn the_gauge_names_every_host_kind() {
        let w = Watch::default();
        w.alerts
            .update(vec![alert(Kind::DiskFull, "/d", "91%".into())], 10);
        let mut m = String::new();
        w.render_metrics(&mut m);
        assert!(m.contains("mspace_host_alert{kind=\"disk_full\",severity=\"warning\"} 1"));
        assert!(m.contains("mspace_host_alert{kind=\"chain_unreachable\",severity=\"critical\"} 0"));
        assert_eq!(m.matches("mspace_host_alert{").count(), Kind::ALL.len());
    }
}
