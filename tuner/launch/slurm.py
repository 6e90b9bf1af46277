"""Slurm: one study, a job array of ``tuner worker`` tasks.

    settings = SlurmSettings(study="mnist_mlp", storage="postgresql://db-host/tuner",
                             workers=8, resources=Resources(gpus=1, cpus=4, mem="16G"),
                             time="4:00:00", folder="/shared/tuner-slurm")
    text = script(settings)              # the sbatch script, as text
    job_id = submit(text, settings)      # writes it into the folder, runs sbatch

Each array task ``exec``s one worker, so the signals Slurm sends reach the worker and not a
shell. ``--signal=B:TERM@S`` sends SIGTERM ``S`` seconds before the time limit: the worker
finishes its epoch, saves the checkpoint and leaves the trial for another worker to resume
(a preemption sends SIGTERM too, then waits the partition's GraceTime). ``--requeue`` puts a
task whose node failed, or that was preempted, back in the queue.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import LaunchError
from tuner.launch.common import (
    SLURM_MEM,
    SLURM_PARTITION,
    Resources,
    check_workers,
    device,
    matches,
    one_line,
    require_command,
    study,
)

SBATCH_FIX = "run this on a Slurm login node (or load its module: `module load slurm`), or use --dry-run"
# sbatch's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, and no limit
_TIME = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^(UNLIMITED|INFINITE)$", re.ASCII)


@dataclass(frozen=True)
class SlurmSettings:
    """One launch: which study, where its database is, and what each array task gets."""

    study: str                          # the study's name (it exists before the tasks start)
    storage: str                        # a server URL or an absolute SQLite path (shareable_url)
    folder: str                         # the script and the tasks' output files go here
    workers: int = 2                    # array tasks, one worker each
    resources: Resources = field(default_factory=Resources)
    partition: str | None = None
    time: str | None = None             # the time limit, in sbatch's notation (4:00:00, 1-12)
    stop_before_s: int = 300            # SIGTERM this long before the limit: > one epoch + checkpoint
    sbatch_lines: tuple[str, ...] = ()  # more `#SBATCH` options, e.g. "--qos=high"
    checkpoint_dir: str | None = None   # shared by every task; None: tuner's default for the storage
    data_dir: str | None = None
    device: str = "auto"
    tuner: tuple[str, ...] = ("tuner",)  # the command that runs tuner on a compute node

    def __post_init__(self) -> None:
        # every value below lands in the script: on an #SBATCH line, or quoted on the exec line
        check_workers(self.workers)
        study(self.study)
        device(self.device)
        matches(self.resources.mem, SLURM_MEM, "--mem", "use Slurm's notation: megabytes, "
                "or a number with K, M, G or T (e.g. 16G)")
        matches(self.partition, SLURM_PARTITION, "--partition", "a Slurm partition: letters, "
                "digits, '_', '.' and '-' (several joined by ',')")
        for option, value in (("--storage", self.storage), ("--out-dir", self.folder),
                              ("--checkpoint-dir", self.checkpoint_dir),
                              ("--data-dir", self.data_dir), *(("--tuner-command", a)
                                                               for a in self.tuner)):
            if value is not None:
                one_line(value, option)
        if not 60 <= self.stop_before_s <= 65535:
            # Slurm checks signal times once a minute, and keeps them in 16 bits
            raise LaunchError(f"--stop-before {self.stop_before_s}: give 60 to 65535 seconds, "
                              "longer than one epoch plus its checkpoint")
        if self.time is not None and not _TIME.match(self.time):
            raise LaunchError(f"--time {self.time!r}: use Slurm's notation, e.g. 30, 4:00:00 or 1-12")
        for line in self.sbatch_lines:
            one_line(line, "--sbatch-line")
            if not _option(line).startswith("-"):
                raise LaunchError(f"--sbatch-line {line!r}: give one sbatch option per line, "
                                  "e.g. --sbatch-line=--qos=high")

    @property
    def job_name(self) -> str:
        return f"tuner-{self.study}"


def _option(line: str) -> str:
    return line.strip().removeprefix("#SBATCH").strip()


def worker_argv(s: SlurmSettings) -> list[str]:
    """The worker's command line, up to its ``--worker-index`` (which the task computes)."""
    argv = [*s.tuner, "worker", s.study, "--storage", s.storage, "--device", s.device]
    if s.checkpoint_dir is not None:
        argv += ["--checkpoint-dir", s.checkpoint_dir]
    if s.data_dir is not None:
        argv += ["--data-dir", s.data_dir]
    return argv


def script(s: SlurmSettings) -> str:
    """The sbatch script of the job array, as text."""
    folder = Path(s.folder)
    opts = [f"--job-name={s.job_name}", f"--array=0-{s.workers - 1}", "--nodes=1", "--ntasks=1",
            f"--cpus-per-task={s.resources.cpus}"]
    if s.resources.gpus:
        opts.append(f"--gres=gpu:{s.resources.gpus}")
    if s.resources.mem is not None:
        opts.append(f"--mem={s.resources.mem}")
    if s.partition is not None:
        opts.append(f"--partition={s.partition}")
    if s.time is not None:
        opts.append(f"--time={s.time}")
    opts += [f"--output={folder / '%x-%A_%a.out'}", "--requeue",
             f"--signal=B:TERM@{s.stop_before_s}", *(_option(line) for line in s.sbatch_lines)]
    lines = [
        "#!/bin/bash",
        f"# {s.workers} tuner workers for study {s.study}, written by `tuner launch slurm`",
        *(f"#SBATCH {o}" for o in opts),
        "",
        "# a requeued task samples apart from its earlier run: its index moves on by the array size",
        f'index=$(( SLURM_ARRAY_TASK_ID + {s.workers} * ${{SLURM_RESTART_COUNT:-0}} ))',
        "# exec: Slurm's SIGTERM reaches the worker itself, which checkpoints and leaves",
        f'exec {shlex.join(worker_argv(s))} --worker-index "$index"',
        "",
    ]
    return "\n".join(lines)


def script_path(s: SlurmSettings) -> Path:
    return Path(s.folder) / f"{s.job_name}.sbatch"


def submit(text: str, s: SlurmSettings) -> str:
    """Write the script into ``s.folder`` and submit it with sbatch; returns the job id."""
    sbatch = require_command("sbatch", SBATCH_FIX)
    path = script_path(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the storage URL may hold a password: the script is for its owner only
    path.touch(mode=0o600)
    path.write_text(text)
    try:
        done = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        raise LaunchError("sbatch did not answer in 120 s; check the cluster with `sinfo`, "
                          f"then submit {path} by hand") from None
    if done.returncode != 0:
        why = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}")
        raise LaunchError(f"sbatch refused {path}: {' '.join(why.split())}")
    # --parsable prints "jobid" or "jobid;cluster"
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise LaunchError(f"sbatch printed {done.stdout.strip()!r}, not a job id; check "
                          f"`squeue -u $USER` before submitting {path} again")
    return job_id
