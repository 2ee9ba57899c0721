"""kind: vagrant — a Vagrant-managed VM, reached over the ssh kind's transport.

python-vagrant drives the vagrant CLI: ``up`` (its ``==>`` lines become progress lines),
``ssh-config`` (which feeds :class:`portability.targets.ssh.SshConnection`; the VM's host
key is trusted for this session only, never written to known_hosts), ``destroy`` on every
exit path. Works with whatever provider the user has (virtualbox, libvirt, docker, ...).

Each target gets a per-session directory ``<cache>/vagrant/sessions/<session>--<target>/``
holding the machine state (``VAGRANT_DOTFILE_PATH``), the generated Vagrantfile when the
target names a ``box:``, logs, and ``meta.json`` (session, owning process) from which
:func:`clean_stale` destroys machines of sessions that died without cleaning up. So two
sessions (or two targets) can use the same ``vagrantfile_dir`` without sharing a machine.

Every ``vagrant`` call gets a free loopback port in ``PORTABILITY_SSH_PORT``, so
Vagrantfiles that forward SSH with it (like the project's test box, which has no libvirt
network and a qemu user-mode NIC forwarded to 127.0.0.1) can run side by side.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping

from portability.errors import TargetLost, TargetUnavailable
from portability.paths import cache_dir
from portability.session import current_owner, owner_alive
from portability.targets.base import Command, Result, Spec, Target
from portability.targets.ssh import SshSpec, SshTarget

log = logging.getLogger("portability.vagrant")

DestroyPolicy = Literal["always", "never", "on-success"]
#: Environment variables the tool sets for every vagrant call (Vagrantfiles may read them).
PORT_ENV = "PORTABILITY_SSH_PORT"
PREFIX_ENV = "PORTABILITY_VAGRANT_PREFIX"
CONSOLE_ENV = "PORTABILITY_CONSOLE_LOG"


@dataclass(frozen=True, kw_only=True)
class VagrantSpec(Spec):
    kind: str = "vagrant"
    #: A directory with a Vagrantfile (relative to the targets file).
    vagrantfile_dir: str | None = None
    #: Or a box name: the tool writes the Vagrantfile (plus the ``vagrantfile:`` snippet).
    box: str | None = None
    #: Ruby lines inserted into the generated ``Vagrant.configure`` block (``config`` in scope).
    vagrantfile: str | None = None
    #: The machine of a multi-machine Vagrantfile (default: its only/primary machine).
    machine: str | None = None
    provider: str | None = None
    #: Seconds `vagrant up` may take.
    up_timeout: float = 900.0
    destroy: DestroyPolicy = "always"
    #: Run commands through ``sudo -n`` in the VM (Vagrant boxes give the vagrant user that).
    sudo: bool = False
    connect_timeout: float = 30.0

    def validate(self) -> str | None:
        if bool(self.vagrantfile_dir) == bool(self.box):
            return ("needs either `vagrantfile_dir:` (a directory with a Vagrantfile) or `box:` "
                    "(a box name; the tool writes the Vagrantfile), not both")
        if self.vagrantfile and not self.box:
            return "`vagrantfile:` (a snippet) goes with `box:`; with `vagrantfile_dir:` edit " \
                   "that Vagrantfile instead"
        if self.up_timeout <= 0:
            return "`up_timeout:` must be a positive number of seconds"
        return None


def sessions_root() -> Path:
    return cache_dir("vagrant", "sessions")


_ports_lock = threading.Lock()
_ports_given: set[int] = set()


def allocate_port() -> int:
    """A free 127.0.0.1 port not handed to another VM of this process."""
    with _ports_lock:
        for _ in range(50):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise TargetUnavailable("vagrant", "no free loopback port")


class VagrantTarget(Target):
    kind = "vagrant"
    Spec = VagrantSpec

    def __init__(self, spec: VagrantSpec, *, session: str, base_dir: Path):
        super().__init__(spec, session=session, base_dir=base_dir)
        self.spec: VagrantSpec = spec
        self.session_dir: Path | None = None
        self.port: int | None = None
        self._vagrant = None
        self._ssh: SshTarget | None = None
        self._created = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def check_engine(cls, spec: VagrantSpec, base_dir: Path) -> str | None:
        if shutil.which("vagrant") is None:
            return "the vagrant command is not installed"
        if spec.vagrantfile_dir and not (base_dir / spec.vagrantfile_dir / "Vagrantfile").exists():
            return f"no Vagrantfile in {base_dir / spec.vagrantfile_dir}"
        if spec.box:
            try:
                listed = subprocess.run(["vagrant", "box", "list", "--machine-readable"],
                                        capture_output=True, text=True, timeout=60,
                                        env=_quiet_env(os.environ))
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"`vagrant box list` failed ({exc})"
            names = {line.split(",")[3] for line in listed.stdout.splitlines()
                     if line.count(",") >= 3 and line.split(",")[2] == "box-name"}
            if spec.box not in names and "/" in spec.box and "://" not in spec.box:
                return f"box {spec.box} is not installed (`vagrant box add {spec.box} ...`)"
        return None

    @property
    def workdir(self) -> str:
        if self._ssh is None:
            raise RuntimeError(f"vagrant target {self.name} not started")
        return self._ssh.workdir

    @property
    def ssh(self) -> SshTarget | None:
        return self._ssh

    @property
    def machine(self) -> str:
        return self.spec.machine or "default"

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.failed = True  # `destroy: on-success` keeps a VM that did not come up
            raise

    def _start(self) -> None:
        import vagrant

        if shutil.which("vagrant") is None:
            raise TargetUnavailable(self.name, "the vagrant command is not installed "
                                    "(apt-get install vagrant, plus a provider plugin)")
        root = self._project_root()
        self.session_dir = sessions_root() / f"{self.session}--{self.name}"
        self.session_dir.mkdir(parents=True, exist_ok=True)
        self.port = allocate_port()
        if self.spec.box:
            (self.session_dir / "Vagrantfile").write_text(self._generated_vagrantfile())
            root = self.session_dir
        self._write_meta(root)
        self._vagrant = vagrant.Vagrant(
            root=str(root), env=self._env(), quiet_stdout=True,
            err_cm=vagrant.make_file_cm(str(self.session_dir / "vagrant.log"), mode="a"))
        self._created = True  # from here on, stop() destroys whatever `up` managed to create
        self._up()
        try:
            config_text = self._vagrant.ssh_config(vm_name=self.spec.machine)
        except subprocess.CalledProcessError:
            raise TargetUnavailable(self.name, f"`vagrant ssh-config` failed after up: "
                                    f"{self._log_tail()}") from None
        host = _first_host(config_text) or self.machine
        config_path = self.session_dir / "ssh_config"
        config_path.write_text(config_text)
        ssh_spec = SshSpec(name=self.name, host=host, ssh_config=str(config_path),
                           connect_timeout=self.spec.connect_timeout, sudo=self.spec.sudo,
                           workdir=self.spec.workdir, env=dict(self.spec.env))
        # The VM's key is new on every up: trust what this session's VM shows first, pin it for
        # reconnects, and never write it to the user's known_hosts.
        self._ssh = SshTarget(ssh_spec, session=self.session, base_dir=self.base_dir,
                              _host_key_mode="session")
        self._ssh.start()

    def _project_root(self) -> Path:
        if not self.spec.vagrantfile_dir:
            return self.base_dir
        root = Path(self.spec.vagrantfile_dir).expanduser()
        if not root.is_absolute():
            root = self.base_dir / root
        if not (root / "Vagrantfile").is_file():
            raise TargetUnavailable(self.name, f"`vagrantfile_dir: {self.spec.vagrantfile_dir}`: "
                                    f"no Vagrantfile in {root}")
        return root

    def _generated_vagrantfile(self) -> str:
        lines = [f"# Written by pytest-portability for target {self.name!r}, session "
                 f"{self.session}; removed with the session.",
                 'Vagrant.configure("2") do |config|',
                 f"  config.vm.box = {json.dumps(self.spec.box)}"]
        if self.spec.machine:
            lines.append(f"  config.vm.define {json.dumps(self.spec.machine)}, primary: true")
        for line in (self.spec.vagrantfile or "").splitlines():
            lines.append(f"  {line}")
        lines.append("end")
        return "\n".join(lines) + "\n"

    def _env(self) -> dict[str, str]:
        return _machine_env(self.session_dir, session=self.session, target=self.name,
                            port=self.port, provider=self.spec.provider)

    def _write_meta(self, root: Path) -> None:
        meta = {"session": self.session, "owner": current_owner(), "target": self.name,
                "root": str(root), "machine": self.spec.machine, "provider": self.spec.provider,
                "port": self.port, "keep": self.spec.destroy == "never", "created": time.time()}
        (self.session_dir / "meta.json").write_text(json.dumps(meta, indent=1))

    def _up(self) -> None:
        started = time.monotonic()
        result: dict = {}

        def run() -> None:
            try:
                for line in self._vagrant.up(vm_name=self.spec.machine, provider=self.spec.provider,
                                             stream_output=True):
                    self._log_line(line)
                    text = line.strip()
                    if text.startswith("==>"):
                        # "==> default: Starting domain." — skip the indented config dump
                        # ("-- Memory: 1024M") that libvirt prints under it.
                        _, _, what = text[3:].partition(": ")
                        if what and not what.lstrip().startswith(("--", "->")):
                            self._report(f"vagrant: {what.strip()}", started)
            except subprocess.CalledProcessError as exc:
                result["rc"] = exc.returncode
            except Exception as exc:  # noqa: BLE001 — reported below as the reason
                result["error"] = exc
            else:
                result["rc"] = 0

        thread = threading.Thread(target=run, name=f"vagrant-up-{self.name}", daemon=True)
        thread.start()
        thread.join(self.spec.up_timeout)
        if thread.is_alive():
            self._interrupt_up()
            thread.join(60)
            raise TargetUnavailable(self.name, f"`vagrant up` did not finish within "
                                    f"{self.spec.up_timeout:.0f} s (up_timeout); last output: "
                                    f"{self._log_tail()}")
        if "error" in result:
            raise TargetUnavailable(self.name, f"`vagrant up` could not run: {result['error']}")
        if result.get("rc"):
            raise TargetUnavailable(self.name, f"`vagrant up` failed (exit {result['rc']}): "
                                    f"{self._log_tail()}")

    def _interrupt_up(self) -> None:
        """Ctrl-C for the `vagrant up` still running (Vagrant then cleans up what it began).

        python-vagrant does not expose its subprocess: ours is the child whose environment
        carries this target's VAGRANT_DOTFILE_PATH (other targets' ups are left alone)."""
        mark = f"VAGRANT_DOTFILE_PATH={self.session_dir / '.vagrant'}"

        def ours() -> list[int]:
            return _children_with_env(os.getpid(), mark)

        for pid in ours():
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ours():
            time.sleep(0.5)
        for pid in ours():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _log_line(self, line: str) -> None:
        with open(self.session_dir / "vagrant.log", "a", encoding="utf-8") as f:
            f.write(line if line.endswith("\n") else line + "\n")

    def _log_tail(self, lines: int = 3) -> str:
        try:
            text = (self.session_dir / "vagrant.log").read_text(errors="replace")
        except OSError:
            return "no output"
        useful = [line.strip() for line in text.splitlines() if line.strip()]
        return " | ".join(useful[-lines:])[-600:] or "no output"

    def _report(self, message: str, started: float) -> None:
        if self.progress is not None:
            self.progress(message)
        else:
            log.info("%s: %s (%.1f s)", self.name, message, time.monotonic() - started)

    def stop(self) -> None:
        ssh, self._ssh = self._ssh, None
        if ssh is not None:
            ssh.stop()
        # Only the first stop() decides: a later one (the pool stops a target that failed to
        # start twice) must not remove the state of a VM that was kept or not destroyed, or
        # `portability clean` could never find that VM again.
        session_dir, self.session_dir = self.session_dir, None
        created, self._created = self._created, False
        if session_dir is None:
            return
        if created:
            policy = self.spec.destroy
            if policy == "never" or (policy == "on-success" and self.failed):
                log.warning("%s: keeping the VM (destroy: %s); remove it with `portability "
                            "clean` or `VAGRANT_DOTFILE_PATH=%s/.vagrant vagrant destroy -f` in %s",
                            self.name, policy, session_dir, self._vagrant.root)
                return
            if not _destroy(self._vagrant, self.spec.machine):
                log.warning("%s: `vagrant destroy` failed; `portability clean` retries later "
                            "(state in %s)", self.name, session_dir)
                return
        shutil.rmtree(session_dir, ignore_errors=True)

    # -- commands and files: the SSH transport -----------------------------------------------

    def exec(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        if self._ssh is None:
            raise TargetLost(self.name, "the VM is not running")
        try:
            return self._ssh.exec(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)
        except TargetLost:
            self.failed = True
            raise

    def put(self, local: Path, remote: str) -> None:
        if self._ssh is None:
            raise TargetLost(self.name, "the VM is not running")
        self._ssh.put(local, remote)

    def get(self, remote: str, local: Path) -> None:
        if self._ssh is None:
            raise TargetLost(self.name, "the VM is not running")
        self._ssh.get(remote, local)


def _quiet_env(base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    # No calls home for version or box update checks: runs must work offline.
    env.setdefault("VAGRANT_CHECKPOINT_DISABLE", "1")
    env.setdefault("VAGRANT_BOX_UPDATE_CHECK_DISABLE", "1")
    env["VAGRANT_NO_COLOR"] = "1"
    return env


def _machine_env(state_dir: Path, *, session: str, target: str, port: int | None,
                 provider: str | None) -> dict[str, str]:
    """The environment of every vagrant call on one target's machine: its `up` and
    `destroy`, and `portability clean`'s destroy after the session died."""
    env = _quiet_env(os.environ)
    env.update({
        "VAGRANT_DOTFILE_PATH": str(state_dir / ".vagrant"),
        PORT_ENV: str(port or 0),
        PREFIX_ENV: f"portability-{session}-{target}-",
        CONSOLE_ENV: str(state_dir / "console.log"),
    })
    if provider:
        env["VAGRANT_DEFAULT_PROVIDER"] = provider
    return env


def _first_host(config_text: str) -> str | None:
    for line in config_text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].lower() == "host":
            return parts[1]
    return None


def _destroy(machine_env, machine: str | None) -> bool:
    try:
        machine_env.destroy(vm_name=machine)
    except (subprocess.CalledProcessError, OSError, RuntimeError):
        return False
    return True


def _children_with_env(parent: int, entry_text: str) -> list[int]:
    """Live children of ``parent`` whose environment holds ``entry_text`` ("NAME=value")."""
    wanted = entry_text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if wanted in environ:
            found.append(int(entry))
    return found


def clean_stale(alive: Callable[[str], bool] | None = None) -> list[str]:
    """Destroy the machines of sessions that are no longer alive; returns what was removed.

    ``alive(session_id)`` decides; by default a session is alive while the process that
    created the machine runs. Machines a session kept (``destroy: never``/``on-success``)
    are leftovers too once it has ended: `portability clean` is the way to remove them.
    """
    import vagrant

    removed: list[str] = []
    root = sessions_root()
    for entry in sorted(root.iterdir()):
        meta_file = entry / "meta.json"
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        session = meta.get("session", "")
        is_alive = alive(session) if alive is not None else owner_alive(meta.get("owner"))
        if is_alive:
            continue
        project = Path(meta.get("root") or entry)
        env = _machine_env(entry, session=session, target=str(meta.get("target")),
                           port=meta.get("port"), provider=meta.get("provider"))
        if (entry / ".vagrant").exists() and shutil.which("vagrant") and \
                (project / "Vagrantfile").is_file():
            machine_env = vagrant.Vagrant(root=str(project), env=env, quiet_stdout=True,
                                          quiet_stderr=True)
            if not _destroy(machine_env, meta.get("machine")):
                continue  # keep the state so a later clean can retry
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(f"vagrant machine of target {meta.get('target')} "
                       f"(session {session}, {entry})")
    return removed


TARGET = VagrantTarget
