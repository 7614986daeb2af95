//! CPU f32 fast paths for the two operations that hold nearly all of a
//! tower's time: dense layers and multi-head self-attention.
//!
//! candle's generic ops are correct but, on a CPU, each one allocates a fresh
//! tensor and makes one more pass over memory: a linear layer is a matmul, then
//! a broadcast bias add, then the residual add; attention splits heads with
//! transposes and `contiguous()` copies, and every per-head matmul is threaded
//! on its own (a barrier per head on tiny matrices). Here a dense layer is one
//! matrix product that reads its bias (and residual) from the destination
//! (`small` for a few rows, `packed` for many, `gemm` off x86-64 or without
//! AVX2), and attention runs one task per (image, head) that reads q, k and v
//! in place through strides and writes its context straight into `[B, L, H]`.
//!
//! Only f32 tensors on the CPU take these paths; everything else (CUDA, f16,
//! bf16) goes through candle, and `tests` below check both agree.

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, Tensor};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use crate::simd::{self, Level};

/// Runs `f` on the contiguous f32 data of a CPU tensor; `None` for any other
/// device, dtype or a strided layout (the caller then uses candle's op).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    Some(f(&data[start..end]))
}

/// Like [`with_f32`] for any layout (broadcast views included): the whole
/// storage and the layout that indexes it.
fn with_f32_strided<R>(t: &Tensor, f: impl FnOnce(&[f32], &Layout) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        return None;
    };
    Some(f(data, layout))
}

/// True when `t` can take the fast path (CPU f32, whatever its layout).
pub fn is_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// True when `t` can be a dense weight on the fast path: on the CPU in f32,
/// bf16 or f16.
pub fn is_cpu_weight(t: &Tensor) -> bool {
    t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16 | DType::F16)
}

/// [`matmul_wt`] with the weight a CPU tensor `[n, k]` of f32, bf16 or f16
/// (`x` is `[m, k]`); `None` when it is elsewhere, of another type, strided
/// or of another shape (the caller then takes candle's path).
pub fn matmul_weight(
    x: &[f32],
    m: usize,
    w: &Tensor,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) -> Option<()> {
    if !w.device().is_cpu() {
        return None;
    }
    let (n, k) = w.dims2().ok()?;
    if x.len() < m * k {
        return None;
    }
    let (storage, layout) = w.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    let shape = (m, k, n);
    match &*storage {
        Storage::Cpu(CpuStorage::F32(d)) => {
            matmul_wt(x, &d[start..end], shape, dst, dst_rs, accumulate)
        }
        Storage::Cpu(CpuStorage::BF16(d)) => {
            matmul_wt(x, &d[start..end], shape, dst, dst_rs, accumulate)
        }
        Storage::Cpu(CpuStorage::F16(d)) => {
            matmul_wt(x, &d[start..end], shape, dst, dst_rs, accumulate)
        }
        _ => return None,
    }
    Some(())
}

fn parallelism(flops: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    // gemm has its own threshold too; this one keeps a 1-row query from
    // waking the pool for a few microseconds of work.
    if worth_splitting(threads, flops) {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A raw pointer that may cross into rayon tasks; each task writes a disjoint
/// part of the buffer it points into.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so a closure captures the whole (Send) wrapper
    /// rather than the raw pointer field alone.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `dst[i, j] (+)= Σ_k x[i, k] · w[j, k]` for `x: [m, k]` and `w: [n, k]`
/// (row-major, as `nn.Linear` stores it), with `dst` rows `dst_rs` apart.
/// With `accumulate`, the existing contents of `dst` are added (a bias or a
/// residual placed there beforehand); otherwise they are overwritten.
///
/// # Panics
/// If a slice is too short for the shapes given (a caller bug, checked before
/// any unsafe access).
pub fn matmul_wt<W: WeightElem>(
    x: &[f32],
    w: &[W],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    matmul_wt_at(simd::level(), x, w, (m, k, n), dst, dst_rs, accumulate)
}

/// [`matmul_wt`] at a given vector level: tests run every level the
/// machine has. The checks are here, so no caller reaches the unsafe
/// kernels without them.
fn matmul_wt_at<W: WeightElem>(
    level: Level,
    x: &[f32],
    w: &[W],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    assert!(w.len() >= n * k, "matmul_wt weight");
    if !checked_product("matmul_wt", level, x.len(), (m, k, n), dst.len(), dst_rs) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if level >= Level::Avx2 {
        return if m <= SMALL_M {
            small::matmul_wt(level, x, w, (m, k, n), dst, dst_rs, accumulate)
        } else {
            packed::matmul_wt(level, x, w, (m, k, n), dst, dst_rs, accumulate)
        };
    }
    let mut scratch = Vec::new();
    let w = weight::widened(&w[..n * k], &mut scratch);
    gemm_wt(x, w, (m, k, n), dst, dst_rs, accumulate)
}

/// The checks before a product's kernels run, so no caller reaches the
/// unsafe code with a short slice or an unsupported level (panics name
/// `what`); `false` when there is nothing to compute.
fn checked_product(
    what: &str,
    level: Level,
    x_len: usize,
    (m, k, n): (usize, usize, usize),
    dst_len: usize,
    dst_rs: usize,
) -> bool {
    assert!(x_len >= m * k, "{what}: input shorter than {m} × {k}");
    assert!(
        m == 0 || dst_len >= (m - 1) * dst_rs + n,
        "{what}: destination shorter than {m} rows of {n}, {dst_rs} apart"
    );
    assert!(level.supported(), "{what}: this CPU cannot run {level:?}");
    m > 0 && n > 0
}

/// [`matmul_wt`] through `gemm`, for CPUs without AVX2 + FMA; the caller has
/// checked the slice lengths.
fn gemm_wt(
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    // SAFETY: matmul_wt's asserts bound every index gemm touches: lhs rows are k
    // apart (m of them), rhs = wᵀ reads w[j * k + kk], dst rows are dst_rs apart.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism(m * n * k),
        )
    }
}

/// Whether `parts` parts of `flops` multiply-adds in all are worth waking
/// other threads for: below 2^16 the wake-up costs more than the work.
fn worth_splitting(parts: usize, flops: usize) -> bool {
    parts > 1 && flops > 1 << 16
}

/// Runs `task(j0)` for each block of `width` output columns out of `n`, on
/// the rayon pool when there is more than one block and `flops` is worth
/// waking it for.
fn column_tasks(n: usize, width: usize, flops: usize, task: impl Fn(usize) + Send + Sync) {
    spread(n.div_ceil(width), flops, 0, &|t| task(t * width));
}

/// Runs `task(i)` for every `i < count`, `flops` multiply-adds in all: on
/// the calling thread when they are not [worth splitting](worth_splitting);
/// on the team when it is free and they are at most `team_up_to` (a text
/// query's work, whose helpers are awake between its products, where
/// waking rayon's sleeping workers would cost more than the work); on
/// rayon otherwise (a photo batch's, within its lane).
fn spread(count: usize, flops: usize, team_up_to: usize, task: &(dyn Fn(usize) + Sync)) {
    if !worth_splitting(count, flops) {
        (0..count).for_each(task);
    } else if flops > team_up_to || !team::run(count, task) {
        (0..count).into_par_iter().for_each(task);
    }
}

/// Attention and activations of at most this many multiply-adds take the
/// team ([`spread`]): a text query's, not a photo batch's.
const SMALL_ON_TEAM: usize = 1 << 24;

/// Up to this many rows (a text query is ~10 tokens), a dense layer streams
/// its weight once and takes dot products against every row held in cache;
/// packing both operands for each call, as gemm and the packed kernel do, ran
/// at half this kernel's rate below ~48 rows on BERT-base's shapes (measured
/// with `bench/examples/dense.rs`: at 48 rows ~100 GFLOP/s here, 72 packed at 49).
#[cfg(target_arch = "x86_64")]
const SMALL_M: usize = 48;

mod int8;
mod panels;
mod team;
mod weight;
pub use panels::PanelWeight;
pub use weight::WeightElem;

// Both kernels need AVX2 + FMA at least (`simd::level`); below that, and
// off x86-64, gemm does the work.
#[cfg(target_arch = "x86_64")]
mod packed;
#[cfg(target_arch = "x86_64")]
mod small;

/// True when this CPU has AVX2 and FMA, which both kernels need.
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// The starting contents of a dense layer's `[m, n]` output, made in one
/// parallel pass over fresh memory: `residual + bias`, `residual`, `bias` in
/// every row, or zeros.
pub fn start_rows(m: usize, n: usize, residual: Option<&[f32]>, bias: Option<&[f32]>) -> Vec<f32> {
    let len = m * n;
    assert!(residual.is_none_or(|r| r.len() >= len) && bias.is_none_or(|b| b.len() >= n));
    let mut out: Vec<f32> = Vec::with_capacity(len);
    if n == 0 {
        return out;
    }
    // Rows per task: ~64 KB each, enough to amortise a task.
    let rows = (16 * 1024 / n).max(1);
    let fill = |(c, chunk): (usize, &mut [std::mem::MaybeUninit<f32>])| {
        for (i, row) in chunk.chunks_mut(n).enumerate() {
            let at = (c * rows + i) * n;
            match (residual, bias) {
                (Some(r), Some(b)) => {
                    for (v, (x, y)) in row.iter_mut().zip(r[at..at + n].iter().zip(b)) {
                        v.write(x + y);
                    }
                }
                (Some(r), None) => {
                    for (v, x) in row.iter_mut().zip(&r[at..at + n]) {
                        v.write(*x);
                    }
                }
                (None, Some(b)) => {
                    for (v, y) in row.iter_mut().zip(b) {
                        v.write(*y);
                    }
                }
                (None, None) => {
                    for v in row {
                        v.write(0.0);
                    }
                }
            }
        }
    };
    let spare = &mut out.spare_capacity_mut()[..len];
    if len > 1 << 15 {
        spare.par_chunks_mut(rows * n).enumerate().for_each(fill);
    } else {
        spare.chunks_mut(rows * n).enumerate().for_each(fill);
    }
    // SAFETY: `fill` wrote every one of the first `len` elements (the chunks
    // cover them all).
    unsafe { out.set_len(len) };
    out
}

/// `erf(x)` in f32 as a branch-free rational polynomial (odd degree 13 over
/// even degree 8, on x clamped to [-4, 4], where erf is ±1 in f32): the
/// approximation XLA and Eigen use, within a few ulp. Unlike a table- or
/// branch-based `erff`, a loop of it vectorises, and GELU runs it on every
/// value of the widest activation in the model.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_1e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_4e-3;
    q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

/// Applies `f` to every element, in parallel chunks big enough to be worth
/// a task: a text query's GELU (tens of thousands of values, between two of
/// its products) on the team, a photo batch's on rayon.
pub fn map_in_place(xs: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    let len = xs.len();
    let chunk = if len > 1 << 16 { 32 * 1024 } else { 8 * 1024 };
    let out = SendPtr(xs.as_mut_ptr());
    // An erf or an exp costs ~8 multiply-adds a value.
    spread(len.div_ceil(chunk), 8 * len, SMALL_ON_TEAM, &|c| {
        let at = c * chunk;
        // SAFETY: task `c` alone maps elements at..at + chunk of `xs`,
        // which `spread` is done with before this function returns.
        let part =
            unsafe { std::slice::from_raw_parts_mut(out.get().add(at), chunk.min(len - at)) };
        part.iter_mut().for_each(|v| *v = f(*v));
    });
}

thread_local! {
    /// Per-thread attention scores, reused across heads and calls: an `L × L`
    /// block per task, big enough that a fresh allocation would page-fault.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub len: usize,
    /// The first `queries` tokens attend (all `len` for a whole layer; 1
    /// for a last layer whose pooler reads token 0).
    pub queries: usize,
    pub hidden: usize,
    pub heads: usize,
}

/// `softmax(q kᵀ · scale + bias) v` per head.
///
/// `qkv` is `[B, L, 3H]` (q, then k, then v, each `H = heads × head_dim` wide,
/// heads side by side as `nn.Linear` lays them out); only the first
/// `queries` rows of each item's q are read. `bias`, if any, is an f32 CPU
/// tensor broadcastable to `[B, heads, L, L]` or `[B, heads, queries, L]`
/// (padding mask, causal mask, relative position bias). Returns the context
/// of the first `queries` tokens, `[B, queries, H]`, heads merged. The
/// softmax runs in f32, as transformers does.
pub fn attention(
    qkv: &[f32],
    s: AttentionShape,
    scale: f32,
    bias: Option<&Tensor>,
) -> Result<Vec<f32>> {
    let AttentionShape {
        batch: b,
        len: l,
        queries: nq,
        hidden: h,
        heads,
    } = s;
    let hd = h / heads;
    assert!(qkv.len() >= b * l * 3 * h && nq <= l, "attention qkv");
    let bias = match bias {
        // A bias with a row per token: the attending tokens' rows.
        Some(t) if nq < l && t.rank() >= 2 && t.dim(t.rank() - 2)? == l => Some(
            t.narrow(t.rank() - 2, 0, nq)?
                .broadcast_as((b, heads, nq, l))?,
        ),
        Some(t) => Some(t.broadcast_as((b, heads, nq, l))?),
        None => None,
    };
    let mut out = vec![0f32; b * nq * h];
    let out_ptr = SendPtr(out.as_mut_ptr());
    let run = |bias: Option<(&[f32], &Layout)>| {
        spread(
            b * heads,
            2 * b * heads * nq * l * hd,
            SMALL_ON_TEAM,
            &|task| {
                let (bi, hj) = (task / heads, task % heads);
                SCORES.with(|scores| {
                    let mut scores = scores.borrow_mut();
                    scores.resize(nq * l, 0.0);
                    let has_bias = if let Some((data, layout)) = bias {
                        let st = layout.stride();
                        let base = layout.start_offset() + bi * st[0] + hj * st[1];
                        for r in 0..nq {
                            let row = &mut scores[r * l..(r + 1) * l];
                            let at = base + r * st[2];
                            if st[3] == 1 {
                                row.copy_from_slice(&data[at..at + l]);
                            } else {
                                for (c, v) in row.iter_mut().enumerate() {
                                    *v = data[at + c * st[3]];
                                }
                            }
                        }
                        true
                    } else {
                        false
                    };
                    let q = bi * l * 3 * h + hj * hd;
                    let (k, v) = (q + h, q + 2 * h);
                    // SAFETY: q/k/v rows are 3h apart and hd wide within the
                    // [B, L, 3H] buffer checked above; scores is nq × l; this task
                    // writes only rows of image `bi` in columns hj*hd..(hj+1)*hd of
                    // `out`, which no other task touches.
                    unsafe {
                        gemm(
                            nq,
                            l,
                            hd,
                            scores.as_mut_ptr(),
                            1,
                            l as isize,
                            has_bias,
                            qkv.as_ptr().add(q),
                            1,
                            3 * h as isize,
                            qkv.as_ptr().add(k),
                            3 * h as isize,
                            1,
                            if has_bias { 1.0 } else { 0.0 },
                            scale,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                    for row in scores.chunks_exact_mut(l) {
                        softmax_in_place(row);
                    }
                    unsafe {
                        gemm(
                            nq,
                            hd,
                            l,
                            out_ptr.get().add(bi * nq * h + hj * hd),
                            1,
                            h as isize,
                            false,
                            scores.as_ptr(),
                            1,
                            l as isize,
                            qkv.as_ptr().add(v),
                            1,
                            3 * h as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            Parallelism::None,
                        );
                    }
                });
            },
        );
    };
    match &bias {
        Some(t) => {
            with_f32_strided(t, |data, layout| run(Some((data, layout)))).ok_or_else(|| {
                candle_core::Error::Msg("attention bias must be an f32 CPU tensor".into())
            })?
        }
        None => run(None),
    }
    Ok(out)
}

/// Numerically stable softmax of one row (max subtracted first; a row masked
/// everywhere with the same finite minimum comes out uniform, as in PyTorch).
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// What the kernels' tests compare with, shared by `packed` and `panels`.
#[cfg(test)]
mod testing {
    /// Σ in f64, the order-free answer both kernels are compared with.
    pub fn reference(x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
                    .sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    /// Deterministic values in [-1, 1) that differ from element to element.
    pub fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "max abs diff {worst} > {tol}");
    }

    #[test]
    fn matmul_wt_matches_candle_with_bias_and_strided_destination() -> Result<()> {
        // 37 rows take the few-rows kernel, 97 the packed one.
        for m in [37, 97] {
            strided_destination_case(m)?;
        }
        Ok(())
    }

    fn strided_destination_case(m: usize) -> Result<()> {
        let dev = Device::Cpu;
        let (k, n) = (70, 45);
        let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let bias = Tensor::randn(0f32, 1., n, &dev)?;
        let want = x.matmul(&w.t()?)?.broadcast_add(&bias)?;
        let (xv, wv, bv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
            bias.to_vec1::<f32>()?,
        );
        // Written into the middle columns of a wider buffer, as q/k/v are.
        let rs = 3 * n;
        let mut dst = vec![7f32; m * rs];
        for i in 0..m {
            dst[i * rs + n..i * rs + 2 * n].copy_from_slice(&bv);
        }
        let want = want.flatten_all()?.to_vec1::<f32>()?;
        // The kernel each level this CPU runs picks for m rows (gemm at the
        // portable level, the fallback without AVX2).
        for level in Level::available() {
            let mut dst = dst.clone();
            matmul_wt_at(level, &xv, &wv, (m, k, n), &mut dst[n..], rs, true);
            let got: Vec<f32> = (0..m)
                .flat_map(|i| dst[i * rs + n..i * rs + 2 * n].to_vec())
                .collect();
            close(&got, &want, 1e-4);
            // Columns outside the written block are untouched.
            assert!((0..m).all(|i| dst[i * rs..i * rs + n].iter().all(|&v| v == 7.0)));
            assert!((0..m).all(|i| dst[i * rs + 2 * n..(i + 1) * rs].iter().all(|&v| v == 7.0)));
        }
        Ok(())
    }

    #[test]
    fn start_rows_is_residual_plus_bias_in_every_row() {
        // Small (one task) and large (parallel chunks, a ragged last one).
        for (m, n) in [(3, 5), (1577, 77)] {
            let residual: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
            let bias: Vec<f32> = (0..n).map(|j| 0.5 + j as f32 * 1e-3).collect();
            for (r, b) in [
                (Some(&residual[..]), Some(&bias[..])),
                (Some(&residual[..]), None),
                (None, Some(&bias[..])),
                (None, None),
            ] {
                let got = start_rows(m, n, r, b);
                assert_eq!(got.len(), m * n);
                for (at, v) in got.iter().enumerate() {
                    let want = r.map_or(0.0, |r| r[at]) + b.map_or(0.0, |b| b[at % n]);
                    assert_eq!(*v, want, "({m}, {n}) at {at}");
                }
            }
        }
        assert!(start_rows(4, 0, None, None).is_empty());
    }

    #[test]
    fn few_rows_kernel_matches_candle() -> Result<()> {
        let dev = Device::Cpu;
        // Widths that are and are not multiples of the 8-lane and 4 × 3 tiles.
        for (m, k, n) in [
            (1, 768, 512),
            (10, 70, 45),
            (16, 13, 130),
            (3, 5, 3),
            (7, 200, 200),
            (13, 3072, 97),
        ] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
            let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
            let want = x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            let (xv, wv) = (
                x.flatten_all()?.to_vec1::<f32>()?,
                w.flatten_all()?.to_vec1::<f32>()?,
            );
            // Every level this CPU runs (the portable one is gemm's).
            for level in Level::available() {
                let mut got = vec![0f32; m * n];
                matmul_wt_at(level, &xv, &wv, (m, k, n), &mut got, n, false);
                close(&got, &want, 1e-3);
                // Accumulating adds to what is there.
                let mut acc = vec![1f32; m * n];
                matmul_wt_at(level, &xv, &wv, (m, k, n), &mut acc, n, true);
                let plus_one: Vec<f32> = want.iter().map(|v| v + 1.0).collect();
                close(&acc, &plus_one, 1e-3);
            }
        }
        Ok(())
    }

    /// bf16 and f16 weights, read by every kernel at every level, give what
    /// candle gives for the same rounded weights widened to f32: only the
    /// weights are rounded, the products accumulate in f32. The exception:
    /// bf16 weights in a many-rows product at `Level::Avx512Bf16`, whose
    /// input is rounded to bf16 as well.
    #[test]
    fn half_precision_weights_match_their_widened_f32() -> Result<()> {
        let dev = Device::Cpu;
        // Few rows, the packed kernel's block edges, and ragged widths.
        for (m, k, n) in [(1, 768, 512), (10, 70, 45), (97, 70, 45), (200, 771, 130)] {
            let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            let x_bf16 = x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?;
            for dtype in [DType::BF16, DType::F16] {
                let w = Tensor::randn(0f32, 1., (n, k), &dev)?.to_dtype(dtype)?;
                let widened = w.to_dtype(DType::F32)?;
                let product = |x: &Tensor| -> Result<Vec<f32>> {
                    x.matmul(&widened.t()?)?.flatten_all()?.to_vec1::<f32>()
                };
                let (exact_x, rounded_x) = (product(&x)?, product(&x_bf16)?);
                let want_at = |level: Level| {
                    if dtype == DType::BF16 && level >= Level::Avx512Bf16 && m > SMALL_M {
                        &rounded_x
                    } else {
                        &exact_x
                    }
                };
                let mut got = vec![0f32; m * n];
                matmul_weight(&xv, m, &w, &mut got, n, false).expect("a CPU weight");
                close(&got, want_at(simd::level()), 1e-3);
                for level in Level::available() {
                    let want = want_at(level);
                    let mut got = vec![0f32; m * n];
                    let flat = w.flatten_all()?;
                    if dtype == DType::BF16 {
                        let wv = flat.to_vec1::<half::bf16>()?;
                        matmul_wt_at(level, &xv, &wv, (m, k, n), &mut got, n, false);
                    } else {
                        let wv = flat.to_vec1::<half::f16>()?;
                        matmul_wt_at(level, &xv, &wv, (m, k, n), &mut got, n, false);
                    }
                    close(&got, want, 1e-3);
                }
            }
        }
        // Not a CPU weight of those types, or not `[n, k]`: candle's path.
        let w = Tensor::randn(0f32, 1., (4, 3), &dev)?;
        let mut dst = vec![0f32; 8];
        assert!(
            matmul_weight(&[0.0; 6], 2, &w.to_dtype(DType::F64)?, &mut dst, 4, false).is_none()
        );
        assert!(matmul_weight(&[0.0; 6], 2, &w.t()?, &mut dst, 4, false).is_none());
        assert!(matmul_weight(&[0.0; 6], 2, &w.reshape((2, 2, 3))?, &mut dst, 4, false).is_none());
        Ok(())
    }

    fn reference_attention(
        qkv: &Tensor,
        s: AttentionShape,
        scale: f64,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let hd = s.hidden / s.heads;
        let part = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * s.hidden, s.hidden)?
                .reshape((s.batch, s.len, s.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(b) = bias {
            scores = scores.broadcast_add(b)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        p.matmul(&v)?
            .transpose(1, 2)?
            .reshape((s.batch, s.len, s.hidden))
    }

    #[test]
    fn attention_matches_candle_for_each_bias_shape() -> Result<()> {
        let dev = Device::Cpu;
        let s = AttentionShape {
            batch: 3,
            len: 11,
            queries: 11,
            hidden: 24,
            heads: 4,
        };
        let qkv = Tensor::randn(0f32, 1., (s.batch, s.len, 3 * s.hidden), &dev)?;
        let data = qkv.flatten_all()?.to_vec1::<f32>()?;
        let scale = 1.0 / (6f64).sqrt();
        // Padding mask per image, relative-position bias per head, a causal mask
        // shared by all, and none at all.
        let mut mask = vec![0f32; s.batch * s.len];
        mask[s.len - 3..s.len]
            .iter_mut()
            .for_each(|v| *v = f32::MIN);
        let padding = Tensor::from_vec(mask, (s.batch, 1, 1, s.len), &dev)?;
        let per_head = Tensor::randn(0f32, 1., (s.heads, s.len, s.len), &dev)?;
        let causal = Tensor::from_vec(
            (0..s.len * s.len)
                .map(|i| if i % s.len > i / s.len { f32::MIN } else { 0.0 })
                .collect::<Vec<_>>(),
            (1, 1, s.len, s.len),
            &dev,
        )?;
        let transposed = per_head.transpose(1, 2)?;
        for bias in [
            None,
            Some(&padding),
            Some(&per_head),
            Some(&causal),
            Some(&transposed),
        ] {
            let got = attention(&data, s, scale as f32, bias)?;
            let want = reference_attention(&qkv, s, scale, bias)?;
            close(&got, &want.flatten_all()?.to_vec1::<f32>()?, 1e-5);
            // The first tokens alone (a last layer read at token 0): their
            // rows of the whole context, each bias's rows for them taken.
            for queries in [1, 4] {
                let first = AttentionShape { queries, ..s };
                let got = attention(&data, first, scale as f32, bias)?;
                let want = want.narrow(1, 0, queries)?.flatten_all()?;
                close(&got, &want.to_vec1::<f32>()?, 1e-5);
            }
        }
        Ok(())
    }

    /// Every value mapped once, whichever way the chunks run (alone, on
    /// the team, on rayon), uneven last chunk included.
    #[test]
    fn map_in_place_maps_every_value_once() {
        for len in [0, 5, 8 * 1024 + 3, 20_001, (1 << 16) + 1, 100_003] {
            let mut xs: Vec<f32> = (0..len).map(|i| i as f32).collect();
            map_in_place(&mut xs, |v| 2.0 * v + 1.0);
            let wrong = (0..len).find(|&i| xs[i] != 2.0 * i as f32 + 1.0);
            assert_eq!(wrong, None, "len {len}");
        }
    }

    #[test]
    fn erf_is_within_a_few_ulp_of_f64() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let want = candle_core::cpu::erf::erf_f64(x as f64);
            worst = worst.max((erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "worst abs error {worst}");
        // Saturates (to within an ulp of 1) rather than running off.
        assert!((erf(100.0) - 1.0).abs() <= 2e-7);
        assert_eq!(erf(-100.0), -erf(100.0));
    }

    #[test]
    fn fully_masked_row_is_uniform_not_nan() {
        let mut row = [f32::MIN; 4];
        softmax_in_place(&mut row);
        assert_eq!(row, [0.25; 4]);
    }
}
