//! The transaction view: every write is one sled transaction over all the
//! trees (every space's too), through [`SledStore::write`]; [`Tx`] holds the
//! steps writes are made of, keeping the persisted counters exact.

use super::*;

impl SledStore {
    /// Runs `f` as one transaction over every tree (all spaces included), then
    /// flushes. `f` may run more than once (sled retries on conflict): it must
    /// only touch the transaction and its own locals.
    pub(super) fn write<A>(&self, f: impl Fn(&Tx<'_>) -> TxResult<A>) -> Result<A> {
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.write_locked(&writer, f)
    }

    /// [`SledStore::write`] for a caller that already holds the writer lock.
    pub(super) fn write_locked<A>(
        &self,
        _writer: &std::sync::MutexGuard<'_, ()>,
        f: impl Fn(&Tx<'_>) -> TxResult<A>,
    ) -> Result<A> {
        let inner = &self.inner;
        let guard = inner.read_spaces();
        let spaces: Vec<SledSpace> = guard.values().cloned().collect();
        let mut trees: Vec<&Tree> = vec![
            &inner.files,
            &inner.hash_paths,
            &inner.hash_refs,
            &inner.failures,
            &inner.meta,
        ];
        for s in &spaces {
            trees.extend([&s.hash_id, &s.vectors, &s.meta]);
        }
        let out = trees[..]
            .transaction(|t| f(&Tx { t, spaces: &spaces }))
            .map_err(tx_error)?;
        drop(guard);
        inner.db.flush()?;
        Ok(out)
    }
}

pub(super) type TxResult<T> = ConflictableTransactionResult<T, StoreError>;

/// Positions of the trees in the transaction (see [`SledStore::write`]).
pub(super) const T_FILES: usize = 0;

pub(super) const T_HASH_PATHS: usize = 1;

pub(super) const T_HASH_REFS: usize = 2;

pub(super) const T_FAILURES: usize = 3;

pub(super) const T_META: usize = 4;

pub(super) const T_SPACES: usize = 5;

pub(super) const S_HASH_ID: usize = 0;

pub(super) const S_VECTORS: usize = 1;

pub(super) const S_META: usize = 2;

/// The store's write primitives inside one transaction; each keeps links and
/// counters consistent.
pub(super) struct Tx<'a> {
    t: &'a [TransactionalTree],
    spaces: &'a [SledSpace],
}

pub(super) fn corrupt<T>(msg: String) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(StoreError::Corrupt(
        msg,
    )))
}

impl Tx<'_> {
    pub(super) fn sp(&self, i: usize, which: usize) -> &TransactionalTree {
        &self.t[T_SPACES + 3 * i + which]
    }

    pub(super) fn space_index(&self, space: &SledSpace) -> TxResult<usize> {
        match self.spaces.iter().position(|s| s.no == space.no) {
            Some(i) => Ok(i),
            None => Err(ConflictableTransactionError::Abort(StoreError::StaleSpace(
                space.fingerprint().into(),
            ))),
        }
    }

    pub(super) fn get_u64(tree: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
        match tree.get(key)? {
            None => Ok(0),
            Some(v) => match read_u64_be(&v) {
                Some(n) => Ok(n),
                None => corrupt(format!(
                    "counter {}: bad value",
                    String::from_utf8_lossy(key)
                )),
            },
        }
    }

    /// Adds `delta` to a u64 counter (absent = 0; removed at 0) and returns it.
    pub(super) fn add_u64(tree: &TransactionalTree, key: &[u8], delta: i64) -> TxResult<u64> {
        let cur = Self::get_u64(tree, key)?;
        let Some(new) = cur.checked_add_signed(delta) else {
            return corrupt(format!(
                "counter {} underflow",
                String::from_utf8_lossy(key)
            ));
        };
        if new == 0 {
            tree.remove(key)?;
        } else {
            tree.insert(key, &u64_be(new)[..])?;
        }
        Ok(new)
    }

    pub(super) fn file(&self, path: &str) -> TxResult<Option<FileRecord>> {
        match self.t[T_FILES].get(path)? {
            None => Ok(None),
            Some(b) => match decode_file(&b) {
                Some(r) => Ok(Some(r)),
                None => corrupt(format!("files {path}: bad record")),
            },
        }
    }

    pub(super) fn vector_id(&self, i: usize, hash: &ContentHash) -> TxResult<Option<u64>> {
        match self.sp(i, S_HASH_ID).get(hash.0)? {
            None => Ok(None),
            Some(v) => match read_u64_be(&v) {
                Some(id) => Ok(Some(id)),
                None => corrupt(format!("hash_id {hash}: bad id")),
            },
        }
    }

    /// Overwrites a record whose content (hash) is unchanged.
    pub(super) fn put_record(&self, path: &str, rec: &FileRecord) -> TxResult<()> {
        self.t[T_FILES].insert(path, &encode_file(rec)[..])?;
        Ok(())
    }

    /// Adds a record for a path that has none.
    pub(super) fn link(&self, path: &str, rec: &FileRecord) -> TxResult<()> {
        self.t[T_FILES].insert(path, &encode_file(rec)[..])?;
        self.t[T_HASH_PATHS].insert(hash_path_key(&rec.hash, path), &[][..])?;
        Self::add_u64(&self.t[T_HASH_REFS], &rec.hash.0, 1)?;
        for i in 0..self.spaces.len() {
            if self.vector_id(i, &rec.hash)?.is_some() {
                Self::add_u64(self.sp(i, S_META), SPACE_PATHS, 1)?;
            }
        }
        Self::add_u64(&self.t[T_META], META_FILE_COUNT, 1)?;
        Ok(())
    }

    /// Removes a path's record. A content left with no path goes into
    /// `pending`; [`Tx::finalize_orphans`] deletes its vectors at the end, so
    /// a content that another item of the same transaction links again (a
    /// rename, a swap) keeps its vector.
    pub(super) fn unlink(
        &self,
        path: &str,
        pending: &mut BTreeSet<ContentHash>,
    ) -> TxResult<Option<FileRecord>> {
        let Some(rec) = self.file(path)? else {
            return Ok(None);
        };
        self.t[T_FILES].remove(path)?;
        self.t[T_HASH_PATHS].remove(hash_path_key(&rec.hash, path))?;
        if Self::add_u64(&self.t[T_HASH_REFS], &rec.hash.0, -1)? == 0 {
            pending.insert(rec.hash);
        }
        for i in 0..self.spaces.len() {
            if self.vector_id(i, &rec.hash)?.is_some() {
                Self::add_u64(self.sp(i, S_META), SPACE_PATHS, -1)?;
            }
        }
        Self::add_u64(&self.t[T_META], META_FILE_COUNT, -1)?;
        Ok(Some(rec))
    }

    /// Records the highest id a batch wrote to space `i`'s segment.
    pub(super) fn set_last_id(&self, i: usize, last: u64) -> TxResult<()> {
        self.sp(i, S_META)
            .insert(SPACE_LAST_ID, &u64_be(last)[..])?;
        Ok(())
    }

    /// The vector for `hash` in space `i`: the existing one, or the one the
    /// batch wrote to the segment under `written`: (id, created).
    pub(super) fn add_vector(
        &self,
        i: usize,
        hash: &ContentHash,
        written: Option<&u64>,
    ) -> TxResult<(u64, bool)> {
        if let Some(id) = self.vector_id(i, hash)? {
            return Ok((id, false));
        }
        let Some(&id) = written else {
            return corrupt(format!(
                "content {hash}: no vector written for it (a write outside the writer lock?)"
            ));
        };
        self.sp(i, S_HASH_ID).insert(&hash.0[..], &u64_be(id)[..])?;
        self.sp(i, S_VECTORS).insert(&u64_be(id)[..], &hash.0[..])?;
        Self::add_u64(self.sp(i, S_META), SPACE_VECTORS, 1)?;
        // Every path already holding this content is now indexed in the space.
        let refs = Self::get_u64(&self.t[T_HASH_REFS], &hash.0)?;
        Self::add_u64(self.sp(i, S_META), SPACE_PATHS, refs as i64)?;
        Ok((id, true))
    }

    /// Deletes, in every space, the vectors of contents that ended the
    /// transaction with no path.
    pub(super) fn finalize_orphans(
        &self,
        pending: &BTreeSet<ContentHash>,
        out: &mut Vec<Orphan>,
    ) -> TxResult<()> {
        for hash in pending {
            if Self::get_u64(&self.t[T_HASH_REFS], &hash.0)? != 0 {
                continue;
            }
            for (i, s) in self.spaces.iter().enumerate() {
                if let Some(id) = self.vector_id(i, hash)? {
                    self.remove_vector(i, id, hash)?;
                    out.push(Orphan {
                        fingerprint: s.fingerprint().to_owned(),
                        id,
                    });
                }
            }
        }
        Ok(())
    }

    /// Deletes vector `id` (of content `hash`) from space `i`; the paths
    /// holding that content stop counting as indexed there.
    pub(super) fn remove_vector(&self, i: usize, id: u64, hash: &ContentHash) -> TxResult<()> {
        self.sp(i, S_HASH_ID).remove(&hash.0[..])?;
        self.sp(i, S_VECTORS).remove(&u64_be(id)[..])?;
        Self::add_u64(self.sp(i, S_META), SPACE_VECTORS, -1)?;
        let refs = Self::get_u64(&self.t[T_HASH_REFS], &hash.0)?;
        Self::add_u64(self.sp(i, S_META), SPACE_PATHS, -(refs as i64))?;
        Ok(())
    }

    /// The content hash of live vector `id` in space `i`.
    pub(super) fn vector_hash(&self, i: usize, id: u64) -> TxResult<Option<ContentHash>> {
        match self.sp(i, S_VECTORS).get(u64_be(id))? {
            None => Ok(None),
            Some(v) => match decode_hash(&v) {
                Some(h) => Ok(Some(h)),
                None => corrupt(format!("vectors {id}: bad value")),
            },
        }
    }

    pub(super) fn rename(
        &self,
        old: &str,
        new: &str,
        pending: &mut BTreeSet<ContentHash>,
    ) -> TxResult<bool> {
        if old == new {
            return Ok(self.file(old)?.is_some());
        }
        if let Some(f) = self.failure(old)? {
            self.clear_failure(old)?;
            self.put_failure(new, &f)?;
        }
        let Some(rec) = self.file(old)? else {
            return Ok(false);
        };
        self.unlink(new, pending)?;
        self.clear_failure(new)?;
        self.unlink(old, pending)?;
        self.link(new, &rec)?;
        Ok(true)
    }

    pub(super) fn failure(&self, path: &str) -> TxResult<Option<FailureRecord>> {
        match self.t[T_FAILURES].get(path)? {
            None => Ok(None),
            Some(v) => decode_failure(path, &v)
                .map(Some)
                .map_err(ConflictableTransactionError::Abort),
        }
    }

    pub(super) fn put_failure(&self, path: &str, rec: &FailureRecord) -> TxResult<()> {
        let json = serde_json::to_vec(rec).expect("failure record serialises");
        if self.t[T_FAILURES].insert(path, json)?.is_none() {
            Self::add_u64(&self.t[T_META], META_FAILURE_COUNT, 1)?;
        }
        Ok(())
    }

    pub(super) fn clear_failure(&self, path: &str) -> TxResult<bool> {
        if self.t[T_FAILURES].remove(path)?.is_some() {
            Self::add_u64(&self.t[T_META], META_FAILURE_COUNT, -1)?;
            return Ok(true);
        }
        Ok(false)
    }
}

pub(super) fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}
