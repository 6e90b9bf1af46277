"""The one place a :class:`~tuner.training.context.Context` is built from a study's assets: for a
trial (and each of its folds), for timing ``fuse: auto``, and for ``tuner retrain``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.training.assets import StudyAssets
from tuner.training.context import CheckpointStore, Context, NullReporter, Reporter

if TYPE_CHECKING:
    from tuner.data import DataBundle


def build(assets: StudyAssets, data: DataBundle | None, *, seed: int,
          max_epochs: int | None = None, trial_number: int | None = None,
          reporter: Reporter | None = None,
          checkpoints: CheckpointStore | None = None) -> Context:
    """A context on the assets' device for ``data`` (None: the study's trainer brings its
    own), with the study's metric, epochs (unless ``max_epochs``), amp and compile."""
    import torch

    spec = assets.spec
    return Context(
        device=torch.device(assets.device), seed=seed,
        max_epochs=spec.epochs if max_epochs is None else max_epochs,
        task=data.task if data is not None else spec.task_name,
        metric=spec.metric_name, data=data,
        build_model=assets.model_builder(data) if data is not None else None,
        trial_number=trial_number, amp=spec.amp, compile=spec.compile,
        reporter=reporter if reporter is not None else NullReporter(), checkpoints=checkpoints,
    )
