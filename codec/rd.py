"""Rate–distortion curves: the RD plot and the Bjøntegaard delta rate (BD-rate).

BD-rate (Bjøntegaard, VCEG-M33): fit log(rate) as a function of quality for both curves, integrate the
difference over the quality interval both cover, and report the average rate difference in percent
(negative = the test curve needs fewer bits for the same quality). Two fits are offered: "cubic" (the
original third-order polynomial, needs ≥ 4 points per curve) and "pchip" (piecewise-cubic Hermite, as in
the later VCEG/JVET reference spreadsheets; stable with few points and never overshoots between them).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from scipy.interpolate import PchipInterpolator

from metaopt.checkpoint import atomic_write


def _curve(rates: Sequence[float | None], quality: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(quality, log rate) sorted by quality, points with a missing value dropped."""
    pairs = sorted((q, math.log(r)) for r, q in zip(rates, quality) if r is not None and q is not None and r > 0)
    q = np.array([p[0] for p in pairs], dtype=float)
    if len(q) < 2:
        raise ValueError(f"need at least 2 RD points per curve, got {len(q)}")
    if np.any(np.diff(q) <= 0):
        raise ValueError("quality values must be distinct")
    return q, np.array([p[1] for p in pairs], dtype=float)


def _integral(q: np.ndarray, log_rate: np.ndarray, lo: float, hi: float, method: str) -> float:
    if method == "pchip":
        return float(PchipInterpolator(q, log_rate).integrate(lo, hi))
    if method == "cubic":
        if len(q) < 4:
            raise ValueError(f"the cubic fit needs at least 4 RD points per curve, got {len(q)}")
        antiderivative = np.polyint(np.polyfit(q, log_rate, 3))
        return float(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    raise ValueError(f"unknown BD-rate method {method!r} (cubic or pchip)")


def bd_rate(anchor_rate, anchor_quality, test_rate, test_quality, method: str = "pchip") -> float:
    """Average rate difference of `test` relative to `anchor` at equal quality, in percent."""
    q1, r1 = _curve(anchor_rate, anchor_quality)
    q2, r2 = _curve(test_rate, test_quality)
    lo, hi = max(q1[0], q2[0]), min(q1[-1], q2[-1])
    if lo >= hi:
        raise ValueError(f"the curves do not overlap in quality ({q1[0]:.2f}-{q1[-1]:.2f} vs {q2[0]:.2f}-{q2[-1]:.2f})")
    mean_log_ratio = (_integral(q2, r2, lo, hi, method) - _integral(q1, r1, lo, hi, method)) / (hi - lo)
    return (math.exp(mean_log_ratio) - 1) * 100


def rd_figure(curves: Sequence[dict]) -> Figure:
    """Two panels, PSNR and MS-SSIM (dB) vs bpp, one line per CompressAI-layout result dict, one legend."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")  # no pyplot: no global backend or GUI state
    lines = {}
    for ax, metric, label in zip(fig.subplots(1, 2), ("psnr-rgb", "ms-ssim-rgb-db"), ("PSNR RGB [dB]", "MS-SSIM [dB]")):
        for index, curve in enumerate(curves):
            points = [(b, v) for b, v in zip(curve["results"]["bpp"], curve["results"][metric]) if v is not None]
            if points:  # a fixed colour per curve: a curve missing from one panel must not shift the others'
                lines[curve["name"]], = ax.plot(*zip(*points), marker="o", markersize=3, color=f"C{index}")
        ax.set(xlabel="bits per pixel", ylabel=label, title=f"{label.split(' [')[0]} vs rate")
        ax.grid(alpha=0.3)
    if lines:  # right of both panels: inside an axes it can cover a curve
        fig.legend(lines.values(), lines.keys(), loc="outside right upper", fontsize=8)
    return fig


def plot_rd(curves: Sequence[dict], path: str | Path) -> None:
    buffer = io.BytesIO()
    rd_figure(curves).savefig(buffer, format="png", dpi=120)
    atomic_write(path, buffer.getvalue())
