//! Keeps an exchange listed on its indexes: a signed [`proto::market::Listing`] posted to
//! each at start and every [`RELIST_SECS`] (every [`RETRY_SECS`] while one refuses or does
//! not answer, e.g. before the exchange is registered on the chain), each living
//! [`LISTING_LIFE_SECS`], so an exchange that dies drops off its indexes within that.

use std::time::Duration;

use ed25519_consensus::SigningKey;
use proto::market::{Listing, Signed};

use crate::now_secs;

pub const LISTING_LIFE_SECS: u64 = 30;
pub const RELIST_SECS: u64 = 10;
pub const RETRY_SECS: u64 = 1;

/// What is listed, and where.
#[derive(Clone, Debug)]
pub struct Lister {
    pub key: SigningKey,
    pub chain_id: u64,
    pub addr: String,
    pub region: String,
    pub indexes: Vec<String>,
}

async fn post_all(l: &Lister, seq: u64) -> bool {
    let listing = Listing {
        chain_id: l.chain_id,
        exchange: l.key.verification_key().to_bytes(),
        seq,
        expiry_unix_secs: now_secs() + LISTING_LIFE_SECS,
        region: l.region.clone(),
        addr: l.addr.clone(),
    };
    let bytes = Signed::sign(listing, &l.key).to_bytes();
    let mut all = true;
    for ix in &l.indexes {
        let posted = match api::index_client(ix).await {
            Ok(c) => match c
                .post_listing(tarpc::context::current(), bytes.clone())
                .await
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = posted {
            tracing::warn!(index = %ix, error = %e, "lister: not listed");
            all = false;
        }
    }
    all
}

/// Runs [`run`] while `leading` is true: the replicas of one exchange share its key, so
/// only the one leading lists itself (a new leader's listing replaces the old one's, its
/// `seq` being later).
pub async fn run_while_leading(l: Lister, mut leading: tokio::sync::watch::Receiver<bool>) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        tracing::info!("lister: this replica leads: listing it");
        tokio::select! {
            () = run(l.clone()) => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
    }
}

/// Runs until the task is dropped.
pub async fn run(l: Lister) {
    let mut seq = 0u64;
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        seq = (seq + 1).max(now_ms);
        let wait = if post_all(&l, seq).await {
            RELIST_SECS
        } else {
            RETRY_SECS
        };
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}
