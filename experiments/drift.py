"""Which parameter tensors does an optimizer move *uniformly* (every coordinate the same way)?

    python experiments/drift.py --steps 300 adam:1e-3 runs/ablation/meta-direct-output/lopt.pt ...

Trains compare's held-out codec task (hyperprior-deep N=32 M=48, λ=0.013, 8×64² crops of the built-in photos,
seed 0, grad clip 1, aux Adam) once per optimizer and prints, per tensor of more than 100 coordinates whose
mean shift from init exceeds twice the spread of the shifts, that mean shift in units of `unit_lr` per step.
A gradient-driven optimizer shows such drift only where the gradient itself is uniform (measured: the entropy
bottleneck's matrices, for Adam too); a learned optimizer with a gradient-independent output term can add a
constant drift, which grows linearly with the steps (docs/ablation.md (7)).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from codec.data import CropBatches, list_images  # noqa: E402
from codec.losses import RateDistortionLoss  # noqa: E402
from codec.models import build_model, split_parameters  # noqa: E402
from metaopt.checkpoint import seed_everything  # noqa: E402
from metaopt.errors import UserError, cli_entry  # noqa: E402
from metaopt.optim import LSTMOptimizer  # noqa: E402
from metaopt.training import train_step  # noqa: E402


def shifts(spec: str, steps: int) -> dict[str, tuple[float, float, int]]:
    """{tensor name: (mean shift, std of shift, numel)} after `steps` steps of optimizer `spec`."""
    seed_everything(0)
    model = build_model("bmshj2018-hyperprior-deep", 32, 48)
    net, aux = split_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    if spec.startswith("adam:"):
        try:
            opt = torch.optim.Adam(net, lr=float(spec[5:]))
        except ValueError:
            raise UserError(f"adam:LR needs a positive number, got {spec!r}") from None
    else:
        opt = LSTMOptimizer(net, lopt=spec)
    aux_opt = torch.optim.Adam(aux, lr=1e-3)
    loss_fn = RateDistortionLoss(0.013, "mse")
    batches = CropBatches(list_images(None, "train"), 64, 8, 0)
    init = [p.detach().clone() for p in net]
    for step in range(steps):
        x = batches[step]
        train_step(opt, lambda: loss_fn(model(x), x), 1.0, aux_opt, model.aux_loss)
    return {names[id(p)]: ((p.detach() - p0).mean().item(), (p.detach() - p0).std().item(), p.numel())
            for p, p0 in zip(net, init)}


@cli_entry
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizers", nargs="+", help="adam:LR or a lopt.pt path")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--unit-lr", type=float, default=5e-4, help="drift is printed in units of this lr per step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for spec in args.optimizers:
        result = shifts(spec, args.steps)
        large = {k: v for k, v in result.items() if v[2] > 100}
        drifting = sorted(((k, m, s) for k, (m, s, _) in large.items() if abs(m) > 2 * s), key=lambda r: -abs(r[1]))
        print(f"{spec}: {len(drifting)} of {len(large)} tensors drift uniformly after {args.steps} steps")
        for name, mean, std in drifting:
            print(f"  {name:34s} mean shift {mean:+.4f} (spread {std:.4f}) = {mean / (args.unit_lr * args.steps):+.3f}"
                  " lr/step")


if __name__ == "__main__":
    main()
