"""CLI tables read well: at a narrow terminal they leave whole columns out (and say which)
rather than cut numbers; piped, they are never cut."""

from __future__ import annotations

import os
import subprocess
import sys

from rich.console import Console

from tuner.cli._common import fitted_table


def render(table: object, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


def test_narrow_tables_leave_columns_out_whole() -> None:
    numbers = ["0.001234", "2.231e-05", "123.4"]
    columns = [("#", ["0", "1", "2"]), ("state", ["COMPLETE", "PRUNED", "PAUSED"]),
               ("value", numbers), ("weight_decay", numbers), ("lr", numbers),
               ("optimizer", ["adamw", "rmsprop", "sgd"])]
    table, dropped = fitted_table(columns, 40)
    text = render(table, 40)
    assert "…" not in text and all(n in text for n in numbers)
    assert dropped and "optimizer" in dropped and "value" not in dropped
    assert all(len(line) <= 40 for line in text.splitlines())
    wide, none = fitted_table(columns, 200)
    assert none == [] and "rmsprop" in render(wide, 200)


def test_piped_output_is_never_cut(tmp_path) -> None:
    from tuner import api

    study = tmp_path / "s.yaml"
    (tmp_path / "fit.py").write_text("def fit(params, ctx):\n    return params['a_rather_long_"
                                     "parameter_name_for_a_weight_decay']\n")
    study.write_text("name: wide\ntrainer: fit.py:fit\ntask: regression\nmetric: mse\n"
                     "epochs: 1\ntrials: 3\nsampler: random\npruner: none\nspace:\n"
                     "  a_rather_long_parameter_name_for_a_weight_decay: "
                     "{type: float, low: 1.0e-6, high: 1.0e-4, log: true}\n"
                     "  another_long_name_for_the_optimizer: [adamw, rmsprop, sgd]\n")
    url = f"sqlite:///{tmp_path / 't.db'}"
    api.run(study, storage=url, device="cpu", checkpoint_dir=str(tmp_path / "ck"),
            data_dir=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "tuner", "trials", "wide", "--storage", url],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout and "left out" not in done.stdout
    assert "a_rather_long_parameter_name_for_a_weight_decay" in done.stdout
    assert any(o in done.stdout for o in ("adamw", "rmsprop", "sgd"))
