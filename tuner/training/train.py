"""tuner's own training loop, shaped like any user's trainer: ``fit(params, ctx) -> metric``.

Pure PyTorch; the trial context (:mod:`tuner.training.context`) is its only link to the study. The
data already lives on the device (:mod:`tuner.data`), so an epoch is a loop of gathers and
optimizer steps with one host sync at its end: the loss is summed on the device.

    fit(params, ctx)         tune: evaluate, checkpoint and report after every epoch
    fit_final(params, ctx)   retrain on train+val, evaluate once on the test split
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tuner import vocab
from tuner.data._bundle import DataBundle, Split
from tuner.data._text import for_params
from tuner.device import canonical
from tuner.errors import DataError
from tuner.models import build, count_parameters, default_name
from tuner.training import checkpoints, recipes, transfer
from tuner.training.context import Context
from tuner.trial_schema import EPOCHS_ATTR, PARAM_COUNT_ATTR

# samples per evaluation batch: nothing is kept for backward, so big batches are cheap; a
# model too big for it on its GPU halves it until it fits (evaluate)
EVAL_BATCH_SIZE = 4096


@dataclass
class _Run:
    """Everything one training run steps, built by :func:`_setup`."""

    model: nn.Module  # the module whose state_dict is saved
    forward: Callable[[Tensor], Tensor]  # ``model`` or its torch.compile wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler | None  # stepped once per epoch
    gen: torch.Generator  # shuffles the training set, on the device that holds it
    epochs: int
    batch_size: int
    l1: float  # weight of sum|w| over the weight matrices and kernels
    amp: bool  # bf16 autocast (CUDA only)
    device: torch.device  # where the model trains
    recipe: recipes.Recipe  # clipping, label smoothing, warm-up, patience, augmentation
    # compiled: the last partial batch is dropped (when there was a full one), since a new
    # batch shape would cost a recompile every trial
    compiled: bool = False


def fit(params: Mapping[str, Any], ctx: Context) -> float:
    """Train the model ``ctx.build_model(params)`` on ``ctx.data`` and return the final
    validation ``ctx.metric``. Resumes from the trial's checkpoint when there is one."""
    data = _data(ctx, params)
    _check_metric(ctx.metric, data.task)
    run = _setup(params, ctx, data)
    start = checkpoints.resume(run, ctx)
    stopper = recipes.EarlyStopping(run.recipe.patience, vocab.METRICS[ctx.metric][1])
    stopper.replay(ctx.history)
    metrics: dict[str, float] = {}
    for epoch in range(start, run.epochs + 1):
        if stopper.stop:
            break
        lr = run.opt.param_groups[0]["lr"]
        train_loss = train_epoch(run, data)
        ctx.info[EPOCHS_ATTR] = epoch
        if not math.isfinite(train_loss):  # diverged; a non-finite report ends the trial
            ctx.report(epoch, train_loss, train_loss=train_loss)
            return train_loss
        metrics = evaluate(run.forward, data, "val", amp=run.amp)
        value = metrics[ctx.metric]
        extras = {"train_loss": train_loss, "lr": lr,
                  **{f"val_{k}": v for k, v in metrics.items() if k != ctx.metric}}
        if ctx.checkpoints is not None:
            # the history saved with a checkpoint ends before this epoch's report: keep it too
            report = {"epoch": epoch, "value": value, **extras}
            ctx.save_checkpoint({**checkpoints.state(run, epoch), "report": report})
        ctx.report(epoch, value, **extras)
        stopper.update(epoch, value)
    if stopper.patience and stopper.best is not None:  # the trial keeps its best epoch
        ctx.info["best_epoch"] = stopper.best_epoch
        if stopper.stop and stopper.epoch < run.epochs:
            ctx.info["stopped_early_at"] = stopper.epoch
        return stopper.best
    if start > run.epochs:  # killed after the last epoch's checkpoint: nothing left to train
        metrics = evaluate(run.forward, data, "val", amp=run.amp)
        ctx.info[EPOCHS_ATTR] = run.epochs
    return metrics[ctx.metric]


def fit_final(params: Mapping[str, Any], ctx: Context,
              schedule: Sequence[tuple[int, Mapping[str, Any]]] = ()
              ) -> tuple[nn.Module, dict[str, float]]:
    """Retrain for the trial's epochs without evaluating, then evaluate once on
    ``ctx.data.val`` (with ``DataBundle.final()``: train+val in, the test split out).
    ``schedule`` (a PBT member's): ``(from_epoch, params)`` segments after the first; at each
    one's first epoch training goes on with its params, weights and optimizer state kept.
    Returns the model and every metric of the task, plus the last epoch's ``train_loss``."""
    data = _data(ctx, params)
    run = _setup(params, ctx, data)
    switch = {int(e): p for e, p in schedule if int(e) > 1}
    train_loss = math.nan
    for epoch in range(1, run.epochs + 1):
        if epoch in switch:  # as a PBT continuation resumes: new run, the state carried over
            state = checkpoints.state(run, epoch - 1)
            run = _setup(switch[epoch], ctx, data)
            checkpoints.restore(run, state)
        train_loss = train_epoch(run, data)
        ctx.info[EPOCHS_ATTR] = epoch
    metrics = evaluate(run.forward, data, "val", amp=run.amp)
    return run.model, {**metrics, "train_loss": train_loss}


# ---- one epoch, one evaluation ------------------------------------------------------------
def train_epoch(run: _Run, data: DataBundle) -> float:
    """One pass over the training split; returns the mean data loss (the L1 penalty is not
    included, so it compares with the validation loss)."""
    run.model.train()
    channels_last = _channels_last(run.model, data.device)
    l1_weights = [w for w in run.model.parameters() if w.dim() > 1] if run.l1 else []
    total = torch.zeros((), device=data.device)  # summed on the device: no sync per batch
    seen = 0
    for x, y in data.batches("train", run.batch_size, shuffle=True, generator=run.gen):
        if len(y) < 2:  # batch norm cannot train on a single sample; skip a lone last one
            continue
        if run.compiled and seen and len(y) < run.batch_size:
            continue
        x = run.recipe.augment(x, run.gen)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(data.device.type, torch.bfloat16, enabled=run.amp):
            loss = _loss(run.forward(x), y, data.task, run.recipe.label_smoothing)
        total += loss.detach() * len(y)
        seen += len(y)
        if l1_weights:
            loss = loss + run.l1 * sum(w.abs().sum() for w in l1_weights)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.recipe.clip(run.model)
        run.opt.step()
    if run.sched is not None:
        run.sched.step()
    return total.item() / max(seen, 1)


@torch.inference_mode()
def evaluate(model: Callable[[Tensor], Tensor], data: DataBundle, split: str | Split = "val", *,
             amp: bool = False) -> dict[str, float]:
    """Every metric of the task on ``split``. Regression metrics are in the original target
    units; ``loss`` is the training loss (cross-entropy, or MSE on scaled targets)."""
    n = len(data.split(split))
    if n == 0:
        raise DataError(f"{data.name}: the {split} split is empty; nothing to evaluate on")
    module = model if isinstance(model, nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    channels_last = module is not None and _channels_last(module, data.device)
    batch_size = EVAL_BATCH_SIZE
    while True:  # out of memory: halve the batch and start the split again
        try:
            sums = _eval_sums(model, data, split, batch_size, amp=amp,
                              channels_last=channels_last)
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            if data.device.type == "cuda":
                torch.cuda.empty_cache()
    if module is not None:
        module.train(was_training)
    return metrics_of(torch.as_tensor(sums).tolist(), n, data)  # the one host sync


def metrics_of(s: list[float], n: int, data: DataBundle) -> dict[str, float]:
    """The task's metrics from the summed :func:`_batch_sums` of ``n`` samples."""
    if data.task == "classification":
        return {"accuracy": s[1] / n, "loss": s[0] / n}
    sse, sae, y_sum, y_sq = s
    sst = y_sq - y_sum * y_sum / n  # squared deviations from the split's own mean
    r2 = 1.0 - sse / sst if sst > 0 else math.nan
    # the scale cancels in r2; mse and mae go back to the original units
    return {"mse": sse / n * data.y_std**2, "mae": sae / n * data.y_std, "r2": r2,
            "loss": sse / n}


def _eval_sums(model: Callable[[Tensor], Tensor], data: DataBundle, split: str | Split,
               batch_size: int, *, amp: bool, channels_last: bool) -> Tensor | int:
    sums: Tensor | int = 0
    for x, y in data.batches(split, batch_size, shuffle=False):
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(data.device.type, torch.bfloat16, enabled=amp):
            out = model(x)
        sums = sums + _batch_sums(out.float(), y, data)
    return sums


def _batch_sums(out: Tensor, y: Tensor, data: DataBundle) -> Tensor:
    """Per-batch sums, float64: classification (loss, correct); regression, on the scaled
    targets (squared error, absolute error, y, y^2)."""
    if data.task == "classification":
        loss = F.cross_entropy(out, y, reduction="sum")
        correct = (out.argmax(dim=1) == y).sum()
        return torch.stack([loss, correct.to(loss.dtype)]).double()
    # float64, and y in scaled units (centred near 0) so sum(y^2) - sum(y)^2/n keeps its digits
    err = out.squeeze(-1).double() - y.double()
    return torch.stack([err.square().sum(), err.abs().sum(), y.sum(), y.square().sum()])


def _loss(out: Tensor, y: Tensor, task: str, label_smoothing: float = 0.0) -> Tensor:
    if task == "classification":
        return F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
    return F.mse_loss(out.float().squeeze(-1), y)


# ---- set-up ------------------------------------------------------------------------------
def _setup(params: Mapping[str, Any], ctx: Context, data: DataBundle) -> _Run:
    p = {**vocab.defaults(vocab.TRAINING_KNOBS), **params}
    device = data.device
    if device.type == "cuda":
        # TF32 matmuls: several times fp32 throughput on Ampere and later, and precise enough
        # for SGD (cuDNN convolutions use TF32 by default); benchmark picks the fastest conv
        # kernels for our fixed shapes
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.benchmark = True
    epochs = min(int(params.get("epochs") or ctx.max_epochs), ctx.max_epochs)
    torch.manual_seed(ctx.seed)  # initial weights and dropout masks
    model = _builder(ctx, data)(params).to(device)
    if _channels_last(model, device):
        model = model.to(memory_format=torch.channels_last)  # NHWC: tensor-core convs
    ctx.info[PARAM_COUNT_ATTR] = count_parameters(model)
    if getattr(model, "tuner_weights", None):  # what a ``weights:`` file gave it, in one line
        ctx.info["weights"] = model.tuner_weights
    transfer.freeze(model, int(p["freeze"]))
    opt = make_optimizer(p, model, device)
    recipe = recipes.Recipe.from_params(p, model, data.kind, data.name)
    # the schedule runs over the epochs after the warm-up
    main = make_schedule(p, opt, max(epochs - recipe.warmup_epochs, 1))
    return _Run(
        model=model,
        forward=compile_model(model) if ctx.compile else model,
        opt=opt,
        sched=recipe.schedule(opt, main),
        gen=torch.Generator(device=data.train.device).manual_seed(ctx.seed),
        epochs=epochs,
        batch_size=int(p["batch_size"]),
        l1=float(p["l1"]),
        amp=ctx.amp and device.type == "cuda",
        device=device,
        compiled=ctx.compile,
        recipe=recipe,
    )


# torch.compile backend; tests use "eager" (dynamo's guards and caches without a compiler)
COMPILE_BACKEND = "inductor"


def compile_model(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``torch.compile(model)`` after clearing dynamo's caches. Every nn.Sequential shares
    one ``forward`` code object, so without the reset each trial's graphs (training batch,
    evaluation batch, each new width) pile up on it until dynamo's recompile limit, about
    four trials into a worker, after which it runs uncompiled with only a warning."""
    torch.compiler.reset()
    return torch.compile(model, backend=COMPILE_BACKEND)


def make_optimizer(p: Mapping[str, Any], model: nn.Module,
                   device: torch.device) -> torch.optim.Optimizer:
    """``p["optimizer"]`` with ``lr`` and ``weight_decay`` (decoupled for adamw, an L2 term in
    the gradient for the others: what torch does), over the trainable parameters; the
    backbone's rate scaled by ``backbone_lr_scale`` (the head's group first)."""
    name = p["optimizer"]
    kwargs: dict[str, Any] = {"lr": float(p["lr"]), "weight_decay": float(p["weight_decay"])}
    if name == "sgd_momentum":
        kwargs.update(momentum=float(p["momentum"]), nesterov=False)
    if name in ("adam", "adamw") and device.type == "cuda":
        kwargs["fused"] = True  # one kernel for the whole update
    classes = {"sgd": torch.optim.SGD, "sgd_momentum": torch.optim.SGD, "adam": torch.optim.Adam,
               "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
               "adagrad": torch.optim.Adagrad}
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(vocab.OPTIMIZERS)}")
    groups = transfer.param_groups(model, float(p["lr"]), float(p.get("backbone_lr_scale", 1.0)),
                                   float(p.get("layer_lr_decay", 1.0)))
    return classes[name](groups, **kwargs)


def make_schedule(p: Mapping[str, Any], opt: torch.optim.Optimizer,
                  epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped once per epoch; None for a constant rate."""
    name = p["schedule"]
    sched = torch.optim.lr_scheduler
    if name == "constant":
        return None
    if name == "cosine":  # from lr down towards 0 over the trial's epochs
        return sched.CosineAnnealingLR(opt, T_max=epochs)
    if name == "step":  # lr * gamma every step_size epochs
        return sched.StepLR(opt, step_size=int(p["step_size"]), gamma=float(p["gamma"]))
    if name == "exponential":  # lr * gamma every epoch
        return sched.ExponentialLR(opt, gamma=float(p["gamma"]))
    raise ValueError(f"unknown schedule {name!r}; use one of {', '.join(vocab.SCHEDULES)}")


def _data(ctx: Context, params: Mapping[str, Any] | None = None) -> DataBundle:
    if ctx.data is None:
        raise ValueError("tuner's training loop needs data: ctx.data is None")
    device = canonical(ctx.device)
    # normally the worker moved it once; a copy per trial is slow but still right
    data = ctx.data if ctx.data.device == device else ctx.data.to(device)
    # text data: the trial's vocab_size and max_len may call for another tokenization
    return for_params(data, params or {}) if data.text is not None else data


def _builder(ctx: Context, data: DataBundle) -> Callable[[Mapping[str, Any]], nn.Module]:
    if ctx.build_model is not None:
        return ctx.build_model
    family = default_name()  # a fit called without a builder trains the default family
    return lambda params: build(family, params, data.inputs, data.num_outputs)


def _check_metric(metric: str, task: str) -> None:
    if metric not in vocab.task_metrics(task):
        raise ValueError(f"metric {metric!r} is not a {task} metric; use one of "
                         f"{', '.join(vocab.task_metrics(task))}")


def wants_channels_last(model: nn.Module) -> bool:
    """Whether ``model`` asked for NHWC inputs and weights (``model.channels_last = True``):
    tuner's CNN does; a user model opts in the same way. Never forced: a model that flattens
    with ``x.view(n, -1)`` or takes inputs that are not 4-D fails in channels_last."""
    return bool(getattr(model, "channels_last", False)) and any(
        isinstance(m, nn.Conv2d) for m in model.modules())


def _channels_last(model: nn.Module, device: torch.device) -> bool:
    return device.type == "cuda" and wants_channels_last(model)


def probe(model: nn.Module, data: DataBundle, *, amp: bool) -> Tensor:
    """One training step's forward and backward on 2 samples, with the settings of training
    (memory format, autocast), wherever the data is: the preflight. channels_last follows the
    model's own choice even on the CPU, so a model that cannot take it fails here, not on
    every GPU trial. Returns the output of the forward pass."""
    device = data.device
    if wants_channels_last(model):
        model = model.to(memory_format=torch.channels_last)
    x, _ = next(data.batches(data.train, 2, shuffle=False))
    if wants_channels_last(model) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    with torch.autocast(device.type, torch.bfloat16, enabled=amp and device.type == "cuda"):
        out = model(x)
    if out.requires_grad:
        out.float().sum().backward()
    return out.detach()
