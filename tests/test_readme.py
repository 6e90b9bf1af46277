"""README's two set-up commands stay true: CI runs the test command verbatim, and the main
job names a study file that exists and validates."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tuner.config import load_spec

ROOT = Path(__file__).parent.parent


def setup_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up on a new machine", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_exactly_two_setup_commands() -> None:
    assert len(setup_commands()) == 2


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = setup_commands()[1]
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_main_job_runs_a_shipped_study_file() -> None:
    words = shlex.split(setup_commands()[0].replace("&&", " "))
    run = words.index("run")
    spec = load_spec(ROOT / words[run + 1])
    assert spec.name == "mnist_mlp"
