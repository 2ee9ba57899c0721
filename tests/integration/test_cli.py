"""The `portability` command against a real Docker Engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def portability(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "portability.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def project(tmp_path, busybox_image):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  local: {kind: local}\n"
        f"  bb: {{kind: container, image: '{busybox_image}'}}\n"
        "  gone: {kind: container, image: 'portability/no-such:1'}\n"
        "groups:\n  containers: [bb, gone]\n")
    return tmp_path


def test_targets_list_checks_each_engine(project):
    proc = portability(project, "targets", "list")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert lines["local"].endswith("ok")
    assert lines["bb"].endswith("ok") and "groups: containers" in lines["bb"]
    assert "unavailable: image portability/no-such:1 is missing" in lines["gone"]


def test_facts_of_a_container(project, docker_client):
    def bb_containers():
        return {c["Id"] for c in docker_client.api.containers(
            all=True, filters={"label": "io.portability.target=bb"})}

    before = bb_containers()  # other runs may have theirs
    proc = portability(project, "facts", "bb", "--json")
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts["virtualization"] == "container" and facts["python"] is None
    assert facts["shares_host_kernel"] is True
    # the target was removed again
    assert bb_containers() <= before


def test_facts_of_unknown_target_is_one_line(project):
    proc = portability(project, "facts", "bbb")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "bbb" in proc.stderr and "bb" in proc.stderr


def test_broken_targets_file_is_one_line(tmp_path):
    (tmp_path / "targets.yaml").write_text("targets:\n  x: {kind: container, image: 3, netwrk: none}\n")
    proc = portability(tmp_path, "targets", "list")
    assert proc.returncode == 2
    assert proc.stderr.startswith("portability: error: ") and "targets.yaml:2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_clean_removes_leftovers_of_dead_runs(project, docker_client, busybox_image):
    script = (
        "from pathlib import Path\n"
        "from portability.targets.container import ContainerSpec, ContainerTarget\n"
        "from portability.targets.local import LocalSpec, LocalTarget\n"
        f"c = ContainerTarget(ContainerSpec(name='orphan', image={busybox_image!r}), "
        "session='20990101000000-1-dead', base_dir=Path('.'))\n"
        "c.start(); print(c.container_id)\n"
        "import os, tempfile\n"
        "d = Path(tempfile.gettempdir()) / f'portability-20990101000000-{os.getpid()}-dead-x'\n"
        "d.mkdir(); print(d)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    container_id, temp_dir = out.stdout.split()
    proc = portability(project, "clean")
    assert proc.returncode == 0, proc.stderr
    assert container_id[:12] in proc.stdout and temp_dir in proc.stdout
    assert not docker_client.api.containers(all=True, filters={"id": container_id})
    assert not Path(temp_dir).exists()


def test_targets_list_reports_a_missing_kernel_and_vagrantfile(tmp_path):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  old: {kind: qemu, kernel: 'vmlinux-missing/x'}\n"
        "  vm: {kind: vagrant, vagrantfile_dir: nowhere}\n")
    proc = portability(tmp_path, "targets", "list")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "unavailable:" in lines["old"] and "does not exist" in lines["old"]
    assert "unavailable:" in lines["vm"] and "Vagrantfile" in lines["vm"]
