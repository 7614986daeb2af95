"""Writes tests/fixtures/images/dated/: JPEGs with known EXIF capture times
(DateTimeOriginal with and without OffsetTimeOriginal, an orientation that
swaps width and height, and none at all), and expected.json with what the
daemon must read from each, computed here with Python's datetime.

Run: python scripts/make_dated_fixtures.py   (Pillow)
"""

import json
import os
from datetime import datetime, timedelta, timezone

from PIL import Image

ROOT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "images")
OUT = os.path.join(ROOT, "dated")

# name, source photo, DateTimeOriginal, OffsetTimeOriginal, Orientation
PHOTOS = [
    ("cat_2019.jpg", "chelsea.png", "2019:06:01 12:00:00", "+02:00", None),
    ("rocket_2021.jpg", "rocket.jpg", "2021:01:15 08:30:00", None, None),
    ("coffee_2023.jpg", "coffee.webp", "2023:08:20 18:45:10", "-05:00", 6),
    ("camera_2024.jpg", "camera.png", "2024:07:01 00:00:00", "+00:00", None),
    ("astronaut_undated.jpg", "astronaut_cmyk.jpg", None, None, None),
]


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, source, when, offset, orientation in PHOTOS:
        image = Image.open(os.path.join(ROOT, source)).convert("RGB")
        image.thumbnail((320, 320))
        exif = Image.Exif()
        if orientation:
            exif[0x0112] = orientation
        if when:
            ifd = exif.get_ifd(0x8769)
            ifd[36867] = when  # DateTimeOriginal
            if offset:
                ifd[36881] = offset  # OffsetTimeOriginal
        image.save(os.path.join(OUT, name), "JPEG", quality=85, exif=exif.tobytes())
        width, height = image.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if when:
            local = datetime.strptime(when, "%Y:%m:%d %H:%M:%S")
            if offset:
                sign = 1 if offset[0] == "+" else -1
                h, m = offset[1:].split(":")
                tz = timezone(sign * timedelta(hours=int(h), minutes=int(m)))
                taken, source_name = int(local.replace(tzinfo=tz).timestamp()), "exif"
            else:
                taken = int(local.replace(tzinfo=timezone.utc).timestamp())
                source_name = "exif-local"
        else:
            taken, source_name = None, "mtime"
        expected[name] = {
            "taken_at_unix": taken,
            "taken_from": source_name,
            "width": width,
            "height": height,
        }
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
