"""Local and container targets against the exec contract, on a real Docker Engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from exec_contract import check_exec_contract
from portability import facts
from portability.errors import TargetLost, TargetUnavailable
from portability.session import SESSION_LABEL
from portability.targets.container import ContainerSpec, ContainerTarget, clean_stale
from portability.targets.local import LocalSpec, LocalTarget

pytestmark = pytest.mark.integration


def container(image, name="c", **kwargs):
    spec = ContainerSpec(name=name, image=image, **kwargs)
    return ContainerTarget(spec, session="test-session", base_dir=Path.cwd())


def test_local_exec_contract(started, tmp_path):
    target = started(LocalTarget(LocalSpec(name="local"), session="t", base_dir=Path.cwd()))
    check_exec_contract(target, tmp_path)


def test_busybox_container_exec_contract(started, busybox_image, tmp_path):
    check_exec_contract(started(container(busybox_image)), tmp_path)


def test_debian_container_exec_contract_and_facts(started, debian_image, tmp_path):
    target = started(container(debian_image))
    check_exec_contract(target, tmp_path)
    found = facts.probe(target)
    assert (found.os_id, found.os_version_id, found.libc) == ("debian", "12", "glibc")
    assert found.python and found.python.startswith("3.11")
    assert found.virtualization == "container" and found.shares_host_kernel


def test_container_is_labelled_isolated_and_removed(started, busybox_image, docker_client):
    target = started(container(busybox_image))
    info = docker_client.api.inspect_container(target.container_id)
    assert info["Config"]["Labels"][SESSION_LABEL] == "test-session"
    assert info["HostConfig"]["NetworkMode"] == "none"
    assert not info["HostConfig"]["Privileged"]
    # Only loopback inside: network mode none.
    assert target.exec("cat /proc/net/dev").stdout.count(":") == 1
    container_id = target.container_id
    target.stop()
    target.stop()  # idempotent
    assert not docker_client.api.containers(all=True, filters={"id": container_id})


def test_user_env_and_workdir_options(started, debian_image):
    target = started(container(debian_image, user="nobody", env={"APP_MODE": "test"},
                               workdir="/tmp/work"))
    assert target.exec("id -un; echo $APP_MODE; pwd").stdout.split() == ["nobody", "test", "/tmp/work"]


def test_missing_image_is_unavailable_with_hint(busybox_image):
    target = container("portability/debian:99")
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    target.stop()
    message = str(info.value)
    assert "portability/debian:99" in message and "\n" not in message


def test_unreachable_engine_is_unavailable(tmp_path):
    target = container("anything", engine_url=f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    target.stop()
    assert "unreachable" in str(info.value)


def test_build_failure_is_unavailable(tmp_path, docker_client):
    (tmp_path / "Dockerfile").write_text("FROM portability/busybox:latest\nRUN exit 7\n")
    target = ContainerTarget(ContainerSpec(name="b", build=str(tmp_path)), session="t",
                             base_dir=tmp_path)
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    target.stop()
    assert "building" in str(info.value)


def test_killed_container_is_lost_not_hung(started, busybox_image, docker_client):
    target = started(container(busybox_image))
    docker_client.api.kill(target.container_id)
    with pytest.raises(TargetLost):
        target.exec(["true"])


def test_agent_killed_inside_reconnects(started, busybox_image):
    target = started(container(busybox_image))
    # Kill the serving agent (not PID 1): that command fails like a dropped ssh connection
    # (rc 255, never re-run), and the target reconnects and carries on.
    broken = target.exec("kill -9 $PPID")
    assert broken.rc == 255 and "exec stream broke" in broken.stderr
    assert target.exec(["echo", "again"]).stdout == "again\n"


def test_clean_stale_removes_only_dead_sessions(busybox_image, docker_client):
    script = (
        "import sys; from pathlib import Path\n"
        "from portability.targets.container import ContainerSpec, ContainerTarget\n"
        f"t = ContainerTarget(ContainerSpec(name='orphan', image={busybox_image!r}), "
        "session='dead-session', base_dir=Path('.'))\n"
        "t.start(); print(t.container_id)\n"  # exits without stop(): a crashed run
    )
    orphan = subprocess.run(["python3", "-c", script], capture_output=True, text=True, check=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    orphan_id = orphan.stdout.strip()
    live = container(busybox_image, name="alive")
    live.start()
    try:
        removed = clean_stale()
        assert any(orphan_id[:12] in line for line in removed)
        assert docker_client.api.containers(all=True, filters={"id": live.container_id})
        assert not docker_client.api.containers(all=True, filters={"id": orphan_id})
    finally:
        live.stop()


@pytest.mark.parametrize("image_fixture", ["busybox_image", "debian_image"])
def test_exec_without_the_agent_keeps_the_semantics(started, request, image_fixture, tmp_path,
                                                    monkeypatch):
    """Where the agent cannot be built (no C compiler here), each command is one docker exec."""
    import portability.targets.container as container_mod
    from exec_contract import (check_env_and_cwd, check_exit_codes,
                               check_output_is_binary_safe_and_separate, check_put_get, check_stdin)
    from portability.agent import AgentUnavailable

    def no_agent():
        raise AgentUnavailable("no C compiler")

    monkeypatch.setattr(container_mod, "agent_binary", no_agent)
    target = started(container(request.getfixturevalue(image_fixture)))
    assert not target._use_agent
    check_exit_codes(target)
    check_output_is_binary_safe_and_separate(target)
    check_stdin(target)
    check_env_and_cwd(target)
    check_put_get(target, tmp_path)
    result = target.exec("sleep 30", timeout=1)
    assert result.timed_out and result.rc == 124
    assert target.exec(["echo", "alive"]).stdout == "alive\n"
