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
//!
//! A host may also bid request by request (`bid_on_requests`, with or without standing
//! asks: `post_asks`): it watches each exchange for the requests it forwards
//! (`ExchangeApi::watch_requests`, a long poll) and answers each with a signed bid at its
//! policy's price, or a pass when it would not offer on those terms
//! ([`HostControl::bid`]).

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
    /// Keep a standing ask on each exchange.
    pub post_asks: bool,
    /// Watch each exchange for forwarded requests and bid on them one by one.
    pub bid_on_requests: bool,
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
pub async fn run(b: Bidder, stop: watch::Receiver<bool>) {
    let mut watchers = Vec::new();
    if b.bid_on_requests {
        for ex in &b.exchanges {
            watchers.push(tokio::spawn(watch_exchange(
                b.clone(),
                ex.clone(),
                stop.clone(),
            )));
        }
    }
    if b.post_asks {
        post_asks(&b, stop).await;
    }
    for w in watchers {
        let _ = w.await;
    }
}

async fn post_asks(b: &Bidder, mut stop: watch::Receiver<bool>) {
    // Asks are ordered by time in milliseconds, so a restarted host's asks still come
    // after its earlier ones.
    let mut seq = 0u64;
    while !*stop.borrow() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        seq = (seq + 1).max(now_ms);
        let wait = if post_all(b, seq).await {
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

/// Watches `ex` for forwarded requests and answers each, until `stop`; reconnects after
/// [`RETRY_SECS`] when the exchange refuses or goes away.
async fn watch_exchange(b: Bidder, ex: String, mut stop: watch::Receiver<bool>) {
    let me = b.control.key.verification_key().to_bytes();
    while !*stop.borrow() {
        let served = async {
            let ctx = tarpc::context::current;
            let c = api::exchange_client(&ex).await.map_err(|e| e.to_string())?;
            let terms = c.terms(ctx()).await.map_err(|e| e.to_string())?;
            b.control
                .brokers
                .accept(terms.key, terms.profile.commission_permille)?;
            tracing::info!(exchange = %ex, "bidder: watching for requests");
            let mut after = 0;
            loop {
                let forwarded = c
                    .watch_requests(ctx(), me, after)
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                for f in forwarded {
                    after = after.max(f.seq);
                    let bid = match b
                        .control
                        .bid(&f.request, terms.chain_id, &b.addr, &b.region)
                        .await
                    {
                        Ok(bid) => bid,
                        Err(why) => {
                            tracing::warn!(exchange = %ex, %why, "bidder: request not answered");
                            continue;
                        }
                    };
                    let price = bid.msg.price_per_gib_day;
                    match c.bid(ctx(), bid.to_bytes()).await {
                        Ok(Ok(())) => tracing::debug!(exchange = %ex, ?price, "bidder: answered"),
                        Ok(Err(e)) => {
                            tracing::warn!(exchange = %ex, error = %e, "bidder: bid refused");
                        }
                        Err(e) => return Err::<(), String>(e.to_string()),
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            r = served => {
                if let Err(e) = r {
                    tracing::warn!(exchange = %ex, error = %e, "bidder: not watching");
                }
            }
        }
        tokio::select! {
            _ = stop.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(RETRY_SECS)) => {}
        }
    }
}
