import json
import statistics

import pytest

from metaopt.basis import FREQUENCY
from metaopt.config import CONFIG_DIR, parse_config, read_yaml
from studies import bench
from studies.bench import codec_scales, main

# Tiny everything: one codec scale of a few thousand parameters, meta-training at K=2 for 2 and 20 truncations.
TINY = ["--scale", "paper", "--paper-N", "8", "--paper-M", "8", "--paper-crop", "64", "--paper-batch-size", "1",
        "--repeats", "1", "--threads", "1", "--meta-N", "8", "--meta-M", "8", "--meta-batch-size", "1",
        "--meta-unrolls", "2", "--meta-horizon-unroll", "2", "--meta-truncations", "2",
        "--compile", "false"]  # the compiled step is tested in test_fused/test_optim; compiling takes ~1 min here


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    printed = main(TINY + ["--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(printed))  # --out holds what was printed
    return printed


def test_report_has_every_figure_with_sane_values(report):
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["threads"] == 1 and machine["torch"]
    assert machine["load_avg_1min_start"] >= 0 and machine["load_avg_1min_end"] >= 0
    described = report["settings"]["learned_optimizers"]
    assert set(described) == {"lstm-coordinate", "lstm-tensor"}
    assert all(d.startswith("shipped metaopt/pretrained/lopt") or "fresh" in d for d in described.values())
    paper = report["codec"]["paper"]
    assert (paper["model"], paper["N"], paper["M"], paper["crop"], paper["batch_size"]) == \
        ("bmshj2018-hyperprior", 8, 8, 64, 1)
    assert paper["net_params"] > 0
    names = {"adam", "lstm-coordinate", "lstm-tensor"}
    for kind in ("step_time", "update_time", "peak_mem"):
        figures = paper[f"{kind}_s" if kind != "peak_mem" else "peak_mem_mb"]
        assert set(figures) == names and all(t > 0 for t in figures.values())
        for name in names - {"adam"}:
            assert paper[f"{kind}_ratio_over_adam"][name] == pytest.approx(figures[name] / figures["adam"])
    # the optimizer update is part of the training step, and the step splits into the optimizer's part and the rest
    assert all(paper["update_time_s"][k] < paper["step_time_s"][k] for k in names)
    for name in names:
        inside, rest = paper["optimizer_in_step_s"][name], paper["rest_of_step_s"][name]
        assert 0 < inside < paper["step_time_s"][name] and rest == pytest.approx(paper["step_time_s"][name] - inside)
        # the medians come from the recorded rounds
        for figure in ("step_time", "optimizer_in_step"):
            rounds = paper[f"{figure}_rounds_s"][name]
            assert len(rounds) == report["settings"]["repeats"]
            assert paper[f"{figure}_s"][name] == statistics.median(rounds)
    # the shipped lopt.pt runs in the Shampoo basis: each round times a whole refresh period, and no update was
    # skipped (a skipped one would time as nearly free)
    assert report["settings"]["steps_per_round"] == FREQUENCY
    assert paper["skipped_updates"] == {"lstm-coordinate": 0, "lstm-tensor": 0}

    meta = report["meta_training"]
    assert [r["unroll"] for r in meta["vs_unroll"]] == [2]
    one, ten = meta["vs_horizon"]
    assert (one["horizon_steps"], ten["horizon_steps"]) == (4, 40) and (one["truncations"], ten["truncations"]) == (2, 20)
    for row in meta["vs_unroll"] + meta["vs_horizon"]:
        assert row["meta_step_s"] > 0 and row["peak_mem_mb"] > 0 and row["graph_nodes"] > 0 and row["finite"]
    assert meta["peak_mem_growth_over_horizon"] == pytest.approx(ten["peak_mem_mb"] / one["peak_mem_mb"])
    goals = report["goals"]
    for name in ("lstm-coordinate", "lstm-tensor"):
        goal = goals[f"paper_step_time_ratio_{name}_over_adam"]
        assert goal["value"] == paper["step_time_ratio_over_adam"][name] and goal["met"] == (goal["value"] <= 1.10)
    assert isinstance(goals["meta_peak_mem_flat_over_horizon"]["met"], bool)


def test_meta_training_memory_does_not_grow_with_the_horizon(report):
    """10x the truncations: the same meta-graph per truncation (nothing of earlier truncations stays attached),
    and no peak-memory growth beyond allocator noise. Were the graphs kept, each of the 19 extra truncations
    would add a whole truncation's graph, ~19x the 1x peak."""
    one, ten = report["meta_training"]["vs_horizon"]
    assert one["graph_nodes_constant"] and ten["graph_nodes_constant"]
    assert ten["graph_nodes"] == one["graph_nodes"]
    assert ten["peak_mem_mb"] <= 2 * one["peak_mem_mb"] + 24, (one["peak_mem_mb"], ten["peak_mem_mb"])


def test_the_machine_records_the_variables_that_steer_timing(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")
    monkeypatch.setenv("UNRELATED_TO_TIMING", "x")
    env = bench.machine(bench.torch.device("cpu"), 1)["env"]
    assert env["MALLOC_MMAP_THRESHOLD_"] == "33554432" and "UNRELATED_TO_TIMING" not in env


def test_cpu_scale_defaults_to_the_codec_default_config():
    cfg = parse_config(["--scale", "cpu"], "bench/default.yaml", "")
    codec_default = read_yaml(CONFIG_DIR / "codec" / "default.yaml")
    assert codec_scales(cfg) == {"cpu": {k: codec_default[k] for k in ("model", "N", "M", "batch_size", "crop")}}
    paper = codec_scales(parse_config([], "bench/default.yaml", ""))["paper"]
    assert paper == {"model": "bmshj2018-hyperprior", "N": 128, "M": 192, "batch_size": 8, "crop": 256}


@pytest.mark.parametrize("flags, message", [
    (["--scale", "huge"], "--scale must be paper, cpu or both"),
    (["--repeats", "0"], "repeats must be >= 1"),
    (["--steps-per-round", "0"], "steps_per_round must be null or a positive integer"),
    (["--steps-per-round", "x"], "steps_per_round must be null or a positive integer"),
    (["--paper-crop", "100"], "paper_crop must be a multiple of 64"),
    (["--cpu-model", "nope", "--scale", "cpu"], "unknown cpu_model"),
    (["--meta-unrolls", "0"], "meta_unrolls must be a list of positive integers"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--archs", "layer"], "archs must be a non-empty list of coordinate, tensor"),
    (["--lopt", "/no/such/lopt.pt"], "/no/such/lopt.pt"),
    (["--compile", "maybe"], "compile must be a non-empty list of true/false"),
])
def test_bad_flags_are_one_line_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_given_lopt_file_is_timed_alone_under_its_arch(tmp_path):
    from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
    from metaopt.optim import save_lopt
    path = tmp_path / "tensor.pt"
    # one that reads the training progress, which needs a planned length (v3 does)
    cfg = LSTMConfig(arch="tensor", hidden=4, features=["grad_logsign", "adam_grad", "momenta", "progress"])
    save_lopt(LSTMOptimizerNet(cfg), path, lr=1e-3)
    report = main(TINY + ["--meta", "false", "--lopt", str(path), "--steps-per-round", "2",
                          "--out", str(tmp_path / "b.json")])
    assert report["settings"]["learned_optimizers"] == {"lstm-tensor": f"{path}, eager step"}
    assert report["settings"]["steps_per_round"] == 2  # as asked, though this network has no basis to refresh
    assert set(report["codec"]["paper"]["step_time_s"]) == {"adam", "lstm-tensor"}


def test_each_learned_optimizer_is_timed_eager_and_compiled():
    from studies.bench import lopt_sources
    sources, described = lopt_sources(parse_config(["--archs", "tensor"], "bench/default.yaml", ""))
    assert sources["lstm-tensor"]["compile"] is False and sources["lstm-tensor-compiled"]["compile"] is True
    assert sources["lstm-tensor"]["lopt"] == sources["lstm-tensor-compiled"]["lopt"]
    assert "compiled" in described["lstm-tensor-compiled"] and "eager" in described["lstm-tensor"]


def test_each_round_times_several_calls_and_reports_seconds_per_call(monkeypatch):
    """On a fake clock that each call moves on by its function's cost: the medians are exact per-call costs, and
    each function ran (warmup + repeats) rounds of calls_per_round calls."""
    clock, calls = [0.0], {"a": 0, "b": 0}

    def costing(name, seconds):
        def call():
            calls[name] += 1
            clock[0] += seconds * (3 if calls[name] % 10 == 0 else 1)  # every 10th call is dearer, like a refresh
        return call

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    rounds = bench.interleaved_rounds({"a": costing("a", 1.0), "b": costing("b", 2.0)}, repeats=3, warmup=1,
                                      device=bench.torch.device("cpu"), calls_per_round=10)
    assert calls == {"a": 40, "b": 40}
    # the dear call counted once per round, not left out
    assert rounds == {"a": pytest.approx([1.2] * 3), "b": pytest.approx([2.4] * 3)}
    assert bench.medians({"a": [3.0, 1.0, 2.0]}) == {"a": 2.0}


def test_rounds_span_a_basis_refresh_only_when_an_optimizer_has_one(tmp_path):
    from metaopt.lstm import LSTMConfig, LSTMOptimizerNet
    from metaopt.optim import PRETRAINED, save_lopt
    coordinate = tmp_path / "coordinate.pt"
    save_lopt(LSTMOptimizerNet(LSTMConfig(hidden=4)), coordinate, lr=1e-3)
    config = "bench/default.yaml"
    coordinate_files = {**bench.lopt_sources(parse_config(["--archs", "tensor"], config, ""))[0],
                        **bench.lopt_sources(parse_config(["--lopt", str(coordinate)], config, ""))[0]}
    assert bench.steps_per_round(coordinate_files) == 1
    in_basis = bench.lopt_sources(parse_config(["--lopt", str(PRETRAINED)], config, ""))[0]
    assert bench.steps_per_round(in_basis) == FREQUENCY


def test_step_seconds_times_each_optimizer_step_through_the_hooks_and_rounds_take_their_means(monkeypatch):
    import torch

    from metaopt.optim import LSTMOptimizer
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = LSTMOptimizer([param])  # a subclass's own step, wrapped by torch.optim like Adam's
    seconds = bench.step_seconds(optimizer, torch.device("cpu"))
    optimizer.register_step_post_hook(lambda *_: None)  # a later hook does not disturb the timing
    for cost in (1.0, 2.0, 4.0, 8.0):
        param.grad = torch.ones(3)
        clock[0] += 100.0  # time outside the step does not count
        optimizer.step(lambda cost=cost: clock.__setitem__(0, clock[0] + cost))  # the closure runs inside the step
    assert seconds == [1.0, 2.0, 4.0, 8.0]
    # the last round of 2 calls (4, 8): mean 6; single calls, the last 3 (1, 2, 4 after the untimed 9): median 2
    assert bench.round_means(seconds, repeats=1, calls_per_round=2) == [6.0]
    assert bench.round_means([9.0, 1.0, 2.0, 4.0], repeats=3, calls_per_round=1) == [1.0, 2.0, 4.0]
