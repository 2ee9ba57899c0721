"""The plugin end to end: real pytest subprocesses over local and container targets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SESSION_LABEL = "io.portability.session"


def write_targets(path: Path, image: str, extra: str = "") -> None:
    path.joinpath("targets.yaml").write_text(
        "targets:\n"
        "  local: {kind: local}\n"
        f"  bb: {{kind: container, image: '{image}'}}\n"
        f"{extra}"
        "groups:\n"
        "  containers: [bb]\n"
    )


def run_pytest(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def containers_of(docker_client, session: str | None = None) -> list:
    label = f"{SESSION_LABEL}={session}" if session else SESSION_LABEL
    return docker_client.api.containers(all=True, filters={"label": label})


def test_matrix_json_and_junit(tmp_path, busybox_image, docker_client):
    write_targets(tmp_path, busybox_image)
    (tmp_path / "test_demo.py").write_text(
        "import pytest\n"
        "def test_uname(target):\n"
        "    assert target.run('uname -s').stdout == 'Linux\\n'\n"
        "def test_only_local(target):\n"
        "    assert target.kind == 'local'\n"
        "@pytest.mark.skip_on(kind='container')\n"
        "def test_skipped_on_containers(target):\n"
        "    pass\n"
        "@pytest.mark.targets('containers')\n"
        "def test_container_only(host):\n"
        "    assert host.file('/bin/sh').exists\n"
        "@pytest.mark.parametrize('n', [1, 2])\n"
        "def test_param(target, n):\n"
        "    assert target.run('exit %s' % (n - 1)).rc == n - 1\n"
        "def test_no_target():\n"
        "    pass\n"
    )
    proc = run_pytest(tmp_path, "--targets=all", "--portability-json=report.json",
                      "--junitxml=junit.xml", "-v")
    out = proc.stdout
    assert proc.returncode == 1, out  # test_only_local fails on bb
    assert "test_uname[local] PASSED" in out and "test_uname[bb] PASSED" in out
    assert "test_container_only[bb] PASSED" in out and "test_container_only[local]" not in out
    assert "test_param[local-1]" in out or "test_param[1-local]" in out
    assert "portability matrix" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["schema"] == "portability-report/1"
    assert set(report["targets"]) == {"local", "bb"}
    bb = report["targets"]["bb"]
    assert bb["kind"] == "container" and bb["status"] == "ready"
    assert bb["facts"]["virtualization"] == "container" and bb["facts"]["python"] is None
    tests = {t["id"]: t for t in report["tests"]}
    assert tests["test_demo.py::test_only_local"]["verdict"] == "divergent"
    assert tests["test_demo.py::test_uname"]["verdict"] == "consistent"
    # a skip that a marker asked for is not a divergence
    assert tests["test_demo.py::test_skipped_on_containers"]["verdict"] == "consistent"
    assert tests["test_demo.py::test_skipped_on_containers"]["outcomes"]["bb"]["outcome"] == "skipped"
    assert "test_demo.py::test_param[1]" in tests and "test_demo.py::test_param[2]" in tests
    assert "test_demo.py::test_no_target" not in tests
    assert report["summary"]["divergent"] == 1
    junit = (tmp_path / "junit.xml").read_text()
    assert 'name="portability.target" value="bb"' in junit
    assert not containers_of(docker_client, report["session"])


def test_unavailable_target_errors_only_its_tests(tmp_path, busybox_image, docker_client):
    write_targets(tmp_path, "portability/no-such-image:1")
    (tmp_path / "test_demo.py").write_text("def test_a(target):\n    pass\n"
                                           "def test_b(target):\n    pass\n")
    proc = run_pytest(tmp_path, "--targets=all", "--portability-json=report.json")
    assert re.search(r"\b2 passed\b", proc.stdout) and re.search(r"\b2 errors\b", proc.stdout), \
        proc.stdout
    assert "target 'bb' is unavailable: image portability/no-such-image:1" in proc.stdout
    assert "Traceback" not in proc.stdout
    assert "another exception occurred" not in proc.stdout  # the reason alone, no chain
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["bb"]["status"] == "unavailable"
    assert "no-such-image" in report["targets"]["bb"]["error"]


def test_lost_target_errors_its_remaining_tests(tmp_path, busybox_image, docker_client):
    write_targets(tmp_path, busybox_image)
    (tmp_path / "test_demo.py").write_text(
        "import docker\n"
        "def test_1_kill(target):\n"
        "    if target.kind == 'container':\n"
        "        c = docker.from_env().containers.list(filters={'label': 'io.portability.target=bb'})\n"
        "        for x in c: x.kill()\n"
        "        target.run('true')\n"
        "def test_2_after(target):\n"
        "    assert target.run('true').rc == 0\n"
        "def test_3_after(target):\n"
        "    assert target.run('true').rc == 0\n"
    )
    proc = run_pytest(tmp_path, "--targets=all", "--portability-json=report.json")
    out = proc.stdout
    assert "3 passed" in out, out
    assert "target 'bb' was lost" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["bb"]["status"] == "lost"
    outcomes = {t["id"].split("::")[1]: t["outcomes"]["bb"]["outcome"] for t in report["tests"]}
    assert outcomes == {"test_1_kill": "failed", "test_2_after": "error", "test_3_after": "error"}
    assert not containers_of(docker_client, report["session"])


@pytest.mark.parametrize("error, fragment", [
    ("targets:\n  bb: {kind: contianer}\n", "targets.yaml:2"),
    ("targets:\n  bb: {kind: container, imag: x}\n", "did you mean 'image'"),
    ("targets: [\n", "targets.yaml"),
])
def test_broken_targets_file_is_a_one_line_usage_error(tmp_path, error, fragment):
    (tmp_path / "targets.yaml").write_text(error)
    (tmp_path / "test_demo.py").write_text("def test_a(target):\n    pass\n")
    proc = run_pytest(tmp_path, "--targets=all")
    assert proc.returncode == 4
    assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_unknown_target_name_lists_what_exists(tmp_path, busybox_image):
    write_targets(tmp_path, busybox_image)
    (tmp_path / "test_demo.py").write_text("def test_a(target):\n    pass\n")
    proc = run_pytest(tmp_path, "--targets=local,debain-12")
    assert proc.returncode == 4
    assert "debain-12" in proc.stderr and "bb" in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_removes_every_container_and_writes_json(tmp_path, busybox_image, docker_client,
                                                           signum):
    write_targets(tmp_path, busybox_image)
    (tmp_path / "test_demo.py").write_text(
        "import time\n"
        "def test_fast(target):\n    pass\n"
        "def test_slow(target):\n"
        "    open('started-' + target.name, 'w').close()\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--targets=all", "--portability-json=report.json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started-local").exists():
        assert time.monotonic() < deadline, "the slow test never started"
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["bb"]["status"] == "ready", "the container target had come up"
    assert not containers_of(docker_client, report["session"]), out
    assert report["schema"] == "portability-report/1"
    assert any(t["id"] == "test_demo.py::test_fast" for t in report["tests"])
