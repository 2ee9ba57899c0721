"""Target bring-up progress: one line per event, with the target's facts once it is ready.

Bring-up runs on background threads while pytest captures output around tests, so lines
are queued and written by the main thread from reporting hooks (``flush``), where output
goes to the terminal instead of into a test's captured output.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable

from portability.facts import Facts


def facts_summary(facts: Facts | None) -> str:
    """"container, debian 12, glibc 2.36, python 3.11.2, kernel 6.1.0-50-amd64, x86_64"."""
    if facts is None:
        return "no facts"
    userland = " ".join(filter(None, [facts.os_id, facts.os_version_id])) or "unknown OS"
    libc = f"{facts.libc} {facts.libc_version}" if facts.libc else "no glibc/musl found"
    python = f"python {facts.python}" if facts.python else "no python"
    kernel = f"kernel {facts.kernel_release}" + (" (the host's)" if facts.shares_host_kernel else "")
    return f"{facts.virtualization}, {userland}, {libc}, {python}, {kernel}, {facts.arch}"


class ProgressLines:
    def __init__(self, config, facts_of: Callable[[str], Facts | None]):
        self._config = config
        self._facts_of = facts_of
        self._pending: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, name: str, message: str, elapsed: float) -> None:
        if self._config.getoption("verbose") < 0 or hasattr(self._config, "workerinput"):
            return  # quiet under -q; xdist workers report through the controller
        text = f"portability: {name}: {message}" + (f" ({elapsed:.1f} s)" if elapsed else "")
        if message == "ready":
            text += f" — {facts_summary(self._facts_of(name))}"
        with self._lock:
            self._pending.append(text)

    def flush(self) -> None:
        with self._lock:
            lines, self._pending = self._pending, []
        reporter = self._config.pluginmanager.get_plugin("terminalreporter")
        for line in lines:
            if reporter is not None:
                reporter.write_line(line)
            else:
                print(line, file=sys.stderr)
