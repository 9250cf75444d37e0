"""docs/results.md is what `python -m studies.tables` generates from the committed raw results."""
import json

import pytest

from studies import tables


def test_docs_results_md_is_up_to_date():
    tables.main(["--check"])  # exits 1 (with the command to run) if someone edited the data or the page alone


def test_check_fails_on_a_stale_page(tmp_path, monkeypatch):
    stale = tmp_path / "results.md"
    stale.write_text("# Results\n\nhand-edited\n")
    monkeypatch.setattr(tables, "OUT", stale)
    with pytest.raises(SystemExit) as exit_info:
        tables.main(["--check"])
    assert exit_info.value.code == 1


def test_long_run_row_from_a_tiny_metrics_file(tmp_path):
    losses = [90.0, 30.0, 20.0, 10.0, 8.0, 12.0, 6.0]  # windows 4 -> 5 (8 -> 12) is the worst late jump: 1.5
    rows = [{"step": 50 * (i + 1), "loss": v, "wall_time": 2.0 * (i + 1), "rollbacks": int(i >= 5)}
            for i, v in enumerate(losses)]
    row = tables.long_run_row(rows)
    assert row["worst_late_ratio"] == pytest.approx(1.5)  # 90 -> 30 etc. are before step 200 and do not count
    assert (row["step"], row["final_loss"], row["rollbacks"], row["wall_time"]) == (350, 6.0, 1, 14.0)
    assert not row["diverged"]
    assert tables.long_run_row(rows + [{"step": 400, "loss": "nan"}])["diverged"]


def test_jpeg_psnr_is_interpolated_in_log_rate():
    jpeg = {"results": {"bpp": [0.25, 1.0], "psnr-rgb": [24.0, 32.0]}}
    assert tables.psnr_at_rate(jpeg, 0.5) == pytest.approx(28.0)  # halfway in log rate between 0.25 and 1.0
    assert tables.psnr_at_rate(jpeg, 2.0) is None


def test_compare_rows_from_a_summary_json():
    summary = {"steps": 1000, "seeds": [100, 101], "tuned_adam_lr": 7e-4, "tuned_lstm_lr": 2e-3,
               "optimizers": {"adam": {"divergences": 1}, "lstm": {"divergences": 0}},
               "ratios_vs_adam": {"lstm": {"steps_to_target_ratio": 0.5, "wall_time_to_target_ratio": 1.2,
                                           "loss_ratio_at": {"100": 0.9, "1000": 0.6}}}}
    (row,) = tables.compare_rows_from_summary(json.loads(json.dumps(summary)))
    assert (row["steps_ratio"], row["loss_ratio_at_T"], row["divergences"], row["lstm_lr"]) == (0.5, 0.6, "0 / 1", 2e-3)


def test_real_photos_section_appears_with_its_folder(tmp_path):
    assert tables.photos_section(tmp_path) == []
    photos = tmp_path / "photos"
    run = photos / "train" / "deep"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: m\ndistortion: rmse\nlmbda: 0.013\nlr: 0.001\ninit_from: null\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 8000, "loss": 1.5, "wall_time": 3600.0, "val_bpp": 0.2,
                                                   "val_psnr": 25.0}) + "\n")
    curve = lambda name, bpp, psnr: {"name": name, "description": "d",  # noqa: E731
                                     "results": {"bpp": bpp, "psnr-rgb": psnr, "ms-ssim-rgb": [0.9] * len(bpp),
                                                 "ms-ssim-rgb-db": [10.0 + i for i in range(len(bpp))]}}
    ours = curve("ours", [0.25, 0.5], [30.0, 33.0])  # JPEG needs twice the bits for the same PSNR: BD-rate -50 %
    ours["baselines"] = {"jpeg": curve("JPEG", [0.5, 1.0], [30.0, 33.0])}
    (photos / "rd_deep_rmse.json").write_text(json.dumps(ours))
    (photos / "rd_plain_mse.json").write_text(json.dumps(curve("plain", [0.5, 1.0], [30.0, 33.0])))
    text = "\n".join(tables.photos_section(tmp_path))
    assert "| deep | m | rmse | 0.0130 | scratch | 8000 | 1e-3 | 60.0 | 0.200 | 25.0 |" in text
    assert "| 0.500 | — | 33.0 | 0.900 | 30.0 | 3.00 |" in text  # JPEG at 0.5 bpp: 30 dB, ours 3 dB above
    assert "-50.0 %" in text
    assert "the deepened RMSE codec needs fewer bits): BD-rate in PSNR -50.0 %;" in text
    assert "PSNR difference at equal rate (the plain curve interpolated in log rate): 3.00 dB at 0.500 bpp." in text


def test_screen_rows_come_from_each_runs_metrics(tmp_path):
    assert tables.screens_section(tmp_path) == []
    run = tmp_path / "lopt-v9" / "screen-sizes" / "n192-v9"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: m\nN: 192\nM: 320\nbatch_size: 8\ncrop: 64\ndistortion: rmse\n"
                                     "seed: 1000\noptimizer: lstm\nlr: null\n")
    logs = [{"step": 10 * i, "loss": float(i), "skipped_steps": 0, "wall_time": 5.0 * i} for i in range(1, 7)]
    logs[-1].update(val_loss=8.5)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    adam = run.parent / "n192-adam"
    adam.mkdir()
    (adam / "config.yaml").write_text((run / "config.yaml").read_text().replace("optimizer: lstm", "optimizer: adam"))
    (adam / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text())
    text = "\n".join(tables.screens_section(tmp_path))
    assert "| n192-v9 | m N=192 M=320 | 8×64² | rmse | 1000 | lstm | stored | 60 | 4.00 | 8.50 | 0 | 30.0 |" in text
    assert "| n192-adam | m N=192 M=320 | 8×64² | rmse | 1000 | adam | default | 60 |" in text  # its own default step


def test_race_rows_come_from_its_summary(tmp_path):
    mark = lambda rd, psnr: {"mark": 60, "rd_loss": rd, "bpp": 0.2, "psnr": psnr, "ms_ssim": 0.9,  # noqa: E731
                             "bd_rate_vs_jpeg": None, "psnr_gain_vs_jpeg": psnr - 24.0}
    summary = {"seconds": 60, "marks": [60], "seeds": [100, 101, 102], "lrs": [1e-3], "tune_seeds": [1000],
               "best_hand_designed": "adam-cosine", "target_rd_loss": 5.0, "target_definition": "upper median",
               "anchor": {"name": "jpeg"},
               "contenders": {"adam-cosine": {"tuned_lr": 1e-3, "median_seconds_to_target": 60.0,
                                              "seconds_ratio_vs_best": 1.0, "median_final_rd_loss": 5.0,
                                              "per_mark": [mark(5.0, 25.0)]},
                              "lstm": {"tuned_lr": 3e-3, "median_seconds_to_target": None,
                                       "seconds_ratio_vs_best": None, "median_final_rd_loss": 6.0,
                                       "per_mark": [mark(6.0, 23.5)]}}}
    (tmp_path / "race").mkdir()
    (tmp_path / "race" / "summary.json").write_text(json.dumps(summary))
    text = "\n".join(tables.race_section(tmp_path))
    assert "| adam-cosine | 1e-3 | 60.0 | 1.00 | 5.00 | 0.200 | 25.0 | 1.00 |" in text
    assert "| lstm | 3e-3 | never | — | 6.00 | 0.200 | 23.5 | -0.500 |" in text
    assert tables.compares_section(tmp_path)[-2].startswith("|---")  # a race is not a compare row


def test_learned_optimizer_rows_name_the_file_its_step_and_the_task(tmp_path):
    assert tables.learned_optimizers_section(tmp_path) == []  # no folder, no section
    summary = {"steps": 1000, "seeds": [110, 111, 112], "tuned_adam_lr": 2e-4,
               "optimizers": {"adam": {"divergences": 0}, "lstm": {"divergences": 1}},
               "ratios_vs_adam": {"lstm": {"steps_to_target_ratio": 0.4, "wall_time_to_target_ratio": 0.55,
                                           "loss_ratio_at": {"100": 0.9, "1000": 0.7}}},
               "learned_optimizer": {"lr": 1e-3, "lopt": "/x/lopt-v2.pt", "lopt_sha256": "c23ad0b8" + "0" * 56},
               "task": {"distortion": "rmse", "N": 32, "M": 48}}
    (tmp_path / "lopt-v2" / "compare-a").mkdir(parents=True)
    (tmp_path / "lopt-v2" / "compare-a" / "summary.json").write_text(json.dumps(summary))
    row = [line for line in tables.learned_optimizers_section(tmp_path) if "compare-a" in line][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["rmse", "32/48", "`lopt-v2.pt` c23ad0b8", "1e-3", "2e-4", "110–112", "0.400", "0.550", "0.700",
                         "1 / 3"]
