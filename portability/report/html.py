"""The self-contained HTML matrix (Jinja2 template in templates/, no external assets)."""

from __future__ import annotations

from typing import Any, Mapping


def render_html(report: Mapping[str, Any]) -> str:
    """One HTML document: coloured grid (rows tests, columns targets, divergent first),
    verdict + attribution per row, facts table, differing observations, message per cell on
    hover/click, and a filter box (pre-filled from ``#filter=`` / ``?filter=``)."""
    raise NotImplementedError
