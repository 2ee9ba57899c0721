"""Divergence analysis: pure functions over outcomes and facts (no pytest, no I/O).

The model
---------
A *cell* is one test on one target. A *row* is one test across targets. A row is *divergent*
when the outcomes of its *compared* cells differ. Not compared are:

- cells a marker asked for (``expected``: skip_on / only_on / kernel / userland): the user
  declared that divergence, so it is not news;
- cells of a target that is not ``ready`` (``unavailable`` or ``lost``) whose outcome is
  ``error``: the target failed, not the application. They are listed per row as
  ``unavailable`` so a report can still show them.

For a divergent row, :func:`attribute` splits the compared targets into *passing* (the best
outcome seen in the row, normally ``passed``) and *failing* (the rest), and asks which fact
group *separates* the two sets: every passing target's value differs from every failing
target's. Fact groups:

- ``kernel``   — kernel_release
- ``userland`` — os_id, os_version_id, libc, libc_version, python
- ``arch``     — arch
- ``kind``     — container isolation vs a full system. A container differs from the host in
  isolation (namespaces, cgroups, no init); a VM or SSH server runs a full system like the
  host, its difference from the host is its own kernel, which the kernel group captures.
  Counting "qemu vs local" as a kind difference would make every host-vs-kernel-VM pair
  ambiguous, and that pair is exactly the controlled kernel experiment.

Exactly one separating group gives that verdict; several give ``ambiguous`` plus the target
to add that would tell them apart; none gives ``unexplained`` (same facts, different
outcomes: state, timing, or a fact we do not probe). Re-runs that change a cell's outcome
make the row ``flaky`` whatever the facts say.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("passed", "failed", "skipped", "error", "xfailed", "xpassed")

#: Which side of a split an outcome is on: lower is better. A row's passing set is the
#: targets with its best outcome.
_RANK = {"passed": 0, "xpassed": 1, "xfailed": 2, "skipped": 3, "failed": 4, "error": 5}

FACT_GROUPS: dict[str, tuple[str, ...]] = {
    "kernel": ("kernel_release",),
    "userland": ("os_id", "os_version_id", "libc", "libc_version", "python"),
    "arch": ("arch",),
    "kind": ("kind",),
}

VERDICTS = ("kernel", "userland", "arch", "kind", "ambiguous", "unexplained", "flaky")

#: Kinds that run inside the host's kernel with container isolation (see the module doc).
_ISOLATED_KINDS = frozenset({"container"})
#: Kinds that can boot an arbitrary kernel over a given root filesystem.
_VM_KINDS = frozenset({"qemu", "vagrant"})


@dataclass(frozen=True)
class Cell:
    """One test on one target."""

    test_id: str  # nodeid without the [target] part
    target: str
    outcome: str
    duration_s: float = 0.0
    message: str | None = None  # first line of the failure / skip reason
    expected: bool = False  # a skip/divergence a marker asked for
    reruns: tuple[str, ...] = ()  # outcomes of re-runs of this cell (--portability-rerun)

    @property
    def flaky(self) -> bool:
        return any(r != self.outcome for r in self.reruns)


@dataclass(frozen=True)
class TargetInfo:
    name: str
    kind: str
    status: str  # ready | unavailable | lost
    error: str | None = None
    facts: Mapping[str, Any] | None = None
    ready_s: float | None = None

    def fact(self, key: str) -> Any:
        if key == "kind":
            return self.kind
        return (self.facts or {}).get(key)


@dataclass
class Row:
    """One test across targets, cells in first-seen order."""

    test_id: str
    cells: dict[str, Cell] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        return list(self.cells)


@dataclass(frozen=True)
class Attribution:
    verdict: str  # one of VERDICTS
    passing: tuple[str, ...]
    failing: tuple[str, ...]
    #: the fact values that explain the split: {fact: {target: value}}
    facts: Mapping[str, Mapping[str, Any]]
    explanation: str
    candidates: tuple[str, ...] = ()  # groups that separate the split (several: ambiguous)
    minimal_pairs: tuple[tuple[str, str], ...] = ()  # (passing, failing) differing in one group only
    suggestion: str | None = None  # the target to add that would separate the candidates
    kernel_boundary: str | None = None
    flaky_targets: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "passing": list(self.passing),
            "failing": list(self.failing),
            "facts": {k: dict(v) for k, v in self.facts.items()},
            "explanation": self.explanation,
            "candidates": list(self.candidates),
            "minimal_pairs": [list(p) for p in self.minimal_pairs],
            "suggestion": self.suggestion,
            "kernel_boundary": self.kernel_boundary,
            "flaky_targets": list(self.flaky_targets),
        }


# -- rows and verdicts -----------------------------------------------------------------------

def build_rows(cells: Iterable[Cell]) -> list[Row]:
    """One Row per test id, in first-seen order; a later cell for the same target replaces it."""
    rows: dict[str, Row] = {}
    for cell in cells:
        row = rows.get(cell.test_id)
        if row is None:
            row = rows[cell.test_id] = Row(cell.test_id)
        row.cells[cell.target] = cell
    return list(rows.values())


def is_infrastructure(cell: Cell, targets: Mapping[str, TargetInfo] | None) -> bool:
    """The cell errored because its target was unavailable or lost, not because of the app."""
    if not targets or cell.outcome != "error":
        return False
    info = targets.get(cell.target)
    return info is not None and info.status != "ready"


def compared_cells(row: Row, targets: Mapping[str, TargetInfo] | None = None) -> dict[str, Cell]:
    """The cells whose outcomes count for the verdict (see the module doc)."""
    return {name: cell for name, cell in row.cells.items()
            if not cell.expected and not is_infrastructure(cell, targets)}


def unavailable_cells(row: Row, targets: Mapping[str, TargetInfo] | None) -> list[str]:
    return [name for name, cell in row.cells.items() if is_infrastructure(cell, targets)]


def verdict(row: Row, targets: Mapping[str, TargetInfo] | None = None) -> str:
    """"consistent" or "divergent". Flaky cells make a row divergent even when the first
    outcomes agree: their outcome is not a property of the target."""
    cells = compared_cells(row, targets)
    outcomes = {c.outcome for c in cells.values()}
    if len(outcomes) > 1 or any(c.flaky for c in cells.values()):
        return "divergent"
    return "consistent"


# -- attribution -----------------------------------------------------------------------------

def group_value(info: TargetInfo | None, group: str) -> tuple[Any, ...] | None:
    """A target's value for one fact group; None when its facts are unknown."""
    if info is None:
        return None
    if group == "kind":
        return ("container" if info.kind in _ISOLATED_KINDS else "system",)
    if not info.facts:
        return None
    return tuple(info.fact(k) for k in FACT_GROUPS[group])


def split(row: Row, targets: Mapping[str, TargetInfo] | None = None) -> tuple[list[str], list[str]]:
    """(passing, failing): targets with the row's best outcome vs the others."""
    cells = compared_cells(row, targets)
    if not cells:
        return [], []
    best = min(_RANK.get(c.outcome, 9) for c in cells.values())
    passing = [n for n, c in cells.items() if _RANK.get(c.outcome, 9) == best]
    failing = [n for n, c in cells.items() if _RANK.get(c.outcome, 9) != best]
    return passing, failing


def separates(group: str, passing: Sequence[str], failing: Sequence[str],
              targets: Mapping[str, TargetInfo]) -> bool:
    """Every passing target's value differs from every failing target's (unknown never does)."""
    failing_values = []
    for name in failing:
        value = group_value(targets.get(name), group)
        if value is None:
            return False
        failing_values.append(value)
    for name in passing:
        value = group_value(targets.get(name), group)
        if value is None or value in failing_values:
            return False
    return True


def attribute(row: Row, targets: Mapping[str, TargetInfo]) -> Attribution | None:
    """Why the row diverges; None for a consistent row."""
    if verdict(row, targets) != "divergent":
        return None
    cells = compared_cells(row, targets)
    passing, failing = split(row, targets)
    flaky_targets = tuple(n for n, c in cells.items() if c.flaky)
    if flaky_targets:
        changes = "; ".join(f"{n}: {' → '.join((cells[n].outcome,) + cells[n].reruns)}"
                            for n in flaky_targets)
        return Attribution(
            verdict="flaky", passing=tuple(passing), failing=tuple(failing),
            facts={}, flaky_targets=flaky_targets,
            explanation=f"the outcome changed when re-run ({changes})")

    candidates = [g for g in FACT_GROUPS if separates(g, passing, failing, targets)]
    pairs = _minimal_pairs(passing, failing, targets)
    boundary = kernel_boundary(passing, failing, targets) if "kernel" in candidates else None
    facts = {k: {n: _fact(targets, n, k) for n in passing + failing}
             for g in candidates for k in FACT_GROUPS[g]
             if len({json.dumps(_fact(targets, n, k)) for n in passing + failing}) > 1}
    common = dict(passing=tuple(passing), failing=tuple(failing), facts=facts,
                  candidates=tuple(candidates), kernel_boundary=boundary)
    where = _where(passing, failing, cells)

    if len(candidates) == 1:
        group = candidates[0]
        own_pairs = tuple(p for p, g in pairs if g == group)
        evidence = (f"; minimal pair {own_pairs[0][0]} vs {own_pairs[0][1]} differs only in {group}"
                    if own_pairs else "")
        detail = boundary if boundary else _describe_values(group, passing, failing, targets)
        return Attribution(verdict=group, minimal_pairs=own_pairs,
                           explanation=f"{where}; splits along {group}: {detail}{evidence}",
                           **common)
    if len(candidates) > 1:
        suggestion = suggest_target(candidates, passing, failing, targets)
        return Attribution(
            verdict="ambiguous", suggestion=suggestion,
            explanation=f"{where}; {_and(candidates)} split the targets the same way"
                        + (f"; {suggestion}" if suggestion else ""),
            **common)
    differing = sorted({g for g in FACT_GROUPS
                        for p in passing for f in failing
                        if group_value(targets.get(p), g) != group_value(targets.get(f), g)})
    explanation = (f"{where}; no single fact group separates passing from failing targets"
                   + (f" ({', '.join(differing)} vary, but not along the split)" if differing
                      else " (their facts are identical: state, timing, or an unprobed fact)"))
    return Attribution(verdict="unexplained", explanation=explanation, **common)


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _fact(targets: Mapping[str, TargetInfo], name: str, key: str) -> Any:
    info = targets.get(name)
    return info.fact(key) if info is not None else None


def _where(passing: Sequence[str], failing: Sequence[str], cells: Mapping[str, Cell]) -> str:
    outcomes = sorted({cells[n].outcome for n in failing}, key=lambda o: _RANK.get(o, 9))
    best = cells[passing[0]].outcome if passing else "passed"
    if len(failing) == 1:
        others = f"{len(passing)} other{'s' if len(passing) != 1 else ''}"
        return f"{'/'.join(outcomes)} only on {failing[0]} ({best} on {others})"
    return f"{'/'.join(outcomes)} on {', '.join(failing)}; {best} on {', '.join(passing)}"


def _describe_values(group: str, passing, failing, targets) -> str:
    """The group's facts that differ, failing side first: "python 3.9.2 vs 3.11.2"."""
    def values(names, key):
        seen: list[str] = []
        for n in names:
            text = str(_fact(targets, n, key))
            if text not in seen:
                seen.append(text)
        return "/".join(seen[:3]) + (f"/+{len(seen) - 3} more" if len(seen) > 3 else "")

    parts = []
    for key in FACT_GROUPS[group]:
        bad, good = values(failing, key), values(passing, key)
        if bad != good:
            parts.append(f"{key} {bad} vs {good}")
    return "; ".join(parts) + " (failing vs passing)"


def _group_text(info: TargetInfo | None, group: str) -> str:
    if info is None:
        return "?"
    if group == "kind":
        return info.kind
    if group == "kernel":
        return f"kernel {info.fact('kernel_release')}"
    if group == "arch":
        return str(info.fact("arch"))
    return userland_text(info)


def userland_text(info: TargetInfo) -> str:
    parts = [f"{info.fact('os_id') or '?'} {info.fact('os_version_id') or ''}".strip()]
    if info.fact("libc"):
        parts.append(f"{info.fact('libc')} {info.fact('libc_version') or ''}".strip())
    parts.append(f"python {info.fact('python')}" if info.fact("python") else "no python")
    return ", ".join(parts)


def _minimal_pairs(passing, failing, targets) -> list[tuple[tuple[str, str], str]]:
    """(passing, failing) pairs whose facts differ in exactly one group, with that group."""
    found = []
    for p in passing:
        for f in failing:
            differ = [g for g in FACT_GROUPS
                      if group_value(targets.get(p), g) != group_value(targets.get(f), g)]
            if len(differ) == 1:
                found.append(((p, f), differ[0]))
    return found


def suggest_target(candidates: Sequence[str], passing: Sequence[str], failing: Sequence[str],
                   targets: Mapping[str, TargetInfo]) -> str | None:
    """The target that would separate the first two candidate groups: the failing side's value
    of one group combined with the passing side's values of the others."""
    if len(candidates) < 2 or not failing or not passing:
        return None
    f_info, p_info = targets.get(failing[0]), targets.get(passing[0])
    if f_info is None or p_info is None:
        return None
    host = _host_like(targets)
    groups = set(candidates)
    if "kernel" in groups and "kind" in groups:
        # A container against a VM: a full system with the container's kernel and userland
        # differs from the VM in the kernel alone.
        cont = f_info if f_info.kind in _ISOLATED_KINDS else p_info
        if host is not None and host.fact("kernel_release") == cont.fact("kernel_release") \
                and _same_userland(host, cont):
            return f"add the local target (kernel {kernel_short(cont.fact('kernel_release'))}, the host itself)"
        rootfs = ("rootfs host" if host is not None and _same_userland(host, cont)
                  else f"the {userland_text(cont)} rootfs of {cont.name}")
        return f"add a qemu target with kernel {kernel_short(cont.fact('kernel_release'))} and {rootfs}"
    if "kernel" in groups:
        # Vary the kernel alone: the failing side's kernel with the passing side's userland.
        kernel = kernel_short(f_info.fact("kernel_release"))
        rootfs = ("rootfs host" if host is not None and _same_userland(host, p_info)
                  else f"the {userland_text(p_info)} rootfs of {p_info.name}")
        on_host_kernel = host is not None and host.fact("kernel_release") == f_info.fact("kernel_release")
        if on_host_kernel and "kind" not in groups:
            return (f"add a container target with the userland of {p_info.name} "
                    f"({userland_text(p_info)}) to run it on kernel {kernel}")
        return f"add a qemu target with kernel {kernel} and {rootfs}"
    if "userland" in groups:
        if "kind" in groups:
            # userland and isolation vary together: a container with the userland of the side
            # that is not one separates them, and a container is the cheapest target to add.
            system = p_info if p_info.kind not in _ISOLATED_KINDS else f_info
            return (f"add a container target with the userland of {system.name} "
                    f"({userland_text(system)})")
        return (f"add a target of arch {p_info.fact('arch')} with the userland of {f_info.name} "
                f"({userland_text(f_info)})")
    if "arch" in groups:
        return (f"add a {f_info.kind} target of arch {f_info.fact('arch')} "
                f"that runs as {'a container' if p_info.kind in _ISOLATED_KINDS else 'a full system'}")
    return None


def _host_like(targets: Mapping[str, TargetInfo]) -> TargetInfo | None:
    for info in targets.values():
        if info.kind == "local" and info.facts:
            return info
    return None


def _same_userland(a: TargetInfo, b: TargetInfo) -> bool:
    return group_value(a, "userland") == group_value(b, "userland")


# -- kernel boundary -------------------------------------------------------------------------

def kernel_version(release: str | None) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", release or "")
    return tuple(int(x) for x in match.group(0).split(".")) if match else ()


def kernel_short(release: str | None) -> str:
    """"6.1.0-50-amd64" -> "6.1"; unparsable releases stay as they are."""
    version = kernel_version(release)
    return ".".join(map(str, version[:2])) if version else str(release)


def kernel_boundary(passing: Sequence[str], failing: Sequence[str],
                    targets: Mapping[str, TargetInfo]) -> str | None:
    """"fails on kernel ≤ 6.1, passes on ≥ 6.12" when the kernel versions split monotonically."""
    def versions(names):
        out = []
        for n in names:
            v = kernel_version(_fact(targets, n, "kernel_release"))
            if not v:
                return None
            out.append(v)
        return out

    good, bad = versions(passing), versions(failing)
    if not good or not bad:
        return None
    if max(bad) < min(good):
        low, high, low_word, high_word = max(bad), min(good), "fails", "passes"
    elif max(good) < min(bad):
        low, high, low_word, high_word = max(good), min(bad), "passes", "fails"
    else:
        return None
    low_text, high_text = _distinct_prefixes(low, high)
    return f"{low_word} on kernel ≤ {low_text}, {high_word} on ≥ {high_text}"


def _distinct_prefixes(low: tuple[int, ...], high: tuple[int, ...]) -> tuple[str, str]:
    """Shortest dotted prefixes (at least major.minor) that still tell the versions apart."""
    n = 2
    while n < max(len(low), len(high)) and low[:n] == high[:n]:
        n += 1
    return ".".join(map(str, low[:n])), ".".join(map(str, high[:n]))


# -- observations ----------------------------------------------------------------------------

def differing_observations(
    observations: Mapping[str, Mapping[str, Mapping[str, Any]]] | None,
) -> list[dict[str, Any]]:
    """Every observation whose values are not all equal across targets:
    ``[{"test": id, "name": name, "values": {target: value}}]``. Values compare as JSON."""
    found = []
    for test_id, names in (observations or {}).items():
        for name, values in names.items():
            if len(values) > 1 and len({json.dumps(v, sort_keys=True, default=str)
                                        for v in values.values()}) > 1:
                found.append({"test": test_id, "name": name, "values": dict(values)})
    return found


# -- the gate --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    """What the release gate decided. ``ok`` False means a non-zero exit code."""

    ok: bool
    divergent: tuple[str, ...] = ()  # tests divergent now (undeclared: declared ones are expected)
    new_divergences: tuple[str, ...] = ()  # divergent now, not in the baseline (baseline only)
    known_divergences: tuple[str, ...] = ()  # divergent now and in the baseline
    regressions: tuple[tuple[str, str, str], ...] = ()  # (test, target, outcome now)
    fixed: tuple[str, ...] = ()  # divergent in the baseline, consistent now
    baseline: bool = False
    #: test id -> its attribution verdict (kernel, userland, flaky, ...), for the message
    why: Mapping[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out: list[str] = []
        failing = self.new_divergences if self.baseline else self.divergent
        if failing:
            word = "new divergence" if self.baseline else "undeclared divergence"
            out.append(f"portability gate: {len(failing)} {word}{'s' if len(failing) != 1 else ''}:")
            out += [f"  {t}" + (f" ({self.why[t]})" if t in self.why else "") for t in failing]
        if self.regressions:
            out.append(f"portability gate: {len(self.regressions)} regression"
                       f"{'s' if len(self.regressions) != 1 else ''} (passed in the baseline):")
            out += [f"  {t} on {target}: {now}" for t, target, now in self.regressions]
        if self.known_divergences:
            out.append(f"portability gate: {len(self.known_divergences)} known divergence(s) "
                       "also in the baseline (not failing the gate)")
        if self.fixed:
            out.append(f"portability gate: {len(self.fixed)} fixed since the baseline:")
            out += [f"  {t}" for t in self.fixed]
        out.append("portability gate: " + ("passed" if self.ok else "FAILED"))
        return out


def gate(report: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> GateResult:
    """Without a baseline every divergence fails the gate (declared ones are already not
    divergences). With one, only new divergences and regressions do: a cell that passed in the
    baseline and now fails or errors (on a ready target, not by a marker's request)."""
    divergent = tuple(t["id"] for t in report.get("tests", []) if t.get("verdict") == "divergent")
    why = {t["id"]: t["attribution"]["verdict"] for t in report.get("tests", [])
           if t.get("verdict") == "divergent" and t.get("attribution")}
    if baseline is None:
        return GateResult(ok=not divergent, divergent=divergent, why=why)
    before = {t["id"]: t for t in baseline.get("tests", [])}
    new = tuple(t for t in divergent if before.get(t, {}).get("verdict") != "divergent")
    known = tuple(t for t in divergent if t not in new)
    now_ids = {t["id"]: t for t in report.get("tests", [])}
    fixed = tuple(t for t, old in before.items()
                  if old.get("verdict") == "divergent" and t in now_ids
                  and now_ids[t].get("verdict") == "consistent")
    ready = {n for n, info in report.get("targets", {}).items() if info.get("status") == "ready"}
    regressions = []
    for test in report.get("tests", []):
        old = before.get(test["id"])
        if old is None:
            continue
        for target, cell in test.get("outcomes", {}).items():
            old_cell = old.get("outcomes", {}).get(target)
            if (old_cell and old_cell.get("outcome") == "passed" and target in ready
                    and not cell.get("expected") and cell.get("outcome") in ("failed", "error")):
                regressions.append((test["id"], target, cell["outcome"]))
    return GateResult(ok=not new and not regressions, divergent=divergent, new_divergences=new,
                      known_divergences=known, regressions=tuple(regressions), fixed=fixed,
                      baseline=True, why=why)
