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
        let col = |f: &dyn Fn(&FileRecord) -> i64| -> Vec<i64> {
            files.iter().map(|(_, r)| f(r)).collect()
        };
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        let hashes: Vec<&[u8]> = files.iter().map(|(_, r)| &r.hash.0[..]).collect();
        let taken_from: Vec<i16> = files
            .iter()
            .map(|(_, r)| r.meta.taken_from as i16)
            .collect();
        let width: Vec<i32> = files.iter().map(|(_, r)| r.meta.width as i32).collect();
        let height: Vec<i32> = files.iter().map(|(_, r)| r.meta.height as i32).collect();
        let mut c = self.inner.primary.get()?;
        c.execute(
            "INSERT INTO files (node, path, hash, size, mtime_ns, indexed_at_ms, taken_at, taken_from, width, height)
             SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
                                      $8::int2[], $9::int4[], $10::int4[])
             ON CONFLICT (node, path) DO UPDATE SET hash = EXCLUDED.hash, size = EXCLUDED.size,
                 mtime_ns = EXCLUDED.mtime_ns, indexed_at_ms = EXCLUDED.indexed_at_ms,
                 taken_at = EXCLUDED.taken_at, taken_from = EXCLUDED.taken_from,
                 width = EXCLUDED.width, height = EXCLUDED.height",
            &[
                &self.inner.node,
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
        .map_err(q("importing file records"))?;
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
