//! The many-rows kernel (a vision tower's `B × 197` tokens): a packed,
//! cache-blocked f32 GEMM for AVX2 + FMA, in the way BLIS and OpenBLAS block
//! theirs.
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
//! - the micro-kernel holds an `MR × NR` = 6 × 16 tile in 12 of the 16 AVX2
//!   registers, with 2 for the weight vectors and 1 for the broadcast input:
//!   12 FMAs for 8 loads per step, so it is bound by the FMA units, not loads.

use std::cell::RefCell;

use super::SendPtr;
use rayon::prelude::*;

/// Rows of the register tile (input rows, broadcast one at a time).
const MR: usize = 6;
/// Columns of the register tile (output columns: two 8-wide vectors).
const NR: usize = 16;
/// Depth of one packed slice. BERT/ViT-base's 768-deep layers take one pass,
/// so each output tile is loaded and stored once; the 3072-deep one takes
/// four. A weight panel (`KC × NR`, 48 KB) streams from L2 while the input
/// panel (`MR × KC`, 18 KB) stays in L1.
const KC: usize = 768;
/// Input rows per block: `MC × KC` floats (288 KB) walked under one weight
/// panel before the next.
const MC: usize = 96;
/// Output columns per task: 6 tasks for a 768-wide layer, 24 for 3072, so two
/// cores stay balanced even when one of them is busy elsewhere (256 left a
/// 768-wide layer in 3 tasks and ran 15% slower).
const NC: usize = 128;
// Blocks start on panel boundaries.
const _: () = assert!(MC.is_multiple_of(MR) && NC.is_multiple_of(NR));

thread_local! {
    /// The packed input, reused across calls: a fresh multi-megabyte buffer
    /// per layer would page-fault on every call.
    static PACKED_X: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each worker's packed weight slice (`KC × NC`).
    static PACKED_W: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `dst[i, j] (+)= Σ_k x[i, k] · w[j, k]`, as `super::matmul_wt` documents;
/// the caller has checked the slice lengths and that AVX2 + FMA are present.
pub fn matmul_wt(
    x: &[f32],
    w: &[f32],
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
    let panels = m.div_ceil(MR);
    PACKED_X.with(|px| {
        let mut px = px.borrow_mut();
        px.resize(panels * MR * k, 0.0);
        pack_x(x, m, k, &mut px);
        let px = &px[..];
        let out = SendPtr(dst.as_mut_ptr());
        let task = |j0: usize| {
            let cols = (n - j0).min(NC);
            PACKED_W.with(|pw| {
                let mut pw = pw.borrow_mut();
                pw.resize(KC * cols.next_multiple_of(NR), 0.0);
                let mut p0 = 0;
                while p0 < k {
                    let kc = (k - p0).min(KC);
                    pack_w(w, k, j0, cols, p0, kc, &mut pw);
                    let load = accumulate || p0 > 0;
                    for i0 in (0..m).step_by(MC) {
                        let rows = (m - i0).min(MC);
                        for jr in (0..cols).step_by(NR) {
                            let wp = &pw[jr * kc..(jr + NR) * kc];
                            for ir in (0..rows).step_by(MR) {
                                let panel = (i0 + ir) / MR;
                                let xp = &px[panel * MR * k + p0 * MR..][..MR * kc];
                                let tile = Tile {
                                    rows: (rows - ir).min(MR),
                                    cols: (cols - jr).min(NR),
                                    at: (i0 + ir) * dst_rs + j0 + jr,
                                    rs: dst_rs,
                                    load,
                                };
                                // SAFETY: the tile lies inside the destination
                                // the caller checked (rows < m, columns < n),
                                // and this task alone writes columns
                                // j0..j0 + cols.
                                unsafe { kernel(kc, xp, wp, out, tile) };
                            }
                        }
                    }
                    p0 += kc;
                }
            });
        };
        super::column_tasks(n, NC, m * n * k, task);
    });
}

/// `x` (`m × k`, row-major) into panels of `MR` rows: panel `p` holds, for
/// each `kk`, rows `p·MR .. p·MR + MR` side by side (zero past row `m`).
fn pack_x(x: &[f32], m: usize, k: usize, px: &mut [f32]) {
    let pack = |(p, panel): (usize, &mut [f32])| {
        let rows: Vec<&[f32]> = (p * MR..m.min(p * MR + MR))
            .map(|i| &x[i * k..(i + 1) * k])
            .collect();
        interleave(&rows, k, panel, MR, MR);
    };
    if m * k > 1 << 16 {
        px.par_chunks_mut(MR * k).enumerate().for_each(pack);
    } else {
        px.chunks_mut(MR * k).enumerate().for_each(pack);
    }
}

/// Weight rows `j0 .. j0 + cols`, depth `p0 .. p0 + kc`, into panels of `NR`
/// columns: panel `q` holds, for each `kk`, the `NR` weights of output columns
/// `j0 + q·NR ..` side by side (zero past column `j0 + cols`).
fn pack_w(w: &[f32], k: usize, j0: usize, cols: usize, p0: usize, kc: usize, pw: &mut [f32]) {
    for (q, panel) in pw[..cols.next_multiple_of(NR) * kc]
        .chunks_exact_mut(NR * kc)
        .enumerate()
    {
        // Two halves of 8 columns, one transpose width each.
        for h in 0..NR / 8 {
            let first = q * NR + h * 8;
            let rows: Vec<&[f32]> = (first..cols.min(first + 8))
                .map(|j| &w[(j0 + j) * k + p0..][..kc])
                .collect();
            interleave(&rows, kc, &mut panel[h * 8..], NR, 8);
        }
    }
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

/// One `MR × NR` tile over depth `kc`.
///
/// # Safety
/// AVX2 and FMA are present; `xp` is `MR × kc` and `wp` is `kc × NR` packed;
/// the tile's `rows × cols` elements, `rs` apart, are inside `out`'s buffer and
/// written by no other thread meanwhile.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(kc: usize, xp: &[f32], wp: &[f32], out: SendPtr, t: Tile) {
    use std::arch::x86_64::*;
    debug_assert!(xp.len() >= MR * kc && wp.len() >= NR * kc);
    // SAFETY: loads stay within xp (MR per step) and wp (NR per step) over kc
    // steps; stores as the caller guarantees.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (a, b) = (xp.as_ptr(), wp.as_ptr());
        let c = out.get().add(t.at);
        for r in 0..t.rows {
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * t.rs).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.add(r * t.rs + NR - 1).cast());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Σ in f64, the order-free answer both kernels are compared with.
    fn reference(x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f32> {
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
    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| {
                let h = (i ^ seed).wrapping_mul(0x9E37_79B9).rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_f64_reference_at_every_block_edge() {
        // Fails rather than passing untested: on such a CPU the dispatcher
        // never calls this kernel, but a green run would claim it was checked.
        assert!(
            crate::model::cpu::avx2_fma(),
            "this CPU lacks AVX2 + FMA: the packed kernel cannot be tested here"
        );
        // Rows below one tile, not a multiple of MR and past one MC block;
        // columns not a multiple of NR and past one NC task; depth past KC
        // (several slices, the last one short) and below one SIMD lane.
        for (m, k, n) in [
            (1, 3, 1),
            (5, 17, 15),
            (6, 768, 16),
            (97, 70, 45),
            (203, 1700, 300),
            (49, 2, 129),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let want = reference(&x, &w, (m, k, n));
            // Written into the middle of wider rows, over a bias of 0.5.
            let rs = n + 9;
            let mut dst = vec![7f32; m * rs];
            for i in 0..m {
                dst[i * rs + 4..i * rs + 4 + n].fill(0.5);
            }
            matmul_wt(&x, &w, (m, k, n), &mut dst[4..], rs, true);
            let tol = 1e-5 * k as f32 + 1e-6;
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (dst[i * rs + 4 + j], want[i * n + j] + 0.5);
                    assert!(
                        (got - want).abs() <= tol,
                        "({m},{k},{n}) at ({i},{j}): {got} vs {want}"
                    );
                }
                // Outside the block, nothing was touched.
                assert!(dst[i * rs..i * rs + 4].iter().all(|&v| v == 7.0));
                assert!(dst[i * rs + 4 + n..(i + 1) * rs].iter().all(|&v| v == 7.0));
            }
            // Without accumulate, what was there is overwritten.
            let mut over = vec![3f32; m * n];
            matmul_wt(&x, &w, (m, k, n), &mut over, n, false);
            for (g, w) in over.iter().zip(&want) {
                assert!((g - w).abs() <= tol, "({m},{k},{n}) overwrite: {g} vs {w}");
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
        matmul_wt(&[], &[], (2, 0, 3), &mut dst, 3, true);
        assert_eq!(dst, [2.0; 6]);
        matmul_wt(&[], &[], (2, 0, 3), &mut dst, 3, false);
        assert_eq!(dst, [0.0; 6]);
    }
}
