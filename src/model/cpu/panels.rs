//! A dense weight stored for the few-rows product (a text query's ~10
//! tokens): in panels of [`WIDTH`] output columns, each panel `k` rows of
//! `WIDTH` weights (column-major within the panel), so a product streams
//! the weight as one sequential read per task and keeps a whole tile of
//! outputs in registers: each depth loads one row of the panel, broadcasts
//! each input row's element against it, and no horizontal sum is left at
//! the end. The row-major few-rows kernel (`small.rs`) reads `[n, k]`
//! rows as dot products; on BERT-base's 768 × 3072 layers at 10 rows it
//! streamed 13.5 GB/s where this layout streams at the memory's rate
//! (BENCHMARKS.md, session 18).
//!
//! Only what serves queries is stored this way (`layers::PanelWeights`):
//! the text tower of a model loaded for inference on the CPU. A checkpoint
//! written from such a model gets its rows back through [`PanelWeight::to_tensor`].

use candle_core::{CpuStorage, Device, Storage, Tensor};
use half::{bf16, f16};

use super::SendPtr;
use super::int8::{self, Int8Panels};
use super::weight::WeightElem;
use crate::simd::{self, Level};

/// Output columns per panel: two AVX-512 vectors, four AVX2 ones.
pub const WIDTH: usize = 32;

/// Input rows one AVX-512 pass holds: 2 × 12 accumulators, the panel's 2
/// weight vectors and the broadcast input take 27 of the 32 registers.
const ROWS_512: usize = 12;

/// Input rows one AVX2 pass holds over half a panel (16 columns): 2 × 6
/// accumulators, 2 weight vectors and the broadcast fill 15 of 16 registers.
const ROWS_AVX2: usize = 6;

/// Panels per task: enough to amortise a task, few enough that two cores
/// split even a 512-wide projection evenly.
const PANELS_PER_TASK: usize = 2;

/// A `[n, k]` weight (`nn.Linear`'s layout) re-laid in panels; the last
/// panel's columns past `n` are zeros.
#[derive(Debug)]
pub struct PanelWeight {
    n: usize,
    k: usize,
    data: PanelData,
}

#[derive(Debug)]
enum PanelData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    /// bf16 weights where the CPU multiplies bf16 pairs (`vdpbf16ps`,
    /// `Level::Avx512Bf16`): each panel row holds two depths per column
    /// (the order of [`unpair`]), and the input is rounded to bf16 pairs to
    /// meet them, as the many-rows kernel does on these CPUs. Twice the multiply-adds per
    /// instruction: at 10 rows the widening kernel is bound by the FMA
    /// units once the weights are half the bytes.
    Bf16Pairs(Vec<u32>),
    /// 8-bit weights with a scale per column (`--text-weights int8`,
    /// `int8.rs`), meeting inputs quantized to 16 bits.
    Int8(Int8Panels),
}

impl PanelWeight {
    /// The weight of a dense layer (a contiguous `[n, k]` CPU tensor of f32,
    /// bf16 or f16), re-laid; `None` for anything else.
    pub fn from_tensor(t: &Tensor) -> Option<Self> {
        Self::from_tensor_for(t, simd::level())
    }

    /// [`Self::from_tensor`], laid out for the kernels of `level`.
    pub(super) fn from_tensor_for(t: &Tensor, level: Level) -> Option<Self> {
        if !t.device().is_cpu() {
            return None;
        }
        let (n, k) = t.dims2().ok()?;
        let (storage, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        let data = match &*storage {
            Storage::Cpu(CpuStorage::F32(d)) => PanelData::F32(relay(&d[start..end], n, k)),
            Storage::Cpu(CpuStorage::BF16(d)) if level == Level::Avx512Bf16 => {
                PanelData::Bf16Pairs(relay_pairs(&d[start..end], n, k))
            }
            Storage::Cpu(CpuStorage::BF16(d)) => PanelData::Bf16(relay(&d[start..end], n, k)),
            Storage::Cpu(CpuStorage::F16(d)) => PanelData::F16(relay(&d[start..end], n, k)),
            _ => return None,
        };
        Some(Self { n, k, data })
    }

    /// The weight of a dense layer (as [`Self::from_tensor`] takes) quantized
    /// to 8 bits per column (`int8.rs`); `None` for anything else.
    pub fn from_tensor_int8(t: &Tensor) -> Option<Self> {
        if !super::is_cpu_weight(t) {
            return None;
        }
        let (n, k) = t.dims2().ok()?;
        let rows = t.to_dtype(candle_core::DType::F32).ok()?;
        let rows = rows.flatten_all().ok()?.to_vec1::<f32>().ok()?;
        let data = PanelData::Int8(Int8Panels::quantize(&rows, n, k));
        Some(Self { n, k, data })
    }

    /// True when this CPU runs the 8-bit product in vectors (elsewhere it
    /// runs in plain Rust, correct and slow).
    pub fn int8_runs_fast() -> bool {
        int8::kernel(simd::level()).is_vector()
    }

    /// True when the weight is held as 8-bit integers, whose rows
    /// ([`Self::to_tensor`]) are not the checkpoint's.
    pub fn is_quantized(&self) -> bool {
        matches!(self.data, PanelData::Int8(_))
    }

    /// `(n, k)`: output and input widths.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The weight back in `nn.Linear`'s `[n, k]` rows, in its own type (8-bit
    /// weights as the f32 values they stand for).
    pub fn to_tensor(&self) -> candle_core::Result<Tensor> {
        let (n, k) = (self.n, self.k);
        match &self.data {
            PanelData::F32(d) => Tensor::from_vec(unrelay(d, n, k), (n, k), &Device::Cpu),
            PanelData::Bf16(d) => Tensor::from_vec(unrelay(d, n, k), (n, k), &Device::Cpu),
            PanelData::F16(d) => Tensor::from_vec(unrelay(d, n, k), (n, k), &Device::Cpu),
            PanelData::Bf16Pairs(d) => {
                Tensor::from_vec(unrelay_pairs(d, n, k), (n, k), &Device::Cpu)
            }
            PanelData::Int8(d) => Tensor::from_vec(d.dequantize(n, k), (n, k), &Device::Cpu),
        }
    }

    /// `dst[i, j] (+)= Σ_k x[i, k] · w[j, k]` for `x: [m, k]`, `dst` rows
    /// `dst_rs` apart, as `super::matmul_wt` documents.
    ///
    /// # Panics
    /// If a slice is too short for the shapes (a caller bug, checked before
    /// any unsafe access).
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32], dst_rs: usize, accumulate: bool) {
        self.matmul_at(simd::level(), x, m, dst, dst_rs, accumulate)
    }

    /// [`Self::matmul`] at a given vector level (the tests run each one the
    /// machine has).
    pub(super) fn matmul_at(
        &self,
        level: Level,
        x: &[f32],
        m: usize,
        dst: &mut [f32],
        dst_rs: usize,
        accumulate: bool,
    ) {
        let (n, k) = (self.n, self.k);
        // Columns of one row must not overlap the next row's.
        assert!(
            m <= 1 || dst_rs >= n,
            "panel matmul: rows {dst_rs} apart, {n} wide"
        );
        if !super::checked_product("panel matmul", level, x.len(), (m, k, n), dst.len(), dst_rs) {
            return;
        }
        if k == 0 {
            // An empty sum: nothing to add, zeros to write.
            if !accumulate {
                dst.chunks_mut(dst_rs)
                    .take(m)
                    .for_each(|row| row[..n].fill(0.0));
            }
            return;
        }
        match &self.data {
            PanelData::F32(w) => product(level, x, w, (m, k, n), dst, dst_rs, accumulate),
            PanelData::Bf16(w) => product(level, x, w, (m, k, n), dst, dst_rs, accumulate),
            PanelData::F16(w) => product(level, x, w, (m, k, n), dst, dst_rs, accumulate),
            PanelData::Bf16Pairs(w) => {
                product_pairs(level, x, w, (m, k, n), dst, dst_rs, accumulate)
            }
            PanelData::Int8(w) => product_int8(level, x, w, (m, k, n), dst, dst_rs, accumulate),
        }
    }
}

/// `[n, k]` rows → panels of [`WIDTH`] columns, zero-padded.
fn relay<W: Copy + Default>(w: &[W], n: usize, k: usize) -> Vec<W> {
    let panels = n.div_ceil(WIDTH);
    let mut out = vec![W::default(); panels * k * WIDTH];
    for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        let (p, c) = (j / WIDTH, j % WIDTH);
        let panel = &mut out[p * k * WIDTH..(p + 1) * k * WIDTH];
        for (kk, v) in row.iter().enumerate() {
            panel[kk * WIDTH + c] = *v;
        }
    }
    out
}

/// `[n, k]` bf16 rows → panels of [`WIDTH`] columns whose rows are depth
/// pairs (the order of [`unpair`]), zero-padded in both directions.
fn relay_pairs(w: &[bf16], n: usize, k: usize) -> Vec<u32> {
    let depth = k.div_ceil(2);
    let mut out = vec![0u32; n.div_ceil(WIDTH) * depth * WIDTH];
    for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        let (p, c) = (j / WIDTH, j % WIDTH);
        let panel = &mut out[p * depth * WIDTH..(p + 1) * depth * WIDTH];
        for (q, two) in row.chunks(2).enumerate() {
            let hi = two.get(1).map_or(0, |v| v.to_bits());
            panel[q * WIDTH + c] = u32::from(two[0].to_bits()) | u32::from(hi) << 16;
        }
    }
    out
}

/// Pair panels → `[n, k]` bf16 rows: [`relay_pairs`] undone.
fn unrelay_pairs(panels: &[u32], n: usize, k: usize) -> Vec<bf16> {
    let depth = k.div_ceil(2);
    let mut out = vec![bf16::ZERO; n * k];
    for (j, row) in out.chunks_exact_mut(k.max(1)).take(n).enumerate() {
        let (p, c) = (j / WIDTH, j % WIDTH);
        let panel = &panels[p * depth * WIDTH..(p + 1) * depth * WIDTH];
        for (kk, v) in row.iter_mut().enumerate() {
            let bits = panel[kk / 2 * WIDTH + c] >> (16 * (kk % 2));
            *v = bf16::from_bits(bits as u16);
        }
    }
    out
}

/// Panels → `[n, k]` rows: [`relay`] undone.
fn unrelay<W: Copy + Default>(panels: &[W], n: usize, k: usize) -> Vec<W> {
    let mut out = vec![W::default(); n * k];
    for (j, row) in out.chunks_exact_mut(k.max(1)).take(n).enumerate() {
        let (p, c) = (j / WIDTH, j % WIDTH);
        let panel = &panels[p * k * WIDTH..(p + 1) * k * WIDTH];
        for (kk, v) in row.iter_mut().enumerate() {
            *v = panel[kk * WIDTH + c];
        }
    }
    out
}

/// [`PanelData::Bf16Pairs`]-free product: weights widened as they are read.
fn product<W: WeightElem>(
    level: Level,
    x: &[f32],
    w: &[W],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    let rows_per_pass = even_passes(m, pass_rows(level));
    let x = &interleave(&x[..m * k], m, k, rows_per_pass);
    let pass_fn = |p: usize, i: usize, rows: usize, tile: &mut Tile| {
        let panel = &w[p * k * WIDTH..(p + 1) * k * WIDTH];
        pass(level, &x[i * k..(i + rows) * k], panel, k, rows, tile);
    };
    tasks((m, n, k), rows_per_pass, dst, dst_rs, accumulate, pass_fn);
}

/// The product over bf16 pair panels: the input rounded to bf16 pairs too.
fn product_pairs(
    level: Level,
    x: &[f32],
    w: &[u32],
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    let depth = k.div_ceil(2);
    let rows_per_pass = even_passes(m, ROWS_512);
    let x = &interleave_pairs(&x[..m * k], m, k, rows_per_pass);
    let pass_fn = |p: usize, i: usize, rows: usize, tile: &mut Tile| {
        let panel = &w[p * depth * WIDTH..(p + 1) * depth * WIDTH];
        pass_pairs(
            level,
            &x[i * depth..(i + rows) * depth],
            panel,
            depth,
            rows,
            tile,
        );
    };
    tasks((m, n, k), rows_per_pass, dst, dst_rs, accumulate, pass_fn);
}

/// The product over 8-bit panels: the input quantized to 16 bits a row.
fn product_int8(
    level: Level,
    x: &[f32],
    w: &Int8Panels,
    (m, k, n): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
) {
    let depth = k.div_ceil(2);
    let rows_per_pass = even_passes(m, ROWS_512);
    let input = int8::quantize_input(&x[..m * k], m, k, rows_per_pass);
    let kernel = int8::kernel(level);
    let pass_fn = |p: usize, i: usize, rows: usize, tile: &mut Tile| {
        let x = (
            &input.pairs[i * depth..(i + rows) * depth],
            &input.scales[i..i + rows],
        );
        int8::pass(kernel, x, w.panel(p, depth), depth, rows, tile);
    };
    tasks((m, n, k), rows_per_pass, dst, dst_rs, accumulate, pass_fn);
}

/// A pass's sums: up to [`ROWS_512`] rows of one panel's [`WIDTH`] columns.
pub(super) type Tile = [[f32; WIDTH]; ROWS_512];

/// Passes of even size up to `most` rows: 16 rows as 8 + 8, not 12 + a
/// thin 4.
fn even_passes(m: usize, most: usize) -> usize {
    m.div_ceil(m.div_ceil(most))
}

/// One task per [`PANELS_PER_TASK`] panels; `pass_fn(panel, first_row,
/// rows, tile)` leaves `WIDTH` sums per row in `tile`, added into `dst`
/// for the columns that exist.
fn tasks(
    (m, n, k): (usize, usize, usize),
    rows_per_pass: usize,
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    pass_fn: impl Fn(usize, usize, usize, &mut Tile) + Sync,
) {
    let out = SendPtr(dst.as_mut_ptr());
    let task = |j0: usize| {
        let mut tile = [[0f32; WIDTH]; ROWS_512];
        for p in j0 / WIDTH..(j0 / WIDTH + PANELS_PER_TASK).min(n.div_ceil(WIDTH)) {
            let cols = (n - p * WIDTH).min(WIDTH);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(rows_per_pass);
                pass_fn(p, i, rows, &mut tile);
                for (r, sums) in tile[..rows].iter().enumerate() {
                    // SAFETY: row i + r, columns p * WIDTH .. + cols lie in
                    // the destination `matmul_at` checked; tasks own
                    // disjoint panels, so disjoint columns. As a slice the
                    // row's sums are added in vectors, not one by one.
                    let d = unsafe {
                        std::slice::from_raw_parts_mut(
                            out.get().add((i + r) * dst_rs + p * WIDTH),
                            cols,
                        )
                    };
                    if accumulate {
                        d.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
                    } else {
                        d.copy_from_slice(&sums[..cols]);
                    }
                }
                i += rows;
            }
        }
    };
    // The team whatever the size: its helpers spin between a query's
    // products (rayon when another caller holds it).
    let width = PANELS_PER_TASK * WIDTH;
    super::spread(n.div_ceil(width), m * n * k, usize::MAX, &|t| {
        task(t * width)
    });
}

fn pass_rows(level: Level) -> usize {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 | Level::Avx512Bf16 => ROWS_512,
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => ROWS_AVX2,
        _ => ROWS_512,
    }
}

/// The input in passes of `rows` rows, each interleaved along `k`
/// (`[kk][r]`), so a pass broadcasts from one sequential stream. Read in
/// place, rows `k` floats apart all fall in one L1 set when `k` is a
/// multiple of 1024 (BERT's 3072-wide layer), and the pass ran ~20% slower
/// than the row-major kernel there.
fn interleave(x: &[f32], m: usize, k: usize, rows: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * k];
    for (chunk, dst) in x.chunks(rows * k).zip(out.chunks_mut(rows * k)) {
        let r_n = chunk.len() / k;
        for (r, row) in chunk.chunks_exact(k).enumerate() {
            for (kk, v) in row.iter().enumerate() {
                dst[kk * r_n + r] = *v;
            }
        }
    }
    out
}

/// [`interleave`] for the pair kernel: each element a pair of depths
/// `(2q, 2q + 1)` rounded to bf16 (the low half the even depth, a zero
/// past an odd `k`), `[q][r]` within a pass.
fn interleave_pairs(x: &[f32], m: usize, k: usize, rows: usize) -> Vec<u32> {
    let depth = k.div_ceil(2);
    let mut out = vec![0u32; m * depth];
    // Each row rounded as a photo batch's is (`vcvtne2ps2bf16` where the
    // CPU has it): rounded one element at a time, this was ~10% of the
    // caller's time in a bf16 query's forward, while the helpers waited.
    let mut pairs = vec![0f32; depth];
    for (chunk, dst) in x.chunks(rows * k).zip(out.chunks_mut(rows * depth)) {
        let r_n = chunk.len() / k;
        for (r, row) in chunk.chunks_exact(k).enumerate() {
            super::packed::round_pairs(row, &mut pairs);
            // Row `r` of each depth pair's `r_n` (indexed by `q * r_n + r`,
            // with its multiply and bounds check per store, this was a
            // third of the routine's time).
            for (at, v) in dst.chunks_exact_mut(r_n).zip(&pairs) {
                at[r] = v.to_bits();
            }
        }
    }
    out
}

/// The two bf16 of a pair (two values rounded to bf16 in one 32-bit
/// element, the even depth in the low half: the order `vdpbf16ps` pairs
/// them in), widened.
fn unpair(v: u32) -> (f32, f32) {
    (f32::from_bits(v << 16), f32::from_bits(v & 0xffff_0000))
}

/// `tile[r][c] = Σ_kk x[kk, r] · panel[kk, c]` for `rows` input rows
/// interleaved along `k` ([`interleave`]).
fn pass<W: WeightElem>(
    level: Level,
    x: &[f32],
    panel: &[W],
    k: usize,
    rows: usize,
    tile: &mut Tile,
) {
    assert!(x.len() >= rows * k && panel.len() >= k * WIDTH && rows <= pass_rows(level));
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($kernel:ident; $($r:literal)*) => {
                match rows {
                    $($r => $kernel::<W, $r>(x, panel, k, tile),)*
                    _ => unreachable!("rows checked above"),
                }
            };
        }
        // SAFETY: `level.supported()` was asserted by `matmul_at`; the
        // assert above bounds every element the kernels read.
        unsafe {
            match level {
                Level::Avx512 | Level::Avx512Bf16 => {
                    return dispatch!(pass_avx512; 1 2 3 4 5 6 7 8 9 10 11 12);
                }
                Level::Avx2 => return dispatch!(pass_avx2; 1 2 3 4 5 6),
                Level::Portable => {}
            }
        }
    }
    for (r, sums) in tile[..rows].iter_mut().enumerate() {
        *sums = [0.0; WIDTH];
        for kk in 0..k {
            let xv = x[kk * rows + r];
            for (s, wv) in sums.iter_mut().zip(&panel[kk * WIDTH..(kk + 1) * WIDTH]) {
                *s += xv * wv.to_f32();
            }
        }
    }
}

/// `tile[r][c] = Σ_q x[q, r] · panel[q, c]` over bf16 pairs, for `rows`
/// input rows interleaved by [`interleave_pairs`]; `vdpbf16ps` at
/// `Level::Avx512Bf16`, plain Rust on the same rounded values elsewhere.
fn pass_pairs(level: Level, x: &[u32], panel: &[u32], depth: usize, rows: usize, tile: &mut Tile) {
    assert!(x.len() >= rows * depth && panel.len() >= depth * WIDTH && rows <= ROWS_512);
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512Bf16 {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match rows {
                    $($r => pass_avx512_pairs::<$r>(x, panel, depth, tile),)*
                    _ => unreachable!("rows checked above"),
                }
            };
        }
        // SAFETY: `matmul_at` asserted the CPU runs `level`; the assert
        // above bounds every element the kernel reads.
        return unsafe { dispatch!(1 2 3 4 5 6 7 8 9 10 11 12) };
    }
    let _ = level;
    for (r, sums) in tile[..rows].iter_mut().enumerate() {
        *sums = [0.0; WIDTH];
        for q in 0..depth {
            let (x0, x1) = unpair(x[q * rows + r]);
            for (s, &wv) in sums.iter_mut().zip(&panel[q * WIDTH..(q + 1) * WIDTH]) {
                let (w0, w1) = unpair(wv);
                *s += x0 * w0 + x1 * w1;
            }
        }
    }
}

/// How far ahead (in panel rows) the kernels prefetch: the hardware
/// prefetcher follows the sequential stream too, this covers its start-up.
#[cfg(target_arch = "x86_64")]
const AHEAD: usize = 48;

/// One pass of `R` rows over a whole panel, its 32 columns in two zmm
/// accumulators per row.
///
/// # Safety
/// AVX-512 F (and AVX2/F16C for half weights' widening); `x` holds `R`
/// rows of `k` interleaved, `panel` holds `k * WIDTH` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn pass_avx512<W: WeightElem, const R: usize>(
    x: &[f32],
    panel: &[W],
    k: usize,
    tile: &mut Tile,
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        for kk in 0..k {
            let row = wp.add(kk * WIDTH);
            let ahead = row.wrapping_add(AHEAD * WIDTH).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let w0 = W::load16(row);
            let w1 = W::load16(row.add(16));
            for (r, a) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*xp.add(kk * R + r));
                a[0] = _mm512_fmadd_ps(b, w0, a[0]);
                a[1] = _mm512_fmadd_ps(b, w1, a[1]);
            }
        }
        for (t, a) in tile.iter_mut().zip(&acc) {
            _mm512_storeu_ps(t.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(t.as_mut_ptr().add(16), a[1]);
        }
    }
}

/// One pass of `R` rows over half a panel (16 columns, two ymm
/// accumulators per row); [`pass`] runs it for each half.
///
/// # Safety
/// AVX2, FMA and F16C; `x` holds `R` rows of `k` interleaved, `panel`
/// holds `k * WIDTH` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass_avx2<W: WeightElem, const R: usize>(
    x: &[f32],
    panel: &[W],
    k: usize,
    tile: &mut Tile,
) {
    use std::arch::x86_64::*;
    unsafe {
        for half in 0..2 {
            let off = half * 16;
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let (xp, wp) = (x.as_ptr(), panel.as_ptr().add(off));
            for kk in 0..k {
                let row = wp.add(kk * WIDTH);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(AHEAD * WIDTH).cast());
                let w0 = W::load8(row);
                let w1 = W::load8(row.add(8));
                for (r, a) in acc.iter_mut().enumerate() {
                    let b = _mm256_set1_ps(*xp.add(kk * R + r));
                    a[0] = _mm256_fmadd_ps(b, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(b, w1, a[1]);
                }
            }
            for (t, a) in tile.iter_mut().zip(&acc) {
                _mm256_storeu_ps(t.as_mut_ptr().add(off), a[0]);
                _mm256_storeu_ps(t.as_mut_ptr().add(off + 8), a[1]);
            }
        }
    }
}

/// [`pass_avx512`] over bf16 pairs: per panel row (two depths), two
/// weight vectors and one `vdpbf16ps` per row and vector.
///
/// # Safety
/// AVX-512 F and BF16; `x` holds `R` rows of `depth` pairs interleaved,
/// `panel` holds `depth * WIDTH` pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pass_avx512_pairs<const R: usize>(
    x: &[u32],
    panel: &[u32],
    depth: usize,
    tile: &mut Tile,
) {
    use std::arch::x86_64::*;
    // SAFETY: as the caller guarantees; the transmutes reinterpret 512
    // bits as 32 bf16 (the same size).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        let (xp, wp) = (x.as_ptr(), panel.as_ptr());
        for q in 0..depth {
            let row = wp.add(q * WIDTH);
            let ahead = row.wrapping_add(AHEAD * WIDTH).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(row.add(16).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let b: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp.add(q * R + r) as i32));
                a[0] = _mm512_dpbf16_ps(a[0], b, w0);
                a[1] = _mm512_dpbf16_ps(a[1], b, w1);
            }
        }
        for (t, a) in tile.iter_mut().zip(&acc) {
            _mm512_storeu_ps(t.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(t.as_mut_ptr().add(16), a[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{reference, values};
    use super::*;
    use candle_core::DType;

    fn round_bf16(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&a| bf16::from_f32(a).to_f32()).collect()
    }

    #[test]
    fn panels_round_trip_to_the_same_rows() -> candle_core::Result<()> {
        for (n, k) in [(1, 1), (31, 5), (32, 7), (33, 3), (70, 19)] {
            let w = values(n * k, (n + k) as u32);
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?;
            let p = PanelWeight::from_tensor(&t).expect("cpu f32");
            assert_eq!(p.dims(), (n, k));
            assert_eq!(p.to_tensor()?.flatten_all()?.to_vec1::<f32>()?, w);
            let h = t.to_dtype(DType::BF16)?;
            let want = h.flatten_all()?.to_vec1::<bf16>()?;
            for level in [Level::Avx512, Level::Avx512Bf16] {
                let back = PanelWeight::from_tensor_for(&h, level).expect("cpu bf16");
                let back = back.to_tensor()?;
                assert_eq!(back.dtype(), DType::BF16);
                assert_eq!(back.flatten_all()?.to_vec1::<bf16>()?, want, "{level:?}");
            }
        }
        Ok(())
    }

    /// Every level the machine has, every row count a pass may hold (and
    /// several passes), widths off the panel size, odd depths, with and
    /// without accumulation into a strided destination; each weight type,
    /// and bf16 pairs (whose input is rounded to bf16 too).
    #[test]
    fn panel_product_matches_the_reference_at_every_level() -> candle_core::Result<()> {
        let levels: Vec<Level> = Level::ALL.into_iter().filter(|l| l.supported()).collect();
        eprintln!(
            "panel product checked at {levels:?}; 8-bit kernel: {}",
            levels.iter().any(|&l| int8::kernel(l).is_vector())
        );
        // As the packed kernels' tests: an x86-64 machine without AVX2
        // would leave the kernels untested, so it fails rather than passes.
        assert!(
            !cfg!(target_arch = "x86_64") || levels.contains(&Level::Avx2),
            "this machine runs no vector kernel: {levels:?}"
        );
        // A full pass of each kernel (12 rows on AVX-512, 6 on AVX2),
        // thinner last passes, widths of several tasks (the team's path:
        // more than 64 columns and 2^16 multiply-adds), and an empty sum.
        let shapes = [
            (1, 768, 64),
            (12, 48, 200),
            (6, 40, 300),
            (10, 48, 100),
            (13, 33, 32),
            (25, 17, 31),
            (7, 5, 130),
            (3, 0, 40),
        ];
        for &(m, k, n) in &shapes {
            let x = values(m * k, m as u32);
            let w = values(n * k, n as u32);
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?.to_dtype(dtype)?;
                // Half weights are compared against their own rounded values.
                let rounded = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let want = reference(&x, &rounded, (m, k, n));
                let p = PanelWeight::from_tensor_for(&t, Level::Avx512).expect("cpu weight");
                check(&p, &levels, &x, &want, (m, n), &format!("{dtype:?}"));
            }
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
            let p = PanelWeight::from_tensor_for(&t, Level::Avx512Bf16).expect("cpu weight");
            assert!(matches!(p.data, PanelData::Bf16Pairs(_)));
            let want = reference(&round_bf16(&x), &round_bf16(&w), (m, k, n));
            check(&p, &levels, &x, &want, (m, n), "bf16 pairs");
            // 8-bit weights against the values they stand for, met by the
            // input's 16-bit rows: the same sums, up to f32 rounding.
            let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu)?;
            let p = PanelWeight::from_tensor_int8(&t).expect("cpu weight");
            assert!(p.is_quantized());
            let held = p.to_tensor()?.flatten_all()?.to_vec1::<f32>()?;
            let want = reference(&int8::dequantize_input(&x, k), &held, (m, k, n));
            check(&p, &levels, &x, &want, (m, n), "int8");
        }
        Ok(())
    }

    /// `p`'s product at each of `levels` against `want`, accumulated onto
    /// ones in a destination with 3 spare columns per row (left alone),
    /// then written over a plain one.
    fn check(
        p: &PanelWeight,
        levels: &[Level],
        x: &[f32],
        want: &[f32],
        (m, n): (usize, usize),
        what: &str,
    ) {
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + b.abs());
        for &level in levels {
            let rs = n + 3;
            let mut dst = vec![1f32; m * rs];
            p.matmul_at(level, x, m, &mut dst, rs, true);
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (dst[i * rs + j], want[i * n + j] + 1.0);
                    assert!(
                        close(got, want),
                        "{level:?} {what} m{m} n{n} ({i}, {j}): {got} vs {want}"
                    );
                }
                assert_eq!(
                    &dst[i * rs + n..i * rs + rs],
                    &[1.0; 3],
                    "spare columns touched"
                );
            }
            let mut plain = vec![5f32; m * n];
            p.matmul_at(level, x, m, &mut plain, n, false);
            assert!(
                plain.iter().zip(want).all(|(&a, &b)| close(a, b)),
                "{level:?} {what}: written"
            );
        }
    }
}
