//! The host's bidder: keeps a standing ask on each exchange the host chose (`exchanges` in
//! its configuration), so that senders matched there come to its control plane for a
//! signed offer. Each ask carries the host's price, its room now, the days it takes, its
//! region and its deposit on the chain, lives [`ASK_LIFE_SECS`], and is re-posted every
//! [`REPOST_SECS`] (sooner, every [`RETRY_SECS`], while an exchange or the chain refuses or
//! does not answer, e.g. before the host is registered). An ask the host can no longer
//! honour (room gone, deposit unbonding) is replaced at the next post or lapses.
//!
//! Before each post the bidder reads the exchange's terms: its key and the commission it
//! charges. An exchange charging more than the host's `commission_max_permille` gets no ask
//! (and offers through it are refused); the others are recorded in the host's
//! [`crate::control::Brokers`], so an offer to a sender matched there names the exchange
//! and its commission, which the payment must carry.

use std::time::Duration;

use tokio::sync::watch;

use crate::control::HostControl;

/// How long one ask lives on an exchange.
pub const ASK_LIFE_SECS: u64 = 60;
/// How often the asks are posted again while all is well.
pub const REPOST_SECS: u64 = 15;
/// How soon after a refusal or an unreachable exchange.
pub const RETRY_SECS: u64 = 1;

/// What the bidder posts, and where.
#[derive(Clone, Debug)]
pub struct Bidder {
    pub control: HostControl,
    /// Exchanges' control addresses.
    pub exchanges: Vec<String>,
    /// The host's control-plane address as senders reach it (written into the asks).
    pub addr: String,
    pub region: String,
}

/// Posts to every exchange; whether each took the ask.
async fn post_all(b: &Bidder, seq: u64) -> bool {
    let signed = match b.control.ask(seq, &b.addr, &b.region, ASK_LIFE_SECS).await {
        Ok(s) => s.to_bytes(),
        Err(why) => {
            tracing::warn!(%why, "bidder: no ask posted");
            return false;
        }
    };
    let mut all = true;
    for ex in &b.exchanges {
        let posted = async {
            let c = api::exchange_client(ex).await.map_err(|e| e.to_string())?;
            let ctx = tarpc::context::current;
            let terms = c.terms(ctx()).await.map_err(|e| e.to_string())?;
            b.control
                .brokers
                .accept(terms.key, terms.profile.commission_permille)?;
            c.post_ask(ctx(), signed.clone())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        };
        if let Err(e) = posted.await {
            tracing::warn!(exchange = %ex, error = %e, "bidder: ask not posted");
            all = false;
        } else {
            tracing::debug!(exchange = %ex, seq, "bidder: ask posted");
        }
    }
    all
}

/// Runs until `stop` turns true.
pub async fn run(b: Bidder, mut stop: watch::Receiver<bool>) {
    // Asks are ordered by time in milliseconds, so a restarted host's asks still come
    // after its earlier ones.
    let mut seq = 0u64;
    while !*stop.borrow() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        seq = (seq + 1).max(now_ms);
        let wait = if post_all(&b, seq).await {
            REPOST_SECS
        } else {
            RETRY_SECS
        };
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(wait)) => {}
        }
    }
}
