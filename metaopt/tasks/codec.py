"""The codec task family: train a freshly initialised learned image codec on random crops.

Per task, from its seed: the model variant, its size (N, M), λ (log-uniform), the init seed and the crop
stream. "train" tasks crop the training images; "test" tasks crop the held-out images with seeds from a
disjoint range, so meta-validation sees both unseen data and unseen inits. The network parameters go to
the optimizer under study; the entropy bottleneck's `quantiles` are fitted by `aux_loss` on their own Adam.
"""
from __future__ import annotations

import math
import random

import torch

from codec.data import CropBatches, check_images, list_images
from codec.losses import RateDistortionLoss
from codec.models import build_model, split_parameters
from metaopt.tasks.base import Task, TaskFamily


class CodecTask(Task):
    def __init__(self, model_name: str, N: int, M: int, lmbda: float, distortion: str, crop: int,
                 batch_size: int, split: str, seed: int, data: str | None = None, aux_lr: float = 1e-3):
        torch_state = torch.get_rng_state()
        torch.manual_seed(seed)
        model = build_model(model_name, N, M)
        torch.set_rng_state(torch_state)  # sampling a task must not disturb the caller's RNG stream
        super().__init__(model, f"{model_name}(N={N},M={M},lmbda={lmbda:.4g},{split},seed={seed})")
        aux_ids = {id(p) for p in split_parameters(model)[1]}
        self._mask = [p.requires_grad and id(p) not in aux_ids for p in model.parameters()]
        self.loss_fn = RateDistortionLoss(lmbda, distortion)
        self.batches = CropBatches(list_images(data, split), crop, batch_size, seed)
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
    def __init__(self, models: list[str], sizes: list[list[int]], lmbda_min: float, lmbda_max: float,
                 distortion: str = "mse", crop: int = 64, batch_size: int = 4, data: str | None = None,
                 aux_lr: float = 1e-3):
        self.models, self.sizes = list(models), [tuple(int(v) for v in s) for s in sizes]
        self.lmbda_range = (lmbda_min, lmbda_max)
        self.kwargs = dict(distortion=distortion, crop=crop, batch_size=batch_size, data=data, aux_lr=aux_lr)
        # Every image's header, now: a bad file is named before a run starts, not when a task first crops it.
        check_images([path for split in sorted(set(self.IMAGE_SPLIT.values())) for path in list_images(data, split)])

    # Meta-training tasks crop the "meta" images; meta-validation ("test" tasks) crops the codec "train"
    # images, so neither sees the "test" images that studies.compare tunes Adam's LR on (codec/data.py).
    IMAGE_SPLIT = {"train": "meta", "test": "train"}

    def sample(self, seed: int, split: str) -> CodecTask:
        seed = seed if split == "train" else 10**6 + seed
        rng = random.Random(seed)
        N, M = rng.choice(self.sizes)
        lo, hi = self.lmbda_range
        lmbda = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return CodecTask(rng.choice(self.models), N, M, lmbda, split=self.IMAGE_SPLIT[split], seed=seed, **self.kwargs)
