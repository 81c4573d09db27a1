//! `chain-bench --workload exchange`: signed storage requests admitted and matched per
//! second by one exchange (`exchange::Exchange` served on loopback, as `mspace exchange run`
//! serves it), from `clients` connections sending pre-signed requests one at a time each.
//!
//! What the exchange does per request is all here: the tarpc frame, the request's decoding
//! and signature check, flood control, the profile, the sender's account, the replay set
//! and matching on a book of `hosts` standing asks. Its chain is a stand-in `MinerApi` on
//! loopback that knows every host as registered and every sender as funded (the chain's
//! own cost is chain-bench's other workloads); the exchange caches what it reads there, so
//! each sender's account is read once. Flood limits are lifted (one address sends
//! everything). The baseline measured in the same run is one core checking the same
//! requests' signatures alone, the floor of admission.
//!
//! With `replicas` above 1, the exchange runs as that many replicas in this process
//! (`exchange::replica`: Raft over loopback, each with its raft file in a temporary
//! directory on this machine's disk, fsynced), the clients all connected to the leader (the
//! replica that keeps the exchange listed on indexes, where senders find it): each request
//! is answered once its command is committed by a majority and applied.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use api::{
    AccountView, BlockView, ChainStatus, ChallengeView, ControlError, DealView, DownloadView,
    HashRecordView, MinerApi, RegistrationView,
};
use ed25519_consensus::SigningKey;
use proto::market::{Ask, Request, SignedAsk, SignedRequest};
use serde::Serialize;
use tarpc::context::Context as Ctx;

use crate::chainbench::{key, percentile};

const CHAIN_ID: u64 = 7;

/// What `chain-bench --workload exchange` takes.
#[derive(Clone, Debug)]
pub struct ExchangeBenchArgs {
    /// Standing asks on the book.
    pub hosts: usize,
    /// Connections sending requests, one in flight each.
    pub clients: usize,
    /// Distinct sender keys the requests come from.
    pub senders: usize,
    /// Requests signed before the run (the run stops early if it uses them all).
    pub requests: usize,
    pub seconds: f64,
    /// 1: one exchange alone; 3 or 5: its replicas.
    pub replicas: usize,
}

#[derive(Debug, Serialize)]
pub struct ExchangeBenchResult {
    pub replicas: usize,
    pub hosts: usize,
    pub clients: usize,
    pub senders: usize,
    /// Requests answered with a match in the window, per second.
    pub matched: u64,
    pub refused: u64,
    pub seconds: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The baseline: request signatures checked per second on one core, alone.
    pub verify_per_sec: f64,
    /// per_sec / verify_per_sec.
    pub ratio_to_one_core_verify: f64,
}

/// The chain as the exchange sees it: hosts registered, senders funded.
#[derive(Clone)]
struct StandIn {
    hosts: Arc<HashSet<[u8; 32]>>,
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

fn not_here() -> ControlError {
    ControlError::Unavailable("not part of the exchange benchmark".into())
}

impl MinerApi for StandIn {
    async fn submit_txs(
        self,
        _: Ctx,
        _: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<[u8; 32], String>>, ControlError> {
        Err(not_here())
    }
    async fn relay_txs(self, _: Ctx, _: Vec<Vec<u8>>) -> Result<(), ControlError> {
        Err(not_here())
    }
    async fn status(self, _: Ctx) -> Result<ChainStatus, ControlError> {
        Ok(ChainStatus {
            chain_id: CHAIN_ID,
            validator: String::new(),
            height: 1,
            tip: String::new(),
            timestamp_ms: 0,
            validators: Vec::new(),
            mempool_txs: 0,
            proof_period_blocks: 100,
            completion_timeout_blocks: 100,
            supply: [0; 2],
            genesis_supply: [0; 2],
            deposits: [0; 2],
            escrow: [0; 2],
            burned: [0; 2],
            alerts: Vec::new(),
        })
    }
    async fn account(self, _: Ctx, key: [u8; 32]) -> Result<AccountView, ControlError> {
        let host = self.hosts.contains(&key);
        Ok(AccountView {
            key: hex(&key),
            masp: 1_000,
            maspc: 1_000,
            nonce: 1,
            registrations: if host {
                vec![RegistrationView {
                    role: "host".into(),
                    deposit: 1_000_000,
                    endpoint: String::new(),
                    since_height: 0,
                    unbonding_until: None,
                    exposure: 0,
                }]
            } else {
                Vec::new()
            },
            allowance: 0,
            allowance_release_at: None,
            rating: 500,
            height: 1,
        })
    }
    async fn deal(self, _: Ctx, _: [u8; 32]) -> Result<Option<DealView>, ControlError> {
        Err(not_here())
    }
    async fn block(self, _: Ctx, _: u64, _: u64) -> Result<Option<BlockView>, ControlError> {
        Err(not_here())
    }
    async fn tx_height(self, _: Ctx, _: [u8; 32]) -> Result<Option<u64>, ControlError> {
        Err(not_here())
    }
    async fn api_version(self, _: Ctx) -> u32 {
        api::MINER_API_VERSION
    }
    async fn deals_of(self, _: Ctx, _: [u8; 32], _: bool) -> Result<Vec<DealView>, ControlError> {
        Ok(Vec::new())
    }
    async fn challenge(self, _: Ctx, _: [u8; 32]) -> Result<Option<ChallengeView>, ControlError> {
        Err(not_here())
    }
    async fn hash_record(
        self,
        _: Ctx,
        _: [u8; 32],
    ) -> Result<Option<HashRecordView>, ControlError> {
        Err(not_here())
    }
    async fn download(self, _: Ctx, _: [u8; 32]) -> Result<Option<DownloadView>, ControlError> {
        Err(not_here())
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the benchmark on a fresh tokio runtime.
pub fn run(a: &ExchangeBenchArgs) -> Result<ExchangeBenchResult> {
    anyhow::ensure!(
        a.hosts > 0 && a.clients > 0 && a.senders > 0,
        "nothing to measure"
    );
    let now = now_secs();
    let host_keys: Vec<SigningKey> = (0..a.hosts as u64).map(|i| key(i, 1)).collect();
    let sender_keys: Vec<SigningKey> = (0..a.senders as u64).map(|i| key(i, 2)).collect();
    let asks: Vec<Vec<u8>> = host_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            SignedAsk::sign(
                Ask {
                    chain_id: CHAIN_ID,
                    host: k.verification_key().to_bytes(),
                    seq: 1,
                    price_per_gib_day: 5 + (i as u64 % 20),
                    free_bytes: 1 << 60,
                    min_days: 1,
                    max_days: 3650,
                    deposit: 1_000_000,
                    expiry_unix_secs: now + 590,
                    region: String::new(),
                    addr: format!("10.{}.{}.1:7401", i / 250, i % 250),
                },
                k,
            )
            .to_bytes()
        })
        .collect();
    let requests: Vec<Vec<u8>> = (0..a.requests)
        .map(|i| {
            let k = &sender_keys[i % sender_keys.len()];
            let mut nonce = [0u8; 16];
            nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SignedRequest::sign(
                Request {
                    chain_id: CHAIN_ID,
                    sender: k.verification_key().to_bytes(),
                    nonce,
                    bytes: 1 << 30,
                    days: 30,
                    copies: 2,
                    max_price_per_gib_day: 100,
                    download_fee: 0,
                    min_rating: 0,
                    expiry_unix_secs: now + 590,
                    region: String::new(),
                    spread: None,
                },
                k,
            )
            .to_bytes()
        })
        .collect();

    // The baseline: the same requests' signatures, checked on this thread alone.
    let sample = requests.len().min(20_000);
    let t = Instant::now();
    for r in &requests[..sample] {
        SignedRequest::open(r, CHAIN_ID, now, 600).context("a request that does not check")?;
    }
    #[allow(clippy::cast_precision_loss)]
    let verify_per_sec = sample as f64 / t.elapsed().as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let hosts: HashSet<[u8; 32]> = host_keys
        .iter()
        .map(|k| k.verification_key().to_bytes())
        .collect();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stand_in = StandIn {
            hosts: Arc::new(hosts),
        };
        tokio::spawn(api::serve_control!(stand_in.serve(), "127.0.0.1:0", tx));
        let miner = rx
            .await
            .context("the stand-in chain did not start")?
            .to_string();
        let (addr, _replicas) = start_exchanges(&miner, a.replicas).await?;
        let c = api::exchange_client(&addr).await?;
        for ask in asks {
            c.post_ask(tarpc::context::current(), ask)
                .await?
                .map_err(|e| anyhow::anyhow!("an ask: {e}"))?;
        }
        let requests = Arc::new(requests);
        let next = Arc::new(AtomicUsize::new(0));
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(requests.len())));
        let refused = Arc::new(AtomicUsize::new(0));
        let window = Duration::from_secs_f64(a.seconds);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..a.clients {
            let c = api::exchange_client(&addr).await?;
            let (requests, next, latencies, refused) = (
                Arc::clone(&requests),
                Arc::clone(&next),
                Arc::clone(&latencies),
                Arc::clone(&refused),
            );
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while start.elapsed() < window {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(r) = requests.get(i) else { break };
                    let t = Instant::now();
                    match c.request(tarpc::context::current(), r.clone()).await {
                        Ok(Ok(m)) if !m.is_empty() => mine.push(t.elapsed().as_secs_f64() * 1e3),
                        _ => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(mine);
            }));
        }
        for t in tasks {
            t.await?;
        }
        let seconds = start.elapsed().as_secs_f64();
        let mut l = std::mem::take(
            &mut *latencies
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        l.sort_by(f64::total_cmp);
        #[allow(clippy::cast_precision_loss)]
        let per_sec = l.len() as f64 / seconds;
        anyhow::Ok(ExchangeBenchResult {
            replicas: a.replicas,
            hosts: a.hosts,
            clients: a.clients,
            senders: a.senders,
            matched: l.len() as u64,
            refused: refused.load(Ordering::Relaxed) as u64,
            seconds,
            per_sec,
            p50_ms: percentile(&l, 0.5),
            p99_ms: percentile(&l, 0.99),
            verify_per_sec,
            ratio_to_one_core_verify: per_sec / verify_per_sec,
        })
    })
}

/// The exchange (alone, or as `replicas` replicas) following the chain at `miner`, served on
/// loopback: the address of the one alone or of the leader, and what to keep while they run
/// (the replicas and the directory of their raft files, removed when dropped).
async fn start_exchanges(
    miner: &str,
    replicas: usize,
) -> Result<(String, (Vec<exchange::replica::Replica>, tempfile::TempDir))> {
    let exchange_key = key(0, 3);
    let profile = exchange::Profile {
        bid_window_ms: 0,
        ..exchange::Profile::default()
    };
    let flood = exchange::FloodConfig {
        per_key_per_min: u32::MAX,
        per_addr_per_min: u32::MAX,
        strikes_to_ban: u32::MAX,
        ban_secs: 1,
    }
    .policy();
    let public = exchange_key.verification_key().to_bytes();
    let mut replica_set = Vec::new();
    if replicas > 1 {
        for id in 1..=replicas as u64 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            replica_set.push(exchange::replica::ReplicaAddr {
                id,
                raft: format!("127.0.0.1:{port}"),
            });
        }
    }
    let dir = tempfile::tempdir()?;
    let mut addrs = Vec::new();
    let mut started = Vec::new();
    for r in 0..replicas {
        let chain = api::chain::ChainClient::connect(&[miner.to_owned()]).await?;
        let ex = if replicas == 1 {
            exchange::Exchange::new(public, profile.clone(), flood, chain).await
        } else {
            let cfg = exchange::replica::ReplicationConfig {
                id: r as u64 + 1,
                raft_file: dir.path().join(format!("raft-{r}.redb")),
                replicas: replica_set.clone(),
            };
            let replica = exchange::replica::Replica::start(
                &cfg,
                &cfg.raft_file,
                flood,
                &exchange_key.to_bytes(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            started.push(replica.clone());
            exchange::Exchange::replicated(public, profile.clone(), flood, chain, replica).await
        }
        .map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?.to_string());
        tokio::spawn(exchange::serve(ex, listener));
    }
    let mut leader = 0;
    if let Some(r) = started.first() {
        let mut m = r.metrics();
        let elected = tokio::time::timeout(Duration::from_secs(30), async {
            m.wait_for(|m| m.current_leader.is_some())
                .await
                .map(|m| m.current_leader)
        })
        .await;
        let id = elected
            .context("no leader elected in 30 s")?
            .context("a replica stopped")?
            .context("no leader")?;
        leader = usize::try_from(id - 1)?;
    }
    Ok((addrs.swap_remove(leader), (started, dir)))
}
