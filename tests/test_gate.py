"""The one gate for input (tuner.gate and its users): every malformed input a new user may
give is one line, exit code 2, and leaves nothing behind (no file, no database, no study).

Each test drives the real CLI (CliRunner in this process, or a subprocess where the process
itself is the point) on tiny data it makes itself (scikit-learn's digits)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuner import gate
from tuner.cli import app
from tuner.errors import SpecError

runner = CliRunner()

STUDY = """\
name: g
data: digits
epochs: 1
trials: 1
space:
  lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_line_error(result: object, *needles: str) -> str:
    """The result's output is exactly one line, exit code 2, naming each needle."""
    out = result.output  # type: ignore[attr-defined]
    assert result.exit_code == 2, out  # type: ignore[attr-defined]
    assert len(lines(out)) == 1, out
    assert "Traceback" not in out and "Usage:" not in out
    for needle in needles:
        assert needle in out, out
    return out


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean folder as the current one: whatever a command leaves behind shows up in it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUNER_STORAGE", raising=False)
    monkeypatch.delenv("TUNER_CHECKPOINT_DIR", raising=False)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


def run_args(url: str, *more: str) -> list[str]:
    # --workers 0: create the study and stop (a later --workers wins), so a refusal shows
    # as a study created or not, without training
    return ["--storage", url, "--device", "cpu", "-q", "--workers", "0", *more]


# ---- YAML --------------------------------------------------------------------------------
def billion_laughs() -> str:
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        rows.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join([*rows, "name: bomb", ""])


@pytest.mark.parametrize("text, needle", [
    (STUDY + "epochs: 2\n", "duplicate key 'epochs' (first at line 3)"),
    (STUDY + "space:\n  lr: 0.01\n", "duplicate key 'space'"),
    (STUDY.replace("  lr:", "  lr: {type: float, low: 0.1, high: 0.2}\n  lr:"), "duplicate key 'lr'"),
    (billion_laughs(), "aliases expand to more than"),
    ("name: deep\nspace: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("name: big\ndescription: " + "x" * 2_000_000 + "\n", "more than a study file needs"),
])
@pytest.mark.parametrize("command", ["check", "run"])
def test_malformed_yaml_is_one_line_and_creates_nothing(here: Path, text: str, needle: str,
                                                        command: str) -> None:
    f = write(here, "s.yaml", text)
    args = [command, str(f)] + (run_args("sqlite:///t.db") if command == "run" else [])
    one_line_error(runner.invoke(app, args), needle)
    assert leftovers(here, f) == []


def test_an_alias_bomb_is_refused_by_a_fresh_process_without_exhausting_it(here: Path) -> None:
    # the process itself is the point: before the gate it ran out of memory or hung
    f = write(here, "bomb.yaml", billion_laughs())
    assert f.stat().st_size < 1024
    for command in (["check", str(f)], ["run", str(f), *run_args("sqlite:///t.db")]):
        done = subprocess.run([sys.executable, "-m", "tuner", *command], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and done.stdout == "", done
        assert len(lines(done.stderr)) == 1 and "aliases expand" in done.stderr, done.stderr
    assert leftovers(here, f) == []


def test_the_loader_keeps_merge_keys_and_plain_aliases() -> None:
    data = gate.read_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n",
                          "t.yaml")
    assert data["other"] == {"x": 1, "y": 3} and data["list"] == [{"x": 1, "y": 2}] * 2


# ---- names -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "[/x]", "-rf", "a b", "x;y",
                                  "é", "a" * 201])
def test_a_study_file_name_must_be_a_name(here: Path, name: str) -> None:
    f = write(here, "s.yaml", STUDY.replace("name: g", f"name: {name!r}"))
    one_line_error(runner.invoke(app, ["check", str(f)]), "is not a study name")


@pytest.mark.parametrize("option", ["--study", "--from"])
@pytest.mark.parametrize("name", ["..", "[/x]", "../../etc"])
def test_study_and_from_names_are_checked_before_anything_is_opened(here: Path, option: str,
                                                                      name: str) -> None:
    f = write(here, "s.yaml", STUDY)
    out = one_line_error(runner.invoke(app, ["run", str(f), option, name,
                                             *run_args("sqlite:///t.db")]), option)
    assert repr(name) in out  # the name shown as given: its brackets did not vanish as markup
    assert leftovers(here, f) == []


def test_resume_refuses_a_name_in_one_line(here: Path) -> None:
    one_line_error(runner.invoke(app, ["resume", "[/x]", "--storage", "sqlite:///t.db"]),
                   "'[/x]' is not a study name")
    assert leftovers(here) == []


def test_a_path_derived_from_a_name_stays_inside_its_folder(tmp_path: Path) -> None:
    assert gate.inside_folder(tmp_path, "study") == tmp_path / "study"
    for bad in ("..", "../x", "/etc", "."):
        with pytest.raises(SpecError, match="would leave the folder"):
            gate.inside_folder(tmp_path, bad)


def test_a_stored_spec_with_a_bad_name_is_one_line() -> None:
    from tuner.config import parse_spec, spec_from_json

    text = parse_spec({"name": "ok", "data": "digits"}).to_json().replace('"ok"', '".."')
    with pytest.raises(SpecError, match="stored spec: name: '..' is not a study name"):
        spec_from_json(text)


def test_markup_in_a_message_prints_as_written(here: Path) -> None:
    f = write(here, "s.yaml", STUDY + 'metric: "[/x] and [bold]"\n')
    one_line_error(runner.invoke(app, ["check", str(f)]), "'[/x] and [bold]'")


def test_studies_lists_a_name_with_markup_from_an_older_tuner(here: Path) -> None:
    import optuna

    url = f"sqlite:///{here / 't.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from tuner.storage import connect

    optuna.create_study(study_name="[/x] old", storage=connect(url))
    result = runner.invoke(app, ["studies", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "[/x] old" in result.output


# ---- numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    ("space:\n  lr: {type: float, low: .nan, high: 0.1}\n", "finite"),
    ("space:\n  lr: {type: float, low: 0.001, high: .inf}\n", "finite"),
    ("space:\n  lr: .nan\n", "finite"),
    ("constraints: {params: {max: .inf}}\n", "finite"),
    ("constraints: {params: {min: .nan}}\n", "finite"),
    ("space:\n  batch_size: 1.5\n", "batch_size is a count"),
    ("space:\n  freeze: 1.5\n", "freeze is a count"),
    ("space:\n  batch_size: {type: float, low: 16, high: 64}\n", "batch_size is a count"),
    ("space:\n  depth: {type: int, low: 1, high: 3, step: 5}\n", "larger than the range"),
    ("space:\n  dropout: {type: float, low: 0.0, high: 0.2, step: 0.5}\n", "larger than the range"),
    ("trials: 1.0e+30\n", "trials"),
    ("trials: 2147483648\n", "trials"),
    ("trials: 2.0\n", "trials"),
    ("seed: -1\n", "seed"),
    (f"seed: {2**32 - 1}\n", "seed"),  # valid for worker 0, not for worker 1
    ("timeout: .inf\n", "timeout"),
    ("budget_hours: .nan\n", "budget_hours"),
])
def test_numbers_in_a_study_file(here: Path, extra: str, needle: str) -> None:
    base = STUDY if not extra.startswith("space:") else STUDY.split("space:")[0]
    key = extra.split(":")[0]
    base = "\n".join(r for r in base.splitlines() if not r.startswith(f"{key}:")) + "\n"
    f = write(here, "s.yaml", base + extra)
    one_line_error(runner.invoke(app, ["check", str(f)]), needle)
    one_line_error(runner.invoke(app, ["run", str(f), *run_args("sqlite:///t.db")]), needle)
    assert leftovers(here, f) == []


@pytest.mark.parametrize("args, needle", [
    (["--timeout", "inf"], "--timeout"),
    (["--timeout", "nan"], "--timeout"),
    (["--budget-hours", "inf"], "--budget-hours"),
    (["--trials", "99999999999"], "--trials"),
    (["--trials", "1.5"], "--trials"),
    (["--trials", "٣"], "--trials"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**32 - 1)], "--seed"),
    (["--fuse", "²"], "--fuse"),
    (["--workers", "100000"], "--workers"),
    (["--nope"], "--nope"),
])
def test_options_are_one_line_naming_the_option(here: Path, args: list[str], needle: str) -> None:
    f = write(here, "s.yaml", STUDY)
    one_line_error(runner.invoke(app, ["run", str(f), *run_args("sqlite:///t.db"), *args]),
                   needle)
    assert leftovers(here, f) == []


def test_usage_errors_are_one_line_and_bare_commands_still_show_help(here: Path) -> None:
    one_line_error(runner.invoke(app, ["run"]), "Missing argument", "tuner run --help")
    one_line_error(runner.invoke(app, ["nosuch"]), "nosuch")
    one_line_error(runner.invoke(app, ["launch", "slurm", "--nope"]), "--nope")
    for bare in ([], ["launch"]):
        assert "Usage:" in runner.invoke(app, bare).output


def test_the_api_refuses_what_the_cli_refuses(here: Path) -> None:
    from tuner import api

    for kwargs in ({"timeout": float("inf")}, {"trials": 2**40}, {"workers": 10**6},
                   {"budget_hours": float("nan")}):
        with pytest.raises(SpecError):
            api.run(str(write(here, "s.yaml", STUDY)), storage="sqlite:///t.db",
                    device="cpu", **kwargs)
    assert leftovers(here, here / "s.yaml") == []


# ---- storage URLs ------------------------------------------------------------------------
@pytest.mark.parametrize("url, needle", [
    ("sqlite:///a\nb.db", "control character"),
    ("sqlite:///t.db?mode=ro", "take no ?options"),
    ("mysql://root@127.0.0.1:3306/", "names no database"),
    ("postgresql://u@127.0.0.1:99999/db", "not a TCP port"),
    ("http://example.com/x", "unsupported storage"),
])
def test_storage_urls_are_checked_as_text(here: Path, url: str, needle: str) -> None:
    f = write(here, "s.yaml", STUDY)
    one_line_error(runner.invoke(app, ["run", str(f), *run_args(url)]), needle)
    assert leftovers(here, f) == []


# ---- output folders ----------------------------------------------------------------------
def test_a_checkpoint_folder_that_is_a_file_is_found_before_the_study_is_created(
        here: Path) -> None:
    f = write(here, "s.yaml", STUDY)
    blocker = write(here, "ckpt", "not a folder")
    one_line_error(runner.invoke(app, ["run", str(f), *run_args("sqlite:///t.db"),
                                       "--checkpoint-dir", str(blocker / "sub")]),
                   "--checkpoint-dir", "is a file")
    assert leftovers(here, f, blocker) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_an_unwritable_out_is_refused_before_the_report(here: Path) -> None:
    f = write(here, "s.yaml", STUDY)
    url = f"sqlite:///{here / 't.db'}"
    assert runner.invoke(app, ["run", str(f), *run_args(url), "--workers", "1"]).exit_code == 0
    locked = here / "locked"
    locked.mkdir(mode=0o555)
    one_line_error(runner.invoke(app, ["report", "g", "--storage", url, "--out", str(locked)]),
                   "not writable")
    one_line_error(runner.invoke(app, ["retrain", "g", "--storage", url, "--device", "cpu",
                                       "--out", str(locked / "m")]), "not writable")
    assert list(locked.iterdir()) == []


# ---- launchers ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["--mem", "4G\nrm -rf ~"], "--mem"),
    (["--mem", "banana"], "--mem"),
    (["--partition", "gpu\necho owned"], "--partition"),
    (["--partition", "gpu;ls"], "--partition"),
    (["--time", "١:00"], "--time"),
    (["--device", "tpu"], "--device"),
    (["--out-dir", "a\nb"], "--out-dir"),
])
def test_slurm_values_are_checked_for_their_place(here: Path, args: list[str],
                                                  needle: str) -> None:
    f = write(here, "s.yaml", STUDY)
    one_line_error(runner.invoke(app, ["launch", "slurm", str(f), "--dry-run", "--storage",
                                       f"sqlite:///{here / 't.db'}", *args]), needle)
    assert leftovers(here, f) == []


@pytest.mark.parametrize("args, needle", [
    (["--mem", "banana"], "not a Kubernetes quantity"),
    (["--checkpoint-size", "20 GB"], "not a Kubernetes quantity"),
    (["--namespace", "Bad_NS"], "DNS-1123"),
    (["--namespace", "ns\nkind: Secret"], "DNS-1123"),
    (["--storage-class", "fast;rm"], "--storage-class"),
    (["--device", "tpu"], "--device"),
    (["--image", "img\nx"], "--image"),
])
def test_k8s_values_are_checked_for_their_place(here: Path, args: list[str], needle: str) -> None:
    f = write(here, "s.yaml", STUDY)
    one_line_error(runner.invoke(app, ["launch", "k8s", str(f), "--image", "reg/tuner:1",
                                       "--storage", "postgresql://u@db/tuner", *args]), needle)


def test_k8s_out_that_is_a_file_is_one_line(here: Path) -> None:
    f = write(here, "s.yaml", STUDY)
    blocker = write(here, "out", "")
    one_line_error(runner.invoke(app, ["launch", "k8s", str(f), "--image", "reg/tuner:1",
                                       "--storage", "postgresql://u@db/tuner", "--out",
                                       str(blocker)]), "is a file")


def test_a_study_is_taken_back_when_sbatch_refuses(here: Path) -> None:
    bin_ = here / "bin"
    bin_.mkdir()
    sbatch = bin_ / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Invalid partition name' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    f = write(here, "s.yaml", STUDY)
    url = f"sqlite:///{here / 't.db'}"
    result = runner.invoke(app, ["launch", "slurm", str(f), "--storage", url],
                           env={"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"})
    assert result.exit_code == 2 and "sbatch refused" in result.output, result.output
    with sqlite3.connect(here / "t.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM studies").fetchone() == (0,)


# ---- workers and user code ---------------------------------------------------------------
def test_a_failed_spawn_leaves_no_worker_and_no_study(here: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.runtime import local

    started: list[subprocess.Popen[bytes]] = []
    real = local._spawn_one

    def spawn_one(*args: object) -> subprocess.Popen[bytes]:
        if started:  # the machine runs out of processes at the second worker
            raise OSError(11, "Resource temporarily unavailable")
        started.append(real(*args))  # type: ignore[arg-type]
        return started[-1]

    monkeypatch.setattr(local, "_spawn_one", spawn_one)
    f = write(here, "s.yaml", STUDY.replace("trials: 1", "trials: 4"))
    out = one_line_error(runner.invoke(app, ["run", str(f), *run_args("sqlite:///t.db"),
                                             "--workers", "2"]), "could not start worker 2")
    assert "Resource temporarily unavailable" in out
    assert len(started) == 1 and started[0].poll() is not None  # no orphan
    with sqlite3.connect(here / "t.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM studies").fetchone() == (0,)


@pytest.mark.parametrize("body", ["import sys\nsys.exit(0)\n", "raise SystemExit(3)\n"])
def test_user_code_that_exits_on_import_is_one_line(here: Path, body: str) -> None:
    write(here, "nets.py", body + textwrap.dedent("""
        def build(**kw):
            raise AssertionError("never reached")
    """))
    f = write(here, "s.yaml", STUDY + "model: nets.py:build\n")
    one_line_error(runner.invoke(app, ["run", str(f), *run_args("sqlite:///t.db")]),
                   "sys.exit", "__main__")
    assert sorted(leftovers(here, f)) == ["nets.py"]
