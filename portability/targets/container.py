"""kind: container — a container per target per session, on the Docker Engine API (docker-py)."""

from __future__ import annotations

from dataclasses import dataclass

from portability.targets.base import Spec


@dataclass(frozen=True, kw_only=True)
class ContainerSpec(Spec):
    kind: str = "container"
    #: Image to run; required unless ``build`` is given.
    image: str | None = None
    #: A build context directory, or a Dockerfile path (its directory is the context).
    build: str | None = None
    #: Docker Engine URL; default DOCKER_HOST, else the local socket. Podman: its compat socket.
    engine_url: str | None = None
    user: str | None = None
    network: str = "none"
    privileged: bool = False
