"""Which torch device trials train on: one place that reads a ``--device`` value."""

from __future__ import annotations

import torch

from tuner.errors import TunerError


def resolve(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; checks the others. Returns
    the name to pass on (``cuda`` stays unnumbered: each worker process numbers its own)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TunerError(f"--device {device}: unknown device; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TunerError(f"--device {device}: no CUDA GPU is visible here; use --device cpu "
                         "or auto")
    return device


def canonical(device: str | torch.device) -> torch.device:
    """``cuda`` -> ``cuda:N`` (the current GPU), so that devices compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device
