"""A testinfra backend over a target's own exec channel.

Every testinfra module (file, package, service, socket, user, system_info …) builds on
``backend.run``, so routing ``run`` through ``Target.exec`` makes all of them work on every
kind, at the target's speed instead of one ``docker exec`` / SSH channel per command.
"""

from __future__ import annotations

from typing import Any

import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult


class TargetBackend(BaseBackend):
    NAME = "portability"

    def __init__(self, target: Any, **kwargs: Any):
        self.target = target
        super().__init__(target.name, **kwargs)

    def get_pytest_id(self) -> str:
        return self.target.name

    def get_hostname(self) -> str:
        return self.target.name

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        cmd = self.get_command(command, *args)
        result = self.target.exec(cmd)
        return self.result(result.rc, self.encode(cmd), result.stdout_bytes, result.stderr_bytes)


def host_for(target: Any) -> testinfra.host.Host:
    """A testinfra Host whose every command runs through ``target.exec``."""
    backend = TargetBackend(target)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host
