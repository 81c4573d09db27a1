//! The miner's block store: decided blocks with their commit certificates, and the
//! proposals seen but not yet decided, in one redb database (`chain.redb`).
//!
//! redb commits are durable when `commit` returns (fsync'd, copy-on-write pages with a
//! checksummed root), so a crash at any point leaves either the whole of a decided block or
//! none of it. The ledger state is not stored: it is a pure function of the genesis and the
//! blocks, and is recomputed from them at start (docs/formats.md "Block store").
//!
//! Tables:
//! - `blocks`:   height (u64) -> block bytes (`proto::block` encoding)
//! - `certs`:    height (u64) -> commit certificate (borsh, `codec`)
//! - `pending`:  height (u64) BE | round (u32) BE | proposer [32] -> proposal part (borsh);
//!   the first part of a (height, round, proposer) stands.

use std::path::Path;

use borsh::BorshDeserialize;
use malachitebft_app_channel::app::types::core::{CommitCertificate, Round};
use redb::{Database, ReadableTable, TableDefinition};

use super::types::{Height, MsContext, ProposalPart};

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const CERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("certs");
const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("block store: {0}")]
    Db(String),
    #[error("block store: record at height {height} is corrupt: {reason}")]
    Corrupt { height: u64, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Debug)]
pub struct Store {
    db: Database,
}

fn pending_key(height: Height, round: Round, proposer: &[u8; 32]) -> [u8; 44] {
    let mut k = [0u8; 44];
    k[..8].copy_from_slice(&height.0.to_be_bytes());
    // Round::Nil never keys a proposal; rounds are small non-negative numbers.
    k[8..12].copy_from_slice(&round.as_u32().unwrap_or(u32::MAX).to_be_bytes());
    k[12..].copy_from_slice(proposer);
    k
}

impl Store {
    /// The block store's file in a node's folder.
    pub fn path_in(dir: &Path) -> std::path::PathBuf {
        dir.join("chain.redb")
    }

    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            tx.open_table(BLOCKS)?;
            tx.open_table(CERTS)?;
            tx.open_table(PENDING)?;
        }
        tx.commit()?;
        Ok(Store { db })
    }

    /// Stores a decided block and its certificate, and drops the pending proposals of that
    /// height and below, in one durable transaction.
    pub fn put_decided(
        &self,
        height: Height,
        block: &[u8],
        cert: &CommitCertificate<MsContext>,
    ) -> Result<(), StoreError> {
        let cert = borsh::to_vec(cert).map_err(|e| StoreError::Db(e.to_string()))?;
        let tx = self.db.begin_write()?;
        {
            tx.open_table(BLOCKS)?.insert(height.0, block)?;
            tx.open_table(CERTS)?.insert(height.0, cert.as_slice())?;
            let mut p = tx.open_table(PENDING)?;
            let end = pending_key(Height(height.0 + 1), Round::new(0), &[0; 32]);
            p.retain_in(..end.as_slice(), |_, _| false)?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn block(&self, height: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(BLOCKS)?;
        Ok(t.get(height)?.map(|v| v.value().to_vec()))
    }

    pub fn certificate(
        &self,
        height: u64,
    ) -> Result<Option<CommitCertificate<MsContext>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CERTS)?;
        let Some(v) = t.get(height)? else {
            return Ok(None);
        };
        CommitCertificate::<MsContext>::try_from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                height,
                reason: e.to_string(),
            })
    }

    /// Calls `f` with every stored block from `from` on, in order (replay at start), one at
    /// a time: memory stays one block whatever the chain's length.
    pub fn for_each_block<E: From<StoreError>>(
        &self,
        from: u64,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let tx = self.db.begin_read().map_err(StoreError::from)?;
        let t = tx.open_table(BLOCKS).map_err(StoreError::from)?;
        for row in t.range(from..).map_err(StoreError::from)? {
            let (k, v) = row.map_err(StoreError::from)?;
            f(k.value(), v.value())?;
        }
        Ok(())
    }

    /// Keeps a proposal seen for (height, round), durably, before the engine hears of it:
    /// the engine's WAL may then hold votes for it, and after a crash the node must still
    /// have the block it voted for (and its own proposal, which it must never change). The
    /// first part of a (height, round, proposer) stands: returns the part kept, which is
    /// `part` unless another was kept before.
    pub fn put_pending(&self, part: &ProposalPart) -> Result<ProposalPart, StoreError> {
        let key = pending_key(part.height, part.round, &part.proposer.0);
        let tx = self.db.begin_write()?;
        let kept = {
            let mut t = tx.open_table(PENDING)?;
            let existing = t.get(key.as_slice())?.map(|v| v.value().to_vec());
            match existing {
                Some(bytes) => {
                    ProposalPart::try_from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        height: part.height.0,
                        reason: format!("pending proposal: {e}"),
                    })?
                }
                None => {
                    let bytes = borsh::to_vec(part).map_err(|e| StoreError::Db(e.to_string()))?;
                    t.insert(key.as_slice(), bytes.as_slice())?;
                    part.clone()
                }
            }
        };
        tx.commit()?;
        Ok(kept)
    }

    /// The pending proposals of (height, round).
    pub fn pending(&self, height: Height, round: Round) -> Result<Vec<ProposalPart>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PENDING)?;
        let start = pending_key(height, round, &[0; 32]);
        let end = pending_key(height, round, &[0xff; 32]);
        let mut out = Vec::new();
        for row in t.range(start.as_slice()..=end.as_slice())? {
            let (_, v) = row?;
            match ProposalPart::try_from_slice(v.value()) {
                Ok(p) => out.push(p),
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        height: height.0,
                        reason: format!("pending proposal: {e}"),
                    })
                }
            }
        }
        Ok(out)
    }
}
