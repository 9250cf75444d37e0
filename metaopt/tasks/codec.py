"""The codec task family: train a freshly initialised learned image codec on random crops.

Per task, from its seed: the model variant, its size (N, M), λ (log-uniform), the distortion (mse, rmse), the
init seed and the crop stream. "train" tasks crop the meta-training images; "test" tasks (meta-validation) crop
images of their own, disjoint from those and from every image a codec study trains or validates on, with seeds
from a disjoint range: meta-validation sees unseen data and unseen inits, and the checkpoint it picks was
chosen without looking at any image a compare reports on. The network parameters go to the optimizer under
study; the entropy bottleneck's `quantiles` are fitted by `aux_loss` on their own Adam.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import torch

from codec.data import CropBatches, all_images, check_images, list_images
from codec.losses import DISTORTIONS, RateDistortionLoss
from codec.models import build_model, split_parameters
from metaopt.errors import UserError
from metaopt.optim import largest_fan_in
from metaopt.tasks.base import Task, TaskFamily


class CodecTask(Task):
    def __init__(self, model_name: str, N: int, M: int, lmbda: float, distortion: str, crop: int,
                 batch_size: int, images: list[Path], seed: int, aux_lr: float = 1e-3):
        torch_state = torch.get_rng_state()
        torch.manual_seed(seed)
        model = build_model(model_name, N, M)
        torch.set_rng_state(torch_state)  # sampling a task must not disturb the caller's RNG stream
        super().__init__(model, f"{model_name}(N={N},M={M},lmbda={lmbda:.4g},{distortion},seed={seed})")
        aux_ids = {id(p) for p in split_parameters(model)[1]}
        self._mask = [p.requires_grad and id(p) not in aux_ids for p in model.parameters()]
        self.loss_fn = RateDistortionLoss(lmbda, distortion)
        self.batches = CropBatches(images, crop, batch_size, seed)
        self.aux_lr = aux_lr

    def net_mask(self) -> list[bool]:
        return list(self._mask)

    def batch(self, step: int) -> torch.Tensor:
        return self.batches.batch(step).to(self.device)

    def loss(self, model, batch: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(model(batch), batch)["loss"]

    def aux_loss(self, model) -> torch.Tensor:
        return model.aux_loss()


class CodecFamily(TaskFamily):
    """`data`: the meta-training images (its "meta" split); `val_data`: a folder of meta-validation images (all of
    them), or None for the "metaval" split of `data` (codec/data.py)."""

    def __init__(self, models: list[str], sizes: list[list[int]], lmbda_min: float, lmbda_max: float,
                 distortions: list[str] = ("mse",), crop: int = 64, batch_size: int = 4, data: str | None = None,
                 aux_lr: float = 1e-3, val_data: str | None = None):
        self.models, self.sizes = list(models), [tuple(int(v) for v in s) for s in sizes]
        self.lmbda_range = (lmbda_min, lmbda_max)
        self.distortions = [distortions] if isinstance(distortions, str) else list(distortions)
        unknown = [d for d in self.distortions if d not in DISTORTIONS]
        if unknown or not self.distortions:
            raise UserError(f"distortion must be a non-empty list of {', '.join(DISTORTIONS)}, got {distortions!r}")
        self.kwargs = dict(crop=crop, batch_size=batch_size, aux_lr=aux_lr)
        self.images = {"train": list_images(data, "meta"),
                       "test": all_images(val_data) if val_data else list_images(data, "metaval")}
        shared = {p.resolve() for p in self.images["train"]} & {p.resolve() for p in self.images["test"]}
        if shared:
            raise UserError(f"meta-validation images are also meta-training images: {sorted(map(str, shared))}")
        # Every image's header, now: a bad file is named before a run starts, not when a task first crops it.
        check_images(self.images["train"] + self.images["test"])

    def max_fan_in(self) -> int:
        return max(largest_fan_in(split_parameters(build_model(name, N, M))[0])
                   for name in self.models for N, M in self.sizes)

    def sample(self, seed: int, split: str) -> CodecTask:
        seed = seed if split == "train" else 10**6 + seed
        rng = random.Random(seed)
        N, M = rng.choice(self.sizes)
        lo, hi = self.lmbda_range
        lmbda = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        model = rng.choice(self.models)
        distortion = rng.choice(self.distortions)  # drawn last: the draws before it are those of earlier versions
        return CodecTask(model, N, M, lmbda, distortion, images=self.images[split], seed=seed, **self.kwargs)
