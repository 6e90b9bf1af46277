"""docker-compose.yml and the Dockerfile agree with the real CLI and with pyproject.toml.

No Docker engine runs here: the files are parsed, and every ``tuner ...`` command in them is
parsed by the real Typer app (options, types, arguments), without running it."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from cli_parse import cli_command, envvars

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` -> default (``${VAR}`` -> ``x``)."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "x", text)


def as_argv(command: str | list[str]) -> list[str]:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    return [interpolate(a) for a in argv]


def dockerfile_cmds() -> list[list[str]]:
    """Exec-form CMD/ENTRYPOINT lines of the Dockerfile."""
    return [yaml.safe_load(m) for m in re.findall(r"^(?:CMD|ENTRYPOINT)\s+(\[.*\])\s*$",
                                                  DOCKERFILE, re.M)]


def dockerfile_env() -> dict[str, str]:
    block = " ".join(re.findall(r"^ENV\s+((?:.*\\\n)*.*)$", DOCKERFILE, re.M))
    return dict(kv.split("=", 1) for kv in shlex.split(block.replace("\\\n", " ")) if "=" in kv)


@pytest.mark.parametrize("service", [s for s in SERVICES if "command" in SERVICES[s]])
def test_every_compose_command_parses_with_the_real_cli(service):
    argv = as_argv(SERVICES[service]["command"])
    if argv[0] == "tuner":
        cli_command(argv)


def test_dockerfile_commands_parse_with_the_real_cli():
    cmds = dockerfile_cmds()
    assert cmds
    for argv in cmds:
        cli_command(argv)


def test_a_bad_command_would_be_caught():
    with pytest.raises(Exception, match="No such option"):
        cli_command(["tuner", "worker", "s.yaml", "--stroage", "x"])
    with pytest.raises(Exception, match="integer"):
        cli_command(["tuner", "dashboard", "--port", "eighty"])


def test_published_ports_are_loopback_only():
    published = [(name, p) for name, s in SERVICES.items() for p in s.get("ports", [])]
    assert published, "the dashboard should be reachable from the host"
    for name, port in published:
        spec = port if isinstance(port, str) else f"{port.get('host_ip')}:{port.get('published')}"
        assert spec.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    assert not {"postgres", "pgbouncer"} & {name for name, _ in published}


def test_dashboard_serves_the_shared_database():
    argv = as_argv(SERVICES["dashboard"]["command"])
    assert argv[:2] == ["tuner", "dashboard"]
    port = argv[argv.index("--port") + 1]
    assert SERVICES["dashboard"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"  # inside the container only


def test_postgres_has_a_volume_and_a_healthcheck():
    pg = SERVICES["postgres"]
    assert pg["image"] == "postgres:16"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    for name in ("pgbouncer", "dashboard", "worker"):
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_pgbouncer_pools_postgres_by_transaction_for_every_client():
    bouncer = SERVICES["pgbouncer"]
    image, _, tag = bouncer["image"].partition(":")
    assert image == "edoburu/pgbouncer" and tag.startswith("v1.")  # pinned, not latest
    env = {k: interpolate(str(v)) for k, v in bouncer["environment"].items()}
    assert env["POOL_MODE"] == "transaction"
    assert env["DB_HOST"] == "postgres" and "DB_NAME" not in env  # any database passes through
    pg = SERVICES["postgres"]["environment"]
    assert env["DB_USER"] == pg["POSTGRES_USER"]
    assert env["DB_PASSWORD"] == interpolate(pg["POSTGRES_PASSWORD"])
    assert env["AUTH_TYPE"] == "scram-sha-256"  # postgres:16's password_encryption
    # a small pool of server connections for many clients: PostgreSQL allows 100
    assert int(env["DEFAULT_POOL_SIZE"]) < 100 <= int(env["MAX_CLIENT_CONN"])
    assert "pg_isready" in " ".join(bouncer["healthcheck"]["test"])
    # every tuner client goes through it, and waits until it is up
    for name in ("dashboard", "worker"):
        assert SERVICES[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy"
        argv = as_argv(SERVICES[name]["command"])
        storage = argv[argv.index("--storage") + 1]
        assert f"@pgbouncer:5432/{pg['POSTGRES_DB']}" in storage


def test_workers_share_the_study_database_and_checkpoints():
    worker = SERVICES["worker"]
    argv = as_argv(worker["command"])
    assert argv[:3] == ["tuner", "worker", "/study/study.yaml"]
    storage = argv[argv.index("--storage") + 1]
    assert storage.startswith("postgresql://") and "@pgbouncer:5432/" in storage
    assert storage == as_argv(SERVICES["dashboard"]["command"])[3]
    assert interpolate(SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"]) in storage
    volumes = [interpolate(v) for v in worker["volumes"]]
    assert any(v.endswith(":/study/study.yaml:ro") for v in volumes)
    ckpt = worker["environment"]["TUNER_CHECKPOINT_DIR"]
    shared = {v.split(":")[0] for v in volumes if v.split(":")[1] == ckpt}
    assert shared and shared <= set(COMPOSE["volumes"])  # a named volume, shared by all


def test_worker_reserves_a_gpu():
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_environment_variables_are_real_options():
    worker_cmd = cli_command(as_argv(SERVICES["worker"]["command"]))
    known = envvars(worker_cmd)
    for name in SERVICES["worker"]["environment"]:
        assert name in known, f"{name} is not an envvar of `tuner worker`: {sorted(known)}"
    for name in dockerfile_env():
        if name.startswith("TUNER_"):
            assert name in known, name


def test_dockerfile_matches_pyproject():
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE, re.M).group(1)
    assert base == "python:3.11-slim"
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == ">=3.11"
    torch_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch=="))
    pins = re.findall(r"torch==[\w.]+", DOCKERFILE)
    assert pins and set(pins) == {torch_pin}
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repo"


def test_the_image_has_a_c_compiler_for_torch_compile():
    """Triton and Inductor (``compile: true``) build kernels with gcc: slim images lack it."""
    assert re.search(r"apt-get install[^\n]*\bgcc\b", DOCKERFILE)
