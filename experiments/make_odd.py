"""Rewrite a learned optimizer so that its update is odd in the gradient history (`LSTMConfig.odd`), same weights:

    python experiments/make_odd.py runs/ablation/meta-direct-output/lopt.pt runs/ablation/direct-output-odd.pt

A test-time probe of README "Ablation" (7): the network, run on the gradient history as seen and sign-flipped,
keeps exactly the part of its output that flips with the gradient, and so loses any constant drift it learned.
If the optimizer stays fast, its speed did not come from the drift.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metaopt.errors import UserError, cli_entry  # noqa: E402
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet  # noqa: E402
from metaopt.optim import load_lopt, save_lopt  # noqa: E402


@cli_entry
def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise UserError("usage: python experiments/make_odd.py IN_LOPT OUT_LOPT")
    net, blob = load_lopt(args[0])
    odd = LSTMOptimizerNet(LSTMConfig(**{**net.cfg.to_dict(), "odd": True}))
    odd.load_state_dict(net.state_dict())
    save_lopt(odd, args[1], lr=blob["lr"], meta={**blob.get("meta", {}), "made_odd_from": args[0]})
    print(f"wrote {args[1]}")


if __name__ == "__main__":
    main()
