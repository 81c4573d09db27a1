//! The host's configuration file (TOML) and its commented default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Limits;
use crate::NetError;

/// `mspace host --config <FILE>`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// One volume per directory (a disk each, ideally).
    pub data_dirs: Vec<PathBuf>,
    /// Where the data plane listens.
    pub listen: String,
    /// The address put into links, if clients reach the host by another name.
    #[serde(default)]
    pub public_addr: Option<String>,
    /// Prometheus metrics (`GET /metrics`); none if unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The control plane (tarpc): status, offers, link minting; none if unset.
    #[serde(default)]
    pub control_listen: Option<String>,
    /// Where the dashboard is served (HTML; its actions need `control_token`), if anywhere.
    #[serde(default)]
    pub dashboard_listen: Option<String>,
    /// The secret that authorizes link minting over the control plane; none disables it.
    #[serde(default)]
    pub control_token: Option<String>,
    /// The price this host asks, in MASPC base units per GiB per day.
    #[serde(default = "default_price")]
    pub price_per_gib_day: u64,
    /// The least it asks whatever its fill.
    #[serde(default)]
    pub price_floor: u64,
    /// How much dearer it is when full than when empty, in percent of the base price
    /// (`market::pricing`; needs `capacity_bytes`).
    #[serde(default)]
    pub price_surge_percent: u64,
    /// What a receiver pays this host per download, in MASPC per started GiB of the
    /// file's sealed bytes (on top of the sender's download fee).
    #[serde(default = "default_egress_price")]
    pub egress_price_per_gib: u64,
    /// Longest storage the host offers, in days.
    #[serde(default = "default_max_days")]
    pub max_days: u64,
    /// Miners' control addresses: where the host submits its transactions and reads its
    /// registration; none for a host off the chain.
    #[serde(default)]
    pub chain: Vec<String>,
    /// Exchanges' control addresses: the host keeps a standing ask on each (its price,
    /// room, days and region, signed) so senders matched there come to it. Needs `chain`
    /// and `control_listen` (senders ask the control plane for the signed offer).
    #[serde(default)]
    pub exchanges: Vec<String>,
    /// Keep a standing ask on each of `exchanges`.
    #[serde(default = "default_true")]
    pub post_asks: bool,
    /// Also watch each of `exchanges` for the requests it forwards and bid on each one
    /// (or pass) at the pricing policy's price.
    #[serde(default)]
    pub bid_on_requests: bool,
    /// Where the host is, as its asks say (lowercase letters, digits, '-'); empty: unsaid.
    #[serde(default)]
    pub region: String,
    /// The control address written into asks, if senders reach the control plane by
    /// another name than `control_listen` (a public name, a NAT's address).
    #[serde(default)]
    pub public_control_addr: Option<String>,
    /// The most commission the host pays an exchange that matched a sender to it, in
    /// thousandths of what it earns from the deal: exchanges asking more get no ask.
    #[serde(default = "default_commission_max")]
    pub commission_max_permille: u16,
    /// The host's ed25519 key (created by `mspace host init`).
    pub key_file: PathBuf,
    /// Link usage and uploaded files' chunk lists.
    pub state_dir: PathBuf,
    /// Engine shards: 0 for one per core.
    #[serde(default)]
    pub shards: usize,
    /// Bytes the store may use in all, 0 for no limit but the disks'.
    #[serde(default)]
    pub capacity_bytes: u64,
    /// MiB of chunk outboards each shard keeps in memory, so that a storage challenge reads
    /// only its leaf's group (`EngineConfig::outboard_cache_bytes`): about 16,000 MiB cover
    /// every outboard of 1 TB of chunks.
    #[serde(default = "default_outboard_cache_mib")]
    pub outboard_cache_mib: u64,
    /// Days a chunk uploaded with a link is kept (until deals set it).
    #[serde(default = "default_retention")]
    pub retention_days: u64,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub alerts: AlertConfig,
}

/// `[alerts]` of host.toml: how often the host looks, its thresholds, and where it posts.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// Seconds between looks (the store, each data directory's probe, the chain).
    pub every_secs: u64,
    /// `http://host:port/path` each raised and cleared alert is POSTed to as JSON.
    pub webhook: Option<String>,
    /// Capacity or disk fill that raises a warning, in thousandths.
    pub fill_permille: u64,
    /// Blocks before an unanswered challenge closes that raise an alert.
    pub proof_due_blocks: u64,
    /// Clock difference against the chain's block times that raises a warning, ms.
    pub clock_skew_ms: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        let r = crate::alerts::Rules::default();
        AlertConfig {
            every_secs: 10,
            webhook: None,
            fill_permille: r.fill_permille,
            proof_due_blocks: r.proof_due_blocks,
            clock_skew_ms: r.clock_skew_ms,
        }
    }
}

impl AlertConfig {
    pub fn rules(&self) -> crate::alerts::Rules {
        crate::alerts::Rules {
            fill_permille: self.fill_permille,
            proof_due_blocks: self.proof_due_blocks,
            clock_skew_ms: self.clock_skew_ms,
        }
    }
}

fn default_commission_max() -> u16 {
    100
}

fn default_outboard_cache_mib() -> u64 {
    64
}

fn default_retention() -> u64 {
    30
}

fn default_max_days() -> u64 {
    365
}

fn default_true() -> bool {
    true
}

fn default_price() -> u64 {
    10
}

fn default_egress_price() -> u64 {
    1
}

impl HostConfig {
    /// Reads and checks a config file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<HostConfig, NetError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NetError::Config(format!("read {}: {e}", path.display())))?;
        let mut cfg: HostConfig = api::config::parse_with_env(&text, "host")
            .map_err(|e| NetError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        cfg.data_dirs.iter_mut().for_each(abs);
        abs(&mut cfg.key_file);
        abs(&mut cfg.state_dir);
        cfg.check()?;
        Ok(cfg)
    }

    pub fn check(&self) -> Result<(), NetError> {
        if self.data_dirs.is_empty() {
            return Err(NetError::Config(
                "data_dirs is empty: name at least one".into(),
            ));
        }
        if self.data_dirs.len() > 255 {
            return Err(NetError::Config("at most 255 data_dirs".into()));
        }
        if self.control_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(NetError::Config(
                "control_token must be at least 16 characters (or absent, which disables link minting over the control plane)".into(),
            ));
        }
        if self.alerts.every_secs == 0 || self.alerts.fill_permille > 1000 {
            return Err(NetError::Config(
                "[alerts]: every_secs at least 1, fill_permille at most 1000".into(),
            ));
        }
        if self
            .alerts
            .webhook
            .as_ref()
            .is_some_and(|w| !w.starts_with("http://"))
        {
            return Err(NetError::Config(
                "[alerts] webhook: an http:// URL (put a local relay in front of https)".into(),
            ));
        }
        if !proto::market::region_ok(&self.region) {
            return Err(NetError::Config(format!(
                "region {:?}: at most {} lowercase letters, digits and '-'",
                self.region,
                proto::market::REGION_MAX
            )));
        }
        if !self.exchanges.is_empty() && !self.post_asks && !self.bid_on_requests {
            return Err(NetError::Config(
                "exchanges: with post_asks and bid_on_requests both false the host takes no part there".into(),
            ));
        }
        if !self.exchanges.is_empty() && (self.chain.is_empty() || self.control_listen.is_none()) {
            return Err(NetError::Config(
                "exchanges need chain (asks are backed by the host's deposit) and control_listen (where matched senders ask for offers)".into(),
            ));
        }
        let ask_addr = self
            .public_control_addr
            .as_deref()
            .or(self.control_listen.as_deref())
            .unwrap_or("");
        if ask_addr.len() > proto::market::ADDR_MAX {
            return Err(NetError::Config(format!(
                "the control address asks carry is longer than {} bytes",
                proto::market::ADDR_MAX
            )));
        }
        if self.commission_max_permille > proto::tx::COMMISSION_PERMILLE_MAX {
            return Err(NetError::Config(format!(
                "commission_max_permille {}: at most 1000 (all of what the host earns)",
                self.commission_max_permille
            )));
        }
        if self.max_days == 0 || self.max_days > u64::from(u32::MAX) {
            return Err(NetError::Config(format!(
                "max_days {}: 1 to {}",
                self.max_days,
                u32::MAX
            )));
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.inflight_requests == 0
            || l.inflight_reads == 0
            || l.min_body_rate == 0
            || l.hello_secs == 0
            || l.idle_secs == 0
            || l.inflight_bytes < u64::from(proto::CHUNK_BYTES_MAX + proto::TAG_BYTES + 36)
            || l.memory_bytes < l.inflight_bytes
        {
            return Err(NetError::Config(format!(
                "limits must be positive, inflight_bytes at least one largest chunk ({} bytes), memory_bytes at least inflight_bytes",
                proto::CHUNK_BYTES_MAX + proto::TAG_BYTES + 36
            )));
        }
        Ok(())
    }

    /// The pricing policy of these keys.
    pub fn pricing(&self) -> market::pricing::Pricing {
        market::pricing::Pricing {
            base: self.price_per_gib_day,
            floor: self.price_floor,
            surge_percent: self.price_surge_percent,
        }
    }

    /// The address links name.
    pub fn link_addr(&self) -> &str {
        self.public_addr.as_deref().unwrap_or(&self.listen)
    }

    /// `text` (a [`HostConfig::default_text`]) with the dashboard served on `addr`.
    pub fn with_dashboard(text: &str, addr: &str) -> String {
        text.replace(
            "# dashboard_listen = \"127.0.0.1:9401\"",
            &format!("dashboard_listen = {addr:?}"),
        )
    }

    /// The commented default `mspace host init` writes.
    pub fn default_text(
        data_dir: &Path,
        listen: &str,
        control_listen: &str,
        control_token: &str,
        chain: &[String],
        exchanges: &[String],
        price_per_gib_day: u64,
    ) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (chain, exchanges) = (list(chain), list(exchanges));
        format!(
            r#"# Market.space host configuration (mspace host --config <this file>).
# Relative paths are taken from this file's directory.

# Where chunks live: one volume per directory, ideally one NVMe disk each.
data_dirs = [{data:?}]

# The data plane: clients and proxies connect here with links this host signed.
listen = "{listen}"

# The address written into links, if clients reach this host by another name
# (a public DNS name, a NAT's address). Defaults to `listen`.
# public_addr = "host.example.net:7400"

# Prometheus metrics at http://<metrics_listen>/metrics. Keep it off the public interface.
# metrics_listen = "127.0.0.1:9400"

# The dashboard (a web page: storage, traffic, deals, earnings, deposit, proofs, alerts;
# setting the price and dismissing an alert need control_token). Keep it off the public
# interface.
# dashboard_listen = "127.0.0.1:9401"

# The control plane (tarpc): status, storage and download offers, and link minting for
# whoever holds control_token. Keep both off the public interface.
control_listen = "{control_listen}"
control_token = "{control_token}"

# The price this host asks, in MASPC base units per GiB per day, when empty; it rises by
# up to price_surge_percent as the store fills (out of capacity_bytes), and never goes
# below price_floor.
price_per_gib_day = {price_per_gib_day}
price_floor = 0
price_surge_percent = 0
# What a receiver pays this host to download a file, in MASPC per started GiB (on top of
# the download fee the file's sender set); 0 makes files whose sender asks no fee free.
egress_price_per_gib = 1
# The longest storage it offers, in days.
max_days = 365

# Miners' control planes (host:port): `mspace host register` submits through the first
# that answers, and the host reads its registration there before it offers storage.
# Empty: the host is off the chain and offers on its own terms.
chain = [{chain}]

# Exchanges (host:port) the host keeps a standing ask on (price, room, days, region;
# signed, re-posted every 15 s), so senders matched there come to its control plane.
exchanges = [{exchanges}]
# Keep a standing ask on each (true), and/or watch each for the requests it forwards and
# bid on them one by one, or pass (bid_on_requests; the exchange waits up to its
# bid_window_ms for the bids of the hosts watching).
post_asks = true
bid_on_requests = false
# Where the host is, as its asks say (e.g. "eu-west"); empty: unsaid.
region = ""
# The control address the asks give senders, if they reach it by another name than
# control_listen (which must then listen where they can reach it).
# public_control_addr = "host.example.net:7401"
# The most commission this host pays an exchange that matched a sender to it, in
# thousandths of what it earns from the deal (the exchange states its own; one asking
# more gets no ask). The sender's payment carries it and the chain pays it.
commission_max_permille = 100

# The host's ed25519 key: links are signed with it. Keep it secret, keep a backup.
key_file = "host.key"

# Link usage and uploaded files' chunk lists.
state_dir = "host-state"

# Engine shards (threads, one per core): 0 for one per core.
shards = 0

# Bytes the store may use in all; 0 for the disks' own limit.
capacity_bytes = 0

# MiB of chunk outboards (1.56% of each chunk) each shard keeps in memory, so that a
# storage challenge reads only its leaf's 4 KiB group: one disk read instead of two.
# About 16,000 MiB cover every outboard of 1 TB of chunks.
# outboard_cache_mib = 64

# Days a chunk uploaded with a link is kept.
retention_days = 30

[limits]
# Connections served at once.
max_connections = 1024
# Seconds a new connection has to present its link.
hello_secs = 10
# Seconds a connection may stay idle.
idle_secs = 120
# A frame's body must arrive within body_base_secs plus its length at min_body_rate
# bytes per second; slower peers are disconnected.
min_body_rate = 262144
body_base_secs = 10
# Per connection: requests, request bytes and reads in flight.
inflight_requests = 64
inflight_bytes = 268435456
inflight_reads = 16
# All connections together: bytes of requests and replies in memory.
memory_bytes = 2147483648

[alerts]
# The host raises alerts before money is at risk (deposit below what its deals need, a
# proof missed or about to close unanswered, the chain unreachable, a data directory
# failing or full, capacity over fill_permille, clock skew against the chain): in
# `mspace host status`, on /metrics (mspace_host_alert) and POSTed here as JSON.
every_secs = 10
# webhook = "http://127.0.0.1:9900/alerts"
fill_permille = 900
proof_due_blocks = 5
clock_skew_ms = 30000
"#,
            data = data_dir.display().to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_default_file_loads_and_bad_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("host.toml");
        std::fs::write(
            &p,
            HostConfig::default_text(
                Path::new("data"),
                "127.0.0.1:7400",
                "127.0.0.1:7401",
                "0123456789abcdef0123456789abcdef",
                &["127.0.0.1:27001".to_string()],
                &["127.0.0.1:28001".to_string()],
                12,
            ),
        )
        .unwrap();
        let cfg = HostConfig::load(&p).unwrap();
        assert_eq!(cfg.data_dirs, vec![dir.path().join("data")]);
        assert_eq!(cfg.alerts, AlertConfig::default());
        assert_eq!(cfg.dashboard_listen, None);
        let with = HostConfig::with_dashboard(&std::fs::read_to_string(&p).unwrap(), "127.0.0.1:1");
        let q = dir.path().join("dash.toml");
        std::fs::write(&q, with).unwrap();
        assert_eq!(
            HostConfig::load(&q).unwrap().dashboard_listen.as_deref(),
            Some("127.0.0.1:1")
        );
        assert_eq!(cfg.limits, Limits::default());
        assert_eq!(cfg.link_addr(), "127.0.0.1:7400");
        assert_eq!(
            (cfg.exchanges.as_slice(), cfg.price_per_gib_day),
            (&["127.0.0.1:28001".to_string()][..], 12)
        );
        // Asks need the chain behind them, and a region is a plain name.
        for (from, to, says) in [
            (
                "chain = [\"127.0.0.1:27001\"]",
                "chain = []",
                "exchanges need chain",
            ),
            (
                "region = \"\"",
                "region = \"EU West\"",
                "region \"EU West\"",
            ),
            (
                "# webhook = \"http://127.0.0.1:9900/alerts\"",
                "webhook = \"https://example.net/hook\"",
                "webhook: an http:// URL",
            ),
            (
                "fill_permille = 900",
                "fill_permille = 1001",
                "fill_permille",
            ),
        ] {
            let text = std::fs::read_to_string(&p).unwrap().replace(from, to);
            let q = dir.path().join("bad.toml");
            std::fs::write(&q, text).unwrap();
            let e = HostConfig::load(&q).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }

        let text = HostConfig::default_text(Path::new("d"), "x:1", "x:2", "short", &[], &[], 10);
        std::fs::write(&p, text).unwrap();
        let e = HostConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("control_token"), "{e}");
        std::fs::write(&p, "listen = 3").unwrap();
        assert!(HostConfig::load(&p).is_err());
        let text = HostConfig::default_text(
            Path::new("d"),
            "x:1",
            "x:2",
            "0123456789abcdef0123456789abcdef",
            &[],
            &[],
            10,
        )
        .replace("shards = 0", "sharts = 0");
        std::fs::write(&p, text).unwrap();
        let e = HostConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("sharts"), "{e}");
        let text = HostConfig::default_text(
            Path::new("d"),
            "x:1",
            "x:2",
            "0123456789abcdef0123456789abcdef",
            &[],
            &[],
            10,
        )
        .replace("inflight_reads = 16", "inflight_reads = 0");
        std::fs::write(&p, text).unwrap();
        assert!(HostConfig::load(&p).is_err());
    }
}
