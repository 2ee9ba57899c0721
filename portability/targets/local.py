"""kind: local — the machine pytest runs on.

Commands run as direct child processes (no agent: a subprocess is already the
cheapest fresh process). Each command gets its own session so a timeout kills its
whole process tree.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from portability.targets import archive
from portability.targets.base import Command, Result, Spec, Target


@dataclass(frozen=True, kw_only=True)
class LocalSpec(Spec):
    kind: str = "local"


class LocalTarget(Target):
    kind = "local"
    Spec = LocalSpec

    def __init__(self, spec: LocalSpec, *, session: str, base_dir: Path):
        super().__init__(spec, session=session, base_dir=base_dir)
        self._tmp: str | None = None

    @property
    def workdir(self) -> str:
        if self.spec.workdir:
            return self.spec.workdir
        if self._tmp is None:
            raise RuntimeError("local target not started")
        return self._tmp

    def start(self) -> None:
        if not self.spec.workdir:
            self._tmp = tempfile.mkdtemp(prefix=f"portability-{self.session}-{self.name}-")
        else:
            Path(self.spec.workdir).mkdir(parents=True, exist_ok=True)

    def exec(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        full_env = None
        if env or self.spec.env:
            full_env = {**os.environ, **self.spec.env, **(env or {})}
        started = time.perf_counter()
        try:
            proc = subprocess.Popen(
                command if not isinstance(command, str) else ["/bin/sh", "-c", command],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd or self.workdir,
                env=full_env,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            # Same answer a shell (and the agent) gives for a missing program or directory.
            missing_cwd = cwd and not os.path.isdir(cwd)
            return Result(command, 1 if missing_cwd else 127, b"", f"{exc}\n".encode())
        except PermissionError as exc:
            return Result(command, 126, b"", f"{exc}\n".encode())
        timed_out = False
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            out, err = proc.communicate()
        rc = 124 if timed_out else proc.returncode
        if rc < 0:
            rc = 128 - rc
        return Result(command, rc, out, err, timed_out, time.perf_counter() - started)

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        if local.is_dir():
            archive.merge_tree(local, Path(remote))
        else:
            shutil.copy2(local, remote)

    def get(self, remote: str, local: Path) -> None:
        self.put(Path(remote), str(local))

    def stop(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


TARGET = LocalTarget
