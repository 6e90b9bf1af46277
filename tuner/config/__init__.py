"""The study file: each component's block and checks, assembled into one frozen
:class:`StudySpec`.

    from tuner.config import load_spec, parse_spec
    spec = load_spec("search_spaces/mnist_mlp.yaml")     # SpecError: one line naming the fix

- :mod:`~tuner.config.spec`: the ``StudySpec`` (study-wide keys, the order of the checks),
  YAML loading and the error format;
- :mod:`~tuner.config.params`: the ``space:`` block (parameter types, knob checks, the grid);
- :mod:`~tuner.config.sampler`: the ``sampler:`` block;
- :mod:`~tuner.config.objectives`: ``metric:``, ``objectives:``, ``prune_on:``, ``constraints:``;
- :mod:`~tuner.config.references`: ``data:``, ``model:``, ``trainer:`` against the registries;
- :mod:`~tuner.config.fusion`: ``fuse:`` and which trials share a stacked model;
- :mod:`~tuner.config.weights`: the ``weights`` state_dict paths;
- :mod:`~tuner.config.stop`: the ``stop:`` block.
- :mod:`~tuner.config.space`: the search space as data (suggest, defaults, the grid).

A schedule's ``pruner:`` / ``scheduler:`` block is its own (:mod:`tuner.schedules`). Importing
this package imports neither torch nor Optuna.
"""

from tuner.config.fusion import FUSE_SHAPE_KNOBS, FUSE_SHAPE_VALUES, FUSE_UNSUPPORTED, fuse_key
from tuner.config.objectives import Bound, Objective
from tuner.config.params import (
    GRID_LIMIT,
    CategoricalParam,
    Fixed,
    FloatParam,
    IntParam,
    Param,
    SpaceEntry,
    grid,
)
from tuner.config.sampler import SamplerSpec
from tuner.config.spec import KFold, StudySpec, load_spec, parse_spec, spec_from_json
from tuner.config.stop import StopSpec

__all__ = ["FUSE_SHAPE_KNOBS", "FUSE_SHAPE_VALUES", "FUSE_UNSUPPORTED", "GRID_LIMIT", "Bound",
           "CategoricalParam", "Fixed", "FloatParam", "IntParam", "KFold", "Objective", "Param",
           "SamplerSpec", "SpaceEntry", "StopSpec", "StudySpec", "fuse_key", "grid", "load_spec",
           "parse_spec", "spec_from_json"]
