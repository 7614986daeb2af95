//! Resident memory of the index per vector, built three ways from the same
//! vectors in separate processes: hnsw_rs's insert in the daemon's batches
//! (`insert`), built at once (`bulk`), and a checkpoint of the inserted one
//! loaded back (`load`), with the daemon's allocator.
//!
//! cargo run --release -p dualsight-bench --example build_memory -- <vectors> insert|bulk|load

use std::time::Instant;

use anyhow::{Context, Result};
use dualsight::index::{IndexParams, VectorIndex};
use dualsight_bench::assets::rss;
use dualsight_bench::search::{build_index, insert_rows};
use dualsight_bench::synth::{DATA, Mixture};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DIM: usize = 512;

fn main() -> Result<()> {
    dualsight::heap::mimalloc_keep_freed_pages();
    dualsight::heap::set_trimmer(dualsight::heap::mimalloc_collect);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [n, how] = &args[..] else {
        anyhow::bail!("usage: build_memory <vectors> insert|bulk|load");
    };
    let n: usize = n.parse().context("a count of vectors")?;
    let data = Mixture::for_size(n, DIM, 42).points(DATA, 0, n, 2);
    let params = IndexParams::default();
    let scratch = tempfile::tempdir()?;
    if how == "load" {
        let idx = VectorIndex::new(DIM, params, n)?;
        insert_rows(&idx, &data, DIM, 0)?;
        idx.checkpoint(scratch.path(), "fp", n as u64)?;
    }
    dualsight::heap::trim();
    let (before, _) = rss(None).context("VmRSS")?;
    let t = Instant::now();
    let idx = match how.as_str() {
        "insert" => {
            let idx = VectorIndex::new(DIM, params, n)?;
            insert_rows(&idx, &data, DIM, 0)?;
            idx
        }
        "bulk" => build_index(&data, DIM, params)?,
        "load" => {
            let (idx, _) =
                VectorIndex::load(scratch.path(), "fp", DIM)?.context("no checkpoint")?;
            idx.wait_until_loaded();
            idx
        }
        other => anyhow::bail!("{other}: insert, bulk or load"),
    };
    let secs = t.elapsed().as_secs_f64();
    dualsight::heap::trim();
    let (after, _) = rss(None).context("VmRSS")?;
    println!(
        "{how} {n}: {:.0} B per vector resident, {secs:.1} s, {} points",
        (after.saturating_sub(before)) as f64 / n as f64,
        idx.len()
    );
    Ok(())
}
