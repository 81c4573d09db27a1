//! A shard's thread: it opens its volumes, then takes requests from its queue as it has
//! room for them (back-pressure) and runs each as a task.

use super::*;

pub(super) async fn run_shard<D: Disk>(
    n: u32,
    cfg: EngineConfig,
    disks: Vec<D>,
    rx: flume::Receiver<Request>,
    ready: flume::Sender<Result<(), StoreError>>,
    load: Arc<ShardLoad>,
) {
    let capacity = cfg
        .capacity_bytes
        .map_or(u64::MAX, |c| c / cfg.shards as u64);
    let mut receivers = Vec::new();
    let vols = disks
        .into_iter()
        .map(|disk| {
            let (tx, rx) = flume::unbounded();
            receivers.push(rx);
            Volume {
                disk,
                st: RefCell::new(VolState {
                    segs: BTreeMap::new(),
                    active: 0,
                    next_seq: 1,
                    used: 0,
                    capacity,
                    since_checkpoint: 0,
                }),
                rotating: glommio::sync::Semaphore::new(1),
                checkpointing: glommio::sync::Semaphore::new(1),
                commits: tx,
            }
        })
        .collect();
    let outboards = RefCell::new(super::outboards::Outboards::new(cfg.outboard_cache_bytes));
    let shard = Rc::new(Shard {
        cfg,
        outboards,
        vols,
        index: RefCell::new(Index::new()),
        counters: RefCell::new(Counters::default()),
        busy: RefCell::new(HashMap::new()),
        compacting: glommio::sync::Semaphore::new(1),
        damaged: RefCell::new(HashSet::new()),
    });
    for (v, rx) in receivers.into_iter().enumerate() {
        glommio::spawn_local(shard.clone().commit_loop(v, rx)).detach();
    }
    for vol in &shard.vols {
        if let Err(e) = vol.disk.prepare().await {
            shard.close().await;
            let _ = ready.send(Err(StoreError::Io(format!(
                "shard {n}: preparing the disk: {e}"
            ))));
            return;
        }
    }
    if let Err(e) = shard.recover().await {
        shard.close().await;
        let _ = ready.send(Err(StoreError::Io(format!("shard {n}: {e}"))));
        return;
    }
    let _ = ready.send(Ok(()));
    // Compaction, asked for or periodic, runs in a queue with a tenth of the foreground's
    // share of the core, so puts and gets go first.
    let tq = glommio::executor().create_task_queue(
        glommio::Shares::Static(100),
        glommio::Latency::NotImportant,
        "maintenance",
    );
    if let Some(every) = shard.cfg.maintenance_every {
        let s = shard.clone();
        let task = glommio::spawn_local_into(
            async move {
                loop {
                    glommio::timer::sleep(every).await;
                    if let Err(e) = s.compact().await {
                        eprintln!("engine: background compaction: {e}");
                    }
                }
            },
            tq,
        );
        if let Ok(t) = task {
            t.detach();
        }
    }
    // Back-pressure: a request that works on the disk takes a place in flight (and a put
    // its payload's bytes) before it starts, and the loop takes nothing more from the
    // queue until it has them; the queue fills and callers wait in their `Pending`s.
    let room = Room {
        requests: Rc::new(glommio::sync::Semaphore::new(
            shard.cfg.in_flight_max as u64,
        )),
        put_bytes: Rc::new(glommio::sync::Semaphore::new(shard.cfg.put_bytes_in_flight)),
        load,
    };
    while let Ok(req) = rx.recv_async().await {
        let s = shard.clone();
        let in_flight = match &req {
            Request::Stat { .. }
            | Request::Stats(_)
            | Request::Compact(_)
            | Request::Shutdown(_) => None,
            Request::Put { data, .. } => Some(shard.admit(&room, data.len() as u64).await),
            _ => Some(shard.admit(&room, 0).await),
        };
        match req {
            Request::Put {
                id,
                crc,
                data,
                expiry,
                reply,
            } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.put(id, crc, data, expiry).await);
            }),
            Request::Stat { id, reply } => {
                let _ = reply.send(Ok(s.lookup(&id).ok().map(|loc| loc.payload)));
            }
            Request::Get { id, range, reply } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.get(id, range).await);
            }),
            Request::Prove { id, leaf, reply } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.prove(id, leaf).await);
            }),
            Request::ProveMany { challenges, reply } => spawn(async move {
                let _in_flight = in_flight;
                let tasks: Vec<_> = challenges
                    .into_iter()
                    .map(|(k, id, leaf)| {
                        let s = s.clone();
                        glommio::spawn_local(async move {
                            let t = std::time::Instant::now();
                            let proof = s.prove(id, leaf).await;
                            (
                                k,
                                Answer {
                                    proof,
                                    micros: t.elapsed().as_micros(),
                                },
                            )
                        })
                    })
                    .collect();
                let mut out = Vec::with_capacity(tasks.len());
                for t in tasks {
                    out.push(t.await);
                }
                let _ = reply.send(Ok(out));
            }),
            Request::Delete { id, reply } => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.delete(id).await);
            }),
            Request::Compact(reply) => {
                let task = glommio::spawn_local_into(
                    async move {
                        let _ = reply.send(s.compact().await);
                    },
                    tq,
                );
                if let Ok(t) = task {
                    t.detach();
                }
            }
            Request::Checkpoint(reply) => spawn(async move {
                let _in_flight = in_flight;
                let _ = reply.send(s.checkpoint_all().await);
            }),
            Request::Stats(reply) => {
                let _ = reply.send(Ok(s.stats()));
            }
            Request::Shutdown(reply) => {
                // A compaction under way finishes first (it holds segment files open), and
                // none starts before the files are closed.
                let _no_compaction = s.compacting.acquire_permit(1).await;
                let result = s.checkpoint_all().await;
                s.close().await;
                let _ = reply.send(result);
                return;
            }
        }
    }
    // The queue closed without a shutdown (an open that failed on another shard): the
    // files and the volume locks are let go all the same.
    let _compaction_done = shard.compacting.acquire_permit(1).await;
    shard.close().await;
}

/// What a shard lets run at once: requests, and bytes of put payloads
/// ([`EngineConfig::in_flight_max`], [`EngineConfig::put_bytes_in_flight`]), and what it
/// runs now.
struct Room {
    requests: Rc<glommio::sync::Semaphore>,
    put_bytes: Rc<glommio::sync::Semaphore>,
    load: Arc<ShardLoad>,
}

/// A request's place in flight, given back when it is done.
struct InFlight {
    _request: Option<glommio::sync::StaticPermit>,
    _bytes: Option<glommio::sync::StaticPermit>,
    load: Arc<ShardLoad>,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.load.put_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl<D: Disk> Shard<D> {
    /// Takes a place in flight for a request with `bytes` of put payload (a put larger
    /// than the whole allowance takes all of it), waiting while there is none.
    async fn admit(&self, room: &Room, bytes: u64) -> InFlight {
        let bytes = bytes.min(self.cfg.put_bytes_in_flight);
        let mut request = room.requests.try_acquire_static_permit(1).ok();
        let mut bytes_permit = (bytes > 0)
            .then(|| room.put_bytes.try_acquire_static_permit(bytes).ok())
            .flatten();
        let wait = request.is_none() || (bytes > 0 && bytes_permit.is_none());
        if wait {
            room.load.full.store(true, Ordering::Relaxed);
            if request.is_none() {
                request = room.requests.acquire_static_permit(1).await.ok();
            }
            if bytes > 0 && bytes_permit.is_none() {
                bytes_permit = room.put_bytes.acquire_static_permit(bytes).await.ok();
            }
            room.load.full.store(false, Ordering::Relaxed);
        }
        let in_flight = room.load.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let put_bytes = room.load.put_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let mut c = self.counters.borrow_mut();
        c.held_back += u64::from(wait);
        c.in_flight_peak = c.in_flight_peak.max(in_flight);
        c.put_bytes_peak = c.put_bytes_peak.max(put_bytes);
        InFlight {
            _request: request,
            _bytes: bytes_permit,
            load: Arc::clone(&room.load),
            bytes,
        }
    }
}
