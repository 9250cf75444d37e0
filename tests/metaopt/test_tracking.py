import pytest

from metaopt.tracking import Run, read_metrics


def test_offline_wandb_run_is_written_next_to_the_local_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = Run(tmp_path / "r", {"lr": 1e-3, "optimizer": "adam"}, job_type="codec-train", group="g", tags=["adam"])
    assert run.wandb is not None
    run.log({"loss": 1.5, "bpp": 0.2}, step=1)
    run.log({"loss": 1.2, "bpp": 0.2}, step=2)
    run.finish()
    assert [r["loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1.5, 1.2]
    offline = list((tmp_path / "r" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].glob("*.wandb"))
    assert (tmp_path / "r" / "config.yaml").read_text().startswith("lr:")


def test_wandb_failures_never_stop_the_run(tmp_path, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "online")

    def unreachable(**kwargs):
        raise wandb.errors.CommError("server unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    run = Run(tmp_path / "r", {}, job_type="x")
    run.log({"loss": 1.0}, step=1)
    run.finish()
    assert "warning: W&B init failed" in capsys.readouterr().err
    assert read_metrics(tmp_path / "r" / "metrics.jsonl")[0]["loss"] == 1.0


def test_real_wandb_online_with_unreachable_server_and_bad_key_is_not_fatal(tmp_path):
    """The real package, no mocks: online mode against a closed port with a made-up key."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40,
           "WANDB_INIT_TIMEOUT": "5"}
    code = ("import sys; from metaopt.tracking import Run; r = Run(sys.argv[1], {'a': 1}, job_type='x'); "
            "r.log({'loss': 1.0}, step=1); r.log({'loss': 0.5}, step=2); r.finish()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning: W&B init failed" in proc.stderr and "Traceback" not in proc.stderr
    assert [r["loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1.0, 0.5]


def test_a_failing_log_call_disables_the_mirror_but_keeps_local_metrics(tmp_path, capsys):
    run = Run(tmp_path / "r", {}, job_type="x")

    class Broken:
        def log(self, *a, **k):
            raise OSError("No space left on device")

    run.wandb = Broken()
    run.log({"loss": 2.0}, step=1)
    run.log({"loss": 1.0}, step=2)
    run.finish()
    assert "No space left" in capsys.readouterr().err and run.wandb is None
    assert len(read_metrics(tmp_path / "r" / "metrics.jsonl")) == 2


def test_resume_drops_rows_after_the_checkpoint_and_torn_lines(tmp_path):
    run = Run(tmp_path / "r", {}, job_type="x")
    for step in (1, 2, 3):
        run.log({"loss": float(step)}, step=step)
    run.finish()
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a kill in the middle of a write
    resumed = Run(tmp_path / "r", {}, job_type="x", resume_step=2)
    resumed.log({"loss": 9.0}, step=3)
    resumed.finish()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [
        (1, 1.0), (2, 2.0), (3, 9.0)]


def test_non_finite_values_stay_visible(tmp_path):
    run = Run(tmp_path / "r", {}, job_type="x")
    run.log({"loss": float("nan")}, step=1)
    run.finish()
    assert read_metrics(tmp_path / "r" / "metrics.jsonl")[0]["loss"] == "nan"


@pytest.mark.parametrize("kill_at", [0, 1])
def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch, kill_at):
    import torch

    from metaopt import checkpoint

    path = tmp_path / "ckpt.pt"
    checkpoint.atomic_save({"step": 1}, path)
    calls = {"n": 0}
    real_save = torch.save

    def dying_save(obj, f):
        if calls["n"] == kill_at:
            f.write(b"partial")
            raise KeyboardInterrupt
        calls["n"] += 1
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"step": 2}, path)
        checkpoint.atomic_save({"step": 3}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert checkpoint.load(path)["step"] == 1 + kill_at
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
