"""tuner.config: each component declares its own study-file block and checks; the registries
answer what config used to special-case (the default and the fusable model family, the
names under a data source's prefix), so no module outside tuner/models names a family."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tuner import data, models
from tuner.config import fusion, objectives, params, parse_spec, references, sampler, stop, weights
from tuner.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent


def test_each_component_declares_its_block_and_its_check() -> None:
    for module in (params, sampler, objectives, references, fusion, stop):
        assert (module.__doc__ or "").strip(), module.__name__
        assert any(callable(getattr(module, n, None)) for n in ("check", "check_names"))
    assert weights.paths(parse_spec({"weights": "w.pt"})) == ["w.pt"]


def test_the_default_and_the_fusable_family_come_from_their_registration() -> None:
    defaults = [f.name for f in models.FAMILIES if f.default]
    assert len(defaults) == 1 and parse_spec({}).model == defaults[0] == models.default_name()
    assert models.fusable() == tuple(f.name for f in models.FAMILIES if f.fusable)
    other = next(n for n in models.names() if n not in models.fusable() and ":" not in n
                 and n != "hf")
    spec = parse_spec({"model": other, "data": "mnist"})
    why = spec.fuse_blocker(fixed_shape=False) or ""
    assert f"fusion stacks the {' and '.join(models.fusable())} family only" in why


def test_a_prefixed_data_name_is_explained_by_the_source_that_owns_the_prefix() -> None:
    assert data.unknown_prefixed("mnsit") is None
    assert data.unknown_prefixed("mnist") is None
    why = data.unknown_prefixed("uea:Nope")
    assert why is not None and "uea" in why.lower()
    with pytest.raises(SpecError, match=re.escape(f"data: {why}")):
        parse_spec({"data": "uea:Nope"})


def test_no_module_outside_models_names_a_model_family() -> None:
    families = {n.split(":")[0] for n in models.names()}
    names = "|".join(map(re.escape, families))
    literal = re.compile(rf"""["']({names})["']""")
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
             for p in sorted((ROOT / "tuner").rglob("*.py"))
             if "models" not in p.relative_to(ROOT / "tuner").parts
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if literal.search(line)]
    assert not found, "\n".join(found)
