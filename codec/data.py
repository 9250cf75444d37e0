"""Images in, tensors out: robust loading, train/test splits, and deterministic random-crop batches.

Any folder works: CompressAI's `ImageFolder` layout (`DIR/train/`, `DIR/test/`, optionally `DIR/meta/` and
`DIR/metaval/`) or a flat folder (the last 10% of its sorted files, at least one, are the test split). With no
folder, the photos that scikit-image ships are the built-in data set, split four ways so that a learned
optimizer is chosen and judged on images it never trained on:
    meta     images the learned optimizer is meta-trained on (a folder without meta/ uses its train split)
    metaval  images its checkpoints are chosen on (a folder without metaval/ uses its test split); the built-in
             ones are grayscale photos (loaded as RGB), since every bundled colour photo is in another split
    train    images codecs are trained on (codec.train, studies.compare)
    test     held-out validation images (codec validation, Adam's LR selection in studies.compare)
A meta-training folder is therefore never the folder a compare reports on: its test split validates meta-training.

Batches are a pure function of (seed, step): resuming at step t reproduces exactly the batches an
uninterrupted run would have seen, with no sampler state to save, and any number of loader workers.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from metaopt.errors import UserError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}

# 64 Mpixel: larger than any training photo, small enough that a forged header cannot exhaust memory.
Image.MAX_IMAGE_PIXELS = 64 * 1024 * 1024

# scikit-image's bundled photographs (no download needed), split four ways (see above).
BUILTIN_SPLITS = {
    "meta": ["astronaut.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg"],
    "train": ["chelsea.png", "motorcycle_left.png", "motorcycle_right.png"],
    "test": ["coffee.png", "rocket.jpg"],
    "metaval": ["camera.png", "coins.png", "moon.png"],
}
SPLITS = tuple(BUILTIN_SPLITS)


def builtin_images(split: str) -> list[Path]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [root / name for name in BUILTIN_SPLITS[split]]


def list_images(folder: str | Path | None, split: str) -> list[Path]:
    """Image paths of `split` (one of SPLITS) in `folder` (None = the built-in photos)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if folder is None:
        return builtin_images(split)
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    if split == "meta" and not (root / "meta").is_dir():
        split = "train"
    if split == "metaval" and not (root / "metaval").is_dir():
        split = "test"
    if (root / "train").is_dir() or (root / "test").is_dir():
        sub = root / split
        if not sub.is_dir():
            raise UserError(f"{root} has no {split}/ subfolder (CompressAI ImageFolder layout)")
        return _images_in(sub)
    files = _images_in(root)
    if len(files) == 1:
        return files  # one image: train and validate on it rather than refuse
    n_test = max(1, len(files) // 10)
    return files[-n_test:] if split == "test" else files[:-n_test]


def all_images(folder: str | Path | None) -> list[Path]:
    """Every image under `folder`, whatever its layout: evaluation codes all it is given (splits are for
    training). None = the built-in held-out (test) photos."""
    if folder is None:
        return builtin_images("test")
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"data folder not found: {root}")
    return _images_in(root)


def _images_in(folder: Path) -> list[Path]:
    files = _image_files(folder)
    if not files:
        raise UserError(f"no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@contextmanager
def _open_image(path: Path) -> Iterator[Image.Image]:
    """`Image.open`, with Pillow's many ways of failing (inside the block too) as one UserError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated/corrupt files surface as these in Pillow
        raise UserError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


def check_images(paths: Sequence[str | Path]) -> None:
    """Read every image's header and size, decoding no pixels: a file that is no image, is empty or exceeds
    the size limit is named before a run starts, not when a batch first draws it hours later."""
    for path in paths:
        with _open_image(Path(path)) as img:
            width, height = img.size
        if not (width and height):
            raise UserError(f"cannot read image {path}: it has no pixels ({width}x{height})")


def load_image(path: str | Path) -> torch.Tensor:
    """Any image file -> float32 RGB tensor [3, H, W] in [0, 1].

    Grayscale is replicated to 3 channels, alpha is dropped, palette/CMYK/YCbCr are converted, 16-bit and
    32-bit integer images are scaled by their bit depth rather than clipped.
    """
    with _open_image(Path(path)) as img:
        img.load()
        array = _to_rgb_array(img)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        gray = np.asarray(img, dtype=np.float32)
        peak = 1.0 if img.mode == "F" and gray.max() <= 1.0 else (255.0 if gray.max() <= 255 else 65535.0)
        gray = np.clip(gray / peak, 0.0, 1.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad [..., H, W] at the bottom/right (edge-replicated) to multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        squeeze = x.dim() == 3
        x = F.pad(x[None] if squeeze else x, (0, pw, 0, ph), mode="replicate")
        x = x[0] if squeeze else x
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x[..., : size[0], : size[1]]


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Center crop [3, H, W] to at most size x size (smaller sides are kept)."""
    h, w = x.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[..., top: top + size, left: left + size]


class CropBatches(torch.utils.data.Dataset):
    """Random crops + flips, indexed by training step: `self[step]` is the batch for that step.

    Images smaller than the crop are upscaled (aspect kept) until they fit. Decoded images are kept in an
    LRU cache (as uint8) so small data sets are read from disk once.
    """

    def __init__(self, paths: list[Path], crop: int, batch_size: int, seed: int, cache_images: int = 256):
        if not paths:
            raise UserError("no training images")
        if crop <= 0 or batch_size <= 0:
            raise UserError(f"crop and batch_size must be positive, got {crop}, {batch_size}")
        self.paths, self.crop, self.batch_size, self.seed = list(paths), crop, batch_size, seed
        self._cache: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._cache_size = cache_images

    def __len__(self) -> int:
        return 2**62  # indexed by step; the caller decides how many steps

    def _image(self, index: int) -> torch.Tensor:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        x = load_image(self.paths[index])
        h, w = x.shape[-2:]
        if min(h, w) < self.crop:
            scale = self.crop / min(h, w)
            size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
        image = (x * 255).round().to(torch.uint8)
        self._cache[index] = image
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image

    def __getitem__(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        crops = []
        for _ in range(self.batch_size):
            image = self._image(int(torch.randint(len(self.paths), (1,), generator=g)))
            h, w = image.shape[-2:]
            top = int(torch.randint(h - self.crop + 1, (1,), generator=g))
            left = int(torch.randint(w - self.crop + 1, (1,), generator=g))
            crop = image[:, top: top + self.crop, left: left + self.crop]
            if torch.rand((), generator=g) < 0.5:
                crop = crop.flip(-1)
            if torch.rand((), generator=g) < 0.5:
                crop = crop.flip(-2)
            crops.append(crop)
        return torch.stack(crops).float() / 255.0

    batch = __getitem__
