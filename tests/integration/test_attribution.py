"""Issue 5 end to end: a suite that plants a kernel-, a userland- and a flaky divergence,
run for real over local, two Debian containers and a kernel VM; the verdicts must say why."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

pytestmark = pytest.mark.integration

SUITE = '''
import pytest

def test_kernel_feature(target):
    # memfd_create accepts MFD_NOEXEC_SEAL since Linux 6.3
    code = "import os; os.memfd_create('x', 0x0008 | 0x0002)"
    assert target.run(["python3", "-c", code]).rc == 0

def test_userland_feature(target):
    # tomllib is in the standard library since Python 3.11
    assert target.run(["python3", "-c", "import tomllib"]).rc == 0

def test_flaky(target, request):
    # fails the first time it runs on debian-12, passes when re-run
    marker = request.config.rootpath / "flaky-ran"
    first = target.name == "debian-12" and not marker.exists()
    if target.name == "debian-12":
        marker.touch()
    assert not first

@pytest.mark.kernel(">=6.3", reason="MFD_NOEXEC_SEAL")
def test_declared_kernel_feature(target):
    code = "import os; os.memfd_create('x', 0x0008 | 0x0002)"
    assert target.run(["python3", "-c", code]).rc == 0

def test_consistent(target):
    assert target.run("echo ok").stdout == "ok\\n"
'''


def test_planted_divergences_get_the_right_verdicts(tmp_path, debian_image, docker_client):
    qemu = shutil.which("qemu-system-x86_64")
    require(qemu is not None, "qemu-system-x86_64 is not installed")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  local: {kind: local}\n"
        "  debian-11: {kind: container, image: 'portability/debian:11'}\n"
        "  debian-12: {kind: container, image: 'portability/debian:12'}\n"
        "  kernel-5.10: {kind: qemu, kernel: '5.10', accel: tcg}\n")
    (tmp_path / "test_planted.py").write_text(SUITE)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           "--targets=all", "--portability-json=report.json", "--portability-gate"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "report.json").read_text())
    assert all(t["status"] == "ready" for t in report["targets"].values()), report["targets"]
    tests = {t["id"].split("::")[1]: t for t in report["tests"]}

    kernel = tests["test_kernel_feature"]
    assert kernel["verdict"] == "divergent"
    assert kernel["attribution"]["verdict"] == "kernel", kernel["attribution"]
    assert kernel["attribution"]["failing"] == ["kernel-5.10"]
    assert "5.10" in kernel["attribution"]["kernel_boundary"]

    userland = tests["test_userland_feature"]
    assert userland["attribution"]["verdict"] == "userland", userland["attribution"]
    assert userland["attribution"]["failing"] == ["debian-11"]

    flaky = tests["test_flaky"]
    assert flaky["attribution"]["verdict"] == "flaky", flaky["attribution"]

    declared = tests["test_declared_kernel_feature"]
    assert declared["verdict"] == "consistent"
    assert declared["outcomes"]["kernel-5.10"]["outcome"] == "skipped"
    assert tests["test_consistent"]["verdict"] == "consistent"

    # the gate fails on the undeclared divergences, and names them
    assert proc.returncode == 8, proc.stdout
    assert "test_kernel_feature" in proc.stdout and "portability gate: FAILED" in proc.stdout
    assert not docker_client.api.containers(
        all=True, filters={"label": f"io.portability.session={report['session']}"})
