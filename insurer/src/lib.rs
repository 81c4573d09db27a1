//! An insurer (the seed's 4.0 and 5.2, `mspace insure run`): it quotes the cover of a deal
//! a sender is about to pay, and signs the quote; the sender carries it in its payment
//! (`proto::tx::Insurance`), and from then on the chain does the rest: the premium is the
//! insurer's once the deal's completion matches, and the deal's first missed proof pays the
//! cover to the sender from the insurer's deposit. Nothing is trusted to this process after
//! it signs.
//!
//! A quote is priced by `market::insurance::premium` from the host's rating and its deposit
//! as the chain shows them. It is refused beyond what the insurer's deposit can still cover
//! (its deposit less its exposure on the chain) and beyond what the host's deposit still
//! backs. Quotes reserve nothing: two quotes may both fit now and not together; the ledger
//! checks the bounds at each payment and refuses the one that does not fit, before
//! anything is paid.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use api::chain::ChainClient;
use api::{ControlError, InsurerApi, InsurerPolicyView, InsurerStatus, Quote, QuoteRequest};
use ed25519_consensus::SigningKey;
use market::insurance::{premium, HostStanding, InsurancePolicy, QuoteRefusal};
use proto::tx::{AccountId, Insurance, InsuredDeal};
use serde::{Deserialize, Serialize};

/// How long a quote stays good unless the config says otherwise.
pub const QUOTE_LIFE_SECS_DEFAULT: u64 = 120;
/// The longest quote life a config may set.
pub const QUOTE_LIFE_SECS_MAX: u64 = 3600;

/// `insurer.toml`: `docs/formats.md` section 17.5.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Control-plane address the insurer serves `InsurerApi` on.
    pub listen: String,
    /// Miners' control addresses (the first that answers is used).
    pub chain: Vec<String>,
    /// The insurer's ed25519 key (written by `mspace insure init`): its account on the
    /// chain, registered as an insurer with the deposit that backs its cover.
    #[serde(default = "default_key_file")]
    pub key_file: std::path::PathBuf,
    /// The address its registration on the chain names, if senders reach it by another
    /// name than `listen`.
    #[serde(default)]
    pub public_addr: Option<String>,
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// `[policy]` in `insurer.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub rate_ppm_per_day: u64,
    pub min_rating: u32,
    pub max_cover_per_deal: u64,
    pub quote_life_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        let p = InsurancePolicy::default();
        PolicyConfig {
            rate_ppm_per_day: p.rate_ppm_per_day,
            min_rating: p.min_rating,
            max_cover_per_deal: p.max_cover_per_deal,
            quote_life_secs: QUOTE_LIFE_SECS_DEFAULT,
        }
    }
}

impl PolicyConfig {
    pub fn policy(&self) -> InsurancePolicy {
        InsurancePolicy {
            rate_ppm_per_day: self.rate_ppm_per_day,
            min_rating: self.min_rating,
            max_cover_per_deal: self.max_cover_per_deal,
        }
    }
}

fn default_key_file() -> std::path::PathBuf {
    "insurer.key".into()
}

pub use api::config::ConfigError;

impl api::config::RoleConfig for Config {
    const ROLE: &'static str = "insurer";

    fn key_file_mut(&mut self) -> &mut std::path::PathBuf {
        &mut self.key_file
    }

    fn check(&self) -> Result<(), String> {
        Config::check(self)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        api::config::load(path)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.chain.is_empty() {
            return Err("chain: name at least one miner".into());
        }
        let p = &self.policy;
        if p.rate_ppm_per_day == 0 {
            return Err("policy.rate_ppm_per_day: at least 1 (cover is not free)".into());
        }
        if p.min_rating > 1000 {
            return Err(format!(
                "policy.min_rating {}: ratings run 0 to 1000",
                p.min_rating
            ));
        }
        if p.quote_life_secs == 0 || p.quote_life_secs > QUOTE_LIFE_SECS_MAX {
            return Err(format!(
                "policy.quote_life_secs {}: 1 to {QUOTE_LIFE_SECS_MAX}",
                p.quote_life_secs
            ));
        }
        if self.registered_addr().len() > proto::tx::ENDPOINT_BYTES_MAX {
            return Err("the address registered on the chain is longer than 255 bytes".into());
        }
        Ok(())
    }

    /// The address the insurer's registration names.
    pub fn registered_addr(&self) -> &str {
        self.public_addr.as_deref().unwrap_or(&self.listen)
    }
}

#[derive(Debug, Default)]
struct Counters {
    quoted: u64,
    refused: BTreeMap<String, u64>,
}

#[derive(Debug)]
struct Inner {
    key: SigningKey,
    chain_id: u64,
    policy: PolicyConfig,
    chain: tokio::sync::Mutex<ChainClient>,
    counters: Mutex<Counters>,
}

/// The insurer's service; cheap to clone (one per connection).
#[derive(Clone, Debug)]
pub struct Insurer {
    inner: Arc<Inner>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A role's registration in an account view: (deposit, exposure), if bonded.
fn bonded(view: &api::AccountView, role: &str) -> Option<(u64, u64)> {
    view.registrations
        .iter()
        .find(|r| r.role == role && r.unbonding_until.is_none())
        .map(|r| (r.deposit, r.exposure))
}

impl Insurer {
    /// The insurer with `key`, pricing by `policy`, on the chain `chain` follows.
    pub async fn new(
        key: SigningKey,
        policy: PolicyConfig,
        mut chain: ChainClient,
    ) -> Result<Insurer, String> {
        let chain_id = chain
            .status()
            .await
            .map_err(|e| format!("the chain: {e}"))?
            .chain_id;
        Ok(Insurer {
            inner: Arc::new(Inner {
                key,
                chain_id,
                policy,
                chain: tokio::sync::Mutex::new(chain),
                counters: Mutex::new(Counters::default()),
            }),
        })
    }

    fn account_id(&self) -> [u8; 32] {
        self.inner.key.verification_key().to_bytes()
    }

    async fn account(&self, who: [u8; 32]) -> Result<api::AccountView, ControlError> {
        self.inner
            .chain
            .lock()
            .await
            .account(AccountId(who))
            .await
            .map_err(|e| ControlError::Unavailable(format!("the chain: {e}")))
    }

    fn refuse(&self, reason: &str, e: ControlError) -> ControlError {
        *lock(&self.inner.counters)
            .refused
            .entry(reason.to_owned())
            .or_default() += 1;
        e
    }

    /// This insurer's (deposit, exposure) on the chain.
    async fn books(&self) -> Result<(u64, u64), ControlError> {
        let me = self.account(self.account_id()).await?;
        bonded(&me, "insurer").ok_or_else(|| {
            self.refuse(
                "not_registered",
                ControlError::Unavailable(
                    "this insurer is not registered (or is unbonding) on the chain: \
                     `mspace insure register`"
                        .into(),
                ),
            )
        })
    }

    async fn quote_for(&self, r: QuoteRequest) -> Result<Quote, ControlError> {
        let now = now_secs();
        if r.offer_expiry_unix_secs <= now {
            return Err(self.refuse(
                "offer_expired",
                ControlError::Invalid("the host's offer has expired: ask it for a new one".into()),
            ));
        }
        let (deposit, exposure) = self.books().await?;
        let free = deposit.saturating_sub(exposure);
        let host = self.account(r.host).await?;
        let standing = match bonded(&host, "host") {
            Some((deposit, exposure)) => HostStanding {
                bonded: true,
                rating: host.rating,
                free_deposit: deposit.saturating_sub(exposure),
            },
            None => HostStanding {
                bonded: false,
                rating: host.rating,
                free_deposit: 0,
            },
        };
        let premium = premium(
            &self.inner.policy.policy(),
            &standing,
            r.cover,
            r.period_blocks,
            free,
        )
        .map_err(|e| {
            let err = match e {
                QuoteRefusal::Exposure { .. } | QuoteRefusal::HostDepositTooLow { .. } => {
                    ControlError::Unavailable(e.to_string())
                }
                _ => ControlError::Invalid(e.to_string()),
            };
            self.refuse(e.reason(), err)
        })?;
        // No later than the offer: the chain forgets a taken offer once it expires.
        let expiry = (now + self.inner.policy.quote_life_secs).min(r.offer_expiry_unix_secs);
        let deal = InsuredDeal {
            chain_id: self.inner.chain_id,
            sender: AccountId(r.sender),
            host: AccountId(r.host),
            offer: r.offer,
            offer_expiry_unix_secs: r.offer_expiry_unix_secs,
            storage_fee: r.storage_fee,
            period_blocks: r.period_blocks,
        };
        let i = Insurance::sign(&self.inner.key, &deal, premium, r.cover, expiry);
        lock(&self.inner.counters).quoted += 1;
        tracing::info!(
            host = %data_encoding::HEXLOWER.encode(&r.host),
            cover = r.cover,
            premium,
            "quoted"
        );
        Ok(Quote {
            insurer: i.insurer.0,
            premium,
            cover: r.cover,
            quote_expiry_unix_secs: expiry,
            signature: i.signature.to_vec(),
        })
    }

    /// The chain this insurer serves.
    pub fn chain_id(&self) -> u64 {
        self.inner.chain_id
    }
}

impl InsurerApi for Insurer {
    async fn quote(
        self,
        _: tarpc::context::Context,
        request: QuoteRequest,
    ) -> Result<Quote, ControlError> {
        self.quote_for(request).await
    }

    async fn status(self, _: tarpc::context::Context) -> InsurerStatus {
        let (deposit, exposure) = self.books().await.unwrap_or_default();
        let p = self.inner.policy;
        let c = lock(&self.inner.counters);
        InsurerStatus {
            key: self.account_id(),
            chain_id: self.inner.chain_id,
            deposit,
            exposure,
            free: deposit.saturating_sub(exposure),
            policy: InsurerPolicyView {
                rate_ppm_per_day: p.rate_ppm_per_day,
                min_rating: p.min_rating,
                max_cover_per_deal: p.max_cover_per_deal,
                quote_life_secs: p.quote_life_secs,
            },
            quoted: c.quoted,
            refused: c.refused.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    async fn api_version(self, _: tarpc::context::Context) -> u32 {
        api::INSURER_API_VERSION
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(policy: &str) -> Result<Config, String> {
        let text = format!("listen = \"127.0.0.1:7600\"\nchain = [\"127.0.0.1:1\"]\n{policy}");
        let c: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn configs_out_of_range_are_refused_naming_the_key() {
        let c = config("").unwrap();
        assert_eq!(c.policy, PolicyConfig::default());
        assert_eq!(c.registered_addr(), "127.0.0.1:7600");
        for (bad, key) in [
            ("[policy]\nrate_ppm_per_day = 0", "rate_ppm_per_day"),
            ("[policy]\nmin_rating = 1001", "min_rating"),
            ("[policy]\nquote_life_secs = 0", "quote_life_secs"),
            ("[policy]\nquote_life_secs = 3601", "quote_life_secs"),
            ("[policy]\nunknown = 1", "unknown"),
        ] {
            let err = config(bad).unwrap_err();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(toml::from_str::<Config>("listen = \"a\"\nchain = []")
            .unwrap()
            .check()
            .unwrap_err()
            .contains("chain"));
    }
}
