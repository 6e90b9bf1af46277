"""Same-shape trials trained as one: K members of one shape stacked into one model
(:mod:`tuner.training.stacked`), the loop that trains them and the choice of K.

Pure PyTorch, like :mod:`tuner.training.train`. Each member is first set up exactly as
:func:`tuner.training.train.fit` sets up a trial (its own seed, initial weights, torch optimizer,
schedule and shuffling generator); then its weights are stacked along a leading axis K and
one step trains all members with batched matrix products (``torch.baddbmm`` over weights of
shape (K, out, in)). The members' hyperparameters (lr, weight decay, momentum, dropout) are
tensors of shape (K,), and :class:`~tuner.training.stacked.StackedOptimizer` follows torch's update rules for
sgd,
sgd with momentum, adam and adamw, so a member with dropout 0 follows the curve its own
``fit`` would, within float rounding.

Each member reports to its own context, is pruned on its own (its slice leaves the stack,
so the rest step faster) and checkpoints on its own, in ``fit``'s format (every member saves
first, then the epoch's reports go out together, :func:`tuner.training.context.report_together`, which
a worker turns into one database write): the state_dict of
its unfused module, a torch optimizer state_dict, its schedule and generator. A crashed
member therefore resumes alone, with the ordinary ``fit``.

    fit_fused(params_list, ctxs)   -> one result per member: its metric, or its exception
    choose_k(params, ctx)          -> the K with the most trials per second on ctx.device
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tuner import vocab
from tuner.data._bundle import DataBundle
from tuner.kinds import InputKind
from tuner.training import checkpoints, train
from tuner.training.context import Context, report_together
from tuner.training.stacked import StackedMLP, StackedOptimizer
from tuner.trial_schema import EPOCHS_ATTR


def _loss(out: Tensor, y: Tensor, task: str) -> Tensor:
    """Per-member mean training loss (K,) of out (K, B, C) against y (K, B)."""
    k, b = y.shape
    if task == "classification":
        return F.cross_entropy(out.float().reshape(k * b, -1), y.reshape(-1),
                               reduction="none").view(k, b).mean(1)
    return (out.float().squeeze(-1) - y).square().mean(1)


def _batches(runs: Sequence[train._Run], data: DataBundle, batch_size: int):
    """Every member's own shuffled batches, in lockstep: (x (K, B, ...), y (K, B)). Each
    member's permutation is drawn from its own generator exactly as ``data.batches`` draws
    it; with the data on the device, the K batches are one gather."""
    s = data.split("train")
    if data.batch_device is not None or data.kind == InputKind.tokens:
        its = [data.batches("train", batch_size, shuffle=True, generator=r.gen) for r in runs]
        for pairs in zip(*its, strict=True):
            yield torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])
        return
    n, k = len(s), len(runs)
    orders = torch.stack([torch.randperm(n, device=s.device, generator=r.gen) for r in runs])
    scale, shift = data._affine(s.dtype)
    for start in range(0, n, batch_size):
        rows = s.rows(orders[:, start:start + batch_size].reshape(-1))
        x = (s.base_x[rows].float() * scale).sub_(shift)
        if data.kind == InputKind.sequence:  # padded steps are NaN: they come out as 0
            x = x.nan_to_num_(0.0)
        y = data.scale_targets(s.base_y[rows])
        yield x.view(k, -1, *x.shape[1:]), y.view(k, -1)


def _train_epoch(stack: StackedMLP, opt: StackedOptimizer, runs: Sequence[train._Run],
                 data: DataBundle, batch_size: int, amp: bool) -> list[float]:
    """One pass of every member over its own shuffle; each member's mean data loss."""
    total = torch.zeros(stack.k, device=data.device)
    seen = 0
    for x, y in _batches(runs, data, batch_size):
        if y.shape[1] < 2:  # as fit: skip a lone last sample
            continue
        with torch.autocast(data.device.type, torch.bfloat16, enabled=amp):
            loss = _loss(stack.forward(x, train=True), y, data.task)
        total += loss.detach() * y.shape[1]
        seen += y.shape[1]
        for p in stack.params:
            p.grad = None
        loss.sum().backward()  # members do not interact: each slice gets its own gradient
        opt.step()
    return (total / max(seen, 1)).tolist()


@torch.inference_mode()
def _evaluate(stack: StackedMLP, data: DataBundle, amp: bool) -> list[dict[str, float]]:
    """Every member's validation metrics, as :func:`tuner.training.train.evaluate` computes them."""
    n = len(data.split("val"))
    sums: list[Tensor | int] = [0] * stack.k
    for x, y in data.batches("val", train.EVAL_BATCH_SIZE, shuffle=False):
        with torch.autocast(data.device.type, torch.bfloat16, enabled=amp):
            out = stack.forward(x, train=False)
        for k in range(stack.k):
            sums[k] = sums[k] + train._batch_sums(out[k].float(), y, data)
    return [train.metrics_of(torch.as_tensor(s).tolist(), n, data) for s in sums]


def _hyper(runs: Sequence[train._Run], key: str, device: torch.device) -> Tensor:
    return torch.tensor([float(r.opt.param_groups[0].get(key, 0.0)) for r in runs],
                        device=device)


def _checkpoint(stack: StackedMLP, opt: StackedOptimizer, row: int, run: train._Run,
                epoch: int) -> dict[str, Any]:
    """Member ``row``'s checkpoint in fit's format (its own module and torch optimizer)."""
    stack.write_back(row)
    params = list(run.model.parameters())
    for p in params:
        run.opt.state.pop(p, None)
    for index, p in enumerate(params):
        st = opt.member_state(row, index)
        if st:
            run.opt.state[p] = st
    return checkpoints.state(run, epoch)


def fit_fused(params_list: Sequence[Mapping[str, Any]],
              ctxs: Sequence[Context]) -> list[float | BaseException]:
    """Train the members (``params_list[i]`` with ``ctxs[i]``) as one stacked model. Returns
    each member's final validation ``ctx.metric``, or the exception that ended it (its
    ``ctx.report``'s :class:`TrialPruned` or :class:`StopRequested`)."""
    if len(params_list) != len(ctxs) or not ctxs:
        raise ValueError("fit_fused needs one context per member")
    data = train._data(ctxs[0])
    train._check_metric(ctxs[0].metric, data.task)
    runs = [train._setup(p, c, data) for p, c in zip(params_list, ctxs, strict=True)]
    for c in ctxs:
        if c.load_checkpoint() is not None:
            raise ValueError(f"trial {c.trial_number} has a checkpoint: resume it alone with fit")
    first = runs[0]
    names = {str({**vocab.defaults(vocab.TRAINING_KNOBS), **p}["optimizer"]) for p in params_list}
    if len(names) != 1 or len({(r.epochs, r.batch_size) for r in runs}) != 1:
        raise ValueError("fused members must share optimizer, epochs and batch_size")
    stack = StackedMLP([r.model for r in runs])
    device = data.device
    opt = StackedOptimizer(names.pop(), stack.params, lr=_hyper(runs, "lr", device),
                           weight_decay=_hyper(runs, "weight_decay", device),
                           momentum=_hyper(runs, "momentum", device))
    results: list[float | BaseException | None] = [None] * len(runs)
    live = list(range(len(runs)))
    metrics: list[dict[str, float]] = []
    for epoch in range(1, first.epochs + 1):
        lrs = [runs[i].opt.param_groups[0]["lr"] for i in live]
        opt.lr = torch.tensor(lrs, device=device)
        losses = _train_epoch(stack, opt, [runs[i] for i in live], data, first.batch_size,
                              first.amp)
        with warnings.catch_warnings():  # the members' torch optimizers never step: ours do
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)")
            for i in live:
                if runs[i].sched is not None:
                    runs[i].sched.step()
        metrics = _evaluate(stack, data, first.amp)
        leaving: list[int] = []
        reporting: list[tuple[int, int, tuple[float, dict[str, float]]]] = []
        for row, i in enumerate(live):
            ctx, loss = ctxs[i], losses[row]
            ctx.info[EPOCHS_ATTR] = epoch
            if not math.isfinite(loss):  # diverged: a non-finite report ends it
                reporting.append((row, i, (loss, {"train_loss": loss})))
                continue
            m = metrics[row]
            value = m[ctx.metric]
            extras = {"train_loss": loss, "lr": lrs[row],
                      **{f"val_{k}": v for k, v in m.items() if k != ctx.metric}}
            try:  # each member checkpoints before it reports, as fit does
                if ctx.checkpoints is not None:
                    report = {"epoch": epoch, "value": value, **extras}
                    ctx.save_checkpoint({**_checkpoint(stack, opt, row, runs[i], epoch),
                                         "report": report}, packed=True)
            except Exception as e:  # noqa: BLE001 - its disk refused: this member only
                results[i] = e
                leaving.append(row)
                continue
            reporting.append((row, i, (value, extras)))
        # every member's report in one go (one database write for the group, not one each)
        verdicts = report_together([ctxs[i] for _, i, _ in reporting], epoch,
                                   [r for _, _, r in reporting])
        for (row, i, _), verdict in zip(reporting, verdicts, strict=True):
            if verdict is not None:  # pruned, stopped or failed: this member only
                results[i] = verdict
                leaving.append(row)
        if leaving:  # a pruned member stops updating: its slice leaves the stack
            rows = [r for r in range(len(live)) if r not in leaving]
            keep = torch.tensor(rows, dtype=torch.long, device=device)
            stack.keep(keep, rows)
            opt.keep(keep)
            metrics = [metrics[r] for r in rows]
            live = [live[r] for r in rows]
            opt.params = stack.params
        if not live:
            break
    for row, i in enumerate(live):
        results[i] = metrics[row][ctxs[i].metric]
    return [r if r is not None else math.nan for r in results]


def choose_k(params: Mapping[str, Any], ctx: Context, candidates: Sequence[int] = (1, 2, 4, 8),
             steps: int = 20, clock: Callable[[], float] = time.perf_counter) -> tuple[int, dict[int, float]]:
    """Time a training step of ``params``' model at each K on ``ctx.device`` (after one
    warm-up step); returns the K with the most trials per second, and every K's rate."""
    data = train._data(ctx)
    rates: dict[int, float] = {}
    for k in candidates:
        ctxs = [ctx.silent_copy(seed=ctx.seed + j, data=data) for j in range(k)]
        runs = [train._setup(params, c, data) for c in ctxs]
        stack = StackedMLP([r.model for r in runs])
        opt = StackedOptimizer(str({**vocab.defaults(vocab.TRAINING_KNOBS), **params}["optimizer"]),
                               stack.params, lr=_hyper(runs, "lr", data.device),
                               weight_decay=_hyper(runs, "weight_decay", data.device),
                               momentum=_hyper(runs, "momentum", data.device))
        batches = _batches(runs, data, runs[0].batch_size)
        elapsed = 0.0
        for s in range(steps + 1):
            x, y = next(batches, (None, None))
            if x is None or y is None:
                batches = _batches(runs, data, runs[0].batch_size)
                x, y = next(batches)
            if data.device.type == "cuda":
                torch.cuda.synchronize(data.device)
            t0 = clock()
            loss = _loss(stack.forward(x, train=True), y, data.task).sum()
            for p in stack.params:
                p.grad = None
            loss.backward()
            opt.step()
            if data.device.type == "cuda":
                torch.cuda.synchronize(data.device)
            if s:  # the first step warms up
                elapsed += clock() - t0
        rates[k] = k * steps / max(elapsed, 1e-9)
    return max(rates, key=rates.__getitem__), rates
