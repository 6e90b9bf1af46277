"""The study file (YAML) -> a validated, frozen :class:`StudySpec`, assembled from the
blocks each component declares (:mod:`~tuner.config.params`, :mod:`~tuner.config.sampler`,
:mod:`~tuner.config.objectives`, :mod:`~tuner.config.references`,
:mod:`~tuner.config.fusion`, :mod:`~tuner.config.weights`, :mod:`~tuner.config.stop`, and
each schedule's ``pruner:`` / ``scheduler:`` block in :mod:`tuner.schedules`).

This module owns the study-wide keys (name, budgets, training switches), the order in which
the components' checks run, the YAML loading (through :func:`tuner.gate.read_yaml`) and the
error format: every problem becomes one :class:`~tuner.errors.SpecError` line that says how
to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from tuner import data as datasets
from tuner import models, schedules, vocab
from tuner.config import fusion, objectives, params, references, sampler, stop, weights
from tuner.config._base import Frozen, known_keys
from tuner.config.fusion import Fuse
from tuner.config.objectives import Bound, Objectives
from tuner.config.params import Space
from tuner.config.sampler import Sampler, SamplerSpec
from tuner.config.stop import Stop, StopSpec
from tuner.data import text as text_data
from tuner.errors import SpecError
from tuner.gate import (
    MAX_FILE_BYTES,
    MAX_SECONDS,
    Count,
    Finite,
    Seed,
    StudyName,
    read_yaml,
    study_name,
)
from tuner.kinds import InputKind
from tuner.registry import Knob, did_you_mean
from tuner.schedules import PrunerSpec, SchedulerSpec


class KFold(Frozen):
    kfold: int = Field(ge=2, le=20)


class StudySpec(Frozen):
    """A whole study, validated and frozen. Built by :func:`load_spec` or :func:`parse_spec`."""

    name: StudyName
    description: str = ""
    # a built-in dataset, or a user loader ``pkg.mod:load`` / ``file.py:load``; defaults to
    # mnist, or to nothing when a user ``trainer`` brings its own data. In the file also
    # ``data: {name: NAME, as: KIND}`` to say how its samples are read (``data_as``)
    data: str | None = None
    data_as: InputKind | None = None
    # text data's block (``data: {name: text, path: ..., text: ..., label: ...}``), as
    # :class:`tuner.data.text.TextOptions` writes it back
    data_options: dict[str, Any] | None = None
    # a built-in model family (default: the one registered as the default), or a user
    # builder ``pkg.mod:build`` / ``file.py:build``
    model: str = Field(default_factory=models.default_name)
    # a user training loop ``pkg.mod:fit``; None means tuner's own loop
    trainer: str | None = None
    # a state_dict to start the model from (``torch.save(model.state_dict(), PATH)``), relative
    # to the study file; a ``weights`` hyperparameter overrides it per trial
    weights: str | None = Field(default=None, min_length=1)
    task: Literal["classification", "regression"] | None = None
    metric: str | None = None
    direction: Literal["maximize", "minimize"] | None = None
    # fraction of the training set held out for validation, or {kfold: K}
    validation: Finite | KFold = 0.1
    # the most epochs one trial trains: the pruners' budget unit
    epochs: int = Field(default=10, ge=1, le=10_000)
    # default study-wide budget of finished trials, and of wall time in seconds
    trials: Count = 20
    timeout: Finite | None = Field(default=None, gt=0, le=MAX_SECONDS)
    seed: Seed = 0
    sampler: Sampler = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    # a population schedule instead of independent trials: ``{name: pbt, population: 8, ...}``
    scheduler: SchedulerSpec | None = None
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    checkpoint: bool = True  # save a checkpoint every epoch so a killed trial resumes
    space: Space = Field(default_factory=dict)
    # several objectives (a Pareto front): ``[accuracy, params]`` or
    # ``[{metric: accuracy}, {metric: latency_ms, direction: minimize}]``; None: ``metric``
    objectives: Objectives = Field(default=None, min_length=1)
    # the objective whose learning curve the pruner judges [default: the first]
    prune_on: str | None = None
    # bounds on metrics, e.g. ``{params: {max: 1.0e6}, latency_ms: {max: 2.0}}``
    constraints: dict[str, Bound] = Field(default_factory=dict)
    # end the study early: ``{patience: N}`` and/or ``{terminator: true}``
    stop: Stop = StopSpec()
    # study-wide device-hours: the training time of trials, summed over all workers
    budget_hours: Finite | None = Field(default=None, gt=0)
    # reuse the result of an identical finished configuration instead of training it again
    dedup: bool = True
    # same-shape trials trained as one stacked model on a worker's device (tuner.config.fusion)
    fuse: Fuse = "off"
    # folder the study file was read from: relative user-code paths resolve against it
    base_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_data(cls, raw: Any) -> Any:
        return references.normalise(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="before")
    @classmethod
    def _schedule_defaults(cls, raw: Any) -> Any:
        """A schedule's defaults for other keys (PBT: the population is the trial budget and
        nothing is pruned), unless the file says otherwise (then its check names the
        conflict)."""
        return schedules.defaults(raw) if isinstance(raw, dict) else raw

    @field_validator("budget_hours", mode="before")
    @classmethod
    def _positive_hours(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool) and not v > 0:
            raise ValueError(f"must be a positive number of device-hours (got {v}); e.g. "
                             "budget_hours: 2.5, or remove it for no limit")
        return v

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("validation")
    @classmethod
    def _fraction(cls, v: float | KFold) -> float | KFold:
        if isinstance(v, float) and not 0.0 < v < 0.9:
            raise ValueError(f"validation fraction must be between 0 and 0.9 (got {v})")
        return v

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> StudySpec:
        """Each component's checks, in the order whose first failure is the one reported."""
        references.check_names(self)
        objectives.check_metric(self)
        references.check_reading(self, bool(info.context and info.context.get("files")))
        self.weight_paths()
        params.check(self)
        objectives.check(self)
        stop.check(self)
        sampler.check(self)
        schedules.of(self).check()
        fusion.check(self, self.fuse)
        return self

    # ---- what the components derive ---------------------------------------------------
    def check_fuse(self, fuse: str | int) -> None:
        """``fuse: K`` where K trials cannot share one stacked model: a ValueError naming why."""
        fusion.check(self, fuse)

    def fuse_blocker(self, *, fixed_shape: bool) -> str | None:
        """Why this study's trials cannot be trained as one stacked model (None: they can)."""
        return fusion.blocker(self, fixed_shape=fixed_shape)

    @property
    def builtin_data(self) -> bool:
        return self.data in datasets.names()

    @property
    def data_kind(self) -> InputKind | None:
        """The kind of sample the model will see, when known before loading."""
        return references.data_kind(self)

    def weight_paths(self) -> list[str | None]:
        """Every ``weights`` a trial may start from (None: the model's own initialisation)."""
        return weights.paths(self)

    def knobs(self) -> dict[str, Knob]:
        """The hyperparameters tuner's own code reads in this study."""
        return references.knobs(self)

    @property
    def text_options(self) -> text_data.TextOptions | None:
        """Text data's options, paths relative to the study file (None: not text data)."""
        return references.text_options(self)

    @property
    def hf_path(self) -> str | None:
        """What a pretrained ``model: hf:PATH`` names (None: another model)."""
        return models.pretrained_path(self.model)

    @property
    def task_name(self) -> str | None:
        """The task: stated, the built-in dataset's, or implied by the metric; None when only
        the data's labels can tell (see :meth:`with_task`)."""
        if self.task is not None:
            return self.task
        if self.data in datasets.names():
            return datasets.get(self.data).task
        return vocab.METRICS[self.metric][0] if self.metric else None

    def with_task(self, task: str) -> StudySpec:
        """This spec with the task its data showed (a user loader's labels), before it is stored."""
        return self if self.task_name is not None else self.model_copy(update={"task": task})

    @property
    def metric_name(self) -> str:
        """The metric the training loop reports each epoch: ``metric:``, or ``prune_on:`` /
        the first objective that has a learning curve."""
        return objectives.metric_name(self)

    @property
    def direction_name(self) -> str:
        """The direction of the metric the loop reports (the primary objective)."""
        if self.objectives is not None:
            return self.directions[self.objective_names.index(self.metric_name)]
        return self.direction or vocab.METRICS[self.metric_name][1]

    @property
    def objective_names(self) -> list[str]:
        """What the study optimizes, in order: the objectives, or the one metric."""
        if self.objectives is None:
            return [self.metric_name]
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return objectives.directions(self)

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_names) > 1

    @property
    def kfold(self) -> int | None:
        return self.validation.kfold if isinstance(self.validation, KFold) else None

    def with_name(self, name: str | None) -> StudySpec:
        if not name or name == self.name:
            return self
        return self.model_copy(update={"name": study_name(name, "--study")})

    def to_json(self) -> str:
        # not sort_keys: the space's order matters (``when``/``per_layer`` refer upwards)
        return json.dumps(self.model_dump(mode="json"))

    def search_fields(self) -> dict[str, Any]:
        """What must match for two specs to be the same study (budgets and paths may differ)."""
        d = self.model_dump(mode="json")
        # fuse says how workers run trials, not what the study searches
        for k in ("name", "trials", "timeout", "budget_hours", "base_dir", "description", "fuse"):
            d.pop(k, None)
        return d


# the blocks whose unknown keys are named against their own keys
BLOCKS = {"sampler": SamplerSpec, "pruner": PrunerSpec, "stop": StopSpec,
          "scheduler": SchedulerSpec}


def _format_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"] if not str(p).startswith(("function-after", "tagged-union"))]
    # drop pydantic's union branch names (FloatParam, Fixed, float, ...)
    loc = [p for p in loc if p not in {"float", "int", "categorical", "fixed", "KFold"}]
    where = ".".join(loc)
    msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if e["type"] == "extra_forbidden":
        key = loc[-1] if loc else "?"
        keys = params.PARAM_KEYS if len(loc) >= 3 and loc[0] == "space" else known_keys(StudySpec)
        if len(loc) >= 2 and loc[0] in BLOCKS:
            keys = known_keys(BLOCKS[loc[0]])
        return f"{source}: unknown key {where!r}{did_you_mean(key, keys)}; remove it or fix the spelling"
    if e["type"] == "union_tag_invalid" or e["type"] == "union_tag_not_found":
        return (
            f"{source}: {where}: unknown parameter type; use type: float, int or categorical "
            "(or a plain value for a constant)"
        )
    if e["type"] == "literal_error":
        expected = e.get("ctx", {}).get("expected", "")
        got = e.get("input")
        options = [o.strip(" '") for o in str(expected).replace(" or ", ",").split(",")]
        return (
            f"{source}: {where}: unknown value {got!r}{did_you_mean(str(got), options)}; "
            f"use one of {expected}"
        )
    return f"{source}: {where + ': ' if where else ''}{msg}"


def parse_spec(raw: Any, *, source: str = "study file", default_name: str = "study",
               base_dir: str | None = None) -> StudySpec:
    """Validate an already-parsed mapping (a YAML document, or a dict built in Python)."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of keys (name, data, space, ...) at the top")
    raw = dict(raw)
    raw.setdefault("name", default_name)
    if base_dir is not None:
        raw.setdefault("base_dir", base_dir)
    try:
        return StudySpec.model_validate(raw, context={"files": True})
    except ValidationError as err:
        raise SpecError(_format_error(err, source)) from None


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:  # before reading it all into memory
            raise SpecError(f"{path}: {path.stat().st_size:,} bytes, more than a study file "
                            f"needs (at most {MAX_FILE_BYTES:,}); give the study's YAML file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file; give the study's YAML file "
                        "(examples in search_spaces/)") from None
    except FileNotFoundError:
        raise SpecError(f"{path}: no such study file; check the path (examples in search_spaces/)") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read the study file ({e.strerror})") from None
    raw = read_yaml(text, str(path))
    return parse_spec(raw, source=str(path), default_name=path.stem,
                      base_dir=str(path.resolve().parent))


def spec_from_json(text: str) -> StudySpec:
    """A spec as stored in a study; one that today's rules refuse (a study created by an
    older tuner, or written by hand) is a SpecError naming the problem."""
    try:
        return StudySpec.model_validate_json(text)
    except ValidationError as err:
        raise SpecError(_format_error(err, "the study's stored spec") + "; recreate the study "
                        "from a corrected study file") from None
