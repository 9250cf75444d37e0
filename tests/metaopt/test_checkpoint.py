import os
import stat

import pytest

from metaopt import checkpoint


@pytest.fixture
def umask():
    """Set a umask for the test (process-wide, so restored afterwards)."""
    saved = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(saved)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_make_files_like_any_new_file(tmp_path, umask, mask):
    umask(mask)
    checkpoint.atomic_save({"step": 1}, tmp_path / "c.pt")
    checkpoint.atomic_write(tmp_path / "b.bin", b"old")
    checkpoint.atomic_write(tmp_path / "b.bin", lambda f: f.write(b"new"))  # replaces, same rule
    assert (tmp_path / "b.bin").read_bytes() == b"new" and checkpoint.load(tmp_path / "c.pt")["step"] == 1
    assert mode(tmp_path / "c.pt") == mode(tmp_path / "b.bin") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "c.pt"]
