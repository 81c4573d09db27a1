//! One codec for everything malachite sends or writes: borsh (a fixed, documented binary
//! format: little-endian integers, u32-length-prefixed sequences, one tag byte per enum
//! variant) over the types of `types`. Gossip, sync and the WAL all go through it.
//!
//! Decoding is strict: the input's size is checked first, the whole input must be consumed,
//! and every block inside is decoded by `proto::block` (which checks every length before it
//! allocates). Malformed input is an error, never a panic.

use borsh::{BorshDeserialize, BorshSerialize};
use bytes::Bytes;
use malachitebft_app_channel::app::consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use malachitebft_app_channel::app::streaming::StreamMessage;
use malachitebft_app_channel::app::types::codec::{Codec, HasEncodedLen};
use std::sync::Arc;

use malachitebft_app_channel::app::types::core::{
    CommitCertificate, ExtendedCommitCertificate, PolkaCertificate, ValidatorProof, VoteExtensions,
};
use malachitebft_app_channel::app::types::sync;
use malachitebft_sync::ValueResponse;

use super::types::{BlockBytes, Height, MsContext, ProposalPart, Sig, Value};

/// The largest message this codec decodes: a whole block plus its envelope (sync responses
/// carry a few blocks; the network layer bounds frames separately).
pub const MESSAGE_BYTES_MAX: usize = 4 * proto::block::BLOCK_BYTES_MAX;

#[derive(Clone, Copy, Debug, Default)]
pub struct BorshCodec;

#[derive(Debug, thiserror::Error)]
#[error("consensus message: {0}")]
pub struct CodecError(String);

fn decode<T: BorshDeserialize>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(CodecError(format!(
            "{} bytes, the limit is {MESSAGE_BYTES_MAX}",
            bytes.len()
        )));
    }
    borsh::from_slice(bytes).map_err(|e| CodecError(e.to_string()))
}

fn encode<T: BorshSerialize>(msg: &T) -> Result<Bytes, CodecError> {
    borsh::to_vec(msg)
        .map(Bytes::from)
        .map_err(|e| CodecError(e.to_string()))
}

macro_rules! borsh_codec {
    ($($t:ty),* $(,)?) => {$(
        impl Codec<$t> for BorshCodec {
            type Error = CodecError;

            fn decode(&self, bytes: Bytes) -> Result<$t, CodecError> {
                decode(&bytes)
            }

            fn encode(&self, msg: &$t) -> Result<Bytes, CodecError> {
                encode(msg)
            }
        }
    )*};
}

borsh_codec!(
    Value,
    ProposalPart,
    SignedConsensusMsg<MsContext>,
    LivenessMsg<MsContext>,
    StreamMessage<ProposalPart>,
    ProposedValue<MsContext>,
    PolkaCertificate<MsContext>,
    CommitCertificate<MsContext>,
    sync::Status<MsContext>,
    sync::Request<MsContext>,
);

/// malachite gives these two types no borsh encoding; they travel as these mirrors, whose
/// fields are borsh-encoded in order.
#[derive(BorshSerialize, BorshDeserialize)]
struct ProofWire {
    public_key: Vec<u8>,
    peer_id: Vec<u8>,
    signature: Sig,
}

/// A sync response: the first height, then each block's bytes and commit certificate.
/// Vote extensions are disabled on this chain, so certificates carry none.
#[derive(BorshSerialize, BorshDeserialize)]
struct ResponseWire {
    start_height: Height,
    values: Vec<(BlockBytes, CommitCertificate<MsContext>)>,
}

impl Codec<ValidatorProof<MsContext>> for BorshCodec {
    type Error = CodecError;

    fn decode(&self, bytes: Bytes) -> Result<ValidatorProof<MsContext>, CodecError> {
        let w: ProofWire = decode(&bytes)?;
        Ok(ValidatorProof::new(w.public_key, w.peer_id, w.signature))
    }

    fn encode(&self, p: &ValidatorProof<MsContext>) -> Result<Bytes, CodecError> {
        encode(&ProofWire {
            public_key: p.public_key.clone(),
            peer_id: p.peer_id.clone(),
            signature: p.signature,
        })
    }
}

fn response_wire(msg: &sync::Response<MsContext>) -> ResponseWire {
    let sync::Response::ValueResponse(r) = msg;
    ResponseWire {
        start_height: r.start_height,
        values: r
            .values
            .iter()
            .map(|v| {
                (
                    BlockBytes(Arc::new(v.value_bytes.to_vec())),
                    v.certificate.trim_vote_extensions(),
                )
            })
            .collect(),
    }
}

impl Codec<sync::Response<MsContext>> for BorshCodec {
    type Error = CodecError;

    fn decode(&self, bytes: Bytes) -> Result<sync::Response<MsContext>, CodecError> {
        let w: ResponseWire = decode(&bytes)?;
        let values = w
            .values
            .into_iter()
            .map(|(block, cert)| {
                sync::RawDecidedValue::new(
                    Bytes::from(block.0.to_vec()),
                    ExtendedCommitCertificate::from_commit_certificate_and_extensions(
                        cert,
                        VoteExtensions::default(),
                    ),
                )
            })
            .collect();
        Ok(sync::Response::ValueResponse(ValueResponse::new(
            w.start_height,
            values,
        )))
    }

    fn encode(&self, msg: &sync::Response<MsContext>) -> Result<Bytes, CodecError> {
        encode(&response_wire(msg))
    }
}

impl HasEncodedLen<sync::Response<MsContext>> for BorshCodec {
    fn encoded_len(&self, msg: &sync::Response<MsContext>) -> Result<usize, CodecError> {
        borsh::object_length(&response_wire(msg)).map_err(|e| CodecError(e.to_string()))
    }
}

/// Decodes `bytes` as every message type this codec reads from the network or the WAL and
/// panics if one that decodes does not encode back to the same bytes (or if decoding
/// panics): the property the codec tests and the `consensus_msg` fuzz target check.
pub fn check_roundtrip(bytes: &[u8]) {
    let c = BorshCodec;
    let b = Bytes::copy_from_slice(bytes);
    macro_rules! check {
        ($($t:ty),*) => {$(
            if let Ok(v) = Codec::<$t>::decode(&c, b.clone()) {
                let again = Codec::<$t>::encode(&c, &v).expect("a decoded message encodes");
                assert_eq!(again.as_ref(), bytes, "{} is not canonical", stringify!($t));
            }
        )*};
    }
    check!(
        Value,
        ProposalPart,
        StreamMessage<ProposalPart>,
        SignedConsensusMsg<MsContext>,
        LivenessMsg<MsContext>,
        ProposedValue<MsContext>,
        ValidatorProof<MsContext>,
        PolkaCertificate<MsContext>,
        CommitCertificate<MsContext>,
        sync::Status<MsContext>,
        sync::Request<MsContext>,
        sync::Response<MsContext>
    );
}
