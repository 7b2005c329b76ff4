"""Writes the image-to-video ad campaign: three product pictures drawn here with Pillow (nothing downloaded) and
the manifest that animates each of them (manifests/ad_campaign_i2v.yaml).

    python manifests/make_ad_campaign_i2v.py

The pictures are the kinds a campaign gets: a perfume bottle on a studio gradient (landscape JPEG), a can cut
out on a transparent ground (RGBA PNG: Rushes flattens it over white), and a sneaker on a portrait card (so that
each aspect-ratio cell of the matrix crops it differently). Drawn with fixed shapes and no randomness, so the
files, and with them the rows' params_hash, are the same on every run of this script.
"""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
FOLDER = "ad_campaign_i2v"  # the images, beside the manifest: rows name them relative to it


def gradient(size: tuple[int, int], top: tuple, bottom: tuple) -> Image.Image:
    w, h = size
    img = Image.new("RGB", size)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(1, h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
    return img


def perfume_bottle() -> Image.Image:
    """A faceted glass bottle with a gold cap, on a warm studio gradient with a soft shadow; 640x400."""
    img = gradient((640, 400), (250, 236, 222), (196, 160, 140))
    shadow = Image.new("L", img.size, 0)
    ImageDraw.Draw(shadow).ellipse([250, 330, 400, 360], fill=120)
    img.paste((90, 60, 50), mask=shadow.filter(ImageFilter.GaussianBlur(8)))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([260, 150, 390, 340], radius=22, fill=(214, 120, 150), outline=(150, 70, 100), width=3)
    d.rounded_rectangle([276, 166, 300, 320], radius=10, fill=(240, 190, 205))  # the glass's highlight
    d.rectangle([305, 110, 345, 150], fill=(200, 160, 60))  # neck and cap
    d.rounded_rectangle([295, 70, 355, 112], radius=8, fill=(226, 186, 80), outline=(160, 120, 40), width=2)
    d.rectangle([290, 230, 370, 270], fill=(250, 246, 240))  # the label
    d.line([300, 250, 360, 250], fill=(150, 70, 100), width=3)
    return img


def coffee_can() -> Image.Image:
    """A can with a striped label, cut out on a transparent ground (RGBA); 300x420."""
    img = Image.new("RGBA", (300, 420), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rectangle([70, 60, 230, 370], fill=(30, 60, 110, 255))
    for y, colour in ((150, (236, 200, 120, 255)), (200, (250, 250, 245, 255)), (250, (236, 200, 120, 255))):
        d.rectangle([70, y, 230, y + 24], fill=colour)
    d.ellipse([70, 40, 230, 80], fill=(190, 196, 204, 255), outline=(120, 126, 134, 255), width=3)  # the lid
    d.ellipse([120, 50, 160, 66], fill=(150, 156, 164, 255))  # the tab
    d.ellipse([70, 350, 230, 390], fill=(30, 60, 110, 255))
    d.rectangle([84, 90, 96, 340], fill=(90, 120, 170, 200))  # a half-transparent highlight
    return img


def sneaker() -> Image.Image:
    """A running shoe in profile on a pale card, portrait; 360x480."""
    img = gradient((360, 480), (228, 240, 236), (170, 200, 192))
    d = ImageDraw.Draw(img)
    d.polygon([(40, 300), (70, 230), (150, 215), (210, 170), (250, 175), (260, 250), (320, 270), (330, 300)],
              fill=(230, 80, 40), outline=(150, 40, 20))  # the upper
    d.rounded_rectangle([34, 296, 336, 330], radius=14, fill=(245, 245, 240), outline=(120, 120, 120), width=2)
    for x in range(160, 240, 18):  # laces
        d.line([x, 215 - (x - 160) // 3, x + 14, 235 - (x - 160) // 3], fill=(250, 250, 250), width=4)
    d.arc([90, 240, 200, 300], 200, 340, fill=(255, 200, 60), width=6)  # the swoosh-like stripe
    return img


PRODUCTS = [
    {"id": "perfume", "file": "perfume.jpg", "draw": perfume_bottle, "campaign": "holiday-2027",
     "prompt": "the perfume bottle turns slowly on its base, light glints across the glass, the camera pushes in"},
    {"id": "cold-brew", "file": "cold-brew.png", "draw": coffee_can, "campaign": "holiday-2027",
     "prompt": "drops of condensation run down the can as the camera orbits it slowly"},
    {"id": "trail-sneaker", "file": "trail-sneaker.png", "draw": sneaker, "campaign": "holiday-2027",
     "prompt": "the sneaker lifts off and lands softly, dust rises, a low tracking shot follows it"},
]


def main() -> None:
    (HERE / FOLDER).mkdir(exist_ok=True)
    rows = []
    for p in PRODUCTS:
        img = p["draw"]()
        path = HERE / FOLDER / p["file"]
        if path.suffix == ".jpg":
            img.save(path, quality=90)
        else:
            img.save(path, optimize=True)
        rows.append({"id": p["id"], "prompt": p["prompt"], "image": f"{FOLDER}/{p['file']}",
                     "campaign": p["campaign"], "tags": ["i2v", "product"]})
    pq.write_table(pa.Table.from_pylist(rows), HERE / "ad_campaign_i2v.parquet")


if __name__ == "__main__":
    main()
