"""Rate–distortion evaluation of codec checkpoints (and classical baselines) on real bitstreams.

    python -m codec.eval --checkpoint CKPT[,CKPT2...] [--data DIR] [--out results.json]
                         [--baselines jpeg,webp,avif,jpeg2000] [--plot rd.png]

Every image under DIR is coded, whatever its layout (train/test splits are for training). Per image: bpp from the bytes of our file format (header included) and from the model's likelihoods
(the difference is the entropy coder's + header's overhead), PSNR on 8-bit rounded RGB, MS-SSIM
(pytorch-msssim, data_range 255, standard 11-px window, so only for images whose short side is > 160 px)
also in dB = -10·log10(1 - MS-SSIM), encode/decode seconds.

The output JSON uses CompressAI's layout (`{"name", "description", "results": {"bpp": [...], "psnr-rgb":
[...], ...}}`, one entry per checkpoint, ordered by rate), so `python -m compressai.utils.plot` reads it;
per-image numbers go under "checkpoints". Each baseline is also written next to it as
`<out>.<codec>.json` in the same layout.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from codec import bitstream
from codec.baselines import CODECS, evaluate_baseline
from codec.data import all_images, load_image, pad_to_multiple
from codec.metrics import METRICS, image_metrics, mean_of
from codec.models import PAD_MULTIPLE, load_model, resolve_device
from codec.rd import bd_rate, plot_rd
from metaopt.checkpoint import atomic_write
from metaopt.config import parse_config
from metaopt.errors import UserError, cli_entry

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def likelihood_bpp(model: nn.Module, x: torch.Tensor) -> float:
    """Rate the model's entropy models predict for the (padded) image, per original pixel."""
    padded, (h, w) = pad_to_multiple(x, PAD_MULTIPLE)
    with torch.no_grad():
        likelihoods = model(padded[None])["likelihoods"]
    bits = sum(-torch.log2(lik).sum().item() for lik in likelihoods.values())
    return bits / (h * w)


def evaluate_checkpoint(model: nn.Module, model_name: str, model_config: dict,
                        images: Sequence[Path | torch.Tensor]) -> dict:
    """Code every image through our file format and measure it.

    Returns {"mean": {...}, "per_image": [{...}, ...]} with the keys of METRICS plus "bytes",
    "bpp-likelihood", "height", "width", "name". Used by `codec.train` to log the final RD point.
    """
    was_training = model.training
    model.eval()
    try:
        per_image = _evaluate(model, model_name, model_config, images)
    finally:
        model.train(was_training)  # codec.train may call this mid-run
    if not per_image:
        raise UserError("no images to evaluate")
    return {"mean": mean_of(per_image), "per_image": per_image}


def _evaluate(model: nn.Module, model_name: str, model_config: dict, images) -> list[dict]:
    device = next(model.parameters()).device
    bitstream.prepare(model)  # one-time CDF tables + fingerprint: not part of per-image coding time
    per_image = []
    for i, image in enumerate(images):
        name = Path(image).name if isinstance(image, (str, Path)) else f"image{i}"
        x = (load_image(image) if isinstance(image, (str, Path)) else image).to(device)
        h, w = x.shape[-2:]
        _sync(device)
        start = time.perf_counter()
        data = bitstream.encode(model, model_name, model_config, x)
        encoded = time.perf_counter()
        x_hat = bitstream.decode(model, model_name, model_config, data)
        _sync(device)
        decoded = time.perf_counter()
        record = {"name": name, "height": h, "width": w, "bytes": len(data), "bpp": bitstream.bpp(len(data), h, w),
                  "bpp-likelihood": likelihood_bpp(model, x),
                  **image_metrics(x, bitstream.to_uint8(x_hat)),
                  "encoding_time": encoded - start, "decoding_time": decoded - encoded}
        per_image.append(record)
    return per_image


def compressai_layout(name: str, description: str, points: Sequence[dict], extra_keys: Sequence[str] = ()) -> dict:
    """CompressAI's results JSON: one list per metric, points ordered by rate."""
    points = sorted(points, key=lambda p: p["bpp"])
    return {"name": name, "description": description,
            "results": {key: [p.get(key) for p in points] for key in (*METRICS, *extra_keys)}}


def _write_json(path: Path, obj: dict) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def _bd_rate_or_none(anchor: dict, test: dict, metric: str) -> float | None:
    try:
        return bd_rate(anchor["results"]["bpp"], anchor["results"][metric], test["results"]["bpp"],
                       test["results"][metric])
    except ValueError as e:  # too few points, missing MS-SSIM (small images), or no quality overlap
        print(f"no BD-rate for {test['name']} vs {anchor['name']} ({metric}): {e}")
        return None


@cli_entry
def main(argv=None) -> dict:
    cfg = parse_config(argv, default="codec/eval.yaml", description=__doc__.splitlines()[0])
    if not cfg["checkpoint"]:
        raise UserError("--checkpoint is required (comma-separate several for an RD curve)")
    checkpoints = [c.strip() for c in str(cfg["checkpoint"]).split(",") if c.strip()]
    baselines = [b.strip().lower() for b in str(cfg["baselines"] or "").split(",") if b.strip()]
    unknown = [b for b in baselines if b not in CODECS]
    if unknown:
        raise UserError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(CODECS)}")
    device = resolve_device(cfg["device"])
    paths = all_images(cfg["data"])
    if cfg["max_images"] > 0:
        paths = paths[: cfg["max_images"]]
    images = [load_image(p) for p in paths]
    names = [p.name for p in paths]

    entries = []
    for checkpoint in checkpoints:
        model, meta = load_model(checkpoint, device)
        result = evaluate_checkpoint(model, meta["model_name"], meta["model_config"], images)
        for record, name in zip(result["per_image"], names):
            record["name"] = name
        entries.append({"checkpoint": str(checkpoint), "model_name": meta["model_name"],
                        "model_config": meta["model_config"], "step": meta.get("step"), **result})
        m = result["mean"]
        print(f"{checkpoint}: {m['bpp']:.4f} bpp (likelihood {m['bpp-likelihood']:.4f}), "
              f"{m['psnr-rgb']:.2f} dB, enc {m['encoding_time']:.3f}s dec {m['decoding_time']:.3f}s")

    source = Path(cfg["data"]).resolve() if cfg["data"] else "scikit-image's built-in test photos"
    description = f"{len(images)} images of {source}, real bitstreams"
    report = compressai_layout(cfg["name"], description, [e["mean"] for e in entries], extra_keys=("bpp-likelihood",))
    report["checkpoints"] = sorted(entries, key=lambda e: e["mean"]["bpp"])
    out = Path(cfg["out"])
    curves = [report]
    report["baselines"], report["bd_rate"] = {}, {}
    for codec in baselines:
        points = evaluate_baseline(codec, images)
        curve = compressai_layout(CODECS[codec].label, f"Pillow {CODECS[codec].label}, {description}", points,
                                  extra_keys=("quality",))
        _write_json(out.with_name(f"{out.stem}.{codec}{out.suffix}"), curve)
        report["baselines"][codec] = curve
        curves.append(curve)
        # BD-rate of our curve against this baseline (negative = we need fewer bits for the same quality).
        report["bd_rate"][codec] = {metric: _bd_rate_or_none(curve, report, metric)
                                    for metric in ("psnr-rgb", "ms-ssim-rgb-db")}
        for metric, value in report["bd_rate"][codec].items():
            if value is not None:
                print(f"BD-rate of {cfg['name']} vs {CODECS[codec].label} ({metric}): {value:+.1f}%")
    _write_json(out, report)
    print(f"wrote {out}")
    if cfg["plot"]:
        plot_rd(curves, cfg["plot"])
        print(f"wrote {cfg['plot']}")
    return report


if __name__ == "__main__":
    main()
