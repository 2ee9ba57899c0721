"""CI-matrix shards: one pytest run per target, merged, give the single run's verdicts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SUITE = """
def test_same(target):
    assert target.run("echo x").stdout == "x\\n"

def test_differs(target):
    assert target.kind == "local"

def test_observed(target):
    target.observe("kind", target.kind)
"""


def pytest_json(cwd, out, *args):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--portability-json={out}", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return json.loads((cwd / out).read_text())


def essence(report):
    return ({t["id"]: (t["verdict"], (t.get("attribution") or {}).get("verdict"),
                       {k: v["outcome"] for k, v in t["outcomes"].items()})
             for t in report["tests"]},
            {k: v for k, v in report["summary"].items()},
            report["differing_observations"])


def test_merged_shards_equal_the_single_run(tmp_path, busybox_image):
    (tmp_path / "targets.yaml").write_text(
        "targets:\n  local: {kind: local}\n"
        f"  bb: {{kind: container, image: '{busybox_image}'}}\n")
    (tmp_path / "test_suite.py").write_text(SUITE)
    single = pytest_json(tmp_path, "single.json", "--targets=all")
    for name in ("local", "bb"):
        pytest_json(tmp_path, f"shard-{name}.json", f"--targets={name}")
    merge = subprocess.run([sys.executable, "-m", "portability.cli", "merge", "shard-local.json",
                            "shard-bb.json", "-o", "merged.json"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert merge.returncode == 0, merge.stderr
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert essence(merged) == essence(single)
    assert merged["tests"] and single["summary"]["divergent"] == 1


def test_conflicting_shards_name_both_files(tmp_path, busybox_image):
    (tmp_path / "targets.yaml").write_text("targets:\n  local: {kind: local}\n")
    (tmp_path / "test_suite.py").write_text("import os\n"
                                            "def test_env(target):\n"
                                            "    assert os.environ.get('FLIP') != '1'\n")
    pytest_json(tmp_path, "a.json", "--targets=local")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "--portability-json=b.json", "--targets=local"], cwd=tmp_path,
                   env={**__import__("os").environ, "FLIP": "1"}, capture_output=True, timeout=300)
    merge = subprocess.run([sys.executable, "-m", "portability.cli", "merge", "a.json", "b.json",
                            "-o", "m.json"], cwd=tmp_path, capture_output=True, text=True)
    assert merge.returncode == 2
    assert "a.json" in merge.stderr and "b.json" in merge.stderr
    assert merge.stderr.count("\n") == 1
