//! A client of the chain for every role that submits transactions (a sender, a host, a
//! miner registering itself): it talks to the first miner of a list that answers and is
//! not behind the others by its own alerts, moves to the next when one stops answering,
//! signs a transaction with the account's next nonce, submits it, and follows the blocks
//! until one holds it.

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

/// Whether a miner says (by its alerts, within 2 s) that it is behind the chain: it would
/// answer with an old state.
async fn lagging(c: &MinerApiClient) -> bool {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(2);
    match c.status(ctx).await {
        Ok(Ok(s)) => s.alerts.iter().any(|a| {
            a.kind == crate::alerts::FALLING_BEHIND || a.kind == crate::alerts::NO_NEW_BLOCKS
        }),
        _ => false,
    }
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
    /// there is none. With more than one address, a miner whose status carries a
    /// `falling_behind` or `no_new_blocks` alert (restarted and still syncing, or cut off)
    /// is passed over for the next that answers without one; when every miner that
    /// answers has such an alert, the first of them is used.
    async fn client(&mut self) -> Result<MinerApiClient, ChainError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let mut last = String::new();
        let mut behind: Option<(usize, MinerApiClient)> = None;
        let n = self.addrs.len();
        for i in 0..n {
            let at = (self.at + i) % n;
            match miner_client(&self.addrs[at]).await {
                Ok(c) => {
                    if n > 1 && lagging(&c).await {
                        behind.get_or_insert((at, c));
                        continue;
                    }
                    self.at = at;
                    self.client = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => last = format!("{}: {e}", self.addrs[at]),
            }
        }
        if let Some((at, c)) = behind {
            self.at = at;
            self.client = Some(c.clone());
            return Ok(c);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        AlertView, ControlError, DownloadView, HashRecordView, MinerApi, MINER_API_VERSION,
    };

    /// A miner that answers `status` only: its validator name, and an alert if `behind`.
    #[derive(Clone)]
    struct Fake {
        name: &'static str,
        behind: bool,
    }

    fn none<T>() -> Result<T, ControlError> {
        Err(ControlError::Unavailable("a fake miner".into()))
    }

    type Ctx = tarpc::context::Context;

    impl MinerApi for Fake {
        async fn submit_txs(
            self,
            _: Ctx,
            _: Vec<Vec<u8>>,
        ) -> Result<Vec<Result<[u8; 32], String>>, ControlError> {
            none()
        }
        async fn relay_txs(self, _: Ctx, _: Vec<Vec<u8>>) -> Result<(), ControlError> {
            none()
        }
        async fn status(self, _: Ctx) -> Result<ChainStatus, ControlError> {
            Ok(ChainStatus {
                chain_id: 1,
                validator: self.name.into(),
                height: 1,
                tip: String::new(),
                timestamp_ms: 0,
                validators: Vec::new(),
                mempool_txs: 0,
                proof_period_blocks: 1,
                completion_timeout_blocks: 1,
                supply: [0; 2],
                genesis_supply: [0; 2],
                deposits: [0; 2],
                escrow: [0; 2],
                burned: [0; 2],
                alerts: if self.behind {
                    vec![AlertView {
                        kind: "falling_behind".into(),
                        severity: "critical".into(),
                        subject: String::new(),
                        message: "behind".into(),
                        since_ms: 1,
                    }]
                } else {
                    Vec::new()
                },
            })
        }
        async fn account(self, _: Ctx, _: [u8; 32]) -> Result<AccountView, ControlError> {
            none()
        }
        async fn deal(self, _: Ctx, _: [u8; 32]) -> Result<Option<DealView>, ControlError> {
            none()
        }
        async fn block(self, _: Ctx, _: u64, _: u64) -> Result<Option<BlockView>, ControlError> {
            none()
        }
        async fn tx_height(self, _: Ctx, _: [u8; 32]) -> Result<Option<u64>, ControlError> {
            none()
        }
        async fn api_version(self, _: Ctx) -> u32 {
            MINER_API_VERSION
        }
        async fn deals_of(
            self,
            _: Ctx,
            _: [u8; 32],
            _: bool,
        ) -> Result<Vec<DealView>, ControlError> {
            none()
        }
        async fn challenge(
            self,
            _: Ctx,
            _: [u8; 32],
        ) -> Result<Option<ChallengeView>, ControlError> {
            none()
        }
        async fn hash_record(
            self,
            _: Ctx,
            _: [u8; 32],
        ) -> Result<Option<HashRecordView>, ControlError> {
            none()
        }
        async fn download(self, _: Ctx, _: [u8; 32]) -> Result<Option<DownloadView>, ControlError> {
            none()
        }
    }

    async fn serve(name: &'static str, behind: bool) -> String {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::serve_control!(
            Fake { name, behind }.serve(),
            "127.0.0.1:0",
            tx
        ));
        rx.await.unwrap().to_string()
    }

    #[tokio::test]
    async fn a_miner_behind_the_chain_is_passed_over_while_another_answers() {
        let (lagging, current) = (serve("lagging", true).await, serve("current", false).await);
        let mut c = ChainClient::connect(&[lagging.clone(), current.clone()])
            .await
            .unwrap();
        assert_eq!(c.status().await.unwrap().validator, "current");
        // Every miner behind: the first that answers is used all the same.
        let other = serve("also lagging", true).await;
        let mut c = ChainClient::connect(&[lagging.clone(), other])
            .await
            .unwrap();
        assert_eq!(c.status().await.unwrap().validator, "lagging");
        // One address: no question asked.
        let mut c = ChainClient::connect(std::slice::from_ref(&lagging))
            .await
            .unwrap();
        assert_eq!(c.status().await.unwrap().validator, "lagging");
    }
}
