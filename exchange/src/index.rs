//! An index (the seed's 4.3): knows every live exchange. Exchanges post signed listings
//! ([`proto::market::Listing`]) and renew them; a listing lapses at its expiry, so an
//! exchange that stops answering drops off within [`LISTING_LIFE_MAX_SECS`]. The index
//! takes listings only from keys registered on the chain as exchanges, with a deposit.
//! Senders ask it for the list and measure the round trip to each exchange themselves
//! (`net::deal::nearest_exchanges`): the nearest is the one nearest to them, not to the index.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use api::chain::ChainClient;
use api::{ControlError, ExchangeInfo, IndexApi};
use proto::market::{Listing, SignedListing};
use proto::tx::AccountId;

use crate::{lock, now_secs};

/// Longest a listing may live from when it is posted.
pub const LISTING_LIFE_MAX_SECS: u64 = 120;

/// The live listings. Pure: the time is passed in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    listings: BTreeMap<[u8; 32], Listing>,
    /// Highest `seq` per exchange, kept after its listing lapses: no replays.
    seqs: BTreeMap<[u8; 32], u64>,
}

impl Directory {
    /// Lists `l`, replacing its exchange's earlier listing; refuses an old or equal `seq`
    /// and an expired listing, saying which.
    pub fn post(&mut self, l: Listing, now: u64) -> Result<(), String> {
        if now >= l.expiry_unix_secs {
            return Err(format!("the listing expired at {}", l.expiry_unix_secs));
        }
        if let Some(&held) = self.seqs.get(&l.exchange) {
            if l.seq <= held {
                return Err(format!(
                    "listing {} is not newer than the exchange's listing {held} (a replay?)",
                    l.seq
                ));
            }
        }
        self.seqs.insert(l.exchange, l.seq);
        self.listings.insert(l.exchange, l);
        Ok(())
    }

    /// The listings alive at `now`, in key order; the lapsed ones are dropped.
    pub fn live(&mut self, now: u64) -> Vec<ExchangeInfo> {
        self.listings.retain(|_, l| now < l.expiry_unix_secs);
        self.listings
            .values()
            .map(|l| ExchangeInfo {
                key: l.exchange,
                addr: l.addr.clone(),
                region: l.region.clone(),
                expiry_unix_secs: l.expiry_unix_secs,
            })
            .collect()
    }
}

#[derive(Debug)]
struct Inner {
    chain_id: u64,
    dir: Mutex<Directory>,
    chain: tokio::sync::Mutex<ChainClient>,
}

/// `index.toml`, written by `mspace index init`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Where exchanges and senders reach it (`host:port`).
    pub listen: String,
    /// Miners' control addresses: the first that answers tells which exchanges are
    /// registered.
    pub chain: Vec<String>,
}

impl IndexConfig {
    /// The commented file `mspace index init` writes.
    pub fn default_text(listen: &str, chain: &[String]) -> String {
        let chain = chain
            .iter()
            .map(|c| format!("{c:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"# Market.space index (mspace index run --config THIS_FILE). Exchanges registered on the
# chain list themselves here (signed listings, renewed); senders ask which are alive and
# measure which is nearest. An index holds no money and no key: run several, anywhere.
listen = {listen:?}
# Miners' control addresses: the first that answers is asked who is registered.
chain = [{chain}]
"#
        )
    }

    /// Parses `text` with `MSPACE_INDEX__<KEY>` environment overrides, and checks it.
    pub fn parse(text: &str) -> Result<IndexConfig, String> {
        let c: IndexConfig = api::config::parse_with_env(text, "index")?;
        if c.chain.is_empty() {
            return Err("chain: at least one miner's control address".into());
        }
        if c.listen.parse::<std::net::SocketAddr>().is_err() && !c.listen.contains(':') {
            return Err(format!("listen: {:?} is not host:port", c.listen));
        }
        Ok(c)
    }

    pub fn load(path: &std::path::Path) -> Result<IndexConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        IndexConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The index's `IndexApi` service: serve it with `api::serve_control!`.
#[derive(Clone, Debug)]
pub struct Index {
    inner: Arc<Inner>,
}

impl Index {
    /// An index of the exchanges of the chain `chain` follows.
    pub async fn new(mut chain: ChainClient) -> Result<Index, String> {
        let chain_id = chain
            .status()
            .await
            .map_err(|e| format!("the chain: {e}"))?
            .chain_id;
        Ok(Index {
            inner: Arc::new(Inner {
                chain_id,
                dir: Mutex::new(Directory::default()),
                chain: tokio::sync::Mutex::new(chain),
            }),
        })
    }

    async fn take(&self, bytes: Vec<u8>) -> Result<(), ControlError> {
        let i = &self.inner;
        let now = now_secs();
        let l = SignedListing::open(&bytes, i.chain_id, now, LISTING_LIFE_MAX_SECS)
            .map_err(|e| ControlError::Invalid(format!("the listing: {e}")))?
            .msg;
        let account = i
            .chain
            .lock()
            .await
            .account(AccountId(l.exchange))
            .await
            .map_err(|e| ControlError::Unavailable(format!("the chain: {e}")))?;
        if !account.bonded("exchange") {
            return Err(ControlError::Unauthorized(
                "the exchange is not registered on the chain with a deposit".into(),
            ));
        }
        lock(&i.dir).post(l, now).map_err(ControlError::Invalid)
    }
}

impl IndexApi for Index {
    async fn post_listing(
        self,
        _: tarpc::context::Context,
        listing: Vec<u8>,
    ) -> Result<(), ControlError> {
        self.take(listing).await
    }

    async fn exchanges(self, _: tarpc::context::Context) -> Vec<ExchangeInfo> {
        lock(&self.inner.dir).live(now_secs())
    }

    async fn api_version(self, _: tarpc::context::Context) -> u32 {
        api::INDEX_API_VERSION
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn listing(k: u8, seq: u64, expiry: u64) -> Listing {
        Listing {
            chain_id: 1,
            exchange: [k; 32],
            seq,
            expiry_unix_secs: expiry,
            region: String::new(),
            addr: format!("x{k}:1"),
        }
    }

    #[test]
    fn listings_lapse_are_replaced_and_are_not_replayed() {
        let mut d = Directory::default();
        d.post(listing(2, 1, 30), 0).unwrap();
        d.post(listing(1, 1, 10), 0).unwrap();
        let keys =
            |d: &mut Directory, now| -> Vec<u8> { d.live(now).iter().map(|e| e.key[0]).collect() };
        assert_eq!(keys(&mut d, 5), vec![1, 2]);
        // Exchange 1 stops renewing: gone at its expiry.
        assert_eq!(keys(&mut d, 10), vec![2]);
        assert!(d
            .post(listing(1, 1, 50), 10)
            .unwrap_err()
            .contains("not newer"));
        d.post(listing(1, 2, 50), 10).unwrap();
        assert_eq!(keys(&mut d, 20), vec![1, 2]);
        assert!(d
            .post(listing(3, 1, 20), 20)
            .unwrap_err()
            .contains("expired at 20"));
        let mut moved = listing(2, 2, 60);
        moved.addr = "y2:1".into();
        d.post(moved, 20).unwrap();
        assert_eq!(d.live(20)[1].addr, "y2:1");
    }

    #[test]
    fn the_file_init_writes_parses_and_bad_ones_are_refused() {
        let text = IndexConfig::default_text("127.0.0.1:7600", &["127.0.0.1:27001".into()]);
        let c = IndexConfig::parse(&text).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7600");
        assert_eq!(c.chain, ["127.0.0.1:27001"]);
        let none = text.replace("chain = [\"127.0.0.1:27001\"]", "chain = []");
        assert!(IndexConfig::parse(&none).unwrap_err().contains("chain"));
        let typo = format!("{text}\nlisen = \"x\"\n");
        assert!(IndexConfig::parse(&typo).unwrap_err().contains("lisen"));
        let bad = text.replace("127.0.0.1:7600", "nowhere");
        assert!(IndexConfig::parse(&bad).unwrap_err().contains("listen"));
    }
}
