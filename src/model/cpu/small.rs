//! The few-rows kernel: AVX2 + FMA, or AVX-512, x86-64 only
//! (`super::matmul_wt` checks the CPU runs the level before it calls in).

use super::SendPtr;
use super::weight::WeightElem;
use crate::simd::Level;

/// Output columns (weight rows) per task: enough work to amortise a task,
/// small enough that two cores split even a 512-wide projection.
const COLS_PER_TASK: usize = 64;

/// Same contract as `super::matmul_wt`, whose asserts have run, at `level`
/// (AVX2 at least).
pub fn matmul_wt<W: WeightElem>(
    level: Level,
    x: &[f32],
    w: &[W],
    shape: (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    if level >= Level::Avx512 {
        blocks::<W, TX, TW512>(x, w, shape, dst, dst_rs, accumulate, tile_512)
    } else {
        blocks::<W, TX, TW>(x, w, shape, dst, dst_rs, accumulate, tile)
    }
}

/// `TX × TW` dot products of `k`-long rows, `next` prefetched on the way.
type TileFn<W, const TX: usize, const TW: usize> =
    fn(&[f32], &[W], &[W], usize, usize, usize, &mut [[f32; TW]; TX]);

/// The product in blocks of `TW` weight rows, each passed by every input
/// row `TX` at a time through `tile`.
#[allow(clippy::too_many_arguments)]
fn blocks<W: WeightElem, const TX: usize, const TW: usize>(
    x: &[f32],
    w: &[W],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    tile: TileFn<W, TX, TW>,
) {
    let out = SendPtr(dst.as_mut_ptr());
    let task = |j0: usize| {
        let j1 = (j0 + COLS_PER_TASK).min(n);
        // Weight rows outer: a block of `TW` of them stays in L1 while
        // every input row passes, so the weight is read from memory once.
        let mut j = j0;
        while j < j1 {
            let rows = (j1 - j).min(TW);
            let mut i = 0;
            while i < m {
                let xs = (m - i).min(TX);
                let mut acc = [[0f32; TW]; TX];
                // Each pass over this block also pulls its share of the
                // next block towards the cache, so memory streams at an
                // even rate while the passes compute from L1.
                let next = &w[(j + rows) * k..(j + rows + (j1 - j - rows).min(TW)) * k];
                let (pass, passes) = (i / TX, m.div_ceil(TX));
                let next = &next[next.len() * pass / passes..next.len() * (pass + 1) / passes];
                let (xt, wt) = (&x[i * k..(i + xs) * k], &w[j * k..(j + rows) * k]);
                tile(xt, wt, next, k, xs, rows, &mut acc);
                for (di, row) in acc[..xs].iter().enumerate() {
                    for (r, a) in row[..rows].iter().enumerate() {
                        // SAFETY: (i + di, j + r) is inside the destination
                        // the caller checked; tasks own disjoint columns.
                        unsafe {
                            let d = out.get().add((i + di) * dst_rs + j + r);
                            *d = if accumulate { *d + a } else { *a };
                        }
                    }
                }
                i += xs;
            }
            j += rows;
        }
    };
    super::column_tasks(n, COLS_PER_TASK, m * n * k, task);
}

/// Input rows × weight rows in one register tile: 4 × 3 accumulators, the
/// 3 weight vectors and one input vector are exactly AVX2's 16 registers
/// (3 × 4 spills one accumulator through the stack every step, which
/// halves throughput). Each step loads 7 vectors for 12 independent FMA
/// chains, enough to hide FMA latency; one row at a time was bound by
/// loads and ran at a third of the FMA units' peak.
const TX: usize = 4;
const TW: usize = 3;

/// AVX-512's 32 registers hold 4 × 6 accumulators of 16 lanes, the 6
/// weight vectors and the input vector: 24 FMAs for 10 loads per step,
/// four times the AVX2 tile's work per step.
const TW512: usize = 6;

/// `acc[i][r] = x[i] · w[r]` for `xs ≤ TX` input rows and `ws ≤ TW`
/// weight rows, each of length `k`.
/// `next` (possibly empty) is prefetched along the way.
fn tile<W: WeightElem>(
    x: &[f32],
    w: &[W],
    next: &[W],
    k: usize,
    xs: usize,
    ws: usize,
    acc: &mut [[f32; TW]; TX],
) {
    assert!(x.len() >= xs * k && w.len() >= ws * k && xs <= TX && ws <= TW);
    // SAFETY: only reached when `Level::Avx2` found AVX2, FMA and F16C;
    // the assert above bounds every row the kernel reads.
    unsafe {
        macro_rules! dispatch {
            ($($xs:literal, $ws:literal);*) => {
                match (xs, ws) {
                    $(($xs, $ws) => tile_avx2::<W, $xs, $ws>(x, w, next, k, acc),)*
                    _ => unreachable!("tile shape checked above"),
                }
            };
        }
        dispatch!(4, 3; 4, 2; 4, 1; 3, 3; 3, 2; 3, 1; 2, 3; 2, 2; 2, 1; 1, 3; 1, 2; 1, 1)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<W: WeightElem, const X: usize, const R: usize>(
    x: &[f32],
    w: &[W],
    next: &[W],
    k: usize,
    acc: &mut [[f32; TW]; TX],
) {
    use std::arch::x86_64::*;
    let body = k / 8 * 8;
    // SAFETY (all loads): kk + 8 <= body <= k; row i of x spans
    // i*k..(i+1)*k and row r of w spans r*k..(r+1)*k, both checked by the
    // caller's assert.
    unsafe {
        let mut s = [[_mm256_setzero_ps(); R]; X];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut ahead = Prefetch::new(next, 8, body);
        let mut kk = 0;
        while kk < body {
            ahead.step();
            let mut wv = [_mm256_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = W::load8(wp.add(r * k + kk));
            }
            for (i, si) in s.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add(i * k + kk));
                for (r, sir) in si.iter_mut().enumerate() {
                    *sir = _mm256_fmadd_ps(xv, wv[r], *sir);
                }
            }
            kk += 8;
        }
        for i in 0..X {
            for r in 0..R {
                let v = s[i][r];
                let q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
                let q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
                acc[i][r] = _mm_cvtss_f32(q) + tail_dot(x, w, k, (i, r), body);
            }
        }
    }
}

/// [`tile`] for AVX-512: `xs ≤ TX` input rows and `ws ≤ TW512` weight rows.
fn tile_512<W: WeightElem>(
    x: &[f32],
    w: &[W],
    next: &[W],
    k: usize,
    xs: usize,
    ws: usize,
    acc: &mut [[f32; TW512]; TX],
) {
    assert!(x.len() >= xs * k && w.len() >= ws * k && xs <= TX && ws <= TW512);
    // SAFETY: only reached at `Level::Avx512`, which found AVX-512 F/BW/VL/DQ
    // on top of AVX2, FMA and F16C; the assert bounds every row read.
    unsafe {
        macro_rules! dispatch {
            ($($xs:literal: $($ws:literal)*);*) => {
                match (xs, ws) {
                    $($(($xs, $ws) => tile_avx512::<W, $xs, $ws>(x, w, next, k, acc),)*)*
                    _ => unreachable!("tile shape checked above"),
                }
            };
        }
        dispatch!(4: 6 5 4 3 2 1; 3: 6 5 4 3 2 1; 2: 6 5 4 3 2 1; 1: 6 5 4 3 2 1)
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn tile_avx512<W: WeightElem, const X: usize, const R: usize>(
    x: &[f32],
    w: &[W],
    next: &[W],
    k: usize,
    acc: &mut [[f32; TW512]; TX],
) {
    use std::arch::x86_64::*;
    let body = k / 16 * 16;
    // SAFETY (all loads): kk + 16 <= body <= k, inside rows the caller's
    // assert bounds; prefetches never fault (`Prefetch`).
    unsafe {
        let mut s = [[_mm512_setzero_ps(); R]; X];
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut ahead = Prefetch::new(next, 16, body);
        let mut kk = 0;
        while kk < body {
            ahead.step();
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = W::load16(wp.add(r * k + kk));
            }
            for (i, si) in s.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(xp.add(i * k + kk));
                for (r, sir) in si.iter_mut().enumerate() {
                    *sir = _mm512_fmadd_ps(xv, wv[r], *sir);
                }
            }
            kk += 16;
        }
        for i in 0..X {
            for r in 0..R {
                acc[i][r] = _mm512_reduce_add_ps(s[i][r]) + tail_dot(x, w, k, (i, r), body);
            }
        }
    }
}

/// Spreads prefetches of `next` (the weight block after this one) evenly
/// over a tile's steps, so memory streams at an even rate while the passes
/// compute from L1: two 64-byte lines from element `pos >> 16` each step
/// (fixed point, no division in the loop), up to 32 floats or 64 halves a
/// step. A prefetch is a hint that never faults, so a line past the end of
/// `next` costs nothing; `wrapping_add` keeps that address arithmetic
/// defined.
struct Prefetch<W> {
    from: *const W,
    pos: usize,
    inc: usize,
}

impl<W> Prefetch<W> {
    /// For a loop of `body / lanes` steps of `lanes` elements each.
    fn new(next: &[W], lanes: usize, body: usize) -> Self {
        Self {
            from: next.as_ptr(),
            pos: 0,
            inc: ((next.len() << 16) * lanes).checked_div(body).unwrap_or(0),
        }
    }

    #[inline(always)]
    fn step(&mut self) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let at = self.from.wrapping_add(self.pos >> 16).cast::<i8>();
        // SAFETY: prefetch never faults, whatever the address (SSE, part of
        // every x86-64).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(at);
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
        }
        self.pos += self.inc;
    }
}

/// The part of row `i` of `x` · row `r` of `w` past the vector loop's
/// `body` elements (`k` each).
#[inline(always)]
fn tail_dot<W: WeightElem>(
    x: &[f32],
    w: &[W],
    k: usize,
    (i, r): (usize, usize),
    body: usize,
) -> f32 {
    x[i * k + body..(i + 1) * k]
        .iter()
        .zip(&w[r * k + body..(r + 1) * k])
        .map(|(a, b)| a * b.to_f32())
        .sum()
}
