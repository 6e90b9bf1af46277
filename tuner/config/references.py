"""The study's data and model references: ``data:`` (a built-in source, ``{name: NAME, as:
KIND}``, text data's block, or a user loader), ``model:`` (a registered family, ``hf:PATH``,
or a user builder) and ``trainer:``; their checks against the registries (which families
read which input kinds, which sources may be read as what) and the knobs tuner's code reads
in the study. The model registry answers: nothing here names a model family."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner import data as datasets
from tuner import models, vocab
from tuner.data import text as text_data
from tuner.kinds import InputKind
from tuner.registry import Knob
from tuner.usercode import is_import_path

if TYPE_CHECKING:
    from tuner.config.spec import StudySpec


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw study file with ``data:`` made flat: mnist when neither data nor a trainer is
    given, text data's block as its options, ``{name, as}`` as ``data`` and ``data_as``."""
    if "data" not in raw and not raw.get("trainer"):
        raw = {**raw, "data": "mnist"}
    if isinstance(raw.get("data"), dict) and raw["data"].get("name") == text_data.NAME:
        options = text_data.TextOptions.of(raw["data"], None)
        return {**raw, "data": text_data.NAME, "data_options": options.block()}
    if isinstance(raw.get("data"), dict):
        given = dict(raw["data"])
        unknown = set(given) - {"name", "as"}
        if unknown or "name" not in given:
            raise ValueError("data: give a dataset name, or {name: NAME, as: KIND} with KIND "
                             f"one of {', '.join(InputKind)}")
        raw = {**raw, "data": given["name"], "data_as": given.get("as")}
    return raw


def check_names(spec: StudySpec) -> None:
    """``data:``, ``model:`` and ``trainer:`` name something registered or importable."""
    if spec.data is not None and not spec.builtin_data:
        if (why := datasets.unknown_prefixed(spec.data)) is not None:
            raise ValueError(f"data: {why}")
        if not is_import_path(spec.data):
            raise ValueError(f"data: {datasets.SOURCES.unknown(spec.data)} or an import path "
                             "like mypkg.data:load")
    if models.family_of(spec.model) is None and not is_import_path(spec.model):
        raise ValueError(
            f"model: {models.FAMILIES.unknown(spec.model)} or an import path like mypkg.nets:build"
        )
    if spec.trainer is not None and not is_import_path(spec.trainer):
        raise ValueError(f"trainer: {spec.trainer!r} is not an import path like mypkg.train:fit")


def check_reading(spec: StudySpec, files: bool) -> None:
    """The data can be read as asked, text data has its block, a pretrained encoder reads
    text (``files``: its folder is complete), and the model takes the data's kind."""
    if spec.builtin_data and spec.data_as is not None:
        kind = datasets.get(spec.data).kind
        if spec.data_as != kind and spec.data_as not in datasets.READINGS.get(kind, ()):
            raise ValueError(f"data: {spec.data} is {kind} data and cannot be read as "
                             f"{spec.data_as}")
    _check_text(spec, files)
    _check_kinds(spec)


def _check_text(spec: StudySpec, files: bool) -> None:
    if spec.data == text_data.NAME and spec.data_options is None:
        raise ValueError("data: text needs its block: data: {name: text, path: FILE, "
                         "text: COLUMN, label: COLUMN}")
    if spec.data_options is not None and spec.data != text_data.NAME:
        raise ValueError("data_options: only text data has options; remove them")
    if spec.hf_path is None:
        return
    if spec.trainer is None and spec.data != text_data.NAME:
        raise ValueError(f"model: {spec.model} fine-tunes on text: use data: {{name: text, "
                         "path: FILE, text: COLUMN, label: COLUMN}")
    if "vocab_size" in spec.space:
        raise ValueError(f"space.vocab_size: {spec.model} brings its own tokenizer; remove "
                         "vocab_size")
    if files:
        models.pretrained_folder(spec.hf_path, spec.base_dir)


def _check_kinds(spec: StudySpec) -> None:
    kind = spec.data_kind
    if kind is None:
        return
    if (name := models.family_of(spec.model)) is not None and spec.trainer is None:
        fam = models.get(name)
        if kind not in fam.inputs:
            need = " or ".join(sorted(fam.inputs))
            hint = (f"; read the images as sequences with data: {{name: {spec.data}, as: "
                    "sequence}" if kind == InputKind.image and InputKind.sequence in fam.inputs
                    else f"; pick a model for {kind} data")
            raise ValueError(f"model: {spec.model} needs {need} inputs but {spec.data} is "
                             f"{kind} data{hint}")
    if kind != InputKind.image and spec.trainer is None:
        for name in spec.space:
            if name in vocab.IMAGE_ONLY_KNOBS:
                raise ValueError(f"space.{name}: augmentation works on images only and "
                                 f"{spec.data} is {kind} data; remove {name}")


def data_kind(spec: StudySpec) -> InputKind | None:
    """The kind of sample the model will see, when known before loading: a built-in
    source's own or the one it is read as (``data: {as: KIND}``)."""
    if spec.data_as is not None:
        return spec.data_as
    return datasets.get(spec.data).kind if spec.builtin_data else None


def knobs(spec: StudySpec) -> dict[str, Knob]:
    """The hyperparameters tuner's own code reads in this study: its training loop's
    (unless the study brings a trainer), its built-in model family's and its data's."""
    out: dict[str, Knob] = {}
    if spec.trainer is None:
        out.update(vocab.TRAINING_KNOBS)
        if (family := models.family_of(spec.model)) is not None:
            out.update(models.get(family).knobs)
        if spec.data == text_data.NAME:
            out.update(text_data.KNOBS)
    return out


def text_options(spec: StudySpec) -> text_data.TextOptions | None:
    """Text data's options, paths relative to the study file (None: not text data)."""
    if spec.data != text_data.NAME or spec.data_options is None:
        return None
    return text_data.TextOptions.of(spec.data_options, spec.base_dir)
