"""Merge CI-matrix shards (one report per job) into one report.

The merged report is rebuilt from the shards' cells, target facts and raw observations through
the same ``build_report`` a single run uses, so its verdicts and attributions are those the
single run would give. Two shards may both contain a cell (test, target) only when they agree
on its outcome; a target may appear in several shards only with the same facts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from portability.analysis import Cell, TargetInfo
from portability.errors import ConfigError
from portability.report import json_report


def merge(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """``[(file name, report), ...]`` -> one report. Conflicting duplicate cells or targets
    raise ConfigError naming both files."""
    if not reports:
        raise ConfigError("portability merge: no shard reports given; pass the shard-*.json files")
    targets: dict[str, tuple[str, TargetInfo]] = {}
    cells: dict[tuple[str, str], tuple[str, Cell]] = {}
    observations: dict[str, dict[str, dict[str, Any]]] = {}
    obs_source: dict[tuple[str, str, str], str] = {}
    for source, report in reports:
        json_report.validate(report, source)
        for info in json_report.target_infos(report):
            seen = targets.get(info.name)
            if seen is None:
                targets[info.name] = (source, info)
            elif _facts_key(seen[1]) != _facts_key(info):
                if seen[1].status == "ready" and info.status == "ready":
                    raise ConfigError(
                        f"target {info.name!r} has different facts in {seen[0]} and {source}: "
                        "each target must run in one shard only (or on identical machines)")
                if info.status == "ready":  # one shard could not reach it, another could
                    targets[info.name] = (source, info)
        for cell in json_report.cells(report):
            key = (cell.test_id, cell.target)
            seen_cell = cells.get(key)
            if seen_cell is None:
                cells[key] = (source, cell)
            elif (seen_cell[1].outcome, seen_cell[1].expected) != (cell.outcome, cell.expected):
                raise ConfigError(
                    f"{cell.test_id} on {cell.target}: {seen_cell[1].outcome} in {seen_cell[0]} "
                    f"but {cell.outcome} in {source}; run each target in one shard only")
        for test_id, names in (report.get("observations") or {}).items():
            for name, values in names.items():
                for target, value in values.items():
                    slot = observations.setdefault(test_id, {}).setdefault(name, {})
                    if target in slot and slot[target] != value:
                        raise ConfigError(
                            f"observation {name!r} of {test_id} on {target} differs between "
                            f"{obs_source[(test_id, name, target)]} and {source}")
                    slot[target] = value
                    obs_source.setdefault((test_id, name, target), source)
    sessions = list(dict.fromkeys(r.get("session", "") for _, r in reports))
    created = max(str(r.get("created", "")) for _, r in reports)
    digest = hashlib.sha256("\0".join(sorted(sessions)).encode()).hexdigest()[:12]
    return json_report.build_report(
        session=sessions[0] if len(sessions) == 1 else f"merged-{digest}",
        created=created,
        targets=[info for _, info in targets.values()],
        cells=[cell for _, cell in cells.values()],
        observations=observations,
        extra={"merged_from": [source for source, _ in reports], "merged_sessions": sessions},
    )


def _facts_key(info: TargetInfo) -> tuple[Any, ...]:
    facts = dict(info.facts or {})
    facts.pop("boot_id", None)  # differs per boot of the same machine; not an outcome fact
    return info.kind, sorted((k, str(v)) for k, v in facts.items())
