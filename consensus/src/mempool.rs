//! The mempool: signed transactions waiting for a block, and the block builder.
//!
//! Admission checks what can be checked without applying: chain, fee, signature, nonce
//! window, duplicates, limits. Per account, transactions wait in nonce order; the builder
//! takes each account's next executable transaction, highest fee rate first, and keeps a
//! transaction only if the ledger accepts it on the working state (`apply_tx` leaves that
//! state untouched when it refuses), so a built block always applies.
//!
//! Limits: [`MempoolLimits`]. When full, a newcomer evicts the transaction with the lowest
//! fee rate among the last of each account's queue (never one in the middle, which would
//! strand its successors), and only if it pays a better rate.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use proto::tx::{AccountId, SignedTx, TxId};
use thiserror::Error;

use crate::ledger::{apply_tx, State, FEE_MIN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MempoolLimits {
    /// Transactions held at most.
    pub max_txs: usize,
    /// Bytes of signed transactions held at most.
    pub max_bytes: usize,
    /// How far ahead of an account's next nonce a transaction may be.
    pub max_nonce_gap: u64,
    /// Transactions one account may have waiting: one sender cannot fill the pool.
    pub max_per_account: usize,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        // 20k transactions of typical size (~150 bytes) is a second of the target rate;
        // 64 MiB bounds the worst case of large upload payments.
        MempoolLimits {
            max_txs: 20_000,
            max_bytes: 64 << 20,
            max_nonce_gap: 64,
            max_per_account: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MempoolError {
    #[error("already in the mempool")]
    Duplicate,
    #[error("for chain {found}, this is chain {expected}")]
    WrongChain { expected: u64, found: u64 },
    #[error("fee {found} is below the minimum {min}")]
    FeeTooLow { min: u64, found: u64 },
    #[error("nonce {nonce} is already used (the account is at {next})")]
    StaleNonce { next: u64, nonce: u64 },
    #[error("nonce {nonce} is too far ahead of the account's next nonce {next}")]
    NonceGap { next: u64, nonce: u64 },
    #[error("a transaction with this nonce is waiting with a fee as high or higher; raise the fee to replace it")]
    NonceTaken,
    #[error("the account already has {0} transactions waiting")]
    AccountFull(usize),
    #[error(
        "the mempool is full and this transaction's fee rate does not beat the lowest waiting"
    )]
    Full,
    #[error("the signer's account does not exist on the chain")]
    UnknownAccount,
    #[error("the account's {balance} MASPC cannot pay the fees of all its waiting transactions")]
    CannotPayFees { balance: u64 },
    #[error("invalid signature: {0}")]
    Signature(#[from] proto::tx::SignatureError),
}

/// Fee per byte, compared exactly (no floats): a/b vs c/d as a*d vs c*b. Equality is the
/// same relation (1/2 equals 2/4), so `Eq` and `Ord` agree.
#[derive(Clone, Copy, Debug)]
struct FeeRate {
    fee: u64,
    bytes: u64,
}

impl FeeRate {
    fn of(tx: &SignedTx) -> FeeRate {
        FeeRate {
            fee: tx.tx().fee,
            bytes: tx.bytes().len() as u64,
        }
    }
}

impl Ord for FeeRate {
    fn cmp(&self, other: &Self) -> Ordering {
        (u128::from(self.fee) * u128::from(other.bytes))
            .cmp(&(u128::from(other.fee) * u128::from(self.bytes)))
    }
}

impl PartialEq for FeeRate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FeeRate {}

impl PartialOrd for FeeRate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, Default)]
pub struct Mempool {
    limits: MempoolLimits,
    queues: BTreeMap<AccountId, BTreeMap<u64, SignedTx>>,
    ids: BTreeSet<TxId>,
    bytes: usize,
}

impl Mempool {
    pub fn new(limits: MempoolLimits) -> Mempool {
        Mempool {
            limits,
            ..Mempool::default()
        }
    }

    /// The nonce `account`'s next transaction should carry: past the committed one and
    /// every one waiting here in sequence.
    pub fn next_nonce(&self, account: &AccountId, state: &State) -> u64 {
        let mut n = state.account(account).nonce;
        if let Some(q) = self.queues.get(account) {
            while q.contains_key(&n) {
                n += 1;
            }
        }
        n
    }

    pub fn contains(&self, id: &TxId) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Admits a transaction against the committed `state`. Nothing changes unless it is
    /// admitted.
    pub fn insert(&mut self, tx: SignedTx, state: &State) -> Result<(), MempoolError> {
        self.admit(tx, state, false)
    }

    /// Admits a transaction whose signature the caller has already checked
    /// ([`SignedTx::verify`] or `proto::tx::verify_batch`); every other check is made here.
    pub fn insert_verified(&mut self, tx: SignedTx, state: &State) -> Result<(), MempoolError> {
        self.admit(tx, state, true)
    }

    fn admit(&mut self, tx: SignedTx, state: &State, verified: bool) -> Result<(), MempoolError> {
        let id = tx.id();
        if self.ids.contains(&id) {
            return Err(MempoolError::Duplicate);
        }
        let t = tx.tx();
        if t.chain_id != state.chain_id {
            return Err(MempoolError::WrongChain {
                expected: state.chain_id,
                found: t.chain_id,
            });
        }
        if t.fee < FEE_MIN {
            return Err(MempoolError::FeeTooLow {
                min: FEE_MIN,
                found: t.fee,
            });
        }
        // An account the chain does not know cannot pay a fee: admitting it would let
        // anyone fill the pool for free with transactions no block can take.
        let account = state
            .accounts
            .get(&t.signer)
            .ok_or(MempoolError::UnknownAccount)?;
        let next = account.nonce;
        if t.nonce < next {
            return Err(MempoolError::StaleNonce {
                next,
                nonce: t.nonce,
            });
        }
        if t.nonce - next > self.limits.max_nonce_gap {
            return Err(MempoolError::NonceGap {
                next,
                nonce: t.nonce,
            });
        }
        let queue = self.queues.get(&t.signer);
        let replacing = queue.and_then(|q| q.get(&t.nonce));
        if let Some(old) = replacing {
            if old.tx().fee >= t.fee {
                return Err(MempoolError::NonceTaken);
            }
        } else if queue.map_or(0, BTreeMap::len) >= self.limits.max_per_account {
            return Err(MempoolError::AccountFull(self.limits.max_per_account));
        }
        // Everything the account has waiting must be payable from what it holds now.
        let others: u128 = queue.map_or(0, |q| {
            q.values()
                .filter(|w| w.tx().nonce != t.nonce)
                .map(|w| u128::from(w.tx().fee))
                .sum()
        });
        if others + u128::from(t.fee) > u128::from(account.maspc) {
            return Err(MempoolError::CannotPayFees {
                balance: account.maspc,
            });
        }
        // The signature last: it is the expensive check.
        if !verified {
            tx.verify()?;
        }
        let size = tx.bytes().len();
        let old_size = replacing.map_or(0, |o| o.bytes().len());
        let count_after = self.ids.len() + usize::from(replacing.is_none());
        let bytes_after = self.bytes - old_size + size;
        let victims = self.plan_evictions(count_after, bytes_after, FeeRate::of(&tx), &t.signer)?;
        // Admitted: commit the evictions, the replacement and the insertion together.
        let (signer, nonce) = (t.signer, t.nonce);
        for (account, nonce) in victims {
            self.remove(&account, nonce);
        }
        self.remove(&signer, nonce);
        self.ids.insert(id);
        self.bytes += size;
        self.queues.entry(signer).or_default().insert(nonce, tx);
        Ok(())
    }

    /// Removes one waiting transaction, if there.
    fn remove(&mut self, account: &AccountId, nonce: u64) {
        let Some(queue) = self.queues.get_mut(account) else {
            return;
        };
        let Some(tx) = queue.remove(&nonce) else {
            return;
        };
        if queue.is_empty() {
            self.queues.remove(account);
        }
        self.forget(&tx);
    }

    fn forget(&mut self, tx: &SignedTx) {
        self.ids.remove(&tx.id());
        self.bytes -= tx.bytes().len();
    }

    /// Which queue tails to evict so that `count` transactions of `bytes` fit the limits,
    /// each paying a lower fee rate than `rate`; `Full` if that is not possible. Changes
    /// nothing: the caller commits the plan only once the newcomer is admitted.
    fn plan_evictions(
        &self,
        mut count: usize,
        mut bytes: usize,
        rate: FeeRate,
        newcomer: &AccountId,
    ) -> Result<Vec<(AccountId, u64)>, MempoolError> {
        let mut victims = Vec::new();
        let mut taken: BTreeMap<AccountId, usize> = BTreeMap::new();
        while count > self.limits.max_txs || bytes > self.limits.max_bytes {
            let lowest =
                self.queues
                    .iter()
                    .filter(|(account, _)| *account != newcomer)
                    .filter_map(|(account, q)| {
                        let skip = taken.get(account).copied().unwrap_or(0);
                        q.iter().rev().nth(skip).map(|(nonce, tx)| {
                            (FeeRate::of(tx), *account, *nonce, tx.bytes().len())
                        })
                    })
                    .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
            match lowest {
                Some((lowest, account, nonce, size)) if lowest < rate => {
                    victims.push((account, nonce));
                    *taken.entry(account).or_default() += 1;
                    count -= 1;
                    bytes -= size;
                }
                _ => return Err(MempoolError::Full),
            }
        }
        Ok(victims)
    }

    /// Drops what the committed `state` made stale: nonces below each account's next, and,
    /// from the tail, what the account can no longer pay the fees of.
    pub fn prune(&mut self, state: &State) {
        let mut stale = Vec::new();
        for (account, queue) in &mut self.queues {
            let a = state.account(account);
            let keep = queue.split_off(&a.nonce);
            stale.extend(std::mem::replace(queue, keep).into_values());
            let mut fees: u128 = queue.values().map(|w| u128::from(w.tx().fee)).sum();
            while fees > u128::from(a.maspc) {
                let (_, tx) = queue
                    .pop_last()
                    .expect("fees > 0 means a transaction waits");
                fees -= u128::from(tx.tx().fee);
                stale.push(tx);
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        for tx in stale {
            self.forget(&tx);
        }
    }

    /// Builds the transactions of block `height` on top of `state`: each account's
    /// transactions in nonce order, accounts interleaved by fee rate, each kept only if the
    /// ledger accepts it on the state the block will see (its height and timestamp). At most `max_txs` transactions and
    /// `max_bytes` bytes, counting each transaction's bytes plus the 4 bytes of its length
    /// in a block ([`proto::block`]). A transaction the ledger refuses is dropped from the
    /// pool (its successors stay, in case a replacement for it arrives).
    pub fn build(
        &mut self,
        state: &State,
        height: u64,
        timestamp_ms: u64,
        max_txs: usize,
        max_bytes: usize,
    ) -> Vec<SignedTx> {
        let mut working = state.clone();
        working.height = height;
        working.timestamp_ms = timestamp_ms;
        // Heap of each account's next candidate, best fee rate first; ties by account id.
        let mut heap: BinaryHeap<(FeeRate, std::cmp::Reverse<AccountId>, u64)> = BinaryHeap::new();
        for (account, queue) in &self.queues {
            let next = state.account(account).nonce;
            if let Some(tx) = queue.get(&next) {
                heap.push((FeeRate::of(tx), std::cmp::Reverse(*account), next));
            }
        }
        let (mut out, mut bytes, mut refused) = (Vec::new(), 0usize, Vec::new());
        while let Some((_, std::cmp::Reverse(account), nonce)) = heap.pop() {
            if out.len() == max_txs {
                break;
            }
            let tx = &self.queues[&account][&nonce];
            let size = tx.bytes().len() + 4;
            if bytes + size > max_bytes {
                continue;
            }
            // A refused transaction also strands the account's later nonces for this block.
            if apply_tx(&mut working, tx).is_ok() {
                bytes += size;
                out.push(tx.clone());
                if let Some(next) = self.queues[&account].get(&(nonce + 1)) {
                    heap.push((FeeRate::of(next), std::cmp::Reverse(account), nonce + 1));
                }
            } else {
                refused.push((account, nonce));
            }
        }
        for (account, nonce) in refused {
            self.remove(&account, nonce);
        }
        out
    }
}
