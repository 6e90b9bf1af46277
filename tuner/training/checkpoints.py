"""What a training run saves and restores: a checkpoint holds weights, optimizer, schedule
and RNG states, so that a killed trial, a PBT continuation or a fused member goes on bit for
bit; loading keeps this run's device settings and hyperparameters. Pure PyTorch.

    ctx.save_checkpoint(state(run, epoch))    after an epoch (tuner.training.train, tuner.training.fuse)
    first = resume(run, ctx)                  the trial's last checkpoint, if any
    restore(run, saved)                       a state saved by another run (PBT: new params)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from tuner.training.context import Context
    from tuner.training.train import _Run


def state(run: _Run, epoch: int) -> dict[str, Any]:
    """All a retry needs to continue bit for bit: weights, optimizer, schedule, RNGs."""
    cuda = run.device.type == "cuda"
    return {
        "epoch": epoch,
        "model": run.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "scheduler": run.sched.state_dict() if run.sched is not None else None,
        "generator": run.gen.get_state(),
        "generator_device": run.gen.device.type,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if cuda else None,
    }


# optimizer settings that say how to run on a device, not what was learned: a checkpoint
# saved with fused Adam on a GPU must not bring fused=True to a CPU retry, nor a CPU
# checkpoint take fused away on a GPU
DEVICE_SETTINGS = ("fused", "foreach", "capturable", "differentiable")


def load_optimizer_state(opt: torch.optim.Optimizer, saved: Mapping[str, Any]) -> None:
    """``opt.load_state_dict(saved)``, keeping this optimizer's device settings and laying
    each state tensor out like its parameter (dtype, device, memory format); ``step`` goes
    where this optimizer's kernels want it (on the device for fused/capturable, else CPU)."""
    own = [{k: g[k] for k in DEVICE_SETTINGS if k in g} for g in opt.param_groups]
    opt.load_state_dict(saved)
    for group, settings in zip(opt.param_groups, own, strict=True):
        for k in DEVICE_SETTINGS:
            if k in settings:
                group[k] = settings[k]
            else:
                group.pop(k, None)
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for k, v in st.items():
                if not isinstance(v, Tensor):
                    continue
                if k == "step":
                    st[k] = v.to(device=p.device if on_device else "cpu", dtype=torch.float32)
                elif v.shape == p.shape:
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def resume(run: _Run, ctx: Context) -> int:
    """Restore the trial's last checkpoint, if any; returns the first epoch to train."""
    saved = ctx.load_checkpoint()
    if saved is None:
        return 1
    report = saved.get("report")
    if report is not None and all(h["epoch"] < report["epoch"] for h in ctx.history):
        ctx.history.append(dict(report))
    return restore(run, saved)


def restore(run: _Run, saved: Mapping[str, Any]) -> int:
    """Load a saved state into ``run`` (built from this segment's params); returns the first
    epoch to train. The optimizer's and schedule's hyperparameters stay this run's: a PBT
    member that changed them goes on with the new ones (dropout lives in the new modules)."""
    fresh = [{k: g[k] for k in HYPERPARAMETERS if k in g} for g in run.opt.param_groups]
    run.model.load_state_dict(saved["model"])
    load_optimizer_state(run.opt, saved["optimizer"])
    if run.sched is not None and saved.get("scheduler") is not None:
        run.sched.load_state_dict(saved["scheduler"])
    apply_hyperparameters(run, fresh)
    torch.set_rng_state(saved["torch_rng"])
    # a retry on another kind of device reshuffles differently but still continues
    if saved.get("generator_device") == run.gen.device.type:
        run.gen.set_state(saved["generator"])
    if saved.get("cuda_rng") is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], run.device)
    return int(saved["epoch"]) + 1


# what a param group learns nothing about: set from the params, whatever a checkpoint says
HYPERPARAMETERS = ("lr", "initial_lr", "weight_decay", "momentum")


def apply_hyperparameters(run: _Run, fresh: list[dict[str, Any]]) -> None:
    """Put the param groups' hyperparameters of a freshly built optimizer (``fresh``, one
    dict per group, the backbone's scaled lr included) back after ``load_state_dict``
    restored the saved ones. With a schedule, the scheduled rate keeps its place: it scales
    by new base / old base, and the schedules' ``base_lrs`` become the new bases."""
    for group, f in zip(run.opt.param_groups, fresh, strict=True):
        new_base = f.get("initial_lr", f["lr"])
        old_base = group.get("initial_lr", group["lr"])
        if run.sched is None:
            group["lr"] = f["lr"]
        elif new_base != old_base:
            group["lr"] = group["lr"] * new_base / old_base
        if "initial_lr" in f:
            group["initial_lr"] = new_base
        for k in ("weight_decay", "momentum"):
            if k in f:
                group[k] = f[k]
    if run.sched is not None:
        bases = [g.get("initial_lr", g["lr"]) for g in run.opt.param_groups]
        for s in [run.sched, *getattr(run.sched, "_schedulers", [])]:
            s.base_lrs = list(bases)
            s._last_lr = [g["lr"] for g in run.opt.param_groups]
