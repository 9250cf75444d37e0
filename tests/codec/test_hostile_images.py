"""Hostile or odd image files: handled, or refused with one clear line, never a crash or a huge allocation."""
import struct
import zlib

import pytest
import torch
from PIL import Image

from codec.__main__ import main as codec_cli
from codec.data import CropBatches, load_image
from codec.models import build_model
from metaopt.errors import UserError


def png_claiming(path, width, height):
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (9_000, 9_000)])  # 10 Gpx; 81 Mpx (> 64 Mpx cap)
def test_decompression_bombs_are_refused_before_decoding(tmp_path, width, height):
    with pytest.raises(UserError, match="decompression bomb|exceeds"):
        load_image(png_claiming(tmp_path / "bomb.png", width, height))


def test_zero_byte_and_wrong_extension(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "zero.png")
    Image.new("RGB", (9, 7), (1, 2, 3)).save(tmp_path / "really_png.jpg", format="PNG")
    assert load_image(tmp_path / "really_png.jpg").shape == (3, 7, 9)  # content decides, not the name


@pytest.mark.parametrize("size", [(1, 1), (3, 10_000), (10_000, 3)])
def test_degenerate_shapes_load_crop_and_code(tmp_path, size):
    path = tmp_path / "odd.png"
    Image.new("RGB", size, (200, 100, 50)).save(path)
    x = load_image(path)
    assert x.shape == (3, size[1], size[0])
    batch = CropBatches([path], crop=64, batch_size=2, seed=0)[0]  # smaller than the crop: upscaled
    assert batch.shape == (2, 3, 64, 64) and torch.isfinite(batch).all()
    if max(size) <= 3:  # a full compress/decompress through the CLI for the 1x1 image
        model = build_model("bmshj2018-factorized", 8, 12)
        ckpt = tmp_path / "m.pt"
        torch.save({"model_name": "bmshj2018-factorized", "model_config": {"N": 8, "M": 12},
                    "model": model.state_dict()}, ckpt)
        codec_cli(["compress", str(path), str(tmp_path / "o.moc"), "--checkpoint", str(ckpt)])
        codec_cli(["decompress", str(tmp_path / "o.moc"), str(tmp_path / "o.png"), "--checkpoint", str(ckpt)])
        assert Image.open(tmp_path / "o.png").size == size


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "RGBA", "I", "F", "1"])
def test_unusual_modes(tmp_path, mode):
    img = Image.new("RGB", (12, 10), (250, 120, 10)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "F", "I") else "x.png")
    img.save(path)
    x = load_image(path)
    assert x.shape == (3, 10, 12) and 0 <= x.min() and x.max() <= 1
