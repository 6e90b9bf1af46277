"""What one process needs to train a study's trials, prepared once and reused by every
trial: the study's own code (resolved from its import paths), its data on the device, the
k-fold splits, the model builder, and the preflight check. Pure PyTorch: knows nothing of
Optuna or the database."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import usercode
from tuner.config import StudySpec, space
from tuner.errors import TunerError, UserCodeError
from tuner.training import transfer

if TYPE_CHECKING:
    from torch import nn

    from tuner.data import DataBundle


class StudyAssets:
    """The study's code and data in this process. ``device`` is where data and models go."""

    def __init__(self, spec: StudySpec, *, device: str, data_dir: str, download: bool = True):
        self.spec, self.device, self.data_dir, self.download = spec, device, data_dir, download
        base = spec.base_dir
        self.trainer = usercode.resolve(spec.trainer, "trainer", base) if spec.trainer else None
        self.model_fn = (usercode.resolve(spec.model, "model", base)
                         if usercode.is_import_path(spec.model)
                         and _family_of(spec.model) is None else None)
        self.data_fn = (usercode.resolve(spec.data, "data", base)
                        if usercode.is_import_path(spec.data) and not spec.builtin_data
                        else None)
        self._bundle: DataBundle | None = None
        self._folds: list[DataBundle] | None = None
        self._checked = False

    @property
    def has_data(self) -> bool:
        # a user trainer may bring its own data (no ``data:`` in its study file)
        return self.spec.data is not None

    def data(self) -> DataBundle:
        """The study's data on the device, loaded on first use."""
        if self._bundle is None:
            self._bundle = self._load().to(self.device)
        return self._bundle

    def _load(self) -> DataBundle:
        from tuner import data as tdata

        spec = self.spec
        frac = spec.validation if isinstance(spec.validation, float) else 0.1
        if self.data_fn is None:
            options = spec.text_options
            if options is not None and spec.hf_path is not None:  # the encoder's own tokenizer
                options = replace(options, pretrained=str(self.hf_folder()))
            return tdata.load(spec.data or "", tdata.Request(self.data_dir, frac, spec.seed,
                                                             self.download, spec.data_as,
                                                             options))
        try:
            raw = usercode.call_loader(self.data_fn, seed=spec.seed, data_dir=self.data_dir)
        except Exception as e:
            raise UserCodeError(f"data: {spec.data} raised {usercode.one_line(e)}") from e
        return tdata.from_user(raw, spec.task_name, validation=frac, seed=spec.seed,
                               name=spec.data or "data", kind=spec.data_as)

    def hf_folder(self) -> Path:
        """The folder of ``model: hf:PATH``, or UserCodeError naming what it lacks."""
        from tuner import models

        try:
            return models.pretrained_folder(self.spec.hf_path or "", self.spec.base_dir)
        except ValueError as e:
            raise UserCodeError(str(e)) from None

    def folds(self) -> list[DataBundle]:
        """The k folds of the study's data, split once per process like the data itself."""
        if self._folds is None:
            self._folds = self.data().folds(self.spec.kfold or 0, self.spec.seed)
        return self._folds

    def model_builder(self, bundle: DataBundle) -> Callable[[Mapping[str, Any]], nn.Module]:
        """params -> the model, started from its ``weights`` when the trial or study names
        a state_dict (built-in families and user builders alike)."""
        if self.model_fn is not None:
            fn = self.model_fn

            def build(params: Mapping[str, Any]) -> nn.Module:
                return fn(dict(params), bundle.input_shape, bundle.num_outputs)
        else:
            from tuner import models

            family = self.spec.model
            if self.spec.hf_path is not None:
                family = models.HF_PREFIX + str(self.hf_folder())
            # text data: the embedding holds the tokenizer's ids unless the trial says more
            filled = ({"vocab_size": bundle.text.vocab_size} if bundle.text is not None
                      and "vocab_size" in models.get(models.family_of(family) or "").knobs
                      else {})

            def build(params: Mapping[str, Any]) -> nn.Module:
                return models.build(family, {**filled, **params}, bundle.inputs,
                                    bundle.num_outputs)

        base, study_weights = self.spec.base_dir, self.spec.weights

        def start(params: Mapping[str, Any]) -> nn.Module:
            model = build(params)
            path = params.get("weights") or study_weights
            if path:
                transfer.load_weights(model, transfer.check_file(str(path), base))
            return model

        return start

    def preflight(self) -> None:
        """Check, once, that the data loads and the model fits the task: one clear error now
        rather than a study of failed trials."""
        if self._checked:
            return
        for path in self.spec.weight_paths():  # a user loop's, too, before any trial
            if path is not None:
                transfer.check_file(path, self.spec.base_dir)
        if not self.has_data:
            return
        bundle = self.data()
        # a user loader's labels say what the task is (integers classify, floats regress)
        self.spec = self.spec.with_task(bundle.task)
        if self.spec.trainer is None:  # a user loop may use its model its own way
            self._try_model(bundle)
        self._checked = True

    def _try_model(self, bundle: DataBundle) -> None:
        from tuner.training import train

        spec = self.spec
        params = space.defaults(spec)
        if bundle.text is not None:  # text: the tokenization these params call for
            from tuner.data._text import for_params

            bundle = for_params(bundle, params)
        for path in spec.weight_paths():  # every file a trial may start from, before any trial
            if path is not None:
                self.model_builder(bundle)({**params, "weights": path})
        try:
            model = self.model_builder(bundle)(params).to(bundle.device)
            transfer.freeze(model, _most(spec, "freeze"))
        except TunerError:
            raise
        except Exception as e:
            raise UserCodeError(f"model: {spec.model} failed on a sample batch of "
                                f"{spec.data}: {usercode.one_line(e)}") from e
        _check_vocabulary(model, bundle, spec.model)
        try:
            out = train.probe(model, bundle, amp=spec.amp)  # the settings of training
        except Exception as e:
            raise UserCodeError(f"model: {spec.model} failed on a sample batch of "
                                f"{spec.data}: {usercode.one_line(e)}") from e
        want = bundle.num_outputs
        if tuple(out.shape) not in ((2, want),) + (((2,),) if want == 1 else ()):
            raise UserCodeError(
                f"model: {spec.model} returns shape {tuple(out.shape)} for a batch of 2; "
                f"a {bundle.task} model here must return (batch, {want})"
            )

    def release(self) -> None:
        """Drop the data and folds (and their device memory)."""
        self._bundle, self._folds = None, None


def _family_of(model: str) -> str | None:
    from tuner import models

    return models.family_of(model)


def _most(spec: StudySpec, name: str) -> int:
    """The largest value the space can give the int knob ``name`` (0 when absent)."""
    from tuner.config import CategoricalParam, Fixed, IntParam

    p = spec.space.get(name)
    if isinstance(p, Fixed):
        return int(p.value)
    if isinstance(p, IntParam):
        return p.high
    if isinstance(p, CategoricalParam):
        return int(max(p.choices))  # type: ignore[type-var]
    return 0


def _check_vocabulary(model: nn.Module, bundle: DataBundle, model_name: str) -> None:
    """Token ids must fit the model's (first) embedding table: an id past its end would fail
    in every trial, on the GPU without a readable message."""
    from torch import nn

    from tuner.kinds import InputKind

    if bundle.kind != InputKind.tokens:
        return
    table = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if table is None:
        return
    top = max(int(s.base_x.max()) for s in (bundle.train, bundle.val, bundle.test)
              if s is not None and len(s))
    if top >= table.num_embeddings:
        raise UserCodeError(f"model: {model_name}: token ids go up to {top} but the embedding "
                            f"holds {table.num_embeddings}; set vocab_size: {top + 1} (or more)")
