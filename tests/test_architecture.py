"""The house rules hold: import contracts (import-linter), Optuna's private storage API only
in tuner.storage, a light ``tuner --help``, and registries that list each family and
dataset exactly once."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PRIVATE = re.compile(r"_storage\b|_backend|_trial_id|storages\._|_study_id")


def test_import_contracts_are_kept() -> None:
    linter = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "broken" not in r.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_optunas_private_api_is_used_only_in_tuner_storage() -> None:
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in (ROOT / "tuner").rglob("*.py") if "storage" not in p.parts
            for n, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert hits == []


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["worker", "--help"]])
def test_help_imports_neither_torch_nor_optuna_nor_rich(argv: list[str]) -> None:
    code = ("import sys; from tuner.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'optuna', 'rich', 'sqlalchemy') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       timeout=60)
    assert "HEAVY []" in r.stdout, r.stdout[-500:] + r.stderr[-500:]


def test_help_texts_keep_their_square_brackets() -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    r = CliRunner().invoke(app, ["run", "--help"])
    text = " ".join(r.output.split())  # unwrapped
    assert "[default: the file's name]" in text
    assert "must be shared by all workers [default:" in text


def test_each_family_and_dataset_is_registered_once_by_its_own_module() -> None:
    from tuner import data, models

    assert {f.build.__module__ for f in models.FAMILIES} <= {
        f"tuner.models.{p.stem}" for p in (ROOT / "tuner" / "models").glob("[!_]*.py")}
    assert set(data.names()) >= {"mnist", "fashion_mnist", "cifar10", "digits", "moons", "diabetes"}
    for source in data.SOURCES:
        assert source.load.__module__.startswith("tuner.data.")


def test_registries_import_no_torch() -> None:
    code = ("import sys; import tuner.config, tuner.models, tuner.data\n"
            "print('TORCH', 'torch' in sys.modules)\n"
            "print('HF', [m for m in ('transformers', 'tokenizers') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "TORCH False" in r.stdout, r.stdout + r.stderr
    assert "HF []" in r.stdout, r.stdout + r.stderr


def _attr_literals(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """String literals naming a trial attribute where one is read or written: the key of
    ``set_user_attr`` / ``set_system_attr`` (and the dicts of tuner's batched setters), a
    subscript, ``.get`` / ``.pop`` or ``in`` on something called ``*attrs`` or ``info``."""

    def attrsy(node: ast.AST) -> bool:
        return bool(re.search(r"attrs|\binfo\b", ast.unparse(node)))

    found = []
    for n in ast.walk(tree):
        keys: list[ast.AST] = []
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            if n.func.attr in ("get", "pop", "setdefault") and attrsy(n.func.value) and n.args:
                keys.append(n.args[0])
            if n.func.attr in ("set_user_attr", "set_system_attr") and n.args:
                keys.append(n.args[0])
            if n.func.attr in ("set_user_attrs", "set_user_attrs_many", "set_system_attrs"):
                keys += [k for a in n.args if isinstance(a, ast.Dict) for k in a.keys if k]
        if isinstance(n, ast.Subscript) and attrsy(n.value):
            keys.append(n.slice)
        if (isinstance(n, ast.Compare) and any(isinstance(o, ast.In | ast.NotIn) for o in n.ops)
                and any(attrsy(c) for c in n.comparators)):
            keys.append(n.left)
        found += [(n.lineno, k.value) for k in keys
                  if isinstance(k, ast.Constant) and k.value in names]
    return found


def test_trial_attribute_names_are_spelled_in_the_trial_schema_only() -> None:
    """Every writer and reader of a trial's attributes names them through
    tuner.trial_schema; and no other module defines a constant with one of those names."""
    from tuner import trial_schema

    names = {v for k, v in vars(trial_schema).items() if k.endswith("_ATTR")}
    spelled = []
    for p in (ROOT / "tuner").rglob("*.py"):
        if p.name == "trial_schema.py":
            continue
        tree = ast.parse(p.read_text())
        spelled += [f"{p.relative_to(ROOT)}:{line}: {name!r}"
                    for line, name in _attr_literals(tree, names)]
        spelled += [f"{p.relative_to(ROOT)}:{n.lineno}: {n.value.value!r} defined again"
                    for n in ast.walk(tree) if isinstance(n, ast.Assign)
                    and isinstance(n.value, ast.Constant) and n.value.value in names
                    and any(isinstance(t, ast.Name) and t.id.endswith("_ATTR") for t in n.targets)]
    assert spelled == []


def test_each_module_is_short_and_each_class_too() -> None:
    """No module of tuner/ over 400 lines, no class over 250, and each module says what it
    owns in its docstring."""
    too_long = []
    for p in (ROOT / "tuner").rglob("*.py"):
        text = p.read_text()
        tree = ast.parse(text)
        name = str(p.relative_to(ROOT))
        if len(text.splitlines()) > 400:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        if p.name != "__main__.py" and not ast.get_docstring(tree):
            too_long.append(f"{name}: no docstring")
        too_long += [f"{name}: class {n.name} {n.end_lineno - n.lineno + 1} lines"
                     for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
                     and n.end_lineno - n.lineno + 1 > 250]
    assert too_long == []


def _names(cell: str) -> set[str]:
    """`cli/` (`_common`, `run`), `child.py` -> {"cli", "child"}; `(acquire) | tell` -> both."""
    cell = re.sub(r"\(`[^)]*\)", "", cell)
    ticks = re.findall(r"`([^`]+)`", cell) or cell.split("|")
    return {t.strip().strip("()").rstrip("/").removesuffix(".py").rpartition(".")[2] for t in ticks}


def test_architecture_tables_match_the_layer_contracts() -> None:
    """ARCHITECTURE.md's layout table is the first contract, row for row; its table of the
    packages' insides is each package's contract, layer for layer."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = {(c.get("containers") or ["tuner"])[0]: [_names(x) for x in c["layers"]]
               for c in contracts if c["type"] == "layers"}
    tables: dict[str, list[set[str]]] = {}
    section, package = "", ""
    for line in (ROOT / "ARCHITECTURE.md").read_text().splitlines():
        if line.startswith("#"):
            section = "top" if line.startswith("## Layout") else "in" if "Inside the packages" in line else ""
        elif section and line.startswith("| ") and not line.startswith(("| layer |", "| package |")):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if section == "top":
                tables.setdefault("tuner", []).append(_names(cells[0]))
            else:
                package = f"tuner.{cells[0].strip('`/')}" if cells[0] else package
                tables.setdefault(package, []).append(_names(cells[1]))
    assert tables == {k: v for k, v in layered.items() if k in tables}
    assert "tuner" in tables
