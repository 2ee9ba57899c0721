"""A container target on Podman, through its Docker-compatible API (`podman system service`).

The fixture runs a private Podman service (own storage, run dir, socket and config under one
temp dir) as a child process, imports the busybox catalog image into it through the API, and
removes everything at the end: containers, the service, the temp dir.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import require
from exec_contract import check_exec_contract
from portability import facts, images
from portability.session import SESSION_LABEL
from portability.targets.container import ContainerSpec, ContainerTarget

pytestmark = pytest.mark.integration

BUSYBOX = "portability/busybox:latest"


def _containers_conf() -> str:
    # Root Podman gives containers nofile=1048576 and nproc=4194304 by default; raising a limit
    # above the service's own hard limit needs CAP_SYS_RESOURCE, which sandboxes and CI runners
    # often lack ("error setting rlimit type 7"). Podman also lowers its own nproc to pid_max.
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    # exit_command_delay: Podman keeps each exec session's conmon 300 s after the exec ends
    # (Docker's exec clean-up delay); the fixture must leave no process behind.
    return (f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
            f'"nproc={nproc}:{nproc}"]\n[engine]\nexit_command_delay = 0\n')


def _processes_under(root: Path) -> list[int]:
    """Processes the service spawned and that left its session (conmon daemonizes)."""
    needle = str(root).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def podman_url(docker_client):
    require(shutil.which("podman") is not None, "podman is not installed (apt-get install podman)")
    # Short path: a unix socket path must fit in 108 bytes; pytest's tmp_path may not.
    root = Path(tempfile.mkdtemp(prefix="pp-podman-"))
    proc = None
    try:
        (root / "containers.conf").write_text(_containers_conf())
        sock = root / "podman.sock"
        url = f"unix://{sock}"
        log = open(root / "service.log", "wb")
        proc = subprocess.Popen(
            ["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
             "--tmpdir", str(root / "tmp"), "--storage-driver", "vfs",
             "--cgroup-manager", "cgroupfs", "--events-backend", "file",
             "system", "service", "--time=0", url],
            env=dict(os.environ, CONTAINERS_CONF=str(root / "containers.conf")),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        client = _wait_for(url, proc, root / "service.log")
        # The same catalog recipe and cached rootfs as for Docker, imported through the API.
        images.build(BUSYBOX, client=client, progress=lambda m: None)
        assert images.status(BUSYBOX, client=client) == "present"
        yield url
        # Whatever a failed test left: no container may outlive the fixture (nor its conmon).
        for container in client.containers.list(all=True):
            container.remove(force=True)
        client.close()
    finally:
        if proc is not None:
            _stop_service(proc)
        for pid in _processes_under(root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        images._remove_tree(root)  # unmounts leftovers first, never deletes through a mount


def _wait_for(url: str, proc: subprocess.Popen, log: Path):
    import docker

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"podman system service exited {proc.returncode}: "
                        f"{log.read_text(errors='replace')[-2000:]}")
        try:
            client = docker.DockerClient(base_url=url, timeout=60)
            client.ping()
            return client
        except docker.errors.DockerException:
            time.sleep(0.2)
    pytest.fail(f"podman system service did not answer on {url} within 30s")


@pytest.fixture
def podman_target(podman_url):
    targets = []

    def make(**kwargs):
        spec = ContainerSpec(name="pod", image=BUSYBOX, engine_url=podman_url, **kwargs)
        target = ContainerTarget(spec, session=f"test-podman-{uuid.uuid4().hex[:8]}",
                                 base_dir=Path.cwd())
        targets.append(target)
        target.start()
        return target

    yield make
    for target in targets:
        target.stop()


def test_podman_engine_reports_itself(podman_url):
    import docker

    client = docker.DockerClient(base_url=podman_url)
    try:
        names = [c.get("Name") for c in client.version().get("Components", [])]
        assert "Podman Engine" in names
    finally:
        client.close()


def test_container_target_on_podman_honours_the_exec_contract(podman_target, tmp_path):
    check_exec_contract(podman_target(), tmp_path)


def test_facts_on_podman(podman_target):
    found = facts.probe(podman_target())
    assert (found.os_id, found.libc, found.python) == ("busybox", None, None)
    assert found.virtualization == "container" and found.shares_host_kernel
    assert found.kernel_release == os.uname().release


def test_podman_container_is_labelled_isolated_and_removed(podman_target, podman_url):
    import docker

    target = podman_target(env={"APP_MODE": "podman"}, workdir="/tmp/work")
    client = docker.DockerClient(base_url=podman_url)
    try:
        info = client.api.inspect_container(target.container_id)
        assert info["Config"]["Labels"][SESSION_LABEL] == target.session
        assert info["HostConfig"]["NetworkMode"] == "none"
        assert target.exec("echo $APP_MODE; pwd").stdout.split() == ["podman", "/tmp/work"]
        assert target.exec("cat /proc/net/dev").stdout.count(":") == 1  # loopback only
        container_id = target.container_id
        target.stop()
        target.stop()  # idempotent
        assert not client.api.containers(all=True, filters={"id": container_id})
    finally:
        client.close()

