"""Kubernetes: the manifests of one study's workers, its dashboard, and optionally a database.

    settings = K8sSettings(study="mnist_mlp", image="registry.example/tuner:1",
                           storage=StorageRef(url="postgresql://tuner:pw@db/tuner"), workers=8,
                           resources=Resources(gpus=1, cpus=4, mem="16Gi"))
    docs = manifests(settings)        # plain dicts, in the order to apply them
    print(to_yaml(docs))              # or write(docs, folder): one file each

- Workers are an Indexed Job: ``completions = parallelism = workers``, each pod one
  ``tuner worker`` with ``--worker-index`` from its completion index. A pod that dies (OOM,
  kill -9, a lost node) fails and is replaced, up to ``backoffLimit``; an evicted or
  preempted pod is replaced without counting against it. SIGTERM (a drain, ``kubectl delete``)
  lets the worker finish its epoch and checkpoint within ``terminationGracePeriodSeconds``.
- The storage URL reaches every pod from a Secret, never from the manifests' command lines.
- Checkpoints go to one shared ReadWriteMany claim, so a retried trial resumes on any node.
- The dashboard is a Deployment behind a ClusterIP Service: it listens on 0.0.0.0 inside its
  pod, reachable in the cluster (``kubectl port-forward``) and beyond it only when asked.
- ``postgres_password`` adds a one-replica PostgreSQL StatefulSet for trying tuner out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import LaunchError
from tuner.launch.common import (
    SECRET_KEY,
    Resources,
    check_workers,
    device,
    dns_name,
    matches,
    one_line,
    quantity,
    study,
)

Manifest = dict[str, Any]

CHECKPOINTS = "/checkpoints"
DATA = "/data"
STUDY_FILE = "/study/study.yaml"
DASHBOARD_PORT = 8080
POSTGRES_IMAGE = "postgres:16"
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
# the index of an Indexed Job's pod, as the Job controller itself exposes it
_INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
_UID = 1000  # the Dockerfile's `tuner` user


@dataclass(frozen=True)
class StorageRef:
    """Where pods read the storage URL: key ``key`` of Secret ``secret``. With ``url``, the
    Secret is written too; without, it must exist already."""

    secret: str | None = None  # None: <name>-storage
    key: str = "url"
    url: str | None = None


@dataclass(frozen=True)
class Claim:
    """The shared checkpoint volume: an existing ReadWriteMany claim, or one to create."""

    name: str | None = None          # None: <name>-checkpoints
    size: str | None = None          # given: write the PersistentVolumeClaim, e.g. "20Gi"
    storage_class: str | None = None


@dataclass(frozen=True)
class K8sSettings:
    study: str                        # the study's name
    image: str | None                 # an image with tuner installed (the Dockerfile's)
    storage: StorageRef = field(default_factory=StorageRef)
    workers: int = 2
    resources: Resources = field(default_factory=Resources)
    study_file: str | None = None     # its text: a ConfigMap, and the first worker creates the study
    checkpoints: Claim = field(default_factory=Claim)
    grace_s: int = 300                # SIGTERM to SIGKILL: longer than one epoch plus its checkpoint
    dashboard: bool = True
    dashboard_service: str = "ClusterIP"
    postgres_password: str | None = None  # given: a PostgreSQL StatefulSet to try tuner with
    namespace: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        # every value below lands in a manifest field that the API server validates: refuse
        # here what it would refuse there (or what would change the manifest's meaning)
        require_image(self.image)
        check_workers(self.workers)
        study(self.study)
        device(self.device)
        dns_name(self.namespace, "--namespace", label=True)
        dns_name(self.storage.secret, "--storage-secret")
        matches(self.storage.key, SECRET_KEY, "--storage-secret-key", "a Secret key: letters, "
                "digits, '-', '_' and '.'")
        dns_name(self.checkpoints.name, "--checkpoint-claim")
        dns_name(self.checkpoints.storage_class, "--storage-class")
        quantity(self.resources.mem, "--mem")
        quantity(self.checkpoints.size, "--checkpoint-size")
        if self.grace_s < 1:
            raise LaunchError(f"--grace-period {self.grace_s}: give the seconds one epoch and "
                              "its checkpoint take, at least 1")
        if self.dashboard_service not in SERVICE_TYPES:
            raise LaunchError(f"--dashboard-service {self.dashboard_service}: use one of "
                              f"{', '.join(SERVICE_TYPES)}")
        if self.storage.url is None and self.storage.secret is None:
            raise LaunchError("give the study database: --storage URL (written into a Secret), "
                              "--storage-secret NAME (an existing one), or --with-postgres")

    @property
    def name(self) -> str:
        return prefix(self.study)

    @property
    def secret(self) -> str:
        return self.storage.secret or f"{self.name}-storage"

    @property
    def claim(self) -> str:
        return self.checkpoints.name or f"{self.name}-checkpoints"


def require_image(image: str | None) -> str:
    if image and (one_line(image, "--image") and any(c.isspace() for c in image)):
        raise LaunchError(f"--image {image!r}: an image reference has no spaces; e.g. "
                          "registry.example/tuner:1")
    if not image:
        raise LaunchError("--image is required: an image with tuner installed, e.g. "
                          "`docker build -t REGISTRY/tuner:TAG .` and push it")
    return image


def prefix(study: str) -> str:
    """The name every object of the study starts with: ``tuner-<study>`` as a DNS label."""
    return dns_label(f"tuner-{study}", limit=40)  # room for the suffixes


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a Kubernetes name: lower case letters, digits and '-'."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:limit].rstrip("-")
    if not label:
        raise LaunchError(f"{text!r} gives no Kubernetes name; use a study name with letters "
                          "or digits")
    return label


def manifests(s: K8sSettings) -> list[Manifest]:
    """Every object of the launch, in the order to apply them."""
    docs: list[Manifest] = []
    if s.storage.url is not None:
        docs.append(_secret(s))
    if s.study_file is not None:
        docs.append(_meta(s, "v1", "ConfigMap", f"{s.name}-study", "worker")
                    | {"data": {"study.yaml": s.study_file}})
    if s.checkpoints.size is not None:
        docs.append(_claim(s))
    if s.postgres_password is not None:
        docs += _postgres(s)
    docs.append(_workers(s))
    if s.dashboard:
        docs += _dashboard(s)
    return docs


def worker_command(s: K8sSettings) -> list[str]:
    """The worker container's command line (the storage URL comes as TUNER_STORAGE)."""
    study = STUDY_FILE if s.study_file is not None else s.study
    return ["tuner", "worker", study, "--worker-index", "$(JOB_COMPLETION_INDEX)",
            "--device", s.device, "--checkpoint-dir", CHECKPOINTS, "--data-dir", DATA]


def dashboard_command() -> list[str]:
    # 0.0.0.0 inside the pod only: the Service decides who reaches it
    return ["tuner", "dashboard", "--host", "0.0.0.0", "--port", str(DASHBOARD_PORT)]


def postgres_url(study: str, password: str) -> str:
    """The URL of the StatefulSet's database (``postgres_password``), inside the cluster."""
    return f"postgresql://tuner:{password}@{prefix(study)}-postgres:5432/tuner"


def to_yaml(docs: list[Manifest]) -> str:
    return "".join(f"---\n{yaml.safe_dump(d, sort_keys=False)}" for d in docs)


def write(docs: list[Manifest], folder: str | Path) -> list[Path]:
    """One file per object, numbered in apply order (``kubectl apply -f FOLDER``)."""
    from tuner.launch.common import out_folder

    folder = out_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(docs, 1):
        path = folder / f"{i:02d}-{d['kind'].lower()}-{d['metadata']['name']}.yaml"
        if d["kind"] == "Secret":  # it holds the database password
            path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        paths.append(path)
    return paths


# ---- the objects --------------------------------------------------------------------------
def _labels(s: K8sSettings, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tuner", "app.kubernetes.io/instance": s.name,
            "app.kubernetes.io/component": component}


def _meta(s: K8sSettings, api: str, kind: str, name: str, component: str) -> Manifest:
    meta: dict[str, Any] = {"name": name, "labels": _labels(s, component)}
    if s.namespace:
        meta["namespace"] = s.namespace
    return {"apiVersion": api, "kind": kind, "metadata": meta}


def _secret(s: K8sSettings) -> Manifest:
    data = {s.storage.key: s.storage.url}
    if s.postgres_password is not None:
        data["postgres-password"] = s.postgres_password
    return _meta(s, "v1", "Secret", s.secret, "storage") | {"type": "Opaque", "stringData": data}


def _claim(s: K8sSettings) -> Manifest:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"],  # every worker's node mounts it
                            "resources": {"requests": {"storage": s.checkpoints.size}}}
    if s.checkpoints.storage_class:
        spec["storageClassName"] = s.checkpoints.storage_class
    return _meta(s, "v1", "PersistentVolumeClaim", s.claim, "checkpoints") | {"spec": spec}


def _storage_env(s: K8sSettings) -> dict[str, Any]:
    return {"name": "TUNER_STORAGE",
            "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.storage.key}}}


def _pod_security() -> dict[str, Any]:
    # fsGroup: the shared checkpoint volume is writable by the non-root user
    return {"runAsNonRoot": True, "runAsUser": _UID, "runAsGroup": _UID, "fsGroup": _UID}


def _wait_for_postgres(s: K8sSettings) -> list[dict[str, Any]]:
    if s.postgres_password is None:
        return []
    return [{"name": "wait-for-postgres", "image": POSTGRES_IMAGE,
             "command": ["sh", "-c", f"until pg_isready -h {s.name}-postgres -p 5432; do sleep 2; done"]}]


def _workers(s: K8sSettings) -> Manifest:
    r = s.resources
    requests: dict[str, Any] = {"cpu": str(r.cpus)}
    limits: dict[str, Any] = {}
    if r.mem is not None:
        requests["memory"] = limits["memory"] = r.mem
    if r.gpus:
        limits["nvidia.com/gpu"] = r.gpus  # extended resources are set as limits
    resources: dict[str, Any] = {"requests": requests} | ({"limits": limits} if limits else {})
    mounts = [{"name": "checkpoints", "mountPath": CHECKPOINTS}, {"name": "data", "mountPath": DATA}]
    volumes: list[dict[str, Any]] = [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": s.claim}},
        {"name": "data", "emptyDir": {}},  # each pod loads (or downloads) its own data
    ]
    if s.study_file is not None:
        mounts.append({"name": "study", "mountPath": str(Path(STUDY_FILE).parent), "readOnly": True})
        volumes.append({"name": "study", "configMap": {"name": f"{s.name}-study"}})
    container = {
        "name": "worker",
        "image": s.image,
        "command": worker_command(s),
        "env": [
            # set as the Job controller would: $(JOB_COMPLETION_INDEX) in the command reads it
            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": _INDEX_ANNOTATION}}},
            _storage_env(s),
            {"name": "OMP_NUM_THREADS", "value": str(r.cpus)},
        ],
        "resources": resources,
        "volumeMounts": mounts,
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed pod is replaced by a new one (podFailurePolicy needs it)
        "terminationGracePeriodSeconds": s.grace_s,
        "securityContext": _pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if init := _wait_for_postgres(s):
        pod["initContainers"] = init
    spec = {
        "completionMode": "Indexed",
        "completions": s.workers,
        "parallelism": s.workers,
        # pods that died are replaced: up to three times per worker before the Job gives up
        "backoffLimit": 3 * s.workers,
        "podFailurePolicy": {"rules": [
            # an evicted or preempted pod is replaced without counting as a failure
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {"metadata": {"labels": _labels(s, "worker")}, "spec": pod},
    }
    return _meta(s, "batch/v1", "Job", f"{s.name}-workers", "worker") | {"spec": spec}


def _dashboard(s: K8sSettings) -> list[Manifest]:
    labels = _labels(s, "dashboard")
    pod: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [{
            "name": "dashboard",
            "image": s.image,
            "command": dashboard_command(),
            "env": [_storage_env(s)],
            "ports": [{"name": "http", "containerPort": DASHBOARD_PORT}],
            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        }],
    }
    if init := _wait_for_postgres(s):
        pod["initContainers"] = init
    deployment = _meta(s, "apps/v1", "Deployment", f"{s.name}-dashboard", "dashboard") | {"spec": {
        "replicas": 1,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }}
    service = _meta(s, "v1", "Service", f"{s.name}-dashboard", "dashboard") | {"spec": {
        "type": s.dashboard_service,  # ClusterIP unless asked: the dashboard has no login
        "selector": labels,
        "ports": [{"name": "http", "port": DASHBOARD_PORT, "targetPort": "http"}],
    }}
    return [deployment, service]


def _postgres(s: K8sSettings) -> list[Manifest]:
    labels = _labels(s, "postgres")
    name = f"{s.name}-postgres"
    container = {
        "name": "postgres",
        "image": POSTGRES_IMAGE,
        "env": [
            {"name": "POSTGRES_USER", "value": "tuner"},
            {"name": "POSTGRES_DB", "value": "tuner"},
            {"name": "POSTGRES_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": s.secret, "key": "postgres-password"}}},
            # a fresh volume's root holds lost+found, which initdb refuses
            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
        ],
        "ports": [{"name": "postgres", "containerPort": 5432}],
        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "tuner", "-d", "tuner"]},
                           "periodSeconds": 5},
        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
    }
    statefulset = _meta(s, "apps/v1", "StatefulSet", name, "postgres") | {"spec": {
        "serviceName": name,
        "replicas": 1,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        "volumeClaimTemplates": [{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
        }],
    }}
    service = _meta(s, "v1", "Service", name, "postgres") | {"spec": {
        "clusterIP": "None",  # headless: the StatefulSet's pod, by name, inside the cluster only
        "selector": labels,
        "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}],
    }}
    return [statefulset, service]


# ---- checks of the inputs -------------------------------------------------------------------
def check_url(url: str) -> str:
    """A storage URL that pods can reach: a database server, not a file or this machine."""
    from tuner.launch.common import shareable_url
    from tuner.storage import normalize_url

    shareable_url(url, sqlite_ok=False)
    host = normalize_url(url).host or ""
    if host in ("localhost", "127.0.0.1", "::1") or host.startswith("127."):
        raise LaunchError(f"--storage points at {host}, which inside a pod is the pod itself; "
                          "give the database's address in the cluster, or --with-postgres")
    return url


def study_file(path: str | Path) -> tuple[str, str]:
    """A study file for the ConfigMap: its study's name and its text, once it validates. Its
    own code must come with the image: the ConfigMap carries only the file."""
    from tuner import usercode
    from tuner.config import load_spec

    spec = load_spec(path)
    for role in usercode.ROLES:
        ref = getattr(spec, role, None)
        if isinstance(ref, str) and ".py:" in ref:
            raise LaunchError(f"{role}: {ref} is a file beside the study file, which pods do "
                              "not get; install it in the image as a module and name it as "
                              "package.module:function")
    return spec.name, Path(path).read_text()
