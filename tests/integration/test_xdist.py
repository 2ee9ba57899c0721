"""pytest-xdist: each target belongs to one worker; the controller's report equals a serial run's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SUITE = """
import pytest

@pytest.mark.parametrize("i", range(6))
def test_where(target, i):
    target.observe("instance", target.run("cat /proc/sys/kernel/random/boot_id; hostname").stdout)

def test_diverges(target):
    assert target.kind == "local"

@pytest.mark.skip_on(kind="container")
def test_local_only(target):
    pass
"""


def matrix(report: dict) -> dict:
    return {t["id"]: ({k: v["outcome"] for k, v in t["outcomes"].items()}, t["verdict"])
            for t in report["tests"]}


def test_xdist_report_equals_serial_and_each_target_starts_once(tmp_path, busybox_image,
                                                                 docker_client):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local: {kind: local}\n"
        f"  bb1: {{kind: container, image: '{busybox_image}'}}\n"
        f"  bb2: {{kind: container, image: '{busybox_image}'}}\n")
    (tmp_path / "test_suite.py").write_text(SUITE)
    reports = {}
    for mode, extra in (("serial", []), ("xdist", ["-n", "2"])):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                               "--targets=all", f"--portability-json={mode}.json", *extra],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stdout + proc.stderr  # test_diverges fails on bb*
        reports[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    serial, xdist = reports["serial"], reports["xdist"]
    assert matrix(xdist) == matrix(serial)
    assert xdist["summary"] == serial["summary"]
    for name in ("local", "bb1", "bb2"):
        assert xdist["targets"][name]["status"] == "ready"
        # Facts travel from the worker that owns the target to the controller.
        assert xdist["targets"][name]["facts"]["os_id"] == serial["targets"][name]["facts"]["os_id"]
        assert xdist["targets"][name]["facts"]["kernel_release"]
    # One container per target for the whole run: every test on bb1 saw the same hostname.
    seen = {}
    for test_id, names in xdist["observations"].items():
        for target, value in names["instance"].items():
            seen.setdefault(target, set()).add(value)
    assert {target: len(values) for target, values in seen.items()} == \
        {"local": 1, "bb1": 1, "bb2": 1}
    assert not docker_client.api.containers(
        all=True, filters={"label": f"io.portability.session={xdist['session']}"})
