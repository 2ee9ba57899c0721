"""`portability merge | report | gate | baseline update | matrix` through the real CLI entry."""

from __future__ import annotations

import json

import pytest
import yaml

from portability.analysis import Cell, TargetInfo
from portability.cli import main
from portability.report.json_report import build_report, load_report, write_atomic

FACTS = dict(kernel_release="6.1.0-50-amd64", arch="x86_64", os_id="debian", os_version_id="12",
             libc="glibc", libc_version="2.36", python="3.11.2", virtualization="none",
             shares_host_kernel=True)
INFOS = {
    "local": TargetInfo("local", "local", "ready", facts=FACTS),
    "debian-11": TargetInfo("debian-11", "container", "ready", facts=dict(
        FACTS, os_version_id="11", libc_version="2.31", python="3.9.2", virtualization="container")),
}


def shard(tmp_path, target, outcomes, name=None):
    cells = [Cell(test, target, outcome) for test, outcome in outcomes.items()]
    report = build_report(session=f"job-{target}", created="2026-11-30T21:00:00+00:00",
                          targets=[INFOS[target]], cells=cells)
    path = tmp_path / (name or f"shard-{target}.json")
    write_atomic(path, report)
    return path


@pytest.fixture
def shards(tmp_path):
    return [shard(tmp_path, "local", {"t::a": "passed", "t::b": "passed"}),
            shard(tmp_path, "debian-11", {"t::a": "passed", "t::b": "failed"})]


def test_merge_writes_json_and_html(tmp_path, shards, capsys):
    out, page = tmp_path / "report.json", tmp_path / "out" / "report.html"
    assert main(["merge", *map(str, shards), "-o", str(out), "--html", str(page)]) == 0
    report = load_report(out)
    assert {t["id"]: t["verdict"] for t in report["tests"]} == {"t::a": "consistent", "t::b": "divergent"}
    assert report["tests"][1]["attribution"]["verdict"] == "ambiguous"
    assert report["merged_from"] == [str(p) for p in shards]
    assert "t::b" in page.read_text()
    assert "2 tests on 2 targets: 1 consistent, 1 divergent" in capsys.readouterr().out


def test_merge_conflict_is_a_one_line_usage_error(tmp_path, shards, capsys):
    clash = shard(tmp_path, "local", {"t::a": "failed"}, name="rerun-local.json")
    assert main(["merge", *map(str, shards), str(clash), "-o", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert str(shards[0]) in err and str(clash) in err
    assert not (tmp_path / "r.json").exists()


def test_report_html_and_terminal(tmp_path, shards, capsys):
    merged = tmp_path / "report.json"
    main(["merge", *map(str, shards), "-o", str(merged)])
    capsys.readouterr()
    assert main(["report", str(merged), "-o", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    assert main(["report", str(merged)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "2 tests on 2 targets: 1 consistent, 1 divergent"
    assert main(["report", str(tmp_path / "missing.json")]) == 2


def test_gate_and_baseline_update(tmp_path, shards, capsys):
    merged, baseline = tmp_path / "report.json", tmp_path / "baseline.json"
    main(["merge", *map(str, shards), "-o", str(merged)])
    assert main(["gate", str(merged)]) == 1
    assert "undeclared divergence" in capsys.readouterr().out
    assert main(["baseline", "update", str(merged), "-o", str(baseline)]) == 0
    assert load_report(baseline)["baseline_of"]["file"] == str(merged)
    capsys.readouterr()
    assert main(["gate", str(merged), "--baseline", str(baseline)]) == 0
    assert "1 known divergence(s)" in capsys.readouterr().out
    # A regression against that baseline: t::a now fails on local.
    worse = [shard(tmp_path, "local", {"t::a": "failed", "t::b": "passed"}, name="w-local.json"),
             shards[1]]
    now = tmp_path / "now.json"
    main(["merge", *map(str, worse), "-o", str(now)])
    capsys.readouterr()
    assert main(["gate", str(now), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "t::a on local: failed" in out and "new divergence" in out


TARGETS_YAML = """
targets:
  local: {kind: local}
  debian-11: {kind: container, image: "portability/debian:11"}
  debian-12: {kind: container, image: "portability/debian:12"}
  busybox: {kind: container, image: "portability/busybox:latest"}
groups:
  debian: [debian-11, debian-12]
  containers: [debian-11, debian-12, busybox]
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "targets.yaml").write_text(TARGETS_YAML)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_matrix_formats(project, capsys):
    assert main(["matrix", "--format", "github"]) == 0
    github = json.loads(capsys.readouterr().out)
    assert [e["targets"] for e in github["include"]] == ["local", "debian-11", "debian-12", "busybox"]
    assert {e["runner"] for e in github["include"]} == {"ubuntu-latest"}
    assert main(["matrix", "--format", "gitlab", "--targets", "debian", "--runner", "docker"]) == 0
    gitlab = yaml.safe_load(capsys.readouterr().out)
    assert gitlab == {"parallel": {"matrix": [
        {"PORTABILITY_TARGETS": "debian-11", "PORTABILITY_RUNNER": "docker"},
        {"PORTABILITY_TARGETS": "debian-12", "PORTABILITY_RUNNER": "docker"}]}}
    assert main(["matrix", "--format", "json", "--by", "group"]) == 0
    # Overlapping groups: the first wins, targets in no group get their own job.
    assert [e["targets"] for e in json.loads(capsys.readouterr().out)] == ["debian", "local", "busybox"]


def test_matrix_reads_targets_file_option_and_reports_bad_selection(project, tmp_path, capsys):
    other = tmp_path / "elsewhere.yaml"
    other.write_text("targets:\n  only-me: {kind: local}\n")
    assert main(["--targets-file", str(other), "matrix", "--format", "json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["only-me"]
    assert main(["matrix", "--targets-file", str(other), "--format", "json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["only-me"]
    assert main(["matrix", "--targets", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
