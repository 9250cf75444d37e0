"""`python -m codec.train` with the learned optimizer told another planned length than the run's `--steps`:

    python experiments/lopt_horizon.py 100 --optimizer lstm --lopt metaopt/pretrained/lopt-v3.pt --steps 1000 ...

An optimizer that reads the training progress t/T sees t/100 here, saturating at 1 after step 100, so the
optimizer behaves after step 100 as it learned to at the end of its meta-training tasks. A diagnostic of how much
a progress-driven schedule, learned on 20-100-step tasks, stretches over a longer run (docs/results/lopt-v3).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import metaopt.optimizers  # noqa: E402


def main() -> None:
    horizon = int(sys.argv.pop(1))
    plain = metaopt.optimizers.LSTMOptimizer
    metaopt.optimizers.LSTMOptimizer = lambda *args, **kwargs: plain(*args, **{**kwargs, "horizon": horizon})
    from codec.train import main as train

    train(sys.argv[1:])


if __name__ == "__main__":
    main()
