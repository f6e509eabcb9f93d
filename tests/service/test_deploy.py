"""The deployment files: compose.yaml is valid for a real Compose implementation and sets only
settings the service understands; the test override changes only images and networking; the
Dockerfile passes hadolint.

``docker-compose config`` (Debian's package, installed by ``scripts/test.sh``) validates and
resolves the files without an engine; the compose stage (tests/compose/) runs them for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {f"RETINANET_{name.upper()}" for name in Settings.model_fields}


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: scripts/test.sh installs it")
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it)")
    return found


OVERRIDE = ROOT / "docker" / "compose.test.yaml"
OVERRIDE_ENV = {
    "RETINANET_CI_POSTGRES_IMAGE": "retinanet-ci/postgres:15-bookworm",
    "RETINANET_CI_PG_PORT": "15432",
    "RETINANET_CI_API_PORT": "18000",
}


def _resolved(profiles: str, *extra: Path) -> dict[str, Any]:
    files = [arg for path in (ROOT / "compose.yaml", *extra) for arg in ("-f", str(path))]
    out = subprocess.run(
        [_tool("docker-compose"), *files, "config"],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, **OVERRIDE_ENV, "COMPOSE_PROFILES": profiles,
             "RETINANET_API_KEY_HASHES": "ab" * 32},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    config: dict[str, Any] = yaml.safe_load(out.stdout)
    return config


def test_compose_is_valid_and_wires_the_services() -> None:
    config = _resolved("gpu")
    services = config["services"]
    assert {"postgres", "migrate", "api", "worker", "worker-cpu"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    # Compose v1 keeps "all"; v2 resolves it to -1 (its spelling of all GPUs).
    assert gpu in (
        [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}],
        [{"driver": "nvidia", "count": -1, "capabilities": ["gpu"]}],
    )
    assert "deploy" not in services["worker-cpu"]
    assert services["worker"]["profiles"] == ["gpu"] and services["worker-cpu"]["profiles"] == [
        "cpu"
    ]
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "worker-cpu"):
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name
        assert any(
            str(v).endswith(":/data") or "/data" in str(v) for v in services[name]["volumes"]
        )
    assert {"data", "pgdata", "torch-cache"} <= set(config["volumes"])
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "TORCH_HOME=/cache/torch" in dockerfile
    for name in ("worker", "worker-cpu"):  # time for SIGTERM's checkpoint before SIGKILL
        assert services[name]["stop_grace_period"] == "2m", name
    env = services["api"]["environment"]
    assert env["RETINANET_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["RETINANET_API_KEY_HASHES"] == "ab" * 32
    # The default profile (from .env) is the GPU worker.
    assert "COMPOSE_PROFILES=gpu" in (ROOT / ".env").read_text().splitlines()


def test_compose_sets_only_known_settings_and_they_validate() -> None:
    raw = yaml.safe_load((ROOT / "compose.yaml").read_text())
    config = _resolved("cpu")
    for name, service in config["services"].items():
        env = service.get("environment") or {}
        unknown = {k for k in env if k.startswith("RETINANET_")} - SETTINGS
        assert not unknown, f"{name} sets unknown settings {unknown}"
        if any(k.startswith("RETINANET_") for k in env):
            # The values as the container would see them, through the real settings model.
            Settings.model_validate(
                {k.removeprefix("RETINANET_").lower(): v for k, v in env.items() if v != ""}
            )
    assert "x-service-env" in raw  # one definition shared by api and workers


def test_dockerfile_passes_hadolint() -> None:
    out = subprocess.run(
        [_tool("hadolint"), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "HEALTHCHECK" in text and "USER 10001" in text


def test_the_test_override_swaps_only_images_and_networking() -> None:
    """docker/compose.test.yaml (the compose stage) may change an image, the network, the
    listening address and port, and the database address that follows; nothing else. With it,
    both profiles still resolve."""
    override = yaml.safe_load(OVERRIDE.read_text())
    allowed_env = {"RETINANET_DATABASE_URL", "HEALTHCHECK_URL", "PGPORT"}
    for name, service in override["services"].items():
        assert set(service) <= {"image", "network_mode", "command", "environment"}, name
        assert service["network_mode"] == "host", name
        assert set(service.get("environment", {})) <= allowed_env, name
    for profiles in ("gpu", "cpu"):
        services = _resolved(profiles, OVERRIDE)["services"]
        api = services["api"]
        assert api["command"][:3] == ["serve", "--host", "127.0.0.1"]
        assert api["environment"]["RETINANET_DATABASE_URL"].endswith("@127.0.0.1:15432/retinanet")
        assert services["postgres"]["image"] == OVERRIDE_ENV["RETINANET_CI_POSTGRES_IMAGE"]
        assert "listen_addresses=127.0.0.1" in services["postgres"]["command"]
    worker = _resolved("gpu", OVERRIDE)["services"]["worker"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
