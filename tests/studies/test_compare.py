import json
import math

import numpy as np
import pytest
import torch
import yaml

from metaopt.checkpoint import file_sha256
from metaopt.config import parse_config
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
from metaopt.optim import save_lopt
from metaopt.tracking import read_metrics
from studies import compare

TINY = ["--N", "8", "--M", "12", "--batch-size", "2", "--val-crop", "64", "--log-every", "3", "--threads", "1",
        "--lopt-compile", "false"]  # compiling costs ~0.5 min per run; tests/metaopt/test_fused.py checks that path


@pytest.fixture
def lopt_file(tmp_path):
    path = tmp_path / "lopt.pt"
    save_lopt(LSTMOptimizerNet(LSTMConfig()), path, lr=1e-3, meta={"horizon": 3})
    return path


def test_compare_end_to_end_summary_matches_the_runs_metrics(tmp_path, image_folder, lopt_file, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    summary = compare.main(["--run-dir", str(out), "--data", str(image_folder), "--lopt", str(lopt_file),
                            "--seeds", "2", "--steps", "9", "--adam-lrs", "1e-3,3e-3", "--smooth", "1", *TINY])
    assert {p.name for p in out.iterdir()} >= {"summary.json", "report.md", "convergence.png", "runs", "tune"}
    assert json.loads((out / "summary.json").read_text())["target_loss"] == pytest.approx(summary["target_loss"])

    # the tuned LR is the argmin of the tuning runs' training loss over the last 10% of steps (here: step 9)
    # (mean over the two default tuning seeds; an LR that diverged on either would be out)
    tail = {lr: sum(read_metrics(out / "tune" / f"adam-lr{lr}-s{s}" / "metrics.jsonl")[-1]["loss"]
                    for s in (1000, 1001)) / 2 for lr in ("0.001", "0.003")}
    assert summary["tuned_adam_lr"] == float(min(tail, key=tail.get))
    assert summary["adam_lr_grid"]["0.001"]["train_loss"] == pytest.approx(tail["0.001"])

    # target = mean of tuned Adam's final logged loss over the seeds
    adam_runs = {s: read_metrics(out / "runs" / f"adam-lr{summary['tuned_adam_lr']:g}-s{s}" / "metrics.jsonl")
                 for s in (0, 1)}
    assert summary["target_loss"] == pytest.approx(sum(r[-1]["loss"] for r in adam_runs.values()) / 2)
    # what the learned optimizer was: its file's sha256 and the step it ran at (the one stored in the file)
    assert summary["learned_optimizer"] == {"lr": 1e-3, "lopt": str(lopt_file.resolve()),
                                            "lopt_sha256": file_sha256(lopt_file), "lopt_max_fan_in": None,
                                            "lopt_basis": "coordinate"}
    assert summary["task"]["distortion"] == "rmse"  # the mission's cost is the default

    # steps-to-target per run = first logged step whose loss is <= target
    for opt, prefix in (("adam", f"adam-lr{summary['tuned_adam_lr']:g}"), ("lstm", "lstm-lrdefault")):
        for seed in (0, 1):
            rows = read_metrics(out / "runs" / f"{prefix}-s{seed}" / "metrics.jsonl")
            assert rows[-1]["step"] == 9 and all(k in rows[-1] for k in ("wall_time", "opt_step_time"))
            hits = [r["step"] for r in rows if r["loss"] <= summary["target_loss"]]
            entry = summary["optimizers"][opt]["seeds"][str(seed)]
            assert entry["steps_to_target"] == (hits[0] if hits else None)
            assert entry["diverged"] == (rows[-1]["loss"] > rows[0]["loss"])
    ratio = summary["ratios_vs_adam"]["lstm"]["steps_to_target_ratio"]
    lstm_med, adam_med = (summary["optimizers"][o]["median_steps_to_target"] for o in ("lstm", "adam"))
    assert ratio == (None if math.isinf(adam_med) else pytest.approx(lstm_med / adam_med))
    assert summary["report_steps"] == [3]  # horizon 3 from the lopt file: 1x (5x and 10x exceed T=9)
    assert "## Steps to target" in (out / "report.md").read_text()
    assert list((out / "report-run" / "wandb").glob("offline-run-*"))
    assert list((out / "runs" / "lstm-lrdefault-s0" / "wandb").glob("offline-run-*"))
    # LR-tuning runs carry the tag `tuning`; the reported runs do not
    configs = list(out.glob("*/*/config.yaml"))  # tune/<run>/ and runs/<run>/
    assert {c.parent.parent.name for c in configs} == {"tune", "runs"}
    for config in configs:
        assert yaml.safe_load(config.read_text())["tags"] == (["tuning"] if config.parent.parent.name == "tune" else [])


def test_lstm_nominal_step_tuned_by_the_same_rule_as_adam(tmp_path, image_folder, lopt_file, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "cmp"
    summary = compare.main(["--run-dir", str(out), "--data", str(image_folder), "--lopt", str(lopt_file),
                            "--seeds", "1", "--steps", "6", "--adam-lrs", "1e-3", "--lstm-lrs", "1e-4,3e-3",
                            "--smooth", "1", *TINY])
    tail = {lr: sum(read_metrics(out / "tune" / f"lstm-lr{lr}-s{s}" / "metrics.jsonl")[-1]["loss"]
                    for s in (1000, 1001)) / 2 for lr in ("0.0001", "0.003")}
    assert summary["tuned_lstm_lr"] == float(min(tail, key=tail.get))
    assert summary["lstm_lr_grid"]["0.003"]["train_loss"] == pytest.approx(tail["0.003"])
    rows = read_metrics(out / "runs" / f"lstm-lr{summary['tuned_lstm_lr']:g}-s0" / "metrics.jsonl")
    assert summary["optimizers"]["lstm"]["seeds"]["0"]["final_loss"] == pytest.approx(rows[-1]["loss"])
    assert "LSTM nominal step (and file, among candidates), tuned" in (out / "report.md").read_text()


def test_the_learned_optimizer_is_chosen_among_candidates_on_the_tuning_seeds(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    candidates = []
    for name, lr in (("slow", 1e-6), ("fast", 3e-3)):  # the same network; only the stored step differs
        torch.manual_seed(0)
        candidates.append(tmp_path / f"{name}.pt")
        save_lopt(LSTMOptimizerNet(LSTMConfig()), candidates[-1], lr=lr, meta={"horizon": 3})
    out = tmp_path / "cmp"
    summary = compare.main(["--run-dir", str(out), "--data", str(image_folder), "--lopt-candidates",
                            ",".join(map(str, candidates)), "--seeds", "1", "--steps", "6", "--adam-lrs", "1e-3",
                            "--smooth", "1", *TINY])
    tail = {name: sum(compare.tail_loss(out / "tune" / f"lstm-{name}-lrdefault-s{s}") for s in (1000, 1001)) / 2
            for name in ("slow", "fast")}
    assert tail["fast"] < tail["slow"]  # a step of 1e-6 barely moves the codec in 6 steps
    assert summary["tuned_lstm_lopt"] == str(candidates[1]) and summary["tuned_lstm_lr"] is None
    grid = summary["lstm_lr_grid"]
    assert grid["fast-lrdefault"]["chosen"] and not grid["slow-lrdefault"]["chosen"]
    assert summary["learned_optimizer"]["lopt_sha256"] == file_sha256(candidates[1])
    assert (out / "runs" / "lstm-fast-lrdefault-s0" / "done.json").is_file()
    assert not list((out / "runs").glob("lstm-slow-*"))

    # the same screen, tuning stage only: the same choice from the same runs, and no reported seed spent
    screen = tmp_path / "screen"
    (screen / "tune").mkdir(parents=True)
    for run in (out / "tune").iterdir():
        (screen / "tune" / run.name).symlink_to(run)
    outcome = compare.main(["--run-dir", str(screen), "--data", str(image_folder), "--lopt-candidates",
                            ",".join(map(str, candidates)), "--seeds", "1", "--steps", "6", "--adam-lrs", "1e-3",
                            "--smooth", "1", "--tune-only", "--resume", *TINY])
    assert outcome["tuned_lstm_lopt"] == str(candidates[1]) and outcome["lstm_lr_grid"] == summary["lstm_lr_grid"]
    assert json.loads((screen / "tuning.json").read_text())["tune_only"] and not (screen / "runs").exists()


def test_an_interrupted_compare_skips_finished_runs(tmp_path, image_folder, lopt_file, monkeypatch):
    out = tmp_path / "cmp"
    args = ["--run-dir", str(out), "--data", str(image_folder), "--lopt", str(lopt_file), "--seeds", "1",
            "--steps", "3", "--adam-lrs", "1e-3", "--optimizers", "adam", *TINY]
    compare.main(args)
    trained = []
    monkeypatch.setattr(compare, "train", lambda cfg, *a, **k: trained.append(cfg) or {})
    compare.main(args + ["--resume"])
    assert trained == []
    # a run killed before it finished (no done.json) is resumed from its checkpoint
    (out / "runs" / "adam-lr0.001-s0" / "done.json").unlink()
    monkeypatch.undo()
    calls = []
    real_train = compare.train
    monkeypatch.setattr(compare, "train", lambda cfg, *a, **k: calls.append(cfg["resume"]) or real_train(cfg, *a, **k))
    compare.main(args + ["--resume"])
    assert calls == [True]


@pytest.mark.parametrize("args, message", [
    (["--optimizers", "adam,rmsprop"], "unknown optimizer"),
    (["--adam-lrs", "[]"], "adam_lrs is empty"),
    (["--lstm-lrs", "1e-3,-1"], "lstm_lrs must be positive"),
    (["--lstm-lrs", "1e-3", "--optimizers", "adam"], "lstm is not among the optimizers"),
    (["--seeds", "1,two"], "seeds must be integers"),
    (["--seeds", "1.5,2"], "seeds must be integers"),
    (["--seeds", "0"], "at least 1"),
    (["--optimizers", "lstm"], "must include adam"),
    (["--tune-seeds", "1,1000"], "also reported seeds"),
    (["--tune-on", "val_psnr"], "tune_on must be one of"),
    (["--workers", "0"], "workers must be a positive integer"),
    (["--lopt", "/nonexistent/lopt.pt"], "not found"),
    (["--lopt-candidates", "/nonexistent/a.pt"], "not found"),
    (["--lopt-candidates", "a/x.pt,b/x.pt"], "distinct file names"),
    (["--lopt-candidates", "a.pt", "--lopt", "b.pt"], "not both"),
    (["--tune-only", "--sweep", "tune.yaml"], "tune_only runs the tuning stage"),
])
def test_bad_input_fails_before_any_run(tmp_path, capsys, args, message):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as e:
        compare.main(["--run-dir", str(out), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (out / "tune").exists() and not (out / "runs").exists()


def test_codec_settings_reach_every_run(lopt_file):
    cfg = parse_config(["--lopt", str(lopt_file), "--lopt-compile", "--spike-guard", "10", "--warmup-steps", "7"],
                       "compare/default.yaml", "")
    lstm_run = compare.codec_config(cfg, optimizer="lstm", lr=None, seed=0)
    assert lstm_run["lopt_compile"] is True and lstm_run["spike_guard"] == 10.0 and lstm_run["lopt"] == str(lopt_file)
    assert compare.codec_config(cfg, optimizer="adam", lr=1e-3, seed=0)["warmup_steps"] == lstm_run["warmup_steps"] == 7


def test_seed_parsing():
    assert compare.parse_seeds(3) == [0, 1, 2]
    assert compare.parse_seeds([4, 7]) == [4, 7]
    assert compare.parse_seeds("4, 7") == [4, 7]
    assert math.isinf(compare._median_or_inf([None, None, 5]))


def test_ratio_to_adam_is_undefined_when_adams_median_never_reached_the_target():
    assert compare._ratio(350.0, 700.0) == 0.5
    assert math.isinf(compare._ratio(math.inf, 700.0))  # the LSTM's median never reached it
    assert compare._ratio(95.0, math.inf) is None and compare._ratio(math.inf, math.inf) is None


def test_kill_9_during_compare_then_resume_gives_the_uninterrupted_summary(tmp_path, image_folder):
    """In this process (workers 1) and with a worker pool (workers 2): a compare killed with SIGKILL mid-run
    and resumed gives the summary of an uninterrupted one. The uninterrupted reference trains alongside."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "studies.compare", "--data", str(image_folder), "--seeds", "2", "--steps", "12",
            "--adam-lrs", "1e-3,3e-3", "--tune-seeds", "1000", "--optimizers", "adam,sgd", *TINY]
    with open(tmp_path / "full.log", "w") as log:  # the child keeps its own copy of the descriptor
        reference = subprocess.Popen([*base, "--run-dir", str(tmp_path / "full")], env=env, stdout=log,
                                     stderr=subprocess.STDOUT)

    def comparable(path):
        s = json.loads((path / "summary.json").read_text())
        for e in s["optimizers"].values():
            e.pop("median_seconds_to_target")
            for seed in e["seeds"].values():
                seed.pop("seconds_to_target"), seed.pop("seconds_total")
        for r in s["ratios_vs_adam"].values():
            r.pop("wall_time_to_target_ratio")
        return s

    for workers in (1, 2):
        killed = tmp_path / f"killed-workers{workers}"
        proc = subprocess.Popen([*base, "--run-dir", str(killed), "--workers", str(workers)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(killed.glob("*/*/checkpoint.pt")):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / "summary.json").exists()
        # no worker outlives the compare: nothing under the run directory changes after the kill
        files = lambda: {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}  # noqa: E731
        before = files()
        time.sleep(1)
        assert files() == before
        subprocess.run([*base, "--run-dir", str(killed), "--resume", "--workers", str(workers)], env=env,
                       check=True, capture_output=True)
        if workers == 1:
            assert reference.wait(timeout=300) == 0, (tmp_path / "full.log").read_text()
        assert comparable(killed) == comparable(tmp_path / "full")


def test_a_diverged_seed_is_flagged_and_kept_out_of_target_means_and_plot(tmp_path):
    def fake_run(name, losses):
        path = tmp_path / name
        path.mkdir()
        rows = [{"step": 10 * (i + 1), "loss": loss, "wall_time": float(i)} for i, loss in enumerate(losses)]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    runs = {"adam": {0: fake_run("a0", [9.0, 5.0, 4.0]), 1: fake_run("a1", [9.0, 1e30, "nan"]),
                     2: fake_run("a2", [9.0, 6.0, 2.0])},
            "lstm": {0: fake_run("l0", [9.0, 3.0, 2.5]), 1: fake_run("l1", [9.0, 4.0, 3.5]),
                     2: fake_run("l2", [9.0, 2.0, 1.5])}}
    tuning = {"0.001": {"train_loss": 3.0, "val_loss": 4.0, "diverged": 0, "chosen": True}}
    summary = compare.summarize({"steps": 30, "tune_seeds": [1000], "tune_on": "train_loss"}, runs,
                                {"adam": (tuning, (None, 1e-3))}, horizon=None)
    adam, lstm = summary["optimizers"]["adam"], summary["optimizers"]["lstm"]
    assert summary["target_loss"] == pytest.approx(3.0)  # mean of 4.0 and 2.0: the diverged seed is left out
    assert adam["divergences"] == 1 and adam["seeds"]["1"]["diverged"] and lstm["divergences"] == 0
    assert adam["seeds"]["1"]["steps_to_target"] is None
    assert adam["mean_final_loss"] == pytest.approx(3.0)
    assert [lstm["seeds"][s]["steps_to_target"] for s in "012"] == [20, None, 20]
    compare.plot_convergence(runs, summary["target_loss"], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0
    # one seed's spike (a guarded run logs it before rolling back) does not set the y range
    runs["lstm"][1] = fake_run("spiky", [9.0, 1e18, 3.0])
    bottom, top = compare.plot_convergence(runs, summary["target_loss"], tmp_path / "c.png")
    assert top == pytest.approx(2 * 9.0) and bottom == pytest.approx(0.8 * 1.5)


def test_statistics_read_the_smoothed_curve():
    smoothed = compare.trailing_mean(np.array([4.0, 2.0, 6.0, math.inf, 1.0]), 2)
    assert smoothed.tolist() == [4.0, 3.0, 4.0, math.inf, math.inf]
    steps, noisy = np.array([10, 20, 30, 40, 50]), np.array([9.0, 3.0, 8.0, 5.0, 4.0])
    # raw, the lucky window at step 20 "reaches" 5.4; smoothed over 3 windows the trend gets there at step 40
    assert compare.first_reach(steps, noisy, 5.4) == 20
    assert compare.first_reach(steps, compare.trailing_mean(noisy, 3), 5.4) == 40


def test_trailing_mean_survives_a_huge_early_value():
    """A run that blew up in its first window (1.8e17, measured) and then recovered: later means stay exact
    (a cumulative-sum implementation returned 0.0 for them) and an inf only poisons the windows holding it."""
    values = np.array([1.8e17, 53892.0, 48.7, 44.5, 41.9, 38.5, math.inf, 30.0, 20.0])
    out = compare.trailing_mean(values, 2)
    assert out[3:6].tolist() == [(48.7 + 44.5) / 2, (44.5 + 41.9) / 2, (41.9 + 38.5) / 2]
    assert out[6:].tolist() == [math.inf, math.inf, 25.0]


def test_report_steps_fall_back_to_fractions_of_T_when_no_horizon_multiple_fits():
    assert compare.report_steps(1000, 100) == [100, 500, 1000]
    assert compare.report_steps(9, 3) == [3]
    assert compare.report_steps(500, 1000) == [50, 250, 500]  # a run shorter than the horizon: never an empty table
    assert compare.report_steps(1000, None) == [100, 500, 1000]
