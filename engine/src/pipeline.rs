//! An ordered, bounded, parallel pipeline over a fixed pool of chunk buffers.
//!
//! Items are numbered from 0; `workers` threads transform them; the consumer receives them
//! back in index order. Two ways to fill a buffer with item `index`:
//! - [`run`]: one feeder thread produces items in index order (a stream read once, in
//!   order: a pipe, or chunks that arrive in order);
//! - [`run_at`]: each worker fills its own buffer (a source read by position: a file or
//!   memory), so reading scales with the workers instead of one thread's copy.
//!
//! Memory is bounded by the pool: a thread takes a buffer before it takes an index, and a
//! buffer comes home when the consumer drops what it was given. Sealing and opening are
//! both this pipeline with different closures.
//!
//! Invariant: the pool never grows, so peak memory is `buffers x buffer capacity` plus
//! what the closures allocate. The pool's buffers are taken from and given back to the
//! process's spare ones (`ChunkBuf::take`, `ChunkBuf::recycle`), so one pipeline after
//! another reuses the same memory.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, select, Receiver, Sender};

use crate::buf::ChunkBuf;

/// A buffer on loan from a pipeline's pool; it goes home when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Option<ChunkBuf>,
    home: Sender<ChunkBuf>,
}

impl PooledBuf {
    pub fn as_slice(&self) -> &[u8] {
        self
    }

    fn get_mut(&mut self) -> &mut ChunkBuf {
        self.buf
            .as_mut()
            .expect("a pooled buffer is held until it is dropped")
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf
            .as_ref()
            .expect("a pooled buffer is held until it is dropped")
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(mut buf) = self.buf.take() {
            buf.clear();
            // The pool is gone only when the whole pipeline is; then the buffer is kept
            // for the next one.
            if let Err(e) = self.home.send(buf) {
                e.into_inner().recycle();
            }
        }
    }
}

/// The pool of a pipeline: `buffers` buffers of `capacity` bytes each.
fn pool(buffers: usize, capacity: usize) -> (Sender<ChunkBuf>, Receiver<ChunkBuf>) {
    let (pool_tx, pool_rx) = bounded::<ChunkBuf>(buffers);
    for _ in 0..buffers {
        pool_tx
            .send(ChunkBuf::take(capacity))
            .expect("the pool has room for every buffer");
    }
    (pool_tx, pool_rx)
}

/// Takes a buffer from the pool, or `None` once the consumer is gone.
fn take(
    pool_rx: &Receiver<ChunkBuf>,
    stop_rx: &Receiver<()>,
    home: &Sender<ChunkBuf>,
) -> Option<PooledBuf> {
    let raw = select! {
        recv(pool_rx) -> raw => raw.ok(),
        recv(stop_rx) -> _ => None,
    }?;
    Some(PooledBuf {
        buf: Some(raw),
        home: home.clone(),
    })
}

/// What the feeder and workers send the consumer.
#[derive(Debug)]
enum Msg<T, E> {
    Item(u64, Result<(T, PooledBuf), E>),
    /// A thread panicked: its item will never come, so the consumer must not wait for it.
    Panicked(&'static str),
}

/// Tells the consumer when the thread that owns it unwinds, so a bug in a closure surfaces
/// as a panic in the consumer instead of a stream that waits forever for the lost item.
struct PanicGuard<T, E> {
    tx: Sender<Msg<T, E>>,
    role: &'static str,
}

impl<T, E> Drop for PanicGuard<T, E> {
    fn drop(&mut self) {
        if thread::panicking() {
            let _ = self.tx.send(Msg::Panicked(self.role));
        }
    }
}

/// The consumer's end: yields results in index order; after the first error it yields
/// nothing more. Each result holds a pooled buffer: a consumer that keeps more than the
/// pool's buffers alive waits forever for the next result, so drop (or copy out of) each
/// one before asking for many more. Dropping it stops the feeder and the workers and waits for them, so no
/// thread (nor the reader or chunk source it owns) outlives the stream.
#[derive(Debug)]
pub struct Ordered<T, E> {
    rx: Receiver<Msg<T, E>>,
    pending: BTreeMap<u64, Result<(T, PooledBuf), E>>,
    next: u64,
    done: bool,
    cancel: Arc<AtomicBool>,
    /// Never sent on: dropping it wakes a feeder that waits for a buffer.
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    /// The pool's receiving end, so that the buffers in it are given back to the process's
    /// spare ones once the threads are done.
    pool: Receiver<ChunkBuf>,
}

/// Starts a pipeline. `source(index, buf)` fills an empty pooled buffer with item `index`
/// and returns `Ok(false)` at the end; `work(index, buf)` transforms it in place.
pub fn run<T, E, S, W>(
    buffers: usize,
    buf_capacity: usize,
    workers: usize,
    mut source: S,
    work: W,
) -> Ordered<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
    S: FnMut(u64, &mut ChunkBuf) -> Result<bool, E> + Send + 'static,
    W: Fn(u64, &mut ChunkBuf) -> Result<T, E> + Send + Sync + 'static,
{
    assert!(
        workers >= 1 && buffers >= 1,
        "a pipeline needs a worker and a buffer"
    );
    let (pool_tx, pool_rx) = pool(buffers, buf_capacity);
    let home = pool_rx.clone();
    let (job_tx, job_rx) = bounded::<(u64, PooledBuf)>(workers);
    let (out_tx, out_rx) = bounded::<Msg<T, E>>(buffers);
    let cancel = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let mut threads = Vec::with_capacity(workers + 1);

    let feeder_out = out_tx.clone();
    let feeder_cancel = Arc::clone(&cancel);
    threads.push(
        thread::Builder::new()
            .name("pipeline-feed".into())
            .spawn(move || {
                let _guard = PanicGuard {
                    tx: feeder_out.clone(),
                    role: "feeder",
                };
                for index in 0u64.. {
                    let Some(mut buf) = take(&pool_rx, &stop_rx, &pool_tx) else {
                        break;
                    };
                    if feeder_cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    match source(index, buf.get_mut()) {
                        Ok(true) => {
                            if job_tx.send((index, buf)).is_err() {
                                break;
                            }
                        }
                        Ok(false) => break,
                        Err(e) => {
                            let _ = feeder_out.send(Msg::Item(index, Err(e)));
                            break;
                        }
                    }
                }
            })
            .expect("spawning the pipeline feeder"),
    );

    spawn_workers(&mut threads, workers, &job_rx, &out_tx, &cancel, work);
    Ordered::new(out_rx, cancel, stop_tx, home, threads)
}

/// Starts `workers` threads that transform the jobs of `job_rx` with `work` and send the
/// results to the consumer.
fn spawn_workers<T, E, W>(
    threads: &mut Vec<JoinHandle<()>>,
    workers: usize,
    job_rx: &Receiver<(u64, PooledBuf)>,
    out_tx: &Sender<Msg<T, E>>,
    cancel: &Arc<AtomicBool>,
    work: W,
) where
    T: Send + 'static,
    E: Send + 'static,
    W: Fn(u64, &mut ChunkBuf) -> Result<T, E> + Send + Sync + 'static,
{
    let work = Arc::new(work);
    for _ in 0..workers {
        let job_rx = job_rx.clone();
        let out_tx = out_tx.clone();
        let work = Arc::clone(&work);
        let cancel = Arc::clone(cancel);
        threads.push(
            thread::Builder::new()
                .name("pipeline-work".into())
                .spawn(move || {
                    let _guard = PanicGuard {
                        tx: out_tx.clone(),
                        role: "worker",
                    };
                    while let Ok((index, mut buf)) = job_rx.recv() {
                        if cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        let result = work(index, buf.get_mut()).map(|meta| (meta, buf));
                        if out_tx.send(Msg::Item(index, result)).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawning a pipeline worker"),
        );
    }
}

/// Starts a pipeline of `count` items read by position: `readers` threads each take a
/// buffer from the pool, then the next index, and fill the buffer with `fill(index, buf)`
/// (an empty pooled buffer); `workers` threads transform them with `work(index, buf)`.
/// Reading runs on as many threads as asked instead of one feeder's, and a reader that
/// waits for the disk leaves its core to the workers. After the first error no further
/// index is taken.
pub fn run_at<T, E, F, W>(
    buffers: usize,
    buf_capacity: usize,
    (readers, workers): (usize, usize),
    count: u64,
    fill: F,
    work: W,
) -> Ordered<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(u64, &mut ChunkBuf) -> Result<(), E> + Send + Sync + 'static,
    W: Fn(u64, &mut ChunkBuf) -> Result<T, E> + Send + Sync + 'static,
{
    assert!(
        readers >= 1 && workers >= 1 && buffers >= 1,
        "a pipeline needs a reader, a worker and a buffer"
    );
    let (pool_tx, pool_rx) = pool(buffers, buf_capacity);
    let (job_tx, job_rx) = bounded::<(u64, PooledBuf)>(workers);
    let (out_tx, out_rx) = bounded::<Msg<T, E>>(buffers);
    let cancel = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let next = Arc::new(AtomicU64::new(0));
    let fill = Arc::new(fill);
    let mut threads = Vec::with_capacity(readers + workers);
    for _ in 0..readers {
        let (pool_tx, pool_rx, stop_rx) = (pool_tx.clone(), pool_rx.clone(), stop_rx.clone());
        let (job_tx, out_tx) = (job_tx.clone(), out_tx.clone());
        let (cancel, next, fill) = (Arc::clone(&cancel), Arc::clone(&next), Arc::clone(&fill));
        threads.push(
            thread::Builder::new()
                .name("pipeline-read".into())
                .spawn(move || {
                    let _guard = PanicGuard {
                        tx: out_tx.clone(),
                        role: "reader",
                    };
                    // The buffer first, then the index: every index taken has its buffer,
                    // so the consumer never waits for an item that waits for a buffer.
                    while let Some(mut buf) = take(&pool_rx, &stop_rx, &pool_tx) {
                        if cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break;
                        }
                        let sent = match fill(index, buf.get_mut()) {
                            Ok(()) => job_tx.send((index, buf)).is_ok(),
                            Err(e) => {
                                // Later indexes are not wanted: the consumer stops here.
                                next.store(count, Ordering::Relaxed);
                                out_tx.send(Msg::Item(index, Err(e))).is_ok()
                            }
                        };
                        if !sent {
                            break;
                        }
                    }
                })
                .expect("spawning a pipeline reader"),
        );
    }
    drop(job_tx);
    spawn_workers(&mut threads, workers, &job_rx, &out_tx, &cancel, work);
    Ordered::new(out_rx, cancel, stop_tx, pool_rx, threads)
}

impl<T, E> Ordered<T, E> {
    /// The consumer's end of a pipeline whose threads are started: results come on `rx`.
    fn new(
        rx: Receiver<Msg<T, E>>,
        cancel: Arc<AtomicBool>,
        stop: Sender<()>,
        pool: Receiver<ChunkBuf>,
        threads: Vec<JoinHandle<()>>,
    ) -> Ordered<T, E> {
        Ordered {
            rx,
            pending: BTreeMap::new(),
            next: 0,
            done: false,
            cancel,
            stop: Some(stop),
            threads,
            pool,
        }
    }
}

impl<T, E> Iterator for Ordered<T, E> {
    type Item = (u64, Result<(T, PooledBuf), E>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if let Some(result) = self.pending.remove(&self.next) {
                let index = self.next;
                self.next += 1;
                if result.is_err() {
                    self.done = true;
                    self.cancel.store(true, Ordering::Relaxed);
                }
                return Some((index, result));
            }
            match self.rx.recv() {
                Ok(Msg::Panicked(role)) => {
                    self.done = true;
                    panic!("a pipeline {role} thread panicked (its message is above)");
                }
                Ok(Msg::Item(index, result)) => {
                    debug_assert!(index >= self.next, "index {index} delivered twice");
                    self.pending.insert(index, result);
                }
                Err(_) => {
                    // Every producer is gone: the stream ended. Items are numbered without
                    // gaps and only the consumer cancels, so nothing can be left waiting.
                    assert!(
                        self.pending.is_empty(),
                        "pipeline ended with a gap before {:?}",
                        self.pending.keys().next()
                    );
                    self.done = true;
                    return None;
                }
            }
        }
    }
}

impl<T, E> Drop for Ordered<T, E> {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Wake the feeder if it waits for a buffer, unblock workers waiting to hand over a
        // result, and give every held buffer back; then every thread ends by itself.
        self.stop.take();
        self.rx = crossbeam_channel::never();
        self.pending.clear();
        for handle in self.threads.drain(..) {
            if let Err(panic) = handle.join() {
                if !thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        for buf in self.pool.try_iter() {
            buf.recycle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work of the ordering tests: reverses an item's bytes, unevenly slow so that
    /// results arrive out of order.
    fn reverse(i: u64, buf: &mut ChunkBuf) -> Result<u64, String> {
        if i.is_multiple_of(7) {
            std::thread::yield_now();
        }
        buf.reverse();
        Ok(i * 2)
    }

    /// Checks that `out` gave items 0.. in order, each the reversed bytes of its index, and
    /// returns how many.
    fn check_reversed(out: Ordered<u64, String>) -> u64 {
        let mut seen = 0;
        for (i, r) in out {
            let (meta, buf) = r.unwrap();
            assert_eq!((i, meta), (seen, seen * 2));
            let mut bytes = seen.to_le_bytes();
            bytes.reverse();
            assert_eq!(buf.as_slice(), &bytes);
            seen += 1;
        }
        seen
    }

    /// `Err("{what} {i}")` for item `at`, `Ok(ok)` for the others.
    fn fails_at<T>(what: &str, at: u64, i: u64, ok: T) -> Result<T, String> {
        if i == at {
            Err(format!("{what} {i}"))
        } else {
            Ok(ok)
        }
    }

    /// The results of `out` in order, each buffer dropped as it comes: holding more than
    /// the pool would block the pipeline.
    fn metas(out: Ordered<u64, String>) -> Vec<Result<u64, String>> {
        out.map(|(_, r)| r.map(|(meta, _buf)| meta)).collect()
    }

    #[test]
    fn yields_in_order_with_bounded_buffers() {
        let produced = 1000u64;
        let out = run(
            4,
            8,
            3,
            move |i, buf: &mut ChunkBuf| {
                if i == produced {
                    return Ok::<_, String>(false);
                }
                buf.extend_from_slice(&i.to_le_bytes());
                Ok(true)
            },
            reverse,
        );
        assert_eq!(check_reversed(out), produced);
    }

    /// A pipeline's buffers outlive it as spare ones, one kept by the consumer too, and the
    /// next pipeline of that capacity takes them instead of new ones.
    #[test]
    fn the_buffers_are_kept_for_the_next_pipeline() {
        // A capacity no other test uses (the spare buffers are the process's).
        let capacity = 43 * crate::buf::ALIGN;
        let count = crate::buf::spare_count;
        let make = || {
            run_at(
                3,
                capacity,
                (2, 2),
                20,
                |i, buf: &mut ChunkBuf| {
                    buf.extend_from_slice(&i.to_le_bytes());
                    Ok::<_, String>(())
                },
                reverse,
            )
        };
        let mut out = make();
        let kept = out.next().unwrap().1.unwrap().1;
        assert_eq!(out.by_ref().count(), 19);
        drop(out);
        assert_eq!(
            count(capacity),
            2,
            "the pool's buffers, but the one still held"
        );
        drop(kept);
        assert_eq!(count(capacity), 3);
        assert_eq!(check_reversed(make()), 20);
        assert_eq!(count(capacity), 3, "the second pipeline took no new buffer");
    }

    #[test]
    fn stops_at_the_first_error_in_order() {
        let out = run(
            3,
            8,
            2,
            |i, _buf: &mut ChunkBuf| {
                if i < 50 {
                    Ok(true)
                } else {
                    Err(format!("source {i}"))
                }
            },
            |i, _buf| fails_at("work", 20, i, i),
        );
        let results = metas(out);
        assert_eq!(results.len(), 21);
        assert_eq!(results[..20], (0..20).map(Ok).collect::<Vec<_>>());
        assert_eq!(results[20], Err("work 20".to_string()));
    }

    #[test]
    fn a_panicking_worker_panics_the_consumer_instead_of_hanging() {
        let out = run(
            2,
            8,
            2,
            |i, _: &mut ChunkBuf| Ok::<_, ()>(i < 100),
            |i, _| {
                assert!(i != 3, "injected bug at item 3");
                Ok(i)
            },
        );
        let consumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| out.count()));
        assert!(consumed.is_err());
    }

    #[test]
    fn dropping_the_consumer_early_ends_every_thread() {
        let token = Arc::new(());
        let (in_source, in_work) = (Arc::clone(&token), Arc::clone(&token));
        let mut out = run(
            2,
            8,
            2,
            move |_, _: &mut ChunkBuf| Ok::<_, ()>(Arc::strong_count(&in_source) > 0),
            move |i, _| Ok((i, Arc::strong_count(&in_work))),
        );
        let (first, held) = out.next().unwrap();
        assert_eq!(first, 0);
        // Drop the stream while this buffer is still held and the feeder is blocked.
        drop(out);
        drop(held);
        // Every thread has ended, so the closures holding the token are gone.
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn by_position_every_item_comes_once_in_order_and_the_first_error_ends_it() {
        let count = 1000u64;
        // The buffers filled, by address: the pool's four, never a new one.
        let seen_bufs = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let fill_bufs = Arc::clone(&seen_bufs);
        let out = run_at(
            4,
            8,
            (2, 3),
            count,
            move |i, buf: &mut ChunkBuf| {
                fill_bufs
                    .lock()
                    .unwrap()
                    .insert(buf.spare_mut().as_ptr() as usize);
                buf.extend_from_slice(&i.to_le_bytes());
                Ok::<_, String>(())
            },
            reverse,
        );
        assert_eq!(check_reversed(out), count);
        assert!(seen_bufs.lock().unwrap().len() <= 4);

        let out = run_at(
            3,
            8,
            (2, 2),
            100,
            |i, _: &mut ChunkBuf| fails_at("fill", 30, i, ()),
            |i, _| fails_at("work", 20, i, i),
        );
        let results = metas(out);
        assert_eq!(results.len(), 21);
        assert_eq!(results[20], Err("work 20".to_string()));
        // A fill error alone: everything before it, then it, then nothing.
        let out = run_at(
            3,
            8,
            (2, 2),
            100,
            |i, _: &mut ChunkBuf| fails_at("fill", 30, i, ()),
            |i, _| Ok(i),
        );
        let results = metas(out);
        assert_eq!(results.len(), 31);
        assert_eq!(results[..30], (0..30).map(Ok).collect::<Vec<_>>());
        assert_eq!(results[30], Err("fill 30".to_string()));
        // No items at all: the stream is empty.
        let mut none = run_at(
            2,
            8,
            (1, 2),
            0,
            |_, _: &mut ChunkBuf| Ok::<_, ()>(()),
            |i, _| Ok(i),
        );
        assert!(none.next().is_none());
    }

    #[test]
    fn by_position_a_panic_surfaces_and_an_early_drop_ends_every_thread() {
        let out = run_at(
            2,
            8,
            (2, 2),
            100,
            |i, _: &mut ChunkBuf| {
                assert!(i != 3, "injected bug at item 3");
                Ok::<_, ()>(())
            },
            |i, _| Ok(i),
        );
        let consumed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| out.count()));
        assert!(consumed.is_err());

        let token = Arc::new(());
        let in_fill = Arc::clone(&token);
        let mut out = run_at(
            2,
            8,
            (2, 2),
            u64::MAX,
            move |_, _: &mut ChunkBuf| {
                let _ = &in_fill;
                Ok::<_, ()>(())
            },
            |i, _| Ok(i),
        );
        let (first, held) = out.next().unwrap();
        assert_eq!(first, 0);
        drop(out);
        drop(held);
        assert_eq!(Arc::strong_count(&token), 1);
    }
}
