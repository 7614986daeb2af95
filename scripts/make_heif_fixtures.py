"""Writes tests/fixtures/images/heif/: HEIC (8-bit and 10-bit, with
pillow-heif) and AVIF (Pillow's own AVIF plugin) photos, and reference.json:
each one's image embedding by transformers' VisionTextDualEncoderModel for
the tiny vit-bert fixture model, fed by Pillow + pillow-heif as a Python
user would open them. tests/integration/model.rs holds dualsight's
embeddings of the same files to cosine 0.999 of these, and its decoded
pixels to these 8x8 grids of Pillow's.

Run: pip install torch transformers pillow pillow-heif numpy
     python scripts/make_heif_fixtures.py
"""

import json
import os

import numpy as np
import pillow_heif
import torch
from PIL import Image
from transformers import AutoImageProcessor, VisionTextDualEncoderModel

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
IMAGES = os.path.join(FIXTURES, "images")
OUT = os.path.join(IMAGES, "heif")
MODEL = os.path.join(FIXTURES, "models", "vit-bert")


def write_photos():
    os.makedirs(OUT, exist_ok=True)
    cat = Image.open(os.path.join(IMAGES, "chelsea.png")).convert("RGB")
    rocket = Image.open(os.path.join(IMAGES, "rocket.jpg")).convert("RGB")
    pillow_heif.from_pillow(cat).save(os.path.join(OUT, "chelsea.heic"), quality=90)
    # 10 bits per channel, as phones in HDR modes write them.
    deep = (np.asarray(rocket, dtype=np.uint16) << 8) | np.asarray(rocket, dtype=np.uint16)
    heif = pillow_heif.from_bytes(mode="RGB;16", size=rocket.size, data=deep.tobytes())
    heif.save(os.path.join(OUT, "rocket_10bit.heic"), quality=90)
    rocket.save(os.path.join(OUT, "rocket.avif"), quality=90)


def reference():
    pillow_heif.register_heif_opener()
    model = VisionTextDualEncoderModel.from_pretrained(MODEL).eval()
    processor = AutoImageProcessor.from_pretrained(MODEL)
    out = {}
    for name in sorted(os.listdir(OUT)):
        if not name.endswith((".heic", ".avif")):
            continue
        image = Image.open(os.path.join(OUT, name))
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
        h, w, _ = rgb.shape
        # The decoded pixels in brief: mean RGB of each cell of an 8x8 grid.
        grid = [
            [float(c) for c in rgb[y * h // 8:(y + 1) * h // 8, x * w // 8:(x + 1) * w // 8].mean(axis=(0, 1))]
            for y in range(8)
            for x in range(8)
        ]
        info = {"mode": image.mode, "size": list(image.size), "grid": grid}
        pixels = processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        with torch.no_grad():
            v = model.get_image_features(pixel_values=pixels).pooler_output[0]
        out[name] = {**info, "embedding": [float(x) for x in v]}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    write_photos()
    reference()
