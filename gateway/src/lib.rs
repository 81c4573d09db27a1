//! The S3 gateway (`mspace gateway`): an S3 endpoint on the customer's machine. Clients
//! speak S3 to it (SigV4, streaming payloads, presigned URLs: s3s); it seals each object
//! with a fresh key and stores it on a host through the data plane, and keeps the bucket
//! and key of every object, with the key that opens it, in its own index (redb). The keys
//! never leave this machine; the host sees sealed chunks.
//!
//! In front of s3s (which has no limits of its own for bodies): a cap on requests served
//! at once (503 SlowDown past it), on the size of a PUT and of a part, on the time to send
//! headers and on the time until an answer starts.

pub mod config;
pub mod index;
pub mod metrics;
pub mod record;
pub mod s3;
pub mod store;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use config::GatewayConfig;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] api::config::ConfigError),
    #[error(transparent)]
    Index(#[from] index::IndexError),
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A running gateway's parts, ready to serve.
pub struct Gateway {
    service: s3s::service::S3Service,
    listener: TcpListener,
    limits: Arc<Semaphore>,
    request_timeout: Duration,
    header_timeout: Duration,
    metrics: Arc<metrics::Metrics>,
    metrics_listener: Option<TcpListener>,
    /// The S3 side again, for the lifecycle sweeps.
    sweeper: s3::Gateway,
    lifecycle_every: Duration,
    orphan_grace: Duration,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// The gateway's one pair of S3 credentials. (s3s's `SimpleAuth` answers an unknown key
/// with NotSignedUp; S3 says InvalidAccessKeyId, and clients act on that.)
struct OneKey {
    access: String,
    secret: s3s::auth::SecretKey,
}

#[async_trait::async_trait]
impl s3s::auth::S3Auth for OneKey {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<s3s::auth::SecretKey> {
        if access_key == self.access {
            Ok(self.secret.clone())
        } else {
            Err(s3s::s3_error!(
                InvalidAccessKeyId,
                "the access key id is not this gateway's"
            ))
        }
    }
}

fn content_length(h: &hyper::HeaderMap) -> u64 {
    h.get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One request through the limits and s3s.
async fn answer(
    service: &s3s::service::S3Service,
    limits: &Arc<Semaphore>,
    timeout: Duration,
    m: &metrics::Metrics,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    let Ok(_permit) = Arc::clone(limits).try_acquire_owned() else {
        m.slowed_down.fetch_add(1, Relaxed);
        return Ok(refusal(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "the gateway serves as many requests as it is allowed to; retry",
        ));
    };
    m.received_bytes
        .fetch_add(content_length(req.headers()), Relaxed);
    m.in_flight.fetch_add(1, Relaxed);
    let started = std::time::Instant::now();
    let call = hyper::service::Service::call(service, req);
    let answer = match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer,
        Err(_) => {
            m.timed_out.fetch_add(1, Relaxed);
            Ok(refusal(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                "RequestTimeout",
                "the request took longer than request_timeout_secs",
            ))
        }
    };
    m.latency.observe(started.elapsed());
    m.in_flight.fetch_sub(1, Relaxed);
    answer
}

/// The body of an S3 error answered outside s3s (limits and timeouts).
fn refusal(status: hyper::StatusCode, code: &str, message: &str) -> s3s::HttpResponse {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let mut r = hyper::Response::new(s3s::Body::from(xml));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    r
}

impl Gateway {
    /// Opens the index, cleans the spool and binds the listener.
    pub async fn open(cfg: &GatewayConfig) -> Result<Gateway, GatewayError> {
        let secret = std::fs::read_to_string(&cfg.secret_key_file).map_err(|e| {
            GatewayError::Setup(format!("read {}: {e}", cfg.secret_key_file.display()))
        })?;
        let secret = secret.trim();
        if secret.len() < 16 {
            return Err(GatewayError::Setup(format!(
                "{}: the secret key must be at least 16 characters",
                cfg.secret_key_file.display()
            )));
        }
        let key =
            net::config::read_key(&cfg.key_file).map_err(|e| GatewayError::Setup(e.to_string()))?;
        std::fs::create_dir_all(&cfg.spool_dir)
            .map_err(|e| GatewayError::Setup(format!("create {}: {e}", cfg.spool_dir.display())))?;
        let index = Arc::new(index::Index::open(&cfg.index)?);
        let placement = match (&cfg.host, &cfg.deals) {
            (Some(h), _) => store::Placement::Links {
                control: h.control.clone(),
                token: h.token.clone(),
            },
            (None, Some(d)) => store::Placement::Deals(store::DealTerms {
                chain: d.chain.clone(),
                hosts: d.hosts.clone(),
                market: (d.hosts.is_empty()).then(|| store::MarketTerms {
                    index: d.index.clone(),
                    exchanges: d.exchanges.clone(),
                    copies: d.copies,
                    region: d.region.clone(),
                    min_rating: d.min_rating,
                }),
                days: d.days,
                period_blocks: d.period_blocks,
                max_price_per_gib_day: d.max_price_per_gib_day,
                erasure: d.scheme().map_err(GatewayError::Setup)?,
            }),
            (None, None) => {
                return Err(GatewayError::Setup(
                    "the configuration names neither [host] nor [deals]".into(),
                ))
            }
        };
        let store = Arc::new(store::HostStore {
            placement,
            key,
            chunk_bytes: cfg.chunk_bytes,
            workers: engine::seal::default_workers(),
            spool: cfg.spool_dir.clone(),
            stores: tokio::sync::Semaphore::new(store::STORES_AT_ONCE),
        });
        let metrics = Arc::new(metrics::Metrics::default());
        let s3 = s3::Gateway::new(
            index,
            store,
            cfg.spool_dir.clone(),
            s3::Limits {
                object_bytes_max: cfg.max_object_bytes,
                part_bytes_max: cfg.max_part_bytes,
                open_upload_secs: cfg.open_upload_secs,
                sweep_every_secs: cfg.lifecycle_every_secs,
                bodies_max: cfg.max_requests,
            },
            Arc::clone(&metrics),
        )?;
        let sweeper = s3.clone();
        let mut b = S3ServiceBuilder::new(s3);
        b.set_auth(OneKey {
            access: cfg.access_key.clone(),
            secret: s3s::auth::SecretKey::from(secret.to_owned()),
        });
        let listener =
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: cfg.listen.clone(),
                    source,
                })?;
        let metrics_listener = match &cfg.metrics_listen {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| GatewayError::Listen {
                            addr: addr.clone(),
                            source,
                        })?,
                )
            }
            None => None,
        };
        Ok(Gateway {
            service: b.build(),
            listener,
            limits: Arc::new(Semaphore::new(cfg.max_requests)),
            request_timeout: Duration::from_secs(cfg.request_timeout_secs),
            header_timeout: Duration::from_secs(cfg.header_timeout_secs),
            metrics,
            metrics_listener,
            sweeper,
            lifecycle_every: Duration::from_secs(cfg.lifecycle_every_secs),
            orphan_grace: Duration::from_secs(cfg.orphan_grace_secs),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until the task is dropped.
    pub async fn serve(mut self) -> std::io::Result<()> {
        let (collector, every, grace) = (
            self.sweeper.clone(),
            self.lifecycle_every,
            self.orphan_grace,
        );
        tokio::spawn(async move { collector.collect_orphans(every, grace).await });
        let (sweeper, every) = (self.sweeper.clone(), self.lifecycle_every);
        tokio::spawn(async move {
            loop {
                if let Err(e) = sweeper.sweep(net::now_secs()).await {
                    tracing::warn!("lifecycle sweep: {e:?}");
                }
                tokio::time::sleep(every).await;
            }
        });
        if let Some(l) = self.metrics_listener.take() {
            let m = Arc::clone(&self.metrics);
            let s3 = self.sweeper.clone();
            tokio::spawn(api::metrics::serve(
                l,
                Arc::new(move || {
                    let text = m.render(s3.orphan_count());
                    Box::pin(async move { text })
                }),
            ));
        }
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let service = self.service.clone();
            let limits = Arc::clone(&self.limits);
            let timeout = self.request_timeout;
            let header_timeout = self.header_timeout;
            let metrics = Arc::clone(&self.metrics);
            tokio::spawn(async move {
                let handle = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let service = service.clone();
                    let limits = Arc::clone(&limits);
                    let m = Arc::clone(&metrics);
                    async move {
                        let method = req.method().as_str().to_owned();
                        let path = req.uri().path().to_owned();
                        let answer = answer(&service, &limits, timeout, &m, req).await;
                        if let Ok(r) = &answer {
                            m.answered(&method, r.status().as_u16());
                            m.sent_bytes.fetch_add(content_length(r.headers()), Relaxed);
                            tracing::debug!(%peer, %method, path, status = r.status().as_u16(), "answered");
                        }
                        answer
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(TokioIo::new(stream), handle);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, "connection: {e}");
                }
            });
        }
    }
}
