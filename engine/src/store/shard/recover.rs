//! Checkpoints of the index, and recovery at open: the checkpoint replayed, the tails
//! scanned, torn tails cut.

use super::*;

/// Reads a segment's records window by window from a record boundary.
pub(super) struct Walk {
    seq: u32,
    pos: u64,
    size: u64,
    window: usize,
    pub(super) end: Option<ScanEnd>,
}

impl Walk {
    pub(super) fn new(seq: u32, start: u64, size: u64) -> Walk {
        Walk {
            seq,
            pos: start,
            size,
            window: WINDOW_BYTES,
            end: None,
        }
    }

    /// The next window's bytes (starting at the returned offset) and the records in it.
    pub(super) async fn next<F: DiskFile>(
        &mut self,
        file: &F,
    ) -> io::Result<Option<(u64, F::Read, Vec<Located>)>> {
        if self.end.is_some() {
            return Ok(None);
        }
        if self.pos >= self.size {
            self.end = Some(ScanEnd::Clean { offset: self.pos });
            return Ok(None);
        }
        let len = (self.window as u64).min(align_up(self.size - self.pos));
        let bytes = file
            .read_at(self.pos, usize::try_from(len).expect("window"))
            .await?;
        let base = self.pos;
        if bytes.is_empty() {
            // Shorter than it was said to be: the end is here.
            self.end = Some(ScanEnd::Clean { offset: base });
            return Ok(None);
        }
        let (found, end) = scan(&bytes, self.seq, 0, true);
        let eof = base + bytes.len() as u64 >= self.size;
        match end {
            ScanEnd::Clean { offset } if offset >= bytes.len() as u64 && !eof => {
                self.pos = base + offset;
            }
            ScanEnd::Torn {
                offset,
                error: RecordError::Truncated { .. },
            } if !eof => {
                if found.is_empty() {
                    self.window = self.window.saturating_mul(2).min(256 << 20);
                }
                self.pos = base + offset;
            }
            ScanEnd::Clean { offset } => {
                self.end = Some(ScanEnd::Clean {
                    offset: base + offset,
                })
            }
            ScanEnd::Torn { offset, error } => {
                self.end = Some(ScanEnd::Torn {
                    offset: base + offset,
                    error,
                });
            }
        }
        Ok(Some((base, bytes, found)))
    }
}

impl<D: Disk> Shard<D> {
    pub(super) async fn checkpoint_all(&self) -> Result<(), StoreError> {
        for v in 0..self.vols.len() {
            self.checkpoint(v).await?;
        }
        Ok(())
    }

    pub(super) async fn checkpoint(&self, v: usize) -> Result<(), StoreError> {
        let vol = &self.vols[v];
        let _permit = vol
            .checkpointing
            .acquire_permit(1)
            .await
            .map_err(|e| StoreError::Io(format!("checkpoint: {e}")))?;
        let vno = Self::vol_no(v);
        let (segments, since) = {
            let st = vol.st.borrow();
            let covers = st
                .segs
                .iter()
                .map(|(&seq, s)| SegmentCover {
                    seq,
                    covered_end: s.synced,
                })
                .collect::<Vec<_>>();
            (covers, st.since_checkpoint)
        };
        let entries: Vec<Entry> = self
            .index
            .borrow()
            .iter()
            .filter(|(_, l)| l.vol == vno)
            .map(|(id, l)| Entry {
                id,
                seq: l.seq,
                payload_bytes: l.payload,
                offset: l.offset(),
                expiry_unix_secs: u64::from(l.expiry),
                layout: l.layout,
            })
            .collect();
        let bytes = glommio::executor()
            .spawn_blocking(move || {
                let mut entries = entries;
                entries.sort_unstable_by_key(|e| e.id.0);
                let cp = Checkpoint {
                    shard: 0,
                    segments,
                    entries,
                };
                // Checked here so that a bug is an error, not a panic on this thread.
                cp.validate().map(|()| cp.encode())
            })
            .await
            .map_err(|e| StoreError::Io(format!("index checkpoint not written: {e}")))?;
        vol.disk
            .write_atomic(CHECKPOINT_FILE, bytes)
            .await
            .map_err(io_error("writing the index checkpoint"))?;
        let mut st = vol.st.borrow_mut();
        st.since_checkpoint = st.since_checkpoint.saturating_sub(since);
        Ok(())
    }

    pub(super) async fn recover(&self) -> Result<(), StoreError> {
        for v in 0..self.vols.len() {
            self.recover_volume(v).await?;
        }
        // Live bytes per segment from the merged index.
        let locs: Vec<Loc> = self.index.borrow().iter().map(|(_, l)| l).collect();
        for loc in locs {
            self.add_live(&loc, true);
        }
        for v in 0..self.vols.len() {
            self.rotate(v).await?;
        }
        Ok(())
    }

    async fn recover_volume(&self, v: usize) -> Result<(), StoreError> {
        let vol = &self.vols[v];
        let vno = Self::vol_no(v);
        let names = vol.disk.list().map_err(io_error("listing the volume"))?;
        let mut seqs: Vec<u32> = names.iter().filter_map(|n| seg_seq(n)).collect();
        seqs.sort_unstable();
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            let _ = vol.disk.remove(n).await;
        }
        let checkpoint = match vol.disk.read(CHECKPOINT_FILE).await {
            Ok(Some(bytes)) => match Checkpoint::decode(&bytes) {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!(
                        "engine: ignoring the index checkpoint ({e}); scanning every segment"
                    );
                    None
                }
            },
            Ok(None) => None,
            Err(e) => return Err(io_error("reading the index checkpoint")(e)),
        };
        let now = now_secs();
        let mut covers: HashMap<u32, u64> = HashMap::new();
        if let Some(cp) = &checkpoint {
            covers = cp.segments.iter().map(|s| (s.seq, s.covered_end)).collect();
            let newest = cp.segments.last().map_or(0, |s| s.seq);
            // Segments older than the checkpoint's newest that it does not list were
            // compacted away before it was written: their file only lingered.
            for &seq in seqs
                .iter()
                .filter(|&&s| s <= newest && !covers.contains_key(&s))
            {
                vol.disk
                    .remove(&seg_name(seq))
                    .await
                    .map_err(io_error("removing a compacted segment"))?;
            }
            seqs.retain(|s| *s > newest || covers.contains_key(s));
            let present: HashSet<u32> = seqs.iter().copied().collect();
            let mut loaded = Vec::with_capacity(cp.entries.len());
            for e in &cp.entries {
                if !present.contains(&e.seq) {
                    return Err(StoreError::Io(format!(
                        "the index checkpoint places chunk {} in segment {}, which is missing",
                        e.id, e.seq
                    )));
                }
                let loc = Loc {
                    vol: vno,
                    layout: e.layout,
                    seq: e.seq,
                    sector: u32::try_from(e.offset / u64::from(SECTOR_BYTES)).unwrap_or(u32::MAX),
                    payload: e.payload_bytes,
                    expiry: expiry32(e.expiry_unix_secs),
                };
                if !loc.expired(now) {
                    loaded.push((e.id, loc));
                }
            }
            self.counters.borrow_mut().checkpoint_entries += cp.entries.len() as u64;
            // Sorted by id and unique: the checkpoint's own invariants, checked on decode.
            self.index.borrow_mut().load_sorted(loaded);
            // New segments must sort after every one the checkpoint knew, or the next
            // restart would take them for compacted leftovers.
            vol.st.borrow_mut().next_seq = newest.saturating_add(1);
        }
        let mut scanned = 0u64;
        let last = seqs.last().copied();
        for &seq in &seqs {
            let opened = vol
                .disk
                .open(&seg_name(seq))
                .await
                .map_err(io_error("opening a segment"))?;
            // In the volume's map from the start (sealed, empty until scanned), so an open
            // that fails below still closes this file with the others (`Shard::close`).
            let file = {
                let mut st = vol.st.borrow_mut();
                let seg = Seg::new(opened, 0, true);
                let file = Rc::clone(&seg.file);
                st.segs.insert(seq, seg);
                file
            };
            let mut size = file.size().await.map_err(io_error("sizing a segment"))?;
            if size % u64::from(SECTOR_BYTES) != 0 {
                // Only damage from outside makes a segment end inside a sector; a whole
                // record cut in its padding is still whole: pad the file back out.
                file.truncate(align_up(size))
                    .await
                    .map_err(io_error("padding a segment"))?;
                size = align_up(size);
            }
            let start = covers.get(&seq).copied().unwrap_or(0);
            let mut walk = Walk::new(seq, start, size);
            while let Some((base, _bytes, found)) = walk
                .next(&*file)
                .await
                .map_err(io_error("scanning a segment"))?
            {
                for l in found {
                    self.replay(vno, seq, base + l.offset, &l.header, now);
                }
            }
            let end = walk.end.take().unwrap_or(ScanEnd::Clean { offset: size });
            if let ScanEnd::Torn {
                offset,
                error: error @ (RecordError::Version(_) | RecordError::Reserved(_)),
            } = &end
            {
                // A whole header (its checksum passed) of another format: data this engine
                // cannot read, not a torn write. Cutting it would destroy it.
                return Err(StoreError::Io(format!(
                    "segment {seq} holds a record of another format at byte {offset} \
                     ({error}); this engine reads record versions {} and {}: refusing to \
                     open the store",
                    Layout::V1.version(),
                    Layout::V2.version()
                )));
            }
            scanned += end.offset().saturating_sub(start);
            let mut kept = size;
            // Without a checkpoint every segment is scanned from 0, and a bad record deep
            // in an old segment may be rot in acknowledged data: report it, cut nothing.
            let torn_tail = checkpoint.is_some() || Some(seq) == last;
            if let (false, ScanEnd::Torn { offset, error }) = (torn_tail, &end) {
                eprintln!(
                    "engine: segment {seq} is damaged at byte {offset} ({error}); records after it are unreachable"
                );
                self.counters.borrow_mut().corrupt_reads += 1;
            } else if end.offset() < size {
                // Past what the checkpoint covers, a tail that is not whole records is
                // writes that were never acknowledged (every acknowledged record has every
                // record before it in its segment durable): torn by the crash. Cut it. A
                // clean end (zeros: the segment's reserved blocks never written) is cut
                // too, giving the blocks back, since the segment is sealed now; it is not
                // counted as torn.
                file.truncate(end.offset())
                    .await
                    .map_err(io_error("truncating a torn tail"))?;
                file.sync()
                    .await
                    .map_err(io_error("syncing a truncated segment"))?;
                if matches!(end, ScanEnd::Torn { .. }) {
                    self.counters.borrow_mut().truncated_bytes += size - end.offset();
                }
                kept = end.offset();
            }
            let readable = kept.min(end.offset());
            if covers.get(&seq).is_some_and(|&c| c > readable) {
                // The checkpoint covers more than the segment holds: damage from outside
                // the store cut it. Chunks placed past the end cannot be served.
                let lost: Vec<ChunkId> = self
                    .index
                    .borrow()
                    .iter()
                    .filter(|(_, l)| {
                        l.vol == vno && l.seq == seq && l.offset() + l.span() > readable
                    })
                    .map(|(id, _)| id)
                    .collect();
                for id in lost {
                    eprintln!(
                        "engine: chunk {id} lies past the end of segment {seq}; dropped from the index"
                    );
                    self.index.borrow_mut().remove(&id);
                    self.counters.borrow_mut().corrupt_reads += 1;
                }
            }
            let mut st = vol.st.borrow_mut();
            let seg = st.segs.get_mut(&seq).expect("inserted when opened");
            (seg.reserved, seg.written, seg.synced) = (kept, kept, readable);
            st.used += kept;
            st.next_seq = st.next_seq.max(seq.saturating_add(1));
        }
        vol.st.borrow_mut().since_checkpoint = scanned;
        Ok(())
    }

    /// One record found by the recovery scan takes effect.
    fn replay(&self, vno: u8, seq: u32, at: u64, h: &RecordHeader, now: u64) {
        let sector = u32::try_from(at / u64::from(SECTOR_BYTES)).unwrap_or(u32::MAX);
        let mut index = self.index.borrow_mut();
        match h.kind {
            RecordKind::Chunk => {
                let loc = Loc {
                    vol: vno,
                    layout: h.layout,
                    seq,
                    sector,
                    payload: h.payload_bytes,
                    expiry: expiry32(h.expiry_unix_secs),
                };
                if !loc.expired(now) {
                    let keep = index.get(&h.id).map_or(loc, |old| Loc {
                        expiry: later_expiry(old.expiry, loc.expiry),
                        ..loc
                    });
                    index.insert(h.id, keep);
                }
            }
            RecordKind::Tombstone => {
                let (tseq, tsector) = split_target(h.expiry_unix_secs);
                let hit = index
                    .get(&h.id)
                    .is_some_and(|l| l.vol == vno && l.seq == tseq && l.sector == tsector);
                if hit {
                    index.remove(&h.id);
                }
            }
        }
    }
}
