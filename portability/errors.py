"""Errors a user can cause. Each message names the file, line, key or target and says what to do."""

from __future__ import annotations


class PortabilityError(Exception):
    """Base class: the message is a complete one-line explanation for the user."""


class ConfigError(PortabilityError):
    """targets.yaml or a selection expression is wrong."""


class TargetUnavailable(PortabilityError):
    """A target could not be started (engine unreachable, image missing, boot failed)."""

    def __init__(self, target: str, reason: str):
        self.target = target
        self.reason = reason
        super().__init__(f"target {target!r} is unavailable: {reason}")


class TargetLost(PortabilityError):
    """A target that was ready stopped answering mid-run."""

    def __init__(self, target: str, reason: str):
        self.target = target
        self.reason = reason
        super().__init__(f"target {target!r} was lost: {reason}")


class CommandFailed(PortabilityError):
    """`check_output` / `Result.check()` on a command that exited non-zero."""
