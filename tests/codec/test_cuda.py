"""The codec's CUDA path: training, checkpoints that cross devices, and real entropy coding on a GPU.

Skipped where no CUDA device is present (CI); `bash experiments/gpu_check.sh` runs them on a GPU.
"""
import copy
import math

import pytest
import torch

from codec import bitstream
from codec.data import crop_to, pad_to_multiple
from codec.models import MODELS, PAD_MULTIPLE, build_model, load_model
from codec.train import main
from metaopt.tracking import read_metrics
from tests.codec.test_bitstream import CONFIG, smooth_image
from tests.codec.test_train import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _train(tmp_path, image_folder, name, *extra):
    main(["--data", str(image_folder), "--run-dir", str(tmp_path / name), *TINY, "--device", "cuda", *extra])
    return tmp_path / name


@pytest.mark.parametrize("optimizer", ["adam", "lstm"])
def test_training_on_cuda_gives_a_checkpoint_that_codes_on_cpu(tmp_path, image_folder, optimizer):
    run_dir = _train(tmp_path, image_folder, optimizer, "--steps", "4", "--optimizer", optimizer)
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4] and all(math.isfinite(r["loss"]) for r in rows)
    model, meta = load_model(run_dir / "best.pt", "cpu")  # written on the GPU, read without one
    assert meta["model_name"] == "bmshj2018-hyperprior-deep"
    x = smooth_image(64, 64)
    decoded = bitstream.decode(model, meta["model_name"], meta["model_config"],
                               bitstream.encode(model, meta["model_name"], meta["model_config"], x))
    assert decoded.shape == (3, 64, 64)


def test_resume_on_cuda_continues_the_run(tmp_path, image_folder):
    full = _train(tmp_path, image_folder, "full", "--steps", "8")
    part = _train(tmp_path, image_folder, "part", "--steps", "4")
    _train(tmp_path, image_folder, "part", "--steps", "8", "--resume")
    resumed, uninterrupted = read_metrics(part / "metrics.jsonl"), read_metrics(full / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [2, 4, 6, 8]
    # cuDNN's convolution backward sums in a non-fixed order, so runs agree to rounding, not bit for bit.
    for a, b in zip(resumed, uninterrupted):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


def test_entropy_coded_eval_at_the_end_of_a_cuda_run(tmp_path, image_folder):
    args = [a for a in TINY if a != "--no-eval-at-end"]
    main(["--data", str(image_folder), "--run-dir", str(tmp_path / "r"), *args, "--device", "cuda", "--steps", "2"])
    last = read_metrics(tmp_path / "r" / "metrics.jsonl")[-1]
    assert last["rd_bpp"] > 0 and math.isfinite(last["rd_psnr_rgb"])


def _model(name):
    torch.manual_seed(0)
    return build_model(name, **CONFIG).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_on_cuda_equals_the_models_own_reconstruction(name):
    model, x = _model(name).to(CUDA), smooth_image(37, 50)
    decoded = bitstream.decode(model, name, CONFIG, bitstream.encode(model, name, CONFIG, x))
    assert decoded.device.type == "cuda"
    padded, size = pad_to_multiple(x.to(CUDA), PAD_MULTIPLE)
    with torch.no_grad():
        out = model.compress(padded[None])
        reference = crop_to(model.decompress(out["strings"], out["shape"])["x_hat"][0], size)
    assert torch.equal(bitstream.to_uint8(decoded), bitstream.to_uint8(reference))


def _spread(model):
    """Scale up the last layers of g_a and h_s, so that an untrained model's latents span many symbols and its
    scales many of the Gaussian's CDF tables (at init they hit 2 tables, which no rounding could get wrong)."""
    with torch.no_grad():
        for transform in (model.g_a, getattr(model, "h_s", None)):
            if transform is not None:
                convs = [m for m in transform.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
                convs[-1].weight.mul_(20.0)
    return model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("encode_on,decode_on", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_file_coded_on_one_device_decodes_on_the_other(name, encode_on, decode_on):
    encoder = _spread(_model(name)).to(encode_on)
    decoder = copy.deepcopy(encoder).to(decode_on)
    x = smooth_image(128, 192, seed=3)
    data = bitstream.encode(encoder, name, CONFIG, x)
    if hasattr(encoder, "h_s"):
        assert len(set(bitstream._scale_indexes(encoder, _z_hat(encoder, x)).flatten().tolist())) > 10
    same = bitstream.to_uint8(bitstream.decode(encoder, name, CONFIG, data)).int()
    other = bitstream.to_uint8(bitstream.decode(decoder, name, CONFIG, data)).int()
    # The latents decode identically (a wrong table derails rANS: errors of up to 255 were measured before the
    # tables were made device-independent); the synthesis transform then runs in each device's float32 (TF32
    # convolutions on a GPU), which may move a pixel across an 8-bit rounding step.
    assert (other - same).abs().max() <= 2
    assert same.float().std() > 2  # a real image, not a saturated one


def _z_hat(model, x):
    padded, _ = pad_to_multiple(x.to(next(model.parameters()).device), PAD_MULTIPLE)
    with torch.no_grad():
        z = model.h_a(model.g_a(padded[None]).abs())
        return model.entropy_bottleneck.decompress(model.entropy_bottleneck.compress(z), z.shape[-2:])
