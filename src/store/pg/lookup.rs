//! Many files' records and failures, and many contents' vector ids, each
//! in one statement. A full rescan asks about every file it walks; one round trip
//! per file made an hourly rescan of 20,000 unchanged files take 10–25 s of
//! the planner's time, and would take most of the hour at a million.

use std::collections::HashMap;

use postgres::Row;

use super::super::{ContentHash, FailureRecord, FileRecord, Result};
use super::{FAILURE_COLS, FILE_COLS, PgSpace, PgStore, failure_record, file_record, q};

impl PgStore {
    /// This node's records of `paths`, in their order (`None`: no record).
    pub fn files(&self, paths: &[&str]) -> Result<Vec<Option<FileRecord>>> {
        self.by_path(
            paths,
            &format!("SELECT {FILE_COLS} FROM files WHERE node = $1 AND path = ANY($2)"),
            "reading file records",
            file_record,
        )
    }

    /// This node's failure records of `paths`, in their order (`None`: none).
    pub fn failures(&self, paths: &[&str]) -> Result<Vec<Option<FailureRecord>>> {
        self.by_path(
            paths,
            &format!("SELECT {FAILURE_COLS} FROM failures WHERE node = $1 AND path = ANY($2)"),
            "reading failures",
            |r| Ok(failure_record(r)),
        )
    }

    /// This node's rows of `paths` (`sql` takes the node and the paths, and
    /// `row` reads a row as its path and value), in `paths`' order.
    fn by_path<T: Clone>(
        &self,
        paths: &[&str],
        sql: &str,
        what: &'static str,
        row: impl Fn(&Row) -> Result<(String, T)>,
    ) -> Result<Vec<Option<T>>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.inner.primary.get()?;
        let rows = c.query(sql, &[&self.inner.node, &paths]).map_err(q(what))?;
        let found = rows
            .iter()
            .map(row)
            .collect::<Result<HashMap<String, T>>>()?;
        Ok(paths.iter().map(|p| found.get(*p).cloned()).collect())
    }
}

impl PgSpace {
    /// The vector id of each content, in their order (`None`: not in this space).
    pub fn vector_ids_for_hashes(&self, hashes: &[ContentHash]) -> Result<Vec<Option<u64>>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h.0[..]).collect();
        let mut c = self.inner.primary.get()?;
        let rows = c
            .query(
                &format!("SELECT hash, id FROM {} WHERE hash = ANY($1)", self.table()),
                &[&keys],
            )
            .map_err(q("looking up vectors"))?;
        let found: HashMap<Vec<u8>, u64> = rows
            .iter()
            .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, i64>(1) as u64))
            .collect();
        Ok(keys.iter().map(|k| found.get(*k).copied()).collect())
    }
}
