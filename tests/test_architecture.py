"""The house rules hold: import contracts (import-linter), Optuna's private storage API only
in tuner.storage, a light ``tuner --help``, and registries that list each family and
dataset exactly once."""

from __future__ import annotations

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
