"""The package as a user installs it: a wheel (not editable) run from a directory outside the repository."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import write_image

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, env=None):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_install_runs_the_clis_from_another_directory(tmp_path):
    # Build from a copy, so that the build leaves nothing in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    for name in ("codec", "metaopt", "studies", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
         tmp_path, offline)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("metaopt/configs/")}
    assert shipped == {"metaopt/configs/" + p.relative_to(ROOT / "configs").as_posix()
                       for p in (ROOT / "configs").rglob("*.yaml")}  # every config file, no folder forgotten
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)], tmp_path, offline)

    work = tmp_path / "elsewhere"
    (work / "images").mkdir(parents=True)
    for i in range(2):
        write_image(work / "images" / f"{i}.png", 64, 80, seed=i)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    python = [sys.executable, "-m"]
    where = _run([sys.executable, "-c", "import codec, metaopt.config as c; print(codec.__file__, c.CONFIG_DIR)"],
                 work, env).split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the installed copy, not the checkout
    _run([*python, "codec.train", "--steps", "2", "--crop", "64", "--N", "8", "--M", "8", "--batch-size", "1",
          "--val-crop", "64", "--eval-at-end", "false", "--threads", "1", "--data", "images", "--run-dir", "run"],
         work, env)
    _run([*python, "codec", "compress", "images/0.png", "x.moc", "--checkpoint", "run/best.pt"], work, env)
    _run([*python, "codec", "decompress", "x.moc", "x.png", "--checkpoint", "run/best.pt"], work, env)
    assert (work / "x.png").read_bytes()[:4] == b"\x89PNG"
    # A README command naming `configs/...` finds the shipped copy.
    assert "[sweep 12/12]" in _run([*python, "metaopt.sweep", "configs/sweeps/adam_lr.yaml", "--dry-run"], work, env)
