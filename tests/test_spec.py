"""The study file -> StudySpec: every shipped file validates; every bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tuner.config import CategoricalParam, Fixed, FloatParam, load_spec, parse_spec
from tuner.errors import SpecError

SPACES = sorted((Path(__file__).parent.parent / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.name for p in SPACES])
def test_shipped_study_files_validate(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.space
    if spec.model in ("mlp", "cnn"):
        # every shipped MLP/CNN space searches the core hyperparameters
        for name in ("lr", "batch_size", "depth", "width", "activation", "weight_decay"):
            assert name in spec.space, f"{path.name} does not search {name}"
            assert not isinstance(spec.space[name], Fixed), f"{path.name} fixes {name}"
        assert spec.space["lr"].log


def test_parses_ranges_choices_constants_and_conditions() -> None:
    spec = parse_spec({
        "space": {
            "lr": {"type": "float", "low": "1e-4", "high": 0.1, "log": True},
            "batch_size": [32, 64],
            "optimizer": "adam",
            "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
        }
    })
    assert isinstance(spec.space["lr"], FloatParam) and spec.space["lr"].low == 1e-4
    assert isinstance(spec.space["batch_size"], CategoricalParam)
    assert spec.space["optimizer"] == Fixed(value="adam")
    assert spec.space["momentum"].when == {"optimizer": ["sgd"]}
    assert spec.data == "mnist" and spec.metric_name == "accuracy"
    assert spec.direction_name == "maximize"


def test_defaults_follow_the_task() -> None:
    spec = parse_spec({"data": "diabetes"})
    assert (spec.task_name, spec.metric_name, spec.direction_name) == ("regression", "mse", "minimize")
    assert parse_spec({"data": "diabetes", "metric": "r2"}).direction_name == "maximize"


def test_spec_is_frozen() -> None:
    spec = parse_spec({})
    with pytest.raises(ValidationError):
        spec.epochs = 3  # type: ignore[misc]


BAD = [
    ({"epochz": 3}, "unknown key 'epochz' (did you mean 'epochs'?)"),
    ({"space": {"lr": {"type": "float", "low": 1, "high": 0.1}}}, "greater than high"),
    ({"space": {"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}}, "low > 0"),
    ({"space": {"lr": {"type": "flaot", "low": 0, "high": 1}}}, "use type: float, int or categorical"),
    ({"space": {"lr": {"type": "float", "low": 0, "high": 1, "lgo": True}}}, "unknown key 'space.lr.lgo'"),
    ({"data": "mnsit"}, "did you mean 'mnist'"),
    ({"model": "transfomer"}, "unknown model 'transfomer' (did you mean 'transformer'?)"),
    ({"sampler": "tpee"}, "did you mean 'tpe'"),
    ({"pruner": "hyperbnd"}, "did you mean 'hyperband'"),
    ({"space": {"activation": ["relu", "gelux"]}}, "did you mean 'gelu'"),
    ({"space": {"optimizer": "adamx"}}, "unknown optimizer 'adamx'"),
    ({"space": {"momentum": {"type": "float", "low": 0, "high": 1, "when": {"optimizer": "sgd"}}}},
     "must be defined above it"),
    ({"space": {"width": {"type": "int", "low": 1, "high": 4, "per_layer": "depth"}}},
     "must be defined above it"),
    ({"metric": "accuracy", "data": "diabetes"}, "not a regression metric"),
    # a user loader's labels tell the task; a trainer that brings its own data must say it
    ({"trainer": "mypkg.train:fit"}, "must say task"),
    ({"validation": 0.95}, "between 0 and 0.9"),
    ({"epochs": 0}, "epochs"),
    ({"sampler": "grid", "space": {"lr": {"type": "float", "low": 0.1, "high": 1}}}, "needs a step"),
    ({"name": "has space"}, "name"),
    ([1, 2], "expected a mapping"),
]


@pytest.mark.parametrize(("raw", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_clear_line(raw: object, message: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nspace:\n  lr: {type: float, low: 1\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+"):
        load_spec(f)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(tmp_path / "nope.yaml")


def test_name_defaults_to_file_stem_and_base_dir_is_recorded(tmp_path: Path) -> None:
    f = tmp_path / "my_study.yaml"
    f.write_text("data: moons\n")
    spec = load_spec(f)
    assert spec.name == "my_study"
    assert spec.base_dir == str(tmp_path.resolve())
    assert spec.search_fields() == load_spec(f).with_name("other").search_fields()
