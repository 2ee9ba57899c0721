"""Report writers: JSON contract, atomic write, terminal matrix, HTML, JUnit properties, merge."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

import pytest

from portability.analysis import Cell, TargetInfo
from portability.errors import ConfigError
from portability.report import json_report
from portability.report.html import render_html
from portability.report.junit import add_junit_properties, junit_names
from portability.report.merge import merge
from portability.report.terminal import render_facts, render_matrix

FACTS = dict(kernel_release="6.1.0-50-amd64", arch="x86_64", os_id="debian", os_version_id="12",
             libc="glibc", libc_version="2.36", python="3.11.2", virtualization="none",
             shares_host_kernel=True, cgroup_version=2)
TARGETS = [
    TargetInfo("local", "local", "ready", facts=FACTS, ready_s=0.0),
    TargetInfo("debian-12", "container", "ready", ready_s=0.8,
               facts=dict(FACTS, virtualization="container")),
    TargetInfo("debian-11", "container", "ready", ready_s=0.9,
               facts=dict(FACTS, os_version_id="11", libc_version="2.31", python="3.9.2",
                          virtualization="container")),
    TargetInfo("kernel-6.12", "qemu", "ready", ready_s=4.2,
               facts=dict(FACTS, kernel_release="6.12.9", virtualization="vm",
                          shares_host_kernel=False)),
    TargetInfo("far", "ssh", "unavailable", error="ssh: connection refused on 127.0.0.1:2222"),
]
ALL = ("local", "debian-12", "debian-11", "kernel-6.12")


def _cells():
    def row(test, outcomes, **kw):
        return [Cell(test, t, o, duration_s=0.01, **kw.get(t, {})) for t, o in outcomes.items()]

    cells = []
    cells += row("suites/test_app.py::test_version", dict.fromkeys(ALL, "passed"))
    cells += row("suites/test_app.py::test_fchmodat2",
                 {"local": "failed", "debian-12": "failed", "debian-11": "failed",
                  "kernel-6.12": "passed"},
                 local={"message": "OSError: [Errno 38] Function not implemented"},
                 **{"debian-12": {"message": "OSError: [Errno 38] <ENOSYS> & more"}})
    cells += row("suites/test_app.py::test_tomllib",
                 {"local": "passed", "debian-12": "passed", "debian-11": "failed",
                  "kernel-6.12": "passed"},
                 **{"debian-11": {"message": "ModuleNotFoundError: No module named 'tomllib'"}})
    cells += row("suites/test_app.py::test_declared[py311]",
                 {"local": "passed", "debian-12": "passed", "debian-11": "skipped",
                  "kernel-6.12": "passed"},
                 **{"debian-11": {"expected": True, "message": "userland python>=3.11"}})
    cells += row("suites/test_app.py::test_race",
                 dict.fromkeys(ALL, "passed"), local={"reruns": ("failed",)})
    cells += [Cell(c.test_id, "far", "error", message="target 'far' is unavailable: refused")
              for c in cells if c.target == "local"]
    return cells


OBSERVATIONS = {"suites/test_app.py::test_version": {
    "version": {"local": "1.0", "debian-12": "1.0", "debian-11": "0.9", "kernel-6.12": "1.0"},
    "sha": dict.fromkeys(ALL, "abc")}}


def sample(**kw):
    return json_report.build_report(session="s-1", created="2026-11-30T20:00:00+00:00",
                                    targets=TARGETS, cells=_cells(), observations=OBSERVATIONS, **kw)


def _by_id(report):
    return {t["id"]: t for t in report["tests"]}


# -- JSON contract ---------------------------------------------------------------------------

def test_report_has_exactly_the_schema_fields():
    report = sample()
    assert report["schema"] == "portability-report/1"
    assert {"schema", "session", "created", "targets", "tests", "summary"} <= set(report)
    for name, target in report["targets"].items():
        assert {"kind", "status", "error", "facts", "timings"} <= set(target), name
        assert set(target["timings"]) == {"ready_s"}
        assert target["kind"] in ("local", "container", "ssh", "vagrant", "qemu")
        assert target["status"] in ("ready", "unavailable", "lost")
    local = report["targets"]["local"]["facts"]
    for key in ("kernel_release", "arch", "os_id", "os_version_id", "libc", "libc_version",
                "python", "virtualization", "shares_host_kernel"):
        assert key in local
    assert report["targets"]["far"] == {"kind": "ssh", "status": "unavailable",
                                        "error": "ssh: connection refused on 127.0.0.1:2222",
                                        "facts": None, "timings": {"ready_s": None}}
    for test in report["tests"]:
        assert {"id", "outcomes", "verdict"} <= set(test)
        assert test["verdict"] in ("consistent", "divergent")
        for cell in test["outcomes"].values():
            assert {"outcome", "duration_s", "message"} <= set(cell)
            assert cell["outcome"] in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
    assert report["summary"]["tests"] == 5
    assert report["summary"]["targets"] == 5
    assert report["summary"]["consistent"] + report["summary"]["divergent"] == 5
    json.dumps(report)  # JSON-able as is


def test_report_verdicts_and_attribution():
    tests = _by_id(sample())
    assert tests["suites/test_app.py::test_version"]["verdict"] == "consistent"
    assert tests["suites/test_app.py::test_version"]["attribution"] is None
    assert tests["suites/test_app.py::test_version"]["unavailable"] == ["far"]
    kernel = tests["suites/test_app.py::test_fchmodat2"]
    assert kernel["verdict"] == "divergent"
    assert kernel["attribution"]["verdict"] == "kernel"
    assert kernel["attribution"]["kernel_boundary"] == "fails on kernel ≤ 6.1, passes on ≥ 6.12"
    assert kernel["attribution"]["passing"] == ["kernel-6.12"]
    assert set(kernel["attribution"]) >= {"verdict", "facts", "passing", "failing", "explanation"}
    assert tests["suites/test_app.py::test_tomllib"]["attribution"]["verdict"] == "userland"
    declared = tests["suites/test_app.py::test_declared[py311]"]
    assert declared["verdict"] == "consistent"
    assert declared["outcomes"]["debian-11"]["expected"] is True
    race = tests["suites/test_app.py::test_race"]
    assert race["attribution"]["verdict"] == "flaky"
    assert race["outcomes"]["local"]["reruns"] == ["failed"]


def test_summary_counts_and_observations():
    report = sample()
    assert report["summary"]["divergent"] == 3
    assert report["summary"]["by_verdict"] == {"kernel": 1, "userland": 1, "flaky": 1}
    assert report["summary"]["unavailable_targets"] == ["far"]
    assert report["differing_observations"] == [
        {"test": "suites/test_app.py::test_version", "name": "version",
         "values": {"local": "1.0", "debian-12": "1.0", "debian-11": "0.9", "kernel-6.12": "1.0"}}]
    assert report["observations"] == OBSERVATIONS


def test_a_target_only_seen_in_cells_gets_a_placeholder():
    report = json_report.build_report(session="s", created="c", targets=[],
                                      cells=[Cell("t", "ghost", "error")])
    assert report["targets"]["ghost"]["status"] == "unavailable"
    assert report["tests"][0]["verdict"] == "consistent"


def test_cells_and_targets_round_trip_through_the_report():
    report = sample()
    again = json_report.build_report(session="s-1", created=report["created"],
                                     targets=json_report.target_infos(report),
                                     cells=json_report.cells(report), observations=OBSERVATIONS)
    assert again == report


# -- files -----------------------------------------------------------------------------------

def test_write_atomic_then_load(tmp_path):
    path = tmp_path / "sub" / "report.json"
    json_report.write_atomic(path, sample())
    assert json_report.load_report(path) == sample()
    assert os.listdir(path.parent) == ["report.json"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    json_report.write_atomic(path, {"schema": "old"})

    def boom(src, dst):
        raise KeyboardInterrupt  # Ctrl-C exactly between writing and renaming

    monkeypatch.setattr(json_report.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        json_report.write_atomic(path, sample())
    assert json.loads(path.read_text()) == {"schema": "old"}
    assert os.listdir(tmp_path) == ["report.json"]  # the temp file is gone


@pytest.mark.parametrize("content, message", [
    (None, "no such report file"),
    ("{\n  nope", ":2: not valid JSON"),
    ('{"schema": "other/9"}', "schema is 'other/9'"),
    ('[1, 2]', "not a JSON object"),
    ('{"schema": "portability-report/1", "session": "s", "created": "c", "targets": {}, '
     '"tests": [{"id": "t", "outcomes": {"a": {"outcome": "boom"}}}], "summary": {}}',
     "tests[0] (t) on a: outcome must be one of"),
    ('{"schema": "portability-report/1", "session": "s", "created": "c", "targets": {}, "tests": []}',
     "key 'summary' is missing"),
])
def test_load_report_rejects_bad_files_with_one_line(tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        json_report.load_report(path)
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


# -- terminal --------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_matrix_divergent_rows_first_with_attribution_legend_and_count():
    lines = render_matrix(sample(), width=120, ascii=False)
    text = " ".join(line.strip() for line in lines)
    ids = [line.split()[0] for line in lines if line.startswith("suites/")]
    assert ids[:3] == ["suites/test_app.py::test_fchmodat2", "suites/test_app.py::test_tomllib",
                       "suites/test_app.py::test_race"]
    assert set(ids[3:]) == {"suites/test_app.py::test_version", "suites/test_app.py::test_declared[py311]"}
    assert lines[0].split() == ["test", "local", "debian-12", "debian-11", "kernel-6.12", "far"]
    fch = next(line for line in lines if "test_fchmodat2" in line)
    assert fch.split()[1:] == ["✗", "✗", "✗", "✓", "!"]
    assert "kernel: " in text and "fails on kernel ≤ 6.1, passes on ≥ 6.12" in text
    assert "– skipped by a marker" in text
    assert "target far unavailable: ssh: connection refused" in text
    assert "observation 'version' differs in suites/test_app.py::test_version" in text
    assert lines[-1] == "5 tests on 5 targets: 2 consistent, 3 divergent"
    assert all(len(line) <= 120 for line in lines)


def test_matrix_ascii_fallback_and_colour():
    lines = render_matrix(sample(), width=120, ascii=True)
    assert not any(ch in "\n".join(lines) for ch in "✓✗–↳≤≥")
    fch = next(line for line in lines if "test_fchmodat2" in line)
    assert fch.split()[1:] == ["F", "F", "F", ".", "!"]
    coloured = render_matrix(sample(), width=120, color=True, ascii=True)
    assert any("\x1b[31;1mF" in line for line in coloured)
    assert [ANSI.sub("", line) for line in coloured] == lines


def test_matrix_numbers_columns_and_shortens_ids_when_narrow():
    cells = [Cell("suites/" + "deep/" * 12 + f"test_m.py::test_something_long[{i}]", f"target-number-{t}",
                  "passed" if t else "failed") for i in range(3) for t in range(12)]
    infos = [TargetInfo(f"target-number-{t}", "container", "ready", facts=dict(FACTS, python=f"3.{t}"))
             for t in range(12)]
    report = json_report.build_report(session="s", created="c", targets=infos, cells=cells)
    lines = render_matrix(report, width=80, ascii=True)
    assert lines[0].startswith("targets: 1=target-number-0")
    header = next(line for line in lines if line.startswith("test "))
    assert header.split()[1:] == [str(i) for i in range(1, 13)]
    rows = [line for line in lines if "::test_something_long[" in line]
    assert len(rows) == 3
    # Shortened from the left: the test name and its parameters stay readable.
    assert all(r.startswith("...") and r.split()[1:] == ["F"] + ["."] * 11 for r in rows)
    assert [r.split()[0][-22:] for r in rows] == [f"test_something_long[{i}]" for i in range(3)]
    assert all(len(line) <= 80 for line in lines)


def test_matrix_hides_consistent_rows_of_a_long_run_unless_verbose():
    cells = [Cell(f"t::test_{i}", n, "passed") for i in range(60) for n in ("local", "debian-12")]
    cells.append(Cell("t::test_bad", "local", "passed"))
    cells.append(Cell("t::test_bad", "debian-12", "failed"))
    report = json_report.build_report(session="s", created="c", targets=TARGETS[:2], cells=cells)
    short = render_matrix(report, width=100)
    assert sum(line.startswith("t::") for line in short) == 1
    assert "(60 consistent rows not shown; -v shows every row)" in short
    full = render_matrix(report, width=100, verbose=True)
    assert sum(line.startswith("t::") for line in full) == 61
    assert full[-1] == "61 tests on 2 targets: 60 consistent, 1 divergent"


def test_render_facts_one_aligned_line_per_target():
    lines = render_facts(TARGETS)
    assert len(lines) == 5
    assert lines[0].split()[:4] == ["local", "local", "kernel", "6.1.0-50-amd64"]
    assert "python 3.9.2" in lines[2] and "ready in 0.9 s" in lines[2]
    assert lines[4].split()[:3] == ["far", "ssh", "unavailable:"]
    assert lines[0].index("kernel") == lines[1].index("kernel")


# -- HTML (static checks; tests/integration/test_html_browser.py drives a real browser) ------

def test_html_is_self_contained_and_escapes():
    page = render_html(sample())
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert "&lt;ENOSYS&gt; &amp; more" in page  # messages are escaped
    assert "<ENOSYS>" not in page
    rows = re.findall(r'<tr class="row (\w+)"', page)
    assert rows == ["divergent"] * 3 + ["consistent"] * 2
    assert page.count('<td class="cell') == 5 * 5
    assert "fails on kernel ≤ 6.1, passes on ≥ 6.12" in page
    assert 'id="facts"' in page and "6.12.9" in page
    assert 'id="observations"' in page and '<code>"0.9"</code>' in page


# -- JUnit -----------------------------------------------------------------------------------

def test_junit_names_follow_pytest():
    assert junit_names("suites/test_app.py::TestX::test_y[debian-12]") == \
        ("suites.test_app.TestX", "test_y[debian-12]")


def test_add_junit_properties_to_real_junitxml(pytester, tmp_path):
    pytester.makepyfile(test_app="""
        import pytest

        @pytest.mark.parametrize("t", ["local", "debian-11"])
        def test_plain(t):
            assert t == "local"

        @pytest.mark.parametrize("t", ["local"])
        def test_props(t, record_property):
            record_property("portability.target", t)
    """)
    xml = tmp_path / "junit.xml"
    pytester.runpytest(f"--junitxml={xml}", "-p", "no:cacheprovider", "-p", "no:portability")
    cells = [Cell("test_app.py::test_plain", "local", "passed"),
             Cell("test_app.py::test_plain", "debian-11", "failed"),
             Cell("test_app.py::test_props", "local", "passed")]
    report = json_report.build_report(session="s", created="c", targets=TARGETS[:3], cells=cells)
    add_junit_properties(xml, report)
    add_junit_properties(xml, report)  # idempotent: nothing is duplicated
    root = ET.parse(xml).getroot()
    suite = root.find("testsuite")
    suite_props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert suite_props["portability.target.debian-11.kernel_release"] == "6.1.0-50-amd64"
    assert suite_props["portability.target.debian-11.python"] == "3.9.2"
    assert suite_props["portability.target.local.kind"] == "local"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {"test_plain[local]", "test_plain[debian-11]", "test_props[local]"}
    for name, case in cases.items():
        props = [(p.get("name"), p.get("value")) for p in case.find("properties")]
        names = [p[0] for p in props]
        assert sorted(names) == ["portability.kernel", "portability.kind", "portability.target"], name
    deb = dict((p.get("name"), p.get("value")) for p in cases["test_plain[debian-11]"].find("properties"))
    assert deb == {"portability.target": "debian-11", "portability.kind": "container",
                   "portability.kernel": "6.1.0-50-amd64"}
    assert cases["test_plain[debian-11]"].find("failure") is not None  # the rest is untouched


def test_add_junit_properties_bad_file(tmp_path):
    bad = tmp_path / "j.xml"
    bad.write_text("<testsuites><oops")
    with pytest.raises(ConfigError, match="cannot read the JUnit XML"):
        add_junit_properties(bad, sample())


# -- merge -----------------------------------------------------------------------------------

def _shards(report):
    """Split one run's report into one shard per target, the way a CI matrix would run it."""
    shards = []
    for name in report["targets"]:
        cells = [c for c in json_report.cells(report) if c.target == name]
        infos = [t for t in json_report.target_infos(report) if t.name == name]
        obs = {tid: {n: {t: v for t, v in values.items() if t == name} for n, values in names.items()}
               for tid, names in report["observations"].items()}
        shards.append((f"shard-{name}.json", json_report.build_report(
            session=f"job-{name}", created=report["created"], targets=infos, cells=cells,
            observations=obs)))
    return shards


def _verdicts(report):
    return {t["id"]: (t["verdict"], t["attribution"]) for t in report["tests"]}


def test_merge_gives_the_verdicts_of_a_single_run():
    single = sample()
    shards = _shards(single)
    # A flaky cell is divergent even in its one-target shard, as in the single run.
    assert dict(shards)["shard-local.json"]["summary"]["by_verdict"] == {"flaky": 1}
    merged = merge(shards)
    assert merged["session"].startswith("merged-")
    assert merged["merged_sessions"] == [f"job-{name}" for name in merged["targets"]]
    assert _verdicts(merged) == _verdicts(single)
    assert merged["summary"] == single["summary"]
    assert merged["differing_observations"] == single["differing_observations"]
    assert merged["merged_from"] == [name for name, _ in shards]
    assert merged["targets"] == single["targets"]
    assert merge(list(reversed(shards)))["summary"] == single["summary"]


def test_merge_accepts_identical_duplicates_and_rejects_conflicts():
    shards = _shards(sample())
    _, local = shards[0]
    assert _verdicts(merge(shards + [("again.json", local)])) == _verdicts(sample())
    changed = json.loads(json.dumps(local))
    changed["tests"][0]["outcomes"]["local"]["outcome"] = "failed"
    with pytest.raises(ConfigError) as info:
        merge(shards + [("shard-b.json", changed)])
    text = str(info.value)
    assert "shard-local.json" in text and "shard-b.json" in text
    assert "suites/test_app.py::test_version on local: passed in shard-local.json but failed" in text


def test_merge_rejects_a_target_with_different_facts_and_bad_shards():
    shards = _shards(sample())
    other = json.loads(json.dumps(shards[1][1]))
    other["targets"]["debian-12"]["facts"]["python"] = "3.12.0"
    other["tests"] = []
    with pytest.raises(ConfigError, match="'debian-12' has different facts in shard-debian-12.json and x.json"):
        merge(shards + [("x.json", other)])
    with pytest.raises(ConfigError, match="broken.json: schema"):
        merge([("broken.json", {"schema": "nope"})])
    with pytest.raises(ConfigError, match="no shard reports"):
        merge([])
