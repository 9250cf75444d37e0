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


def wandb_records(path, timeout=60.0):
    """The records of a finished run's .wandb file, parsed by wandb's own protobuf schema. The framing is
    LevelDB's log format (32 KiB blocks of chunks: crc32 u32, length u16, type u8 FULL=1 FIRST=2 MIDDLE=3
    LAST=4), which the wandb package reads only in its Go core, so it is unpacked here. That core writes the
    file in the background: `finish()` may return before the last records (up to `exit`) are on disk."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _wandb_records(path):
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, pos)
        if pos + 7 + length > len(data):  # still being written
            break
        pending += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_offline_run_file_holds_metric_definitions_artifacts_and_best_summaries(tmp_path, monkeypatch):
    import hashlib
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    weights = tmp_path / "lopt.pt"
    weights.write_bytes(b"learned optimizer weights")
    run = Run(tmp_path / "r", {"lr": 1e-3}, job_type="meta-train")
    for step, val_loss in [(1, 2.0), (2, 1.0), (3, 3.0)]:
        run.log({"loss": val_loss, "val_loss": val_loss, "val_psnr": 30 - val_loss}, step=step)
    digest = run.log_artifact(weights, "learned-optimizer", name="lopt")
    run.summary({"val_loss": 3.0, "best_val_loss": 1.0})  # a final row must not replace the best val_loss
    run.finish()
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()

    records = wandb_records(next((tmp_path / "r" / "wandb").glob("offline-run-*/*.wandb")))
    metrics = {r.metric.name or r.metric.glob_name: r.metric for r in records if r.WhichOneof("record_type") == "metric"}
    assert metrics["*"].step_metric == "step" and metrics["val_loss"].step_metric == "step"
    assert metrics["val_loss"].summary.min and metrics["val_psnr"].summary.max
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [(a.name, a.type) for a in artifacts] == [("lopt", "learned-optimizer")]
    assert json.loads(artifacts[0].metadata)["sha256"] == digest
    assert [e.path for e in artifacts[0].manifest.contents] == ["lopt.pt"]
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["step"] for h in history] == [1, 2, 3] and [h["val_loss"] for h in history] == [2.0, 1.0, 3.0]
    summaries = [r.summary for r in records if r.WhichOneof("record_type") == "summary"]
    final = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for s in summaries for i in s.update}
    assert final["best_val_loss"] == 1.0 and final["val_loss"] == {"min": 1.0} and final["val_psnr"] == {"max": 29.0}


def test_runs_started_by_wandb_agent_follow_the_agents_mode(tmp_path, monkeypatch):
    import wandb

    seen = []

    def init(**kwargs):
        seen.append(kwargs["mode"])
        raise OSError("no W&B server in the tests")

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.delenv("WANDB_MODE")
    Run(tmp_path / "a", {}, job_type="x").finish()  # a plain run: offline by default
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    Run(tmp_path / "b", {}, job_type="x").finish()  # started by `wandb agent`: wandb's own default (online)
    monkeypatch.setenv("WANDB_MODE", "offline")
    Run(tmp_path / "c", {}, job_type="x").finish()  # the agent's environment says offline
    assert seen == ["offline", None, "offline"]


def test_online_runs_print_their_url(tmp_path, monkeypatch, capsys):
    import wandb

    class OnlineRun:  # the part of wandb.init's run that Run touches
        url = "https://wandb.ai/someone/metaopt-codec/runs/abc123"

        def define_metric(self, *args, **kwargs):
            pass

        def finish(self):
            pass

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", lambda **kwargs: OnlineRun())
    Run(tmp_path / "r", {}, job_type="x").finish()
    assert f"W&B run: {OnlineRun.url}" in capsys.readouterr().err
