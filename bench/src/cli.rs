//! The `dualsight-bench` command line: raw flags, validated into a
//! [`BenchConfig`], run, rendered. See BENCHMARKS.md.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::suite::{self, BenchConfig, Sections};
use crate::{assets, reference::Reference, stats::parse_list};
use dualsight::index::IndexParams;

/// Speed and memory of dualsight on a full-size checkpoint, optionally beside
/// transformers + PyTorch on the same machine (`--reference`).
#[derive(Debug, Parser)]
#[command(name = "dualsight-bench", version)]
pub struct BenchArgs {
    /// Checkpoint to benchmark. Default: the full-size random ViT-B/16 +
    /// BERT-base checkpoint (projection 512) in the work dir, made on first use.
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Only write that full-size random checkpoint into DIR, then exit.
    #[arg(long, value_name = "DIR")]
    pub make_model: Option<PathBuf>,
    /// Cache (generated model and JPEGs, kept between runs) and scratch space.
    /// Default: $TMPDIR/dualsight-bench.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Threads for the model, decoding and the reference (default: all CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// cpu, cuda, cuda:N (the reference runs there too when its torch has
    /// CUDA).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16 or f16 for our model (on the CPU: the dense weights; with AVX-512 BF16 also a batch's dense-layer inputs).
    /// The reference follows through torch.autocast on CUDA, and stays f32
    /// on the CPU.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// dtype or int8: our text tower's dense weights on the CPU, in the
    /// bench's own runs and the daemon's (`dualsight serve --text-weights`).
    #[arg(long, default_value = "dtype", value_name = "dtype|int8")]
    pub text_weights: String,
    /// Tiny sizes and few iterations: a smoke run of every part in minutes.
    #[arg(long)]
    pub quick: bool,
    /// Run only these parts: vision, ingest, search, restart (comma-separated).
    #[arg(long, value_name = "LIST")]
    pub only: Option<String>,
    /// Vision tower batch sizes [default: 1,8,32; quick: 1,2].
    #[arg(long, value_name = "LIST")]
    pub batches: Option<String>,
    /// Repeat each timed measurement for at least this long [default: 5; quick: 0].
    #[arg(long, value_name = "SECONDS")]
    pub min_secs: Option<f64>,
    /// ...and at least this many times, after one warm-up [default: 3; quick: 1].
    #[arg(long, value_name = "N")]
    pub min_iters: Option<usize>,
    /// ...but at most this many times.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_iters: usize,
    /// JPEG files indexed end to end [default: 64; quick: 4].
    #[arg(long, value_name = "N")]
    pub images: Option<usize>,
    /// Size of the generated JPEGs.
    #[arg(long, value_name = "WxH", default_value = "4000x3000")]
    pub image_size: String,
    #[arg(long, value_name = "Q", default_value_t = 90)]
    pub jpeg_quality: u8,
    /// Images per vision tower batch while indexing [default: the daemon's, 16].
    #[arg(long, value_name = "N")]
    pub ingest_batch: Option<usize>,
    /// Index sizes (stored vectors), e.g. 10000,100000,1000000 or 10k,100k,1M
    /// [default: 10k,100k; quick: 1000,3000]. Restart figures use the largest.
    #[arg(long, value_name = "LIST")]
    pub sizes: Option<String>,
    /// Text queries timed per size [default: 200; quick: 10].
    #[arg(long, value_name = "N")]
    pub queries: Option<usize>,
    /// Synthetic queries for recall and search latency [default: 500; quick: 50].
    #[arg(long, value_name = "N")]
    pub recall_queries: Option<usize>,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// HNSW M [default: the daemon's].
    #[arg(long)]
    pub m: Option<usize>,
    /// HNSW ef_construction [default: the daemon's].
    #[arg(long)]
    pub ef_construction: Option<usize>,
    /// HNSW ef_search [default: the daemon's].
    #[arg(long)]
    pub ef_search: Option<usize>,
    /// More ef_search values to report recall and search latency at ("" for none).
    #[arg(long, value_name = "LIST", default_value = "128")]
    pub ef_sweep: String,
    /// Skip the real daemon start (store fill, `dualsight serve`, gRPC queries).
    #[arg(long)]
    pub no_daemon: bool,
    /// Also run scripts/bench_reference.py (transformers + PyTorch + PIL) and
    /// show both side by side.
    #[arg(long)]
    pub reference: bool,
    /// Python interpreter with torch, transformers and Pillow.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    pub python: String,
    /// The reference script [default: scripts/bench_reference.py of this source tree].
    #[arg(long, value_name = "PATH")]
    pub reference_script: Option<PathBuf>,
    /// Write the whole report (figures, machine, versions, config) as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Keep the scratch directory (stores, checkpoints, daemon log).
    #[arg(long)]
    pub keep_scratch: bool,
    /// The restart section's data dir, kept after the run. With `--only
    /// restart`, when it already holds this run's largest size (made to the
    /// end by an earlier run with the same model, seed and index settings),
    /// the build, fill and checkpoint are skipped and only the daemon is
    /// measured on it: a 1M daemon in minutes instead of half an hour.
    #[arg(long, value_name = "DIR")]
    pub daemon_data: Option<PathBuf>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The dualsight source tree (test tokenizer and photos) [default: the one
    /// this binary was built from].
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,
    /// The `dualsight` binary the restart section runs as a daemon [default:
    /// `dualsight` beside this binary, as `cargo build --release --workspace` leaves it].
    #[arg(long, value_name = "PATH")]
    pub dualsight: Option<PathBuf>,
}

/// Name of the default checkpoint in the work dir.
const DEFAULT_MODEL: &str = "vit-b16-bert-base-p512";

fn tree(args: &BenchArgs) -> PathBuf {
    args.source_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")))
}

fn tokenizer_dir(args: &BenchArgs) -> PathBuf {
    tree(args).join("tests/fixtures/models/vit-bert")
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(dir) = &args.make_model {
        assets::make_model(dir, &tokenizer_dir(args))?;
        eprintln!("bench: wrote {}", dir.display());
        return Ok(());
    }
    let cfg = config(args)?;
    let reference = args.reference.then(|| Reference {
        python: args.python.clone(),
        script: args
            .reference_script
            .clone()
            .unwrap_or_else(|| tree(args).join("scripts/bench_reference.py")),
    });
    let report = suite::run(&cfg, reference.as_ref())?;
    println!("{}", render(&report, reference.is_some()));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))?;
        eprintln!("bench: report written to {}", path.display());
    }
    Ok(())
}

/// The table, then the machine, versions and notes.
pub fn render(r: &suite::Report, reference: bool) -> String {
    let m = &r.machine;
    let mut s = format!(
        "dualsight-bench ({} run, {:.0} s)\n\n{}\n",
        r.kind,
        r.duration_s,
        r.figures.table(reference)
    );
    s.push_str(&format!(
        "machine: {} ({} logical CPUs{}), {:.1} GiB, kernel {}; threads used: {} (candle {})\n",
        m.cpu,
        m.logical_cpus,
        m.physical_cores
            .map(|c| format!(", {c} cores"))
            .unwrap_or_default(),
        m.memory_gib.unwrap_or(0.0),
        m.kernel.as_deref().unwrap_or("?"),
        m.threads,
        m.candle_threads
    ));
    s.push_str(&format!(
        "vector level of dualsight's kernels: {}; CPU flags: {}\n",
        m.simd_level,
        m.simd_flags.join(" ")
    ));
    s.push_str(&format!(
        "load average at start / end: {} / {}\n",
        m.load_start.as_deref().unwrap_or("?"),
        m.load_end.as_deref().unwrap_or("?")
    ));
    let v: Vec<String> = r.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
    s.push_str(&format!("versions: {}\n", v.join(", ")));
    if let Some(info) = &r.reference
        && let Some(obj) = info.get("versions").and_then(|v| v.as_object())
    {
        let v: Vec<String> = obj
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or(&v.to_string())))
            .collect();
        s.push_str(&format!("reference: {}\n", v.join(", ")));
    }
    s.push_str(&format!(
        "model: {} on {} in {}, text weights {}\n",
        r.config.model.display(),
        r.config.device,
        r.config.dtype.as_str(),
        r.config.text_weights
    ));
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    if let Some(info) = &r.reference
        && let Some(notes) = info.get("notes").and_then(|v| v.as_array())
    {
        for n in notes.iter().filter_map(|n| n.as_str()) {
            s.push_str(&format!("reference note: {n}\n"));
        }
    }
    s
}

fn config(args: &BenchArgs) -> Result<BenchConfig> {
    let q = args.quick;
    let pick = |given: &Option<String>, full: &str, quick: &str| -> Result<Vec<usize>> {
        let s = given.as_deref().unwrap_or(if q { quick } else { full });
        parse_list(s).map_err(anyhow::Error::msg)
    };
    let threads = match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }),
    };

    let work_dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("dualsight-bench"));
    let sections = match &args.only {
        Some(s) => Sections::parse(s)?,
        None => Sections::ALL,
    };
    let image_size = parse_size(&args.image_size)?;
    let daemon = suite::daemon_index_params();
    let index = IndexParams {
        max_nb_connection: args.m.unwrap_or(daemon.max_nb_connection),
        ef_construction: args.ef_construction.unwrap_or(daemon.ef_construction),
        ef_search: args.ef_search.unwrap_or(daemon.ef_search),
        ..daemon
    };
    index.validate()?;
    let ef_sweep = if args.ef_sweep.trim().is_empty() {
        Vec::new()
    } else {
        parse_list(&args.ef_sweep).map_err(anyhow::Error::msg)?
    };
    let images = tree(args).join("tests/fixtures/images");
    let source_images = ["chelsea.png", "coffee.webp", "rocket.jpg", "camera.png"]
        .iter()
        .map(|n| images.join(n))
        .collect();
    let batches = pick(&args.batches, "1,8,32", "1,2")?;
    let sizes = pick(&args.sizes, "10k,100k", "1000,3000")?;
    let images_per_run = args.images.unwrap_or(if q { 4 } else { 64 });
    let ingest_batch = args.ingest_batch.unwrap_or(
        dualsight::config::Settings::default()
            .ingest
            .batch_size
            .on_cpu(),
    );
    if batches.contains(&0) || ingest_batch == 0 || images_per_run == 0 {
        bail!("batch sizes and --images must be at least 1");
    }
    let device = args.device.parse::<dualsight::device::DeviceSpec>()?;
    let dtype = dualsight::device::parse_dtype(&args.dtype)?;
    let text_weights = args
        .text_weights
        .parse::<dualsight::device::TextWeights>()?;
    let dualsight = dualsight_binary(args)?;
    // candle (gemm) and rayon read this when their pools start, which has not
    // happened yet (making the checkpoint below starts them); the daemon child inherits it.
    // SAFETY: no other thread exists yet that could read the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    // `auto` settled once (after the line above: opening a GPU starts
    // threads), so the daemon and the reference script run where our model does.
    let device = device.resolve();
    // Made (minutes, ~790 MB) only once every argument has been read.
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let model = match &args.model {
        Some(m) => dualsight::model::hub::resolve(&m.to_string_lossy())?,
        None => {
            let dir = work_dir.join(DEFAULT_MODEL);
            if !dir.join("config.json").is_file() {
                suite::say(format!(
                    "making the benchmark checkpoint (ViT-B/16 + BERT-base, random) in {}",
                    dir.display()
                ));
                assets::make_model(&dir, &tokenizer_dir(args))?;
            }
            dir
        }
    };
    let cfg = BenchConfig {
        model,
        work_dir,
        device,
        dtype,
        text_weights,
        threads,
        sections,
        batches,
        min_secs: args.min_secs.unwrap_or(if q { 0.0 } else { 5.0 }),
        min_iters: args.min_iters.unwrap_or(if q { 1 } else { 3 }),
        max_iters: args.max_iters,
        images: images_per_run,
        image_size,
        jpeg_quality: args.jpeg_quality.clamp(1, 100),
        ingest_batch,
        sizes,
        queries: args.queries.unwrap_or(if q { 10 } else { 200 }),
        recall_queries: args.recall_queries.unwrap_or(if q { 50 } else { 500 }),
        k: args.k.max(1),
        index,
        ef_sweep,
        daemon: !args.no_daemon,
        dualsight,
        seed: args.seed,
        keep_scratch: args.keep_scratch,
        daemon_data: args.daemon_data.clone(),
        quick: q,
        source_images,
    };
    Ok(cfg)
}

/// `--dualsight`, else `dualsight` beside this binary (one target directory).
fn dualsight_binary(args: &BenchArgs) -> Result<PathBuf> {
    let path = match &args.dualsight {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("dualsight"),
    };
    if args.no_daemon || path.is_file() {
        return Ok(path);
    }
    bail!(
        "{}: no dualsight binary for the restart section: run `cargo build --release --workspace`, pass --dualsight PATH, or --no-daemon",
        path.display()
    )
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--image-size {s}: expected WxH"))?;
    let (w, h) = (w.trim().parse::<u32>()?, h.trim().parse::<u32>()?);
    if w == 0 || h == 0 {
        bail!("--image-size {s}: zero");
    }
    Ok((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad argument is refused before the work dir or the ~790 MB
    /// checkpoint is made (the checkpoint took minutes first).
    #[test]
    fn bad_arguments_are_refused_before_the_checkpoint_is_made() {
        use clap::Parser;
        let scratch = tempfile::tempdir().unwrap();
        let work = scratch.path().join("work");
        for (bad, named) in [
            (&["--only", "vision,nothing"][..], "nothing"),
            (&["--sizes", "10k,lots"], "lots"),
            (&["--batches", "0"], "at least 1"),
            (&["--image-size", "4000"], "--image-size"),
            (&["--m", "1"], "max_nb_connection"),
            (&["--device", "gpu7"], "gpu7"),
            (&["--dtype", "f8"], "f8"),
            (&["--text-weights", "int4"], "int4"),
        ] {
            let mut argv = vec!["dualsight-bench", "--work-dir", work.to_str().unwrap()];
            argv.extend_from_slice(bad);
            let args = BenchArgs::try_parse_from(&argv).unwrap();
            let err = format!("{:#}", config(&args).unwrap_err());
            assert!(err.contains(named), "{bad:?}: {err}");
            assert!(!work.exists(), "{bad:?}: {err}");
        }
    }

    /// `--device auto` reaches the suite, and from it the daemon and the
    /// reference script, as the device our model opens (before, the script
    /// got `auto`, which it runs on the CPU while ours may take a GPU).
    #[test]
    fn auto_device_is_settled_before_the_suite_runs() {
        use clap::Parser;
        let scratch = tempfile::tempdir().unwrap();
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/models/vit-bert"
        );
        let work = scratch.path().join("work");
        let argv = [
            "dualsight-bench",
            "--work-dir",
            work.to_str().unwrap(),
            "--model",
            model,
        ];
        let argv = [&argv[..], &["--device", "auto", "--no-daemon", "--quick"]].concat();
        let cfg = config(&BenchArgs::try_parse_from(&argv).unwrap()).unwrap();
        assert_eq!(cfg.device, dualsight::device::DeviceSpec::Auto.resolve());
        assert_ne!(cfg.device.to_string(), "auto");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4000x3000").unwrap(), (4000, 3000));
        assert!(parse_size("4000").is_err());
        assert!(parse_size("0x5").is_err());
    }
}
