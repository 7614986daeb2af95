//! The journal's tests through the store: schema 2's trees moved into it,
//! its rewrite, and what crashes in either leave.

use super::journal::{self, Op};
use super::tests::{FP, new, open, reopen};
use super::*;

const V2_FP: &str = "574c92366b071beb";
const V2_ROOT: &str = "/tmp/v2lib";

fn copy_v2_fixture(to: &std::path::Path) {
    let from =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2/data/store");
    std::fs::create_dir_all(to.join("segments")).unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(from.join("segments/1.vec"), to.join("segments/1.vec")).unwrap();
}

/// Everything a store answers about its records: files, failed paths, and
/// each vector's id with its paths.
type Records = (
    Vec<(String, FileRecord)>,
    Vec<String>,
    Vec<(u64, Vec<String>)>,
);

/// Everything a store answers about its records, for comparing two opens.
fn snapshot(store: &SledStore) -> Records {
    let files: Vec<_> = store.iter_files().map(|r| r.unwrap()).collect();
    let failures = store.iter_failures().map(|r| r.unwrap().0).collect();
    let vectors = store
        .spaces()
        .unwrap()
        .iter()
        .flat_map(|info| {
            let s = store.space(&info.fingerprint, info.dim).unwrap();
            s.iter_vectors_from(0)
                .map(|v| {
                    let v = v.unwrap();
                    (v.id, s.paths_for_vector(v.id).unwrap())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    (files, failures, vectors)
}

/// A store written by the previous version (one sled key per record) opens
/// with every record, failure and vector it had, each file's content the
/// hash of its bytes, and none of the old trees left.
#[test]
fn a_schema_2_store_moves_into_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    copy_v2_fixture(&path);
    let store = reopen(&path);
    store.verify().unwrap();
    assert_eq!(store.file_count().unwrap(), 7);
    assert_eq!(store.failure_count().unwrap(), 1);
    let failure = store
        .failure(&format!("{V2_ROOT}/bags/broken.jpg"))
        .unwrap()
        .unwrap();
    assert!(
        failure.error.contains("expected an image"),
        "{}",
        failure.error
    );
    let space = store.active_space().unwrap().unwrap();
    assert_eq!(space.fingerprint(), V2_FP);
    assert_eq!(
        (
            space.vector_count().unwrap(),
            space.indexed_path_count().unwrap()
        ),
        (5, 7)
    );
    assert_eq!(space.last_vector_id().unwrap(), 6);
    let library =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2/library");
    for kv in store.iter_files() {
        let (p, rec) = kv.unwrap();
        let rel = p.strip_prefix(V2_ROOT).unwrap().trim_start_matches('/');
        let bytes = std::fs::read(library.join(rel)).unwrap();
        assert_eq!(rec.hash, ContentHash::of(&bytes), "{p}");
        let id = space.vector_id_for_hash(&rec.hash).unwrap().unwrap();
        assert_eq!(space.vector(id).unwrap().unwrap().hash, rec.hash);
    }
    let copy = store
        .file(&format!("{V2_ROOT}/bags/copy.png"))
        .unwrap()
        .unwrap();
    assert_eq!(
        space.paths_for_hash(&copy.hash).unwrap(),
        [
            format!("{V2_ROOT}/bags/00018.png"),
            format!("{V2_ROOT}/bags/copy.png")
        ]
    );
    let names: Vec<String> = store
        .inner
        .db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    for old in [
        "files",
        "hash_paths",
        "hash_refs",
        "failures",
        "space/1/hash_id",
        "space/1/vectors",
    ] {
        assert!(!names.iter().any(|n| n == old), "{old} left in {names:?}");
    }
    let before = snapshot(&store);
    drop((space, store));
    let store = reopen(&path);
    assert_eq!(snapshot(&store), before);
    store.verify().unwrap();
}

/// A migration cut short before the schema changed (the journal half
/// written) starts over; one cut short after it (old trees and counters
/// still there) only removes what is left. Both end as an uncut one.
#[test]
fn an_interrupted_move_into_the_journal_ends_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let (done, early, late) = (
        tmp.path().join("done"),
        tmp.path().join("early"),
        tmp.path().join("late"),
    );
    for p in [&done, &early, &late] {
        copy_v2_fixture(p);
    }
    let want = snapshot(&reopen(&done));
    {
        // Schema still 2, and an entry that the old trees do not say.
        let db = sled::open(&early).unwrap();
        let j = db.open_tree(TREE_JOURNAL).unwrap();
        let bogus = journal::encode(&[Op::File("/nowhere.jpg".into(), FileRecord::default())]);
        j.insert(codec::u64_be(1000), bogus).unwrap();
        db.flush().unwrap();
    }
    assert_eq!(snapshot(&reopen(&early)), want);
    {
        let store = reopen(&late);
        drop(store);
        // Schema 3, the journal complete, a schema 2 tree and counter back.
        let db = sled::open(&late).unwrap();
        db.open_tree("files")
            .unwrap()
            .insert("/x", &[1u8][..])
            .unwrap();
        db.open_tree(TREE_META)
            .unwrap()
            .insert("file_count", &[0u8; 8][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = reopen(&late);
    assert_eq!(snapshot(&store), want);
    assert!(
        !store
            .inner
            .db
            .tree_names()
            .iter()
            .any(|n| &n[..] == b"files")
    );
    assert!(store.inner.meta.get("file_count").unwrap().is_none());
    store.verify().unwrap();
}

/// Changes the records of a store many times over, so that most of its
/// journal is dead: adds, content changes, renames, removals, failures.
fn churn(store: &SledStore, space: &SledSpace) {
    for round in 0..20u8 {
        let items: Vec<Commit> = (0..10u8)
            .map(|i| {
                new(
                    &format!("/lib/{i}.jpg"),
                    round.wrapping_mul(10).wrapping_add(i),
                    4,
                )
            })
            .collect();
        store.commit(space, &items).unwrap();
        store
            .rename(&format!("/lib/{}.jpg", round % 10), "/lib/moved.jpg")
            .unwrap();
        store
            .record_failure(&format!("/bad/{}.jpg", round % 3), "not an image", 1, 2)
            .unwrap();
        if round % 4 == 0 {
            store.remove_prefix("/bad").unwrap();
        }
    }
}

/// A rewrite keeps every record and shrinks the journal; the store then
/// opens to the same records.
#[test]
fn a_rewritten_journal_holds_the_same_records() {
    let (dir, store) = open();
    let space = store.space(FP, 4).unwrap();
    store.set_active(FP).unwrap();
    churn(&store, &space);
    let before = snapshot(&store);
    let bytes = || journal::read(&store.inner.state).journal_bytes;
    let was = bytes();
    store.compact_journal().unwrap();
    assert!(bytes() * 4 < was, "{} bytes after, {was} before", bytes());
    let on_disk: u64 = store
        .inner
        .journal
        .iter()
        .values()
        .map(|v| v.unwrap().len() as u64)
        .sum();
    assert_eq!(bytes(), on_disk, "the rewrite's count against its entries");
    store.verify().unwrap();
    assert_eq!(snapshot(&store), before);
    // Writes go on after the rewrite.
    store.commit(&space, &[new("/after.jpg", 250, 4)]).unwrap();
    let after = snapshot(&store);
    drop((space, store));
    let store = reopen(&dir.path().join("db"));
    store.verify().unwrap();
    assert_eq!(snapshot(&store), after);
}

/// What a crash in a rewrite leaves replays to the same records: the new
/// entries written and none of the old ones removed, or some of them.
#[test]
fn a_rewrite_cut_short_replays_to_the_same_records() {
    for removed in [0usize, 7, 15] {
        let (dir, store) = open();
        let space = store.space(FP, 4).unwrap();
        store.set_active(FP).unwrap();
        churn(&store, &space);
        let want = snapshot(&store);
        {
            let state = journal::read(&store.inner.state);
            let mut w = migrate::Writer::new(&store.inner.journal, state.next_seq);
            for op in state.live_ops() {
                w.push(op).unwrap();
            }
            w.finish().unwrap();
        }
        // The oldest entries first, as the rewrite removes them.
        let old: Vec<sled::IVec> = store
            .inner
            .journal
            .iter()
            .keys()
            .take(removed)
            .map(|k| k.unwrap())
            .collect();
        for k in old {
            store.inner.journal.remove(k).unwrap();
        }
        store.flush().unwrap();
        drop((space, store));
        let store = reopen(&dir.path().join("db"));
        store.verify().unwrap();
        assert_eq!(snapshot(&store), want, "{removed} old entries removed");
    }
}

/// A damaged journal entry stops the open with a message naming it, never
/// a store that silently lost records.
#[test]
fn a_damaged_journal_entry_is_named() {
    let (dir, store) = open();
    let space = store.space(FP, 4).unwrap();
    store.commit(&space, &[new("/a.jpg", 1, 4)]).unwrap();
    let (k, v) = store.inner.journal.iter().next().unwrap().unwrap();
    store.inner.journal.insert(&k, &v[..v.len() - 3]).unwrap();
    store.flush().unwrap();
    drop((space, store));
    let e = SledStore::open(dir.path().join("db"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("journal entry") && e.contains("cut short"),
        "{e}"
    );
}
