//! [`SledStore::verify`]: an fsck that replays the journal again and
//! recounts everything, for tests and operators.

use super::journal;
use super::*;

impl SledStore {
    /// Replays the journal into a fresh state and compares it with the one
    /// in memory, then checks every link and count against the records and
    /// every vector against its segment: an fsck, O(library). Run it with no
    /// writer active. Err names the first inconsistency found.
    pub fn verify(&self) -> Result<()> {
        let inner = &self.inner;
        let bad = |m: String| Err(StoreError::Corrupt(m));
        let spaces: Vec<SledSpace> = inner.read_spaces().values().cloned().collect();
        let replayed = journal::replay(&inner.journal, spaces.iter().map(|s| s.no))?;
        let state = journal::read(&inner.state);
        if !state.same_records(&replayed) {
            return bad("the records in memory differ from a replay of the journal".into());
        }
        if !state.links_match_files() {
            return bad("the paths of some content do not match the file records".into());
        }
        for s in &spaces {
            let Some(sp) = state.spaces.get(&s.no) else {
                return bad(format!("space {}: no records in memory", s.fingerprint()));
            };
            let last = s.last_vector_id()?;
            let mut paths = 0u64;
            for (&id, hash) in &sp.hashes {
                if sp.ids.get(hash) != Some(&id) || id > last || id == 0 {
                    return bad(format!(
                        "space {}: vector {id} inconsistent",
                        s.fingerprint()
                    ));
                }
                let refs = state.refs(hash);
                if refs == 0 {
                    return bad(format!("space {}: orphaned vector {id}", s.fingerprint()));
                }
                paths += refs;
            }
            if sp.ids.len() != sp.hashes.len() {
                return bad(format!(
                    "space {}: {} contents for {} vectors",
                    s.fingerprint(),
                    sp.ids.len(),
                    sp.hashes.len()
                ));
            }
            if paths != sp.paths {
                return bad(format!(
                    "space {}: paths counted {}, recounted {paths}",
                    s.fingerprint(),
                    sp.paths
                ));
            }
        }
        drop(state);
        // The segments last, without the lock: each vector reads back with
        // its content's hash.
        for s in &spaces {
            for v in s.iter_vectors_from(0) {
                let v = v?;
                if s.vector_id_for_hash(&v.hash)? != Some(v.id) {
                    return bad(format!(
                        "space {}: vector {} holds another content",
                        s.fingerprint(),
                        v.id
                    ));
                }
            }
        }
        Ok(())
    }
}
