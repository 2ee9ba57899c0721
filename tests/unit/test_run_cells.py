"""How pytest's phase reports become matrix cells (run._cell), on real TestReport objects."""

from __future__ import annotations

import pytest
from _pytest.reports import TestReport

from portability.run import EXPECTED_PROP, TARGET_PROP, TEST_PROP, PortabilityRun, _cell


def report(when, outcome, longrepr=None, wasxfail=None, duration=0.01, props=()):
    rep = TestReport(nodeid="t.py::test_x[local]", location=("t.py", 1, "test_x"), keywords={},
                     outcome=outcome, longrepr=longrepr, when=when, duration=duration,
                     user_properties=[(TARGET_PROP, "local"), (TEST_PROP, "t.py::test_x"), *props])
    if wasxfail is not None:
        rep.wasxfail = wasxfail
    return rep


def phases(*reports):
    return {r.when: r for r in reports}


def test_passed_sums_durations():
    cell = _cell("t", "local", phases(report("setup", "passed"), report("call", "passed"),
                                      report("teardown", "passed")))
    assert cell.outcome == "passed" and cell.duration_s == pytest.approx(0.03)


def test_setup_failure_is_error_with_first_line():
    cell = _cell("t", "local", phases(report("setup", "failed", longrepr="target 'x' is unavailable\nmore")))
    assert cell.outcome == "error" and cell.message == "target 'x' is unavailable"


def test_call_failure_and_teardown_error():
    failed = _cell("t", "l", phases(report("setup", "passed"), report("call", "failed", longrepr="boom")))
    assert failed.outcome == "failed" and failed.message == "boom"
    teardown = _cell("t", "l", phases(report("setup", "passed"), report("call", "passed"),
                                      report("teardown", "failed", longrepr="cleanup broke")))
    assert teardown.outcome == "error" and teardown.message == "cleanup broke"


def test_skip_reason_and_xfail_xpass():
    skipped = _cell("t", "l", phases(report("setup", "skipped", longrepr=("t.py", 1, "Skipped: no python"))))
    assert (skipped.outcome, skipped.message) == ("skipped", "no python")
    xfailed = _cell("t", "l", phases(report("setup", "passed"),
                                     report("call", "skipped", wasxfail="known bug")))
    assert (xfailed.outcome, xfailed.message) == ("xfailed", "known bug")
    xpassed = _cell("t", "l", phases(report("setup", "passed"), report("call", "passed", wasxfail="")))
    assert xpassed.outcome == "xpassed"


def test_record_marks_expected_skips_and_keeps_order():
    from portability.config import default_config
    from pathlib import Path

    run = PortabilityRun(default_config(Path.cwd()), ["local"], session_id="s")
    run.record(report("setup", "skipped", longrepr=("t.py", 1, "Skipped: skip_on kind=local"),
                      props=[(EXPECTED_PROP, "skip_on")]))
    run.record(report("teardown", "passed"))
    [cell] = run.cells()
    assert cell.expected and cell.outcome == "skipped"
    assert run.has_results()
