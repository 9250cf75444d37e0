"""Our compressed-image file format around CompressAI's rANS strings.

Layout (all integers little-endian):

    magic      4 bytes  b"\\x89MOC"  (high bit set: a text-mode transfer that mangles it is caught at once)
    version    u8
    name_len   u8, then the model name (UTF-8)
    N, M       u32, u32
    weights    16 bytes  fingerprint of the checkpoint's parameters (see `fingerprint`)
    H, W       u32, u32  original image size (before padding to PAD_MULTIPLE)
    n_strings  u8, then n_strings x u32 string lengths
    strings    the entropy-coded latents (hyperprior: y then z; factorized: y)
    crc32      u32 over everything before it

The CRC is there because CompressAI's C++ rANS decoder does no bounds checking: a corrupted string makes
it read past the end of its buffer. With the CRC, an accidentally damaged file is refused before any
payload reaches the decoder. It is not a defence against a deliberately forged file (the CRC can be
recomputed); for those, `decode` still caps the image size before allocating and appends a zero guard to
each string so that the decoder's usual one-word-per-symbol reads stay inside memory we own.

bpp = 8 * file_bytes / (H * W): the whole file counts, header included.
"""
from __future__ import annotations

import copy
import hashlib
import struct
import weakref
import zlib
from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyModel
from torch import nn

from codec.data import crop_to, pad_to_multiple
from codec.models import PAD_MULTIPLE, is_hyperprior, latent_stride
from metaopt.errors import UserError

MAGIC = b"\x89MOC"
VERSION = 1
FINGERPRINT_BYTES = 16
# Same cap as codec.data's decompression-bomb limit; checked before anything is allocated.
MAX_PIXELS = 64 * 1024 * 1024
MAX_SIDE = 65535

_FIXED = struct.Struct("<4sBB")  # magic, version, name_len
_CONFIG = struct.Struct("<II16sIIB")  # N, M, fingerprint, H, W, n_strings
_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Header:
    model_name: str
    N: int
    M: int
    fingerprint: bytes
    height: int
    width: int
    strings: tuple[bytes, ...]


def bpp(num_bytes: int, height: int, width: int) -> float:
    return 8.0 * num_bytes / (height * width)


# model -> (parameter versions, fingerprint, hyper-decoder copy). Parameter `_version` counters change on every
# in-place update (optimizer steps, load_state_dict), so a model that keeps training is re-prepared automatically.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _param_versions(model: nn.Module) -> tuple:
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def fingerprint(model: nn.Module) -> bytes:
    """Hash of every parameter (name, dtype, shape, bytes). Buffers are left out: the CDF tables are
    derived from the parameters by `update()`, and whether they were saved in the checkpoint must not
    change the fingerprint."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        t = p.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.digest()[:FINGERPRINT_BYTES]


# Files must decode on any device, whichever one coded them. CompressAI computes two things that pick the rANS
# tables in float32 on the model's device, where a GPU and a CPU round differently: the CDF tables (`update()`) and
# the hyperprior's scales (`h_s`). One CDF entry off by one, or one scale on the other side of a table boundary,
# and the decoder reads garbage; measured on an H200 for the factorized models: a file coded on the GPU decoded
# to noise on the CPU, and the other way round. So both are computed here on the CPU, the scales in float64.


def _update_tables_on_cpu(model: nn.Module) -> None:
    entropy_models = [m for m in model.modules() if isinstance(m, EntropyModel)]
    device = next(model.parameters()).device
    for m in entropy_models:
        m.cpu()
    try:
        model.update(force=True)
    finally:
        for m in entropy_models:
            m.to(device)


def prepare(model: nn.Module) -> bytes:
    """Build the entropy coders' CDF tables (`update`) and fingerprint the weights, once per weight state.

    `update(force=True)` rather than trusting CDF buffers loaded from a checkpoint: those may be stale
    (saved before the last training steps), and encoder and decoder must derive the same tables.
    """
    cached = _prepared.get(model)
    if cached is not None and cached[0] == _param_versions(model):
        return cached[1]
    with torch.no_grad():
        _update_tables_on_cpu(model)
    portable = None
    if is_hyperprior(model):  # CPU float64 copies: `_scale_indexes`
        portable = (copy.deepcopy(model.h_s).to("cpu", torch.float64),
                    copy.deepcopy(model.gaussian_conditional).to("cpu", torch.float64))
    digest = fingerprint(model)
    _prepared[model] = (_param_versions(model), digest, portable)
    return digest


def _scale_indexes(model: nn.Module, z_hat: torch.Tensor) -> torch.Tensor:
    """The Gaussian CDF table of each latent, from scales computed the same on every device (see above).
    z_hat itself is exact everywhere: decoded integers plus the stored medians."""
    h_s, gaussian = _prepared[model][2]
    scales = h_s(z_hat.to("cpu", torch.float64))
    return gaussian.build_indexes(scales).to(z_hat.device)


def _compress(model: nn.Module, x: torch.Tensor) -> dict:
    """CompressAI's `compress`, with the hyperprior's table indexes from `_scale_indexes`."""
    if not is_hyperprior(model):
        return model.compress(x)
    y = model.g_a(x)
    z = model.h_a(torch.abs(y))
    z_strings = model.entropy_bottleneck.compress(z)
    z_hat = model.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
    y_strings = model.gaussian_conditional.compress(y, _scale_indexes(model, z_hat))
    return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}


def _decompress(model: nn.Module, strings: list, shape: tuple[int, int]) -> torch.Tensor:
    """CompressAI's `decompress` (returns x_hat), with the hyperprior's table indexes from `_scale_indexes`."""
    if not is_hyperprior(model):
        return model.decompress(strings, shape)["x_hat"]
    z_hat = model.entropy_bottleneck.decompress(strings[1], shape)
    y_hat = model.gaussian_conditional.decompress(strings[0], _scale_indexes(model, z_hat), z_hat.dtype)
    return model.g_s(y_hat).clamp_(0, 1)


def _latent_shape(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Spatial size of the latent CompressAI's `decompress` expects: y (/16) or, for hyperpriors, z (/64)."""
    stride = latent_stride(model)
    padded = [-(-side // PAD_MULTIPLE) * PAD_MULTIPLE for side in (height, width)]
    return padded[0] // stride, padded[1] // stride


def encode(model: nn.Module, model_name: str, model_config: dict, x: torch.Tensor) -> bytes:
    """Compress an image [3, H, W] (or [1, 3, H, W]) in [0, 1] into our file format."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"encode takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected an RGB image [3, H, W], got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height * width > MAX_PIXELS or max(height, width) > MAX_SIDE:
        raise UserError(f"image {width}x{height} is larger than the supported {MAX_PIXELS} pixels")
    digest = prepare(model)
    device = next(model.parameters()).device
    padded, _ = pad_to_multiple(x.to(device), PAD_MULTIPLE)
    with torch.no_grad():
        out = _compress(model, padded[None])
    if tuple(out["shape"]) != _latent_shape(model, height, width):  # guards the decoder's derivation
        raise AssertionError(f"latent shape {tuple(out['shape'])} != {_latent_shape(model, height, width)}")
    strings = [s[0] for s in out["strings"]]
    name = model_name.encode()
    body = b"".join([
        _FIXED.pack(MAGIC, VERSION, len(name)), name,
        _CONFIG.pack(model_config["N"], model_config["M"], digest, height, width, len(strings)),
        *(_U32.pack(len(s)) for s in strings),
        *strings,
    ])
    return body + _U32.pack(zlib.crc32(body))


def read_header(data: bytes) -> Header:
    """Parse and validate the structure of a file: magic, version, field sizes vs file size, checksum."""
    if len(data) < _FIXED.size:
        raise UserError(f"not a compressed image: only {len(data)} bytes" if data else "file is empty")
    magic, version, name_len = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise UserError("not a compressed image of this codec (wrong magic bytes)")
    if version != VERSION:
        raise UserError(f"unsupported file format version {version} (this program reads version {VERSION})")
    pos = _FIXED.size
    if len(data) < pos + name_len + _CONFIG.size:
        raise UserError("file is truncated (header incomplete)")
    try:
        name = data[pos: pos + name_len].decode()
    except UnicodeDecodeError:
        raise UserError("file is corrupted (model name is not valid text)") from None
    pos += name_len
    n, m, digest, height, width, n_strings = _CONFIG.unpack_from(data, pos)
    pos += _CONFIG.size
    if len(data) < pos + 4 * n_strings:
        raise UserError("file is truncated (header incomplete)")
    lengths = [_U32.unpack_from(data, pos + 4 * i)[0] for i in range(n_strings)]
    pos += 4 * n_strings
    expected = pos + sum(lengths) + 4
    if len(data) < expected:
        raise UserError(f"file is truncated: header announces {expected} bytes, file has {len(data)}")
    if len(data) > expected:
        raise UserError(f"file is corrupted: {len(data) - expected} unexpected bytes after the data")
    (crc,) = _U32.unpack_from(data, expected - 4)
    if crc != zlib.crc32(data[: expected - 4]):
        raise UserError("file is corrupted (checksum mismatch)")
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE and height * width <= MAX_PIXELS):
        raise UserError(f"file declares an invalid image size {width}x{height}")
    strings = []
    for length in lengths:
        strings.append(data[pos: pos + length])
        pos += length
    return Header(name, n, m, digest, height, width, tuple(strings))


def decode(model: nn.Module, model_name: str, model_config: dict, data: bytes,
           max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decompress a file made by `encode` with the same checkpoint -> float image [3, H, W] in [0, 1].

    `max_pixels` caps the declared image size (checked before decoding allocates anything).
    """
    header = read_header(data)
    if header.model_name != model_name:
        raise UserError(f"file was made by model {header.model_name!r}, but the checkpoint is {model_name!r}")
    if (header.N, header.M) != (model_config["N"], model_config["M"]):
        raise UserError(f"file was made by {model_name} N={header.N} M={header.M}, but the checkpoint has "
                        f"N={model_config['N']} M={model_config['M']}")
    if header.fingerprint != prepare(model):
        raise UserError("file was made by a different checkpoint of the same model (weights fingerprint differs)")
    if header.height * header.width > max_pixels:
        raise UserError(f"file declares a {header.width}x{header.height} image, above the limit of {max_pixels} pixels")
    n_strings = 2 if is_hyperprior(model) else 1
    if len(header.strings) != n_strings:
        raise UserError(f"file is corrupted: {len(header.strings)} coded streams, {model_name} needs {n_strings}")
    shape = _latent_shape(model, header.height, header.width)
    # Zero guard so that a forged payload's overreads land in our buffer: one u32 per decoded symbol is
    # the decoder's normal maximum, and y (M channels, 16x the z area in a hyperprior) has the most symbols.
    y_symbols = model_config["M"] * shape[0] * shape[1] * (16 if is_hyperprior(model) else 1)
    guard = bytes(4 * y_symbols + 64)
    with torch.no_grad():
        x_hat = _decompress(model, [[s + guard] for s in header.strings], shape)[0]
    # A forged payload can decode to huge latents and hence NaN pixels; the output must still be an image.
    x_hat = torch.nan_to_num(x_hat, nan=0.0).clamp_(0, 1)
    return crop_to(x_hat, (header.height, header.width))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[3, H, W] float in [0, 1] -> [H, W, 3] uint8 on CPU."""
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu()

