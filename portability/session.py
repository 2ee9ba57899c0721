"""The session identity every created resource is labelled with, and how to tell a dead one.

A session id names the process that owns the resources, so `portability clean` can tell
leftovers of crashed runs (owner gone) from resources of runs still going on.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Mapping

SESSION_LABEL = "io.portability.session"
TARGET_LABEL = "io.portability.target"
OWNER_LABEL = "io.portability.owner"  # "<host>/<pid>/<process start time>"


def _process_start(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may contain spaces, so split after ")".
    return stat.rsplit(")", 1)[1].split()[19]


def current_owner() -> str:
    """The owner label value of this process: "<host>/<pid>/<process start time>"."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_process_start(pid)}"


def new_session_id() -> str:
    """"<YYYYmmddHHMMSS>-<pid>-<random>": sortable, and names the process that started it."""
    return f"{time.strftime('%Y%m%d%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"


def owner_alive(owner: str | None) -> bool:
    """Whether the process that owns a resource still runs. Unknown owners on other hosts count as alive."""
    if not owner:
        return False
    try:
        host, pid, start = owner.split("/")
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # cannot tell from here; never remove another machine's resources
    return _process_start(int(pid)) == start


def labels_alive(labels: Mapping[str, str]) -> bool:
    return owner_alive(labels.get(OWNER_LABEL))
