//! The read path: records read whole or in part, verified, and storage proofs.

use super::*;

/// Bytes read from whole sectors: the buffer, and where the asked bytes lie in it.
struct Span<R> {
    buf: R,
    at: usize,
    len: usize,
}

impl<R: std::ops::Deref<Target = [u8]>> std::ops::Deref for Span<R> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.at..self.at + self.len]
    }
}

/// A record read from its header to its payload's end.
struct Whole<R> {
    bytes: Span<R>,
    /// Where the payload starts (the layout's payload offset).
    at: usize,
}

impl<R: std::ops::Deref<Target = [u8]>> Whole<R> {
    fn payload(&self) -> &[u8] {
        &self.bytes[self.at..]
    }
}

impl<D: Disk> Shard<D> {
    /// Bytes `at..at + len` of a segment, read as the whole sectors that hold them.
    async fn read(
        &self,
        id: &ChunkId,
        file: &D::File,
        at: u64,
        len: u64,
    ) -> Result<Span<<D::File as DiskFile>::Read>, StoreError> {
        let start = align_down(at);
        let n = usize::try_from(align_up(at + len) - start).expect("reads fit in memory");
        let buf = file
            .read_at(start, n)
            .await
            .map_err(io_error("reading a record"))?;
        if (buf.len() as u64) < at + len - start {
            return Err(self.corrupt(*id, "the segment ends inside the record"));
        }
        Ok(Span {
            buf,
            at: usize::try_from(at - start).expect("within a sector"),
            len: usize::try_from(len).expect("reads fit in memory"),
        })
    }

    /// Payload bytes `range` of the record at `loc`, and its outboard: one read when the
    /// shard keeps the outboard in memory (`outboards`), else two at once. The caller keeps
    /// the outboard ([`Shard::keep_outboard`]) once it has checked it against the id.
    async fn read_with_outboard(
        &self,
        id: &ChunkId,
        loc: &Loc,
        file: &D::File,
        range: Range<u64>,
    ) -> Result<(Span<<D::File as DiskFile>::Read>, Rc<[u8]>), StoreError> {
        let base = loc.payload_at();
        let data = self.read(id, file, base + range.start, range.end - range.start);
        let want = loc.layout.outboard_bytes(loc.payload);
        let kept = self.outboards.borrow_mut().get(&(*id, loc.layout));
        if let Some(outboard) = kept.filter(|o| o.len() == want as usize) {
            return Ok((data.await?, outboard));
        }
        let (data, outboard) = futures_lite::future::zip(
            data,
            self.read(id, file, base + u64::from(loc.payload), u64::from(want)),
        )
        .await;
        Ok((data?, Rc::from(&*outboard?)))
    }

    /// Keeps a chunk's outboard in memory after a read that checked it, if the whole of it
    /// (every parent against its children, the top against the id) holds: a proof checks
    /// only its own path, and a kept outboard serves every later one.
    fn keep_outboard(&self, id: ChunkId, loc: &Loc, outboard: Rc<[u8]>) {
        let key = (id, loc.layout);
        if !self.outboards.borrow().wants(&key, outboard.len()) {
            return;
        }
        let tree = Tree::new(
            loc.layout.group_bytes(),
            loc.payload.into(),
            &outboard,
            None,
        );
        if tree.root().as_bytes() == &id.0 {
            self.outboards.borrow_mut().insert(key, outboard);
        }
    }

    /// Reads and checks a whole record but its outboard: header, payload CRC. Returns the
    /// record's bytes from its header to its payload's end ([`Whole::payload`]).
    async fn read_whole(
        &self,
        id: &ChunkId,
        loc: &Loc,
        file: &D::File,
    ) -> Result<Whole<<D::File as DiskFile>::Read>, StoreError> {
        let at = usize::try_from(loc.layout.payload_offset()).expect("small");
        let len = at as u64 + u64::from(loc.payload);
        let bytes = self.read(id, file, loc.offset(), len).await?;
        let head: &[u8; HEADER_BYTES] = bytes[..HEADER_BYTES].try_into().expect("64 bytes");
        let header =
            RecordHeader::decode(head, loc.seq).map_err(|e| self.corrupt(*id, e.to_string()))?;
        if header.id != *id
            || header.kind != RecordKind::Chunk
            || header.payload_bytes != loc.payload
        {
            return Err(self.corrupt(*id, "the record at its place is another chunk's"));
        }
        if header.layout != loc.layout {
            return Err(self.corrupt(*id, "the record's layout is not the one indexed"));
        }
        let whole = Whole { bytes, at };
        verify_record(&header, whole.payload(), &[])
            .map_err(|e| self.corrupt(*id, e.to_string()))?;
        Ok(whole)
    }

    pub(super) async fn get(
        &self,
        id: ChunkId,
        range: Option<Range<u64>>,
    ) -> Result<Vec<u8>, StoreError> {
        let loc = self.lookup(&id)?;
        let file = self.file(&loc).ok_or(StoreError::NotFound(id))?;
        self.counters.borrow_mut().gets += 1;
        let len = u64::from(loc.payload);
        let Some(range) = range else {
            let whole = self.read_whole(&id, &loc, &file).await?;
            return Ok(whole.payload().to_vec());
        };
        if range.start > range.end || range.end > len {
            return Err(StoreError::Range {
                id,
                start: range.start,
                end: range.end,
                len,
            });
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let group_bytes = loc.layout.group_bytes();
        if loc.layout.outboard_bytes(loc.payload) == 0 {
            let whole = self.read_whole(&id, &loc, &file).await?;
            let payload = whole.payload();
            if blake3::hash(payload).as_bytes() != &id.0 {
                return Err(self.corrupt(id, "payload does not hash to the id"));
            }
            let (s, e) = (
                usize::try_from(range.start).expect("small"),
                usize::try_from(range.end).expect("small"),
            );
            return Ok(payload[s..e].to_vec());
        }
        // Read the groups the range covers and the outboard; check each group, with the
        // outboard's siblings on its path, against the id.
        let (g0, first) = group_of(group_bytes, range.start, len);
        let (_, last) = group_of(group_bytes, range.end - 1, len);
        let (data, outboard) = self
            .read_with_outboard(&id, &loc, &file, first.start..last.end)
            .await?;
        let tree = Tree::new(group_bytes, len, &outboard, None);
        let per_group = usize::try_from(group_bytes).expect("small");
        for (g, group) in (g0..).zip(data.chunks(per_group)) {
            if tree.group_root(g, group).as_bytes() != &id.0 {
                return Err(self.corrupt(
                    id,
                    format!("group {g} and the outboard do not hash to the id"),
                ));
            }
        }
        self.keep_outboard(id, &loc, outboard);
        let s = usize::try_from(range.start - first.start).expect("small");
        let e = usize::try_from(range.end - first.start).expect("small");
        Ok(data[s..e].to_vec())
    }

    pub(super) async fn prove(&self, id: ChunkId, leaf: u64) -> Result<Vec<u8>, StoreError> {
        let loc = self.lookup(&id)?;
        let file = self.file(&loc).ok_or(StoreError::NotFound(id))?;
        let len = u64::from(loc.payload);
        if leaf >= proto::proof::leaf_count(len) {
            return Err(StoreError::Leaf { id, leaf, len });
        }
        self.counters.borrow_mut().proofs += 1;
        let group_bytes = loc.layout.group_bytes();
        let (g, group) = group_of(group_bytes, leaf * proto::proof::LEAF_BYTES, len);
        let (proof, root) = if loc.layout.outboard_bytes(loc.payload) == 0 {
            let whole = self.read_whole(&id, &loc, &file).await?;
            Tree::new(group_bytes, len, &[], Some((0, whole.payload()))).prove(leaf)
        } else {
            let (bytes, outboard) = self.read_with_outboard(&id, &loc, &file, group).await?;
            let proved = Tree::new(group_bytes, len, &outboard, Some((g, &bytes))).prove(leaf);
            if proved.1.as_bytes() == &id.0 {
                self.keep_outboard(id, &loc, outboard);
            }
            proved
        };
        if root.as_bytes() != &id.0 {
            return Err(self.corrupt(id, "the proof does not hash to the id"));
        }
        Ok(proof)
    }
}
