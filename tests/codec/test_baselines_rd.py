"""Pillow baselines (measured like our codec) and the BD-rate / RD-plot code, against known answers."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from codec import bitstream
from codec.baselines import CODECS, code_image, evaluate_baseline
from codec.data import center_crop, list_images, load_image
from codec.rd import bd_rate, plot_rd
from metaopt.errors import UserError

ANCHOR_RATE = [0.12, 0.29, 0.65, 1.83]  # CompressAI factorized prior on Kodak (its published q1, q3, q5, q8 points)
ANCHOR_PSNR = [26.91, 29.61, 32.94, 39.57]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
@pytest.mark.parametrize("factor", [0.8, 1.25, 0.5])
def test_bd_rate_of_a_curve_scaled_by_a_constant_rate_factor(method, factor):
    test_rate = [r * factor for r in ANCHOR_RATE]
    assert bd_rate(ANCHOR_RATE, ANCHOR_PSNR, test_rate, ANCHOR_PSNR, method) == pytest.approx((factor - 1) * 100)
    # Swapping anchor and test inverts the factor.
    assert bd_rate(test_rate, ANCHOR_PSNR, ANCHOR_RATE, ANCHOR_PSNR, method) == pytest.approx((1 / factor - 1) * 100)


def test_bd_rate_integrates_only_over_the_common_quality_range():
    # log-rate linear in quality: R = exp(q/4) for the anchor, R = exp((q - 1)/4) for the test, i.e. the test
    # reaches every quality one dB earlier = a constant factor exp(-1/4) in rate, whatever the ranges.
    q_anchor, q_test = np.array([25.0, 28, 31, 34, 37]), np.array([29.0, 32, 35, 38, 41])
    expected = (math.exp(-0.25) - 1) * 100
    for method in ("pchip", "cubic"):
        value = bd_rate(np.exp(q_anchor / 4), q_anchor, np.exp((q_test - 1) / 4), q_test, method)
        assert value == pytest.approx(expected, abs=1e-6)


def test_bd_rate_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="overlap"):
        bd_rate([0.1, 0.2], [20, 21], [0.1, 0.2], [30, 31])
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate([0.1, None], [20, None], [0.1, 0.2], [20, 21])
    with pytest.raises(ValueError, match="at least 4"):
        bd_rate([0.1, 0.2, 0.4], [20, 22, 24], [0.1, 0.2, 0.4], [20, 22, 24], method="cubic")


@pytest.fixture(scope="module")
def photo():
    return center_crop(load_image(list_images(None, "test")[0]), 176)  # real photo, > 160 px for MS-SSIM


@pytest.mark.parametrize("name", list(CODECS))
def test_baseline_sweep_is_measured_like_our_codec(name, photo):
    qualities = CODECS[name].qualities[1::2]  # 3-4 points keep it fast
    points = evaluate_baseline(name, [photo], qualities)
    assert [p["quality"] for p in points] == list(qualities)
    bpps, psnrs = [p["bpp"] for p in points], [p["psnr-rgb"] for p in points]
    assert bpps == sorted(bpps) and psnrs == sorted(psnrs), points  # more rate, more quality
    assert 0.02 < bpps[0] and bpps[-1] < 8
    assert all(0 < p["ms-ssim-rgb"] < 1 and p["ms-ssim-rgb-db"] > 0 for p in points)
    # bpp comes from the real encoded bytes, and PSNR from the 8-bit pixels Pillow decodes.
    image = bitstream.to_uint8(photo).numpy()
    data, decoded, _, _ = code_image(CODECS[name], image, qualities[0])
    assert points[0]["bpp"] == pytest.approx(8 * len(data) / (176 * 176))
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (176, 176)
    mse = np.mean((image.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    assert points[0]["psnr-rgb"] == pytest.approx(10 * np.log10(255**2 / mse))


def test_unknown_baseline_is_a_user_error(photo):
    with pytest.raises(UserError, match="unknown baseline"):
        evaluate_baseline("bpg", [photo])


def test_plot_rd_writes_a_two_panel_png(tmp_path):
    curve = {"name": "anchor", "results": {"bpp": ANCHOR_RATE, "psnr-rgb": ANCHOR_PSNR,
                                           "ms-ssim-rgb-db": [10.0, 12.0, None, 16.0]}}
    path = tmp_path / "plots" / "rd.png"
    plot_rd([curve, {**curve, "name": "other"}], path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > img.height  # two panels side by side
    assert not list(path.parent.glob(".rd.png.*"))


def test_rd_legend_sits_outside_the_curves():
    from codec.rd import rd_figure

    curve = {"name": "ours", "results": {"bpp": ANCHOR_RATE, "psnr-rgb": ANCHOR_PSNR, "ms-ssim-rgb-db": [None] * 4}}
    fig = rd_figure([curve, {**curve, "name": "JPEG", "results": {**curve["results"], "ms-ssim-rgb-db": [9, 11, 13, 15]}}])
    fig.canvas.draw()
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ours", "JPEG"]
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    # The same curve has the same colour in both panels even when it is missing from one.
    jpeg_lines = [line for ax in fig.axes for line in ax.get_lines() if line.get_color() == "C1"]
    assert len(jpeg_lines) == 2
