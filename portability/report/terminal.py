"""The terminal matrix and the facts header, as lists of lines (no I/O here).

Rows are tests, columns are targets, divergent rows first, each followed by its attribution.
When target names do not fit the width, columns are numbered and a key line names them. Long
test ids are shortened in the middle (the file and the function name are the useful ends).
Without ``verbose``, a long run shows its divergent rows and summarises the consistent ones.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from portability.analysis import TargetInfo

UNICODE = {"passed": "✓", "failed": "✗", "skipped": "s", "error": "E", "xfailed": "x",
           "xpassed": "X", "expected": "–", "unavailable": "!", "missing": " ", "flaky": "*",
           "arrow": "↳", "ellipsis": "…"}
ASCII = {"passed": ".", "failed": "F", "skipped": "s", "error": "E", "xfailed": "x",
         "xpassed": "X", "expected": "-", "unavailable": "!", "missing": " ", "flaky": "*",
         "arrow": "->", "ellipsis": "..."}
_COLORS = {"passed": "32", "failed": "31;1", "error": "31;1", "skipped": "33", "xfailed": "33",
           "xpassed": "35", "expected": "2", "unavailable": "35;1", "flaky": "36;1"}
_LEGEND = (("passed", "passed"), ("failed", "failed"), ("skipped", "skipped"),
           ("error", "error"), ("xfailed", "xfailed"), ("xpassed", "xpassed"),
           ("expected", "skipped by a marker"), ("unavailable", "target unavailable"),
           ("flaky", "flaky"))
_TO_ASCII = str.maketrans({"≤": "<=", "≥": ">=", "→": "->", "…": "..."})
#: Up to this many tests every row is shown; beyond it consistent rows need -v.
SHOW_ALL_UP_TO = 50
_MIN_ID_WIDTH = 40


def _ascii_default() -> bool:
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding not in ("utf8", "utf16", "utf32")


def render_matrix(report: Mapping[str, Any], *, width: int = 120, color: bool = False,
                  verbose: bool = False, ascii: bool | None = None) -> list[str]:
    sym = ASCII if (_ascii_default() if ascii is None else ascii) else UNICODE
    width = max(width, 40)
    names = list(report.get("targets", {}))
    tests = list(report.get("tests", []))
    for test in tests:  # targets only seen in cells still get a column
        for name in test.get("outcomes", {}):
            if name not in names:
                names.append(name)

    def paint(text: str, key: str | None) -> str:
        code = _COLORS.get(key or "")
        return f"\x1b[{code}m{text}\x1b[0m" if color and code else text

    header_full = sum(len(n) + 1 for n in names)
    longest = max((len(t["id"]) for t in tests), default=4)
    # Names as headers unless they squeeze the test ids below a readable width.
    numbered = width - header_full - 1 < min(longest, _MIN_ID_WIDTH)
    headers = [str(i + 1) for i in range(len(names))] if numbered else names
    col_widths = [max(len(h), 1) for h in headers]
    cols_total = sum(w + 1 for w in col_widths)
    id_width = max(min(longest, width - cols_total - 1), 12)

    lines: list[str] = []
    if numbered:
        lines += _wrap("targets: " + "  ".join(f"{i + 1}={n}" for i, n in enumerate(names)),
                       width, "         ")
    lines.append("test".ljust(id_width) + " " + " ".join(h.center(w) for h, w in
                                                            zip(headers, col_widths)))
    divergent = [t for t in tests if t.get("verdict") == "divergent"]
    consistent = [t for t in tests if t.get("verdict") != "divergent"]
    shown_consistent = consistent if verbose or len(tests) <= SHOW_ALL_UP_TO else []

    def row_line(test: Mapping[str, Any]) -> str:
        cells = []
        unavailable = set(test.get("unavailable") or ())
        for name, w in zip(names, col_widths):
            cell = test.get("outcomes", {}).get(name)
            if cell is None:
                key = "missing"
            elif name in unavailable:
                key = "unavailable"
            elif cell.get("expected"):
                key = "expected"
            else:
                key = cell["outcome"]
            mark = sym[key]
            if cell is not None and any(r != cell["outcome"] for r in cell.get("reruns") or ()):
                mark = sym["flaky"]
                key = "flaky"
            left = (w - len(mark)) // 2
            cells.append(" " * left + paint(mark, key) + " " * (w - len(mark) - left))
        return _shorten(test["id"], id_width, sym["ellipsis"]).ljust(id_width) + " " + " ".join(cells)

    for test in divergent:
        lines.append(row_line(test))
        attribution = test.get("attribution")
        if attribution:
            text = f"{attribution['verdict']}: {attribution.get('explanation', '')}"
            if sym is ASCII:
                text = text.translate(_TO_ASCII)
            lines += _wrap(f"  {sym['arrow']} {text}", width, "      ")
    for test in shown_consistent:
        lines.append(row_line(test))
    hidden = len(consistent) - len(shown_consistent)
    if hidden:
        lines.append(f"({hidden} consistent rows not shown; -v shows every row)")

    legend = "  ".join(f"{sym[key].strip() or ' '} {label}" for key, label in _LEGEND)
    lines += _wrap(legend, width, "")
    for name in names:
        info = report.get("targets", {}).get(name) or {}
        if info.get("status") not in (None, "ready"):
            lines += _wrap(f"target {name} {info['status']}: {info.get('error') or 'no reason given'}",
                           width, "  ")
    for obs in report.get("differing_observations") or ():
        values = ", ".join(f"{t}={_short_value(v)}" for t, v in obs["values"].items())
        lines += _wrap(f"observation {obs['name']!r} differs in {obs['test']}: {values}", width, "  ")
    summary = report.get("summary", {})
    lines.append(f"{summary.get('tests', len(tests))} tests on {summary.get('targets', len(names))} "
                 f"targets: {summary.get('consistent', len(consistent))} consistent, "
                 f"{summary.get('divergent', len(divergent))} divergent")
    return lines


def _short_value(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shorten(text: str, width: int, ellipsis: str) -> str:
    """Keep the end: the test name and its parameters tell rows apart, the directory does not."""
    if len(text) <= width:
        return text
    return ellipsis + text[len(text) - (width - len(ellipsis)):]


def _wrap(text: str, width: int, indent: str) -> list[str]:
    if len(text) <= width:
        return [text]
    lead = text[: len(text) - len(text.lstrip(" "))]
    out, line = [], lead
    for word in text.lstrip(" ").split(" "):
        candidate = f"{line} {word}" if line.strip() else line + word
        if len(candidate) > width and line.strip():
            out.append(line)
            line = indent + word
        else:
            line = candidate
    out.append(line)
    return out


def render_facts(targets: Sequence[TargetInfo]) -> list[str]:
    """The run header: one aligned line per target."""
    rows = []
    for t in targets:
        if t.status != "ready":
            rows.append([t.name, t.kind, f"{t.status}: {t.error or 'no reason given'}"])
            continue
        f = t.facts or {}
        libc = f"{f.get('libc')} {f.get('libc_version') or ''}".strip() if f.get("libc") else "libc ?"
        rows.append([
            t.name, t.kind, f"kernel {f.get('kernel_release') or '?'}", str(f.get("arch") or "?"),
            f"{f.get('os_id') or '?'} {f.get('os_version_id') or ''}".strip(), libc,
            f"python {f['python']}" if f.get("python") else "no python",
            f"ready in {t.ready_s:.1f} s" if t.ready_s is not None else "",
        ])
    widths: list[int] = []
    for row in rows:
        if len(row) > 3:
            for i, col in enumerate(row):
                if i >= len(widths):
                    widths.append(0)
                widths[i] = max(widths[i], len(col))
    lines = []
    for row in rows:
        if len(row) > 3:
            lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip())
        else:
            w = widths[:2] or [len(row[0]), len(row[1])]
            lines.append(f"{row[0].ljust(w[0])}  {row[1].ljust(w[1])}  {row[2]}")
    return lines
