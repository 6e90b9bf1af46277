"""Training recipes as hyperparameters, for every family: gradient clipping, label smoothing,
learning-rate warm-up, early stopping inside a trial, and image augmentation computed on the
device batch (no DataLoader, no per-sample Python). Pure PyTorch; :mod:`tuner.training.train` calls
these hooks and :data:`tuner.vocab.TRAINING_KNOBS` names their knobs.

    clip_norm        clip the global L2 norm of the gradients (rnn family: 1.0 by default)
    label_smoothing  of the cross-entropy
    warmup_epochs    linear warm-up from lr/(W+1) to lr over W epochs, then the schedule
    patience         stop after this many epochs without a better validation metric; the
                     trial keeps its best epoch's value
    augment_crop     pad each side by this many pixels (zeros, after normalisation: the
                     channel mean), then crop back at a random offset per image
    augment_flip     flip half the images left to right
    augment_cutout   zero a random square of this side per image (it may hang off the edge)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tuner import vocab
from tuner.errors import DataError
from tuner.kinds import InputKind


@dataclass(frozen=True)
class Recipe:
    clip_norm: float = 0.0
    label_smoothing: float = 0.0
    warmup_epochs: int = 0
    patience: int = 0
    crop: int = 0
    flip: bool = False
    cutout: int = 0

    @classmethod
    def from_params(cls, p: Mapping[str, Any], model: nn.Module, kind: InputKind,
                    data_name: str = "data") -> Recipe:
        """The recipe of a trial's params (``p`` with the loop's defaults filled in). An
        unset ``clip_norm`` takes the model's ``default_clip_norm`` (the rnn family's 1.0)."""
        clip = p.get("clip_norm")
        if clip is None:
            clip = getattr(model, "default_clip_norm", 0.0)
        recipe = cls(clip_norm=float(clip), label_smoothing=float(p["label_smoothing"]),
                     warmup_epochs=int(p["warmup_epochs"]), patience=int(p["patience"]),
                     crop=int(p["augment_crop"]), flip=bool(p["augment_flip"]),
                     cutout=int(p["augment_cutout"]))
        if recipe.augments and kind != InputKind.image:
            used = [k for k in vocab.IMAGE_ONLY_KNOBS if p.get(k)]
            raise DataError(f"{', '.join(used)}: augmentation works on images only and "
                            f"{data_name} is {kind} data; remove {used[0]}")
        return recipe

    @property
    def augments(self) -> bool:
        return bool(self.crop or self.flip or self.cutout)

    # ---- hooks of the training step ------------------------------------------------------
    def augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """A training batch of images (N,C,H,W), augmented; other batches unchanged."""
        if not self.augments or x.dim() != 4:
            return x
        if self.crop:
            x = random_crop(x, self.crop, gen)
        if self.flip:
            x = random_flip(x, gen)
        if self.cutout:
            x = cutout(x, self.cutout, gen)
        return x

    def clip(self, model: nn.Module) -> None:
        if self.clip_norm > 0:  # foreach: no host sync, the norm stays on the device
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_norm, foreach=True)

    def schedule(self, opt: torch.optim.Optimizer,
                 main: torch.optim.lr_scheduler.LRScheduler | None
                 ) -> torch.optim.lr_scheduler.LRScheduler | None:
        """``main`` (per epoch) after ``warmup_epochs`` of linear warm-up."""
        w = self.warmup_epochs
        if w <= 0:
            return main
        sched = torch.optim.lr_scheduler
        warm = sched.LinearLR(opt, start_factor=1.0 / (w + 1), total_iters=w)
        if main is None:
            return warm
        return sched.SequentialLR(opt, [warm, main], milestones=[w])


def random_crop(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Pad by ``pad`` pixels of 0 and crop back to (H, W) at a random offset per image: one
    pad and one gather for the whole batch."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=x.device, generator=gen)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indexing puts the indexed dims first: (N, H, W, C) -> (N, C, H, W)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    mask = torch.rand(x.shape[0], device=x.device, generator=gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def cutout(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Zero a ``size`` x ``size`` square centred at a random pixel of each image."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), device=x.device, generator=gen)
    cx = torch.randint(0, w, (n, 1), device=x.device, generator=gen)
    top, left = cy - size // 2, cx - size // 2
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    in_rows = (r >= top) & (r < top + size)  # (N, H)
    in_cols = (c >= left) & (c < left + size)  # (N, W)
    hole = in_rows[:, :, None] & in_cols[:, None, :]
    return x.masked_fill(hole[:, None], 0.0)


class EarlyStopping:
    """Tracks the best validation value of a trial; ``patience`` 0 never stops."""

    def __init__(self, patience: int, direction: str):
        self.patience, self.maximize = patience, direction == "maximize"
        self.best: float | None = None
        self.best_epoch = 0
        self.epoch = 0

    def update(self, epoch: int, value: float) -> None:
        self.epoch = epoch
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best, self.best_epoch = value, epoch

    def replay(self, history: Sequence[Mapping[str, float]]) -> None:
        """Rebuild the state from a resumed trial's reports."""
        for h in history:
            self.update(int(h["epoch"]), float(h["value"]))

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.epoch - self.best_epoch >= self.patience
