//! Compaction: expired entries swept, sparse segments copied forward and removed.

use super::recover::Walk;
use super::*;

impl<D: Disk> Shard<D> {
    /// Sweeps expired chunks, then compacts, one at a time, every sealed segment whose live
    /// fraction is below the threshold. Returns how many segments were compacted.
    pub(super) async fn compact(&self) -> Result<u64, StoreError> {
        let _one = self
            .compacting
            .acquire_permit(1)
            .await
            .map_err(|e| StoreError::Io(format!("compaction: {e}")))?;
        let now = now_secs();
        let expired: Vec<ChunkId> = self
            .index
            .borrow()
            .iter()
            .filter(|(_, l)| l.expired(now))
            .map(|(id, _)| id)
            .collect();
        for id in expired {
            self.index_remove(&id);
        }
        let mut total = 0;
        for v in 0..self.vols.len() {
            let victims: Vec<u32> = {
                let st = self.vols[v].st.borrow();
                st.segs
                    .iter()
                    .filter(|(&seq, s)| {
                        seq != st.active
                            && s.sealed
                            && s.pending == 0
                            && !self.damaged.borrow().contains(&(v, seq))
                            && (s.live as f64) < self.cfg.compact_below * (s.reserved.max(1) as f64)
                    })
                    .map(|(&seq, _)| seq)
                    .collect()
            };
            for seq in victims {
                // Copy, make the copies the checkpoint's, and only then delete the file:
                // one segment at a time, so a full volume needs room for one segment's
                // live records, not all of them.
                if let Err(e) = self.copy_live(v, seq).await {
                    eprintln!("engine: segment {seq} not compacted: {e}");
                    self.damaged.borrow_mut().insert((v, seq));
                    continue;
                }
                self.checkpoint(v).await?;
                let seg = self.vols[v].st.borrow_mut().segs.remove(&seq);
                if let Some(seg) = seg {
                    {
                        let mut st = self.vols[v].st.borrow_mut();
                        st.used = st.used.saturating_sub(seg.reserved);
                    }
                    drop(seg);
                    self.vols[v]
                        .disk
                        .remove(&seg_name(seq))
                        .await
                        .map_err(io_error("removing a compacted segment"))?;
                    total += 1;
                }
            }
        }
        self.counters.borrow_mut().compacted_segments += total;
        Ok(total)
    }

    /// Copies segment `seq`'s live records (and the tombstones whose target still exists)
    /// into the active segment, through the normal write path.
    async fn copy_live(&self, v: usize, seq: u32) -> Result<(), StoreError> {
        let vno = Self::vol_no(v);
        let (file, size) = {
            let st = self.vols[v].st.borrow();
            let s = st
                .segs
                .get(&seq)
                .ok_or_else(|| StoreError::Io(format!("segment {seq} is gone")))?;
            (s.file.clone(), s.synced)
        };
        let mut walk = Walk::new(seq, 0, size);
        while let Some((base, bytes, found)) = walk
            .next(&*file)
            .await
            .map_err(io_error("reading a segment to compact"))?
        {
            for l in found {
                let h = l.header;
                let sector =
                    u32::try_from((base + l.offset) / u64::from(SECTOR_BYTES)).unwrap_or(u32::MAX);
                let span = usize::try_from(h.layout.span(h.payload_bytes)).expect("fits");
                let from_at = usize::try_from(l.offset).expect("window");
                let copy = |file: &D::File| {
                    let mut buf = file.alloc(span);
                    buf.bytes_mut()
                        .copy_from_slice(&bytes[from_at..from_at + span]);
                    buf
                };
                match h.kind {
                    RecordKind::Chunk => {
                        // Held against a delete of the same id until the copy is applied.
                        let _held = self.lock_id(h.id).await;
                        let current = self.index.borrow().get(&h.id);
                        match current {
                            Some(cur)
                                if cur.vol == vno && cur.seq == seq && cur.sector == sector =>
                            {
                                self.append(v, h, copy(&file), Then::Copy { from: cur })
                                    .await?;
                            }
                            _ => continue,
                        }
                    }
                    RecordKind::Tombstone => {
                        let (target, _) = split_target(h.expiry_unix_secs);
                        if target == seq || !self.vols[v].st.borrow().segs.contains_key(&target) {
                            continue;
                        }
                        self.append(v, h, copy(&file), Then::Keep).await?;
                    }
                }
            }
        }
        if let Some(ScanEnd::Torn { offset, error }) = walk.end {
            return Err(StoreError::Io(format!(
                "segment {seq} is damaged at byte {offset} ({error}); not compacted"
            )));
        }
        Ok(())
    }
}
