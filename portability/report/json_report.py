"""The JSON report (schema "portability-report/1", see report-schema.md).

Beyond the required keys of the contract:

- per test: ``attribution`` — null for a consistent test, else
  ``{"verdict": kernel|userland|arch|kind|ambiguous|unexplained|flaky,
  "passing": [targets], "failing": [targets], "facts": {fact: {target: value}} (the facts of
  the separating groups that differ), "explanation": one line, "candidates": [groups that
  separate the split], "minimal_pairs": [[passing, failing], ...] (targets differing in that
  group only), "suggestion": the target to add (ambiguous) or null, "kernel_boundary":
  "fails on kernel ≤ 6.1, passes on ≥ 6.12" or null, "flaky_targets": [targets]}``;
  ``unavailable`` — targets whose cell is an error of an unavailable/lost target (not compared);
- per cell: ``expected: true`` when a marker asked for the skip, ``reruns: [outcomes]``;
- summary: ``by_verdict`` (attribution verdict -> count), ``unavailable_targets``;
- top level: raw ``observations`` ({test: {name: {target: value}}}, so shards can be merged)
  and ``differing_observations`` ([{"test", "name", "values": {target: value}}]);
  ``merged_from`` (a merge) and ``baseline_of`` (a baseline) where they apply.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from portability.analysis import (
    OUTCOMES,
    Cell,
    TargetInfo,
    attribute,
    build_rows,
    differing_observations,
    unavailable_cells,
    verdict,
)
from portability.errors import ConfigError

SCHEMA = "portability-report/1"
_TARGET_KEYS = ("kind", "status", "error", "facts")


def build_report(*, session: str, created: str, targets: Sequence[TargetInfo],
                 cells: Sequence[Cell],
                 observations: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report dict. Targets that appear only in cells get a placeholder entry."""
    infos: dict[str, TargetInfo] = {t.name: t for t in targets}
    for cell in cells:
        if cell.target not in infos:
            infos[cell.target] = TargetInfo(name=cell.target, kind="unknown", status="unavailable",
                                            error="no target state was recorded")
    rows = build_rows(cells)
    tests = []
    counts = {"consistent": 0, "divergent": 0}
    by_verdict: dict[str, int] = {}
    for row in rows:
        v = verdict(row, infos)
        counts[v] += 1
        attribution = attribute(row, infos) if v == "divergent" else None
        if attribution is not None:
            by_verdict[attribution.verdict] = by_verdict.get(attribution.verdict, 0) + 1
        unavailable = unavailable_cells(row, infos)
        tests.append({
            "id": row.test_id,
            "outcomes": {name: _cell_dict(cell) for name, cell in row.cells.items()},
            "verdict": v,
            "attribution": attribution.as_dict() if attribution else None,
            "unavailable": unavailable,
        })
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "session": session,
        "created": created,
        "targets": {name: _target_dict(info) for name, info in infos.items()},
        "tests": tests,
        "summary": {
            "tests": len(tests),
            "targets": len(infos),
            "consistent": counts["consistent"],
            "divergent": counts["divergent"],
            "by_verdict": by_verdict,
            "unavailable_targets": [n for n, i in infos.items() if i.status != "ready"],
        },
        "observations": {t: {n: dict(v) for n, v in names.items()}
                         for t, names in (observations or {}).items()},
        "differing_observations": differing_observations(observations),
    }
    if extra:
        report.update(extra)
    return report


def _cell_dict(cell: Cell) -> dict[str, Any]:
    data: dict[str, Any] = {"outcome": cell.outcome, "duration_s": round(cell.duration_s, 6),
                            "message": cell.message}
    if cell.expected:
        data["expected"] = True
    if cell.reruns:
        data["reruns"] = list(cell.reruns)
    return data


def _target_dict(info: TargetInfo) -> dict[str, Any]:
    facts = dict(info.facts) if info.facts is not None else None
    return {
        "kind": info.kind,
        "status": info.status,
        "error": info.error,
        "facts": facts,
        "timings": {"ready_s": info.ready_s},
    }


# -- back from a report ------------------------------------------------------------------------

def target_infos(report: Mapping[str, Any]) -> list[TargetInfo]:
    return [TargetInfo(name=name, kind=t.get("kind", "unknown"), status=t.get("status", "ready"),
                       error=t.get("error"), facts=t.get("facts"),
                       ready_s=(t.get("timings") or {}).get("ready_s"))
            for name, t in report.get("targets", {}).items()]


def cells(report: Mapping[str, Any]) -> list[Cell]:
    return [Cell(test_id=test["id"], target=name, outcome=c["outcome"],
                 duration_s=float(c.get("duration_s") or 0.0), message=c.get("message"),
                 expected=bool(c.get("expected")), reruns=tuple(c.get("reruns") or ()))
            for test in report.get("tests", []) for name, c in test.get("outcomes", {}).items()]


# -- files -----------------------------------------------------------------------------------

def write_atomic(path: Path, report: Mapping[str, Any]) -> None:
    """Write the report as JSON next to the destination, then rename: readers never see a
    half-written file, also when the run is interrupted while writing."""
    write_text_atomic(path, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would surprise whoever serves or reads the report
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_report(path: Path | str) -> dict[str, Any]:
    """Read and validate a report; a bad file is a one-line ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such report file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the report: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); "
                          "pass a file written by --portability-json") from None
    validate(data, str(path))
    return data


def validate(data: Any, where: str) -> None:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{where}: {what}; pass a file written by --portability-json")

    if not isinstance(data, dict):
        raise bad("the report is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise bad(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    for key, kind in (("session", str), ("created", str), ("targets", dict), ("tests", list),
                      ("summary", dict)):
        if not isinstance(data.get(key), kind):
            raise bad(f"key {key!r} is missing or not a {kind.__name__}")
    for name, target in data["targets"].items():
        if not isinstance(target, dict) or any(k not in target for k in _TARGET_KEYS):
            raise bad(f"targets.{name} lacks one of {', '.join(_TARGET_KEYS)}")
    for i, test in enumerate(data["tests"]):
        if not isinstance(test, dict) or not isinstance(test.get("id"), str) \
                or not isinstance(test.get("outcomes"), dict):
            raise bad(f"tests[{i}] lacks 'id' or 'outcomes'")
        for name, cell in test["outcomes"].items():
            if not isinstance(cell, dict) or cell.get("outcome") not in OUTCOMES:
                raise bad(f"tests[{i}] ({test['id']}) on {name}: outcome must be one of "
                          f"{', '.join(OUTCOMES)}")
