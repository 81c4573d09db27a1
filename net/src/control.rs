//! The host's side of the control plane: [`HostControl`] implements `api::HostApi` over a
//! running [`Host`], and [`serve_host_control`] serves it. The service definitions, their
//! types and codec live in the `api` crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use api::{
    ControlError, DownloadOffer, DownloadTerms, HostApi, HostStatus, LinkGrant, LinkRequest,
    OfferRefusal, StorageOffer, StorageRequest, HOST_API_VERSION, LINK_TTL_MAX_SECS,
};
use ed25519_consensus::SigningKey;
use proto::link::{Grant, Link};
use proto::offer::Offer;
use proto::tx::{AccountId, Broker};
use proto::ChunkId;

use crate::host::Host;
use crate::{hex, parse_hex32};

/// The host's implementation of [`HostApi`].
#[derive(Clone, Debug)]
pub struct HostControl {
    pub host: Arc<Host>,
    pub key: SigningKey,
    pub link_addr: String,
    /// Link minting needs this token; `None` disables it.
    pub token: Option<String>,
    /// What it asks per GiB per day (its offers and its exchange asks).
    pub pricing: market::pricing::Pricing,
    /// Longest storage offered, in days.
    pub max_days: u64,
    /// Blocks between storage proofs written into offers by a host off the chain (on a
    /// chain, the chain's own period is written).
    pub proof_period_blocks: u64,
    /// Miners' control addresses; empty for a host off the chain (it offers on its own
    /// terms).
    pub chain: Vec<String>,
    /// The deposit (MASP) the chain requires of a host storing this many bytes: the
    /// ledger's rule, handed in by whoever wires the host (net holds no ledger rules).
    pub deposit_for: fn(u64) -> u64,
    /// The exchanges this host asks at and the commission it pays each.
    pub brokers: Brokers,
    /// What it asks a receiver for sending a file, in MASPC per started GiB of the deal's
    /// sealed bytes (0: its downloads cost only the sender's fee).
    pub egress_price_per_gib: u64,
}

/// The exchanges a host asks at, each with the commission it charges (as the bidder read
/// it before posting there), and the most commission the host agrees to pay. An offer
/// asked for through an exchange names it and its commission; through one not here, the
/// host makes none.
#[derive(Clone, Debug, Default)]
pub struct Brokers {
    max_permille: u16,
    known: Arc<Mutex<HashMap<[u8; 32], u16>>>,
}

impl Brokers {
    /// No exchange known yet; at most `max_permille` will be paid to any.
    pub fn new(max_permille: u16) -> Brokers {
        Brokers {
            max_permille,
            known: Arc::default(),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], u16>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that this host asks at `exchange`, which charges `permille`; refused (and
    /// forgotten) if that is more than the host pays.
    pub fn accept(&self, exchange: [u8; 32], permille: u16) -> Result<(), String> {
        if permille > self.max_permille {
            self.known().remove(&exchange);
            return Err(format!(
                "the exchange charges a commission of {permille} per mille; this host pays at most {} (commission_max_permille)",
                self.max_permille
            ));
        }
        self.known().insert(exchange, permille);
        Ok(())
    }

    /// What an offer through `exchange` names: `None` if this host does not ask there.
    pub fn through(&self, exchange: [u8; 32]) -> Option<Broker> {
        self.known().get(&exchange).map(|&c| Broker {
            exchange: AccountId(exchange),
            commission_permille: c,
        })
    }

    pub fn max_permille(&self) -> u16 {
        self.max_permille
    }
}

impl HostControl {
    /// The store's figures, asked off the runtime's threads (the engine's call blocks).
    async fn stats(&self) -> engine::store::StoreStats {
        let h = Arc::clone(&self.host);
        tokio::task::spawn_blocking(move || h.engine().stats().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}

/// How long a deal's link is valid (a client asks again for a fresh one to resume).
pub const DEAL_LINK_TTL_SECS: u64 = 86_400;

/// How long a signed offer stays valid.
pub const OFFER_TTL_SECS: u64 = 600;

impl HostControl {
    /// The chain's id and this host's deposit when the chain backs it storing `bytes` in
    /// all; else why not: no registration, a deposit unbonding, or one below what the
    /// ledger requires. Asked of the first miner that answers. A host off the chain offers
    /// for chain 0 with no deposit.
    async fn chain_backing(&self, bytes: u64) -> Result<(u64, u64, u64), OfferRefusal> {
        if self.chain.is_empty() {
            return Ok((0, 0, self.proof_period_blocks));
        }
        let me = self.key.verification_key().to_bytes();
        let mut last = String::new();
        for addr in &self.chain {
            let client = match api::miner_client(addr).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            let ctx = tarpc::context::current;
            let asked = async {
                let status = client.status(ctx()).await??;
                let view = client.account(ctx(), me).await??;
                Ok::<_, Box<dyn std::error::Error>>((status, view))
            };
            let (status, view) = match asked.await {
                Ok(v) => v,
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            let Some(reg) = view.registrations.iter().find(|r| r.role == "host") else {
                return Err(OfferRefusal::NotRegistered);
            };
            if let Some(until) = reg.unbonding_until {
                return Err(OfferRefusal::Unbonding { until });
            }
            let need = (self.deposit_for)(bytes);
            if reg.deposit < need {
                return Err(OfferRefusal::DepositTooLow {
                    have: reg.deposit,
                    need,
                });
            }
            return Ok((status.chain_id, reg.deposit, status.proof_period_blocks));
        }
        Err(OfferRefusal::ChainUnreachable(last))
    }
}

/// The room a host states (asks, offers, bids): its capacity less what it stores.
fn free_bytes(s: &engine::store::StoreStats) -> u64 {
    s.capacity_bytes.saturating_sub(s.live_bytes)
}

impl HostControl {
    /// Whether this host, its store at `s`, would take `bytes` for `days` now, as its
    /// offers and bids both decide: 1 to `max_days` days, room in the store, and the chain
    /// backing it for what it would then hold (`chain_backing`).
    async fn would_take(
        &self,
        s: &engine::store::StoreStats,
        bytes: u64,
        days: u64,
    ) -> Result<(u64, u64, u64), OfferRefusal> {
        let free = free_bytes(s);
        if days == 0 || days > self.max_days {
            Err(OfferRefusal::BadTerms(format!(
                "days must be 1 to {}",
                self.max_days
            )))
        } else if bytes > free {
            Err(OfferRefusal::Full { free_bytes: free })
        } else {
            self.chain_backing(s.live_bytes.saturating_add(bytes)).await
        }
    }

    /// This host's standing ask for an exchange, signed: its price, its room now, 1 to
    /// `max_days` days, its deposit on the chain; `seq` orders it after earlier asks. None
    /// (and why) when the chain does not back the host (not registered, unbonding, deposit
    /// too low for what it stores, no miner answers).
    pub async fn ask(
        &self,
        seq: u64,
        addr: &str,
        region: &str,
        life_secs: u64,
    ) -> Result<proto::market::SignedAsk, OfferRefusal> {
        let s = self.stats().await;
        let (chain_id, deposit, _) = self.chain_backing(s.live_bytes).await?;
        let ask = proto::market::Ask {
            chain_id,
            host: self.key.verification_key().to_bytes(),
            seq,
            price_per_gib_day: self.pricing_now().price(s.live_bytes, s.capacity_bytes),
            free_bytes: free_bytes(&s),
            min_days: 1,
            max_days: u32::try_from(self.max_days).unwrap_or(u32::MAX),
            deposit,
            expiry_unix_secs: crate::now_secs().saturating_add(life_secs),
            region: region.to_owned(),
            addr: addr.to_owned(),
        };
        Ok(proto::market::Signed::sign(ask, &self.key))
    }
}

impl HostControl {
    /// This host's signed answer to a request an exchange forwarded (`signed_request`, as
    /// forwarded): a bid at its policy's price now if it would offer on those terms (room
    /// for the bytes, days it takes, the region asked, a price within the sender's, the
    /// chain backing it for what it would then store, not its own request), else a pass.
    /// An error if the request itself is malformed, forged, for another chain or expired.
    pub async fn bid(
        &self,
        signed_request: &[u8],
        chain_id: u64,
        addr: &str,
        region: &str,
    ) -> Result<proto::market::SignedBid, String> {
        let now = crate::now_secs();
        let me = self.key.verification_key().to_bytes();
        let signed = proto::market::SignedRequest::open(signed_request, chain_id, now, 3_600)
            .map_err(|e| format!("the forwarded request: {e}"))?;
        let req = &signed.msg;
        let s = self.stats().await;
        // The bytes it offers to hold: the request's, or with a spread request and less room
        // than that, the batch its room holds (beside the overhead).
        let want = match req.spread {
            Some(sp) => match sp.batch_of(free_bytes(&s), sp.chunk_bytes_of(req.bytes)) {
                0 => req.bytes,
                batch => batch + u64::from(sp.overhead_bytes),
            },
            None => req.bytes,
        };
        let backing = if req.sender != me && (req.region.is_empty() || req.region == region) {
            self.would_take(&s, want, u64::from(req.days)).await
        } else {
            Err(OfferRefusal::BadTerms("not for this host".into()))
        };
        let price = self.pricing_now().price(s.live_bytes, s.capacity_bytes);
        let backing = backing.ok().filter(|_| price <= req.max_price_per_gib_day);
        let bid = proto::market::Bid {
            chain_id,
            host: me,
            request: proto::market::request_id(signed_request),
            price_per_gib_day: backing.map(|_| price),
            deposit: backing.map_or(0, |(_, deposit, _)| deposit),
            expiry_unix_secs: now.saturating_add(BID_LIFE_SECS),
            region: region.to_owned(),
            addr: if backing.is_some() {
                addr.to_owned()
            } else {
                String::new()
            },
            // Never 0 in a bid (a request of unknown size asks for no bytes).
            free_bytes: backing.map_or(0, |_| want.max(1)),
        };
        Ok(proto::market::Signed::sign(bid, &self.key))
    }
}

/// How long a host's bid stays valid (it counts only while its request is open).
pub const BID_LIFE_SECS: u64 = 60;

/// BLAKE3 `derive_key` context of the key a host authenticates its offer ids with.
pub const OFFER_ID_CONTEXT: &str = "market.space 2026-12 host offer id v1";

/// A fresh offer id: 8 random bytes, then the first 8 bytes of BLAKE3 keyed with the
/// host's offer key over them. A host that restarted (and forgot the offers it made) still
/// knows an id it made from one it did not.
fn new_offer_id(key: &SigningKey) -> [u8; 16] {
    let mut id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id[..8]);
    let tag = offer_id_tag(key, &id[..8]);
    id[8..].copy_from_slice(&tag);
    id
}

fn offer_id_tag(key: &SigningKey, nonce: &[u8]) -> [u8; 8] {
    let k = blake3::derive_key(OFFER_ID_CONTEXT, &key.to_bytes());
    blake3::keyed_hash(&k, nonce).as_bytes()[..8]
        .try_into()
        .expect("8 bytes")
}

/// Whether this host's key made offer id `id`.
fn made_offer_id(key: &SigningKey, id: &[u8; 16]) -> bool {
    offer_id_tag(key, &id[..8])[..] == id[8..]
}

/// A deal's payment must cite an offer this host made, and meet its terms: no more bytes
/// than offered, no longer than the days asked, and at least the offer's price for them.
fn check_offer_terms(
    issued: Option<crate::host::IssuedOffer>,
    view: &api::DealView,
) -> Result<(), ControlError> {
    let o = issued.ok_or_else(|| {
        ControlError::Invalid(
            "the payment cites an offer this host did not make: it will not be completed, \
             and the escrow returns to the sender at the deadline"
                .into(),
        )
    })?;
    if view.bytes > o.bytes_max {
        return Err(ControlError::Invalid(format!(
            "the deal covers {} bytes; the offer, {}",
            view.bytes, o.bytes_max
        )));
    }
    let days = u64::from(o.days);
    if view.period_blocks > days.saturating_mul(market::terms::BLOCKS_PER_DAY) {
        return Err(ControlError::Invalid(format!(
            "the deal runs {} blocks; the offer was for {days} days",
            view.period_blocks
        )));
    }
    let need = o
        .price_per_gib_day
        .saturating_mul(view.bytes.div_ceil(market::terms::GIB))
        .saturating_mul(days);
    if view.storage_fee < need {
        return Err(ControlError::Invalid(format!(
            "the deal pays {} MASPC; the offer asks {need} for these bytes and days",
            view.storage_fee
        )));
    }
    // The commission the offer named, to the exchange it named: no more, and no less
    // (the host promised it to the exchange that brought the sender).
    let named = view
        .exchange
        .as_ref()
        .map(|x| (x.clone(), view.commission_permille));
    let offered = o.broker.map(|b| {
        (
            data_encoding::HEXLOWER.encode(&b.exchange.0),
            b.commission_permille,
        )
    });
    if named != offered {
        let say = |b: &Option<(String, u16)>| match b {
            None => "no exchange".to_owned(),
            Some((x, c)) => format!("exchange {x} at {c} per mille"),
        };
        return Err(ControlError::Invalid(format!(
            "the deal names {}; the offer, {}",
            say(&named),
            say(&offered)
        )));
    }
    Ok(())
}

pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    // Compared in time independent of where they differ.
    let (a, b) = (blake3::hash(a.as_bytes()), blake3::hash(b.as_bytes()));
    a == b
}

impl HostControl {
    /// The pricing policy now: the configuration's, with the base price the operator set
    /// from the dashboard, if any.
    pub fn pricing_now(&self) -> market::pricing::Pricing {
        let mut p = self.pricing;
        if let Some(base) = self.host.price_override() {
            p.base = base;
            p.floor = p.floor.min(base);
        }
        p
    }

    /// The active alerts, critical first.
    pub fn alert_views(&self) -> Vec<api::AlertView> {
        self.host.watch().alerts.views()
    }
}

impl HostApi for HostControl {
    async fn status(self, _: tarpc::context::Context) -> HostStatus {
        let s = self.stats().await;
        HostStatus {
            key: data_encoding::HEXLOWER.encode(&self.key.verification_key().to_bytes()),
            data_addr: self.link_addr.clone(),
            chunks: s.chunks,
            live_bytes: s.live_bytes,
            capacity_bytes: s.capacity_bytes,
            connections_open: self
                .host
                .metrics()
                .connections_open
                .load(std::sync::atomic::Ordering::Relaxed),
            version: env!("CARGO_PKG_VERSION").into(),
            alerts: self.alert_views(),
        }
    }

    async fn offer(self, _: tarpc::context::Context, request: StorageRequest) -> StorageOffer {
        let broker = request.via.map(|x| (x, self.brokers.through(x)));
        let s = self.stats().await;
        let backing = if let Some((x, None)) = broker {
            Err(OfferRefusal::BadTerms(format!(
                "this host does not ask at exchange {}: ask it without one, or through an exchange it asks at",
                data_encoding::HEXLOWER.encode(&x)
            )))
        } else {
            self.would_take(&s, request.bytes, u64::from(request.days))
                .await
        };
        let free = free_bytes(&s);
        let (signed, refusal) = match backing {
            Ok((chain_id, deposit, proof_period_blocks)) => {
                let id = new_offer_id(&self.key);
                let offer = Offer {
                    chain_id,
                    host: self.key.verification_key().to_bytes(),
                    id,
                    price_per_gib_day: self.pricing_now().price(s.live_bytes, s.capacity_bytes),
                    proof_period_blocks,
                    max_days: self.max_days,
                    bytes_max: free,
                    deposit,
                    expiry_unix_secs: crate::now_secs().saturating_add(OFFER_TTL_SECS),
                    broker: broker.and_then(|(_, b)| b),
                };
                self.host.remember_offer(
                    id,
                    crate::host::IssuedOffer {
                        price_per_gib_day: offer.price_per_gib_day,
                        days: request.days,
                        bytes_max: offer.bytes_max,
                        expiry_unix_secs: offer.expiry_unix_secs,
                        broker: offer.broker,
                    },
                );
                (Some(offer.sign(&self.key).to_bytes()), None)
            }
            Err(r) => (None, Some(r)),
        };
        StorageOffer {
            signed,
            refusal,
            free_bytes: free,
        }
    }

    async fn download_offer(self, _: tarpc::context::Context, manifest: [u8; 32]) -> DownloadOffer {
        let found = self.host.object(ChunkId(manifest)).await.ok().flatten();
        DownloadOffer {
            available: found.is_some(),
            chunks: found.map_or(0, |s| u32::try_from(s.len()).unwrap_or(u32::MAX)),
        }
    }

    async fn mint_link(
        self,
        _: tarpc::context::Context,
        request: LinkRequest,
    ) -> Result<String, ControlError> {
        let Some(token) = &self.token else {
            return Err(ControlError::Unauthorized(
                "this host mints no links over the control plane".into(),
            ));
        };
        if !same_secret(token, &request.token) {
            return Err(ControlError::Unauthorized("wrong control token".into()));
        }
        if request.ttl_secs == 0 || request.ttl_secs > LINK_TTL_MAX_SECS {
            return Err(ControlError::Invalid(format!(
                "ttl must be 1 to {LINK_TTL_MAX_SECS} seconds"
            )));
        }
        let grant = match request.grant {
            LinkGrant::Upload { bytes_max } => Grant::Upload { bytes_max },
            LinkGrant::Download { manifest } => Grant::Download {
                manifest: ChunkId(manifest),
            },
        };
        let now = crate::now_secs();
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        Link::sign(
            &self.key,
            &self.link_addr,
            grant,
            request.bearer,
            now + request.ttl_secs,
            id,
        )
        .map(|l| l.to_string())
        .map_err(|e| ControlError::Invalid(e.to_string()))
    }

    async fn deal_link(
        self,
        _: tarpc::context::Context,
        deal: [u8; 32],
        download: bool,
    ) -> Result<String, ControlError> {
        self.link_for_deal(deal, download, false).await
    }

    async fn emergency_link(
        self,
        _: tarpc::context::Context,
        deal: [u8; 32],
    ) -> Result<String, ControlError> {
        self.link_for_deal(deal, true, true).await
    }

    async fn api_version(self, _: tarpc::context::Context) -> u32 {
        HOST_API_VERSION
    }

    async fn drop_object(
        self,
        _: tarpc::context::Context,
        token: String,
        manifest: [u8; 32],
    ) -> Result<u64, ControlError> {
        match &self.token {
            Some(t) if same_secret(t, &token) => {}
            Some(_) => return Err(ControlError::Unauthorized("wrong control token".into())),
            None => {
                return Err(ControlError::Unauthorized(
                    "this host takes no control token".into(),
                ))
            }
        }
        match self.host.drop_object(ChunkId(manifest)).await {
            Ok(removed) => Ok(removed),
            Err(e @ crate::host::DropRefused::Failed(_)) => {
                Err(ControlError::Unavailable(e.to_string()))
            }
            Err(e) => Err(ControlError::Invalid(e.to_string())),
        }
    }

    async fn download_terms(
        self,
        _: tarpc::context::Context,
        deal: [u8; 32],
    ) -> Result<DownloadTerms, ControlError> {
        let (_, view) = self.deal_of_mine(deal).await?;
        if !matches!(view.stage, api::DealStage::Active { .. }) {
            return Err(ControlError::Invalid(format!(
                "the deal is {}: downloads are paid for active deals only",
                view.stage
            )));
        }
        let mut terms = DownloadTerms {
            deal,
            manifest: deal_manifest(&view)?,
            bytes: view.bytes,
            download_fee: view.download_fee,
            host_part: 0,
            exchange: None,
            exchange_part: 0,
            expiry_unix_secs: crate::now_secs() + DOWNLOAD_TERMS_SECS,
            signature: Vec::new(),
        };
        let split = self.egress_split(&view)?;
        (terms.host_part, terms.exchange, terms.exchange_part) = split;
        terms.signature = self
            .key
            .sign(&api::download_terms_message(&terms))
            .to_bytes()
            .to_vec();
        Ok(terms)
    }

    async fn download_link(
        self,
        _: tarpc::context::Context,
        deal: [u8; 32],
        receiver: [u8; 32],
        payment: Option<[u8; 32]>,
    ) -> Result<String, ControlError> {
        if std::env::var(FAULT_ENV).as_deref() == Ok("exit-on-download-link") {
            tracing::error!("{FAULT_ENV}=exit-on-download-link: exiting as told");
            std::process::exit(3);
        }
        let (mut chain, view) = self.deal_of_mine(deal).await?;
        if !matches!(
            view.stage,
            api::DealStage::Active { .. } | api::DealStage::Ended { .. }
        ) {
            return Err(ControlError::Invalid(format!(
                "the deal is {}: its file is not here to download",
                view.stage
            )));
        }
        let manifest = deal_manifest(&view)?;
        let price = self.egress_price(view.bytes);
        // A new download (free, or a payment not claimed yet) only while the deal is active:
        // once it ended, its chunks are released. A claimed payment's link is given again.
        let active = matches!(view.stage, api::DealStage::Active { .. });
        let id: [u8; 16] = match payment {
            None if !active => {
                return Err(ControlError::Invalid(format!(
                    "the deal is {}: no new download of its file",
                    view.stage
                )))
            }
            None => {
                if view.download_fee != 0 || price != 0 {
                    return Err(ControlError::Invalid(format!(
                        "a download of this file costs {} MASPC ({} to its sender, {price} to \
                         this host): pay it (DownloadPayment) and ask again with the payment",
                        view.download_fee.saturating_add(price),
                        view.download_fee
                    )));
                }
                let mut h = blake3::Hasher::new_derive_key("market.space free download link id v1");
                h.update(&deal);
                h.update(&receiver);
                h.finalize().as_bytes()[..16].try_into().expect("16 bytes")
            }
            Some(p) => {
                let unavailable =
                    |e: api::chain::ChainError| ControlError::Unavailable(e.to_string());
                let paid = chain
                    .download(proto::tx::TxId(p))
                    .await
                    .map_err(unavailable)?
                    .ok_or_else(|| {
                        ControlError::Invalid(format!(
                            "no download payment {} within its claim window on the chain \
                             (not decided yet, refunded, or never made)",
                            hex(&p)
                        ))
                    })?;
                if paid.deal != hex(&deal) {
                    return Err(ControlError::Invalid(format!(
                        "payment {} is for deal {}, not this one",
                        hex(&p),
                        paid.deal
                    )));
                }
                if paid.receiver != hex(&receiver) {
                    return Err(ControlError::Invalid(format!(
                        "payment {} was made by {}: its link is for that key only",
                        hex(&p),
                        paid.receiver
                    )));
                }
                if !paid.claimed {
                    let (host_part, exchange, exchange_part) = self.egress_split(&view)?;
                    let exchange = exchange.map(|x| hex(&x));
                    if paid.exchange_part < exchange_part
                        || (exchange_part > 0 && paid.exchange != exchange)
                    {
                        return Err(ControlError::Invalid(format!(
                            "the payment carries {} MASPC for exchange {:?}; the deal's exchange \
                             {exchange:?} is owed {exchange_part}: it is not claimed and goes back \
                             to its payer after height {}",
                            paid.exchange_part, paid.exchange, paid.deadline
                        )));
                    }
                    let price = host_part;
                    if !active {
                        return Err(ControlError::Invalid(format!(
                            "the deal is {}: its file is not served any more; the payment \
                             is not claimed and goes back to its payer after height {}",
                            view.stage, paid.deadline
                        )));
                    }
                    if paid.host_part < price {
                        return Err(ControlError::Invalid(format!(
                            "the payment carries {} MASPC for this host, which asks {price}: \
                             it is not claimed and goes back to its payer after height {}",
                            paid.host_part, paid.deadline
                        )));
                    }
                    // The agent claims it at the next block: that block must still be in
                    // the window.
                    let height = chain.status().await.map_err(unavailable)?.height;
                    if height + CLAIM_MARGIN_BLOCKS > paid.deadline {
                        return Err(ControlError::Invalid(format!(
                            "the payment's claim window closes at height {} (now {height}): \
                             too late to serve it; it goes back to its payer",
                            paid.deadline
                        )));
                    }
                    self.host
                        .queue_claim(p, paid.deadline)
                        .map_err(|e| ControlError::Unavailable(e.to_string()))?;
                }
                p[..16].try_into().expect("16 bytes")
            }
        };
        Link::sign(
            &self.key,
            &self.link_addr,
            Grant::Download {
                manifest: ChunkId(manifest),
            },
            Some(receiver),
            crate::now_secs().saturating_add(DEAL_LINK_TTL_SECS),
            id,
        )
        .map(|l| l.to_string())
        .map_err(|e| ControlError::Invalid(e.to_string()))
    }
}

/// For tests of what a receiver does when a host dies: set to `exit-on-download-link`,
/// the host exits when asked for a download link (after the receiver paid).
pub const FAULT_ENV: &str = "MSPACE_HOST_FAULT";

/// Seconds a download quote stands.
pub const DOWNLOAD_TERMS_SECS: u64 = 600;
/// Blocks left in a payment's claim window that a host needs to serve it: the agent
/// claims at the next block.
const CLAIM_MARGIN_BLOCKS: u64 = 2;

/// The deal's file: its last chunk is the manifest.
fn deal_manifest(view: &api::DealView) -> Result<[u8; 32], ControlError> {
    view.entries
        .last()
        .map(|e| e.id)
        .ok_or_else(|| ControlError::Unavailable("the miner sent a deal without chunks".into()))
}

/// Nominal seconds per block (`market::terms::BLOCKS_PER_DAY` a day).
const SECS_PER_BLOCK: u64 = 86_400 / market::terms::BLOCKS_PER_DAY;

impl HostControl {
    /// A download's egress price for the deal, split between this host and the exchange
    /// that matched the deal (its commission, rounded down): (host part, exchange, its
    /// part).
    fn egress_split(
        &self,
        view: &api::DealView,
    ) -> Result<(u64, Option<[u8; 32]>, u64), ControlError> {
        let price = self.egress_price(view.bytes);
        let Some(x) = &view.exchange else {
            return Ok((price, None, 0));
        };
        let exchange = parse_hex32(x).ok_or_else(|| {
            ControlError::Unavailable("the miner sent a malformed exchange key".into())
        })?;
        let part = u64::try_from(u128::from(price) * u128::from(view.commission_permille) / 1000)
            .unwrap_or(price);
        Ok((price - part, Some(exchange), part))
    }

    /// What a receiver pays this host to send `bytes`: the egress price per started GiB.
    fn egress_price(&self, bytes: u64) -> u64 {
        let gib = 1u128 << 30;
        let price = (u128::from(bytes) * u128::from(self.egress_price_per_gib)).div_ceil(gib);
        u64::try_from(price).unwrap_or(u64::MAX)
    }

    /// The deal `deal` as the chain states it, if this host is its host; with the miner
    /// connection it was read through.
    async fn deal_of_mine(
        &self,
        deal: [u8; 32],
    ) -> Result<(api::chain::ChainClient, api::DealView), ControlError> {
        if self.chain.is_empty() {
            return Err(ControlError::Unavailable(
                "this host is off the chain: it takes no deals".into(),
            ));
        }
        let mut chain = api::chain::ChainClient::connect(&self.chain)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        let view = chain
            .deal(proto::tx::TxId(deal))
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                ControlError::Invalid(format!(
                    "no deal {} on the chain (yet: a payment is known once its block is decided)",
                    data_encoding::HEXLOWER.encode(&deal)
                ))
            })?;
        let me = hex(&self.key.verification_key().to_bytes());
        if view.host != me {
            return Err(ControlError::Invalid(format!(
                "the deal is with host {}, not this one",
                view.host
            )));
        }
        Ok((chain, view))
    }

    /// `deal_link`'s work; an emergency link (a download link only) lives the deal's whole
    /// nominal length and a day more instead of [`DEAL_LINK_TTL_SECS`].
    async fn link_for_deal(
        &self,
        deal: [u8; 32],
        download: bool,
        emergency: bool,
    ) -> Result<String, ControlError> {
        let (_, view) = self.deal_of_mine(deal).await?;
        let sender = parse_hex32(&view.sender)
            .ok_or_else(|| ControlError::Unavailable("the miner sent a malformed deal".into()))?;
        if !download {
            // The terms of the offer as made; after a restart (offers are kept in memory),
            // an offer id this host made is held to its terms as they stand now.
            let issued = match self.host.issued_offer(&view.offer) {
                Some(o) => Some(o),
                None if made_offer_id(&self.key, &view.offer) => {
                    // The days the offer was asked for are lost: the deal's own length
                    // (in started days) is what it must pay for, within this host's limit.
                    let days = view
                        .period_blocks
                        .div_ceil(market::terms::BLOCKS_PER_DAY)
                        .max(1);
                    if days > self.max_days {
                        return Err(ControlError::Invalid(format!(
                            "the deal runs {days} days; this host takes at most {}",
                            self.max_days
                        )));
                    }
                    let s = self.stats().await;
                    // Whatever its fill then, it asked at least its lowest price; the
                    // exchange it named is lost too: any within what this host pays.
                    let broker = match (&view.exchange, view.commission_permille) {
                        (None, _) => None,
                        (Some(x), c) if c <= self.brokers.max_permille() => {
                            let exchange = parse_hex32(x)
                                .map(AccountId)
                                .ok_or_else(|| {
                                    ControlError::Unavailable(
                                        "the miner sent a malformed exchange key".into(),
                                    )
                                })?;
                            Some(Broker {
                                exchange,
                                commission_permille: c,
                            })
                        }
                        (Some(_), c) => {
                            return Err(ControlError::Invalid(format!(
                                "the deal pays a commission of {c} per mille; this host pays at most {}",
                                self.brokers.max_permille()
                            )))
                        }
                    };
                    Some(crate::host::IssuedOffer {
                        price_per_gib_day: self.pricing_now().lowest(),
                        days: u32::try_from(days).unwrap_or(u32::MAX),
                        bytes_max: free_bytes(&s),
                        expiry_unix_secs: 0,
                        broker,
                    })
                }
                None => None,
            };
            check_offer_terms(issued, &view)?;
        }
        let (grant, ttl) = match (&view.stage, download) {
            (api::DealStage::AwaitingCompletion { .. }, false) => {
                // The deal's bytes, plus the file record its manifest upload writes.
                let record = 48 + 32 * view.chunks as u64;
                (
                    Grant::Upload {
                        bytes_max: view.bytes + record,
                    },
                    DEAL_LINK_TTL_SECS,
                )
            }
            // After the end, while the host still holds the chunks (until it releases them).
            (api::DealStage::Active { .. } | api::DealStage::Ended { .. }, true) => {
                let manifest = view.entries.last().ok_or_else(|| {
                    ControlError::Unavailable("the miner sent a deal without chunks".into())
                })?;
                (
                    Grant::Download {
                        manifest: ChunkId(manifest.id),
                    },
                    DEAL_LINK_TTL_SECS,
                )
            }
            (stage, _) => {
                return Err(ControlError::Invalid(format!(
                    "the deal is {stage}: no {} link for it",
                    if download { "download" } else { "upload" }
                )))
            }
        };
        // One link id per deal and direction: a resumed upload is counted against the same
        // budget.
        let half = if download { &deal[16..] } else { &deal[..16] };
        let id: [u8; 16] = half.try_into().expect("16 bytes");
        if !download {
            self.host
                .hold_deal(&deal, &sender)
                .map_err(|e| ControlError::Unavailable(e.to_string()))?;
            self.host
                .allow_deal_chunks(&deal, view.entries.iter().map(|e| ChunkId(e.id)).collect());
        }
        let ttl = if emergency {
            let blocks = view
                .period_blocks
                .saturating_mul(u64::from(view.parts.max(1)));
            blocks
                .saturating_mul(SECS_PER_BLOCK)
                .saturating_add(DEAL_LINK_TTL_SECS)
        } else {
            ttl
        };
        Link::sign(
            &self.key,
            &self.link_addr,
            grant,
            Some(sender),
            crate::now_secs().saturating_add(ttl),
            id,
        )
        .map(|l| l.to_string())
        .map_err(|e| ControlError::Invalid(e.to_string()))
    }
}

/// Serves [`HostApi`] on `addr` until the task is dropped; returns the bound address once
/// listening, through `bound`.
pub async fn serve_host_control(
    control: HostControl,
    addr: &str,
    bound: tokio::sync::oneshot::Sender<std::net::SocketAddr>,
) -> std::io::Result<()> {
    api::serve_control!(control.serve(), addr, bound).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::IssuedOffer;

    fn view(bytes: u64, period_blocks: u64, fee: u64) -> api::DealView {
        api::DealView {
            id: String::new(),
            sender: String::new(),
            host: String::new(),
            offer: [1; 16],
            stage: api::DealStage::AwaitingCompletion { deadline: 100 },
            storage_fee: fee,
            download_fee: 0,
            period_blocks,
            opened_height: 1,
            escrow: fee,
            paid: 0,
            refunded: 0,
            exchange: None,
            commission_permille: 0,
            commission_paid: 0,
            downloads: 0,
            download_income: 0,
            insurance: None,
            parts: 0,
            proven: 0,
            missed: 0,
            chunks: 1,
            bytes,
            first_period: 0,
            entries: Vec::new(),
        }
    }

    #[test]
    fn a_deal_link_needs_an_offer_of_this_host_and_its_terms() {
        let offer = IssuedOffer {
            price_per_gib_day: 10,
            days: 30,
            bytes_max: 5 << 30,
            expiry_unix_secs: u64::MAX,
            broker: None,
        };
        let day = market::terms::BLOCKS_PER_DAY;
        // (offer known, bytes, blocks, fee) -> refusal containing
        let cases: [(bool, u64, u64, u64, Option<&str>); 6] = [
            (true, 1 << 30, 30 * day, 300, None),
            (true, 2 << 30, 120, 600, None),
            (false, 1 << 30, 30 * day, 300, Some("did not make")),
            (
                true,
                6 << 30,
                30 * day,
                10_000,
                Some("the offer, 5368709120"),
            ),
            (true, 1 << 30, 31 * day, 310, Some("was for 30 days")),
            (
                true,
                (1 << 30) + 1,
                30 * day,
                300,
                Some("the offer asks 600"),
            ),
        ];
        // Offer ids carry the host's tag: this host's are known after a restart, another
        // key's (or a made-up id) are not.
        let key = SigningKey::from([3; 32]);
        let id = new_offer_id(&key);
        assert!(made_offer_id(&key, &id));
        assert!(!made_offer_id(&SigningKey::from([4; 32]), &id));
        for bit in 0..128 {
            let mut forged = id;
            forged[bit / 8] ^= 1 << (bit % 8);
            assert!(!made_offer_id(&key, &forged), "bit {bit}");
        }
        assert_ne!(new_offer_id(&key), id, "a fresh nonce per offer");
        for (known, bytes, blocks, fee, want) in cases {
            let got = check_offer_terms(known.then_some(offer), &view(bytes, blocks, fee));
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e} lacks {w:?}"),
                (got, want) => panic!("{bytes} {blocks} {fee}: {got:?}, wanted {want:?}"),
            }
        }
        // The exchange and commission named must be the offer's, exactly.
        let x = [9u8; 32];
        let brokered = IssuedOffer {
            broker: Some(Broker {
                exchange: AccountId(x),
                commission_permille: 20,
            }),
            ..offer
        };
        let paid = |exchange: Option<[u8; 32]>, commission_permille| api::DealView {
            exchange: exchange.map(|x| data_encoding::HEXLOWER.encode(&x)),
            commission_permille,
            ..view(1 << 30, 30 * day, 300)
        };
        let cases = [
            (brokered, paid(Some(x), 20), None),
            (
                brokered,
                paid(None, 0),
                Some("names no exchange; the offer, exchange 0909"),
            ),
            (
                brokered,
                paid(Some(x), 10),
                Some("at 10 per mille; the offer, exchange"),
            ),
            (
                brokered,
                paid(Some([8; 32]), 20),
                Some("names exchange 0808"),
            ),
            (offer, paid(Some(x), 20), Some("the offer, no exchange")),
        ];
        for (o, v, want) in cases {
            match (check_offer_terms(Some(o), &v), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{e} lacks {w:?}"),
                (got, want) => panic!("{got:?}, wanted {want:?}"),
            }
        }
        let b = Brokers::new(50);
        assert!(b.accept(x, 51).unwrap_err().contains("at most 50"));
        assert_eq!(b.through(x), None);
        b.accept(x, 50).unwrap();
        assert_eq!(b.through(x).map(|b| b.commission_permille), Some(50));
        assert!(b.accept(x, 60).is_err());
        assert_eq!(b.through(x), None, "a raised commission is no longer paid");
    }
}
