//! The daemon end to end: a real `dualsight serve` process, a real gRPC
//! client over a real TCP socket, real files in a watched folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dualsight::server::proto::dual_sight_client::DualSightClient;
use dualsight::server::proto::{self, search_by_image_request};
use tonic::transport::Channel;

use crate::cli::{dualsight, run_err, run_ok};
use crate::util::*;

/// A daemon child process with its own folders; killed on drop.
pub(crate) struct Daemon {
    child: Option<Child>,
    pub photos: PathBuf,
    pub data: PathBuf,
    pub addr: String,
    pub model: PathBuf,
    /// Lines added to the config's `[ingest]` section.
    pub ingest: String,
    /// Run the daemon as `nobody` (setpriv): for tests of what a root daemon
    /// could read anyway.
    pub as_nobody: bool,
    /// Config lines before the `[watch]` section (top-level keys, or whole
    /// sections such as `[server]` or `[metrics]`).
    pub config_head: String,
    /// More `serve` flags.
    pub args: Vec<String>,
    /// Environment variables for the process (`DUALSIGHT_CPU`, say).
    pub env: Vec<(String, String)>,
    /// Lines added to the config's `[watch]` section.
    pub watch: String,
    /// Watch these roots through the config file instead of `--watch`
    /// `photos` (a reload re-reads them).
    pub roots: Option<Vec<PathBuf>>,
    /// The config file the daemon was started with.
    pub config: PathBuf,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    pub(crate) fn start() -> Self {
        Self::start_with(model_dir("vit-bert"))
    }

    /// A daemon on the checkpoint in `model`.
    fn start_with(model: PathBuf) -> Self {
        let mut d = Self::prepare(model);
        d.spawn();
        d
    }

    /// Its folders, not started yet.
    pub(crate) fn prepare(model: PathBuf) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let photos = tmp.path().join("photos");
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&photos).unwrap();
        let d = Daemon {
            child: None,
            photos,
            data,
            model,
            addr: String::new(),
            ingest: String::new(),
            as_nobody: false,
            config_head: String::new(),
            args: Vec::new(),
            env: Vec::new(),
            watch: String::new(),
            roots: None,
            config: tmp.path().join("dualsight.toml"),
            log: tmp.path().join("daemon.log"),
            _tmp: tmp,
        };
        std::fs::create_dir_all(&d.data).unwrap();
        d
    }

    /// (Re)starts the process on the same folders.
    pub(crate) fn spawn(&mut self) {
        let port = free_port();
        self.addr = format!("127.0.0.1:{port}");
        self.write_config();
        let config = self.config.clone();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = if self.as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_dualsight"));
            c
        } else {
            dualsight()
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--model")
            .arg(&self.model)
            .args(
                self.roots
                    .is_none()
                    .then(|| ["--watch".as_ref(), self.photos.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.args)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen", &self.addr, "--device", "cpu"])
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Writes the config file from the fields (a test may change them and
    /// write again before a reload).
    pub fn write_config(&self) {
        let roots = match &self.roots {
            Some(r) => format!(
                "roots = [{}]\n",
                r.iter()
                    .map(|p| format!("{:?}", p.display().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => String::new(),
        };
        // Short timings so tests run fast; the defaults are for real folders.
        std::fs::write(
            &self.config,
            format!("{}\n[watch]\n{roots}debounce_ms = 100\nstable_ms = 400\nroot_poll_s = 1\n{}\n[ingest]\nbatch_size = 4\nbatch_timeout_ms = 50\nremove_grace_ms = 1500\n{}\n[index]\ncheckpoint_interval_s = 1\n", self.config_head, self.watch, self.ingest),
        )
        .unwrap();
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) async fn client(&self) -> DualSightClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = DualSightClient::connect(format!("http://{}", self.addr)).await {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not listen; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit on {sig}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) async fn status(c: &mut DualSightClient<Channel>) -> proto::StatusResponse {
    c.status(proto::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Polls status until `pred` holds (or fails after 60 s with the last status and the log).
pub(crate) async fn wait_for(
    d: &Daemon,
    c: &mut DualSightClient<Channel>,
    what: &str,
    pred: impl Fn(&proto::StatusResponse) -> bool,
) -> proto::StatusResponse {
    let ask = async || Ok(c.status(proto::StatusRequest {}).await?.into_inner());
    poll_status(d, what, ask, pred).await
}

/// Asks Status through `ask` (any client) until `pred` holds, and fails
/// after 60 s with the last answer or error and the log, also when every
/// call fails.
pub(crate) async fn poll_status(
    d: &Daemon,
    what: &str,
    mut ask: impl AsyncFnMut() -> Result<proto::StatusResponse, tonic::Status>,
    pred: impl Fn(&proto::StatusResponse) -> bool,
) -> proto::StatusResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ask().await;
        if let Ok(s) = &s
            && pred(s)
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}\nlog:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn search(
    c: &mut DualSightClient<Channel>,
    text: &str,
    limit: u32,
) -> Vec<proto::Hit> {
    c.search(proto::SearchRequest {
        text: text.into(),
        limit,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .hits
}

pub(crate) fn copy_photo(name: &str, to: &Path) -> PathBuf {
    let dest = to.join(name);
    std::fs::copy(image(name), &dest).unwrap();
    dest
}

const PHOTOS: &[&str] = &[
    "chelsea.png",
    "coffee.webp",
    "rocket.jpg",
    "camera.png",
    "astronaut_cmyk.jpg",
];

/// SearchByImage on an indexed path.
pub(crate) async fn search_by_path(
    c: &mut DualSightClient<Channel>,
    path: &Path,
    limit: u32,
) -> Vec<proto::Hit> {
    let query = search_by_image_request::Query::Path(path.to_string_lossy().into());
    search_by(c, query, limit).await
}

pub(crate) async fn search_by_bytes(
    c: &mut DualSightClient<Channel>,
    image: Vec<u8>,
    limit: u32,
) -> Vec<proto::Hit> {
    search_by(c, search_by_image_request::Query::Image(image), limit).await
}

async fn search_by(
    c: &mut DualSightClient<Channel>,
    query: search_by_image_request::Query,
    limit: u32,
) -> Vec<proto::Hit> {
    c.search_by_image(proto::SearchByImageRequest {
        query: Some(query),
        limit,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .hits
}

/// A daemon with the five photos indexed, and a client to it.
async fn indexed_daemon() -> (Daemon, DualSightClient<Channel>) {
    let d = Daemon::start();
    let mut c = d.client().await;
    for p in PHOTOS {
        copy_photo(p, &d.photos);
    }
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    (d, c)
}

/// Exact cosine ranking of `paths` for `text`, from `dualsight embed` with
/// the daemon's preprocessing (the model itself checked against transformers).
fn exact_ranking(text: &str, paths: &[PathBuf]) -> Vec<(PathBuf, f32)> {
    exact_ranking_with("vit-bert", text, paths)
}

fn exact_ranking_with(model: &str, text: &str, paths: &[PathBuf]) -> Vec<(PathBuf, f32)> {
    let mut cmd = dualsight();
    cmd.arg("embed")
        .arg("--model")
        .arg(model_dir(model))
        .args(["--json", "--device", "cpu", "--text", text])
        // The daemon's default (exact_preprocessing = false): same pixels, so
        // the scores must match to 1e-4.
        .arg("--fast-preprocessing");
    for p in paths {
        cmd.arg("--image").arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vec = |x: &serde_json::Value| {
        x.as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_f64().unwrap() as f32)
            .collect::<Vec<f32>>()
    };
    let t = vec(&v["text_embeds"][0]);
    let mut scored: Vec<(PathBuf, f32)> = paths
        .iter()
        .zip(v["image_embeds"].as_array().unwrap())
        .map(|(p, e)| (p.clone(), vec(e).iter().zip(&t).map(|(a, b)| a * b).sum()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    scored
}

#[tokio::test(flavor = "multi_thread")]
async fn photos_become_searchable_in_exact_cosine_order() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let paths: Vec<PathBuf> = PHOTOS.iter().map(|p| copy_photo(p, &d.photos)).collect();
    let s = wait_for(&d, &mut c, "5 indexed", |s| {
        s.ready && s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.failed_files, 0);
    let mut first = Vec::new();
    for query in ["a photo of a cat", "a rocket", "a cup of coffee on a table"] {
        let hits = search(&mut c, query, 10).await;
        first.push(hits.clone());
        let want = exact_ranking(query, &paths);
        let got: Vec<PathBuf> = hits.iter().map(|h| PathBuf::from(&h.path)).collect();
        assert_eq!(
            got,
            want.iter().map(|w| w.0.clone()).collect::<Vec<_>>(),
            "{query}: ranking differs from exact cosine"
        );
        let scale = (s.logit_scale as f64).exp() as f32;
        let psum: f32 = hits.iter().map(|h| h.probability).sum();
        assert!((psum - 1.0).abs() < 1e-4, "probabilities sum to {psum}");
        for (h, (_, score)) in hits.iter().zip(&want) {
            assert!(
                (h.score - score).abs() < 1e-4,
                "{}: score {} vs exact {score}",
                h.path,
                h.score
            );
            assert!((h.logit - h.score * scale).abs() < 1e-3);
        }
    }
    // Asked again, the texts come from the query cache: the same answers.
    for (query, hits) in ["a photo of a cat", "a rocket", "a cup of coffee on a table"]
        .into_iter()
        .zip(&first)
    {
        assert_eq!(
            &search(&mut c, query, 10).await,
            hits,
            "{query}: cached answer differs"
        );
    }
    // Limit, prefix and min-score filters.
    assert_eq!(search(&mut c, "a rocket", 2).await.len(), 2);
    let sub = d.photos.join("sub");
    std::fs::create_dir(&sub).unwrap();
    copy_photo("rocket_progressive.jpg", &sub);
    wait_for(&d, &mut c, "6 indexed", |s| s.indexed_files == 6).await;
    let only_sub = c
        .search(proto::SearchRequest {
            text: "a rocket".into(),
            limit: 10,
            path_prefix: Some(sub.to_string_lossy().into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(only_sub.len(), 1);
    assert!(only_sub[0].path.ends_with("sub/rocket_progressive.jpg"));
    let top = search(&mut c, "a rocket", 1).await[0].score;
    let above = c
        .search(proto::SearchRequest {
            text: "a rocket".into(),
            limit: 10,
            min_score: Some(top - 1e-6),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(!above.is_empty() && above.iter().all(|h| h.score >= top - 1e-6));
    // The same bytes at a second path: one vector, two hits with one score,
    // in path order, and a limit that falls between them keeps the first.
    // (This also checks that the start-up scan's delayed reconcile did not
    // forget sub/, which was created after that scan: it once did.)
    let best = PathBuf::from(&search(&mut c, "a photo of a cat", 1).await[0].path);
    let twin = sub.join(format!(
        "twin-{}",
        best.file_name().unwrap().to_string_lossy()
    ));
    std::fs::copy(&best, &twin).unwrap();
    let s = wait_for(&d, &mut c, "7 indexed", |s| s.indexed_files == 7).await;
    assert_eq!(s.vectors, 6, "two paths share one vector");
    let (first_path, second_path) = if best < twin {
        (&best, &twin)
    } else {
        (&twin, &best)
    };
    let two = search(&mut c, "a photo of a cat", 2).await;
    let got: Vec<PathBuf> = two.iter().map(|h| PathBuf::from(&h.path)).collect();
    assert_eq!(got, [first_path.clone(), second_path.clone()]);
    assert_eq!(two[0].score, two[1].score);
    let one = search(&mut c, "a photo of a cat", 1).await;
    assert_eq!(PathBuf::from(&one[0].path), *first_path);
    // Image → images: an indexed path finds itself first.
    let by_path = search_by_path(&mut c, &paths[0], 3).await;
    assert_eq!(PathBuf::from(&by_path[0].path), paths[0]);
    assert!((by_path[0].score - 1.0).abs() < 1e-4);
    let by_bytes = search_by_bytes(&mut c, std::fs::read(image("coffee.webp")).unwrap(), 1).await;
    assert!(by_bytes[0].path.ends_with("coffee.webp") && by_bytes[0].score > 0.9999);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_rename_and_move_keep_the_index_in_line_with_the_disk() {
    let d = Daemon::start();
    let mut c = d.client().await;
    for p in PHOTOS {
        copy_photo(p, &d.photos);
    }
    let s = wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    let embedded = s.embedded_images;
    assert_eq!(embedded, 5);

    std::fs::remove_file(d.photos.join("camera.png")).unwrap();
    wait_for(&d, &mut c, "delete", |s| s.indexed_files == 4).await;
    assert!(
        search(&mut c, "a photo", 10)
            .await
            .iter()
            .all(|h| !h.path.ends_with("camera.png"))
    );

    // Rename, and move into a new folder: found under the new paths, not embedded again.
    std::fs::rename(d.photos.join("chelsea.png"), d.photos.join("cat.png")).unwrap();
    let album = d.photos.join("album");
    std::fs::create_dir(&album).unwrap();
    std::fs::rename(d.photos.join("rocket.jpg"), album.join("launch.jpg")).unwrap();
    let s = wait_for(&d, &mut c, "renames", |s| {
        s.reused_vectors >= 2 && s.pending_files == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await; // past the removal grace
    let s2 = status(&mut c).await;
    assert_eq!(s2.indexed_files, 4, "{s2:?}");
    assert_eq!(s.embedded_images, embedded, "a rename was embedded again");
    let paths: Vec<String> = search(&mut c, "a photo", 10)
        .await
        .into_iter()
        .map(|h| h.path)
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("/cat.png"))
            && paths.iter().any(|p| p.ends_with("album/launch.jpg")),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.ends_with("chelsea.png") || p.ends_with("/rocket.jpg")),
        "{paths:?}"
    );

    // A whole folder moved out of the watched tree disappears; identical copies are separate hits.
    let outside = d.photos.parent().unwrap().join("elsewhere");
    std::fs::rename(&album, &outside).unwrap();
    wait_for(&d, &mut c, "folder moved out", |s| s.indexed_files == 3).await;
    std::fs::copy(d.photos.join("cat.png"), d.photos.join("cat-copy.png")).unwrap();
    let s = wait_for(&d, &mut c, "duplicate", |s| {
        s.indexed_files == 4 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.embedded_images, embedded, "a duplicate was embedded");
    let hits = search(&mut c, "a photo of a cat", 10).await;
    let cats: Vec<_> = hits.iter().filter(|h| h.path.contains("cat")).collect();
    assert_eq!(cats.len(), 2);
    assert_eq!(cats[0].score, cats[1].score);

    // A folder moved out and straight back in, within the removal grace: the
    // folder's pending removal is checked against the disk when it falls
    // due, so its files stay.
    std::fs::rename(&outside, &album).unwrap();
    wait_for(&d, &mut c, "folder back", |s| {
        s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    std::fs::rename(&album, &outside).unwrap();
    std::fs::rename(&outside, &album).unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await; // past the removal grace
    let s = wait_for(&d, &mut c, "settled", |s| s.pending_files == 0).await;
    assert_eq!(s.indexed_files, 5, "{s:?}");
    assert!(
        search(&mut c, "a photo", 10)
            .await
            .iter()
            .any(|h| h.path.ends_with("album/launch.jpg"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_files_are_counted_as_failed_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let bad = fixtures().join("images").join("bad");
    for entry in std::fs::read_dir(&bad).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, d.photos.join(p.file_name().unwrap())).unwrap();
    }
    copy_photo("chelsea.png", &d.photos);
    let s = wait_for(&d, &mut c, "failures recorded", |s| {
        s.failed_files == 5 && s.indexed_files == 1 && s.pending_files == 0
    })
    .await;
    assert!(s.ready);
    let failures = c
        .list_failures(proto::ListFailuresRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failures.total, 5);
    for f in &failures.failures {
        assert!(
            f.error.contains(&f.path),
            "error does not name the file: {f:?}"
        );
    }
    // A shorter list is the newest of the same, still counting them all.
    let two = c
        .list_failures(proto::ListFailuresRequest { limit: 2 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((two.failures.len(), two.total), (2, 5));
    assert_eq!(two.failures[..], failures.failures[..2]);
    assert!(
        failures
            .failures
            .windows(2)
            .all(|w| w[0].failed_at_unix >= w[1].failed_at_unix)
    );
    assert_eq!(search(&mut c, "a cat", 5).await.len(), 1);
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(format!("http://{}", d.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "dualsight.v1.DualSight".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // A failed file that is deleted is forgotten; one that is fixed gets indexed.
    std::fs::remove_file(d.photos.join("garbage.png")).unwrap();
    std::fs::copy(image("rocket.jpg"), d.photos.join("truncated.jpg")).unwrap();
    let s = wait_for(&d, &mut c, "failures resolved", |s| {
        s.failed_files == 3 && s.indexed_files == 2 && s.pending_files == 0
    })
    .await;
    assert!(s.ready);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_half_written_file_is_indexed_only_once_complete() {
    let d = Daemon::start();
    let mut c = d.client().await;
    let bytes = std::fs::read(image("rocket.jpg")).unwrap();
    let path = d.photos.join("copying.jpg");
    let mut f = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    // Written in chunks more often than the stability interval, like a slow copy.
    for chunk in bytes.chunks(bytes.len() / 8 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let s = status(&mut c).await;
        assert_eq!(
            (s.indexed_files, s.failed_files),
            (0, 0),
            "taken while being written: {s:?}"
        );
    }
    drop(f);
    let s = wait_for(&d, &mut c, "complete file indexed", |s| {
        s.indexed_files == 1 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.failed_files, 0);
}

/// A file replaced while its first version is still being indexed ends as
/// its new version: the second sighting waits for the first job instead of
/// being dropped as a duplicate (the first job, finding the file changed,
/// left it to that sighting, so the new photo waited for the next scan).
#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_while_being_indexed_ends_as_its_new_version() {
    use image::ImageEncoder;
    let d = Daemon::start();
    let mut c = d.client().await;
    let png = |img: &image::RgbImage| {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Sub,
        )
        .write_image(
            img,
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
        out
    };
    // Large photos ahead of it (64 MP each, small files: rows of runs)
    // keep the file's first version waiting in the pipeline while its
    // second arrives.
    const AHEAD: u32 = 16;
    let ahead: Vec<Vec<u8>> = (0..AHEAD)
        .map(|i| {
            png(&image::RgbImage::from_fn(8000, 8000, |x, y| {
                image::Rgb([(x / 40) as u8, (y / 40) as u8, (i * 30) as u8])
            }))
        })
        .collect();
    let first = png(&image::open(image("rocket.jpg")).unwrap().to_rgb8());
    let photo = png(&image::open(image("coffee.webp")).unwrap().to_rgb8());
    let target = d.photos.join("replaced.png");
    let put = |bytes: &[u8]| {
        let tmp = d.photos.join(".incoming");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &target).unwrap();
    };
    for (i, big) in ahead.iter().enumerate() {
        std::fs::write(d.photos.join(format!("ahead-{i}.png")), big).unwrap();
    }
    put(&first);
    // Past the watcher's debounce and stability wait (500 ms): the first
    // version is in the pipeline, behind the large photos.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let busy = status(&mut c).await;
    put(&photo);
    let s = wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == u64::from(AHEAD) + 1 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.failed_files, 0, "{s:?}");
    // Still busy when the second version came (else this tests nothing).
    assert!(busy.indexed_files < u64::from(AHEAD), "{busy:?}");
    let hits = search_by_bytes(&mut c, photo, 1).await;
    assert!(
        hits[0].path.ends_with("replaced.png") && hits[0].score > 0.9999,
        "the file's first version stayed indexed: {hits:?}\nlog:\n{}",
        d.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_restart_loads_the_checkpoint_and_kill_9_loses_nothing() {
    let (mut d, mut c) = indexed_daemon().await;
    let before: Vec<(String, f32)> = search(&mut c, "a photo of a cat", 10)
        .await
        .into_iter()
        .map(|h| (h.path, h.score))
        .collect();
    let started = Instant::now();
    let status = d.signal("TERM");
    assert!(
        status.success(),
        "SIGTERM exit: {status:?}\nlog:\n{}",
        d.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10), "slow shutdown");

    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "ready again", |s| {
        s.ready && s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    let after: Vec<(String, f32)> = search(&mut c, "a photo of a cat", 10)
        .await
        .into_iter()
        .map(|h| (h.path, h.score))
        .collect();
    assert_eq!(before, after);
    assert!(
        d.log().contains("from_checkpoint=true"),
        "restart rebuilt the index instead of loading it:\n{}",
        d.log()
    );
    assert_eq!(
        status_of(&mut c).await.embedded_images,
        0,
        "restart embedded again"
    );

    // kill -9 in the middle of ingesting more photos, then restart: everything exactly once.
    for p in [
        "rocket_progressive.jpg",
        "logo.png",
        "coffee_red_16bit.png",
        "no_time_for_that_tiny.gif",
        "chelsea_exif6.jpg",
        "camera.bmp",
    ] {
        copy_photo(p, &d.photos);
    }
    wait_for(&d, &mut c, "some progress", |s| {
        s.indexed_files > 5 || s.pending_files > 0
    })
    .await;
    d.signal("KILL");
    d.spawn();
    let mut c = d.client().await;
    let s = wait_for(&d, &mut c, "all indexed after kill -9", |s| {
        s.indexed_files == 11 && s.pending_files == 0
    })
    .await;
    assert_eq!(s.failed_files, 0);
    let hits = search(&mut c, "a photo", 100).await;
    let mut paths: Vec<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths.len(), 11, "{paths:?}");
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 11, "a file appears twice");
}

/// An index checkpoint written before vectors were stored in half precision
/// (format 1) is not loaded: the daemon rebuilds the index from the store,
/// embeds nothing again and answers as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_in_an_older_format_is_rebuilt_from_the_store() {
    let (mut d, mut c) = indexed_daemon().await;
    let before = search(&mut c, "a photo of a cat", 10).await;
    assert!(d.signal("TERM").success(), "log:\n{}", d.log());
    let manifests: Vec<PathBuf> = walkdir::WalkDir::new(d.data.join("index"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.ends_with("manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifests[0]).unwrap()).unwrap();
    m["format"] = 1.into();
    std::fs::write(&manifests[0], serde_json::to_vec(&m).unwrap()).unwrap();

    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "ready again", |s| {
        s.ready && s.indexed_files == 5 && s.pending_files == 0
    })
    .await;
    let after = search(&mut c, "a photo of a cat", 10).await;
    let key = |h: &[proto::Hit]| -> Vec<(String, f32)> {
        h.iter().map(|h| (h.path.clone(), h.score)).collect()
    };
    assert_eq!(key(&before), key(&after));
    let log = d.log();
    assert!(log.contains("older format"), "{log}");
    assert!(log.contains("from_checkpoint=false"), "{log}");
    assert_eq!(status_of(&mut c).await.embedded_images, 0, "embedded again");
}

async fn status_of(c: &mut DualSightClient<Channel>) -> proto::StatusResponse {
    status(c).await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_invalid_argument() {
    let d = Daemon::start();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "ready", |s| s.ready).await;
    let code =
        |r: Result<tonic::Response<proto::SearchResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(
            c.search(proto::SearchRequest {
                text: "  ".into(),
                limit: 5,
                ..Default::default()
            })
            .await
        ),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.search(proto::SearchRequest {
                text: "cat".into(),
                limit: 1_000_000,
                ..Default::default()
            })
            .await
        ),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            c.search(proto::SearchRequest {
                text: "cat".into(),
                limit: 5,
                min_score: Some(f32::NAN),
                ..Default::default()
            })
            .await
        ),
        tonic::Code::InvalidArgument
    );
    let garbage = proto::SearchByImageRequest {
        query: Some(search_by_image_request::Query::Image(
            b"not an image".to_vec(),
        )),
        limit: 5,
        ..Default::default()
    };
    let e = c.search_by_image(garbage).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let none = proto::SearchByImageRequest {
        query: None,
        limit: 5,
        ..Default::default()
    };
    assert_eq!(
        c.search_by_image(none).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    let unknown = proto::SearchByImageRequest {
        query: Some(search_by_image_request::Query::Path(
            "/nowhere/x.jpg".into(),
        )),
        limit: 5,
        ..Default::default()
    };
    assert_eq!(
        c.search_by_image(unknown).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    // A message over the server's limit (32 MiB by default) is the client's mistake too.
    let huge = proto::SearchByImageRequest {
        query: Some(search_by_image_request::Query::Image(vec![0u8; 33 << 20])),
        limit: 5,
        ..Default::default()
    };
    let e = c.search_by_image(huge).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with("image: ") && e.message().contains("max_message_bytes"),
        "{e:?}"
    );
    // Still healthy after all that.
    assert!(status(&mut c).await.ready);
}

/// Issue 14's fallback: a tokenizer saved with no `model_max_length` (where
/// transformers would fail on an overlong text) still answers a 2,000-word
/// query, cut at the tower's position table, the same as its first tokens alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_thousand_word_query_is_answered_without_model_max_length() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(model_dir("vit-bert")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let config = model.join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    tc.as_object_mut().unwrap().remove("model_max_length");
    std::fs::write(&config, tc.to_string()).unwrap();

    let d = Daemon::start_with(model);
    let mut c = d.client().await;
    for p in PHOTOS {
        copy_photo(p, &d.photos);
    }
    // Pending reaches 0 only once the batch is in the HNSW too.
    wait_for(&d, &mut c, "all photos indexed", |s| {
        s.indexed_files == PHOTOS.len() as u64 && s.pending_files == 0
    })
    .await;
    let long = "a photo of a cat on a table ".repeat(286); // 2,002 words
    assert!(long.split_whitespace().count() >= 2000);
    let hits = search(&mut c, &long, 5).await;
    assert_eq!(hits.len(), 5);
    // 64 positions hold [CLS] + 62 word pieces + [SEP]: the query is the
    // same as its first 62 words (each one piece in this vocabulary).
    let head: Vec<&str> = long.split_whitespace().take(62).collect();
    let same = search(&mut c, &head.join(" "), 5).await;
    for (a, b) in hits.iter().zip(&same) {
        assert_eq!(a.path, b.path);
        assert!(
            (a.score - b.score).abs() < 1e-5,
            "{} vs {}",
            a.score,
            b.score
        );
    }
    let more: Vec<&str> = long.split_whitespace().take(61).collect();
    let shorter = search(&mut c, &more.join(" "), 5).await;
    assert!(
        hits.iter()
            .zip(&shorter)
            .any(|(a, b)| (a.score - b.score).abs() > 1e-6),
        "one word fewer should change the scores"
    );
}

/// `serve --text-weights int8`: text queries go through 8-bit text weights
/// (where this CPU runs an 8-bit kernel; elsewhere, and with
/// `DUALSIGHT_CPU=portable`, the log says why not),
/// and find the photos the exact model ranks first, with scores within
/// 0.005 of its cosines. A value that is neither `dtype` nor `int8` stops
/// the daemon before it loads anything, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn int8_text_weights_find_what_the_exact_model_finds() {
    let mut d = Daemon::prepare(model_dir("vit-bert"));
    d.args = vec!["--text-weights".into(), "int8".into()];
    d.spawn();
    let mut c = d.client().await;
    let paths: Vec<PathBuf> = PHOTOS.iter().map(|p| copy_photo(p, &d.photos)).collect();
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == PHOTOS.len() as u64 && s.pending_files == 0
    })
    .await;
    for text in ["a photo of a cat", "a red car on a street"] {
        let exact = exact_ranking(text, &paths);
        let hits = search(&mut c, text, PHOTOS.len() as u32).await;
        assert_eq!(hits.len(), exact.len(), "{text}");
        // The best photo, unless the exact model itself barely separates it.
        if exact[0].1 - exact[1].1 > 0.01 {
            assert_eq!(
                Path::new(&hits[0].path),
                exact[0].0,
                "{text}: the best photo"
            );
        }
        for hit in &hits {
            let (_, want) = exact
                .iter()
                .find(|(p, _)| p == Path::new(&hit.path))
                .expect("an indexed photo");
            assert!(
                (hit.score - want).abs() < 5e-3,
                "{text}: {} scored {} against {want}",
                hit.path,
                hit.score
            );
        }
    }
    // Scores near the exact ones would hold with the flag ignored too: the
    // log says which weights the daemon loaded, and why not 8 bits.
    let log = d.log();
    let fallback = "text_weights = int8 needs AVX2 or AVX-512 VNNI at the vector level in use";
    if dualsight::model::cpu::PanelWeight::int8_runs_fast() {
        assert!(log.contains("text_weights=Int8"), "{log}");
    } else {
        assert!(
            log.contains("text_weights=Dtype") && log.contains(fallback),
            "{log}"
        );
    }
    // With the vector kernels turned off, the daemon keeps the dtype's
    // weights, says why, and serves.
    let mut plain = Daemon::prepare(model_dir("vit-bert"));
    plain.args = vec!["--text-weights".into(), "int8".into()];
    plain.env = vec![("DUALSIGHT_CPU".into(), "portable".into())];
    plain.spawn();
    let mut pc = plain.client().await;
    // The client connects while the model still loads; a search then is
    // refused as not ready.
    wait_for(&plain, &mut pc, "ready", |s| s.ready).await;
    assert!(search(&mut pc, "a photo of a cat", 3).await.is_empty());
    let log = plain.log();
    assert!(
        log.contains("text_weights=Dtype") && log.contains(fallback),
        "{log}"
    );
    assert!(log.contains("that level is `portable`"), "{log}");
    let tmp = tempfile::tempdir().unwrap();
    let err = run_err(
        dualsight()
            .arg("serve")
            .arg("--model")
            .arg(model_dir("vit-bert"))
            .arg("--data-dir")
            .arg(tmp.path())
            .args(["--text-weights", "int4", "--device", "cpu"]),
    );
    assert!(
        err.contains("text_weights") && err.contains("int4"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_model_gets_a_new_index_while_the_old_one_serves() {
    let (mut d, mut c) = indexed_daemon().await;
    let old = status(&mut c).await;
    assert!(d.signal("TERM").success());

    d.model = model_dir("clip");
    d.spawn();
    let mut c = d.client().await;
    // Until the new index is complete the old model answers; then the new one, alone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let new = loop {
        let s = status(&mut c).await;
        if s.ready {
            if s.index_building {
                assert_eq!(
                    s.model_fingerprint, old.model_fingerprint,
                    "a half-built index answered"
                );
                assert_eq!(
                    search(&mut c, "a photo", 10).await.len(),
                    5,
                    "the old index stopped serving"
                );
            } else if s.model_fingerprint != old.model_fingerprint {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no switch to the new model: {s:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (new.indexed_files, new.vectors, new.embedded_images),
        (5, 5, 5),
        "{new:?}"
    );
    // "a photo" was embedded (and cached) by the old model while it served:
    // the answer now must be the new model's, exactly.
    let hits = search(&mut c, "a photo", 10).await;
    assert_eq!(hits.len(), 5);
    let paths: Vec<PathBuf> = hits.iter().map(|h| PathBuf::from(&h.path)).collect();
    for (h, (p, score)) in hits
        .iter()
        .zip(exact_ranking_with("clip", "a photo", &paths))
    {
        assert_eq!(PathBuf::from(&h.path), p);
        assert!(
            (h.score - score).abs() < 1e-4,
            "{}: {} vs {score}",
            h.path,
            h.score
        );
    }
    assert!(
        !d.data.join("index").join(&old.model_fingerprint).exists(),
        "old index left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_that_disappears_is_offline_and_keeps_its_files() {
    let d = Daemon::start();
    let mut c = d.client().await;
    for p in &PHOTOS[..3] {
        copy_photo(p, &d.photos);
    }
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 3 && s.pending_files == 0
    })
    .await;
    // Unmounted, as far as the daemon can tell: the folder is gone.
    let away = d.photos.with_extension("away");
    std::fs::rename(&d.photos, &away).unwrap();
    wait_for(&d, &mut c, "root offline", |s| {
        s.roots.iter().any(|r| !r.online)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // past the removal grace
    let s = status(&mut c).await;
    assert_eq!(s.indexed_files, 3, "an offline root lost its files: {s:?}");
    assert_eq!(search(&mut c, "a photo", 10).await.len(), 3);
    std::fs::rename(&away, &d.photos).unwrap();
    let s = wait_for(&d, &mut c, "root back", |s| {
        s.roots.iter().all(|r| r.online) && s.pending_files == 0
    })
    .await;
    assert_eq!((s.indexed_files, s.embedded_images), (3, 3), "{s:?}");
}

/// The bundled Fashion-MNIST model (trained by `dualsight train`, see
/// tests/fixtures/fashion/README.md) served over held-out test photos: a
/// search for a class finds mostly that class, where chance is one in ten.
#[tokio::test(flavor = "multi_thread")]
async fn a_trained_model_finds_what_it_is_asked_for() {
    let d = Daemon::start_with(fixtures().join("fashion/model"));
    let mut c = d.client().await;
    let photos = fixtures().join("fashion/test");
    let mut count = 0;
    for class in std::fs::read_dir(&photos).unwrap() {
        let class = class.unwrap().path();
        let to = d.photos.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&class).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            count += 1;
        }
    }
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == count && s.pending_files == 0
    })
    .await;
    for class in ["sneaker", "trouser", "bag"] {
        let hits = search(&mut c, &format!("a photo of a {class}"), 10).await;
        assert_eq!(hits.len(), 10);
        let right = hits
            .iter()
            .filter(|h| Path::new(&h.path).parent().unwrap().ends_with(class))
            .count();
        assert!(
            right >= 7,
            "{class}: {right} of the top 10 are {class}s: {:?}",
            hits.iter().map(|h| &h.path).collect::<Vec<_>>()
        );
    }
}

/// Status says idle (pending 0) only once the index has caught up: never
/// while a new file waits out its stability check or a deleted one its
/// removal grace (the crash harness found that it used to).
#[tokio::test(flavor = "multi_thread")]
async fn status_is_idle_only_when_caught_up() {
    let d = Daemon::start();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "ready", |s| s.ready && s.pending_files == 0).await;
    // Once the change's event has arrived (a few milliseconds; 100 ms
    // here), the daemon must not read idle until it is done.
    let photo = copy_photo("chelsea.png", &d.photos);
    never_idle_until(&mut c, 1, "after an add").await;
    std::fs::remove_file(&photo).unwrap();
    never_idle_until(&mut c, 0, "after a delete").await;
}

/// Polls Status after a change until `want` files are indexed and nothing
/// is pending, failing if it ever reads idle with another count.
async fn never_idle_until(c: &mut DualSightClient<Channel>, want: u64, what: &str) {
    tokio::time::sleep(Duration::from_millis(100)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(c).await;
        assert!(
            s.indexed_files == want || s.pending_files > 0,
            "{what}: Status idle with {} indexed, {want} on disk: {s:?}",
            s.indexed_files
        );
        if s.indexed_files == want && s.pending_files == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: never caught up: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A damaged index checkpoint (a dump file with flipped bytes, or cut
/// short) is caught by its checksum: the daemon warns, rebuilds the index
/// from the store without embedding anything again, and answers exactly as
/// before.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_checkpoint_is_rebuilt_from_the_store() {
    for damage in ["flip", "truncate"] {
        let (mut d, mut c) = indexed_daemon().await;
        let before = search(&mut c, "a photo of a cat", 10).await;
        assert!(d.signal("TERM").success(), "log:\n{}", d.log());
        let mut dumps: Vec<PathBuf> = walkdir::WalkDir::new(d.data.join("index"))
            .into_iter()
            .map(|e| e.unwrap().into_path())
            .filter(|p| p.is_file() && !p.ends_with("manifest.json") && !p.ends_with("CURRENT"))
            .collect();
        dumps.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
        let victim = dumps.first().unwrap_or_else(|| panic!("no dump files"));
        let mut bytes = std::fs::read(victim).unwrap();
        match damage {
            "flip" => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0xff;
            }
            _ => bytes.truncate(bytes.len() / 2),
        }
        std::fs::write(victim, bytes).unwrap();

        d.spawn();
        let mut c = d.client().await;
        wait_for(&d, &mut c, "ready again", |s| {
            s.ready && s.indexed_files == 5 && s.pending_files == 0
        })
        .await;
        let after = search(&mut c, "a photo of a cat", 10).await;
        let key = |h: &[proto::Hit]| -> Vec<(String, f32)> {
            h.iter().map(|h| (h.path.clone(), h.score)).collect()
        };
        assert_eq!(key(&before), key(&after), "{damage}");
        let log = d.log();
        assert!(log.contains("from_checkpoint=false"), "{damage}: {log}");
        assert!(
            log.lines()
                .any(|l| l.contains("WARN") && l.contains("rebuilding")),
            "{damage}: no warning that the index is rebuilt: {log}"
        );
        assert_eq!(status_of(&mut c).await.embedded_images, 0, "embedded again");
    }
}

/// A damaged vector record (a flipped bit in the segment) with the index
/// checkpoint intact: the startup scan reads every indexed file's vector
/// back, forgets the damaged one and embeds its file again; answers are
/// those from before the damage, and fsck finds the store consistent.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_vector_is_found_at_startup_and_embedded_again() {
    let (mut d, mut c) = indexed_daemon().await;
    let before = search(&mut c, "a photo of a cat", 10).await;
    assert!(d.signal("TERM").success(), "log:\n{}", d.log());
    let seg = d.data.join("store/segments/1.vec");
    let mut bytes = std::fs::read(&seg).unwrap();
    let record = (bytes.len() - 64) / 5;
    bytes[64 + 2 * record + record / 2] ^= 0x20;
    std::fs::write(&seg, bytes).unwrap();

    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "the damaged vector embedded again", |s| {
        s.ready && s.indexed_files == 5 && s.pending_files == 0 && s.embedded_images == 1
    })
    .await;
    let after = search(&mut c, "a photo of a cat", 10).await;
    // Same order; scores to float noise (the image was embedded in another batch).
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.path, a.path);
        assert!((b.score - a.score).abs() < 1e-5, "{b:?} vs {a:?}");
    }
    let log = d.log();
    assert!(
        log.contains("vector 3 is damaged (checksum mismatch)"),
        "{log}"
    );
    stop_and_fsck(&mut d);
}

/// A storm: 50,000 files created in one burst (hard links to the fashion
/// photos, so the test spends its time on events, scans and commits rather
/// than on the model), then whole folders moved out, some moved back, and
/// folders deleted. The daemon converges to the exact count each time.
#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_changes_converges_to_the_exact_count() {
    let d = Daemon::start_with(fixtures().join("fashion/model"));
    let mut c = d.client().await;
    let sources: Vec<PathBuf> = walkdir::WalkDir::new(fixtures().join("fashion"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    assert!(sources.len() >= 500);
    let (dirs, per_dir) = (50, 1000);
    for dir in 0..dirs {
        let to = d.photos.join(format!("d{dir}"));
        std::fs::create_dir(&to).unwrap();
        for i in 0..per_dir {
            let src = &sources[(dir * per_dir + i) % sources.len()];
            std::fs::hard_link(src, to.join(format!("f{i}.png"))).unwrap();
        }
    }
    let total = (dirs * per_dir) as u64;
    wait_for(&d, &mut c, "the burst indexed", |s| {
        s.indexed_files == total && s.pending_files == 0
    })
    .await;
    let away = d.photos.parent().unwrap().join("away");
    std::fs::create_dir(&away).unwrap();
    for dir in 0..5 {
        std::fs::rename(
            d.photos.join(format!("d{dir}")),
            away.join(format!("d{dir}")),
        )
        .unwrap();
    }
    for dir in 0..3 {
        std::fs::rename(
            away.join(format!("d{dir}")),
            d.photos.join(format!("d{dir}")),
        )
        .unwrap();
    }
    for dir in 10..12 {
        std::fs::remove_dir_all(d.photos.join(format!("d{dir}"))).unwrap();
    }
    let left = total - 4 * per_dir as u64;
    wait_for(&d, &mut c, "moves and deletes applied", |s| {
        s.indexed_files == left && s.pending_files == 0 && s.failed_files == 0
    })
    .await;
}

/// SIGTERM, a clean exit, and a store that passes `dualsight fsck`.
fn stop_and_fsck(d: &mut Daemon) {
    assert!(d.signal("TERM").success(), "log:\n{}", d.log());
    run_ok(dualsight().arg("fsck").arg("--data-dir").arg(&d.data));
}

/// Whether the tests run as root, which some fault tests need (`.ci/run`
/// runs as root). Elsewhere such a test fails loudly unless
/// DUALSIGHT_SKIP_ROOT is set; then it says it did not run.
pub(crate) fn is_root(what: &str) -> bool {
    if is_root_quiet() {
        return true;
    }
    assert!(
        std::env::var_os("DUALSIGHT_SKIP_ROOT").is_some(),
        "this test {what}: run it as root (as .ci/run does) or set DUALSIGHT_SKIP_ROOT=1"
    );
    eprintln!("not root: this test ({what}) did not run");
    false
}

/// Whether the tests run as root.
pub(crate) fn is_root_quiet() -> bool {
    Command::new("id").arg("-u").output().unwrap().stdout == b"0\n"
}

/// The fashion training photos, in name order (distinct contents).
pub(crate) fn fashion_photos() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walkdir::WalkDir::new(fixtures().join("fashion/train"))
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    v.sort();
    v
}

/// A tmpfs mounted for one test, unmounted when dropped (declare it before
/// the daemon, so the daemon stops first).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir`. Needs root, which `.ci/run`
    /// has; elsewhere the test fails loudly unless DUALSIGHT_SKIP_ROOT is set
    /// (then it returns None and the test says it did not run).
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        if !is_root("mounts a tmpfs") {
            return None;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Some(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk (issue 17): the data dir on a 48 MiB tmpfs, filled by another
/// file while photos arrive. Indexing pauses with the reason in Status,
/// queries keep being answered, nothing is lost or corrupted, and indexing
/// resumes by itself when the space is freed.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_pauses_indexing_and_it_resumes_when_space_frees() {
    let mut d = Daemon::prepare(fixtures().join("fashion/model"));
    let Some(_mount) = Tmpfs::mount(&d.data, 48) else {
        return;
    };
    d.ingest = "min_free_mb = 16".into();
    d.spawn();
    let mut c = d.client().await;
    let sources = fashion_photos();
    let photos = d.photos.clone();
    let add = |range: std::ops::Range<usize>| {
        for i in range {
            std::fs::copy(&sources[i], photos.join(format!("p{i:03}.png"))).unwrap();
        }
    };
    add(0..60);
    wait_for(&d, &mut c, "the first photos", |s| {
        s.indexed_files == 60 && s.pending_files == 0
    })
    .await;
    let before = search(&mut c, "a photo of a bag", 5).await;
    assert_eq!(before.len(), 5);

    // Another program fills the disk to 8 MiB free, under the 16 MiB reserve.
    let free = {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&d.data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let filler = d.data.join("filler");
    std::fs::write(&filler, vec![0u8; (free - (8 << 20)) as usize]).unwrap();
    add(60..120);
    let paused = wait_for(&d, &mut c, "indexing paused", |s| {
        s.ingest_error.contains("below the 16 MiB reserve") && s.pending_files > 0
    })
    .await;
    assert!(
        paused
            .ingest_error
            .contains(&d.data.join("store").display().to_string()),
        "{}",
        paused.ingest_error
    );
    assert!(paused.indexed_files < 120);
    // Queries are answered meanwhile, from what was committed.
    let during = search(&mut c, "a photo of a bag", 5).await;
    assert_eq!(during.len(), 5);
    let by_path = search_by_path(&mut c, &d.photos.join("p007.png"), 1).await;
    assert!(by_path[0].path.ends_with("p007.png") && by_path[0].score > 0.9999);
    assert!(d.log().contains("indexing paused"), "{}", d.log());

    std::fs::remove_file(&filler).unwrap();
    let s = wait_for(&d, &mut c, "indexing resumed", |s| {
        s.indexed_files == 120 && s.pending_files == 0 && s.ingest_error.is_empty()
    })
    .await;
    assert_eq!(s.failed_files, 0);
    assert!(d.log().contains("indexing resumes"));
    stop_and_fsck(&mut d);

    // No reserve, and the disk filled to the last byte: the write itself
    // fails (ENOSPC), before anything is committed; the batch is kept and
    // retried, and goes through once there is room.
    d.ingest = "min_free_mb = 0".into();
    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "restarted", |s| s.ready && s.pending_files == 0).await;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
    }
    add(120..150);
    let paused = wait_for(&d, &mut c, "the disk full", |s| {
        s.ingest_error.contains("the disk is full") && s.pending_files > 0
    })
    .await;
    assert!(
        paused.ingest_error.contains("No space left on device"),
        "{}",
        paused.ingest_error
    );
    assert_eq!(search(&mut c, "a photo of a bag", 5).await.len(), 5);
    std::fs::remove_file(&filler).unwrap();
    wait_for(&d, &mut c, "indexing resumed", |s| {
        s.indexed_files == 150 && s.pending_files == 0 && s.ingest_error.is_empty()
    })
    .await;
    assert_eq!(
        d.log().matches("indexing paused: the disk is full").count(),
        1,
        "logged once"
    );
    stop_and_fsck(&mut d);
}

/// An unreadable subfolder (issue 17): a subtree the daemon can no longer
/// read keeps its files in the index (a rescan must not read "cannot list"
/// as "deleted"), the scan names it in the log, and its files stay
/// searchable. The daemon runs as `nobody`, since root reads everything: the
/// test needs root to drop to it.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_subfolder_keeps_its_files_and_is_reported() {
    if !is_root("runs the daemon as nobody") {
        return;
    }
    let mut d = Daemon::prepare(fixtures().join("fashion/model"));
    d.as_nobody = true;
    let top = d.photos.parent().unwrap().to_path_buf();
    let chown = |p: &Path| {
        let ok = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    std::fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sources = fashion_photos();
    for (sub, range) in [("open", 0..8), ("locked", 8..20)] {
        let dir = d.photos.join(sub);
        std::fs::create_dir(&dir).unwrap();
        for i in range {
            std::fs::copy(&sources[i], dir.join(format!("p{i:02}.png"))).unwrap();
        }
    }
    chown(&d.photos);
    chown(&d.data);
    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "all indexed", |s| {
        s.indexed_files == 20 && s.pending_files == 0
    })
    .await;
    assert!(d.signal("TERM").success(), "log:\n{}", d.log());

    let locked = d.photos.join("locked");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    d.spawn();
    let mut c = d.client().await;
    // The startup scan ran and its reconcile waited out the removal grace.
    wait_for(&d, &mut c, "the startup scan", |s| {
        s.ready && s.pending_files == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let s = wait_for(&d, &mut c, "idle", |s| s.pending_files == 0).await;
    assert_eq!(s.indexed_files, 20, "log:\n{}", d.log());
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("unreadable")
            && l.contains(&locked.display().to_string())),
        "the unreadable folder is not named in the log:\n{log}"
    );
    let hits = search_by_path(&mut c, &locked.join("p09.png"), 1).await;
    assert!(hits[0].path.ends_with("locked/p09.png") && hits[0].score > 0.9999);

    // Readable again: still exactly the 20 files, and a consistent store.
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert!(d.signal("TERM").success());
    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "back", |s| {
        s.ready && s.pending_files == 0 && s.indexed_files == 20
    })
    .await;
    stop_and_fsck(&mut d);
}

/// The kernel's inotify queue overflowing (issue 17): with the queue cut to
/// 64 events for this daemon's watcher, a burst of 3,000 new files cannot
/// all be reported; the overflow triggers a rescan that finishes, and the
/// count is exact. Changing the sysctl needs root; it only affects inotify
/// instances created while it is set, and is restored at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_inotify_overflow_rescans_to_the_exact_count() {
    if !is_root("lowers fs.inotify.max_queued_events") {
        return;
    }
    const KNOB: &str = "/proc/sys/fs/inotify/max_queued_events";
    let saved = std::fs::read_to_string(KNOB).unwrap();
    let mut d = Daemon::prepare(fixtures().join("fashion/model"));
    std::fs::write(KNOB, "64").unwrap();
    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "ready", |s| s.ready && s.pending_files == 0).await;
    // The watcher (its inotify instance) exists once the first scan is done.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("scan finished") {
        assert!(Instant::now() < deadline, "no first scan:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(KNOB, saved.trim()).unwrap();
    let sources = fashion_photos();
    let total = 3000usize;
    // The folders first, watched before the burst: files linked into a
    // folder the watcher has not reached yet are found by its walk and send
    // no events, so under load the queue might never overflow.
    for dir in 0..6 {
        std::fs::create_dir(d.photos.join(format!("d{dir}"))).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for dir in 0..6 {
        let to = d.photos.join(format!("d{dir}"));
        for i in 0..total / 6 {
            std::fs::hard_link(
                &sources[(dir * 500 + i) % sources.len()],
                to.join(format!("f{i}.png")),
            )
            .unwrap();
        }
    }
    wait_for(&d, &mut c, "the burst indexed", |s| {
        s.indexed_files == total as u64 && s.pending_files == 0
    })
    .await;
    let log = d.log();
    assert!(
        log.contains("kernel event queue overflowed: rescanning root"),
        "{log}"
    );
    stop_and_fsck(&mut d);
}

/// Deleted photos leave tombstones in the HNSW (hnsw_rs cannot delete):
/// past a fifth of the graph the daemon rebuilds the index from the store
/// and swaps it in, so churn does not grow the index without bound; what is
/// left is still found, and the compacted index is what a restart loads.
#[tokio::test(flavor = "multi_thread")]
async fn deletions_past_a_fifth_of_the_index_compact_it() {
    let mut d = Daemon::start_with(fixtures().join("fashion/model"));
    let mut c = d.client().await;
    let sources = fashion_photos();
    for (i, src) in sources.iter().take(40).enumerate() {
        std::fs::copy(src, d.photos.join(format!("p{i:02}.png"))).unwrap();
    }
    wait_for(&d, &mut c, "indexed", |s| {
        s.indexed_files == 40 && s.pending_files == 0
    })
    .await;
    for i in 0..20 {
        std::fs::remove_file(d.photos.join(format!("p{i:02}.png"))).unwrap();
    }
    wait_for(&d, &mut c, "deleted", |s| {
        s.indexed_files == 20 && s.pending_files == 0
    })
    .await;
    // Deletions arrive over time, so compactions run midway, and each
    // leaves as tombstones what went during its build and after it; the
    // daemon compacts until the graph left (the last compaction's nodes)
    // holds at most a fifth of tombstones once all 20 are gone.
    let field = |l: &str, k: &str| -> usize {
        let v = l.split(&format!(" {k}=")).nth(1).unwrap();
        v.split(' ').next().unwrap().parse().unwrap()
    };
    let settled = |log: &str| {
        log.lines()
            .rfind(|l| l.contains("index compacted"))
            .is_some_and(|l| {
                let (live, dead) = (field(l, "vectors"), field(l, "tombstones"));
                let dead_now = dead + live.saturating_sub(20);
                live >= 20 && dead_now * 5 <= live + dead
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !settled(&d.log()) {
        assert!(Instant::now() < deadline, "not compacted:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hits = search_by_path(&mut c, &d.photos.join("p30.png"), 3).await;
    assert!(hits[0].path.ends_with("p30.png") && hits[0].score > 0.9999);
    assert!(hits.iter().all(|h| !h.path.ends_with("p05.png")));
    assert!(d.signal("TERM").success());
    d.spawn();
    let mut c = d.client().await;
    wait_for(&d, &mut c, "restarted", |s| {
        s.ready && s.indexed_files == 20
    })
    .await;
    assert!(d.log().contains("from_checkpoint=true"), "{}", d.log());
}
