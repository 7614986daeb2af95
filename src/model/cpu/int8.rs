//! A text-tower weight held as 8-bit integers with one scale per output
//! column, for a query's few-rows product (`--text-weights int8`).
//!
//! At a query's ~10 tokens the bf16 panels stream the weights at the
//! memory's rate (BENCHMARKS.md): each weight byte read feeds ~5
//! multiply-adds. Eight bits halve the bytes. The input rows are quantized
//! too, to 16 bits with one scale per row (finer than bf16's 8-bit
//! mantissa for all but a row's smallest elements), so the product is one
//! integer multiply-add of 16-bit pairs (`vpdpwssd`, AVX-512 VNNI) per
//! pair of depths, the weights widened from 8 to 16 bits as they are
//! loaded: one instruction per 32 weights. AVX2 has the same multiply
//! without the add (`vpmaddwd`, then `vpaddd`), 16 weights an instruction.
//! There f32 is bound by reading the weights and 8 bits read a quarter of
//! the bytes, so a query is bound by the one `vpmaddwd` a cycle instead
//! (BENCHMARKS.md, session 27). Sums are exact in 32 bits over
//! [`CHUNK`] depth pairs, then added up in f32 and scaled by the column's
//! and the row's scales.
//!
//! Only the dense weights and their inputs are quantized (symmetric, to
//! the column's and the row's largest magnitude): norms, attention,
//! embeddings and every sum stay f32.

use super::panels::{Tile, WIDTH};
use crate::simd::Level;

/// Largest integer a weight is quantized to (and its negative the
/// smallest): symmetric, so a zero weight stays exactly zero.
const WEIGHT_LEVELS: f32 = 127.0;

/// Largest integer an input element is quantized to.
const INPUT_LEVELS: f32 = 32767.0;

/// Depth pairs summed in 32-bit integers before they are added in f32:
/// a pair adds at most 2 · 32767 · 127 = 8.3M, so 256 pairs stay below
/// 2^31.
const CHUNK: usize = 256;

/// A `[n, k]` weight quantized per output column, in panels of [`WIDTH`]
/// columns whose rows are depth pairs: byte `(p · depth + q) · 2·WIDTH +
/// 2c + d` is column `p · WIDTH + c` at depth `2q + d`. Columns past `n`
/// and a depth past an odd `k` are zeros.
#[derive(Debug)]
pub struct Int8Panels {
    q: Vec<i8>,
    /// One per column of every panel (zeros past `n`).
    scale: Vec<f32>,
}

impl Int8Panels {
    /// Quantizes `[n, k]` f32 rows.
    pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
        let depth = k.div_ceil(2);
        let mut q = vec![0i8; n.div_ceil(WIDTH) * depth * 2 * WIDTH];
        let mut scale = vec![0f32; n.div_ceil(WIDTH) * WIDTH];
        for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
            let (p, c) = (j / WIDTH, j % WIDTH);
            let Some(s) = scale_of(row, WEIGHT_LEVELS) else {
                continue;
            };
            scale[p * WIDTH + c] = s;
            let panel = &mut q[p * depth * 2 * WIDTH..(p + 1) * depth * 2 * WIDTH];
            for (kk, v) in row.iter().enumerate() {
                panel[at(kk, c)] = quantize(*v, s, WEIGHT_LEVELS) as i8;
            }
        }
        Self { q, scale }
    }

    /// The weight the product multiplies by, as `[n, k]` f32 rows.
    pub fn dequantize(&self, n: usize, k: usize) -> Vec<f32> {
        let depth = k.div_ceil(2);
        let mut out = vec![0f32; n * k];
        for (j, row) in out.chunks_exact_mut(k.max(1)).take(n).enumerate() {
            let (p, c) = (j / WIDTH, j % WIDTH);
            let s = self.scale[p * WIDTH + c];
            let panel = &self.q[p * depth * 2 * WIDTH..(p + 1) * depth * 2 * WIDTH];
            for (kk, v) in row.iter_mut().enumerate() {
                *v = f32::from(panel[at(kk, c)]) * s;
            }
        }
        out
    }

    /// Panel `p`'s bytes and column scales.
    pub(super) fn panel(&self, p: usize, depth: usize) -> (&[i8], &[f32]) {
        let bytes = depth * 2 * WIDTH;
        (
            &self.q[p * bytes..(p + 1) * bytes],
            &self.scale[p * WIDTH..(p + 1) * WIDTH],
        )
    }
}

/// Where depth `kk` of a panel's column `c` lies in the panel's bytes.
fn at(kk: usize, c: usize) -> usize {
    kk / 2 * 2 * WIDTH + 2 * c + kk % 2
}

/// The scale that maps `v`'s largest magnitude to `levels`; `None` when
/// every value is (or is too small to differ from) zero, which then
/// quantizes to 0. A non-finite element makes the scale NaN, so that what
/// it multiplies comes out NaN, as the f32 product's would, instead of a
/// finite vector from a broken model.
fn scale_of(v: &[f32], levels: f32) -> Option<f32> {
    let (largest, finite) = largest_magnitude(v);
    if !finite {
        return Some(f32::NAN);
    }
    // Below this, `levels / largest` would overflow to infinity.
    (largest > TINY).then_some(largest / levels)
}

/// The largest `|x|` of `v`, and whether every element is finite, in one
/// pass that the compiler vectorizes: 16 lanes of running maxima, and a
/// running sum of `x * 0`, which stays 0 for finite `x` and turns NaN at
/// the first infinity or NaN. Element by element (`any`, then `fold` with
/// `f32::max`) this was ~40% of a query's input quantization.
#[inline(always)]
fn largest_body(v: &[f32]) -> (f32, bool) {
    const LANES: usize = 16;
    let mut most = [0f32; LANES];
    let mut spoilt = [0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let a = c[i].abs();
            most[i] = if a > most[i] { a } else { most[i] };
            spoilt[i] += c[i] * 0.0;
        }
    }
    for (i, &x) in rest.iter().enumerate() {
        let a = x.abs();
        most[i] = if a > most[i] { a } else { most[i] };
        spoilt[i] += x * 0.0;
    }
    let largest = most.iter().fold(0f32, |m, &a| if a > m { a } else { m });
    (largest, spoilt.iter().all(|&s| s == 0.0))
}

/// [`largest_body`], in AVX-512 or AVX2 where the CPU has it.
fn largest_magnitude(v: &[f32]) -> (f32, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
        unsafe fn avx512(v: &[f32]) -> (f32, bool) {
            largest_body(v)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(v: &[f32]) -> (f32, bool) {
            largest_body(v)
        }
        // SAFETY (both): the CPU has the features the function is compiled for.
        if Level::Avx512.supported() {
            return unsafe { avx512(v) };
        }
        if Level::Avx2.supported() {
            return unsafe { avx2(v) };
        }
    }
    largest_body(v)
}

/// A row or column whose largest magnitude is this small is taken as zeros
/// (its products are far below anything an embedding resolves).
const TINY: f32 = 1e-30;

/// `out[i] = v[i] / scale` rounded to the nearest integer (ties to even),
/// clamped to ±`levels`, NaN to 0 (its scale carries it, [`scale_of`]).
fn quantize_body(v: &[f32], scale: f32, levels: f32, out: &mut [i16]) {
    let inv = 1.0 / scale;
    for (d, &x) in out.iter_mut().zip(v) {
        let y = (x * inv).clamp(-levels, levels);
        *d = if y.is_nan() {
            0
        } else {
            y.round_ties_even() as i16
        };
    }
}

/// [`quantize_body`], 16 elements at a time in AVX-512 (8 in AVX2) where
/// the CPU has it: a query's every product quantizes its input rows on
/// the calling thread first, and the compiler left the rounding
/// conversion to `i16` one element at a time (~3% of a query's samples).
fn quantize_into(v: &[f32], scale: f32, levels: f32, out: &mut [i16]) {
    #[cfg(target_arch = "x86_64")]
    if Level::Avx512.supported() {
        // SAFETY: the CPU has the features `quantize_avx512` is compiled for.
        return unsafe { quantize_avx512(v, scale, levels, out) };
    }
    #[cfg(target_arch = "x86_64")]
    if Level::Avx2.supported() {
        // SAFETY: the CPU has the features `quantize_avx2` is compiled for.
        return unsafe { quantize_avx2(v, scale, levels, out) };
    }
    quantize_body(v, scale, levels, out)
}

/// [`quantize_body`] with AVX2, 8 elements at a time: the conversion
/// rounds by the default mode (to nearest, ties to even), NaN lanes are
/// masked to 0, and the clamp keeps the pack to 16 bits from saturating.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_avx2(v: &[f32], scale: f32, levels: f32, out: &mut [i16]) {
    use std::arch::x86_64::*;
    let n = v.len().min(out.len());
    let whole = n / 8 * 8;
    let inv = _mm256_set1_ps(1.0 / scale);
    let (lo, hi) = (_mm256_set1_ps(-levels), _mm256_set1_ps(levels));
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= whole <= n`, inside both slices.
        unsafe {
            let y = _mm256_mul_ps(_mm256_loadu_ps(v.as_ptr().add(i)), inv);
            let number = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(y, y));
            let y = _mm256_min_ps(_mm256_max_ps(y, lo), hi);
            let q = _mm256_and_si256(_mm256_cvtps_epi32(y), number);
            let packed =
                _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), packed);
        }
    }
    quantize_body(&v[whole..n], scale, levels, &mut out[whole..n]);
}

/// [`quantize_body`] with AVX-512F: the same products, clamps and
/// round-to-nearest-even, NaN lanes masked to 0.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantize_avx512(v: &[f32], scale: f32, levels: f32, out: &mut [i16]) {
    use std::arch::x86_64::*;
    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let n = v.len().min(out.len());
    let whole = n / 16 * 16;
    let inv = _mm512_set1_ps(1.0 / scale);
    let (lo, hi) = (_mm512_set1_ps(-levels), _mm512_set1_ps(levels));
    for i in (0..whole).step_by(16) {
        // SAFETY: `i + 16 <= whole <= n`, inside both slices.
        unsafe {
            let y = _mm512_mul_ps(_mm512_loadu_ps(v.as_ptr().add(i)), inv);
            let number = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
            let y = _mm512_min_ps(_mm512_max_ps(y, lo), hi);
            let q = _mm512_maskz_cvt_roundps_epi32::<ROUND>(number, y);
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi16(q));
        }
    }
    quantize_body(&v[whole..n], scale, levels, &mut out[whole..n]);
}

fn quantize(v: f32, scale: f32, levels: f32) -> i16 {
    let mut out = [0i16];
    quantize_body(&[v], scale, levels, &mut out);
    out[0]
}

/// The input of an 8-bit product: `m` rows quantized to 16 bits, each with
/// its scale, paired along `k` (the even depth in the low half) and
/// interleaved `[q][r]` within passes of `rows` rows, as the bf16 pair
/// kernel's input is.
pub(super) struct Input {
    pub pairs: Vec<u32>,
    pub scales: Vec<f32>,
}

pub(super) fn quantize_input(x: &[f32], m: usize, k: usize, rows: usize) -> Input {
    let depth = k.div_ceil(2);
    let mut pairs = vec![0u32; m * depth];
    let mut scales = vec![0f32; m];
    let mut row_q = vec![0i16; 2 * depth];
    for (pass, (chunk, dst)) in x
        .chunks(rows * k)
        .zip(pairs.chunks_mut(rows * depth))
        .enumerate()
    {
        let r_n = chunk.len() / k;
        for (r, row) in chunk.chunks_exact(k).enumerate() {
            let Some(s) = scale_of(row, INPUT_LEVELS) else {
                continue;
            };
            scales[pass * rows + r] = s;
            // The row in 16 bits, then its depth pairs scattered to their
            // places in the pass (a zero past an odd `k`).
            // (`row_q[k]`, there for an odd `k`, is never written: it stays 0.)
            quantize_into(row, s, INPUT_LEVELS, &mut row_q[..k]);
            // Row `r` of each depth pair's `r_n` (indexed by `q * r_n + r`,
            // with its multiply and bounds check per store, this was ~40% of
            // the routine).
            for (at, two) in dst.chunks_exact_mut(r_n).zip(row_q.chunks_exact(2)) {
                at[r] = u32::from(two[0] as u16) | u32::from(two[1] as u16) << 16;
            }
        }
    }
    Input { pairs, scales }
}

/// The kernel [`pass`] runs, chosen once per product by [`kernel`] (the
/// CPU's features are not asked again for every panel). Only [`kernel`]
/// makes one, so holding a vector kernel means this CPU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kernel(Which);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// `vpdpwssd` on AVX-512 VNNI.
    Vnni,
    /// `vpmaddwd` + `vpaddd` on AVX2 (AVX-512 without VNNI takes it too).
    Avx2,
    /// Plain Rust on the same integers.
    Portable,
}

/// The kernel that multiplies at `level` on this CPU.
pub(super) fn kernel(level: Level) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if matches!(level, Level::Avx512 | Level::Avx512Bf16)
            && level.supported()
            && std::arch::is_x86_feature_detected!("avx512vnni")
        {
            return Kernel(Which::Vnni);
        }
        if level != Level::Portable && level.supported() {
            return Kernel(Which::Avx2);
        }
    }
    let _ = level;
    Kernel(Which::Portable)
}

impl Kernel {
    /// True for a vector kernel (not plain Rust).
    pub(super) fn is_vector(self) -> bool {
        self.0 != Which::Portable
    }
}

/// `tile[r][c] = (Σ_q x[q, r] · panel[q, c]) · scale[c] · row_scale[r]`
/// over 16-bit input pairs and 8-bit weight pairs, for `rows` rows
/// interleaved by [`quantize_input`], by `kernel` (each gives the same
/// sums).
pub(super) fn pass(
    kernel: Kernel,
    (x, row_scale): (&[u32], &[f32]),
    (panel, scale): (&[i8], &[f32]),
    depth: usize,
    rows: usize,
    tile: &mut Tile,
) {
    assert!(
        x.len() >= rows * depth
            && row_scale.len() >= rows
            && panel.len() >= depth * 2 * WIDTH
            && scale.len() >= WIDTH
            && rows <= tile.len()
    );
    macro_rules! dispatch {
        ($kernel:ident, $($r:literal)*) => {
            match rows {
                $($r => $kernel::<$r>(x, panel, depth, tile),)*
                _ => unreachable!("rows checked above"),
            }
        };
    }
    match kernel.0 {
        // SAFETY: only `kernel()` makes a `Kernel`, after checking the
        // CPU's features; the assert above bounds every element the
        // kernels read.
        #[cfg(target_arch = "x86_64")]
        Which::Vnni => unsafe { dispatch!(pass_vnni, 1 2 3 4 5 6 7 8 9 10 11 12) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Which::Avx2 => unsafe { dispatch!(pass_avx2, 1 2 3 4 5 6 7 8 9 10 11 12) },
        _ => portable(x, panel, depth, rows, tile),
    }
    for (sums, rs) in tile[..rows].iter_mut().zip(row_scale) {
        for (s, cs) in sums.iter_mut().zip(scale) {
            *s = *s * cs * rs;
        }
    }
}

/// The integer sums of [`pass`] in plain Rust, chunk by chunk as the
/// vector kernel adds them.
fn portable(x: &[u32], panel: &[i8], depth: usize, rows: usize, tile: &mut Tile) {
    for (r, sums) in tile[..rows].iter_mut().enumerate() {
        *sums = [0.0; WIDTH];
        for q0 in (0..depth).step_by(CHUNK) {
            let mut part = [0i32; WIDTH];
            for q in q0..(q0 + CHUNK).min(depth) {
                let v = x[q * rows + r];
                let (x0, x1) = (
                    i32::from(v as u16 as i16),
                    i32::from((v >> 16) as u16 as i16),
                );
                let row = &panel[q * 2 * WIDTH..(q + 1) * 2 * WIDTH];
                for (s, w) in part.iter_mut().zip(row.chunks_exact(2)) {
                    *s += x0 * i32::from(w[0]) + x1 * i32::from(w[1]);
                }
            }
            for (s, p) in sums.iter_mut().zip(part) {
                *s += p as f32;
            }
        }
    }
}

/// How far ahead (in panel rows of one cache line) the kernel prefetches:
/// about the same distance in bytes as the bf16 panels' kernel.
#[cfg(target_arch = "x86_64")]
const AHEAD: usize = 96;

/// One pass of `R` rows over a whole panel: per panel row (one cache line:
/// two depths of 32 columns), two widenings to 16 bits and one `vpdpwssd`
/// per input row and half; the integer sums go into the tile every
/// [`CHUNK`] rows.
///
/// # Safety
/// AVX-512 F, BW and VNNI; `x` holds `R` rows of `depth` pairs
/// interleaved, `panel` holds `depth * 2 * WIDTH` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn pass_vnni<const R: usize>(x: &[u32], panel: &[i8], depth: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    // SAFETY: as the caller guarantees.
    unsafe {
        for sums in tile[..R].iter_mut() {
            *sums = [0.0; WIDTH];
        }
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        for q0 in (0..depth).step_by(CHUNK) {
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for q in q0..(q0 + CHUNK).min(depth) {
                let row = wp.add(q * 2 * WIDTH);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(AHEAD * 2 * WIDTH));
                let w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(row.cast()));
                let w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(row.add(WIDTH).cast()));
                for (r, a) in acc.iter_mut().enumerate() {
                    let b = _mm512_set1_epi32(*xp.add(q * R + r) as i32);
                    a[0] = _mm512_dpwssd_epi32(a[0], b, w0);
                    a[1] = _mm512_dpwssd_epi32(a[1], b, w1);
                }
            }
            for (t, a) in tile.iter_mut().zip(&acc) {
                let lo = _mm512_add_ps(_mm512_loadu_ps(t.as_ptr()), _mm512_cvtepi32_ps(a[0]));
                let hi = _mm512_add_ps(
                    _mm512_loadu_ps(t.as_ptr().add(16)),
                    _mm512_cvtepi32_ps(a[1]),
                );
                _mm512_storeu_ps(t.as_mut_ptr(), lo);
                _mm512_storeu_ps(t.as_mut_ptr().add(16), hi);
            }
        }
    }
}

/// [`pass_vnni`] in AVX2: a panel row's 64 bytes widen to four vectors
/// of 8 columns × 2 depths, and each needs an accumulator per input row,
/// so the pass takes the panel a quarter (8 columns) at a time with one
/// accumulator per row: 12 rows, the weights and the broadcast fit the 16
/// registers. The quarters of a [`CHUNK`] re-read its 16 KB from L1.
///
/// # Safety
/// AVX2; `x` holds `R` rows of `depth` pairs interleaved, `panel` holds
/// `depth * 2 * WIDTH` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pass_avx2<const R: usize>(x: &[u32], panel: &[i8], depth: usize, tile: &mut Tile) {
    use std::arch::x86_64::*;
    const QUARTER: usize = WIDTH / 4;
    // SAFETY: as the caller guarantees.
    unsafe {
        for sums in tile[..R].iter_mut() {
            *sums = [0.0; WIDTH];
        }
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        for q0 in (0..depth).step_by(CHUNK) {
            let end = (q0 + CHUNK).min(depth);
            for quarter in 0..4 {
                let mut acc = [_mm256_setzero_si256(); R];
                for q in q0..end {
                    let row = wp.add(q * 2 * WIDTH);
                    if quarter == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(AHEAD * 2 * WIDTH));
                    }
                    let w = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                        row.add(quarter * 2 * QUARTER).cast(),
                    ));
                    for (r, a) in acc.iter_mut().enumerate() {
                        let b = _mm256_set1_epi32(*xp.add(q * R + r) as i32);
                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(b, w));
                    }
                }
                for (t, a) in tile.iter_mut().zip(&acc) {
                    let at = t.as_mut_ptr().add(quarter * QUARTER);
                    _mm256_storeu_ps(
                        at,
                        _mm256_add_ps(_mm256_loadu_ps(at), _mm256_cvtepi32_ps(*a)),
                    );
                }
            }
        }
    }
}

/// `x`'s rows as [`quantize_input`] leaves them, back in f32: what the
/// product multiplies (for tests).
#[cfg(test)]
pub(super) fn dequantize_input(x: &[f32], k: usize) -> Vec<f32> {
    x.chunks_exact(k.max(1))
        .flat_map(|row| {
            let s = scale_of(row, INPUT_LEVELS);
            row.iter()
                .map(move |&v| s.map_or(0.0, |s| f32::from(quantize(v, s, INPUT_LEVELS)) * s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each weight lands within half a step of its value, the column's
    /// largest magnitude exactly on ±127 steps; an all-zero column stays
    /// zeros, and a column with a NaN or an infinity comes out NaN (as the
    /// f32 product would), leaving the other columns alone.
    #[test]
    fn weights_quantize_per_column_within_half_a_step() {
        let (n, k) = (70, 9);
        let mut w = super::super::testing::values(n * k, 7);
        w[3 * k..4 * k].fill(0.0);
        w[5 * k + 2] = f32::NAN;
        w[6 * k + 4] = f32::INFINITY;
        let q = Int8Panels::quantize(&w, n, k);
        let back = q.dequantize(n, k);
        for (j, (row, got)) in w.chunks(k).zip(back.chunks(k)).enumerate() {
            if j == 5 || j == 6 {
                assert!(got.iter().all(|g| g.is_nan()), "column {j}: {got:?}");
                continue;
            }
            let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let step = largest / 127.0;
            for (kk, (&v, &g)) in row.iter().zip(got).enumerate() {
                assert!(
                    (g - v).abs() <= step / 2.0 + 1e-7,
                    "column {j} depth {kk}: {g} for {v} (step {step})"
                );
            }
            if largest > 0.0 {
                assert!(
                    got.iter().any(|g| (g.abs() - largest).abs() <= 1e-6),
                    "column {j}"
                );
            } else {
                assert!(got.iter().all(|&g| g == 0.0), "zero column {j}");
            }
        }
    }

    /// The largest sums the 32-bit chunks hold: every input at its row's
    /// largest (32767 steps) and every weight at its column's (127), over
    /// two whole chunks and a part, at every level the machine has.
    #[test]
    fn full_scale_sums_do_not_overflow() {
        use super::super::PanelWeight;
        let (m, k, n) = (12, 2 * 2 * CHUNK + 6, 40);
        let w =
            candle_core::Tensor::ones((n, k), candle_core::DType::F32, &candle_core::Device::Cpu)
                .unwrap();
        let p = PanelWeight::from_tensor_int8(&w).unwrap();
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; m * k];
            for level in Level::ALL.into_iter().filter(|l| l.supported()) {
                let mut out = vec![0f32; m * n];
                p.matmul_at(level, &x, m, &mut out, n, false);
                // Wrapped sums would be off by ~2^32 steps, not f32 rounding.
                let want = sign * k as f32;
                assert!(
                    out.iter().all(|&v| (v - want).abs() <= 1e-5 * want.abs()),
                    "{level:?}: {:?} for {want}",
                    &out[..4]
                );
            }
        }
    }

    /// The vector quantizations give the plain routine's integers: ties
    /// to even, clamps, infinities, NaN to 0, and the remainder past 16.
    #[test]
    fn quantize_into_matches_the_plain_routine() {
        let mut v = super::super::testing::values(45, 9);
        let scale = 0.01;
        v[..9].copy_from_slice(&[
            0.025,
            -0.025,
            0.035,
            1e9,
            -1e9,
            f32::NAN,
            f32::INFINITY,
            0.0,
            -0.0,
        ]);
        v[20] = f32::NEG_INFINITY;
        v[40] = f32::NAN;
        v[44] = -0.015;
        for levels in [127.0, 32767.0] {
            let mut want = vec![7i16; v.len()];
            quantize_body(&v, scale, levels, &mut want);
            let mut got = vec![7i16; v.len()];
            quantize_into(&v, scale, levels, &mut got);
            assert_eq!(got, want, "levels {levels}");
            // The AVX2 routine too, where an AVX-512 machine passes it over.
            #[cfg(target_arch = "x86_64")]
            if Level::Avx2.supported() {
                let mut got = vec![7i16; v.len()];
                // SAFETY: the CPU has AVX2.
                unsafe { quantize_avx2(&v, scale, levels, &mut got) };
                assert_eq!(got, want, "AVX2, levels {levels}");
            }
            assert_eq!(
                &want[..9],
                &[
                    2,
                    -2,
                    4,
                    levels as i16,
                    -levels as i16,
                    0,
                    levels as i16,
                    0,
                    0
                ]
            );
            assert_eq!((want[20], want[40], want[44]), (-levels as i16, 0, -2));
            // An output shorter than the input takes its own length, as the
            // plain routine's `zip` does; a NaN scale gives zeros.
            let mut short = vec![7i16; 33];
            quantize_into(&v, scale, levels, &mut short);
            assert_eq!(short, want[..33]);
            let mut nan = vec![7i16; v.len()];
            quantize_into(&v, f32::NAN, levels, &mut nan);
            assert!(nan.iter().all(|&q| q == 0));
        }
    }

    /// The vectorized scan agrees with the element-by-element definition
    /// at every length around its 16 lanes, and finds one infinity or NaN
    /// wherever it sits (in a whole chunk or the remainder).
    #[test]
    fn largest_magnitude_matches_the_plain_scan() {
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 100] {
            let v = super::super::testing::values(len, len as u32 + 1);
            let want = v.iter().fold(0f32, |m, x| m.max(x.abs()));
            for f in [largest_body, largest_magnitude] {
                assert_eq!(f(&v), (want, true), "length {len}");
            }
            for at in 0..len {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut w = v.clone();
                    w[at] = bad;
                    for f in [largest_body, largest_magnitude] {
                        assert!(!f(&w).1, "{bad} at {at} of {len}");
                    }
                }
            }
        }
    }

    /// The input's 16-bit rows hold each element within half a step of
    /// the row's scale, and a zero row stays zero.
    #[test]
    fn inputs_quantize_per_row() {
        let k = 11;
        let mut x = super::super::testing::values(3 * k, 3);
        x[k..2 * k].fill(0.0);
        let back = dequantize_input(&x, k);
        for (row, got) in x.chunks(k).zip(back.chunks(k)) {
            let step = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 32767.0;
            for (&v, &g) in row.iter().zip(got) {
                assert!((g - v).abs() <= step / 2.0 + 1e-9, "{g} for {v}");
            }
        }
        let input = quantize_input(&x, 3, k, 2);
        assert_eq!(input.scales[1], 0.0);
        assert_eq!(input.pairs.len(), 3 * k.div_ceil(2));
    }
}
