"""Fuzzing the decoder: >= 1000 mutated files -> a valid image of the header's size, or UserError.

Never another exception, never a hang (each decode < 1 s), never a huge allocation. Mutations are of two
kinds: plain damage (truncation, bit flips, splices, header edits, garbage), which the CRC must refuse, and
forgeries whose CRC was recomputed, which reach the structural checks and CompressAI's rANS decoder.
"""
import random
import struct
import time
import zlib

import torch

from codec import bitstream
from codec.models import build_model
from metaopt.errors import UserError

NAME, CONFIG = "bmshj2018-hyperprior", {"N": 8, "M": 12}
MAX_PIXELS = 128 * 128  # forged sizes up to this decode (fast); larger ones must be refused


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g)
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)[0]


def _header_offsets(data: bytes) -> dict:
    """Byte offset and struct format of every header field of a valid file."""
    name_end = 6 + data[5]
    n_strings = data[name_end + 32]
    fields = {"version": (4, "<B"), "name_len": (5, "<B"), "N": (name_end, "<I"), "M": (name_end + 4, "<I"),
              "H": (name_end + 24, "<I"), "W": (name_end + 28, "<I"), "n_strings": (name_end + 32, "<B")}
    for i in range(n_strings):
        fields[f"length{i}"] = (name_end + 33 + 4 * i, "<I")
    return fields


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _mutations(data: bytes, other: bytes, rng: random.Random, count: int):
    """Yield (kind, mutated bytes, crc_recomputed)."""
    fields = _header_offsets(data)
    body, payload_start = data[:-4], max(off + struct.calcsize(fmt) for off, fmt in fields.values())
    interesting = [0, 1, 2, 63, 64, 65, 255, 2**16, 2**31 - 1, 2**32 - 1]
    for i in range(count):
        kind = ["truncate", "bitflip", "splice", "header", "garbage",
                "forged-header", "forged-payload", "forged-size"][i % 8]
        if kind == "truncate":
            yield kind, data[: rng.randrange(len(data))], False
        elif kind == "bitflip":
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            yield kind, bytes(mutated), False
        elif kind == "splice":
            yield kind, data[: rng.randrange(len(data))] + other[rng.randrange(len(other)):], False
        elif kind == "garbage":
            yield kind, bitstream.MAGIC + bytes(rng.randrange(256) for _ in range(rng.randrange(200))), False
        elif kind in ("header", "forged-header"):
            offset, fmt = fields[rng.choice(list(fields))]
            limit = 2 ** (8 * struct.calcsize(fmt)) - 1
            value = min(rng.choice(interesting + [rng.randrange(limit + 1)]), limit)
            mutated = bytearray(body)
            struct.pack_into(fmt, mutated, offset, value)
            yield kind, (_with_crc(bytes(mutated)) if kind.startswith("forged") else bytes(mutated) + data[-4:]), \
                kind.startswith("forged")
        elif kind == "forged-payload":
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 16)):
                mutated[rng.randrange(payload_start, len(mutated))] = rng.randrange(256)
            yield kind, _with_crc(bytes(mutated)), True
        else:  # forged-size: a plausible or absurd H/W with a valid CRC
            mutated = bytearray(body)
            h, w = rng.choice([(1, 1), (63, 200), (128, 128), (129, 128), (4000, 4000), (65535, 65535)])
            struct.pack_into("<II", mutated, fields["H"][0], h, w)
            yield kind, _with_crc(bytes(mutated)), True


def test_decoder_survives_1000_mutations():
    torch.manual_seed(0)
    model = build_model(NAME, **CONFIG).eval()
    data = bitstream.encode(model, NAME, CONFIG, _image(64, 64, seed=0))
    other = bitstream.encode(model, NAME, CONFIG, _image(64, 128, seed=1))
    rng = random.Random(1234)
    outcomes = {}
    start = time.perf_counter()
    for kind, mutated, forged in _mutations(data, other, rng, 1200):
        t0 = time.perf_counter()
        try:
            image = bitstream.decode(model, NAME, CONFIG, mutated, max_pixels=MAX_PIXELS)
        except UserError as e:
            assert "\n" not in str(e)
            result = "refused"
        else:
            header = bitstream.read_header(mutated)
            assert image.shape == (3, header.height, header.width)
            assert header.height * header.width <= MAX_PIXELS
            assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
            result = "decoded"
            # Unforged damage must never get through, except edits that happen to yield a valid file
            # (a no-op edit, or a splice at the same offset inside the shared header = the other file).
            assert forged or mutated in (data, other), kind
        assert time.perf_counter() - t0 < 1.0, kind
        outcomes[(kind, result)] = outcomes.get((kind, result), 0) + 1
    assert sum(outcomes.values()) == 1200
    # The fuzzer must actually reach the decoder with forged payloads, not only bounce off the CRC.
    assert outcomes.get(("forged-payload", "decoded"), 0) > 50, outcomes
    assert outcomes.get(("forged-size", "refused"), 0) > 0 and outcomes.get(("forged-size", "decoded"), 0) > 0
    assert time.perf_counter() - start < 60
