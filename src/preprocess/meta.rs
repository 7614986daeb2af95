//! What a photo says about itself, read at indexing from the bytes already in
//! memory: when it was taken (EXIF `DateTimeOriginal`, with
//! `OffsetTimeOriginal` when the camera wrote one), and its pixel size as
//! displayed (EXIF orientation applied). Never fails: what cannot be read is
//! left unknown, and the capture time falls back to the file's mtime.

use std::io::Cursor;

/// Where a capture time comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum TakenFrom {
    /// Not read (a record written before dates were kept).
    #[default]
    Unknown = 0,
    /// The file's modification time: the photo carries no capture time.
    Mtime = 1,
    /// EXIF DateTimeOriginal without an offset: the camera's clock time, read as UTC.
    ExifLocal = 2,
    /// EXIF DateTimeOriginal with OffsetTimeOriginal: an exact instant.
    Exif = 3,
}

impl TakenFrom {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Mtime,
            2 => Self::ExifLocal,
            3 => Self::Exif,
            _ => Self::Unknown,
        }
    }

    /// The name on the wire (`Hit.taken_from`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "",
            Self::Mtime => "mtime",
            Self::ExifLocal => "exif-local",
            Self::Exif => "exif",
        }
    }
}

/// A photo's capture time and displayed size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhotoMeta {
    /// Unix seconds.
    pub taken_at: i64,
    pub taken_from: TakenFrom,
    /// Displayed size (EXIF orientation applied); 0 when unknown.
    pub width: u32,
    pub height: u32,
}

/// Reads the metadata of an encoded image; `mtime_ns` is the file's
/// modification time, the capture time of a photo without one.
pub fn read_meta(bytes: &[u8], mtime_ns: i64) -> PhotoMeta {
    let exif = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok();
    // HEIF carries its rotation in the container, which libheif applies
    // (and pillow-heif ignores the EXIF tag): its size is already upright.
    let heif = super::heif::is_heif(bytes);
    let (mut width, mut height) = if heif {
        super::heif::dimensions(bytes)
    } else {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
    }
    .unwrap_or((0, 0));
    let orientation = exif
        .as_ref()
        .and_then(|e| e.get_field(exif::Tag::Orientation, exif::In::PRIMARY))
        .and_then(|f| f.value.get_uint(0));
    if !heif && matches!(orientation, Some(5..=8)) {
        (width, height) = (height, width);
    }
    let (taken_at, taken_from) = match exif.as_ref().and_then(capture_time) {
        Some(t) => t,
        None => (mtime_ns.div_euclid(1_000_000_000), TakenFrom::Mtime),
    };
    PhotoMeta {
        taken_at,
        taken_from,
        width,
        height,
    }
}

/// DateTimeOriginal (else DateTime), adjusted by OffsetTimeOriginal when present.
fn capture_time(exif: &exif::Exif) -> Option<(i64, TakenFrom)> {
    let ascii = |tag| {
        let field = exif.get_field(tag, exif::In::PRIMARY)?;
        match &field.value {
            exif::Value::Ascii(v) => v.first().map(|s| String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    };
    let (text, offset_tag) = match ascii(exif::Tag::DateTimeOriginal) {
        Some(t) => (t, exif::Tag::OffsetTimeOriginal),
        None => (ascii(exif::Tag::DateTime)?, exif::Tag::OffsetTime),
    };
    let local = parse_exif_datetime(&text)?;
    match ascii(offset_tag).and_then(|o| parse_offset(&o)) {
        Some(offset) => Some((local - offset, TakenFrom::Exif)),
        None => Some((local, TakenFrom::ExifLocal)),
    }
}

/// `YYYY:MM:DD HH:MM:SS` as if UTC; blank or zeroed dates (some cameras) are none.
fn parse_exif_datetime(text: &str) -> Option<i64> {
    let t = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let (date, time) = t.split_once(' ')?;
    let num = |s: &str| s.trim().parse::<u32>().ok();
    let mut d = date.split(':');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let mut h = time.split(':');
    let (hh, mi) = (num(h.next()?)?, num(h.next()?)?);
    // Seconds may carry a fraction in some writers ("05.25").
    let ss = h
        .next()
        .map_or(Some(0), |s| num(s.split('.').next().unwrap_or("0")))?;
    crate::civil::unix_from_civil(i64::from(y), mo, day, hh, mi, ss)
}

/// `+HH:MM` / `-HH:MM` as seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    let t = text.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    let (sign, rest) = match t.as_bytes().first()? {
        b'+' => (1, &t[1..]),
        b'-' => (-1, &t[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m) = (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?);
    (h <= 18 && m < 60).then_some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_times_and_offsets_parse() {
        assert_eq!(
            parse_exif_datetime("2024:07:01 12:30:05"),
            crate::civil::unix_from_civil(2024, 7, 1, 12, 30, 5)
        );
        assert_eq!(parse_exif_datetime("0000:00:00 00:00:00"), None);
        assert_eq!(parse_exif_datetime("    :  :     :  :  "), None);
        assert_eq!(parse_offset("+02:00"), Some(7200));
        assert_eq!(parse_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_offset("02:00"), None);
    }

    #[test]
    fn a_photo_without_exif_is_dated_by_its_mtime() {
        let png = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/images/camera.png"
        ))
        .unwrap();
        let m = read_meta(&png, 1_700_000_000_123_456_789);
        assert_eq!(m.taken_from, TakenFrom::Mtime);
        assert_eq!(m.taken_at, 1_700_000_000);
        assert!(m.width > 0 && m.height > 0, "{m:?}");
        assert_eq!(read_meta(b"not an image", 0).width, 0);
    }
}
