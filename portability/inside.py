"""Inside mode: run the application's own tests inside each target (issue 7).

A test runs *inside* when ``--inside`` is given, when it carries ``@pytest.mark.inside``
(or a module ``pytestmark``), or when it lies under a path of the ini option
``portability_inside`` — and it does not use the ``target`` fixture (those are controller
tests by definition). plugin.py parametrizes such tests over the selected targets; this
module runs them:

1. per target, in a background thread as soon as the run loop starts: ship the project (the
   rootdir's ``git ls-files``, or every file outside VCS/caches when not in git) and the
   in-target half (inside_remote.py) into ``<workdir>/portability-inside``, run the target's
   ``install:`` commands, make pytest importable (the target's own, else a bundle of pure-Python
   wheels for the target's Python version), and start pytest there *in the background* on the
   selected node ids;
2. the in-target pytest appends one JSON line per report to a results file; the controller
   reads it incrementally with cheap exec calls (``tail -c +N``), so results stream back while
   the run progresses, over every kind's plain exec (a VM's serial agent included);
3. each controller item ``path::test[target]`` replays the in-target reports through the
   normal ``pytest_runtest_logreport`` hook: terminal, JUnit, the matrix, ``-x``/``--maxfail``
   and the gate see them like any other test.

Why not execnet: it needs an interactive stdin/stdout pipe to a Python process in the target,
which the target protocol does not offer (``exec`` returns at the end; a VM's only channel is
the agent's request/response stream). The results-file approach needs nothing but ``exec``,
and the report format is the one pytest-xdist ships (``pytest_report_to_serializable``).

``PORTABILITY_INSIDE_TRACE=1`` prints a timeline of each target's preparation and runs.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from portability.errors import PortabilityError, TargetLost, TargetUnavailable
from portability.inside_remote import IDS_ENV, RESULTS_ENV
from portability.run import (EXPECTED_PROP, TARGET_PARAM, TARGET_PROP, TEST_PROP,
                             is_xdist_controller, item_property)

#: The directory under the target's workdir that inside mode owns (removed at the end).
REMOTE_DIR = "portability-inside"
REMOTE_MODULE = "_portability_inside"
_INSIDE = pytest.StashKey[str]()
#: The target's Python version and its pytest's (without importing pytest: half the cost).
_PROBE = ("import platform\n"
          "print(platform.python_version())\n"
          "try:\n"
          "    from importlib.metadata import version\n"
          "    import importlib.util\n"
          "    print(version('pytest') if importlib.util.find_spec('pytest') else '')\n"
          "except Exception:\n"
          "    print('')\n")
#: Files never shipped when the rootdir is not a git repository.
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".pytest_cache", ".mypy_cache", ".tox",
              ".nox", ".venv", "venv", "node_modules", ".eggs", "build", "dist"}
_MAX_SILENCE_S = 2.0
#: Kinds whose whole filesystem goes away with the target (no files to remove one by one).
_DISCARDED = ("container", "qemu")
_bundle_lock = threading.Lock()


def addoption(group, parser) -> None:
    """Add inside-mode options to the plugin's option group."""
    group.addoption("--inside", action="store_true", dest="portability_inside",
                    help="run every collected test (that does not use the `target` fixture) "
                         "inside each target, with the target's kernel, libc and Python")
    group.addoption("--inside-args", dest="portability_inside_args", default="", metavar="ARGS",
                    help="extra arguments for the in-target pytest (one shell-quoted string)")
    parser.addini("portability_inside", "paths whose tests run inside each target "
                  "(relative to the ini file)", type="paths", default=[])


def wants(definition: pytest.Function, config: pytest.Config) -> bool:
    """Whether this test function runs inside each target instead of on the controller."""
    if config.getoption("portability_inside", False):
        return True
    if definition.get_closest_marker("inside") is not None:
        return True
    paths = config.getini("portability_inside")
    if paths:
        here = Path(definition.path).resolve()
        for path in paths:
            root = Path(path).resolve()
            if here == root or root in here.parents:
                return True
    return False


# -- per-target state ------------------------------------------------------------------------

def runs_inside(item) -> bool:
    """Whether this item's test runs inside its target (not on the controller)."""
    return item.stash.get(_INSIDE, None) is not None


class _Unusable(Exception):
    """The target cannot run inside-mode tests; the message is the one-line reason."""


@dataclass
class _Prepared:
    """A target made ready once per session: project shipped, pytest importable."""

    handle: Any
    python: str
    root: str
    pythonpath: list[str]


@dataclass
class _Run:
    """One in-target pytest run (the main pass, or a rerun of divergent tests)."""

    target: str
    number: int
    nodeids: list[str]
    launched: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: str | None = None
    prepared: _Prepared | None = None
    pid: int | None = None
    offset: int = 0
    partial: bytes = b""
    reports: dict[str, list[dict]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    current: str | None = None
    collected: set[str] | None = None
    collect_errors: dict[str, dict] = field(default_factory=dict)
    exit_rc: int | None = None
    exit_error: str | None = None
    ended: bool = False
    internal: str | None = None
    last_progress: float = field(default_factory=time.monotonic)

    @property
    def results(self) -> str:
        return f"{self.prepared.root}/results-{self.number}.jsonl"

    @property
    def log(self) -> str:
        return f"{self.prepared.root}/pytest-{self.number}.log"


class InsidePlugin:
    """pytest hooks of inside mode (registered by plugin.py at configure time)."""

    def __init__(self, run):
        self.run = run
        self.config: pytest.Config | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}  # the main pass, per target
        self._all_runs: list[_Run] = []
        #: Every directory inside mode wrote to, from its first write on (so a preparation
        #: that failed half-way, or is still going at Ctrl-C, is removed too).
        self._roots: dict[str, Any] = {}
        self._numbers = 0
        self._cancelled = False
        self._stage: Path | None = None
        self._extra_args: list[str] = []

    # -- hooks -------------------------------------------------------------------------------

    def pytest_configure(self, config: pytest.Config) -> None:
        self.config = config
        try:
            self._extra_args = shlex.split(config.getoption("portability_inside_args") or "")
        except ValueError as exc:
            raise pytest.UsageError(f"--inside-args: {exc} (one shell-quoted string)") from None
        config.addinivalue_line("markers", "inside: run this test inside each target "
                                           "(pytest-portability inside mode)")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session):
        """Ship and start the in-target runs while the controller is still setting up."""
        config = session.config
        if not config.option.collectonly and not hasattr(config, "workerinput") \
                and not is_xdist_controller(config):
            self.start(session.items)

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        for item in items:
            callspec = getattr(item, "callspec", None)
            if callspec is None or TARGET_PARAM not in callspec.params:
                continue
            if "target" in item.fixturenames:
                continue  # a controller test that drives the target
            item.stash[_INSIDE] = callspec.params[TARGET_PARAM]

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        name = item.stash.get(_INSIDE, None)
        if name is None:
            return None
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        for report in self._reports_for(item, name):
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def pytest_sessionfinish(self, session) -> None:
        self.cleanup()

    def pytest_unconfigure(self, config) -> None:
        self.cleanup()

    # -- the main pass -----------------------------------------------------------------------

    def start(self, items) -> None:
        """Launch one in-target run per target for its inside items (in the background)."""
        per_target: dict[str, list] = {}
        for item in items:
            name = item.stash.get(_INSIDE, None)
            if name is not None:
                per_target.setdefault(name, []).append(item)
        for name, target_items in per_target.items():
            with self._lock:
                if name in self._runs:
                    continue
                run = self._runs[name] = self._new_run(name, [_base_id(i) for i in target_items])
            threading.Thread(target=self._launch, args=(run, target_items), daemon=True,
                             name=f"portability-inside-{name}").start()

    def _new_run(self, name: str, nodeids: list[str]) -> _Run:
        self._numbers += 1
        run = _Run(target=name, number=self._numbers, nodeids=nodeids)
        self._all_runs.append(run)
        return run

    def _reports_for(self, item, name: str) -> list:
        run = self._runs.get(name)
        if run is None:  # not started by the run loop (xdist worker, or a late item)
            self.start([i for i in item.session.items if i.stash.get(_INSIDE, None) == name])
            run = self._runs[name]
        expected = self._expected_skip(run, item)
        if expected is not None:
            return expected
        return self._replay(run, item)

    def _replay(self, run: _Run, item) -> list:
        """This item's reports from one in-target run (waiting for them), or an error."""
        _wait(run.launched)
        if run.error is not None:
            return self._error_reports(item, run.target, run.error)
        base = _base_id(item)
        reports = self._wait_for(run, base)
        if reports is None:
            return self._error_reports(item, run.target, self._missing_reason(run, base))
        return [self._convert(item, run.target, run, data) for data in reports]

    def _expected_skip(self, run: _Run, item) -> list | None:
        """The fact markers (kernel/userland/skip_on/only_on) decided on the controller."""
        from portability.markers import FACT_MARKERS

        if not any(m.name in FACT_MARKERS for m in item.iter_markers()):
            return None
        # The target's facts, even when inside mode cannot use it (no Python): a marker such
        # as only_on(python=">=3") turns that into an expected skip rather than an error.
        try:
            handle = self.run.handle(run.target)
        except (TargetUnavailable, TargetLost):
            return None
        reason = handle.fact_skip(item)
        if reason is None:
            return None
        props = [*item.user_properties, (EXPECTED_PROP, reason[0])]
        return _synthetic(item, "skipped", f"Skipped: {reason[1]}", props, self.run, run.target)

    def _launch(self, run: _Run, items) -> None:
        _trace(run.target, "launch thread")
        try:
            run.prepared = self._prepare(run.target)
            _trace(run.target, "prepared")
            # Tests skipped by fact markers never run inside.
            run.nodeids = [_base_id(i) for i in items
                           if run.prepared.handle.fact_skip(i) is None]
            if run.nodeids:
                self._start_run(run)
            else:
                run.ended = True
        except Exception as exc:  # noqa: BLE001 — a bug must error these tests, not hang them
            run.error = _reason(run.target, exc)
        finally:
            run.launched.set()

    def _prepare(self, name: str) -> _Prepared:
        """Once per target (start() launches one main run per target; reruns reuse it)."""
        handle = self.run.handle(name)
        _trace(name, "target ready")
        spec = handle.spec
        python = spec.python or (sys.executable if handle.kind == "local"
                                                    else "python3")
        root = handle.path(REMOTE_DIR)
        with self._lock:
            self._roots[root] = handle
        handle.exec(["rm", "-rf", root], cwd="/", timeout=120)
        probe = handle.exec([python, "-c", _PROBE], cwd="/", timeout=120)
        if probe.rc != 0:
            detail = _first_line(probe.stderr) or f"exit {probe.rc}"
            raise _Unusable(f"{name}: inside mode needs Python in the target, but `{python}` "
                            f"did not run ({detail}); set `python:` for this target in "
                            f"targets.yaml or use an image with Python")
        _trace(name, "probed")
        lines = probe.stdout.splitlines() + ["", ""]
        version, pytest_version = lines[0].strip(), lines[1].strip()
        handle.put(self._staged_project(), f"{root}/project")
        handle.put(Path(__file__).with_name("inside_remote.py"), f"{root}/{REMOTE_MODULE}.py")
        project = f"{root}/project"
        _trace(name, "project shipped")
        for command in spec.install:
            result = handle.exec(command, cwd=project, timeout=1800)
            if result.rc != 0:
                what = "timed out" if result.timed_out else f"exited {result.rc}"
                detail = _first_line(result.stderr) or _first_line(result.stdout)
                raise _Unusable(f"{name}: install command `{command}` {what}"
                                f"{': ' + detail if detail else ''} ({spec.source}: install)")
        if spec.install:
            again = handle.exec([python, "-c", _PROBE], cwd=project, timeout=120)
            if again.rc == 0:
                pytest_version = (again.stdout.splitlines() + ["", ""])[1].strip()
        pythonpath = [root]
        if not pytest_version:
            bundle, _ = pytest_bundle(version, name)
            # One zip file (zipimport) instead of ~500 files: a single small transfer.
            handle.put(bundle_zip(bundle), f"{root}/site.zip")
            pythonpath.insert(0, f"{root}/site.zip")
        return _Prepared(handle=handle, python=python, root=root, pythonpath=pythonpath)

    def _staged_project(self) -> Path:
        with self._lock:
            if self._stage is None:
                _sweep_stages()
                self._stage = Path(tempfile.mkdtemp(prefix=f"portability-inside-{os.getpid()}-"))
                stage_project(Path(self.config.rootpath), self._stage / "project")
            return self._stage / "project"

    def _start_run(self, run: _Run) -> None:
        prepared = run.prepared
        handle = prepared.handle
        config = self.config
        argv = [prepared.python, "-m", "pytest", "-p", REMOTE_MODULE, "-p", "no:portability",
                "-p", "no:cacheprovider", "--continue-on-collection-errors", "-q",
                "--rootdir", f"{prepared.root}/project"]
        maxfail = config.getoption("maxfail", 0)
        if maxfail:
            argv.append(f"--maxfail={maxfail}")
        if config.getoption("runxfail", False):
            argv.append("--runxfail")
        argv += self._extra_args
        files = list(dict.fromkeys(n.split("::", 1)[0] for n in run.nodeids))
        argv += files
        ids_path = f"{prepared.root}/ids-{run.number}.json"
        spec = {
            "argv": argv,
            "cwd": f"{prepared.root}/project",
            "pythonpath": prepared.pythonpath,
            "env": {RESULTS_ENV: run.results, IDS_ENV: ids_path},
            "results": run.results,
            "log": run.log,
            "ids": run.nodeids,
            "ids_path": ids_path,
            # the local kind sees the controller: the run stops if the controller is killed
            "watch_pid": os.getpid() if handle.kind == "local" else None,
        }
        spec_path = f"{prepared.root}/run-{run.number}.json"
        module = f"{prepared.root}/{REMOTE_MODULE}.py"
        payload = json.dumps(spec).encode()
        # One exec: write the spec, then start the supervisor detached from the exec (stdio
        # to files, so the exec returns at once) and print its pid.
        script = (
            f"cat > {shlex.quote(spec_path)} || exit 1\n"
            f"{shlex.quote(prepared.python)} {shlex.quote(module)} supervise "
            f"{shlex.quote(spec_path)} </dev/null >>{shlex.quote(run.log)} 2>&1 &\n"
            "echo $!\n"
        )
        with run.lock:
            if self._cancelled:
                raise _Unusable(f"{run.target}: the session is stopping")
            result = handle.exec(script, cwd=prepared.root, stdin=payload, timeout=120)
            if result.rc != 0 or not result.stdout.strip().isdigit():
                raise _Unusable(f"{run.target}: cannot start pytest inside the target: "
                                f"{_first_line(result.stderr) or _first_line(result.stdout)}")
            run.pid = int(result.stdout.strip())
        _trace(run.target, f"started run {run.number}")
        run.last_progress = time.monotonic()

    # -- reading results ---------------------------------------------------------------------

    def _wait_for(self, run: _Run, nodeid: str) -> list[dict] | None:
        delay = 0.005
        while True:
            if nodeid in run.done:
                return run.reports[nodeid]
            if run.ended:
                return None
            if self._poll(run):
                delay = 0.005
                continue
            if time.monotonic() - run.last_progress > _MAX_SILENCE_S:
                self._check_alive(run)
                run.last_progress = time.monotonic()
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _poll(self, run: _Run) -> bool:
        """Read new result lines; True when something new arrived."""
        data = self._read(run)
        if not data:
            return False
        data = run.partial + data
        lines = data.split(b"\n")
        run.partial = lines.pop()
        for line in lines:
            if line.strip():
                self._event(run, json.loads(line))
        run.last_progress = time.monotonic()
        return True

    def _read(self, run: _Run) -> bytes:
        handle = run.prepared.handle
        if handle.kind == "local":
            try:
                with open(run.results, "rb") as f:
                    f.seek(run.offset)
                    data = f.read()
            except FileNotFoundError:
                return b""
        else:
            try:
                result = handle.exec(["tail", "-c", f"+{run.offset + 1}", run.results],
                                     cwd="/", timeout=60)
            except TargetLost as exc:
                self._end(run, None, f"the target was lost: {exc.reason}")
                return b""
            if result.rc != 0:
                return b""
            data = result.stdout_bytes
        run.offset += len(data)
        return data

    def _event(self, run: _Run, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            run.current = event["nodeid"]
        elif kind == "report":
            nodeid = event["nodeid"]
            run.reports.setdefault(nodeid, []).append(event["data"])
            if event["when"] == "teardown":
                run.done.add(nodeid)
                run.current = None
        elif kind == "collected":
            run.collected = set(event["ids"])
        elif kind == "collect":
            run.collect_errors[event["nodeid"]] = event["data"]
        elif kind == "internalerror":
            run.internal = event.get("text")
        elif kind == "exit":
            self._end(run, event.get("rc"), event.get("error"))

    def _end(self, run: _Run, rc: int | None, error: str | None) -> None:
        _trace(run.target, f"run {run.number} ended rc={rc}")
        run.exit_rc, run.exit_error, run.ended = rc, error, True

    def _check_alive(self, run: _Run) -> None:
        handle = run.prepared.handle
        try:
            # kill is a shell builtin (minimal images have no kill binary); only a clear
            # "no such process" counts as dead.
            probe = handle.exec(["/bin/sh", "-c", f"kill -0 {run.pid} 2>/dev/null && echo alive "
                                 f"|| echo gone"], cwd="/", timeout=30)
            alive = probe.stdout.strip() != "gone"
        except TargetLost as exc:
            self._end(run, None, f"the target was lost: {exc.reason}")
            return
        if not alive and not self._poll(run):
            self._end(run, None, "the in-target run vanished without an exit status")

    def _missing_reason(self, run: _Run, nodeid: str) -> str:
        for module, data in run.collect_errors.items():
            if nodeid == module or nodeid.startswith(module + "::") or module == "" or \
                    nodeid.startswith(module.rstrip("/") + "/"):
                text = _longrepr_text(data)
                return f"collection of {module or 'the session'} failed inside {run.target}:\n{text}"
        if run.current == nodeid:
            return (f"the in-target Python crashed while running this test on {run.target} "
                    f"({_status(run.exit_rc)}){self._log_tail(run)}")
        if run.current is not None and run.collected is not None and nodeid in run.collected:
            return (f"not run: the in-target Python on {run.target} crashed "
                    f"({_status(run.exit_rc)}) while running {run.current}")
        tail = self._log_tail(run)
        if run.exit_error:
            return f"the in-target pytest on {run.target} ended: {run.exit_error}{tail}"
        if run.internal:
            return f"the in-target pytest on {run.target} had an internal error:\n{run.internal}"
        if run.collected is not None and nodeid not in run.collected:
            if _crashed(run.exit_rc) or run.exit_rc is None:
                return f"not run: the in-target Python exited early ({_status(run.exit_rc)}){tail}"
            if self.config.getoption("maxfail", 0) and run.exit_rc in (1, 2):
                return f"not run inside {run.target}: the in-target run stopped at --maxfail"
            return (f"not collected inside {run.target}: the in-target pytest does not produce "
                    f"this node id (collected {len(run.collected)} of the selection){tail}")
        if run.collected is None:
            return (f"the in-target pytest on {run.target} exited ({_status(run.exit_rc)}) "
                    f"before collecting{tail}")
        return (f"not run: the in-target pytest on {run.target} ended "
                f"({_status(run.exit_rc)}) before this test{tail}")

    def _log_tail(self, run: _Run) -> str:
        if run.prepared is None:
            return ""
        try:
            result = run.prepared.handle.exec(["tail", "-c", "30000", run.log], cwd="/", timeout=30)
        except PortabilityError:
            return ""
        lines = result.stdout.strip().splitlines()
        # A crash's faulthandler dump starts with the test's own frame: show that end.
        fatal = [i for i, line in enumerate(lines) if "Fatal Python error" in line]
        text = "\n".join(lines[fatal[-1]:fatal[-1] + 15] if fatal else lines[-15:])
        return f"\n--- last lines of the in-target pytest output ({run.log}) ---\n{text}" \
            if text else ""

    # -- reports -----------------------------------------------------------------------------

    def _convert(self, item, name: str, run: _Run, data: dict):
        report = self.config.hook.pytest_report_from_serializable(config=self.config, data=data)
        report.nodeid = item.nodeid
        report.location = item.location
        if isinstance(report.longrepr, list):  # a skip's (path, lineno, reason) after JSON
            report.longrepr = tuple(report.longrepr)
        remote_props = [tuple(p) if isinstance(p, list) else p
                        for p in (report.user_properties or [])]
        report.user_properties = [*item.user_properties, *remote_props]
        if report.when == "setup":
            state = self.run.state_property(name)
            if state:
                report.user_properties.append(state)
        if report.failed:
            _add_section(report, f"reproduce inside {name}", self.reproduce(run, _base_id(item)))
        return report

    def _error_reports(self, item, name: str, reason: str) -> list:
        return _synthetic(item, "failed", reason, list(item.user_properties), self.run, name)

    def reproduce(self, run: _Run, nodeid: str) -> str:
        """The shell command that runs this test by hand inside the target."""
        prepared = run.prepared
        env = f"PYTHONPATH={shlex.quote(':'.join(prepared.pythonpath[:-1]))} " \
            if len(prepared.pythonpath) > 1 else ""
        inner = (f"cd {shlex.quote(prepared.root + '/project')} && {env}"
                 f"{shlex.quote(prepared.python)} -m pytest -p no:cacheprovider "
                 f"{shlex.quote(nodeid)}")
        kept = "" if self.config.getoption("portability_keep", False) else \
            "\n(the target and these files are removed at the end of the session: run with " \
            "--keep-targets to keep them)"
        container = prepared.handle.container_id
        if container:
            return f"docker exec -it {container[:12]} sh -c {shlex.quote(inner)}{kept}"
        return f"{inner}    # on {run.target} ({prepared.handle.kind}){kept}"

    # -- reruns of divergent inside tests (before plugin.py's, which would run them here) -----

    def rerun(self, session) -> None:
        config = self.config
        times = config.getoption("portability_rerun", 0)
        if times <= 0 or session.shouldfail or session.shouldstop or \
                hasattr(config, "workerinput"):
            return
        inside = {(item_property(i, TEST_PROP), item_property(i, TARGET_PROP)): i
                  for i in session.items if i.stash.get(_INSIDE, None) is not None}
        if not inside:
            return
        keys = [key for key in self.run.rerun_candidates() if key in inside]
        by_target: dict[str, list] = {}
        for key in keys:
            by_target.setdefault(key[1], []).append(key)
        for _ in range(times):
            runs = []
            for name, target_keys in by_target.items():
                main = self._runs.get(name)
                if main is None or main.prepared is None:
                    continue
                run = self._new_run(name, [_base_id(inside[k]) for k in target_keys])
                run.prepared = main.prepared
                try:
                    self._start_run(run)
                except Exception as exc:  # noqa: BLE001 — a lost target errors its cells
                    run.error = _reason(run.target, exc)
                run.launched.set()
                runs.append((run, target_keys))
            for run, target_keys in runs:
                for key in target_keys:
                    self.run.record_rerun(key, self._replay(run, inside[key]))

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Stop every in-target run and remove what inside mode put into the targets.

        Idempotent: called at session finish and again at unconfigure (after a usage error).
        """
        from portability.pool import sigint_held

        with sigint_held():
            self._cancelled = True
            pids: dict[str, list[int]] = {}
            for run in self._all_runs:
                if run.prepared is None:
                    continue
                if run.pid is not None and not run.ended:
                    # A run that already finished needs no signal (its pid may be reused).
                    try:
                        while self._poll(run):
                            pass
                    except Exception:  # noqa: BLE001 — best effort: the kill below is the safe side
                        pass
                # A run being started now either has its pid when we get the lock or sees
                # _cancelled.
                with run.lock:
                    if run.pid is not None and not run.ended:
                        pids.setdefault(run.prepared.root, []).append(run.pid)
            self._all_runs = []
            with self._lock:
                roots, self._roots = self._roots, {}
            # With --keep-targets the project stays, so the "reproduce" commands keep working;
            # containers and VMs (a tmpfs overlay) are discarded whole by the pool anyway.
            keep = bool(self.config and self.config.getoption("portability_keep", False))
            threads = []
            for root, handle in roots.items():
                remove = not keep and handle.kind not in _DISCARDED
                if not remove and not pids.get(root):
                    continue
                thread = threading.Thread(target=_stop_remote, args=(handle, root, pids.get(root, [])),
                                          kwargs={"remove": remove})
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
            if self._stage is not None:
                shutil.rmtree(self._stage, ignore_errors=True)
                self._stage = None


# -- helpers ---------------------------------------------------------------------------------



def _synthetic(item, outcome: str, text: str, props: list, run, name: str) -> list:
    from _pytest.reports import TestReport

    setup_props = list(props)
    state = run.state_property(name)
    if state:
        setup_props.append(state)
    if outcome == "skipped":
        longrepr: Any = (str(item.path), (item.location[1] or 0) + 1, text)
    else:
        longrepr = text
    setup = TestReport(item.nodeid, item.location, {x: 1 for x in item.keywords}, outcome,
                       longrepr, "setup", user_properties=setup_props)
    teardown = TestReport(item.nodeid, item.location, {x: 1 for x in item.keywords}, "passed",
                          None, "teardown", user_properties=list(props))
    return [setup, teardown]


def _add_section(report, title: str, content: str) -> None:
    longrepr = report.longrepr
    if hasattr(longrepr, "addsection"):
        longrepr.addsection(title, content)
    elif isinstance(longrepr, str):
        report.longrepr = f"{longrepr}\n\n{title}: {content}"
    elif longrepr is None:
        report.longrepr = f"{title}: {content}"


def _longrepr_text(data: dict) -> str:
    longrepr = data.get("longrepr")
    if isinstance(longrepr, str):
        return longrepr
    if isinstance(longrepr, dict):
        crash = longrepr.get("reprcrash") or {}
        entries = (longrepr.get("reprtraceback") or {}).get("reprentries") or []
        lines = []
        for entry in entries:
            lines += (entry.get("data") or {}).get("lines") or []
        text = "\n".join(lines)
        return text or crash.get("message", "")
    return str(longrepr)


def _crashed(rc: int | None) -> bool:
    return rc is not None and (rc < 0 or rc > 5)


def _status(rc: int | None) -> str:
    if rc is None:
        return "no exit status"
    if rc < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _stop_remote(handle, root: str, pids: list[int], *, remove: bool = True) -> None:
    """SIGTERM the runs' process groups, SIGKILL what is left, remove inside mode's files."""
    kills = " ".join(str(p) for p in pids)
    script = (
        f"for p in {kills}; do kill -TERM -$p 2>/dev/null || kill -TERM $p 2>/dev/null; done\n"
        f"i=0; while [ $i -lt 30 ]; do alive=; for p in {kills}; do "
        "kill -0 $p 2>/dev/null && alive=1; done; [ -z \"$alive\" ] && break; "
        "sleep 0.1; i=$((i+1)); done\n"
        f"for p in {kills}; do kill -KILL -$p 2>/dev/null; kill -KILL $p 2>/dev/null; done\n"
    ) if pids else ""
    if remove:
        script += f"rm -rf {shlex.quote(root)}\n"
    if not script:
        return
    try:
        handle.exec(script, cwd="/", timeout=60)
    except Exception:  # noqa: BLE001 — the target may be gone; the pool removes it anyway
        pass


_T0 = time.monotonic()


def _trace(target: str, what: str) -> None:
    if os.environ.get("PORTABILITY_INSIDE_TRACE"):
        sys.stderr.write(f"[inside {time.monotonic() - _T0:7.3f}] {target}: {what}\n")


def _wait(event: threading.Event) -> None:
    # A plain wait() cannot be interrupted by Ctrl-C on the main thread; short waits can.
    while not event.wait(0.05):
        pass


def _base_id(item) -> str:
    return item_property(item, TEST_PROP) or item.nodeid


def _reason(target: str, exc: Exception) -> str:
    """One line for a run that could not be prepared or started."""
    if isinstance(exc, (_Unusable, TargetUnavailable, TargetLost)):
        return str(exc)
    if isinstance(exc, (PortabilityError, OSError)):
        return f"{target}: inside mode: {_first_line(exc)}"
    return f"{target}: inside mode: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0] if text else ""


# -- shipping the project and pytest ---------------------------------------------------------

def _sweep_stages() -> None:
    """Remove staged copies left by controllers that were killed (SIGKILL skips cleanup)."""
    for path in Path(tempfile.gettempdir()).glob("portability-inside-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


def project_files(rootdir: Path) -> list[str]:
    """The rootdir's files, relative: what git would commit (untracked-but-not-ignored included),
    or — outside a git repository — every file outside VCS/virtualenv/cache directories."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=rootdir, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is not None and out.returncode == 0:
        return [p for p in out.stdout.decode(errors="surrogateescape").split("\0") if p]
    files = []
    for dirpath, dirnames, filenames in os.walk(rootdir):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for filename in filenames:
            if not filename.endswith((".pyc", ".pyo")):
                files.append(os.path.relpath(os.path.join(dirpath, filename), rootdir))
    return files


def stage_project(rootdir: Path, dest: Path) -> int:
    """Copy (hard-link where possible) the project's files to ``dest``; returns the count."""
    count = 0
    for rel in project_files(rootdir):
        src = rootdir / rel
        if not src.is_file() and not src.is_symlink():
            continue  # deleted but still tracked
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        else:
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
        count += 1
    dest.mkdir(parents=True, exist_ok=True)
    return count


def pytest_bundle(python_version: str, target: str = "") -> tuple[Path, str]:
    """A directory of pure-Python pytest (with its dependencies) for a target's Python.

    The controller's own pytest when its metadata allows that Python version (nothing to
    download, same pytest on both sides); otherwise wheels fetched once with the controller's
    ``pip download --python-version`` (the newest pytest that supports it). Cached.
    """
    from importlib import metadata

    from portability.paths import cache_dir

    if not python_version:
        raise _Unusable(f"{target}: the target's Python did not report its version")
    minor = ".".join(python_version.split(".")[:2])
    with _bundle_lock:
        dists = _controller_dists(python_version)
        if dists is not None:
            version = metadata.version("pytest")
            dest = cache_dir("inside", f"site-py{minor}-pytest{version}-local")
            if not (dest / ".complete").exists():
                _fill_from_dists(dest, dists, version)
            return dest, version
        dest = cache_dir("inside", f"site-py{minor}-pip")
        if not (dest / ".complete").exists():
            _fill_from_pip(dest, minor, target)
        return dest, (dest / ".complete").read_text().strip()


def bundle_zip(bundle: Path) -> Path:
    """The bundle as one zip, importable with zipimport (built once next to the bundle)."""
    target = bundle.with_name(bundle.name + ".zip")
    with _bundle_lock:
        if target.exists():
            return target
        fd, tmp = tempfile.mkstemp(dir=bundle.parent, prefix=".zip-")
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(bundle.rglob("*")):
                    rel = path.relative_to(bundle)
                    if path.is_file() and rel.parts[0] != ".complete" \
                            and "__pycache__" not in rel.parts:
                        zf.write(path, rel.as_posix())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    return target


def _marker_env(python_version: str) -> dict[str, str]:
    """Environment-marker values of the target's CPython on Linux (not the controller's)."""
    return {"python_version": ".".join(python_version.split(".")[:2]),
            "python_full_version": python_version, "sys_platform": "linux",
            "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


def _controller_dists(python_version: str):
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    env = _marker_env(python_version)
    todo, seen = ["pytest"], {}
    while todo:
        name = todo.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
        needs = dist.metadata.get("Requires-Python")
        if needs and Version(python_version) not in SpecifierSet(needs):
            return None
        seen[key] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                todo.append(req.name)
    return list(seen.values())


def _fill_from_dists(dest: Path, dists, version: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest))
    for dist in dists:
        for rel in dist.files or []:
            parts = Path(str(rel)).parts
            if not parts or parts[0] == ".." or "__pycache__" in parts:
                continue
            src = Path(dist.locate_file(rel))
            if not src.is_file():
                continue
            out = tmp / Path(*parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)
    _publish(dest, tmp, version)


def _fill_from_pip(dest: Path, minor: str, target: str) -> None:
    from email.parser import Parser

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest))
    wheels = tmp / ".wheels"
    # pip honours --python-version for Requires-Python but evaluates environment markers
    # (`exceptiongroup; python_version < "3.11"`) for the interpreter it runs on: close the
    # dependency set for the target's version ourselves.
    env = _marker_env(f"{minor}.0")
    wanted, have = ["pytest"], set()
    while wanted:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                               "--only-binary=:all:", "--python-version", minor,
                               "--dest", str(wheels), *wanted],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            detail = _first_line((proc.stderr.strip().splitlines() or [""])[-1])
            raise _Unusable(f"{target}: Python {minor} in the target has no pytest, the "
                            f"controller's pytest does not support it, and `pip download` "
                            f"failed ({detail}); install pytest there with `install:` or point "
                            "`python:` at an interpreter that has it")
        needed = set()
        for wheel in wheels.glob("*.whl"):
            have.add(canonicalize_name(wheel.name.split("-")[0]))
            with zipfile.ZipFile(wheel) as zf:
                meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
                headers = Parser().parsestr(zf.read(meta).decode())
            for text in headers.get_all("Requires-Dist") or []:
                req = Requirement(text)
                if req.marker is None or req.marker.evaluate(env):
                    needed.add(f"{req.name}{req.specifier}")  # without the marker
        wanted = sorted(r for r in needed if canonicalize_name(Requirement(r).name) not in have)
    version = ""
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        if wheel.name.startswith("pytest-"):
            version = wheel.name.split("-")[1]
    shutil.rmtree(wheels)
    _publish(dest, tmp, version)


def _publish(dest: Path, tmp: Path, version: str) -> None:
    """Move the filled temp dir's contents into ``dest`` and mark it complete."""
    for child in list(tmp.iterdir()):
        target = dest / child.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(child, target)
    tmp.rmdir()
    (dest / ".complete").write_text(f"{version}\n")
