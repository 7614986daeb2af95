//! Resident memory of the index per vector, built three ways from the same
//! vectors in separate processes: hnsw_rs's insert in the daemon's batches
//! (`insert`), built at once (`bulk`), and a checkpoint of the inserted one
//! loaded back (`load`), with the daemon's allocator. Beside the resident
//! memory it prints the bytes the heap holds live, so a gap between the two
//! (pages half full after a loader's temporaries are freed) is told apart
//! from bigger allocations.
//!
//! cargo run --release -p dualsight-bench --example build_memory -- <vectors> insert|bulk|load

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use dualsight::index::{IndexParams, VectorIndex};
use dualsight_bench::assets::rss;
use dualsight_bench::search::{build_index, insert_rows};
use dualsight_bench::synth::{DATA, Mixture};

/// mimalloc, counting the bytes held live.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to mimalloc unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

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
    let live_before = LIVE.load(Ordering::Relaxed);
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
            // The flat table searched while the graph loads is freed after
            // the graph is in: measured before that, it adds ~dim + 8 bytes.
            idx.wait_until_settled();
            idx
        }
        other => anyhow::bail!("{other}: insert, bulk or load"),
    };
    let secs = t.elapsed().as_secs_f64();
    dualsight::heap::trim();
    let (after, _) = rss(None).context("VmRSS")?;
    let live = LIVE.load(Ordering::Relaxed) - live_before;
    println!(
        "{how} {n}: {:.0} B per vector resident, {:.0} B live in the heap, {secs:.1} s, {} points",
        (after.saturating_sub(before)) as f64 / n as f64,
        live as f64 / n as f64,
        idx.len()
    );
    Ok(())
}
