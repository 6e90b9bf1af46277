"""`tuner launch k8s`: every manifest is valid against the Kubernetes API schemas (offline,
kubernetes-validate's copies), every container runs a command line the real CLI accepts, and
the objects refer to each other correctly. No cluster runs here."""

from __future__ import annotations

import re
import stat
import textwrap
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from cli_parse import cli_command, envvars
from typer.testing import CliRunner

from tuner.cli import app
from tuner.errors import LaunchError
from tuner.launch import Claim, K8sSettings, Resources, StorageRef, manifests, to_yaml
from tuner.launch.k8s import postgres_url

ROOT = Path(__file__).resolve().parent.parent
# the oldest Kubernetes still supported by its major clouds, and the newest schemas shipped
VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]
URL = "postgresql://tuner:pw@db.internal:5432/tuner"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

runner = CliRunner()

LAUNCHES = {
    "plain": K8sSettings(study="mnist_mlp", image="reg/tuner:1", storage=StorageRef(url=URL)),
    "gpus, a new claim, postgres": K8sSettings(
        study="mnist_mlp", image="reg/tuner:1", workers=8,
        storage=StorageRef(url=postgres_url("mnist_mlp", "pw")), postgres_password="pw",
        resources=Resources(gpus=1, cpus=4, mem="16Gi"),
        checkpoints=Claim(size="50Gi", storage_class="nfs"), grace_s=900),
    "a file, an existing secret, no dashboard": K8sSettings(
        study="digits_mlp", image="reg/tuner:1", storage=StorageRef(secret="db", key="dsn"),
        study_file=(ROOT / "search_spaces" / "digits_mlp.yaml").read_text(),
        checkpoints=Claim(name="shared-ckpt"), dashboard=False, namespace="hpo"),
    "a public dashboard": K8sSettings(study="s", image="reg/tuner:1", storage=StorageRef(url=URL),
                                      dashboard_service="LoadBalancer"),
}


def by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def pod_specs(docs: list[dict]) -> list[dict]:
    return [d["spec"]["template"]["spec"] for d in docs
            if d["kind"] in ("Job", "Deployment", "StatefulSet")]


def worker_pod(docs: list[dict]) -> dict:
    (job,) = by_kind(docs)["Job"]
    return job["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("launch", LAUNCHES)
def test_every_manifest_is_valid_against_the_api_schemas(launch, version):
    for doc in manifests(LAUNCHES[launch]):
        # strict: an unknown or misspelled field is an error, as kubectl's server-side check
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_would_catch_a_mistake():
    (job,) = by_kind(manifests(LAUNCHES["plain"]))["Job"]
    job["spec"]["template"]["spec"]["containers"][0]["comand"] = ["tuner"]
    with pytest.raises(kubernetes_validate.ValidationError, match="comand"):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("launch", LAUNCHES)
def test_every_tuner_container_runs_a_command_the_cli_accepts(launch):
    for pod in pod_specs(manifests(LAUNCHES[launch])):
        for c in pod["containers"]:
            if c.get("command", [""])[0] != "tuner":  # postgres runs its image's own
                continue
            env = {e["name"] for e in c["env"]}
            # $(VAR) is expanded by Kubernetes from the container's own env
            for var in re.findall(r"\$\((\w+)\)", " ".join(c["command"])):
                assert var in env, f"{c['name']} uses $({var}) which it does not define"
            argv = [re.sub(r"\$\(\w+\)", "0", a) for a in c["command"]]
            command = cli_command(argv)
            # the storage URL comes from the Secret, as the option's env var
            assert "TUNER_STORAGE" in env and "TUNER_STORAGE" in envvars(command)
            assert "--storage" not in argv


def test_workers_are_an_indexed_job_whose_dead_pods_are_replaced():
    s = LAUNCHES["gpus, a new claim, postgres"]
    (job,) = by_kind(manifests(s))["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 8
    assert spec["backoffLimit"] >= 8  # room to replace every worker at least once
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    # evicted or preempted pods are replaced without using up the backoff limit
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "Ignore" and rule["onPodConditions"][0]["type"] == "DisruptionTarget"
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 900
    (worker,) = pod["containers"]
    argv = worker["command"]
    assert argv[argv.index("--worker-index") + 1] == "$(JOB_COMPLETION_INDEX)"
    index = next(e for e in worker["env"] if e["name"] == "JOB_COMPLETION_INDEX")
    assert "job-completion-index" in index["valueFrom"]["fieldRef"]["fieldPath"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in worker["env"]


def test_no_gpu_asked_no_gpu_limit():
    worker = worker_pod(manifests(LAUNCHES["plain"]))["containers"][0]
    assert "nvidia.com/gpu" not in str(worker["resources"])


def test_checkpoints_go_to_one_shared_claim():
    docs = manifests(LAUNCHES["gpus, a new claim, postgres"])
    (claim,) = by_kind(docs)["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts it
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "nfs"
    pod = worker_pod(docs)
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    argv = pod["containers"][0]["command"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert argv[argv.index("--checkpoint-dir") + 1] == mounts[volume["name"]]
    # fsGroup: the non-root worker can write to the claim
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == 1000


def test_an_existing_claim_is_referenced_not_written():
    docs = manifests(LAUNCHES["a file, an existing secret, no dashboard"])
    assert "PersistentVolumeClaim" not in by_kind(docs)
    claims = [v["persistentVolumeClaim"]["claimName"] for v in worker_pod(docs)["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["shared-ckpt"]


@pytest.mark.parametrize("launch", LAUNCHES)
def test_every_secret_reference_names_a_written_secret_or_the_given_one(launch):
    s = LAUNCHES[launch]
    docs = manifests(s)
    written = {(d["metadata"]["name"], k) for d in by_kind(docs).get("Secret", [])
               for k in d["stringData"]}
    refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for pod in pod_specs(docs) for c in pod["containers"] for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs
    if s.storage.url is None:
        assert not written and refs == {(s.storage.secret, s.storage.key)}
    else:
        assert refs <= written


def test_the_url_lives_only_in_the_secret():
    docs = manifests(LAUNCHES["plain"])
    (secret,) = by_kind(docs)["Secret"]
    assert secret["stringData"] == {"url": URL}
    assert sum(URL in yaml.safe_dump(d) for d in docs) == 1


def test_dashboard_is_inside_the_cluster_unless_asked():
    docs = by_kind(manifests(LAUNCHES["plain"]))
    (deployment,) = docs["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = container["command"]
    assert argv[:2] == ["tuner", "dashboard"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # inside the pod only
    port = int(argv[argv.index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    (service,) = [d for d in docs["Service"] if d["metadata"]["name"].endswith("-dashboard")]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    public = by_kind(manifests(LAUNCHES["a public dashboard"]))["Service"]
    assert [s["spec"]["type"] for s in public] == ["LoadBalancer"]


def test_postgres_for_trying_it_out():
    s = LAUNCHES["gpus, a new claim, postgres"]
    docs = by_kind(manifests(s))
    (sts,) = docs["StatefulSet"]
    (pg_service,) = [d for d in docs["Service"] if d["metadata"]["name"].endswith("-postgres")]
    assert pg_service["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == \
        pg_service["metadata"]["name"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] == ["ReadWriteOnce"]
    (secret,) = docs["Secret"]
    url = secret["stringData"]["url"]
    assert f"@{pg_service['metadata']['name']}:5432/" in url
    assert f":{secret['stringData']['postgres-password']}@" in url
    # workers and dashboard wait for the database instead of failing at their first connect
    for pod in (worker_pod(manifests(s)), docs["Deployment"][0]["spec"]["template"]["spec"]):
        (init,) = pod["initContainers"]
        assert "pg_isready" in " ".join(init["command"])


def test_a_study_file_travels_in_a_config_map_and_the_first_worker_creates_the_study():
    s = LAUNCHES["a file, an existing secret, no dashboard"]
    docs = manifests(s)
    (config,) = by_kind(docs)["ConfigMap"]
    assert config["data"]["study.yaml"] == s.study_file
    pod = worker_pod(docs)
    argv = pod["containers"][0]["command"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    assert argv[2] == f"{mounts[volume['name']]}/study.yaml"
    assert "Deployment" not in by_kind(docs)
    assert all(d["metadata"]["namespace"] == "hpo" for d in docs)


@pytest.mark.parametrize("launch", LAUNCHES)
def test_names_are_dns_labels(launch):
    for d in manifests(LAUNCHES[launch]):
        assert DNS_LABEL.match(d["metadata"]["name"]) and len(d["metadata"]["name"]) <= 63, d["metadata"]


def test_settings_say_what_is_missing():
    with pytest.raises(LaunchError, match="--image is required"):
        K8sSettings(study="s", image=None, storage=StorageRef(url=URL))
    with pytest.raises(LaunchError, match="--storage URL"):
        K8sSettings(study="s", image="i")
    with pytest.raises(LaunchError, match="--dashboard-service"):
        K8sSettings(study="s", image="i", storage=StorageRef(url=URL), dashboard_service="Public")


# ---- the command line -------------------------------------------------------------------------
def invoke(*args: str):
    return runner.invoke(app, ["launch", "k8s", *args])


def test_prints_the_manifests_as_one_yaml_stream():
    result = invoke("mnist_mlp", "--image", "reg/tuner:1", "--storage", URL, "--workers", "3")
    assert result.exit_code == 0, result.output
    docs = list(yaml.safe_load_all(result.output))
    assert [d["kind"] for d in docs] == ["Secret", "Job", "Deployment", "Service"]
    assert docs == manifests(K8sSettings(study="mnist_mlp", image="reg/tuner:1", workers=3,
                                         storage=StorageRef(url=URL)))
    assert result.output == to_yaml(docs)


def test_writes_one_file_per_object_and_keeps_the_secret_private(tmp_path):
    out = tmp_path / "k8s"
    result = invoke(str(ROOT / "search_spaces" / "digits_mlp.yaml"), "--image", "reg/tuner:1",
                    "--with-postgres", "--checkpoint-size", "10Gi", "--out", str(out))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names[0].startswith("01-secret-") and len(names) == 8, names
    assert "kubectl apply -f" in result.output and "port-forward" in result.output
    secret = out / names[0]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for path in out.iterdir():
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), VERSIONS[-1], strict=True)
    # a fresh password each launch, in the URL the pods get
    url = yaml.safe_load(secret.read_text())["stringData"]["url"]
    assert url.startswith("postgresql://tuner:") and "@tuner-digits-mlp-postgres:5432/tuner" in url


def test_without_an_image_it_is_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "k8s"
    result = invoke("mnist_mlp", "--storage", URL, "--out", str(out))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--image" in lines[0], result.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--storage", "sqlite:///tuner.db"], "pods share no SQLite file"),
    (["--storage", "postgresql://u@localhost/tuner"], "inside a pod is the pod itself"),
    (["--storage", URL, "--with-postgres"], "--storage and --with-postgres"),
    (["--storage", URL, "--storage-secret", "db"], "--storage and --storage-secret"),
    ([], "--storage URL"),
    (["--storage", URL, "--workers", "0"], "--workers 0"),
    (["--storage", URL, "--dashboard-service", "Public"], None),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    out = tmp_path / "k8s"
    result = invoke("s", "--image", "reg/tuner:1", "--out", str(out), *args)
    assert result.exit_code == 2, result.output
    if message is not None:  # (a bad choice is Typer's own usage error)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_a_study_file_naming_a_file_of_code_is_refused(tmp_path):
    (tmp_path / "fit.py").write_text("def fit(params, ctx):\n    return 0.0\n")
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent("""
        name: s
        trainer: fit.py:fit
        task: regression
        metric: mse
        space: {x: {type: float, low: 0.0, high: 1.0}}
    """))
    result = invoke(str(study), "--image", "reg/tuner:1", "--storage", URL)
    assert result.exit_code == 2
    assert "trainer: fit.py:fit" in result.output and "package.module:function" in result.output
