"""Loss-spike rollback for any training loop: restore a healthy snapshot when the loss jumps.

Why: codec training blows up now and then in a single window (docs/ablation.md: the distortion term jumps
by ~1e12 within 50 steps while the rate stays normal, with learned optimizers and with Adam at its tuned LR
alike), and no optimizer state survives that. Large-scale training handles it by restarting from a state
taken before the spike and skipping the batches in between (Chowdhery et al. 2022, PaLM, Sec. 5.1); no
PyTorch library does that for a plain loop, so it lives here, independent of the model and the optimizer.

    guard = SpikeGuard({"model": model, "opt": opt}, factor=10)
    guard.snapshot(step=0)
    loss = ...; loss.backward()
    if guard.is_spike(float(loss)):
        guard.rollback()        # the update of this step is not applied; the data moves on
    else:
        opt.step(); guard.record(float(loss), step)

A step is a spike when its loss is not finite or above `factor` x the median of the last `history` healthy
losses. Snapshots (deep copies of every registered object's state_dict) are taken every `every` recorded
steps and the two latest are kept; a rollback restores the older one, so (once two exist) the state it returns
to is `every` to 2 x `every` steps before the spike: a blow-up often builds up for a few steps below the
threshold. Until `min_history` losses are recorded only non-finite losses count as spikes.
"""
from __future__ import annotations

import copy
import math
import statistics
from collections import deque

# Rollbacks in a row (no snapshot taken between them) after which a run counts as diverged: the spike
# recurs whatever data follows the snapshot, so restoring again only burns compute.
MAX_CONSECUTIVE_ROLLBACKS = 5


class SpikeGuard:
    def __init__(self, stateful: dict, factor: float, every: int = 50, history: int = 100, min_history: int = 20):
        if not factor > 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        if every < 1 or history < 1 or not 1 <= min_history <= history:
            raise ValueError("every, history >= 1 and 1 <= min_history <= history are required")
        self.stateful, self.factor, self.every, self.min_history = stateful, factor, every, min_history
        self.losses: deque[float] = deque(maxlen=history)
        self.snapshots: deque[tuple[int, dict]] = deque(maxlen=2)
        self.rollbacks = 0
        self.consecutive = 0

    @property
    def median(self) -> float:
        return statistics.median(self.losses) if self.losses else math.nan

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        return len(self.losses) >= self.min_history and loss > self.factor * self.median

    @property
    def gave_up(self) -> bool:
        return self.consecutive >= MAX_CONSECUTIVE_ROLLBACKS

    def record(self, loss: float, step: int) -> None:
        """A healthy step's loss, after its update was applied; snapshots the state every `every` steps."""
        self.losses.append(loss)
        if step % self.every == 0:
            self.snapshot(step)

    def snapshot(self, step: int) -> None:
        """Keep a copy of the current state (also call it once before training: early blow-ups happen too)."""
        self.snapshots.append((step, {name: copy.deepcopy(obj.state_dict()) for name, obj in self.stateful.items()}))
        self.consecutive = 0

    def rollback(self) -> int | None:
        """Restore the oldest kept snapshot; returns its step (None: no snapshot yet, nothing restored)."""
        self.rollbacks += 1
        self.consecutive += 1
        if not self.snapshots:
            return None
        step, states = self.snapshots[0]
        while len(self.snapshots) > 1:  # the newer one may already carry the blow-up
            self.snapshots.pop()
        for name, obj in self.stateful.items():
            obj.load_state_dict(copy.deepcopy(states[name]))
        return step

    # -- exact resume -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"losses": list(self.losses), "snapshots": list(self.snapshots), "rollbacks": self.rollbacks,
                "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.snapshots.clear()
        self.snapshots.extend(state["snapshots"])
        self.rollbacks, self.consecutive = state["rollbacks"], state["consecutive"]
