//! An exchange (the seed's 4.3, 4.4): hosts post signed standing asks, senders post signed
//! storage requests and are answered with the hosts they are matched to. Nothing here goes
//! on chain: the sender then asks each matched host for its signed offer and pays it on
//! chain as without an exchange (`net::deal`).
//!
//! The server ([`Exchange`], serving `api::ExchangeApi`) checks what the book cannot: each
//! message's signature, chain, expiry and life ([`proto::market`]); that an asking host is
//! registered on the chain with a deposit (its rating is read there too); that a request's
//! sender has an account on the chain (seed 4.4: "requests from non-existing addresses are
//! rejected"); that a request fits this exchange's usage profile ([`profile_refusal`]);
//! that a request is answered once. The book and its matching are `market::book`'s.
//!
//! Flood control ([`market::flood`]): requests per minute per address (counted before the
//! signature is checked) and per key, and a ban for a key whose answered requests are
//! followed by no deal with the hosts matched (read from the chain at its next request).
//!
//! [`lister`] keeps the exchange listed on its indexes; [`index`] is the index itself.
//!
//! Commission: the profile's `commission_permille`, which a host reads ([`ExchangeApi::terms`])
//! before it asks here and then names in each offer it makes to a sender matched here; the
//! sender's payment carries it and the ledger pays it to the exchange from each part of the
//! fee the host earns. Nothing is trusted to the exchange: it is paid by the chain.
//!
//! Hosts that bid by themselves ([`ExchangeApi::watch_requests`], [`ExchangeApi::bid`]): a
//! host registered on the chain watches for requests; each request that passes the checks
//! above is forwarded to the hosts watching (not its sender) and waits for every watcher's
//! signed bid or pass, for at most the profile's `bid_window_ms`; then it is matched over
//! the book and the bids together (`market::book::Book::take_with`), a bid counting for that
//! request alone. A watcher is a host key that asked in the last `WATCHER_LIFE_SECS`:
//! anyone can watch under a registered host's key (a watch is not signed), which can only
//! make requests wait the whole window for a bid that does not come; bids are signed.
//!
//! Replicas ([`replica`]): one exchange may run as 3 (or 5) replicas of one operator, its
//! state ([`state::State`]: the book, the requests answered, the flood control's keys) a
//! Raft log's commands applied in order, so that it survives the loss of a minority of
//! them. Without `[replication]` in its config, an exchange applies the same commands to
//! its state alone. What stays with each replica: the per-address rate, the senders read
//! from the chain, the hosts watching for requests and the requests open for their bids
//! (a host watches the replica it names; a request reaching another replica is not
//! forwarded to it), and the counters.

pub mod codec;
pub mod index;
pub mod lister;
pub mod replica;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use api::chain::ChainClient;
use api::{
    ControlError, ExchangeApi, ExchangeMatch, ExchangeProfile, ExchangeStatus, ExchangeTerms,
    ForwardedRequest,
};
use market::book::Match;
use market::flood::{Flood, FloodPolicy, FloodRefusal};
use proto::market::{region_ok, request_id, Bid, Request, SignedAsk, SignedBid, SignedRequest};
use proto::tx::AccountId;
use serde::{Deserialize, Serialize};
use state::{Command, Outcome, State};

/// Longest an ask may live from the moment it is posted: a host re-posts well before.
pub const ASK_LIFE_MAX_SECS: u64 = 600;
/// Longest a request may live.
pub const REQUEST_LIFE_MAX_SECS: u64 = 600;
/// Fault injection for tests: with this variable set to `exit-on-request`, the exchange
/// process exits the moment a request reaches it, before answering: an exchange dying
/// while a sender negotiates, at a point a test can name.
pub const FAULT_ENV: &str = "MSPACE_EXCHANGE_FAULT";

/// `exchange.toml`: `docs/formats.md` section 17.4.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Control-plane address the exchange serves `ExchangeApi` on.
    pub listen: String,
    /// Miners' control addresses (the first that answers is used).
    pub chain: Vec<String>,
    /// The exchange's ed25519 key (written by `mspace exchange init`): its account on the
    /// chain, registered as an exchange, and the signer of its listings.
    #[serde(default = "default_key_file")]
    pub key_file: std::path::PathBuf,
    /// Indexes to keep a listing on, so senders find this exchange.
    #[serde(default)]
    pub indexes: Vec<String>,
    /// The address the listings give senders, if they reach the exchange by another name
    /// than `listen`.
    #[serde(default)]
    pub public_addr: Option<String>,
    /// Where the exchange is (lowercase letters, digits, '-'); empty: unsaid.
    #[serde(default)]
    pub region: String,
    /// Where `/metrics` is served (Prometheus text), if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub profile: Profile,
    #[serde(default)]
    pub flood: FloodConfig,
    /// Run as one of several replicas of this exchange (absent: alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<replica::ReplicationConfig>,
}

/// `[flood]` in `exchange.toml`: `market::flood::FloodPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    pub per_key_per_min: u32,
    pub per_addr_per_min: u32,
    pub strikes_to_ban: u32,
    pub ban_secs: u64,
}

impl Default for FloodConfig {
    fn default() -> Self {
        let p = FloodPolicy::default();
        FloodConfig {
            per_key_per_min: p.per_key_per_min,
            per_addr_per_min: p.per_addr_per_min,
            strikes_to_ban: p.strikes_to_ban,
            ban_secs: p.ban_secs,
        }
    }
}

impl FloodConfig {
    pub fn policy(&self) -> FloodPolicy {
        FloodPolicy {
            per_key_per_min: self.per_key_per_min,
            per_addr_per_min: self.per_addr_per_min,
            strikes_to_ban: self.strikes_to_ban,
            ban_secs: self.ban_secs,
        }
    }
}

fn default_key_file() -> std::path::PathBuf {
    "exchange.key".into()
}

/// The usage profile in `exchange.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    pub min_bytes: u64,
    pub min_days: u32,
    pub max_days: u32,
    pub regions: Vec<String>,
    /// Thousandths of each part of a matched deal's fee its host pays this exchange.
    pub commission_permille: u16,
    /// How long a request waits for the bids of hosts watching for requests, in
    /// milliseconds (0: none forwarded). It waits only while a watcher has not answered.
    pub bid_window_ms: u64,
}

/// The commission an exchange asks unless its config says otherwise: 2%.
pub const COMMISSION_PERMILLE_DEFAULT: u16 = 20;
/// How long a request waits for bids unless the config says otherwise.
pub const BID_WINDOW_MS_DEFAULT: u64 = 500;
/// The longest bid window a config may set.
pub const BID_WINDOW_MS_MAX: u64 = 5_000;
/// How long a sender's account read from the chain is taken as current.
pub const SENDER_CACHE_SECS: u64 = 10;
/// Most senders remembered (the oldest reads are dropped first).
const SENDERS_CACHED_MAX: usize = 100_000;
/// How often a watching host's registration and rating are read again from the chain.
pub const WATCHER_RECHECK_SECS: u64 = 30;

impl Default for Profile {
    fn default() -> Self {
        Profile {
            min_bytes: 0,
            min_days: 1,
            max_days: 36_500,
            regions: Vec::new(),
            commission_permille: COMMISSION_PERMILLE_DEFAULT,
            bid_window_ms: BID_WINDOW_MS_DEFAULT,
        }
    }
}

pub use api::config::ConfigError;

impl api::config::RoleConfig for Config {
    const ROLE: &'static str = "exchange";

    fn key_file_mut(&mut self) -> &mut std::path::PathBuf {
        &mut self.key_file
    }

    fn check(&self) -> Result<(), String> {
        Config::check(self)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let mut c: Config = api::config::load(path)?;
        if let Some(r) = &mut c.replication {
            if r.raft_file.is_relative() {
                r.raft_file = path.parent().unwrap_or(Path::new(".")).join(&r.raft_file);
            }
        }
        Ok(c)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.chain.is_empty() {
            return Err("chain: name at least one miner".into());
        }
        let p = &self.profile;
        if p.min_days == 0 || p.min_days > p.max_days {
            return Err(format!(
                "profile: days {}..={}: an empty range",
                p.min_days, p.max_days
            ));
        }
        if p.commission_permille > proto::tx::COMMISSION_PERMILLE_MAX {
            return Err(format!(
                "profile.commission_permille {}: at most 1000 (all of the fee)",
                p.commission_permille
            ));
        }
        if p.bid_window_ms > BID_WINDOW_MS_MAX {
            return Err(format!(
                "profile.bid_window_ms {}: at most {BID_WINDOW_MS_MAX} (a sender waits it out)",
                p.bid_window_ms
            ));
        }
        let f = &self.flood;
        if f.per_key_per_min == 0 || f.per_addr_per_min == 0 || f.strikes_to_ban == 0 {
            return Err("flood: the rates and strikes_to_ban must be at least 1".into());
        }
        if !region_ok(&self.region) {
            return Err(format!(
                "region {:?}: lowercase letters, digits and '-'",
                self.region
            ));
        }
        if self.listed_addr().len() > proto::market::ADDR_MAX {
            return Err("the address listings carry is longer than 255 bytes".into());
        }
        if let Some(r) = p.regions.iter().find(|r| r.is_empty() || !region_ok(r)) {
            return Err(format!(
                "profile.regions: {r:?} is not a region (lowercase letters, digits, '-')"
            ));
        }
        if let Some(r) = &self.replication {
            r.check()?;
        }
        Ok(())
    }

    /// The address listings give senders.
    pub fn listed_addr(&self) -> &str {
        self.public_addr.as_deref().unwrap_or(&self.listen)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serializes")
    }
}

impl Profile {
    pub fn view(&self) -> ExchangeProfile {
        ExchangeProfile {
            min_bytes: self.min_bytes,
            min_days: self.min_days,
            max_days: self.max_days,
            regions: self.regions.clone(),
            commission_permille: self.commission_permille,
            bid_window_ms: self.bid_window_ms,
        }
    }
}

/// Why `req` falls outside `profile`, naming the term; `None` if it fits.
pub fn profile_refusal(profile: &Profile, req: &Request) -> Option<String> {
    if req.bytes != 0 && req.bytes < profile.min_bytes {
        return Some(format!(
            "this exchange takes requests of at least {} bytes; this one is for {}",
            profile.min_bytes, req.bytes
        ));
    }
    if !(profile.min_days..=profile.max_days).contains(&req.days) {
        return Some(format!(
            "this exchange takes storage of {} to {} days; this request is for {}",
            profile.min_days, profile.max_days, req.days
        ));
    }
    if !profile.regions.is_empty()
        && !req.region.is_empty()
        && !profile.regions.contains(&req.region)
    {
        return Some(format!(
            "this exchange serves regions {:?}; this request asks for {:?}",
            profile.regions, req.region
        ));
    }
    None
}

#[derive(Debug, Default)]
struct Counters {
    matched: u64,
    forwarded: u64,
    bids: u64,
    passes: u64,
    bids_matched: u64,
    refused: BTreeMap<String, u64>,
}

/// A host watching for forwarded requests.
#[derive(Debug, Clone, Copy)]
struct Watcher {
    /// Its last `watch_requests`.
    seen: u64,
    /// When its registration was last read, and its rating then.
    checked: u64,
    rating: u32,
}

/// A request open for bids.
#[derive(Debug)]
struct Open {
    seq: u64,
    /// As the sender sent it (forwarded as is).
    bytes: Vec<u8>,
    req: Request,
    /// The watchers it waits for, and those that answered.
    waiting: BTreeSet<[u8; 32]>,
    answered: BTreeSet<[u8; 32]>,
    /// The bids made (not the passes), each with its host's rating.
    bids: Vec<(Bid, u32)>,
}

/// Forwarding to the hosts that bid by themselves.
#[derive(Debug, Default)]
struct Forward {
    seq: u64,
    watchers: BTreeMap<[u8; 32], Watcher>,
    /// Requests open for bids, by `request_id`.
    open: BTreeMap<[u8; 32], Open>,
}

impl Forward {
    fn live_watchers(&self, now: u64) -> impl Iterator<Item = &[u8; 32]> {
        self.watchers
            .iter()
            .filter(move |(_, w)| w.seen + api::WATCHER_LIFE_SECS > now)
            .map(|(k, _)| k)
    }
}

/// Where the exchange's state lives: here alone, or in a replicated log.
#[derive(Debug)]
enum Backend {
    Alone(Mutex<State>),
    Replicated(replica::Replica),
}

#[derive(Debug)]
struct Inner {
    /// The exchange's key: its account, where commissions are paid.
    key: [u8; 32],
    chain_id: u64,
    profile: Profile,
    /// The book, the requests answered (each is answered once) and the keys' flood state.
    backend: Backend,
    chain: tokio::sync::Mutex<ChainClient>,
    /// Senders seen with an account on the chain, and when it was read: an account, once
    /// it exists, does not stop existing, so a request from one is not a chain read each
    /// time (re-read after [`SENDER_CACHE_SECS`]). Nothing that must be current is taken
    /// from it: the flood check reads the sender's deals afresh.
    senders: Mutex<BTreeMap<[u8; 32], (api::AccountView, u64)>>,
    counters: Mutex<Counters>,
    /// The per-address rate (this process's connections; only its `admit_addr` is used).
    addr_flood: Mutex<Flood>,
    /// [`FAULT_ENV`] was set: exit on the first request.
    exit_on_request: bool,
    forward: Mutex<Forward>,
    /// The last forwarded request's `seq`: watchers wait for it to change.
    forwarded: tokio::sync::watch::Sender<u64>,
    /// Bids and passes received: an open request waits for it to change.
    answers: tokio::sync::watch::Sender<u64>,
}

/// The exchange's `ExchangeApi` service: serve it with `api::serve_control!`.
#[derive(Clone, Debug)]
pub struct Exchange {
    inner: Arc<Inner>,
    /// The connection's peer, for the per-address limit ([`serve`] sets it).
    peer: Option<std::net::IpAddr>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn view(m: &Match) -> ExchangeMatch {
    ExchangeMatch {
        host: m.host,
        addr: m.addr.clone(),
        price_per_gib_day: m.price_per_gib_day,
        rating: m.rating,
        region: m.region.clone(),
        deposit: m.deposit,
        bytes: m.bytes,
    }
}

impl Exchange {
    /// The book, the counters and the profile now (what `status` answers).
    pub fn snapshot(&self) -> ExchangeStatus {
        let i = &self.inner;
        let now = now_secs();
        let asks = self.read(|s| {
            s.book()
                .asks()
                .filter(|e| now < e.ask.expiry_unix_secs)
                .map(|e| view(&e.to_match(e.ask.free_bytes)))
                .collect()
        });
        let c = lock(&i.counters);
        ExchangeStatus {
            key: i.key,
            chain_id: i.chain_id,
            profile: i.profile.view(),
            asks,
            requests_matched: c.matched,
            watchers: u32::try_from(lock(&i.forward).live_watchers(now).count())
                .unwrap_or(u32::MAX),
            requests_forwarded: c.forwarded,
            bids: c.bids,
            passes: c.passes,
            bids_matched: c.bids_matched,
            refused: c.refused.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            replica: match &i.backend {
                Backend::Alone(_) => None,
                Backend::Replicated(r) => Some(r.view()),
            },
        }
    }

    /// The exchange's metrics in the Prometheus text format (`metrics_listen`).
    pub fn render_metrics(&self) -> String {
        let st = self.snapshot();
        let mut e = api::metrics::Exposition::default();
        e.gauge(
            "mspace_exchange_asks",
            "Standing asks on the book now.",
            st.asks.len() as u64,
        );
        e.gauge(
            "mspace_exchange_watchers",
            "Hosts watching for forwarded requests now.",
            u64::from(st.watchers),
        );
        e.counter(
            "mspace_exchange_requests_matched_total",
            "Requests answered with matched hosts.",
            st.requests_matched,
        );
        e.counter(
            "mspace_exchange_requests_forwarded_total",
            "Requests forwarded to watching hosts.",
            st.requests_forwarded,
        );
        e.counter("mspace_exchange_bids_total", "Bids received.", st.bids);
        e.counter(
            "mspace_exchange_passes_total",
            "Passes received.",
            st.passes,
        );
        e.counter(
            "mspace_exchange_bids_matched_total",
            "Hosts matched through a bid.",
            st.bids_matched,
        );
        e.family(
            "mspace_exchange_refused_total",
            "Requests and asks refused, by reason.",
            "counter",
            &st.refused
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str())], *n))
                .collect::<Vec<_>>(),
        );
        e.finish()
    }

    /// An exchange with account `key` serving `profile` for the chain `chain` follows,
    /// alone.
    pub async fn new(
        key: [u8; 32],
        profile: Profile,
        flood: FloodPolicy,
        chain: ChainClient,
    ) -> Result<Exchange, String> {
        let alone = Backend::Alone(Mutex::new(State::new(flood)));
        Exchange::with_backend(key, profile, flood, chain, alone).await
    }

    /// [`Exchange::new`] as one of the exchange's replicas (started with the same flood
    /// policy as `flood`).
    pub async fn replicated(
        key: [u8; 32],
        profile: Profile,
        flood: FloodPolicy,
        chain: ChainClient,
        replica: replica::Replica,
    ) -> Result<Exchange, String> {
        let backend = Backend::Replicated(replica);
        Exchange::with_backend(key, profile, flood, chain, backend).await
    }

    async fn with_backend(
        key: [u8; 32],
        profile: Profile,
        flood: FloodPolicy,
        mut chain: ChainClient,
        backend: Backend,
    ) -> Result<Exchange, String> {
        let chain_id = chain
            .status()
            .await
            .map_err(|e| format!("the chain: {e}"))?
            .chain_id;
        Ok(Exchange {
            inner: Arc::new(Inner {
                key,
                chain_id,
                profile,
                backend,
                chain: tokio::sync::Mutex::new(chain),
                senders: Mutex::new(BTreeMap::new()),
                counters: Mutex::new(Counters::default()),
                addr_flood: Mutex::new(Flood::new(flood)),
                exit_on_request: std::env::var(FAULT_ENV).is_ok_and(|v| v == "exit-on-request"),
                forward: Mutex::new(Forward::default()),
                forwarded: tokio::sync::watch::channel(0).0,
                answers: tokio::sync::watch::channel(0).0,
            }),
            peer: None,
        })
    }

    /// The same exchange, serving a connection from `peer`.
    pub fn for_peer(&self, peer: std::net::IpAddr) -> Exchange {
        Exchange {
            inner: Arc::clone(&self.inner),
            peer: Some(peer),
        }
    }

    fn flooded(&self, e: &FloodRefusal) -> ControlError {
        let err = match e {
            FloodRefusal::Banned { .. } => ControlError::Unauthorized(e.to_string()),
            FloodRefusal::KeyRate { .. } | FloodRefusal::AddrRate { .. } => {
                ControlError::Unavailable(e.to_string())
            }
        };
        self.refuse(e.reason(), err)
    }

    /// Counts a request or ask from this connection's address.
    fn admit_peer(&self, now: u64) -> Result<(), ControlError> {
        let Some(ip) = self.peer else {
            return Ok(());
        };
        let addr = match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let admitted = lock(&self.inner.addr_flood).admit_addr(addr, now);
        admitted.map_err(|e| self.flooded(&e))
    }

    /// The chain this exchange serves.
    pub fn chain_id(&self) -> u64 {
        self.inner.chain_id
    }

    /// This exchange's replica, if it is one.
    pub fn replica(&self) -> Option<&replica::Replica> {
        match &self.inner.backend {
            Backend::Alone(_) => None,
            Backend::Replicated(r) => Some(r),
        }
    }

    /// Reads the exchange's state (a replica's own applied copy).
    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        match &self.inner.backend {
            Backend::Alone(s) => f(&lock(s)),
            Backend::Replicated(r) => r.read(f),
        }
    }

    /// Applies `cmd`: here, or through the replicas' log.
    async fn submit(&self, cmd: Command) -> Result<Outcome, ControlError> {
        match &self.inner.backend {
            Backend::Alone(s) => Ok(lock(s).apply(cmd)),
            Backend::Replicated(r) => r.propose(cmd).await.map_err(|e| {
                self.refuse(
                    "replicas unavailable",
                    ControlError::Unavailable(format!("the exchange's replicas: {e}")),
                )
            }),
        }
    }

    fn refuse(&self, reason: &str, e: ControlError) -> ControlError {
        *lock(&self.inner.counters)
            .refused
            .entry(reason.to_owned())
            .or_default() += 1;
        e
    }

    async fn account(&self, who: [u8; 32]) -> Result<api::AccountView, ControlError> {
        self.inner
            .chain
            .lock()
            .await
            .account(AccountId(who))
            .await
            .map_err(|e| ControlError::Unavailable(format!("the chain: {e}")))
    }

    /// The deals `who` has open or active on the chain now, as (deal id, host).
    async fn deals_of(&self, who: [u8; 32]) -> Result<Vec<([u8; 32], [u8; 32])>, ControlError> {
        let deals = self
            .inner
            .chain
            .lock()
            .await
            .deals_of(AccountId(who), false)
            .await
            .map_err(|e| ControlError::Unavailable(format!("the chain: {e}")))?;
        Ok(deals
            .iter()
            .filter_map(|d| Some((api::parse_hex32(&d.id)?, api::parse_hex32(&d.host)?)))
            .collect())
    }

    /// A request's sender as the chain shows it: read there unless an account was read in
    /// the last [`SENDER_CACHE_SECS`] (a key with no account is read each time: it may
    /// be funded any moment).
    async fn sender_account(
        &self,
        who: [u8; 32],
        now: u64,
    ) -> Result<api::AccountView, ControlError> {
        if let Some((view, at)) = lock(&self.inner.senders).get(&who) {
            if now < at + SENDER_CACHE_SECS {
                return Ok(view.clone());
            }
        }
        let view = self.account(who).await?;
        if view.nonce > 0 || view.masp > 0 || view.maspc > 0 {
            let mut cache = lock(&self.inner.senders);
            if cache.len() >= SENDERS_CACHED_MAX {
                cache.retain(|_, (_, at)| now < *at + SENDER_CACHE_SECS);
            }
            if cache.len() < SENDERS_CACHED_MAX {
                cache.insert(who, (view.clone(), now));
            }
        }
        Ok(view)
    }

    async fn take_ask(&self, bytes: Vec<u8>) -> Result<(), ControlError> {
        let i = &self.inner;
        let now = now_secs();
        self.admit_peer(now)?;
        let signed = SignedAsk::open(&bytes, i.chain_id, now, ASK_LIFE_MAX_SECS)
            .map_err(|e| self.refuse("bad ask", ControlError::Invalid(format!("the ask: {e}"))))?;
        let ask = signed.msg;
        let account = self.account(ask.host).await?;
        if !account.bonded("host") {
            return Err(self.refuse(
                "host not registered",
                ControlError::Unauthorized(
                    "the asking host is not registered on the chain with a deposit".into(),
                ),
            ));
        }
        let cmd = Command::Ask {
            ask,
            rating: account.rating,
            now,
        };
        match self.submit(cmd).await? {
            Outcome::Posted => Ok(()),
            Outcome::AskRefused(e) => Err(self.refuse("stale ask", ControlError::Invalid(e))),
            other => Err(unexpected(&other)),
        }
    }

    async fn take_request(&self, bytes: Vec<u8>) -> Result<Vec<ExchangeMatch>, ControlError> {
        let i = &self.inner;
        if i.exit_on_request {
            eprintln!("{FAULT_ENV}=exit-on-request: exiting with a request unanswered");
            std::process::exit(3);
        }
        let now = now_secs();
        self.admit_peer(now)?;
        let signed =
            SignedRequest::open(&bytes, i.chain_id, now, REQUEST_LIFE_MAX_SECS).map_err(|e| {
                self.refuse(
                    "bad request",
                    ControlError::Invalid(format!("the request: {e}")),
                )
            })?;
        let req = signed.msg;
        // The key's rate and ban as this replica's state has them (the log's answer is the
        // one that counts), before anything is read from the chain for it.
        let checked = self.read(|s| s.flood().check_key(&req.sender, now));
        checked.map_err(|e| self.flooded(&e))?;
        if let Some(why) = profile_refusal(&i.profile, &req) {
            return Err(self.refuse("outside the profile", ControlError::Invalid(why)));
        }
        let account = self.sender_account(req.sender, now).await?;
        if account.nonce == 0 && account.masp == 0 && account.maspc == 0 {
            return Err(self.refuse(
                "no account",
                ControlError::Unauthorized(
                    "the sender has no account on the chain: requests from non-existing addresses are refused".into(),
                ),
            ));
        }
        if self.read(|s| s.answered().holds(&(req.sender, req.nonce), now)) {
            return Err(self.replayed());
        }
        // The key's deals now (not from a cache): they settle its last answer, and those it
        // has when this one is answered do not count for the next.
        let deals = self.deals_of(req.sender).await?;
        let bids = self.collect_bids(&bytes, &req, now).await;
        let cmd = Command::Request {
            req,
            now,
            deals,
            bids,
        };
        let got = match self.submit(cmd).await? {
            Outcome::Matched(got) => got,
            Outcome::Flooded(e) => return Err(self.flooded(&e)),
            Outcome::Replayed => return Err(self.replayed()),
            other => return Err(unexpected(&other)),
        };
        {
            let mut c = lock(&i.counters);
            c.matched += 1;
            c.bids_matched += got.iter().filter(|(_, on_book)| !on_book).count() as u64;
        }
        Ok(got.iter().map(|(m, _)| view(m)).collect())
    }

    fn replayed(&self) -> ControlError {
        self.refuse(
            "replayed request",
            ControlError::Invalid("this request was answered already".into()),
        )
    }

    /// Forwards the request to the hosts watching (if the profile has a bid window and any
    /// watch), and waits until each has answered or the window closes: the bids made.
    async fn collect_bids(&self, bytes: &[u8], req: &Request, now: u64) -> Vec<(Bid, u32)> {
        let i = &self.inner;
        let window = std::time::Duration::from_millis(i.profile.bid_window_ms);
        if window.is_zero() {
            return Vec::new();
        }
        let id = request_id(bytes);
        let seq = {
            let mut f = lock(&i.forward);
            let waiting: BTreeSet<[u8; 32]> = f
                .live_watchers(now)
                .filter(|k| **k != req.sender)
                .copied()
                .collect();
            if waiting.is_empty() {
                return Vec::new();
            }
            f.seq += 1;
            let seq = f.seq;
            f.open.insert(
                id,
                Open {
                    seq,
                    bytes: bytes.to_vec(),
                    req: req.clone(),
                    waiting,
                    answered: BTreeSet::new(),
                    bids: Vec::new(),
                },
            );
            seq
        };
        lock(&i.counters).forwarded += 1;
        let mut answers = i.answers.subscribe();
        i.forwarded.send_replace(seq);
        let deadline = tokio::time::Instant::now() + window;
        loop {
            answers.borrow_and_update();
            let all = lock(&i.forward)
                .open
                .get(&id)
                .is_none_or(|o| o.waiting.is_subset(&o.answered));
            if all {
                break;
            }
            match tokio::time::timeout_at(deadline, answers.changed()).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        lock(&i.forward)
            .open
            .remove(&id)
            .map(|o| o.bids)
            .unwrap_or_default()
    }

    /// Records `host` as watching, reading its registration from the chain when first seen
    /// or not read for [`WATCHER_RECHECK_SECS`].
    async fn watching(&self, host: [u8; 32], now: u64) -> Result<(), ControlError> {
        let known = lock(&self.inner.forward).watchers.get(&host).copied();
        let fresh = known.filter(|w| w.checked + WATCHER_RECHECK_SECS > now);
        let (checked, rating) = match fresh {
            Some(w) => (w.checked, w.rating),
            None => {
                let account = self.account(host).await?;
                if !account.bonded("host") {
                    lock(&self.inner.forward).watchers.remove(&host);
                    return Err(self.refuse(
                        "host not registered",
                        ControlError::Unauthorized(
                            "the watching host is not registered on the chain with a deposit"
                                .into(),
                        ),
                    ));
                }
                (now, account.rating)
            }
        };
        let mut f = lock(&self.inner.forward);
        f.watchers
            .retain(|_, w| w.seen + api::WATCHER_LIFE_SECS > now);
        f.watchers.insert(
            host,
            Watcher {
                seen: now,
                checked,
                rating,
            },
        );
        Ok(())
    }

    /// The requests open for bids after `after`, not `host`'s own.
    fn open_after(&self, host: &[u8; 32], after: u64) -> Vec<ForwardedRequest> {
        let f = lock(&self.inner.forward);
        let mut out: Vec<ForwardedRequest> = f
            .open
            .values()
            .filter(|o| o.seq > after && o.req.sender != *host && o.waiting.contains(host))
            .map(|o| ForwardedRequest {
                seq: o.seq,
                request: o.bytes.clone(),
            })
            .collect();
        out.sort_by_key(|r| r.seq);
        out
    }

    async fn watch(
        &self,
        host: [u8; 32],
        after: u64,
    ) -> Result<Vec<ForwardedRequest>, ControlError> {
        self.watching(host, now_secs()).await?;
        let mut forwarded = self.inner.forwarded.subscribe();
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_secs(api::WATCH_WAIT_SECS);
        loop {
            forwarded.borrow_and_update();
            let open = self.open_after(&host, after);
            if !open.is_empty() {
                return Ok(open);
            }
            match tokio::time::timeout_at(deadline, forwarded.changed()).await {
                Ok(Ok(())) => {}
                _ => return Ok(Vec::new()),
            }
        }
    }

    fn take_bid(&self, bytes: &[u8]) -> Result<(), ControlError> {
        let i = &self.inner;
        let now = now_secs();
        let signed = SignedBid::open(bytes, i.chain_id, now, REQUEST_LIFE_MAX_SECS)
            .map_err(|e| self.refuse("bad bid", ControlError::Invalid(format!("the bid: {e}"))))?;
        let bid = signed.msg;
        let mut f = lock(&i.forward);
        let Some(rating) = f.watchers.get(&bid.host).map(|w| w.rating) else {
            drop(f);
            return Err(self.refuse(
                "bid from no watcher",
                ControlError::Unauthorized(
                    "this host is not watching for requests here: watch_requests first".into(),
                ),
            ));
        };
        let Some(open) = f.open.get_mut(&bid.request) else {
            drop(f);
            return Err(self.refuse(
                "bid on no open request",
                ControlError::Invalid(
                    "the request this bid answers is not open for bids here (its window closed, or it was never forwarded)".into(),
                ),
            ));
        };
        if !open.answered.insert(bid.host) {
            drop(f);
            return Err(self.refuse(
                "bid twice",
                ControlError::Invalid("this host answered this request already".into()),
            ));
        }
        let passed = bid.price_per_gib_day.is_none();
        if !passed {
            open.bids.push((bid, rating));
        }
        drop(f);
        {
            let mut c = lock(&i.counters);
            if passed {
                c.passes += 1;
            } else {
                c.bids += 1;
            }
        }
        i.answers.send_modify(|n| *n += 1);
        Ok(())
    }
}

/// Serves `ex` on `listener` until the task ends: one tarpc channel per connection, each
/// served by [`Exchange::for_peer`] with its peer's address (for the per-address limit), at
/// most `api::CONTROL_CHANNELS_PER_PEER` connections per address and
/// `api::CONTROL_REQUESTS_PER_CHANNEL` requests in flight on each.
pub async fn serve(ex: Exchange, listener: tokio::net::TcpListener) {
    use futures::StreamExt;
    use tarpc::server::{BaseChannel, Channel};
    let open: Arc<Mutex<BTreeMap<std::net::IpAddr, u32>>> = Arc::default();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let ip = peer.ip();
        {
            let mut o = lock(&open);
            let n = o.entry(ip).or_default();
            if *n >= api::CONTROL_CHANNELS_PER_PEER {
                continue;
            }
            *n += 1;
        }
        let service = ex.for_peer(ip);
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            BaseChannel::with_defaults(api::transport(stream))
                .max_concurrent_requests(api::CONTROL_REQUESTS_PER_CHANNEL)
                .execute(service.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                })
                .await;
            let mut o = lock(&open);
            if let Some(n) = o.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    o.remove(&ip);
                }
            }
        });
    }
}

/// An outcome that does not answer the command given (a bug, not the caller's fault).
fn unexpected(o: &Outcome) -> ControlError {
    ControlError::Unavailable(format!("the exchange's state answered {o:?}"))
}

impl ExchangeApi for Exchange {
    async fn post_ask(self, _: tarpc::context::Context, ask: Vec<u8>) -> Result<(), ControlError> {
        self.take_ask(ask).await
    }

    async fn request(
        self,
        _: tarpc::context::Context,
        request: Vec<u8>,
    ) -> Result<Vec<ExchangeMatch>, ControlError> {
        self.take_request(request).await
    }

    async fn status(self, _: tarpc::context::Context) -> ExchangeStatus {
        self.snapshot()
    }

    async fn terms(self, _: tarpc::context::Context) -> ExchangeTerms {
        ExchangeTerms {
            key: self.inner.key,
            chain_id: self.inner.chain_id,
            profile: self.inner.profile.view(),
        }
    }

    async fn api_version(self, _: tarpc::context::Context) -> u32 {
        api::EXCHANGE_API_VERSION
    }

    async fn watch_requests(
        self,
        _: tarpc::context::Context,
        host: [u8; 32],
        after: u64,
    ) -> Result<Vec<ForwardedRequest>, ControlError> {
        self.watch(host, after).await
    }

    async fn bid(self, _: tarpc::context::Context, bid: Vec<u8>) -> Result<(), ControlError> {
        self.take_bid(&bid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn req(bytes: u64, days: u32, region: &str) -> Request {
        Request {
            chain_id: 1,
            sender: [1; 32],
            nonce: [0; 16],
            bytes,
            days,
            copies: 1,
            max_price_per_gib_day: 10,
            download_fee: 0,
            min_rating: 0,
            expiry_unix_secs: 10,
            region: region.into(),
            spread: None,
        }
    }

    #[test]
    fn the_profile_refuses_each_term_by_name() {
        let p = Profile {
            min_bytes: 1 << 30,
            min_days: 30,
            max_days: 365,
            regions: vec!["eu".into()],
            commission_permille: 20,
            bid_window_ms: 0,
        };
        let cases = [
            (req(2 << 30, 30, "eu"), None),
            (req(0, 30, ""), None),
            (req(1 << 20, 30, "eu"), Some("at least 1073741824 bytes")),
            (
                req(2 << 30, 7, "eu"),
                Some("30 to 365 days; this request is for 7"),
            ),
            (req(2 << 30, 400, "eu"), Some("is for 400")),
            (req(2 << 30, 30, "us"), Some("asks for \"us\"")),
        ];
        for (r, want) in cases {
            let got = profile_refusal(&p, &r);
            match want {
                None => assert_eq!(got, None),
                Some(w) => assert!(got.as_deref().unwrap().contains(w), "{got:?} lacks {w:?}"),
            }
        }
    }

    #[test]
    fn bad_configs_are_refused_by_name() {
        let ok = Config {
            listen: "127.0.0.1:0".into(),
            chain: vec!["127.0.0.1:1".into()],
            key_file: default_key_file(),
            indexes: Vec::new(),
            public_addr: None,
            region: String::new(),
            metrics_listen: Some("127.0.0.1:9403".into()),
            profile: Profile::default(),
            flood: FloodConfig::default(),
            replication: None,
        };
        assert_eq!(ok.check(), Ok(()));
        let back: Config = toml::from_str(&ok.to_toml()).unwrap();
        assert_eq!(back, ok);
        let mut no_chain = ok.clone();
        no_chain.chain.clear();
        let mut empty = ok.clone();
        empty.profile.min_days = 9;
        empty.profile.max_days = 8;
        let mut region = ok.clone();
        region.profile.regions = vec!["EU".into()];
        let mut no_strikes = ok.clone();
        no_strikes.flood.strikes_to_ban = 0;
        let mut greedy = ok.clone();
        greedy.profile.commission_permille = 1001;
        let mut slow = ok.clone();
        slow.profile.bid_window_ms = 5_001;
        for (c, says) in [
            (no_chain, "name at least one miner"),
            (empty, "an empty range"),
            (region, "\"EU\" is not a region"),
            (no_strikes, "at least 1"),
            (greedy, "commission_permille 1001"),
            (slow, "bid_window_ms 5001"),
        ] {
            let e = c.check().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        assert!(toml::from_str::<Config>("listen = \"x\"\nchain = []\nprice = 3\n").is_err());
    }
}
