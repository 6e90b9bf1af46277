"""Your own training loop: tuner calls ``fit(params, ctx)`` once per trial.

This loop brings its own data (scikit-learn's 8x8 digits), its own model and its own
recipe (label smoothing, linear warm-up then cosine decay, optional gradient clipping). What
it does for tuner is small:

- read its hyperparameters from ``params`` (any names the study file's ``space`` defines);
- train on ``ctx.device`` with seed ``ctx.seed``, for at most ``ctx.max_epochs`` epochs;
- after each epoch save a checkpoint, then ``ctx.report(epoch, score)``: the learning curve,
  and where the pruner may stop the trial (``report`` raises; let it propagate);
- on start, ``ctx.load_checkpoint()``: a trial retried after its worker died continues from
  its last saved epoch instead of starting over;
- return the final validation score (the study's ``metric``; here accuracy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


def make_data(device: torch.device) -> tuple[torch.Tensor, ...]:
    """Digits as (x_train, y_train, x_val, y_val) on ``device``; the same split every trial."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0  # pixels are 0..16
    y = torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]
    return tuple(t.to(device) for t in (x[train], y[train], x[val], y[val]))


def make_model(params: dict) -> nn.Module:
    hidden, dropout = int(params["hidden"]), float(params["dropout"])
    return nn.Sequential(
        nn.Linear(64, hidden), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )


def lr_at(epoch: int, params: dict, epochs: int) -> float:
    """Learning rate for ``epoch`` (0-based): linear warm-up, then cosine decay to 0."""
    warmup = int(params["warmup_epochs"])
    if epoch < warmup:
        return params["lr"] * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return params["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return (model(x).argmax(dim=1) == y).float().mean().item()


def fit(params: dict, ctx) -> float:
    torch.manual_seed(ctx.seed)
    x_train, y_train, x_val, y_val = make_data(ctx.device)
    model = make_model(params).to(ctx.device)
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"],
                            weight_decay=params["weight_decay"])
    shuffle = torch.Generator(device=x_train.device).manual_seed(ctx.seed)
    batch = int(params["batch_size"])
    epochs = ctx.max_epochs

    start, score = 0, 0.0
    state = ctx.load_checkpoint()  # None unless this trial is a retry of a killed one
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        # the shuffle generator lives on the device: a CUDA state cannot go into a CPU
        # generator (a retry on another kind of worker), so it reshuffles there instead
        if state.get("shuffle_device", "cpu") == shuffle.device.type:
            shuffle.set_state(state["shuffle"])
        start, score = state["epoch"], state["score"]

    for epoch in range(start, epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, params, epochs)
        model.train()
        total = torch.zeros((), device=x_train.device)  # summed on the device: no sync per batch
        for idx in torch.randperm(len(y_train), device=x_train.device,
                                  generator=shuffle).split(batch):
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx],
                                   label_smoothing=params["label_smoothing"])
            opt.zero_grad()
            loss.backward()
            if params.get("clip_norm") is not None:  # sampled only when clip is true
                nn.utils.clip_grad_norm_(model.parameters(), params["clip_norm"])
            opt.step()
            total += loss.detach() * len(idx)
        score = accuracy(model, x_val, y_val)
        # save first, then report: if the worker dies now, the retry starts after this epoch
        ctx.save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "shuffle": shuffle.get_state(), "shuffle_device": shuffle.device.type,
                             "epoch": epoch + 1, "score": score})
        ctx.report(epoch + 1, score, train_loss=total.item() / len(y_train))
    return score
