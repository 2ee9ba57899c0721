"""What a test gets as the ``target`` fixture: one started target, with its facts and a testinfra Host."""

from __future__ import annotations

import shlex
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

from portability.errors import TargetLost
from portability.facts import Facts
from portability.targets.base import Command, Result, Target


class TargetHandle:
    """A started target as seen by a test.

    ``run`` follows testinfra's ``host.run``: ``run("ls %s", path)`` quotes the arguments;
    a list runs as an argv without a shell.
    """

    def __init__(self, target: Target, facts: Facts, *,
                 on_lost: Callable[[str, str], None] | None = None):
        self._target = target
        self.facts = facts
        self._on_lost = on_lost
        self._observer: Callable[[str, Any], None] | None = None

    @property
    def name(self) -> str:
        return self._target.name

    @property
    def kind(self) -> str:
        return self._target.kind

    @property
    def workdir(self) -> str:
        """Where commands run by default and where ``copy:`` entries land."""
        return self._target.workdir

    @property
    def spec(self):
        return self._target.spec

    @property
    def container_id(self) -> str | None:
        """The engine's id of the container behind this target (None for other kinds)."""
        return getattr(self._target, "container_id", None)

    def fact_skip(self, node) -> tuple[str, str] | None:
        """(marker, reason) when a fact marker of this pytest node skips it on this target."""
        from portability.markers import FACT_MARKERS, skip_decision

        markers = [(m.name, m.args, m.kwargs) for m in node.iter_markers()
                   if m.name in FACT_MARKERS]
        if not markers:
            return None
        decision = skip_decision(markers, {**self.facts.as_dict(), "kind": self.kind,
                                           "name": self.name})
        return None if decision is None else (decision[0], f"{decision[1]} on {self.name}")

    def path(self, *parts: str) -> str:
        """A path under the workdir: ``target.path("app", "cli.py")``."""
        return "/".join([self.workdir.rstrip("/"), *parts])

    def run(
        self,
        command: Command,
        *args: Any,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | str | None = None,
    ) -> Result:
        if args:
            if not isinstance(command, str):
                raise TypeError("format arguments need a shell-string command")
            command = command % tuple(shlex.quote(str(a)) for a in args)
        if isinstance(stdin, str):
            stdin = stdin.encode()
        return self.exec(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)

    def exec(self, command: Command, *, timeout: float | None = None,
             env: Mapping[str, str] | None = None, cwd: str | None = None,
             stdin: bytes | None = None) -> Result:
        """The target protocol's exec; a lost target is reported to the session."""
        try:
            return self._target.exec(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)
        except TargetLost as exc:
            if self._on_lost:
                self._on_lost(self.name, exc.reason)
            raise

    def check_output(self, command: Command, *args: Any, **kwargs: Any) -> str:
        """stdout of a command that must succeed, without the trailing newline."""
        return self.run(command, *args, **kwargs).check().stdout.rstrip("\n")

    def observe(self, name: str, value: Any) -> Any:
        """Record a value of this target (a version string, a checksum, a listing …).

        The report lists every observation whose values differ across targets, so
        "runs identically" covers outputs, not only pass/fail. Returns ``value``.
        """
        if self._observer is None:
            raise RuntimeError("observe() is only available inside a test")
        self._observer(name, value)
        return value

    def bind_observer(self, observer: Callable[[str, Any], None] | None) -> None:
        """Route observe() to the current test (the plugin binds it per test)."""
        self._observer = observer

    def put(self, local: str | Path, remote: str) -> None:
        self._target.put(Path(local), remote)

    def get(self, remote: str, local: str | Path) -> None:
        self._target.get(remote, Path(local))

    @cached_property
    def host(self):
        """A testinfra Host whose commands run through this target's exec channel."""
        from portability.testinfra_backend import host_for

        return host_for(self)

    def __repr__(self) -> str:
        return f"<target {self.name} ({self.kind}, kernel {self.facts.kernel_release})>"
