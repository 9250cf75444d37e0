"""Classical codecs through Pillow — JPEG, WebP, AVIF, JPEG 2000 — over a sweep of qualities.

Each image is encoded to bytes in memory and decoded back with Pillow, then measured by the same code as
our codec (`codec.metrics.image_metrics`, bpp = 8·bytes/(H·W)), so the curves are comparable.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image, features

from codec import bitstream
from codec.metrics import image_metrics, mean_of
from metaopt.errors import UserError


@dataclass(frozen=True)
class Codec:
    label: str
    pillow_format: str
    feature: str  # Pillow feature name that must be available
    qualities: tuple[float, ...]  # sweep, from low to high rate

    def save_options(self, quality: float) -> dict:
        if self.pillow_format == "JPEG2000":
            # quality = compression ratio (24 bpp / ratio); 9/7 wavelet as in lossy JPEG 2000, raw codestream
            # without the JP2 box so the container does not count against it.
            return {"quality_mode": "rates", "quality_layers": [quality], "irreversible": True, "no_jp2": True}
        return {"quality": int(quality)}


CODECS = {
    "jpeg": Codec("JPEG", "JPEG", "jpg", (1, 3, 5, 10, 20, 30, 50, 70, 85, 95)),  # 1, 3: learned codecs at low rates
    "webp": Codec("WebP", "WEBP", "webp", (5, 10, 20, 30, 50, 70, 85, 95)),
    "avif": Codec("AVIF", "AVIF", "avif", (10, 25, 40, 55, 70, 85)),
    "jpeg2000": Codec("JPEG 2000", "JPEG2000", "jpg_2000", (240, 120, 60, 30, 15, 8)),
}


def code_image(codec: Codec, image: np.ndarray, quality: float) -> tuple[bytes, np.ndarray, float, float]:
    """Encode an [H, W, 3] uint8 image in memory and decode it: (bytes, decoded [H, W, 3], enc s, dec s)."""
    buffer = io.BytesIO()
    start = time.perf_counter()
    Image.fromarray(image).save(buffer, format=codec.pillow_format, **codec.save_options(quality))
    encoded = time.perf_counter()
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        decoded = np.asarray(img.convert("RGB"))
    return data, decoded, encoded - start, time.perf_counter() - encoded


def evaluate_baseline(name: str, images: Sequence[torch.Tensor], qualities: Sequence[float] | None = None) -> list[dict]:
    """One mean RD point per quality: the keys of `codec.metrics.METRICS` plus "quality"."""
    if name not in CODECS:
        raise UserError(f"unknown baseline {name!r}; choose from {', '.join(CODECS)}")
    codec = CODECS[name]
    if not features.check(codec.feature):
        raise UserError(f"this Pillow build cannot write {codec.label} (feature {codec.feature!r} missing)")
    originals = [bitstream.to_uint8(x).numpy() for x in images]
    points = []
    for quality in qualities or codec.qualities:
        records = []
        for x, image in zip(images, originals):
            data, decoded, enc, dec = code_image(codec, image, quality)
            h, w = image.shape[:2]
            records.append({"bpp": bitstream.bpp(len(data), h, w),
                            **image_metrics(x, torch.from_numpy(decoded.copy())),
                            "encoding_time": enc, "decoding_time": dec})
        points.append({"quality": quality, **mean_of(records)})
    return points
