"""Rewrite a learned optimizer file, same weights: make its update odd, set its nominal step and/or its basis.

    python experiments/rewrite_lopt.py --odd runs/ablation/meta-direct-output/lopt.pt runs/ablation/direct-output-odd.pt
    python experiments/rewrite_lopt.py --lr 1.4e-3 runs/ablation/meta-lr1e-3/lopt.pt metaopt/pretrained/lopt.pt
    python experiments/rewrite_lopt.py --basis shampoo --lr 4e-3 metaopt/pretrained/lopt-v8.pt lopt-v9.pt

`--odd` is a test-time probe of docs/ablation.md (7): the network, run on the gradient history as seen and
sign-flipped, keeps exactly the part of its output that flips with the gradient (`LSTMConfig.odd`), and so loses
any constant drift it learned. If the optimizer stays fast, its speed did not come from the drift.
`--lr` stores a nominal step tuned after meta-training (`metaopt.compare --lstm-lrs`) as the file's default;
`--basis` the basis it runs in by default (metaopt.basis). The fan-in rule's max_fan_in is kept.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metaopt.basis import BASES  # noqa: E402
from metaopt.errors import UserError, cli_entry  # noqa: E402
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet  # noqa: E402
from metaopt.optim import load_lopt, save_lopt  # noqa: E402


@cli_entry
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="lopt.pt to read")
    parser.add_argument("dst", help="lopt.pt to write")
    parser.add_argument("--odd", action="store_true", help="make the update odd in the gradient history")
    parser.add_argument("--lr", type=float, help="the nominal step to store (default: keep the file's)")
    parser.add_argument("--basis", choices=BASES, help="the basis to store (default: keep the file's)")
    args = parser.parse_args(argv)
    if not args.odd and args.lr is None and args.basis is None:
        raise UserError("nothing to rewrite: pass --odd, --lr and/or --basis")
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    net, blob = load_lopt(args.src)
    meta = dict(blob.get("meta", {}))
    if args.odd:
        odd = LSTMOptimizerNet(LSTMConfig(**{**net.cfg.to_dict(), "odd": True}))
        odd.load_state_dict(net.state_dict())
        net, meta["made_odd_from"] = odd, args.src
    if args.lr is not None:
        # a file rewritten before keeps the step it was meta-trained at, not the one stored last
        meta.setdefault("lr_meta_trained", blob["lr"])
        meta["lr_set_by"] = "experiments/rewrite_lopt.py"
    if args.basis is not None:
        meta["basis_set_by"] = "experiments/rewrite_lopt.py"
    save_lopt(net, args.dst, lr=blob["lr"] if args.lr is None else args.lr, meta=meta,
              max_fan_in=blob.get("max_fan_in"), basis=args.basis or blob["basis"])
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()
