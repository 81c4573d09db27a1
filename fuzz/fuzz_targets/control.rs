//! The control plane's decoder as a host runs it: a length-delimited frame's bytes decoded
//! by `api::SafeBincode` into a client message for `HostApi`, and a client's view
//! of a response. Neither may panic or allocate without bound on arbitrary bytes; what
//! decodes encodes back to bytes that decode to the same value (but for the deadline,
//! which is relative to the clock). (It found that tarpc's own
//! codec panics on a huge deadline; `SafeBincode` turns that into an error.)
#![no_main]

use std::pin::Pin;

use api::{HostApiRequest, HostApiResponse, SafeBincode};
use libfuzzer_sys::fuzz_target;
use tarpc::tokio_serde::{Deserializer, Serializer};
use tarpc::{ClientMessage, Response};

type Server = SafeBincode<ClientMessage<HostApiRequest>, Response<HostApiResponse>>;
type Client = SafeBincode<Response<HostApiResponse>, ClientMessage<HostApiRequest>>;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::BytesMut::from(data);
    let mut server = Server::default();
    if let Ok(msg) = Pin::new(&mut server).deserialize(&bytes) {
        let mut client = Client::default();
        let again = Pin::new(&mut client)
            .serialize(&msg)
            .expect("a decoded message encodes");
        let back = Pin::new(&mut server)
            .deserialize(&bytes::BytesMut::from(&again[..]))
            .expect("an encoded message decodes");
        // The deadline travels relative to the clock, so only what is not time is compared.
        let plain = |m: &ClientMessage<HostApiRequest>| match m {
            ClientMessage::Request(r) => format!("{} {:?}", r.id, r.message),
            other => format!("{other:?}"),
        };
        assert_eq!(plain(&msg), plain(&back));
    }
    let mut client = Client::default();
    let _ = Pin::new(&mut client).deserialize(&bytes);
});
