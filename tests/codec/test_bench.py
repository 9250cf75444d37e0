import pytest

from codec.__main__ import main as codec_main
from codec.bench import main as bench_main


def test_bench_takes_a_config_file_and_flags(tmp_path, capsys):
    config = tmp_path / "b.yaml"
    config.write_text("N: 8\nM: 8\nheight: 64\nwidth: 128\n")
    report = bench_main(["--config", str(config), "--repeats", "1"])
    assert (report["N"], report["image"], report["repeats"]) == (8, "128x64", 1)
    assert report["threads_1"]["ours_encode_s"] > 0 and '"file_bytes_ours"' in capsys.readouterr().out


def test_bench_and_codec_refuse_abbreviations_and_bad_sizes(capsys):
    for main, argv in [(bench_main, ["--rep", "1"]),
                       (codec_main, ["compress", "a.png", "b.moc", "--checkpoint", "c.pt", "--dev", "cpu"])]:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and "error: unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        bench_main(["--height", "100"])
    assert exc.value.code == 2 and capsys.readouterr().err == "error: height and width must be multiples of 64 " \
                                                             "(CompressAI's compress does not pad)\n"
