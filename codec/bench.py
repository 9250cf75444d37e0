"""CPU encode/decode timing of our hyperprior codec (through our file format) vs CompressAI's own.

    python -m codec.bench [--config FILE] [--N 128 --M 192 --height 512 --width 768 --repeats 3]

Both sides are `bmshj2018-hyperprior` with the *same* random-init weights (timing does not depend on
training), on the same image, in the same process, at 1 thread and at torch's default thread count.
Ours = `codec.bitstream.encode/decode` (padding, header, fingerprint check, CRC, crop);
CompressAI = `ScaleHyperprior.compress/decompress` on the raw tensor. Prints one JSON object.
"""
from __future__ import annotations

import json
import time

import torch
from compressai.models import ScaleHyperprior

from codec import bitstream
from codec.models import build_model, latent_stride
from metaopt.config import parse_config
from metaopt.errors import UserError, cli_entry

MODEL = "bmshj2018-hyperprior"


def min_times(fns: dict, repeats: int) -> dict:
    """Minimum wall time of each function over `repeats` rounds, after one warm-up call each. Calls are
    interleaved round by round so that load from other processes hits both sides alike."""
    for fn in fns.values():
        fn()
    times = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def measure(N: int, M: int, height: int, width: int, repeats: int) -> dict:
    torch.manual_seed(0)
    ours = build_model(MODEL, N, M).eval()
    reference = ScaleHyperprior(N, M).eval()
    reference.load_state_dict(ours.state_dict())
    reference.update(force=True)
    config = {"N": N, "M": M}
    x = torch.rand(3, height, width)
    data = bitstream.encode(ours, MODEL, config, x)  # also builds our CDF tables once, outside the timing
    with torch.no_grad():
        ref_out = reference.compress(x[None])

    def ref_decode():
        with torch.no_grad():
            reference.decompress(ref_out["strings"], ref_out["shape"])

    def ref_encode():
        with torch.no_grad():
            reference.compress(x[None])

    times = min_times({
        "ours_encode_s": lambda: bitstream.encode(ours, MODEL, config, x),
        "compressai_encode_s": ref_encode,
        "ours_decode_s": lambda: bitstream.decode(ours, MODEL, config, data),
        "compressai_decode_s": ref_decode,
    }, repeats)
    times["encode_ratio_ours_over_compressai"] = times["ours_encode_s"] / times["compressai_encode_s"]
    times["decode_ratio_ours_over_compressai"] = times["ours_decode_s"] / times["compressai_decode_s"]
    times["file_bytes_ours"] = len(data)
    times["payload_bytes_compressai"] = sum(len(s[0]) for s in ref_out["strings"])
    return times


@cli_entry
def main(argv=None) -> dict:
    cfg = parse_config(argv, "codec/bench.yaml", __doc__.splitlines()[0])
    if min(cfg["N"], cfg["M"], cfg["height"], cfg["width"], cfg["repeats"]) <= 0:
        raise UserError("N, M, height, width and repeats must be positive")
    stride = latent_stride(MODEL)
    if cfg["height"] % stride or cfg["width"] % stride:
        raise UserError(f"height and width must be multiples of {stride} (CompressAI's compress does not pad)")
    default_threads = torch.get_num_threads()
    report = {"model": MODEL, "N": cfg["N"], "M": cfg["M"], "image": f"{cfg['width']}x{cfg['height']}",
              "weights": "random init (coding time does not depend on training)", "repeats": cfg["repeats"],
              "statistic": "min wall seconds over repeats", "device": "cpu"}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        report[f"threads_{threads}"] = measure(cfg["N"], cfg["M"], cfg["height"], cfg["width"], cfg["repeats"])
    torch.set_num_threads(default_threads)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
