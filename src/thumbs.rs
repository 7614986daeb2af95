//! Thumbnails: a small JPEG per content hash (`DATA/thumbs/ab/<hash>.jpg`),
//! made at indexing from the image already decoded (orientation applied), so
//! a renamed or copied photo shares its thumbnail and none is made twice.
//! They are a cache, not the truth: written without fsync, and one that is
//! missing (a crash, a store from before thumbnails) is made again from the
//! indexed file when asked for.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;

use crate::store::ContentHash;

/// Longest side of a stored thumbnail: a grid cell on a high-density screen.
pub const STORED_SIZE: u32 = 256;
/// JPEG quality of thumbnails (~10 KB at 256 px).
const QUALITY: u8 = 82;

#[derive(Debug, thiserror::Error)]
pub enum ThumbError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("thumbnail: {0}")]
    Image(#[from] image::ImageError),
}

pub type Result<T, E = ThumbError> = std::result::Result<T, E>;

/// The thumbnails of one data dir.
#[derive(Debug, Clone)]
pub struct Thumbs {
    dir: PathBuf,
}

/// An encoded thumbnail.
#[derive(Debug, Clone, PartialEq)]
pub struct Jpeg {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl Thumbs {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("thumbs"),
        }
    }

    fn path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.dir.join(&hex[..2]).join(format!("{hex}.jpg"))
    }

    /// Whether `hash` has its thumbnail.
    pub fn has(&self, hash: &ContentHash) -> bool {
        self.path(hash).is_file()
    }

    /// The stored thumbnail of `hash`, if it was made.
    pub fn get(&self, hash: &ContentHash) -> Option<Vec<u8>> {
        std::fs::read(self.path(hash)).ok()
    }

    /// Makes and stores the thumbnail of `hash` from its decoded image,
    /// unless it exists; returns it.
    pub fn put(&self, hash: &ContentHash, image: &RgbImage) -> Result<Jpeg> {
        let jpeg = encode(image, STORED_SIZE)?;
        let path = self.path(hash);
        let io = |source| ThumbError::Io {
            path: path.clone(),
            source,
        };
        let dir = path.parent().expect("thumbnail paths have a folder");
        std::fs::create_dir_all(dir).map_err(io)?;
        // Write beside, then rename: a reader never sees half a JPEG.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, &jpeg.bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(jpeg)
    }
}

/// `image` scaled down (never up) so its longest side is at most `size`, as JPEG.
pub fn encode(image: &RgbImage, size: u32) -> Result<Jpeg> {
    let (w, h) = image.dimensions();
    let scaled;
    let image = if w.max(h) > size {
        let (tw, th) = fit(w, h, size);
        scaled = image::imageops::thumbnail(image, tw, th);
        &scaled
    } else {
        image
    };
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, QUALITY).encode_image(image)?;
    Ok(Jpeg {
        bytes,
        width: image.width(),
        height: image.height(),
    })
}

/// A stored thumbnail at most `size` px on its longest side.
pub fn resized(jpeg: Vec<u8>, size: u32) -> Result<Jpeg> {
    let image = image::ImageReader::new(Cursor::new(&jpeg))
        .with_guessed_format()
        .map_err(image::ImageError::IoError)?
        .decode()?
        .into_rgb8();
    if image.width().max(image.height()) <= size {
        return Ok(Jpeg {
            width: image.width(),
            height: image.height(),
            bytes: jpeg,
        });
    }
    encode(&image, size)
}

/// Whether a decode of `dims` makes a thumbnail smaller than the stored size
/// though the photo (`meta`: its full displayed size) is larger.
pub fn too_small(dims: (u32, u32), meta: &crate::preprocess::meta::PhotoMeta) -> bool {
    let have = dims.0.max(dims.1);
    have < STORED_SIZE && meta.width.max(meta.height) > have
}

/// The least a reduced decode of a `w × h` photo needs for its thumbnail
/// (for [`crate::preprocess::decode::decode_bytes_reduced`]).
pub fn min_decode(w: u32, h: u32) -> Option<(u32, u32)> {
    (w.max(h) > STORED_SIZE).then(|| fit(w, h, STORED_SIZE))
}

/// `(w, h)` scaled to fit `size` on the longest side, at least 1 px each.
fn fit(w: u32, h: u32, size: u32) -> (u32, u32) {
    let scale = f64::from(size) / f64::from(w.max(h));
    let f = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, size);
    (f(w), f(h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_their_size_and_are_kept_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let thumbs = Thumbs::new(dir.path());
        let image = RgbImage::from_fn(1000, 400, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let hash = ContentHash([3; 32]);
        assert!(!thumbs.has(&hash));
        let made = thumbs.put(&hash, &image).unwrap();
        assert_eq!((made.width, made.height), (256, 102));
        assert_eq!(thumbs.get(&hash).unwrap(), made.bytes);
        let small = resized(made.bytes.clone(), 64).unwrap();
        assert_eq!((small.width, small.height), (64, 26));
        let same = resized(made.bytes.clone(), 4096).unwrap();
        assert_eq!(same.bytes, made.bytes);
        assert_eq!(fit(1, 5000, 256), (1, 256));
    }
}
