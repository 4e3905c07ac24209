"""docker-compose.yml and .env.example checked against the real project: Compose's own validator, the
Dockerfile's stages, the `sgft` CLI's sub-commands and the fields of core.settings.Settings."""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from typing import Any

import pytest

from tests.deploy.project import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    SGFT,
    compose_config,
    compose_yaml,
    dockerfile_stages,
    read_env_file,
)

STORES = {"postgres", "redis", "minio"}
ONE_SHOTS = {"migrate", "minio-init"}
SERVICE_COMMANDS = {
    "migrate": ["sgft", "migrate"],
    "api": ["sgft", "serve"],
    "worker-cpu": ["sgft", "worker", "--queues", "cpu"],
    "worker-gpu": ["sgft", "worker", "--queues", "gpu"],
    "reaper": ["sgft", "reaper"],
    "infer": ["sgft", "infer"],
}
WORKER_IMAGE = {"worker-cpu", "worker-gpu", "infer"}  # torch only where needed


@lru_cache(maxsize=2)
def _config(*profiles: str) -> dict[str, Any]:
    return compose_config(*profiles)


def _settings_fields() -> set[str]:
    try:
        from core.settings import Settings
    except ImportError as exc:  # written concurrently by the service engineer
        pytest.skip(f"core.settings.Settings is not importable yet: {exc}")
    return {f"SGFT_{name.upper()}" for name in Settings.model_fields}


def test_compose_config_is_valid_with_and_without_the_gpu_profile() -> None:
    default = set(_config()["services"])
    with_gpu = set(_config("gpu")["services"])
    expected = STORES | ONE_SHOTS | {"api", "worker-cpu", "reaper", "infer"}
    assert default == expected, f"plain `docker compose up` starts {sorted(default)}"
    assert with_gpu == expected | {"worker-gpu"}


def test_services_run_the_expected_commands_from_the_right_image() -> None:
    services = _config("gpu")["services"]
    stages = dockerfile_stages()
    for name, command in SERVICE_COMMANDS.items():
        service = services[name]
        assert service["command"] == command, f"{name}: command {service['command']}"
        target = service["build"]["target"]
        assert target in stages, f"{name}: build target {target!r} is not a Dockerfile stage"
        wanted = "worker" if name in WORKER_IMAGE else "api"
        assert target == wanted, f"{name} should run the {wanted} image (torch only where needed)"
        assert service["image"].startswith(f"sgft-{wanted}:")


def test_dependencies_exist_and_everything_waits_for_migrate() -> None:
    services = _config("gpu")["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on undefined service {dependency!r}"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker-cpu", "worker-gpu", "reaper", "infer"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["minio-init"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no", f"{name} is a one-shot"


def test_stores_have_named_volumes_and_health_checks() -> None:
    config = _config()
    for name in STORES:
        service = config["services"][name]
        assert service["image"].split(":")[-1] not in ("", "latest"), f"{name}: pin the image tag"
        assert service["healthcheck"]["test"], f"{name}: no health check"
        volumes = [v for v in service["volumes"] if v["type"] == "volume"]
        assert volumes and all(v["source"] in config["volumes"] for v in volumes), f"{name}: named volume"


def test_gpu_worker_reserves_an_nvidia_gpu_in_the_gpu_profile() -> None:
    raw = compose_yaml()["services"]["worker-gpu"]
    assert raw["profiles"] == ["gpu"]
    devices = _config("gpu")["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in _config("gpu")["services"]["worker-cpu"]


def test_the_api_reaches_the_infer_service_which_listens_beyond_localhost() -> None:
    services = _config()["services"]
    port = services["infer"]["environment"].get("SGFT_INFER_PORT", "8001")
    assert services["api"]["environment"]["SGFT_INFER_URL"] == f"http://infer:{port}"
    assert services["infer"]["environment"]["SGFT_INFER_HOST"] == "0.0.0.0"
    assert "ports" not in services["infer"], "only the API talks to the inference server"
    assert "/healthz" in " ".join(services["infer"]["healthcheck"]["test"])


def test_artifacts_go_to_the_bucket_minio_init_creates() -> None:
    values, _ = read_env_file()
    url = values["SGFT_ARTIFACTS_URL"]
    assert url.startswith("s3://"), url
    assert url.removeprefix("s3://").split("/")[0] == values["ARTIFACTS_BUCKET"]
    assert values["FSSPEC_S3_ENDPOINT_URL"] == "http://minio:9000"
    init = _config()["services"]["minio-init"]
    assert "mc mb" in " ".join(init["command"])


def test_compose_and_env_example_only_use_real_settings() -> None:
    fields = _settings_fields()
    used = set(re.findall(r"\bSGFT_[A-Z0-9_]+", COMPOSE_FILE.read_text() + ENV_EXAMPLE.read_text()))
    unknown = used - fields
    assert not unknown, f"not fields of core.settings.Settings: {sorted(unknown)}"


def test_env_example_lists_every_setting() -> None:
    values, commented = read_env_file()
    missing = _settings_fields() - set(values) - commented
    assert not missing, f".env.example does not list {sorted(missing)}"


def test_env_example_is_accepted_in_development_and_refused_in_production() -> None:
    _settings_fields()
    from core.settings import Settings

    values, _ = read_env_file()
    env = {k.removeprefix("SGFT_").lower(): v for k, v in values.items() if k.startswith("SGFT_")}
    settings = Settings(**env)  # type: ignore[arg-type]
    assert settings.database_url.startswith("postgresql+psycopg2://")
    assert settings.broker_url.startswith("redis://")
    with pytest.raises(ValueError, match="SGFT_SECRET_KEY"):
        Settings(**{**env, "env": "production"})  # type: ignore[arg-type]


def test_the_database_url_matches_the_postgres_container() -> None:
    values, _ = read_env_file()
    expected = (
        f"postgresql+psycopg2://{values['POSTGRES_USER']}:{values['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{values['POSTGRES_DB']}"
    )
    assert values["SGFT_DATABASE_URL"] == expected
    assert values["AWS_ACCESS_KEY_ID"] == values["MINIO_ROOT_USER"]
    assert values["AWS_SECRET_ACCESS_KEY"] == values["MINIO_ROOT_PASSWORD"]


@lru_cache(maxsize=8)
def _help(sub: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SGFT), *sub, "--help"], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("service", sorted(SERVICE_COMMANDS))
def test_every_sgft_command_is_a_real_cli_command(service: str) -> None:
    if not SGFT.is_file():
        pytest.skip(f"the sgft entry point is not installed at {SGFT} (pip install -e .)")
    command = _config("gpu")["services"][service]["command"]
    assert command[0] == "sgft"
    words = [w for w in command[1:] if not w.startswith("-")]
    sub = words[:1]  # `sgft worker --queues cpu`: the sub-command is the first word
    done = _help(tuple(sub))
    if done.returncode != 0 and "cli.main" in done.stderr and "No module named" in done.stderr:
        pytest.skip("cli/main.py is not written yet (the service engineer's part)")
    assert done.returncode == 0, f"`sgft {' '.join(sub)} --help` failed:\n{done.stderr}"
    for option in (w for w in command[1:] if w.startswith("--")):
        assert option in done.stdout, f"`sgft {sub[0]}` has no option {option}:\n{done.stdout}"
