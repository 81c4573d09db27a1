//! The miner's alerts: a validator that falls behind, sees no new block, loses its peers
//! or misses votes earns nothing for its stake and weakens the chain. Shown by `mspace
//! chain status`, exported as the `mspace_miner_alert{kind,severity}` gauge and POSTed to
//! `[alerts] webhook` when raised and cleared (the shared parts are `api::alerts`).
//!
//! [`evaluate`] is a pure function of what the miner observed ([`Observation`]); [`run`]
//! observes every `[alerts] every_secs`: its own tip and votes (`consensus::node`), the
//! peers its network is connected to, and the heights other miners' control planes report
//! (`relay_to`).

use std::sync::Arc;
use std::time::Duration;

use api::alerts::{AlertKind, Severity, Tracker};
use api::{miner_client, MinerApiClient};
use consensus::node::{NodeHandle, NodeState, Votes};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Another miner reports a height this one has not reached by `behind_blocks`.
    FallingBehind,
    /// No new block for `stall_secs`: the chain stopped, or this miner is cut off.
    NoNewBlocks,
    /// Fewer peers connected than configured.
    PeersLost,
    /// This validator's signature is missing from more recent commits than allowed.
    MissedVotes,
}

impl AlertKind for Kind {
    const ALL: &'static [Kind] = &[
        Kind::FallingBehind,
        Kind::NoNewBlocks,
        Kind::PeersLost,
        Kind::MissedVotes,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::FallingBehind => api::alerts::FALLING_BEHIND,
            Kind::NoNewBlocks => api::alerts::NO_NEW_BLOCKS,
            Kind::PeersLost => "peers_lost",
            Kind::MissedVotes => "missed_votes",
        }
    }

    fn severity(self) -> Severity {
        match self {
            Kind::FallingBehind | Kind::NoNewBlocks => Severity::Critical,
            Kind::PeersLost | Kind::MissedVotes => Severity::Warning,
        }
    }
}

pub type Alert = api::alerts::Alert<Kind>;

/// Thresholds, from `[alerts]` of miner.toml.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Seconds between looks.
    pub every_secs: u64,
    /// `http://host:port/path` each raised and cleared alert is POSTed to as JSON.
    pub webhook: Option<String>,
    /// Blocks another miner may be ahead before this one is falling behind.
    pub behind_blocks: u64,
    /// Seconds without a new block that raise `no_new_blocks`.
    pub stall_secs: u64,
    /// Of the last heights this miner was a validator at (up to 100), how many commit
    /// certificates may lack its signature before `missed_votes`.
    pub missed_votes: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            every_secs: 10,
            webhook: None,
            behind_blocks: 10,
            stall_secs: 30,
            missed_votes: 10,
        }
    }
}

impl AlertConfig {
    /// The rules a loaded file must keep, said as the refusal.
    pub fn check(&self) -> Result<(), String> {
        if self.every_secs == 0 || self.stall_secs == 0 || self.behind_blocks == 0 {
            return Err("[alerts]: every_secs, stall_secs and behind_blocks at least 1".into());
        }
        if self
            .webhook
            .as_ref()
            .is_some_and(|w| !w.starts_with("http://"))
        {
            return Err(
                "[alerts] webhook: an http:// URL (put a local relay in front of https)".into(),
            );
        }
        Ok(())
    }
}

/// Everything [`evaluate`] looks at.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub now_ms: u64,
    pub height: u64,
    /// When this miner first saw its current tip (its clock, ms).
    pub tip_seen_ms: u64,
    /// The p2p peers in its configuration.
    pub peers_configured: usize,
    /// The monikers of the peers connected now; None when the network does not answer.
    pub peers_connected: Option<Vec<String>>,
    /// (control address, the height it reports) of each other miner that answered.
    pub others: Vec<(String, u64)>,
    pub votes: Votes,
}

/// The alerts that hold for `o`, in [`Kind`] order.
pub fn evaluate(o: &Observation, rules: &AlertConfig) -> Vec<Alert> {
    let mut out = Vec::new();
    if let Some((addr, ahead)) = o.others.iter().max_by_key(|(_, h)| *h) {
        if ahead.saturating_sub(o.height) >= rules.behind_blocks {
            out.push(Alert::new(
                Kind::FallingBehind,
                "",
                format!(
                    "at height {}, {} block(s) behind the miner at {addr} ({ahead}): it cannot vote until it catches up",
                    o.height,
                    ahead - o.height
                ),
            ));
        }
    }
    let quiet_ms = o.now_ms.saturating_sub(o.tip_seen_ms);
    if quiet_ms > rules.stall_secs.saturating_mul(1000) {
        out.push(Alert::new(
            Kind::NoNewBlocks,
            "",
            format!(
                "no new block for {} s (height {}): the chain is stopped or this miner is cut off",
                quiet_ms / 1000,
                o.height
            ),
        ));
    }
    match &o.peers_connected {
        None => out.push(Alert::new(
            Kind::PeersLost,
            "",
            "the network layer does not answer: peers unknown".into(),
        )),
        Some(p) if p.len() < o.peers_configured => out.push(Alert::new(
            Kind::PeersLost,
            "",
            format!(
                "connected to {} of {} configured peers{}",
                p.len(),
                o.peers_configured,
                if p.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.join(", "))
                }
            ),
        )),
        Some(_) => {}
    }
    if o.votes.missed > rules.missed_votes {
        out.push(Alert::new(
            Kind::MissedVotes,
            "",
            format!(
                "this validator's signature is missing from {} of the last {} commits (last at height {})",
                o.votes.missed,
                o.votes.heights,
                o.votes.last_missed.unwrap_or(0)
            ),
        ));
    }
    out
}

/// What [`run`] watches and where it reports.
#[derive(Clone, Debug)]
pub struct Watcher {
    pub node: NodeHandle,
    pub alerts: Arc<Tracker<Kind>>,
    /// The configured p2p peers' count.
    pub peers_configured: usize,
    /// Other miners' control addresses (`relay_to`), asked for their height.
    pub others: Vec<String>,
    pub config: AlertConfig,
    /// This miner's key in hex (the webhook's `miner` field).
    pub key_hex: String,
}

/// The heights that the miners at `addrs` report; one that does not answer in 2 s is left
/// out (and dialled again at the next look).
async fn others_heights(
    addrs: &[String],
    clients: &mut [Option<MinerApiClient>],
) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (addr, client) in addrs.iter().zip(clients.iter_mut()) {
        let ask = async {
            if client.is_none() {
                *client = miner_client(addr).await.ok();
            }
            let c = client.as_ref()?;
            c.status(tarpc::context::current())
                .await
                .ok()?
                .ok()
                .map(|s| s.height)
        };
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Some(h)) => out.push((addr.clone(), h)),
            _ => *client = None,
        }
    }
    out
}

/// Observes every `every_secs` until `stop` turns true; updates `alerts` and reports what
/// was raised and cleared.
pub async fn run(w: Watcher, mut stop: watch::Receiver<bool>) {
    let mut clients: Vec<Option<MinerApiClient>> = vec![None; w.others.len()];
    let mut tip = (u64::MAX, 0);
    loop {
        let Ok((height, votes)) = w
            .node
            .query(|s: &NodeState| (s.ledger().height, s.votes()))
            .await
        else {
            return;
        };
        let now_ms = api::alerts::now_ms();
        if height != tip.0 {
            tip = (height, now_ms);
        }
        let o = Observation {
            now_ms,
            height,
            tip_seen_ms: tip.1,
            peers_configured: w.peers_configured,
            peers_connected: w.node.connected_peers().await,
            others: others_heights(&w.others, &mut clients).await,
            votes,
        };
        let events = w
            .alerts
            .update(evaluate(&o, &w.config), api::alerts::now_ms());
        api::alerts::report(&events, w.config.webhook.as_deref(), "miner", &w.key_hex).await;
        if !api::alerts::next_look(Duration::from_secs(w.config.every_secs), &mut stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Observation {
        Observation {
            now_ms: 100_000,
            height: 50,
            tip_seen_ms: 99_000,
            peers_configured: 3,
            peers_connected: Some(vec!["miner1".into(), "miner2".into(), "miner3".into()]),
            others: vec![("127.0.0.1:1".into(), 51), ("127.0.0.1:2".into(), 50)],
            votes: Votes {
                heights: 50,
                missed: 2,
                last_missed: Some(40),
            },
        }
    }

    fn kinds(o: &Observation) -> Vec<(Kind, Severity)> {
        evaluate(o, &AlertConfig::default())
            .iter()
            .map(|a| (a.kind, a.severity))
            .collect()
    }

    #[test]
    fn json_names_are_the_metric_labels() {
        for k in Kind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
            assert_eq!(Kind::parse(k.name()), Ok(*k));
        }
    }

    #[test]
    fn a_healthy_miner_has_no_alerts() {
        assert!(kinds(&quiet()).is_empty());
        let mut o = quiet();
        o.others.clear();
        o.peers_configured = 0;
        o.peers_connected = Some(vec![]);
        assert!(kinds(&o).is_empty(), "a lone validator");
    }

    #[test]
    fn each_rule_raises_its_alert_at_its_threshold() {
        let mut o = quiet();
        o.others[1].1 = 59;
        assert!(kinds(&o).is_empty(), "9 blocks behind");
        o.others[1].1 = 60;
        assert_eq!(kinds(&o), [(Kind::FallingBehind, Severity::Critical)]);
        let a = evaluate(&o, &AlertConfig::default());
        assert!(
            a[0].message.contains("127.0.0.1:2 (60)"),
            "{}",
            a[0].message
        );

        let mut o = quiet();
        o.now_ms = o.tip_seen_ms + 30_000;
        assert!(kinds(&o).is_empty());
        o.now_ms += 1;
        assert_eq!(kinds(&o), [(Kind::NoNewBlocks, Severity::Critical)]);

        let mut o = quiet();
        o.peers_connected = Some(vec!["miner2".into(), "miner3".into()]);
        assert_eq!(kinds(&o), [(Kind::PeersLost, Severity::Warning)]);
        let a = evaluate(&o, &AlertConfig::default());
        assert_eq!(
            a[0].message,
            "connected to 2 of 3 configured peers (miner2, miner3)"
        );
        o.peers_connected = None;
        assert_eq!(kinds(&o), [(Kind::PeersLost, Severity::Warning)]);

        let mut o = quiet();
        o.votes.missed = 10;
        assert!(kinds(&o).is_empty());
        o.votes.missed = 11;
        assert_eq!(kinds(&o), [(Kind::MissedVotes, Severity::Warning)]);
    }

    #[test]
    fn a_bad_alerts_table_is_refused_saying_why() {
        let ok = AlertConfig::default();
        assert!(ok.check().is_ok());
        let e = AlertConfig {
            every_secs: 0,
            ..ok.clone()
        };
        assert!(e.check().unwrap_err().contains("every_secs"));
        let e = AlertConfig {
            webhook: Some("https://x/".into()),
            ..ok
        };
        assert!(e.check().unwrap_err().contains("http://"));
    }
}
