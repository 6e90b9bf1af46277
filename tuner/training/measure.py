"""The secondary metrics of a trial's model (``objectives:`` and ``constraints:``): parameter
count and size before training, inference latency after it. Pure PyTorch.

Latency is taken on a fresh build of the trial's architecture: weights do not change how
long a forward pass takes, so the trained weights need not travel out of the training loop.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def size(model: nn.Module) -> dict[str, float]:
    """``params`` (count) and ``size_mb`` (parameters and buffers, MB = 1e6 bytes)."""
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"params": float(params), "size_mb": nbytes / 1e6}


def latency_ms(model: nn.Module, batch: torch.Tensor, *, warmup: int = 3,
               repeats: int = 15) -> float:
    """Median milliseconds of one forward pass over ``batch`` on the batch's device, after
    ``warmup`` passes (allocator, cuDNN autotuning, caches)."""
    import torch

    model = model.to(batch.device).eval()
    cuda = batch.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(batch.device)
            start = time.perf_counter()
            model(batch)
            if cuda:
                torch.cuda.synchronize(batch.device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))
