//! The change feed end to end on real folders, with real inotify events.

use super::scans::ScanThread;
use super::*;
use crate::ingest::feed::ChangeRx;
use crate::shutdown::Trigger;
use std::fs::File;
use std::io::Write as _;
use tokio::time::timeout;

/// How long any expected change may take on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(10);

fn config(root: &Path) -> WatchConfig {
    WatchConfig {
        roots: vec![root.to_path_buf()],
        debounce: Duration::from_millis(100),
        stable_for: Duration::from_millis(300),
        reconcile_every: None,
        poll_roots_every: Duration::from_millis(200),
        ..WatchConfig::default()
    }
}

struct Feed {
    rx: ChangeRx,
    /// Everything received so far, for assertions about what did *not* happen.
    log: Vec<Change>,
    stop: Trigger,
    watcher: Watcher,
}

fn start(cfg: WatchConfig, limits: Limits) -> Feed {
    // `RUST_LOG=dualsight=debug cargo test ...` shows the watcher's reasoning.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (tx, rx) = crate::ingest::feed::channel(64);
    let (stop, stop_rx) = crate::shutdown::channel();
    let watcher = Watcher::spawn_with(cfg, tx, stop_rx, limits).unwrap();
    Feed {
        rx,
        log: Vec::new(),
        stop,
        watcher,
    }
}

impl Feed {
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&Change) -> bool) -> Change {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match timeout(deadline - Instant::now(), self.rx.recv()).await {
                Ok(Some((change, _))) => {
                    self.log.push(change.clone());
                    if pred(&change) {
                        return change;
                    }
                }
                Ok(None) => panic!("feed ended while waiting for {what}; got {:#?}", self.log),
                Err(_) => panic!("timed out waiting for {what}; got {:?}", self.log),
            }
        }
    }

    /// Waits for the initial scan of a root, so its watches are in place.
    async fn scanned(&mut self, root: &Path) -> Vec<PathBuf> {
        match self
            .wait_for(
                "Scanned",
                |c| matches!(c, Change::Scanned { root: r, .. } if r == root),
            )
            .await
        {
            Change::Scanned { seen, .. } => seen,
            _ => unreachable!(),
        }
    }

    /// The first `Upsert` of `path`, received earlier (while waiting for something else)
    /// or now.
    async fn upsert(&mut self, path: &Path) -> (u64, i64) {
        for change in &self.log {
            if let Change::Upsert {
                path: p,
                size,
                mtime_ns,
            } = change
                && p == path
            {
                return (*size, *mtime_ns);
            }
        }
        let what = format!("Upsert {}", path.display());
        match self
            .wait_for(
                &what,
                |c| matches!(c, Change::Upsert { path: p, .. } if p == path),
            )
            .await
        {
            Change::Upsert { size, mtime_ns, .. } => (size, mtime_ns),
            _ => unreachable!(),
        }
    }

    async fn remove(&mut self, path: &Path) {
        let what = format!("Remove {}", path.display());
        self.wait_for(&what, |c| {
            *c == Change::Remove {
                path: path.to_path_buf(),
            }
        })
        .await;
    }

    /// Receives for `d` more, then counts the upserts of `path` in the whole log.
    async fn upserts_of(&mut self, path: &Path, d: Duration) -> usize {
        let end = Instant::now() + d;
        while let Ok(Some((change, _))) = timeout(end - Instant::now(), self.rx.recv()).await {
            self.log.push(change);
        }
        self.log
            .iter()
            .filter(|c| matches!(c, Change::Upsert { path: p, .. } if p == path))
            .count()
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn write_old(path: &Path) {
    write(path, b"old photo");
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_scan_reports_images_and_skips_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("photos");
    write_old(&root.join("old.jpg"));
    write_old(&root.join("sub/OLD.PNG"));
    write(&root.join("fresh.webp"), b"just written");
    for skipped in [
        "notes.txt",
        ".hidden.jpg",
        ".trash/x.jpg",
        "@eaDir/old.jpg/SYNOPHOTO_THUMB_XL.jpg",
        "sub/.thumbnails/t.jpg",
        "private/p.jpg",
    ] {
        write_old(&root.join(skipped));
    }
    fs::create_dir_all(root.join("sub/deep")).unwrap();
    std::os::unix::fs::symlink(&root, root.join("sub/deep/loop")).unwrap();
    write_old(&root.join("locked/l.jpg"));
    set_mode(&root.join("locked"), 0o000);
    // chmod does not deny root (tests often run as root in containers): then the folder is
    // readable and its file must be reported; otherwise it is skipped and the scan goes on.
    let locked_readable = fs::read_dir(root.join("locked")).is_ok();

    let mut cfg = config(&root);
    cfg.exclude.push("private".into());
    let mut feed = start(cfg, Limits::default());
    assert_eq!(
        feed.wait_for("RootOnline", |_| true).await,
        Change::RootOnline { root: root.clone() }
    );
    let seen = feed.scanned(&root).await;
    set_mode(&root.join("locked"), 0o755);

    let mut expected = vec![
        root.join("fresh.webp"),
        root.join("old.jpg"),
        root.join("sub/OLD.PNG"),
    ];
    if locked_readable {
        eprintln!("running with permission to read chmod 000 folders (root): skip check");
        expected.push(root.join("locked/l.jpg"));
    }
    expected.sort();
    assert_eq!(seen, expected);
    // Old files are reported at once (before Scanned), the fresh one once it proved stable.
    let before: Vec<_> = feed
        .log
        .iter()
        .filter(|c| matches!(c, Change::Upsert { .. }))
        .collect();
    assert!(before.iter().any(
        |c| matches!(c, Change::Upsert { path, size: 9, .. } if *path == root.join("old.jpg"))
    ));
    assert!(
        before
            .iter()
            .any(|c| matches!(c, Change::Upsert { path, .. } if *path == root.join("sub/OLD.PNG")))
    );
    assert_eq!(feed.upsert(&root.join("fresh.webp")).await.0, 12);
    for path in &expected {
        assert_eq!(
            feed.upserts_of(path, Duration::ZERO).await,
            1,
            "{}",
            path.display()
        );
    }
    assert_eq!(
        feed.upserts_of(&root.join("fresh.webp"), Duration::from_millis(600))
            .await,
        1
    );
    let upserted: Vec<_> = feed
        .log
        .iter()
        .filter_map(|c| match c {
            Change::Upsert { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(upserted.len(), expected.len(), "{upserted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_upserted_once_after_stability() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut feed = start(config(&root), Limits::default());
    assert!(feed.scanned(&root).await.is_empty());

    let path = root.join("new.jpg");
    let written = Instant::now();
    write(&path, b"a new photo");
    write(&root.join("new.txt"), b"not a photo");
    let (size, mtime_ns) = feed.upsert(&path).await;
    assert!(
        written.elapsed() >= Duration::from_millis(400),
        "debounce + stable_for"
    );
    assert_eq!(size, 11);
    assert_eq!(mtime_ns, scan::mtime_ns(&fs::metadata(&path).unwrap()));
    assert_eq!(feed.upserts_of(&path, Duration::from_secs(1)).await, 1);
    assert!(
        !feed
            .log
            .iter()
            .any(|c| matches!(c, Change::Upsert { path, .. } if path.ends_with("new.txt")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_written_in_chunks_is_upserted_once_when_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut feed = start(config(&root), Limits::default());
    feed.scanned(&root).await;

    let path = root.join("slow.jpg");
    let mut file = File::create(&path).unwrap();
    // Six chunks over ~1.5 s; each pause is longer than debounce, shorter than stable_for.
    for _ in 0..6 {
        file.write_all(&[7u8; 1000]).unwrap();
        file.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(file);
    let finished = Instant::now();
    let (size, _) = feed.upsert(&path).await;
    assert!(Instant::now() >= finished);
    assert_eq!(size, 6000, "reported before the write was complete");
    assert_eq!(feed.upserts_of(&path, Duration::from_secs(1)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_rename() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    write_old(&root.join("a.jpg"));
    write_old(&root.join("b.jpg"));
    let mut feed = start(config(&root), Limits::default());
    assert_eq!(feed.scanned(&root).await.len(), 2);

    fs::remove_file(root.join("a.jpg")).unwrap();
    feed.remove(&root.join("a.jpg")).await;

    fs::rename(root.join("b.jpg"), root.join("c.jpg")).unwrap();
    feed.remove(&root.join("b.jpg")).await;
    assert_eq!(feed.upsert(&root.join("c.jpg")).await.0, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_moved_in_is_walked_and_moved_out_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let outside = tmp.path().join("outside");
    write_old(&outside.join("trip/1.jpg"));
    write(&outside.join("trip/day2/2.png"), b"fresh");
    write_old(&outside.join("trip/.hidden/3.jpg"));
    let mut feed = start(config(&root), Limits::default());
    feed.scanned(&root).await;

    fs::rename(outside.join("trip"), root.join("trip")).unwrap();
    feed.upsert(&root.join("trip/1.jpg")).await;
    feed.upsert(&root.join("trip/day2/2.png")).await;
    // The moved-in folders are watched now.
    write(&root.join("trip/day2/4.jpg"), b"later");
    feed.upsert(&root.join("trip/day2/4.jpg")).await;

    fs::rename(root.join("trip"), outside.join("trip-again")).unwrap();
    feed.remove(&root.join("trip")).await;
    // ... and no longer watched: changes out there are not ours.
    write(&outside.join("trip-again/day2/5.jpg"), b"elsewhere");
    assert_eq!(
        feed.upserts_of(&root.join("trip/day2/5.jpg"), Duration::from_secs(1))
            .await,
        0
    );
    assert!(
        !feed
            .log
            .iter()
            .any(|c| matches!(c, Change::Upsert { path, .. } if path.ends_with("3.jpg")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_offline_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("nas");
    let mut feed = start(config(&root), Limits::default());
    assert_eq!(
        feed.wait_for("RootOffline", |_| true).await,
        Change::RootOffline { root: root.clone() }
    );

    write_old(&root.join("a.jpg"));
    feed.wait_for("RootOnline", |c| {
        *c == Change::RootOnline { root: root.clone() }
    })
    .await;
    assert_eq!(feed.scanned(&root).await, vec![root.join("a.jpg")]);

    // Moved away (as good as unmounted for us): offline, and its files are not removed.
    fs::rename(&root, tmp.path().join("nas-away")).unwrap();
    feed.wait_for("RootOffline", |c| {
        *c == Change::RootOffline { root: root.clone() }
    })
    .await;
    assert!(
        !feed.log.iter().any(|c| matches!(c, Change::Remove { .. })),
        "{:#?}",
        feed.log
    );

    write_old(&root.join("b.jpg"));
    feed.wait_for("RootOnline", |c| {
        *c == Change::RootOnline { root: root.clone() }
    })
    .await;
    assert_eq!(feed.scanned(&root).await, vec![root.join("b.jpg")]);

    // Deleted outright: offline too; the root itself is never a Remove.
    fs::remove_dir_all(&root).unwrap();
    feed.wait_for("RootOffline", |c| {
        *c == Change::RootOffline { root: root.clone() }
    })
    .await;
    assert!(
        !feed
            .log
            .iter()
            .any(|c| *c == Change::Remove { path: root.clone() })
    );
    // Events from the old folder's watches must not leak in after it is gone.
    write(&tmp.path().join("nas-away/c.jpg"), b"not ours");
    assert_eq!(
        feed.upserts_of(&root.join("c.jpg"), Duration::from_millis(700))
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_tick_rescans() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    write_old(&root.join("a.jpg"));
    let mut cfg = config(&root);
    cfg.reconcile_every = Some(Duration::from_millis(700));
    let mut feed = start(cfg, Limits::default());
    assert_eq!(feed.scanned(&root).await, vec![root.join("a.jpg")]);
    assert_eq!(feed.scanned(&root).await, vec![root.join("a.jpg")]);
    assert_eq!(
        feed.upserts_of(&root.join("a.jpg"), Duration::ZERO).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_event_channel_falls_back_to_a_rescan() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let limits = Limits {
        raw_channel: 1,
        ..Limits::default()
    };
    let mut feed = start(config(&root), limits);
    feed.scanned(&root).await;
    let paths: Vec<_> = (0..40).map(|i| root.join(format!("{i}.jpg"))).collect();
    for p in &paths {
        write(p, b"burst");
    }
    let seen = feed.scanned(&root).await;
    assert_eq!(
        seen.len(),
        paths.len(),
        "the rescan after the overflow sees every file"
    );
    for p in &paths {
        feed.upsert(p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_pending_map_falls_back_to_a_rescan() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let limits = Limits {
        max_pending: 3,
        ..Limits::default()
    };
    let mut feed = start(config(&root), limits);
    feed.scanned(&root).await;
    let paths: Vec<_> = (0..12).map(|i| root.join(format!("{i}.jpg"))).collect();
    for p in &paths {
        write(p, b"burst");
    }
    for p in &paths {
        feed.upsert(p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_and_closes_the_feed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut feed = start(config(&root), Limits::default());
    feed.scanned(&root).await;
    feed.stop.fire();
    timeout(Duration::from_secs(2), feed.watcher.join())
        .await
        .expect("stops promptly");
    assert_eq!(
        timeout(Duration::from_secs(1), feed.rx.recv())
            .await
            .unwrap()
            .map(|(change, _)| change),
        None
    );
}

#[test]
fn spawn_rejects_bad_config_and_no_runtime() {
    let (tx, _rx) = crate::ingest::feed::channel(1);
    let (_stop, stop_rx) = crate::shutdown::channel();
    let cfg = config(Path::new("/tmp/x"));
    let err = Watcher::spawn(cfg.clone(), tx.clone(), stop_rx.clone()).unwrap_err();
    assert!(matches!(err, IngestError::NoRuntime));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let overlapping = WatchConfig {
        roots: vec!["/tmp/x".into(), "/tmp/x/y".into()],
        ..cfg.clone()
    };
    let err = Watcher::spawn(overlapping, tx.clone(), stop_rx.clone()).unwrap_err();
    assert_eq!(err.to_string(), "/tmp/x/y: overlaps root /tmp/x");
    let zero_poll = WatchConfig {
        poll_roots_every: Duration::ZERO,
        ..cfg
    };
    assert!(Watcher::spawn(zero_poll, tx, stop_rx).is_err());
}

#[test]
fn scan_marks_keep_seen_honest() {
    let root = Path::new("/r");
    let mut scan = Scan {
        root: 0,
        kind: ScanKind::Reconcile,
        started: Instant::now(),
        cancel: Arc::new(AtomicBool::new(false)),
        seen: Vec::new(),
        marks: HashMap::new(),
        any_gone: false,
        lossy: false,
    };
    assert!(!scan.says_gone(Path::new("/r/a/b.jpg"), root));
    scan.mark(Path::new("/r/a"), false, 10);
    scan.mark(Path::new("/r/a/new.jpg"), true, 10);
    assert!(scan.says_gone(Path::new("/r/a/b.jpg"), root));
    assert!(!scan.says_gone(Path::new("/r/a/new.jpg"), root));
    assert!(!scan.says_gone(Path::new("/r/c.jpg"), root));
    scan.mark(Path::new("/r/1"), true, 3);
    scan.mark(Path::new("/r/2"), true, 3);
    assert!(
        scan.lossy,
        "bounded: beyond the limit the scan is redone instead"
    );
}

#[test]
fn root_state_follows_probes_and_mount_points() {
    let (mut engine, _raw, _scans) =
        Coordinator::new(config(Path::new("/nowhere/nas")), Limits::default()).unwrap();
    let root = PathBuf::from("/nowhere/nas");
    let up = |ino, mount| Probe::Up {
        id: Identity { dev: ino, ino },
        mount,
    };
    let mut step = |probe: Probe| {
        engine.apply_probe(0, probe);
        engine.out.drain(..).collect::<Vec<_>>()
    };
    let online = Change::RootOnline { root: root.clone() };
    let offline = Change::RootOffline { root: root.clone() };

    assert_eq!(step(up(1, true)), vec![online.clone()]);
    assert_eq!(step(up(1, true)), vec![]);
    // Unmounted: the bare mount point is a folder too, but not the root we indexed.
    assert_eq!(step(up(2, false)), vec![offline.clone()]);
    assert_eq!(step(up(2, false)), vec![]);
    assert_eq!(step(Probe::Down("gone".into())), vec![]);
    assert_eq!(step(up(3, true)), vec![online.clone()]);
    // A different file system mounted in its place: its own scan, not a mix.
    assert_eq!(step(up(4, true)), vec![offline.clone(), online.clone()]);
    assert_eq!(step(Probe::Down("gone".into())), vec![offline]);
    assert!(engine.jobs.is_empty() && engine.roots[0].watcher.is_none());
}

#[test]
fn full_scan_of_another_folder_at_the_root_path_is_incomplete() {
    let tmp = tempfile::tempdir().unwrap();
    write_old(&tmp.path().join("a.jpg"));
    let real = scan::identity(tmp.path()).unwrap();
    let elsewhere = Identity {
        dev: real.dev,
        ino: real.ino + 1,
    };
    for (expect, complete, files) in [(real, true, 1), (elsewhere, false, 0)] {
        let (tx, mut rx) = mpsc::channel(8);
        ScanThread {
            id: 7,
            root: tmp.path().to_path_buf(),
            dir: tmp.path().to_path_buf(),
            full: true,
            expect: Some(expect),
            filter: Arc::new(Filter::new(&[], &["jpg".into()]).unwrap()),
            watcher: None,
            per_dir: true,
            cancel: Arc::new(AtomicBool::new(false)),
            tx,
        }
        .run();
        let mut got = 0;
        loop {
            match rx.try_recv().unwrap() {
                ScanMsg::File { .. } => got += 1,
                ScanMsg::Done {
                    scan, complete: c, ..
                } => {
                    assert_eq!((scan, c, got), (7, complete, files));
                    break;
                }
            }
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}
