//! Bulk loading for `dualsight migrate`: records and vectors copied from
//! another store as they are, without re-embedding. Every statement is an
//! upsert, so a copy cut short is resumed by running it again.

use pgvector::Vector;

use super::super::{ContentHash, FailureRecord, FileRecord, Result};
use super::{PgSpace, PgStore, q};

impl PgStore {
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
