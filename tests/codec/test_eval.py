"""The compress/decompress CLI and codec.eval, driven through `main([...])` as a user would."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from codec.baselines import CODECS
from codec import bitstream
from codec.__main__ import main as codec_main
from codec.eval import evaluate_checkpoint
from codec.eval import main as eval_main
from codec.data import load_image
from codec.models import build_model, load_model
from tests.conftest import write_image


def save_checkpoint(path, name="bmshj2018-hyperprior", seed=0, N=8, M=12):
    torch.manual_seed(seed)
    model = build_model(name, N, M)
    torch.save({"model_name": name, "model_config": {"N": N, "M": M}, "model": model.state_dict(),
                "step": 0, "config": {}}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_cli_round_trip_odd_sizes_and_modes(tmp_path, ckpt, capsys, mode):
    src = write_image(tmp_path / "in.png", 37, 50, mode=mode)
    codec_main(["compress", str(src), str(tmp_path / "x.bin"), "--checkpoint", str(ckpt), "--device", "cpu"])
    codec_main(["decompress", str(tmp_path / "x.bin"), str(tmp_path / "out.png"), "--checkpoint", str(ckpt)])
    out = capsys.readouterr().out
    size = (tmp_path / "x.bin").stat().st_size
    assert f"{size} bytes, 50x37, {8 * size / (37 * 50):.4f} bpp" in out
    decoded = np.asarray(Image.open(tmp_path / "out.png"))
    assert decoded.shape == (37, 50, 3) and decoded.dtype == np.uint8
    # The PNG holds exactly what the library decodes from the file.
    model, _ = load_model(ckpt)
    expected = bitstream.to_uint8(bitstream.decode(model, "bmshj2018-hyperprior", {"N": 8, "M": 12},
                                                   (tmp_path / "x.bin").read_bytes()))
    assert np.array_equal(decoded, expected.numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png", "x.bin"]  # no temp files left


def _fails(argv, capsys, match, output):
    with pytest.raises(SystemExit) as exc:
        codec_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*"))  # no temporary file either


def test_cli_bad_inputs_exit_cleanly(tmp_path, ckpt, capsys):
    src = write_image(tmp_path / "in.png", 64, 64)
    good = tmp_path / "good.bin"
    codec_main(["compress", str(src), str(good), "--checkpoint", str(ckpt)])
    data = good.read_bytes()
    capsys.readouterr()
    other_model = save_checkpoint(tmp_path / "f.pt", name="bmshj2018-factorized")
    other_ckpt = save_checkpoint(tmp_path / "other.pt", seed=1)
    flipped = bytearray(data)
    flipped[-10] ^= 0x01
    cases = {"empty.bin": (b"", "empty"), "trunc.bin": (data[: len(data) // 2], "truncated"),
             "flip.bin": (bytes(flipped), "checksum"), "foreign.bin": (src.read_bytes(), "magic")}
    out = tmp_path / "out.png"
    for filename, (content, match) in cases.items():
        (tmp_path / filename).write_bytes(content)
        _fails(["decompress", str(tmp_path / filename), str(out), "--checkpoint", str(ckpt)], capsys, match, out)
    _fails(["decompress", str(good), str(out), "--checkpoint", str(other_model)], capsys, "made by model", out)
    _fails(["decompress", str(good), str(out), "--checkpoint", str(other_ckpt)], capsys, "different checkpoint", out)
    _fails(["decompress", str(good), str(out), "--checkpoint", str(tmp_path / "nope.pt")], capsys, "not found", out)
    _fails(["decompress", str(tmp_path / "nope.bin"), str(out), "--checkpoint", str(ckpt)], capsys, "not found", out)
    (tmp_path / "broken.png").write_bytes(src.read_bytes()[:40])
    _fails(["compress", str(tmp_path / "broken.png"), str(tmp_path / "o.bin"), "--checkpoint", str(ckpt)],
           capsys, "cannot read image", tmp_path / "o.bin")
    _fails(["compress", str(src), str(tmp_path / "o.bin"), "--checkpoint", str(tmp_path / "nope.pt")],
           capsys, "checkpoint not found", tmp_path / "o.bin")
    # A failed decompress must not clobber an existing output either.
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit):
        codec_main(["decompress", str(tmp_path / "trunc.bin"), str(out), "--checkpoint", str(ckpt)])
    assert out.read_bytes() == b"keep"


def test_evaluate_checkpoint_measures_every_image(ckpt):
    model, meta = load_model(ckpt)
    images = [torch.rand(3, 40, 60), torch.rand(3, 170, 180)]
    result = evaluate_checkpoint(model, meta["model_name"], meta["model_config"], images)
    small, large = result["per_image"]
    assert small["ms-ssim-rgb"] is None  # below pytorch-msssim's 161-px minimum for the standard window
    assert 0 < large["ms-ssim-rgb"] <= 1
    assert large["ms-ssim-rgb-db"] == pytest.approx(-10 * np.log10(1 - large["ms-ssim-rgb"]))
    assert result["mean"]["ms-ssim-rgb"] == large["ms-ssim-rgb"]
    assert result["mean"]["bpp"] == pytest.approx((small["bpp"] + large["bpp"]) / 2)
    for record, x in zip(result["per_image"], images):
        assert record["bpp"] == pytest.approx(8 * record["bytes"] / (x.shape[1] * x.shape[2]))
        decoded = bitstream.decode(model, meta["model_name"], meta["model_config"],
                                   bitstream.encode(model, meta["model_name"], meta["model_config"], x))
        mse = ((bitstream.to_uint8(x).double() - bitstream.to_uint8(decoded).double()) ** 2).mean()
        assert record["psnr-rgb"] == pytest.approx(10 * np.log10(255**2 / mse.item()))
        assert record["encoding_time"] > 0 and record["decoding_time"] > 0


def test_eval_cli_writes_compressai_layout(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    write_image(folder / "a.png", 170, 200, seed=1)
    write_image(folder / "b.png", 48, 80, mode="L", seed=2)
    ckpts = [save_checkpoint(tmp_path / f"{i}.pt", seed=i) for i in range(2)]
    out = tmp_path / "res" / "results.json"
    eval_main(["--checkpoint", ",".join(map(str, ckpts)), "--data", str(folder),
               "--out", str(out), "--baselines", "jpeg", "--plot", str(tmp_path / "rd.png"), "--device", "cpu"])
    report = json.loads(out.read_text())
    assert report["name"] == "metaopt-codec" and report["description"]
    results = report["results"]
    for key in ("psnr-rgb", "ms-ssim-rgb", "ms-ssim-rgb-db", "bpp", "bpp-likelihood", "encoding_time", "decoding_time"):
        assert len(results[key]) == 2, key
    assert results["bpp"] == sorted(results["bpp"])
    assert [c["mean"]["bpp"] for c in report["checkpoints"]] == results["bpp"]
    assert [r["name"] for r in report["checkpoints"][0]["per_image"]] == ["a.png", "b.png"]
    jpeg = json.loads((tmp_path / "res" / "results.jpeg.json").read_text())
    assert jpeg == report["baselines"]["jpeg"] and jpeg["name"] == "JPEG"
    rates = jpeg["results"]["bpp"]
    assert len(rates) == len(CODECS["jpeg"].qualities) and rates == sorted(rates)
    assert set(report["bd_rate"]["jpeg"]) == {"psnr-rgb", "ms-ssim-rgb-db"}
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_codes_every_image_of_the_folder_exactly_as_the_cli_does(tmp_path, ckpt):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i, (h, w) in enumerate([(40, 60), (64, 64), (37, 50), (70, 33)]):
        write_image(folder / f"{i}.png", h, w, seed=i)
    report = eval_main(["--checkpoint", str(ckpt), "--data", str(folder), "--out", str(tmp_path / "r.json")])
    per_image = report["checkpoints"][0]["per_image"]
    assert [r["name"] for r in per_image] == ["0.png", "1.png", "2.png", "3.png"]
    assert report["description"] == f"4 images of {folder.resolve()}, real bitstreams"
    for record in per_image:
        image, coded, decoded = folder / record["name"], tmp_path / "x.moc", tmp_path / "x.png"
        codec_main(["compress", str(image), str(coded), "--checkpoint", str(ckpt)])
        codec_main(["decompress", str(coded), str(decoded), "--checkpoint", str(ckpt)])
        original = np.asarray(Image.open(image).convert("RGB"), dtype=np.float64)
        mse = ((original - np.asarray(Image.open(decoded), dtype=np.float64)) ** 2).mean()
        assert record["bytes"] == coded.stat().st_size
        assert record["bpp"] == 8 * coded.stat().st_size / (original.shape[0] * original.shape[1])
        assert record["psnr-rgb"] == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-12)


def test_outputs_are_readable_by_others_under_the_usual_umask(tmp_path, ckpt):
    import os
    import stat

    saved = os.umask(0o022)
    try:
        src = write_image(tmp_path / "in.png", 40, 60)
        codec_main(["compress", str(src), str(tmp_path / "x.moc"), "--checkpoint", str(ckpt)])
        codec_main(["decompress", str(tmp_path / "x.moc"), str(tmp_path / "x.png"), "--checkpoint", str(ckpt)])
        eval_main(["--checkpoint", str(ckpt), "--data", str(tmp_path), "--max-images", "1",
                   "--out", str(tmp_path / "r.json"), "--plot", str(tmp_path / "rd.png")])
    finally:
        os.umask(saved)
    for name in ("x.moc", "x.png", "r.json", "rd.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_eval_saves_reconstructions_and_logs_rd_points_plot_and_grids_to_wandb(tmp_path, monkeypatch):
    from tests.metaopt.test_tracking import wandb_records

    monkeypatch.setenv("WANDB_MODE", "offline")
    folder = tmp_path / "data"
    folder.mkdir()
    write_image(folder / "a.png", 300, 280, seed=1)  # larger than the grid's 256 crop window
    write_image(folder / "b.png", 48, 80, seed=2)
    ckpts = [save_checkpoint(tmp_path / f"m{i}.pt", seed=i) for i in range(2)]
    out = tmp_path / "eval" / "results.json"
    report = eval_main(["--checkpoint", ",".join(map(str, ckpts)), "--data", str(folder), "--out", str(out),
                        "--baselines", "jpeg", "--save-reconstructions", str(tmp_path / "rec"), "--wandb"])
    folders = [tmp_path / "rec" / tag for tag in ("00-m0", "01-m1")]
    assert {e["reconstructions"] for e in report["checkpoints"]} == set(map(str, folders))
    model, meta = load_model(ckpts[1])
    for name in ("a.png", "b.png"):  # every decoded image: exactly the pixels a decoder gets from the file
        data = bitstream.encode(model, meta["model_name"], meta["model_config"], load_image(folder / name))
        decoded = bitstream.to_uint8(bitstream.decode(model, meta["model_name"], meta["model_config"], data))
        assert np.array_equal(np.asarray(Image.open(folders[1] / name)), decoded.numpy())
    width, height = Image.open(folders[0] / "grid.png").size
    assert width >= 4 * 256 and height >= 256 + 48  # original | ours | JPEG | WebP, one row per image
    # The W&B run (in the results' folder) holds the RD points table, the RD plot and both grids.
    records = wandb_records(next((out.parent / "wandb").glob("offline-run-*/*.wandb")))
    logged = {item.nested_key[0]: json.loads(item.value_json) for r in records
              if r.WhichOneof("record_type") == "history" for item in r.history.item if item.nested_key[1:] == ["_type"]}
    assert logged == {"rd_points": "table-file", "rd_plot": "image-file", "reconstructions/00-m0": "image-file",
                      "reconstructions/01-m1": "image-file"}
    assert (out.parent / "rd.png").is_file()  # --wandb without --plot still draws it


def test_grid_baselines_are_at_the_rate_nearest_ours():
    from codec.baselines import code_image
    from codec.gallery import nearest_rate

    image = bitstream.to_uint8(torch.rand(3, 64, 96)).numpy()
    for target in (0.5, 2.0, 6.0):
        quality, _, bpp = nearest_rate("webp", image, target)
        rates = [8 * len(code_image(CODECS["webp"], image, q)[0]) / (64 * 96) for q in CODECS["webp"].qualities]
        assert bpp == min(rates, key=lambda r: abs(r - target)) and bpp in rates


def test_eval_cli_errors(tmp_path, capsys, ckpt):
    for argv, match in [([], "--checkpoint is required"),
                        (["--checkpoint", str(ckpt), "--baselines", "gif"], "unknown baseline"),
                        (["--checkpoint", str(tmp_path / "x.pt"), "--max-images", "1"], "checkpoint not found")]:
        with pytest.raises(SystemExit) as exc:
            eval_main(argv + ["--out", str(tmp_path / "r.json")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and match in err and err.count("\n") == 1, err
    assert not (tmp_path / "r.json").exists()

