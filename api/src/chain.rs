//! A client of the chain for every role that submits transactions (a sender, a host, a
//! miner registering itself): it talks to the first miner of a list that answers, moves to
//! the next when one stops answering, signs a transaction with the account's next nonce,
//! submits it, and follows the blocks until one holds it.

use std::time::{Duration, Instant};

use ed25519_consensus::SigningKey;
use proto::tx::{AccountId, SignedTx, Tx, TxBody, TxId};
use serde::Serialize;

use crate::{
    miner_client, AccountView, BlockView, ChainStatus, ChallengeView, DealView, MinerApiClient,
    BLOCK_WAIT_MAX_MS,
};

/// Why talking to the chain failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("no miner answered (tried {tried}): {last}")]
    Unreachable { tried: String, last: String },
    #[error("the miner refused the transaction: {0}")]
    Refused(String),
    #[error("transaction {tx} was submitted but not committed within {secs} s")]
    NotCommitted { tx: TxId, secs: u64 },
    #[error("the miner at {addr}: {reason}")]
    Miner { addr: String, reason: String },
}

/// A transaction a block holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Committed {
    pub tx: String,
    pub height: u64,
    pub block: String,
    pub latency_ms: u64,
}

/// Talks to one miner of `addrs` at a time, in order.
#[derive(Debug)]
pub struct ChainClient {
    addrs: Vec<String>,
    at: usize,
    client: Option<MinerApiClient>,
}

/// A call's context for a miner that may wait up to `wait` before answering: the deadline
/// leaves it 10 s more.
pub fn context_for(wait: Duration) -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + wait + Duration::from_secs(10);
    ctx
}

impl ChainClient {
    /// Connects to the first of `addrs` that answers.
    pub async fn connect(addrs: &[String]) -> Result<ChainClient, ChainError> {
        assert!(!addrs.is_empty(), "a chain client needs a miner address");
        let mut c = ChainClient {
            addrs: addrs.to_vec(),
            at: 0,
            client: None,
        };
        c.client().await?;
        Ok(c)
    }

    /// The connected miner, connecting (from the current one on, around the list) if
    /// there is none.
    async fn client(&mut self) -> Result<MinerApiClient, ChainError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut last = String::new();
        for i in 0..self.addrs.len() {
            let at = (self.at + i) % self.addrs.len();
            match miner_client(&self.addrs[at]).await {
                Ok(c) => {
                    self.at = at;
                    self.client = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last = format!("{}: {e}", self.addrs[at]),
            }
        }
        Err(ChainError::Unreachable {
            tried: self.addrs.join(", "),
            last,
        })
    }

    /// Calls `f` on the current miner; if the call itself fails (the miner is gone), moves
    /// to the next miner and tries once more on each.
    async fn call<T, F, Fut>(&mut self, f: F) -> Result<T, ChainError>
    where
        F: Fn(MinerApiClient) -> Fut,
        Fut: std::future::Future<
            Output = Result<Result<T, crate::ControlError>, tarpc::client::RpcError>,
        >,
    {
        let mut last = String::new();
        for _ in 0..self.addrs.len() {
            let c = self.client().await?;
            match f(c).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    return Err(ChainError::Miner {
                        addr: self.addrs[self.at].clone(),
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    last = format!("{}: {e}", self.addrs[self.at]);
                    self.client = None;
                    self.at = (self.at + 1) % self.addrs.len();
                }
            }
        }
        Err(ChainError::Unreachable {
            tried: self.addrs.join(", "),
            last,
        })
    }

    pub async fn status(&mut self) -> Result<ChainStatus, ChainError> {
        self.call(|c| async move { c.status(tarpc::context::current()).await })
            .await
    }

    pub async fn account(&mut self, id: AccountId) -> Result<AccountView, ChainError> {
        self.call(|c| async move { c.account(tarpc::context::current(), id.0).await })
            .await
    }

    /// The chain's record of `hash` (`TxBody::RecordHash`), if any.
    pub async fn hash_record(
        &mut self,
        hash: [u8; 32],
    ) -> Result<Option<crate::HashRecordView>, ChainError> {
        self.call(|c| async move { c.hash_record(tarpc::context::current(), hash).await })
            .await
    }

    /// The height of the block holding transaction `id`, if it is committed.
    pub async fn tx_height(&mut self, id: TxId) -> Result<Option<u64>, ChainError> {
        self.call(|c| async move { c.tx_height(tarpc::context::current(), id.0).await })
            .await
    }

    /// A download payment within its claim window (`TxBody::DownloadPayment`).
    pub async fn download(
        &mut self,
        payment: TxId,
    ) -> Result<Option<crate::DownloadView>, ChainError> {
        self.call(|c| async move { c.download(tarpc::context::current(), payment.0).await })
            .await
    }

    pub async fn deal(&mut self, id: TxId) -> Result<Option<DealView>, ChainError> {
        self.call(|c| async move { c.deal(tarpc::context::current(), id.0).await })
            .await
    }

    /// The deals `who` is the sender or the host of (`open`: only those paid and not
    /// completed yet, or active), without their chunk lists.
    pub async fn deals_of(
        &mut self,
        who: AccountId,
        open: bool,
    ) -> Result<Vec<DealView>, ChainError> {
        self.call(|c| async move { c.deals_of(tarpc::context::current(), who.0, open).await })
            .await
    }

    /// `host`'s challenge for the current proof period.
    pub async fn challenge(
        &mut self,
        host: AccountId,
    ) -> Result<Option<ChallengeView>, ChainError> {
        self.call(|c| async move { c.challenge(tarpc::context::current(), host.0).await })
            .await
    }

    /// The block at `height`, waiting up to `wait` for it to be decided.
    pub async fn block(
        &mut self,
        height: u64,
        wait: Duration,
    ) -> Result<Option<BlockView>, ChainError> {
        let ms = u64::try_from(wait.as_millis())
            .unwrap_or(u64::MAX)
            .min(BLOCK_WAIT_MAX_MS);
        self.call(|c| async move { c.block(context_for(wait), height, ms).await })
            .await
    }

    /// Whether `tx`, signed earlier and written down before it was sent, may still be
    /// committed: the chain holds it, or its nonce is not used yet. If not (its nonce went
    /// to another transaction), it never will be and a new one must be made.
    pub async fn may_land(&mut self, tx: &SignedTx) -> Result<bool, ChainError> {
        let next = self.account(tx.tx().signer).await?.nonce;
        Ok(tx.tx().nonce >= next || self.tx_height(tx.id()).await?.is_some())
    }

    /// Submits `tx` unless the chain holds it already (one the mempool holds is fine) and
    /// follows the blocks until one holds it, for at most `wait`; its height. Sending the
    /// same signed transaction again is how a caller that lost track of it retries: one
    /// nonce, so it lands once.
    pub async fn send_once(&mut self, tx: &SignedTx, wait: Duration) -> Result<u64, ChainError> {
        if let Some(h) = self.tx_height(tx.id()).await? {
            return Ok(h);
        }
        match self.submit_signed(std::slice::from_ref(tx)).await?.first() {
            Some(Err(e)) if !e.contains("already in the mempool") => {
                return Err(ChainError::Refused(e.clone()))
            }
            _ => {}
        }
        let deadline = Instant::now() + wait;
        let mut next = self.status().await?.height + 1;
        loop {
            if let Some(h) = self.tx_height(tx.id()).await? {
                return Ok(h);
            }
            if Instant::now() > deadline {
                return Err(ChainError::NotCommitted {
                    tx: tx.id(),
                    secs: wait.as_secs(),
                });
            }
            self.block(next, Duration::from_secs(5)).await?;
            next += 1;
        }
    }

    /// Submits signed transactions without waiting for a block: one answer each, its id or
    /// why the miner refused it.
    pub async fn submit_signed(
        &mut self,
        txs: &[SignedTx],
    ) -> Result<Vec<Result<TxId, String>>, ChainError> {
        let bytes: Vec<Vec<u8>> = txs.iter().map(|t| t.bytes().to_vec()).collect();
        let answers = self
            .call(|c| {
                let bytes = bytes.clone();
                async move { c.submit_txs(tarpc::context::current(), bytes).await }
            })
            .await?;
        Ok(answers.into_iter().map(|a| a.map(TxId)).collect())
    }

    /// Signs `body` as `key`'s next transaction (nonce from the chain), submits it and
    /// waits up to `wait` for a block that holds it.
    pub async fn submit(
        &mut self,
        key: &SigningKey,
        body: TxBody,
        fee: u64,
        wait: Duration,
    ) -> Result<Committed, ChainError> {
        let me = AccountId(key.verification_key().to_bytes());
        let status = self.status().await?;
        let account = self.account(me).await?;
        let tx = Tx {
            chain_id: status.chain_id,
            signer: me,
            nonce: account.nonce,
            fee,
            body,
        }
        .sign(key);
        let id = tx.id();
        let start = Instant::now();
        let bytes = tx.bytes().to_vec();
        let answers = self
            .call(|c| {
                let bytes = bytes.clone();
                async move { c.submit_txs(tarpc::context::current(), vec![bytes]).await }
            })
            .await?;
        match answers.into_iter().next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ChainError::Refused(e)),
            None => return Err(ChainError::Refused("no answer for the transaction".into())),
        }
        let deadline = start + wait;
        let mut next = status.height + 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ChainError::NotCommitted {
                    tx: id,
                    secs: wait.as_secs(),
                });
            }
            let wait_ms = u64::try_from(left.as_millis())
                .unwrap_or(u64::MAX)
                .min(BLOCK_WAIT_MAX_MS);
            let found = self
                .call(|c| async move { c.block(context_for(left), next, wait_ms).await })
                .await?;
            let Some(b) = found else { continue };
            if b.txs.contains(&id.0) {
                return Ok(Committed {
                    tx: id.to_string(),
                    height: b.height,
                    block: b.id,
                    latency_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            next += 1;
        }
    }
}
