"""Matching target facts against marker criteria: ``skip_on``/``only_on``/``kernel``/``userland``.

Pure functions over plain mappings; the plugin turns ``ValueError`` into a usage error.

Version specs compare numeric components at the precision the spec gives, so that
``kernel<=6.1`` includes 6.1.0-50-amd64 and ``kernel<6.1`` excludes every 6.1.x: a user who
writes "6.1" means the 6.1 series, not the version 6.1.0 exactly.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Iterable, Mapping

from portability.facts import Facts, version_tuple

#: Criterion keys whose string values are version specs (">=6.6", "<3.12", "6.1").
VERSION_KEYS = frozenset({"kernel_release", "python", "libc_version", "os_version_id"})
#: Short names accepted in markers.
ALIASES = {"kernel": "kernel_release", "os": "os_id"}
#: Keys the plugin adds to the facts mapping besides the Facts fields.
EXTRA_KEYS = ("kind", "name")

_OPERATORS = (">=", "<=", "==", "!=", ">", "<")
_CLAUSE = re.compile(r"\s*(>=|<=|==|!=|>|<)?\s*(\d+(?:\.\d+)*)(?:\.\*)?\s*")


def known_keys() -> list[str]:
    """Every criterion key a marker may use."""
    return sorted({f.name for f in dataclasses.fields(Facts)} | set(EXTRA_KEYS) | set(ALIASES))


def version_matches(value: str | None, spec: str) -> bool:
    """Whether a version string satisfies a spec.

    ``spec``: clauses joined by commas (all must hold), each ``OP VERSION`` with OP one of
    >=, <=, >, <, ==, != or none (``"6.1"``: same as ``==6.1``). Only the components the
    clause gives are compared: ``6.1.0-50-amd64`` is ``==6.1`` and ``<=6.1`` but not ``>6.1``.
    A value without a numeric version (None, "") matches nothing.
    Raises ValueError for a malformed spec.
    """
    clauses = _parse_spec(spec)
    have = version_tuple(value) if value is not None else ()
    if not have:
        return False
    return all(_compare(have, op, want) for op, want in clauses)


def _parse_spec(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty version spec {spec!r}; write e.g. '>=6.6' or '>=3.9,<3.12'")
    clauses = []
    for clause in spec.split(","):
        match = _CLAUSE.fullmatch(clause)
        if not match:
            raise ValueError(f"bad version spec {spec!r}: {clause.strip()!r} is not OP VERSION "
                             f"(OP one of {', '.join(_OPERATORS)} or none; e.g. '>=6.6', '<3.12')")
        clauses.append((match.group(1) or "==", tuple(int(x) for x in match.group(2).split("."))))
    return clauses


def _compare(have: tuple[int, ...], op: str, want: tuple[int, ...]) -> bool:
    # Compare at the spec's precision; a shorter value counts missing components as 0.
    have = (have + (0,) * len(want))[: len(want)]
    return {
        ">=": have >= want, "<=": have <= want, ">": have > want,
        "<": have < want, "==": have == want, "!=": have != want,
    }[op]


def _is_version_spec(text: str) -> bool:
    try:
        _parse_spec(text)
    except ValueError:
        return False
    return True


def check_criteria(criteria: Mapping[str, Any]) -> None:
    """Raise ValueError for an unknown key or a malformed version spec (before any facts exist)."""
    keys = known_keys()
    for key, expected in criteria.items():
        if _canonical(key) not in keys:
            raise ValueError(_unknown(key, keys))
        for item in _alternatives(expected):
            item = _version_text(_canonical(key), item)
            if _canonical(key) in VERSION_KEYS and isinstance(item, str) and \
                    item.lstrip().startswith(_OPERATORS):
                _parse_spec(item)


def facts_match(facts: Mapping[str, Any], criteria: Mapping[str, Any]) -> bool:
    """Whether the facts meet every criterion.

    A criterion is a scalar (equality; None matches a missing/None fact), a list/tuple (any
    of its items), or, for version keys (kernel, kernel_release, python, libc_version,
    os_version_id), a version spec string (``">=3.11"``, ``"6.1"``). Unknown keys raise
    ValueError naming the known keys.
    """
    known = set(known_keys())
    for key, expected in criteria.items():
        name = _canonical(key)
        if name not in known and name not in facts:
            raise ValueError(_unknown(key, sorted(known)))
        actual = facts.get(name)
        if not any(_match_one(name, actual, item) for item in _alternatives(expected)):
            return False
    return True


def _match_one(name: str, actual: Any, expected: Any) -> bool:
    if expected is None:
        return actual is None
    expected = _version_text(name, expected)
    if name in VERSION_KEYS and isinstance(expected, str):
        text = expected.strip()
        if text.startswith(_OPERATORS):
            return version_matches(None if actual is None else str(actual), text)
        if _is_version_spec(text) and actual is not None:
            # A bare "6.1" means the 6.1 series; exact text equality still counts ("6.1-rc1").
            return str(actual) == text or version_matches(str(actual), text)
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected if isinstance(expected, bool) else False
    return actual == expected


def _version_text(name: str, expected: Any) -> Any:
    """Version keys take strings; a float would lose digits (3.10 is 3.1), so refuse it."""
    if name not in VERSION_KEYS or isinstance(expected, (str, bool)) or expected is None:
        return expected
    if isinstance(expected, int):
        return str(expected)
    if isinstance(expected, float):
        raise ValueError(f"{name}={expected!r} is a number; quote the version "
                         f"(e.g. {name}='3.10') so no digits are lost")
    return expected


def _alternatives(expected: Any) -> Iterable[Any]:
    return expected if isinstance(expected, (list, tuple, set, frozenset)) else (expected,)


def _unknown(key: str, keys: list[str]) -> str:
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown fact {key!r}{hint}; known facts: {', '.join(keys)}"


def _canonical(key: str) -> str:
    return ALIASES.get(key, key)


def describe(criteria: Mapping[str, Any]) -> str:
    """A short human rendering for skip reasons: ``"kind=container, python>=3.11"``."""
    return ", ".join(_describe_one(key, value) for key, value in criteria.items())


def _describe_one(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_describe_one(key, item) for item in value]
        return items[0] if len(items) == 1 else "(" + " or ".join(items) + ")"
    if isinstance(value, str) and value.strip().startswith(_OPERATORS):
        return f"{key}{value.strip()}"
    if value is None:
        return f"{key}=none"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


#: Facts a ``@pytest.mark.userland(...)`` expectation may name (the kernel has its own marker).
USERLAND_KEYS = frozenset({"os", "os_id", "os_version_id", "libc", "libc_version", "python", "arch"})


def declared_expectation(marker: str, args: tuple, kwargs: Mapping[str, Any]) -> tuple[dict, str | None]:
    """Criteria and reason of ``@pytest.mark.kernel(">=6.6", reason=...)`` or
    ``@pytest.mark.userland(python=">=3.11", reason=...)``: the targets where the test is
    expected to pass. Raises ValueError for a malformed marker."""
    kwargs = dict(kwargs)
    reason = kwargs.pop("reason", None)
    if marker == "kernel":
        if len(args) != 1 or kwargs or not isinstance(args[0], str):
            raise ValueError("@pytest.mark.kernel takes one version spec, e.g. "
                             "@pytest.mark.kernel('>=6.6', reason='fchmodat2')")
        criteria = {"kernel": args[0]}
        _parse_spec(args[0])
    elif marker == "userland":
        if args or not kwargs:
            raise ValueError("@pytest.mark.userland takes facts as keywords, e.g. "
                             "@pytest.mark.userland(python='>=3.11', reason='...')")
        for key in kwargs:
            if key not in USERLAND_KEYS:
                raise ValueError(_unknown(key, sorted(USERLAND_KEYS)).replace(
                    "unknown fact", "not a userland fact", 1))
        criteria = kwargs
    else:
        raise ValueError(f"not an expectation marker: {marker!r} (use kernel or userland)")
    check_criteria(criteria)
    return criteria, reason


# -- the plugin's fact markers ---------------------------------------------------------------

#: Markers whose decision depends on a target's facts.
FACT_MARKERS = ("skip_on", "only_on", "kernel", "userland")


def marker_criteria(name: str, args: tuple, kwargs: Mapping[str, Any]) -> tuple[dict, str | None]:
    """(criteria, reason) of a fact marker; ValueError when it is malformed."""
    if name in ("kernel", "userland"):
        return declared_expectation(name, args, kwargs)
    criteria = dict(kwargs)
    reason = criteria.pop("reason", None)
    check_criteria(criteria)
    return criteria, reason


def skip_decision(markers: Iterable[tuple[str, tuple, Mapping[str, Any]]],
                  facts: Mapping[str, Any]) -> tuple[str, str] | None:
    """Whether fact markers skip a test on a target with these facts: (marker, reason) or None.

    ``skip_on`` skips where the facts match; ``only_on`` where they do not; ``kernel`` and
    ``userland`` declare where the test is expected to pass, so elsewhere it is skipped as an
    expected divergence rather than reported as a failure.
    """
    for name, args, kwargs in markers:
        criteria, reason = marker_criteria(name, args, kwargs)
        matched = facts_match(facts, criteria)
        if name == "skip_on" and matched:
            text = f"skip_on {describe(criteria)}"
        elif name != "skip_on" and not matched:
            word = "only_on" if name == "only_on" else "expected divergence: needs"
            text = f"{word} {describe(criteria)}"
        else:
            continue
        return name, f"{text}{f' ({reason})' if reason else ''}"
    return None
