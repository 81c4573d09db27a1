//! `gateway.toml`: where the gateway listens, its S3 credentials, the host it stores on
//! and its limits. Paths are relative to the configuration's folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration `mspace gateway init` writes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// `host:port` of the S3 endpoint. Keep it on loopback or a private network: the
    /// gateway holds the keys of everything it stores.
    pub listen: String,
    /// The S3 access key id clients sign with.
    pub access_key: String,
    /// A file holding the S3 secret key (one line).
    pub secret_key_file: PathBuf,
    /// The gateway's ed25519 key: the links it asks the host for are bound to it.
    pub key_file: PathBuf,
    /// Where `/metrics` is served (Prometheus text), if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The object index (redb).
    #[serde(default = "default_index")]
    pub index: PathBuf,
    /// Where the bodies of PUTs and parts are spooled while they are sealed, and each
    /// upload's journals kept while it runs.
    #[serde(default = "default_spool")]
    pub spool_dir: PathBuf,
    /// The largest object one PUT may carry, bytes (S3: 5 GiB).
    #[serde(default = "default_object_max")]
    pub max_object_bytes: u64,
    /// The largest part of a multipart upload, bytes (S3: 5 GiB).
    #[serde(default = "default_object_max")]
    pub max_part_bytes: u64,
    /// Requests served at once; more are answered 503 SlowDown (S3 clients retry).
    #[serde(default = "default_requests")]
    pub max_requests: usize,
    /// How long a request may take until its answer starts, seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Seconds between sweeps that delete what buckets' lifecycle rules expired.
    #[serde(default = "default_lifecycle")]
    pub lifecycle_every_secs: u64,
    /// Seconds a sealed file no object names any more waits before it is removed from its
    /// host: a GET that began before the delete finishes reading it.
    #[serde(default = "default_orphan_grace")]
    pub orphan_grace_secs: u64,
    /// Seconds a multipart upload may stay open: older ones are aborted by the sweep and
    /// their parts removed; a part is paid for this and two sweep periods longer than its
    /// object's days.
    #[serde(default = "default_open_upload")]
    pub open_upload_secs: u64,
    /// How long a client may take to send a request's headers, seconds.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Sealed chunk size, bytes.
    #[serde(default = "default_chunk")]
    pub chunk_bytes: u32,
    /// One host that mints links for its control token; or
    pub host: Option<HostSection>,
    /// paid storage deals on the chain, a copy on each host.
    pub deals: Option<DealSection>,
}

/// A host objects are uploaded to through links it mints for its control token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Its control plane, `host:port`.
    pub control: String,
    /// Its control token (`control_token` in its host.toml).
    pub token: String,
}

/// Objects stored as deals: the gateway's key pays each host through the chain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DealSection {
    /// Miners' control addresses.
    pub chain: Vec<String>,
    /// Hosts' control addresses: one copy (one deal) on each. Or, left empty, the hosts
    /// are matched per object through `index` or `exchanges`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Indexes of exchanges: for each object the nearest live exchange matches `copies`
    /// hosts from its book (as `mspace put --index`).
    #[serde(default)]
    pub index: Vec<String>,
    /// Exchanges asked directly, in order (after the indexes' ones, if any).
    #[serde(default)]
    pub exchanges: Vec<String>,
    /// Copies (hosts) per object when matched through the market.
    #[serde(default = "default_copies")]
    pub copies: u8,
    /// Only hosts in this region, when matched (empty: any).
    #[serde(default)]
    pub region: String,
    /// Only hosts rated at least this on the chain (0 to 1000), when matched.
    #[serde(default)]
    pub min_rating: u16,
    /// How long each object is stored, days.
    pub days: u32,
    /// Blocks of storage instead of days (a devnet with short proof periods).
    #[serde(default)]
    pub period_blocks: Option<u64>,
    /// The most paid, MASPC per GiB per day: a dearer host's offer is refused.
    #[serde(default)]
    pub max_price_per_gib_day: Option<u64>,
    /// `K/N`: store erasure shares instead of copies, one share of every chunk on each of N
    /// hosts (`hosts` lists N, or N are matched: `copies` is then ignored), any K of which
    /// rebuild the object.
    #[serde(default)]
    pub erasure: Option<String>,
}

impl DealSection {
    /// The erasure scheme, if any.
    pub fn scheme(&self) -> Result<Option<proto::erasure::Scheme>, String> {
        self.erasure
            .as_deref()
            .map(|e| e.parse().map_err(|why| format!("[deals] erasure: {why}")))
            .transpose()
    }
}

fn default_copies() -> u8 {
    1
}

fn default_index() -> PathBuf {
    "gateway-index.redb".into()
}
fn default_spool() -> PathBuf {
    "spool".into()
}
fn default_object_max() -> u64 {
    5 << 30
}
fn default_requests() -> usize {
    64
}
fn default_request_timeout() -> u64 {
    3600
}
fn default_header_timeout() -> u64 {
    30
}
fn default_orphan_grace() -> u64 {
    900
}
fn default_open_upload() -> u64 {
    2 * 86_400
}
fn default_lifecycle() -> u64 {
    3600
}
fn default_chunk() -> u32 {
    8 << 20
}

impl api::config::RoleConfig for GatewayConfig {
    const ROLE: &'static str = "gateway";

    fn key_file_mut(&mut self) -> &mut PathBuf {
        &mut self.key_file
    }

    fn check(&self) -> Result<(), String> {
        if self.access_key.len() < 3 || !self.access_key.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err("access_key: 3 or more ASCII letters and digits".into());
        }
        if self.max_requests == 0 {
            return Err("max_requests: at least 1".into());
        }
        if self.request_timeout_secs == 0
            || self.header_timeout_secs == 0
            || self.lifecycle_every_secs == 0
            || self.open_upload_secs == 0
        {
            return Err("timeouts: at least 1 second".into());
        }
        proto::check_chunk_bytes(self.chunk_bytes).map_err(|e| format!("chunk_bytes: {e}"))?;
        match (&self.host, &self.deals) {
            (Some(_), None) => {}
            (None, Some(d)) => {
                let market = !d.index.is_empty() || !d.exchanges.is_empty();
                if d.chain.is_empty() {
                    return Err("[deals]: chain needs a miner's address at least".into());
                }
                if d.hosts.is_empty() != market {
                    return Err(
                        "[deals]: name either hosts (fixed) or index/exchanges (matched per object), not both"
                            .into(),
                    );
                }
                let scheme = d.scheme()?;
                let copies = match (market, scheme) {
                    (true, Some(e)) => usize::from(e.n()),
                    (true, None) => usize::from(d.copies),
                    (false, _) => d.hosts.len(),
                };
                if let Some(e) = scheme.filter(|e| usize::from(e.n()) != copies) {
                    return Err(format!(
                        "[deals] erasure {e} puts one share on each of {} hosts; hosts lists {copies}",
                        e.n()
                    ));
                }
                if copies == 0 || copies > crate::record::COPIES_MAX {
                    return Err(format!(
                        "[deals]: 1 to {} hosts or copies",
                        crate::record::COPIES_MAX
                    ));
                }
                if d.min_rating > 1000 || !proto::market::region_ok(&d.region) {
                    return Err(
                        "[deals]: min_rating at most 1000, region lowercase letters, digits and '-'"
                            .into(),
                    );
                }
                if d.days == 0 {
                    return Err("[deals]: days at least 1".into());
                }
            }
            _ => return Err("name either [host] (links) or [deals] (paid deals), not both".into()),
        }
        Ok(())
    }
}

impl GatewayConfig {
    /// Reads and checks `path`; relative paths become relative to its folder.
    pub fn load(path: &Path) -> Result<GatewayConfig, api::config::ConfigError> {
        let mut c: GatewayConfig = api::config::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.secret_key_file, &mut c.index, &mut c.spool_dir] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }

    /// The configuration `mspace gateway init` writes (the key and secret files beside
    /// it); `store` is its `[host]` or `[deals]` table ([`GatewayConfig::host_table`],
    /// [`GatewayConfig::deals_table`]).
    pub fn default_text(listen: &str, access_key: &str, store: &str) -> String {
        format!(
            r#"# Market.space S3 gateway (mspace gateway run --config THIS_FILE).
# The gateway seals every object on this machine and stores it on the host below; the
# keys that open the objects stay in its index. Keep it on loopback or a private network.
listen = "{listen}"
# S3 credentials: clients sign with this access key id and the secret in secret_key_file.
access_key = "{access_key}"
secret_key_file = "gateway.secret"
key_file = "gateway.key"
# Prometheus metrics at http://<metrics_listen>/metrics.
# metrics_listen = "127.0.0.1:9402"
index = "gateway-index.redb"
spool_dir = "spool"
# Limits: the largest PUT and part (bytes), requests at once (more get 503 SlowDown),
# seconds until an answer starts, seconds to send the headers.
max_object_bytes = 5368709120
max_part_bytes = 5368709120
max_requests = 64
request_timeout_secs = 3600
header_timeout_secs = 30
# Seconds between sweeps deleting what buckets' lifecycle rules expired.
lifecycle_every_secs = 3600
# Seconds a sealed file that no object, copy or version names any more waits before it is
# removed from the host (reads that began before its delete finish first).
orphan_grace_secs = 900
# Seconds a multipart upload may stay open; the sweep aborts older ones (their parts leave
# the host). With a lifecycle rule, parts are paid for this and two sweeps longer than the
# object.
open_upload_secs = 172800
# Plaintext bytes per sealed chunk.
chunk_bytes = 8388608

{store}"#
        )
    }

    /// A `[host]` table: one host minting links for its control token.
    pub fn host_table(control: &str, token: &str) -> String {
        format!(
            r#"# Objects go to this host, through links its control plane mints for its control
# token (control_token in its host.toml). Nothing is paid on chain.
[host]
control = "{control}"
token = "{token}"
"#
        )
    }

    /// A `[deals]` table: each object a paid deal on each host, or on `copies` hosts
    /// matched through the indexes (`index`) when `hosts` is empty.
    pub fn deals_table(
        chain: &[String],
        hosts: &[String],
        index: &[String],
        copies: u8,
        days: u32,
        erasure: Option<proto::erasure::Scheme>,
    ) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let whom = if hosts.is_empty() {
            format!(
                r#"# For each object the nearest live exchange an index lists matches `copies` hosts
# from its book (cheapest first, at most max_price_per_gib_day, one per host and /24),
# as `mspace put --index` does.
index = [{}]
# exchanges = []
copies = {copies}
# region = ""
# min_rating = 0"#,
                list(index)
            )
        } else {
            format!("hosts = [{}]", list(hosts))
        };
        format!(
            r#"# Each object is a storage deal on each host (one copy each), paid from this
# gateway's key (gateway.key: fund its account with MASPC) through the chain; a PUT
# returns once every host's CRCs matched on chain.
[deals]
chain = [{}]
{whom}
days = {days}
# period_blocks = 1000
# max_price_per_gib_day = 100
# Erasure shares K/N instead of copies: each chunk coded into N shares, one on each of N
# hosts (hosts lists N, or N are matched), any K of which rebuild the object.
{erasure}
"#,
            list(chain),
            erasure = match erasure {
                Some(e) => format!("erasure = \"{e}\""),
                None => "# erasure = \"2/3\"".to_owned(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use api::config::RoleConfig;

    fn parsed(store: &str) -> GatewayConfig {
        toml::from_str(&GatewayConfig::default_text(
            "127.0.0.1:9000",
            "MSKEY",
            store,
        ))
        .unwrap()
    }

    #[test]
    fn each_placement_init_writes_is_checked_and_mixed_ones_are_refused() {
        let chain = ["127.0.0.1:1".to_string()];
        let fixed = parsed(&GatewayConfig::deals_table(
            &chain,
            &["127.0.0.1:2".into()],
            &[],
            1,
            30,
            None,
        ));
        assert_eq!(fixed.check(), Ok(()));
        assert_eq!(fixed.open_upload_secs, default_open_upload());
        let mut shut = parsed(&GatewayConfig::host_table("127.0.0.1:2", "t"));
        shut.open_upload_secs = 0;
        assert!(shut.check().unwrap_err().contains("at least 1 second"));
        // Erasure shares: as many fixed hosts as shares, else refused.
        let three = ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"].map(String::from);
        let scheme = Some("2/3".parse().unwrap());
        let shares = parsed(&GatewayConfig::deals_table(
            &chain,
            &three,
            &[],
            1,
            30,
            scheme,
        ));
        assert_eq!(shares.check(), Ok(()));
        assert_eq!(shares.deals.as_ref().unwrap().scheme(), Ok(scheme));
        let short = parsed(&GatewayConfig::deals_table(
            &chain,
            &three[..2],
            &[],
            1,
            30,
            scheme,
        ));
        assert!(short
            .check()
            .unwrap_err()
            .contains("one share on each of 3 hosts"));
        let mut bad = shares.clone();
        bad.deals.as_mut().unwrap().erasure = Some("3/3".into());
        assert!(bad.check().unwrap_err().contains("[deals] erasure: "));
        let market = parsed(&GatewayConfig::deals_table(
            &chain,
            &[],
            &["127.0.0.1:3".into()],
            2,
            30,
            None,
        ));
        assert_eq!(market.check(), Ok(()));
        let d = market.deals.clone().unwrap();
        assert_eq!((d.copies, d.index.len(), d.hosts.len()), (2, 1, 0));
        assert_eq!(
            parsed(&GatewayConfig::host_table("127.0.0.1:4", "t")).check(),
            Ok(())
        );

        let with = |f: &dyn Fn(&mut DealSection)| {
            let mut c = market.clone();
            f(c.deals.as_mut().unwrap());
            c.check().unwrap_err()
        };
        assert!(with(&|d| d.hosts = vec!["127.0.0.1:2".into()]).contains("not both"));
        assert!(with(&|d| d.index.clear()).contains("not both"));
        assert!(with(&|d| d.copies = 0).contains("copies"));
        assert!(with(&|d| d.copies = 17).contains("copies"));
        assert!(with(&|d| d.min_rating = 1001).contains("min_rating"));
        assert!(with(&|d| d.region = "Bad Region".into()).contains("region"));
        assert!(with(&|d| d.chain.clear()).contains("chain"));
    }
}
