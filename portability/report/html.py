"""The self-contained HTML matrix: one file, inline CSS and vanilla JS, no network, no assets.

The grid's rows are tests (divergent first), columns targets; each cell's class colours it and
its ``title`` carries the failure message (hover); a click shows the message in a detail pane.
The filter box matches test ids, verdicts and attribution text; it can be pre-filled from the
URL (``report.html#filter=TEXT`` or ``?filter=TEXT``) so a link can point at a subset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jinja2

from portability.report.terminal import UNICODE

_FACT_COLUMNS = ("kernel_release", "arch", "os_id", "os_version_id", "libc", "libc_version",
                 "python", "virtualization", "shares_host_kernel", "cgroup_version")

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("portability.report", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(report: Mapping[str, Any]) -> str:
    """One HTML document for the report dict (see the module doc)."""
    targets = list(report.get("targets", {}))
    for test in report.get("tests", []):
        for name in test.get("outcomes", {}):
            if name not in targets:
                targets.append(name)
    tests = sorted(report.get("tests", []), key=lambda t: t.get("verdict") != "divergent")
    rows = []
    for test in tests:
        unavailable = set(test.get("unavailable") or ())
        cells = []
        for name in targets:
            cell = test.get("outcomes", {}).get(name)
            if cell is None:
                cells.append({"cls": "missing", "symbol": "", "title": f"{name}: not run"})
                continue
            outcome = cell["outcome"]
            flaky = any(r != outcome for r in cell.get("reruns") or ())
            cls = ("unavailable" if name in unavailable else "expected" if cell.get("expected")
                   else outcome)
            if flaky:
                cls += " flaky"
            title = f"{name}: {outcome}"
            if cell.get("expected"):
                title += " (asked for by a marker)"
            if cell.get("reruns"):
                title += f"; re-runs: {', '.join(cell['reruns'])}"
            if cell.get("message"):
                title += f"\n{cell['message']}"
            title += f"\n{cell.get('duration_s') or 0:.3f} s"
            cells.append({"cls": cls, "title": title,
                          "symbol": UNICODE["flaky"] if flaky else
                          UNICODE["unavailable"] if name in unavailable else
                          UNICODE["expected"] if cell.get("expected") else UNICODE[outcome]})
        attribution = test.get("attribution")
        search = " ".join([test["id"], test.get("verdict", ""),
                           attribution.get("verdict", "") if attribution else "",
                           attribution.get("explanation", "") if attribution else ""]).lower()
        rows.append({"id": test["id"], "verdict": test.get("verdict", "consistent"),
                     "attribution": attribution, "cells": cells, "search": search})
    facts_rows = []
    for name, info in report.get("targets", {}).items():
        facts = info.get("facts") or {}
        facts_rows.append({
            "name": name, "kind": info.get("kind"), "status": info.get("status"),
            "error": info.get("error"),
            "facts": ["" if facts.get(k) is None else str(facts.get(k)) for k in _FACT_COLUMNS],
            "ready_s": (info.get("timings") or {}).get("ready_s"),
        })
    headers = []
    for name in targets:
        info = report.get("targets", {}).get(name) or {}
        facts = info.get("facts") or {}
        if facts:
            tip = (f"{name}: {info.get('kind')}, kernel {facts.get('kernel_release')}, "
                   f"{facts.get('os_id')} {facts.get('os_version_id') or ''}, "
                   f"python {facts.get('python') or 'none'}")
        else:
            tip = f"{name}: {info.get('kind', '?')}, {info.get('status', '?')}: {info.get('error') or ''}"
        headers.append({"name": name, "title": tip})
    return _ENV.get_template("report.html.j2").render(
        report=report, targets=targets, headers=headers, rows=rows, facts_rows=facts_rows,
        fact_columns=_FACT_COLUMNS, summary=report.get("summary", {}),
        observations=report.get("differing_observations") or [], symbols=UNICODE,
    )
