//! Figure 4, at the largest index size: the restart path after a clean
//! shutdown, and the daemon's memory.
//! - the store filled with the same vectors through `Store::commit` (sled,
//!   flushed), as the daemon would have left it;
//! - `VectorIndex::checkpoint` into the daemon's index directory (what a
//!   clean shutdown writes) and `VectorIndex::load` in process;
//! - a real `dualsight serve` on that data dir (a child process of this
//!   binary): start → gRPC health SERVING (model load + fingerprint + index
//!   load + replay), its VmRSS, live `Search` latency over gRPC, and
//!   SIGTERM → exit (which writes the shutdown checkpoint again).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::assets::{huge_pages, rss};
use crate::report::{Better, Figures};
use crate::search::add_latency;
use crate::suite::{BenchConfig, say};
use crate::synth::query_texts;
use dualsight::device::TextWeights;
use dualsight::encoder::Encoder;
use dualsight::index::VectorIndex;
use dualsight::store::{Commit, ContentHash, Embedding, FileRecord, Store};

pub const SECTION: &str = "4. restart and memory at the largest size";

/// Files per `Store::commit` while filling (one sled transaction + flush each).
const FILL_CHUNK: usize = 4096;
/// Paths of the synthetic files: outside every watched root.
pub const SYNTHETIC_ROOT: &str = "/dualsight-bench-synthetic";
/// Longest wait for the daemon to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(3600);

pub fn run(
    cfg: &BenchConfig,
    enc: &Arc<Encoder>,
    index: VectorIndex,
    data: Vec<f32>,
    scratch: &Path,
    figs: &mut Figures,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dim = enc.dim();
    let n = data.len() / dim;
    let fp = enc.fingerprint().to_string();
    let data_dir = match &cfg.daemon_data {
        Some(dir) => fresh_data_dir(dir, &Made::of(cfg, enc, n))?,
        None => scratch.join("daemon"),
    };
    let index_dir = data_dir.join("index").join(&fp);

    // The store, as the daemon would have written it.
    say(format!("{n} vectors: filling the store (sled)"));
    let store = Store::open(data_dir.join("store"))?;
    let space = store.space(&fp, dim)?;
    store.set_active(&fp)?;
    let t = Instant::now();
    let mut next_id = 1u64;
    for (c, chunk) in data.chunks(FILL_CHUNK * dim).enumerate() {
        let items: Vec<Commit> = chunk
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| synthetic_commit(c * FILL_CHUNK + i, v))
            .collect();
        let out = store.commit(&space, &items)?;
        for id in out.vector_ids {
            if id != next_id {
                bail!("store assigned vector id {id} where {next_id} was expected");
            }
            next_id += 1;
        }
    }
    let fill = t.elapsed().as_secs_f64();
    drop(data);
    figs.add(
        "store.commit_per_s",
        SECTION,
        format!("store fill: sled commits of {FILL_CHUNK} files + vectors, flushed"),
        "files/s",
        Better::Higher,
        n as f64 / fill,
    );
    figs.add(
        "store.bytes_per_file",
        SECTION,
        "store size on disk",
        "bytes/file",
        Better::Lower,
        store.size_on_disk()? as f64 / n as f64,
    );

    // Clean shutdown: the checkpoint.
    say(format!("{n} vectors: checkpoint"));
    let t = Instant::now();
    index.checkpoint(&index_dir, &fp, n as u64)?;
    figs.add(
        "restart.checkpoint_s",
        SECTION,
        "index checkpoint (dump + fsync + checksums)",
        "s",
        Better::Lower,
        t.elapsed().as_secs_f64(),
    );
    figs.add(
        "restart.checkpoint_bytes_per_vector",
        SECTION,
        "checkpoint size on disk",
        "bytes/vector",
        Better::Lower,
        dir_size(&index_dir) as f64 / n as f64,
    );
    drop(index);
    drop(space);
    drop(store);

    // In process: the load alone.
    let t = Instant::now();
    let (loaded, last) = VectorIndex::load(&index_dir, &fp, dim)?
        .context("the checkpoint just written does not load")?;
    let load = t.elapsed().as_secs_f64();
    if loaded.len() != n || last != n as u64 {
        bail!(
            "loaded {} vectors up to id {last}, expected {n}",
            loaded.len()
        );
    }
    loaded.wait_until_loaded();
    let graph = t.elapsed().as_secs_f64();
    drop(loaded);
    figs.add(
        "restart.index_load_s",
        SECTION,
        "index load from checkpoint until it answers (in process, checksums verified, flat table read)",
        "s",
        Better::Lower,
        load,
    );
    figs.add(
        "restart.index_graph_s",
        SECTION,
        "  …until the HNSW graph is in (background load; exact scans meanwhile)",
        "s",
        Better::Lower,
        graph,
    );

    if let Some(dir) = &cfg.daemon_data {
        let made = Made {
            complete: true,
            ..Made::of(cfg, enc, n)
        };
        made.write(dir)?;
    }
    if cfg.daemon {
        daemon(cfg, &data_dir, scratch, n, figs, notes)?;
    }
    if cfg.daemon_data.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// The file in a `--daemon-data` dir that says what it holds.
const MADE: &str = ".dualsight-bench-daemon-data";
/// What the bench leaves in a `--daemon-data` dir (the daemon's store,
/// index and model list): the only entries it removes to start again.
const KEPT: &[&str] = &["store", "index", "models.json"];
/// Bumped when the bench's vectors, paths or fill change, so that a dir
/// made before is made again.
const LAYOUT: u32 = 1;

/// What a kept data dir was made from: a later run reuses it only when all
/// of it matches (other vectors would make other figures) and the run that
/// made it finished.
#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Made {
    layout: u32,
    vectors: usize,
    dim: usize,
    fingerprint: String,
    seed: u64,
    m: usize,
    ef_construction: usize,
    max_layer: usize,
    complete: bool,
}

impl Made {
    /// What this run makes at size `n`, not yet complete.
    fn of(cfg: &BenchConfig, enc: &Encoder, n: usize) -> Made {
        Made {
            layout: LAYOUT,
            vectors: n,
            dim: enc.dim(),
            fingerprint: enc.fingerprint().to_string(),
            seed: cfg.seed,
            m: cfg.index.max_nb_connection,
            ef_construction: cfg.index.ef_construction,
            max_layer: cfg.index.max_layer,
            complete: false,
        }
    }

    fn read(dir: &Path) -> Option<Made> {
        let text = std::fs::read_to_string(dir.join(MADE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join(MADE), serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", dir.join(MADE).display()))
    }
}

/// A `--daemon-data` dir to fill: created, or cleared of what a bench left
/// in it (its marker says so); a non-empty directory without the marker is
/// refused and left alone. The marker is written first, not complete, so
/// that a run cut short leaves a dir the next run may clear.
fn fresh_data_dir(dir: &Path, made: &Made) -> Result<PathBuf> {
    let named = || format!("--daemon-data {}", dir.display());
    if dir.exists() {
        let empty = std::fs::read_dir(dir).with_context(named)?.next().is_none();
        if !empty {
            if Made::read(dir).is_none() {
                bail!(
                    "{}: not empty and not made by dualsight-bench (no readable {MADE}); \
                     name an empty or new directory",
                    named()
                );
            }
            for entry in KEPT {
                let path = dir.join(entry);
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match gone {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                    _ => {}
                }
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(named)?;
    made.write(dir)?;
    Ok(dir.to_path_buf())
}

/// Whether `--daemon-data` holds what this run would make at size `n`,
/// complete.
pub fn reusable(cfg: &BenchConfig, enc: &Encoder, n: usize) -> Result<bool> {
    let Some(dir) = &cfg.daemon_data else {
        return Ok(false);
    };
    if !dir.join(MADE).exists() {
        return Ok(false);
    }
    let want = Made {
        complete: true,
        ..Made::of(cfg, enc, n)
    };
    match Made::read(dir) {
        Some(made) if made == want => Ok(true),
        made => {
            say(format!(
                "--daemon-data {} holds {made:?}, this run wants {want:?}: making it again",
                dir.display()
            ));
            Ok(false)
        }
    }
}

/// The restart section on a kept data dir: only the daemon's figures.
pub fn reuse(
    cfg: &BenchConfig,
    enc: &Encoder,
    n: usize,
    scratch: &Path,
    figs: &mut Figures,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = cfg.daemon_data.as_deref().context("no --daemon-data")?;
    say(format!(
        "{n} vectors: reusing the data dir {} (build, fill and checkpoint skipped)",
        dir.display()
    ));
    notes.push(format!(
        "restart section on a kept data dir ({} vectors, model {}): the daemon's figures only",
        n,
        enc.fingerprint()
    ));
    if cfg.daemon {
        daemon(cfg, dir, scratch, n, figs, notes)?;
    }
    Ok(())
}

/// Synthetic file number `i` (under [`SYNTHETIC_ROOT`], 10,000 per folder)
/// with its vector `v`.
pub fn synthetic_commit(i: usize, v: &[f32]) -> Commit {
    file_commit(
        format!("{SYNTHETIC_ROOT}/{:03}/{i:08}.jpg", i / 10_000),
        i,
        v.to_vec(),
    )
}

/// File number `i` at `path` with its own new vector: a record unique to
/// `i` (size, mtime, content hash), as a scan would commit it.
pub fn file_commit(path: String, i: usize, vector: Vec<f32>) -> Commit {
    Commit {
        path,
        record: FileRecord {
            size: 3_000_000 + i as u64,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
            hash: ContentHash::of(&(i as u64).to_le_bytes()),
            indexed_at_ms: 1_700_000_000_000,
            meta: Default::default(),
        },
        embedding: Embedding::New(vector),
    }
}

fn dir_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Kills the child if we leave early (error or panic).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A `dualsight serve` child of this process.
struct Daemon {
    guard: ChildGuard,
    pid: u32,
    addr: String,
    log: PathBuf,
    ready_s: f64,
}

impl Daemon {
    /// Starts `dualsight serve` on `data_dir` and waits for health SERVING.
    fn start(cfg: &BenchConfig, data_dir: &Path, watch: &Path, log: PathBuf) -> Result<Daemon> {
        let exe = &cfg.dualsight;
        std::fs::create_dir_all(watch)?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let out = std::fs::File::create(&log)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let t0 = Instant::now();
        let child = Command::new(exe)
            .arg("serve")
            .arg("--model")
            .arg(&cfg.model)
            .arg("--watch")
            .arg(watch)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(&addr)
            .arg("--device")
            .arg(cfg.device.to_string())
            // The daemon's model in the type the bench's own runs use.
            .arg("--dtype")
            .arg(cfg.dtype.as_str())
            // Only when asked for: a daemon built before the flag can still
            // be measured against.
            .args(
                (cfg.text_weights != TextWeights::Dtype)
                    .then(|| ["--text-weights".to_owned(), cfg.text_weights.to_string()])
                    .into_iter()
                    .flatten(),
            )
            // The query log splits each text query's time (tower, search).
            .env(
                "RUST_LOG",
                "info,hnsw_rs=warn,sled=warn,dualsight::daemon::query=debug",
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();
        let mut guard = ChildGuard(Some(child));
        if let Err(e) = runtime.block_on(wait_ready(&addr, &mut guard, t0)) {
            bail!("{e:#}\n--- daemon log ---\n{}", tail(&log, 4000));
        }
        Ok(Daemon {
            guard,
            pid,
            addr,
            log,
            ready_s: t0.elapsed().as_secs_f64(),
        })
    }

    /// SIGTERM, then waits for a clean exit; returns the seconds it took.
    fn stop(mut self) -> Result<f64> {
        let t = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        let mut child = self.guard.0.take().expect("child present");
        let exit = child.wait()?;
        let stop = t.elapsed().as_secs_f64();
        if !exit.success() {
            bail!(
                "daemon exited with {exit} after SIGTERM\n--- daemon log ---\n{}",
                tail(&self.log, 4000)
            );
        }
        Ok(stop)
    }
}

fn daemon(
    cfg: &BenchConfig,
    data_dir: &Path,
    scratch: &Path,
    n: usize,
    figs: &mut Figures,
    notes: &mut Vec<String>,
) -> Result<()> {
    let watch = scratch.join("watch-empty");
    // Baseline: the same daemon with nothing indexed.
    say("starting `dualsight serve` on an empty data dir (memory baseline)");
    let empty = Daemon::start(
        cfg,
        &scratch.join("daemon-empty"),
        &watch,
        scratch.join("daemon-empty.log"),
    )?;
    let empty_rss = rss(Some(empty.pid)).map(|r| r.0);
    empty.stop()?;

    say(format!(
        "{n} vectors: starting `dualsight serve` on their data dir"
    ));
    let d = Daemon::start(cfg, data_dir, &watch, scratch.join("daemon.log"))?;
    figs.add(
        "daemon.ready_s",
        SECTION,
        "`dualsight serve` start → health SERVING",
        "s",
        Better::Lower,
        d.ready_s,
    );
    let log_text = std::fs::read_to_string(&d.log).unwrap_or_default();
    if let (Some(a), Some(b)) = (
        log_time(&log_text, "model device"),
        log_time(&log_text, "model loaded"),
    ) {
        figs.add(
            "daemon.model_load_s",
            SECTION,
            "  of which model load + fingerprint (daemon log)",
            "s",
            Better::Lower,
            (b - a).rem_euclid(86_400.0),
        );
    }
    if let Some(ms) = log_field(&log_text, "index ready", "elapsed_ms") {
        figs.add(
            "daemon.index_ready_s",
            SECTION,
            "  of which index load + replay (daemon log)",
            "s",
            Better::Lower,
            ms / 1e3,
        );
    }
    if log_text.contains("from_checkpoint=false") {
        notes.push("the daemon rebuilt its index instead of loading the checkpoint".into());
    }
    let texts = query_texts(cfg.queries.clamp(1, 200), cfg.seed ^ 0xD43);
    // The first queries, while the graph may still be loading: exact scans.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Texts of their own: the timed ones below must reach the tower, not
    // the query cache these fill.
    let early = query_texts(20, cfg.seed ^ 0xEA7);
    let early = &early[..];
    say(format!(
        "{n} vectors: {} gRPC searches right after SERVING",
        early.len()
    ));
    let lat = runtime.block_on(live_searches(&d.addr, early, cfg.k))?;
    drop(runtime);
    add_latency(
        figs,
        "daemon.search_warm",
        SECTION,
        "live gRPC Search right after SERVING (exact scans while the graph loads)",
        &lat,
    );
    if let Some((rss_warm, _)) = rss(Some(d.pid)) {
        figs.add(
            "daemon.rss_warm_mb",
            SECTION,
            "daemon resident memory right after SERVING (flat table, graph loading)",
            "MB",
            Better::Lower,
            rss_warm as f64 / 1e6,
        );
    }
    // A rebuilt index (no usable checkpoint) has its graph from the start.
    // Otherwise the steady state begins once the load's leftovers are freed:
    // the searches and memory below are timed from there.
    let log_text = if log_text.contains("from_checkpoint=false") {
        log_text
    } else {
        wait_for_log(&d.log, "index load finished", Duration::from_secs(1800))?
    };
    if let Some(ms) = log_field(&log_text, "index graph loaded", "elapsed_ms") {
        figs.add(
            "daemon.graph_loaded_s",
            SECTION,
            "  HNSW graph in, after \"index ready\" (daemon log, background)",
            "s",
            Better::Lower,
            ms / 1e3,
        );
    }
    if let Some(ms) = log_field(&log_text, "index load finished", "elapsed_ms") {
        figs.add(
            "daemon.load_trim_s",
            SECTION,
            "  then the vector table freed and the heap trimmed (daemon log; searches wait for it)",
            "s",
            Better::Lower,
            ms / 1e3,
        );
    }
    if let Some((rss_now, hwm)) = rss(Some(d.pid)) {
        figs.add(
            "daemon.rss_mb",
            SECTION,
            "daemon resident memory with the graph in (VmRSS)",
            "MB",
            Better::Lower,
            rss_now as f64 / 1e6,
        );
        if let Some(huge) = huge_pages(d.pid) {
            figs.add(
                "daemon.huge_pages_mb",
                SECTION,
                "  of which in transparent huge pages (AnonHugePages)",
                "MB",
                Better::Higher,
                huge as f64 / 1e6,
            );
        }
        figs.add(
            "daemon.peak_rss_mb",
            SECTION,
            "daemon peak resident memory during start (VmHWM)",
            "MB",
            Better::Lower,
            hwm as f64 / 1e6,
        );
        if let Some(base) = empty_rss {
            figs.add(
                "daemon.empty_rss_mb",
                SECTION,
                "daemon resident memory when ready, nothing indexed",
                "MB",
                Better::Lower,
                base as f64 / 1e6,
            );
            figs.add(
                "daemon.bytes_per_vector",
                SECTION,
                "daemon memory per indexed vector (VmRSS − empty) / N",
                "bytes/vector",
                Better::Lower,
                rss_now.saturating_sub(base) as f64 / n as f64,
            );
        }
    }

    // Live queries over gRPC.
    say(format!("{n} vectors: {} live gRPC searches", texts.len()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let before = query_times(&d.log).len();
    let lat = runtime.block_on(live_searches(&d.addr, &texts, cfg.k))?;
    // After the one warm-up query, the timed ones.
    let split: Vec<(f64, f64)> = query_times(&d.log)
        .into_iter()
        .skip(before + 1)
        .filter(|t| !t.cached)
        .map(|t| (t.text_s, t.search_s))
        .collect();
    let (cached, trip) = runtime.block_on(live_overhead(&d.addr, &texts[0], cfg.k, texts.len()))?;
    // Close our connection first: the server's graceful shutdown waits for it.
    drop(runtime);
    add_latency(
        figs,
        "daemon.search",
        SECTION,
        "live gRPC Search (text → hits with paths), graph in",
        &lat,
    );
    if split.len() * 2 >= texts.len() {
        let (tower, search): (Vec<f64>, Vec<f64>) = split.into_iter().unzip();
        add_latency(
            figs,
            "daemon.search_text_part",
            SECTION,
            "  of which the text embedding (tokenize + tower, in the daemon; its query log)",
            &tower,
        );
        add_latency(
            figs,
            "daemon.search_search_part",
            SECTION,
            "  of which the search after it (index + rescoring + paths; its query log)",
            &search,
        );
    } else {
        notes.push("the daemon's query log had no timings (an older daemon?)".into());
    }
    add_latency(
        figs,
        "daemon.search_cached",
        SECTION,
        "  the same text again (embedding from the query cache: search + rescoring + paths + gRPC)",
        &cached,
    );
    add_latency(
        figs,
        "daemon.grpc_round_trip",
        SECTION,
        "  gRPC round trip alone (an empty health check)",
        &trip,
    );
    let stop = d.stop()?;
    figs.add(
        "daemon.stop_s",
        SECTION,
        "SIGTERM → exit (flush + shutdown checkpoint)",
        "s",
        Better::Lower,
        stop,
    );
    Ok(())
}

async fn wait_ready(addr: &str, guard: &mut ChildGuard, t0: Instant) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let uri = format!("http://{addr}");
    loop {
        if let Some(c) = &mut guard.0
            && let Some(status) = c.try_wait()?
        {
            bail!("the daemon exited with {status} before it was ready");
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!("the daemon was not ready after {READY_TIMEOUT:?}");
        }
        if let Ok(ch) = tonic::transport::Endpoint::from_shared(uri.clone())?
            .connect()
            .await
        {
            let mut h = HealthClient::new(ch);
            loop {
                match h
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
                    Ok(_) => {}
                    Err(_) => break,
                }
                if let Some(c) = &mut guard.0
                    && let Some(status) = c.try_wait()?
                {
                    bail!("the daemon exited with {status} before it was ready");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn live_searches(addr: &str, texts: &[String], k: usize) -> Result<Vec<f64>> {
    use dualsight::server::proto::SearchRequest;
    let mut client = dualsight::cli::client::connect(addr).await?;
    let req = |t: &str| SearchRequest {
        text: t.to_string(),
        limit: k as u32,
        ..Default::default()
    };
    // A text of its own: the timed ones must each reach the tower.
    let first = client
        .search(req("a warm-up query the timed ones never repeat"))
        .await?
        .into_inner();
    if first.hits.is_empty() {
        bail!("the live daemon returned no hits");
    }
    if !first.hits[0].path.starts_with(SYNTHETIC_ROOT) {
        bail!("unexpected hit {:?}", first.hits[0].path);
    }
    timed(texts, async |t| {
        std::hint::black_box(client.search(req(t)).await?);
        Ok(())
    })
    .await
}

/// Seconds each `call` took, one per item, in order.
async fn timed<T>(
    items: impl IntoIterator<Item = T>,
    mut call: impl AsyncFnMut(T) -> Result<()>,
) -> Result<Vec<f64>> {
    let mut lat = Vec::new();
    for item in items {
        let t0 = Instant::now();
        call(item).await?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    Ok(lat)
}

/// What the daemon adds around the text tower: `reps` Searches for one text
/// the query cache already holds (so no tower runs), and `reps` health checks
/// (an empty call), the transport's own round trip.
async fn live_overhead(
    addr: &str,
    text: &str,
    k: usize,
    reps: usize,
) -> Result<(Vec<f64>, Vec<f64>)> {
    use dualsight::server::proto::SearchRequest;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = dualsight::cli::client::connect(addr).await?;
    let req = || SearchRequest {
        text: text.to_string(),
        limit: k as u32,
        ..Default::default()
    };
    client.search(req()).await?;
    let cached = timed(0..reps, async |_| {
        std::hint::black_box(client.search(req()).await?);
        Ok(())
    })
    .await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    let check = || HealthCheckRequest {
        service: String::new(),
    };
    health.check(check()).await?;
    let trip = timed(0..reps, async |_| {
        std::hint::black_box(health.check(check()).await?);
        Ok(())
    })
    .await?;
    Ok((cached, trip))
}

/// `field=value` (a number) on the last log line containing `marker`.
pub fn log_field(log: &str, marker: &str, field: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(marker))?;
    let key = format!("{field}=");
    let start = line.find(&key)? + key.len();
    let rest = &line[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One text query's split, from the daemon's debug line "text query timed".
#[derive(Debug, PartialEq)]
pub struct QueryTime {
    pub text_s: f64,
    pub search_s: f64,
    pub cached: bool,
}

/// Every "text query timed" line of the daemon's log, in order.
fn query_times(log: &Path) -> Vec<QueryTime> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    parse_query_times(&text)
}

fn parse_query_times(log: &str) -> Vec<QueryTime> {
    log.lines()
        .filter(|l| l.contains("text query timed"))
        .filter_map(|l| {
            Some(QueryTime {
                text_s: log_field(l, "", "text_us")? / 1e6,
                search_s: log_field(l, "", "search_us")? / 1e6,
                cached: l.contains("cached=true"),
            })
        })
        .collect()
}

/// Seconds since midnight (UTC) of the first log line containing `marker`
/// (tracing's default format starts with an RFC 3339 timestamp).
pub fn log_time(log: &str, marker: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let ts = line.split_whitespace().next()?;
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.splitn(3, ':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + sec)
}

fn tail(path: &Path, max: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let cut = s.len().saturating_sub(max);
    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    s[cut..].to_string()
}

/// The log's text once it has a line containing `what` (polled; `timeout`
/// bounds a daemon that never gets there).
fn wait_for_log(log: &Path, what: &str, timeout: Duration) -> Result<String> {
    let until = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return Ok(text);
        }
        if Instant::now() > until {
            bail!(
                "no \"{what}\" in {} after {timeout:?}\n{}",
                log.display(),
                tail(log, 4000)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_fields_parse() {
        let log = "2026-01-01T00:00:00Z  INFO index ready vectors=10 replayed=0 from_checkpoint=true elapsed_ms=1234\nother";
        assert_eq!(log_field(log, "index ready", "elapsed_ms"), Some(1234.0));
        assert_eq!(log_field(log, "index ready", "vectors"), Some(10.0));
        assert_eq!(log_field(log, "nope", "elapsed_ms"), None);
        let t = log_time(log, "index ready").unwrap();
        assert_eq!(t, 0.0);
        let two = "2026-11-26T19:16:15.687323Z  INFO model device requested=cpu";
        assert!((log_time(two, "model device").unwrap() - 69375.687323).abs() < 1e-6);
    }

    /// A `--daemon-data` dir is made, or emptied when a bench made it; a
    /// directory holding anything else is refused and left as it was.
    #[test]
    fn daemon_data_dirs_are_only_emptied_when_the_bench_made_them() {
        let tmp = tempfile::tempdir().unwrap();
        let made = Made {
            layout: LAYOUT,
            vectors: 10,
            dim: 4,
            fingerprint: "f".into(),
            seed: 1,
            m: 24,
            ef_construction: 200,
            max_layer: 16,
            complete: false,
        };
        let fresh = tmp.path().join("new");
        assert_eq!(fresh_data_dir(&fresh, &made).unwrap(), fresh);
        assert_eq!(Made::read(&fresh), Some(made.clone()));
        // Someone's directory, or one whose marker is not the bench's.
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::create_dir(theirs.join("store")).unwrap();
        std::fs::write(theirs.join(MADE), b"{}").unwrap();
        let err = fresh_data_dir(&theirs, &made).unwrap_err().to_string();
        assert!(err.contains("not made by dualsight-bench"), "{err}");
        assert!(theirs.join("store").exists());
        // The bench's own (complete or cut short): only its entries go.
        let ours = tmp.path().join("ours");
        std::fs::create_dir_all(ours.join("store/db")).unwrap();
        std::fs::create_dir(ours.join("index")).unwrap();
        std::fs::write(ours.join("models.json"), b"[]").unwrap();
        std::fs::write(ours.join("notes.txt"), b"mine").unwrap();
        Made {
            complete: true,
            ..made.clone()
        }
        .write(&ours)
        .unwrap();
        fresh_data_dir(&ours, &made).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&ours)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [MADE, "notes.txt"]);
        assert!(!Made::read(&ours).unwrap().complete);
    }

    #[test]
    fn query_times_parse() {
        let log = "2026-01-01T00:00:00Z DEBUG dualsight::daemon::query: text query timed text_us=11500 search_us=3200 cached=false\n\
                   x\n\
                   2026-01-01T00:00:01Z DEBUG dualsight::daemon::query: text query timed text_us=40 search_us=3100 cached=true";
        let t = parse_query_times(log);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            QueryTime {
                text_s: 0.0115,
                search_s: 0.0032,
                cached: false
            }
        );
        assert!(t[1].cached);
    }

    #[test]
    fn synthetic_commits_are_unique_and_outside_roots() {
        let a = synthetic_commit(1, &[1.0]);
        let b = synthetic_commit(2, &[1.0]);
        assert_ne!(a.record.hash, b.record.hash);
        assert!(a.path.starts_with(SYNTHETIC_ROOT));
    }
}
