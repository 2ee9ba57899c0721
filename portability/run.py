"""One pytest session's portability state: the pool, the outcomes seen, the reports written.

plugin.py forwards pytest's hooks here; this module turns pytest reports into the plain
``Cell``/``TargetInfo`` data the analysis and report layers work on. Under pytest-xdist
the workers own the targets and the controller only records: target states travel to the
controller inside the reports' ``user_properties``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from portability.analysis import Cell, TargetInfo
from portability.config import Config
from portability.errors import TargetLost
from portability.handle import TargetHandle
from portability.pool import TargetPool, TargetState
from portability.session import new_session_id

#: The parameter every multi-target test is parametrized with (the target's name).
TARGET_PARAM = "_portability_target"
TARGET_PROP = "portability.target"
TEST_PROP = "portability.test"
EXPECTED_PROP = "portability.expected"
STATE_PROP = "portability.state"
OBSERVE_PROP = "portability.observe"


class PortabilityRun:
    def __init__(
        self,
        config: Config,
        selection: list[str],
        *,
        session_id: str | None = None,
        keep: bool = False,
        progress: Callable[[str, str, float], None] | None = None,
    ):
        self.config = config
        self.selection = selection
        self.session_id = session_id or new_session_id()
        self.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._keep = keep
        self._progress = progress
        self._pool: TargetPool | None = None
        self._pool_lock = threading.Lock()
        self._handles: dict[str, TargetHandle] = {}
        self._state_sent: set[str] = set()
        # controller side
        self._phases: dict[tuple[str, str], dict[str, Any]] = {}
        self._order: list[tuple[str, str]] = []
        self._reruns: dict[tuple[str, str], list[str]] = {}
        self.remote_states: dict[str, dict[str, Any]] = {}
        self.observations: dict[str, dict[str, dict[str, Any]]] = {}

    # -- targets (where tests run) ---------------------------------------------------------

    @property
    def pool(self) -> TargetPool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = TargetPool(
                    {name: self.config.targets[name] for name in self.selection},
                    session=self.session_id,
                    base_dir=self.config.base_dir,
                    keep=self._keep,
                    progress=self._progress,
                )
            return self._pool

    def has_pool(self) -> bool:
        return self._pool is not None

    def prefetch(self, names) -> None:
        self.pool.prefetch(names)

    def handle(self, name: str) -> TargetHandle:
        """The started target for a test (TargetUnavailable / TargetLost propagate)."""
        handle = self._handles.get(name)
        if handle is None:
            target = self.pool.acquire(name)
            handle = TargetHandle(target, self.pool.states[name].facts, on_lost=self.pool.mark_lost)
            self._handles[name] = handle
        elif self.pool.states[name].status == "lost":
            raise TargetLost(name, self.pool.states[name].error or "lost")
        return handle

    def state_property(self, name: str) -> tuple[str, str] | None:
        """The target's state as a user property, attached once per process (for xdist)."""
        if name in self._state_sent or self._pool is None:
            return None
        state = self._pool.states.get(name)
        if state is None or state.status in ("pending", "starting"):
            return None
        self._state_sent.add(name)
        return (STATE_PROP, json.dumps(_state_dict(state)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    # -- outcomes (what happened) ----------------------------------------------------------

    def record(self, report) -> None:
        """pytest_runtest_logreport, on the controller (or a serial run)."""
        props = dict(report.user_properties)
        target, test_id = props.get(TARGET_PROP), props.get(TEST_PROP)
        if target is None or test_id is None:
            return  # not one of our items (a user may record a property of the same name)
        for key, value in report.user_properties:
            if key == STATE_PROP:
                state = json.loads(value)
                self.remote_states[state["name"]] = state
            elif key == OBSERVE_PROP:
                name, observed = json.loads(value)
                self.observations.setdefault(test_id, {}).setdefault(name, {})[target] = observed
        key = (test_id, target)
        if key not in self._phases:
            self._phases[key] = {}
            self._order.append(key)
        self._phases[key][report.when] = report
        if EXPECTED_PROP in props:
            self._phases[key]["expected"] = True

    def has_results(self) -> bool:
        return bool(self._order)

    def rerun_candidates(self) -> list[tuple[str, str]]:
        """(test, target) cells of divergent tests: re-running them tells flaky from real."""
        from portability.analysis import build_rows, verdict

        infos = {info.name: info for info in self.target_infos()}
        keys = []
        for row in build_rows(self.cells()):
            if verdict(row, infos) == "divergent":
                keys += [(row.test_id, target) for target, cell in row.cells.items()
                         if infos.get(target) and infos[target].status == "ready"]
        return keys

    def record_rerun(self, key: tuple[str, str], reports) -> None:
        phases = {report.when: report for report in reports}
        self._reruns.setdefault(key, []).append(_cell(key[0], key[1], phases).outcome)

    def cells(self) -> list[Cell]:
        cells = []
        for key in self._order:
            cell = _cell(key[0], key[1], self._phases[key])
            if key in self._reruns:
                cell = dataclasses.replace(cell, reruns=tuple(self._reruns[key]))
            cells.append(cell)
        return cells

    def target_infos(self) -> list[TargetInfo]:
        infos = []
        local_states = self._pool.states if self._pool is not None else {}
        for name in self.selection:
            spec = self.config.targets[name]
            state = local_states.get(name)
            if state is not None and state.status not in ("pending", "starting"):
                data = _state_dict(state)
            else:
                data = self.remote_states.get(name)
            if data is None:
                continue  # no test of this run needed the target
            infos.append(TargetInfo(name=name, kind=spec.kind, status=data["status"],
                                    error=data["error"], facts=data["facts"],
                                    ready_s=data["ready_s"]))
        return infos

    def report(self) -> dict:
        from portability.report.json_report import build_report

        return build_report(session=self.session_id, created=self.created,
                            targets=self.target_infos(), cells=self.cells(),
                            observations=self.observations)

    def write_json(self, path: Path, report: dict) -> None:
        from portability.report.json_report import write_atomic

        write_atomic(path, report)

    def write_html(self, path: Path, report: dict) -> None:
        from portability.report.html import render_html
        from portability.report.json_report import write_text_atomic

        write_text_atomic(path, render_html(report))


def _state_dict(state: TargetState) -> dict[str, Any]:
    status = state.status if state.status in ("ready", "unavailable", "lost") else "unavailable"
    return {
        "name": state.name,
        "status": status,
        "error": state.error,
        "facts": state.facts.as_dict() if state.facts else None,
        "ready_s": round(state.ready_s, 3) if state.ready_s is not None else None,
    }


def _cell(test_id: str, target: str, phases: dict[str, Any]) -> Cell:
    """One outcome from up to three phase reports, the way junitxml reads them."""
    setup, call, teardown = phases.get("setup"), phases.get("call"), phases.get("teardown")
    outcome, message, duration = "passed", None, 0.0
    for report in (setup, call, teardown):
        if report is not None:
            duration += report.duration
    if setup is not None and setup.failed:
        outcome, message = "error", _message(setup)
    elif setup is not None and setup.skipped:
        outcome, message = _skip_outcome(setup)
    elif call is not None:
        if call.failed:
            outcome, message = "failed", _message(call)
        elif call.skipped:
            outcome, message = _skip_outcome(call)
        elif hasattr(call, "wasxfail"):
            outcome = "xpassed"
    if teardown is not None and teardown.failed and outcome in ("passed", "skipped", "xfailed"):
        outcome, message = "error", _message(teardown)
    return Cell(test_id=test_id, target=target, outcome=outcome, duration_s=round(duration, 6),
                message=message, expected=bool(phases.get("expected")))


def _skip_outcome(report) -> tuple[str, str | None]:
    if hasattr(report, "wasxfail"):
        return "xfailed", report.wasxfail or None
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return "skipped", str(longrepr[2]).removeprefix("Skipped: ")
    return "skipped", None


def _message(report) -> str | None:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    text = text.strip()
    return text.splitlines()[0][:500] if text else None


def item_property(item, key: str):
    """The value of a user property of a pytest item (None when absent)."""
    for name, value in item.user_properties:
        if name == key:
            return value
    return None


def is_xdist_controller(config) -> bool:
    """Whether this process is pytest-xdist's controller (targets live on the workers)."""
    return getattr(config.option, "numprocesses", None) not in (None, 0) and \
        config.pluginmanager.hasplugin("dsession")
