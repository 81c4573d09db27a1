//! An ordered, bounded, parallel pipeline over a fixed pool of chunk buffers.
//!
//! One feeder thread produces items in index order into pooled buffers; `workers` threads
//! transform them; the consumer receives them back in index order. Memory is bounded by the
//! pool: the feeder blocks until a buffer comes home, which happens when the consumer drops
//! what it was given. Sealing and opening are both this pipeline with different closures.
//!
//! Invariant: the pool never grows, so peak memory is `buffers x buffer capacity` plus
//! what the closures allocate.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, select, Receiver, Sender};

/// A buffer on loan from a pipeline's pool; it goes home when dropped.
#[derive(Debug)]
pub struct PooledBuf {
    buf: Vec<u8>,
    home: Sender<Vec<u8>>,
}

impl PooledBuf {
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        // The pool is gone only when the whole pipeline is; then the buffer is simply freed.
        let _ = self.home.send(buf);
    }
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
    S: FnMut(u64, &mut Vec<u8>) -> Result<bool, E> + Send + 'static,
    W: Fn(u64, &mut Vec<u8>) -> Result<T, E> + Send + Sync + 'static,
{
    assert!(
        workers >= 1 && buffers >= 1,
        "a pipeline needs a worker and a buffer"
    );
    let (pool_tx, pool_rx) = bounded::<Vec<u8>>(buffers);
    for _ in 0..buffers {
        pool_tx
            .send(Vec::with_capacity(buf_capacity))
            .expect("the pool has room for every buffer");
    }
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
                    let raw = select! {
                        recv(pool_rx) -> raw => raw.ok(),
                        recv(stop_rx) -> _ => None,
                    };
                    let Some(raw) = raw else { break };
                    if feeder_cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut buf = PooledBuf {
                        buf: raw,
                        home: pool_tx.clone(),
                    };
                    match source(index, &mut buf.buf) {
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

    let work = Arc::new(work);
    for _ in 0..workers {
        let job_rx = job_rx.clone();
        let out_tx = out_tx.clone();
        let work = Arc::clone(&work);
        let cancel = Arc::clone(&cancel);
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
                        let result = work(index, &mut buf.buf).map(|meta| (meta, buf));
                        if out_tx.send(Msg::Item(index, result)).is_err() {
                            break;
                        }
                    }
                })
                .expect("spawning a pipeline worker"),
        );
    }
    Ordered {
        rx: out_rx,
        pending: BTreeMap::new(),
        next: 0,
        done: false,
        cancel,
        stop: Some(stop_tx),
        threads,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_in_order_with_bounded_buffers() {
        let produced = 1000u64;
        let out = run(
            4,
            8,
            3,
            move |i, buf: &mut Vec<u8>| {
                if i == produced {
                    return Ok::<_, String>(false);
                }
                buf.extend_from_slice(&i.to_le_bytes());
                Ok(true)
            },
            |i, buf| {
                // Uneven work so that results arrive out of order.
                if i % 7 == 0 {
                    std::thread::yield_now();
                }
                buf.reverse();
                Ok(i * 2)
            },
        );
        let mut seen = 0;
        for (i, r) in out {
            let (meta, buf) = r.unwrap();
            assert_eq!((i, meta), (seen, seen * 2));
            let mut bytes = seen.to_le_bytes();
            bytes.reverse();
            assert_eq!(buf.as_slice(), &bytes);
            seen += 1;
        }
        assert_eq!(seen, produced);
    }

    #[test]
    fn stops_at_the_first_error_in_order() {
        let out = run(
            3,
            8,
            2,
            |i, _buf: &mut Vec<u8>| {
                if i < 50 {
                    Ok(true)
                } else {
                    Err(format!("source {i}"))
                }
            },
            |i, _buf| {
                if i == 20 {
                    Err(format!("work {i}"))
                } else {
                    Ok(i)
                }
            },
        );
        // Drop each buffer as it comes: holding more than the pool blocks the feeder.
        let results: Vec<Result<u64, String>> =
            out.map(|(_, r)| r.map(|(meta, _buf)| meta)).collect();
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
            |i, _: &mut Vec<u8>| Ok::<_, ()>(i < 100),
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
            move |_, _: &mut Vec<u8>| Ok::<_, ()>(Arc::strong_count(&in_source) > 0),
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
}
