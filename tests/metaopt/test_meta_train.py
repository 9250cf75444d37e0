import json

import pytest
import torch

from codec.data import list_images
from metaopt.errors import UserError
from metaopt.config import parse_config
from metaopt.distributed import World
from metaopt.meta_train import MetaTrainer, main, sample_horizon
from metaopt.optim import LSTMOptimizer, load_lopt
from tests.conftest import write_image

TINY = ["--task", "regression", "--batch-size", "8", "--hidden", "4", "--unroll", "3", "--horizon-min", "6",
        "--horizon-max", "12", "--curriculum-steps", "4", "--val-every", "3", "--val-tasks", "1",
        "--val-steps", "10", "--log-every", "1", "--checkpoint-every", "2", "--lr", "0.01", "--loss-scale", "1"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch,extra", [("coordinate", []), ("tensor", []),
                                        ("tensor", ["--features", "grad_logsign,adam_grad,momenta,param_scale"]),
                                        ("coordinate", ["--output", "adam_correction", "--no-odd"]),
                                        ("coordinate", ["--features", "grad_logsign,adam_grad,momenta,progress"]),
                                        ("coordinate", ["--meta-gradient", "pes", "--pes-pairs", "2"])])
def test_smoke_run_and_resume(tmp_path, arch, extra):
    run = tmp_path / "run"
    main(TINY + extra + ["--arch", arch, "--meta-steps", "4", "--run-dir", str(run)])
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "lopt.pt"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert [r["step"] for r in rows if "meta_loss" in r] == [1, 2, 3, 4]
    assert any("val_score" in r for r in rows)
    net, blob = load_lopt(run / "lopt.pt")
    assert blob["meta"]["meta_step"] in (3, 4) and net.cfg.arch == arch
    assert net.cfg.odd == ("--no-odd" not in extra)  # the default (configs/meta/default.yaml) is odd
    model = torch.nn.Linear(3, 1)
    LSTMOptimizer(model.parameters(), lopt=run / "lopt.pt", horizon=10)  # the product loads as an optimizer

    before = torch.load(run / "checkpoint.pt", weights_only=False)["net"]
    main(TINY + extra + ["--arch", arch, "--meta-steps", "7", "--run-dir", str(run), "--resume"])
    after = torch.load(run / "checkpoint.pt", weights_only=False)
    assert after["meta_step"] == 7
    assert any(not torch.equal(before[k], after["net"][k]) for k in before)
    assert [r["step"] for r in _rows(run) if "meta_loss" in r] == [1, 2, 3, 4, 5, 6, 7]


def test_pes_resume_equals_an_uninterrupted_run(tmp_path):
    """Every particle's inner run and accumulated noise are checkpointed; the noise is seeded by the meta-step."""
    args = TINY + ["--meta-gradient", "pes", "--pes-pairs", "2", "--checkpoint-every", "1"]
    main(args + ["--meta-steps", "5", "--run-dir", str(tmp_path / "full")])
    main(args + ["--meta-steps", "2", "--run-dir", str(tmp_path / "part")])  # stops inside a task (horizon >= 6)
    main(args + ["--meta-steps", "5", "--run-dir", str(tmp_path / "part"), "--resume"])
    full, part = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("full", "part"))
    assert all(torch.equal(full["net"][k], part["net"][k]) for k in full["net"])
    assert torch.equal(full["streams"][0]["task"]["xi"], part["streams"][0]["task"]["xi"])
    with pytest.raises(SystemExit):  # the in-flight task is PES particles: a BPTT resume is refused in one line
        main(TINY + ["--meta-steps", "6", "--run-dir", str(tmp_path / "part"), "--resume"])


def test_non_finite_inner_run_is_skipped_never_saved(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--meta-steps", "3", "--run-dir", str(run), "--lr", "1e30"])  # every inner run overflows
    rows = [r for r in _rows(run) if "skipped" in r]
    assert rows[-1]["skipped"] == 3
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["net"].values())
    net, _ = load_lopt(run / "lopt.pt")  # loading refuses non-finite weights


def test_non_finite_meta_gradient_is_skipped_never_applied(tmp_path, monkeypatch):
    """A finite meta-loss whose meta-gradient is NaN (injected by a backward hook) must not reach the weights."""
    import metaopt.estimators as estimators

    real_unroll, calls = estimators.unroll, {"n": 0}

    def poisoned(*args, **kwargs):
        loss, next_ts, stats = real_unroll(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            loss.register_hook(lambda g: g * float("nan"))
        return loss, next_ts, stats

    monkeypatch.setattr(estimators, "unroll", poisoned)
    run = tmp_path / "run"
    main(TINY + ["--meta-steps", "2", "--run-dir", str(run), "--checkpoint-every", "1"])
    rows = [r for r in _rows(run) if "skipped" in r]
    assert [r["skipped"] for r in rows] == [0, 1]
    assert all(torch.isfinite(torch.tensor(r["meta_loss"])) for r in rows)  # the loss itself was finite
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["net"].values())
    assert all(torch.isfinite(s["exp_avg"]).all() for s in ckpt["meta_opt"]["state"].values())


def test_resume_without_checkpoint_and_bad_key_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--run-dir", str(tmp_path / "none"), "--resume"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--no-such-key", "1"])
    assert e.value.code == 2


def test_zero_meta_steps_and_a_bad_codec_image_are_refused_before_the_run_directory_exists(tmp_path, capsys,
                                                                                           image_folder):
    bad = image_folder / "train" / "zz.png"  # the codec "train" images are the meta-validation tasks' images
    bad.write_text("not an image")
    zero_steps = "error: meta_steps must be positive (or 0 with --init), got 0"
    for argv, message in [(TINY + ["--meta-steps", "0"], zero_steps),
                          (["--data", str(image_folder), "--meta-steps", "2"], f"error: cannot read image {bad}")]:
        with pytest.raises(SystemExit) as e:
            main(argv + ["--run-dir", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()


def test_lopt_pt_is_logged_as_a_learned_optimizer_artifact(tmp_path, monkeypatch):
    import hashlib

    from tests.metaopt.test_tracking import wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    main(TINY + ["--meta-steps", "3", "--run-dir", str(run)])
    records = wandb_records(next((run / "wandb").glob("offline-run-*/*.wandb")))
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "learned-optimizer" and [e.path for e in artifact.manifest.contents] == ["lopt.pt"]
    assert json.loads(artifact.metadata)["sha256"] == hashlib.sha256((run / "lopt.pt").read_bytes()).hexdigest()


def test_horizons_are_heavy_tailed_and_follow_the_curriculum():
    import random

    cfg = {"horizon_min": 20, "horizon_max": 1000, "curriculum_steps": 100, "unroll": 10}
    rng = random.Random(0)
    early = [sample_horizon(rng, 0, cfg) for _ in range(200)]
    late = [sample_horizon(rng, 100, cfg) for _ in range(2000)]
    assert set(early) == {20}
    assert all(h % 10 == 0 and 20 <= h <= 1000 for h in late)
    assert sorted(late)[len(late) // 2] < 200 < max(late)  # median short, tail long (log-uniform)


def _strip_times(rows):
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Real subprocesses killed with SIGKILL mid-run; the in-flight inner task is restored exactly."""
    import os
    import random
    import subprocess
    import sys

    from metaopt.tracking import read_metrics
    from tests.faults import start_and_kill

    args = TINY + ["--meta-steps", "40", "--checkpoint-every", "3", "--val-every", "10", "--threads", "1"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = lambda run, *extra: [sys.executable, "-m", "metaopt.meta_train", "--run-dir", str(run), *args, *extra]  # noqa: E731
    # the uninterrupted reference trains alongside the killed runs (on the other core)
    reference = subprocess.Popen(cmd(tmp_path / "full"), env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    run, rng, kills = tmp_path / "killed", random.Random(0), 0
    for _ in range(3):
        extra = ["--resume"] if (run / "checkpoint.pt").exists() else []
        kills += start_and_kill(cmd(run, *extra), env, run / "metrics.jsonl", rng, new_rows=3, max_delay=0.2)
        if (run / "checkpoint.pt").exists():
            torch.load(run / "checkpoint.pt", weights_only=False)  # never torn
    assert kills >= 1
    subprocess.run(cmd(run, "--resume"), env=env, check=True, capture_output=True)
    assert reference.wait(timeout=300) == 0
    assert _strip_times(read_metrics(run / "metrics.jsonl")) == _strip_times(read_metrics(tmp_path / "full" / "metrics.jsonl"))
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)["net"]
    resumed = torch.load(run / "checkpoint.pt", weights_only=False)["net"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_codec_tasks_draw_their_distortion_and_validate_on_images_of_their_own(image_folder, tmp_path):
    from metaopt.tasks.codec import CodecFamily
    family = CodecFamily(["bmshj2018-hyperprior-deep"], [[8, 8]], 0.01, 0.01, ["rmse", "mse"], data=image_folder)
    drawn = {family.sample(seed, "train").loss_fn.distortion for seed in range(8)}
    assert drawn == {"rmse", "mse"}
    assert family.sample(0, "train").batches.paths == list_images(image_folder, "train")
    assert family.sample(0, "test").batches.paths == list_images(image_folder, "test")  # the folder's metaval split
    other = tmp_path / "val"
    other.mkdir()
    write_image(other / "v.png", 64, 64, seed=9)
    family = CodecFamily(["bmshj2018-hyperprior-deep"], [[8, 8]], 0.01, 0.01, data=image_folder, val_data=other)
    assert family.sample(0, "test").batches.paths == [other / "v.png"]
    with pytest.raises(UserError, match="also meta-training images"):
        CodecFamily(["bmshj2018-hyperprior-deep"], [[8, 8]], 0.01, 0.01, data=image_folder,
                    val_data=image_folder / "train")
    with pytest.raises(UserError, match="distortion"):
        CodecFamily(["bmshj2018-hyperprior-deep"], [[8, 8]], 0.01, 0.01, ["psnr"])


def test_the_codec_family_knows_its_widest_fan_in(image_folder):
    from metaopt.tasks.codec import CodecFamily
    family = CodecFamily(["bmshj2018-hyperprior-deep", "bmshj2018-factorized-deep"], [[8, 12], [16, 16]], 0.01, 0.01,
                         data=image_folder)
    assert family.max_fan_in() == 16 * 5 * 5  # the 5x5 convolutions of the N=16 codecs


def test_validation_is_paired_and_leaves_the_rng_alone():
    """The codec's quantisation noise comes from the global RNG: validation must draw the same noise for every
    checkpoint it scores (so scores differ only by the optimizer), and must not move meta-training's stream."""
    from metaopt.meta_train import validate
    from metaopt.tasks.codec import CodecFamily
    family = CodecFamily(["bmshj2018-hyperprior-deep"], [[8, 8]], 0.01, 0.01, crop=64, batch_size=1)
    cfg = {"val_tasks": 1, "val_steps": 4}
    adam = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    torch.manual_seed(0)
    first = validate(adam, family, cfg, torch.device("cpu"))
    after_first = torch.rand(1)
    torch.manual_seed(123)  # a different global state must not change the score
    second = validate(adam, family, cfg, torch.device("cpu"))
    assert first == second
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after_first)  # validate() consumed nothing from the global stream


def test_a_version_3_checkpoint_resumes_as_one_stream(tmp_path):
    """Version 3 held the single run in flight, its task counter and the generators at the top level; a run resumed
    from it must equal one resumed from the same checkpoint in today's layout."""
    args = TINY + ["--meta-steps", "4"]
    main(args + ["--run-dir", str(tmp_path / "v4")])
    ckpt = torch.load(tmp_path / "v4" / "checkpoint.pt", weights_only=False)
    stream = ckpt["streams"][0]
    old = {k: v for k, v in ckpt.items() if k not in ("streams", "world_size")}
    old.update(version=3, task_index=stream["tasks"], py_rng=stream["py_rng"], rng=stream["rng"],
               task={"task_index": stream["tasks"] - 1, **stream["task"]})
    (tmp_path / "v3").mkdir()
    torch.save(old, tmp_path / "v3" / "checkpoint.pt")
    for run in ("v3", "v4"):
        main(TINY + ["--meta-steps", "7", "--run-dir", str(tmp_path / run), "--resume"])
    v3, v4 = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=False) for r in ("v3", "v4"))
    assert v3["version"] == v4["version"] == 4 and v3["meta_step"] == 7
    assert all(torch.equal(v3["net"][k], v4["net"][k]) for k in v4["net"])
    assert v3["streams"][0]["tasks"] == v4["streams"][0]["tasks"]


def test_tasks_per_step_and_world_size_are_checked(tmp_path):
    with pytest.raises(SystemExit) as e:  # started without torchrun: a world of one
        main(TINY + ["--run-dir", str(tmp_path / "a"), "--world-size", "2"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--run-dir", str(tmp_path / "b"), "--tasks-per-step", "0"])
    assert e.value.code == 2
    main(TINY + ["--run-dir", str(tmp_path / "c"), "--meta-steps", "2", "--tasks-per-step", "2",
          "--checkpoint-every", "1"])
    with pytest.raises(SystemExit) as e:  # two streams in the checkpoint, one asked for
        main(TINY + ["--run-dir", str(tmp_path / "c"), "--meta-steps", "3", "--resume"])
    assert e.value.code == 2


def test_init_starts_from_a_stored_optimizer_and_refuses_another_architecture(tmp_path, capsys):
    main(TINY + ["--meta-steps", "3", "--run-dir", str(tmp_path / "first")])
    stored, _ = load_lopt(tmp_path / "first" / "lopt.pt")
    cfg = parse_config(TINY + ["--init", str(tmp_path / "first" / "lopt.pt")], "meta/default.yaml", "")
    trainer = MetaTrainer(cfg, World(), torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(trainer.net.state_dict().values(), stored.state_dict().values()))
    fresh = MetaTrainer(parse_config(TINY, "meta/default.yaml", ""), World(), torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(fresh.net.state_dict().values(), stored.state_dict().values()))

    main(TINY + ["--meta-steps", "2", "--init", str(tmp_path / "first" / "lopt.pt"), "--run-dir", str(tmp_path / "ft")])
    rows = _rows(tmp_path / "ft")
    assert rows[1]["step"] == 0 and "val_score" in rows[1]  # the starting weights are scored, and kept unless beaten
    main(TINY + ["--meta-steps", "0", "--init", str(tmp_path / "first" / "lopt.pt"), "--run-dir", str(tmp_path / "0")])
    kept, blob = load_lopt(tmp_path / "0" / "lopt.pt")  # no meta-step: the stored weights, scored and stored again
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), stored.state_dict().values()))
    assert "max_fan_in" not in blob  # the regression family has no fan-in rule (codec: the next test)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--hidden", "8", "--init", str(tmp_path / "first" / "lopt.pt"), "--run-dir", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: init ") and "another learned-optimizer architecture" in err[0]
