//! The miner's control plane: [`MinerService`] implements `api::MinerApi` over a running
//! node (`consensus::node::NodeHandle`), and [`Relay`] passes accepted transactions on to
//! other miners. Bytes: `docs/wire.md` section 5.2.

use std::sync::Arc;
use std::time::Duration;

use api::{
    miner_client, AccountView, BlockView, ChainStatus, ControlError, DealView, MinerApi,
    MinerApiClient, RegistrationView,
};
use consensus::ledger::{rating, DealState, State};
use consensus::node::{NodeHandle, NodeState};
use proto::block::EncodedBlock;
use proto::tx::{AccountId, SignedTx, TxId};
use tokio::sync::mpsc;
use tracing::warn;

use crate::files::hex;

/// Longest a client may ask a miner to wait for a block.
pub const BLOCK_WAIT_MAX_MS: u64 = 10_000;
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
                s.ledger().deals.get(&TxId(id)).map(|d| DealView {
                    id: hex(&id),
                    sender: hex(&d.sender.0),
                    host: hex(&d.host.0),
                    state: match &d.state {
                        DealState::AwaitingCompletion => "awaiting-completion".into(),
                        DealState::Active { start_height } => {
                            format!("active since {start_height}")
                        }
                        DealState::Mismatched { chunks } => {
                            format!("mismatched at chunks {chunks:?}")
                        }
                        DealState::Expired => "expired".into(),
                        DealState::Ended { end_height } => format!("ended at {end_height}"),
                    },
                    storage_fee: d.storage_fee,
                    download_fee: d.download_fee,
                    period_blocks: d.period_blocks,
                    opened_height: d.opened_height,
                    escrow: d.escrow,
                    chunks: d.chunks.len(),
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
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(BLOCK_WAIT_MAX_MS));
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
}

/// How a role is named in [`RegistrationView`]s: `host`, `miner`, ...
pub fn role_name(role: proto::tx::Role) -> String {
    format!("{role:?}").to_lowercase()
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
        })
        .collect();
    AccountView {
        key: hex(&id.0),
        masp: a.masp,
        maspc: a.maspc,
        nonce: a.nonce,
        registrations,
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
