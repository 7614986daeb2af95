//! Writes: commits, removals, renames. Each is one transaction (per chunk
//! for folder-wide ones), retried when PostgreSQL picks it as a deadlock
//! victim or a serialization failure.
//!
//! Nodes share only contents: a vector per (space, content hash), deleted
//! when no file of any node holds its hash. A writer takes a transaction
//! advisory lock per hash it may create or orphan, all at once and in key
//! order, before touching vectors: a commit that links a hash and a removal
//! that orphans it elsewhere run one after the other (the later one sees the
//! other's files), and no two writers wait on each other in a cycle.

use std::collections::{BTreeMap, BTreeSet};

use pgvector::Vector;
use postgres::error::SqlState;
use postgres::{GenericClient, Transaction};

use super::super::paths::{check_path, folder_moves};
use super::super::{
    CHUNK, Commit, CommitOutcome, ContentHash, Embedding, FileRecord, Orphan, Removal, Result,
    StoreError,
};
use super::{PathRange, PgError, PgSpace, PgStore, q};

/// Attempts of a transaction PostgreSQL aborted to break a deadlock.
const ATTEMPTS: u32 = 8;

impl PgStore {
    /// Records files as indexed in `space`: [`SledStore::commit`]'s contract
    /// (a later item for the same path wins; a `New` vector for content the
    /// space has is ignored; `Existing` fails without one).
    ///
    /// [`SledStore::commit`]: super::super::SledStore::commit
    pub fn commit(&self, space: &PgSpace, items: &[Commit]) -> Result<CommitOutcome> {
        for it in items {
            check_path(&it.path)?;
            if let Embedding::New(v) = &it.embedding {
                super::super::check_vector(space.fingerprint(), space.dim(), v)?;
            }
        }
        if items.is_empty() {
            return Ok(CommitOutcome::default());
        }
        let spaces = self.all_spaces()?;
        let out = {
            let _writer = self.lock_writer();
            self.transact("committing files", |tx| {
                commit_tx(tx, &self.inner.node, space, &spaces, items)
            })?
        };
        self.counts_changed();
        // The commit stands whatever happens to the index's upkeep.
        if let Err(e) = self.tend_index(space) {
            tracing::warn!(
                space = space.fingerprint(),
                "checking a space's vector index: {e}"
            );
        }
        Ok(out)
    }

    /// Forgets these files of this node and their failures.
    pub fn remove_paths(&self, paths: &[String]) -> Result<Removal> {
        for p in paths {
            check_path(p)?;
        }
        let spaces = self.all_spaces()?;
        let _writer = self.lock_writer();
        let mut total = Removal::default();
        for chunk in paths.chunks(CHUNK) {
            total.absorb(self.transact("removing files", |tx| {
                let node = &self.inner.node;
                let rows = tx
                    .query(
                        "SELECT hash FROM files WHERE node = $1 AND path = ANY($2) FOR UPDATE",
                        &[node, &chunk],
                    )
                    .map_err(q("reading files to remove"))?;
                let hashes: BTreeSet<ContentHash> =
                    rows.iter().map(|r| hash(r.get(0))).collect::<Result<_>>()?;
                lock_hashes(tx, &hashes)?;
                let n = tx
                    .execute(
                        "DELETE FROM files WHERE node = $1 AND path = ANY($2)",
                        &[node, &chunk],
                    )
                    .map_err(q("removing files"))?;
                tx.execute(
                    "DELETE FROM failures WHERE node = $1 AND path = ANY($2)",
                    &[node, &chunk],
                )
                .map_err(q("removing failures"))?;
                Ok(Removal {
                    paths: n,
                    orphaned: delete_orphans(tx, &spaces, &hashes)?,
                })
            })?);
        }
        self.counts_changed();
        Ok(total)
    }

    /// [`PgStore::remove_paths`] of the files and failures under a folder
    /// that `forget` agrees to.
    pub fn remove_prefix_if(&self, dir: &str, forget: impl Fn(&str) -> bool) -> Result<Removal> {
        let mut paths = self.paths_under(dir)?;
        paths.retain(|p| forget(p));
        self.remove_paths(&paths)
    }

    /// Moves a file's record and failure to a new path (same content).
    pub fn rename(&self, old: &str, new: &str) -> Result<Removal> {
        check_path(old)?;
        check_path(new)?;
        self.rename_all(&[(old.to_owned(), new.to_owned())])
    }

    /// [`PgStore::rename`] for every path under a folder that moved.
    pub fn rename_prefix(&self, old_dir: &str, new_dir: &str) -> Result<Removal> {
        let moves = folder_moves(old_dir, new_dir, |d| self.paths_under(d))?;
        self.rename_all(&moves)
    }

    fn rename_all(&self, moves: &[(String, String)]) -> Result<Removal> {
        let spaces = self.all_spaces()?;
        let _writer = self.lock_writer();
        let mut total = Removal::default();
        for chunk in moves.chunks(CHUNK) {
            total.absorb(self.transact("renaming files", |tx| {
                let node = &self.inner.node;
                let mut r = Removal::default();
                let mut replaced = BTreeSet::new();
                for (old, new) in chunk {
                    if old == new {
                        continue;
                    }
                    // A failure moves with its file, replacing the one there.
                    let failed = tx
                        .query_opt(
                            "SELECT 1 FROM failures WHERE node = $1 AND path = $2",
                            &[node, old],
                        )
                        .map_err(q("reading a failure to move"))?
                        .is_some();
                    if failed {
                        tx.execute(
                            "DELETE FROM failures WHERE node = $1 AND path = $2",
                            &[node, new],
                        )
                        .map_err(q("moving a failure"))?;
                        tx.execute(
                            "UPDATE failures SET path = $3 WHERE node = $1 AND path = $2",
                            &[node, old, new],
                        )
                        .map_err(q("moving a failure"))?;
                    }
                    let exists = tx
                        .query_opt(
                            "SELECT 1 FROM files WHERE node = $1 AND path = $2 FOR UPDATE",
                            &[node, old],
                        )
                        .map_err(q("reading a file to move"))?
                        .is_some();
                    if !exists {
                        continue;
                    }
                    tx.execute(
                        "DELETE FROM failures WHERE node = $1 AND path = $2",
                        &[node, new],
                    )
                    .map_err(q("moving a failure"))?;
                    if let Some(row) = tx
                        .query_opt(
                            "DELETE FROM files WHERE node = $1 AND path = $2 RETURNING hash",
                            &[node, new],
                        )
                        .map_err(q("replacing a file"))?
                    {
                        replaced.insert(hash(row.get(0))?);
                    }
                    tx.execute(
                        "UPDATE files SET path = $3 WHERE node = $1 AND path = $2",
                        &[node, old, new],
                    )
                    .map_err(q("moving a file"))?;
                    r.paths += 1;
                }
                lock_hashes(tx, &replaced)?;
                r.orphaned = delete_orphans(tx, &spaces, &replaced)?;
                Ok(r)
            })?);
        }
        self.counts_changed();
        Ok(total)
    }

    /// Forgets vectors by id (damaged, or a repair): their files keep their
    /// records and are embedded again by the next scan.
    pub fn forget_vectors(&self, space: &PgSpace, ids: &[u64]) -> Result<u64> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let mut c = self.inner.primary.get()?;
        let n = c
            .execute(
                &format!("DELETE FROM {} WHERE id = ANY($1)", space.table()),
                &[&ids],
            )
            .map_err(q("forgetting vectors"))?;
        self.counts_changed();
        Ok(n)
    }

    /// This node's paths with a file or failure record under `dir`, in
    /// byte order.
    fn paths_under(&self, dir: &str) -> Result<Vec<String>> {
        check_path(dir)?;
        let range = PathRange::under(dir);
        let mut c = self.inner.primary.get()?;
        let rows = c
            .query(
                "SELECT path FROM files WHERE node = $1 AND (path = $2 OR (path >= $3 AND path < $4))
                 UNION SELECT path FROM failures WHERE node = $1 AND (path = $2 OR (path >= $3 AND path < $4))
                 ORDER BY 1",
                &[&self.inner.node, &range.exact, &range.from, &range.to],
            )
            .map_err(q("listing a folder's files"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Runs `f` in a transaction on the primary and commits, again when
    /// PostgreSQL aborted it to break a deadlock or a serialization conflict.
    fn transact<T>(
        &self,
        what: &'static str,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut c = self.inner.primary.get()?;
            let mut tx = c.transaction().map_err(q(what))?;
            let result = f(&mut tx).and_then(|v| tx.commit().map_err(q(what)).map(|()| v));
            match result {
                Err(StoreError::Postgres(PgError::Query { source, .. }))
                    if attempt < ATTEMPTS && retryable(&source) =>
                {
                    tracing::debug!(what, attempt, error = %source, "retrying a transaction");
                    std::thread::sleep(std::time::Duration::from_millis(5 << attempt.min(6)));
                }
                other => return other,
            }
        }
    }
}

fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

fn commit_tx(
    tx: &mut Transaction<'_>,
    node: &str,
    space: &PgSpace,
    spaces: &[PgSpace],
    items: &[Commit],
) -> Result<CommitOutcome> {
    // The last item of a path wins, as if the batch were applied in order.
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        last.insert(&it.path, i);
    }
    let finals: Vec<&Commit> = last.values().map(|&i| &items[i]).collect();
    let paths: Vec<&str> = finals.iter().map(|c| c.path.as_str()).collect();
    let rows = tx
        .query(
            "SELECT path, hash FROM files WHERE node = $1 AND path = ANY($2) FOR UPDATE",
            &[&node, &paths],
        )
        .map_err(q("reading committed files"))?;
    let mut old: BTreeMap<String, ContentHash> = BTreeMap::new();
    for r in &rows {
        old.insert(r.get(0), hash(r.get(1))?);
    }
    let linked: BTreeSet<ContentHash> = finals.iter().map(|c| c.record.hash).collect();
    let unlinked: BTreeSet<ContentHash> = finals
        .iter()
        .filter_map(|c| old.get(&c.path).filter(|h| **h != c.record.hash).copied())
        .filter(|h| !linked.contains(h))
        .collect();
    lock_hashes(tx, &linked.union(&unlinked).copied().collect())?;

    // New contents: one vector per hash, unless the space has it already.
    let mut fresh: BTreeMap<ContentHash, &[f32]> = BTreeMap::new();
    for c in &finals {
        if let Embedding::New(v) = &c.embedding {
            fresh.entry(c.record.hash).or_insert(v);
        }
    }
    let mut inserted = Vec::new();
    if !fresh.is_empty() {
        let hashes: Vec<&[u8]> = fresh.keys().map(|h| &h.0[..]).collect();
        let vectors: Vec<Vector> = fresh.values().map(|v| Vector::from(v.to_vec())).collect();
        let rows = tx
            .query(
                &format!(
                    "INSERT INTO {} (hash, embedding) SELECT * FROM unnest($1::bytea[], $2::vector[])
                     ON CONFLICT (hash) DO NOTHING RETURNING id, hash",
                    space.table()
                ),
                &[&hashes, &vectors],
            )
            .map_err(q("storing vectors"))?;
        for r in &rows {
            let h = hash(r.get(1))?;
            inserted.push((r.get::<_, i64>(0) as u64, fresh[&h].to_vec()));
        }
    }
    let all: Vec<&[u8]> = linked.iter().map(|h| &h.0[..]).collect();
    let rows = tx
        .query(
            &format!(
                "SELECT hash, id FROM {} WHERE hash = ANY($1)",
                space.table()
            ),
            &[&all],
        )
        .map_err(q("reading vector ids"))?;
    let mut ids: BTreeMap<ContentHash, u64> = BTreeMap::new();
    for r in &rows {
        ids.insert(hash(r.get(0))?, r.get::<_, i64>(1) as u64);
    }
    if let Some(c) = finals.iter().find(|c| !ids.contains_key(&c.record.hash)) {
        return Err(StoreError::MissingVector {
            path: c.path.clone(),
            fingerprint: space.fingerprint().to_owned(),
            hash: c.record.hash,
        });
    }

    let rows: Vec<(&str, &FileRecord)> = finals
        .iter()
        .map(|c| (c.path.as_str(), &c.record))
        .collect();
    upsert_files(tx, node, &rows)?;
    tx.execute(
        "DELETE FROM failures WHERE node = $1 AND path = ANY($2)",
        &[&node, &paths],
    )
    .map_err(q("clearing failures"))?;
    let orphaned = delete_orphans(tx, spaces, &unlinked)?;
    Ok(CommitOutcome {
        vector_ids: items
            .iter()
            .map(|c| ids.get(&c.record.hash).copied().unwrap_or(0))
            .collect(),
        inserted,
        orphaned,
    })
}

/// Writes file records of `node`, replacing any at the same paths: one
/// statement for the batch.
pub(super) fn upsert_files(
    c: &mut impl GenericClient,
    node: &str,
    files: &[(&str, &FileRecord)],
) -> Result<()> {
    let col =
        |f: &dyn Fn(&FileRecord) -> i64| -> Vec<i64> { files.iter().map(|(_, r)| f(r)).collect() };
    let paths: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    let hashes: Vec<&[u8]> = files.iter().map(|(_, r)| &r.hash.0[..]).collect();
    let taken_from: Vec<i16> = files
        .iter()
        .map(|(_, r)| r.meta.taken_from as i16)
        .collect();
    let width: Vec<i32> = files.iter().map(|(_, r)| r.meta.width as i32).collect();
    let height: Vec<i32> = files.iter().map(|(_, r)| r.meta.height as i32).collect();
    c.execute(
        "INSERT INTO files (node, path, hash, size, mtime_ns, indexed_at_ms, taken_at, taken_from, width, height)
         SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                                  $8::int2[], $9::int4[], $10::int4[])
         ON CONFLICT (node, path) DO UPDATE SET hash = EXCLUDED.hash, size = EXCLUDED.size,
             mtime_ns = EXCLUDED.mtime_ns, indexed_at_ms = EXCLUDED.indexed_at_ms,
             taken_at = EXCLUDED.taken_at, taken_from = EXCLUDED.taken_from,
             width = EXCLUDED.width, height = EXCLUDED.height",
        &[
            &node,
            &paths,
            &hashes,
            &col(&|r| r.size as i64),
            &col(&|r| r.mtime_ns),
            &col(&|r| r.indexed_at_ms as i64),
            &col(&|r| r.meta.taken_at),
            &taken_from,
            &width,
            &height,
        ],
    )
    .map_err(q("storing file records"))?;
    Ok(())
}

/// Takes the transaction lock of each hash, in key order.
fn lock_hashes(tx: &mut Transaction<'_>, hashes: &BTreeSet<ContentHash>) -> Result<()> {
    let keys: BTreeSet<i64> = hashes.iter().map(lock_key).collect();
    if keys.is_empty() {
        return Ok(());
    }
    let keys: Vec<i64> = keys.into_iter().collect();
    // One statement; WITH ORDINALITY + ORDER BY fixes the order the locks
    // are taken in.
    tx.execute(
        "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) WITH ORDINALITY AS t(k, i) ORDER BY i",
        &[&keys],
    )
    .map_err(q("locking contents"))?;
    Ok(())
}

fn lock_key(h: &ContentHash) -> i64 {
    i64::from_be_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// Deletes, in every space, the vectors of `candidates` that no file of any
/// node holds any more (their locks are held).
fn delete_orphans(
    tx: &mut Transaction<'_>,
    spaces: &[PgSpace],
    candidates: &BTreeSet<ContentHash>,
) -> Result<Vec<Orphan>> {
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<&[u8]> = candidates.iter().map(|h| &h.0[..]).collect();
    let rows = tx
        .query(
            "SELECT h FROM unnest($1::bytea[]) AS t(h) WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.hash = t.h)",
            &[&hashes],
        )
        .map_err(q("finding orphaned contents"))?;
    let dead: Vec<Vec<u8>> = rows.iter().map(|r| r.get(0)).collect();
    let mut out = Vec::new();
    if dead.is_empty() {
        return Ok(out);
    }
    for s in spaces {
        let rows = tx
            .query(
                &format!(
                    "DELETE FROM {} WHERE hash = ANY($1) RETURNING id",
                    s.table()
                ),
                &[&dead],
            )
            .map_err(q("deleting orphaned vectors"))?;
        out.extend(rows.iter().map(|r| Orphan {
            fingerprint: s.fingerprint().to_owned(),
            id: r.get::<_, i64>(0) as u64,
        }));
    }
    out.sort();
    Ok(out)
}

fn hash(bytes: &[u8]) -> Result<ContentHash> {
    super::hash_of(bytes, "files")
}
