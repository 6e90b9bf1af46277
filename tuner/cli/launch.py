"""``tuner launch``: a study's workers on Slurm or Kubernetes (a sub-app of tuner.cli).

Thin: parse the options, call :mod:`tuner.launch`, print. Heavy libraries are imported inside
the commands, so ``tuner --help`` stays fast.
"""

from __future__ import annotations

import secrets
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tuner.cli._common import command_on, out
from tuner.errors import LaunchError
from tuner.settings import DEFAULT_URL as DEFAULT_STORAGE

if TYPE_CHECKING:
    from tuner.config import StudySpec
    from tuner.launch import SlurmSettings

launch_app = typer.Typer(
    help="Launch a study's workers on a cluster: a Slurm job array, or Kubernetes manifests.",
    no_args_is_help=True,
)

command = command_on(launch_app)


def _is_file(study: str) -> bool:
    return study.endswith((".yaml", ".yml"))  # as `tuner worker` tells them apart


Study = Annotated[str, typer.Argument(
    metavar="NAME|FILE", help="Study name, or a study file (YAML) to create the study from.")]
# bounds a scheduler would refuse later (Slurm's MaxArraySize, a node's GPUs and cores)
WorkersOpt = Annotated[int, typer.Option("--workers", "-n", max=10_000,
                                         help="Workers: one task or pod each.")]
Gpus = Annotated[int, typer.Option(min=0, max=64, help="GPUs per worker.")]
Cpus = Annotated[int, typer.Option(min=1, max=1024, help="CPUs per worker (and torch threads).")]
Device = Annotated[str, typer.Option(help="The workers' device: auto, cpu, cuda or cuda:N.")]


# ---- Slurm --------------------------------------------------------------------------------
@command
def slurm(
    study: Study,
    storage: Annotated[str, typer.Option(
        envvar="TUNER_STORAGE", help="The study database, reached from every node: a server URL, "
        "or a SQLite file on a shared file system.")] = DEFAULT_STORAGE,
    workers: WorkersOpt = 2,
    gpus_per_worker: Gpus = 0,
    cpus_per_worker: Cpus = 1,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    time: Annotated[str | None, typer.Option(help="Time limit per task, e.g. 4:00:00 or 1-12.")] = None,
    mem: Annotated[str | None, typer.Option(help="Memory per task, e.g. 16G.")] = None,
    sbatch_line: Annotated[list[str] | None, typer.Option(
        help="One more sbatch option, e.g. --sbatch-line=--qos=high (repeatable).")] = None,
    stop_before: Annotated[int, typer.Option(
        help="Seconds before the time limit that a task gets SIGTERM to checkpoint: longer "
             "than one epoch.")] = 300,
    checkpoint_dir: Annotated[Path | None, typer.Option(
        envvar="TUNER_CHECKPOINT_DIR", help="Checkpoints, on a file system every node shares "
        "[default: beside the SQLite file, else ./tuner_checkpoints].")] = None,
    data_dir: Annotated[Path, typer.Option(envvar="TUNER_DATA_DIR", help="Where datasets live.")
                        ] = Path("data"),
    device: Device = "auto",
    python: Annotated[str | None, typer.Option(help="Python with tuner installed, on the nodes.")
                      ] = None,
    venv: Annotated[Path | None, typer.Option(help="Virtual environment with tuner, on the nodes.")
                    ] = None,
    tuner_command: Annotated[str | None, typer.Option(
        help="The command that runs tuner on the nodes [default: this Python -m tuner].")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the script and the tasks' logs go.")
                       ] = Path("tuner-slurm"),
    dry_run: Annotated[bool, typer.Option(help="Print the script; write and submit nothing.")
                       ] = False,
) -> None:
    """Submit a Slurm job array of workers for a study. Given a study file, the study is
    created here first, with the file's budget; every task joins it."""
    from tuner import api, launch
    from tuner.launch.slurm import SBATCH_FIX

    run_tuner = launch.tuner_command(python, str(venv) if venv else None, tuner_command)
    if not dry_run:
        launch.require_command("sbatch", SBATCH_FIX)
    url = launch.shareable_url(storage, sqlite_ok=True)
    spec = api.as_spec(study) if _is_file(study) else None
    from tuner.storage import checkpoint_folder

    ckpt = Path(checkpoint_folder(url, checkpoint_dir)).absolute()
    settings = launch.SlurmSettings(
        study=spec.name if spec else study, storage=url, folder=str(out_dir.absolute()),
        workers=workers, resources=launch.Resources(gpus_per_worker, cpus_per_worker, mem),
        partition=partition, time=time, stop_before_s=stop_before,
        sbatch_lines=tuple(sbatch_line or ()), checkpoint_dir=str(ckpt),
        data_dir=str(data_dir.absolute()), device=device, tuner=run_tuner)
    text = launch.slurm_script(settings)
    if dry_run:
        sys.stdout.write(text)
        return
    launch.out_folder(out_dir, "--out-dir")  # before the study is created
    created = _prepare_study(spec, settings, data_dir)
    try:
        job = launch.submit(text, settings)
    except LaunchError:
        if created:  # nothing runs it: take it back, so the next launch starts clean
            _delete_study(settings)
        raise
    out().print(f"submitted job array {job}: {workers} workers for study {settings.study}; "
              f"logs in {settings.folder}. Watch with `squeue -j {job}` and `tuner status "
              f"{settings.study} --storage {_display(url)}`", soft_wrap=True)


def _prepare_study(spec: StudySpec | None, s: SlurmSettings, data_dir: Path) -> bool:
    """Create the study from its file (with the file's budget) before any task starts, so
    tasks only join it; or check that the named study exists. True when it was created."""
    from tuner import api

    if spec is None:
        api.load(s.study, storage=s.storage)  # StudyNotFound names the fix
        return False
    api.quiet_logging()
    # the nodes may have GPUs where this machine has none: check the study's code on the CPU
    settings = api.settings(storage=s.storage, device="cpu", data_dir=data_dir,
                            checkpoint_dir=s.checkpoint_dir)
    handle = api.prepare(spec, settings).handle
    if handle.created:
        out().print(f"created study {spec.name} (budget {spec.trials} trials)")
    return handle.created


def _delete_study(s: SlurmSettings) -> None:
    from tuner import study as st
    from tuner.storage import connect

    st.delete(connect(s.storage), s.study)
    out().print(f"deleted study {s.study} again: its job array was not submitted")


def _display(url: str) -> str:
    from tuner.storage import display_url

    return display_url(url)


# ---- Kubernetes ---------------------------------------------------------------------------
class ServiceType(StrEnum):
    ClusterIP = "ClusterIP"
    NodePort = "NodePort"
    LoadBalancer = "LoadBalancer"


@command
def k8s(
    study: Study,
    image: Annotated[str | None, typer.Option(
        help="Image with tuner installed (the Dockerfile's), pushed where the cluster pulls.")] = None,
    workers: WorkersOpt = 2,
    gpus_per_worker: Gpus = 0,
    cpus_per_worker: Cpus = 1,
    mem: Annotated[str | None, typer.Option(help="Memory per worker, e.g. 16Gi.")] = None,
    storage: Annotated[str | None, typer.Option(
        help="The study database as pods reach it; written into a Secret.")] = None,
    storage_secret: Annotated[str | None, typer.Option(
        help="An existing Secret holding the storage URL (instead of --storage).")] = None,
    storage_secret_key: Annotated[str, typer.Option(help="Its key.")] = "url",
    with_postgres: Annotated[bool, typer.Option(
        help="Run a one-replica PostgreSQL for the study too (for trying tuner out).")] = False,
    checkpoint_claim: Annotated[str | None, typer.Option(
        help="ReadWriteMany PersistentVolumeClaim for checkpoints [default: tuner-NAME-checkpoints].")
    ] = None,
    checkpoint_size: Annotated[str | None, typer.Option(
        help="Write the claim too, of this size (e.g. 20Gi); else it must exist.")] = None,
    storage_class: Annotated[str | None, typer.Option(
        help="StorageClass of that claim (one that offers ReadWriteMany).")] = None,
    termination_grace: Annotated[int, typer.Option(
        help="Seconds a stopped pod has to finish its epoch and checkpoint.")] = 300,
    dashboard: Annotated[bool, typer.Option(help="Add the dashboard (Deployment and Service).")] = True,
    dashboard_service: Annotated[ServiceType, typer.Option(
        help="The dashboard's Service type; only ClusterIP keeps it inside the cluster (it has "
             "no login).")] = ServiceType.ClusterIP,
    namespace: Annotated[str | None, typer.Option(help="Namespace of every object.")] = None,
    device: Device = "auto",
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Write one file per object into this folder [default: print them].")] = None,
) -> None:
    """Write the Kubernetes manifests of a study's workers (an Indexed Job), its dashboard,
    and optionally a PostgreSQL. Given a study file, it goes into a ConfigMap and the first
    worker creates the study."""
    from tuner import launch
    from tuner.launch import k8s as kube

    kube.require_image(image)
    sources = [n for n, v in (("--storage", storage), ("--storage-secret", storage_secret),
                              ("--with-postgres", with_postgres)) if v]
    if len(sources) > 1:
        raise LaunchError(f"{' and '.join(sources)} both name the study database; give one")
    if out_dir is not None:
        launch.out_folder(out_dir)  # a file in its place: one line, before anything is written
    name, text = kube.study_file(study) if _is_file(study) else (study, None)
    password = secrets.token_urlsafe(18) if with_postgres else None
    url = kube.check_url(storage) if storage else None
    if password is not None:
        url = kube.postgres_url(name, password)
    ref = launch.StorageRef(secret=storage_secret, key=storage_secret_key, url=url)
    settings = launch.K8sSettings(
        study=name, image=image, storage=ref, workers=workers,
        resources=launch.Resources(gpus_per_worker, cpus_per_worker, mem), study_file=text,
        checkpoints=launch.Claim(checkpoint_claim, checkpoint_size, storage_class),
        grace_s=termination_grace, dashboard=dashboard, dashboard_service=dashboard_service.value,
        postgres_password=password, namespace=namespace, device=device)
    docs = launch.manifests(settings)
    if out_dir is None:
        sys.stdout.write(launch.to_yaml(docs))
        return
    for path in launch.write_manifests(docs, out_dir):
        out().print(f"wrote {path}", soft_wrap=True)
    ns = f" -n {namespace}" if namespace else ""
    out().print(f"apply with `kubectl apply{ns} -f {out_dir}`; dashboard: `kubectl port-forward{ns} "
              f"svc/{settings.name}-dashboard 8080` then http://127.0.0.1:8080", soft_wrap=True)
