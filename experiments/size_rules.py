"""The screen of docs/results/lopt-v8: codec.train with a learned optimizer whose update is scaled per tensor by a
candidate size rule, patched in from outside (this is how the rules were compared before one went into
metaopt/optim.py).

    SIZE_RULE=fanin python experiments/size_rules.py --optimizer lstm --lopt metaopt/pretrained/lopt-v6.pt --N 128 ...

SIZE_RULE: `fanin`: min(1, 800 / fan-in), what `max_fan_in` 800 now does in metaopt.optim; `rms`: min(1, RMS of the
tensor at the first step / 0.0203), the smallest RMS of a weight tensor of the widest codec v6 met in meta-training
(N=32). 800 is that codec's largest fan-in. Each step moves a scaled tensor to p0 + factor * (p1 - p0), where p1 is
where the unscaled optimizer put it.
"""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import metaopt.optim  # noqa: E402
from codec.train import main  # noqa: E402

RULE = os.environ.get("SIZE_RULE", "fanin")
unscaled_step = metaopt.optim.LSTMOptimizer.step


def factor(p: torch.Tensor) -> float:
    if p.dim() < 2:
        return 1.0
    if RULE == "fanin":
        return metaopt.optim.fan_in_scales([p], 800)[0]
    return min(1.0, float(p.detach().pow(2).mean().sqrt()) / 0.0203)


@torch.no_grad()
def scaled_step(self, closure=None):
    if not hasattr(self, "factors"):
        self.factors = {p: factor(p) for group in self.param_groups for p in group["params"]}
    scaled = [p for p, f in self.factors.items() if f != 1.0]
    before = [p.clone() for p in scaled]
    loss = unscaled_step(self, closure)
    for p, p0 in zip(scaled, before):
        p.copy_(p0 + self.factors[p] * (p - p0))
    return loss


if __name__ == "__main__":
    if RULE not in ("fanin", "rms"):
        sys.exit(f"error: SIZE_RULE must be fanin or rms, got {RULE!r}")
    metaopt.optim.LSTMOptimizer.step = scaled_step
    main(sys.argv[1:])
