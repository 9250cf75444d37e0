"""Run a W&B sweep YAML locally: `python -m metaopt.sweep configs/sweeps/adam_lr.yaml [--dry-run]`.

W&B sweeps need a server (`wandb sweep FILE` + `wandb agent ID` when one is reachable). This runner reads
the same file and does the agent's job offline: it expands `parameters` (grid: the full product; random:
`run_cap` samples), substitutes the `command` template (${env} ${interpreter} ${program} ${args}) exactly
as the agent would, and runs each command in a subprocess with its own `--run-dir` under the sweep's
directory. Every run is validated before the first one starts; finished runs are skipped on a rerun.

sweep_results.json: {"metric", "best", "runs"}. Each run's "objective" is the sweep metric's value as the
W&B summary holds it (the best value for metrics with a best-value summary, like val_loss; else the last),
and "best" is the run with the best objective by the metric's goal, as W&B ranks them.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import random
import subprocess
import sys
from pathlib import Path

from metaopt.config import read_yaml
from metaopt.errors import UserError, cli_entry

TOP_LEVEL_KEYS = {"program", "method", "metric", "parameters", "command", "name", "description",
                  "early_terminate", "run_cap", "project", "entity"}
METHODS = ("grid", "random", "bayes")
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}", "${args}"]


def check_sweep(spec: dict, source: str) -> None:
    """The structural rules `wandb sweep` enforces, checked offline with one-line errors."""
    unknown = set(spec) - TOP_LEVEL_KEYS
    if unknown:
        raise UserError(f"{source}: unknown sweep keys {sorted(unknown)}")
    if spec.get("method") not in METHODS:
        raise UserError(f"{source}: method must be one of {METHODS}, got {spec.get('method')!r}")
    if not isinstance(spec.get("program"), str):
        raise UserError(f"{source}: 'program' (the module to run) is required")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise UserError(f"{source}: 'parameters' must be a non-empty mapping")
    for name, p in params.items():
        if not isinstance(p, dict) or len({"value", "values", "distribution", "min"} & set(p)) == 0:
            raise UserError(f"{source}: parameter {name!r} needs 'value', 'values' or a distribution")
        if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
            raise UserError(f"{source}: parameter {name!r} has an empty 'values' list")
        if spec["method"] == "grid" and "values" not in p and "value" not in p:
            raise UserError(f"{source}: grid sweeps need 'value' or 'values' for {name!r}")
    command = spec.get("command", DEFAULT_COMMAND)
    if not isinstance(command, list) or not any("${args" in str(c) for c in command):
        raise UserError(f"{source}: 'command' must be a list containing ${{args}}")
    metric = spec.get("metric")
    if metric is not None and (not isinstance(metric, dict) or metric.get("goal") not in ("minimize", "maximize")
                               or "name" not in metric):
        raise UserError(f"{source}: metric needs 'name' and goal minimize|maximize")


def _sample(p: dict, rng: random.Random):
    if "value" in p:
        return p["value"]
    if "values" in p:
        return rng.choice(p["values"])
    dist, lo, hi = p.get("distribution", "uniform"), p["min"], p["max"]
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist == "uniform":
        return rng.uniform(lo, hi)
    raise UserError(f"distribution {dist!r} is not supported by the offline runner")


def expand(spec: dict, seed: int = 0) -> list[dict]:
    """The list of parameter assignments the sweep would run."""
    params = spec["parameters"]
    if spec["method"] == "grid":
        names = list(params)
        choices = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
        return [dict(zip(names, combo)) for combo in itertools.product(*choices)]
    count = spec.get("run_cap")
    if not count:
        raise UserError(f"{spec['method']} sweeps need run_cap to run offline (how many samples)")
    rng = random.Random(seed)  # bayes needs the server's model; offline it is random search, said in README
    return [{n: _sample(p, rng) for n, p in params.items()} for _ in range(count)]


def run_name(i: int, assignment: dict, varying: set[str]) -> str:
    return f"{i:03d}-" + "-".join(f"{k}{v}" for k, v in assignment.items() if k in varying).replace("/", "_")[:120]


def command_for(spec: dict, assignment: dict, run_dir: Path) -> list[str]:
    # A sweep that sets run_dir itself (a study's jobs, studies/sweeps.py) places its runs; else each run gets one.
    args = [f"--{k}={v}" for k, v in assignment.items()]
    if "run_dir" not in assignment:
        args.append(f"--run_dir={run_dir}")
    cmd = []
    for word in spec.get("command", DEFAULT_COMMAND):
        if word == "${env}":
            continue  # the agent prefixes /usr/bin/env; the subprocess already inherits the environment
        if word == "${args}":
            cmd += args
        elif word == "${args_no_hyphens}":
            cmd += [a[2:] for a in args]
        else:
            cmd.append(word.replace("${interpreter}", sys.executable).replace("${program}", spec["program"]))
    return cmd


def validate_runs(spec: dict, assignments: list[dict]) -> None:
    """Parse every run's arguments with the program's own config parser before anything runs."""
    try:
        module = importlib.import_module(spec["program"])
    except ImportError:
        raise UserError(f"program {spec['program']!r} is not an importable module") from None
    validate = getattr(module, "config_from_argv", None)
    if validate is None:
        return
    for assignment in assignments:
        argv = [f"--{k}={v}" for k, v in assignment.items()]
        try:
            validate(argv)
        except SystemExit:
            raise UserError(f"invalid sweep run {assignment}: the program rejected its arguments") from None
        except UserError as e:
            raise UserError(f"invalid sweep run {assignment}: {e}") from None


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m metaopt.sweep", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("sweep", help="a W&B sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--run-dir", help="where the runs go (default: runs/sweeps/<name>)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random/bayes sampling")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    spec = read_yaml(args.sweep)
    check_sweep(spec, args.sweep)
    assignments = expand(spec, args.seed)
    validate_runs(spec, assignments)
    root = Path(args.run_dir or Path("runs") / "sweeps" / (spec.get("name") or Path(args.sweep).stem))
    varying = {k for k in assignments[0] if len({str(a[k]) for a in assignments}) > 1}
    results = []
    for i, assignment in enumerate(assignments):
        run_dir = root / run_name(i, assignment, varying)
        cmd = command_for(spec, assignment, run_dir)
        print(f"[sweep {i + 1}/{len(assignments)}] {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        done = run_dir / "done.json"
        if not done.is_file():
            if (run_dir / "checkpoint.pt").is_file():
                cmd.append("--resume")
            code = subprocess.call(cmd)
            if code != 0:
                print(f"warning: run {run_dir.name} exited with {code}; continuing the sweep", file=sys.stderr)
                results.append({"run": run_dir.name, **assignment, "exit_code": code})
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"exit_code": 0}))
        results.append({"run": run_dir.name, **assignment, "exit_code": 0, **_outcome(run_dir, spec.get("metric"))})
    if not args.dry_run:
        root.mkdir(parents=True, exist_ok=True)
        best = best_run(results, spec.get("metric"))
        (root / "sweep_results.json").write_text(json.dumps({"metric": spec.get("metric"), "best": best,
                                                             "runs": results}, indent=2))
        if best is not None:
            print(f"best run by {spec['metric']['name']} ({spec['metric']['goal']}): {best['run']} "
                  f"({best['objective']:.6g})")
        print(f"results: {root / 'sweep_results.json'}")


def _outcome(run_dir: Path, metric: dict | None) -> dict:
    """The run's last metrics row, plus its objective when the sweep names a metric."""
    from metaopt.tracking import read_metrics, summary_value

    rows = read_metrics(run_dir / "metrics.jsonl")
    outcome = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}
    if metric:
        outcome["objective"] = summary_value(rows, metric["name"])
    return outcome


def best_run(results: list[dict], metric: dict | None) -> dict | None:
    scored = [r for r in results if isinstance(r.get("objective"), (int, float)) and math.isfinite(r["objective"])]
    if not metric or not scored:
        return None
    pick = min if metric["goal"] == "minimize" else max
    return pick(scored, key=lambda r: r["objective"])


if __name__ == "__main__":
    main()
