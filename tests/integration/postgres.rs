//! The PostgreSQL store end to end: real daemons against a real PostgreSQL
//! with pgvector (`pg_server.rs`), over real gRPC.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dualsight::server::proto;

use crate::cli::{dualsight, run_err, run_ok};
use crate::daemon::*;
use crate::pg_server::PgServer;
use crate::util::*;

/// A daemon (vit-bert) on the PostgreSQL store at `url` as `node`.
fn node_daemon(url: &str, node: &str) -> Daemon {
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    d.args = pg_args(url, node);
    d
}

fn pg_args(url: &str, node: &str) -> Vec<String> {
    ["--store", "postgres", "--database-url", url, "--node", node]
        .map(String::from)
        .to_vec()
}

/// File `i` of a synthetic library at `path`: content `i`, vector `v`.
fn numbered(path: String, i: usize, v: Vec<f32>) -> dualsight::store::Commit {
    use dualsight::store::{Commit, ContentHash, Embedding, FileRecord};
    Commit {
        path,
        record: FileRecord {
            size: 1,
            mtime_ns: 1,
            hash: ContentHash::of(&(i as u64).to_le_bytes()),
            indexed_at_ms: 1,
            meta: Default::default(),
        },
        embedding: Embedding::New(v),
    }
}

/// `rows` by cosine to `q` (each row's vector from `vector`), best first:
/// the exact answer a search is compared with.
fn brute_force(
    q: &[f32],
    rows: impl IntoIterator<Item = usize>,
    vector: impl Fn(usize) -> Vec<f32>,
) -> Vec<(f32, usize)> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut ranked: Vec<(f32, usize)> = rows
        .into_iter()
        .map(|i| {
            let v = vector(i);
            let dot: f32 = q.iter().zip(&v).map(|(x, y)| x * y).sum();
            (dot / (norm(q) * norm(&v)), i)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked
}

/// The store's options for a test's database: node `node`, selective
/// filters below 1000 files, the `[index]` and `[store]` defaults otherwise.
fn pg_options(url: String, node: &str) -> dualsight::store::pg::PgOptions {
    dualsight::store::pg::PgOptions {
        url,
        read_urls: Vec::new(),
        node: node.into(),
        max_lag: Duration::from_secs(5),
        data_dir: std::env::temp_dir(),
        hnsw: Default::default(),
        exact_below: 1000,
        vector_index: None,
        ivfflat_probes: None,
        ivf_first: dualsight::store::pg::IVF_FIRST,
    }
}

/// A PostgreSQL space's two search halves, recording how many candidates
/// each fetch asked the index for (each one a row read with its vector).
struct Recording<'a> {
    inner: dualsight::engine::pg_source::PgSource<'a>,
    asked: std::sync::Mutex<Vec<usize>>,
}

mod recording {
    use dualsight::engine::Found;
    use dualsight::engine::pg_source::PgSource;
    use dualsight::engine::search::{Candidates, Exact, Result, VectorSource};
    use dualsight::store::ContentHash;
    use dualsight::store::pg::PgSpace;

    use super::Recording;

    impl<'a> Recording<'a> {
        pub fn new(space: &'a PgSpace) -> Self {
            Self {
                inner: PgSource::new(space, &Default::default()),
                asked: Default::default(),
            }
        }
        pub fn asked(&self) -> Vec<usize> {
            std::mem::take(&mut *self.asked.lock().unwrap())
        }
    }

    impl Candidates for Recording<'_> {
        fn live(&self) -> usize {
            self.inner.live()
        }
        fn candidates(&self, query: &[f32], n: usize) -> Result<Vec<u64>> {
            self.asked.lock().unwrap().push(n);
            self.inner.candidates(query, n)
        }
        fn ranks_exactly(&self) -> bool {
            self.inner.ranks_exactly()
        }
        fn fetches_nest(&self, n: usize) -> Result<bool> {
            self.inner.fetches_nest(n)
        }
    }

    impl VectorSource for Recording<'_> {
        type Key = ContentHash;
        type Item = Found;
        fn vector(&self, id: u64) -> Result<Option<Exact<'_, ContentHash>>> {
            self.inner.vector(id)
        }
        fn items(&self, key: &ContentHash) -> Result<Vec<Found>> {
            self.inner.items(key)
        }
    }
}

/// A first page of 10, unfiltered, asks the index for 14 rows, not its
/// block's 104, in one statement that also reads their files, and is the
/// block's first 10; pages of 10 are one long page.
/// The planner reads the space the same way for either fetch.
fn a_first_page_reads_only_its_own_rows(space: &dualsight::store::pg::PgSpace, q: &[f32]) {
    use dualsight::engine::search::{PAGE_BLOCK, Query, search, search_page};
    use dualsight::store::pg::SearchFilters;
    let all = SearchFilters::default();
    assert_eq!(
        candidate_scan(&space.nearest_plan(q, 14, &all).unwrap()),
        candidate_scan(&space.nearest_plan(q, PAGE_BLOCK + 4, &all).unwrap())
    );
    let query = Query {
        vector: q,
        limit: 0,
        min_score: None,
        accept: None,
    };
    let source = Recording::new(space);
    let page = search_page(&source, &source, &query, 0, 10).unwrap();
    assert_eq!(source.asked(), [14]);
    // The hits' files came in the statement that found them.
    assert_eq!(page.len(), 10);
    assert_eq!(source.inner.file_reads(), 0);
    let block = search(
        &source,
        &source,
        &Query {
            limit: PAGE_BLOCK,
            ..query
        },
    )
    .unwrap();
    assert_eq!(page[..], block[..10]);
    let mut paged = Vec::new();
    for offset in (0..120).step_by(10) {
        paged.extend(search_page(&source, &source, &query, offset, 10).unwrap());
    }
    let long = search_page(&source, &source, &query, 0, 120).unwrap();
    assert_eq!(paged, long);
}

/// The part of a search's plan that finds its candidates (the `Limit` and
/// what is under it), without the lookup of their files beside it, whose
/// plan may follow the rows it expects.
fn candidate_scan(plan: &str) -> String {
    let lines: Vec<&str> = plan.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let limit = lines
        .iter()
        .position(|l| l.trim_start().starts_with("->  Limit"))
        .unwrap_or_else(|| panic!("no Limit in the plan:\n{plan}"));
    let depth = indent(lines[limit]);
    let end = (limit + 1..lines.len())
        .find(|&i| indent(lines[i]) <= depth)
        .unwrap_or(lines.len());
    lines[limit..end].join("\n")
}

/// `(node, file name)` of each hit.
fn located(hits: &[proto::Hit]) -> BTreeSet<(String, String)> {
    hits.iter()
        .map(|h| {
            let name = Path::new(&h.path).file_name().unwrap();
            (h.node.clone(), name.to_string_lossy().into_owned())
        })
        .collect()
}

/// The table of the database's only vector space.
fn vector_table(pg: &PgServer, db: &str) -> String {
    format!("vectors_{}", pg.psql(db, "SELECT id FROM spaces"))
}

fn copy_fashion(n: usize, to: &Path) -> Vec<PathBuf> {
    fashion_photos()
        .into_iter()
        .take(n)
        .enumerate()
        .map(|(i, src)| {
            let dest = to.join(format!("f{i:03}.png"));
            std::fs::copy(&src, &dest).unwrap();
            dest
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_daemons_on_two_folders_answer_over_both() {
    let pg = PgServer::start();
    pg.create_db("library");
    // trust authentication ignores the password: it is here to be kept out
    // of logs and Status.
    let url = format!(
        "postgres://postgres:hunter2@/library?host={}",
        pg.socket_dir.display()
    );
    let mut north = node_daemon(&url, "north");
    // The other node is set up the other ways: its database from the
    // environment, its name from the config file.
    let mut south = Daemon::prepare(model_dir("vit-bert"));
    south.args = ["--store", "postgres"].map(String::from).to_vec();
    south.env = vec![("DUALSIGHT_DATABASE_URL".into(), url.clone())];
    south.config_head = "node = \"south\"\n".into();
    // One node asks for IVFFlat: too few photos for its lists, so searches
    // scan exactly (or walk the HNSW index the other node made), the same
    // hits either way.
    south
        .args
        .extend(["--vector-index", "ivfflat"].map(String::from));
    for p in ["chelsea.png", "coffee.webp"] {
        copy_photo(p, &north.photos);
    }
    for p in ["rocket.jpg", "camera.png"] {
        copy_photo(p, &south.photos);
    }
    north.spawn();
    south.spawn();
    let mut cn = north.client().await;
    let mut cs = south.client().await;
    let done = |s: &proto::StatusResponse| s.indexed_files == 2 && s.pending_files == 0;
    let sn = wait_for(&north, &mut cn, "north indexed", done).await;
    let ss = wait_for(&south, &mut cs, "south indexed", done).await;

    let all: BTreeSet<(String, String)> = [
        ("north", "chelsea.png"),
        ("north", "coffee.webp"),
        ("south", "rocket.jpg"),
        ("south", "camera.png"),
    ]
    .map(|(n, f)| (n.to_owned(), f.to_owned()))
    .into();
    for c in [&mut cn, &mut cs] {
        let hits = search(c, "a photo", 10).await;
        assert_eq!(located(&hits), all, "{hits:?}");
    }
    // Image search from another node's daemon finds the same photo first.
    let cat = north.photos.join("chelsea.png");
    let hits = search_by_path(&mut cn, &cat, 4).await;
    assert_eq!(hits[0].path, cat.to_string_lossy());
    assert_eq!(hits[0].node, "north");
    assert!(hits[0].score > 0.999, "{hits:?}");

    assert_eq!(sn.node, "north");
    assert_eq!(sn.store, "postgres");
    assert_eq!(
        sn.database,
        format!("postgres@{}:5432/library", pg.socket_dir.display())
    );
    for (d, s) in [(&north, &sn), (&south, &ss)] {
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!d.log().contains("hunter2"), "{}", d.log());
    }

    // A node that stops leaves its photos searchable from the others.
    assert!(south.signal("TERM").success(), "{}", south.log());
    let hits = search(&mut cn, "a photo", 10).await;
    assert_eq!(located(&hits), all);

    // Restarted, its scan finds both files unchanged in the database (looked
    // up together) and embeds nothing; a file added meanwhile is embedded.
    copy_photo("astronaut_cmyk.jpg", &south.photos);
    south.spawn();
    let mut cs = south.client().await;
    let s = wait_for(&south, &mut cs, "south again", |s| {
        s.ready && s.indexed_files == 3 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.embedded_images, 1, "{}", south.log());
    assert_eq!(s.node, "south");

    // A node whose root goes away (unmounted, as far as it can tell)
    // reports it offline and keeps its files: they stay found, from either
    // node, past the removal grace; back, nothing is embedded again.
    let away = north.photos.with_extension("away");
    std::fs::rename(&north.photos, &away).unwrap();
    wait_for(&north, &mut cn, "north's root offline", |s| {
        s.roots.iter().any(|r| !r.online)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = status(&mut cn).await;
    assert_eq!(s.indexed_files, 2, "an offline root lost its files: {s:?}");
    for c in [&mut cn, &mut cs] {
        assert_eq!(search(c, "a photo", 10).await.len(), 5);
    }
    std::fs::rename(&away, &north.photos).unwrap();
    // Watched again: a photo added now is the only one embedded.
    wait_for(&north, &mut cn, "north's root back", |s| {
        s.roots.iter().all(|r| r.online)
    })
    .await;
    copy_photo("coffee_red_16bit.png", &north.photos);
    let s = wait_for(&north, &mut cn, "north's new photo", |s| {
        s.indexed_files == 3 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.embedded_images, 3, "{s:?}");

    // An index kind pgvector does not have is refused by name.
    let err = run_err(
        dualsight()
            .arg("serve")
            .arg("--model")
            .arg(model_dir("vit-bert"))
            .arg("--watch")
            .arg(&south.photos)
            .args(pg_args(&url, "west"))
            .args(["--vector-index", "ivf"]),
    );
    assert!(
        err.contains("store.vector_index") && err.contains("\"ivfflat\""),
        "{err}"
    );
}

/// Two nodes over the same folder, started together: every path is two
/// files (one per node), every content one vector, and removing a file on
/// both removes its vector once.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_files_on_two_nodes_share_one_vector() {
    let pg = PgServer::start();
    pg.create_db("shared");
    let url = pg.url("shared");
    let a = node_daemon(&url, "a");
    let mut b = node_daemon(&url, "b");
    b.photos = a.photos.clone();
    let mut a = a;
    let files = copy_fashion(40, &a.photos);
    std::fs::copy(&files[0], a.photos.join("copy.png")).unwrap();
    a.spawn();
    b.spawn();
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let done =
        |n: u64| move |s: &proto::StatusResponse| s.indexed_files == n && s.pending_files == 0;
    wait_for(&a, &mut ca, "a indexed", done(41)).await;
    wait_for(&b, &mut cb, "b indexed", done(41)).await;

    let table = vector_table(&pg, "shared");
    assert_eq!(
        pg.psql("shared", &format!("SELECT count(*) FROM {table}")),
        "40"
    );
    assert_eq!(
        pg.psql(
            "shared",
            "SELECT count(*), count(DISTINCT hash), count(DISTINCT node) FROM files"
        ),
        "82|40|2"
    );
    let hits = search(&mut ca, "a shoe", 100).await;
    assert_eq!(hits.len(), 82);
    let mut by_path: BTreeMap<&str, Vec<(&str, f32)>> = BTreeMap::new();
    for h in &hits {
        by_path.entry(&h.path).or_default().push((&h.node, h.score));
    }
    for (path, on) in &by_path {
        assert_eq!(on.len(), 2, "{path}: {on:?}");
        assert_eq!(on[0].1, on[1].1, "{path}: {on:?}");
        let nodes: BTreeSet<&str> = on.iter().map(|(n, _)| *n).collect();
        assert_eq!(nodes, BTreeSet::from(["a", "b"]));
    }

    // Gone from the folder: each node forgets its file; the vector goes
    // with the last one, and the duplicate's vector stays for its copy.
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::remove_file(&files[0]).unwrap();
    wait_for(&a, &mut ca, "a forgot", done(39)).await;
    wait_for(&b, &mut cb, "b forgot", done(39)).await;
    assert_eq!(
        pg.psql("shared", &format!("SELECT count(*) FROM {table}")),
        "39"
    );
    assert_eq!(
        pg.psql(
            "shared",
            &format!("SELECT count(*) FROM {table} v WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.hash = v.hash)")
        ),
        "0",
        "an orphaned vector"
    );
    // Never a deadlock (which `transact` would retry unseen): the server's
    // own count, flushed as the daemons' sessions end.
    assert!(a.signal("TERM").success(), "{}", a.log());
    assert!(b.signal("TERM").success(), "{}", b.log());
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'shared' AND pid <> pg_backend_pid()";
    poll_until(
        20,
        || pg.psql("shared", sessions) == "0",
        || "the daemons' sessions stayed".into(),
    );
    assert_eq!(
        pg.psql(
            "shared",
            "SELECT deadlocks FROM pg_stat_database WHERE datname = 'shared'"
        ),
        "0"
    );
}

/// kill -9 in the middle of ingest: every file committed before the kill is
/// still there and searchable after the restart, and each file and content
/// ends up exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_ingest_loses_nothing_acknowledged() {
    let pg = PgServer::start();
    pg.create_db("crash");
    let url = pg.url("crash");
    let mut d = node_daemon(&url, "solo");
    let files = copy_fashion(300, &d.photos);
    d.spawn();
    let mut c = d.client().await;
    let seen = wait_for(&d, &mut c, "some progress", |s| s.indexed_files >= 1).await;
    d.signal("KILL");
    let acknowledged: Vec<String> = pg
        .psql(
            "crash",
            "SELECT path FROM files WHERE node = 'solo' ORDER BY path",
        )
        .lines()
        .map(String::from)
        .collect();
    assert!(
        acknowledged.len() as u64 >= seen.indexed_files,
        "reported {} indexed, {} stored",
        seen.indexed_files,
        acknowledged.len()
    );

    d.spawn();
    let mut c = d.client().await;
    let s = wait_for(&d, &mut c, "all indexed after kill -9", |s| {
        s.indexed_files == files.len() as u64 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.failed_files, 0);
    for path in acknowledged
        .iter()
        .step_by(acknowledged.len().div_ceil(12).max(1))
    {
        let hits = search_by_path(&mut c, Path::new(path), 1).await;
        assert_eq!(&hits[0].path, path);
        assert!(hits[0].score > 0.999, "{hits:?}");
    }
    let table = vector_table(&pg, "crash");
    assert_eq!(
        pg.psql(
            "crash",
            &format!("SELECT count(*), count(DISTINCT hash) FROM {table}")
        ),
        "300|300"
    );
    assert_eq!(pg.psql("crash", "SELECT count(*) FROM files"), "300");
}

/// `dualsight migrate` copies a sled store without re-embedding: the daemon
/// on PostgreSQL then has the same files, failures and answers; a second run
/// (a resumed copy) changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_sled_store_moves_into_postgres_with_equal_counts_and_results() {
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    for p in [
        "chelsea.png",
        "coffee.webp",
        "rocket.jpg",
        "camera.png",
        "astronaut_cmyk.jpg",
    ] {
        copy_photo(p, &d.photos);
    }
    std::fs::copy(image("bad/truncated.jpg"), d.photos.join("truncated.jpg")).unwrap();
    d.spawn();
    let mut c = d.client().await;
    let done = |s: &proto::StatusResponse| {
        s.ready && s.indexed_files == 5 && s.failed_files == 1 && s.pending_files == 0
    };
    wait_for(&d, &mut c, "indexed on sled", done).await;
    let before = search(&mut c, "a photo of a cat", 10).await;
    assert!(d.signal("TERM").success(), "{}", d.log());

    let pg = PgServer::start();
    pg.create_db("moved");
    let url = pg.url("moved");
    let migrate = || {
        let out = run_ok(
            dualsight()
                .arg("migrate")
                .arg("--from")
                .arg(&d.data)
                .args(["--to", &url, "--node", "home"]),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(err.contains("files") && err.contains("done"), "{err}");
        err
    };
    let hnsw_indexes = "SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%USING hnsw%'";
    // An empty space is loaded bare and its graph built once at the end; a
    // second run finds the index and inserts through it; a run after one
    // cut short between the drop and the build builds it.
    let err = migrate();
    assert!(err.contains("built the HNSW index"), "{err}");
    assert_eq!(pg.psql("moved", hnsw_indexes), "1");
    let err = migrate();
    assert!(!err.contains("building the HNSW index"), "{err}");
    assert_eq!(pg.psql("moved", hnsw_indexes), "1");
    pg.psql(
        "moved",
        &format!("DROP INDEX {}_hnsw", vector_table(&pg, "moved")),
    );
    let err = migrate();
    assert!(err.contains("built the HNSW index"), "{err}");
    assert_eq!(pg.psql("moved", hnsw_indexes), "1");
    // A copy cut short (vectors go first, then files, then failures): two
    // files, one of their vectors and the failure not there yet. The same
    // command again completes it.
    let table = vector_table(&pg, "moved");
    pg.psql(
        "moved",
        &format!(
            "DELETE FROM {table} WHERE hash = (SELECT hash FROM files WHERE path LIKE '%/rocket.jpg');
             DELETE FROM files WHERE path LIKE '%/rocket.jpg' OR path LIKE '%/camera.png';
             DELETE FROM failures;"
        ),
    );
    assert_eq!(pg.psql("moved", "SELECT count(*) FROM files"), "3");
    migrate();
    assert_eq!(
        pg.psql("moved", &format!("SELECT count(*) FROM {table}")),
        "5"
    );
    assert_eq!(
        pg.psql("moved", "SELECT count(*) FROM files WHERE node = 'home'"),
        "5"
    );
    assert_eq!(
        pg.psql("moved", "SELECT count(*) FROM failures WHERE node = 'home'"),
        "1"
    );

    d.args = pg_args(&url, "home");
    d.spawn();
    let mut c = d.client().await;
    let s = wait_for(&d, &mut c, "indexed on postgres", done).await;
    assert_eq!(s.store, "postgres");
    assert_eq!(s.embedded_images, 0, "migrated files were embedded again");
    let after = search(&mut c, "a photo of a cat", 10).await;
    assert_eq!(after.len(), before.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.path, b.path);
        assert!((a.score - b.score).abs() < 1e-5, "{b:?} vs {a:?}");
        assert_eq!(a.node, "home");
    }

    // The daemon's config shapes the graph of a space migrate creates.
    pg.create_db("tuned");
    let cfg = d.data.join("tuned.toml");
    std::fs::write(&cfg, "[index]\nm = 12\nef_construction = 50\n").unwrap();
    run_ok(
        dualsight()
            .arg("migrate")
            .arg("--from")
            .arg(&d.data)
            .args(["--to", &pg.url("tuned"), "--node", "home", "--config"])
            .arg(&cfg),
    );
    let options = pg.psql(
        "tuned",
        "SELECT array_to_string(reloptions, ',') FROM pg_class WHERE relname LIKE 'vectors_%_hnsw'",
    );
    assert_eq!(options, "m=12,ef_construction=50");

    // One asking for IVFFlat builds none for five vectors (too few to place
    // lists), says so, and leaves the space to the daemon.
    pg.create_db("lists");
    let cfg = d.data.join("ivf.toml");
    std::fs::write(
        &cfg,
        "[store]\nbackend = \"postgres\"\nvector_index = \"ivfflat\"\n",
    )
    .unwrap();
    let out = run_ok(
        dualsight()
            .arg("migrate")
            .arg("--from")
            .arg(&d.data)
            .args(["--to", &pg.url("lists"), "--node", "home", "--config"])
            .arg(&cfg),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no IVFFlat index") && err.contains("10000"),
        "{err}"
    );
    assert_eq!(
        pg.psql(
            "lists",
            "SELECT count(*) FROM pg_indexes WHERE indexdef ~ 'USING (hnsw|ivfflat)'"
        ),
        "0"
    );

    // A bad target is named, with its password hidden.
    let err = run_err(
        dualsight()
            .arg("migrate")
            .arg("--from")
            .arg(&d.data)
            .args(["--to", "postgres://u:pw-secret@127.0.0.1:1/x"]),
    );
    assert!(
        err.contains("127.0.0.1") && !err.contains("pw-secret"),
        "{err}"
    );
}

/// Searches on a hot standby; when it stops, on the primary, and Status says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_serves_searches_and_the_primary_takes_over_when_it_stops() {
    let pg = PgServer::start();
    pg.create_db("lib");
    let mut standby = pg.standby();
    let mut d = node_daemon(&pg.url("lib"), "reader");
    d.args
        .extend(["--database-read-url".into(), standby.url("lib")]);
    // Short enough for the test to wait out, and far above what a standby
    // streaming on the same machine lags.
    d.config_head = "[store]\nmax_replica_lag_ms = 3000\n".into();
    for p in ["chelsea.png", "coffee.webp", "rocket.jpg"] {
        copy_photo(p, &d.photos);
    }
    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 3 && s.pending_files == 0
    })
    .await;
    search(&mut c, "a photo", 5).await;
    let s = wait_for(&d, &mut c, "the standby serving", |s| {
        s.replicas.len() == 1 && s.replicas[0].serving
    })
    .await;
    assert!(
        s.replicas[0]
            .database
            .contains(&standby.socket_dir.display().to_string())
    );

    // The standby's own counters see the searches' transactions.
    let commits = || -> u64 {
        standby
            .psql(
                "postgres",
                "SELECT xact_commit FROM pg_stat_database WHERE datname = 'lib'",
            )
            .parse()
            .unwrap()
    };
    let before = commits();
    for _ in 0..40 {
        let hits = search(&mut c, "a photo", 5).await;
        assert_eq!(hits.len(), 3);
    }
    poll_until(
        20,
        || commits() >= before + 40,
        || {
            format!(
                "searches did not reach the standby: {before} → {}",
                commits()
            )
        },
    );

    // A photo added now replicates and is found through the standby.
    copy_photo("camera.png", &d.photos);
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 4 && s.pending_files == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while search(&mut c, "a photo", 5).await.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the standby never showed the new photo"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A standby whose replay stops falls behind: past the lag allowed it
    // serves no search, Status says why, and the primary answers with the
    // photo the standby lacks; replaying again, it serves again.
    let back = "standby serves searches again";
    let backs = d.log().matches(back).count();
    standby.psql("postgres", "SELECT pg_wal_replay_pause()");
    copy_photo("astronaut_cmyk.jpg", &d.photos);
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hits = search(&mut c, "a photo", 5).await.len();
        let s = status(&mut c).await;
        if hits == 5 && !s.replicas[0].serving {
            assert!(s.replicas[0].error.contains("lags"), "{s:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a paused standby was not left out ({hits} hits): {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.log().contains("standby left out"), "{}", d.log());
    standby.psql("postgres", "SELECT pg_wal_replay_resume()");
    // Its health is looked at again when a search needs it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status(&mut c).await.replicas[0].serving {
        assert!(Instant::now() < deadline, "the standby never served again");
        assert_eq!(search(&mut c, "a photo", 5).await.len(), 5);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(d.log().matches(back).count(), backs + 1, "{}", d.log());

    standby.stop();
    let hits = search(&mut c, "a photo", 5).await;
    assert_eq!(hits.len(), 5, "the primary did not take over");
    let s = status(&mut c).await;
    assert!(!s.replicas[0].serving, "{s:?}");
    assert!(!s.replicas[0].error.is_empty(), "{s:?}");
}

/// A batch of paths and of contents is looked up in one statement each,
/// the answers in the order asked, and only this node's files are its own.
#[test]
fn many_files_and_contents_are_looked_up_at_once_in_their_order() {
    use dualsight::store::{Commit, ContentHash, Embedding, FileRecord, Store};

    let pg = PgServer::start();
    pg.create_db("lookup");
    let options = |node: &str| pg_options(pg.url("lookup"), node);
    let store = Store::open_postgres(&options("a")).unwrap();
    let other = Store::open_postgres(&options("b")).unwrap();
    let space = store.space("fp", 4).unwrap();
    let record = |i: u64| FileRecord {
        size: 100 + i,
        mtime_ns: 7,
        hash: ContentHash::of(&i.to_le_bytes()),
        indexed_at_ms: 1,
        meta: Default::default(),
    };
    let commit = |path: &str, i: u64| Commit {
        path: path.into(),
        record: record(i),
        embedding: Embedding::New(vec![1.0, i as f32, 0.0, 0.5]),
    };
    store
        .commit(&space, &[commit("/p/one.jpg", 1), commit("/p/two.jpg", 2)])
        .unwrap();
    // Another node's file is never this node's record.
    let other_space = other.space("fp", 4).unwrap();
    other
        .commit(&other_space, &[commit("/p/three.jpg", 3)])
        .unwrap();

    let asked = [
        "/p/two.jpg",
        "/p/none.jpg",
        "/p/one.jpg",
        "/p/three.jpg",
        "/p/two.jpg",
    ];
    let found = store.files(&asked).unwrap();
    let sizes: Vec<Option<u64>> = found.iter().map(|r| r.as_ref().map(|r| r.size)).collect();
    assert_eq!(sizes, [Some(102), None, Some(101), None, Some(102)]);
    assert_eq!(found[2].as_ref().unwrap().hash, record(1).hash);
    assert!(store.files(&[]).unwrap().is_empty());
    store
        .record_failure("/p/bad.jpg", "not an image", 9, 3)
        .unwrap();
    other
        .record_failure("/p/one.jpg", "not an image", 9, 3)
        .unwrap();
    let failures = store
        .failures(&["/p/one.jpg", "/p/bad.jpg", "/p/bad.jpg"])
        .unwrap();
    let sizes: Vec<Option<u64>> = failures
        .iter()
        .map(|f| f.as_ref().map(|f| f.size))
        .collect();
    assert_eq!(sizes, [None, Some(9), Some(9)]);
    assert_eq!(failures[1], store.failure("/p/bad.jpg").unwrap());

    let hashes = [record(3).hash, record(9).hash, record(1).hash];
    let ids = space.vector_ids_for_hashes(&hashes).unwrap();
    let one_by_one: Vec<Option<u64>> = hashes
        .iter()
        .map(|h| space.vector_id_for_hash(h).unwrap())
        .collect();
    assert_eq!(ids, one_by_one);
    assert!(ids[0].is_some() && ids[1].is_none() && ids[2].is_some());
}

/// A 512-d vector (2 KB) lives in its row, not out of line in the TOAST
/// table (one lookup more per row read); a space made before that moves
/// its new vectors in line once a daemon opens it.
#[test]
fn a_spaces_vectors_are_kept_in_its_rows() {
    use dualsight::store::Store;

    let pg = PgServer::start();
    pg.create_db("inline");
    let options = pg_options(pg.url("inline"), "lib");
    // Values that do not compress, as an embedding's do not.
    let vector = |i: usize| -> Vec<f32> {
        let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    };
    let files = |r: std::ops::Range<usize>| -> Vec<_> {
        r.map(|i| numbered(format!("/lib/{i}.jpg"), i, vector(i)))
            .collect()
    };
    let store = Store::open_postgres(&options).unwrap();
    let space = store.space("fp", 512).unwrap();
    let table = vector_table(&pg, "inline");
    let storage = || {
        pg.psql(
            "inline",
            &format!(
                "SELECT string_agg(attname || '=' || attstorage::text, ',' ORDER BY attname) FROM pg_attribute
                 WHERE attrelid = '{table}'::regclass AND attname IN ('hash', 'embedding')"
            ),
        )
    };
    let out_of_line = || -> u64 {
        pg.psql(
            "inline",
            &format!(
                "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = '{table}'"
            ),
        )
        .parse()
        .unwrap()
    };
    store.commit(&space, &files(0..50)).unwrap();
    assert_eq!(storage(), "embedding=m,hash=p");
    assert_eq!(out_of_line(), 0);

    // A space made before: its vectors go out of line...
    pg.psql(
        "inline",
        &format!("ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE EXTERNAL"),
    );
    store.commit(&space, &files(50..100)).unwrap();
    let before = out_of_line();
    assert!(before > 0);
    // ...until a daemon opens it: new vectors stay in their rows, and every
    // vector reads back whole either way.
    let reopened = Store::open_postgres(&options).unwrap();
    let space = reopened.space("fp", 512).unwrap();
    assert_eq!(storage(), "embedding=m,hash=p");
    reopened.commit(&space, &files(100..150)).unwrap();
    assert_eq!(out_of_line(), before);
    for i in [0usize, 75, 149] {
        let id = space
            .vector_id_for_hash(&dualsight::store::ContentHash::of(
                &(i as u64).to_le_bytes(),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(space.vector(id).unwrap().unwrap().vector, vector(i), "{i}");
    }
    // The sizes the benchmark reports: the rows (150 vectors of 2 KB) and
    // the HNSW index apart, adding up to the table's whole size.
    let pg_space = space.as_postgres().unwrap();
    let sizes = reopened
        .as_postgres()
        .unwrap()
        .relation_sizes(pg_space)
        .unwrap();
    let total: u64 = pg
        .psql(
            "inline",
            &format!("SELECT pg_total_relation_size('{table}')"),
        )
        .parse()
        .unwrap();
    assert!(sizes.vectors >= 150 * 2056 && sizes.index > 0, "{sizes:?}");
    assert_eq!(sizes.vectors + sizes.index, total);
}

/// Through the library: candidates come from an HNSW index walk, filtered
/// or not (once the table is large enough for the planner to prefer it); a
/// filter keeping three photos of 3000 returns all three, one keeping 30
/// ranks exactly, as do a minimum score and a window of dates, and a broad
/// date filter still fills its page; a database migrated by a newer
/// dualsight is refused by name.
#[test]
fn searches_walk_the_hnsw_index_and_filters_never_lose_hits() {
    use dualsight::engine::Filters;
    use dualsight::engine::pg_source::PgSource;
    use dualsight::engine::search::{Query, search};
    use dualsight::store::pg::{PgOptions, SearchFilters};
    use dualsight::store::{Commit, Store};

    let pg = PgServer::start();
    pg.create_db("plans");
    let options = PgOptions {
        // pgvector's planner weighs ef_search against the table's size: at
        // 3000 rows it prefers the index only for a short walk.
        hnsw: dualsight::index::IndexParams {
            ef_search: 40,
            ..Default::default()
        },
        // /all (2967 files) walks the graph; /some (30) and /rare (3) rank
        // exactly (below 1000).
        ..pg_options(pg.url("plans"), "lib")
    };
    let store = Store::open_postgres(&options).unwrap();
    let space = store.space("fp", 16).unwrap();
    const T0: i64 = 1_600_000_000;
    let vector = |i: usize| -> Vec<f32> {
        (0..16)
            .map(|j| ((i * 31 + j * 7) % 17) as f32 - 8.0 + (i as f32) * 1e-3)
            .collect()
    };
    let items: Vec<Commit> = (0..3000)
        .map(|i| {
            let path = if i % 1000 == 0 {
                format!("/rare/{i}.jpg")
            } else if i % 100 == 50 {
                format!("/some/{i}.jpg")
            } else {
                format!("/all/{i}.jpg")
            };
            // One photo a second, for the date filters below.
            let mut c = numbered(path, i, vector(i));
            c.record.meta.taken_at = T0 + i as i64;
            c
        })
        .collect();
    store.commit(&space, &items).unwrap();
    let pg_space = space.as_postgres().unwrap();
    // What autovacuum does after a library's first thousands of files.
    pg.psql("plans", "ANALYZE");

    let q = vector(3);
    // A broad filter walks the graph too; a selective one ranks the few
    // vectors of the files it passes, exactly, without the graph.
    let broad = SearchFilters {
        path_prefix: Some("/all".into()),
        ..Default::default()
    };
    // The route comes from the planner's estimate (counted only near the
    // threshold): read, and close to the 2967 and 3 files that pass.
    let rare = SearchFilters {
        path_prefix: Some("/rare".into()),
        ..Default::default()
    };
    let estimate = |f: &SearchFilters| pg_space.estimated_files(f).unwrap().unwrap();
    assert!(
        (2500.0..3500.0).contains(&estimate(&broad)),
        "{}",
        estimate(&broad)
    );
    assert!(estimate(&rare) < 50.0, "{}", estimate(&rare));
    for filters in [SearchFilters::default(), broad] {
        let plan = candidate_scan(&pg_space.nearest_plan(&q, 10, &filters).unwrap());
        assert!(plan.contains("Index Scan using vectors_1_hnsw"), "{plan}");
    }
    // The rare filter's candidates are its passing files' vectors.
    let plan = candidate_scan(&pg_space.nearest_plan(&q, 10, &rare).unwrap());
    assert!(!plan.contains("hnsw") && plan.contains("files"), "{plan}");
    let filters = Filters {
        path_prefix: Some("/rare".into()),
        ..Filters::default()
    };
    let source = PgSource::new(pg_space, &filters);
    let query = Query {
        vector: &q,
        limit: 10,
        min_score: None,
        accept: None,
    };
    let hits = search(&source, &source, &query).unwrap();
    let paths: BTreeSet<String> = hits
        .iter()
        .map(|(f, _)| f.path.display().to_string())
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/rare/0.jpg", "/rare/1000.jpg", "/rare/2000.jpg"].map(String::from))
    );
    let unfiltered = PgSource::new(pg_space, &Filters::default());
    let hits = search(&unfiltered, &unfiltered, &query).unwrap();
    assert_eq!(hits[0].0.path, PathBuf::from("/all/3.jpg"));
    assert!(hits[0].1 > 0.9999);
    // pgvector's walk is the same for any limit up to ef_search (40 here):
    // a shorter fetch is a longer one's first rows. Past it the walk widens,
    // and a page reads its whole block. (The space's row estimate, which
    // the ANALYZE above gave it, is read anew within 10 s.)
    poll_until(
        15,
        || pg_space.fetches_nest(40).unwrap(),
        || "no nesting after ANALYZE".into(),
    );
    assert!(!pg_space.fetches_nest(41).unwrap());
    let ids = |n: usize| -> Vec<u64> {
        let found = pg_space.nearest(&q, n, &SearchFilters::default()).unwrap();
        found.iter().map(|v| v.id).collect()
    };
    let walk = ids(40);
    assert_eq!(walk.len(), 40);
    for n in [1, 5, 14, 39] {
        assert_eq!(ids(n)[..], walk[..n], "a fetch of {n}");
    }
    // A filter passing fewer files than `exact_below` is ranked exactly:
    // the top 10 of /some by brute force, in order.
    let exact = brute_force(&q, (0..3000).filter(|i| i % 100 == 50), vector);
    let filters = Filters {
        path_prefix: Some("/some".into()),
        ..Filters::default()
    };
    let source = PgSource::new(pg_space, &filters);
    let hits = search(&source, &source, &query).unwrap();
    let got: Vec<String> = hits
        .iter()
        .map(|(f, _)| f.path.display().to_string())
        .collect();
    let want: Vec<String> = exact[..10]
        .iter()
        .map(|(_, i)| format!("/some/{i}.jpg"))
        .collect();
    assert_eq!(
        got,
        want,
        "scores {:?} vs {:?}",
        hits.iter().map(|h| h.1).collect::<Vec<_>>(),
        &exact[..10]
    );

    // A minimum score keeps exactly the hits at or above it.
    let threshold = (exact[4].0 + exact[5].0) / 2.0;
    let hits = search(
        &source,
        &source,
        &Query {
            min_score: Some(threshold),
            ..query
        },
    )
    .unwrap();
    let got: Vec<String> = hits
        .iter()
        .map(|(f, _)| f.path.display().to_string())
        .collect();
    assert_eq!(got, want[..5], "{threshold}");

    // Dates: 30 photos of one half-minute, ranked exactly (the top 10 of
    // them by brute force, in order), and the 2000 photos after a time,
    // through the walk: ten hits, each of them after it.
    let number = |f: &dualsight::engine::Found| -> usize {
        f.path
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let numbers = |space: &dualsight::store::pg::PgSpace, filters: &Filters| -> Vec<usize> {
        let source = PgSource::new(space, filters);
        let hits = search(&source, &source, &query).unwrap();
        hits.iter().map(|(f, _)| number(f)).collect()
    };
    let got = numbers(
        pg_space,
        &Filters {
            taken_after: Some(T0 + 1200),
            taken_before: Some(T0 + 1229),
            ..Filters::default()
        },
    );
    let exact = brute_force(&q, 1200..1230, vector);
    let want: Vec<usize> = exact[..10].iter().map(|&(_, i)| i).collect();
    assert_eq!(got, want);
    let got = numbers(
        pg_space,
        &Filters {
            taken_after: Some(T0 + 1000),
            ..Filters::default()
        },
    );
    assert_eq!(got.len(), 10, "{got:?}");
    assert!(got.iter().all(|&i| i >= 1000), "{got:?}");

    // A walk that gives up before its filter lets ten through (pgvector's
    // `hnsw.max_scan_tuples`, 100 here for new sessions) runs again
    // exactly. The 1100 photos after T0 + 1900 are walked, not ranked
    // exactly, and none is among the first 100 rows of q's walk.
    pg.psql(
        "plans",
        "ALTER DATABASE plans SET hnsw.max_scan_tuples = 100",
    );
    let store = Store::open_postgres(&options).unwrap();
    let space = store.space("fp", 16).unwrap();
    let pg_space = space.as_postgres().unwrap();
    let late = SearchFilters {
        taken_after: Some(T0 + 1900),
        ..Default::default()
    };
    assert!(!pg_space.ranks_exactly(&late).unwrap());
    let plan = candidate_scan(&pg_space.nearest_plan(&q, 10, &late).unwrap());
    assert!(plan.contains("Index Scan using vectors_1_hnsw"), "{plan}");
    let literal: Vec<String> = q.iter().map(|x| x.to_string()).collect();
    let walked = pg.psql(
        "plans",
        &format!(
            "SET hnsw.iterative_scan = relaxed_order; SET hnsw.ef_search = 40;
             SELECT count(*) FROM (SELECT v.id FROM vectors_1 v WHERE EXISTS
              (SELECT 1 FROM files f WHERE f.hash = v.hash AND f.taken_at >= {})
              ORDER BY v.embedding <=> '[{}]' LIMIT 10) s",
            T0 + 1900,
            literal.join(",")
        ),
    );
    assert!(
        walked.parse::<usize>().unwrap() < 10,
        "the walk alone found {walked}"
    );
    let got = numbers(
        pg_space,
        &Filters {
            taken_after: Some(T0 + 1900),
            ..Filters::default()
        },
    );
    let exact = brute_force(&q, 1900..3000, vector);
    let want: Vec<usize> = exact[..10].iter().map(|&(_, i)| i).collect();
    assert_eq!(got, want);
    drop(store);

    pg.psql(
        "plans",
        "INSERT INTO dualsight_schema (version) VALUES (99)",
    );
    let e = Store::open_postgres(&options).unwrap_err().to_string();
    assert!(
        e.contains("schema version 99 is newer") && e.contains("upgrade dualsight"),
        "{e}"
    );
}

/// IVFFlat (`[store] vector_index = "ivfflat"`): a space has no vector index
/// until it holds `ivf_first` vectors, then one built in the background with
/// rows / 500 lists (at least one); once the space has doubled, a new one
/// with twice the lists replaces it. Searches read it and find each stored
/// vector's own file first. A node configured with nothing keeps the space
/// on IVFFlat as it grows; one asking for HNSW by name switches it back.
#[test]
fn ivfflat_indexes_are_built_as_a_space_fills_and_rebuilt_as_it_doubles() {
    use dualsight::engine::Filters;
    use dualsight::engine::pg_source::PgSource;
    use dualsight::engine::search::{Query, search};
    use dualsight::store::pg::{IndexKind, PgOptions, PgStore, SearchFilters};
    use dualsight::store::{Commit, Space, Store};

    let pg = PgServer::start();
    pg.create_db("ivf");
    let options = |kind: Option<IndexKind>| PgOptions {
        vector_index: kind,
        ivf_first: 500,
        ..pg_options(pg.url("ivf"), "lib")
    };
    // Clustered 16-d vectors, as photos are: 8 centres, each vector its
    // centre plus a little of its own.
    let vector = |i: usize| -> Vec<f32> {
        let mut h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..16)
            .map(|j| {
                h ^= h >> 29;
                h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let noise = (h >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                let centre = if (i % 8 + j) % 8 < 2 { 3.0 } else { 0.0 };
                centre + noise
            })
            .collect()
    };
    let commit = |store: &Store, space: &Space, range: std::ops::Range<usize>| {
        let items: Vec<Commit> = range
            .map(|i| numbered(format!("/lib/{i}.jpg"), i, vector(i)))
            .collect();
        for chunk in items.chunks(250) {
            store.commit(space, chunk).unwrap();
        }
    };
    let indexes = |store: &PgStore, space: &Space| {
        let s = space.as_postgres().unwrap();
        store.vector_indexes(s).unwrap()
    };
    let wait_for_indexes = |store: &PgStore, space: &Space, want: &[&str]| {
        poll_until(
            60,
            || indexes(store, space) == want,
            || format!("indexes {:?}, waiting for {want:?}", indexes(store, space)),
        );
    };
    // Each stored vector's own file comes first, whatever index answers.
    let finds_its_own = |space: &Space, rows: usize| {
        let s = space.as_postgres().unwrap();
        for i in (0..rows).step_by(rows / 23) {
            let q = vector(i);
            let source = PgSource::new(s, &Filters::default());
            let query = Query {
                vector: &q,
                limit: 5,
                min_score: None,
                accept: None,
            };
            let hits = search(&source, &source, &query).unwrap();
            assert_eq!(hits.len(), 5, "row {i}");
            assert_eq!(hits[0].0.path, PathBuf::from(format!("/lib/{i}.jpg")));
            assert!(hits[0].1 > 0.9999, "row {i}: {}", hits[0].1);
        }
    };

    let store = Store::open_postgres(&options(Some(IndexKind::IvfFlat))).unwrap();
    let pg_store = store.as_postgres().unwrap().clone();
    let space = store.space("fp", 16).unwrap();
    // Too few rows to place lists: none yet, and searches scan exactly.
    commit(&store, &space, 0..400);
    std::thread::sleep(Duration::from_millis(500));
    assert!(indexes(&pg_store, &space).is_empty());
    finds_its_own(&space, 400);
    commit(&store, &space, 400..700);
    wait_for_indexes(&pg_store, &space, &["vectors_1_ivf1"]);
    // Doubled: two lists, the one-list index dropped once they are built.
    // Each step ends on the commit that makes a rebuild due, so that the
    // rows a build counts are the step's whole.
    commit(&store, &space, 700..1000);
    wait_for_indexes(&pg_store, &space, &["vectors_1_ivf2"]);
    // Doubled again: four lists.
    commit(&store, &space, 1000..2000);
    wait_for_indexes(&pg_store, &space, &["vectors_1_ivf4"]);
    let s = space.as_postgres().unwrap();
    pg.psql("ivf", "ANALYZE");
    let plan = s
        .nearest_plan(&vector(3), 10, &SearchFilters::default())
        .unwrap();
    assert!(plan.contains("Index Scan using vectors_1_ivf4"), "{plan}");
    finds_its_own(&space, 2000);
    // Four lists of ~500 rows, two probed: they hold a block, not 10,000.
    assert!(s.fetches_nest(104).unwrap());
    assert!(!s.fetches_nest(10_000).unwrap());
    a_first_page_reads_only_its_own_rows(s, &vector(17));
    drop(store);

    // A node configured with nothing keeps the space on IVFFlat.
    let plain = Store::open_postgres(&options(None)).unwrap();
    let space = plain.space("fp", 16).unwrap();
    commit(&plain, &space, 2000..4000);
    let pg_plain = plain.as_postgres().unwrap().clone();
    wait_for_indexes(&pg_plain, &space, &["vectors_1_ivf8"]);
    finds_its_own(&space, 4000);
    drop(plain);

    // HNSW by name switches it back when the daemon opens the space.
    let hnsw = Store::open_postgres(&options(Some(IndexKind::Hnsw))).unwrap();
    let space = hnsw.space("fp", 16).unwrap();
    let pg_hnsw = hnsw.as_postgres().unwrap().clone();
    let s = space.as_postgres().unwrap();
    pg_hnsw.tend_index(s).unwrap();
    wait_for_indexes(&pg_hnsw, &space, &["vectors_1_hnsw"]);
    finds_its_own(&space, 4000);
    a_first_page_reads_only_its_own_rows(s, &vector(29));
}

/// Migrations apply in order from the version a database has, each
/// recorded; one that fails leaves the database as it was, at its version.
#[test]
fn migrations_upgrade_in_order_and_one_that_fails_changes_nothing() {
    use dualsight::store::pg::migrate_with;

    let pg = PgServer::start();
    pg.create_db("versions");
    let mut c = postgres::Client::connect(&pg.url("versions"), postgres::NoTls).unwrap();
    let v1 = "CREATE TABLE photos (id bigint PRIMARY KEY)";
    let v2 = "ALTER TABLE photos ADD COLUMN taken bigint; CREATE TABLE albums (id bigint)";
    let broken = "CREATE TABLE faces (id bigint); SELECT no_such_function()";
    let versions = || {
        pg.psql(
            "versions",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM dualsight_schema",
        )
    };
    assert_eq!(migrate_with(&mut c, "versions", &[v1]).unwrap(), 0);
    assert_eq!(versions(), "1");
    assert_eq!(migrate_with(&mut c, "versions", &[v1, v2]).unwrap(), 1);
    assert_eq!(versions(), "1,2");
    assert_eq!(
        pg.psql(
            "versions",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'photos'"
        ),
        "2"
    );
    // Nothing to do at the version it has.
    assert_eq!(migrate_with(&mut c, "versions", &[v1, v2]).unwrap(), 2);
    let e = migrate_with(&mut c, "versions", &[v1, v2, broken])
        .unwrap_err()
        .to_string();
    assert!(e.contains("migration 3"), "{e}");
    assert_eq!(versions(), "1,2");
    assert_eq!(
        pg.psql("versions", "SELECT to_regclass('faces') IS NULL"),
        "t"
    );
    // A binary that knows fewer versions refuses it by name.
    let e = migrate_with(&mut c, "versions", &[v1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("schema version 2 is newer"), "{e}");
}

/// docs/scale-out.md's distribution, rehearsed on one server: a space's
/// vectors hash-partitioned by content hash, the distribution column it
/// gives Citus. Partitions, like Citus's shards, keep only unique keys that
/// include that column, so `id` becomes a plain index and `UNIQUE (hash)`
/// stays. The daemon's statements run on it unchanged: a search merges each
/// partition's HNSW walk and joins each candidate's files on its hash, and
/// ingest's upsert on the hash keeps one vector per content across nodes,
/// deleted with its last file.
#[test]
fn a_space_partitioned_by_content_hash_takes_the_same_statements() {
    use dualsight::engine::Filters;
    use dualsight::engine::pg_source::PgSource;
    use dualsight::engine::search::{Query, search};
    use dualsight::store::Store;
    use dualsight::store::pg::{PgOptions, SearchFilters};

    const N: usize = 8000;
    let pg = PgServer::start();
    pg.create_db("shards");
    let options = |node: &str| PgOptions {
        // As in the walk test above: the planner prefers the index for a
        // short walk at this size.
        hnsw: dualsight::index::IndexParams {
            ef_search: 40,
            ..Default::default()
        },
        ..pg_options(pg.url("shards"), node)
    };
    // Spread-out 16-d vectors: row i drawn from the project's generator
    // keyed by i.
    let vector = |i: usize| -> Vec<f32> {
        let mut g = dualsight::rng::SplitMix64::keyed(7, i as u64, 0);
        (0..16).map(|_| g.next_f32() - 0.5).collect()
    };
    {
        let store = Store::open_postgres(&options("a")).unwrap();
        let space = store.space("fp", 16).unwrap();
        let items: Vec<_> = (0..N)
            .map(|i| numbered(format!("/p/{i}.jpg"), i, vector(i)))
            .collect();
        store.commit(&space, &items).unwrap();
    }
    pg.psql(
        "shards",
        "ALTER TABLE vectors_1 RENAME TO vectors_1_flat;
         ALTER INDEX vectors_1_hnsw RENAME TO vectors_1_flat_hnsw;
         ALTER INDEX vectors_1_pkey RENAME TO vectors_1_flat_pkey;
         ALTER INDEX vectors_1_hash_key RENAME TO vectors_1_flat_hash_key;
         CREATE TABLE vectors_1 (
             id bigint NOT NULL DEFAULT nextval('vectors_1_id_seq'),
             hash bytea NOT NULL UNIQUE,
             embedding vector(16) NOT NULL) PARTITION BY HASH (hash);
         CREATE TABLE vectors_1_p0 PARTITION OF vectors_1 FOR VALUES WITH (MODULUS 4, REMAINDER 0);
         CREATE TABLE vectors_1_p1 PARTITION OF vectors_1 FOR VALUES WITH (MODULUS 4, REMAINDER 1);
         CREATE TABLE vectors_1_p2 PARTITION OF vectors_1 FOR VALUES WITH (MODULUS 4, REMAINDER 2);
         CREATE TABLE vectors_1_p3 PARTITION OF vectors_1 FOR VALUES WITH (MODULUS 4, REMAINDER 3);
         INSERT INTO vectors_1 SELECT id, hash, embedding FROM vectors_1_flat;
         CREATE INDEX vectors_1_id ON vectors_1 (id);
         CREATE INDEX vectors_1_hnsw ON vectors_1 USING hnsw (embedding vector_cosine_ops);
         ALTER SEQUENCE vectors_1_id_seq OWNED BY vectors_1.id;
         DROP TABLE vectors_1_flat;
         ANALYZE",
    );
    for p in 0..4 {
        let rows: usize = pg
            .psql("shards", &format!("SELECT count(*) FROM vectors_1_p{p}"))
            .parse()
            .unwrap();
        assert!((N / 8..N / 2).contains(&rows), "partition {p}: {rows}");
    }

    let store = Store::open_postgres(&options("a")).unwrap();
    let space = store.space("fp", 16).unwrap();
    let pg_space = space.as_postgres().unwrap();
    // Each partition walks its own graph; the walks are merged in order.
    let q = vector(1234);
    let plan = candidate_scan(
        &pg_space
            .nearest_plan(&q, 10, &SearchFilters::default())
            .unwrap(),
    );
    assert!(plan.contains("Merge Append"), "{plan}");
    for p in 0..4 {
        // The partitions' own copies of the HNSW index, named by PostgreSQL.
        assert!(
            plan.contains(&format!(
                "Index Scan using vectors_1_p{p}_embedding_idx on vectors_1_p{p}"
            )),
            "{plan}"
        );
    }
    let unfiltered = Filters::default();
    let found = |store_space: &dualsight::store::pg::PgSpace, v: &[f32]| {
        let source = PgSource::new(store_space, &unfiltered);
        let query = Query {
            vector: v,
            limit: 10,
            min_score: None,
            accept: None,
        };
        search(&source, &source, &query).unwrap()
    };
    // Against brute force over every row.
    let exact = brute_force(&q, 0..N, vector);
    let want: BTreeSet<String> = exact[..10]
        .iter()
        .map(|(_, i)| format!("/p/{i}.jpg"))
        .collect();
    let hits = found(pg_space, &q);
    assert_eq!(hits[0].0.path, PathBuf::from("/p/1234.jpg"));
    let got: BTreeSet<String> = hits
        .iter()
        .map(|(f, _)| f.path.display().to_string())
        .collect();
    assert!(got.intersection(&want).count() >= 9, "{got:?} vs {want:?}");

    // One new content on two nodes: one vector, routed to its partition,
    // found under both nodes' paths; it goes with the last of its files.
    let other = Store::open_postgres(&options("b")).unwrap();
    let other_space = other.space("fp", 16).unwrap();
    let fresh = vector(N + 1);
    store
        .commit(
            &space,
            &[numbered("/p/new.jpg".into(), N + 1, fresh.clone())],
        )
        .unwrap();
    other
        .commit(
            &other_space,
            &[numbered("/q/new.jpg".into(), N + 1, fresh.clone())],
        )
        .unwrap();
    let count = || pg.psql("shards", "SELECT count(*) FROM vectors_1");
    assert_eq!(count(), (N + 1).to_string());
    let hits = found(pg_space, &fresh);
    let holders: BTreeSet<(Option<String>, PathBuf)> = hits[..2]
        .iter()
        .map(|(f, _)| (f.node.clone(), f.path.clone()))
        .collect();
    assert_eq!(
        holders,
        BTreeSet::from([
            (Some("a".to_owned()), PathBuf::from("/p/new.jpg")),
            (Some("b".to_owned()), PathBuf::from("/q/new.jpg")),
        ])
    );
    store.remove_path("/p/new.jpg").unwrap();
    assert_eq!(count(), (N + 1).to_string());
    other.remove_path("/q/new.jpg").unwrap();
    assert_eq!(count(), N.to_string());
}
