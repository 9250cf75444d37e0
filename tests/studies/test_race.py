import json
import math

import pytest

from codec.data import list_images
from codec.rd import bd_rate
from metaopt.errors import UserError
from metaopt.tracking import read_metrics
from studies import race

JPEG = {"name": "jpeg", "bpp": [0.2, 0.4, 0.8, 1.6], "psnr": [24.0, 27.0, 30.0, 33.0]}


def _cfg(**overrides):
    return {"contenders": ["adam-plateau", "soap", "lstm"], "lrs": [1e-3, 3e-3], "seeds": 3, "tune_seeds": [100],
            "seconds": 30, "mark_seconds": 10, "tune_seconds": 5, "steps": 1000, "tune_steps": 100,
            "tune_images": 0.1, "lopt": None, "data": None, "device": "cpu", "group": "g",
            "codec": "configs/codec/photos.yaml", "codec_overrides": {}, **overrides}


def test_contender_names():
    assert race.parse_contender("adam-plateau") == ("adam", "plateau")
    assert race.parse_contender("soap-cosine") == ("soap", "cosine")
    assert race.parse_contender("schedulefree") == ("schedulefree", "constant")


@pytest.mark.parametrize("overrides, message", [
    ({"contenders": ["adam", "rmsprop"]}, "unknown optimizer 'rmsprop'"),
    ({"contenders": ["adam-step"]}, "unknown optimizer 'adam-step'"),
    ({"contenders": ["lstm"]}, "at least one hand-designed optimizer"),
    ({"contenders": ["adam", "adam"]}, "distinct names"),
    ({"contenders": ["schedulefree-cosine"]}, "use lr_schedule constant"),
    ({"mark_seconds": 60}, "no mark at all"),
    ({"lrs": []}, "lrs is empty"),
    ({"tune_seconds": 0}, "tune_seconds must be positive"),
    ({"tune_images": 1.0}, "fraction of training images"),
    ({"tune_seeds": [1, 5]}, r"tune_seeds \[1\] are also reported seeds"),
])
def test_bad_plans_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        race.check_config(_cfg(**overrides))


def test_tuning_sees_neither_the_held_out_images_nor_the_tuning_images_in_training(tmp_path, image_folder):
    folders = race.image_folders(str(image_folder), tmp_path, fraction=0.1)
    names = {split: {p.resolve() for p in list_images(folders["tune"], split)} for split in ("train", "test")}
    race_names = {split: {p.resolve() for p in list_images(folders["race"], split)} for split in ("train", "test")}
    original = {split: {p.resolve() for p in list_images(str(image_folder), split)} for split in ("train", "test")}
    assert len(names["test"]) == 1 and not names["train"] & names["test"]
    assert names["train"] | names["test"] == original["train"] == race_names["train"]
    assert race_names["test"] == names["test"]  # the race's validation (plateau, best.pt) uses the tuning images
    assert not (names["train"] | names["test"]) & original["test"]
    race.image_folders(str(image_folder), tmp_path, fraction=0.1)  # again (a resumed race): same links, no error


def test_every_contender_is_tuned_on_the_same_budget(tmp_path):
    cfg = _cfg()
    plan = race.check_config(cfg)
    jobs = race.tuning_runs({"model": "m"}, cfg, plan, tmp_path, tmp_path / "tune-data")
    assert len(jobs) == 3 * 2 * 1
    for contender in cfg["contenders"]:
        runs = [c for path, c in jobs if path.name.startswith(contender + "-lr")]
        assert sorted(c["lr"] for c in runs) == cfg["lrs"]
        assert {(c["max_seconds"], c["steps"], c["data"], c["eval_every_seconds"]) for c in runs} == {
            (5, 100, str(tmp_path / "tune-data"), 0)}
    plateau = next(c for path, c in jobs if path.name.startswith("adam-plateau"))
    assert (plateau["optimizer"], plateau["lr_schedule"], plateau["threads"]) == ("adam", "plateau", 1)
    runs = race.race_runs({"model": "m"}, cfg, plan, tmp_path, tmp_path / "race-data",
                          {c: 1e-3 for c in cfg["contenders"]})
    path, config = runs["soap"][2]
    assert path == tmp_path / "runs" / "soap-lr0.001-s2"
    assert (config["max_seconds"], config["eval_every_seconds"], config["seed"]) == (30, 10, 2)


def test_null_steps_plan_each_contenders_steps_from_its_tuning_speed(tmp_path):
    cfg = _cfg(steps=None, contenders=["adam-cosine", "soap-cosine"], lrs=[1e-3])
    rows = {}
    for contender, (steps, seconds) in {"adam-cosine": (100, 10.0), "soap-cosine": (100, 20.0)}.items():
        path = tmp_path / "tune" / f"{contender}-lr0.001-s100"
        path.mkdir(parents=True)
        (path / "metrics.jsonl").write_text(json.dumps({"step": steps, "wall_time": seconds}) + "\n")
        rows[path] = {}
    planned = race.planned_steps(cfg, tmp_path, rows)
    assert planned == {"adam-cosine": 330, "soap-cosine": 165}  # 30 s x steps per second x 1.1
    runs = race.race_runs({"model": "m"}, cfg, race.check_config(cfg), tmp_path, tmp_path, {c: 1e-3 for c in planned},
                          planned)
    assert runs["soap-cosine"][0][1]["steps"] == 165
    assert race.planned_steps(_cfg(), tmp_path, rows) is None  # steps given: every run plans them


def test_a_point_against_the_anchor_is_bd_rate_at_its_quality():
    shifted = [0.8 * r for r in JPEG["bpp"]]  # 20% fewer bits at every quality: BD-rate -20%
    assert bd_rate(JPEG["bpp"], JPEG["psnr"], shifted, JPEG["psnr"]) == pytest.approx(-20)
    for psnr in (24.0, 25.5, 31.0):  # a point of that shifted curve, at a knot or between knots
        jpeg_rate = 1.0 / (1 + race.versus_anchor(JPEG["bpp"], JPEG["psnr"], 1.0, psnr)["bd_rate"] / 100)
        assert race.versus_anchor(JPEG["bpp"], JPEG["psnr"], 0.8 * jpeg_rate, psnr)["bd_rate"] == pytest.approx(-20)
    at_jpeg_rate = race.versus_anchor(JPEG["bpp"], JPEG["psnr"], 0.4, 28.0)
    assert at_jpeg_rate["psnr_gain"] == pytest.approx(1.0)  # JPEG reaches 27 dB at 0.4 bpp
    assert at_jpeg_rate["bd_rate"] < 0  # and needs more than 0.4 bpp for 28 dB
    assert race.versus_anchor(JPEG["bpp"], JPEG["psnr"], 5.0, 40.0) == {"bd_rate": None, "psnr_gain": None}


def _write_run(path, losses, seconds=None, psnr=None, diverged=False):
    """A codec.train metrics file with mark rows (every 10 s) between ordinary rows."""
    path.mkdir(parents=True)
    rows = []
    for k, loss in enumerate(losses):
        rows.append({"step": 10 * k + 5, "loss": 1.0, "wall_time": 10.0 * k + 5})
        rows.append({"step": 10 * k + 10, "mark": 10 * (k + 1), "wall_time": (seconds or [10.0 * (k + 1)] * 9)[k],
                     "rd_bpp": 0.4, "rd_psnr_rgb": (psnr or 28.0), "rd_ms_ssim_rgb": 0.9, "rd_loss": loss})
    if diverged:
        rows.append({"step": 10 * len(losses) + 5, "loss": float("nan"), "wall_time": 10.0 * len(losses) + 5,
                     "stopped_diverged": True})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_run_that_finished_its_steps_early_keeps_its_last_mark(tmp_path):
    finished = race.carried_marks(_write_run(tmp_path / "done", [3.0, 2.0]), [10, 20, 30])
    assert [(m["mark"], m["rd_loss"], m["seconds"]) for m in finished] == [(10, 3.0, 10.0), (20, 2.0, 20.0),
                                                                            (30, 2.0, 20.0)]
    assert finished[-1]["carried"] and not finished[1].get("carried")
    diverged = race.carried_marks(_write_run(tmp_path / "diverged", [3.0, 2.0], diverged=True), [10, 20, 30])
    assert [m["mark"] for m in diverged] == [10, 20]


def test_summary_report_and_plot(tmp_path):
    curves = {  # held-out RD loss at the marks 10, 20, 30 s, per seed
        "adam-plateau": [[3.0, 2.0, 1.5], [3.0, 2.2, 1.6], [3.0, 2.1, 1.4]],  # best hand-designed: median final 1.5
        "soap": [[3.0, 2.5, 1.9], [3.0, 2.6, 1.8], [3.0, 2.4, float("nan")]],
        "lstm": [[2.0, 1.5, 1.2], [2.5, 1.6, 1.3], [2.0, 1.9]],  # the last seed stopped early (diverged)
    }
    runs = {c: {s: _write_run(tmp_path / f"{c}-s{s}", losses, diverged=len(losses) < 3) for s, losses in
                enumerate(by_seed)} for c, by_seed in curves.items()}
    tuning = {c: ({1e-3: {"train_loss": 1.0, "val_loss": 2.0, "diverged": 0},
                   3e-3: {"train_loss": math.inf, "val_loss": math.inf, "diverged": 1}}, 1e-3) for c in curves}
    summary = race.summarize(_cfg(), runs, tuning, JPEG)
    assert summary["best_hand_designed"] == "adam-plateau" and summary["target_rd_loss"] == 1.5
    adam, lstm, soap = (summary["contenders"][c] for c in ("adam-plateau", "lstm", "soap"))
    assert [adam["seeds"][s]["seconds_to_target"] for s in "012"] == [30.0, None, 30.0]
    assert adam["median_seconds_to_target"] == 30.0
    assert [lstm["seeds"][s]["seconds_to_target"] for s in "012"] == [20.0, 30.0, None]
    assert summary["learned_vs_best_seconds_ratio"] == {"lstm": 1.0}
    assert soap["median_seconds_to_target"] is None and soap["seconds_ratio_vs_best"] is None
    assert lstm["seeds"]["2"]["final_rd_loss"] == math.inf and soap["seeds"]["2"]["final_rd_loss"] == math.inf
    assert lstm["per_mark"][0]["rd_loss"] == 2.0 and lstm["per_mark"][2]["rd_loss"] == 1.3  # median of 1.2, 1.3, inf
    assert lstm["per_mark"][0]["bd_rate_vs_jpeg"] == pytest.approx(
        race.versus_anchor(JPEG["bpp"], JPEG["psnr"], 0.4, 28.0)["bd_rate"])
    json.dumps(summary)  # summary.json-ready

    report = race.report_markdown(summary)
    assert "| lstm | 0.001 | 20 | 30 | — | 30 | 1 | 1.3 |" in report
    assert "| lstm | 0.001 **(tuned)** | 2 | 0 |" in report and "| lstm | 0.003 | never | 1 |" in report
    race.plot_race(summary, tmp_path / "race.png")
    assert (tmp_path / "race.png").stat().st_size > 10_000


def test_a_tiny_race_end_to_end_and_resumed(tmp_path, image_folder, capsys):
    codec = tmp_path / "tiny.yaml"
    codec.write_text("N: 8\nM: 12\nbatch_size: 2\ncrop: 64\nval_crop: 64\nlog_every: 2\nval_every: 4\n"
                     "checkpoint_every: 3\nlr_schedule: constant\n")
    args = ["--codec", str(codec), "--data", str(image_folder), "--run-dir", str(tmp_path / "race"),
            "--contenders", "adam-plateau,lstm", "--lrs", "1e-3", "--seeds", "1", "--tune-seeds", "9",
            "--tune-seconds", "1", "--tune-steps", "1000", "--seconds", "4", "--mark-seconds", "2", "--steps", "1000",
            "--workers", "1", "--device", "cpu"]
    summary = race.main(args)
    out = tmp_path / "race"
    assert {"summary.json", "report.md", "race.png", "jpeg.json"} <= {p.name for p in out.iterdir()}
    assert summary["best_hand_designed"] == "adam-plateau" and math.isfinite(summary["target_rd_loss"])
    for name in ("adam-plateau", "lstm"):
        marks = summary["contenders"][name]["seeds"]["0"]["marks"]
        assert [m["mark"] for m in marks] == [2, 4] and all(m["bpp"] > 0 for m in marks)
    tuning_run = read_metrics(out / "tune" / "lstm-lr0.001-s9" / "metrics.jsonl")
    assert tuning_run and not any("mark" in r for r in tuning_run)
    assert json.loads((out / "summary.json").read_text())["target_rd_loss"] == summary["target_rd_loss"]
    capsys.readouterr()
    assert race.main([*args, "--resume"]) == json.loads((out / "summary.json").read_text())  # nothing retrained
    assert "[compare]" not in capsys.readouterr().out


def test_bad_race_input_is_one_line_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        race.main(["--contenders", "adam,rmsprop", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: contender 'rmsprop'")
    assert not (tmp_path / "r").exists()
