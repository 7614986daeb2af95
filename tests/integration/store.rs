//! The store across versions and damage: a schema 1 store written by an
//! earlier dualsight (vectors inside sled) is migrated to vector segments
//! with every vector intact, and `fsck` finds and repairs damaged vectors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use dualsight::encoder::Encoder;
use dualsight::store::{ContentHash, Store};

use crate::cli::{dualsight, run_err, run_ok};
use crate::util::{cosines, fixtures};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The v1 fixture's images by content hash.
fn library() -> HashMap<ContentHash, PathBuf> {
    let mut out = HashMap::new();
    for sub in ["bags", "shoes"] {
        let dir = fixtures().join("store-v1/library").join(sub);
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(ContentHash::of(&std::fs::read(&p).unwrap()), p);
        }
    }
    out
}

#[test]
fn a_schema_1_store_is_migrated_with_every_vector_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    copy_dir(&fixtures().join("store-v1/data/store"), &dir);
    let store = Store::open(&dir).unwrap();
    store.as_sled().unwrap().verify().unwrap();
    assert_eq!(store.file_count().unwrap(), 7);
    assert_eq!(store.indexed_file_count().unwrap(), 7);
    let space = store.active_space().unwrap().unwrap();
    assert_eq!((space.dim(), space.vector_count().unwrap()), (64, 6));
    assert_eq!(space.last_vector_id().unwrap(), 7);
    // The deleted file's id stays gone: ids have a gap.
    let live = (1..=7).filter(|&id| space.has_vector(id).unwrap()).count();
    assert_eq!(live, 6);
    // Each vector is still its image's embedding by the model that made it.
    let encoder =
        Encoder::load(&fixtures().join("fashion/model"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(encoder.fingerprint(), space.fingerprint());
    let lib = library();
    let stored: Vec<_> = space.iter_vectors_from(0).map(|v| v.unwrap()).collect();
    assert_eq!(stored.len(), 6);
    let paths: Vec<PathBuf> = stored.iter().map(|v| lib[&v.hash].clone()).collect();
    let fresh = encoder.embed_image_files(&paths).unwrap();
    let want: Vec<Vec<f32>> = stored.iter().map(|v| v.vector.clone()).collect();
    for (c, p) in cosines(&fresh, &want).iter().zip(&paths) {
        assert!(*c > 0.9999, "{}: cosine {c}", p.display());
    }
    // The copy and its original share one vector.
    let bag =
        ContentHash::of(&std::fs::read(fixtures().join("store-v1/library/bags/copy.png")).unwrap());
    assert_eq!(space.paths_for_hash(&bag).unwrap().len(), 2);
    drop((space, store));
    // Migrated once: the second open reads schema 3 as it is (sled's
    // flusher may hold the lock a moment after the drop).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let store = loop {
        match Store::open(&dir) {
            Err(dualsight::store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => break r.unwrap(),
        }
    };
    store.as_sled().unwrap().verify().unwrap();
    let space = store.active_space().unwrap().unwrap();
    assert_eq!(space.iter_vectors_from(0).count(), 6);
    assert!(dir.join("segments/1.vec").is_file());
}

/// `fsck` names a damaged vector's file and says what to run; `--repair`
/// forgets it, leaving a consistent store whose file is no longer indexed.
#[test]
fn fsck_finds_damaged_vectors_and_repair_forgets_them() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("store-v1/data"), tmp.path());
    // Migrate, then damage vector 3's payload.
    drop(Store::open(tmp.path().join("store")).unwrap());
    let seg = tmp.path().join("store/segments/1.vec");
    let mut bytes = std::fs::read(&seg).unwrap();
    let record = 8 + 32 + 4 * 64 + 8;
    bytes[64 + 2 * record + 100] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    let err = run_err(dualsight().arg("fsck").arg("--data-dir").arg(tmp.path()));
    assert!(
        err.contains("1.vec")
            && err.contains("1 damaged vectors (ids 3)")
            && err.contains("--repair"),
        "{err}"
    );
    let out = run_ok(
        dualsight()
            .arg("fsck")
            .arg("--data-dir")
            .arg(tmp.path())
            .arg("--repair")
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repaired_vectors"], 1);
    assert_eq!(v["files"], 7);
    assert_eq!(v["spaces"][0]["vectors"], 5);
    assert!(v["indexed_files"].as_u64().unwrap() < 7);
    run_ok(dualsight().arg("fsck").arg("--data-dir").arg(tmp.path()));
}
