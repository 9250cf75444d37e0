"""The one config system: flat YAML files in `configs/` plus `--key value` command-line overrides.

Precedence (last wins): the command's default YAML < `--config FILE` < `--key value` flags. The default
file defines the set of keys and their types; a key it does not define is an error, so typos never pass
silently. Every key becomes a flag (`--lr 3e-4`, `--run-dir X`, booleans as `--resume`, `--resume false` or `--no-resume`).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from metaopt.errors import UserError

# The YAML files live in the repository's configs/ (a source checkout, an editable install); a wheel carries
# them inside the package as metaopt/configs (pyproject.toml maps the one folder to the other).
_PACKAGED = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parent.parent / "configs"


# A run's config.yaml also records, under this key, what the config's nulls became in that run (codec.train: the
# step size and the learned-optimizer file actually used). It is a record, not an input: `--config` skips it, so
# a run's config.yaml can be passed back as is.
RESOLVED = "resolved"


def find_config(path: str | Path) -> Path:
    """`path` itself, or, when it does not exist, the shipped copy a path like `configs/codec/paper.yaml` names
    (so the README's commands work from any directory after a wheel install)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and path.parts[:1] == ("configs",):
        shipped = CONFIG_DIR.joinpath(*path.parts[1:])
        if shipped.is_file():
            return shipped
    return path


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = find_config(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of key: value")
    return data


def _scalar(text: str) -> Any:
    """A command-line word as null, int, float or string (YAML 1.1 would leave "1e-3" a string)."""
    if text.lower() in ("null", "none", "~"):
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _list(text: str) -> list:
    """`a,b,c` or YAML flow syntax (`[[16, 24], [24, 32]]`, needed for nested lists) as a list of scalars."""
    text = text.strip()
    if not text.startswith("["):
        return [_scalar(v.strip()) for v in text.split(",") if v.strip()]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError from None
    words = lambda v: [words(x) for x in v] if isinstance(v, list) else _scalar(str(v))  # noqa: E731
    return words(value) if isinstance(value, list) else value


def _coerce(key: str, value: Any, like: Any, source: str) -> Any:
    """Cast `value` to the type of the default `like`.

    Keys whose default is null accept anything; a command-line string that reads as a number or null
    (`--lr 3e-4`, `--lopt null`) becomes one.
    """
    if like is None and isinstance(value, str):
        return _scalar(value)
    if like is None or value is None:
        return value
    try:
        if isinstance(like, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            return bool(value)
        if isinstance(like, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if isinstance(like, float):
            return float(value)
        if isinstance(like, list):
            if isinstance(value, str):
                value = _list(value)
            nested = bool(like) and isinstance(like[0], list)  # e.g. sizes: [[16, 24], [24, 32]]
            if not isinstance(value, list) or (nested and not all(isinstance(v, list) for v in value)):
                raise ValueError
            return value
        if isinstance(like, dict):  # a mapping: YAML in a file, or YAML flow style on the command line
            value = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(value, dict):
                raise ValueError
            return value
        return str(value)
    except (TypeError, ValueError, yaml.YAMLError):
        raise UserError(f"{source}: {key!r} must be {type(like).__name__}, got {value!r}") from None


def key_comments(path: str | Path) -> dict[str, str]:
    """The trailing `# ...` comment of each top-level key of a config file, joined with the indented comment
    lines that continue it: the keys' documentation, shown by `--help`."""
    comments, key = {}, None
    for line in Path(path).read_text().splitlines():
        entry = re.match(r"([A-Za-z_]\w*):[^#]*(?:#\s*(.*))?$", line)
        continuation = re.match(r"\s+#\s*(.*)$", line)
        if entry:
            key = entry.group(1) if entry.group(2) else None
            if key:
                comments[key] = entry.group(2).strip()
        elif continuation and key:
            comments[key] += " " + continuation.group(1).strip()
        else:
            key = None
    return comments


def program_name() -> str | None:
    """`python -m codec.train` when started that way (argparse would show `train.py`)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return f"python -m {spec.name.removesuffix('.__main__')}" if spec else None


def parse_config(argv: list[str] | None, default: str, description: str) -> dict[str, Any]:
    """Build the run config for a CLI; `default` is a path relative to `configs/` (e.g. "codec/default.yaml")."""
    defaults = read_yaml(CONFIG_DIR / default)
    comments = key_comments(CONFIG_DIR / default)
    # No abbreviations: `--opt sgd` must not silently mean `--optimizer sgd`.
    parser = argparse.ArgumentParser(prog=program_name(), description=description, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", help=f"YAML file overriding configs/{default}")
    for key, value in defaults.items():
        flag = "--" + key.replace("_", "-")
        flags = [flag] if flag == "--" + key else [flag, "--" + key]  # W&B agents pass --batch_size=8
        meaning = comments.get(key, "").replace("%", "%%")  # argparse formats help with %
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        help_text = f"{meaning} (default: {shown})".strip()
        if isinstance(value, bool):
            parser.add_argument(*flags, dest=key, nargs="?", const="true", default=argparse.SUPPRESS,
                                metavar="BOOL", help=help_text)
            parser.add_argument("--no-" + flag[2:], dest=key, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, dest=key, default=argparse.SUPPRESS, metavar=type(value).__name__.upper()
                                if value is not None else "VALUE", help=help_text)
    args = vars(parser.parse_args(argv))

    config = dict(defaults)
    config_file = args.pop("config", None)
    if config_file:
        for key, value in read_yaml(config_file).items():
            if key == RESOLVED:
                continue
            if key not in defaults:
                raise UserError(f"unknown config key {key!r} in {config_file} (known: {', '.join(defaults)})")
            config[key] = _coerce(key, value, defaults[key], config_file)
    for key, value in args.items():
        config[key] = _coerce(key, value, defaults[key], "command line")
    return config


def save_yaml(config: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
