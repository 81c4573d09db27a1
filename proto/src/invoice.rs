//! Invoices (use case 1: a payment request that cannot be swapped in transit): who asks
//! whom for how much MASPC and why, signed by the issuer. Its id (BLAKE3 of the signed
//! bytes) is recorded on the chain by the issuer, which timestamps it and lets a payer
//! check that the issuer stands by it; it travels sealed to the payer's key
//! (`engine::sealed_to`). Layout in docs/formats.md section 21.

use crate::decode::{DecodeError, Reader};

pub const INVOICE_MAGIC: &[u8; 4] = b"MSIV";
pub const INVOICE_VERSION: u8 = 1;
/// Longest memo, bytes of UTF-8.
pub const MEMO_MAX: usize = 1024;
/// Longest attachment name, bytes of UTF-8.
pub const ATTACHMENT_NAME_MAX: usize = 255;
/// Domain of the issuer's signature.
const SIGN_CONTEXT: &[u8] = b"market.space invoice v1";
const WHAT: &str = "invoice";

/// A file that goes with the invoice (sent after it, in the same sealed message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    pub bytes: u64,
    pub blake3: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invoice {
    pub chain_id: u64,
    pub issuer: [u8; 32],
    pub payer: [u8; 32],
    /// MASPC asked, at least 1.
    pub amount: u64,
    pub created_unix_secs: u64,
    /// Random: two invoices with the same terms have different ids.
    pub nonce: [u8; 16],
    pub memo: String,
    pub attachment: Option<Attachment>,
}

/// An invoice with its issuer's signature, as encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedInvoice {
    pub invoice: Invoice,
    bytes: Vec<u8>,
}

/// Memo and names: UTF-8 without control characters but newline and tab.
fn text_ok(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
}

impl Invoice {
    fn check(&self) -> Result<(), String> {
        if self.amount == 0 {
            return Err("the amount must be at least 1 MASPC".into());
        }
        if self.memo.len() > MEMO_MAX || !text_ok(&self.memo) {
            return Err(format!(
                "the memo: at most {MEMO_MAX} bytes of text (no control characters but newline and tab)"
            ));
        }
        if let Some(a) = &self.attachment {
            if a.name.is_empty()
                || a.name.len() > ATTACHMENT_NAME_MAX
                || a.name.contains('/')
                || !text_ok(&a.name)
                || a.name.contains(['\n', '\t'])
            {
                return Err(format!(
                    "the attachment's name: 1 to {ATTACHMENT_NAME_MAX} bytes, no '/' or control characters"
                ));
            }
        }
        Ok(())
    }

    fn encode_unsigned(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(180 + self.memo.len());
        out.extend_from_slice(INVOICE_MAGIC);
        out.push(INVOICE_VERSION);
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&self.issuer);
        out.extend_from_slice(&self.payer);
        out.extend_from_slice(&self.amount.to_le_bytes());
        out.extend_from_slice(&self.created_unix_secs.to_le_bytes());
        out.extend_from_slice(&self.nonce);
        let memo = u16::try_from(self.memo.len()).expect("checked: at most MEMO_MAX");
        out.extend_from_slice(&memo.to_le_bytes());
        out.extend_from_slice(self.memo.as_bytes());
        match &self.attachment {
            None => out.push(0),
            Some(a) => {
                out.push(1);
                out.push(u8::try_from(a.name.len()).expect("checked: at most 255"));
                out.extend_from_slice(a.name.as_bytes());
                out.extend_from_slice(&a.bytes.to_le_bytes());
                out.extend_from_slice(&a.blake3);
            }
        }
        out
    }

    /// Signs as `key`, whose public key must be the issuer's.
    pub fn sign(self, key: &ed25519_consensus::SigningKey) -> Result<SignedInvoice, String> {
        self.check()?;
        if key.verification_key().to_bytes() != self.issuer {
            return Err("the signing key is not the invoice's issuer".into());
        }
        let mut bytes = self.encode_unsigned();
        let mut msg = SIGN_CONTEXT.to_vec();
        msg.extend_from_slice(&bytes);
        bytes.extend_from_slice(&key.sign(&msg).to_bytes());
        Ok(SignedInvoice {
            invoice: self,
            bytes,
        })
    }
}

impl SignedInvoice {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// BLAKE3 of the signed bytes: what the issuer records on the chain.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.bytes).as_bytes()
    }

    /// Decodes a signed invoice from the start of `bytes` and checks its signature against
    /// its issuer; returns it and the bytes after it (the attachment, if any).
    pub fn decode(bytes: &[u8]) -> Result<(SignedInvoice, &[u8]), DecodeError> {
        let mut r = Reader::new(WHAT, bytes);
        r.magic(INVOICE_MAGIC)?;
        r.version(INVOICE_VERSION)?;
        let chain_id = r.u64("chain_id")?;
        let issuer: [u8; 32] = r.array("issuer")?;
        let payer: [u8; 32] = r.array("payer")?;
        let amount = r.u64("amount")?;
        let created_unix_secs = r.u64("created")?;
        let nonce: [u8; 16] = r.array("nonce")?;
        let memo_len = usize::from(r.u16("memo length")?);
        if memo_len > MEMO_MAX {
            return Err(r.invalid("memo length", format!("{memo_len}: at most {MEMO_MAX}")));
        }
        let memo = std::str::from_utf8(r.take("memo", memo_len)?)
            .map_err(|_| r.invalid("memo", "not UTF-8"))?
            .to_owned();
        let attachment = match r.u8("attachment present")? {
            0 => None,
            1 => {
                let len = usize::from(r.u8("attachment name length")?);
                let name = std::str::from_utf8(r.take("attachment name", len)?)
                    .map_err(|_| r.invalid("attachment name", "not UTF-8"))?
                    .to_owned();
                Some(Attachment {
                    name,
                    bytes: r.u64("attachment bytes")?,
                    blake3: r.array("attachment blake3")?,
                })
            }
            other => return Err(r.invalid("attachment present", format!("{other} is not 0 or 1"))),
        };
        let invoice = Invoice {
            chain_id,
            issuer,
            payer,
            amount,
            created_unix_secs,
            nonce,
            memo,
            attachment,
        };
        invoice.check().map_err(|e| r.invalid("fields", e))?;
        let signed_len = bytes.len() - r.remaining();
        let signature: [u8; 64] = r.array("signature")?;
        let rest = &bytes[signed_len + 64..];
        let mut msg = SIGN_CONTEXT.to_vec();
        msg.extend_from_slice(&bytes[..signed_len]);
        if !crate::sig::signed_by(&issuer, &signature, &msg) {
            return Err(DecodeError::Invalid {
                what: WHAT,
                field: "signature",
                reason: "not the issuer's signature over these fields (altered, or forged)".into(),
            });
        }
        Ok((
            SignedInvoice {
                invoice,
                bytes: bytes[..signed_len + 64].to_vec(),
            },
            rest,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer() -> ed25519_consensus::SigningKey {
        ed25519_consensus::SigningKey::from([7; 32])
    }

    fn sample(attach: bool) -> Invoice {
        Invoice {
            chain_id: 9,
            issuer: issuer().verification_key().to_bytes(),
            payer: [2; 32],
            amount: 250,
            created_unix_secs: 1_800_000_000,
            nonce: [3; 16],
            memo: "Mastering, track 4\nthank you".into(),
            attachment: attach.then(|| Attachment {
                name: "track4.pdf".into(),
                bytes: 3,
                blake3: *blake3::hash(b"pdf").as_bytes(),
            }),
        }
    }

    #[test]
    fn round_trips_and_keeps_what_follows() {
        for attach in [false, true] {
            let signed = sample(attach).sign(&issuer()).unwrap();
            let mut bytes = signed.as_bytes().to_vec();
            bytes.extend_from_slice(b"pdf");
            let (back, rest) = SignedInvoice::decode(&bytes).unwrap();
            assert_eq!(back, signed);
            assert_eq!(rest, b"pdf");
            assert_eq!(back.id(), *blake3::hash(signed.as_bytes()).as_bytes());
        }
    }

    #[test]
    fn altered_fields_and_bad_input_are_refused() {
        let good = sample(true).sign(&issuer()).unwrap().as_bytes().to_vec();
        // Every byte of the signed part is covered: change the amount (offset 77).
        let mut altered = good.clone();
        altered[77] ^= 1;
        let e = SignedInvoice::decode(&altered).unwrap_err().to_string();
        assert!(e.contains("signature"), "{e}");
        let set = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            b
        };
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "truncated"),
            ("magic", set(0, b'X'), "magic"),
            ("version", set(4, 2), "version 2"),
            ("truncated", good[..good.len() - 1].to_vec(), "truncated"),
        ];
        for (name, bytes, says) in cases {
            let e = SignedInvoice::decode(&bytes).unwrap_err().to_string();
            assert!(e.contains(says), "{name}: {e:?} lacks {says:?}");
        }
        let mut zero = sample(false);
        zero.amount = 0;
        assert!(zero.sign(&issuer()).is_err());
        let mut control = sample(false);
        control.memo = "a\u{7}b".into();
        assert!(control.sign(&issuer()).is_err());
        let mut slash = sample(true);
        slash.attachment.as_mut().unwrap().name = "../x".into();
        assert!(slash.sign(&issuer()).is_err());
        let mut other = sample(false);
        other.issuer = [1; 32];
        assert!(other.sign(&issuer()).is_err(), "signed by another key");
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = SignedInvoice::decode(&bytes);
        }
    }
}
