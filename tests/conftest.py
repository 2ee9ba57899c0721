"""Shared fixtures. Integration tests use real engines; a missing engine skips only outside CI."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

IN_CI = os.environ.get("CI") == "true"

# PYTEST_ADDOPTS (set by .ci/run: -q and friends) has been read by this run already; the pytest
# runs that tests start in subprocesses must see only their own options (a -q there would
# cancel their -v).
os.environ.pop("PYTEST_ADDOPTS", None)


def require(condition: bool, reason: str) -> None:
    """Skip on a developer machine without the engine; in CI a missing engine is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        require(False, f"no Docker Engine reachable ({exc})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:
    """The no-Python, no-glibc image (built from Debian's busybox-static in about a second)."""
    from portability import images

    name = "portability/busybox:latest"
    images.build(name, client=docker_client, progress=lambda *a: None)
    return name


@pytest.fixture(scope="session")
def debian_image(docker_client) -> str:
    """A Debian 12 image with Python; `portability images build` (run by .ci/setup.sh) makes it."""
    from portability import images

    name = "portability/debian:12"
    require(images.exists(name, client=docker_client),
            f"image {name} is missing (run `portability images build {name}`)")
    return name


@pytest.fixture
def started():
    """start(target) starts a target and stops it after the test, whatever happened."""
    targets = []

    def start(target):
        targets.append(target)
        target.start()
        return target

    yield start
    for target in targets:
        target.stop()
