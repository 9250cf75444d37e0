"""Fault tolerance of codec.train: kill -9 at random points, then --resume; injected non-finite losses."""
import math
import os
import random
import subprocess
import sys

import torch

from codec import train as train_module
from metaopt.tracking import read_metrics
from tests.codec.test_train import TINY
from tests.faults import start_and_kill

ARGS = [*TINY, "--checkpoint-every", "3", "--log-every", "2", "--val-every", "6", "--steps", "30"]


def _cmd(run_dir, data, *extra):
    return [sys.executable, "-m", "codec.train", "--data", str(data), "--run-dir", str(run_dir), *ARGS, *extra]


def _strip(rows):
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, image_folder):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    # the uninterrupted reference trains alongside the killed runs (on the other core)
    reference = subprocess.Popen(_cmd(tmp_path / "full", image_folder), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    rng = random.Random(0)
    run_dir, kills = tmp_path / "killed", 0
    for _ in range(3):
        resume = ["--resume"] if (run_dir / "checkpoint.pt").exists() else []
        # A first run is killed only after its step-4 row, so its step-3 checkpoint exists (under load, a kill
        # 0.3 s after the step-2 row could land before any checkpoint and leave nothing to resume).
        kills += start_and_kill(_cmd(run_dir, image_folder, *resume), env, run_dir / "metrics.jsonl", rng,
                                new_rows=1 if resume else 2)
        state = torch.load(run_dir / "checkpoint.pt", weights_only=False)  # never torn
        assert state["step"] % 3 == 0 or state["step"] == 30
    assert kills >= 1
    subprocess.run(_cmd(run_dir, image_folder, "--resume"), env=env, check=True, capture_output=True)
    assert reference.wait(timeout=300) == 0
    assert not list(run_dir.glob(".*.tmp"))  # no stray temporary checkpoint files
    assert _strip(read_metrics(run_dir / "metrics.jsonl")) == _strip(read_metrics(tmp_path / "full" / "metrics.jsonl"))


def test_non_finite_losses_are_skipped_counted_and_never_checkpointed(tmp_path, image_folder, monkeypatch):
    real_forward = train_module.RateDistortionLoss.forward
    calls = {"n": 0}

    def poisoned(self, output, target):
        terms = real_forward(self, output, target)
        calls["n"] += 1
        if self.training and calls["n"] in (2, 3):
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_module.RateDistortionLoss, "forward", poisoned)
    train_module.main(["--data", str(image_folder), "--run-dir", str(tmp_path / "r"), *TINY, "--steps", "6"])
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert rows[-1]["skipped_steps"] == 2
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    exp_avg = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert exp_avg and all(torch.isfinite(t).all() for t in exp_avg)


def test_a_window_of_only_non_finite_losses_is_logged_not_fatal(tmp_path, image_folder, monkeypatch):
    """A diverged run (every loss NaN, e.g. too large an LR in a sweep) must finish and say so in its metrics."""
    real_forward = train_module.RateDistortionLoss.forward

    def poisoned(self, output, target):
        terms = real_forward(self, output, target)
        if self.training:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_module.RateDistortionLoss, "forward", poisoned)
    train_module.main(["--data", str(image_folder), "--run-dir", str(tmp_path / "r"), *TINY, "--steps", "4",
                       "--log-every", "2"])
    rows = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert [r["loss"] for r in rows] == ["nan", "nan"] and rows[-1]["skipped_steps"] == 4


def test_a_diverged_run_stops_instead_of_running_to_the_end(tmp_path, image_folder, monkeypatch, capsys):
    real_forward = train_module.RateDistortionLoss.forward
    calls = {"n": 0}

    def poisoned_from_step_3(self, output, target):
        terms = real_forward(self, output, target)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= 3:
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(train_module.RateDistortionLoss, "forward", poisoned_from_step_3)
    run_dir = tmp_path / "r"
    train_module.main(["--data", str(image_folder), "--run-dir", str(run_dir), *TINY, "--steps", "20",
                       "--log-every", "5", "--stop-after-nonfinite", "4"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] == 6 and rows[-1]["stopped_diverged"] is True and rows[-1]["skipped_steps"] == 4
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 6
    assert "stopped at step 6" in capsys.readouterr().err


def _spike_at(monkeypatch, steps, factor=1e4):
    """Multiply the training loss by `factor` at the given (1-based) training steps."""
    real_forward = train_module.RateDistortionLoss.forward
    calls = {"n": 0}

    def spiky(self, output, target):
        terms = real_forward(self, output, target)
        if torch.is_grad_enabled():  # a training step (validation runs under no_grad)
            calls["n"] += 1
            if calls["n"] in steps:
                terms["loss"] = terms["loss"] * factor
        return terms

    monkeypatch.setattr(train_module.RateDistortionLoss, "forward", spiky)


SLOW = ["--lr", "2e-4", "--log-every", "2"]  # TINY's lr 1e-3 spikes on its own (which the guard also catches)
GUARD = [*SLOW, "--spike-guard", "10", "--spike-snapshot-every", "4", "--checkpoint-every", "3"]


def test_spike_guard_rolls_back_a_loss_spike_and_the_run_goes_on(tmp_path, image_folder, monkeypatch):
    _spike_at(monkeypatch, {26})
    run_dir = tmp_path / "r"
    train_module.main(["--data", str(image_folder), "--run-dir", str(run_dir), *TINY, *GUARD, "--steps", "30"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["rollbacks"] for r in rows if r["step"] in (24, 26, 30)] == [0, 1, 1]
    assert all(math.isfinite(r["loss"]) and r["loss"] < 1e3 for r in rows)  # the spiked batch is not logged
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["step"] == 30 and [s for s, _ in state["spike_guard"]["snapshots"]] == [20, 28]  # 24 dropped


def test_spike_guard_off_lets_the_same_spike_through(tmp_path, image_folder, monkeypatch):
    _spike_at(monkeypatch, {26})
    run_dir = tmp_path / "r"
    train_module.main(["--data", str(image_folder), "--run-dir", str(run_dir), *TINY, *SLOW, "--steps", "26"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["loss"] > 1e3 and "rollbacks" not in rows[-1]


def test_spike_guard_gives_up_on_a_spike_that_keeps_coming_back(tmp_path, image_folder, monkeypatch, capsys):
    _spike_at(monkeypatch, set(range(23, 100)))
    run_dir = tmp_path / "r"
    train_module.main(["--data", str(image_folder), "--run-dir", str(run_dir), *TINY, *GUARD, "--steps", "60"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["stopped_diverged"] is True and rows[-1]["step"] == 27 and rows[-1]["rollbacks"] == 5
    assert "5 loss-spike rollbacks in a row" in capsys.readouterr().err


def test_resume_with_the_spike_guard_equals_an_uninterrupted_run(tmp_path, image_folder, monkeypatch):
    _spike_at(monkeypatch, {26})
    args = ["--data", str(image_folder), *TINY, *GUARD]
    train_module.main([*args, "--run-dir", str(tmp_path / "full"), "--steps", "30"])
    _spike_at(monkeypatch, {26})
    train_module.main([*args, "--run-dir", str(tmp_path / "part"), "--steps", "24"])
    _spike_at(monkeypatch, {2})  # the resumed run's 2nd step is step 26
    train_module.main([*args, "--run-dir", str(tmp_path / "part"), "--steps", "30", "--resume"])
    resumed, full = (_strip(read_metrics(tmp_path / name / "metrics.jsonl")) for name in ("part", "full"))
    assert resumed == full and resumed[-1]["rollbacks"] == 1


def test_spike_guard_catches_a_blow_up_in_the_first_steps_by_returning_to_the_start(tmp_path, image_folder,
                                                                                      monkeypatch, capsys):
    _spike_at(monkeypatch, {3}, factor=math.nan)
    run_dir = tmp_path / "r"
    train_module.main(["--data", str(image_folder), "--run-dir", str(run_dir), *TINY, *GUARD, "--steps", "6"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["rollbacks"] == 1 and rows[-1]["skipped_steps"] == 0 and math.isfinite(rows[-1]["loss"])
    err = capsys.readouterr().err
    assert "step 3: loss nan is a spike" in err and "rolled back to step 0" in err
