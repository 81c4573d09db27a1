//! A proxy's pay: the receipts it accepted (kept on disk, `docs/wire.md` section 2.1) are
//! redeemed on the chain in batches (`TxBody::RedeemReceipts`), each paid once from its
//! client's allowance.
//!
//! Crash safety: a receipt is written to `pending/` before the proxy acknowledges it. A
//! batch is signed and written to `batch` before it is sent; after a crash that same
//! transaction is sent again (one nonce: it lands once) unless its nonce went to another
//! transaction. Once the chain holds it, its receipts move to `redeemed/` (kept as a record
//! of what was taken) and `batch` is removed. Receipts near or past their expiry move to
//! `rejected/`. A batch the miners refuse (the proxy's account unknown or unfunded) or
//! cannot be reached for stays and is sent again next round; one submitted that no block
//! took in three rounds is dropped and its receipts checked again one by one: those the
//! chain would refuse (another proxy or chain, a bad signature) go to `rejected/`, the
//! others stay pending for the next batch. The chain skips, rather than refuses, receipts
//! time made stale (expired, already redeemed), so one never blocks a batch.

use std::path::{Path, PathBuf};
use std::time::Duration;

use api::chain::ChainClient;
use ed25519_consensus::SigningKey;
use proto::receipt::ProxyReceipt;
use proto::tx::{AccountId, SignedTx, Tx, TxBody, RECEIPTS_PER_TX_MAX};
use tracing::{info, warn};

use crate::NetError;

/// Fee of a redeeming transaction of `n` receipts (MASPC): one, and one more per 64
/// receipts (about 12 KB), so a large batch does not bid less per byte than a transfer.
pub fn redeem_fee(n: usize) -> u64 {
    1 + (n / 64) as u64
}
/// How long a batch may take to be committed before the next round tries again.
const COMMIT_WAIT: Duration = Duration::from_secs(30);
/// Fault injection for tests: with this variable set to `exit-after-redeem`, the process
/// exits right after a batch is committed, before its receipts are moved: the moment a
/// crash would otherwise pay a proxy twice.
pub const FAULT_ENV: &str = "MSPACE_PROXY_FAULT";
/// Rounds a submitted batch may go without landing before it is dropped and rebuilt.
const BATCH_TRIES: u32 = 3;
/// A receipt closer than this to its expiry is not sent (it could expire in the mempool).
const EXPIRY_MARGIN_SECS: u64 = 60;

fn io(e: std::io::Error) -> NetError {
    NetError::Io(e)
}

fn chain_err(e: api::chain::ChainError) -> NetError {
    NetError::Protocol(format!("the chain: {e}"))
}

/// The receipt folders under a proxy's state directory.
#[derive(Clone, Debug)]
pub struct ReceiptStore {
    dir: PathBuf,
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Receipts the chain now holds as redeemed, and the height of the batch.
    pub redeemed: usize,
    pub height: Option<u64>,
    /// Receipts set aside (expired, undecodable, or in a batch that never landed).
    pub rejected: usize,
}

impl ReceiptStore {
    /// The store under `dir` (created).
    pub fn open(dir: &Path) -> std::io::Result<ReceiptStore> {
        for sub in ["pending", "redeemed", "rejected"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        Ok(ReceiptStore {
            dir: dir.to_owned(),
        })
    }

    fn name(r: &ProxyReceipt) -> String {
        format!(
            "{}-{}.rcpt",
            crate::hex(&r.client.0),
            crate::hex(&r.session)
        )
    }

    /// Keeps an accepted receipt, durably, before the proxy acknowledges it.
    pub fn keep(&self, r: &ProxyReceipt) -> std::io::Result<()> {
        crate::record::write_durably(&self.dir.join("pending").join(Self::name(r)), &r.to_bytes())
    }

    /// Receipts in `sub` (`pending`, `redeemed`, `rejected`), in name order; a file that
    /// does not decode is moved to `rejected/` (named in the log).
    pub fn list(&self, sub: &str) -> std::io::Result<Vec<ProxyReceipt>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.dir.join(sub))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rcpt"))
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for p in names {
            match ProxyReceipt::from_bytes(&std::fs::read(&p)?) {
                Ok(r) => out.push(r),
                Err(e) => {
                    warn!(file = %p.display(), reason = %e, "a damaged receipt file, set aside");
                    if let Some(n) = p.file_name() {
                        std::fs::rename(&p, self.dir.join("rejected").join(n))?;
                    }
                }
            }
        }
        Ok(out)
    }

    fn moved(&self, r: &ProxyReceipt, to: &str) -> std::io::Result<()> {
        let name = Self::name(r);
        match std::fs::rename(
            self.dir.join("pending").join(&name),
            self.dir.join(to).join(&name),
        ) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn batch_path(&self) -> PathBuf {
        self.dir.join("batch")
    }
}

/// The redeeming side of a proxy: its key (the account receipts name) and the chain.
#[derive(Debug)]
pub struct Redeemer {
    pub key: SigningKey,
    pub chain: ChainClient,
    pub store: ReceiptStore,
    /// Rounds the batch on disk has failed to land in.
    tries: u32,
}

impl Redeemer {
    pub fn new(key: SigningKey, chain: ChainClient, store: ReceiptStore) -> Redeemer {
        Redeemer {
            key,
            chain,
            store,
            tries: 0,
        }
    }

    /// One round: finishes the batch on disk if there is one, else sends the pending
    /// receipts (at most [`RECEIPTS_PER_TX_MAX`]) as a new batch and waits for it.
    pub async fn round(&mut self, now_unix_secs: u64) -> Result<Round, NetError> {
        let mut round = Round::default();
        let earlier = match std::fs::read(self.store.batch_path()) {
            Ok(b) => Some(
                SignedTx::decode(&b)
                    .map_err(|e| NetError::Protocol(format!("the batch on disk: {e}")))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(e)),
        };
        let tx = match earlier {
            Some(t) if self.chain.may_land(&t).await.map_err(chain_err)? => t,
            Some(_) => {
                // Its nonce went elsewhere: it never lands; its receipts stay pending.
                std::fs::remove_file(self.store.batch_path()).map_err(io)?;
                self.tries = 0;
                return Ok(round);
            }
            None => {
                let mut receipts = Vec::new();
                for r in self.store.list("pending").map_err(io)? {
                    if r.expiry_unix_secs < now_unix_secs + EXPIRY_MARGIN_SECS {
                        warn!(session = %crate::hex(&r.session), "an expired receipt, set aside");
                        self.store.moved(&r, "rejected").map_err(io)?;
                        round.rejected += 1;
                    } else if receipts.len() < RECEIPTS_PER_TX_MAX {
                        receipts.push(r);
                    }
                }
                if receipts.is_empty() {
                    return Ok(round);
                }
                let me = AccountId(self.key.verification_key().to_bytes());
                let chain_id = self.chain.status().await.map_err(chain_err)?.chain_id;
                let nonce = self.chain.account(me).await.map_err(chain_err)?.nonce;
                let t = Tx {
                    chain_id,
                    signer: me,
                    nonce,
                    fee: redeem_fee(receipts.len()),
                    body: TxBody::RedeemReceipts { receipts },
                }
                .sign(&self.key);
                crate::record::write_durably(&self.store.batch_path(), t.bytes()).map_err(io)?;
                self.tries = 0;
                t
            }
        };
        let TxBody::RedeemReceipts { receipts } = &tx.tx().body else {
            return Err(NetError::Protocol(
                "the batch on disk is not a redeem".into(),
            ));
        };
        match self.chain.send_once(&tx, COMMIT_WAIT).await {
            Ok(height) => {
                if std::env::var(FAULT_ENV).as_deref() == Ok("exit-after-redeem") {
                    tracing::error!("{FAULT_ENV}=exit-after-redeem: exiting as told");
                    std::process::exit(3);
                }
                for r in receipts {
                    self.store.moved(r, "redeemed").map_err(io)?;
                }
                std::fs::remove_file(self.store.batch_path()).map_err(io)?;
                self.tries = 0;
                info!(receipts = receipts.len(), height, tx = %tx.id(), "receipts redeemed");
                round.redeemed = receipts.len();
                round.height = Some(height);
            }
            Err(e @ api::chain::ChainError::NotCommitted { .. }) => {
                self.tries += 1;
                warn!(tries = self.tries, reason = %e, "a batch of receipts did not land");
                if self.tries >= BATCH_TRIES {
                    let me = self.key.verification_key().to_bytes();
                    let chain_id = tx.tx().chain_id;
                    for r in receipts {
                        if !r.verify() || r.proxy.0 != me || r.chain_id != chain_id {
                            warn!(session = %crate::hex(&r.session), "a receipt the chain refuses, set aside");
                            self.store.moved(r, "rejected").map_err(io)?;
                            round.rejected += 1;
                        }
                    }
                    std::fs::remove_file(self.store.batch_path()).map_err(io)?;
                    self.tries = 0;
                }
            }
            // Refused by the miners (say, the proxy's account cannot pay the fee yet) or
            // not reached: the batch stays, sent again next round.
            Err(e) => warn!(reason = %e, "a batch of receipts was not taken; next round"),
        }
        Ok(round)
    }

    /// Rounds every `every` until `stop` turns true.
    pub async fn run(mut self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.round(crate::now_secs()).await {
                warn!(reason = %e, "redeeming receipts");
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
