import pytest

from metaopt.config import parse_config
from metaopt.errors import UserError


def test_precedence_default_file_then_flags(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 77\nlmbda: 0.0067\n")
    cfg = parse_config(["--config", str(cfg_file), "--lmbda", "0.025", "--resume", "--lr", "3e-4"],
                       "codec/default.yaml", "test")
    assert cfg["steps"] == 77 and cfg["lmbda"] == 0.025 and cfg["resume"] is True and cfg["lr"] == 3e-4
    assert parse_config(["--no-eval-at-end"], "codec/default.yaml", "t")["eval_at_end"] is False
    assert parse_config(["--eval-at-end", "false"], "codec/default.yaml", "t")["eval_at_end"] is False


@pytest.mark.parametrize("argv, message", [
    (["--steps", "many"], "'steps' must be int"),
    (["--steps", "1.5"], "'steps' must be int"),
    (["--resume", "maybe"], "'resume' must be bool"),
    (["--sizes", "16,24"], "'sizes' must be list"),  # a flat list where (N, M) pairs are expected
    (["--sizes", "[[16, 24]"], "'sizes' must be list"),  # unbalanced brackets
])
def test_type_errors(argv, message):
    with pytest.raises(UserError, match=message):
        parse_config(argv, "meta/default.yaml" if "--sizes" in argv else "codec/default.yaml", "t")


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        parse_config(["--config", str(tmp_path / "x.yaml")], "codec/default.yaml", "t")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        parse_config(["--config", str(bad)], "codec/default.yaml", "t")


def test_list_flags_take_commas_or_yaml_flow_syntax():
    cfg = parse_config(["--sizes", "[[8, 12], [16,24]]", "--momentum-betas", "0.5,0.9", "--models",
                        "[bmshj2018-hyperprior]"], "meta/default.yaml", "t")
    assert cfg["sizes"] == [[8, 12], [16, 24]] and cfg["momentum_betas"] == [0.5, 0.9]
    assert cfg["models"] == ["bmshj2018-hyperprior"]
    yaml_floats = parse_config(["--momentum-betas", "[1e-3, 2e-3]"], "meta/default.yaml", "t")["momentum_betas"]
    assert yaml_floats == [1e-3, 2e-3]  # YAML 1.1 would read these as strings


def test_help_shows_each_keys_meaning_from_the_yaml_comments(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(["--help"], "codec/default.yaml", "t")
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse re-wraps the lines
    assert "--optimizer STR adam | sgd | schedulefree | soap | lstm (network parameters only;" in text
    assert "the first updates, from a random init, are the ones that blow up (default: 0)" in text  # continued
    assert "--lr VALUE null = the optimizer's default" in text and "(default: null)" in text


def test_key_comments_parser(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("# a file comment\nplain: 1\n  # not plain's: it has no comment of its own\n"
                    "a: [1, 2]   # first line\n             # second line\n\n# section\nb: x # 100% sure\n")
    from metaopt.config import key_comments

    assert key_comments(path) == {"a": "first line second line", "b": "100% sure"}


def test_abbreviations_are_refused():
    """`--opt sgd` must not silently mean `--optimizer sgd`; usage names the command the user typed."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "codec.train", "--opt", "sgd"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python -m codec.train ")
    assert "error: unrecognized arguments: --opt sgd" in proc.stderr and "Traceback" not in proc.stderr
