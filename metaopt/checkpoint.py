"""Atomic checkpoint files and exact-resume RNG state.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then renamed over
the old one (`os.replace` is atomic on POSIX), so a kill at any instant leaves either the old or the new
file, never a torn one.
"""
from __future__ import annotations

import hashlib
import os
import random
import secrets
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from metaopt.errors import UserError


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None]) -> None:
    """Write `data` (bytes, or a function that writes to a binary file) to `path` atomically.

    The temporary file is created like any new file, mode 0666 less the umask: `tempfile.mkstemp`'s 0600
    would survive the rename and hide checkpoints and outputs from the user's group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def remove_stale_temporaries(directory: str | Path) -> None:
    """Delete temporaries left by a process killed inside `atomic_write` (the real files are intact)."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load(path: str | Path, what: str = "checkpoint") -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - truncated/corrupted files raise many different types
        raise UserError(f"{what} {path} is corrupted or unreadable ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{what} {path} has an unexpected format")
    return obj


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
