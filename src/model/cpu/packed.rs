//! The many-rows kernel (a vision tower's `B × 197` tokens): a packed,
//! cache-blocked f32 GEMM for AVX2 + FMA and for AVX-512, in the way BLIS and
//! OpenBLAS block theirs.
//!
//! Dense layers are ~75% of a ViT forward. `gemm` 0.19, which packs both
//! operands on every call in its own blocking, ran ViT-B/16's layer shapes at
//! 108–123 GFLOP/s on two Zen 3 cores whose FMA peak is ~185; this runs them
//! at 120–145 (`bench/examples/dense.rs`, A/B on the same machine), and the vision
//! tower at batch 8 ~11% faster. Here:
//! - the input is packed once per call, shared by every task, into panels of
//!   `MR` rows interleaved along `k`, so the micro-kernel reads it as one
//!   contiguous stream;
//! - the output columns are split into tasks of `NC`; each task packs only its
//!   own weight rows (nothing is packed twice) in `KC`-deep slices, and every
//!   input panel of a block passes under each weight panel;
//! - the micro-kernel holds an `MR × NR` tile in registers (one [`Geometry`]
//!   per vector level), with the weight vectors and one broadcast input
//!   beside it, so it is bound by the FMA units, not loads.

use std::cell::RefCell;

use super::SendPtr;
use super::weight::WeightElem;
use crate::simd::Level;
use rayon::prelude::*;

/// One register tile with the blocking around it and its micro-kernel.
struct Geometry {
    /// Rows of the register tile (input rows, broadcast one at a time).
    mr: usize,
    /// Columns of the register tile (output columns, whole vectors).
    nr: usize,
    /// Depth of one packed slice.
    kc: usize,
    /// Input rows per block, walked under one weight panel before the next.
    mc: usize,
    /// Output columns per task.
    nc: usize,
    /// Each packed element is a pair of bf16 (two depths in 32 bits), and
    /// `kc` counts pairs: both operands are rounded to bf16.
    pairs: bool,
    kernel: unsafe fn(usize, &[f32], &[f32], SendPtr, Tile),
}

/// AVX2: a 6 × 16 tile in 12 of the 16 ymm registers, 2 for the weight
/// vectors and 1 for the broadcast input: 12 FMAs for 8 loads per step, so
/// it is bound by the FMA units, not loads. BERT/ViT-base's 768-deep layers
/// take one `kc` pass, so each output tile is loaded and stored once; the
/// 3072-deep one takes four. A weight panel (`kc × nr`, 48 KB) streams from
/// L2 while the input panel (`mr × kc`, 18 KB) stays in L1. 6 tasks for a
/// 768-wide layer, 24 for 3072, so two cores stay balanced even when one of
/// them is busy elsewhere (256 left a 768-wide layer in 3 tasks and ran 15%
/// slower).
const AVX2: Geometry = Geometry {
    mr: 6,
    nr: 16,
    kc: 768,
    mc: 96,
    nc: 128,
    pairs: false,
    kernel: kernel_avx2,
};

/// AVX-512: 32 zmm registers hold a 14 × 32 tile (28 accumulators), 2 weight
/// vectors and the broadcast: 28 FMAs of 16 lanes for 16 loads per step,
/// ~1.6× the AVX2 kernel's GFLOP/s on ViT-B/16's layers (BENCHMARKS.md; a
/// 12 × 32 tile ran ~5% slower). The input panel (`mr × kc`, 42 KB) still
/// fits a 48 KB L1.
const AVX512: Geometry = Geometry {
    mr: AVX512_MR,
    nr: 32,
    kc: 768,
    mc: 84,
    nc: 128,
    pairs: false,
    kernel: kernel_avx512,
};
const AVX512_MR: usize = 14;

/// AVX-512 BF16, for bf16 weights: the same tile, each step two depths
/// (`vdpbf16ps` multiplies bf16 pairs and adds both products to an f32
/// lane), so twice the multiply-adds per instruction. The input is rounded
/// to bf16 as it is packed. `kc` counts pairs: the same 768 depths.
const AVX512_BF16: Geometry = Geometry {
    kc: 384,
    pairs: true,
    kernel: kernel_avx512_bf16,
    ..AVX512
};

// Blocks start on panel boundaries; the kernels' tiles are these shapes.
const _: () = assert!(AVX2.mc.is_multiple_of(AVX2.mr) && AVX2.nc.is_multiple_of(AVX2.nr));
const _: () = assert!(AVX512.mc.is_multiple_of(AVX512.mr) && AVX512.nc.is_multiple_of(AVX512.nr));

/// The geometry for `level`, and for bf16 weights (`bf16`) where the level
/// multiplies bf16 pairs.
fn geometry(level: Level, bf16: bool) -> &'static Geometry {
    match level {
        Level::Avx512Bf16 if bf16 => &AVX512_BF16,
        Level::Avx512 | Level::Avx512Bf16 => &AVX512,
        _ => &AVX2,
    }
}

thread_local! {
    /// The packed input, reused across calls: a fresh multi-megabyte buffer
    /// per layer would page-fault on every call.
    static PACKED_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each worker's packed weight slice (`KC × NC`).
    static PACKED_W: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Half-precision weight rows widened before they are packed (8 × KC),
    /// or bf16 rows copied as pairs.
    static WIDENED_W: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Up to 8 input rows rounded to bf16 pairs before they are packed: one
    /// per worker, not one per panel of every layer.
    static ROUNDED_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dst[i, j] (+)= Σ_k x[i, k] · w[j, k]`, as `super::matmul_wt` documents;
/// the caller has checked the slice lengths and that the CPU runs `level`
/// (AVX2 + FMA at least).
pub fn matmul_wt<W: WeightElem>(
    level: Level,
    x: &[f32],
    w: &[W],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    let bf16 = W::as_bf16(w);
    let g = geometry(level, bf16.is_some());
    let (mr, nr) = (g.mr, g.nr);
    let panels = m.div_ceil(mr);
    // What the kernels step through: depths, or pairs of them.
    let depth = if g.pairs { k.div_ceil(2) } else { k };
    PACKED_X.with(|px| {
        let mut px = px.borrow_mut();
        px.resize(panels * mr * depth, 0.0);
        if g.pairs {
            pack_x_pairs(x, m, k, mr, &mut px);
        } else {
            pack_x(x, m, k, mr, &mut px);
        }
        let px = &px[..];
        let out = SendPtr(dst.as_mut_ptr());
        let task = |j0: usize| {
            let cols = (n - j0).min(g.nc);
            PACKED_W.with(|pw| {
                let mut pw = pw.borrow_mut();
                pw.resize(g.kc * cols.next_multiple_of(nr), 0.0);
                let mut p0 = 0;
                while p0 < depth {
                    let kc = (depth - p0).min(g.kc);
                    match bf16.filter(|_| g.pairs) {
                        Some(w) => pack_w_pairs(w, k, (j0, cols), (p0, kc), nr, &mut pw),
                        None => pack_w(w, k, (j0, cols), (p0, kc), nr, &mut pw),
                    }
                    let load = accumulate || p0 > 0;
                    for i0 in (0..m).step_by(g.mc) {
                        let rows = (m - i0).min(g.mc);
                        for jr in (0..cols).step_by(nr) {
                            let wp = &pw[jr * kc..(jr + nr) * kc];
                            for ir in (0..rows).step_by(mr) {
                                let panel = (i0 + ir) / mr;
                                let xp = &px[panel * mr * depth + p0 * mr..][..mr * kc];
                                let tile = Tile {
                                    rows: (rows - ir).min(mr),
                                    cols: (cols - jr).min(nr),
                                    at: (i0 + ir) * dst_rs + j0 + jr,
                                    rs: dst_rs,
                                    load,
                                };
                                // SAFETY: the caller checked the CPU runs this
                                // geometry's kernel; the tile lies inside the
                                // destination the caller checked (rows < m,
                                // columns < n), and this task alone writes
                                // columns j0..j0 + cols.
                                unsafe { (g.kernel)(kc, xp, wp, out, tile) };
                            }
                        }
                    }
                    p0 += kc;
                }
            });
        };
        super::column_tasks(n, g.nc, m * n * k, task);
    });
}

/// `x` (`m × k`, row-major) into panels of `mr` rows: panel `p` holds, for
/// each `kk`, rows `p·mr .. p·mr + mr` side by side (zero past row `m`).
fn pack_x(x: &[f32], m: usize, k: usize, mr: usize, px: &mut [f32]) {
    let pack = |(p, panel): (usize, &mut [f32])| {
        // In groups of up to 8 rows, one transpose width each.
        for g0 in (0..mr).step_by(8) {
            let (first, width) = (p * mr + g0, (mr - g0).min(8));
            let rows: Vec<&[f32]> = (first..m.min(first + width))
                .map(|i| &x[i * k..(i + 1) * k])
                .collect();
            interleave(&rows, k, &mut panel[g0..], mr, width);
        }
    };
    if m * k > 1 << 16 {
        px.par_chunks_mut(mr * k).enumerate().for_each(pack);
    } else {
        px.chunks_mut(mr * k).enumerate().for_each(pack);
    }
}

/// [`pack_x`] for the pair kernels: each row rounded to bf16 pairs first
/// ([`round_pairs`]), then the pairs (32 bits each) interleaved like floats.
fn pack_x_pairs(x: &[f32], m: usize, k: usize, mr: usize, px: &mut [f32]) {
    let depth = k.div_ceil(2);
    let pack = |(p, panel): (usize, &mut [f32])| {
        ROUNDED_X.with(|rounded| {
            let mut rounded = rounded.borrow_mut();
            rounded.resize(8 * depth, 0.0);
            for g0 in (0..mr).step_by(8) {
                let (first, width) = (p * mr + g0, (mr - g0).min(8));
                let rows = first..m.min(first + width);
                for (i, dst) in rows.clone().zip(rounded.chunks_exact_mut(depth)) {
                    round_pairs(&x[i * k..(i + 1) * k], dst);
                }
                let rows: Vec<&[f32]> = rounded.chunks_exact(depth).take(rows.len()).collect();
                interleave(&rows, depth, &mut panel[g0..], mr, width);
            }
        })
    };
    if m * k > 1 << 16 {
        px.par_chunks_mut(mr * depth).enumerate().for_each(pack);
    } else {
        px.chunks_mut(mr * depth).enumerate().for_each(pack);
    }
}

/// `src` rounded to bf16 (to nearest, ties to even), two by two into the
/// bits of one f32 slot each: `dst[p]` holds `src[2p]` in its low half and
/// `src[2p + 1]` (zero past the end) in its high half, the order
/// `vdpbf16ps` pairs them in.
pub(super) fn round_pairs(src: &[f32], dst: &mut [f32]) {
    assert_eq!(dst.len(), src.len().div_ceil(2));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if Level::Avx512Bf16.supported() {
        // SAFETY: the CPU has AVX-512 BF16; the function reads and writes
        // within the slices' lengths, checked above.
        done = unsafe { round_pairs_avx512(src, dst) };
    }
    for (p, d) in dst.iter_mut().enumerate().skip(done / 2) {
        let half = |i: usize| {
            src.get(i)
                .map_or(0, |&v| u32::from(half::bf16::from_f32(v).to_bits()))
        };
        *d = f32::from_bits(half(2 * p) | half(2 * p + 1) << 16);
    }
}

/// The 32-aligned part of [`round_pairs`]; returns how many of `src` it did.
///
/// # Safety
/// AVX-512 F and BF16 are present; `dst.len() == src.len().div_ceil(2)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_pairs_avx512(src: &[f32], dst: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let body = src.len() / 32 * 32;
    // SAFETY: reads src[i..i + 32] with i + 32 <= body <= len; writes
    // dst[i / 2..i / 2 + 16], inside dst as the caller guarantees.
    unsafe {
        for i in (0..body).step_by(32) {
            let lo = _mm512_loadu_ps(src.as_ptr().add(i));
            let hi = _mm512_loadu_ps(src.as_ptr().add(i + 16));
            let pairs: __m512 = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i / 2), pairs);
        }
    }
    body
}

/// [`pack_w`] for the pair kernels: bf16 weights are already pairs in
/// memory (depths `2p`, `2p + 1` of a row side by side); `p0` and `kc`
/// count pairs. The last pair of an odd depth is zero in its high half.
fn pack_w_pairs(
    w: &[half::bf16],
    k: usize,
    (j0, cols): (usize, usize),
    (p0, kc): (usize, usize),
    nr: usize,
    pw: &mut [f32],
) {
    WIDENED_W.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        scratch.resize(8 * kc, 0.0);
        let from = 2 * p0;
        let len = (k - from).min(2 * kc);
        for (q, panel) in pw[..cols.next_multiple_of(nr) * kc]
            .chunks_exact_mut(nr * kc)
            .enumerate()
        {
            for h in 0..nr / 8 {
                let first = q * nr + h * 8;
                let cols_here = first..cols.min(first + 8);
                let count = cols_here.len();
                for (j, dst) in cols_here.zip(scratch.chunks_exact_mut(kc)) {
                    let row = &w[(j0 + j) * k + from..][..len];
                    for (d, pair) in dst.iter_mut().zip(row.chunks(2)) {
                        let hi = pair.get(1).map_or(0, |h| u32::from(h.to_bits()));
                        *d = f32::from_bits(u32::from(pair[0].to_bits()) | hi << 16);
                    }
                }
                let rows: Vec<&[f32]> = scratch.chunks_exact(kc).take(count).collect();
                interleave(&rows, kc, &mut panel[h * 8..], nr, 8);
            }
        }
    });
}

/// Weight rows `j0 .. j0 + cols`, depth `p0 .. p0 + kc`, into panels of `nr`
/// columns: panel `q` holds, for each `kk`, the `nr` weights of output columns
/// `j0 + q·nr ..` side by side (zero past column `j0 + cols`).
/// Half-precision weights are widened here, once per call, so the
/// micro-kernels stay f32.
fn pack_w<W: WeightElem>(
    w: &[W],
    k: usize,
    (j0, cols): (usize, usize),
    (p0, kc): (usize, usize),
    nr: usize,
    pw: &mut [f32],
) {
    WIDENED_W.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        for (q, panel) in pw[..cols.next_multiple_of(nr) * kc]
            .chunks_exact_mut(nr * kc)
            .enumerate()
        {
            // In groups of 8 columns, one transpose width each.
            for h in 0..nr / 8 {
                let first = q * nr + h * 8;
                let row = |j: usize| &w[(j0 + j) * k + p0..][..kc];
                let cols_here = first..cols.min(first + 8);
                // f32 rows are read in place; half ones are widened first,
                // into rows of `kc` side by side.
                let rows: Vec<&[f32]> = match cols_here.clone().map(|j| W::as_f32(row(j))).collect()
                {
                    Some(rows) => rows,
                    None => {
                        scratch.resize(cols_here.len() * kc, 0.0);
                        for (j, dst) in cols_here.zip(scratch.chunks_exact_mut(kc)) {
                            W::widen(row(j), dst);
                        }
                        scratch.chunks_exact(kc).collect()
                    }
                };
                interleave(&rows, kc, &mut panel[h * 8..], nr, 8);
            }
        }
    });
}

/// `dst[kk · stride + r] = rows[r][kk]` for `kk < len` and `r < width ≤ 8`,
/// zero for `r ≥ rows.len()`: a transpose of up to 8 rows into interleaved
/// columns, in 8 × 8 register blocks (scalar copies, strided in `dst`, were
/// 5% of a vision forward).
fn interleave(rows: &[&[f32]], len: usize, dst: &mut [f32], stride: usize, width: usize) {
    assert!(rows.len() <= width && width <= 8 && stride >= width);
    assert!(rows.iter().all(|r| r.len() >= len));
    assert!(len == 0 || dst.len() >= (len - 1) * stride + width);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::avx2_fma() {
        // SAFETY: AVX2 is present (avx2_fma); the asserts above bound every
        // read (8 at a time below `len`) and write (`width` per step).
        done = unsafe { interleave_avx2(rows, len, dst, stride, width) };
    }
    for kk in done..len {
        let out = &mut dst[kk * stride..kk * stride + width];
        for (r, v) in out.iter_mut().enumerate() {
            *v = rows.get(r).map_or(0.0, |row| row[kk]);
        }
    }
}

/// The 8-aligned part of [`interleave`]; returns how far it got.
///
/// # Safety
/// AVX2 is present and [`interleave`]'s asserts hold.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interleave_avx2(
    rows: &[&[f32]],
    len: usize,
    dst: &mut [f32],
    stride: usize,
    width: usize,
) -> usize {
    use std::arch::x86_64::*;
    let body = len / 8 * 8;
    let d = dst.as_mut_ptr();
    let mut kk = 0;
    // SAFETY: reads rows[r][kk..kk + 8] with kk + 8 <= len; writes `width`
    // floats at (kk + i) · stride, inside dst by the caller's asserts.
    unsafe {
        while kk < body {
            let mut r = [_mm256_setzero_ps(); 8];
            for (v, row) in r.iter_mut().zip(rows) {
                *v = _mm256_loadu_ps(row.as_ptr().add(kk));
            }
            // 8 × 8 transpose: pairs, then quads, then 128-bit halves.
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (i, c) in cols.iter().enumerate() {
                let at = d.add((kk + i) * stride);
                if width == 8 {
                    _mm256_storeu_ps(at, *c);
                } else {
                    let mut tmp = [0f32; 8];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), *c);
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), at, width);
                }
            }
            kk += 8;
        }
    }
    body
}

/// Where one register tile lands in the destination.
#[derive(Clone, Copy)]
struct Tile {
    rows: usize,
    cols: usize,
    /// Offset of the tile's first element.
    at: usize,
    /// Destination row stride.
    rs: usize,
    /// Add to what is there (a bias, a residual, an earlier depth slice).
    load: bool,
}

/// Pulls the destination tile's rows (`nr` floats each) towards L1 while
/// the kernel computes, for the add or the store at its end. A prefetch
/// never faults, and `wrapping_add` keeps the address arithmetic defined
/// where a ragged tile's `nr` columns run past the buffer.
#[cfg(target_arch = "x86_64")]
fn prefetch_tile(c: *mut f32, t: Tile, nr: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for r in 0..t.rows {
        // SAFETY: SSE is part of the x86-64 baseline; a prefetch reads and
        // writes nothing.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * t.rs).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(r * t.rs + nr - 1).cast());
        }
    }
}

/// One AVX2 `6 × 16` tile over depth `kc`.
///
/// # Safety
/// AVX2 and FMA are present; `xp` is `6 × kc` and `wp` is `kc × 16` packed;
/// the tile's `rows × cols` elements, `rs` apart, are inside `out`'s buffer and
/// written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, xp: &[f32], wp: &[f32], out: SendPtr, t: Tile) {
    use std::arch::x86_64::*;
    const MR: usize = AVX2.mr;
    const NR: usize = AVX2.nr;
    debug_assert!(xp.len() >= MR * kc && wp.len() >= NR * kc);
    // SAFETY: loads stay within xp (MR per step) and wp (NR per step) over kc
    // steps; stores as the caller guarantees.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (a, b) = (xp.as_ptr(), wp.as_ptr());
        let c = out.get().add(t.at);
        prefetch_tile(c, t, NR);
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*a.add(p * MR + r));
                row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                row[1] = _mm256_fmadd_ps(av, b1, row[1]);
            }
        }
        if t.rows == MR && t.cols == NR {
            for (r, row) in acc.iter().enumerate() {
                let d = c.add(r * t.rs);
                let (mut v0, mut v1) = (row[0], row[1]);
                if t.load {
                    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(d));
                    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(d.add(8)));
                }
                _mm256_storeu_ps(d, v0);
                _mm256_storeu_ps(d.add(8), v1);
            }
        } else {
            let mut tmp = [[0f32; NR]; MR];
            for (r, row) in acc.iter().enumerate() {
                _mm256_storeu_ps(tmp[r].as_mut_ptr(), row[0]);
                _mm256_storeu_ps(tmp[r].as_mut_ptr().add(8), row[1]);
            }
            for (r, row) in tmp[..t.rows].iter().enumerate() {
                let d = c.add(r * t.rs);
                for (cc, v) in row[..t.cols].iter().enumerate() {
                    let d = d.add(cc);
                    *d = if t.load { *d + v } else { *v };
                }
            }
        }
    }
}

/// One AVX-512 `14 × 32` tile over depth `kc`.
///
/// # Safety
/// AVX-512 F is present; `xp` is `14 × kc` and `wp` is `kc × 32` packed; the
/// tile's `rows × cols` elements, `rs` apart, are inside `out`'s buffer and
/// written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_avx512(kc: usize, xp: &[f32], wp: &[f32], out: SendPtr, t: Tile) {
    use std::arch::x86_64::*;
    const MR: usize = AVX512_MR;
    const NR: usize = AVX512.nr;
    debug_assert!(xp.len() >= MR * kc && wp.len() >= NR * kc);
    // SAFETY: loads stay within xp (MR per step) and wp (NR per step) over kc
    // steps; stores touch only the tile's rows × cols, as the caller
    // guarantees (masked past `cols`).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (a, b) = (xp.as_ptr(), wp.as_ptr());
        let c = out.get().add(t.at);
        prefetch_tile(c, t, NR);
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (r, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(p * MR + r));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
            }
        }
        store_avx512(&acc, c, t);
    }
}

/// One AVX-512 BF16 `14 × 32` tile over `kc` pairs of depths.
///
/// # Safety
/// AVX-512 F and BF16 are present; `xp` is `14 × kc` and `wp` is `kc × 32`
/// packed pairs; the tile's `rows × cols` elements, `rs` apart, are inside
/// `out`'s buffer and written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx2,fma")]
unsafe fn kernel_avx512_bf16(kc: usize, xp: &[f32], wp: &[f32], out: SendPtr, t: Tile) {
    use std::arch::x86_64::*;
    const MR: usize = AVX512_MR;
    const NR: usize = AVX512.nr;
    debug_assert!(xp.len() >= MR * kc && wp.len() >= NR * kc);
    // SAFETY: loads stay within xp (MR per step) and wp (NR per step) over kc
    // steps; the transmutes reinterpret 512 bits as 32 bf16 (same size);
    // stores as in `store_avx512`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (a, b) = (xp.as_ptr(), wp.as_ptr());
        let c = out.get().add(t.at);
        prefetch_tile(c, t, NR);
        for p in 0..kc {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_ps(b.add(p * NR)));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_ps(b.add(p * NR + 16)));
            for (r, row) in acc.iter_mut().enumerate() {
                // One input pair, broadcast to every lane.
                let av: __m512bh = std::mem::transmute(_mm512_set1_ps(*a.add(p * MR + r)));
                row[0] = _mm512_dpbf16_ps(row[0], av, b0);
                row[1] = _mm512_dpbf16_ps(row[1], av, b1);
            }
        }
        store_avx512(&acc, c, t);
    }
}

/// Adds (with `t.load`) or writes an AVX-512 kernel's `rows × cols` tile at
/// `c`, masking the lanes past `cols`.
///
/// # Safety
/// AVX-512 F is present; the tile's elements, `t.rs` apart from `c`, are
/// inside the destination and written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_avx512(acc: &[[std::arch::x86_64::__m512; 2]; AVX512_MR], c: *mut f32, t: Tile) {
    use std::arch::x86_64::*;
    const NR: usize = AVX512.nr;
    // SAFETY: as the caller guarantees; masked lanes are neither read nor
    // written.
    unsafe {
        // Lanes of the two vectors that are inside the tile.
        let lanes = |from: usize| -> __mmask16 {
            let n = t.cols.saturating_sub(from).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let (m0, m1) = (lanes(0), lanes(16));
        for (r, row) in acc[..t.rows].iter().enumerate() {
            let d = c.add(r * t.rs);
            let (mut v0, mut v1) = (row[0], row[1]);
            if t.cols == NR {
                if t.load {
                    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(d));
                    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(d.add(16)));
                }
                _mm512_storeu_ps(d, v0);
                _mm512_storeu_ps(d.add(16), v1);
            } else {
                // Masked lanes are neither read nor written: no fault past
                // the end of the destination, no race with the next task.
                if t.load {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, d));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, d.wrapping_add(16)));
                }
                _mm512_mask_storeu_ps(d, m0, v0);
                _mm512_mask_storeu_ps(d.wrapping_add(16), m1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{reference, values};
    use super::*;

    /// The levels with a packed kernel that this CPU runs. Fails rather
    /// than passing untested: without AVX2 the dispatcher never calls a
    /// packed kernel, but a green run would claim one was checked.
    fn levels() -> Vec<Level> {
        let levels: Vec<Level> = Level::available()
            .into_iter()
            .filter(|&l| l >= Level::Avx2)
            .collect();
        assert!(
            !levels.is_empty(),
            "this CPU lacks AVX2 + FMA: the packed kernels cannot be tested here"
        );
        println!("packed kernels tested: {levels:?}");
        levels
    }

    #[test]
    fn matches_f64_reference_at_every_block_edge() {
        for level in levels() {
            matches_reference_at(level);
        }
    }

    fn matches_reference_at(level: Level) {
        // Rows below one tile, not a multiple of mr and past one mc block;
        // columns not a multiple of nr (each lane count of a masked AVX-512
        // store) and past one nc task; depth past kc (several slices, the
        // last one short) and below one SIMD lane.
        for (m, k, n) in [
            (1, 3, 1),
            (5, 17, 15),
            (6, 768, 16),
            (12, 5, 32),
            (13, 9, 17),
            (97, 70, 45),
            (203, 1700, 300),
            (49, 2, 129),
            (25, 33, 31),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let want = reference(&x, &w, (m, k, n));
            // Written into the middle of wider rows, over a bias of 0.5.
            let rs = n + 9;
            let mut dst = vec![7f32; m * rs];
            for i in 0..m {
                dst[i * rs + 4..i * rs + 4 + n].fill(0.5);
            }
            matmul_wt(level, &x, &w, (m, k, n), &mut dst[4..], rs, true);
            let tol = 1e-5 * k as f32 + 1e-6;
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (dst[i * rs + 4 + j], want[i * n + j] + 0.5);
                    assert!(
                        (got - want).abs() <= tol,
                        "{level:?} ({m},{k},{n}) at ({i},{j}): {got} vs {want}"
                    );
                }
                // Outside the block, nothing was touched.
                assert!(dst[i * rs..i * rs + 4].iter().all(|&v| v == 7.0));
                assert!(dst[i * rs + 4 + n..(i + 1) * rs].iter().all(|&v| v == 7.0));
            }
            // Without accumulate, what was there is overwritten.
            let mut over = vec![3f32; m * n];
            matmul_wt(level, &x, &w, (m, k, n), &mut over, n, false);
            for (g, w) in over.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= tol,
                    "{level:?} ({m},{k},{n}) overwrite: {g} vs {w}"
                );
            }
        }
    }

    /// bf16 weights at `Level::Avx512Bf16`: the pair kernel rounds the input
    /// to bf16 too, so it must give the f64 sum of both rounded operands,
    /// at the same block edges, odd depths (a half-empty last pair) included.
    #[test]
    fn bf16_pairs_match_the_rounded_reference_at_every_block_edge() {
        if !Level::Avx512Bf16.supported() {
            println!("bf16 pair kernel not tested: this CPU lacks AVX-512 BF16");
            return;
        }
        println!("bf16 pair kernel tested at {:?}", Level::Avx512Bf16);
        let round = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect()
        };
        for (m, k, n) in [
            (1, 3, 1),
            (5, 17, 15),
            (14, 768, 32),
            (13, 9, 17),
            (97, 70, 45),
            (203, 1700, 300),
            (49, 2, 129),
            (25, 33, 31),
            (85, 769, 33),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let wh: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let want = reference(&round(&x), &round(&w), (m, k, n));
            let rs = n + 9;
            let mut dst = vec![7f32; m * rs];
            for i in 0..m {
                dst[i * rs + 4..i * rs + 4 + n].fill(0.5);
            }
            matmul_wt(
                Level::Avx512Bf16,
                &x,
                &wh,
                (m, k, n),
                &mut dst[4..],
                rs,
                true,
            );
            let tol = 1e-5 * k as f32 + 1e-6;
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (dst[i * rs + 4 + j], want[i * n + j] + 0.5);
                    assert!(
                        (got - want).abs() <= tol,
                        "({m},{k},{n}) at ({i},{j}): {got} vs {want}"
                    );
                }
                assert!(dst[i * rs..i * rs + 4].iter().all(|&v| v == 7.0));
                assert!(dst[i * rs + 4 + n..(i + 1) * rs].iter().all(|&v| v == 7.0));
            }
            let mut over = vec![3f32; m * n];
            matmul_wt(Level::Avx512Bf16, &x, &wh, (m, k, n), &mut over, n, false);
            for (g, w) in over.iter().zip(&want) {
                assert!((g - w).abs() <= tol, "({m},{k},{n}) overwrite: {g} vs {w}");
            }
        }
    }

    #[test]
    fn rounded_pairs_are_round_to_nearest_even_low_half_first() {
        // Lengths around the 32-wide vector body, odd ones end half empty.
        for len in [0, 1, 2, 31, 32, 33, 64, 77] {
            let src: Vec<f32> = values(len, 5).iter().map(|v| v * 3.7).collect();
            let mut dst = vec![9f32; len.div_ceil(2)];
            round_pairs(&src, &mut dst);
            for (p, d) in dst.iter().enumerate() {
                let bits = d.to_bits();
                let half = |i: usize| src.get(i).map_or(0, |&v| half::bf16::from_f32(v).to_bits());
                assert_eq!(
                    (bits & 0xffff) as u16,
                    half(2 * p),
                    "len {len} pair {p} low"
                );
                assert_eq!(
                    (bits >> 16) as u16,
                    half(2 * p + 1),
                    "len {len} pair {p} high"
                );
            }
        }
    }

    #[test]
    fn interleave_transposes_and_zero_fills() {
        for (rows, len, stride, width) in [
            (8, 19, 16, 8),
            (6, 24, 6, 6),
            (3, 9, 6, 6),
            (0, 8, 8, 8),
            (5, 7, 16, 8),
        ] {
            let data: Vec<Vec<f32>> = (0..rows).map(|r| values(len, r as u32 + 10)).collect();
            let refs: Vec<&[f32]> = data.iter().map(|r| &r[..]).collect();
            let mut dst = vec![9f32; len * stride];
            interleave(&refs, len, &mut dst, stride, width);
            for kk in 0..len {
                for r in 0..stride {
                    let want = if r >= width {
                        9.0
                    } else if r < rows {
                        data[r][kk]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        dst[kk * stride + r],
                        want,
                        "rows {rows} len {len} at ({kk}, {r})"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_depth_is_zero_or_what_was_there() {
        // k == 0 returns before any vector instruction: runs on any CPU.
        let mut dst = vec![2f32; 6];
        matmul_wt::<f32>(Level::Avx2, &[], &[], (2, 0, 3), &mut dst, 3, true);
        assert_eq!(dst, [2.0; 6]);
        matmul_wt::<f32>(Level::Avx2, &[], &[], (2, 0, 3), &mut dst, 3, false);
        assert_eq!(dst, [0.0; 6]);
    }
}
