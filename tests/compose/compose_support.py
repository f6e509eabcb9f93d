"""The compose project under test: ``docker-compose`` with compose.yaml and the test override
(stand-in images, host networking, 127.0.0.1 ports), and what Docker says of its containers."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ("-f", str(ROOT / "compose.yaml"), "-f", str(ROOT / "docker" / "compose.test.yaml"))
PROJECT = os.environ.get("RETINANET_CI_COMPOSE_PROJECT", "retinanet-ci")
SERVICE_USER = "10001:10001"


def resolve(env: Mapping[str, str], out: Path) -> Path:
    """compose.yaml with the override, as docker-compose itself resolves them, written to
    ``out``: the one file the stack runs from. Port publishing is dropped where the network is
    the host's (Compose 1.29 refuses both together, and an override can only add ports)."""
    rendered = subprocess.run(
        ["docker-compose", *FILES, "config"],
        capture_output=True, text=True, cwd=ROOT, env=dict(env), check=True,
    ).stdout  # fmt: skip
    config: dict[str, Any] = yaml.safe_load(rendered)
    for service in config["services"].values():
        if service.get("network_mode") == "host":
            service.pop("ports", None)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@dataclass(frozen=True)
class Stack:
    """A compose project of this repository, up with the ``cpu`` profile."""

    env: Mapping[str, str]
    url: str
    file: Path
    """compose.yaml and the override, resolved (:func:`resolve`)."""

    def compose(self, *args: str, timeout_s: float = 600) -> str:
        """``docker-compose ARGS`` on this project; its stdout, or an error with its output."""
        out = subprocess.run(
            ["docker-compose", "-p", PROJECT, "-f", str(self.file), "--profile", "cpu", *args],
            capture_output=True, text=True, cwd=ROOT, env=dict(self.env), timeout=timeout_s,
        )  # fmt: skip
        if out.returncode != 0:
            raise AssertionError(
                f"docker-compose {' '.join(args)}:\n{out.stdout}{out.stderr}\n{self._tail()}"
            )
        return out.stdout

    def _tail(self) -> str:
        """The last lines every container wrote (what made a service fail to start)."""
        out = subprocess.run(
            ["docker-compose", "-p", PROJECT, "-f", str(self.file), "--profile", "cpu", "logs",
             "--no-color", "--tail", "25"],
            capture_output=True, text=True, cwd=ROOT, env=dict(self.env), timeout=120,
        )  # fmt: skip
        return out.stdout

    def container(self, service: str) -> str:
        """The id of ``service``'s container (running or exited); '' when it has none."""
        return self.compose("ps", "-q", "--all", service).strip()

    def inspect(self, service: str) -> dict[str, Any]:
        container = self.container(service)
        assert container, f"{service} has no container"
        found: list[dict[str, Any]] = json.loads(docker("inspect", container))
        return found[0]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service)


def docker(*args: str, timeout_s: float = 120) -> str:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout_s)
    assert out.returncode == 0, f"docker {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return out.stdout


def changed_paths(container: str) -> list[str]:
    """What ``container`` wrote to its image's filesystem (``docker diff``: volumes excluded)."""
    return [line.split(" ", 1)[1] for line in docker("diff", container).splitlines() if line]
