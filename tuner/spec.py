"""The study file (YAML) -> a validated, frozen :class:`StudySpec`.

A study file names the data, the model, the search space, the training budget, the metric,
the sampler and the pruner. Everything is checked here, before any trial starts, and every
problem becomes one :class:`~tuner.errors.SpecError` line that says how to fix it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tuner import data as datasets
from tuner import models, schedules, vocab
from tuner.data import text as text_data
from tuner.data import uea
from tuner.errors import SpecError
from tuner.gate import (
    MAX_COUNT,
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
from tuner.schedules import PrunerSpec
from tuner.schedules.pbt import SchedulerSpec
from tuner.usercode import is_import_path

Scalar = str | int | float | bool
UEA_PREFIX = "uea:"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _as_list(value: Any) -> Any:
    return value if isinstance(value, list) else [value]


class _Param(_Frozen):
    # only sample this parameter when another one has one of these values, e.g.
    # ``when: {optimizer: [sgd, sgd_momentum]}``
    when: dict[str, Annotated[list[Scalar], BeforeValidator(_as_list)]] | None = None
    # sample one value per layer, named ``NAME_0 .. NAME_{n-1}``, n being the value of
    # the (int) parameter named here, e.g. ``per_layer: depth``
    per_layer: str | None = None


class FloatParam(_Param):
    type: Literal["float"]
    low: Finite
    high: Finite
    log: bool = False
    step: Finite | None = None

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = 1

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _unique(cls, choices: list[Scalar]) -> list[Scalar]:
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError("choices repeat a value; list each choice once")
        return choices


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("low and high must be finite numbers")
    if low > high:
        raise ValueError(f"low ({low}) is greater than high ({high}); swap them")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0 (got {low}); raise low or drop log: true")
    if log and step is not None:
        raise ValueError("step cannot be combined with log: true; drop one of them")
    if step is not None and step <= 0:
        raise ValueError(f"step must be positive (got {step})")
    if step is not None and high > low and step > high - low:
        raise ValueError(f"step ({step}) is larger than the range {low}..{high}; use a step "
                         "that fits the range, or a fixed value")


class Fixed(_Frozen):
    """A constant: a plain value in the study file (``optimizer: adamw``)."""

    value: Scalar


def _entry_kind(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("type") if "type" in v else ("fixed" if set(v) == {"value"} else None)
    return getattr(v, "type", "fixed")


Param = FloatParam | IntParam | CategoricalParam
SpaceEntry = Annotated[
    Annotated[FloatParam, Tag("float")]
    | Annotated[IntParam, Tag("int")]
    | Annotated[CategoricalParam, Tag("categorical")]
    | Annotated[Fixed, Tag("fixed")],
    Discriminator(_entry_kind),
]


class SamplerSpec(_Frozen):
    name: Literal["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"] = "tpe"  # the samplers
    # startup trials sampled at random before the model-based samplers take over (nsga2:
    # its population, each generation's size)
    n_startup_trials: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    multivariate: bool = True


class StopSpec(_Frozen):
    """When the study ends before its budget: ``patience`` finished trials in a row that did
    not improve the best value, or Optuna's Terminator (the regret bound falls below the
    statistical error of the best trial). Study-wide: every worker obeys."""

    patience: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    terminator: bool = False


class Objective(_Frozen):
    """One objective of a multi-objective study: a metric and its direction (the metric's
    own direction when not given)."""

    metric: str = Field(min_length=1)
    direction: Literal["maximize", "minimize"] | None = None


class Bound(_Frozen):
    """Feasible values of one metric: ``{max: 1.0e6}``, ``{min: 0.9}`` or both."""

    min: Finite | None = None
    max: Finite | None = None

    @model_validator(mode="after")
    def _check(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min:, max: or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when ``value`` is feasible, else how far out."""
        over = value - self.max if self.max is not None else -math.inf
        under = self.min - value if self.min is not None else -math.inf
        return float(max(over, under))


def _direction_of(metric: str) -> str | None:
    if metric in vocab.METRICS:
        return vocab.METRICS[metric][1]
    return "minimize" if metric in vocab.SECONDARY_METRICS else None


class KFold(_Frozen):
    kfold: int = Field(ge=2, le=20)


class StudySpec(_Frozen):
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
    # a built-in model family, or a user builder ``pkg.mod:build`` / ``file.py:build``
    model: str = "mlp"
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
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    # a population schedule instead of independent trials: ``{name: pbt, population: 8, ...}``
    scheduler: SchedulerSpec | None = None
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the model
    checkpoint: bool = True  # save a checkpoint every epoch so a killed trial resumes
    space: dict[str, SpaceEntry] = Field(default_factory=dict)
    # several objectives (a Pareto front): ``[accuracy, params]`` or
    # ``[{metric: accuracy}, {metric: latency_ms, direction: minimize}]``; None: ``metric``
    objectives: list[Objective] | None = Field(default=None, min_length=1)
    # the objective whose learning curve the pruner judges [default: the first]
    prune_on: str | None = None
    # bounds on metrics, e.g. ``{params: {max: 1.0e6}, latency_ms: {max: 2.0}}``
    constraints: dict[str, Bound] = Field(default_factory=dict)
    # end the study early: ``{patience: N}`` and/or ``{terminator: true}``
    stop: StopSpec = StopSpec()
    # study-wide device-hours: the training time of trials, summed over all workers
    budget_hours: Finite | None = Field(default=None, gt=0)
    # reuse the result of an identical finished configuration instead of training it again
    dedup: bool = True
    # same-shape trials trained as one stacked model on a worker's device: off, auto (the
    # worker measures K = 1, 2, 4, 8 and keeps the fastest) or K members
    fuse: Literal["auto", "off"] | Annotated[int, Field(ge=1, le=256)] = "off"
    # folder the study file was read from: relative user-code paths resolve against it
    base_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_data(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "data" not in raw and not raw.get("trainer"):
            raw = {**raw, "data": "mnist"}
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) \
                and raw["data"].get("name") == text_data.NAME:
            options = text_data.TextOptions.of(raw["data"], None)
            return {**raw, "data": text_data.NAME, "data_options": options.block()}
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            given = dict(raw["data"])
            unknown = set(given) - {"name", "as"}
            if unknown or "name" not in given:
                raise ValueError("data: give a dataset name, or {name: NAME, as: KIND} with KIND "
                                 f"one of {', '.join(InputKind)}")
            raw = {**raw, "data": given["name"], "data_as": given.get("as")}
        return raw

    @field_validator("fuse", mode="before")
    @classmethod
    def _fuse_words(cls, v: Any) -> Any:
        if v is False:  # YAML reads a bare off as false
            return "off"
        if isinstance(v, str) and re.fullmatch(r"[0-9]+", v.strip()):
            return int(v)
        if isinstance(v, bool) or not (isinstance(v, int) or v in ("auto", "off")):
            raise ValueError(f"give auto, off or a number of trials K (got {v!r}); e.g. fuse: 4")
        return v

    @model_validator(mode="before")
    @classmethod
    def _schedule_defaults(cls, raw: Any) -> Any:
        """A schedule's defaults for other keys (PBT: the population is the trial budget and
        nothing is pruned), unless the file says otherwise (then its check names the
        conflict)."""
        return schedules.defaults(raw) if isinstance(raw, dict) else raw

    @field_validator("sampler", mode="before")
    @classmethod
    def _sampler_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("budget_hours", mode="before")
    @classmethod
    def _positive_hours(cls, v: Any) -> Any:
        if isinstance(v, int | float) and not isinstance(v, bool) and not v > 0:
            raise ValueError(f"must be a positive number of device-hours (got {v}); e.g. "
                             "budget_hours: 2.5, or remove it for no limit")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_mapping(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("give a mapping, e.g. stop: {patience: 20} or stop: {terminator: true}")
        return v

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("objectives", mode="before")
    @classmethod
    def _objective_shorthand(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, list):
            raise ValueError("objectives: give a list, e.g. [accuracy, params]")
        return [{"metric": o} if isinstance(o, str) else o for o in v]

    @field_validator("space", mode="before")
    @classmethod
    def _fixed_values(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError("space must be a mapping of parameter names to ranges or values")
        # a plain value is a constant; a plain list is a categorical choice
        return {
            k: p if isinstance(p, dict | BaseModel)
            else {"type": "categorical", "choices": p} if isinstance(p, list)
            else {"value": p}
            for k, p in v.items()
        }

    @field_validator("validation")
    @classmethod
    def _fraction(cls, v: float | KFold) -> float | KFold:
        if isinstance(v, float) and not 0.0 < v < 0.9:
            raise ValueError(f"validation fraction must be between 0 and 0.9 (got {v})")
        return v

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> StudySpec:
        builtin_data = self.builtin_data
        if self.data is not None and self.data.startswith(UEA_PREFIX) and not builtin_data:
            raise ValueError(f"data: {uea.unknown(self.data)}")
        if self.data is not None and not builtin_data and not is_import_path(self.data):
            raise ValueError(
                f"data: {datasets.SOURCES.unknown(self.data)} or an import path like mypkg.data:load"
            )
        if models.family_of(self.model) is None and not is_import_path(self.model):
            raise ValueError(
                f"model: {models.FAMILIES.unknown(self.model)} or an import path like mypkg.nets:build"
            )
        if self.trainer is not None and not is_import_path(self.trainer):
            raise ValueError(f"trainer: {self.trainer!r} is not an import path like mypkg.train:fit")
        if self.metric is not None and self.metric not in vocab.METRICS:
            raise ValueError(
                f"metric: unknown metric {self.metric!r}{did_you_mean(self.metric, vocab.METRICS)}; "
                f"use one of {', '.join(vocab.METRICS)}"
            )
        if self.task_name is None and self.data is None:
            raise ValueError("task: a study whose trainer brings its own data must say task: "
                             "classification or regression (or a metric that implies it)")
        metric_task = vocab.METRICS[self.metric][0] if self.metric else None
        if metric_task is not None and self.task_name is not None and metric_task != self.task_name:
            raise ValueError(f"metric: {self.metric} is not a {self.task_name} metric")
        if builtin_data and self.data_as is not None:
            kind = datasets.get(self.data).kind
            if self.data_as != kind and self.data_as not in datasets.READINGS.get(kind, ()):
                raise ValueError(f"data: {self.data} is {kind} data and cannot be read as "
                                 f"{self.data_as}")
        self._check_text(bool(info.context and info.context.get("files")))
        self._check_kinds()
        self.weight_paths()
        self._check_space()
        self._check_objectives()
        if self.stop.terminator and self.multi_objective:
            raise ValueError("stop.terminator: Optuna's Terminator judges one objective; use "
                             "stop: {patience: N} in a multi-objective study")
        if self.sampler.name == "nsga2" and (self.sampler.n_startup_trials or 2) < 2:
            raise ValueError("sampler: nsga2's n_startup_trials is its population size, at least 2")
        if self.sampler.name == "cmaes" and self.multi_objective:
            raise ValueError("sampler: cmaes optimizes one objective; use tpe, nsga2, gp, random "
                             "or qmc with several objectives")
        schedules.of(self).check()
        self.check_fuse(self.fuse)
        return self

    # ---- fusion (tuner.fuse) ------------------------------------------------------------
    def check_fuse(self, fuse: str | int) -> None:
        """``fuse: K`` (K > 1) where K trials cannot share one stacked model: a ValueError
        naming why. ``auto`` and ``off`` never fail: auto fuses what it can."""
        if isinstance(fuse, int) and fuse > 1 and (why := self.fuse_blocker(fixed_shape=True)):
            raise ValueError(f"fuse: {fuse} cannot stack these trials: {why}")

    def fuse_blocker(self, *, fixed_shape: bool) -> str | None:
        """Why this study's trials cannot be trained as one stacked model (None: they can);
        ``fixed_shape``: the space must fix the shape too (``fuse: K``), not only let it
        repeat (``fuse: auto`` groups the trials that happen to share one)."""
        if self.trainer is not None:
            return "the study brings its own trainer; fusion runs tuner's own loop (use fuse: off)"
        if self.model != "mlp":
            return f"model: {self.model}; fusion stacks the mlp family only (use fuse: off)"
        if self.kfold:
            return "k-fold validation trains folds one by one; use a validation fraction"
        if why := schedules.of(self).fuse_blocker():
            return why
        if self.multi_objective:
            return "several objectives; fusion judges one learning curve per member"
        if self.compile:
            return "compile: true; the stacked model is not compiled (set compile: false)"
        for name, p in self.space.items():
            base = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
            if base in FUSE_UNSUPPORTED:
                if not isinstance(p, Fixed) or p.value not in FUSE_UNSUPPORTED[base]:
                    return (f"space.{name} is not supported by the fused loop; leave it out, "
                            "or use fuse: off")
            elif base in FUSE_SHAPE_KNOBS or (base == "width" and name != "width"):
                if not isinstance(p, Fixed):
                    if fixed_shape:
                        return (f"space.{name} varies, and it sets the model's shape; fix it "
                                f"(e.g. {name}: {_example(p)}) or use fuse: auto")
                    continue
                allowed = FUSE_SHAPE_VALUES.get(base)
                if allowed is not None and p.value not in allowed:
                    return (f"space.{name}: {p.value} is not supported by the fused loop; use "
                            f"one of {', '.join(map(str, allowed))} or fuse: off")
        return None

    def _check_objectives(self) -> None:
        known = [*vocab.METRICS, *vocab.SECONDARY_METRICS]
        names = [o.metric for o in self.objectives or []]
        if self.objectives is not None and self.metric is not None:
            raise ValueError("give metric: or objectives:, not both (the first objective is "
                             "the metric)")
        if len(set(names)) != len(names):
            raise ValueError("objectives: a metric is listed twice; list each once")
        for o in self.objectives or []:
            builtin = _direction_of(o.metric)
            if builtin is None and self.trainer is None:
                raise ValueError(f"objectives: unknown metric {o.metric!r}"
                                 f"{did_you_mean(o.metric, known)}; use one of {', '.join(known)}")
            if builtin is None and o.direction is None:
                raise ValueError(f"objectives: {o.metric} is the trainer's own metric; give it "
                                 "a direction: {metric: NAME, direction: maximize}")
            if builtin is not None and o.direction is not None and o.direction != builtin:
                raise ValueError(f"objectives: {o.metric} is a metric to {builtin}, not to "
                                 f"{o.direction}; drop its direction:")
            task = vocab.METRICS.get(o.metric, (None,))[0]
            if task is not None and self.task_name is not None and task != self.task_name:
                raise ValueError(f"objectives: {o.metric} is not a {self.task_name} metric")
        if not any(n not in vocab.SECONDARY_METRICS for n in names) and names:
            raise ValueError("objectives: name at least one metric the training loop reports "
                             f"each epoch (e.g. {', '.join(vocab.METRICS)})")
        if self.prune_on is None and not self.constraints:
            return  # (what follows needs the objectives' names, which may wait for the data)
        if self.prune_on is not None and self.prune_on not in self.objective_names:
            raise ValueError(f"prune_on: {self.prune_on!r} is not one of the objectives "
                             f"({', '.join(self.objective_names)})")
        if self.prune_on in vocab.SECONDARY_METRICS:
            raise ValueError(f"prune_on: {self.prune_on} has no learning curve; name a metric "
                             "the training loop reports each epoch")
        produced = [*self.objective_names, *vocab.SECONDARY_METRICS]
        for m in self.constraints:
            if m not in produced:
                raise ValueError(f"constraints: the study does not produce {m!r}"
                                 f"{did_you_mean(m, produced)}; constrain one of "
                                 f"{', '.join(produced)}")

    @property
    def builtin_data(self) -> bool:
        return self.data in datasets.names()

    @property
    def data_kind(self) -> InputKind | None:
        """The kind of sample the model will see, when known before loading: a built-in
        source's own or the one it is read as (``data: {as: KIND}``)."""
        if self.data_as is not None:
            return self.data_as
        return datasets.get(self.data).kind if self.builtin_data else None

    def _check_kinds(self) -> None:
        kind = self.data_kind
        if kind is None:
            return
        if (name := models.family_of(self.model)) is not None and self.trainer is None:
            fam = models.get(name)
            if kind not in fam.inputs:
                need = " or ".join(sorted(fam.inputs))
                hint = (f"; read the images as sequences with data: {{name: {self.data}, as: "
                        "sequence}" if kind == InputKind.image and InputKind.sequence in fam.inputs
                        else f"; pick a model for {kind} data")
                raise ValueError(f"model: {self.model} needs {need} inputs but {self.data} is "
                                 f"{kind} data{hint}")
        if kind != InputKind.image and self.trainer is None:
            for name in self.space:
                if name in vocab.IMAGE_ONLY_KNOBS:
                    raise ValueError(f"space.{name}: augmentation works on images only and "
                                     f"{self.data} is {kind} data; remove {name}")

    def weight_paths(self) -> list[str | None]:
        """Every ``weights`` a trial may start from: the space's values, else the study's
        (None: the model's own initialisation). The files are checked before any trial."""
        entry = self.space.get("weights")
        if entry is None:
            return [self.weights]
        values = ([entry.value] if isinstance(entry, Fixed) else list(entry.choices)
                  if isinstance(entry, CategoricalParam) else None)
        if values is None or not all(isinstance(v, str) and v for v in values):
            raise ValueError("space.weights: give the path of a state_dict file, or a list of "
                             "paths, relative to the study file")
        return list(values)

    def knobs(self) -> dict[str, Knob]:
        """The hyperparameters tuner's own code reads in this study: its training loop's
        (unless the study brings a trainer) and its built-in model family's."""
        out: dict[str, Knob] = {}
        if self.trainer is None:
            out.update(vocab.TRAINING_KNOBS)
            if (family := models.family_of(self.model)) is not None:
                out.update(models.get(family).knobs)
            if self.data == text_data.NAME:
                out.update(text_data.KNOBS)
        return out

    # ---- text data and pretrained encoders ---------------------------------------------
    @property
    def text_options(self) -> text_data.TextOptions | None:
        """Text data's options, paths relative to the study file (None: not text data)."""
        if self.data != text_data.NAME or self.data_options is None:
            return None
        return text_data.TextOptions.of(self.data_options, self.base_dir)

    @property
    def hf_path(self) -> str | None:
        """What ``model: hf:PATH`` names (None: another model)."""
        return self.model.removeprefix(models.HF_PREFIX) if models.family_of(
            self.model) == "hf" else None

    def _check_text(self, files: bool) -> None:
        """Text data has its block; a pretrained encoder reads text data, brings its own
        tokenizer, and (``files``: when a study file is read) has a complete folder."""
        if self.data == text_data.NAME and self.data_options is None:
            raise ValueError("data: text needs its block: data: {name: text, path: FILE, "
                             "text: COLUMN, label: COLUMN}")
        if self.data_options is not None and self.data != text_data.NAME:
            raise ValueError("data_options: only text data has options; remove them")
        if self.hf_path is None:
            return
        if self.trainer is None and self.data != text_data.NAME:
            raise ValueError(f"model: {self.model} fine-tunes on text: use data: {{name: text, "
                             "path: FILE, text: COLUMN, label: COLUMN}")
        if "vocab_size" in self.space:
            raise ValueError(f"space.vocab_size: {self.model} brings its own tokenizer; remove "
                             "vocab_size")
        if files:
            from tuner.models import hf

            hf.resolve(self.hf_path, self.base_dir)

    def _check_space(self) -> None:
        names = list(self.space)
        knobs = self.knobs()
        for i, (name, p) in enumerate(self.space.items()):
            if isinstance(p, Fixed):
                if (knob := knobs.get(name)) is not None:
                    _check_knob(name, p, knob)
                continue
            for ref in [*(p.when or {}), *([p.per_layer] if p.per_layer else [])]:
                if ref not in names[:i]:
                    raise ValueError(
                        f"space.{name}: refers to {ref!r}, which must be defined above it in space"
                    )
            if p.per_layer:
                ref = self.space[p.per_layer]
                if not isinstance(ref, IntParam) and not (
                    isinstance(ref, Fixed) and isinstance(ref.value, int)
                ):
                    raise ValueError(f"space.{name}: per_layer must name an int parameter")
            if (knob := knobs.get(name)) is not None:
                _check_knob(name, p, knob)
        family = models.get(fam) if (fam := models.family_of(self.model)) else None
        if family is not None and family.check_space is not None and self.trainer is None:
            drawn = {k: _drawable(p) for k, p in self.space.items() if k in family.knobs}
            if (why := family.check_space(drawn)) is not None:
                raise ValueError(why)
        if self.sampler.name == "grid":
            grid(self)

    # ---- derived values -------------------------------------------------------------
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
        if self.metric is not None:
            return self.metric
        if self.objectives is not None:
            return self.prune_on or next(o.metric for o in self.objectives
                                         if o.metric not in vocab.SECONDARY_METRICS)
        if self.task_name is None:
            raise SpecError(f"study {self.name!r}: the task is not known before its data is "
                            "loaded; say task: or metric: in the study file")
        return vocab.DEFAULT_METRIC[self.task_name]

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
        if self.objectives is None:
            return [self.direction_name]
        return [o.direction or _direction_of(o.metric) or "maximize" for o in self.objectives]

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


GRID_LIMIT = 10_000


# the knobs that make two trials' stacked models differ in shape or in how they step (the
# mlp family's, but dropout, and the loop's); members may differ in everything else
FUSE_SHAPE_KNOBS = ("depth", "width", "activation", "batch_norm", "init", "batch_size",
                    "optimizer", "schedule", "epochs")
# the values of shape knobs that the fused loop supports (others: run unfused)
FUSE_SHAPE_VALUES: dict[str, tuple[Scalar, ...]] = {
    "optimizer": ("sgd", "sgd_momentum", "adam", "adamw"),
    "batch_norm": (False,),
    "activation": ("relu", "leaky_relu", "elu", "gelu", "silu", "tanh", "sigmoid"),
}
# knobs the fused loop does not implement, with the values it accepts when fixed
FUSE_UNSUPPORTED: dict[str, tuple[Scalar | None, ...]] = {
    "l1": (0, 0.0), "clip_norm": (None, 0, 0.0), "label_smoothing": (0, 0.0), "patience": (0,),
    "augment_crop": (0,), "augment_flip": (False,), "augment_cutout": (0,), "freeze": (0,),
    "backbone_lr_scale": (1, 1.0), "layer_lr_decay": (1, 1.0),
}


def fuse_key(params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The shape of a trial's stacked model: trials with one key may be fused. None when
    these params cannot be fused at all (an optimizer or activation the fused loop lacks,
    or a knob it does not implement)."""
    for base, allowed in FUSE_UNSUPPORTED.items():
        if base in params and params[base] not in allowed:
            return None
    for base, allowed in FUSE_SHAPE_VALUES.items():
        if base in params and params[base] not in allowed:
            return None
    shaped = [k for k in params if k in FUSE_SHAPE_KNOBS or
              (k.startswith("width_") and k[6:].isdigit())]
    return tuple(sorted((k, params[k]) for k in shaped))


def _example(p: Any) -> Any:
    if isinstance(p, CategoricalParam):
        return p.choices[0]
    return getattr(p, "low", "VALUE")


def _grid_values(name: str, p: Param) -> list[Any]:
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, FloatParam) and p.step is None:
        raise SpecError(
            f"space.{name}: the grid sampler needs a step for float ranges; add step: or use choices"
        )
    step = p.step or 1
    count = int(round((p.high - p.low) / step)) + 1
    if count > GRID_LIMIT:
        raise SpecError(f"space.{name}: {count} grid points; use a larger step or another sampler")
    return [type(p.low)(p.low + i * step) for i in range(count)]


def grid(spec: StudySpec) -> dict[str, list[Any]]:
    """The grid for Optuna's GridSampler: every searched name (per-layer names up to the most
    layers) mapped to its values."""
    out: dict[str, list[Any]] = {}
    highest: dict[str, int] = {}
    for name, p in spec.space.items():
        if isinstance(p, Fixed):
            if isinstance(p.value, int):
                highest[name] = p.value
            continue
        values = _grid_values(name, p)
        if isinstance(p, IntParam):
            highest[name] = int(max(values))
        names = [name] if p.per_layer is None else [
            f"{name}_{i}" for i in range(highest[p.per_layer])
        ]
        for n in names:
            out[n] = values
    size = 1
    for v in out.values():
        size *= len(v)
    if size > 1_000_000:
        raise SpecError(f"the grid has {size:,} points; narrow the space or use sampler: tpe")
    return out


def _drawable(p: Any, most: int = 1000) -> list[Any] | None:
    """Every value ``p`` can draw, or None for a float range or an int range of more than
    ``most`` values."""
    if isinstance(p, Fixed):
        return [p.value]
    if isinstance(p, CategoricalParam):
        return list(p.choices)
    if isinstance(p, IntParam) and not p.log and (p.high - p.low) // p.step < most:
        return list(range(p.low, p.high + 1, p.step))
    if isinstance(p, IntParam) and p.log and p.high - p.low < most:
        return list(range(p.low, p.high + 1))
    return None


def _check_knob(name: str, p: Any, knob: Knob) -> None:
    """Every value the space can give ``name`` must suit tuner's code: each choice, or both
    ends of a range (its values lie between them)."""
    if isinstance(p, Fixed):
        values = [p.value]
    elif isinstance(p, CategoricalParam):
        values = list(p.choices)
    else:
        values = [p.low, p.high]
    for v in values:
        if (why := knob.problem(name, v)) is not None:
            raise ValueError(f"space.{name}: {why}")




def _known_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


_PARAM_KEYS = ["type", "low", "high", "log", "step", "choices", "when", "per_layer", "value"]


def _format_error(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    loc = [str(p) for p in e["loc"] if not str(p).startswith(("function-after", "tagged-union"))]
    # drop pydantic's union branch names (FloatParam, Fixed, float, ...)
    loc = [p for p in loc if p not in {"float", "int", "categorical", "fixed", "KFold"}]
    where = ".".join(loc)
    msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if e["type"] == "extra_forbidden":
        key = loc[-1] if loc else "?"
        keys = _PARAM_KEYS if len(loc) >= 3 and loc[0] == "space" else _known_keys(StudySpec)
        if len(loc) >= 2 and loc[0] in ("sampler", "pruner", "stop", "scheduler"):
            keys = _known_keys({"sampler": SamplerSpec, "pruner": PrunerSpec,
                                "stop": StopSpec, "scheduler": SchedulerSpec}[loc[0]])
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
