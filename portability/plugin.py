"""pytest hooks and fixtures: thin; the work happens in run.py and the layers below."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import pytest

from portability.errors import PortabilityError, TargetLost, TargetUnavailable
from portability.markers import FACT_MARKERS, marker_criteria
from portability.progress import ProgressLines
from portability.run import (EXPECTED_PROP, OBSERVE_PROP, TARGET_PROP, TEST_PROP,
                             PortabilityRun, TARGET_PARAM, is_xdist_controller,
                             item_property)

_RUN = pytest.StashKey["PortabilityRun"]()
_REPORT = pytest.StashKey[object]()
_GATE = pytest.StashKey[object]()
_PROGRESS = pytest.StashKey["ProgressLines"]()
#: Exit status when the portability gate fails (pytest itself uses 0-5).
GATE_EXIT = 8
_PARAM = TARGET_PARAM

MARKERS = (
    "targets(*names): run this test only on these targets, groups or kind:KIND terms",
    "skip_on(**facts): skip on targets whose facts match (kind=, os_id=, python=, kernel='<6.1', ...)",
    "only_on(**facts): run only on targets whose facts match",
    "kernel(spec, reason=''): an expected divergence: on targets whose kernel is outside spec "
    "(e.g. '>=6.6') the test is skipped as expected, not failed",
    "userland(reason='', **facts): an expected divergence on userland facts, e.g. python='>=3.11'",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("portability", "run the suite across targets (pytest-portability)")
    group.addoption("--targets", dest="portability_targets", metavar="EXPR",
                    help="targets to run on: all, names, groups, kind:KIND, !name to exclude "
                         "(comma-separated). Default: local")
    group.addoption("--targets-file", dest="portability_targets_file", metavar="PATH",
                    help="targets.yaml to use (default: targets.yaml in the rootdir)")
    group.addoption("--keep-targets", action="store_true", dest="portability_keep",
                    help="leave containers/VMs running after the session (remove with "
                         "`portability clean`)")
    group.addoption("--portability-json", dest="portability_json", metavar="PATH",
                    help="write the test x target report as JSON (schema portability-report/1)")
    group.addoption("--portability-html", dest="portability_html", metavar="PATH",
                    help="write the matrix as one self-contained HTML file")
    group.addoption("--portability-gate", action="store_true", dest="portability_gate",
                    help=f"exit {GATE_EXIT} when a test diverges across targets without a declared "
                         "expectation (or, with a baseline, on new divergences and regressions)")
    group.addoption("--portability-baseline", dest="portability_baseline", metavar="REPORT",
                    help="compare with a previous JSON report: new divergences and regressions "
                         "fail the gate, fixed ones are listed (implies --portability-gate)")
    group.addoption("--portability-rerun", dest="portability_rerun", type=int, default=1,
                    metavar="N", help="re-run the cells of divergent tests N times to tell flaky "
                                      "tests from real divergences (default 1; 0 disables)")
    parser.addini("portability_targets_file", "targets.yaml to use when the rootdir has none")
    from portability import inside

    inside.addoption(group, parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    from portability.config import default_config, find_targets_file, load
    try:
        path = find_targets_file(config.getoption("portability_targets_file"),
                                 Path(config.rootpath), config.getini("portability_targets_file") or None)
        targets_config = load(path) if path else default_config(Path(config.rootpath))
        selection = targets_config.select(config.getoption("portability_targets"))
    except PortabilityError as exc:
        raise pytest.UsageError(str(exc)) from None
    workerinput = getattr(config, "workerinput", None)
    progress = ProgressLines(config, lambda name: config.stash[_RUN].pool.states[name].facts)
    run = PortabilityRun(
        targets_config,
        selection,
        session_id=workerinput.get("portability_session") if workerinput else None,
        keep=config.getoption("portability_keep"),
        progress=progress,
    )
    config.stash[_RUN] = run
    config.stash[_PROGRESS] = progress
    if getattr(config.option, "dist", "no") == "load":
        # One worker per target group: each container/VM is started once, not once per worker.
        config.option.dist = "loadgroup"
    if workerinput and workerinput.get("portability_loadgroup"):
        # Workers re-parse the original command line (no --dist there); tell xdist's
        # collection on this worker to group items by their xdist_group mark.
        config.option.loadgroup = True
    from portability.inside import InsidePlugin

    config.pluginmanager.register(InsidePlugin(run), "portability-inside")
    _terminate_as_interrupt()


def pytest_configure_node(node) -> None:
    """xdist controller -> worker: share one session id so labels group the whole run."""
    node.workerinput["portability_session"] = node.config.stash[_RUN].session_id
    node.workerinput["portability_loadgroup"] = node.config.option.dist == "loadgroup"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _PARAM not in metafunc.fixturenames:
        from portability import inside

        if not inside.wants(metafunc.definition, metafunc.config):
            return
        metafunc.fixturenames.append(_PARAM)  # as pytest-repeat does: a parameter, not a fixture
    run = metafunc.config.stash[_RUN]
    names = list(run.selection)
    for marker in metafunc.definition.iter_markers("targets"):
        try:
            allowed = set(run.config.expand(marker.args))
        except PortabilityError as exc:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: @targets: {exc}") from None
        names = [n for n in names if n in allowed]
    # The xdist_group mark keeps each target on one worker under --dist loadgroup (xdist reads
    # it while collecting on the worker, so it must exist from parametrization on).
    metafunc.parametrize(_PARAM, [pytest.param(n, id=n, marks=pytest.mark.xdist_group(n))
                                  for n in names])


def pytest_collection_modifyitems(session, config: pytest.Config, items) -> None:
    needed: list[str] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or _PARAM not in callspec.params:
            continue
        name = callspec.params[_PARAM]
        for marker in item.iter_markers():
            if marker.name in FACT_MARKERS:
                try:
                    marker_criteria(marker.name, marker.args, marker.kwargs)
                except ValueError as exc:
                    raise pytest.UsageError(f"{item.nodeid}: @{marker.name}: {exc}") from None
        item.user_properties.append((TARGET_PROP, name))
        item.user_properties.append((TEST_PROP, _base_id(item, name)))
        if name not in needed:
            needed.append(name)
    run = config.stash[_RUN]
    if needed and not hasattr(config, "workerinput") and not is_xdist_controller(config):
        run.prefetch(needed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In the process that owns the target: attach its state once, note failures."""
    outcome = yield
    callspec = getattr(item, "callspec", None)
    if callspec is None or _PARAM not in callspec.params:
        return
    run, name, report = item.config.stash[_RUN], callspec.params[_PARAM], outcome.get_result()
    if report.failed and run.has_pool():
        run.pool.mark_failed(name)
    if call.when == "setup":
        prop = run.state_property(name)
        if prop:
            report.user_properties.append(prop)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    run = session.config.stash[_RUN]
    if not _testinfra_hosts_given(session.config):
        session.config.pluginmanager.register(_HostFixture(), "portability-host")
    if not hasattr(session.config, "workerinput"):
        session.config.pluginmanager.register(_Recorder(run, session.config.stash[_PROGRESS]),
                                              "portability-recorder")


class _Recorder:
    def __init__(self, run, progress):
        self.run = run
        self.progress = progress

    def pytest_runtest_logreport(self, report):
        self.progress.flush()
        self.run.record(report)


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    """After the run: re-run the cells of divergent tests to tell flaky ones from real ones."""
    result = yield
    config = session.config
    times = config.getoption("portability_rerun")
    if times <= 0 or session.shouldfail or session.shouldstop or hasattr(config, "workerinput"):
        return result
    from _pytest.runner import runtestprotocol

    from portability import inside

    config.pluginmanager.get_plugin("portability-inside").rerun(session)  # in their targets
    run = config.stash[_RUN]
    items = {(item_property(i, TEST_PROP), item_property(i, TARGET_PROP)): i for i in session.items
             if not inside.runs_inside(i)}
    for key in run.rerun_candidates():
        item = items.get(key)
        for _ in range(times if item is not None else 0):
            run.record_rerun(key, runtestprotocol(item, nextitem=None, log=False))
    return result


@pytest.hookimpl(trylast=True)  # after junitxml has written its file
def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    run = config.stash[_RUN]
    try:
        if not hasattr(config, "workerinput"):
            _write_reports(session, run)
    except (OSError, PortabilityError) as exc:
        # A report that cannot be written (or a broken baseline) is the user's to fix: one line.
        sys.stderr.write(f"portability: error: {exc}\n")
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
    finally:
        run.close()


def _write_reports(session: pytest.Session, run) -> None:
    config = session.config
    report = run.report() if run.has_results() else None
    config.stash[_REPORT] = report
    if report is None:
        return
    json_path = config.getoption("portability_json")
    if json_path:
        run.write_json(Path(json_path), report)
    html_path = config.getoption("portability_html")
    if html_path:
        run.write_html(Path(html_path), report)
    xml_path = getattr(config.option, "xmlpath", None)
    if xml_path and Path(xml_path).exists():
        from portability.report.junit import add_junit_properties

        add_junit_properties(Path(xml_path), report)
    gate = _gate(config, report)
    config.stash[_GATE] = gate
    if gate is not None and not gate.ok and session.exitstatus in (0, 1):
        session.exitstatus = GATE_EXIT


def _gate(config, report):
    baseline_path = config.getoption("portability_baseline")
    if not (config.getoption("portability_gate") or baseline_path):
        return None
    from portability.analysis import gate
    from portability.report.json_report import load_report

    baseline = load_report(Path(baseline_path)) if baseline_path else None
    return gate(report, baseline)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    config.stash[_PROGRESS].flush()
    report = config.stash.get(_REPORT, None)
    if not report or not report.get("tests"):
        return
    from portability.report.terminal import render_matrix

    terminalreporter.section("portability matrix")
    for line in render_matrix(report, width=terminalreporter._tw.fullwidth,
                              color=terminalreporter.hasmarkup,
                              verbose=config.getoption("verbose") > 0):
        terminalreporter.write_line(line)
    gate = config.stash.get(_GATE, None)
    if gate is not None:
        for line in gate.lines():
            terminalreporter.write_line(line, red=not gate.ok, green=gate.ok, bold=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is not None:
        run.close()


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture
def _portability_target(request):
    """Parametrized per test by pytest_generate_tests with the selected target names."""
    return request.param


@pytest.fixture
def target(request, _portability_target):
    """The started target this test instance runs on (see portability.handle.TargetHandle)."""
    run = request.config.stash[_RUN]
    try:
        handle = run.handle(_portability_target)
    except (TargetUnavailable, TargetLost) as exc:
        reason = str(exc)
    else:
        reason = None
    if reason is not None:  # outside the except block: one line, no chained traceback
        pytest.fail(reason, pytrace=False)
    skip = handle.fact_skip(request.node)  # skip_on/only_on, and declared expectations
    if skip is not None:
        request.node.user_properties.append((EXPECTED_PROP, skip[0]))
        pytest.skip(skip[1])
    handle.bind_observer(lambda name, value: request.node.user_properties.append(
        (OBSERVE_PROP, json.dumps([name, value], default=str))))
    return handle


class _HostFixture:
    """Registered at session start, after testinfra's plugin, so this ``host`` wins.

    Not registered when testinfra's own ``--hosts`` is given: then ``host`` stays testinfra's.
    """

    @pytest.fixture
    def host(self, target):
        """testinfra's Host on the current target: existing testinfra tests run unchanged."""
        return target.host


# -- helpers -------------------------------------------------------------------------------

def _base_id(item, name: str) -> str:
    """The nodeid without this plugin's [target] id part, keeping other parameters."""
    nodeid = item.nodeid
    base, bracket, _rest = nodeid.partition("[")
    if not bracket:
        return nodeid
    ids = list(getattr(item.callspec, "_idlist", []))
    if name in ids:
        ids.remove(name)
    return f"{base}[{'-'.join(ids)}]" if ids else base


def _testinfra_hosts_given(config) -> bool:
    try:
        return bool(config.getoption("hosts"))
    except ValueError:  # testinfra not installed
        return False


def _terminate_as_interrupt() -> None:
    """SIGTERM takes the Ctrl-C path, so pytest finishes the session and targets are removed."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        def on_term(signum, frame):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt("SIGTERM")

        signal.signal(signal.SIGTERM, on_term)
