"""Command line codec: compress an image to our file format, decompress it back to PNG.

    python -m codec compress   IN_IMAGE OUT_FILE --checkpoint CKPT [--device auto|cpu|cuda]
    python -m codec decompress IN_FILE  OUT.png  --checkpoint CKPT [--device auto|cpu|cuda]

Outputs are written atomically: a failure at any point leaves no partial output file.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch
from PIL import Image

from codec import bitstream
from codec.data import load_image
from codec.models import load_model, resolve_device
from metaopt.checkpoint import atomic_write
from metaopt.errors import UserError, cli_entry


def _load(checkpoint: str, device: str):
    model, meta = load_model(checkpoint, resolve_device(device))
    return model, meta["model_name"], meta["model_config"]


def compress(args) -> None:
    x = load_image(args.input)
    model, name, config = _load(args.checkpoint, args.device)
    data = bitstream.encode(model, name, config, x)
    atomic_write(args.output, data)
    h, w = x.shape[-2:]
    print(f"{args.output}: {len(data)} bytes, {w}x{h}, {bitstream.bpp(len(data), h, w):.4f} bpp")


def decompress(args) -> None:
    path = Path(args.input)
    if not path.is_file():
        raise UserError(f"compressed file not found: {path}")
    data = path.read_bytes()
    bitstream.read_header(data)  # refuse a foreign/damaged file before spending time on the checkpoint
    model, name, config = _load(args.checkpoint, args.device)
    x_hat = bitstream.decode(model, name, config, data)
    buffer = io.BytesIO()
    Image.fromarray(bitstream.to_uint8(x_hat).numpy()).save(buffer, format="PNG")
    atomic_write(args.output, buffer.getvalue())
    h, w = x_hat.shape[-2:]
    print(f"{args.output}: {w}x{h} PNG from {len(data)} bytes ({bitstream.bpp(len(data), h, w):.4f} bpp)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m codec", description=__doc__.splitlines()[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, helps in [("compress", compress, ("image to compress", "compressed output file")),
                              ("decompress", decompress, ("compressed file", "output PNG"))]:
        p = sub.add_parser(name, help=f"{name} one image", allow_abbrev=False)
        p.add_argument("input", help=helps[0])
        p.add_argument("output", help=helps[1])
        p.add_argument("--checkpoint", required=True, help="codec checkpoint (checkpoint.pt / best.pt of codec.train)")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(func=func)
    return parser


@cli_entry
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
