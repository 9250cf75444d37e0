"""Our file format: exact round trips for every model, and every kind of bad file refused clearly."""
import struct
import zlib

import pytest
import torch

from codec import bitstream
from codec.data import crop_to, list_images, load_image, pad_to_multiple
from codec.eval import evaluate_checkpoint
from codec.models import MODELS, PAD_MULTIPLE, build_model, split_parameters
from metaopt.errors import UserError

CONFIG = {"N": 8, "M": 12}


def smooth_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)[0]


def tiny(name="bmshj2018-hyperprior", seed=0):
    torch.manual_seed(seed)
    return build_model(name, **CONFIG).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_equals_the_models_own_quantized_reconstruction(name):
    model, x = tiny(name), smooth_image(37, 50)
    data = bitstream.encode(model, name, CONFIG, x)
    decoded = bitstream.decode(model, name, CONFIG, data)

    padded, size = pad_to_multiple(x, PAD_MULTIPLE)
    with torch.no_grad():
        out = model.compress(padded[None])
        reference = crop_to(model.decompress(out["strings"], out["shape"])["x_hat"][0], size)
    assert decoded.shape == (3, 37, 50)
    assert torch.equal(bitstream.to_uint8(decoded), bitstream.to_uint8(reference))
    # The file holds exactly CompressAI's strings plus our header and CRC.
    payload = sum(len(s[0]) for s in out["strings"])
    assert payload < len(data) <= payload + 80
    assert bitstream.bpp(len(data), 37, 50) == pytest.approx(8 * len(data) / (37 * 50))


def test_fingerprint_tracks_weights_not_objects():
    a, b = tiny(seed=0), tiny(seed=0)
    assert bitstream.prepare(a) == bitstream.prepare(b)
    assert bitstream.prepare(a) != bitstream.prepare(tiny(seed=1))
    before = bitstream.prepare(a)
    with torch.no_grad():
        next(a.parameters()).add_(1e-3)  # an in-place update, like an optimizer step
    assert bitstream.prepare(a) != before


def _refuse(data, match, model=None, name="bmshj2018-hyperprior", config=CONFIG, **kw):
    with pytest.raises(UserError, match=match):
        bitstream.decode(model or tiny(), name, config, data, **kw)


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_bad_files_are_refused_with_clear_messages():
    model = tiny()
    data = bitstream.encode(model, "bmshj2018-hyperprior", CONFIG, smooth_image(64, 64))
    name_end = 6 + len("bmshj2018-hyperprior")
    hw_at = name_end + 8 + 16
    _refuse(b"", "empty", model)
    _refuse(b"\x89PNG\r\n\x1a\n" + bytes(100), "magic", model)
    _refuse(data[:4] + b"\x07" + data[5:], "version 7", model)
    _refuse(data[:10], "truncated", model)
    _refuse(data[:-1], "truncated", model)
    _refuse(data + b"\0", "unexpected bytes", model)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    _refuse(bytes(flipped), "checksum", model)
    # A forged size with a valid CRC: refused before anything is allocated.
    huge = bytearray(data[:-4])
    huge[hw_at: hw_at + 8] = struct.pack("<II", 60000, 60000)
    _refuse(_with_crc(bytes(huge)), "invalid image size", model)
    zero = bytearray(data[:-4])
    zero[hw_at: hw_at + 8] = struct.pack("<II", 0, 64)
    _refuse(_with_crc(bytes(zero)), "invalid image size", model)
    _refuse(data, "above the limit", model, max_pixels=32 * 32)


def test_file_from_another_model_config_or_checkpoint_is_refused():
    data = bitstream.encode(tiny(), "bmshj2018-hyperprior", CONFIG, smooth_image(64, 64))
    _refuse(data, "made by model 'bmshj2018-hyperprior'", tiny("bmshj2018-factorized"), name="bmshj2018-factorized")
    other_config = {"N": 8, "M": 16}
    _refuse(data, "N=8 M=12", build_model("bmshj2018-hyperprior", **other_config), config=other_config)
    _refuse(data, "different checkpoint", tiny(seed=1))


@pytest.fixture(scope="module")
def trained_hyperprior():
    """A tiny hyperprior trained briefly (network Adam + aux loss), so its entropy models fit real data
    (300 steps, ~6 s on one CPU thread)."""
    from codec.data import CropBatches

    model = tiny()
    net, aux = split_parameters(model)
    opt, aux_opt = torch.optim.Adam(net, 3e-3), torch.optim.Adam(aux, 1e-2)
    batches = CropBatches(list_images(None, "train"), 64, 8, seed=0)
    model.train()
    for step in range(300):
        x = batches[step]
        out = model(x)
        bpp = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()) / (x.shape[0] * 64 * 64)
        loss = bpp + 0.01 * 255**2 * torch.mean((out["x_hat"] - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        aux_loss = model.aux_loss()
        aux_opt.zero_grad()
        aux_loss.backward()
        aux_opt.step()
    return model.eval()


def test_file_bpp_is_within_a_few_percent_of_likelihood_bpp(trained_hyperprior):
    image = load_image(list_images(None, "test")[0])  # a real photo of a few hundred pixels a side
    h, w = image.shape[-2:]
    record = evaluate_checkpoint(trained_hyperprior, "bmshj2018-hyperprior", CONFIG, [image])["per_image"][0]
    strings = bitstream.read_header(bitstream.encode(trained_hyperprior, "bmshj2018-hyperprior", CONFIG, image)).strings
    payload_bpp = bitstream.bpp(sum(map(len, strings)), h, w)
    header_bytes = record["bytes"] - sum(map(len, strings))
    assert record["bpp"] > 0.01  # a real, non-degenerate rate
    # rANS vs the model's own -log2 likelihoods: a few % apart (8-byte flush per stream, 16-bit CDFs).
    # Needs a model trained a few hundred steps: a barely trained one mispredicts many symbols, which cost
    # up to ~30 bits in the likelihood but at most 16 bits (+ bypass) in rANS, so the file comes out smaller.
    assert abs(payload_bpp / record["bpp-likelihood"] - 1) < 0.03, record
    # Our container adds a fixed-size header: magic..lengths + CRC, 71 bytes for this model name.
    assert header_bytes == 71
    assert abs(record["bpp"] / record["bpp-likelihood"] - 1) < 0.03 + bitstream.bpp(71, h, w) / record["bpp-likelihood"]
