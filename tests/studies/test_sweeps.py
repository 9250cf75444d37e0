import json

import pytest
import yaml

from metaopt import sweep
from studies import compare, race

TINY = ["--N", "8", "--M", "12", "--batch-size", "2", "--val-crop", "64", "--log-every", "3", "--threads", "1"]


def _without_seconds(value):
    """A summary less its wall-clock entries (two executions of the same runs differ only in those)."""
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if "seconds" not in k and "wall_time" not in k}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def _wandb_sweep(path):
    from wandb.sdk.launch.sweeps.utils import load_sweep_config  # what `wandb sweep FILE` reads it with

    spec = load_sweep_config(str(path))
    sweep.check_sweep(spec, path.name)
    return spec


def test_compare_run_by_sweep_agents_reports_the_one_machine_summary(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    study = ["--data", str(image_folder), "--optimizers", "adam,sgd", "--seeds", "1", "--tune-seeds", "1000",
             "--steps", "6", "--adam-lrs", "1e-3,3e-3", "--smooth", "1", *TINY]
    one_machine = compare.main(["--run-dir", str(tmp_path / "local"), *study])

    shared = tmp_path / "shared"
    compare.main(["--run-dir", str(shared), "--sweep", str(tmp_path / "tune.yaml"), *study])
    spec = _wandb_sweep(tmp_path / "tune.yaml")
    assert spec["program"] == "studies.compare" and spec["parameters"]["run_dir"]["value"] == str(shared.resolve())
    assert spec["parameters"]["job"]["values"] == ["tune/adam-lr0.001-s1000", "tune/adam-lr0.003-s1000"]
    with pytest.raises(SystemExit):  # the reported runs do not exist before the tuning runs are finished
        compare.main(["--run-dir", str(shared), "--report"])
    sweep.main([str(tmp_path / "tune.yaml"), "--run-dir", str(tmp_path / "agent")])  # one subprocess per job

    compare.main(["--run-dir", str(shared), "--sweep", str(tmp_path / "runs.yaml")])  # the pinned plan is used
    tuned = one_machine["tuned_adam_lr"]
    assert _wandb_sweep(tmp_path / "runs.yaml")["parameters"]["job"]["values"] == [
        f"runs/adam-lr{tuned:g}-s0", "runs/sgd-lrdefault-s0"]
    sweep.main([str(tmp_path / "runs.yaml"), "--run-dir", str(tmp_path / "agent")])

    distributed = compare.main(["--run-dir", str(shared), "--report"])
    assert _without_seconds(distributed) == _without_seconds(one_machine)
    assert json.loads((shared / "summary.json").read_text())["target_loss"] == one_machine["target_loss"]
    assert (shared / "report.md").is_file() and (shared / "convergence.png").is_file()


def test_race_sweep_file_lists_the_tuning_runs(tmp_path, image_folder):
    codec = tmp_path / "tiny.yaml"
    codec.write_text("N: 8\nM: 12\nbatch_size: 2\ncrop: 64\nval_crop: 64\n")
    race.main(["--run-dir", str(tmp_path / "race"), "--sweep", str(tmp_path / "tune.yaml"), "--codec", str(codec),
               "--data", str(image_folder), "--contenders", "adam-cosine,lstm", "--lrs", "1e-3,3e-3",
               "--tune-seeds", "9", "--seeds", "1"])
    spec = _wandb_sweep(tmp_path / "tune.yaml")
    assert spec["program"] == "studies.race"
    assert spec["parameters"]["job"]["values"] == [f"tune/{c}-lr{lr}-s9" for c in ("adam-cosine", "lstm")
                                                   for lr in ("0.001", "0.003")]
    pinned = yaml.safe_load((tmp_path / "race" / "study.yaml").read_text())
    assert pinned["lrs"] == [1e-3, 3e-3] and pinned["data"] == str(image_folder.resolve())


@pytest.mark.parametrize("args, message", [
    (["--sweep", "s.yaml", "--report"], "--sweep and --report exclude each other"),
    (["--report"], "start the study with --sweep"),
    (["--job", "tune/adam-lr0.001-s1000"], "start the study with --sweep"),
])
def test_bad_distributed_use_is_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        compare.main(["--run-dir", str(tmp_path / "study"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and len(err.splitlines()) == 1


def test_an_unknown_job_is_refused(tmp_path, image_folder, capsys):
    shared = tmp_path / "study"
    compare.main(["--run-dir", str(shared), "--sweep", str(tmp_path / "s.yaml"), "--data", str(image_folder),
                  "--optimizers", "adam", "--adam-lrs", "1e-3", "--tune-seeds", "1000", "--seeds", "1", *TINY])
    with pytest.raises(SystemExit):
        compare.main(["--run-dir", str(shared), "--job", "runs/adam-lr0.001-s0"])
    assert "the reported runs exist once every tuning run is finished" in capsys.readouterr().err
