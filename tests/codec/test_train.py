import json
import sys

import pytest
import torch
import yaml

import codec.train
from codec.train import main
from metaopt.tracking import read_metrics

TINY = ["--N", "8", "--M", "12", "--batch-size", "2", "--crop", "64", "--val-crop", "64", "--log-every", "2",
        "--val-every", "4", "--checkpoint-every", "3", "--no-eval-at-end", "--lr", "1e-3"]


def run(tmp_path, image_folder, name, *extra):
    main(["--data", str(image_folder), "--run-dir", str(tmp_path / name), *TINY, *extra])
    return tmp_path / name


def test_train_writes_config_metrics_and_checkpoints(tmp_path, image_folder):
    run_dir = run(tmp_path, image_folder, "a", "--steps", "4")
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("step", "loss", "bpp", "psnr", "wall_time", "opt_step_time", "val_loss", "val_psnr", "val_ms_ssim"):
        assert key in rows[-1]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "best.pt").is_file()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4 and state["model_name"] == "bmshj2018-hyperprior-deep"
    assert "optimizer" in state and "aux_optimizer" in state and "rng" in state


def test_step_times_are_logged_as_means_over_the_rows_steps(tmp_path, image_folder, monkeypatch):
    """An update that is dear every other step (as a basis refresh is every 10th) logs at its mean, whatever step the
    row falls on, not at the cost of the one step it was written at."""
    real = codec.train.apply_update

    def alternating(trainer, step):
        real(trainer, step)
        return 1.0 if step % 2 == 0 else 3.0

    monkeypatch.setattr(codec.train, "apply_update", alternating)
    rows = read_metrics(run(tmp_path, image_folder, "a", "--steps", "4") / "metrics.jsonl")
    assert [r["opt_step_time"] for r in rows] == [2.0, 2.0]
    assert all(0 < r["step_time"] for r in rows)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "adam --warmup-steps 6", "schedulefree", "soap",
                                       "adam --lr-schedule plateau", "adam --lr-schedule cosine"])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, image_folder, monkeypatch, optimizer):
    args = ["--optimizer", *optimizer.split()]  # the warmup case resumes mid-ramp (step 4 of 6)
    full = run(tmp_path, image_folder, "full", "--steps", "8", *args)
    if "cosine" in optimizer:  # a run planned for 4 steps has another schedule: stop the 8-step plan at step 4
        with monkeypatch.context() as patch:
            patch.setattr(codec.train, "out_of_time", lambda cfg, state: state.step >= 4)
            part = run(tmp_path, image_folder, "part", "--steps", "8", *args)
    else:
        part = run(tmp_path, image_folder, "part", "--steps", "4", *args)
    run(tmp_path, image_folder, "part", "--steps", "8", *args, "--resume")
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k} for r in rows]  # noqa: E731
    resumed, uninterrupted = strip(read_metrics(part / "metrics.jsonl")), strip(read_metrics(full / "metrics.jsonl"))
    assert [r["step"] for r in resumed] == [2, 4, 6, 8]
    assert resumed == uninterrupted
    state = lambda run_dir: torch.load(run_dir / "checkpoint.pt", weights_only=False)["lr_schedule"]  # noqa: E731
    assert state(part) == state(full)  # plateau: its count of validations and of bad ones


def test_init_from_starts_from_a_trained_codecs_weights(tmp_path, image_folder, capsys):
    trained = run(tmp_path, image_folder, "trained", "--steps", "4")
    # SGD at a negligible step: the network weights stay those of the trained codec (the quantiles train on
    # their own Adam)
    tuned = run(tmp_path, image_folder, "tuned", "--steps", "1", "--lmbda", "0.05", "--optimizer", "sgd",
                "--lr", "1e-12", "--init-from", str(trained / "checkpoint.pt"))
    weights = lambda run_dir: {k: v for k, v in torch.load(run_dir / "checkpoint.pt", weights_only=False)[  # noqa: E731
        "model"].items() if "quantiles" not in k}
    before, after = weights(trained), weights(tuned)
    assert before.keys() == after.keys() and all(torch.allclose(before[k], after[k], atol=1e-9) for k in before)
    resolved = yaml.safe_load((tuned / "config.yaml").read_text())["resolved"]
    assert len(resolved["init_from_sha256"]) == 64
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # another size: one line, before the run directory exists
        run(tmp_path, image_folder, "other", "--steps", "1", "--N", "16", "--init-from", str(trained / "best.pt"))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "this run trains" in err[0]
    assert not (tmp_path / "other").exists()


def test_plateau_is_stepped_with_each_validation_loss(tmp_path, image_folder):
    # (its reduction after 10 validations without improvement: tests/metaopt/test_optimizers.py)
    run_dir = run(tmp_path, image_folder, "a", "--steps", "6", "--val-every", "2", "--lr-schedule", "plateau")
    val_losses = [r["val_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]
    plateau = torch.load(run_dir / "checkpoint.pt", weights_only=False)["lr_schedule"]["plateau"]
    assert len(val_losses) == plateau["last_epoch"] == 3 and plateau["best"] == min(val_losses)


def test_warmup_ramps_the_learning_rate_linearly(tmp_path, image_folder):
    def final_lr(name, warmup):
        run_dir = run(tmp_path, image_folder, name, "--steps", "3", "--warmup-steps", warmup)
        return torch.load(run_dir / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"][0]["lr"]

    assert final_lr("ramp", "12") == pytest.approx(1e-3 * 3 / 12)  # the 3rd step of 12 (TINY's lr is 1e-3)
    assert final_lr("flat", "2") == pytest.approx(1e-3)


def test_refuses_to_overwrite_a_run_without_resume(tmp_path, image_folder, capsys):
    run(tmp_path, image_folder, "a", "--steps", "1")
    with pytest.raises(SystemExit) as e:
        run(tmp_path, image_folder, "a", "--steps", "2")
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/folder"], "data folder not found"),
    (["--model", "bmshj2018-bogus"], "unknown model"),
    (["--optimizer", "rmsprop"], "unknown optimizer"),
    (["--steps", "-5"], "steps must be positive, got -5"),
    (["--steps", "0"], "steps must be positive, got 0"),
    (["--crop", "96"], "multiple of 64"),
    (["--distortion", "l1"], "unknown distortion"),
    (["--lr", "fast"], "lr must be"),
    (["--resume"], "--resume needs --run-dir"),
    (["--spike-guard", "0.5"], "spike_guard must be 0 (off) or a factor > 1"),
    (["--spike-snapshot-every", "0"], "spike_snapshot_every must be positive"),
    (["--warmup-steps", "-1"], "warmup_steps must be a non-negative integer"),
    (["--lr-schedule", "step"], "unknown lr_schedule 'step'"),
    (["--optimizer", "schedulefree", "--lr-schedule", "plateau"], "use lr_schedule constant"),
    (["--max-seconds", "-1"], "max_seconds must be >= 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["--steps", "1", *args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_missing_optimizer_package_is_one_line_before_any_step(tmp_path, image_folder, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "schedulefree", None)  # `import schedulefree` fails, as without the package
    with pytest.raises(SystemExit) as e:
        run(tmp_path, image_folder, "r", "--optimizer", "schedulefree", "--steps", "1")
    assert e.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        "error: optimizer schedulefree needs the schedulefree package, a dependency of metaopt-codec that this "
        "environment lacks: pip install schedulefree"]
    assert not (tmp_path / "r").exists()


def test_marks_code_the_held_out_images_by_wall_clock_within_a_time_budget(tmp_path, image_folder):
    run_dir = run(tmp_path, image_folder, "a", "--steps", "100000", "--max-seconds", "4", "--eval-every-seconds", "2",
                  "--optimizer", "schedulefree")
    rows = read_metrics(run_dir / "metrics.jsonl")
    marks = [r for r in rows if "mark" in r]
    assert [m["mark"] for m in marks][:2] == [2, 4]  # (a third if a step of the loaded machine took seconds)
    assert all(m["wall_time"] >= m["mark"] and m["rd_bpp"] > 0 and m["rd_loss"] > m["rd_bpp"] for m in marks)
    last = [r for r in rows if "loss" in r][-1]
    assert 4 <= last["wall_time"] < 10 and "val_loss" in last  # stopped by the budget, validated at the end
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert state["step"] == last["step"] < 100000 and state["marks"] == len(marks)


def test_empty_data_folder_and_unreadable_image(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG garbage")
    for folder, message in ((tmp_path / "empty", "no images"), (bad, "cannot read image")):
        with pytest.raises(SystemExit):
            main(["--data", str(folder), "--run-dir", str(tmp_path / "r"), *TINY, "--steps", "1"])
        assert message in capsys.readouterr().err


def test_a_bad_image_is_named_before_the_run_directory_exists(tmp_path, image_folder, capsys):
    bad = image_folder / "train" / "zz-truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # the last image: a batch might draw it much later
    with pytest.raises(SystemExit) as e:
        run(tmp_path, image_folder, "r", "--steps", "2")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: cannot read image {bad}") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("optimizer", ["adam", "lstm"])
def test_run_records_what_its_nulls_resolved_to_and_logs_best_pt(tmp_path, image_folder, monkeypatch, optimizer):
    import hashlib


    from metaopt.config import parse_config
    from metaopt.optim import PRETRAINED, load_lopt
    from tests.metaopt.test_tracking import wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [a for a in TINY if a not in ("--lr", "1e-3")]  # lr null: the optimizer's default
    main(["--data", str(image_folder), "--run-dir", str(tmp_path / "r"), *args, "--steps", "2",
          "--optimizer", optimizer])
    config = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert config["lr"] is None and config["lopt"] is None
    if optimizer == "lstm":
        assert config["resolved"] == {"lr": load_lopt(None)[1]["lr"], "lopt": str(PRETRAINED),
                                      "lopt_sha256": hashlib.sha256(PRETRAINED.read_bytes()).hexdigest(),
                                      "lopt_max_fan_in": 800, "lopt_basis": "shampoo"}
    else:
        assert config["resolved"] == {"lr": 1e-4}
    # The same record is in the W&B config, and best.pt is the run's "codec" artifact.
    records = wandb_records(next((tmp_path / "r" / "wandb").glob("offline-run-*/*.wandb")))
    wandb_config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "run"
                    for item in r.run.config.update}
    assert wandb_config["resolved"] == config["resolved"]
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "codec" and [e.path for e in artifact.manifest.contents] == ["best.pt"]
    best = (tmp_path / "r" / "best.pt").read_bytes()
    assert json.loads(artifact.metadata)["sha256"] == hashlib.sha256(best).hexdigest()
    # A run's config.yaml passes back as --config: the record is not an input.
    again = parse_config(["--config", str(tmp_path / "r" / "config.yaml")], "codec/default.yaml", "t")
    assert again == {k: v for k, v in config.items() if k != "resolved"}


def test_bad_config_key_in_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 10\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg)])
    assert e.value.code == 2 and "unknown config key 'stepz'" in capsys.readouterr().err


def test_metrics_rows_are_json_per_line(tmp_path, image_folder):
    run_dir = run(tmp_path, image_folder, "a", "--steps", "2")
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)
