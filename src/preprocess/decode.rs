//! Image decoding: bytes on disk to upright 8-bit RGB, exactly as transformers'
//! `load_image` (Pillow's `Image.open` → `ImageOps.exif_transpose` → `.convert("RGB")`)
//! produces them, with byte and pixel limits checked before anything large is
//! allocated.
//!
//! The format is sniffed from the content, never from the file name. JPEG, PNG,
//! WebP, GIF (first frame), TIFF (first page) and BMP are accepted. Conversion to
//! RGB follows Pillow rather than the `image` crate where the two differ:
//! - alpha is dropped, not composited (Pillow's `RGBA → RGB` just discards it);
//! - 16-bit greyscale (Pillow mode `I;16`) is clipped to 255, not scaled, so
//!   most 16-bit grey photos come out nearly white: that is what the reference
//!   models saw;
//! - other 16-bit samples keep their high byte (Pillow's `;16B` unpackers);
//! - CMYK is converted with Pillow's rounding (`cmyk2rgb`), JPEG CMYK taken as
//!   Adobe-inverted as Pillow always does;
//! - a GIF's first frame is laid on a canvas filled with its transparent index
//!   (or index 0) and looked up in its palette, transparent pixels included;
//! - the EXIF orientation falls back to XMP `tiff:Orientation` when EXIF has none;
//! - a JPEG without its end-of-image marker is refused as truncated.
//!
//! JPEG goes through zune-jpeg, whose IDCT and chroma upsampling are not
//! libjpeg-turbo's, so JPEG pixels differ from Pillow's by up to 3 grey levels
//! (measured); every other accepted format is bit-exact (see the tests at the
//! bottom). Refused although Pillow reads them: palette TIFFs (the tiff crate
//! has no RGBPalette support). Refused like Pillow: floating-point TIFFs.
//! A panic inside a third-party decoder is caught and reported as this file's
//! error.

use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ExtendedColorType, ImageDecoder, ImageFormat, RgbImage};

/// What a file may cost before it is decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest file accepted, in bytes; checked before the file is read.
    pub max_bytes: u64,
    /// Largest image accepted, in pixels (width × height as the header declares
    /// them); checked before the pixel buffer is allocated.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_pixels: 100_000_000,
        }
    }
}

/// Why an image could not be decoded. Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{path}: cannot read file: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file is {size} bytes, over the limit of {max} bytes")]
    TooManyBytes { path: String, size: u64, max: u64 },
    #[error(
        "{path}: empty file, expected an image (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC or AVIF)"
    )]
    Empty { path: String },
    #[error(
        "{path}: unrecognised content, expected an image (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC or AVIF)"
    )]
    UnknownFormat { path: String },
    #[error(
        "{path}: {format} images are not supported, expected JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC or AVIF"
    )]
    UnsupportedFormat { path: String, format: String },
    #[error(
        "{path}: image is {width}x{height} = {pixels} pixels, over the limit of {max} (decompression bomb?)"
    )]
    TooManyPixels {
        path: String,
        width: u64,
        height: u64,
        pixels: u64,
        max: u64,
    },
    #[error(
        "{path}: {format} image, but this dualsight was built without libheif: rebuild it with \
         `cargo build --release --features heif` (needs cmake, libde265-dev and libdav1d-dev)"
    )]
    NotBuiltIn { path: String, format: &'static str },
    #[error("{path}: unsupported {format} variant: {what}")]
    Unsupported {
        path: String,
        format: &'static str,
        what: String,
    },
    #[error("{path}: invalid or truncated {format} data: {message}")]
    Malformed {
        path: String,
        format: &'static str,
        message: String,
    },
}

/// Result alias for this module.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Formats this module decodes; everything else is refused by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Jpeg,
    Png,
    WebP,
    Gif,
    Tiff,
    Bmp,
    /// HEIC/HEIF or AVIF (see `heif.rs`).
    Heif,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::WebP => "WebP",
            Format::Gif => "GIF",
            Format::Tiff => "TIFF",
            Format::Bmp => "BMP",
            Format::Heif => "HEIF",
        }
    }
}

/// Reads and decodes the image at `path`. The file's size is checked against
/// `limits.max_bytes` before it is read, and the read itself stops one byte past
/// the limit, so a file that grows meanwhile cannot make us read it whole.
pub fn decode_path(path: &Path, limits: &DecodeLimits) -> Result<RgbImage> {
    let (bytes, name) = read_limited(path, limits)?;
    decode_bytes(&bytes, &name, limits)
}

/// An image decoded for the fast path, possibly at a reduced scale.
#[derive(Clone, Debug)]
pub struct Reduced {
    /// Upright RGB: the full image, or `1/scale` of it (sizes rounded up).
    pub image: RgbImage,
    /// `(width, height)` of the full upright image, as [`decode_path`] gives it.
    pub full: (u32, u32),
    /// 1 (full size), 4 or 8.
    pub scale: u32,
}

/// [`decode_path`] for the fast path: see [`decode_bytes_reduced`].
pub fn decode_path_reduced(
    path: &Path,
    limits: &DecodeLimits,
    min_size: impl Fn(u32, u32) -> Option<(u32, u32)>,
) -> Result<Reduced> {
    let (bytes, name) = read_limited(path, limits)?;
    decode_bytes_reduced(&bytes, &name, limits, min_size)
}

/// Decodes a baseline JPEG at 1/8 or else 1/4 scale, if that keeps
/// the upright image at least `min_size(full_width, full_height)` =
/// `(width, height)` pixels large (`None`: no reduction), in the DCT domain
/// (see [`super::reduced`]). Everything else (other formats, progressive or
/// CMYK-in-YCCK JPEGs, images too small to reduce, damaged files) goes through
/// [`decode_bytes`] at full size, so limits, errors and orientation stay
/// exactly those of the exact path.
pub fn decode_bytes_reduced(
    bytes: &[u8],
    name: &str,
    limits: &DecodeLimits,
    min_size: impl Fn(u32, u32) -> Option<(u32, u32)>,
) -> Result<Reduced> {
    let jpeg = (bytes.len() as u64) <= limits.max_bytes
        && matches!(image::guess_format(bytes), Ok(ImageFormat::Jpeg));
    if jpeg && let Some(reduced) = try_reduced(bytes, limits, &min_size) {
        return Ok(reduced);
    }
    let image = decode_bytes(bytes, name, limits)?;
    Ok(Reduced {
        full: image.dimensions(),
        image,
        scale: 1,
    })
}

/// The reduced decode, or `None` to leave the file to the full-size path.
fn try_reduced(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_size: &dyn Fn(u32, u32) -> Option<(u32, u32)>,
) -> Option<Reduced> {
    // Truncated files are refused by the exact path: let it word the error.
    if !jpeg_complete(bytes) {
        return None;
    }
    // Third-party-free, but still fed hostile files: a bug here must not
    // take the thread down; the full-size path then decides.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let header = super::reduced::header(bytes).ok()?;
        let (width, height) = (header.width, header.height);
        let pixels = u64::from(width) * u64::from(height);
        if pixels > limits.max_pixels {
            return None;
        }
        let orientation = orientation_from(header.exif, header.xmp);
        let turned = matches!(
            orientation,
            Orientation::Rotate90
                | Orientation::Rotate270
                | Orientation::Rotate90FlipH
                | Orientation::Rotate270FlipH
        );
        let full = if turned {
            (height, width)
        } else {
            (width, height)
        };
        let (min_w, min_h) = min_size(full.0, full.1)?;
        let (min_w, min_h) = if turned {
            (min_h, min_w)
        } else {
            (min_w, min_h)
        };
        let scale = super::reduced::SCALES
            .into_iter()
            .find(|&s| width.div_ceil(s) >= min_w && height.div_ceil(s) >= min_h)?;
        let (w, h, rgb) = super::reduced::decode(bytes, scale).ok()?;
        let image = RgbImage::from_raw(w, h, rgb)?;
        Some(Reduced {
            image: orient(image, orientation),
            full,
            scale,
        })
    }))
    .ok()
    .flatten()
}

/// Reads a whole file, refusing it past `limits.max_bytes`; returns the bytes
/// and the name errors use.
fn read_limited(path: &Path, limits: &DecodeLimits) -> Result<(Vec<u8>, String)> {
    let name = path.display().to_string();
    let io = |source| DecodeError::Io {
        path: name.clone(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limits.max_bytes {
        return Err(DecodeError::TooManyBytes {
            path: name,
            size,
            max: limits.max_bytes,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok((bytes, name))
}

/// Decodes an image held in memory; `name` stands for its path in errors.
pub fn decode_bytes(bytes: &[u8], name: &str, limits: &DecodeLimits) -> Result<RgbImage> {
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(DecodeError::TooManyBytes {
            path: name.to_string(),
            size,
            max: limits.max_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(DecodeError::Empty {
            path: name.to_string(),
        });
    }
    let format = sniff(bytes, name)?;
    let ctx = Ctx {
        name,
        bytes,
        format,
        limits,
        // `image` expands a grey PNG with tRNS to grey+alpha and reports that as
        // the original layout, so read the bit depth and colour type from IHDR.
        png_grey16: format == Format::Png && bytes.get(24..26) == Some(&[16, 0]),
    };
    // The decoders are third-party code fed hostile files: a panic in one
    // becomes this file's error instead of taking the caller's thread down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_format(&ctx)))
        .unwrap_or_else(|_| Err(ctx.malformed("the decoder panicked on this file")))
}

fn decode_format(ctx: &Ctx) -> Result<RgbImage> {
    let bytes = ctx.bytes;
    match ctx.format {
        Format::Gif => decode_gif(bytes, ctx),
        Format::Jpeg => {
            check_jpeg_complete(bytes, ctx)?;
            let decoder = image::codecs::jpeg::JpegDecoder::new(Cursor::new(bytes))
                .map_err(|e| ctx.image(e))?;
            decode_with(decoder, ctx)
        }
        Format::Png => {
            let decoder =
                image::codecs::png::PngDecoder::with_limits(Cursor::new(bytes), ctx.image_limits())
                    .map_err(|e| ctx.image(e))?;
            decode_with(decoder, ctx)
        }
        Format::WebP => {
            let decoder = image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
                .map_err(|e| ctx.image(e))?;
            decode_with(decoder, ctx)
        }
        Format::Tiff => {
            let decoder = image::codecs::tiff::TiffDecoder::new(Cursor::new(bytes))
                .map_err(|e| ctx.image(e))?;
            decode_with(decoder, ctx)
        }
        Format::Bmp => {
            let decoder = image::codecs::bmp::BmpDecoder::new(Cursor::new(bytes))
                .map_err(|e| ctx.image(e))?;
            decode_with(decoder, ctx)
        }
        Format::Heif => decode_heif(ctx),
    }
}

/// HEIF and AVIF through libheif, the pixel budget checked on the declared size.
#[cfg(feature = "heif")]
fn decode_heif(ctx: &Ctx) -> Result<RgbImage> {
    let mut refused = None;
    let decoded = super::heif::decode(ctx.bytes, |w, h| {
        ctx.check_pixels(w, h).map_err(|e| {
            let message = e.to_string();
            refused = Some(e);
            message
        })
    });
    match (decoded, refused) {
        (Ok(image), _) => Ok(image),
        (Err(_), Some(e)) => Err(e),
        (Err(message), None) => Err(DecodeError::Malformed {
            path: ctx.name.to_string(),
            format: super::heif::format_name(ctx.bytes),
            message,
        }),
    }
}

#[cfg(not(feature = "heif"))]
fn decode_heif(ctx: &Ctx) -> Result<RgbImage> {
    Err(ctx.malformed("HEIF support is not built in"))
}

/// Identifies the format from the first bytes, as Pillow does (it ignores the
/// extension too).
fn sniff(bytes: &[u8], name: &str) -> Result<Format> {
    if super::heif::is_heif(bytes) {
        if !super::heif::SUPPORTED {
            return Err(DecodeError::NotBuiltIn {
                path: name.to_string(),
                format: super::heif::format_name(bytes),
            });
        }
        return Ok(Format::Heif);
    }
    let Ok(format) = image::guess_format(bytes) else {
        return Err(DecodeError::UnknownFormat {
            path: name.to_string(),
        });
    };
    Ok(match format {
        ImageFormat::Jpeg => Format::Jpeg,
        ImageFormat::Png => Format::Png,
        ImageFormat::WebP => Format::WebP,
        ImageFormat::Gif => Format::Gif,
        ImageFormat::Tiff => Format::Tiff,
        ImageFormat::Bmp => Format::Bmp,
        other => {
            return Err(DecodeError::UnsupportedFormat {
                path: name.to_string(),
                format: format!("{other:?}"),
            });
        }
    })
}

/// The per-call context errors need.
struct Ctx<'a> {
    name: &'a str,
    bytes: &'a [u8],
    format: Format,
    limits: &'a DecodeLimits,
    /// A 16-bit greyscale PNG (Pillow mode `I;16`), alpha from tRNS or not.
    png_grey16: bool,
}

impl Ctx<'_> {
    fn malformed(&self, message: impl std::fmt::Display) -> DecodeError {
        DecodeError::Malformed {
            path: self.name.to_string(),
            format: self.format.name(),
            message: message.to_string(),
        }
    }

    fn unsupported(&self, what: impl Into<String>) -> DecodeError {
        DecodeError::Unsupported {
            path: self.name.to_string(),
            format: self.format.name(),
            what: what.into(),
        }
    }

    fn image(&self, err: image::ImageError) -> DecodeError {
        match err {
            image::ImageError::Unsupported(e) => self.unsupported(e.to_string()),
            image::ImageError::Limits(e) => {
                self.unsupported(format!("over the decoder's limits: {e}"))
            }
            other => self.malformed(other),
        }
    }

    /// Refuses an image whose declared size exceeds the pixel budget; called on
    /// header dimensions, before any pixel buffer exists.
    fn check_pixels(&self, width: u64, height: u64) -> Result<()> {
        let pixels = width.saturating_mul(height);
        if pixels > self.limits.max_pixels {
            return Err(DecodeError::TooManyPixels {
                path: self.name.to_string(),
                width,
                height,
                pixels,
                max: self.limits.max_pixels,
            });
        }
        if pixels == 0 {
            return Err(self.malformed(format!("image is {width}x{height}, expected at least 1x1")));
        }
        Ok(())
    }

    /// `image`'s allocation cap: the decoded buffer (at most 8 bytes a pixel,
    /// 16-bit RGBA) plus room for the decoders' own scratch space.
    fn image_limits(&self) -> image::Limits {
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(
            self.limits
                .max_pixels
                .saturating_mul(8)
                .saturating_add(64 << 20),
        );
        limits
    }
}

/// Runs one of `image`'s decoders: dimensions first, then orientation, then
/// pixels, then Pillow's conversion to RGB, then the orientation.
fn decode_with(mut decoder: impl ImageDecoder, ctx: &Ctx) -> Result<RgbImage> {
    let (width, height) = decoder.dimensions();
    ctx.check_pixels(u64::from(width), u64::from(height))?;
    decoder
        .set_limits(ctx.image_limits())
        .map_err(|e| ctx.image(e))?;
    let orientation = orientation(&mut decoder, ctx.format);
    let original = decoder.original_color_type();
    let rgb = if ctx.format == Format::Tiff && original == ExtendedColorType::Cmyk8 {
        // `image` converts CMYK with a truncating float formula; Pillow rounds.
        drop(decoder);
        tiff_cmyk8(ctx)?
    } else {
        let image = DynamicImage::from_decoder(decoder).map_err(|e| ctx.image(e))?;
        to_rgb8_like_pillow(image, original, ctx)?
    };
    Ok(orient(rgb, orientation))
}

/// An 8-bit CMYK TIFF through Pillow's `cmyk2rgb`: `nk = 255 - k`,
/// `out = nk - round(c * nk / 255)` (its `MULDIV255`), no Adobe inversion.
fn tiff_cmyk8(ctx: &Ctx) -> Result<RgbImage> {
    let tiff_err = |e: tiff::TiffError| match e {
        tiff::TiffError::UnsupportedError(u) => ctx.unsupported(u.to_string()),
        other => ctx.malformed(other),
    };
    let mut limits = tiff::decoder::Limits::default();
    limits.decoding_buffer_size =
        usize::try_from(ctx.limits.max_pixels.saturating_mul(4)).unwrap_or(usize::MAX);
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(ctx.bytes))
        .map_err(tiff_err)?
        .with_limits(limits);
    let (width, height) = decoder.dimensions().map_err(tiff_err)?;
    ctx.check_pixels(u64::from(width), u64::from(height))?;
    let tiff::decoder::DecodingResult::U8(cmyk) = decoder.read_image().map_err(tiff_err)? else {
        return Err(ctx.unsupported("CMYK samples that are not 8-bit"));
    };
    let muldiv255 = |a: u8, b: u8| {
        let t = u32::from(a) * u32::from(b) + 128;
        ((t >> 8) + t) >> 8
    };
    let rgb: Vec<u8> = cmyk
        .chunks_exact(4)
        .flat_map(|p| {
            let nk = 255 - p[3];
            [0, 1, 2].map(|i| (u32::from(nk).saturating_sub(muldiv255(p[i], nk))) as u8)
        })
        .collect();
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| ctx.malformed("decoded buffer does not match the image size"))
}

/// The orientation Pillow's `exif_transpose` would apply: the EXIF tag, or when
/// EXIF has none, `tiff:Orientation` in the XMP packet. Unreadable metadata
/// means no rotation rather than a failed decode (Pillow also ignores it).
fn orientation(decoder: &mut impl ImageDecoder, format: Format) -> Orientation {
    if format == Format::Tiff {
        // TIFF keeps the tag in the image's own IFD; `image` reads it there.
        if let Some(o) = decoder
            .orientation()
            .ok()
            .filter(|o| *o != Orientation::NoTransforms)
        {
            return o;
        }
        return orientation_from(None, decoder.xmp_metadata().ok().flatten());
    }
    let exif = decoder.exif_metadata().ok().flatten();
    orientation_from(exif, decoder.xmp_metadata().ok().flatten())
}

/// The EXIF orientation (`Exif\0\0` prefix optional), else the XMP one.
fn orientation_from(exif: Option<Vec<u8>>, xmp: Option<Vec<u8>>) -> Orientation {
    let from_exif = exif.and_then(|exif| {
        let body = exif.strip_prefix(b"Exif\0\0").unwrap_or(&exif);
        Orientation::from_exif_chunk(body)
    });
    if let Some(o) = from_exif {
        return o;
    }
    xmp.and_then(|xmp| xmp_orientation(&xmp))
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

/// Pillow's `tiff:Orientation(="|>)([0-9])` search over the raw XMP bytes.
fn xmp_orientation(xmp: &[u8]) -> Option<u8> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut rest = xmp;
    while let Some(at) = find(rest, KEY) {
        let after = &rest[at + KEY.len()..];
        let digit = match after {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(*d - b'0'),
            _ => None,
        };
        if digit.is_some() {
            return digit;
        }
        rest = after;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn orient(rgb: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return rgb;
    }
    let mut image = DynamicImage::ImageRgb8(rgb);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

/// Pillow's `.convert("RGB")` for each pixel layout `image` can hand us.
/// `original` is the layout in the file, which decides the 16-bit grey rule.
fn to_rgb8_like_pillow(
    image: DynamicImage,
    original: ExtendedColorType,
    ctx: &Ctx,
) -> Result<RgbImage> {
    let (width, height) = (image.width(), image.height());
    let grey = |v: &[u8], step: usize| -> Vec<u8> {
        v.iter().step_by(step).flat_map(|&l| [l, l, l]).collect()
    };
    // Pillow opens 16-bit grey as mode I;16, whose conversion to 8 bits clips
    // (`min(v, 255)`); RGB(A) and grey+alpha 16-bit are unpacked to their high byte.
    let grey16_clipped = ctx.png_grey16 || original == ExtendedColorType::L16;
    let buf = match image {
        DynamicImage::ImageRgb8(rgb) => return Ok(rgb),
        DynamicImage::ImageRgba8(rgba) => rgba
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        DynamicImage::ImageLuma8(l) => grey(l.as_raw(), 1),
        DynamicImage::ImageLumaA8(la) => grey(la.as_raw(), 2),
        DynamicImage::ImageLuma16(l) => l
            .as_raw()
            .iter()
            .flat_map(|&v| [grey16(v, grey16_clipped); 3])
            .collect(),
        DynamicImage::ImageLumaA16(la) => la
            .as_raw()
            .iter()
            .step_by(2)
            .flat_map(|&v| [grey16(v, grey16_clipped); 3])
            .collect(),
        DynamicImage::ImageRgb16(rgb) => rgb.as_raw().iter().map(|&v| (v >> 8) as u8).collect(),
        DynamicImage::ImageRgba16(rgba) => rgba
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            .collect(),
        // Pillow cannot open floating-point colour images either (e.g. tifffile's
        // 64-bit RGB pages): refuse them rather than invent a tone mapping.
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_) => {
            return Err(ctx.unsupported(format!(
                "floating-point samples ({original:?}), expected 8- or 16-bit integers"
            )));
        }
        other => {
            return Err(ctx.unsupported(format!("pixel layout {:?}", other.color())));
        }
    };
    RgbImage::from_raw(width, height, buf)
        .ok_or_else(|| ctx.malformed("decoded buffer does not match the image size"))
}

fn grey16(v: u16, clipped: bool) -> u8 {
    if clipped {
        v.min(255) as u8
    } else {
        (v >> 8) as u8
    }
}

/// Pillow fails a JPEG whose data stops before the end-of-image marker ("image
/// file is truncated"); zune-jpeg in its lenient mode fills the rest with grey
/// instead. So look for EOI after the first start-of-scan of the main image,
/// walking the marker segments so that an EXIF thumbnail's EOI does not count.
/// Entropy-coded data escapes 0xFF as FF 00, so FF D9 there is a real EOI.
fn check_jpeg_complete(bytes: &[u8], ctx: &Ctx) -> Result<()> {
    if jpeg_complete(bytes) {
        Ok(())
    } else {
        Err(ctx.malformed("no end-of-image marker, the file is truncated"))
    }
}

fn jpeg_complete(bytes: &[u8]) -> bool {
    let mut at = 2; // after SOI
    loop {
        // Like libjpeg, step over stray bytes before a marker, then fill bytes.
        while bytes.get(at).is_some_and(|&b| b != 0xFF) {
            at += 1;
        }
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(at), bytes.get(at + 1)) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            // Standalone markers carry no length.
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let (Some(&hi), Some(&lo)) = (bytes.get(at + 2), bytes.get(at + 3)) else {
                    return false;
                };
                let len = usize::from(hi) << 8 | usize::from(lo);
                if marker == 0xDA {
                    return bytes
                        .get(at + 2 + len..)
                        // From the end: a whole file ends with it, so this is quick.
                        .is_some_and(|scan| scan.windows(2).rev().any(|w| w == [0xFF, 0xD9]));
                }
                at += 2 + len;
            }
        }
    }
}

/// GIF, first frame, as Pillow renders it in mode `P` before `.convert("RGB")`:
/// a canvas the size of the logical screen (grown if the frame sticks out),
/// filled with the frame's transparent index if it has one, else index 0; the
/// frame's indices written over it, transparent ones included; then every index
/// looked up in the frame's palette (local, else global), black past its end.
fn decode_gif(bytes: &[u8], ctx: &Ctx) -> Result<RgbImage> {
    let gif_err = |e: gif::DecodingError| ctx.malformed(e);
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let limit = ctx.limits.max_pixels.max(1);
    options.set_memory_limit(gif::MemoryLimit::Bytes(
        std::num::NonZeroU64::new(limit).unwrap_or(std::num::NonZeroU64::MIN),
    ));
    let mut decoder = options.read_info(Cursor::new(bytes)).map_err(gif_err)?;
    let (screen_w, screen_h) = (u64::from(decoder.width()), u64::from(decoder.height()));
    ctx.check_pixels(screen_w.max(1), screen_h.max(1))?;
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    let Some(frame) = decoder.next_frame_info().map_err(gif_err)? else {
        return Err(ctx.malformed("no image in the file"));
    };
    let (left, top) = (u64::from(frame.left), u64::from(frame.top));
    let (fw, fh) = (u64::from(frame.width), u64::from(frame.height));
    let width = screen_w.max(left + fw);
    let height = screen_h.max(top + fh);
    ctx.check_pixels(width, height)?;
    let transparent = frame.transparent;
    let palette = frame.palette.clone().or(global).unwrap_or_default();
    let mut indices = vec![0u8; decoder.buffer_size()];
    decoder.read_into_buffer(&mut indices).map_err(gif_err)?;

    let (w, h) = (width as usize, height as usize);
    let mut canvas = vec![transparent.unwrap_or(0); w * h];
    let (l, t, fw) = (left as usize, top as usize, fw as usize);
    for (row, src) in indices
        .chunks_exact(fw.max(1))
        .enumerate()
        .take(fh as usize)
    {
        let start = (t + row) * w + l;
        canvas[start..start + fw].copy_from_slice(src);
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    for &index in &canvas {
        let i = usize::from(index) * 3;
        match palette.get(i..i + 3) {
            Some(c) => rgb.extend_from_slice(c),
            None => rgb.extend_from_slice(&[0, 0, 0]),
        }
    }
    RgbImage::from_raw(width as u32, height as u32, rgb)
        .ok_or_else(|| ctx.malformed("decoded buffer does not match the image size"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::preprocess::fixtures;
    use sha2::{Digest, Sha256};

    /// zune-jpeg's IDCT and upsampling against libjpeg-turbo 3.2 (Pillow 13):
    /// the largest per-sample difference allowed. Measured over every stored
    /// JPEG pixel (baseline 4:4:4/4:2:2/4:2:0, progressive, grey, CMYK): 3.
    pub(crate) const JPEG_MAX_DIFF: u8 = 4;
    /// And the largest difference of per-channel means, in grey levels.
    const JPEG_MAX_MEAN_DIFF: f64 = 0.5;

    /// Files Pillow decodes and we refuse, with the reason.
    const KNOWN_REFUSALS: &[(&str, &str)] = &[(
        "syn/tiff_p.tif",
        "palette (RGBPalette) TIFF: the tiff crate does not decode it",
    )];

    fn decode_entry(entry: &serde_json::Value) -> Result<RgbImage> {
        let path = fixtures::root().join(entry["path"].as_str().unwrap());
        decode_path(&path, &DecodeLimits::default())
    }

    #[test]
    fn xmp_orientation_matches_pillow_pattern() {
        assert_eq!(xmp_orientation(br#"<x tiff:Orientation="6"/>"#), Some(6));
        assert_eq!(
            xmp_orientation(b"<tiff:Orientation>3</tiff:Orientation>"),
            Some(3)
        );
        assert_eq!(
            xmp_orientation(b"tiff:Orientation tiff:Orientation=\"8\""),
            Some(8)
        );
        assert_eq!(xmp_orientation(b"nothing here"), None);
    }

    /// Every photo and synthetic file against Pillow's `load_image`: exact
    /// (sha256 of all pixels) except JPEG, which is held to the stated bounds.
    #[test]
    fn decodes_like_pillow() {
        let mut failures = Vec::new();
        let mut jpeg_worst = (0u8, 0f64, String::new());
        for (key, entry) in fixtures::index()["decode"].as_object().unwrap() {
            if key.starts_with("bad/") {
                continue;
            }
            let ours = decode_entry(entry);
            if let Some((_, why)) = KNOWN_REFUSALS.iter().find(|(k, _)| k == key) {
                match ours {
                    Err(e) => eprintln!("{key}: known refusal ({why}): {e}"),
                    Ok(_) => failures.push(format!("{key}: now decodes, update KNOWN_REFUSALS")),
                }
                continue;
            }
            if let Some(err) = entry.get("pillow_error") {
                match ours {
                    Err(e) => eprintln!("{key}: refused like Pillow ({err}): {e}"),
                    Ok(_) => {
                        failures.push(format!("{key}: Pillow fails ({err}) but we decoded it"))
                    }
                }
                continue;
            }
            let image = match ours {
                Ok(image) => image,
                Err(e) => {
                    failures.push(format!("{key}: {e}"));
                    continue;
                }
            };
            let (w, h) = (
                entry["width"].as_u64().unwrap() as u32,
                entry["height"].as_u64().unwrap() as u32,
            );
            if image.dimensions() != (w, h) {
                failures.push(format!("{key}: {:?}, Pillow {w}x{h}", image.dimensions()));
                continue;
            }
            let (theirs, mine) = fixtures::stored_pixels(key, &image);
            let max = fixtures::max_abs_diff(&theirs, &mine);
            let sums: Vec<u64> = (0..3)
                .map(|c| {
                    image
                        .as_raw()
                        .iter()
                        .skip(c)
                        .step_by(3)
                        .map(|&v| u64::from(v))
                        .sum()
                })
                .collect();
            let pixels = f64::from(w) * f64::from(h);
            let mean_diff = (0..3)
                .map(|c| (sums[c] as f64 - entry["sums"][c].as_f64().unwrap()).abs() / pixels)
                .fold(0.0, f64::max);
            if entry["format"] == "JPEG" {
                eprintln!("{key}: JPEG max diff {max}, channel mean diff {mean_diff:.4}");
                if max > jpeg_worst.0 {
                    jpeg_worst = (max, jpeg_worst.1, key.clone());
                }
                jpeg_worst.1 = jpeg_worst.1.max(mean_diff);
                if max > JPEG_MAX_DIFF || mean_diff > JPEG_MAX_MEAN_DIFF {
                    failures.push(format!(
                        "{key}: JPEG max diff {max}, mean diff {mean_diff:.3}"
                    ));
                }
                continue;
            }
            let sha = format!("{:x}", Sha256::digest(image.as_raw()));
            if sha != entry["sha256"].as_str().unwrap() {
                failures.push(format!("{key}: not bit-exact (max diff {max} on stored pixels, mean diff {mean_diff:.4})"));
            }
        }
        eprintln!(
            "worst JPEG: max diff {} ({}), mean diff {:.4}",
            jpeg_worst.0, jpeg_worst.2, jpeg_worst.1
        );
        assert!(
            failures.is_empty(),
            "decode mismatches:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_path() {
        let bad = fixtures::root().join("tests/fixtures/images/bad");
        let mut seen = 0;
        for entry in std::fs::read_dir(&bad).unwrap() {
            let path = entry.unwrap().path();
            let err = decode_path(&path, &DecodeLimits::default()).expect_err("bad file decoded");
            let msg = err.to_string();
            assert!(msg.starts_with(&path.display().to_string()), "{msg}");
            eprintln!("{msg}");
            seen += 1;
        }
        assert!(seen >= 5);
        let missing = bad.join("no_such_file.png");
        let msg = decode_path(&missing, &DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with(&missing.display().to_string()), "{msg}");
    }

    #[test]
    fn bomb_is_refused_from_its_header() {
        let path = fixtures::root().join("tests/fixtures/images/bad/bomb.png");
        let start = std::time::Instant::now();
        let err = decode_path(&path, &DecodeLimits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::TooManyPixels {
                    width: 100_000,
                    height: 100_000,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            start.elapsed() < std::time::Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn limits_are_checked_before_decoding() {
        let path = fixtures::root().join("tests/fixtures/images/chelsea.png");
        let tight = DecodeLimits {
            max_bytes: 1000,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_path(&path, &tight),
            Err(DecodeError::TooManyBytes { .. })
        ));
        let bytes = std::fs::read(&path).unwrap();
        assert!(matches!(
            decode_bytes(&bytes, "x.png", &tight),
            Err(DecodeError::TooManyBytes { .. })
        ));
        let few = DecodeLimits {
            max_pixels: 451 * 300 - 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_path(&path, &few),
            Err(DecodeError::TooManyPixels { .. })
        ));
        let exact = DecodeLimits {
            max_pixels: 451 * 300,
            ..DecodeLimits::default()
        };
        assert!(decode_path(&path, &exact).is_ok());
        // The GIF canvas counts too.
        let gif = fixtures::dir().join("images/gif_offset.gif");
        let few = DecodeLimits {
            max_pixels: 33 * 27 - 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_path(&gif, &few),
            Err(DecodeError::TooManyPixels { .. })
        ));
    }

    #[test]
    fn format_comes_from_content_not_name() {
        let bytes =
            std::fs::read(fixtures::root().join("tests/fixtures/images/chelsea.png")).unwrap();
        let image = decode_bytes(&bytes, "misnamed.jpg", &DecodeLimits::default()).unwrap();
        assert_eq!(image.dimensions(), (451, 300));
        let err = decode_bytes(b"GIF89a", "tiny.gif", &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().starts_with("tiny.gif: "), "{err}");
    }

    /// Truncations and byte flips of every fixture: errors are fine, panics
    /// (or hangs) are not.
    #[test]
    fn corrupted_inputs_never_panic() {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(fixtures::dir().join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        for name in [
            "rocket_progressive.jpg",
            "coffee.webp",
            "no_time_for_that_tiny.gif",
            "multipage_rgb.tif",
        ] {
            files.push(fixtures::root().join("tests/fixtures/images").join(name));
        }
        let limits = DecodeLimits::default();
        let mut x: u32 = 12345;
        let mut next = move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7FFF_FFFF;
            x as usize
        };
        for path in files {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.display().to_string();
            for cut in [
                1,
                8,
                16,
                30,
                64,
                100,
                bytes.len() / 3,
                bytes.len() / 2,
                bytes.len() - 1,
            ] {
                let cut = cut.min(bytes.len());
                if let Err(e) = decode_bytes(&bytes[..cut], &name, &limits) {
                    assert!(e.to_string().starts_with(&name), "{e}");
                    assert!(!e.to_string().contains("panicked"), "{e}");
                }
            }
            for _ in 0..20 {
                let mut copy = bytes.clone();
                for _ in 0..4 {
                    let at = next() % copy.len();
                    copy[at] = next() as u8;
                }
                if let Err(e) = decode_bytes(&copy, &name, &limits) {
                    assert!(!e.to_string().contains("panicked"), "{e}");
                }
            }
        }
    }

    /// Every JPEG fixture (the stored set and the photos).
    fn jpeg_fixtures() -> Vec<std::path::PathBuf> {
        let mut files: Vec<std::path::PathBuf> = fixtures::index()["decode"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, e)| !k.starts_with("bad/") && e["format"] == "JPEG")
            .map(|(_, e)| fixtures::root().join(e["path"].as_str().unwrap()))
            .collect();
        for entry in std::fs::read_dir(fixtures::root().join("tests/fixtures/images")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "jpg") && !files.contains(&path) {
                files.push(path);
            }
        }
        files.sort();
        files
    }

    /// Mean of each `scale`×`scale` cell (cut at the edges): what a 1/8
    /// DCT-domain decode computes exactly, and a 1/4 one nearly.
    fn box_down(image: &RgbImage, scale: u32) -> RgbImage {
        let (w, h) = image.dimensions();
        RgbImage::from_fn(w.div_ceil(scale), h.div_ceil(scale), |x, y| {
            let mut sum = [0u32; 3];
            let mut count = 0;
            for yy in y * scale..((y + 1) * scale).min(h) {
                for xx in x * scale..((x + 1) * scale).min(w) {
                    let p = image.get_pixel(xx, yy).0;
                    (0..3).for_each(|c| sum[c] += u32::from(p[c]));
                    count += 1;
                }
            }
            image::Rgb(sum.map(|v| ((v + count / 2) / count) as u8))
        })
    }

    /// The reduced decode of every JPEG fixture at 1/8 and 1/4 against the
    /// full decode averaged down: same orientation, same colours (grey,
    /// 4:2:0 / 4:2:2 / 4:4:4, CMYK, EXIF and XMP rotations, restart
    /// markers), within a few grey levels; progressive falls back to full size.
    #[test]
    fn reduced_jpeg_is_the_full_decode_averaged_down() {
        let limits = DecodeLimits::default();
        let mut failures = Vec::new();
        for path in jpeg_fixtures() {
            let full = decode_path(&path, &limits).unwrap();
            let progressive = path.to_string_lossy().contains("progressive");
            let bytes = std::fs::read(&path).unwrap();
            let turn = super::super::reduced::header(&bytes)
                .map(|h| orientation_from(h.exif, h.xmp))
                .unwrap_or(Orientation::NoTransforms);
            let undo = match turn {
                Orientation::Rotate90 => Orientation::Rotate270,
                Orientation::Rotate270 => Orientation::Rotate90,
                other => other,
            };
            for scale in [8, 4] {
                let reduced = decode_path_reduced(&path, &limits, |w, h| {
                    Some((w.div_ceil(scale), h.div_ceil(scale)))
                })
                .unwrap();
                let name = format!("{} at 1/{scale}", path.display());
                assert_eq!(reduced.full, full.dimensions(), "{name}");
                if progressive {
                    assert_eq!(reduced.scale, 1, "{name}: progressive decoded reduced");
                    assert_eq!(reduced.image, full, "{name}");
                    continue;
                }
                assert_eq!(reduced.scale, scale, "{name}: not reduced");
                // Cells lie on the stored image's grid: average there, then turn.
                let want = orient(box_down(&orient(full.clone(), undo), scale), turn);
                assert_eq!(reduced.image.dimensions(), want.dimensions(), "{name}");
                let (a, b) = (want.as_raw(), reduced.image.as_raw());
                let max = fixtures::max_abs_diff(a, b);
                let mean = a
                    .iter()
                    .zip(b)
                    .map(|(&x, &y)| f64::from(x.abs_diff(y)))
                    .sum::<f64>()
                    / a.len() as f64;
                eprintln!("{name}: mean diff {mean:.3}, max {max}");
                if mean > REDUCED_MAX_MEAN_DIFF {
                    failures.push(format!("{name}: mean diff {mean:.3}, max {max}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Replicated chroma and the 2×2 IDCT's low-pass against a box average,
    /// in grey levels per sample. Measured worst: 3.4 (40×30 4:2:0 fixtures
    /// at 1/4, where every cell is an edge); photos stay under 2.
    const REDUCED_MAX_MEAN_DIFF: f64 = 4.0;

    #[test]
    fn reduced_decode_gives_the_exact_errors() {
        let limits = DecodeLimits::default();
        let any = |_: u32, _: u32| Some((1, 1));
        let bad = fixtures::root().join("tests/fixtures/images/bad");
        for entry in std::fs::read_dir(&bad).unwrap() {
            let path = entry.unwrap().path();
            let exact = decode_path(&path, &limits).unwrap_err().to_string();
            let fast = decode_path_reduced(&path, &limits, any)
                .unwrap_err()
                .to_string();
            assert_eq!(fast, exact);
        }
        let rocket = fixtures::root().join("tests/fixtures/images/rocket.jpg");
        let few = DecodeLimits {
            max_pixels: 640 * 427 - 1,
            ..DecodeLimits::default()
        };
        assert!(matches!(
            decode_path_reduced(&rocket, &few, any),
            Err(DecodeError::TooManyPixels { .. })
        ));
        let bytes = std::fs::read(&rocket).unwrap();
        let err =
            decode_bytes_reduced(&bytes[..bytes.len() - 2], "r.jpg", &limits, any).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        // Not every file is worth reducing: then it is the full decode.
        let whole = decode_path_reduced(&rocket, &limits, |w, h| Some((w, h))).unwrap();
        assert_eq!((whole.scale, whole.image.dimensions()), (1, (640, 427)));
        let none = decode_path_reduced(&rocket, &limits, |_, _| None).unwrap();
        assert_eq!(none.scale, 1);
    }

    /// Truncations and byte flips of every JPEG fixture through the reduced
    /// decoder: errors are fine (and are the exact path's), panics are not.
    #[test]
    fn reduced_corrupted_inputs_never_panic() {
        let limits = DecodeLimits::default();
        let any = |_: u32, _: u32| Some((1, 1));
        let mut x: u32 = 54321;
        let mut next = move || {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345) & 0x7FFF_FFFF;
            x as usize
        };
        for path in jpeg_fixtures() {
            let bytes = std::fs::read(&path).unwrap();
            let name = path.display().to_string();
            let check = |data: &[u8]| {
                if let Err(e) = decode_bytes_reduced(data, &name, &limits, any) {
                    assert!(e.to_string().starts_with(&name), "{e}");
                    assert!(!e.to_string().contains("panicked"), "{e}");
                }
            };
            for cut in [
                2,
                20,
                200,
                bytes.len() / 3,
                bytes.len() / 2,
                bytes.len() - 1,
            ] {
                check(&bytes[..cut.min(bytes.len())]);
            }
            for _ in 0..30 {
                let mut copy = bytes.clone();
                for _ in 0..4 {
                    // Past the headers too: the entropy-coded data is ours to parse.
                    let at = next() % copy.len();
                    copy[at] = next() as u8;
                }
                check(&copy);
            }
        }
    }

    #[test]
    fn jpeg_without_end_marker_is_truncated() {
        let bytes =
            std::fs::read(fixtures::root().join("tests/fixtures/images/rocket.jpg")).unwrap();
        let limits = DecodeLimits::default();
        assert!(decode_bytes(&bytes, "r.jpg", &limits).is_ok());
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"trailing junk after EOI");
        assert!(decode_bytes(&trailing, "r.jpg", &limits).is_ok());
        let err = decode_bytes(&bytes[..bytes.len() - 2], "r.jpg", &limits).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
