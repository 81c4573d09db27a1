//! A whole validator set in one process, each node a real engine (malachite, its WAL, value
//! sync) around a real [`NodeState`] and block store, joined by an in-memory network whose
//! faults come from a seed. `consensus/tests/it/sim.rs` runs it for 4 and 7 validators.
//!
//! The seed decides the fault schedule ([`schedule`]): a list of phases, each with link
//! faults (drop, duplicate, delay, hence reorder), at most one kind of node fault (crash
//! and later restart, a minority cut off, a split with no quorum on either side, or the
//! byzantine validator double-voting) and an end (a number of new heights, or a time for a
//! split). The same seed gives the same schedule; the per-message draws come from a
//! generator seeded from it too, but thread timing decides which message meets which draw,
//! so a replay repeats the schedule, not every interleaving.
//!
//! What a run checks ([`run`]): no two nodes ever commit different blocks at one height
//! (as they commit, and again over every stored block at the end); every phase with at
//! most f of the power faulty reaches its heights before a deadline; after the last phase
//! every node, restarted ones included, reaches the final height; a split without a quorum
//! decides at most the height already under way; and when the byzantine validator
//! double-voted, a ledger transaction carrying its two votes slashed it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use malachitebft_app_channel::app::config::P2pConfig;
use malachitebft_app_channel::app::consensus::LivenessMsg;
use malachitebft_app_channel::app::engine::network::{
    Msg as NetMsg, NetworkEvent, NetworkRef, Subscriber,
};
use malachitebft_app_channel::app::net::Multiaddr;
use malachitebft_app_channel::app::types::core::{LinearTimeouts, NilOrVal, SignedMessage};
use malachitebft_app_channel::app::types::{Keypair, PeerId, SignedConsensusMsg};
use malachitebft_app_channel::{
    ConsensusContext, EngineBuilder, EngineHandle, NetworkMsg, RequestContext, SyncContext,
    WalContext,
};
use malachitebft_sync::{InboundRequestId, OutboundRequestId};
use proto::tx::{AccountId, Asset, Role, Tx, TxBody};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::codec::BorshCodec;
use super::run::{engine_config, open_state, spawn_serve, wal_path, NodeHandle};
use super::state::ChainParams;
use super::types::{MsContext, SigningProvider, ValueId, Vote};
use crate::ledger::{Genesis, FEE_MIN};

/// Chain id of simulated chains.
pub const SIM_CHAIN_ID: u64 = 77;
/// Each validator's stake (equal: "f of the power" is f validators).
const STAKE: u64 = 100_000;
/// Phases that end on heights must reach them within this plus `PER_HEIGHT` each.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
const PER_HEIGHT: Duration = Duration::from_millis(500);
/// Any single step the driver awaits (start, kill, a query) must end within this.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// Bounds an await of the driver: a hang is a finding, reported with what hung.
async fn bounded<T>(
    what: impl fmt::Display,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    tokio::time::timeout(STEP_DEADLINE, fut)
        .await
        .map_err(|_| format!("hang: {what} took over {STEP_DEADLINE:?}"))
}

/// A small deterministic generator (SplitMix64): the fault schedule must be a function of
/// the seed alone.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).expect("below a usize")
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below_u32(&mut self, n: u32) -> u32 {
        u32::try_from(self.below(u64::from(n))).expect("below a u32")
    }

    /// 32 random bytes (keys, invented block ids).
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        out
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }

    /// `k` distinct indices below `n`, sorted.
    fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.index(n - i);
            all.swap(i, j);
        }
        let mut out = all[..k].to_vec();
        out.sort_unstable();
        out
    }
}

/// What every link does to messages during a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    pub drop_per_mille: u32,
    pub dup_per_mille: u32,
    /// Each copy waits a uniform 0..=this before delivery (so messages overtake each other).
    pub delay_max_ms: u64,
}

/// The node fault of a phase (at most one kind at a time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeFault {
    None,
    /// These validators stop (their engines killed mid-flight) and restart when the phase
    /// ends, from their block store and WAL.
    Crash(Vec<usize>),
    /// These validators (at most f) can reach no one else until the phase ends.
    Isolate(Vec<usize>),
    /// Two sides, neither with a quorum: the chain must stall and resume after the heal.
    Split(Vec<usize>),
    /// The byzantine validator signs a second, conflicting vote for every vote it casts;
    /// `crash` more honest validators are down meanwhile (so the faulty stay at most f).
    Equivocate {
        crash: Vec<usize>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The highest commit among running nodes grows by this many heights.
    Heights(u64),
    /// A time (for a split, which must not progress).
    Millis(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    pub links: LinkFaults,
    pub fault: NodeFault,
    pub until: Until,
}

/// A run's plan, all of it from the seed.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub seed: u64,
    pub validators: usize,
    pub byzantine: usize,
    pub phases: Vec<Phase>,
}

impl Schedule {
    /// The heights the phases ask for, in total.
    pub fn heights(&self) -> u64 {
        self.phases
            .iter()
            .map(|p| match p.until {
                Until::Heights(h) => h,
                Until::Millis(_) => 0,
            })
            .sum()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {:#x}: {} validators, validator {} byzantine, {} phases",
            self.seed,
            self.validators,
            self.byzantine,
            self.phases.len()
        )?;
        for (i, p) in self.phases.iter().enumerate() {
            writeln!(
                f,
                "  {i:3}: {:?} until {:?}, links drop {}‰ dup {}‰ delay ≤{} ms",
                p.fault,
                p.until,
                p.links.drop_per_mille,
                p.links.dup_per_mille,
                p.links.delay_max_ms
            )?;
        }
        Ok(())
    }
}

/// The fault schedule of `seed` for `validators` nodes, at least `heights` long.
///
/// f = (n-1)/3 validators (equal stakes) may be faulty at once, and a phase that must make
/// progress never has more. The byzantine validator double-votes in at most two short
/// phases, early enough that its slashing lands before the end; each offence burns 10% of
/// its deposit, so its power stays above half and crashes of f others keep a quorum.
pub fn schedule(seed: u64, validators: usize, heights: u64) -> Schedule {
    assert!(
        validators >= 4,
        "a BFT simulation needs at least 4 validators"
    );
    let mut rng = Rng::new(seed);
    let n = validators;
    let f = (n - 1) / 3;
    let byzantine = rng.index(n);
    let mut phases = Vec::new();
    let mut total = 0;
    let mut equivocations = 0;
    // A calm start: the network forms before faults begin.
    phases.push(Phase {
        links: LinkFaults::default(),
        fault: NodeFault::None,
        until: Until::Heights(5),
    });
    total += 5;
    while total < heights {
        // Heavy loss is slow to cross (a dropped proposal part costs a round, and rounds
        // grow longer), so its phases are short.
        let (links, k) = match rng.below(5) {
            0 | 1 => (LinkFaults::default(), 10 + rng.below(40)),
            2 | 3 => (
                LinkFaults {
                    drop_per_mille: rng.below_u32(20),
                    dup_per_mille: rng.below_u32(50),
                    delay_max_ms: rng.below(10),
                },
                10 + rng.below(40),
            ),
            _ => (
                LinkFaults {
                    drop_per_mille: 20 + rng.below_u32(40),
                    dup_per_mille: 50 + rng.below_u32(100),
                    delay_max_ms: 5 + rng.below(35),
                },
                3 + rng.below(10),
            ),
        };
        // A crashed or cut-off proposer costs its heights a timeout and a round: such
        // phases are kept shorter.
        let short = 5 + rng.below(20);
        let phase = match rng.below(10) {
            0 | 1 => {
                let c = 1 + rng.index(f);
                Phase {
                    links,
                    fault: NodeFault::Crash(rng.pick(n, c)),
                    until: Until::Heights(short.min(k)),
                }
            }
            2 => {
                let c = 1 + rng.index(f);
                Phase {
                    links,
                    fault: NodeFault::Isolate(rng.pick(n, c)),
                    until: Until::Heights(short.min(k)),
                }
            }
            3 => Phase {
                links,
                fault: NodeFault::Split(rng.pick(n, n / 2)),
                until: Until::Millis(200 + rng.below(800)),
            },
            4 | 5 if equivocations < 2 && total > heights / 10 && total < heights * 2 / 3 => {
                equivocations += 1;
                let honest: Vec<usize> = (0..n).filter(|&i| i != byzantine).collect();
                let c = rng.index(f);
                let crash = rng
                    .pick(honest.len(), c)
                    .into_iter()
                    .map(|i| honest[i])
                    .collect();
                Phase {
                    links,
                    fault: NodeFault::Equivocate { crash },
                    until: Until::Heights(2),
                }
            }
            _ => Phase {
                links,
                fault: NodeFault::None,
                until: Until::Heights(k),
            },
        };
        if let Until::Heights(h) = phase.until {
            total += h;
        }
        phases.push(phase);
    }
    Schedule {
        seed,
        validators,
        byzantine,
        phases,
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The height every node reached at the end.
    pub final_height: u64,
    /// Blocks compared byte for byte across all nodes' stores at the end.
    pub blocks_compared: u64,
    pub crashes: u64,
    pub messages: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Conflicting votes the byzantine validator signed and sent.
    pub double_votes: u64,
    /// Offences the ledger slashed it for, and its deposit before and after.
    pub slashed_offences: usize,
    pub deposit_before: u64,
    pub deposit_after: u64,
    /// Client transfers admitted to mempools, and how many of them committed.
    pub transfers_admitted: u64,
    pub transfers_committed: usize,
    pub elapsed: Duration,
    /// Each phase: milliseconds it took, and heights it decided after round 0.
    pub phases: Vec<(u64, u64)>,
    /// Heights decided after round 0, over the run.
    pub late_heights: u64,
}

/// Why a run failed, with the schedule that made it fail.
#[derive(Debug)]
pub struct Failure {
    pub reason: String,
    pub schedule: Schedule,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation failed: {}", self.reason)?;
        write!(f, "{}", self.schedule)
    }
}

// ---------------------------------------------------------------------------------------
// The in-memory network.

struct Peer {
    id: PeerId,
    /// Bumped at every crash: a message still in flight to an older incarnation is lost.
    incarnation: u64,
    up: bool,
    /// Side of the current partition: messages cross only between equal groups.
    group: u8,
    /// The node's consensus and sync actors.
    subscribers: Vec<Box<dyn Subscriber<NetworkEvent<MsContext>>>>,
}

#[derive(Default)]
struct Counters {
    messages: u64,
    dropped: u64,
    duplicated: u64,
    double_votes: u64,
}

struct HubState {
    peers: Vec<Peer>,
    links: LinkFaults,
    equivocate: bool,
    rng: Rng,
    /// Sync requests in flight: id to the requesting node.
    requests: HashMap<String, usize>,
    next_request: u64,
    counters: Counters,
}

/// Routes every node's messages to the others, applying the phase's faults.
struct Hub {
    state: Mutex<HubState>,
    byzantine: usize,
    byzantine_signer: SigningProvider,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `event` from `from` to `to` through the link's faults.
    fn send(self: &Arc<Self>, st: &mut HubState, from: usize, to: usize, event: NetEvent) {
        let (src, dst) = (&st.peers[from], &st.peers[to]);
        if !src.up || !dst.up || src.group != dst.group {
            return;
        }
        st.counters.messages += 1;
        let links = st.links;
        if st.rng.chance(links.drop_per_mille) {
            st.counters.dropped += 1;
            return;
        }
        let copies = if st.rng.chance(links.dup_per_mille) {
            st.counters.duplicated += 1;
            2
        } else {
            1
        };
        let incarnation = st.peers[to].incarnation;
        for _ in 0..copies {
            let delay = if links.delay_max_ms == 0 {
                0
            } else {
                st.rng.below(links.delay_max_ms + 1)
            };
            if delay == 0 {
                Self::deliver(st, from, to, incarnation, &event);
            } else {
                let hub = Arc::clone(self);
                let event = event.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    Self::deliver(&hub.lock(), from, to, incarnation, &event);
                });
            }
        }
    }

    /// Hands `event` to `to`'s actors if it is still the incarnation the message was sent to
    /// and still on the sender's side of any partition.
    fn deliver(st: &HubState, from: usize, to: usize, incarnation: u64, event: &NetEvent) {
        let (src, dst) = (&st.peers[from], &st.peers[to]);
        if dst.up && dst.incarnation == incarnation && src.group == dst.group {
            for s in &dst.subscribers {
                s.send(event.clone());
            }
        }
    }

    fn broadcast(self: &Arc<Self>, st: &mut HubState, from: usize, event: NetEvent) {
        for to in 0..st.peers.len() {
            if to != from {
                self.send(st, from, to, event.clone());
            }
        }
    }

    /// Tells the nodes on each side of a change who they can now reach.
    fn connectivity(st: &HubState, before: &[(bool, u8)]) {
        for (a, pa) in st.peers.iter().enumerate() {
            for (b, pb) in st.peers.iter().enumerate() {
                if a == b || !pa.up {
                    continue;
                }
                let was = before[a].0 && before[b].0 && before[a].1 == before[b].1;
                let is = pb.up && pa.group == pb.group;
                let event = match (was, is) {
                    (false, true) => NetworkEvent::PeerConnected(pb.id),
                    (true, false) => NetworkEvent::PeerDisconnected(pb.id),
                    _ => continue,
                };
                for s in &pa.subscribers {
                    s.send(event.clone());
                }
            }
        }
    }

    fn topology(st: &HubState) -> Vec<(bool, u8)> {
        st.peers.iter().map(|p| (p.up, p.group)).collect()
    }

    fn set_groups(&self, groups: &[u8]) {
        let mut st = self.lock();
        let before = Self::topology(&st);
        for (p, g) in st.peers.iter_mut().zip(groups) {
            p.group = *g;
        }
        Self::connectivity(&st, &before);
    }

    fn set_up(&self, node: usize, up: bool) {
        let mut st = self.lock();
        let before = Self::topology(&st);
        let p = &mut st.peers[node];
        p.up = up;
        p.incarnation += 1;
        p.subscribers.clear();
        Self::connectivity(&st, &before);
    }

    /// A message the engine of `me` hands its network.
    fn publish(self: &Arc<Self>, me: usize, msg: NetMsg<MsContext>) {
        let mut st = self.lock();
        let my_id = st.peers[me].id;
        match msg {
            NetMsg::Subscribe(s) => {
                // The engine starts its first height once the network listens.
                let addr: Multiaddr = format!("/memory/{me}").parse().expect("valid multiaddr");
                s.send(NetworkEvent::Listening(addr));
                let mine = &st.peers[me];
                for p in &st.peers {
                    if p.id != my_id && p.up && p.group == mine.group {
                        s.send(NetworkEvent::PeerConnected(p.id));
                    }
                }
                st.peers[me].subscribers.push(s);
            }
            NetMsg::PublishConsensusMsg(SignedConsensusMsg::Vote(v)) => {
                if me == self.byzantine && st.equivocate {
                    let twin = self.conflicting(&v, &mut st.rng);
                    st.counters.double_votes += 1;
                    for to in 0..st.peers.len() {
                        if to == me {
                            continue;
                        }
                        let (a, b) = if st.rng.chance(500) {
                            (v.clone(), twin.clone())
                        } else {
                            (twin.clone(), v.clone())
                        };
                        self.send(&mut st, me, to, NetworkEvent::Vote(my_id, a));
                        self.send(&mut st, me, to, NetworkEvent::Vote(my_id, b));
                    }
                } else {
                    self.broadcast(&mut st, me, NetworkEvent::Vote(my_id, v));
                }
            }
            NetMsg::PublishConsensusMsg(SignedConsensusMsg::Proposal(p)) => {
                self.broadcast(&mut st, me, NetworkEvent::Proposal(my_id, p));
            }
            NetMsg::PublishLivenessMsg(m) => {
                let event = match m {
                    LivenessMsg::Vote(v) => NetworkEvent::Vote(my_id, v),
                    LivenessMsg::PolkaCertificate(c) => NetworkEvent::PolkaCertificate(my_id, c),
                    LivenessMsg::SkipRoundCertificate(c) => {
                        NetworkEvent::RoundCertificate(my_id, c)
                    }
                };
                self.broadcast(&mut st, me, event);
            }
            NetMsg::PublishProposalPart(part) => {
                self.broadcast(
                    &mut st,
                    me,
                    NetworkEvent::ProposalPart(my_id, Some(my_id), part),
                );
            }
            NetMsg::BroadcastStatus(status) => {
                self.broadcast(&mut st, me, NetworkEvent::Status(my_id, status));
            }
            NetMsg::OutgoingRequest(peer, request, reply) => {
                st.next_request += 1;
                let id = st.next_request.to_string();
                let _ = reply.send(OutboundRequestId::new(&id));
                if let Some(to) = st.peers.iter().position(|p| p.id == peer) {
                    st.requests.insert(id.clone(), me);
                    let event =
                        NetworkEvent::SyncRequest(InboundRequestId::new(id), my_id, request);
                    self.send(&mut st, me, to, event);
                }
            }
            NetMsg::OutgoingResponse(id, response) => {
                if let Some(to) = st.requests.remove(&id.to_string()) {
                    let event = NetworkEvent::SyncResponse(
                        OutboundRequestId::new(id),
                        my_id,
                        Some(response),
                    );
                    self.send(&mut st, me, to, event);
                }
            }
            NetMsg::CancelRequest(id) => {
                st.requests.remove(&id.to_string());
            }
            NetMsg::CancelInboundRequest(id) => {
                st.requests.remove(&id.to_string());
            }
            NetMsg::DumpState(reply) => {
                let _ = reply.send(None);
            }
            NetMsg::UpdatePersistentPeers(_, reply) => {
                let _ = reply.send(Ok(()));
            }
            // Validator-set updates and proof results concern libp2p peer scoring.
            _ => {}
        }
    }

    /// The byzantine validator's second vote for the same height, round and kind: nil
    /// against a value, or an invented value against nil.
    fn conflicting(&self, v: &SignedVote, rng: &mut Rng) -> SignedVote {
        let value = match v.message.value {
            NilOrVal::Val(_) => NilOrVal::Nil,
            NilOrVal::Nil => NilOrVal::Val(ValueId(proto::block::BlockId(rng.bytes32()))),
        };
        let vote = Vote::new(
            v.message.typ,
            v.message.height,
            v.message.round,
            value,
            v.message.validator,
        );
        let signature = self
            .byzantine_signer
            .sign(&vote.sign_bytes(self.byzantine_signer.chain_id));
        SignedMessage::new(vote, signature)
    }
}

type SignedVote = SignedMessage<MsContext, Vote>;
type NetEvent = NetworkEvent<MsContext>;

/// One node's network actor: hands what its engine publishes to the hub.
struct MemNet;

struct MemNetArgs {
    hub: Arc<Hub>,
    me: usize,
}

#[ractor::async_trait]
impl Actor for MemNet {
    type Msg = NetMsg<MsContext>;
    type State = MemNetArgs;
    type Arguments = MemNetArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: MemNetArgs,
    ) -> Result<MemNetArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut MemNetArgs,
    ) -> Result<(), ActorProcessingErr> {
        state.hub.publish(state.me, msg);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The nodes.

struct Running {
    handle: NodeHandle,
    engine: EngineHandle,
    serve: tokio::task::JoinHandle<Result<(), String>>,
    net: NetworkRef<MsContext>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Node {
    key: SigningKey,
    dir: PathBuf,
    starts: u64,
    running: Option<Running>,
}

/// What the nodes' commits tell the driver.
#[derive(Default)]
struct Progress {
    /// Each node's last committed height.
    heights: Vec<u64>,
    /// The first block id committed at each height, by any node.
    decided: BTreeMap<u64, proto::block::BlockId>,
    /// Conflicting commits, described.
    conflicts: Vec<String>,
    /// Transactions committed, counted once per node that committed them.
    committed_txs: usize,
    /// Heights decided in a round after the first.
    late: u64,
}

pub struct Sim {
    schedule: Schedule,
    params: ChainParams,
    hub: Arc<Hub>,
    nodes: Vec<Node>,
    clients: Vec<SigningKey>,
    progress: watch::Sender<Progress>,
    run_id: String,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sim({})", self.run_id)
    }
}

fn validator_key(seed: u64, i: usize) -> SigningKey {
    let mut rng = Rng::new(seed ^ 0x005E_ED0F_4B1D);
    let mut k = rng.bytes32();
    for _ in 0..i {
        k = rng.bytes32();
    }
    SigningKey::from(k)
}

fn account(k: &SigningKey) -> AccountId {
    AccountId(k.verification_key().to_bytes())
}

/// Timeouts short enough for thousands of heights in a test, long enough that a loaded
/// 2-core machine still decides in the first round when nothing is faulty.
fn sim_params(genesis: Genesis) -> ChainParams {
    ChainParams {
        block_time: Duration::from_millis(2),
        timeouts: LinearTimeouts {
            propose: Duration::from_millis(150),
            propose_delta: Duration::from_millis(100),
            prevote: Duration::from_millis(150),
            prevote_delta: Duration::from_millis(50),
            precommit: Duration::from_millis(150),
            precommit_delta: Duration::from_millis(50),
            rebroadcast: Duration::from_millis(200),
            max_timeout: Duration::from_secs(5),
        },
        ..ChainParams::new(genesis)
    }
}

impl Sim {
    /// A simulation of `schedule` with its nodes' folders under `dir`.
    pub fn new(schedule: Schedule, dir: PathBuf) -> Sim {
        let n = schedule.validators;
        let keys: Vec<SigningKey> = (0..n).map(|i| validator_key(schedule.seed, i)).collect();
        let clients: Vec<SigningKey> = (0..n)
            .map(|i| validator_key(schedule.seed ^ 0xC1_1E47, i))
            .collect();
        let genesis = Genesis {
            chain_id: SIM_CHAIN_ID,
            params: Default::default(),
            accounts: keys
                .iter()
                .map(|k| (account(k), 0, 1_000_000))
                .chain(clients.iter().map(|k| (account(k), 0, 1_000_000_000)))
                .collect(),
            validators: keys
                .iter()
                .enumerate()
                .map(|(i, k)| (account(k), STAKE, format!("sim-v{i}")))
                .collect(),
        };
        let peers = keys
            .iter()
            .map(|k| {
                let kp = Keypair::ed25519_from_bytes(k.to_bytes()).expect("32-byte key");
                Peer {
                    id: PeerId::from_bytes(&kp.public().to_peer_id().to_bytes())
                        .expect("a libp2p peer id"),
                    incarnation: 0,
                    up: false,
                    group: 0,
                    subscribers: Vec::new(),
                }
            })
            .collect();
        let hub = Arc::new(Hub {
            state: Mutex::new(HubState {
                peers,
                links: LinkFaults::default(),
                equivocate: false,
                rng: Rng::new(schedule.seed ^ 0x4E7),
                requests: HashMap::new(),
                next_request: 0,
                counters: Counters::default(),
            }),
            byzantine: schedule.byzantine,
            byzantine_signer: SigningProvider::new(SIM_CHAIN_ID, keys[schedule.byzantine].clone()),
        });
        let (progress, _) = watch::channel(Progress {
            heights: vec![0; n],
            ..Progress::default()
        });
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run_id = format!(
            "sim{}-{:x}",
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            schedule.seed
        );
        Sim {
            params: sim_params(genesis),
            nodes: keys
                .into_iter()
                .enumerate()
                .map(|(i, key)| Node {
                    key,
                    dir: dir.join(format!("v{i}")),
                    starts: 0,
                    running: None,
                })
                .collect(),
            schedule,
            hub,
            clients,
            progress,
            run_id,
        }
    }

    async fn start_node(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        if node.running.is_some() {
            return Ok(());
        }
        node.starts += 1;
        let state = open_state(&node.dir, node.key.clone(), self.params.clone())?;
        let height = state.ledger().height;
        self.progress.send_modify(|p| p.heights[i] = height);
        self.hub.set_up(i, true);
        let (net, _) = bounded(
            format_args!("node {i}'s network start"),
            Actor::spawn(
                None,
                MemNet,
                MemNetArgs {
                    hub: Arc::clone(&self.hub),
                    me: i,
                },
            ),
        )
        .await?
        .map_err(|e| format!("cannot start node {i}'s network: {e}"))?;
        // The engine's channel for proposal parts, forwarded to the network actor.
        let (tx_network, mut rx_network) = mpsc::channel::<NetworkMsg<MsContext>>(16);
        let forward = {
            let net = net.clone();
            tokio::spawn(async move {
                while let Some(m) = rx_network.recv().await {
                    if net.cast(m.into()).is_err() {
                        break;
                    }
                }
            })
        };
        // Metrics register under the moniker, so each start gets its own.
        let moniker = format!("{}-v{i}-{}", self.run_id, node.starts);
        let cfg = engine_config(
            moniker,
            P2pConfig::default(),
            Duration::from_millis(250),
            Duration::from_secs(1),
        );
        let signer = state.signer().clone();
        let address = state.address();
        let build = EngineBuilder::new(state.ctx, cfg)
            .with_default_wal(WalContext::new(wal_path(&node.dir), BorshCodec))
            .with_custom_network(net.clone(), tx_network)
            .with_default_sync(SyncContext::new(BorshCodec))
            .with_default_consensus(ConsensusContext::new_validator(
                address,
                Box::new(signer.clone()),
                Box::new(signer),
            ))
            .with_default_request(RequestContext::new(100))
            .build();
        let started = bounded(format_args!("node {i}'s engine start"), build)
            .await
            .and_then(|r| r.map_err(|e| format!("cannot start node {i}'s engine: {e}")));
        let (channels, engine) = match started {
            Ok(started) => started,
            Err(e) => {
                // Nothing of a failed start outlives it (a retry spawns its own).
                net.stop(None);
                forward.abort();
                return Err(e);
            }
        };
        let (handle, serve) = spawn_serve(state, channels);
        let watcher = {
            let mut commits = handle.subscribe();
            let progress = self.progress.clone();
            tokio::spawn(async move {
                loop {
                    match commits.recv().await {
                        Ok(c) => progress.send_modify(|p| {
                            p.heights[i] = p.heights[i].max(c.height);
                            p.committed_txs += c.txs.len();
                            let first = match p.decided.entry(c.height) {
                                std::collections::btree_map::Entry::Vacant(e) => {
                                    p.late += u64::from(c.round > 0);
                                    *e.insert(c.id)
                                }
                                std::collections::btree_map::Entry::Occupied(e) => *e.get(),
                            };
                            if first != c.id {
                                p.conflicts.push(format!(
                                    "height {}: node {i} committed {} but another node {first}",
                                    c.height, c.id
                                ));
                            }
                        }),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
        };
        node.running = Some(Running {
            handle,
            engine,
            serve,
            net,
            tasks: vec![forward, watcher],
        });
        Ok(())
    }

    /// Kills node `i`'s engine where it stands (no orderly shutdown) and waits until its
    /// state is closed, as a crashed process would leave it.
    async fn crash_node(&mut self, i: usize) -> Result<(), String> {
        let Some(r) = self.nodes[i].running.take() else {
            return Ok(());
        };
        self.hub.set_up(i, false);
        let _ = bounded(
            format_args!("killing node {i}'s engine"),
            r.engine.actor.kill_and_wait(None),
        )
        .await?;
        r.net.stop(None);
        for t in &r.tasks {
            t.abort();
        }
        drop(r.handle);
        // The serving loop ends once the engine's channel closes; it owns the block store.
        match bounded(format_args!("node {i}'s serving loop ending"), r.serve).await? {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("node {i} had stopped on its own: {e}")),
            Err(e) => return Err(format!("node {i}'s serving task failed: {e}")),
        }
        let _ = bounded(
            format_args!("node {i}'s engine task ending"),
            r.engine.handle,
        )
        .await?;
        Ok(())
    }

    async fn ensure_running(&mut self, want: &[bool]) -> Result<u64, String> {
        let mut crashes = 0;
        for (i, &up) in want.iter().enumerate() {
            let running = self.nodes[i].running.is_some();
            if up && !running {
                self.start_node_retrying(i).await?;
            } else if !up && running {
                self.crash_node(i).await?;
                crashes += 1;
            }
        }
        Ok(crashes)
    }

    /// A restarted engine opens the WAL under an exclusive lock, which the killed engine's
    /// WAL thread releases shortly after its actor died; a start refused for that is tried
    /// again.
    async fn start_node_retrying(&mut self, i: usize) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..50 {
            match self.start_node(i).await {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("lock") => {
                    debug!("node {i}: {e}; retrying");
                    self.hub.set_up(i, false);
                    last = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// A node whose serving loop ended while it should run stopped itself (fail-stop on a
    /// decision it could not commit): a finding, not a fault the schedule made.
    fn check_alive(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.running.as_ref().is_some_and(|r| r.serve.is_finished()) {
                return Err(format!("node {i} stopped on its own"));
            }
        }
        Ok(())
    }

    fn top_height(&self) -> u64 {
        let p = self.progress.borrow();
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running.is_some())
            .map(|i| p.heights[i])
            .max()
            .unwrap_or(0)
    }

    /// Waits until `done` holds of the progress, or fails after `deadline` or on a
    /// conflicting commit.
    async fn wait(
        &self,
        deadline: Duration,
        what: &str,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<(), String> {
        let mut rx = self.progress.subscribe();
        // The guard `wait_for` returns is dropped in this statement: a second read of the
        // watch while it is held deadlocks once a commit queues to write between the two.
        let reached = tokio::time::timeout(
            deadline,
            rx.wait_for(|p| !p.conflicts.is_empty() || done(p)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let p = self.progress.borrow();
        if let Some(c) = p.conflicts.first() {
            return Err(format!("safety: {c}"));
        }
        if reached {
            Ok(())
        } else {
            Err(format!(
                "liveness: {what} not reached within {deadline:?} (heights {:?})",
                p.heights
            ))
        }
    }

    /// Keeps each running node's mempool fed with its client's transfers.
    async fn feed(&self, rng: &mut Rng) -> u64 {
        let mut admitted = 0;
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(r) = &node.running else { continue };
            let client = &self.clients[i];
            let me = account(client);
            let query = r
                .handle
                .query(move |s| s.mempool.next_nonce(&me, s.ledger()));
            let Ok(Ok(nonce)) = bounded(format_args!("node {i} answering"), query).await else {
                continue;
            };
            let to = account(&self.nodes[rng.index(self.nodes.len())].key);
            let txs: Vec<_> = (0..3)
                .map(|k| {
                    Tx {
                        chain_id: SIM_CHAIN_ID,
                        signer: me,
                        nonce: nonce + k,
                        fee: FEE_MIN,
                        body: TxBody::Transfer {
                            to,
                            asset: Asset::Maspc,
                            amount: 1 + rng.below(1000),
                        },
                    }
                    .sign(client)
                })
                .collect();
            if let Ok(Ok(results)) =
                bounded(format_args!("node {i} admitting"), r.handle.submit(txs)).await
            {
                admitted += results.iter().filter(|r| r.is_ok()).count() as u64;
            }
        }
        admitted
    }

    /// Runs the schedule and checks what the module's documentation says.
    pub async fn run(mut self) -> Result<Report, Failure> {
        let started = Instant::now();
        let mut report = Report::default();
        let outcome = self.drive(&mut report).await;
        // Whatever happened, stop every engine so nothing outlives the run.
        let all_down = vec![false; self.nodes.len()];
        let stopped = self.ensure_running(&all_down).await;
        report.elapsed = started.elapsed();
        let reason = match (outcome, stopped) {
            (Err(e), _) | (Ok(()), Err(e)) => e,
            (Ok(()), Ok(_)) => match self.compare_stores(&mut report) {
                Ok(()) => return Ok(report),
                Err(e) => e,
            },
        };
        Err(Failure {
            reason,
            schedule: self.schedule.clone(),
        })
    }

    async fn drive(&mut self, report: &mut Report) -> Result<(), String> {
        let n = self.nodes.len();
        let byz = self.schedule.byzantine;
        self.ensure_running(&vec![true; n]).await?;
        let mut load = Rng::new(self.schedule.seed ^ 0x10AD);
        let mut equivocated = false;
        for (index, phase) in self.schedule.phases.clone().into_iter().enumerate() {
            let mut up = vec![true; n];
            let mut groups = vec![0u8; n];
            let mut equivocate = false;
            match &phase.fault {
                NodeFault::None => {}
                NodeFault::Crash(c) => c.iter().for_each(|&i| up[i] = false),
                NodeFault::Isolate(c) | NodeFault::Split(c) => {
                    c.iter().for_each(|&i| groups[i] = 1)
                }
                NodeFault::Equivocate { crash } => {
                    crash.iter().for_each(|&i| up[i] = false);
                    equivocate = true;
                }
            }
            debug!(index, ?phase, "phase");
            let phase_started = Instant::now();
            let late_before = self.progress.borrow().late;
            self.check_alive()
                .map_err(|e| format!("phase {index}: {e}"))?;
            report.crashes += self
                .ensure_running(&up)
                .await
                .map_err(|e| format!("phase {index}: {e}"))?;
            {
                let mut st = self.hub.lock();
                st.links = phase.links;
                st.equivocate = equivocate;
            }
            self.hub.set_groups(&groups);
            match phase.until {
                Until::Millis(ms) => {
                    // A split has no quorum: the phase lasts a time, and only the heal after
                    // it is required to bring progress back. Votes delivered before the
                    // split may still finish the height under way, nothing after it.
                    let before = self.top_height();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    let after = self.top_height();
                    if after > before + 1 {
                        return Err(format!(
                            "phase {index}: a split without a quorum decided heights {} to {after}",
                            before + 1
                        ));
                    }
                }
                Until::Heights(k) => {
                    let target = self.top_height() + k;
                    // The heights the majority side reaches (isolated nodes lag behind).
                    let counted: Vec<usize> = (0..n).filter(|&i| up[i] && groups[i] == 0).collect();
                    let deadline =
                        PHASE_DEADLINE + PER_HEIGHT * u32::try_from(k).unwrap_or(u32::MAX);
                    let what = format!("phase {index} height {target}");
                    let wait = self.wait(deadline, &what, |p| {
                        counted.iter().any(|&i| p.heights[i] >= target)
                    });
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            r = &mut wait => { r?; break; }
                            a = self.feed_once(&mut load) => report.transfers_admitted += a,
                        }
                    }
                }
            }
            if equivocate {
                equivocated = true;
            }
            report.phases.push((
                u64::try_from(phase_started.elapsed().as_millis()).unwrap_or(u64::MAX),
                self.progress.borrow().late - late_before,
            ));
        }
        // Heal: every node up, one network, no link faults; all must reach one height.
        self.ensure_running(&vec![true; n]).await?;
        {
            let mut st = self.hub.lock();
            st.links = LinkFaults::default();
            st.equivocate = false;
        }
        self.hub.set_groups(&vec![0; n]);
        let target = self.top_height() + 3;
        self.wait(
            PHASE_DEADLINE + PER_HEIGHT * 20,
            &format!("every node at height {target} after the heal"),
            |p| p.heights.iter().all(|&h| h >= target),
        )
        .await?;
        report.final_height = target;
        self.check_alive()?;
        report.transfers_committed = self.progress.borrow().committed_txs;
        report.late_heights = self.progress.borrow().late;
        {
            let st = self.hub.lock();
            report.messages = st.counters.messages;
            report.dropped = st.counters.dropped;
            report.duplicated = st.counters.duplicated;
            report.double_votes = st.counters.double_votes;
        }
        // The byzantine validator's slashing, as an honest node's ledger has it.
        let offender = account(&self.nodes[byz].key);
        let honest = (byz + 1) % n;
        let handle = self.nodes[honest]
            .running
            .as_ref()
            .expect("every node runs after the heal")
            .handle
            .clone();
        let query = handle.query(move |s| {
            let l = s.ledger();
            (
                l.equivocations.iter().filter(|e| e.0 == offender).count(),
                l.registrations
                    .get(&(offender, Role::Miner))
                    .map_or(0, |r| r.deposit),
            )
        });
        let (offences, deposit) = bounded(format_args!("node {honest} answering"), query)
            .await?
            .map_err(|e| format!("node {honest}: {e}"))?;
        report.slashed_offences = offences;
        report.deposit_before = STAKE;
        report.deposit_after = deposit;
        if equivocated && report.double_votes > 0 && offences == 0 {
            return Err(format!(
                "the byzantine validator {byz} sent {} conflicting votes but was never slashed",
                report.double_votes
            ));
        }
        if offences > 0 && deposit >= STAKE {
            return Err(format!(
                "{offences} offences recorded but the deposit is still {deposit}"
            ));
        }
        Ok(())
    }

    /// One round of client load, then a pause (the load's pace, not a synchronisation).
    async fn feed_once(&self, rng: &mut Rng) -> u64 {
        let admitted = self.feed(rng).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        admitted
    }

    /// Every stored block, byte for byte, is the same on every node.
    fn compare_stores(&self, report: &mut Report) -> Result<(), String> {
        let stores = self
            .nodes
            .iter()
            .map(|n| super::store::Store::open(&super::store::Store::path_in(&n.dir)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot reopen a block store: {e}"))?;
        let mut height = 1;
        loop {
            let blocks = stores
                .iter()
                .map(|s| s.block(height))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let present: Vec<&Vec<u8>> = blocks.iter().flatten().collect();
            if present.is_empty() {
                break;
            }
            if present.windows(2).any(|w| w[0] != w[1]) {
                return Err(format!("safety: the stores differ at height {height}"));
            }
            report.blocks_compared += 1;
            height += 1;
        }
        if report.blocks_compared < report.final_height {
            return Err(format!(
                "{} blocks stored, {} reached",
                report.blocks_compared, report.final_height
            ));
        }
        debug!(blocks = report.blocks_compared, "stores agree");
        Ok(())
    }
}

/// Runs `schedule` in `dir`: the entry point of the simulation tests.
pub async fn run(schedule: Schedule, dir: PathBuf) -> Result<Report, Failure> {
    Sim::new(schedule, dir).run().await
}
