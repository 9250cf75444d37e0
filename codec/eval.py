"""Rate–distortion evaluation of codec checkpoints (and classical baselines) on real bitstreams.

    python -m codec.eval --checkpoint CKPT[,CKPT2...] [--data DIR] [--out results.json]
                         [--baselines jpeg,webp,avif,jpeg2000] [--plot rd.png]
                         [--save-reconstructions DIR] [--wandb]

Every image under DIR is coded, whatever its layout (train/test splits are for training). Per image: bpp from
the bytes of our file format (header included) and from the model's likelihoods (the difference is the entropy
coder's + header's overhead), PSNR on 8-bit rounded RGB, MS-SSIM (pytorch-msssim, data_range 255, standard
11-px window, so only for images whose short side is > 160 px) also in dB = -10·log10(1 - MS-SSIM),
encode/decode seconds.

The output JSON uses CompressAI's layout (`{"name", "description", "results": {"bpp": [...], "psnr-rgb":
[...], ...}}`, one entry per checkpoint, ordered by rate), so `python -m compressai.utils.plot` reads it;
per-image numbers go under "checkpoints". Each baseline is also written next to it as
`<out>.<codec>.json` in the same layout. `--save-reconstructions DIR` writes every decoded image and a crop
grid against JPEG and WebP (codec/gallery.py) under DIR/<index>-<checkpoint name>/. `--wandb` logs the RD
points (a table), the RD plot and the grids to a W&B run in the folder of `--out` (offline unless WANDB_MODE
says otherwise, as for training).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from codec import bitstream
from codec.baselines import CODECS, evaluate_baseline
from codec.data import all_images, load_image, pad_to_multiple
from codec.gallery import Reconstructions
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
                        images: Sequence[Path | torch.Tensor], on_decoded: Callable | None = None) -> dict:
    """Code every image through our file format and measure it.

    Returns {"mean": {...}, "per_image": [{...}, ...]} with the keys of METRICS plus "bytes",
    "bpp-likelihood", "height", "width", "name". Used by `codec.train` to log the final RD point.
    `on_decoded(index, pixels)` receives each decoded image ([H, W, 3] uint8) as it is measured.
    """
    was_training = model.training
    model.eval()
    try:
        per_image = _evaluate(model, model_name, model_config, images, on_decoded)
    finally:
        model.train(was_training)  # codec.train may call this mid-run
    if not per_image:
        raise UserError("no images to evaluate")
    return {"mean": mean_of(per_image), "per_image": per_image}


def _evaluate(model: nn.Module, model_name: str, model_config: dict, images, on_decoded) -> list[dict]:
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
        pixels = bitstream.to_uint8(x_hat)
        record = {"name": name, "height": h, "width": w, "bytes": len(data), "bpp": bitstream.bpp(len(data), h, w),
                  "bpp-likelihood": likelihood_bpp(model, x), **image_metrics(x, pixels),
                  "encoding_time": encoded - start, "decoding_time": decoded - encoded}
        per_image.append(record)
        if on_decoded is not None:
            on_decoded(i, pixels)
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


def _log_to_wandb(cfg: dict, report: dict, plot: Path, grids: dict[str, Path]) -> None:
    from metaopt.tracking import Run

    columns = ["curve", "setting", "bpp", "psnr-rgb", "ms-ssim-rgb-db"]
    rows = [[cfg["name"], e["checkpoint"], *(e["mean"][k] for k in columns[2:])] for e in report["checkpoints"]]
    for curve in report["baselines"].values():
        results = curve["results"]
        rows += [[curve["name"], f"quality {q:g}", *(results[k][i] for k in columns[2:])]
                 for i, q in enumerate(results["quality"])]
    run = Run(Path(cfg["out"]).parent, cfg, job_type="codec-eval", tags=["eval"])
    run.log_files(images={"rd_plot": plot, **{f"reconstructions/{tag}": path for tag, path in grids.items()}},
                  tables={"rd_points": (columns, rows)})
    run.summary({f"bd_rate/{codec}/{metric}": value for codec, metrics in report["bd_rate"].items()
                 for metric, value in metrics.items() if value is not None})
    run.finish()


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

    entries, grids = [], {}
    for index, checkpoint in enumerate(checkpoints):
        model, meta = load_model(checkpoint, device)
        gallery = None
        if cfg["save_reconstructions"]:
            gallery = Reconstructions(Path(cfg["save_reconstructions"]) / f"{index:02d}-{Path(checkpoint).stem}", names)
        result = evaluate_checkpoint(model, meta["model_name"], meta["model_config"], images, on_decoded=gallery)
        for record, name in zip(result["per_image"], names):
            record["name"] = name
        entries.append({"checkpoint": str(checkpoint), "model_name": meta["model_name"],
                        "model_config": meta["model_config"], "step": meta.get("step"), **result})
        if gallery is not None:
            grids[gallery.folder.name] = gallery.write_grid(images, result["per_image"])
            entries[-1]["reconstructions"] = str(gallery.folder)
            print(f"wrote {gallery.folder}/ ({len(images)} decoded images, grid.png)")
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
    plot = cfg["plot"] or (out.parent / "rd.png" if cfg["wandb"] else None)
    if plot:
        plot_rd(curves, plot)
        print(f"wrote {plot}")
    if cfg["wandb"]:
        _log_to_wandb(cfg, report, Path(plot), grids)
    return report


if __name__ == "__main__":
    main()
