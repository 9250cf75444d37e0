import json
from pathlib import Path

import pytest
import yaml

from metaopt import sweep
from metaopt.config import CONFIG_DIR
from metaopt.tracking import read_metrics, summary_value

SWEEPS = sorted((CONFIG_DIR / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_are_valid_wandb_sweeps(path):
    from wandb.sdk.launch.sweeps.utils import load_sweep_config  # what `wandb sweep FILE` reads it with

    spec = load_sweep_config(str(path))
    assert spec is not None
    sweep.check_sweep(spec, path.name)
    assert "${args}" in spec["command"] and spec["program"] == "codec.train"
    runs = sweep.expand(spec)
    assert len(runs) > 1
    sweep.validate_runs(spec, runs)  # every run's arguments parse with codec.train's own parser


def test_grid_expansion_and_command_substitution():
    spec = yaml.safe_load((CONFIG_DIR / "sweeps" / "adam_lr.yaml").read_text())
    runs = sweep.expand(spec)
    assert len(runs) == 12 and {r["lr"] for r in runs} == {1e-4, 3e-4, 1e-3, 3e-3}
    cmd = sweep.command_for(spec, runs[0], Path("d"))
    assert cmd[1:3] == ["-m", "codec.train"] and "--lr=0.0001" in cmd and "--run_dir=d" in cmd


def test_local_runner_runs_a_tiny_sweep_and_reports_the_best_run(tmp_path, image_folder):
    spec = {"program": "codec.train", "method": "grid", "metric": {"name": "val_loss", "goal": "minimize"},
            "parameters": {"optimizer": {"values": ["adam", "sgd"]}, "steps": {"value": 4}, "val_every": {"value": 2},
                           "N": {"value": 8}, "M": {"value": 12}, "batch_size": {"value": 2},
                           "val_crop": {"value": 64}, "data": {"value": str(image_folder)},
                           "eval_at_end": {"value": False}, "threads": {"value": 1}, "tags": {"value": "tuning"}},
            "command": ["${env}", "${interpreter}", "-m", "${program}", "${args}"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep.main([str(path), "--run-dir", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "sweep_results.json").read_text())
    runs = results["runs"]
    assert [r["optimizer"] for r in runs] == ["adam", "sgd"] and results["metric"] == spec["metric"]
    assert all(r["exit_code"] == 0 and "val_loss" in r for r in runs)
    for r in runs:  # each run's objective is its best val_loss, as W&B's summary holds it
        rows = read_metrics(tmp_path / "out" / r["run"] / "metrics.jsonl")
        assert r["objective"] == min(row["val_loss"] for row in rows if "val_loss" in row)
    assert results["best"] == min(runs, key=lambda r: r["objective"])


def test_best_run_follows_the_metrics_goal_and_summary():
    rows = [{"step": 1, "val_loss": 2.0, "val_psnr": 20.0, "loss": 5.0},
            {"step": 2, "val_loss": 1.0, "val_psnr": 25.0, "loss": 4.0},
            {"step": 3, "val_loss": "nan", "val_psnr": 22.0, "loss": 6.0}]
    assert [summary_value(rows, k) for k in ("val_loss", "val_psnr", "loss", "absent")] == [1.0, 25.0, 6.0, None]
    runs = [{"run": "a", "objective": 3.0}, {"run": "b", "objective": float("nan")}, {"run": "c", "objective": 1.0},
            {"run": "d", "exit_code": 1}]
    assert sweep.best_run(runs, {"name": "loss", "goal": "minimize"})["run"] == "c"
    assert sweep.best_run(runs, {"name": "val_psnr", "goal": "maximize"})["run"] == "a"
    assert sweep.best_run(runs, None) is None


def test_shipped_sweeps_keep_their_promises():
    adam_lr, optimizers = (yaml.safe_load((CONFIG_DIR / "sweeps" / f"{n}.yaml").read_text())
                           for n in ("adam_lr", "optimizers"))
    assert adam_lr["parameters"]["tags"] == {"value": "tuning"}  # LR-tuning runs are marked, reported runs not
    assert "tags" not in optimizers["parameters"]
    assert set(optimizers["parameters"]["optimizer"]["values"]) == {"adam", "sgd", "lstm"}


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["parameters"].update(optimizer={"values": ["adam", "adamw"]}), "unknown optimizer"),
    (lambda s: s["parameters"].update(lr={"values": []}), "empty 'values'"),
    (lambda s: s.update(command=["python", "-m", "codec.train"]), "${args}"),
    (lambda s: s.update(method="hyperband"), "method must be"),
    (lambda s: s["parameters"].update(stepz={"value": 3}), "unrecognized arguments|rejected"),
])
def test_bad_sweeps_fail_before_any_run(tmp_path, capsys, edit, message):
    spec = yaml.safe_load((CONFIG_DIR / "sweeps" / "adam_lr.yaml").read_text())
    edit(spec)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SystemExit) as e:
        sweep.main([str(path), "--run-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    import re
    assert re.search(message.replace("${", r"\$\{"), capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
