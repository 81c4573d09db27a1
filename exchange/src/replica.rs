//! One exchange run as several replicas (openraft), so that its book, the requests it
//! answered and its bans survive the loss of a replica: a minority of the replicas may
//! crash or be cut off and the exchange goes on. Crash faults only, among machines one
//! operator runs: every replica holds the exchange's key, and they trust each other's
//! messages (a replica that lies can corrupt the book; distrusting parties use separate
//! exchanges, which is what the market is for).
//!
//! Every change to the exchange's state is a [`Command`] in the Raft log; each replica
//! applies the committed log to its own [`State`] in order ([`State::apply`] is
//! deterministic), so all answer alike. A replica that receives an ask or a request checks
//! it (signature, chain, profile) itself and proposes the command; a follower sends it to
//! the leader ([`ReplicaApi::propose`]), which appends it; the answer is the outcome of
//! applying it. Commands that arrive while a replica's last proposal is on its way go
//! together as one [`Proposal::Batch`] (one log entry, one fsync on each replica for many
//! requests), so a busy exchange appends fewer, larger entries without waiting on a timer. Reads (`status`, a flood pre-check) use the replica's own applied state.
//!
//! On disk (one redb file per replica, `docs/formats.md` section 25): the log's entries,
//! the vote, the last purged log id, and the last snapshot (the state
//! at a log index, built every [`SNAPSHOT_EVERY`] entries, after which the log before it is
//! purged). A restarted replica rebuilds its state from the snapshot and the log after it.
//! Writes go through one writer thread that commits whatever is queued in one redb
//! transaction (one fsync for a batch of entries).
//!
//! Between replicas: the `ReplicaApi` tarpc service on each replica's `raft` address
//! (framed like the control plane, frames up to [`REPLICA_FRAME_MAX`]), every call carrying
//! a token derived from the exchange's key: a caller without the key is refused. Keep the
//! raft addresses on the operator's own network.

use std::collections::BTreeMap;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::error::{
    ClientWriteError, InitializeError, NetworkError, RPCError, RaftError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftNetwork,
    RaftNetworkFactory, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::state::{Applied, Command, Outcome, Proposal, State};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The exchange's Raft: its log carries [`Proposal`]s of [`Command`]s, applying one
    /// gives [`Applied`] [`Outcome`]s.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Vec<u8>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
type LogIdOf = LogId<NodeId>;
type StorageErr = StorageError<NodeId>;

/// A snapshot is built once this many entries were applied since the last.
pub const SNAPSHOT_EVERY: u64 = 10_000;
/// Entries kept in the log behind a snapshot (a follower a little behind catches up from
/// the log rather than by a whole snapshot).
pub const KEPT_BEHIND_SNAPSHOT: u64 = 1_000;
/// redb's page cache for a raft file.
pub const RAFT_FILE_CACHE: usize = 16 << 20;
/// The largest frame between replicas (a snapshot travels whole).
pub const REPLICA_FRAME_MAX: usize = 256 << 20;
/// The leader's heartbeat, and the election timeout's range: a dead leader is replaced
/// within about a second on a LAN.
pub const HEARTBEAT_MS: u64 = 100;
pub const ELECTION_MS: (u64, u64) = (500, 1_000);
/// How long a proposal waits for a leader (through an election) before it is refused.
pub const PROPOSE_WAIT: Duration = Duration::from_secs(5);
/// The most commands proposed as one batch.
pub const BATCH_MAX: usize = 512;
/// Batches a replica has on their way at once.
const BATCHES_IN_FLIGHT: usize = 2;
/// How long one call to another replica may take (a snapshot's may take longer).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// `[replication]` in `exchange.toml` (`docs/formats.md` section 17.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// This replica's id: one of `replicas`.
    pub id: NodeId,
    /// This replica's Raft log, vote and snapshot (redb), relative to the config file.
    #[serde(default = "default_raft_file")]
    pub raft_file: PathBuf,
    /// Every replica, this one included (3 or 5 of them; all replicas' configs list the
    /// same set).
    pub replicas: Vec<ReplicaAddr>,
}

/// A replica: its id and the address its `ReplicaApi` is served on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaAddr {
    pub id: NodeId,
    pub raft: String,
}

fn default_raft_file() -> PathBuf {
    "exchange-raft.redb".into()
}

impl ReplicationConfig {
    pub fn check(&self) -> Result<(), String> {
        let ids: std::collections::BTreeSet<NodeId> = self.replicas.iter().map(|r| r.id).collect();
        if ids.len() != self.replicas.len() {
            return Err("replication.replicas: an id listed twice".into());
        }
        if !ids.contains(&self.id) {
            return Err(format!(
                "replication.id {}: not among replication.replicas {ids:?}",
                self.id
            ));
        }
        if self.replicas.len() < 3 {
            return Err(format!(
                "replication.replicas: {} listed; replicas survive the loss of one only from 3 \
                 (without replication, leave the section out)",
                self.replicas.len()
            ));
        }
        if self
            .replicas
            .iter()
            .any(|r| r.raft.parse::<std::net::SocketAddr>().is_err())
        {
            return Err("replication.replicas: each raft address is ip:port".into());
        }
        Ok(())
    }

    /// This replica's own `raft` address.
    pub fn own_addr(&self) -> &str {
        self.replicas
            .iter()
            .find(|r| r.id == self.id)
            .map_or("", |r| r.raft.as_str())
    }
}

/// The token every call between an exchange's replicas carries: derived from the
/// exchange's secret key, which they all hold.
pub fn token(secret_key: &[u8; 32]) -> [u8; 32] {
    blake3::derive_key("market.space 2026-12 exchange replica token v1", secret_key)
}

// ---- disk ----------------------------------------------------------------------------

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const PURGED: &str = "purged";
const SNAPSHOT: &str = "snapshot";

/// A snapshot as kept on disk and sent to a follower.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    /// [`State::to_bytes`].
    data: Vec<u8>,
}

type Done = tokio::sync::oneshot::Sender<io::Result<()>>;

/// What the writer thread writes, in the order sent.
enum Write {
    Append(Vec<(u64, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// Removes entries from the index on.
    Truncate(u64, Done),
    /// Removes entries up to the index, and records the last purged id.
    Purge(u64, Vec<u8>, Done),
    Meta(&'static str, Vec<u8>, Option<Done>),
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Writes in order; whatever is queued goes in one transaction.
fn writer(db: Arc<redb::Database>, rx: std::sync::mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<(), io::Error> {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut log = txn.open_table(LOG).map_err(io_err)?;
                let mut meta = txn.open_table(META).map_err(io_err)?;
                for w in &batch {
                    match w {
                        Write::Append(entries, _) => {
                            for (i, bytes) in entries {
                                log.insert(i, bytes.as_slice()).map_err(io_err)?;
                            }
                        }
                        Write::Truncate(from, _) => {
                            log.retain_in(*from.., |_, _| false).map_err(io_err)?;
                        }
                        Write::Purge(upto, id, _) => {
                            log.retain_in(..=*upto, |_, _| false).map_err(io_err)?;
                            meta.insert(PURGED, id.as_slice()).map_err(io_err)?;
                        }
                        Write::Meta(k, v, _) => {
                            meta.insert(*k, v.as_slice()).map_err(io_err)?;
                        }
                    }
                }
            }
            txn.commit().map_err(io_err)
        })();
        for w in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            match w {
                Write::Append(_, cb) => cb.log_io_completed(r),
                Write::Truncate(_, done) | Write::Purge(_, _, done) => {
                    let _ = done.send(r);
                }
                Write::Meta(_, _, done) => {
                    if let Some(done) = done {
                        let _ = done.send(r);
                    }
                }
            }
        }
        if let Err(e) = result {
            tracing::error!(error = %e, "exchange replica: the raft file cannot be written");
        }
    }
}

/// What a replica's file held when it was opened.
struct Loaded {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    purged: Option<LogIdOf>,
    snapshot: Option<StoredSnapshot>,
}

fn load(db: &redb::Database) -> Result<Loaded, String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut entries = BTreeMap::new();
    match txn.open_table(LOG) {
        Ok(t) => {
            for row in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                let e: Entry<TypeConfig> = codec::decode("a raft log entry", v.value())
                    .map_err(|e| format!("entry {}: {e}", k.value()))?;
                if e.log_id.index != k.value() {
                    return Err(format!(
                        "entry {} holds log index {}: the file is damaged",
                        k.value(),
                        e.log_id.index
                    ));
                }
                entries.insert(k.value(), e);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let mut meta: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    match txn.open_table(META) {
        Ok(t) => {
            for row in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = row.map_err(|e| e.to_string())?;
                meta.insert(k.value().to_owned(), v.value().to_vec());
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    fn get<T: serde::de::DeserializeOwned + Serialize>(
        meta: &BTreeMap<String, Vec<u8>>,
        key: &'static str,
    ) -> Result<Option<T>, String> {
        meta.get(key)
            .map(|b| codec::decode(key, b))
            .transpose()
            .map_err(|e| e.to_string())
    }
    Ok(Loaded {
        entries,
        vote: get(&meta, VOTE)?,
        purged: get::<Option<LogIdOf>>(&meta, PURGED)?.flatten(),
        snapshot: get(&meta, SNAPSHOT)?,
    })
}

// ---- the log -------------------------------------------------------------------------

#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    purged: Option<LogIdOf>,
}

/// The Raft log: in memory for reading (the log is purged behind each snapshot), every
/// change written through the writer thread.
#[derive(Clone)]
struct LogStore {
    mem: Arc<Mutex<LogMem>>,
    tx: std::sync::mpsc::Sender<Write>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn gone() -> io::Error {
    io::Error::other("the raft file's writer stopped")
}

async fn wait(rx: tokio::sync::oneshot::Receiver<io::Result<()>>) -> io::Result<()> {
    rx.await.map_err(|_| gone())?
}

impl LogStore {
    fn send(&self, w: Write) -> io::Result<()> {
        self.tx.send(w).map_err(|_| gone())
    }

    async fn meta(&self, key: &'static str, value: Vec<u8>) -> io::Result<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Write::Meta(key, value, Some(done)))?;
        wait(rx).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageErr> {
        Ok(lock(&self.mem)
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageErr> {
        let m = lock(&self.mem);
        let last = m
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(m.purged);
        Ok(LogState {
            last_purged_log_id: m.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageErr> {
        self.meta(VOTE, codec::encode(vote))
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        lock(&self.mem).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageErr> {
        Ok(lock(&self.mem).vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        {
            let mut m = lock(&self.mem);
            for e in entries {
                rows.push((e.log_id.index, codec::encode(&e)));
                m.entries.insert(e.log_id.index, e);
            }
        }
        self.send(Write::Append(rows, callback))
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogIdOf) -> Result<(), StorageErr> {
        lock(&self.mem).entries.split_off(&log_id.index);
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Write::Truncate(log_id.index, done))
            .map_err(|e| StorageIOError::write_logs(&e))?;
        wait(rx)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogIdOf) -> Result<(), StorageErr> {
        {
            let mut m = lock(&self.mem);
            let kept = m.entries.split_off(&(log_id.index + 1));
            m.entries = kept;
            m.purged = Some(log_id);
        }
        let (done, rx) = tokio::sync::oneshot::channel();
        self.send(Write::Purge(
            log_id.index,
            codec::encode(&Some(log_id)),
            done,
        ))
        .map_err(|e| StorageIOError::write_logs(&e))?;
        wait(rx)
            .await
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

// ---- the state machine ---------------------------------------------------------------

/// The state as applied on this replica.
#[derive(Debug)]
struct Machinery {
    pub state: State,
    pub last_applied: Option<LogIdOf>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// The state machine: [`Machinery`], shared with the exchange for reads, and the snapshot.
struct Machine {
    applied: Arc<Mutex<Machinery>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    log: LogStore,
    built: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageErr> {
        let (state, last, membership) = {
            let a = lock(&self.applied);
            (a.state.clone(), a.last_applied, a.membership.clone())
        };
        // Encoding a large state takes a while: off the runtime's threads.
        let data = tokio::task::spawn_blocking(move || state.to_bytes())
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &io_err(e)))?;
        self.built += 1;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id: format!("{}-{}", last.map_or(0, |l| l.index), self.built),
        };
        let stored = StoredSnapshot { meta, data };
        self.log
            .meta(SNAPSHOT, codec::encode(&stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        *lock(&self.snapshot) = Some(stored.clone());
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(stored.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Machine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf>, StoredMembership<NodeId, BasicNode>), StorageErr> {
        let a = lock(&self.applied);
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut a = lock(&self.applied);
        let mut out = Vec::new();
        for e in entries {
            a.last_applied = Some(e.log_id);
            out.push(match e.payload {
                EntryPayload::Blank => Applied::Nothing,
                EntryPayload::Normal(p) => a.state.apply_proposal(p),
                EntryPayload::Membership(m) => {
                    a.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied::Nothing
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Machine {
            applied: Arc::clone(&self.applied),
            snapshot: Arc::clone(&self.snapshot),
            log: self.log.clone(),
            built: self.built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageErr> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageErr> {
        let state = State::from_bytes(&snapshot)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: *snapshot,
        };
        self.log
            .meta(SNAPSHOT, codec::encode(&stored))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        {
            let mut a = lock(&self.applied);
            a.state = state;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        *lock(&self.snapshot) = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageErr> {
        Ok(lock(&self.snapshot).clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(s.data),
        }))
    }
}

// ---- between replicas ----------------------------------------------------------------

/// What replicas ask each other. Every call carries [`token`]; errors are text.
#[tarpc::service]
pub trait ReplicaApi {
    async fn append(
        token: [u8; 32],
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, String>;
    async fn vote(
        token: [u8; 32],
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, String>;
    async fn snapshot(
        token: [u8; 32],
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    ) -> Result<SnapshotResponse<NodeId>, String>;
    /// Appends `cmd` if this replica leads (it does not pass it on): its outcome once
    /// applied. "not the leader" if it does not lead (the caller waits for an election).
    async fn propose(token: [u8; 32], proposal: Proposal) -> Result<Applied, String>;
}

/// A replica transport: the control plane's framing and decoder, larger frames.
fn transport<Item, SinkItem>(
    stream: tokio::net::TcpStream,
) -> tarpc::serde_transport::Transport<
    tokio::net::TcpStream,
    Item,
    SinkItem,
    api::SafeBincode<Item, SinkItem>,
>
where
    for<'a> Item: Deserialize<'a>,
    Item: api::PreCheck,
    SinkItem: Serialize,
{
    let framed = tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(REPLICA_FRAME_MAX)
        .new_framed(stream);
    tarpc::serde_transport::new(framed, api::SafeBincode::default())
}

/// The error a proposal gets from a replica that does not lead.
pub const NOT_LEADER: &str = "not the leader";

#[derive(Clone)]
struct Server {
    raft: Raft,
    token: [u8; 32],
}

impl Server {
    fn check(&self, token: &[u8; 32]) -> Result<(), String> {
        // Constant time: the token is a secret.
        if blake3::Hash::from(*token) == blake3::Hash::from(self.token) {
            Ok(())
        } else {
            Err("refused: this caller does not hold the exchange's key".into())
        }
    }
}

impl ReplicaApi for Server {
    async fn append(
        self,
        _: tarpc::context::Context,
        token: [u8; 32],
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, String> {
        self.check(&token)?;
        self.raft
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string())
    }

    async fn vote(
        self,
        _: tarpc::context::Context,
        token: [u8; 32],
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, String> {
        self.check(&token)?;
        self.raft.vote(rpc).await.map_err(|e| e.to_string())
    }

    async fn snapshot(
        self,
        _: tarpc::context::Context,
        token: [u8; 32],
        vote: Vote<NodeId>,
        meta: SnapshotMeta<NodeId, BasicNode>,
        data: Vec<u8>,
    ) -> Result<SnapshotResponse<NodeId>, String> {
        self.check(&token)?;
        let snapshot = Snapshot {
            meta,
            snapshot: Box::new(data),
        };
        self.raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string())
    }

    async fn propose(
        self,
        _: tarpc::context::Context,
        token: [u8; 32],
        proposal: Proposal,
    ) -> Result<Applied, String> {
        self.check(&token)?;
        match self.raft.client_write(proposal).await {
            Ok(r) => Ok(r.data),
            // A replica that stopped does not lead either.
            Err(
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) | RaftError::Fatal(_),
            ) => Err(NOT_LEADER.into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn deadline(ttl: Duration) -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = std::time::Instant::now() + ttl;
    c
}

async fn connect(addr: &str) -> io::Result<ReplicaApiClient> {
    let stream = tokio::time::timeout(CALL_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}")))??;
    stream.set_nodelay(true)?;
    Ok(ReplicaApiClient::new(tarpc::client::Config::default(), transport(stream)).spawn())
}

/// Connections to the other replicas, one per replica, made when first needed and again
/// after a failure.
#[derive(Clone)]
struct Peers {
    token: [u8; 32],
    conns: Arc<tokio::sync::Mutex<BTreeMap<String, ReplicaApiClient>>>,
}

impl Peers {
    async fn client(&self, addr: &str) -> io::Result<ReplicaApiClient> {
        let mut c = self.conns.lock().await;
        if let Some(client) = c.get(addr) {
            return Ok(client.clone());
        }
        let client = connect(addr).await?;
        c.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    async fn drop_conn(&self, addr: &str) {
        self.conns.lock().await.remove(addr);
    }
}

/// One other replica, as openraft calls it.
struct PeerLink {
    peers: Peers,
    addr: String,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerLink {
    /// Calls `f` on the replica's client: a connection or transport failure drops the
    /// connection and is `Unreachable` (openraft backs off); an error the replica answered
    /// is a network error.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, RpcErr>
    where
        F: FnOnce(ReplicaApiClient) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, String>, tarpc::client::RpcError>>,
    {
        let client = match self.peers.client(&self.addr).await {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
        };
        match f(client).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&io::Error::other(e)))),
            Err(e) => {
                self.peers.drop_conn(&self.addr).await;
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let token = self.peers.token;
        let ttl = option.hard_ttl();
        self.call(|c| async move { c.append(deadline(ttl), token, rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let token = self.peers.token;
        let ttl = option.hard_ttl();
        self.call(|c| async move { c.vote(deadline(ttl), token, rpc).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>>
    {
        let token = self.peers.token;
        let ttl = option.hard_ttl().max(Duration::from_secs(60));
        let meta = snapshot.meta;
        let data = *snapshot.snapshot;
        let r = self
            .call(|c| async move { c.snapshot(deadline(ttl), token, vote, meta, data).await })
            .await;
        r.map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::new(&other)),
        })
    }
}

/// Makes [`PeerLink`]s.
#[derive(Clone)]
struct Network {
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, _target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            peers: self.peers.clone(),
            addr: node.addr.clone(),
        }
    }
}

// ---- a replica -----------------------------------------------------------------------

/// A command waiting to be proposed, and where its outcome goes.
type Waiting = (
    Command,
    tokio::sync::oneshot::Sender<Result<Outcome, String>>,
);

/// A running replica: its Raft, its applied state, and connections to the others.
#[derive(Clone)]
pub struct Replica {
    id: NodeId,
    raft: Raft,
    applied: Arc<Mutex<Machinery>>,
    peers: Peers,
    /// The `ReplicaApi` server's task.
    serving: Arc<tokio::task::AbortHandle>,
    /// Commands waiting to be proposed, with where their outcome goes.
    queue: tokio::sync::mpsc::Sender<Waiting>,
    addrs: BTreeMap<NodeId, String>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.id).finish()
    }
}

impl Replica {
    /// Opens (or creates) `raft_file`, serves `ReplicaApi` on this replica's address,
    /// starts Raft and forms the cluster if it is new (every replica asks; the same
    /// membership from each is safe).
    pub async fn start(
        cfg: &ReplicationConfig,
        raft_file: &Path,
        flood: market::flood::FloodPolicy,
        secret_key: &[u8; 32],
    ) -> Result<Replica, String> {
        cfg.check()?;
        // The log is read from the file only here, at start: redb's cache (1 GiB unless
        // told) would only grow with pages written.
        let db = redb::Builder::new()
            .set_cache_size(RAFT_FILE_CACHE)
            .create(raft_file)
            .map_err(|e| format!("the raft file {}: {e}", raft_file.display()))?;
        let loaded =
            load(&db).map_err(|e| format!("the raft file {}: {e}", raft_file.display()))?;
        let db = Arc::new(db);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("exchange-raft-writer".into())
            .spawn(move || writer(db, rx))
            .map_err(|e| format!("the raft writer thread: {e}"))?;
        let log = LogStore {
            mem: Arc::new(Mutex::new(LogMem {
                entries: loaded.entries,
                vote: loaded.vote,
                purged: loaded.purged,
            })),
            tx,
        };
        let (state, last_applied, membership) = match &loaded.snapshot {
            Some(s) => (
                State::from_bytes(&s.data).map_err(|e| format!("the raft file's snapshot: {e}"))?,
                s.meta.last_log_id,
                s.meta.last_membership.clone(),
            ),
            None => (State::new(flood), None, StoredMembership::default()),
        };
        let applied = Arc::new(Mutex::new(Machinery {
            state,
            last_applied,
            membership,
        }));
        let machine = Machine {
            applied: Arc::clone(&applied),
            snapshot: Arc::new(Mutex::new(loaded.snapshot)),
            log: log.clone(),
            built: 0,
        };
        let peers = Peers {
            token: token(secret_key),
            conns: Arc::default(),
        };
        let config = openraft::Config {
            cluster_name: "mspace-exchange".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MS.0,
            election_timeout_max: ELECTION_MS.1,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: KEPT_BEHIND_SNAPSHOT,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("raft settings: {e}"))?;
        let listener = tokio::net::TcpListener::bind(cfg.own_addr())
            .await
            .map_err(|e| format!("cannot listen on {} (replication): {e}", cfg.own_addr()))?;
        let raft = Raft::new(
            cfg.id,
            Arc::new(config),
            Network {
                peers: peers.clone(),
            },
            log,
            machine,
        )
        .await
        .map_err(|e| format!("raft: {e}"))?;
        let serving = tokio::spawn(serve(
            Server {
                raft: raft.clone(),
                token: peers.token,
            },
            listener,
        ))
        .abort_handle();
        let members: BTreeMap<NodeId, BasicNode> = cfg
            .replicas
            .iter()
            .map(|r| {
                (
                    r.id,
                    BasicNode {
                        addr: r.raft.clone(),
                    },
                )
            })
            .collect();
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(format!("forming the replicas: {e}")),
        }
        let (queue, proposals) = tokio::sync::mpsc::channel(BATCH_MAX * BATCHES_IN_FLIGHT);
        let replica = Replica {
            id: cfg.id,
            raft,
            applied,
            peers,
            serving: Arc::new(serving),
            queue,
            addrs: cfg
                .replicas
                .iter()
                .map(|r| (r.id, r.raft.clone()))
                .collect(),
        };
        tokio::spawn(replica.clone().proposer(proposals));
        Ok(replica)
    }

    /// Proposes what `proposals` brings: whatever is queued when a batch may go (at most
    /// [`BATCHES_IN_FLIGHT`] on their way) goes as one [`Proposal::Batch`].
    async fn proposer(self, mut proposals: tokio::sync::mpsc::Receiver<Waiting>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let Some(first) = proposals.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match proposals.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let me = self.clone();
            tokio::spawn(async move {
                let (cmds, waiting): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
                let proposal = match <[Command; 1]>::try_from(cmds) {
                    Ok([one]) => Proposal::One(one),
                    Err(cmds) => Proposal::Batch(cmds),
                };
                let outcomes = match me.propose_now(proposal).await {
                    Ok(Applied::One(o)) if waiting.len() == 1 => vec![Ok(o)],
                    Ok(Applied::Batch(each)) if each.len() == waiting.len() => {
                        each.into_iter().map(Ok).collect()
                    }
                    Ok(other) => vec![Err(format!("the log answered {other:?}")); waiting.len()],
                    Err(e) => vec![Err(e); waiting.len()],
                };
                for (to, o) in waiting.into_iter().zip(outcomes) {
                    let _ = to.send(o);
                }
                drop(slot);
            });
        }
    }

    /// Reads this replica's applied state (a follower's may be a little behind).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&lock(&self.applied).state)
    }

    /// openraft's metrics of this replica, as they change.
    pub fn metrics(
        &self,
    ) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>> {
        self.raft.metrics()
    }

    /// This replica's place in the exchange now (`mspace exchange status`).
    pub fn view(&self) -> api::ExchangeReplica {
        let m = self.raft.metrics().borrow().clone();
        api::ExchangeReplica {
            id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            replicas: m.membership_config.membership().voter_ids().collect(),
        }
    }

    /// Whether this replica leads now, changing as elections happen.
    pub fn leading(&self) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut m = self.raft.metrics();
        let id = self.id;
        tokio::spawn(async move {
            loop {
                let leads = m.borrow_and_update().current_leader == Some(id);
                tx.send_if_modified(|l| std::mem::replace(l, leads) != leads);
                tokio::select! {
                    changed = m.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// Appends `cmd` to the exchange's log through its leader, waiting through an election
    /// for at most [`PROPOSE_WAIT`]: the outcome of applying it. An error means it was not
    /// appended, or that whether it was is unknown (the leader died while it was on its
    /// way).
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, String> {
        let (to, from) = tokio::sync::oneshot::channel();
        self.queue
            .send((cmd, to))
            .await
            .map_err(|_| "this replica stopped".to_owned())?;
        from.await.map_err(|_| "this replica stopped".to_owned())?
    }

    /// [`Replica::propose`] of one log entry, now.
    async fn propose_now(&self, cmd: Proposal) -> Result<Applied, String> {
        let until = tokio::time::Instant::now() + PROPOSE_WAIT;
        let mut metrics = self.raft.metrics();
        loop {
            // Whatever changes from here on (an election) wakes the wait below.
            metrics.borrow_and_update();
            let leader = match self.raft.client_write(cmd.clone()).await {
                Ok(r) => return Ok(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(e) => return Err(e.to_string()),
            };
            if let Some(addr) = leader.and_then(|l| self.addrs.get(&l)) {
                match self.peers.client(addr).await {
                    // Not reached: it did not append this.
                    Err(_) => self.peers.drop_conn(addr).await,
                    Ok(c) => {
                        let token = self.peers.token;
                        match c.propose(deadline(CALL_TIMEOUT), token, cmd.clone()).await {
                            Ok(Ok(outcome)) => return Ok(outcome),
                            // It stopped leading before it appended.
                            Ok(Err(e)) if e == NOT_LEADER => {}
                            Ok(Err(e)) => return Err(e),
                            // Never sent: the connection had closed.
                            Err(
                                tarpc::client::RpcError::Shutdown
                                | tarpc::client::RpcError::Send(_),
                            ) => self.peers.drop_conn(addr).await,
                            Err(e) => {
                                self.peers.drop_conn(addr).await;
                                return Err(format!(
                                    "the leader (replica {}) did not answer: {e}; whether it \
                                     took the request is unknown",
                                    leader.unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
            // No leader known, or one that stopped leading: wait for the next, until the
            // deadline.
            match tokio::time::timeout_at(until, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("this replica stopped".into()),
                Err(_) => {
                    return Err(format!(
                        "no leader among the exchange's replicas within {} s: fewer than a \
                         majority of them may be up",
                        PROPOSE_WAIT.as_secs()
                    ))
                }
            }
        }
    }

    /// Stops this replica: its server and its Raft.
    pub async fn shutdown(&self) {
        self.serving.abort();
        let _ = self.raft.shutdown().await;
    }
}

/// Serves `ReplicaApi` until the task is aborted, its connections with it.
async fn serve(server: Server, listener: tokio::net::TcpListener) {
    use tarpc::server::{BaseChannel, Channel};
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        conns.spawn(async move {
            BaseChannel::with_defaults(transport(stream))
                .execute(server.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                })
                .await;
        });
    }
}

/// A raft file's log entry as stored (for the fuzz target and the format's tests).
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, codec::CodecError> {
    codec::decode("a raft log entry", bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_damaged_log_entry_is_refused() {
        let e: Entry<TypeConfig> = Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(3, 1), 7),
            payload: EntryPayload::Normal(Proposal::One(Command::Ask {
                ask: proto::market::Ask {
                    chain_id: 1,
                    host: [2; 32],
                    seq: 1,
                    price_per_gib_day: 5,
                    free_bytes: 10,
                    min_days: 1,
                    max_days: 2,
                    deposit: 3,
                    expiry_unix_secs: 4,
                    region: "eu".into(),
                    addr: "127.0.0.1:1".into(),
                },
                rating: 500,
                now: 3,
            })),
        };
        let bytes = codec::encode(&e);
        assert_eq!(decode_entry(&bytes).unwrap().log_id, e.log_id);
        for bad in [
            &bytes[..bytes.len() - 1],
            &[&bytes[..], &[0][..]].concat()[..],
            &[0xff; 40][..],
            &b""[..],
        ] {
            let err = decode_entry(bad).unwrap_err().to_string();
            assert!(err.contains("a raft log entry"), "{err}");
        }
    }

    #[test]
    fn a_replica_set_is_checked_by_name() {
        let r = |id, raft: &str| ReplicaAddr {
            id,
            raft: raft.into(),
        };
        let ok = ReplicationConfig {
            id: 2,
            raft_file: default_raft_file(),
            replicas: vec![
                r(1, "127.0.0.1:1"),
                r(2, "127.0.0.1:2"),
                r(3, "127.0.0.1:3"),
            ],
        };
        assert_eq!(ok.check(), Ok(()));
        assert_eq!(ok.own_addr(), "127.0.0.1:2");
        let mut twice = ok.clone();
        twice.replicas[2].id = 1;
        let mut stranger = ok.clone();
        stranger.id = 9;
        let mut two = ok.clone();
        two.replicas.pop();
        let mut named = ok.clone();
        named.replicas[0].raft = "replica-1:7510".into();
        for (c, says) in [
            (twice, "listed twice"),
            (stranger, "not among"),
            (two, "from 3"),
            (named, "ip:port"),
        ] {
            let e = c.check().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }
}
