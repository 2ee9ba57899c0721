"""The one small protocol every target kind implements.

A kind module (local.py, container.py, ssh.py, vagrant.py, qemu.py) defines
  * a frozen ``Spec`` dataclass: the options targets.yaml accepts for that kind
    (config.py validates YAML against its fields and type hints), and
  * a ``Target`` subclass that knows its engine and nothing about pytest.

Lifecycle: ``start()`` once, then any number of ``exec``/``put``/``get`` calls
(one at a time per target; the pool serialises access), then ``stop()``, which
must be idempotent and safe to call from any state, including a half-finished
``start()``.
"""

from __future__ import annotations

import abc
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping, Sequence, Union

from portability.errors import CommandFailed
from portability.session import OWNER_LABEL, SESSION_LABEL, TARGET_LABEL, current_owner

#: A command is either an argv list (run with execvp, no shell) or a shell string (``sh -c``).
Command = Union[str, Sequence[str]]


@dataclass(frozen=True, kw_only=True)
class Spec:
    """Options common to every kind. Kind specs subclass this with ``kw_only=True``."""

    name: str
    kind: str
    #: "targets.yaml:12" — where the target was declared, for error messages.
    source: str = "<builtin>"
    #: Local paths (relative to the targets file) put into ``workdir`` before the first test:
    #: "path" lands at ``<workdir>/<basename>``; "path:dest" at ``dest`` (relative to workdir
    #: unless absolute).
    copy: tuple[str, ...] = ()
    #: Directory commands run in by default and where ``copy`` entries land. Kinds pick a default.
    workdir: str | None = None
    #: Extra environment for every command on this target.
    env: Mapping[str, str] = field(default_factory=dict)
    #: CI runner label this target needs (`portability matrix` puts it into the job matrix).
    runner: str | None = None
    #: Inside mode: the interpreter that runs the tests in the target (default: python3; on
    #: kind local, the controller's own interpreter).
    python: str | None = None
    #: Inside mode: shell commands run in the shipped project before the tests (e.g.
    #: ``pip install -e .[test]``); a failing command makes the target's inside tests error.
    install: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    """What one command did. Mirrors testinfra's CommandResult so both read alike."""

    command: Command
    rc: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    timed_out: bool = False
    duration_s: float = 0.0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def exit_status(self) -> int:
        return self.rc

    @property
    def succeeded(self) -> bool:
        return self.rc == 0

    @property
    def failed(self) -> bool:
        return self.rc != 0

    def check(self) -> "Result":
        if self.rc != 0:
            what = "timed out" if self.timed_out else f"exited {self.rc}"
            first = (self.stderr.strip().splitlines() or [""])[0]
            raise CommandFailed(f"command {display(self.command)} {what}: {first}".rstrip(": "))
        return self


def display(command: Command) -> str:
    """A shell-readable rendering of a command for messages."""
    if isinstance(command, str):
        return command
    return shlex.join(command)


def resolve_copy(entry: str, workdir: str) -> tuple[str, str]:
    """Split a ``copy:`` entry into (local path, remote path)."""
    local, sep, dest = entry.partition(":")
    if not sep:
        dest = Path(local.rstrip("/")).name
    if not dest.startswith("/"):
        dest = f"{workdir.rstrip('/')}/{dest}"
    return local, dest


class Target(abc.ABC):
    """One place where the application runs. Subclasses implement the abstract methods."""

    kind: ClassVar[str]
    Spec: ClassVar[type[Spec]]

    def __init__(self, spec: Spec, *, session: str, base_dir: Path):
        self.spec = spec
        self.name = spec.name
        #: The session id; every resource the target creates carries the label
        #: ``io.portability.session=<session>``.
        self.session = session
        #: Relative ``copy:`` paths are resolved against this (the targets file's directory).
        self.base_dir = base_dir
        #: Called with a one-line message at each step of a slow ``start()`` (the pool sets it).
        self.progress: Callable[[str], None] | None = None
        #: Set by the session when a test failed on this target before ``stop()``; a kind may
        #: keep evidence then (vagrant's ``destroy: on-success``).
        self.failed = False

    @classmethod
    def check_engine(cls, spec: Spec, base_dir: Path) -> str | None:
        """Whether this kind's engine is usable for ``spec`` without starting anything.

        None when it looks usable, else a one-line reason (shown by `portability targets list`).
        Relative paths of the spec are relative to ``base_dir`` (the targets file's directory).
        """
        return None

    @property
    def labels(self) -> dict[str, str]:
        """Labels for every resource the target creates: session, target and owning process."""
        return {
            SESSION_LABEL: self.session,
            TARGET_LABEL: self.name,
            OWNER_LABEL: current_owner(),
        }

    @property
    @abc.abstractmethod
    def workdir(self) -> str:
        """The directory commands run in by default (exists once started)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Bring the target up. Raise TargetUnavailable with a one-line reason on failure."""

    @abc.abstractmethod
    def exec(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        """Run one command as a fresh process and return its result.

        A str runs under ``/bin/sh -c``; a sequence is an argv run without a shell.
        ``env`` adds to (and overrides) the target's environment; ``cwd`` defaults to
        ``workdir``. On ``timeout`` the command's whole process tree is killed and the
        result has ``timed_out=True`` and rc 124; the target stays usable.
        Raise TargetLost when the target itself stopped answering.
        """

    @abc.abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file or directory tree to ``remote`` (parents are created)."""

    @abc.abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a remote file or directory tree to ``local``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release everything the target created. Idempotent; never raises."""

    def install_copies(self) -> None:
        """Put the spec's ``copy:`` entries into the target (called by the pool after start)."""
        for entry in self.spec.copy:
            local, remote = resolve_copy(entry, self.workdir)
            path = Path(local)
            if not path.is_absolute():
                path = self.base_dir / path
            self.put(path, remote)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
