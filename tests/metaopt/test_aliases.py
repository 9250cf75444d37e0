"""The old commands `python -m metaopt.compare` / `metaopt.bench` still run the studies that moved to `studies/`."""
import subprocess
import sys

import pytest


@pytest.mark.parametrize("old, description", [("metaopt.compare", "Compare the learned LSTM optimizer"),
                                              ("metaopt.bench", "Step time, update time and peak memory")])
def test_old_command_runs_the_moved_study(old, description):
    proc = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert description in " ".join(proc.stdout.split())
