"""Inside mode: run the application's own tests inside each target (issue 7).

Stub: being written. plugin.py calls ``wants`` from pytest_generate_tests (to parametrize
tests that do not use the ``target`` fixture) and registers ``InsidePlugin``.
"""

from __future__ import annotations

import pytest


def addoption(group, parser) -> None:
    """Add inside-mode options to the plugin's option group."""


def wants(definition: pytest.Function, config: pytest.Config) -> bool:
    """Whether this test function runs inside each target instead of on the controller."""
    return False


class InsidePlugin:
    """pytest hooks of inside mode (registered by plugin.py at configure time)."""

    def __init__(self, run):
        self.run = run
