"""Which torch device trials train on: one place that reads a ``--device`` value; and the
CUDA memory of a trial on it (its peak, and the cache handed back between trials)."""

from __future__ import annotations

import torch

from tuner import gate
from tuner.errors import TunerError

# a GPU with less free memory than this is busy, not a place to train (bytes)
MIN_FREE_BYTES = 2**30


def resolve(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; checks the others. Returns
    the name to pass on (``cuda`` stays unnumbered: each worker process numbers its own).
    A visible GPU that cannot be used (full, or held by another process in exclusive mode)
    is one clear error naming it and its free memory, not a raw CUDA error later."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        _usable(0, "auto")
        return "cuda"
    gate.device(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TunerError(f"--device {device}: no CUDA GPU is visible here; use --device cpu "
                         "or auto")
    return device


def _usable(index: int, asked: str) -> None:
    try:
        name = torch.cuda.get_device_name(index)
    except Exception:  # the name is only for the message
        name = "GPU"
    try:
        free, total = torch.cuda.mem_get_info(index)
    except RuntimeError as e:  # exclusive-process mode, a broken driver
        raise TunerError(f"--device {asked}: cuda:{index} ({name}) cannot be used "
                         f"({str(e).splitlines()[0][:120]}); free it, or use --device cpu"
                         ) from e
    if free < MIN_FREE_BYTES:
        raise TunerError(f"--device {asked}: cuda:{index} ({name}) has {free / 2**30:.1f} of "
                         f"{total / 2**30:.0f} GiB free; free it, or use --device cpu")


def canonical(device: str | torch.device) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current GPU), so that devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def is_cuda(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.is_available()


def reset_peak_memory(device: str) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> int | None:
    """The most bytes allocated on ``device`` since :func:`reset_peak_memory` (None: no GPU)."""
    if not is_cuda(device):
        return None
    return int(torch.cuda.max_memory_allocated())


def free_device_cache(device: str) -> None:
    """Between trials, hand the allocator's cached blocks back: with several workers on one
    GPU, each would otherwise keep its largest trial's peak reserved."""
    if is_cuda(device):
        import gc

        gc.collect()  # the trial's model and optimizer, if a cycle still holds them
        torch.cuda.empty_cache()
