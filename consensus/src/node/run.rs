//! Starts malachite around a [`NodeState`] and moves messages between the engine's
//! channels and the state's methods. Nothing here decides anything.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ed25519_consensus::SigningKey;
use malachitebft_app_channel::app::config::{
    ConsensusConfig, NodeConfig as EngineNodeConfig, P2pConfig, ValueSyncConfig,
};
use malachitebft_app_channel::app::engine::host::Next;
use malachitebft_app_channel::app::net::Multiaddr;
use malachitebft_app_channel::app::streaming::{StreamContent, StreamId, StreamMessage};
use malachitebft_app_channel::app::types::core::ValidatorSet as _;
use malachitebft_app_channel::app::types::Keypair;
use malachitebft_app_channel::{
    AppMsg, Channels, ConsensusContext, EngineHandle, NetworkContext, NetworkIdentity, NetworkMsg,
    NetworkRequest, RequestContext, SyncContext, WalContext,
};
use proto::tx::{SignedTx, TxId};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::codec::BorshCodec;
use super::state::{ChainParams, Committed, NodeError, NodeState};
use super::types::ProposalPart;
use crate::mempool::MempoolError;

/// Where and how a miner runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub moniker: String,
    /// Holds `chain.redb` and the engine's WAL (`wal/consensus.wal`).
    pub dir: PathBuf,
    /// libp2p listen address, e.g. `/ip4/127.0.0.1/tcp/27000`.
    pub p2p_listen: Multiaddr,
    /// The other validators' p2p addresses.
    pub peers: Vec<Multiaddr>,
    pub params: ChainParams,
}

#[derive(Clone, Debug)]
pub(crate) struct EngineConfig {
    moniker: String,
    consensus: ConsensusConfig,
    value_sync: ValueSyncConfig,
}

impl EngineNodeConfig for EngineConfig {
    fn moniker(&self) -> &str {
        &self.moniker
    }

    fn consensus(&self) -> &ConsensusConfig {
        &self.consensus
    }

    fn consensus_mut(&mut self) -> &mut ConsensusConfig {
        &mut self.consensus
    }

    fn value_sync(&self) -> &ValueSyncConfig {
        &self.value_sync
    }

    fn value_sync_mut(&mut self) -> &mut ValueSyncConfig {
        &mut self.value_sync
    }
}

/// A question about the chain, answered on the node's task with the state at hand.
pub type Query = Box<dyn FnOnce(&NodeState) + Send>;

enum Command {
    /// Transactions whose signatures were checked (`check_signatures`), each or its error.
    Submit(
        Vec<Result<SignedTx, MempoolError>>,
        oneshot::Sender<Vec<Result<TxId, MempoolError>>>,
    ),
    Query(Query),
}

/// What the rest of the miner (its control plane) holds to talk to the running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: mpsc::Sender<CommandBox>,
    committed: broadcast::Sender<Arc<Committed>>,
    /// The network layer's requests (its state: the connected peers).
    net_requests: mpsc::Sender<NetworkRequest>,
}

/// `Command` is not `Debug` (it holds closures); this wrapper is.
struct CommandBox(Command);

impl std::fmt::Debug for CommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the node has stopped")]
pub struct Stopped;

impl NodeHandle {
    /// Admits transactions to this node's mempool; one result per transaction.
    pub async fn submit(
        &self,
        txs: Vec<SignedTx>,
    ) -> Result<Vec<Result<TxId, MempoolError>>, Stopped> {
        // Signatures are checked here, on a blocking thread, not on the task that answers
        // the engine: a flood of submissions cannot delay a vote.
        let txs = tokio::task::spawn_blocking(move || super::state::check_signatures(txs))
            .await
            .map_err(|_| Stopped)?;
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(CommandBox(Command::Submit(txs, tx)))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Runs `f` on the node's state and returns what it returns.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NodeState) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        let q: Query = Box::new(move |s| {
            let _ = tx.send(f(s));
        });
        self.commands
            .send(CommandBox(Command::Query(q)))
            .await
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Every block this node commits from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.committed.subscribe()
    }

    /// The monikers of the peers this node's network is connected to now, sorted; None
    /// when the network layer does not answer within 5 s.
    pub async fn connected_peers(&self) -> Option<Vec<String>> {
        let dump = tokio::time::timeout(
            Duration::from_secs(5),
            NetworkRequest::dump_state(&self.net_requests),
        )
        .await
        .ok()?
        .ok()??;
        let mut names: Vec<String> = dump.peers.values().map(|p| p.moniker.clone()).collect();
        names.sort();
        Some(names)
    }
}

pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(u64::MAX)
}

/// Opens the node's state, starts the engine (libp2p on `p2p_listen`, WAL, sync) and the
/// loop that serves it. Returns once the engine runs; the loop ends with the engine.
pub async fn start(
    cfg: NodeConfig,
    key: SigningKey,
) -> Result<
    (
        NodeHandle,
        EngineHandle,
        tokio::task::JoinHandle<Result<(), String>>,
    ),
    String,
> {
    let state = open_state(&cfg.dir, key.clone(), cfg.params.clone())?;
    let address = state.address();
    info!(
        moniker = %cfg.moniker,
        %address,
        height = state.ledger().height,
        validators = state.validator_set().count(),
        "chain state rebuilt from the block store"
    );
    let keypair =
        Keypair::ed25519_from_bytes(key.to_bytes()).map_err(|e| format!("network key: {e}"))?;
    let p2p = P2pConfig {
        listen_addr: cfg.p2p_listen.clone(),
        persistent_peers: cfg.peers.clone(),
        // Peers dial from ephemeral ports; the validator set, not the address, is what
        // admits a peer's votes, so inbound connections are accepted.
        persistent_peers_only: false,
        // A block (at most BLOCK_BYTES_MAX) must fit one gossip message.
        pubsub_max_size: bytesize::ByteSize::mib(8),
        rpc_max_size: bytesize::ByteSize::mib(32),
        ..P2pConfig::default()
    };
    let engine_cfg = engine_config(
        cfg.moniker.clone(),
        p2p,
        Duration::from_secs(2),
        Duration::from_secs(5),
    );
    let signer = state.signer().clone();
    let (channels, engine) = malachitebft_app_channel::start_engine(
        state.ctx,
        engine_cfg,
        WalContext::new(wal_path(&cfg.dir), BorshCodec),
        NetworkContext::new(
            NetworkIdentity::new(cfg.moniker.clone(), keypair, Some(address.to_string())),
            BorshCodec,
        ),
        ConsensusContext::new_validator(address, Box::new(signer.clone()), Box::new(signer)),
        SyncContext::new(BorshCodec),
        RequestContext::new(100),
    )
    .await
    .map_err(|e| format!("cannot start the consensus engine: {e}"))?;
    let (handle, task) = spawn_serve(state, channels);
    Ok((handle, engine, task))
}

/// The engine's write-ahead log, beside `chain.redb`.
pub(crate) fn wal_path(dir: &std::path::Path) -> PathBuf {
    dir.join("wal").join("consensus.wal")
}

/// Creates the node's folders and rebuilds its state from the block store.
pub(crate) fn open_state(
    dir: &std::path::Path,
    key: SigningKey,
    params: super::state::ChainParams,
) -> Result<NodeState, String> {
    std::fs::create_dir_all(dir.join("wal"))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    NodeState::open(dir, key, params).map_err(|e| e.to_string())
}

/// The engine's settings: the p2p ones (unused by an in-memory network) and how often
/// value sync tells peers its tip.
pub(crate) fn engine_config(
    moniker: String,
    p2p: P2pConfig,
    status_interval: Duration,
    request_timeout: Duration,
) -> EngineConfig {
    EngineConfig {
        moniker,
        consensus: ConsensusConfig {
            p2p,
            ..ConsensusConfig::default()
        },
        value_sync: ValueSyncConfig {
            status_update_interval: status_interval,
            request_timeout,
            // Under the codec's MESSAGE_BYTES_MAX (16 MiB), which the receiving side enforces.
            max_response_size: bytesize::ByteSize::mib(12),
            ..ValueSyncConfig::default()
        },
    }
}

/// Starts the loop that answers the engine's `channels` with `state`, and the handle that
/// talks to it.
pub(crate) fn spawn_serve(
    state: NodeState,
    channels: Channels<super::types::MsContext>,
) -> (NodeHandle, tokio::task::JoinHandle<Result<(), String>>) {
    let (commands, rx) = mpsc::channel(1024);
    let (committed, _) = broadcast::channel(1024);
    let handle = NodeHandle {
        commands,
        committed: committed.clone(),
        net_requests: channels.net_requests.clone(),
    };
    let task = tokio::spawn(serve(state, channels, rx, committed));
    (handle, task)
}

fn stream_id(part: &ProposalPart) -> StreamId {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&part.height.0.to_be_bytes());
    b.extend_from_slice(&part.round.as_i64().to_be_bytes());
    StreamId::new(Bytes::from(b))
}

async fn publish(channels: &Channels<super::types::MsContext>, part: ProposalPart) {
    let id = stream_id(&part);
    for msg in [
        StreamMessage::new(id.clone(), 0, StreamContent::Data(part)),
        StreamMessage::new(id, 1, StreamContent::Fin),
    ] {
        if channels
            .network
            .send(NetworkMsg::PublishProposalPart(msg))
            .await
            .is_err()
        {
            warn!("the network actor is gone: proposal not published");
        }
    }
}

async fn serve(
    mut state: NodeState,
    mut channels: Channels<super::types::MsContext>,
    mut commands: mpsc::Receiver<CommandBox>,
    committed: broadcast::Sender<Arc<Committed>>,
) -> Result<(), String> {
    // Open while some handle exists; the engine is served either way.
    let mut handles_open = true;
    loop {
        tokio::select! {
            cmd = commands.recv(), if handles_open => match cmd {
                Some(CommandBox(Command::Submit(txs, reply))) => {
                    let _ = reply.send(state.submit_checked(txs));
                }
                Some(CommandBox(Command::Query(q))) => q(&state),
                // Every handle dropped: keep serving the engine.
                None => handles_open = false,
            },
            msg = channels.consensus.recv() => {
                let Some(msg) = msg else {
                    info!("the consensus engine stopped");
                    return Ok(());
                };
                if let Err(e) = on_app_msg(&mut state, &channels, msg, &committed).await {
                    error!("{e}");
                    return Err(e.to_string());
                }
            }
        }
    }
}

async fn on_app_msg(
    state: &mut NodeState,
    channels: &Channels<super::types::MsContext>,
    msg: AppMsg<super::types::MsContext>,
    committed: &broadcast::Sender<Arc<Committed>>,
) -> Result<(), NodeError> {
    match msg {
        AppMsg::ConsensusReady { reply } => {
            info!(height = %state.next_height(), "consensus ready");
            let _ = reply.send((state.next_height(), state.height_params()));
        }
        AppMsg::StartedRound {
            height,
            round,
            reply_value,
            ..
        } => {
            debug!(%height, %round, "round started");
            let _ = reply_value.send(state.started_round(height, round, now_ms())?);
        }
        AppMsg::GetValue {
            height,
            round,
            reply,
            ..
        } => {
            let (value, part) = state.propose(height, round, now_ms())?;
            debug!(%height, %round, id = %value.value.id, "proposing");
            let _ = reply.send(value);
            publish(channels, part).await;
        }
        AppMsg::ExtendVote { reply, .. } => {
            let _ = reply.send(None);
        }
        AppMsg::VerifyVoteExtensions {
            extensions, reply, ..
        } => {
            // Vote extensions are disabled on this chain: any that arrive are refused.
            let verdicts = extensions
                .into_iter()
                .map(|(a, _)| {
                    (
                        a,
                        Err(malachitebft_app_channel::app::consensus::VoteExtensionError::InvalidVoteExtension),
                    )
                })
                .collect();
            let _ = reply.send(verdicts);
        }
        AppMsg::RestreamProposal {
            height,
            round,
            valid_round,
            address,
            value_id,
        } => {
            // Two cases in malachite: this node re-proposes a locked value in its own round
            // (it signs the part anew, for this round and valid_round), or a validator that
            // locked relays the original proposer's part as it was (its signature intact).
            if let Some(mut part) = state.restream(&value_id) {
                if address == state.address() {
                    part.height = height;
                    part.round = round;
                    part.pol_round = valid_round;
                    part.proposer = address;
                    part.signature = state.signer().sign(&part.sign_bytes(state.ctx.chain_id));
                    publish(channels, part).await;
                } else if part.proposer == address && part.height == height && part.round == round {
                    publish(channels, part).await;
                } else {
                    debug!(%height, %round, "no original part to restream");
                }
            }
        }
        AppMsg::GetHistoryMinHeight { reply } => {
            let _ = reply.send(state.history_min_height());
        }
        AppMsg::ReceivedProposalPart { part, reply, .. } => {
            let out = match part.content {
                StreamContent::Data(p) => state.received_part(p, now_ms())?,
                StreamContent::Fin => None,
            };
            let _ = reply.send(out);
        }
        AppMsg::Decided {
            certificate, reply, ..
        } => {
            match state.decided(&certificate) {
                Ok(c) => {
                    debug!(height = c.height, txs = c.txs.len(), "committed");
                    let _ = committed.send(Arc::new(c));
                }
                Err(e) => {
                    // Fail-stop: restarting the height would wipe the engine's WAL and could
                    // make this node sign what conflicts with its votes. Stopping keeps the
                    // WAL; a restart rebuilds from the block store and syncs the block.
                    error!(height = %certificate.height, "cannot commit the decided block: {e}; stopping");
                    return Err(e);
                }
            }
            let _ = reply.send(());
        }
        AppMsg::Finalized {
            reply, evidence, ..
        } => {
            for (offender, doubles) in &evidence.votes {
                for (a, b) in doubles {
                    match state.report_equivocation(a, b) {
                        Ok(tx) => warn!(%offender, %tx, "equivocation: reported for slashing"),
                        Err(e) => warn!(%offender, "equivocation seen, not reported: {e}"),
                    }
                }
            }
            if !evidence.proposals.is_empty() {
                warn!(
                    "conflicting proposals seen at this height: {:?}",
                    evidence.proposals
                );
            }
            let _ = reply.send(Next::Start(state.next_height(), state.height_params()));
        }
        AppMsg::GetDecidedValues { range, reply } => {
            let _ = reply.send(state.decided_values(range)?);
        }
        AppMsg::ProcessSyncedValue {
            height,
            round,
            proposer,
            value_bytes,
            reply,
        } => {
            let _ = reply.send(state.synced_value(height, round, proposer, &value_bytes, now_ms()));
        }
    }
    Ok(())
}
