"""Reconstructions to look at: the decoded PNG of every evaluated image and a side-by-side crop grid.

The grid has one row per image and the columns original | ours | JPEG | WebP, all cut to the same window.
JPEG and WebP are shown at the quality whose bpp on that image is nearest to ours; every tile is labelled with
its bpp and PSNR on the whole image (the numbers of results.json).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, features

from codec import bitstream
from codec.baselines import CODECS, code_image
from codec.metrics import image_metrics
from metaopt.checkpoint import atomic_write

CROP = 256  # side of the crop window (smaller images are shown whole)
GRID_CODECS = ("jpeg", "webp")
PAD = 4


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def crop_window(image: np.ndarray) -> np.ndarray:
    """The central CROP x CROP window of an [H, W, 3] image."""
    h, w = image.shape[:2]
    top, left = max(0, (h - CROP) // 2), max(0, (w - CROP) // 2)
    return image[top: top + CROP, left: left + CROP]


def nearest_rate(codec: str, image: np.ndarray, target_bpp: float) -> tuple[float, np.ndarray, float]:
    """(quality, decoded image, bpp) of the classical codec's quality whose bpp is nearest `target_bpp`."""
    candidates = []
    for quality in CODECS[codec].qualities:
        data, decoded, _, _ = code_image(CODECS[codec], image, quality)
        candidates.append((quality, decoded, bitstream.bpp(len(data), *image.shape[:2])))
    return min(candidates, key=lambda c: abs(c[2] - target_bpp))


def compose(rows: Sequence[Sequence[tuple[np.ndarray, str]]]) -> np.ndarray:
    """A white sheet with every (tile, label) in a cell of uniform width, the label above its tile."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_h = max(measure.textbbox((0, 0), label)[3] for row in rows for _, label in row) + PAD
    cell_w = int(max(max(tile.shape[1], measure.textlength(label)) for row in rows for tile, label in row)) + 2 * PAD
    tops = np.cumsum([0] + [max(tile.shape[0] for tile, _ in row) + label_h + 2 * PAD for row in rows])
    sheet = Image.new("RGB", (cell_w * max(map(len, rows)), int(tops[-1])), "white")
    draw = ImageDraw.Draw(sheet)
    for top, row in zip(tops, rows):
        for column, (tile, label) in enumerate(row):
            x, y = cell_w * column + PAD, int(top) + PAD
            draw.text((x, y), label, fill="black")
            sheet.paste(Image.fromarray(tile), (x, y + label_h))
    return np.asarray(sheet)


class Reconstructions:
    """Writes `folder/<image>.png` for each decoded image (pass it as `evaluate_checkpoint`'s `on_decoded`),
    then `folder/grid.png` (`write_grid`)."""

    def __init__(self, folder: str | Path, names: Sequence[str]):
        self.folder, self.names, self.crops = Path(folder), list(names), {}

    def __call__(self, index: int, decoded: torch.Tensor) -> None:
        image = decoded.numpy()
        atomic_write(self.folder / f"{Path(self.names[index]).stem}.png", png_bytes(image))
        self.crops[index] = crop_window(image)

    def write_grid(self, originals: Sequence[torch.Tensor], records: Sequence[dict]) -> Path:
        codecs = [c for c in GRID_CODECS if features.check(CODECS[c].feature)]
        rows = []
        for index, (x, record) in enumerate(zip(originals, records)):
            original = bitstream.to_uint8(x).numpy()
            row = [(crop_window(original), f"original {self.names[index]}"),
                   (self.crops[index], f"ours {record['bpp']:.3f} bpp {record['psnr-rgb']:.2f} dB")]
            for codec in codecs:
                quality, decoded, bpp = nearest_rate(codec, original, record["bpp"])
                decoded_psnr = image_metrics(x, torch.from_numpy(decoded.copy()))["psnr-rgb"]
                row.append((crop_window(decoded), f"{CODECS[codec].label} q{quality:g} {bpp:.3f} bpp "
                                                  f"{decoded_psnr:.2f} dB"))
            rows.append(row)
        path = self.folder / "grid.png"
        atomic_write(path, png_bytes(compose(rows)))
        return path
