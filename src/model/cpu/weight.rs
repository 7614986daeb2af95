//! What a dense layer's weight may be stored as on the CPU: f32, or bf16 /
//! f16 (`--dtype bf16|f16` on the CPU). Half-precision weights are widened
//! to f32 as the kernels read them and every product accumulates in f32, so
//! only the weights are rounded: a few-rows product (a text query) streams
//! half the bytes, which is what bounds it. On CPUs with AVX-512 BF16, the
//! many-rows product (a vision batch) of bf16 weights rounds its input to
//! bf16 as well and multiplies pairs with `vdpbf16ps`, still summing in f32
//! (`packed.rs`).

use half::{bf16, f16};

/// An element type a dense layer's weight may have.
pub trait WeightElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;

    /// The weights as they are, when they are f32 (no copy to make).
    fn as_f32(src: &[Self]) -> Option<&[f32]>;

    /// The weights as they are, when they are bf16 (for the kernels that
    /// multiply bf16 pairs, `packed.rs` at `Level::Avx512Bf16`).
    fn as_bf16(_: &[Self]) -> Option<&[bf16]> {
        None
    }

    /// `dst[i] = src[i]` widened, for `i < src.len()`.
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    /// Eight consecutive weights from `p`, widened.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and `p .. p + 8` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen consecutive weights from `p`, widened.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, and `p .. p + 16` is readable.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl WeightElem for f32 {
    fn to_f32(self) -> f32 {
        self
    }

    fn as_f32(src: &[f32]) -> Option<&[f32]> {
        Some(src)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees 8 readable floats.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees 16 readable floats.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
}

impl WeightElem for bf16 {
    fn to_f32(self) -> f32 {
        // bf16 is the top half of an f32: widening is exact.
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }

    fn as_f32(_: &[bf16]) -> Option<&[f32]> {
        None
    }

    fn as_bf16(src: &[bf16]) -> Option<&[bf16]> {
        Some(src)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 8 readable values (16 bytes).
        unsafe {
            let h = _mm_loadu_si128(p.cast());
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const bf16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable values (32 bytes).
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

impl WeightElem for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn as_f32(_: &[f16]) -> Option<&[f32]> {
        None
    }

    fn widen(src: &[f16], dst: &mut [f32]) {
        // half converts with F16C when the CPU has it.
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(&mut dst[..src.len()]);
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees F16C and 8 readable values.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable values (32 bytes).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
}

/// `src` as f32: borrowed when it is, else widened into `scratch`.
pub fn widened<'a, W: WeightElem>(src: &'a [W], scratch: &'a mut Vec<f32>) -> &'a [f32] {
    match W::as_f32(src) {
        Some(f) => f,
        None => {
            scratch.resize(src.len(), 0.0);
            W::widen(src, scratch);
            scratch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_for_every_type() {
        let values = [0.0f32, -1.5, 3.140625, 65504.0, -2.0e-3, 1.0e-7];
        for v in values {
            let b = bf16::from_f32(v);
            let h = f16::from_f32(v);
            assert_eq!(b.to_f32(), WeightElem::to_f32(b));
            assert_eq!(h.to_f32(), WeightElem::to_f32(h));
            let mut out = [0.0f32; 1];
            bf16::widen(&[b], &mut out);
            assert_eq!(out[0], b.to_f32());
            f16::widen(&[h], &mut out);
            assert_eq!(out[0], h.to_f32());
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_loads_widen_as_the_scalar_does() {
        if !crate::simd::Level::Avx2.supported() {
            // The kernels that call load8 are not reached either.
            eprintln!("no AVX2 + F16C here: the vector loads are not checked");
            return;
        }
        let v: Vec<f32> = (0..8).map(|i| (i as f32 - 3.3) * 0.71).collect();
        let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let mut out = [0.0f32; 8];
        // SAFETY: AVX2 and F16C checked above; 8 values each.
        unsafe {
            use std::arch::x86_64::_mm256_storeu_ps;
            _mm256_storeu_ps(out.as_mut_ptr(), f32::load8(v.as_ptr()));
            assert_eq!(out.as_slice(), v.as_slice());
            _mm256_storeu_ps(out.as_mut_ptr(), bf16::load8(b.as_ptr()));
            assert!(out.iter().zip(&b).all(|(o, x)| *o == x.to_f32()));
            _mm256_storeu_ps(out.as_mut_ptr(), f16::load8(h.as_ptr()));
            assert!(out.iter().zip(&h).all(|(o, x)| *o == x.to_f32()));
        }
        if !crate::simd::Level::Avx512.supported() {
            eprintln!("no AVX-512 here: the 16-lane loads are not checked");
            return;
        }
        let v: Vec<f32> = (0..16).map(|i| (i as f32 - 7.7) * 0.37).collect();
        let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let mut out = [0.0f32; 16];
        // SAFETY: AVX-512 F checked above; 16 values each.
        unsafe {
            use std::arch::x86_64::_mm512_storeu_ps;
            _mm512_storeu_ps(out.as_mut_ptr(), f32::load16(v.as_ptr()));
            assert_eq!(out.as_slice(), v.as_slice());
            _mm512_storeu_ps(out.as_mut_ptr(), bf16::load16(b.as_ptr()));
            assert!(out.iter().zip(&b).all(|(o, x)| *o == x.to_f32()));
            _mm512_storeu_ps(out.as_mut_ptr(), f16::load16(h.as_ptr()));
            assert!(out.iter().zip(&h).all(|(o, x)| *o == x.to_f32()));
        }
    }
}
