//! Bulk loading for `dualsight migrate`: records and vectors copied from
//! another store as they are, without re-embedding. Every statement is an
//! upsert, so a copy cut short is resumed by running it again.
//!
//! A space filled from empty is loaded without its vector index, which is
//! then built once: pgvector builds a graph in memory many times faster than
//! it inserts into one row by row (BENCHMARKS.md, 1M vectors), and an
//! IVFFlat index learns its lists from all the rows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgvector::Vector;

use super::super::{ContentHash, FailureRecord, FileRecord, Result};
use super::ann::{release_build_lock, try_build_lock};
use super::{PgSpace, PgStore, q};

/// How often a build's progress is read from `pg_stat_progress_create_index`.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How often a bulk build looks again for a daemon's build of the space to
/// end.
const LOCK_POLL: Duration = Duration::from_secs(1);

impl PgStore {
    /// Whether the space has a vector index (a migrate cut short between
    /// dropping and building it leaves none).
    pub fn has_search_index(&self, space: &PgSpace) -> Result<bool> {
        Ok(!self.vector_indexes(space)?.is_empty())
    }

    /// Drops the space's vector index before a bulk load. Searches meanwhile
    /// scan exactly: only for a space no daemon searches yet.
    pub fn drop_search_index(&self, space: &PgSpace) -> Result<()> {
        self.drop_vector_indexes(space)
    }

    /// Builds the space's index over what the table holds (this node's
    /// kind, IVFFlat sized to the rows; none yet for IVFFlat below
    /// `ivf_first` rows: then it returns false), with
    /// `memory` (a PostgreSQL size such as `2GB`) for the graph and
    /// `workers` parallel helpers (else the server's setting);
    /// `progress(done, total)` hears how many of the table's pages the
    /// build has read. A no-op when it exists.
    pub fn build_search_index(
        &self,
        space: &PgSpace,
        memory: &str,
        workers: Option<usize>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<bool> {
        let rows = space.vector_count()?;
        let Some(build) = self.bulk_build(rows) else {
            return Ok(false);
        };
        let (name, method) = self.index_for(space, build);
        let table = space.table();
        let mut c = self.inner.primary.get()?;
        // A daemon's background build of this space finishes first; then
        // this one finds its index (if it is the same) built.
        while !try_build_lock(&mut c, space.id)? {
            std::thread::sleep(LOCK_POLL);
        }
        // A build cut short leaves an invalid index, which `IF NOT EXISTS`
        // would take for built.
        self.drop_vector_indexes_where(space, false)?;
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .map_err(q("building a space's index"))?
            .get(0);
        let done = AtomicBool::new(false);
        let built = std::thread::scope(|scope| {
            scope.spawn(|| self.watch_build(pid, &done, progress));
            // SET LOCAL: the pooled connection goes back with its defaults.
            let built = c
                .transaction()
                .and_then(|mut tx| {
                    let workers = workers.map_or(String::new(), |n| {
                        format!("SET LOCAL max_parallel_maintenance_workers = {n};")
                    });
                    tx.batch_execute(&format!(
                        "SET LOCAL maintenance_work_mem = '{}'; {workers}
                         CREATE INDEX IF NOT EXISTS {name} ON {table} USING {method}",
                        memory.replace('\'', ""),
                    ))?;
                    tx.commit()
                })
                .map_err(q("building a space's index"));
            done.store(true, Ordering::Release);
            built
        });
        release_build_lock(&mut c, space.id)?;
        built?;
        self.counts_changed();
        self.drop_vector_indexes_but(space, &name)?;
        Ok(true)
    }

    /// Reports a build's progress until `done`; quiet when the server does
    /// not say (another extension's phase, no permission).
    fn watch_build(
        &self,
        pid: i32,
        done: &AtomicBool,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) {
        let Ok(mut c) = self.inner.primary.get() else {
            return;
        };
        while !done.load(Ordering::Acquire) {
            std::thread::sleep(PROGRESS_EVERY);
            let Ok(Some(row)) = c.query_opt(
                // pgvector counts the heap pages it has put in the graph;
                // it leaves tuples_total unset.
                "SELECT blocks_done, blocks_total FROM pg_stat_progress_create_index WHERE pid = $1",
                &[&pid],
            ) else {
                continue;
            };
            let (n, total): (i64, i64) = (row.get(0), row.get(1));
            if total > 0 && !done.load(Ordering::Acquire) {
                progress(n as u64, total as u64);
            }
        }
    }

    /// Adds vectors for contents the space lacks; returns how many were new.
    pub fn import_vectors(
        &self,
        space: &PgSpace,
        vectors: &[(ContentHash, Vec<f32>)],
    ) -> Result<u64> {
        for (_, v) in vectors {
            super::super::check_vector(space.fingerprint(), space.dim(), v)?;
        }
        let hashes: Vec<&[u8]> = vectors.iter().map(|(h, _)| &h.0[..]).collect();
        let values: Vec<Vector> = vectors
            .iter()
            .map(|(_, v)| Vector::from(v.clone()))
            .collect();
        let mut c = self.inner.primary.get()?;
        let n = c
            .execute(
                &format!(
                    "INSERT INTO {} (hash, embedding) SELECT * FROM unnest($1::bytea[], $2::vector[])
                     ON CONFLICT (hash) DO NOTHING",
                    space.table()
                ),
                &[&hashes, &values],
            )
            .map_err(q("importing vectors"))?;
        self.counts_changed();
        Ok(n)
    }

    /// Writes file records under this node, replacing any at the same paths.
    pub fn import_files(&self, files: &[(String, FileRecord)]) -> Result<()> {
        let rows: Vec<(&str, &FileRecord)> = files.iter().map(|(p, r)| (p.as_str(), r)).collect();
        let mut c = self.inner.primary.get()?;
        super::write::upsert_files(&mut *c, &self.inner.node, &rows)?;
        self.counts_changed();
        Ok(())
    }

    /// Writes failure records under this node, replacing any at the same paths.
    pub fn import_failures(&self, failures: &[(String, FailureRecord)]) -> Result<()> {
        let mut c = self.inner.primary.get()?;
        let mut tx = c.transaction().map_err(q("importing failures"))?;
        for (path, f) in failures {
            tx.execute(
                "INSERT INTO failures (node, path, error, size, mtime_ns, attempts, last_failed_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (node, path) DO UPDATE SET error = EXCLUDED.error, size = EXCLUDED.size,
                     mtime_ns = EXCLUDED.mtime_ns, attempts = EXCLUDED.attempts,
                     last_failed_ms = EXCLUDED.last_failed_ms",
                &[
                    &self.inner.node,
                    path,
                    &f.error,
                    &(f.size as i64),
                    &f.mtime_ns,
                    &(f.attempts as i32),
                    &(f.last_failed_ms as i64),
                ],
            )
            .map_err(q("importing failures"))?;
        }
        tx.commit().map_err(q("importing failures"))?;
        self.counts_changed();
        Ok(())
    }
}
