#!/usr/bin/env python3
"""Reference outputs for `src/preprocess/` (decode, resize, image processors, tokenizer).

Run from the repository root with the pinned reference stack (Pillow 13.0.0,
transformers 5.24.0, tokenizers 0.23.3, numpy, safetensors):

    /work/pyenv/bin/python scripts/make_preprocess_fixtures.py

It writes `tests/fixtures/preprocess/`:
- `images/`: small synthetic inputs, one per decoding path the photos in
  `tests/fixtures/images/` do not cover (PNG bit depths and colour types, GIF
  canvases, TIFF compressions, BMP depths, WebP flavours, EXIF and XMP
  orientation, JPEG subsamplings);
- `models/*/`: processor and tokenizer files as transformers 5 saves them
  (`processor_config.json` with the image processor nested, legacy
  `preprocessor_config.json`, defaults-only configs);
- `reference.safetensors`: uint8 and float32 arrays named `kind/...`;
- `index.json`: what each array is, plus digests and metadata.

The reference for decoding is transformers' `load_image`:
`ImageOps.exif_transpose(Image.open(path)).convert("RGB")`. Large decodes are
stored as width, height, sha256 of the RGB bytes, per-channel sums and a
subsampled grid (every GRID-th pixel from GRID//2), to stay small; small
JPEG decodes (which we match only approximately) are stored whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import PIL
import safetensors
import tokenizers
import transformers
from PIL import Image, ImageOps
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT / "tests/fixtures/images"
OUT = ROOT / "tests/fixtures/preprocess"
SYN = OUT / "images"
MODELS = OUT / "models"

GRID = 16  # subsample step for large decodes
SMALL = 64 * 64  # JPEG decodes up to this many pixels are stored whole
RESIZE_SIZES = [(32, 32), (37, 23), (64, 48)]  # (width, height)
FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

tensors: dict[str, np.ndarray] = {}
index: dict = {
    "pillow": PIL.__version__,
    "transformers": transformers.__version__,
    "tokenizers": tokenizers.__version__,
    "numpy": np.__version__,
    "safetensors": safetensors.__version__,
    "grid": GRID,
    "decode": {},
    "resize": [],
    "noise_resize": [],
    "processors": {},
    "tokenizer_batches": {},
}


# ---------------------------------------------------------------- helpers


def load_image(path: Path) -> Image.Image:
    """transformers.image_utils.load_image for a local path."""
    image = Image.open(path)
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


def record_decode(key: str, path: Path) -> np.ndarray | None:
    rel = str(path.relative_to(ROOT))
    try:
        rgb = np.asarray(load_image(path))
    except Exception as e:  # noqa: BLE001 - the failure itself is the reference
        index["decode"][key] = {"path": rel, "pillow_error": f"{type(e).__name__}: {e}"}
        return None
    h, w, _ = rgb.shape
    entry = {
        "path": rel,
        "width": w,
        "height": h,
        "sha256": hashlib.sha256(rgb.tobytes()).hexdigest(),
        "sums": [int(s) for s in rgb.reshape(-1, 3).sum(axis=0, dtype=np.int64)],
        "mode": Image.open(path).mode,
        "format": Image.open(path).format,
    }
    # Exact formats are checked by digest; JPEG decodes differ a little, so
    # small ones are stored whole to measure the difference on every pixel.
    if w * h <= SMALL and entry["format"] == "JPEG":
        tensors[f"decode/{key}"] = np.ascontiguousarray(rgb)
        entry["full"] = True
    else:
        tensors[f"decode_grid/{key}"] = np.ascontiguousarray(rgb[GRID // 2 :: GRID, GRID // 2 :: GRID])
        entry["full"] = False
    index["decode"][key] = entry
    return rgb


def lcg_noise(width: int, height: int, seed: int) -> np.ndarray:
    """Deterministic noise, reproduced by the Rust tests (no stored input)."""
    x = seed & 0x7FFFFFFF
    out = bytearray(width * height * 3)
    for i in range(len(out)):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(height, width, 3)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, w: int, h: int, depth: int, ctype: int, rows: list[bytes], extra: bytes = b"", interlace: int = 0) -> None:
    """A hand-made PNG: Pillow cannot write 16-bit colour, low bit depths or Adam7."""
    raw = b"".join(b"\x00" + r for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, interlace)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


def pack_bits(values: np.ndarray, depth: int) -> bytes:
    bits = "".join(format(int(v), f"0{depth}b") for v in values)
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def adam7_rgb8(path: Path, rgb: np.ndarray) -> None:
    h, w, _ = rgb.shape
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = rgb[y0::dy, x0::dx]
        if sub.shape[0] == 0 or sub.shape[1] == 0:
            continue
        raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


# ---------------------------------------------------------------- synthetic inputs


def make_synthetic() -> list[str]:
    """Writes the small inputs; returns their names (file names in images/)."""
    if SYN.exists():
        shutil.rmtree(SYN)
    SYN.mkdir(parents=True)
    rng = np.random.default_rng(20261126)
    chelsea = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    photo = chelsea.resize((40, 30), Image.Resampling.BOX)  # natural content, small
    photo_np = np.asarray(photo)
    names: list[str] = []

    def save(name: str, im: Image.Image, **kw) -> None:
        im.save(SYN / name, **kw)
        names.append(name)

    # PNG, every colour type and depth Pillow and libpng know.
    save("png_rgb8.png", photo)
    rgba = photo.copy()
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)))
    save("png_rgba8.png", rgba)
    save("png_la8.png", photo.convert("LA"))
    save("png_l8.png", photo.convert("L"))
    save("png_p8_trns.png", photo.quantize(200), transparency=3)
    save("png_p4.png", photo.quantize(16))
    save("png_1bit.png", photo.convert("1"))
    w, h = 11, 7
    for name, ctype, chans in [("png_rgb16.png", 2, 3), ("png_rgba16.png", 6, 4), ("png_la16.png", 4, 2)]:
        a = rng.integers(0, 65536, (h, w, chans), dtype=np.uint16)
        write_png(SYN / name, w, h, 16, ctype, [a[y].astype(">u2").tobytes() for y in range(h)])
        names.append(name)
    grey16 = np.concatenate([np.arange(0, 300, 4), rng.integers(0, 65536, w * h - 75)]).astype(np.uint16)[: w * h].reshape(h, w)
    write_png(SYN / "png_l16.png", w, h, 16, 0, [grey16[y].astype(">u2").tobytes() for y in range(h)])
    write_png(
        SYN / "png_l16_trns.png", w, h, 16, 0, [grey16[y].astype(">u2").tobytes() for y in range(h)],
        extra=png_chunk(b"tRNS", struct.pack(">H", int(grey16[0, 3]))),
    )
    names += ["png_l16.png", "png_l16_trns.png"]
    for depth in (2, 4):
        vals = rng.integers(0, 1 << depth, (h, w))
        write_png(SYN / f"png_l{depth}.png", w, h, depth, 0, [pack_bits(vals[y], depth) for y in range(h)])
        names.append(f"png_l{depth}.png")
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    write_png(SYN / "png_l8_trns.png", w, h, 8, 0, [grey[y].tobytes() for y in range(h)], extra=png_chunk(b"tRNS", struct.pack(">H", int(grey[1, 1]))))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    write_png(SYN / "png_rgb8_trns.png", w, h, 8, 2, [rgb[y].tobytes() for y in range(h)], extra=png_chunk(b"tRNS", struct.pack(">HHH", *map(int, rgb[0, 0]))))
    # Palette with fewer entries than the indices used: Pillow looks up black.
    idx = rng.integers(0, 6, (h, w), dtype=np.uint8)
    write_png(SYN / "png_p_short_palette.png", w, h, 8, 3, [idx[y].tobytes() for y in range(h)], extra=png_chunk(b"PLTE", bytes(range(10, 40, 3))[:9] + b"\x80\x90\xa0"))
    adam7_rgb8(SYN / "png_adam7.png", photo_np[:29, :37])
    names += ["png_l8_trns.png", "png_rgb8_trns.png", "png_p_short_palette.png", "png_adam7.png"]

    # Orientation: every EXIF value on a non-square PNG (exact decode), XMP only.
    small = photo.resize((6, 4), Image.Resampling.BOX)
    for o in range(1, 9):
        save(f"png_exif{o}.png", small, exif=exif_with_orientation(o))
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    save("png_xmp6.png", small, pnginfo=info)

    # JPEG: subsamplings, greyscale, CMYK, progressive, orientation (approximate decode).
    save("jpg_444.jpg", photo, quality=92, subsampling=0)
    save("jpg_422.jpg", photo, quality=92, subsampling=1)
    save("jpg_420.jpg", photo, quality=92, subsampling=2)
    save("jpg_grey.jpg", photo.convert("L"), quality=92)
    save("jpg_cmyk.jpg", photo.convert("CMYK"), quality=92)
    save("jpg_progressive.jpg", photo, quality=92, progressive=True)
    for o in (3, 6, 8):
        save(f"jpg_exif{o}.jpg", photo, quality=92, exif=exif_with_orientation(o))
    save("jpg_xmp8.jpg", photo, quality=92, xmp=xmp.replace(b'"6"', b'"8"'))

    # WebP.
    save("webp_lossless.webp", photo, lossless=True)
    save("webp_lossless_rgba.webp", rgba, lossless=True, exact=True)
    save("webp_lossy.webp", photo, quality=80)
    save("webp_lossy_alpha.webp", rgba, quality=80)
    save("webp_exif6.webp", photo, lossless=True, exif=exif_with_orientation(6))
    save("webp_animated.webp", photo, save_all=True, append_images=[photo.rotate(180)], lossless=True, duration=100)

    # GIF: transparency on frame 0, frame offset inside a bigger screen, greyscale.
    pal = photo.quantize(64)
    save("gif_plain.gif", pal)
    save("gif_trans.gif", pal, transparency=5)
    save("gif_grey.gif", photo.convert("L"))
    frames = [pal.crop((5, 4, 30, 24)), pal.crop((0, 0, 25, 20))]
    # Pillow writes only the bounding box of frame 1 changes; frame 0 is placed at
    # an offset by hand below.
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], transparency=7)
    data = bytearray(buf.getvalue())
    # Grow the logical screen to 33x27 and move frame 0 to (3, 2).
    struct.pack_into("<HH", data, 6, 33, 27)
    desc = data.index(b"\x2c")
    struct.pack_into("<HH", data, desc + 1, 3, 2)
    (SYN / "gif_offset.gif").write_bytes(bytes(data))
    names.append("gif_offset.gif")
    # Frame 0 with a local colour table instead of the global one.
    plain = bytearray((SYN / "gif_plain.gif").read_bytes())
    flags = plain[10]
    assert flags & 0x80, "Pillow wrote a global colour table"
    table_len = 3 << ((flags & 7) + 1)
    table = plain[13 : 13 + table_len]
    rest = plain[13 + table_len :]
    desc = rest.index(b"\x2c")
    local = rest[: desc + 10]
    local[desc + 9] |= 0x80 | (flags & 7)
    moved = plain[:13] + local + table + rest[desc + 10 :]
    moved[10] = flags & 0x7F & ~0x07
    (SYN / "gif_local_palette.gif").write_bytes(bytes(moved))
    names.append("gif_local_palette.gif")

    # TIFF: compressions, multi-page, depths, palette, CMYK, orientation tag.
    save("tiff_raw.tif", photo)
    save("tiff_lzw.tif", photo, compression="tiff_lzw")
    save("tiff_deflate.tif", photo, compression="tiff_adobe_deflate")
    save("tiff_packbits.tif", photo, compression="packbits")
    photo.save(SYN / "tiff_multipage.tif", save_all=True, append_images=[photo.rotate(90, expand=True)])
    names.append("tiff_multipage.tif")
    save("tiff_l8.tif", photo.convert("L"))
    save("tiff_l16.tif", Image.fromarray(grey16))
    save("tiff_rgba.tif", rgba)
    save("tiff_p.tif", photo.quantize(32))
    save("tiff_cmyk.tif", photo.convert("CMYK"))
    # Pillow's RGB -> CMYK leaves K at 0; give K real values (grey component
    # replacement) so the CMYK -> RGB rounding is exercised.
    cmy = 255 - photo_np.astype(np.int32)
    k = cmy.min(axis=2, keepdims=True)
    cmyk_k = Image.frombytes("CMYK", photo.size, np.concatenate([cmy - k // 2, k], axis=2).astype(np.uint8).tobytes())
    save("tiff_cmyk_k.tif", cmyk_k)
    save("jpg_cmyk_k.jpg", cmyk_k, quality=92)
    save("tiff_1bit.tif", photo.convert("1"))
    save("tiff_orient6.tif", photo, tiffinfo={274: 6})

    # BMP.
    save("bmp_24.bmp", photo)
    save("bmp_8.bmp", photo.quantize(100))
    save("bmp_1.bmp", photo.convert("1"))
    save("bmp_32.bmp", rgba)
    save("bmp_grey.bmp", photo.convert("L"))
    return names


# ---------------------------------------------------------------- processors and tokenizers


def bert_tokenizer(tmp: Path):
    words = "a photo of the cat dog on sofa rocket coffee cup red black and white astronaut in space".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words)) + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz") + [",", ".", "!"]
    # transformers 5 tokenizers take the vocabulary itself, not a file.
    return transformers.BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})


def roberta_tokenizer(tmp: Path):
    from tokenizers import ByteLevelBPETokenizer

    corpus = tmp / "corpus.txt"
    corpus.write_text(
        "a photo of a cat on the sofa\na red rocket in space\na cup of black coffee\n"
        "an astronaut in a white suit\nthe dog and the cat\nphotos of cats and dogs\n" * 4
    )
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpus)], vocab_size=320, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp))
    vocab = json.loads((tmp / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (tmp / "merges.txt").read_text().splitlines() if line and not line.startswith("#")]
    return transformers.RobertaTokenizer(vocab=vocab, merges=merges)


TEXTS = [
    "a photo of a cat",
    "",
    "A Red Rocket, in SPACE!",
    "a photo of a dog on the sofa and a cup of black coffee in space with an astronaut",
    "zzz unknownword",
]


def record_tokenizer(name: str, tok, model_dir: Path, max_length: int) -> None:
    enc = tok(TEXTS, padding=True, truncation=True, max_length=max_length, return_token_type_ids=True)
    single = tok(TEXTS[0], padding=True, truncation=True, max_length=max_length, return_token_type_ids=True)
    index["tokenizer_batches"][name] = {
        "dir": str(model_dir.relative_to(ROOT)),
        "max_length": max_length,
        "texts": TEXTS,
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": enc["token_type_ids"],
        "single_input_ids": single["input_ids"],
        "pad_token_id": tok.pad_token_id,
    }


def processor_outputs(proc, images: dict[str, Image.Image], prefix: str, keys: list[str]) -> None:
    for key in keys:
        pv = proc(images[key], return_tensors="np")["pixel_values"][0]
        tensors[f"{prefix}/{key}"] = np.ascontiguousarray(pv.astype(np.float32))


def make_models(photos: dict[str, Image.Image]) -> None:
    if MODELS.exists():
        shutil.rmtree(MODELS)
    MODELS.mkdir(parents=True)
    from transformers import (
        BeitImageProcessorPil,
        CLIPImageProcessorPil,
        DeiTImageProcessorPil,
        VisionTextDualEncoderProcessor,
        ViTImageProcessorPil,
    )

    all_keys = sorted(photos)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        bert = bert_tokenizer(tmp)
        (tmp / "rob").mkdir()
        roberta = roberta_tokenizer(tmp / "rob")

    # transformers 5 layout: processor_config.json with the image processor nested.
    clip = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    d = MODELS / "clip_bert"
    VisionTextDualEncoderProcessor(image_processor=clip, tokenizer=bert).save_pretrained(d)
    reloaded = VisionTextDualEncoderProcessor.from_pretrained(d, backend="pil")
    processor_outputs(reloaded.image_processor, photos, "clip", all_keys)
    index["processors"]["clip"] = {"dir": str(d.relative_to(ROOT)), "class": type(reloaded.image_processor).__name__, "keys": all_keys}
    record_tokenizer("bert", reloaded.tokenizer, d, 16)

    # Legacy layout: top-level preprocessor_config.json next to the tokenizer.
    vit = ViTImageProcessorPil(size={"height": 32, "width": 32})
    d = MODELS / "vit_roberta"
    vit.save_pretrained(d)
    roberta.save_pretrained(d)
    reloaded = ViTImageProcessorPil.from_pretrained(d)
    processor_outputs(reloaded, photos, "vit", all_keys)
    index["processors"]["vit"] = {"dir": str(d.relative_to(ROOT)), "class": type(reloaded).__name__, "keys": all_keys}
    record_tokenizer("roberta", transformers.AutoTokenizer.from_pretrained(d), d, 12)

    # Old feature-extractor json with int sizes (CLIP: int size = shortest edge).
    d = MODELS / "legacy_clip"
    d.mkdir()
    legacy = {
        "crop_size": 32, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3, "size": 32,
    }
    (d / "preprocessor_config.json").write_text(json.dumps(legacy, indent=2))
    reloaded = CLIPImageProcessorPil.from_pretrained(d)
    keys = ["chelsea_exif6.jpg", "logo.png"]
    processor_outputs(reloaded, photos, "legacy_clip", keys)
    index["processors"]["legacy_clip"] = {"dir": str(d.relative_to(ROOT)), "class": type(reloaded).__name__, "keys": keys}

    # Defaults only: the class defaults must fill everything in.
    for name, cls, type_name in [
        ("deit_defaults", DeiTImageProcessorPil, "DeiTImageProcessor"),
        ("beit_defaults", BeitImageProcessorPil, "BeitImageProcessor"),
        ("vit_defaults", ViTImageProcessorPil, "ViTImageProcessor"),
        ("clip_defaults", CLIPImageProcessorPil, "CLIPImageProcessor"),
    ]:
        d = MODELS / name
        d.mkdir()
        (d / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": type_name}))
        p = cls.from_pretrained(d)
        crop = getattr(p, "crop_size", None)
        index["processors"][name] = {
            "dir": str(d.relative_to(ROOT)),
            "class": type(p).__name__,
            "keys": [],
            "effective": {
                "do_resize": p.do_resize,
                "size": dict(p.size) if p.size is not None else None,
                "resample": int(p.resample),
                "do_center_crop": bool(p.do_center_crop),
                "crop_size": dict(crop) if crop is not None else None,
                "do_rescale": p.do_rescale,
                "rescale_factor": p.rescale_factor,
                "do_normalize": p.do_normalize,
                "image_mean": list(p.image_mean),
                "image_std": list(p.image_std),
            },
        }

    # Small variants exercising the other size rules and crop padding.
    variants = {
        # DeiT-like: exact resize then a smaller centre crop.
        "deit_small": (DeiTImageProcessorPil, {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}}),
        # Crop larger than the resized image: transformers pads with zeros.
        "pad_crop": (CLIPImageProcessorPil, {"size": {"height": 20, "width": 27}, "crop_size": {"height": 32, "width": 30}}),
        # shortest_edge with a longest_edge cap, then crop.
        "capped": (CLIPImageProcessorPil, {"size": {"shortest_edge": 32, "longest_edge": 40}, "crop_size": {"height": 24, "width": 24}}),
        # No rescale: normalise raw 0..255 values; nearest filter.
        "no_rescale": (ViTImageProcessorPil, {"size": {"height": 16, "width": 24}, "do_rescale": False, "resample": 0, "image_mean": [127.5, 120.0, 100.0], "image_std": [60.0, 64.0, 70.0]}),
    }
    keys = ["chelsea.png", "no_time_for_that_tiny.gif", "camera.png"]
    for name, (cls, kw) in variants.items():
        d = MODELS / name
        cls(**kw).save_pretrained(d)
        p = cls.from_pretrained(d)
        processor_outputs(p, photos, name, keys)
        index["processors"][name] = {"dir": str(d.relative_to(ROOT)), "class": type(p).__name__, "keys": keys}


# ---------------------------------------------------------------- main


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    photos: dict[str, Image.Image] = {}
    for path in sorted(PHOTOS.iterdir()):
        if path.is_file() and path.suffix.lower() != ".md":
            rgb = record_decode(path.name, path)
            if rgb is not None:
                photos[path.name] = Image.fromarray(rgb)
    for path in sorted((PHOTOS / "bad").iterdir()):
        record_decode(f"bad/{path.name}", path)
    for name in make_synthetic():
        record_decode(f"syn/{name}", SYN / name)

    # Resizes of every decoded photo, all filters, down and up.
    for key, im in photos.items():
        for w, h in RESIZE_SIZES:
            for code, fname in FILTERS.items():
                out = np.asarray(im.resize((w, h), resample=code, reducing_gap=None))
                name = f"resize/{key}/{w}x{h}/{fname}"
                tensors[name] = np.ascontiguousarray(out)
        index["resize"].append(key)

    # Edge geometry on LCG noise (the Rust tests regenerate the input).
    noise_cases = [
        ((37, 29, 1), [(36, 29), (37, 30), (38, 28), (55, 41), (5, 5), (1, 1), (37, 1), (1, 29), (100, 3)]),
        # Pass order (Pillow 13 resamples vertically first when the height
        # shrinks and 2 * (W - w) < H - h): both sides of the boundary.
        ((37, 29, 4), [(23, 1), (24, 1), (35, 25), (36, 25), (30, 2), (50, 10), (40, 30), (45, 20), (4, 1), (36, 28), (38, 30)]),
        ((1000, 700, 2), [(9, 7), (40, 30), (3, 100)]),
    ]
    for (w0, h0, seed), sizes in noise_cases:
        src = Image.fromarray(lcg_noise(w0, h0, seed))
        for w, h in sizes:
            for code, fname in FILTERS.items():
                out = np.asarray(src.resize((w, h), resample=code, reducing_gap=None))
                tensors[f"noise/{w0}x{h0}s{seed}/{w}x{h}/{fname}"] = np.ascontiguousarray(out)
        index["noise_resize"].append({"width": w0, "height": h0, "seed": seed, "sizes": sizes})
    # Check the LCG against the Rust side: first bytes of seed 1.
    index["lcg_check"] = [int(v) for v in lcg_noise(4, 1, 1).reshape(-1)]

    make_models(photos)

    # One metadata key: safetensors writes several in hash order, which would
    # make the file differ from run to run.
    versions = f"pillow {PIL.__version__}, transformers {transformers.__version__}"
    save_file(tensors, str(OUT / "reference.safetensors"), metadata={"versions": versions})
    (OUT / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {len(tensors)} arrays, {total / 1e6:.2f} MB under {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
