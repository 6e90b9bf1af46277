"""tuner: hyperparameter tuning for PyTorch on Optuna.

The CLI (``tuner --help``) and the Python API (:mod:`tuner.api`) do the same things. This
package imports nothing heavy at import time: ``tuner --help`` does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tuner.context import Context, StopRequested, TrialPruned  # noqa: E402  (torch-free)

__all__ = ["Context", "StopRequested", "TrialPruned", "__version__"]
