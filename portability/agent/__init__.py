"""The static command agent: built once per source version and cached.

The agent is C so that it runs in any Linux userland, Python or not; it is linked
statically so it needs nothing from the image it is copied into.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

from portability.errors import PortabilityError
from portability.paths import cache_dir

SOURCE = Path(__file__).with_name("agent.c")
#: Where the agent lives inside containers and VMs.
REMOTE_PATH = "/.portability/agent"


class AgentUnavailable(PortabilityError):
    """The agent cannot be built here (no C compiler or no static libc)."""


@lru_cache(maxsize=None)
def agent_binary() -> Path:
    """Path of the static x86_64/host-arch agent, compiling it on first use."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    target = cache_dir("agent") / f"agent-{os.uname().machine}-{digest}"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise AgentUnavailable("no C compiler (cc) to build the portability agent; install gcc")
    with tempfile.TemporaryDirectory(prefix="portability-agent-") as tmp:
        out = Path(tmp) / "agent"
        proc = subprocess.run(
            [compiler, "-static", "-O2", "-s", "-o", str(out), str(SOURCE)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise AgentUnavailable(f"building the portability agent failed ({first}); "
                                   "install gcc and the static C library (libc6-dev)")
        tmp_target = target.with_suffix(".tmp")
        shutil.copy2(out, tmp_target)
        tmp_target.chmod(0o755)
        tmp_target.replace(target)
    return target
