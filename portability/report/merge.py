"""Merge CI-matrix shards (one report per job) into one report."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


def merge(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """``[(file name, report), ...]`` -> one report with the verdicts a single run would give.
    Two shards with different outcomes for the same test on the same target raise ConfigError
    naming both files."""
    raise NotImplementedError
