import json
from pathlib import Path

import pytest
import yaml

from metaopt import sweep
from metaopt.config import CONFIG_DIR

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


def test_local_runner_runs_a_tiny_sweep(tmp_path, image_folder):
    spec = {"program": "codec.train", "method": "grid",
            "parameters": {"optimizer": {"values": ["adam", "sgd"]}, "steps": {"value": 2}, "N": {"value": 8},
                           "M": {"value": 12}, "batch_size": {"value": 2}, "val_crop": {"value": 64},
                           "data": {"value": str(image_folder)}, "eval_at_end": {"value": False},
                           "threads": {"value": 1}},
            "command": ["${env}", "${interpreter}", "-m", "${program}", "${args}"]}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep.main([str(path), "--run-dir", str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "sweep_results.json").read_text())
    assert [r["optimizer"] for r in results] == ["adam", "sgd"]
    assert all(r["exit_code"] == 0 and "val_loss" in r for r in results)


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
