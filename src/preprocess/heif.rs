//! HEIC/HEIF (phones' HEVC photos) and AVIF, through libheif (the
//! `libheif-rs` binding, built with the `heif` feature; libheif decodes HEVC
//! with libde265 and AV1 with dav1d or libaom). Decoded as pillow-heif does
//! it: the primary image, libheif's own transformations (the `irot`/`imir`
//! boxes that carry HEIF's orientation) applied, more than 8 bits per
//! channel scaled down to 8, alpha dropped. Without the feature these files
//! are refused with a message that says how to get support.

/// The ISO-BMFF brands of HEIF and AVIF images, at bytes 8..12 of the
/// `ftyp` box (and the compatible brands after it).
const BRANDS: [&[u8; 4]; 10] = [
    b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis",
];

/// Whether `bytes` start like a HEIF or AVIF file.
pub fn is_heif(bytes: &[u8]) -> bool {
    if bytes.get(4..8) != Some(b"ftyp") {
        return false;
    }
    let size = bytes
        .get(0..4)
        .map_or(0, |b| {
            u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize
        })
        .clamp(16, 256)
        .min(bytes.len());
    // Major brand at 8..12, then minor version, then the compatible brands.
    std::iter::once(8)
        .chain((16..size).step_by(4))
        .filter_map(|at| bytes.get(at..at + 4))
        .any(|brand| BRANDS.iter().any(|b| &b[..] == brand))
}

/// The name errors use: AVIF when the major brand says so.
pub fn format_name(bytes: &[u8]) -> &'static str {
    match bytes.get(8..12) {
        Some(b"avif") | Some(b"avis") => "AVIF",
        _ => "HEIF",
    }
}

#[cfg(feature = "heif")]
mod decode {
    use image::RgbImage;
    use libheif_rs::{ColorSpace, HeifContext, LibHeif, RgbChroma};

    /// `(width, height, RGB bytes)` of the primary image; `check` sees the
    /// declared size before any pixel is decoded.
    pub fn decode(
        bytes: &[u8],
        check: impl FnOnce(u64, u64) -> Result<(), String>,
    ) -> Result<RgbImage, String> {
        let ctx = HeifContext::read_from_bytes(bytes).map_err(|e| e.to_string())?;
        let handle = ctx.primary_image_handle().map_err(|e| e.to_string())?;
        check(u64::from(handle.width()), u64::from(handle.height()))?;
        let lib = LibHeif::new();
        let image = lib
            .decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), None)
            .map_err(|e| e.to_string())?;
        let planes = image.planes();
        let plane = planes
            .interleaved
            .ok_or("libheif returned no interleaved RGB plane")?;
        let (w, h, stride) = (plane.width, plane.height, plane.stride);
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for row in plane.data.chunks(stride).take(h as usize) {
            rgb.extend_from_slice(row.get(..w as usize * 3).ok_or("short RGB row")?);
        }
        RgbImage::from_raw(w, h, rgb).ok_or_else(|| "RGB buffer of the wrong size".into())
    }

    /// The primary image's size as displayed (libheif applies the
    /// container's rotation to the size it reports), without decoding.
    pub fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
        let ctx = HeifContext::read_from_bytes(bytes).ok()?;
        let handle = ctx.primary_image_handle().ok()?;
        Some((handle.width(), handle.height()))
    }
}

#[cfg(feature = "heif")]
pub use decode::{decode, dimensions};

/// Without libheif a HEIF file's size is unknown.
#[cfg(not(feature = "heif"))]
pub fn dimensions(_bytes: &[u8]) -> Option<(u32, u32)> {
    None
}

/// Whether this build decodes HEIF and AVIF.
pub const SUPPORTED: bool = cfg!(feature = "heif");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heif_and_avif_are_told_apart_from_other_iso_files() {
        let ftyp = |major: &[u8; 4], compat: &[u8; 4]| {
            let mut b = vec![0, 0, 0, 20];
            b.extend_from_slice(b"ftyp");
            b.extend_from_slice(major);
            b.extend_from_slice(&[0, 0, 0, 0]);
            b.extend_from_slice(compat);
            b.extend_from_slice(&[0; 16]);
            b
        };
        assert!(is_heif(&ftyp(b"heic", b"mif1")));
        assert!(is_heif(&ftyp(b"avif", b"mif1")));
        assert_eq!(format_name(&ftyp(b"avif", b"mif1")), "AVIF");
        assert_eq!(format_name(&ftyp(b"heic", b"mif1")), "HEIF");
        // An MP4 video is ISO-BMFF too, but not an image.
        assert!(!is_heif(&ftyp(b"isom", b"mp42")));
        assert!(!is_heif(b"\x89PNG\r\n\x1a\n"));
        assert!(!is_heif(b""));
    }
}
