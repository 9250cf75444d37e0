import json

import pytest
import torch

from metaopt.meta_train import main, sample_horizon
from metaopt.optim import LSTMOptimizer, load_lopt

TINY = ["--task", "regression", "--batch-size", "8", "--hidden", "4", "--unroll", "3", "--horizon-min", "6",
        "--horizon-max", "12", "--curriculum-steps", "4", "--val-every", "3", "--val-tasks", "1",
        "--val-steps", "10", "--log-every", "1", "--checkpoint-every", "2", "--lr", "0.01", "--loss-scale", "1"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_smoke_run_and_resume(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--meta-steps", "4", "--run-dir", str(run)])
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "lopt.pt"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert [r["step"] for r in rows if "meta_loss" in r] == [1, 2, 3, 4]
    assert any("val_score" in r for r in rows)
    net, blob = load_lopt(run / "lopt.pt")
    assert blob["meta"]["meta_step"] in (3, 4)
    model = torch.nn.Linear(3, 1)
    LSTMOptimizer(model.parameters(), lopt=run / "lopt.pt")  # the product loads as an optimizer

    before = torch.load(run / "checkpoint.pt", weights_only=False)["net"]
    main(TINY + ["--meta-steps", "7", "--run-dir", str(run), "--resume"])
    after = torch.load(run / "checkpoint.pt", weights_only=False)
    assert after["meta_step"] == 7
    assert any(not torch.equal(before[k], after["net"][k]) for k in before)
    assert [r["step"] for r in _rows(run) if "meta_loss" in r] == [1, 2, 3, 4, 5, 6, 7]


def test_non_finite_inner_run_is_skipped_never_saved(tmp_path):
    run = tmp_path / "run"
    main(TINY + ["--meta-steps", "3", "--run-dir", str(run), "--lr", "1e30"])  # every inner run overflows
    rows = [r for r in _rows(run) if "skipped" in r]
    assert rows[-1]["skipped"] == 3
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ckpt["net"].values())
    net, _ = load_lopt(run / "lopt.pt")  # loading refuses non-finite weights


def test_resume_without_checkpoint_and_bad_key_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(TINY + ["--run-dir", str(tmp_path / "none"), "--resume"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--no-such-key", "1"])
    assert e.value.code == 2


def test_horizons_are_heavy_tailed_and_follow_the_curriculum():
    import random

    cfg = {"horizon_min": 20, "horizon_max": 1000, "curriculum_steps": 100, "unroll": 10}
    rng = random.Random(0)
    early = [sample_horizon(rng, 0, cfg) for _ in range(200)]
    late = [sample_horizon(rng, 100, cfg) for _ in range(2000)]
    assert set(early) == {20}
    assert all(h % 10 == 0 and 20 <= h <= 1000 for h in late)
    assert sorted(late)[len(late) // 2] < 200 < max(late)  # median short, tail long (log-uniform)
