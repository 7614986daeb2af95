//! Pillow's `Image.resize((w, h), resample, reducing_gap=None)` on 8-bit RGB,
//! reproduced bit for bit, and transformers' numpy `center_crop`.
//!
//! The convolution filters follow Pillow's `Resample.c`: per output pixel, a
//! window of input pixels whose half-width is the filter's support times the
//! downscale factor (so downscaling is antialiased), weights normalised to sum
//! to one, then turned into signed fixed point with 22 fractional bits
//! (`PRECISION_BITS = 32 - 8 - 2`). A horizontal pass writes an 8-bit
//! intermediate (rounded and clipped), a vertical pass reads it (Pillow 13
//! swaps the order for some shapes, reproduced in [`vertical_first`]); a pass
//! is skipped when its dimension does not change. NEAREST is not a convolution in
//! Pillow but an affine nearest-neighbour scale with an accumulated source
//! position, reproduced as such. Same-size resizes are copies.

use image::RgbImage;

/// Pillow's `Resampling` filters, by their enum values (what `resample` holds in
/// a `preprocessor_config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Filter {
    /// 0: nearest neighbour (no antialiasing).
    Nearest,
    /// 1: Lanczos, a = 3.
    Lanczos,
    /// 2: bilinear (triangle), support 1.
    Bilinear,
    /// 3: bicubic (Keys, a = -0.5), support 2.
    Bicubic,
    /// 4: box, support 0.5.
    Box,
    /// 5: Hamming-windowed sinc, support 1.
    Hamming,
}

impl Filter {
    /// All filters, in Pillow's numbering order.
    pub const ALL: [Filter; 6] = [
        Filter::Nearest,
        Filter::Lanczos,
        Filter::Bilinear,
        Filter::Bicubic,
        Filter::Box,
        Filter::Hamming,
    ];

    /// The filter with Pillow's enum value `code`, if it is one of the six.
    pub fn from_pil(code: i64) -> Option<Filter> {
        Some(match code {
            0 => Filter::Nearest,
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => return None,
        })
    }

    /// Pillow's enum value.
    pub fn pil_code(self) -> u8 {
        match self {
            Filter::Nearest => 0,
            Filter::Lanczos => 1,
            Filter::Bilinear => 2,
            Filter::Bicubic => 3,
            Filter::Box => 4,
            Filter::Hamming => 5,
        }
    }

    /// Pillow's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Nearest => "NEAREST",
            Filter::Lanczos => "LANCZOS",
            Filter::Bilinear => "BILINEAR",
            Filter::Bicubic => "BICUBIC",
            Filter::Box => "BOX",
            Filter::Hamming => "HAMMING",
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernels as Pillow evaluates them, down to the single-precision
    /// constants of its Hamming window (`0.54f + 0.46f * cos(x)` in C promotes
    /// the floats, not the decimal values, to double).
    fn kernel(self, x: f64) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

/// Why a resize or crop was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(
        "resize: cannot resize a {from_w}x{from_h} image to {to_w}x{to_h}, both need at least one pixel"
    )]
    Empty {
        from_w: u32,
        from_h: u32,
        to_w: u32,
        to_h: u32,
    },
    #[error(
        "center crop: cannot crop a {from_w}x{from_h} image to {to_w}x{to_h}, both need at least one pixel"
    )]
    EmptyCrop {
        from_w: u32,
        from_h: u32,
        to_w: u32,
        to_h: u32,
    },
}

/// Result alias for this module.
pub type Result<T, E = ResizeError> = std::result::Result<T, E>;

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Resizes to `width` x `height` exactly as Pillow's `Image.resize` does for a
/// mode-`RGB` image (no `box`, no `reducing_gap`).
pub fn resize(src: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    check_resize(src, width, height)?;
    let all = Region {
        x: 0,
        y: 0,
        w: width,
        h: height,
    };
    Ok(resize_region(src, width, height, filter, all))
}

/// `resize` then [`center_crop`], computing only the resized pixels the crop
/// keeps: the same values, but the work and memory are bounded by the crop,
/// however large the resize (a shortest-edge resize of a 1x10000 strip is
/// 224x2240000).
pub fn resize_center_crop(
    src: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    crop_w: u32,
    crop_h: u32,
) -> Result<RgbImage> {
    check_resize(src, width, height)?;
    if crop_w == 0 || crop_h == 0 {
        return Err(ResizeError::EmptyCrop {
            from_w: width,
            from_h: height,
            to_w: crop_w,
            to_h: crop_h,
        });
    }
    // Crop pixel x shows resized pixel x + shift_x; keep the overlap.
    let (shift_x, x0, x1) = crop_window(width, crop_w);
    let (shift_y, y0, y1) = crop_window(height, crop_h);
    let part = resize_region(
        src,
        width,
        height,
        filter,
        Region {
            x: x0,
            y: y0,
            w: x1 - x0,
            h: y1 - y0,
        },
    );
    if (x1 - x0, y1 - y0) == (crop_w, crop_h) {
        return Ok(part);
    }
    let mut out = RgbImage::new(crop_w, crop_h);
    let (dx, dy) = (i64::from(x0) - shift_x, i64::from(y0) - shift_y);
    image::imageops::replace(&mut out, &part, dx, dy);
    Ok(out)
}

fn check_resize(src: &RgbImage, width: u32, height: u32) -> Result<()> {
    let (in_w, in_h) = src.dimensions();
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return Err(ResizeError::Empty {
            from_w: in_w,
            from_h: in_h,
            to_w: width,
            to_h: height,
        });
    }
    Ok(())
}

/// For one axis of a centre crop of `crop` out of `size`: the shift from crop
/// to image coordinates, and the image range `start..end` the crop covers.
fn crop_window(size: u32, crop: u32) -> (i64, u32, u32) {
    let (start, pad) = crop_offsets(size, crop);
    let shift = i64::from(start) - i64::from(pad);
    let lo = shift.max(0) as u32;
    let hi = (shift + i64::from(crop)).min(i64::from(size)) as u32;
    (shift, lo, hi)
}

/// A rectangle of the full-size output.
#[derive(Clone, Copy, Debug)]
struct Region {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// The pixels in `r` of Pillow's resize to `width` x `height`. Every output
/// pixel depends only on its own coordinates, so computing a region gives the
/// same values as cropping the full result.
fn resize_region(src: &RgbImage, width: u32, height: u32, filter: Filter, r: Region) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    if (in_w, in_h) == (width, height) {
        return image::imageops::crop_imm(src, r.x, r.y, r.w, r.h).to_image();
    }
    if filter == Filter::Nearest {
        return nearest(src, width, height, r);
    }
    let xs = r.x as usize..(r.x + r.w) as usize;
    let ys = r.y as usize..(r.y + r.h) as usize;
    // Pillow skips the pass of an axis whose size does not change.
    let horizontal = (width != in_w).then(|| Coeffs::new(in_w, width, filter, xs.clone()));
    let vertical = (height != in_h).then(|| Coeffs::new(in_h, height, filter, ys.clone()));
    match (horizontal, vertical) {
        (Some(h), Some(v)) if vertical_first(in_w, in_h, width, height) => {
            // Only the source columns the horizontal taps read.
            let cols = h.span();
            let tmp = vertical_pass(src, &v, 0, cols.clone());
            horizontal_pass(&tmp, &h, cols.start, 0..tmp.height() as usize)
        }
        (Some(h), Some(v)) => {
            // Only the source rows the vertical taps read (Pillow's ybox).
            let rows = v.span();
            let tmp = horizontal_pass(src, &h, 0, rows.clone());
            vertical_pass(&tmp, &v, rows.start, 0..tmp.width() as usize)
        }
        (Some(h), None) => horizontal_pass(src, &h, 0, ys),
        (None, Some(v)) => vertical_pass(src, &v, 0, xs),
        (None, None) => unreachable!("same-size resizes return early"),
    }
}

/// Pillow 13 runs the vertical pass first in some two-axis resizes, and the
/// order changes the result (the intermediate is rounded to 8 bits and
/// clipped). Measured against Pillow 13.0.0 on grids and random shapes (see
/// the noise fixtures): vertical first exactly when the height shrinks and
/// `2 * (in_w - out_w) < in_h - out_h`, whatever the filter.
fn vertical_first(in_w: u32, in_h: u32, width: u32, height: u32) -> bool {
    height < in_h && 2 * (i64::from(in_w) - i64::from(width)) < i64::from(in_h) - i64::from(height)
}

/// One axis's resampling plan for output positions `outputs`: for each, the
/// first input index and the number of taps, and `ksize` fixed-point weights.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

impl Coeffs {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`, for the output
    /// positions in `outputs` only.
    fn new(in_size: u32, out_size: u32, filter: Filter, outputs: std::ops::Range<usize>) -> Coeffs {
        // Pillow takes the box as C floats: (in1 - in0) is a float subtraction.
        let (in0, in1) = (0f32, in_size as f32);
        let scale = f64::from(in1 - in0) / f64::from(out_size);
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inv_filterscale = 1.0 / filterscale;

        let mut bounds = Vec::with_capacity(outputs.len());
        let mut weights = vec![0i32; outputs.len() * ksize];
        let mut taps = vec![0f64; ksize];
        for (i, xx) in outputs.enumerate() {
            let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let count = (xmax - xmin).clamp(0, ksize as i64) as usize;
            let xmin = xmin as usize;
            let mut ww = 0.0;
            for (x, tap) in taps.iter_mut().enumerate().take(count) {
                let w = filter.kernel(((x + xmin) as f64 - center + 0.5) * inv_filterscale);
                *tap = w;
                ww += w;
            }
            let row = &mut weights[i * ksize..i * ksize + count];
            for (k, &tap) in row.iter_mut().zip(&taps) {
                let tap = if ww != 0.0 { tap / ww } else { tap };
                *k = to_fixed(tap);
            }
            bounds.push((xmin, count));
        }
        Coeffs {
            ksize,
            bounds,
            weights,
        }
    }

    fn len(&self) -> usize {
        self.bounds.len()
    }

    /// Taps of the `i`-th planned output: first input index and weights.
    fn taps(&self, i: usize) -> (usize, &[i32]) {
        let (start, count) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + count])
    }

    /// The input indices any planned output reads.
    fn span(&self) -> std::ops::Range<usize> {
        let start = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(start);
        start..end
    }
}

/// Pillow's `normalize_coeffs_8bpc`: round half away from zero to 22 bits.
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (-0.5 + scaled) as i32
    } else {
        (0.5 + scaled) as i32
    }
}

/// Rounds away the fixed-point fraction and clips to a byte (Pillow's `clip8`).
/// The accumulators start at one half, so the shift rounds to nearest.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Horizontal pass: every planned output column, for the source rows `rows`.
/// `src` starts at input column `col_offset` (it may be a slice of the input).
fn horizontal_pass(
    src: &RgbImage,
    coeffs: &Coeffs,
    col_offset: usize,
    rows: std::ops::Range<usize>,
) -> RgbImage {
    let in_w = src.width() as usize;
    let out_w = coeffs.len();
    let out_h = rows.len();
    let raw = src.as_raw();
    let mut out = vec![0u8; out_w * out_h * 3];
    for (y, out_row) in rows.zip(out.chunks_exact_mut(out_w * 3)) {
        let in_row = &raw[y * in_w * 3..(y + 1) * in_w * 3];
        for (xx, px) in out_row.chunks_exact_mut(3).enumerate() {
            let (start, k) = coeffs.taps(xx);
            let start = start - col_offset;
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (p, &w) in in_row[start * 3..(start + k.len()) * 3]
                .chunks_exact(3)
                .zip(k)
            {
                r += i32::from(p[0]) * w;
                g += i32::from(p[1]) * w;
                b += i32::from(p[2]) * w;
            }
            px[0] = clip8(r);
            px[1] = clip8(g);
            px[2] = clip8(b);
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).expect("buffer sized for the image")
}

/// Vertical pass: every planned output row, for the source columns `cols`.
/// `src` starts at input row `row_offset` (it may hold only the rows read).
fn vertical_pass(
    src: &RgbImage,
    coeffs: &Coeffs,
    row_offset: usize,
    cols: std::ops::Range<usize>,
) -> RgbImage {
    let row_len = src.width() as usize * 3;
    let (c0, c1) = (cols.start * 3, cols.end * 3);
    let out_len = c1 - c0;
    let raw = src.as_raw();
    let mut out = vec![0u8; out_len * coeffs.len()];
    let mut acc = vec![0i32; out_len];
    for (yy, out_row) in out.chunks_exact_mut(out_len.max(1)).enumerate() {
        let (start, k) = coeffs.taps(yy);
        let start = start - row_offset;
        acc.fill(HALF);
        for (i, &w) in k.iter().enumerate() {
            let at = (start + i) * row_len;
            for (a, &p) in acc.iter_mut().zip(&raw[at + c0..at + c1]) {
                *a += i32::from(p) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    RgbImage::from_raw(cols.len() as u32, coeffs.len() as u32, out)
        .expect("buffer sized for the image")
}

/// Pillow's NEAREST resize: `ImagingScaleAffine`, the source position
/// accumulated in double precision from half a step in, truncated. The
/// accumulation runs from 0 even for a region, so positions match bit for bit.
fn nearest(src: &RgbImage, width: u32, height: u32, r: Region) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let positions = |in_size: u32, out_size: u32, first: u32, count: u32| {
        let step = f64::from(in_size as f32) / f64::from(out_size);
        // Replaying the accumulation is exact; past 2^24 steps (only a crop
        // far into a gigantic resize) jump there directly instead, which may
        // differ from Pillow by one source pixel but bounds the work.
        let skip = first.saturating_sub(1 << 24);
        let mut pos = step * 0.5 + f64::from(skip) * step;
        let mut out = Vec::with_capacity(count as usize);
        for i in skip..first + count {
            if i >= first {
                let p = coord(pos);
                out.push((0..i64::from(in_size)).contains(&p).then_some(p as usize));
            }
            pos += step;
        }
        out
    };
    let xin = positions(in_w, width, r.x, r.w);
    let yin = positions(in_h, height, r.y, r.h);
    let raw = src.as_raw();
    let row_len = in_w as usize * 3;
    let mut out = vec![0u8; r.w as usize * r.h as usize * 3];
    for (out_row, y) in out.chunks_exact_mut(r.w as usize * 3).zip(&yin) {
        let Some(y) = *y else { continue };
        let in_row = &raw[y * row_len..(y + 1) * row_len];
        for (px, x) in out_row.chunks_exact_mut(3).zip(&xin) {
            if let Some(x) = *x {
                px.copy_from_slice(&in_row[x * 3..x * 3 + 3]);
            }
        }
    }
    RgbImage::from_raw(r.w, r.h, out).expect("buffer sized for the image")
}

/// transformers' numpy `center_crop` to `width` x `height`: offsets
/// `(size - crop) // 2` (floor); where the crop is larger than the image, the
/// image is first centred on a black canvas with `ceil(pad / 2)` before it.
/// The result is always exactly `width` x `height`.
pub fn center_crop(src: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    let (in_w, in_h) = src.dimensions();
    if in_w == 0 || in_h == 0 || width == 0 || height == 0 {
        return Err(ResizeError::EmptyCrop {
            from_w: in_w,
            from_h: in_h,
            to_w: width,
            to_h: height,
        });
    }
    let (shift_x, x0, x1) = crop_window(in_w, width);
    let (shift_y, y0, y1) = crop_window(in_h, height);
    let part = image::imageops::crop_imm(src, x0, y0, x1 - x0, y1 - y0).to_image();
    if part.dimensions() == (width, height) {
        return Ok(part);
    }
    let mut out = RgbImage::new(width, height);
    let (dx, dy) = (i64::from(x0) - shift_x, i64::from(y0) - shift_y);
    image::imageops::replace(&mut out, &part, dx, dy);
    Ok(out)
}

/// For one axis: where the crop starts in the padded image, and how much
/// padding precedes the source there (zero when the source is large enough).
fn crop_offsets(size: u32, crop: u32) -> (u32, u32) {
    let start = (i64::from(size) - i64::from(crop)).div_euclid(2);
    if start >= 0 {
        return (start as u32, 0);
    }
    // transformers pads to max(crop, size) with ceil(pad / 2) first, then
    // shifts the window by that pad: the window then starts at 0.
    let pad = crop - size;
    let pad_before = pad.div_ceil(2);
    ((start + i64::from(pad_before)) as u32, pad_before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::decode::{DecodeLimits, decode_path};
    use crate::preprocess::fixtures;

    const NAMES: [(&str, Filter); 6] = [
        ("nearest", Filter::Nearest),
        ("lanczos", Filter::Lanczos),
        ("bilinear", Filter::Bilinear),
        ("bicubic", Filter::Bicubic),
        ("box", Filter::Box),
        ("hamming", Filter::Hamming),
    ];

    /// Every decoded photo to 32x32, 37x23 and 64x48 with all six filters:
    /// bit-exact where the decode is exact (all but JPEG), and for JPEG inputs
    /// within the decode's own difference.
    #[test]
    fn matches_pillow_on_photos() {
        let index = fixtures::index();
        let mut failures = Vec::new();
        let mut checked = 0;
        for key in index["resize"].as_array().unwrap() {
            let key = key.as_str().unwrap();
            let entry = &index["decode"][key];
            let path = fixtures::root().join(entry["path"].as_str().unwrap());
            let image = decode_path(&path, &DecodeLimits::default()).unwrap();
            let jpeg = entry["format"] == "JPEG";
            for (w, h) in [(32, 32), (37, 23), (64, 48)] {
                for (name, filter) in NAMES {
                    let ours = resize(&image, w, h, filter).unwrap();
                    let theirs = fixtures::array(&format!("resize/{key}/{w}x{h}/{name}"));
                    assert_eq!(theirs.shape, [h as usize, w as usize, 3]);
                    let max = fixtures::max_abs_diff(theirs.u8(), ours.as_raw());
                    checked += 1;
                    if jpeg {
                        eprintln!("{key} {w}x{h} {name}: JPEG input, max diff {max}");
                        // NEAREST picks single pixels, so it inherits the full decode bound.
                        if max > crate::preprocess::decode::tests::JPEG_MAX_DIFF {
                            failures.push(format!("{key} {w}x{h} {name}: JPEG max diff {max}"));
                        }
                    } else if max != 0 {
                        failures.push(format!("{key} {w}x{h} {name}: max diff {max}"));
                    }
                }
            }
        }
        assert!(checked >= 10 * 18, "only {checked} resizes checked");
        assert!(
            failures.is_empty(),
            "resize mismatches:\n{}",
            failures.join("\n")
        );
    }

    /// Noise (regenerated, not stored) through odd geometries: one-axis
    /// resizes, 1-pixel outputs, large factors, near-identity sizes.
    #[test]
    fn matches_pillow_on_noise() {
        let index = fixtures::index();
        let check: Vec<u8> = index["lcg_check"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(fixtures::lcg_noise(4, 1, 1).as_raw(), &check);
        let mut failures = Vec::new();
        for case in index["noise_resize"].as_array().unwrap() {
            let (w0, h0, seed) = (
                case["width"].as_u64().unwrap() as u32,
                case["height"].as_u64().unwrap() as u32,
                case["seed"].as_u64().unwrap() as u32,
            );
            let src = fixtures::lcg_noise(w0, h0, seed);
            for size in case["sizes"].as_array().unwrap() {
                let (w, h) = (
                    size[0].as_u64().unwrap() as u32,
                    size[1].as_u64().unwrap() as u32,
                );
                for (name, filter) in NAMES {
                    let ours = resize(&src, w, h, filter).unwrap();
                    let theirs = fixtures::array(&format!("noise/{w0}x{h0}s{seed}/{w}x{h}/{name}"));
                    let max = fixtures::max_abs_diff(theirs.u8(), ours.as_raw());
                    if max != 0 {
                        failures.push(format!("{w0}x{h0} -> {w}x{h} {name}: max diff {max}"));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "resize mismatches:\n{}",
            failures.join("\n")
        );
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 7 + y * 3) as u8,
                (x * 13) as u8 ^ (y as u8),
                (255 - x - y) as u8,
            ])
        })
    }

    #[test]
    fn same_size_is_a_copy() {
        let img = gradient(9, 7);
        for f in Filter::ALL {
            assert_eq!(resize(&img, 9, 7, f).unwrap(), img);
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 11, image::Rgb([200, 17, 255]));
        for f in Filter::ALL {
            for (w, h) in [(1, 1), (5, 3), (40, 29), (13, 30), (2, 11)] {
                let out = resize(&img, w, h, f).unwrap();
                assert!(out.pixels().all(|p| p.0 == [200, 17, 255]), "{f:?} {w}x{h}");
            }
        }
    }

    #[test]
    fn zero_sizes_are_errors() {
        let img = gradient(4, 4);
        assert!(resize(&img, 0, 3, Filter::Bilinear).is_err());
        assert!(center_crop(&img, 3, 0).is_err());
    }

    #[test]
    fn filter_codes_round_trip() {
        for f in Filter::ALL {
            assert_eq!(Filter::from_pil(i64::from(f.pil_code())), Some(f));
        }
        assert_eq!(Filter::from_pil(6), None);
    }

    /// Computing only the cropped region gives the same pixels as resizing
    /// everything then cropping, for both pass orders, NEAREST, one-axis and
    /// same-size resizes, and crops larger than the resized image.
    #[test]
    fn resize_center_crop_equals_resize_then_crop() {
        let src = fixtures::lcg_noise(37, 29, 9);
        let sizes = [
            (37, 29),
            (38, 28),
            (30, 2),
            (74, 58),
            (5, 5),
            (37, 60),
            (120, 29),
            (200, 3),
        ];
        let crops = [(1, 1), (4, 2), (30, 20), (37, 29), (40, 31), (9, 70)];
        for filter in Filter::ALL {
            for (w, h) in sizes {
                let full = resize(&src, w, h, filter).unwrap();
                for (cw, ch) in crops {
                    let expected = center_crop(&full, cw, ch).unwrap();
                    let ours = resize_center_crop(&src, w, h, filter, cw, ch).unwrap();
                    assert_eq!(ours, expected, "{filter:?} {w}x{h} crop {cw}x{ch}");
                }
            }
        }
    }

    #[test]
    fn center_crop_matches_transformers_offsets() {
        let img = gradient(7, 5);
        // Smaller crop: offsets floor((7-4)/2) = 1 and floor((5-2)/2) = 1.
        let out = center_crop(&img, 4, 2).unwrap();
        assert_eq!(out.get_pixel(0, 0), img.get_pixel(1, 1));
        // Larger crop on both axes: pad ceil(3/2) = 2 left, ceil(2/2) = 1 top.
        let out = center_crop(&img, 10, 7).unwrap();
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(out.get_pixel(2, 1), img.get_pixel(0, 0));
        assert_eq!(out.get_pixel(8, 5), img.get_pixel(6, 4));
        assert_eq!(out.get_pixel(9, 6).0, [0, 0, 0]);
        // Wider crop, shorter height: pad only horizontally, crop vertically.
        let out = center_crop(&img, 8, 3).unwrap();
        assert_eq!(out.get_pixel(1, 0), img.get_pixel(0, 1));
        assert_eq!(out.get_pixel(0, 0).0, [0, 0, 0]);
    }
}
