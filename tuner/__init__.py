"""tuner: hyperparameter tuning for PyTorch on Optuna.

The CLI (``tuner --help``) and the Python API (:mod:`tuner.api`) do the same things. This
package imports nothing heavy at import time: ``tuner --help`` does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tuner.training.context import Context, StopRequested, TrialPruned  # noqa: E402  (torch-free)

# the Python API (:mod:`tuner.api`), imported on first use; ``retrain`` and ``trials`` are
# ``tuner.api.retrain`` and ``tuner.api.trials`` (``tuner.results.retrain`` and ``tuner.trials`` are
# the packages that implement them: a shortcut of the same name would be replaced by the
# package as soon as a worker imports it)
_API = ("run", "resume", "load", "best_params", "Result")

__all__ = ["Context", "StopRequested", "TrialPruned", "__version__", "api", *_API]


def __getattr__(name: str) -> object:
    if name in _API or name == "api":
        import importlib

        api = importlib.import_module("tuner.api")
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
