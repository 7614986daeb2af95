//! [`SledStore::verify`]: an fsck that recounts everything and checks every
//! link, for tests and operators.

use super::*;

impl SledStore {
    /// Recounts everything and checks every cross-tree link and counter: an
    /// fsck, O(library). Run it with no writer active. Err names the first
    /// inconsistency found.
    pub fn verify(&self) -> Result<()> {
        let inner = &self.inner;
        let bad = |m: String| Err(StoreError::Corrupt(m));
        let mut refs: BTreeMap<ContentHash, u64> = BTreeMap::new();
        let mut files = 0u64;
        for kv in self.iter_files() {
            let (path, rec) = kv?;
            files += 1;
            *refs.entry(rec.hash).or_default() += 1;
            if !inner
                .hash_paths
                .contains_key(hash_path_key(&rec.hash, &path))?
            {
                return bad(format!("{path}: no hash_paths link"));
            }
        }
        if files != self.file_count()? {
            return bad(format!(
                "file_count {} but {files} records",
                self.file_count()?
            ));
        }
        let mut links = 0u64;
        for kv in inner.hash_paths.iter() {
            let (k, _) = kv?;
            links += 1;
            let hash = decode_hash(&k[..32.min(k.len())])
                .ok_or_else(|| StoreError::Corrupt("hash_paths: short key".into()))?;
            let path = key_path(&k[32..])?;
            if self.file(&path)?.map(|r| r.hash) != Some(hash) {
                return bad(format!("{path}: stale hash_paths link to {hash}"));
            }
        }
        if links != files {
            return bad(format!("{links} hash_paths links for {files} files"));
        }
        let mut ref_entries = 0usize;
        for kv in inner.hash_refs.iter() {
            let (k, v) = kv?;
            ref_entries += 1;
            let hash =
                decode_hash(&k).ok_or_else(|| StoreError::Corrupt("hash_refs: bad key".into()))?;
            let n = read_u64_be(&v).unwrap_or(u64::MAX);
            if refs.get(&hash) != Some(&n) {
                return bad(format!(
                    "hash_refs {hash}: {n}, counted {:?}",
                    refs.get(&hash)
                ));
            }
        }
        if ref_entries != refs.len() {
            return bad(format!(
                "{ref_entries} hash_refs entries for {} contents",
                refs.len()
            ));
        }
        let spaces: Vec<SledSpace> = inner.read_spaces().values().cloned().collect();
        for s in &spaces {
            let (mut vectors, mut paths) = (0u64, 0u64);
            let last = s.last_vector_id()?;
            for kv in s.hash_id.iter() {
                let (k, v) = kv?;
                let hash = decode_hash(&k)
                    .ok_or_else(|| StoreError::Corrupt("hash_id: bad key".into()))?;
                let id =
                    read_u64_be(&v).ok_or_else(|| StoreError::Corrupt("hash_id: bad id".into()))?;
                let Some(sv) = s.vector(id)? else {
                    return bad(format!(
                        "space {}: hash {hash} → missing vector {id}",
                        s.fingerprint()
                    ));
                };
                if sv.hash != hash || id > last || id == 0 {
                    return bad(format!(
                        "space {}: vector {id} inconsistent",
                        s.fingerprint()
                    ));
                }
                let Some(&n) = refs.get(&hash) else {
                    return bad(format!("space {}: orphaned vector {id}", s.fingerprint()));
                };
                vectors += 1;
                paths += n;
            }
            let stored = s.iter_vectors_from(0).count() as u64;
            if vectors != s.vector_count()? || stored != vectors {
                return bad(format!(
                    "space {}: vectors counter {}, hash_id {vectors}, vectors tree {stored}",
                    s.fingerprint(),
                    s.vector_count()?
                ));
            }
            if paths != s.indexed_path_count()? {
                return bad(format!(
                    "space {}: paths counter {}, counted {paths}",
                    s.fingerprint(),
                    s.indexed_path_count()?
                ));
            }
        }
        let failures = self.iter_failures().count() as u64;
        if failures != self.failure_count()? {
            return bad(format!(
                "failure_count {} but {failures} records",
                self.failure_count()?
            ));
        }
        Ok(())
    }
}
