"""Data-parallel meta-training under torchrun (metaopt/distributed.py): real processes, gloo on CPU."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from metaopt.distributed import main as benchmark
from metaopt.meta_train import main
from metaopt.tracking import read_metrics
from tests.metaopt.test_meta_train import TINY

ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
# Two streams with the same seed must train different tasks, so the loss scale (drawn per stream) is on.
ARGS = TINY + ["--val-tasks", "3", "--loss-scale", "3", "--threads", "1", "--collective-timeout", "30"]
# 2 ranks sum two meta-gradients, one process adds its two streams' in the same (commutative) addition: equal in
# every bit, measured; asserted to this tolerance so another reduction order (more ranks) would pass too.
RTOL = 1e-6


def torchrun(*args, processes=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "metaopt.meta_train", *args]


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in read_metrics(run_dir / "metrics.jsonl")]


def _assert_same_training(a: Path, b: Path):
    """Same logged numbers, the same weights and the same meta-optimizer state (a function of every meta-gradient)."""
    rows_a, rows_b = _rows(a), _rows(b)
    assert [sorted(r) for r in rows_a] == [sorted(r) for r in rows_b]
    for ra, rb in zip(rows_a, rows_b):
        assert ra == pytest.approx(rb, rel=RTOL), (ra, rb)
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (a, b))
    assert ca["meta_step"] == cb["meta_step"]
    for key in ca["net"]:
        torch.testing.assert_close(ca["net"][key], cb["net"][key], rtol=RTOL, atol=1e-9)
    for sa, sb in zip(ca["meta_opt"]["state"].values(), cb["meta_opt"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=RTOL, atol=1e-12)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The benchmark's runs: `torchrun --standalone --nproc_per_node K -m metaopt.meta_train --task regression
    --meta-steps 6 ...` at K = 1 and 2 (one launch each: starting processes is most of this file's time), and the
    same training in this process without torchrun: one task per step, and two."""
    root = tmp_path_factory.mktemp("dist")
    report = benchmark(["--world-sizes", "1,2", "--out-dir", str(root), "--independent", *ARGS, "--task",
                        "regression", "--meta-steps", "6"])
    for tasks_per_step in (1, 2):
        main(ARGS + ["--meta-steps", "6", "--tasks-per-step", str(tasks_per_step),
                     "--run-dir", str(root / f"plain{tasks_per_step}")])
    return root, report


def test_two_processes_train_like_one_process_with_two_tasks_per_step(launched):
    root, _ = launched
    run = root / "world2"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml", "lopt.pt", "metrics.jsonl"]
    assert yaml.safe_load((run / "config.yaml").read_text())["world_size"] == 2
    assert [r["step"] for r in _rows(run) if "meta_loss" in r] == [1, 2, 3, 4, 5, 6]
    _assert_same_training(run, root / "plain2")
    streams = torch.load(run / "checkpoint.pt", weights_only=False)["streams"]
    assert len(streams) == 2 and not torch.equal(streams[0]["task"]["params"][0], streams[1]["task"]["params"][0])


def test_one_process_under_torchrun_trains_as_without_it(launched):
    root, _ = launched
    _assert_same_training(root / "world1", root / "plain1")


def test_benchmark_reports_throughput_at_each_world_size(launched):
    _, report = launched
    assert set(report["world_sizes"]) == {1, 2} and report["truncation_throughput_vs_first"][1] == 1.0
    assert all(r["meta_steps_per_s"] > 0 for r in report["world_sizes"].values())
    for size, r in report["world_sizes"].items():
        assert r["truncations_per_s"] == pytest.approx(r["meta_steps_per_s"] * size)
    two = report["world_sizes"][2]  # against 2 independent one-process jobs run at the same time
    assert two["vs_independent"] == pytest.approx(two["truncations_per_s"] / two["independent_truncations_per_s"])


def test_resume_at_another_world_size_is_refused_in_one_line(launched, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(launched[0] / "world2", run)
    with pytest.raises(SystemExit) as e:
        main(ARGS + ["--meta-steps", "8", "--run-dir", str(run), "--resume"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "world size 2" in err and "\n" not in err


def _ranks(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the worker processes torchrun started."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in v)
        ranks[int(env["RANK"])] = pid
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_a_killed_process_stops_the_job_and_resume_continues_exactly(tmp_path):
    run, args = tmp_path / "killed", ARGS + ["--checkpoint-every", "2", "--val-every", "5"]
    launcher = subprocess.Popen(torchrun(*args, "--meta-steps", "1000", "--run-dir", str(run)), env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while launcher.poll() is None and time.time() < deadline and \
            not ((run / "checkpoint.pt").exists() and len(read_metrics(run / "metrics.jsonl")) >= 6):
        time.sleep(0.02)
    assert launcher.poll() is None, "the job ended before it could be killed"
    killed_at = time.time()
    os.kill(_ranks(launcher)[1], signal.SIGKILL)
    assert launcher.wait(timeout=60) != 0
    assert time.time() - killed_at < 30  # the surviving rank fails in its next collective; torchrun stops it

    step = torch.load(run / "checkpoint.pt", weights_only=False)["meta_step"]
    resumed = subprocess.run(torchrun(*args, "--meta-steps", str(step + 3), "--run-dir", str(run), "--resume"),
                             env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]  # what failed, if it does
    main(args + ["--meta-steps", str(step + 3), "--tasks-per-step", "2", "--run-dir", str(tmp_path / "reference")])
    _assert_same_training(run, tmp_path / "reference")
