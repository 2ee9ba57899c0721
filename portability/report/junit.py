"""JUnit XML post-processing: target facts and per-testcase target properties."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def add_junit_properties(xml_path: Path, report: Mapping[str, Any]) -> None:
    """Rewrite ``--junitxml`` output in place: a ``<properties>`` block per testsuite with
    ``portability.target.<name>.<fact>``, and per testcase ``portability.target`` /
    ``portability.kind`` / ``portability.kernel`` (not duplicated if already present)."""
    raise NotImplementedError
