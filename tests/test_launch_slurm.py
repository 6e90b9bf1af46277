"""`tuner launch slurm`: the script it writes, the checks before it submits, and real job
arrays on the local Slurm (.ci/services.sh starts one; the slow tests skip without it)."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cli_parse import cli_command
from optuna.trial import TrialState
from tuner_procs import assert_clean, finished, start, trials, tuner_cmd, worker_pid, write_study
from typer.testing import CliRunner

from tuner.cli import app
from tuner.errors import LaunchError, StorageError
from tuner.launch import Resources, SlurmSettings, slurm_script, submit, tuner_command
from tuner.launch.slurm import script_path

pytest_plugins = ["servers"]

runner = CliRunner()


def settings(tmp_path: Path, **kw) -> SlurmSettings:
    base = dict(study="toy", storage=f"sqlite:///{tmp_path / 'tuner.db'}", folder=str(tmp_path / "out"))
    return SlurmSettings(**(base | kw))


def directives(text: str) -> list[str]:
    return re.findall(r"^#SBATCH (.+)$", text, re.M)


def exec_argv(text: str) -> list[str]:
    """The worker's command line in the script, with the task's index filled in."""
    line = next(x for x in text.splitlines() if x.startswith("exec "))
    return [a.replace("$index", "0") for a in shlex.split(line)[1:]]


# ---- the script -----------------------------------------------------------------------------
def test_script_is_an_array_of_workers_that_checkpoint_when_slurm_stops_them(tmp_path):
    text = slurm_script(settings(tmp_path, workers=8, resources=Resources(gpus=1, cpus=4, mem="16G"),
                                 partition="gpu", time="4:00:00", stop_before_s=600))
    opts = directives(text)
    for expected in ("--array=0-7", "--cpus-per-task=4", "--gres=gpu:1", "--mem=16G",
                     "--partition=gpu", "--time=4:00:00", "--requeue", "--signal=B:TERM@600",
                     "--job-name=tuner-toy", f"--output={tmp_path / 'out'}/%x-%A_%a.out"):
        assert expected in opts, (expected, opts)
    assert text.startswith("#!/bin/bash\n")
    # exec: the batch shell becomes the worker, so B:TERM reaches the worker itself
    assert re.search(r"^exec .* worker toy ", text, re.M)
    assert '--worker-index "$index"' in text
    assert "SLURM_ARRAY_TASK_ID" in text and "SLURM_RESTART_COUNT" in text
    # bash computes the index: task 3, requeued twice, samples as worker 19
    index = next(x for x in text.splitlines() if x.startswith("index="))
    got = subprocess.run(["bash", "-c", f"{index}; echo $index"], capture_output=True, text=True,
                         env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": "2"})
    assert got.stdout.strip() == "19"


def test_script_without_options_asks_for_no_gpu_memory_or_partition(tmp_path):
    opts = directives(slurm_script(settings(tmp_path)))
    assert "--array=0-1" in opts and "--cpus-per-task=1" in opts
    assert not [o for o in opts if o.startswith(("--gres", "--mem", "--partition", "--time"))]


def test_the_worker_command_is_one_the_cli_accepts(tmp_path):
    text = slurm_script(settings(tmp_path, checkpoint_dir="/shared/ckpt", data_dir="/shared/data",
                                 device="cuda", tuner=("tuner",)))
    argv = exec_argv(text)
    assert argv[:3] == ["tuner", "worker", "toy"]
    assert cli_command(argv).name == "worker"
    for flag, value in (("--storage", f"sqlite:///{tmp_path / 'tuner.db'}"),
                        ("--checkpoint-dir", "/shared/ckpt"), ("--data-dir", "/shared/data"),
                        ("--device", "cuda"), ("--worker-index", "0")):
        assert argv[argv.index(flag) + 1] == value


def test_extra_sbatch_lines_are_kept_with_or_without_their_prefix(tmp_path):
    opts = directives(slurm_script(settings(tmp_path, sbatch_lines=("--qos=high", "#SBATCH --account=x"))))
    assert opts[-2:] == ["--qos=high", "--account=x"]


@pytest.mark.parametrize("kw, message", [
    ({"workers": 0}, "--workers 0"),
    ({"time": "four hours"}, "--time"),
    ({"stop_before_s": 10}, "--stop-before 10"),
    ({"sbatch_lines": ("--qos=high\nrm -rf /",)}, "--sbatch-line"),
    ({"sbatch_lines": ("qos=high",)}, "--sbatch-line"),
])
def test_bad_settings_say_which_option(tmp_path, kw, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        settings(tmp_path, **kw)


def test_resources_check_themselves():
    with pytest.raises(LaunchError, match="--cpus-per-worker 0"):
        Resources(cpus=0)
    with pytest.raises(LaunchError, match="--gpus-per-worker -1"):
        Resources(gpus=-1)


def test_how_tasks_run_tuner(tmp_path):
    assert tuner_command() == (sys.executable, "-m", "tuner")
    assert tuner_command(python="python3") == ("python3", "-m", "tuner")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = tmp_path / "venv" / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    assert tuner_command(venv=str(tmp_path / "venv")) == (str(python), "-m", "tuner")
    assert tuner_command(command="apptainer exec tuner.sif tuner") == (
        "apptainer", "exec", "tuner.sif", "tuner")
    with pytest.raises(LaunchError, match="--python and --venv"):
        tuner_command(python="python3", venv="v")
    with pytest.raises(LaunchError, match="no bin/python"):
        tuner_command(venv=str(tmp_path))


# ---- the command line -----------------------------------------------------------------------
def test_dry_run_prints_the_script_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path)
    result = runner.invoke(app, ["launch", "slurm", str(study), "--dry-run", "--workers", "3",
                                 "--storage", "sqlite:///tuner.db", "--sbatch-line=--qos=low"],
                           env={"PATH": str(tmp_path)})  # no sbatch needed to look
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-2" in result.output and "#SBATCH --qos=low" in result.output
    # a relative SQLite path becomes absolute: every task opens the same file
    argv = exec_argv(result.output)
    assert argv[argv.index("--storage") + 1] == f"sqlite:///{tmp_path / 'tuner.db'}"
    assert argv[argv.index("--checkpoint-dir") + 1] == str(tmp_path / "tuner_checkpoints")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.py", "toy.yaml"]


def test_without_sbatch_it_is_one_line_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path)
    result = runner.invoke(app, ["launch", "slurm", str(study), "--storage", "sqlite:///tuner.db"],
                           env={"PATH": str(tmp_path)})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "sbatch" in lines[0] and "--dry-run" in lines[0], result.output
    # no study database, no script folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.py", "toy.yaml"]


@pytest.mark.parametrize("storage, message", [
    ("sqlite:///:memory:", "in-memory"),
    ("sqlite://", "in-memory"),
    ("nosuch://x", "unsupported storage"),
])
def test_storage_that_tasks_cannot_share_is_refused(tmp_path, storage, message):
    result = runner.invoke(app, ["launch", "slurm", "toy", "--dry-run", "--storage", storage])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def fake_sbatch(folder: Path, stdout: str = "4242;cluster", code: int = 0) -> Path:
    """An ``sbatch`` that records its arguments and prints ``stdout``."""
    folder.mkdir(exist_ok=True)
    exe = folder / "sbatch"
    exe.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "$@" >> {folder / 'calls'}
        echo '{stdout}'
        [ {code} -eq 0 ] || echo 'sbatch: error: Invalid partition name specified' >&2
        exit {code}
    """))
    exe.chmod(0o755)
    return folder


def test_submit_writes_a_private_script_and_returns_the_job_id(tmp_path, monkeypatch):
    bin_ = fake_sbatch(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    s = settings(tmp_path, storage="postgresql://u:secret@db/tuner")
    assert submit(slurm_script(s), s) == "4242"
    path = script_path(s)
    assert path.read_text() == slurm_script(s)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the URL's password is in it
    assert (bin_ / "calls").read_text().split() == ["--parsable", str(path)]


def test_sbatch_refusing_is_one_line_with_its_reason(tmp_path, monkeypatch):
    bin_ = fake_sbatch(tmp_path / "bin", stdout="", code=1)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    s = settings(tmp_path)
    with pytest.raises(LaunchError, match="sbatch refused .*Invalid partition name") as e:
        submit(slurm_script(s), s)
    assert "\n" not in str(e.value)


def test_a_study_file_is_created_with_its_budget_before_submission(tmp_path, monkeypatch):
    bin_ = fake_sbatch(tmp_path / "bin")
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path, trials=5)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    result = runner.invoke(app, ["launch", "slurm", str(study), "--storage", url],
                           env={"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"})
    assert result.exit_code == 0, result.output
    assert "created study toy (budget 5 trials)" in result.output
    assert "submitted job array 4242" in result.output
    from tuner import api

    assert api.load("toy", storage=url).handle.budget.state().target == 5
    assert trials(url, "toy") == []  # created, nothing run: every task only joins it
    argv = exec_argv((tmp_path / "tuner-slurm" / "tuner-toy.sbatch").read_text())
    assert argv[argv.index("worker") + 1] == "toy"  # the name, not the file


def test_a_study_name_that_does_not_exist_submits_nothing(tmp_path, monkeypatch):
    bin_ = fake_sbatch(tmp_path / "bin")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["launch", "slurm", "nosuch", "--storage", "sqlite:///tuner.db"],
                           env={"PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"})
    assert result.exit_code == 2
    assert "nosuch" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (bin_ / "calls").exists() and not (tmp_path / "tuner-slurm").exists()


def test_a_storage_error_is_a_storage_error(tmp_path):
    from tuner.launch import shareable_url

    with pytest.raises(StorageError, match="folder of"):
        shareable_url(f"sqlite:///{tmp_path / 'nosuch' / 'x.db'}", sqlite_ok=True)


# ---- real job arrays on the local Slurm ------------------------------------------------------
def launch(study: str, url: str, tmp_path: Path, *extra: str) -> str:
    """`tuner launch slurm` as a user runs it; returns the job id."""
    done = subprocess.run(tuner_cmd("launch", "slurm", study, "--storage", url, "--device", "cpu",
                                    "--checkpoint-dir", str(tmp_path / "checkpoints"), *extra),
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"submitted job array (\d+)", done.stdout).group(1)


def wait_for_job(job: str, timeout: float) -> None:
    """Until no task of ``job`` is pending or running (squeue), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True,
                                text=True, timeout=30)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", job], timeout=30)
    raise AssertionError(f"job {job} still queued after {timeout}s")


def task_states(job: str) -> dict[str, str]:
    """Task id -> (state, exit code), from slurmctld's memory of finished jobs (MinJobAge)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True,
                           timeout=30).stdout
    return {m["task"]: (m["state"], m["code"]) for m in re.finditer(
        r"ArrayTaskId=(?P<task>\d+) .*?JobState=(?P<state>\w+) .*?ExitCode=(?P<code>[\d:]+)", shown)}


def logs(tmp_path: Path, job: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((tmp_path / "tuner-slurm").glob(f"*-{job}_*.out"))}


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # one node: their jobs would queue behind each other
@pytest.mark.timeout(400)
def test_a_two_task_array_finishes_a_study_exactly(slurm, tmp_path):
    study = write_study(tmp_path, trials=6, epochs=2, sleep=1.0)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    job = launch(str(study), url, tmp_path, "--workers", "2")
    wait_for_job(job, 240)
    out = logs(tmp_path, job)
    assert sorted(out) == [f"tuner-toy-{job}_0.out", f"tuner-toy-{job}_1.out"], out
    for name, text in out.items():
        assert "worker done:" in text and "(budget spent)" in text, (name, text)
        assert_clean(text, name)
    assert task_states(job) == {"0": ("COMPLETED", "0:0"), "1": ("COMPLETED", "0:0")}
    ts = trials(url, "toy")
    assert len(finished(ts)) == 6, [(t.number, t.state.name) for t in ts]
    assert not [t for t in ts if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in ts}) == len(ts)
    # both tasks worked on the study: each ran trials in its own process
    done_by = [int(re.search(r"worker done: (\d+) trials", text).group(1)) for text in out.values()]
    assert sum(done_by) == 6 and min(done_by) >= 1, out
    assert len({worker_pid(t) for t in finished(ts)}) == 2


def wait_for_epoch(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t.intermediate_values for t in trials(url, "toy")):
            return
        time.sleep(0.5)
    raise AssertionError(f"no epoch reported in {timeout}s")


def assert_stopped(tmp_path: Path, job: str) -> None:
    """The task's log: the worker stopped on request, with nothing wrong. (slurmstepd notes
    the signal it passed on as "*** JOB ... CANCELLED ***"; a kill at the time limit would
    say "DUE TO TIME LIMIT".)"""
    (text,) = logs(tmp_path, job).values()
    assert re.search(r"^worker done: \d+ trials \(stopped\)$", text, re.M), text
    assert "DUE TO TIME LIMIT" not in text and "PREEMPTION" not in text, text
    assert_clean("\n".join(x for x in text.splitlines() if not x.startswith("slurmstepd")),
                 "stopped task")


def assert_stopped_and_resumable(url: str, tmp_path: Path, job: str) -> None:
    """The task's worker checkpointed and left; `tuner resume` continues its trial."""
    assert_stopped(tmp_path, job)
    assert task_states(job)["0"] == ("COMPLETED", "0:0")  # a clean stop, not a kill
    stopped, retry = trials(url, "toy")
    assert stopped.state == TrialState.FAIL and "retried from checkpoint" in stopped.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING
    resume = start(tuner_cmd("resume", "toy", "--storage", url, "--device", "cpu", "--quiet",
                             "--checkpoint-dir", str(tmp_path / "checkpoints")), tmp_path / "resume.log")
    assert resume.wait(120) == 0, resume.output()
    retry = trials(url, "toy")[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["start_epoch"] > 1  # continued from the checkpoint, not restarted


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # one node: their jobs would queue behind each other
@pytest.mark.timeout(300)
def test_sigterm_to_a_task_reaches_its_worker_which_checkpoints(slurm, tmp_path):
    # what a preemption or `scancel --signal=TERM` does: the batch shell gets SIGTERM, and
    # the batch shell is the worker (exec)
    study = write_study(tmp_path, trials=1, epochs=4, sleep=1.0)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    job = launch(str(study), url, tmp_path, "--workers", "1")
    wait_for_epoch(url, 120)
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], check=True, timeout=30)
    wait_for_job(job, 60)
    assert_stopped_and_resumable(url, tmp_path, job)


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # one node: their jobs would queue behind each other
@pytest.mark.timeout(400)
def test_the_time_limit_sends_sigterm_before_it_kills(slurm, tmp_path):
    # --time 2 with --stop-before 60: SIGTERM about a minute in (slurmctld checks every
    # 30 s or so), long before the kill at two minutes
    study = write_study(tmp_path, trials=1, epochs=1000, sleep=0.5)
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    job = launch(str(study), url, tmp_path, "--workers", "1", "--time", "2", "--stop-before", "60")
    wait_for_epoch(url, 120)
    wait_for_job(job, 200)
    assert_stopped_and_resumable_after_limit(url, tmp_path, job)


def assert_stopped_and_resumable_after_limit(url: str, tmp_path: Path, job: str) -> None:
    assert_stopped(tmp_path, job)
    assert task_states(job)["0"] == ("COMPLETED", "0:0")  # not TIMEOUT
    stopped, retry = trials(url, "toy")
    assert stopped.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert len(stopped.intermediate_values) >= 10  # it trained until the signal
