//! Reduced-size JPEG decoding in the DCT domain (what libjpeg's `scale_denom`
//! and Pillow's `draft` do): a baseline JPEG is decoded at 1/4 or 1/8 of its
//! size by running an n-point inverse DCT (n = 2, 1) on the top-left n×n
//! coefficients of each 8×8 block, which is the block's low-pass content
//! sampled at the centres of n×n groups of pixels (for n = 1, the block's
//! mean). The entropy decoding still reads every coefficient, but values past
//! that corner are stepped over unread, the IDCT, upsampling and colour
//! conversion run on 1/16 or 1/64 of the pixels, and nothing full-size is
//! allocated. 1/2 is left out: its 4×4 IDCT in scalar code cost more than
//! zune-jpeg's SIMD full-size decode saved (measured on 1000×872).
//!
//! Only what phone and camera photos use is handled here: baseline Huffman,
//! 8-bit, grey / YCbCr / RGB / Adobe CMYK, integer chroma subsampling, one
//! interleaved scan, restart markers. Anything else (progressive, YCCK,
//! arithmetic coding, 12-bit, multi-scan baseline, ...) is reported as
//! [`Outcome::NotHandled`] and the caller decodes the file at full size
//! instead, so this module never has to be the one that refuses a file.
//!
//! Chroma is upsampled by replication: the reduced image is resized again
//! (by at least the margin the caller keeps), which smooths it away.

/// Why this module did not produce an image; the caller then takes the
/// full-size path, which also words the error if the file is broken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A JPEG variant this module does not decode.
    NotHandled(&'static str),
    /// Broken data (the full-size decoder will say how).
    Malformed(&'static str),
}

type Result<T> = std::result::Result<T, Outcome>;

/// Natural (row-major) position of each zig-zag index.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// What the headers say, read before any pixel is decoded.
#[derive(Debug)]
pub(crate) struct Header {
    pub width: u32,
    pub height: u32,
    /// The EXIF APP1 payload (after `Exif\0\0`), first one wins.
    pub exif: Option<Vec<u8>>,
    /// The XMP APP1 payload, first one wins.
    pub xmp: Option<Vec<u8>>,
}

/// Reads the headers up to the first scan; fails on a JPEG of a kind
/// [`decode`] does not handle.
pub(crate) fn header(bytes: &[u8]) -> Result<Header> {
    let parsed = parse(bytes)?;
    Ok(Header {
        width: u32::from(parsed.frame.width),
        height: u32::from(parsed.frame.height),
        exif: parsed.exif.map(<[u8]>::to_vec),
        xmp: parsed.xmp.map(<[u8]>::to_vec),
    })
}

/// The scales [`decode`] supports, largest reduction first.
pub(crate) const SCALES: [u32; 2] = [8, 4];

/// Decodes at 1/`denom` scale (`denom` 4 or 8): interleaved RGB of
/// `ceil(width / denom) × ceil(height / denom)` pixels, stored orientation.
pub(crate) fn decode(bytes: &[u8], denom: u32) -> Result<(u32, u32, Vec<u8>)> {
    let n = match denom {
        8 => 1,
        4 => 2,
        _ => return Err(Outcome::NotHandled("scale other than 1/4 or 1/8")),
    };
    let parsed = parse(bytes)?;
    let planes = decode_scan(&parsed, n)?;
    let out_w = u32::from(parsed.frame.width).div_ceil(denom);
    let out_h = u32::from(parsed.frame.height).div_ceil(denom);
    let rgb = to_rgb(&parsed, &planes, out_w as usize, out_h as usize)?;
    Ok((out_w, out_h, rgb))
}

#[derive(Clone, Copy, Debug, Default)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Huffman tables chosen by the scan.
    td: usize,
    ta: usize,
}

#[derive(Debug)]
struct Frame {
    width: u16,
    height: u16,
    components: Vec<Component>,
    hmax: usize,
    vmax: usize,
}

struct Parsed<'a> {
    frame: Frame,
    quant: [[u16; 64]; 4],
    dc: [Option<Huffman>; 4],
    ac: [Option<Huffman>; 4],
    restart_interval: usize,
    adobe_transform: Option<u8>,
    jfif: bool,
    exif: Option<&'a [u8]>,
    xmp: Option<&'a [u8]>,
    /// Entropy-coded data of the one scan, up to the end of the file.
    scan: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Result<usize> {
    match b.get(at..at + 2) {
        Some(s) => Ok(usize::from(s[0]) << 8 | usize::from(s[1])),
        None => Err(Outcome::Malformed("segment cut short")),
    }
}

/// Walks the marker segments up to the first start-of-scan.
fn parse(bytes: &[u8]) -> Result<Parsed<'_>> {
    if bytes.get(..2) != Some(&[0xFF, 0xD8]) {
        return Err(Outcome::Malformed("no start-of-image marker"));
    }
    let mut at = 2;
    let mut frame: Option<Frame> = None;
    let mut quant = [[0u16; 64]; 4];
    let mut quant_seen = [false; 4];
    let mut dc: [Option<Huffman>; 4] = Default::default();
    let mut ac: [Option<Huffman>; 4] = Default::default();
    let mut restart_interval = 0;
    let mut adobe_transform = None;
    let mut jfif = false;
    let (mut exif, mut xmp) = (None, None);
    loop {
        // Stray bytes before a marker and fill bytes, as libjpeg tolerates them.
        while bytes.get(at).is_some_and(|&b| b != 0xFF) {
            at += 1;
        }
        while bytes.get(at) == Some(&0xFF) && bytes.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let marker = match bytes.get(at + 1) {
            Some(&m) => m,
            None => return Err(Outcome::Malformed("no scan before the end of the file")),
        };
        at += 2;
        match marker {
            0xD8 | 0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err(Outcome::Malformed("end of image before any scan")),
            _ => {}
        }
        let len = be16(bytes, at)?;
        let body = bytes
            .get(at + 2..at + len.max(2))
            .ok_or(Outcome::Malformed("segment runs past the end of the file"))?;
        match marker {
            // Baseline and extended sequential Huffman.
            0xC0 | 0xC1 => {
                if frame.is_some() {
                    return Err(Outcome::NotHandled("more than one frame"));
                }
                frame = Some(parse_frame(body)?);
            }
            0xC2 => return Err(Outcome::NotHandled("progressive JPEG")),
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(Outcome::NotHandled(
                    "lossless, hierarchical or arithmetic-coded JPEG",
                ));
            }
            0xC4 => parse_huffman(body, &mut dc, &mut ac)?,
            0xDB => parse_quant(body, &mut quant, &mut quant_seen)?,
            0xDD => restart_interval = be16(body, 0)?,
            0xE0 if body.starts_with(b"JFIF\0") => jfif = true,
            0xE1 if exif.is_none() && body.starts_with(b"Exif\0\0") => exif = Some(&body[6..]),
            0xE1 if xmp.is_none() && body.starts_with(b"http://ns.adobe.com/xap/1.0/\0") => {
                xmp = Some(&body[29..]);
            }
            0xEE if body.starts_with(b"Adobe") && body.len() >= 12 => {
                adobe_transform = Some(body[11]);
            }
            0xDA => {
                let mut frame = frame.ok_or(Outcome::Malformed("scan before the frame header"))?;
                parse_scan_header(body, &mut frame)?;
                for c in &frame.components {
                    if !quant_seen[c.tq] {
                        return Err(Outcome::Malformed("missing quantisation table"));
                    }
                    if dc[c.td].is_none() || ac[c.ta].is_none() {
                        return Err(Outcome::Malformed("missing Huffman table"));
                    }
                }
                return Ok(Parsed {
                    frame,
                    quant,
                    dc,
                    ac,
                    restart_interval,
                    adobe_transform,
                    jfif,
                    exif,
                    xmp,
                    scan: &bytes[at + len..],
                });
            }
            _ => {}
        }
        at += len;
    }
}

fn parse_frame(b: &[u8]) -> Result<Frame> {
    if b.first() != Some(&8) {
        return Err(Outcome::NotHandled("sample precision other than 8 bits"));
    }
    let height = be16(b, 1)? as u16;
    let width = be16(b, 3)? as u16;
    if height == 0 {
        return Err(Outcome::NotHandled("height given by a DNL marker"));
    }
    if width == 0 {
        return Err(Outcome::Malformed("zero width"));
    }
    let count = usize::from(
        *b.get(5)
            .ok_or(Outcome::Malformed("frame header cut short"))?,
    );
    if !matches!(count, 1 | 3 | 4) {
        return Err(Outcome::NotHandled("component count other than 1, 3 or 4"));
    }
    let mut components = Vec::with_capacity(count);
    for i in 0..count {
        let c = b
            .get(6 + 3 * i..9 + 3 * i)
            .ok_or(Outcome::Malformed("frame header cut short"))?;
        let (h, v, tq) = (
            usize::from(c[1] >> 4),
            usize::from(c[1] & 15),
            usize::from(c[2]),
        );
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || tq > 3 {
            return Err(Outcome::Malformed("bad sampling factor or table number"));
        }
        components.push(Component {
            id: c[0],
            h,
            v,
            tq,
            ..Component::default()
        });
    }
    if count == 1 {
        // A lone component is one block per MCU whatever it declares.
        components[0].h = 1;
        components[0].v = 1;
    }
    let hmax = components.iter().map(|c| c.h).max().unwrap_or(1);
    let vmax = components.iter().map(|c| c.v).max().unwrap_or(1);
    if components
        .iter()
        .any(|c| hmax % c.h != 0 || vmax % c.v != 0)
    {
        return Err(Outcome::NotHandled("non-integer chroma subsampling"));
    }
    Ok(Frame {
        width,
        height,
        components,
        hmax,
        vmax,
    })
}

fn parse_scan_header(b: &[u8], frame: &mut Frame) -> Result<()> {
    let count = usize::from(
        *b.first()
            .ok_or(Outcome::Malformed("scan header cut short"))?,
    );
    if count != frame.components.len() {
        return Err(Outcome::NotHandled("baseline JPEG in several scans"));
    }
    for i in 0..count {
        let s = b
            .get(1 + 2 * i..3 + 2 * i)
            .ok_or(Outcome::Malformed("scan header cut short"))?;
        // The scan lists components in frame order (B.2.3).
        let c = &mut frame.components[i];
        if c.id != s[0] {
            return Err(Outcome::NotHandled("scan components out of frame order"));
        }
        let (td, ta) = (usize::from(s[1] >> 4), usize::from(s[1] & 15));
        if td > 3 || ta > 3 {
            return Err(Outcome::Malformed("bad Huffman table number"));
        }
        c.td = td;
        c.ta = ta;
    }
    let tail = b
        .get(1 + 2 * count..4 + 2 * count)
        .ok_or(Outcome::Malformed("scan header cut short"))?;
    if tail != [0, 63, 0] {
        return Err(Outcome::NotHandled(
            "spectral selection of a non-baseline scan",
        ));
    }
    Ok(())
}

fn parse_quant(mut b: &[u8], quant: &mut [[u16; 64]; 4], seen: &mut [bool; 4]) -> Result<()> {
    while let Some(&pq_tq) = b.first() {
        let (wide, id) = (pq_tq >> 4, usize::from(pq_tq & 15));
        if id > 3 || wide > 1 {
            return Err(Outcome::Malformed("bad quantisation table"));
        }
        let size = if wide == 1 { 128 } else { 64 };
        let values = b
            .get(1..1 + size)
            .ok_or(Outcome::Malformed("quantisation table cut short"))?;
        for (k, q) in quant[id].iter_mut().enumerate() {
            *q = if wide == 1 {
                u16::from(values[2 * k]) << 8 | u16::from(values[2 * k + 1])
            } else {
                u16::from(values[k])
            };
        }
        seen[id] = true;
        b = &b[1 + size..];
    }
    Ok(())
}

fn parse_huffman(
    mut b: &[u8],
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> Result<()> {
    while let Some(&tc_th) = b.first() {
        let (class, id) = (tc_th >> 4, usize::from(tc_th & 15));
        if class > 1 || id > 3 {
            return Err(Outcome::Malformed("bad Huffman table"));
        }
        let counts: [u8; 16] = b
            .get(1..17)
            .and_then(|c| c.try_into().ok())
            .ok_or(Outcome::Malformed("Huffman table cut short"))?;
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = b
            .get(17..17 + total)
            .ok_or(Outcome::Malformed("Huffman table cut short"))?;
        let table = Huffman::new(&counts, values)?;
        if class == 0 {
            dc[id] = Some(table);
        } else {
            ac[id] = Some(table);
        }
        b = &b[17 + total..];
    }
    Ok(())
}

/// Bits looked up at once; longer codes take the canonical slow path.
const LOOKUP_BITS: u32 = 9;

/// A Huffman table: a direct lookup for short codes, and the canonical
/// `maxcode` / `valptr` arrays of ITU T.81 F.2.2.3 for the rest.
#[derive(Clone, Debug)]
struct Huffman {
    /// `(length << 8) | symbol` for each `LOOKUP_BITS`-bit prefix; 0 = longer code.
    lookup: Vec<u16>,
    /// For AC tables, to step over a coefficient without its value: per
    /// prefix, code length plus value bits (bits 0-4), zig-zag positions
    /// advanced (bits 5-9; a ZRL advances 16 like a run of 15 and a zero),
    /// end of block (bit 10); 0 = longer code.
    skip: Vec<u16>,
    /// Largest code of each length (index 1..=16), -1 when none.
    maxcode: [i32; 18],
    /// Offset into `values` minus the first code of each length.
    delta: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self> {
        if values.len() > 256 {
            return Err(Outcome::Malformed("Huffman table with over 256 codes"));
        }
        let mut lookup = vec![0u16; 1 << LOOKUP_BITS];
        let mut maxcode = [-1i32; 18];
        let mut delta = [0i32; 17];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let count = u32::from(counts[len as usize - 1]);
            delta[len as usize] = k as i32 - code as i32;
            for _ in 0..count {
                if code >= 1 << len {
                    return Err(Outcome::Malformed("Huffman code lengths overflow"));
                }
                if len <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len;
                    let entry = (len as u16) << 8 | u16::from(values[k]);
                    let first = (code << shift) as usize;
                    lookup[first..first + (1 << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            if count > 0 {
                maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        // Sentinel so the slow path always ends.
        maxcode[17] = i32::MAX;
        let skip = lookup
            .iter()
            .map(|&entry| match entry {
                0 => 0,
                _ => {
                    let (len, rs) = (entry >> 8, entry & 0xFF);
                    let (run, size) = (rs >> 4, rs & 15);
                    match (run, size) {
                        (0, 0) => 1 << 10 | len,
                        (_, 0) if run != 15 => 1 << 10 | len, // treated as EOB by the slow path
                        _ => (run + 1) << 5 | (len + size),
                    }
                }
            })
            .collect();
        Ok(Self {
            lookup,
            skip,
            maxcode,
            delta,
            values: values.to_vec(),
        })
    }
}

/// MSB-first bit reader over entropy-coded data: un-stuffs `FF 00`, and at a
/// marker stops and feeds zeros (as libjpeg does with corrupt data), so a
/// damaged file decodes to something instead of running off the end.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    count: u32,
    /// The marker the reader stopped at, if any.
    marker: Option<u8>,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            buf: 0,
            count: 0,
            marker: None,
        }
    }

    /// Tops the buffer up to more than 56 bits.
    #[inline]
    fn refill(&mut self) {
        // Fast case: the next 8 bytes hold no 0xFF (no stuffing, no marker),
        // so take as many whole bytes as fit at once.
        if self.marker.is_none()
            && let Some(chunk) = self.data.get(self.pos..self.pos + 8)
        {
            let word = u64::from_be_bytes(chunk.try_into().unwrap_or([0xFF; 8]));
            let inverted = !word;
            let has_ff =
                inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080
                    != 0;
            if !has_ff {
                let take = (64 - self.count) / 8;
                if take > 0 {
                    let bits = take * 8;
                    let fresh = if bits == 64 {
                        word
                    } else {
                        word >> (64 - bits)
                    };
                    self.buf |= fresh << (64 - self.count - bits);
                    self.pos += take as usize;
                    self.count += bits;
                }
                return;
            }
        }
        while self.count <= 56 {
            let byte = if self.marker.is_some() {
                0
            } else {
                match self.data.get(self.pos) {
                    Some(&0xFF) => match self.data.get(self.pos + 1) {
                        Some(&0) => {
                            self.pos += 2;
                            0xFF
                        }
                        other => {
                            // End of data counts as an EOI marker.
                            self.marker = Some(other.copied().unwrap_or(0xD9));
                            0
                        }
                    },
                    Some(&b) => {
                        self.pos += 1;
                        b
                    }
                    None => {
                        self.marker = Some(0xD9);
                        0
                    }
                }
            };
            self.buf |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    /// The next Huffman symbol and its code length, without consuming it;
    /// needs at least 16 bits in the buffer.
    #[inline]
    fn peek_symbol(&self, table: &Huffman) -> Result<(u32, u8)> {
        let entry = table.lookup[(self.buf >> (64 - LOOKUP_BITS)) as usize];
        if entry != 0 {
            return Ok((u32::from(entry >> 8), entry as u8));
        }
        for len in LOOKUP_BITS + 1..=16 {
            let code = (self.buf >> (64 - len)) as i32;
            if code <= table.maxcode[len as usize] {
                let index = code + table.delta[len as usize];
                return match table.values.get(index as usize) {
                    Some(&symbol) => Ok((len, symbol)),
                    None => Err(Outcome::Malformed("bad Huffman code")),
                };
            }
        }
        Err(Outcome::Malformed("bad Huffman code"))
    }

    #[inline]
    fn consume(&mut self, bits: u32) {
        self.buf <<= bits;
        self.count -= bits;
    }

    #[inline]
    fn decode(&mut self, table: &Huffman) -> Result<u8> {
        if self.count < 16 {
            self.refill();
        }
        let (len, symbol) = self.peek_symbol(table)?;
        self.consume(len);
        Ok(symbol)
    }

    /// `size` more bits as a signed value (T.81 F.2.2.1 EXTEND); needs them
    /// in the buffer.
    #[inline]
    fn extend(&mut self, size: u32) -> i32 {
        if size == 0 {
            return 0;
        }
        let value = (self.buf >> (64 - size)) as i32;
        self.consume(size);
        if value < 1 << (size - 1) {
            value - (1 << size) + 1
        } else {
            value
        }
    }

    /// At a restart interval's end: drop the bit buffer and step over the
    /// RSTn marker (searching for it if the data was damaged).
    fn restart(&mut self) {
        self.buf = 0;
        self.count = 0;
        if matches!(self.marker, Some(0xD0..=0xD7)) {
            self.pos += 2;
            self.marker = None;
            return;
        }
        if self.marker.is_some() {
            return; // EOI or another marker: keep feeding zeros.
        }
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF && (0xD0..=0xD7).contains(&self.data[self.pos + 1]) {
                self.pos += 2;
                return;
            }
            self.pos += 1;
        }
    }
}

/// One component's decoded samples at the reduced scale.
struct Plane {
    width: usize,
    samples: Vec<u8>,
}

fn decode_scan(p: &Parsed, n: usize) -> Result<Vec<Plane>> {
    let f = &p.frame;
    let (width, height) = (usize::from(f.width), usize::from(f.height));
    let single = f.components.len() == 1;
    let (mcus_x, mcus_y) = if single {
        (width.div_ceil(8), height.div_ceil(8))
    } else {
        (width.div_ceil(8 * f.hmax), height.div_ceil(8 * f.vmax))
    };
    let mut planes: Vec<Plane> = f
        .components
        .iter()
        .map(|c| {
            let w = mcus_x * c.h * n;
            Plane {
                width: w,
                samples: vec![0; w * mcus_y * c.v * n],
            }
        })
        .collect();
    let quant: Vec<[f32; 64]> = f
        .components
        .iter()
        .map(|c| {
            // Dequantisation factors in natural order.
            let mut q = [0f32; 64];
            for (k, &z) in ZIGZAG.iter().enumerate() {
                q[z] = f32::from(p.quant[c.tq][k]);
            }
            q
        })
        .collect();
    // The highest zig-zag index the n×n corner uses.
    let last = if n == 1 { 0 } else { 4 };
    let mut bits = Bits::new(p.scan);
    let mut pred = [0i32; 4];
    let mut coef = [0i32; 64];
    let total = mcus_x * mcus_y;
    for mcu in 0..total {
        if p.restart_interval > 0 && mcu > 0 && mcu % p.restart_interval == 0 {
            bits.restart();
            pred = [0; 4];
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for (ci, c) in f.components.iter().enumerate() {
            // Tables were checked present in `parse`.
            let (Some(dc), Some(ac)) = (&p.dc[c.td], &p.ac[c.ta]) else {
                return Err(Outcome::Malformed("missing Huffman table"));
            };
            for by in 0..c.v {
                for bx in 0..c.h {
                    coef[..=last].fill(0);
                    let size = u32::from(bits.decode(dc)?);
                    if size > 16 {
                        return Err(Outcome::Malformed("DC difference too large"));
                    }
                    if bits.count < size {
                        bits.refill();
                    }
                    pred[ci] = pred[ci].wrapping_add(bits.extend(size));
                    coef[0] = pred[ci];
                    // AC: a code (≤ 16 bits) and its value (≤ 15) fit in the
                    // 32 bits topped up before each; values past the corner
                    // the IDCT uses are skipped with their code.
                    let mut k = 1;
                    while k <= last {
                        if bits.count < 32 {
                            bits.refill();
                        }
                        let (len, rs) = bits.peek_symbol(ac)?;
                        let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
                        bits.consume(len);
                        if size == 0 {
                            if run != 15 {
                                k = 64; // end of block
                                break;
                            }
                            k += 16;
                            continue;
                        }
                        k += run;
                        if k > 63 {
                            return Err(Outcome::Malformed("AC coefficients past the block"));
                        }
                        if k <= last {
                            coef[k] = bits.extend(size);
                        } else {
                            bits.consume(size);
                        }
                        k += 1;
                    }
                    // The rest of the block is only stepped over.
                    while k < 64 {
                        if bits.count < 32 {
                            bits.refill();
                        }
                        let entry = ac.skip[(bits.buf >> (64 - LOOKUP_BITS)) as usize];
                        if entry != 0 {
                            bits.consume(u32::from(entry & 31));
                            if entry & 1 << 10 != 0 {
                                break;
                            }
                            k += usize::from(entry >> 5 & 31);
                            continue;
                        }
                        let (len, rs) = bits.peek_symbol(ac)?;
                        let (run, size) = (usize::from(rs >> 4), u32::from(rs & 15));
                        bits.consume(len + size);
                        if size == 0 && run != 15 {
                            break;
                        }
                        k += run + 1;
                    }
                    if k > 64 {
                        return Err(Outcome::Malformed("AC coefficients past the block"));
                    }
                    let plane = &mut planes[ci];
                    let (x0, y0) = ((mx * c.h + bx) * n, (my * c.v + by) * n);
                    idct(n, &coef, &quant[ci], plane, x0, y0);
                }
            }
        }
    }
    Ok(planes)
}

/// The n-point inverse DCT (n = 1 or 2) of a block's n×n lowest frequencies,
/// scaled as the 8-point one: the 8×8 block's low-pass content at the centres
/// of its n×n groups of pixels. `zz` is in zig-zag order, `q` in natural order.
#[inline]
fn idct(n: usize, zz: &[i32; 64], q: &[f32; 64], plane: &mut Plane, x0: usize, y0: usize) {
    let width = plane.width;
    let at = y0 * width + x0;
    if n == 1 {
        // C(0)² / 4 = 1/8: the block's mean.
        plane.samples[at] = to_u8(zz[0] as f32 * q[0] / 8.0);
        return;
    }
    // n = 2: every basis value is ±C(0)/2 = ±1/(2√2), so the four outputs
    // are sums and differences over 8. Zig-zag 1, 2, 4 are natural 1, 8, 9.
    let (a, b) = (zz[0] as f32 * q[0], zz[1] as f32 * q[1]);
    let (c, d) = (zz[2] as f32 * q[8], zz[4] as f32 * q[9]);
    plane.samples[at] = to_u8((a + b + c + d) * 0.125);
    plane.samples[at + 1] = to_u8((a - b + c - d) * 0.125);
    plane.samples[at + width] = to_u8((a + b - c - d) * 0.125);
    plane.samples[at + width + 1] = to_u8((a - b - c + d) * 0.125);
}

/// A level-shifted IDCT output as a sample: rounded and clamped.
#[inline]
fn to_u8(v: f32) -> u8 {
    (v + 128.5).clamp(0.0, 255.0) as u8
}

/// Upsamples (by replication) and converts to RGB the way libjpeg picks the
/// colour space, then Pillow's CMYK rule (Adobe-inverted, `MULDIV255`).
fn to_rgb(p: &Parsed, planes: &[Plane], w: usize, h: usize) -> Result<Vec<u8>> {
    let f = &p.frame;
    // Replication: output (x, y) takes sample (x / fx, y / fy) of a plane
    // subsampled by (fx, fy); the column index is looked up, not divided.
    let columns: Vec<Vec<usize>> = f
        .components
        .iter()
        .map(|c| (0..w).map(|x| x / (f.hmax / c.h)).collect())
        .collect();
    let row = |ci: usize, y: usize| -> &[u8] {
        let c = &f.components[ci];
        let plane = &planes[ci];
        let start = (y / (f.vmax / c.v)) * plane.width;
        &plane.samples[start..start + plane.width]
    };
    let mut rgb = Vec::with_capacity(w * h * 3);
    match f.components.len() {
        1 => {
            for y in 0..h {
                for &l in &row(0, y)[..w] {
                    rgb.extend_from_slice(&[l, l, l]);
                }
            }
        }
        3 => {
            let ids: Vec<u8> = f.components.iter().map(|c| c.id).collect();
            let is_rgb = match p.adobe_transform {
                _ if p.jfif => false,
                Some(t) => t == 0,
                None => ids == b"RGB",
            };
            for y in 0..h {
                let (r0, r1, r2) = (row(0, y), row(1, y), row(2, y));
                for x in 0..w {
                    let (a, b, c) = (r0[columns[0][x]], r1[columns[1][x]], r2[columns[2][x]]);
                    if is_rgb {
                        rgb.extend_from_slice(&[a, b, c]);
                    } else {
                        rgb.extend_from_slice(&ycbcr(a, b, c));
                    }
                }
            }
        }
        4 => {
            if matches!(p.adobe_transform, Some(t) if t != 0) {
                return Err(Outcome::NotHandled("YCCK JPEG"));
            }
            let muldiv255 = |a: u32, b: u32| {
                let t = a * b + 128;
                ((t >> 8) + t) >> 8
            };
            for y in 0..h {
                let rows = [row(0, y), row(1, y), row(2, y), row(3, y)];
                for x in 0..w {
                    // Samples are inverted CMYK: nk = 255 - k = K, c = 255 - C.
                    let k = u32::from(rows[3][columns[3][x]]);
                    for ci in 0..3 {
                        let c = 255 - u32::from(rows[ci][columns[ci][x]]);
                        rgb.push(k.saturating_sub(muldiv255(c, k)) as u8);
                    }
                }
            }
        }
        _ => return Err(Outcome::NotHandled("component count")),
    }
    Ok(rgb)
}

/// JFIF YCbCr to RGB, rounded and clamped.
#[inline]
fn ycbcr(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
    let px = |v: f32| (v + 0.5).clamp(0.0, 255.0) as u8;
    [
        px(y + 1.402 * cr),
        px(y - 0.344_136_3 * cb - 0.714_136_3 * cr),
        px(y + 1.772 * cb),
    ]
}
