"""Rewrite a learned optimizer so that its update is odd in the gradient history (`LSTMConfig.odd`), same weights:

    python experiments/make_odd.py runs/ablation/meta-direct-output/lopt.pt runs/ablation/direct-output-odd.pt

A test-time probe of README "Ablation" (7): the network, run on the gradient history as seen and sign-flipped,
keeps exactly the part of its output that flips with the gradient, and so loses any constant drift it learned.
If the optimizer stays fast, its speed did not come from the drift.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metaopt.lstm import LSTMConfig, LSTMOptimizerNet  # noqa: E402
from metaopt.optim import load_lopt, save_lopt  # noqa: E402

if len(sys.argv) != 3:
    sys.exit("usage: python experiments/make_odd.py IN_LOPT OUT_LOPT")
net, blob = load_lopt(sys.argv[1])
odd = LSTMOptimizerNet(LSTMConfig(**{**net.cfg.to_dict(), "odd": True}))
odd.load_state_dict(net.state_dict())
save_lopt(odd, sys.argv[2], lr=blob["lr"], meta={**blob.get("meta", {}), "made_odd_from": sys.argv[1]})
print(f"wrote {sys.argv[2]}")
