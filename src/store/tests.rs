//! The store's unit tests.

use super::*;
use tempfile::TempDir;

pub(super) const FP: &str = "model-a";

pub(super) fn open() -> (TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("db")).unwrap();
    (dir, store)
}

/// Opens the store at `path`, which a handle of this process may have just
/// dropped: sled's flusher thread can hold the directory's lock a moment
/// longer, so `Locked` is retried for up to 5 s (another process would hold
/// it for good, and the test would still fail).
pub(super) fn reopen(path: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match SledStore::open(path) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r.unwrap(),
        }
    }
}

pub(super) fn hash(n: u8) -> ContentHash {
    ContentHash::of(&[n])
}

pub(super) fn rec(n: u8) -> FileRecord {
    FileRecord {
        size: 100 + u64::from(n),
        mtime_ns: 7 * i64::from(n),
        hash: hash(n),
        indexed_at_ms: 1_000,
        meta: Default::default(),
    }
}

pub(super) fn vector(dim: usize, n: u8) -> Vec<f32> {
    (0..dim)
        .map(|i| ((i + 1) as f32) * (f32::from(n) + 1.0))
        .collect()
}

pub(super) fn new(path: &str, n: u8, dim: usize) -> Commit {
    Commit {
        path: path.into(),
        record: rec(n),
        embedding: Embedding::New(vector(dim, n)),
    }
}

pub(super) fn existing(path: &str, n: u8) -> Commit {
    Commit {
        path: path.into(),
        record: rec(n),
        embedding: Embedding::Existing,
    }
}

#[test]
fn commit_flush_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (id1, id2);
    {
        let store = reopen(&path);
        let space = store.space(FP, 4).unwrap();
        store.set_active(FP).unwrap();
        let out = store
            .commit(
                &space,
                &[
                    new("/p/a.jpg", 1, 4),
                    new("/p/b.jpg", 2, 4),
                    existing("/p/c.jpg", 2),
                ],
            )
            .unwrap();
        assert_eq!(out.inserted.len(), 2);
        assert!(out.orphaned.is_empty());
        (id1, id2) = (out.vector_ids[0], out.vector_ids[1]);
        assert_eq!(out.vector_ids, vec![id1, id2, id2]);
        assert_eq!(out.inserted, vec![(id1, vector(4, 1)), (id2, vector(4, 2))]);
        store
            .record_failure("/p/bad.jpg", "truncated jpeg", 5, 6)
            .unwrap();
        store.set_root_offline("/mnt/usb", true).unwrap();
        store.verify().unwrap();
    }
    let store = reopen(&path);
    store.verify().unwrap();
    let space = store
        .active_space()
        .unwrap()
        .expect("active space survives");
    assert_eq!((space.fingerprint(), space.dim()), (FP, 4));
    assert_eq!(store.file("/p/a.jpg").unwrap(), Some(rec(1)));
    assert_eq!(store.file("/p/c.jpg").unwrap(), Some(rec(2)));
    assert_eq!(store.file("/p/nope.jpg").unwrap(), None);
    assert_eq!(space.vector_id_for_hash(&hash(1)).unwrap(), Some(id1));
    let sv = space.vector(id2).unwrap().unwrap();
    assert_eq!((sv.hash, sv.vector), (hash(2), vector(4, 2)));
    assert_eq!(
        space.paths_for_vector(id2).unwrap(),
        vec!["/p/b.jpg", "/p/c.jpg"]
    );
    assert_eq!(space.last_vector_id().unwrap(), id2);
    assert_eq!(store.file_count().unwrap(), 3);
    assert_eq!(store.indexed_file_count().unwrap(), 3);
    assert_eq!(store.vector_count(&space).unwrap(), 2);
    assert_eq!(store.failure_count().unwrap(), 1);
    assert_eq!(
        store.failure("/p/bad.jpg").unwrap().unwrap().error,
        "truncated jpeg"
    );
    assert!(store.root_offline("/mnt/usb/").unwrap());
    assert_eq!(store.offline_roots().unwrap(), vec!["/mnt/usb"]);
    let files: Vec<_> = store.iter_files().map(|r| r.unwrap().0).collect();
    assert_eq!(files, vec!["/p/a.jpg", "/p/b.jpg", "/p/c.jpg"]);
    // Ids keep growing after a reopen.
    let out = store.commit(&space, &[new("/p/d.jpg", 3, 4)]).unwrap();
    assert!(out.vector_ids[0] > id2);
}

#[test]
fn second_open_is_refused_clearly() {
    let (dir, _store) = open();
    let err = SledStore::open(dir.path().join("db")).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("another dualsight may be running") && msg.contains("db"),
        "{msg}"
    );
}

#[test]
fn newer_schema_is_refused_naming_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = reopen(&path);
        store
            .inner
            .meta
            .insert(META_SCHEMA, &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        store.flush().unwrap();
    }
    let err = SledStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn rename_keeps_the_vector() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    let id = store
        .commit(&space, &[new("/p/a.jpg", 1, 4)])
        .unwrap()
        .vector_ids[0];
    store.record_failure("/p/f.jpg", "bad", 1, 2).unwrap();
    let r = store.rename("/p/a.jpg", "/q/a.jpg").unwrap();
    assert_eq!(
        r,
        Removal {
            paths: 1,
            orphaned: vec![]
        }
    );
    assert_eq!(store.file("/p/a.jpg").unwrap(), None);
    assert_eq!(store.file("/q/a.jpg").unwrap(), Some(rec(1)));
    assert_eq!(space.vector_id_for_hash(&hash(1)).unwrap(), Some(id));
    assert_eq!(space.paths_for_vector(id).unwrap(), vec!["/q/a.jpg"]);
    assert_eq!(
        (
            space.vector_count().unwrap(),
            space.last_vector_id().unwrap()
        ),
        (1, id)
    );
    // An unknown path renames nothing; a failure record moves with its file.
    assert_eq!(store.rename("/p/none.jpg", "/q/none.jpg").unwrap().paths, 0);
    store.rename("/p/f.jpg", "/q/f.jpg").unwrap();
    assert!(store.failure("/p/f.jpg").unwrap().is_none());
    assert_eq!(store.failure("/q/f.jpg").unwrap().unwrap().error, "bad");
    assert_eq!(store.failure_count().unwrap(), 1);
    // Renaming over another file replaces it; its content loses its last path.
    let other = store
        .commit(&space, &[new("/q/b.jpg", 2, 4)])
        .unwrap()
        .vector_ids[0];
    let r = store.rename("/q/a.jpg", "/q/b.jpg").unwrap();
    assert_eq!(
        r.orphaned,
        vec![Orphan {
            fingerprint: FP.into(),
            id: other
        }]
    );
    assert_eq!(store.file("/q/b.jpg").unwrap(), Some(rec(1)));
    assert_eq!(store.file_count().unwrap(), 1);
    store.verify().unwrap();
}

#[test]
fn duplicates_share_one_vector() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    store.set_active(FP).unwrap();
    // Two new files with the same content in one batch: one vector.
    let out = store
        .commit(&space, &[new("/a.jpg", 1, 4), new("/b.jpg", 1, 4)])
        .unwrap();
    assert_eq!(out.inserted.len(), 1);
    assert_eq!(out.vector_ids[0], out.vector_ids[1]);
    let out2 = store.commit(&space, &[existing("/c.jpg", 1)]).unwrap();
    assert!(out2.inserted.is_empty());
    assert_eq!(out2.vector_ids, vec![out.vector_ids[0]]);
    assert_eq!(
        space.paths_for_vector(out.vector_ids[0]).unwrap(),
        vec!["/a.jpg", "/b.jpg", "/c.jpg"]
    );
    assert_eq!(
        (
            store.indexed_file_count().unwrap(),
            space.vector_count().unwrap()
        ),
        (3, 1)
    );
    store.verify().unwrap();
}

#[test]
fn many_files_and_contents_are_looked_up_in_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let space = store.space(FP, 4).unwrap();
    store
        .commit(&space, &[new("/a.jpg", 1, 4), new("/b.jpg", 2, 4)])
        .unwrap();
    let asked = ["/b.jpg", "/none.jpg", "/a.jpg", "/b.jpg"];
    let found = store.files(&asked).unwrap();
    let one_by_one: Vec<_> = asked.iter().map(|p| store.file(p).unwrap()).collect();
    assert_eq!(found, one_by_one);
    assert!(found[0].is_some() && found[1].is_none() && found[2].is_some());
    let hashes = [found[2].as_ref().unwrap().hash, ContentHash([9; 32])];
    let ids = space.vector_ids_for_hashes(&hashes).unwrap();
    assert!(ids[0].is_some() && ids[1].is_none());
    assert_eq!(ids[0], space.vector_id_for_hash(&hashes[0]).unwrap());
    store.record_failure("/bad.jpg", "truncated", 5, 6).unwrap();
    let failures = store.failures(&["/a.jpg", "/bad.jpg"]).unwrap();
    assert_eq!(failures[0], None);
    assert_eq!(failures[1], store.failure("/bad.jpg").unwrap());
    assert!(failures[1].is_some());
}

#[test]
fn removing_the_last_path_orphans_the_vector() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    let id = store
        .commit(&space, &[new("/a.jpg", 1, 4), existing("/b.jpg", 1)])
        .unwrap()
        .vector_ids[0];
    assert_eq!(
        store.remove_path("/a.jpg").unwrap(),
        Removal {
            paths: 1,
            orphaned: vec![]
        }
    );
    assert_eq!(store.remove_path("/a.jpg").unwrap(), Removal::default());
    let r = store.remove_path("/b.jpg").unwrap();
    assert_eq!(r.paths, 1);
    assert_eq!(r.orphaned_in(FP).collect::<Vec<_>>(), vec![id]);
    assert_eq!(space.vector(id).unwrap(), None);
    assert_eq!(space.vector_id_for_hash(&hash(1)).unwrap(), None);
    assert_eq!(
        (space.vector_count().unwrap(), store.file_count().unwrap()),
        (0, 0)
    );
    // Ids are never reused.
    let again = store
        .commit(&space, &[new("/a.jpg", 1, 4)])
        .unwrap()
        .vector_ids[0];
    assert!(again > id);
    store.verify().unwrap();
}

#[test]
fn changed_content_orphans_the_old_vector() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    let old = store
        .commit(&space, &[new("/a.jpg", 1, 4)])
        .unwrap()
        .vector_ids[0];
    let out = store.commit(&space, &[new("/a.jpg", 2, 4)]).unwrap();
    assert_eq!(
        out.orphaned,
        vec![Orphan {
            fingerprint: FP.into(),
            id: old
        }]
    );
    assert_eq!(out.inserted.len(), 1);
    // A swap inside one batch orphans nothing: both contents keep a path.
    let b = store
        .commit(&space, &[new("/b.jpg", 3, 4)])
        .unwrap()
        .vector_ids[0];
    let a = out.vector_ids[0];
    let swap = store
        .commit(&space, &[existing("/a.jpg", 3), existing("/b.jpg", 2)])
        .unwrap();
    assert!(swap.orphaned.is_empty());
    assert_eq!(swap.vector_ids, vec![b, a]);
    // Same content again (touch): the record updates, nothing else.
    let mut touched = rec(3);
    touched.mtime_ns = 99;
    let t = store
        .commit(
            &space,
            &[Commit {
                path: "/a.jpg".into(),
                record: touched,
                embedding: Embedding::Existing,
            }],
        )
        .unwrap();
    assert!(t.orphaned.is_empty() && t.inserted.is_empty());
    assert_eq!(store.file("/a.jpg").unwrap().unwrap().mtime_ns, 99);
    store.verify().unwrap();
}

#[test]
fn prefix_removal_is_by_component() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    store
        .commit(
            &space,
            &[
                new("/a/b", 1, 4),
                new("/a/b/x.jpg", 2, 4),
                new("/a/b/y/z.jpg", 3, 4),
                new("/a/bc/x.jpg", 4, 4),
            ],
        )
        .unwrap();
    store.record_failure("/a/b/bad.jpg", "e", 1, 1).unwrap();
    store.record_failure("/a/bcd.jpg", "e", 1, 1).unwrap();
    let r = store.remove_prefix("/a/b/").unwrap();
    assert_eq!(r.paths, 3);
    assert_eq!(r.orphaned.len(), 3);
    let left: Vec<_> = store.iter_files().map(|r| r.unwrap().0).collect();
    assert_eq!(left, vec!["/a/bc/x.jpg"]);
    assert!(store.failure("/a/b/bad.jpg").unwrap().is_none());
    assert!(store.failure("/a/bcd.jpg").unwrap().is_some());
    assert_eq!(store.failure_count().unwrap(), 1);
    let under: Vec<_> = store
        .iter_files_under("/a/bc/x.jpg")
        .chain(store.iter_files_under("/a/bc"))
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(under, vec!["/a/bc/x.jpg", "/a/bc/x.jpg"]);
    assert_eq!(store.iter_files_under("/a/b").count(), 0);
    store.verify().unwrap();
}

#[test]
fn folder_rename_moves_records_by_component() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    let ids = store
        .commit(
            &space,
            &[
                new("/a/b/x.jpg", 1, 4),
                new("/a/b/y/z.jpg", 2, 4),
                new("/a/bc/x.jpg", 3, 4),
            ],
        )
        .unwrap()
        .vector_ids;
    let r = store.rename_prefix("/a/b", "/c").unwrap();
    assert_eq!(
        r,
        Removal {
            paths: 2,
            orphaned: vec![]
        }
    );
    let all: Vec<_> = store.iter_files().map(|r| r.unwrap().0).collect();
    assert_eq!(all, vec!["/a/bc/x.jpg", "/c/x.jpg", "/c/y/z.jpg"]);
    assert_eq!(space.paths_for_vector(ids[1]).unwrap(), vec!["/c/y/z.jpg"]);
    assert!(matches!(
        store.rename_prefix("/c", "/c/d"),
        Err(StoreError::InvalidPath(..))
    ));
    store.verify().unwrap();
}

#[test]
fn failures_are_recorded_and_cleared() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    store
        .record_failure("/x.jpg", "decode: bad huffman", 10, 20)
        .unwrap();
    store
        .record_failure("/x.jpg", "decode: bad huffman", 10, 20)
        .unwrap();
    store.record_failure("/y.jpg", "too large", 1, 2).unwrap();
    let f = store.failure("/x.jpg").unwrap().unwrap();
    assert_eq!((f.size, f.mtime_ns, f.attempts), (10, 20, 2));
    assert_eq!(store.failure_count().unwrap(), 2);
    assert_eq!(store.iter_failures().count(), 2);
    assert!(store.clear_failure("/y.jpg").unwrap());
    assert!(!store.clear_failure("/y.jpg").unwrap());
    // Indexing the file at last clears its failure.
    store.commit(&space, &[new("/x.jpg", 1, 4)]).unwrap();
    assert_eq!(store.failure("/x.jpg").unwrap(), None);
    assert_eq!(store.failure_count().unwrap(), 0);
    store.verify().unwrap();
}

#[test]
fn bad_vectors_are_refused_and_nothing_is_written() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    let bad = |v: Vec<f32>| {
        store.commit(
            &space,
            &[
                new("/ok.jpg", 1, 4),
                Commit {
                    embedding: Embedding::New(v),
                    ..new("/x.jpg", 2, 4)
                },
            ],
        )
    };
    assert!(matches!(
        bad(vec![1.0; 3]),
        Err(StoreError::Dimension {
            expected: 4,
            got: 3,
            ..
        })
    ));
    assert!(matches!(
        bad(vec![1.0, f32::NAN, 0.0, 0.0]),
        Err(StoreError::InvalidVector { .. })
    ));
    assert!(matches!(
        bad(vec![1.0, f32::INFINITY, 0.0, 0.0]),
        Err(StoreError::InvalidVector { .. })
    ));
    assert!(matches!(
        bad(vec![0.0; 4]),
        Err(StoreError::InvalidVector { .. })
    ));
    // `Existing` without a vector aborts the whole transaction.
    let err = store
        .commit(&space, &[new("/ok.jpg", 1, 4), existing("/x.jpg", 9)])
        .unwrap_err();
    assert!(matches!(err, StoreError::MissingVector { .. }), "{err:?}");
    assert_eq!(
        (store.file_count().unwrap(), space.vector_count().unwrap()),
        (0, 0)
    );
    assert_eq!(store.file("/ok.jpg").unwrap(), None);
    store.verify().unwrap();
}

#[test]
fn two_spaces_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = reopen(&path);
    let a = store.space("a", 4).unwrap();
    let b = store.space("b", 8).unwrap();
    store.set_active("a").unwrap();
    assert!(matches!(
        store.space("a", 8),
        Err(StoreError::SpaceDimension { .. })
    ));
    assert!(matches!(
        store.commit(&b, &[new("/x.jpg", 1, 4)]),
        Err(StoreError::Dimension { .. })
    ));
    let ia = store.commit(&a, &[new("/x.jpg", 1, 4)]).unwrap().vector_ids[0];
    // Until b has its own vector for this content, /x.jpg is not in b.
    assert!(matches!(
        store.commit(&b, &[existing("/x.jpg", 1)]),
        Err(StoreError::MissingVector { .. })
    ));
    assert_eq!(
        (
            a.indexed_path_count().unwrap(),
            b.indexed_path_count().unwrap()
        ),
        (1, 0)
    );
    let ib = store.commit(&b, &[new("/x.jpg", 1, 8)]).unwrap().vector_ids[0];
    assert_eq!(a.vector(ia).unwrap().unwrap().vector.len(), 4);
    assert_eq!(b.vector(ib).unwrap().unwrap().vector.len(), 8);
    assert_eq!(
        (
            a.indexed_path_count().unwrap(),
            b.indexed_path_count().unwrap()
        ),
        (1, 1)
    );
    assert_eq!(store.file_count().unwrap(), 1);
    let infos = store.spaces().unwrap();
    assert_eq!(
        infos
            .iter()
            .map(|s| (s.fingerprint.as_str(), s.dim, s.vectors, s.active))
            .collect::<Vec<_>>(),
        vec![("a", 4, 1, true), ("b", 8, 1, false)]
    );
    // The last path going orphans the content in every space.
    let mut r = store.remove_path("/x.jpg").unwrap().orphaned;
    r.sort();
    assert_eq!(
        r,
        vec![
            Orphan {
                fingerprint: "a".into(),
                id: ia
            },
            Orphan {
                fingerprint: "b".into(),
                id: ib
            }
        ]
    );
    store.commit(&b, &[new("/y.jpg", 2, 8)]).unwrap();
    assert!(matches!(
        store.drop_space("a"),
        Err(StoreError::DropActive(_))
    ));
    assert!(store.drop_space("b").unwrap());
    assert!(!store.drop_space("b").unwrap());
    assert!(matches!(
        store.commit(&b, &[new("/z.jpg", 2, 8)]),
        Err(StoreError::StaleSpace(_))
    ));
    assert!(matches!(
        store.set_active("b"),
        Err(StoreError::UnknownSpace(_))
    ));
    store.verify().unwrap();
    drop((a, b, store));
    let store = reopen(&path);
    assert_eq!(store.spaces().unwrap().len(), 1);
    assert!(
        store
            .inner
            .db
            .tree_names()
            .iter()
            .all(|n| !n.starts_with(b"space/2/"))
    );
    // A new space never reuses a dropped space's number.
    let c = store.space("b", 8).unwrap();
    assert_eq!(c.no, 3);
    assert_eq!(c.vector_count().unwrap(), 0);
    store.verify().unwrap();
}

#[test]
fn vectors_replay_in_id_order() {
    let (_d, store) = open();
    let space = store.space(FP, 4).unwrap();
    let items: Vec<Commit> = (0..20u8)
        .map(|n| new(&format!("/f{n:02}.jpg"), n, 4))
        .collect();
    let ids = store.commit(&space, &items).unwrap().vector_ids;
    assert_eq!(ids, (1..=20).collect::<Vec<u64>>());
    store.remove_path("/f03.jpg").unwrap(); // id 4
    let from: Vec<u64> = space.iter_vectors_from(3).map(|r| r.unwrap().id).collect();
    let want: Vec<u64> = [3].into_iter().chain(5..=20).collect();
    assert_eq!(from, want);
    assert!(!space.has_vector(4).unwrap());
    assert_eq!(space.last_vector_id().unwrap(), 20);
    assert_eq!(space.iter_vectors_from(21).count(), 0);
}

#[test]
fn indexed_count_follows_the_active_space() {
    let (_d, store) = open();
    assert_eq!(store.indexed_file_count().unwrap(), 0);
    let a = store.space("a", 4).unwrap();
    store
        .commit(
            &a,
            &[
                new("/1.jpg", 1, 4),
                existing("/2.jpg", 1),
                new("/3.jpg", 3, 4),
            ],
        )
        .unwrap();
    store.set_active("a").unwrap();
    assert_eq!(store.indexed_file_count().unwrap(), 3);
    let b = store.space("b", 4).unwrap();
    store.commit(&b, &[new("/1.jpg", 1, 4)]).unwrap();
    store.set_active("b").unwrap();
    // /2.jpg shares /1.jpg's content, so it is indexed in b too.
    assert_eq!(store.indexed_file_count().unwrap(), 2);
    store.verify().unwrap();
}

#[test]
fn non_utf8_paths_are_refused_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let p = Path::new(std::ffi::OsStr::from_bytes(b"/photos/caf\xe9.jpg"));
    let err = path_str(p).unwrap_err();
    assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    assert_eq!(
        path_str(Path::new("/photos/café.jpg")).unwrap(),
        "/photos/café.jpg"
    );
}

#[test]
fn content_hash_hex_round_trips() {
    let h = ContentHash::of(b"hello");
    assert_eq!(h.to_hex(), blake3::hash(b"hello").to_hex().as_str());
    assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
    assert_eq!(ContentHash::from_hex("zz"), None);
}

fn segment_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("segments").join("1.vec")
}

/// A crash after a batch's vectors reached the segment but before its sled
/// transaction committed leaves records no id names: the next open cuts
/// them, and the ids they had are given again.
#[test]
fn vectors_written_after_the_last_commit_are_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = reopen(&path);
        let space = store.space(FP, 4).unwrap();
        store
            .commit(&space, &[new("/a.jpg", 1, 4), new("/b.jpg", 2, 4)])
            .unwrap();
    }
    let seg = segment_file(&path);
    let committed = std::fs::metadata(&seg).unwrap().len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 150]).unwrap();
    drop(f);
    let store = reopen(&path);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), committed);
    let space = store.space(FP, 4).unwrap();
    let out = store.commit(&space, &[new("/c.jpg", 3, 4)]).unwrap();
    assert_eq!(out.vector_ids, vec![3]);
    assert_eq!(space.vector(3).unwrap().unwrap().vector, vector(4, 3));
    assert_eq!(space.vector(1).unwrap().unwrap().vector, vector(4, 1));
    store.verify().unwrap();
}

/// A flipped bit in a vector's record is an error naming the file and the
/// id, never a wrong vector; forgetting it leaves the file recorded but not
/// indexed (to be embedded again), and the store consistent.
#[test]
fn a_damaged_vector_is_detected_and_can_be_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = reopen(&path);
        let space = store.space(FP, 8).unwrap();
        store.set_active(FP).unwrap();
        store
            .commit(
                &space,
                &[
                    new("/a.jpg", 1, 8),
                    new("/b.jpg", 2, 8),
                    existing("/b2.jpg", 2),
                ],
            )
            .unwrap();
    }
    let seg = segment_file(&path);
    let mut bytes = std::fs::read(&seg).unwrap();
    // Inside vector 2's f32 payload (64-byte header, 8+32+32+8-byte records).
    bytes[64 + 80 + 50] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();
    let store = reopen(&path);
    let space = store.active_space().unwrap().unwrap();
    let e = space.vector(2).unwrap_err().to_string();
    assert!(
        e.contains("1.vec") && e.contains("vector 2 is damaged"),
        "{e}"
    );
    assert!(store.verify().unwrap_err().to_string().contains("damaged"));
    assert_eq!(store.damaged_vectors(&space).unwrap(), vec![2]);
    assert_eq!(store.forget_vectors(&space, &[2]).unwrap(), 1);
    store.verify().unwrap();
    assert_eq!(store.file_count().unwrap(), 3);
    assert_eq!(space.indexed_path_count().unwrap(), 1);
    assert_eq!(space.vector_id_for_hash(&hash(2)).unwrap(), None);
    // Embedding it again gives it a new id and an intact record.
    let out = store.commit(&space, &[new("/b.jpg", 2, 8)]).unwrap();
    assert_eq!(out.vector_ids, vec![3]);
    assert_eq!(space.indexed_path_count().unwrap(), 3);
    store.verify().unwrap();
}

/// sled holds no vector payload, whatever the dimension: it is in the
/// segment.
#[test]
fn vectors_live_in_the_segment_not_in_sled() {
    let (dir, store) = open();
    let dim = 512;
    let space = store.space(FP, dim).unwrap();
    let items: Vec<Commit> = (0..200u8)
        .map(|n| new(&format!("/p/{n}.jpg"), n, dim))
        .collect();
    store.commit(&space, &items).unwrap();
    // The journal holds a path, a record and an id per file, no payload.
    let journal = super::journal::read(&store.inner.state).journal_bytes;
    assert!(journal < 200 * 200, "{journal} bytes in the journal");
    let seg = std::fs::metadata(segment_file(&dir.path().join("db")))
        .unwrap()
        .len();
    assert_eq!(seg, 64 + 200 * (8 + 32 + 4 * dim as u64 + 8));
    assert!(store.segment_bytes() >= 200 * 4 * dim as u64);
    for n in [0u8, 99, 199] {
        let id = space.vector_id_for_hash(&hash(n)).unwrap().unwrap();
        assert_eq!(space.vector(id).unwrap().unwrap().vector, vector(dim, n));
    }
}

/// Dropping a space removes its segment; a new space never reads an old
/// space's file, even one left behind by a crash.
#[test]
fn a_dropped_space_takes_its_segment_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = reopen(&path);
    let a = store.space("a", 4).unwrap();
    let b = store.space("b", 4).unwrap();
    store.set_active("a").unwrap();
    store.commit(&b, &[new("/x.jpg", 1, 4)]).unwrap();
    let b_seg = path.join("segments").join("2.vec");
    assert!(b_seg.exists());
    assert!(store.drop_space("b").unwrap());
    assert!(!b_seg.exists());
    drop((a, b, store));
    // A segment of a space sled does not know (a creation cut short).
    std::fs::write(path.join("segments").join("9.vec"), b"junk").unwrap();
    let store = reopen(&path);
    assert!(!path.join("segments").join("9.vec").exists());
    let c = store.space("c", 8).unwrap();
    store.commit(&c, &[new("/y.jpg", 2, 8)]).unwrap();
    store.verify().unwrap();
}

fn copy_v1_fixture(to: &std::path::Path) {
    let from =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1/data/store");
    std::fs::create_dir_all(to).unwrap();
    for f in ["conf", "db"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// A migration cut short after its copy pass and halfway through rewriting
/// sled's values (schema still 1, values of both kinds) resumes at the next
/// open and ends with the same vectors as an uninterrupted one.
#[test]
fn an_interrupted_migration_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (done, cut) = (tmp.path().join("done"), tmp.path().join("cut"));
    copy_v1_fixture(&done);
    copy_v1_fixture(&cut);
    let want: Vec<StoredVector> = {
        let store = reopen(&done);
        let space = store.active_space().unwrap().unwrap();
        space.iter_vectors_from(0).map(|v| v.unwrap()).collect()
    };
    assert_eq!(want.len(), 6);
    // The state a crash leaves: the segment written and synced, half of the
    // values already rewritten, the schema not yet bumped.
    std::fs::create_dir_all(cut.join("segments")).unwrap();
    std::fs::copy(done.join("segments/1.vec"), cut.join("segments/1.vec")).unwrap();
    {
        let db = sled::open(&cut).unwrap();
        let vectors = db.open_tree("space/1/vectors").unwrap();
        for kv in vectors.iter().step_by(2) {
            let (k, v) = kv.unwrap();
            assert!(v.len() > 32, "the fixture holds schema 1 values");
            vectors.insert(k, &v[..32]).unwrap();
        }
        db.flush().unwrap();
    }
    let store = reopen(&cut);
    store.verify().unwrap();
    let space = store.active_space().unwrap().unwrap();
    let got: Vec<StoredVector> = space.iter_vectors_from(0).map(|v| v.unwrap()).collect();
    assert_eq!(got, want);
}

/// Running out of space is told apart from other I/O errors, whichever part
/// of the store met it: the ingest waits and retries only those.
#[test]
fn a_full_disk_is_recognised_as_such() {
    let (_d, store) = open();
    assert!(store.free_bytes().unwrap() > 0);
    let io = |kind| StoreError::Io {
        path: "/x".into(),
        what: "writing",
        source: std::io::Error::from(kind),
    };
    assert!(io(std::io::ErrorKind::StorageFull).is_disk_full());
    assert!(io(std::io::ErrorKind::QuotaExceeded).is_disk_full());
    assert!(!io(std::io::ErrorKind::PermissionDenied).is_disk_full());
    let seg = StoreError::Segment(SegmentError::Io {
        path: "/x/1.vec".into(),
        what: "writing vectors",
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    });
    assert!(seg.is_disk_full());
    assert!(
        StoreError::Db(sled::Error::Io(std::io::Error::from_raw_os_error(
            libc::ENOSPC
        )))
        .is_disk_full()
    );
    assert!(!StoreError::Corrupt("x".into()).is_disk_full());
}

/// A search reads its candidates from the segment alone: a live vector as
/// `vector` reads it, an id never assigned as none, a removed one as its old
/// content (which no path holds any more) while a live record shares its
/// block, and as none once its blocks were given back.
#[test]
fn candidates_are_read_from_the_segment_alone() {
    let (_d, store) = open();
    let dim = 512;
    let space = store.space(FP, dim).unwrap();
    let items: Vec<Commit> = (0..12u8)
        .map(|n| new(&format!("/p/{n}.jpg"), n, dim))
        .collect();
    let ids = store.commit(&space, &items).unwrap().vector_ids;
    for &id in &ids {
        assert_eq!(space.candidate(id).unwrap(), space.vector(id).unwrap());
    }
    assert_eq!(space.candidate(0).unwrap(), None);
    assert_eq!(space.candidate(ids[11] + 1).unwrap(), None);

    // One record (2,096 bytes) between live ones keeps its blocks.
    store.remove_path("/p/1.jpg").unwrap();
    assert_eq!(space.vector(ids[1]).unwrap(), None);
    let stale = space.candidate(ids[1]).unwrap().expect("blocks kept");
    assert_eq!(stale.hash, hash(1));
    assert!(space.paths_for_hash(&stale.hash).unwrap().is_empty());

    // A run of dead records covers whole blocks, which are given back.
    let run: Vec<String> = (4..10).map(|n| format!("/p/{n}.jpg")).collect();
    store.remove_paths(&run).unwrap();
    let gone = (4..10)
        .filter(|&n| space.candidate(ids[n]).unwrap().is_none())
        .count();
    if store.segment_bytes() < 64 + 12 * 2096 {
        assert!(gone > 0, "blocks were punched, yet every record read back");
    }
    store.verify().unwrap();
}
