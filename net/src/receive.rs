//! The receiver's side of a shared file (`proto::fileshare`): for one copy, read its deal
//! on the chain (the file it holds, its host), ask the host for a download's price
//! (`HostApi::download_terms`, signed by the host), pay it on chain unless it is free
//! (`DownloadPayment`: held by the ledger until the host claims it, given back when the
//! claim window closes unclaimed), and take the download link the host then binds to the
//! receiver's key (`HostApi::download_link`). The download itself is `client::get_file`.

use std::time::Duration;

use api::chain::ChainClient;
use api::{DealStage, DownloadTerms};
use ed25519_consensus::SigningKey;
use proto::fileshare::{FileShare, ShareCopy};
use proto::link::{Grant, Link};
use proto::tx::{TxBody, TxId};

use crate::deal::{Report, PAYMENT_FEE};
use crate::NetError;
use crate::{hex, parse_hex32};

/// Longest a receiver waits for its payment's block.
const COMMIT_WAIT: Duration = Duration::from_secs(60);
/// Blocks a receiver waits for the host's miner to see its payment.
const LINK_TRIES: u64 = 20;

/// An attempt to buy a download from one copy's host: what was quoted and paid, whatever
/// happened after (a payment whose host then fails stays the receiver's to know of).
#[derive(Debug)]
pub struct Attempt {
    pub terms: Option<DownloadTerms>,
    /// The payment, if one was made (none for a free download).
    pub payment: Option<Payment>,
    /// The download link, bound to the receiver's key, or why there is none.
    pub link: Result<Link, NetError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub id: TxId,
    pub total: u64,
    pub height: u64,
    /// The last height its host may claim it; unclaimed, it comes back after it.
    pub deadline: u64,
}

/// Text prefix of a share sealed to its receiver's key (formats.md section 19).
pub const BOUND_SHARE_PREFIX: &str = "msb1-";

/// A share only `receiver`'s key opens: `msb1-` and the base64url of the share's bytes
/// sealed to that key (`engine::sealed_to`). Whoever else holds the text learns nothing
/// of the file, its key or its copies.
pub fn bind_share(share: &FileShare, receiver: &[u8; 32]) -> Result<String, NetError> {
    let sealed = engine::sealed_to::seal_to(receiver, &share.to_bytes())
        .map_err(|e| NetError::Protocol(e.to_string()))?;
    Ok(format!(
        "{BOUND_SHARE_PREFIX}{}",
        data_encoding::BASE64URL_NOPAD.encode(&sealed)
    ))
}

/// Opens a bound share with the receiver's key; refuses one sealed to another key, altered,
/// or not a share.
pub fn open_bound_share(text: &str, key: &SigningKey) -> Result<FileShare, NetError> {
    let bad = |why: String| NetError::Protocol(format!("bound share: {why}"));
    let body = text
        .trim()
        .strip_prefix(BOUND_SHARE_PREFIX)
        .ok_or_else(|| bad(format!("it starts with {BOUND_SHARE_PREFIX:?}")))?;
    let sealed = data_encoding::BASE64URL_NOPAD
        .decode(body.as_bytes())
        .map_err(|e| bad(format!("not canonical base64url: {e}")))?;
    let to = engine::sealed_to::sealed_recipient(&sealed).map_err(|e| bad(e.to_string()))?;
    let me = key.verification_key().to_bytes();
    if to != me {
        return Err(bad(format!(
            "it is for key {}, not for this one ({}): give --key the receiver's key",
            hex(&to),
            hex(&me)
        )));
    }
    let bytes =
        engine::sealed_to::open_from(key.as_bytes(), &sealed).map_err(|e| bad(e.to_string()))?;
    FileShare::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
}

fn chain_err(e: impl std::fmt::Display) -> NetError {
    NetError::Protocol(format!("chain: {e}"))
}

/// What a receiver buys with, whichever copy it tries.
#[derive(Clone, Copy)]
#[allow(missing_debug_implementations)] // `report` is a closure
pub struct Purchase<'a> {
    pub share: &'a FileShare,
    /// Miners' control addresses (the first that answers is used).
    pub chain: &'a [String],
    /// The receiver's key: its account pays, and the link is bound to it.
    pub key: &'a SigningKey,
    /// The most it pays for one download, MASPC (fee and host part together).
    pub max_total: u64,
    /// Hears each step.
    pub report: &'a Report,
}

/// Buys one download of the shared file from `copy`'s host.
pub async fn buy(p: &Purchase<'_>, copy: &ShareCopy) -> Attempt {
    let mut terms = None;
    let mut payment = None;
    let link = buy_link(p, copy, &mut terms, &mut payment).await;
    Attempt {
        terms,
        payment,
        link,
    }
}

async fn buy_link(
    p: &Purchase<'_>,
    copy: &ShareCopy,
    quoted: &mut Option<DownloadTerms>,
    paid: &mut Option<Payment>,
) -> Result<Link, NetError> {
    let Purchase {
        share,
        chain: chain_addrs,
        key,
        max_total,
        report,
    } = *p;
    let me = key.verification_key().to_bytes();
    let mut chain = ChainClient::connect(chain_addrs).await.map_err(chain_err)?;
    let view = chain
        .deal(copy.deal)
        .await
        .map_err(chain_err)?
        .ok_or_else(|| NetError::Protocol(format!("no deal {} on the chain", copy.deal)))?;
    if !matches!(view.stage, DealStage::Active { .. }) {
        return Err(NetError::Protocol(format!(
            "deal {} is {}: its file is not for sale",
            copy.deal, view.stage
        )));
    }
    let manifest = share.key.manifest_id.0;
    if view.entries.last().map(|e| e.id) != Some(manifest) {
        return Err(NetError::Protocol(format!(
            "deal {} does not hold the shared file (manifest {})",
            copy.deal,
            share.key.manifest_id.to_hex()
        )));
    }
    let host_key = parse_hex32(&view.host)
        .ok_or_else(|| NetError::Protocol("the miner sent a malformed host key".into()))?;
    let host = api::host_client(&copy.host_addr)
        .await
        .map_err(|e| NetError::Protocol(format!("host {}: {e}", copy.host_addr)))?;
    let rpc = |e: &dyn std::fmt::Display| {
        NetError::Protocol(format!("host {} control plane: {e}", copy.host_addr))
    };
    let terms = host
        .download_terms(tarpc::context::current(), copy.deal.0)
        .await
        .map_err(|e| rpc(&e))?
        .map_err(|e| rpc(&e))?;
    check_terms(&terms, &view, &host_key, &copy.deal, &manifest)?;
    let total = terms.total();
    *quoted = Some(terms.clone());
    if total > max_total {
        return Err(NetError::Protocol(format!(
            "a download from host {} costs {total} MASPC ({} to the sender, {} to the host), \
             more than the {max_total} allowed",
            copy.host_addr, terms.download_fee, terms.host_part
        )));
    }
    let payment = if total == 0 {
        report(&format!(
            "the file is free to download from host {}",
            copy.host_addr
        ));
        None
    } else {
        let body = TxBody::DownloadPayment {
            deal: copy.deal,
            fee: terms.download_fee,
            host_part: terms.host_part,
            exchange: terms.exchange.map(proto::tx::AccountId),
            exchange_part: terms.exchange_part,
        };
        let committed = chain
            .submit(key, body, PAYMENT_FEE, COMMIT_WAIT)
            .await
            .map_err(chain_err)?;
        let id = crate::deal::parse_tx(&committed.tx)?;
        let held = chain.download(id).await.map_err(chain_err)?;
        let deadline = held.map_or(committed.height, |d| d.deadline);
        report(&format!(
            "paid {total} MASPC for the download ({} to the sender, {} to host {}): payment {} \
             at height {}, held until the host claims it; unclaimed, it comes back after height {deadline}",
            terms.download_fee, terms.host_part, copy.host_addr, id, committed.height
        ));
        Some(Payment {
            id,
            total,
            height: committed.height,
            deadline,
        })
    };
    paid.clone_from(&payment);
    let text = link_for(
        &mut chain,
        &host,
        copy,
        me,
        payment.as_ref().map(|p| (p.id, p.height)),
    )
    .await?;
    let link = Link::parse(&text)?;
    if link.grant
        != (Grant::Download {
            manifest: share.key.manifest_id,
        })
        || link.bearer != Some(me)
    {
        return Err(NetError::Protocol(
            "the host's link is not a download of the shared file bound to this key".into(),
        ));
    }
    if link.host_key != host_key {
        return Err(NetError::Protocol(
            "the link is signed by another key than the deal's host".into(),
        ));
    }
    Ok(link)
}

/// The host's quote must be signed by the deal's host (`host_key`, from `view`), for this
/// deal and file, carry the fee the chain states (the ledger refuses any other), and pay an
/// exchange's part only to the exchange the deal names.
fn check_terms(
    t: &DownloadTerms,
    view: &api::DealView,
    host_key: &[u8; 32],
    deal: &TxId,
    manifest: &[u8; 32],
) -> Result<(), NetError> {
    let chain_fee = view.download_fee;
    let bad = |why: &str| NetError::Protocol(format!("the host's download terms: {why}"));
    let vk = ed25519_consensus::VerificationKey::try_from(*host_key)
        .map_err(|_| bad("the deal's host key is not a valid key"))?;
    let sig: [u8; 64] = t
        .signature
        .as_slice()
        .try_into()
        .map_err(|_| bad("the signature is not 64 bytes"))?;
    vk.verify(
        &ed25519_consensus::Signature::from(sig),
        &api::download_terms_message(t),
    )
    .map_err(|_| bad("not signed by the deal's host"))?;
    if t.deal != deal.0 || t.manifest != *manifest {
        return Err(bad("they are for another deal or file"));
    }
    if t.download_fee != chain_fee {
        return Err(bad(&format!(
            "they state a fee of {}, the chain {chain_fee}",
            t.download_fee
        )));
    }
    if t.expiry_unix_secs < crate::now_secs() {
        return Err(bad("they expired"));
    }
    let named = t.exchange.map(|x| hex(&x));
    if (named.is_some() && named != view.exchange) || (named.is_none() && t.exchange_part > 0) {
        return Err(bad("they pay another exchange than the deal's"));
    }
    Ok(())
}

/// The host's link for the payment (or a free one), asked again at each block while the
/// host's miner has not seen the payment yet.
async fn link_for(
    chain: &mut ChainClient,
    host: &api::HostApiClient,
    copy: &ShareCopy,
    me: [u8; 32],
    payment: Option<(TxId, u64)>,
) -> Result<String, NetError> {
    let mut last = String::new();
    let paid_at = payment.map_or(0, |(_, h)| h);
    for i in 0..LINK_TRIES {
        match host
            .download_link(
                tarpc::context::current(),
                copy.deal.0,
                me,
                payment.map(|(id, _)| id.0),
            )
            .await
            .map_err(|e| NetError::Protocol(format!("host {}: {e}", copy.host_addr)))?
        {
            Ok(text) => return Ok(text),
            Err(api::ControlError::Invalid(e))
                if payment.is_some() && e.starts_with("no download payment") =>
            {
                last = e;
            }
            Err(e) => {
                return Err(NetError::Protocol(format!(
                    "host {} refuses the link: {e}",
                    copy.host_addr
                )))
            }
        }
        chain
            .block(paid_at + 1 + i, Duration::from_secs(5))
            .await
            .map_err(chain_err)?;
    }
    Err(NetError::Protocol(format!(
        "host {} did not see the payment within {LINK_TRIES} blocks: {last} (payment {})",
        copy.host_addr,
        payment.map(|(id, _)| hex(&id.0)).unwrap_or_default()
    )))
}

/// What trying one copy came to.
#[derive(Debug)]
pub struct Tried {
    pub copy: ShareCopy,
    pub terms: Option<DownloadTerms>,
    pub payment: Option<Payment>,
    /// Why this copy did not serve the file; `None` for the one that did.
    pub error: Option<String>,
}

impl Tried {
    /// "host: why" for a copy that did not serve the file.
    pub fn failure(&self) -> Option<String> {
        self.error
            .as_ref()
            .map(|e| format!("{}: {e}", self.copy.host_addr))
    }
}

/// A shared file downloaded: from the last copy tried, after the others.
#[derive(Debug)]
pub struct Fetched {
    pub done: crate::client::GetDone,
    pub tried: Vec<Tried>,
}

/// Buys and downloads the shared file from its copies in order until one serves it: a
/// copy whose host gives no link (before or after payment) or fails while sending is left
/// for the next. `job` is the download's settings; its links are set per copy, and its key
/// must be the purchase's. On failure, every copy tried and why (with what was paid).
pub async fn fetch_shared(
    p: &Purchase<'_>,
    job: &crate::client::GetJob,
    progress: std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<Fetched, Vec<Tried>> {
    let mut tried = Vec::new();
    for copy in &p.share.copies {
        let attempt = buy(p, copy).await;
        let mut t = Tried {
            copy: copy.clone(),
            terms: attempt.terms,
            payment: attempt.payment,
            error: None,
        };
        let link = match attempt.link {
            Ok(l) => l,
            Err(e) => {
                (p.report)(&format!("copy at {} left out: {e}", copy.host_addr));
                t.error = Some(e.to_string());
                tried.push(t);
                continue;
            }
        };
        let mut this = job.clone();
        this.links = vec![link];
        match crate::client::get_file(&this, std::sync::Arc::clone(&progress)).await {
            Ok(done) => {
                tried.push(t);
                return Ok(Fetched { done, tried });
            }
            Err(e) => {
                (p.report)(&format!(
                    "copy at {} failed while downloading: {e}",
                    copy.host_addr
                ));
                t.error = Some(e.to_string());
                tried.push(t);
            }
        }
    }
    Err(tried)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share() -> FileShare {
        FileShare::new(
            proto::ShareKey {
                file_id: proto::FileId([1; 16]),
                manifest_id: proto::ChunkId([2; 32]),
                file_key: proto::FileKey([3; 32]),
            },
            vec![ShareCopy {
                deal: TxId([4; 32]),
                host_addr: "127.0.0.1:7401".into(),
            }],
        )
        .unwrap()
    }

    #[test]
    fn a_bound_share_opens_with_its_receivers_key_only() {
        let receiver = SigningKey::from([5; 32]);
        let text = bind_share(&share(), &receiver.verification_key().to_bytes()).unwrap();
        assert!(text.starts_with(BOUND_SHARE_PREFIX));
        assert_eq!(open_bound_share(&text, &receiver).unwrap(), share());
        let other = SigningKey::from([6; 32]);
        let e = open_bound_share(&text, &other).unwrap_err().to_string();
        assert!(e.contains("not for this one"), "{e}");
        // Altered anywhere past the recipient: refused, not misread.
        let mut bytes = data_encoding::BASE64URL_NOPAD
            .decode(&text.as_bytes()[BOUND_SHARE_PREFIX.len()..])
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!(
            "{BOUND_SHARE_PREFIX}{}",
            data_encoding::BASE64URL_NOPAD.encode(&bytes)
        );
        let e = open_bound_share(&altered, &receiver)
            .unwrap_err()
            .to_string();
        assert!(e.contains("altered or damaged"), "{e}");
        for (input, says) in [
            ("msf1-AAAA", "starts with"),
            ("msb1-!!", "base64url"),
            ("msb1-AAAA", "shorter"),
        ] {
            let e = open_bound_share(input, &receiver).unwrap_err().to_string();
            assert!(e.contains(says), "{input}: {e}");
        }
        // Sealed to the receiver but not a share.
        let junk =
            engine::sealed_to::seal_to(&receiver.verification_key().to_bytes(), b"junk").unwrap();
        let junk = format!(
            "{BOUND_SHARE_PREFIX}{}",
            data_encoding::BASE64URL_NOPAD.encode(&junk)
        );
        assert!(open_bound_share(&junk, &receiver).is_err());
    }
}
