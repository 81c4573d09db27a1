//! The miner's control plane: [`MinerService`] implements `api::MinerApi` over a running
//! node (`consensus::node::NodeHandle`), and [`Relay`] passes accepted transactions on to
//! other miners. Bytes: `docs/wire.md` section 5.2.

use std::sync::Arc;
use std::time::Duration;

use api::{
    miner_client, AccountView, BlockView, ChainStatus, ChallengeView, ControlError, DealChunk,
    DealStage, DealView, MinerApi, MinerApiClient, RegistrationView, SampleView,
};
use consensus::ledger::{completion_deadline, rating, Deal, DealState, PolicyState, State};
use consensus::node::{NodeHandle, NodeState};
use proto::block::EncodedBlock;
use proto::tx::{AccountId, SignedTx, TxId};
use tokio::sync::mpsc;
use tracing::warn;

use crate::files::hex;

/// Most transactions one `submit_txs` call may carry.
pub const SUBMIT_TXS_MAX: usize = 50_000;

/// Sends accepted transactions on to other miners, one task per peer, best effort: a
/// peer that is down or slow misses them (it still gets them inside blocks).
#[derive(Clone, Debug)]
pub struct Relay {
    peers: Vec<mpsc::Sender<Arc<Vec<Vec<u8>>>>>,
}

impl Relay {
    /// One task per peer control address, each with a queue of 256 batches.
    pub fn start(addrs: Vec<String>) -> Relay {
        let peers = addrs
            .into_iter()
            .map(|addr| {
                let (tx, mut rx) = mpsc::channel::<Arc<Vec<Vec<u8>>>>(256);
                tokio::spawn(async move {
                    let mut client: Option<MinerApiClient> = None;
                    while let Some(batch) = rx.recv().await {
                        if client.is_none() {
                            client = miner_client(&addr).await.ok();
                        }
                        let Some(c) = &client else { continue };
                        let r = c
                            .relay_txs(tarpc::context::current(), batch.as_ref().clone())
                            .await;
                        if let Err(e) = r {
                            warn!(%addr, "relay failed: {e}");
                            client = None;
                        }
                    }
                });
                tx
            })
            .collect();
        Relay { peers }
    }

    fn send(&self, batch: Vec<Vec<u8>>) {
        if batch.is_empty() {
            return;
        }
        let batch = Arc::new(batch);
        for p in &self.peers {
            if p.try_send(Arc::clone(&batch)).is_err() {
                warn!("relay queue full: a batch is not relayed");
            }
        }
    }
}

/// The miner's [`MinerApi`]: serve it with `api::serve_control!(service.serve(), ...)`.
#[derive(Clone, Debug)]
pub struct MinerService {
    pub node: NodeHandle,
    pub relay: Relay,
    /// What its watcher raised (`crate::alerts::run`).
    pub alerts: Arc<api::alerts::Tracker<crate::alerts::Kind>>,
}

fn unavailable(e: impl std::fmt::Display) -> ControlError {
    ControlError::Unavailable(e.to_string())
}

impl MinerService {
    async fn admit(
        &self,
        txs: Vec<Vec<u8>>,
    ) -> Result<(Vec<Result<[u8; 32], String>>, Vec<Vec<u8>>), ControlError> {
        if txs.len() > SUBMIT_TXS_MAX {
            return Err(ControlError::Invalid(format!(
                "at most {SUBMIT_TXS_MAX} transactions a call"
            )));
        }
        let mut decoded = Vec::with_capacity(txs.len());
        let mut out: Vec<Result<[u8; 32], String>> = Vec::with_capacity(txs.len());
        let mut slots = Vec::new();
        for (i, raw) in txs.iter().enumerate() {
            match SignedTx::decode(raw) {
                Ok(t) => {
                    decoded.push(t);
                    slots.push(i);
                    out.push(Ok([0; 32]));
                }
                Err(e) => out.push(Err(e.to_string())),
            }
        }
        let results = self.node.submit(decoded).await.map_err(unavailable)?;
        let mut accepted = Vec::new();
        for (i, r) in slots.into_iter().zip(results) {
            out[i] = match r {
                Ok(id) => {
                    accepted.push(txs[i].clone());
                    Ok(id.0)
                }
                Err(e) => Err(e.to_string()),
            };
        }
        Ok((out, accepted))
    }
}

impl MinerService {
    /// The miner's metrics in the Prometheus text format (`metrics_listen`): the chain as
    /// this node holds it.
    pub async fn render_metrics(&self) -> String {
        let got = self
            .node
            .query(|s: &NodeState| {
                let l = s.ledger();
                let me = s.address();
                let power = l
                    .validators
                    .iter()
                    .find(|(k, _)| k.0 == me.0)
                    .map_or(0, |(_, p)| *p);
                (
                    l.height,
                    l.timestamp_ms,
                    s.mempool.len() as u64,
                    l.validators.len() as u64,
                    l.validators.values().sum::<u64>(),
                    power,
                    [l.total_supply().masp, l.total_supply().maspc],
                    [l.burned.masp, l.burned.maspc],
                    l.registrations.values().map(|r| r.deposit).sum::<u64>(),
                    l.held_maspc(),
                    s.votes(),
                )
            })
            .await;
        let Ok((
            height,
            ts,
            mempool,
            validators,
            total,
            power,
            supply,
            burned,
            deposits,
            escrow,
            votes,
        )) = got
        else {
            return String::new();
        };
        let peers = self.node.connected_peers().await;
        let mut e = api::metrics::Exposition::default();
        e.gauge(
            "mspace_miner_height",
            "Height of the last decided block.",
            height,
        );
        e.gauge_f64(
            "mspace_miner_last_block_timestamp_seconds",
            "The last decided block's timestamp (Unix seconds, as its proposer set it).",
            ts as f64 / 1000.0,
        );
        e.gauge(
            "mspace_miner_mempool_transactions",
            "Transactions waiting in this node's mempool.",
            mempool,
        );
        e.gauge(
            "mspace_miner_validators",
            "Validators of the next height.",
            validators,
        );
        e.gauge(
            "mspace_miner_voting_power",
            "Voting power of the next height's validators in all.",
            total,
        );
        e.gauge(
            "mspace_miner_own_voting_power",
            "This node's voting power at the next height (0: not a validator).",
            power,
        );
        e.family(
            "mspace_miner_supply",
            "What exists of each asset (balances, deposits, escrow, burned).",
            "gauge",
            &[
                (vec![("asset", "masp")], supply[0]),
                (vec![("asset", "maspc")], supply[1]),
            ],
        );
        e.family(
            "mspace_miner_burned",
            "Burned by fees, per asset.",
            "gauge",
            &[
                (vec![("asset", "masp")], burned[0]),
                (vec![("asset", "maspc")], burned[1]),
            ],
        );
        e.gauge(
            "mspace_miner_deposits_masp",
            "MASP held in registrations' deposits.",
            deposits,
        );
        e.gauge(
            "mspace_miner_escrow_maspc",
            "MASPC held in deals' escrow.",
            escrow,
        );
        if let Some(p) = peers {
            e.gauge(
                "mspace_miner_connected_peers",
                "Peers this node's network is connected to.",
                p.len() as u64,
            );
        }
        e.gauge(
            "mspace_miner_recent_heights_as_validator",
            "Of the last 100 heights, those this node was a validator at.",
            votes.heights,
        );
        e.gauge(
            "mspace_miner_missed_votes",
            "Of those heights, the ones whose commit certificate lacks this node's signature.",
            votes.missed,
        );
        let mut out = e.finish();
        self.alerts.render_metrics(
            "mspace_miner_alert",
            "Alerts the miner raises (1 while active), by kind and severity.",
            &mut out,
        );
        out
    }
}

impl MinerApi for MinerService {
    async fn submit_txs(
        self,
        _: tarpc::context::Context,
        txs: Vec<Vec<u8>>,
    ) -> Result<Vec<Result<[u8; 32], String>>, ControlError> {
        let (out, accepted) = self.admit(txs).await?;
        self.relay.send(accepted);
        Ok(out)
    }

    async fn relay_txs(
        self,
        _: tarpc::context::Context,
        txs: Vec<Vec<u8>>,
    ) -> Result<(), ControlError> {
        self.admit(txs).await.map(|_| ())
    }

    async fn status(self, _: tarpc::context::Context) -> Result<ChainStatus, ControlError> {
        let alerts = self.alerts.views();
        self.node
            .query(|s: &NodeState| {
                let l = s.ledger();
                ChainStatus {
                    chain_id: l.chain_id,
                    validator: hex(&s.address().0),
                    height: l.height,
                    tip: s.tip().1.to_string(),
                    timestamp_ms: l.timestamp_ms,
                    validators: l.validators.iter().map(|(k, p)| (hex(&k.0), *p)).collect(),
                    mempool_txs: s.mempool.len(),
                    proof_period_blocks: l.params.proof_period_blocks,
                    completion_timeout_blocks: l.params.completion_timeout_blocks,
                    supply: [l.total_supply().masp, l.total_supply().maspc],
                    genesis_supply: [l.genesis_supply.masp, l.genesis_supply.maspc],
                    deposits: [l.registrations.values().map(|r| r.deposit).sum(), 0],
                    escrow: [0, l.held_maspc()],
                    burned: [l.burned.masp, l.burned.maspc],
                    alerts,
                }
            })
            .await
            .map_err(unavailable)
    }

    async fn account(
        self,
        _: tarpc::context::Context,
        key: [u8; 32],
    ) -> Result<AccountView, ControlError> {
        self.node
            .query(move |s: &NodeState| account_view(s.ledger(), AccountId(key)))
            .await
            .map_err(unavailable)
    }

    async fn deal(
        self,
        _: tarpc::context::Context,
        id: [u8; 32],
    ) -> Result<Option<DealView>, ControlError> {
        self.node
            .query(move |s: &NodeState| {
                let l = s.ledger();
                l.deals
                    .get(&TxId(id))
                    .map(|d| deal_view(l, &TxId(id), d, true))
            })
            .await
            .map_err(unavailable)
    }

    async fn deals_of(
        self,
        _: tarpc::context::Context,
        key: [u8; 32],
        open: bool,
    ) -> Result<Vec<DealView>, ControlError> {
        self.node
            .query(move |s: &NodeState| {
                let l = s.ledger();
                let who = AccountId(key);
                let mut found: Vec<_> = l
                    .deals
                    .iter()
                    .filter(|(_, d)| d.sender == who || d.host == who)
                    .map(|(id, d)| deal_view(l, id, d, false))
                    .filter(|v| !open || v.stage.is_open())
                    .collect();
                found.sort_by_key(|v| std::cmp::Reverse(v.opened_height));
                found.truncate(api::DEALS_LISTED_MAX);
                found
            })
            .await
            .map_err(unavailable)
    }

    async fn challenge(
        self,
        _: tarpc::context::Context,
        host: [u8; 32],
    ) -> Result<Option<ChallengeView>, ControlError> {
        self.node
            .query(move |s: &NodeState| {
                let l = s.ledger();
                l.challenges
                    .get(&AccountId(host))
                    .map(|c| challenge_view(l, c))
            })
            .await
            .map_err(unavailable)
    }

    async fn hash_record(
        self,
        _: tarpc::context::Context,
        hash: [u8; 32],
    ) -> Result<Option<api::HashRecordView>, ControlError> {
        self.node
            .query(move |s: &NodeState| {
                s.ledger().hashes.get(&hash).map(|r| api::HashRecordView {
                    hash: hex(&hash),
                    height: r.height,
                    timestamp_ms: r.timestamp_ms,
                    by: hex(&r.by.0),
                })
            })
            .await
            .map_err(unavailable)
    }

    async fn block(
        self,
        _: tarpc::context::Context,
        height: u64,
        wait_ms: u64,
    ) -> Result<Option<BlockView>, ControlError> {
        if height == 0 {
            return Err(ControlError::Invalid("blocks start at height 1".into()));
        }
        // Subscribe before looking, so a block decided in between is not missed.
        let mut sub = self.node.subscribe();
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(wait_ms.min(api::BLOCK_WAIT_MAX_MS));
        loop {
            let found = self
                .node
                .query(move |s: &NodeState| s.store().block(height).ok().flatten())
                .await
                .map_err(unavailable)?;
            if let Some(bytes) = found {
                let b = EncodedBlock::decode(&bytes).map_err(unavailable)?;
                return Ok(Some(block_view(&b)));
            }
            match tokio::time::timeout_at(deadline, sub.recv()).await {
                Err(_) => return Ok(None),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                    return Err(unavailable("the node stopped"))
                }
                Ok(_) => {}
            }
        }
    }

    async fn tx_height(
        self,
        _: tarpc::context::Context,
        id: [u8; 32],
    ) -> Result<Option<u64>, ControlError> {
        self.node
            .query(move |s: &NodeState| s.tx_height(&TxId(id)))
            .await
            .map_err(unavailable)
    }

    async fn api_version(self, _: tarpc::context::Context) -> u32 {
        api::MINER_API_VERSION
    }

    async fn download(
        self,
        _: tarpc::context::Context,
        payment: [u8; 32],
    ) -> Result<Option<api::DownloadView>, ControlError> {
        self.node
            .query(move |s: &NodeState| {
                s.ledger()
                    .downloads
                    .get(&TxId(payment))
                    .map(|d| api::DownloadView {
                        payment: hex(&payment),
                        deal: hex(&d.deal.0),
                        receiver: hex(&d.receiver.0),
                        fee: d.fee,
                        host_part: d.host_part,
                        exchange: d.exchange.map(|x| hex(&x.0)),
                        exchange_part: d.exchange_part,
                        paid_height: d.paid_height,
                        deadline: d.deadline,
                        claimed: d.claimed,
                    })
            })
            .await
            .map_err(unavailable)
    }
}

/// How a role is named in [`RegistrationView`]s: `host`, `miner`, ...
pub fn role_name(role: proto::tx::Role) -> String {
    format!("{role:?}").to_lowercase()
}

/// A host's challenge as the control plane shows it.
pub fn challenge_view(l: &State, c: &consensus::ledger::HostChallenge) -> ChallengeView {
    ChallengeView {
        period: c.period,
        due: c.due,
        answered: c.answered,
        deals: u32::try_from(c.deals.len()).unwrap_or(u32::MAX),
        samples: c
            .samples
            .iter()
            .map(|smp| SampleView {
                deal: smp.deal.0,
                chunk: smp.chunk,
                chunk_id: l.deals[&smp.deal].chunks
                    [usize::try_from(smp.chunk).expect("a chunk of the deal")]
                .id
                .0,
                leaf: smp.leaf,
            })
            .collect(),
    }
}

/// A deal as the control plane shows it; `entries`: with its chunk list.
pub fn deal_view(l: &State, id: &TxId, d: &Deal, entries: bool) -> DealView {
    let stage = match &d.state {
        DealState::AwaitingCompletion => DealStage::AwaitingCompletion {
            deadline: completion_deadline(&l.params, d.opened_height, &d.chunks)
                .expect("checked when the deal was paid"),
        },
        // Its last covered period ends at this height.
        DealState::Active { start_height } => DealStage::Active {
            start_height: *start_height,
            end_height: (d.first_period + u64::from(d.parts)) * l.params.proof_period_blocks - 1,
        },
        DealState::Mismatched { chunks } => DealStage::Mismatched {
            chunks: chunks.clone(),
        },
        DealState::Expired => DealStage::Expired,
        DealState::Ended { end_height } => DealStage::Ended {
            end_height: *end_height,
        },
    };
    let chunk = |c: &proto::ChunkEntry| DealChunk {
        id: c.id.0,
        sealed_bytes: c.sealed_bytes,
        crc32c: c.crc32c,
    };
    DealView {
        id: hex(&id.0),
        sender: hex(&d.sender.0),
        host: hex(&d.host.0),
        offer: d.offer,
        stage,
        storage_fee: d.storage_fee,
        download_fee: d.download_fee,
        period_blocks: d.period_blocks,
        opened_height: d.opened_height,
        escrow: d.escrow,
        paid: d.paid,
        refunded: d.refunded,
        exchange: d.broker.map(|b| hex(&b.exchange.0)),
        commission_permille: d.broker.map_or(0, |b| b.commission_permille),
        commission_paid: d.commission_paid,
        downloads: d.downloads,
        download_income: d.download_income,
        insurance: d.insurance.map(|p| {
            let (state, paid) = match p.state {
                PolicyState::Pending => ("pending", 0),
                PolicyState::Running => ("running", 0),
                PolicyState::PaidOut { paid } => ("paid_out", paid),
                PolicyState::Lapsed => ("lapsed", 0),
            };
            api::InsuranceView {
                insurer: hex(&p.insurer.0),
                premium: p.premium,
                cover: p.cover,
                state: state.into(),
                paid,
            }
        }),
        parts: d.parts,
        proven: d.proven,
        missed: d.missed,
        chunks: d.chunks.len(),
        bytes: d.bytes(),
        first_period: d.first_period,
        entries: if entries {
            d.chunks.iter().map(chunk).collect()
        } else {
            Vec::new()
        },
    }
}

pub fn account_view(l: &State, id: AccountId) -> AccountView {
    let a = l.account(&id);
    let registrations = l
        .registrations
        .range((id, proto::tx::Role::Host)..=(id, proto::tx::Role::Insurer))
        .map(|((_, role), r)| RegistrationView {
            role: role_name(*role),
            deposit: r.deposit,
            endpoint: r.endpoint.clone(),
            since_height: r.since_height,
            unbonding_until: r.unbonding_until,
            exposure: r.exposure,
        })
        .collect();
    AccountView {
        key: hex(&id.0),
        masp: a.masp,
        maspc: a.maspc,
        nonce: a.nonce,
        registrations,
        allowance: l.allowances.get(&id).map_or(0, |x| x.amount),
        allowance_release_at: l.allowances.get(&id).and_then(|x| x.release_at),
        rating: l.stats.get(&id).map_or(0, |st| rating(st, l.height)),
        height: l.height,
    }
}

pub fn block_view(b: &EncodedBlock) -> BlockView {
    BlockView {
        height: b.header.height,
        id: b.id().to_string(),
        parent: b.header.parent.to_string(),
        timestamp_ms: b.header.timestamp_ms,
        proposer: hex(&b.header.proposer.0),
        txs: b.txs.iter().map(|t| t.id().0).collect(),
        bytes: b.bytes().len(),
    }
}
