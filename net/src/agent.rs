//! The host's agent: follows the chain and carries out what `market::host::Agent` plans
//! for this host's deals. At every decided block it lists its open deals (from the first
//! miner of its list that answers; a miner that stops answering is left for the next), and
//! for each block:
//!
//! - a paid deal whose chunks are all in the store is completed: every chunk is read back
//!   through the engine (verified against its id) and its CRC32C computed here, so the
//!   completion states what the host holds, not what the sender declared;
//! - the host's challenge for the current proof period (the chain samples a few leaves
//!   over all its deals) is answered from the store (`Engine::prove_many`) in one
//!   `StorageProofs` transaction, submitted before any completion is read back (so a
//!   large deal's completion never makes a period's answer late); a block's transactions
//!   are signed with consecutive nonces;
//! - a deal that left the open list is looked up, and once the chain says it is over, its
//!   file record and the chunks no other deal covers are released (`Host::release`);
//!   the deals the host holds are recorded on its disk (`HostState::hold_deal`), so a
//!   deal that ended while the host was down is released when it starts again.
//!
//! Upload links for paid deals are granted by the control plane (`HostApi::deal_link`),
//! which checks the deal on the chain itself. Download links for paid downloads too
//! (`HostApi::download_link`): the control plane records the payment on disk
//! (`Host::queue_claim`) before it gives the link, and the agent claims it at the next
//! block (`DownloadClaim`), again after a restart, until the chain shows it claimed or its
//! window closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::chain::{ChainClient, ChainError};
use api::{DealStage, DealView};
use ed25519_consensus::SigningKey;
use market::host::{Action, Agent, Challenge, OpenDeal, Stage};
use proto::tx::{AccountId, SignedTx, Tx, TxBody, TxId};
use proto::ChunkId;
use tokio::sync::watch;

use crate::host::Host;
use crate::{hex, parse_hex32};

/// Fee the agent pays per transaction (MASPC).
pub const AGENT_FEE: u64 = 1;
/// Longest the agent waits for the next block before listing its deals again.
const BLOCK_WAIT: Duration = Duration::from_secs(5);
/// Blocks a submitted download claim is given to land before it is sent again.
const CLAIM_RESEND_BLOCKS: u64 = 5;
/// Pause after the whole miner list failed, before trying it again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What the agent has done, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStats {
    pub height: u64,
    pub completions_sent: u64,
    pub proofs_sent: u64,
    pub deals_closed: u64,
    /// Chunks of closed deals removed from the store (no open deal covered them).
    pub chunks_released: u64,
    /// Download payments claimed (`DownloadClaim` transactions accepted by a miner).
    pub claims_sent: u64,
}

/// Runs the agent until `stop` turns true. `stats` is updated after every block.
pub async fn run(
    host: Arc<Host>,
    key: SigningKey,
    miners: Vec<String>,
    stats: watch::Sender<AgentStats>,
    mut stop: watch::Receiver<bool>,
) {
    let me = AccountId(key.verification_key().to_bytes());
    let mut agent = Agent::new();
    // Download claims submitted, by payment, with the height they were sent at.
    let mut claims_sent: HashMap<[u8; 32], u64> = HashMap::new();
    let mut chain: Option<ChainClient> = None;
    while !*stop.borrow() {
        let c = match chain.as_mut() {
            Some(c) => c,
            None => match ChainClient::connect(&miners).await {
                Ok(c) => chain.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "agent: no miner answers; trying again");
                    pause(&mut stop, RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        let height = match step(&host, &key, me, c, &mut agent, &mut claims_sent, &stats).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "agent: chain call failed; trying again");
                chain = None;
                pause(&mut stop, RETRY_PAUSE).await;
                continue;
            }
        };
        // Wait for the next block (or stop); a timeout just plans again.
        let next = height + 1;
        tokio::select! {
            _ = stop.changed() => {}
            r = c_block(chain.as_mut(), next) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "agent: following the chain failed");
                    chain = None;
                }
            }
        }
    }
}

async fn c_block(chain: Option<&mut ChainClient>, height: u64) -> Result<(), ChainError> {
    if let Some(c) = chain {
        c.block(height, BLOCK_WAIT).await?;
    }
    Ok(())
}

async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) {
    let _ = tokio::time::timeout(d, stop.changed()).await;
}

fn open_deal(v: &DealView) -> Option<OpenDeal> {
    let id = parse_hex32(&v.id)?;
    let stage = match v.stage {
        DealStage::AwaitingCompletion { deadline } => Stage::Awaiting { deadline },
        DealStage::Active { .. } => Stage::Active,
        _ => return None,
    };
    Some(OpenDeal { id, stage })
}

/// One round: list, plan, act. Returns the height the plan was made at.
async fn step(
    host: &Arc<Host>,
    key: &SigningKey,
    me: AccountId,
    chain: &mut ChainClient,
    agent: &mut Agent,
    claims_sent: &mut HashMap<[u8; 32], u64>,
    stats: &watch::Sender<AgentStats>,
) -> Result<u64, ChainError> {
    let status = chain.status().await?;
    let height = status.height;
    let views = chain.deals_of(me, true).await?;
    let open: Vec<OpenDeal> = views
        .iter()
        .filter(|v| v.host == hex(&me.0))
        .filter_map(open_deal)
        .collect();
    let challenge = chain.challenge(me).await?.map(|c| Challenge {
        period: c.period,
        samples: c.samples.iter().map(|s| (s.chunk_id, s.leaf)).collect(),
        due: c.due,
        answered: c.answered,
    });
    let challenge = challenge.as_ref();
    // The deals this host still holds data for (on its disk): one that is not open any
    // more is released even if it ended while the host was down.
    let held = host.state().deals();
    // Which chunks of awaiting deals the store holds (from its index: no disk read).
    let mut stored: HashMap<[u8; 32], bool> = HashMap::new();
    let mut actions = agent.plan(height, &open, &held, challenge, |_| false);
    // Fetch chunk lists first, then plan again with the store's answers.
    let mut fetched = false;
    for a in &actions {
        match a {
            Action::FetchChunks { deal } => {
                if let Some(v) = chain.deal(TxId(*deal)).await? {
                    agent.learned(*deal, v.entries.iter().map(|e| e.id).collect());
                    fetched = true;
                }
            }
            Action::CheckClosed { deal } => match chain.deal(TxId(*deal)).await? {
                // Still open (a lagging miner's list), or unknown to this miner (one
                // behind the chain): only a deal the chain says is over is released.
                Some(v) if v.stage.is_open() => {}
                None => {}
                Some(_) => {
                    // The deal's last chunk is its file's manifest.
                    let manifest = agent.chunks_of(deal).last().copied();
                    let free = agent.closed(deal);
                    let manifest = manifest.filter(|m| free.contains(m)).map(ChunkId);
                    let ids: Vec<ChunkId> = free.iter().map(|c| ChunkId(*c)).collect();
                    match host.release(*deal, manifest, &ids).await {
                        Ok(r) if r.done() => {
                            tracing::info!(
                                deal = hex(deal),
                                removed = r.removed,
                                "deal over: its chunks released"
                            );
                            stats.send_modify(|s| {
                                s.deals_closed += 1;
                                s.chunks_released += r.removed;
                            });
                        }
                        // A part of a file whose record goes with a later part: held
                        // until then, and released again at a later block.
                        Ok(r) => {
                            tracing::debug!(
                                deal = hex(deal),
                                removed = r.removed,
                                listed = r.deferred,
                                "deal over; chunks a recorded file lists wait for its release"
                            );
                            stats.send_modify(|s| s.chunks_released += r.removed);
                        }
                        Err(e) => tracing::error!(
                            deal = hex(deal),
                            error = %e,
                            "deal over, but its chunks could not be released"
                        ),
                    }
                }
            },
            _ => {}
        }
    }
    if fetched
        || actions
            .iter()
            .any(|a| matches!(a, Action::CheckClosed { .. }))
    {
        actions = agent.plan(height, &open, &held, challenge, |_| false);
    }
    // The store's answers for the chunks of awaiting deals.
    let awaiting: Vec<[u8; 32]> = open
        .iter()
        .filter(|d| matches!(d.stage, Stage::Awaiting { .. }))
        .map(|d| d.id)
        .collect();
    if !awaiting.is_empty() {
        // Every lookup is sent to the engine first, then the answers are read: one round
        // trip to the shards, not one per chunk.
        let mut asked = Vec::new();
        for deal in &awaiting {
            for c in agent.chunks_of(deal) {
                if let std::collections::hash_map::Entry::Vacant(e) = stored.entry(c) {
                    e.insert(false);
                    asked.push((c, host.engine().stat_async(ChunkId(c)).await));
                }
            }
        }
        for (c, pending) in asked {
            let have = matches!(pending.recv().await, Ok(Some(_)));
            stored.insert(c, have);
        }
        actions = agent.plan(height, &open, &held, challenge, |c| {
            stored.get(c).copied().unwrap_or(false)
        });
    }

    let mut bodies: Vec<(Option<Action>, TxBody)> = Vec::new();
    for a in &actions {
        let Action::Prove { period, samples } = a else {
            continue;
        };
        let challenges: Vec<(ChunkId, u64)> =
            samples.iter().map(|(c, l)| (ChunkId(*c), *l)).collect();
        let engine = Arc::clone(host.engine());
        let answers = tokio::task::spawn_blocking(move || engine.prove_many(&challenges))
            .await
            .map_err(|e| ChainError::Refused(format!("the proving task failed: {e}")))?;
        let proofs: Result<Vec<Vec<u8>>, String> = match answers {
            Ok(answers) => answers
                .into_iter()
                .map(|a| a.proof.map_err(|e| e.to_string()))
                .collect(),
            Err(e) => Err(e.to_string()),
        };
        match proofs {
            Ok(proofs) => bodies.push((
                Some(a.clone()),
                TxBody::StorageProofs {
                    period: *period,
                    proofs,
                },
            )),
            Err(e) => tracing::error!(
                period,
                error = %e,
                "cannot prove a challenged chunk: this period will be missed"
            ),
        }
    }
    // Proofs go first, on their own: reading back a large deal for its completion must
    // not make a period's answer late.
    let mut out = Outbox {
        chain_id: status.chain_id,
        key,
        me,
        height,
        nonce: None,
    };
    out.submit(chain, agent, stats, bodies).await?;
    let mut bodies: Vec<(Option<Action>, TxBody)> = Vec::new();
    for a in &actions {
        if let Action::Complete { deal, chunks } = a {
            match crcs_of(host, chunks).await {
                Ok(crcs) => bodies.push((
                    Some(a.clone()),
                    TxBody::UploadCompletion {
                        deal: TxId(*deal),
                        crcs,
                    },
                )),
                Err(e) => tracing::error!(
                    deal = hex(deal),
                    error = %e,
                    "cannot read back a paid deal's chunks to complete it"
                ),
            }
        }
    }
    out.submit(chain, agent, stats, bodies).await?;
    // Download payments whose links the control plane gave out (recorded on disk before
    // each link): claimed, unless the chain shows one claimed or its window closed, then
    // forgotten; a claim submitted recently is given a few blocks to land first.
    let mut bodies: Vec<(Option<Action>, TxBody)> = Vec::new();
    let recorded = host.state().claims();
    claims_sent.retain(|p, _| recorded.iter().any(|(r, _)| r == p));
    for (p, deadline) in recorded {
        let settled = match chain.download(TxId(p)).await? {
            Some(d) => d.claimed,
            // Unknown to this miner: settled once past the deadline (refunded); before,
            // a miner behind the one the control plane read it from.
            None => height > deadline,
        };
        if settled {
            if let Err(e) = host.state().drop_claim(&p) {
                tracing::error!(payment = hex(&p), error = %e, "cannot forget a settled claim");
            }
            claims_sent.remove(&p);
            continue;
        }
        if claims_sent
            .get(&p)
            .is_some_and(|at| height < at + CLAIM_RESEND_BLOCKS)
        {
            continue;
        }
        claims_sent.insert(p, height);
        bodies.push((None, TxBody::DownloadClaim { payment: TxId(p) }));
    }
    out.submit(chain, agent, stats, bodies).await?;
    stats.send_modify(|s| s.height = height);
    Ok(height)
}

/// What the agent signs with in one step; `nonce` carries on between its submissions.
struct Outbox<'a> {
    chain_id: u64,
    key: &'a SigningKey,
    me: AccountId,
    height: u64,
    nonce: Option<u64>,
}

impl Outbox<'_> {
    /// Signs `bodies` with consecutive nonces (from the account's, the first time) and
    /// submits them in one call.
    async fn submit(
        &mut self,
        chain: &mut ChainClient,
        agent: &mut Agent,
        stats: &watch::Sender<AgentStats>,
        bodies: Vec<(Option<Action>, TxBody)>,
    ) -> Result<(), ChainError> {
        if bodies.is_empty() {
            return Ok(());
        }
        let first = match self.nonce {
            Some(n) => n,
            None => chain.account(self.me).await?.nonce,
        };
        let txs: Vec<SignedTx> = bodies
            .iter()
            .zip(first..)
            .map(|((_, body), nonce)| {
                Tx {
                    chain_id: self.chain_id,
                    signer: self.me,
                    nonce,
                    fee: AGENT_FEE,
                    body: body.clone(),
                }
                .sign(self.key)
            })
            .collect();
        let answers = chain.submit_signed(&txs).await?;
        let mut next = first;
        for ((action, _), answer) in bodies.iter().zip(answers) {
            match answer {
                Ok(_) => {
                    next += 1;
                    if let Some(action) = action {
                        agent.submitted(action, self.height);
                    }
                    stats.send_modify(|s| match action {
                        Some(Action::Complete { .. }) => s.completions_sent += 1,
                        Some(_) => s.proofs_sent += 1,
                        None => s.claims_sent += 1,
                    });
                }
                Err(e) => {
                    tracing::warn!(?action, error = %e, "the miner refused the agent's transaction")
                }
            }
        }
        self.nonce = Some(next);
        Ok(())
    }
}

/// Reads in flight at once while a deal is read back: bounded, since a chunk may be
/// 64 MiB.
const READ_BACK_WINDOW: usize = 8;

/// Reads each chunk back from the store (verified against its id) and computes its CRC32C,
/// a few reads in flight at a time.
async fn crcs_of(
    host: &Arc<Host>,
    chunks: &[[u8; 32]],
) -> Result<Vec<u32>, engine::store::StoreError> {
    let mut crcs = Vec::with_capacity(chunks.len());
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = chunks.iter();
    loop {
        while in_flight.len() < READ_BACK_WINDOW {
            let Some(c) = next.next() else { break };
            in_flight.push_back(host.engine().get_async(ChunkId(*c)).await);
        }
        let Some(pending) = in_flight.pop_front() else {
            break;
        };
        let bytes = pending.recv().await?;
        crcs.push(engine::codec::crc32c(&bytes));
    }
    Ok(crcs)
}
