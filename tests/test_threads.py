"""tuner.threads: the CPUs a worker may use (affinity, cgroup v1/v2 quota, Slurm, local
workers, --threads, OMP_NUM_THREADS), read from fake /proc and /sys/fs/cgroup roots; the
--threads / TUNER_THREADS gate; real workers that train with the threads their first line
names."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest

from tuner import threads
from tuner.errors import TunerError
from tuner.threads import Threads, cgroup_cpus, choose, parse, wait_env


# ---- cgroup quotas from fake roots ----------------------------------------------------------
def fake_proc(tmp: Path, cgroup_lines: str) -> Path:
    (tmp / "proc" / "self").mkdir(parents=True)
    (tmp / "proc" / "self" / "cgroup").write_text(textwrap.dedent(cgroup_lines).lstrip())
    return tmp / "proc"


def write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text)


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, "0::/user.slice/job.scope\n")
    fs = tmp_path / "cgroup"
    write(fs, cpu_max="max 100000\n")
    write(fs / "user.slice", cpu_max="300000 100000\n")
    write(fs / "user.slice" / "job.scope", cpu_max="150000 100000\n")
    assert cgroup_cpus(proc, fs) == 1.5
    write(fs / "user.slice", cpu_max="100000 100000\n")  # a parent's quota binds its children
    assert cgroup_cpus(proc, fs) == 1.0
    write(fs / "user.slice", cpu_max="max 100000\n")
    write(fs / "user.slice" / "job.scope", cpu_max="max 100000\n")
    assert cgroup_cpus(proc, fs) is None


def test_cgroup_v1_quota_in_the_cpu_controllers_tree(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, """
        12:memory:/docker/abc
        4:cpu,cpuacct:/docker/abc
        0::/
    """)
    fs = tmp_path / "cgroup"
    write(fs / "cpu,cpuacct", cpu_cfs_quota_us="-1\n", cpu_cfs_period_us="100000\n")
    write(fs / "cpu,cpuacct" / "docker" / "abc", cpu_cfs_quota_us="200000\n",
          cpu_cfs_period_us="100000\n")
    write(fs / "memory" / "docker" / "abc", cpu_max="50000 100000\n")  # not the cpu tree
    assert cgroup_cpus(proc, fs) == 2.0
    write(fs / "cpu,cpuacct" / "docker" / "abc", cpu_cfs_quota_us="-1\n")
    assert cgroup_cpus(proc, fs) is None


def test_inside_a_container_the_mount_root_is_its_own_cgroup(tmp_path: Path) -> None:
    # /proc names the host's path, which the container's mount does not have
    proc = fake_proc(tmp_path, "0::/kubepods/burstable/pod123/cafe\n")
    fs = tmp_path / "cgroup"
    write(fs, cpu_max="250000 100000\n")
    assert cgroup_cpus(proc, fs) == 2.5


def test_no_cgroup_file_or_unreadable_values_mean_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpus(tmp_path / "nowhere", tmp_path / "cgroup") is None
    proc = fake_proc(tmp_path, "0::/a\n")
    write(tmp_path / "cgroup" / "a", cpu_max="garbage\n")
    assert cgroup_cpus(proc, tmp_path / "cgroup") is None


# ---- the choice -----------------------------------------------------------------------------
def test_the_tightest_limit_wins_and_is_named() -> None:
    assert choose(environ={}, affinity=8) == Threads(8, "8 CPUs in its affinity mask", True)
    assert choose(environ={}, affinity=8, quota=2.5) == Threads(2, "a cgroup CPU quota of 2.5", True)
    assert choose(environ={}, affinity=8, quota=0.5).n == 1  # at least one thread
    assert choose(environ={"SLURM_CPUS_PER_TASK": "3"}, affinity=8, quota=4) == Threads(
        3, "SLURM_CPUS_PER_TASK=3", True)
    assert choose(environ={"SLURM_CPUS_PER_TASK": "16"}, affinity=2).n == 2
    assert choose(environ={"SLURM_CPUS_PER_TASK": "bad"}, affinity=2).n == 2


def test_local_workers_split_the_cpus() -> None:
    assert choose(environ={}, affinity=8, workers=2) == Threads(
        4, "8 CPUs in its affinity mask, shared by 2 local workers", True)
    assert choose(environ={}, affinity=2, workers=4).n == 1  # never 0
    assert choose(environ={}, affinity=8, quota=2, workers=2).n == 1


def test_explicit_threads_then_omp_num_threads_take_precedence() -> None:
    assert choose(explicit=5, environ={}, affinity=2, quota=1, workers=4) == Threads(
        5, "--threads / TUNER_THREADS")
    assert choose(explicit=5, environ={"OMP_NUM_THREADS": "3"}, affinity=2) == Threads(
        3, "OMP_NUM_THREADS=3")
    # a nested list (OpenMP's "4,2") counts its outer level; junk is ignored
    assert choose(environ={"OMP_NUM_THREADS": "4,2"}, affinity=2).n == 4
    assert choose(environ={"OMP_NUM_THREADS": "zero"}, affinity=2).n == 2


def test_detect_on_this_machine_fits_its_affinity_mask() -> None:
    got = threads.detect()
    assert 1 <= got.n <= len(os.sched_getaffinity(0)) or "OMP_NUM_THREADS" in os.environ
    assert str(got).startswith(f"{got.n} thread")


@pytest.mark.parametrize("bad", ["0", "-1", "two", "2.5", "1025", "", True])
def test_a_thread_count_must_be_a_whole_number_in_range(bad: object) -> None:
    with pytest.raises(TunerError, match=r"--threads .*whole number of threads from 1 to 1024"):
        parse(bad)  # type: ignore[arg-type]
    assert parse("4") == 4 and parse(" 1 ") == 1 and parse(1024) == 1024


def test_the_wait_policy_is_the_users_if_they_set_any_of_it() -> None:
    assert wait_env({}) == {"GOMP_SPINCOUNT": str(threads.SPIN_COUNT),
                            "KMP_BLOCKTIME": str(threads.BLOCKTIME_MS)}
    for var in threads.WAIT_VARS:
        assert wait_env({var: "1"}) == {}


# ---- the gate and real workers ----------------------------------------------------------------
# the trainer reports the torch threads and OpenMP spin it trained with
FIT = textwrap.dedent('''
    import os

    import torch


    def fit(params, ctx):
        ctx.info["spin"] = os.environ.get("GOMP_SPINCOUNT", "unset")
        n = float(torch.get_num_threads())
        ctx.report(1, n)
        return n
''')


def study_file(folder: Path, name: str = "threads") -> Path:
    (folder / "fit.py").write_text(FIT)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: {name}
        trainer: fit.py:fit
        task: regression
        metric: mse
        epochs: 1
        trials: 2
        sampler: random
        pruner: none
        space:
          x: {{type: float, low: 0.0, high: 1.0}}
    """))
    return path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_NUM_THREADS", "TUNER_THREADS", *threads.WAIT_VARS)}


def tuner(args: list[str], tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = clean_env()
    return subprocess.run([sys.executable, "-m", "tuner", *args, "--device", "cpu",
                           "--checkpoint-dir", str(tmp / "ckpt")],
                          cwd=tmp, env={**clean, **env}, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize(("args", "env"), [(["--threads", "0"], {}),
                                           (["--threads", "99999"], {}),
                                           ([], {"TUNER_THREADS": "many"})])
def test_bad_threads_are_one_line_exit_2_and_nothing_written(args: list[str], env: dict[str, str],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    from typer.testing import CliRunner

    from tuner.cli import app

    monkeypatch.chdir(tmp_path)
    path = study_file(tmp_path)
    r = CliRunner().invoke(app, ["run", str(path), "--storage", f"sqlite:///{tmp_path / 'x.db'}",
                                 "--device", "cpu", *args], env=env)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "whole number of threads" in lines[0], r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "ckpt").exists()


def values(url: str, name: str = "threads") -> list[float]:
    return [t.value for t in optuna.load_study(study_name=name, storage=url).trials]


@pytest.mark.slow
def test_a_worker_says_its_threads_first_and_trains_with_them(tmp_path: Path) -> None:
    path, url = study_file(tmp_path), f"sqlite:///{tmp_path / 'w.db'}"
    r = tuner(["worker", str(path), "--storage", url, "--threads", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "worker on cpu, 1 thread (--threads / TUNER_THREADS)"
    assert values(url) == [1.0, 1.0]
    spins = {t.user_attrs["spin"] for t in optuna.load_study(study_name="threads",
                                                             storage=url).trials}
    assert spins == {str(threads.SPIN_COUNT)}  # set before torch loaded

    # OMP_NUM_THREADS wins over --threads, and the user's wait policy is left alone
    url2 = f"sqlite:///{tmp_path / 'w2.db'}"
    r = tuner(["worker", str(path), "--storage", url2, "--threads", "2"], tmp_path,
              OMP_NUM_THREADS="1", GOMP_SPINCOUNT="77")
    assert r.stdout.splitlines()[0] == "worker on cpu, 1 thread (OMP_NUM_THREADS=1)"
    assert values(url2) == [1.0, 1.0]
    assert {t.user_attrs["spin"] for t in optuna.load_study(study_name="threads",
                                                           storage=url2).trials} == {"77"}


@pytest.mark.slow
def test_local_workers_split_the_cpus_they_share(tmp_path: Path) -> None:
    path, url = study_file(tmp_path), f"sqlite:///{tmp_path / 'k.db'}"
    r = tuner(["run", str(path), "--storage", url, "--workers", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    expected = choose(environ=clean_env(), workers=2, quota=cgroup_cpus())
    first = r.stdout.splitlines()[0]
    assert f"2 workers, each {expected}" in " ".join(r.stdout.split()), first
    assert values(url) == [float(expected.n)] * 2


# ---- fewer threads while the CPUs are contended -------------------------------------------------
def test_threads_fit_what_other_processes_leave() -> None:
    from tuner.threads import fitting

    # quiet: both CPUs ours (spinning counts as ours) or idle
    assert fitting(2, 2, wall_s=2.0, idle_s=0.1, own_s=3.8) == 2
    assert fitting(2, 2, wall_s=2.0, idle_s=2.0, own_s=2.0) == 2  # at 1 thread, 1 CPU idle
    # one busy neighbour: it takes a CPU's worth, we get the rest
    assert fitting(2, 2, wall_s=3.0, idle_s=0.0, own_s=4.0) == 1
    assert fitting(2, 2, wall_s=2.0, idle_s=0.0, own_s=2.0) == 1
    assert fitting(8, 8, wall_s=1.0, idle_s=3.0, own_s=2.6) == 5  # 5.6 CPUs free
    assert fitting(8, 8, wall_s=1.0, idle_s=3.0, own_s=2.7) == 6  # 5.7: rounds up
    assert fitting(4, 8, wall_s=1.0, idle_s=7.0, own_s=1.0) == 4  # never above the ceiling
    assert fitting(2, 2, wall_s=0.0, idle_s=0.0, own_s=0.0) == 2


class FakeMachine:
    """/proc/stat of 2 CPUs whose idle time, this process's CPU time and the clock move as a
    test says."""

    def __init__(self, root: Path) -> None:
        self.root, self.t, self.own, self.idle = root, 0.0, 0.0, [0.0, 0.0]
        self.write()

    def write(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        lines = ["cpu  1 0 1 1 0 0 0 0 0 0"] + [
            f"cpu{i} 100 0 50 {round(idle * tick)} 0 0 0 0 0 0" for i, idle in enumerate(self.idle)]
        (self.root / "stat").write_text("\n".join([*lines, "procs_running 3", ""]))

    def run(self, seconds: float, own_cpus: float, idle_cpus: float) -> None:
        self.t += seconds
        self.own += own_cpus * seconds
        self.idle = [i + idle_cpus * seconds / 2 for i in self.idle]
        self.write()


def test_a_worker_steps_down_beside_a_busy_neighbour_and_back_up(tmp_path: Path) -> None:
    from tuner.threads import Adaptive

    m, set_to = FakeMachine(tmp_path), []
    a = Adaptive(Threads(2, "2 CPUs", adaptive=True), {0, 1}, proc=tmp_path,
                 clock=lambda: m.t, cpu_time=lambda: m.own, set_threads=set_to.append)
    m.run(2.0, own_cpus=2.0, idle_cpus=0.0)  # a quiet epoch: both threads busy
    a.between_epochs()
    assert a.n == 2 and set_to == []
    m.run(3.0, own_cpus=1.3, idle_cpus=0.0)  # a neighbour took 0.7 CPU
    a.between_epochs()
    assert a.n == 1 and set_to == [1]
    m.run(0.5, own_cpus=1.0, idle_cpus=1.0)  # too short a window to judge
    a.between_epochs()
    assert a.n == 1
    m.run(2.0, own_cpus=1.0, idle_cpus=0.0)  # still contended
    a.between_epochs()
    assert a.n == 1 and set_to == [1]
    m.run(2.0, own_cpus=1.0, idle_cpus=1.0)  # the neighbour left: a CPU idles
    a.between_epochs()
    assert a.n == 2 and set_to == [1, 2]


def test_only_a_count_tuner_chose_adapts() -> None:
    from tuner.threads import Adaptive

    assert Adaptive.for_worker(Threads(2, "--threads / TUNER_THREADS")) is None
    assert Adaptive.for_worker(Threads(1, "1 CPU", adaptive=True)) is None
    assert Adaptive.for_worker(choose(environ={"OMP_NUM_THREADS": "2"}, affinity=2)) is None
