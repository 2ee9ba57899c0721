"""kind: qemu — a QEMU VM booting a chosen kernel: "same userland, other kernel".

The VM boots the kernel straight into a small initramfs (busybox, a few modules, the
project's agent); its /init mounts the root filesystem read-only with a tmpfs overlay —
the host's own ``/`` over 9p (``rootfs: host``, the default) or a disk image — and execs
the agent as PID 1 on a virtio-serial port. The host reaches that port through a unix
socket: no guest network at all, one persistent stream, one round trip per command.

Every VM is a child of the session: its sockets, console log and overlay live in one temp
dir that a tiny watchdog process removes, with the qemu process, on every exit path —
including a session killed by SIGTERM, SIGINT or SIGKILL.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from portability.agent.channel import AgentChannel, ChannelClosed, SocketStream
from portability.errors import TargetLost, TargetUnavailable
from portability.paths import cache_dir
from portability.session import OWNER_LABEL
from portability.qemu.rootfs import prune
from portability.targets import archive
from portability.targets.base import Command, Result, Spec, Target

#: Where the guest's /init puts the agent and a static busybox (tar for put/get).
GUEST_TOOLS = "/run/portability"
_BUSYBOX = f"{GUEST_TOOLS}/busybox"
_WATCHDOG = Path(__file__).resolve().parent.parent / "qemu" / "watchdog.sh"
#: Extra seconds the host waits beyond a command's own timeout before calling the VM lost.
_LOST_MARGIN_S = 60.0
_ROOT_MODES = ("host", "none")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True, kw_only=True)
class QemuSpec(Spec):
    kind: str = "qemu"
    #: A Debian kernel series ("5.10", "6.1", "6.12", fetched and cached on first use) or a
    #: path to a vmlinuz/vmlinux (relative to the targets file).
    kernel: str | None = None
    #: "host": the host's / read-only over 9p with a tmpfs overlay; a path to a disk
    #: image (ext4 or any filesystem the kernel reads), mounted read-only with the overlay;
    #: or "container:IMAGE": that container image's filesystem, made into a cached disk image.
    rootfs: str = "host"
    #: Guest RAM: "1G", "512M", or an integer number of MiB.
    memory: str | int = "1G"
    cpus: int = 1
    #: auto: KVM when it really works here (probed with a short timeout), else TCG.
    accel: Literal["auto", "tcg", "kvm"] = "auto"
    #: Seconds from starting QEMU until the agent must answer.
    boot_timeout: float = 60.0
    #: Extra kernel command-line arguments.
    cmdline: str = ""
    #: Save the VM right after its first boot and start later VMs of the same machine from
    #: that state (~0.2 s instead of a boot). Needs a disk-image rootfs: a shared host
    #: directory (rootfs: host) cannot be migrated.
    snapshot: bool = False

    def validate(self) -> str | None:
        if not self.kernel:
            return ("needs `kernel:` — a Debian kernel series (5.10, 6.1, 6.12) or a path to "
                    "a vmlinuz/vmlinux")
        try:
            parse_memory(self.memory)
        except ValueError as exc:
            return str(exc)
        if self.cpus < 1:
            return f"`cpus:` must be at least 1, got {self.cpus}"
        if self.boot_timeout <= 0:
            return f"`boot_timeout:` must be positive, got {self.boot_timeout}"
        if not self.rootfs:
            return "`rootfs:` must be `host` or a path to a disk image"
        if self.rootfs.startswith("container:") and not self.rootfs.split(":", 1)[1]:
            return "`rootfs: container:IMAGE` needs an image name after `container:`"
        if self.snapshot and self.rootfs == "host":
            return ("`snapshot: true` needs `rootfs:` to be a disk image (a VM sharing the "
                    "host's root over 9p cannot be saved)")
        return None


def parse_memory(value: str | int) -> int:
    """"1G" -> 1024, "512M" -> 512, 768 / "768" -> 768 (MiB)."""
    if isinstance(value, bool):
        raise ValueError(f"`memory:` must be like 1G, 512M or a number of MiB, got {value!r}")
    if isinstance(value, int):
        mib = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if not match:
            raise ValueError(f"`memory:` must be like 1G, 512M or a number of MiB, got {value!r}")
        number, unit = float(match.group(1)), match.group(2).upper()
        scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[unit]
        mib = int(number * scale)
    if mib < 64:
        raise ValueError(f"`memory:` must be at least 64M, got {value!r}")
    return mib


class QemuTarget(Target):
    kind = "qemu"
    Spec = QemuSpec

    def __init__(self, spec: QemuSpec, *, session: str, base_dir: Path):
        super().__init__(spec, session=session, base_dir=base_dir)
        self.spec: QemuSpec = spec
        self._dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._watchdog: subprocess.Popen | None = None
        self._watch_pipe: int | None = None
        self._sock: socket.socket | None = None
        self._channel: AgentChannel | None = None
        self._stop_lock = threading.Lock()
        #: The guest's ``uname -r`` once booted, and seconds from spawning QEMU to the agent.
        self.guest_kernel: str | None = None
        self.boot_s: float | None = None
        self.accel: str | None = None
        #: Whether start() resumed a saved state instead of booting.
        self.restored = False
        # With the host's root, commands find the same programs as on the host (a pyenv or
        # venv python first on PATH is part of "the host's userland").
        self._base_env: dict[str, str] = {}
        if spec.rootfs == "host":
            self._base_env = {"PATH": os.environ.get("PATH") or _DEFAULT_PATH}

    @property
    def workdir(self) -> str:
        return self.spec.workdir or "/tmp/portability"

    @property
    def run_dir(self) -> Path | None:
        """The VM's host-side temp dir (sockets, console log) while it runs."""
        return self._dir

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- start -----------------------------------------------------------------------------

    @classmethod
    def check_engine(cls, spec: QemuSpec, base_dir: Path) -> str | None:
        from portability import kernels

        if qemu_binary() is None:
            return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
        name = str(spec.kernel)
        path = Path(name).expanduser()
        if "/" in name or name.startswith("."):
            path = path if path.is_absolute() else base_dir / path
            return None if path.is_file() else f"kernel file {path} does not exist"
        if kernels.cached(name) is None:
            return f"kernel {name} is not cached (`portability kernels fetch {name}`)"
        return None

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        qemu = qemu_binary()
        if qemu is None:
            raise TargetUnavailable(self.name, "qemu-system-x86_64 is not installed; install it "
                                    "(Debian/Ubuntu: apt-get install qemu-system-x86)")
        kernel = self._kernel()
        mode, image = self._rootfs()
        from portability.agent import AgentUnavailable, agent_binary
        from portability.qemu import initramfs

        try:
            initrd = initramfs.build(mode=mode, modules_root=kernel.modules, agent=agent_binary(),
                                     label=kernel.release or "custom")
        except (AgentUnavailable, initramfs.InitramfsError) as exc:
            raise TargetUnavailable(self.name, str(exc)) from None
        self.accel = self._accel(qemu)
        self._dir = Path(tempfile.mkdtemp(prefix=f"portability-{_safe(self.session)}-q-"))
        (self._dir / "owner").write_text(f"{self.labels[OWNER_LABEL]}\n{self.name}\n")
        self._spawn_watchdog()
        argv = self.qemu_argv(qemu, kernel.image, initrd, mode, image)
        state = self._snapshot_path(argv, [kernel.image, initrd, image]) if self.spec.snapshot else None
        banner = None
        kvm_failed = False
        if state is not None and state.is_file():
            try:
                banner = self._boot(argv + ["-incoming", f"exec:cat {shlex.quote(str(state))}"],
                                    timeout=min(self.spec.boot_timeout, 30.0))
                # The guest resumes at the moment it was saved: give it the host's time, and
                # stir its random pool, which every restore of this state starts from.
                script = f"{_BUSYBOX} date -u -s @{int(time.time())} >/dev/null; " \
                         f"{_BUSYBOX} cat >/dev/urandom"
                self.exec([_BUSYBOX, "sh", "-c", script], cwd="/", timeout=30,
                          stdin=os.urandom(64))
                os.utime(state)  # recently used: kept by the pruning below
                self.restored = True
            except (TargetUnavailable, TargetLost):
                self._kill_qemu()  # a stale or broken state file: boot cold and save anew
                state.unlink(missing_ok=True)
                banner = None
        if banner is None and self.accel == "kvm" and self.spec.accel == "auto":
            # KVM passed the probe but may still hang on a real kernel (broken nested
            # virtualization): give it a short while, then fall back to TCG for good.
            try:
                banner = self._boot(argv, timeout=min(self.spec.boot_timeout, _KVM_GRACE_S))
            except TargetUnavailable:
                self._kill_qemu()
                kvm_failed = True
                self.accel = "tcg"
                argv = self.qemu_argv(qemu, kernel.image, initrd, mode, image)
                state = self._snapshot_path(argv, [kernel.image, initrd, image]) \
                    if self.spec.snapshot else None
        if banner is None:
            banner = self._boot(argv, timeout=self.spec.boot_timeout)
            if kvm_failed:
                _remember_kvm(False)  # TCG booted what KVM could not: KVM is broken here
            if state is not None:
                self._save_snapshot(state)
        self.guest_kernel = banner.split()[-1] if banner.split() else None
        setup = self.exec(["mkdir", "-p", self.workdir], cwd="/", timeout=60)
        if setup.rc != 0:
            raise TargetUnavailable(self.name, f"cannot create workdir {self.workdir} in the VM: "
                                    f"{setup.stderr.strip()}")

    def _boot(self, argv: list[str], *, timeout: float) -> str:
        """Run QEMU and wait for the guest's agent; returns its banner."""
        assert self._dir is not None and self._watch_pipe is not None
        started = time.monotonic()
        with open(self._dir / "qemu.log", "ab") as log:
            try:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True,
                                              cwd=self._dir)
            except OSError as exc:
                raise TargetUnavailable(self.name, f"cannot run {argv[0]}: {exc.strerror}") from None
        os.write(self._watch_pipe, f"{self._proc.pid}\n".encode())
        banner = self._wait_for_agent(started, timeout)
        self.boot_s = time.monotonic() - started
        return banner

    def _kill_qemu(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    # -- snapshots -------------------------------------------------------------------------

    def _snapshot_path(self, argv: list[str], files: list[Path | None]) -> Path:
        """Where the saved state of exactly this machine lives: keyed by the command line
        (temp paths left out) and the identity of every file the guest boots from."""
        import hashlib

        assert self._dir is not None
        digest = hashlib.sha256()
        for arg in argv:
            digest.update(arg.replace(str(self._dir), "@RUN@").encode() + b"\0")
        for path in [Path(argv[0]).resolve(), *[f for f in files if f is not None]]:
            st = Path(path).stat()
            digest.update(f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return cache_dir("qemu", "snapshots") / f"{digest.hexdigest()[:24]}.state"

    def _save_snapshot(self, state: Path) -> None:
        """Live-migrate the freshly booted VM into ``state`` (the VM then carries on).

        A failure only costs the speed-up: the VM that just booted stays usable."""
        assert self._dir is not None
        tmp = state.with_name(f".{state.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with Qmp(self._dir / "qmp.sock") as qmp:
                qmp.call("migrate", {"uri": f"exec:cat > {shlex.quote(str(tmp))}"})
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    status = qmp.call("query-migrate").get("status")
                    if status in ("completed", "failed", "cancelled"):
                        break
                    time.sleep(0.02)
                if qmp.call("query-status").get("status") != "running":
                    qmp.call("cont")
            if status == "completed" and tmp.is_file():
                tmp.replace(state)
                prune(state.parent, "*.state", keep=_SNAPSHOTS_KEPT)
        except (OSError, ValueError, RuntimeError):
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def _kernel(self):
        from portability import kernels

        name = str(self.spec.kernel)
        path = Path(name).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        try:
            if path.is_file():
                return kernels.kernel_from_path(path)
            if "/" in name or name.startswith("."):
                raise TargetUnavailable(self.name, f"kernel file {path} does not exist "
                                        f"({self.spec.source}: kernel)")
            return kernels.ensure(name)
        except kernels.KernelUnavailable as exc:
            raise TargetUnavailable(self.name, f"{exc} (fetch kernels ahead with "
                                    f"`portability kernels fetch {name}` while online)") from None

    def _rootfs(self) -> tuple[str, Path | None]:
        rootfs = self.spec.rootfs
        if rootfs in _ROOT_MODES:
            return rootfs, None
        if rootfs.startswith("container:"):
            from portability.qemu.rootfs import RootfsError, from_container_image

            try:
                return "image", from_container_image(rootfs.split(":", 1)[1], labels=self.labels)
            except RootfsError as exc:
                raise TargetUnavailable(self.name, f"rootfs {rootfs}: {exc}") from None
        path = Path(rootfs).expanduser()
        if not path.is_absolute():
            path = self.base_dir / path
        if not path.is_file():
            raise TargetUnavailable(self.name, f"rootfs image {path} does not exist; give "
                                    "`rootfs: host` or a path to a disk image")
        return "image", path

    def _accel(self, qemu: str) -> str:
        if self.spec.accel == "tcg":
            return "tcg"
        if self.spec.accel == "kvm":
            if not kvm_works(qemu):
                raise TargetUnavailable(self.name, "accel: kvm was asked for but KVM does not work "
                                        "here (no usable /dev/kvm, or it hangs); use accel: auto")
            return "kvm"
        return "kvm" if kvm_works(qemu) else "tcg"

    def qemu_argv(self, qemu: str, kernel: Path, initrd: Path, mode: str,
                  image: Path | None) -> list[str]:
        assert self._dir is not None
        spec = self.spec
        hostname = re.sub(r"[^A-Za-z0-9-]", "-", self.name)[:63].strip("-") or "portability-vm"
        append = ["console=ttyS0", "quiet", "panic=-1", "random.trust_cpu=on",
                  "cryptomgr.notests", "mitigations=off", "tsc=reliable",
                  f"portability.root={mode}", "portability.port=agent",
                  f"portability.hostname={hostname}"]
        if spec.cmdline:
            append += shlex.split(spec.cmdline)
        argv = [qemu, "-name", f"portability:{hostname}", "-nodefaults", "-no-user-config",
                "-display", "none", "-no-reboot", "-M", "pc",
                "-m", str(parse_memory(spec.memory)), "-smp", str(spec.cpus)]
        if self.accel == "kvm":
            argv += ["-accel", "kvm", "-cpu", "host"]
        else:
            argv += ["-accel", "tcg", "-cpu", "max"]
        bios = qboot_rom()
        if bios:
            argv += ["-bios", str(bios)]
        argv += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", " ".join(append),
                 "-serial", f"file:{self._dir / 'console.log'}",
                 "-chardev", f"socket,id=agent,path={self._dir / 'agent.sock'},server=on,wait=off",
                 "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=agent,name=agent"]
        if spec.snapshot:
            argv += ["-qmp", f"unix:{self._dir / 'qmp.sock'},server=on,wait=off"]
        if mode == "host":
            argv += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                     "readonly=on,multidevs=remap"]
        elif mode == "image":
            argv += ["-drive", f"file={_drive_path(image)},format=raw,if=virtio,readonly=on"]
        return argv

    def _spawn_watchdog(self) -> None:
        assert self._dir is not None
        read_end, write_end = os.pipe()  # non-inheritable: only the watchdog gets read_end
        try:
            self._watchdog = subprocess.Popen(["/bin/sh", str(_WATCHDOG), str(self._dir)],
                                              stdin=read_end, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            os.close(write_end)
            raise TargetUnavailable(self.name, f"cannot start the VM's watchdog: {exc}") from None
        finally:
            os.close(read_end)
        self._watch_pipe = write_end

    def _wait_for_agent(self, started: float, timeout: float) -> str:
        """Connect to the port's socket and ping; the answer comes once the guest's agent runs."""
        assert self._dir is not None and self._proc is not None
        deadline = started + timeout
        path = str(self._dir / "agent.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        while True:
            self._check_alive("QEMU exited before the VM's port opened")
            try:
                sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise self._boot_failure("QEMU did not open the agent socket") from None
                time.sleep(0.01)
        # QEMU queues the ping until the guest's agent opens the port, so its answer is the
        # first sign of life: no polling of the guest. A QEMU that exits closes the socket.
        channel = AgentChannel(SocketStream(sock))
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            banner = channel.ping()
        except ChannelClosed as exc:
            if isinstance(exc.__cause__, TimeoutError) and self._proc.poll() is None:
                raise self._boot_failure(f"the VM did not answer within {timeout:g} s") from None
            try:
                self._proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
            self._check_alive("the VM stopped during boot")
            raise self._boot_failure("the VM's port closed during boot") from None
        sock.settimeout(None)
        self._channel = channel
        return banner

    def _check_alive(self, what: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._boot_failure(f"{what} (qemu exit status {self._proc.returncode})")

    def _boot_failure(self, what: str) -> TargetUnavailable:
        return TargetUnavailable(self.name, f"{what}; {self._diagnostics()}")

    def _diagnostics(self) -> str:
        """QEMU's own last messages and the guest console's telling lines, on one line."""
        parts = []
        if self._dir is not None:
            qemu_log = _tail(self._dir / "qemu.log", 3)
            if qemu_log:
                parts.append("qemu: " + " | ".join(qemu_log))
            console = console_summary(_tail(self._dir / "console.log", 200))
            parts.append("console: " + (" | ".join(console) if console else "(empty)"))
        return "; ".join(parts) or "no diagnostics"

    # -- commands --------------------------------------------------------------------------

    def exec(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        if self._channel is None or self._sock is None:
            raise TargetLost(self.name, "the VM is not running")
        merged = {**self._base_env, **self.spec.env, **(env or {})}
        self._sock.settimeout(None if timeout is None else timeout + _LOST_MARGIN_S)
        try:
            return self._channel.run(command, timeout=timeout, env=merged,
                                     cwd=cwd or self.workdir, stdin=stdin)
        except ChannelClosed as exc:
            alive = self._proc is not None and self._proc.poll() is None
            state = "stopped answering" if alive else \
                f"exited (status {self._proc.returncode if self._proc else '?'})"
            raise TargetLost(self.name, f"the VM {state} ({exc}); {self._diagnostics()}") from None

    def ping(self) -> str:
        """A bare round trip to the guest's agent (the channel's own latency)."""
        if self._channel is None:
            raise TargetLost(self.name, "the VM is not running")
        try:
            return self._channel.ping()
        except ChannelClosed as exc:
            raise TargetLost(self.name, f"the VM stopped answering ({exc})") from None

    # -- files -----------------------------------------------------------------------------

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.exists():
            raise FileNotFoundError(str(local))
        remote = remote.rstrip("/") or "/"
        parent, name = os.path.split(remote)
        script = f'mkdir -p "$1" && exec {_BUSYBOX} tar -x -C "$1"'
        result = self.exec([_BUSYBOX, "sh", "-c", script, "put", parent or "/"], cwd="/",
                           stdin=archive.pack(local, name))
        if result.rc != 0:
            raise OSError(f"{self.name}: copying {local} to {remote} failed: {result.stderr.strip()}")

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        remote = remote.rstrip("/") or "/"
        parent, name = os.path.split(remote)
        script = f'[ -e "$1/$2" ] || {{ echo "no such file: $1/$2" >&2; exit 2; }}; ' \
                 f'exec {_BUSYBOX} tar -c -C "$1" "$2"'
        result = self.exec([_BUSYBOX, "sh", "-c", script, "get", parent or "/", name], cwd="/")
        if result.rc == 2 and "no such file" in result.stderr:
            raise FileNotFoundError(f"{self.name}:{remote}")
        if result.rc != 0:
            raise OSError(f"{self.name}: copying {remote} failed: {result.stderr.strip()}")
        local.parent.mkdir(parents=True, exist_ok=True)
        archive.unpack(io.BytesIO(result.stdout_bytes), name, local)

    # -- stop ------------------------------------------------------------------------------

    def stop(self) -> None:
        with self._stop_lock:
            try:
                self._stop()
            except Exception:  # noqa: BLE001 — stop() never raises; the watchdog still cleans up
                pass

    def _stop(self) -> None:
        channel, self._channel = self._channel, None
        proc = self._proc
        if channel is not None:
            if proc is not None and proc.poll() is None:
                channel.quit()  # the guest syncs and powers off; QEMU exits (-no-reboot)
            channel.close()
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        if proc is not None:
            # After a quit the guest powers off by itself; otherwise go straight to signals.
            steps = [(None, 3.0)] if channel is not None else []
            steps += [(signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)]
            for sig, wait_s in steps:
                if proc.poll() is not None:
                    break
                if sig is not None:
                    try:
                        proc.send_signal(sig)
                    except ProcessLookupError:
                        pass
                try:
                    proc.wait(wait_s)
                except subprocess.TimeoutExpired:
                    continue
            self._proc = None
        if self._watch_pipe is not None:
            os.close(self._watch_pipe)  # the watchdog finds qemu gone and removes the dir
            self._watch_pipe = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
            self._watchdog = None


# -- host capabilities -------------------------------------------------------------------

def qemu_binary() -> str | None:
    configured = os.environ.get("PORTABILITY_QEMU")
    if configured:
        return configured if shutil.which(configured) else None
    if os.uname().machine not in ("x86_64", "amd64"):
        return None  # the guest side (initramfs, machine type) is x86_64-only for now
    return shutil.which("qemu-system-x86_64")


def qboot_rom() -> Path | None:
    """qboot: a minimal firmware that starts a -kernel ~0.3 s sooner than SeaBIOS."""
    for candidate in ("/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin"):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


#: A 64 KiB "BIOS" whose reset vector writes "K" to the serial port and halts: if the
#: byte arrives, KVM really runs guest code here.
def _probe_bios() -> bytes:
    code = bytes([0xBA, 0xF8, 0x03,   # mov dx, 0x3f8
                  0xB0, 0x4B,         # mov al, 'K'
                  0xEE,               # out dx, al
                  0xFA, 0xF4,         # cli; hlt
                  0xEB, 0xFC])        # jmp back to hlt
    image = bytearray(b"\xf4" * 65536)
    image[0xFFF0:0xFFF0 + len(code)] = code
    return bytes(image)


def probe_accel(qemu: str, accel: str, timeout: float = 3.0) -> bool:
    """Whether QEMU with ``accel`` runs guest code within ``timeout`` (never hangs longer)."""
    with tempfile.TemporaryDirectory(prefix="portability-kvmprobe-") as tmp:
        bios = Path(tmp) / "probe.bin"
        bios.write_bytes(_probe_bios())
        argv = [qemu, "-accel", accel, "-M", "pc", "-nodefaults", "-no-user-config",
                "-display", "none", "-m", "16", "-bios", str(bios), "-serial", "stdio"]
        if accel == "kvm":
            argv += ["-cpu", "host"]  # the model real VMs use; nested KVM often fails on it
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            return False
        try:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            return bool(ready) and os.read(proc.stdout.fileno(), 16).startswith(b"K")
        finally:
            proc.kill()
            proc.wait()


_KVM_GRACE_S = 15.0
_kvm_verdict: dict[str, bool] = {}


def _kvm_marker() -> Path:
    from portability.facts import host_boot_id

    return cache_dir("qemu") / f"kvm-{host_boot_id() or 'unknown'}"


def _remember_kvm(works: bool) -> None:
    _kvm_verdict["verdict"] = works
    try:
        _kvm_marker().write_text("yes\n" if works else "no\n")
    except OSError:
        pass


def kvm_works(qemu: str) -> bool:
    """KVM usable here? Probed once per host boot (the answer is cached on disk)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if "verdict" in _kvm_verdict:
        return _kvm_verdict["verdict"]
    try:
        text = _kvm_marker().read_text().strip()
        if text in ("yes", "no"):
            _kvm_verdict["verdict"] = text == "yes"
            return _kvm_verdict["verdict"]
    except OSError:
        pass
    works = probe_accel(qemu, "kvm")
    _remember_kvm(works)
    return works


# -- leftovers ---------------------------------------------------------------------------

def clean_stale() -> list[str]:
    """VM temp dirs (and their qemu processes) of sessions whose process is gone."""
    from portability.session import owner_alive

    removed = []
    for path in Path(tempfile.gettempdir()).glob("portability-*-q-*"):
        owner_file = path / "owner"
        try:
            owner = owner_file.read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        if owner_alive(owner):
            continue
        for pid in _qemu_pids_using(path):
            try:
                os.kill(pid, signal.SIGKILL)
                removed.append(f"qemu process {pid}")
            except OSError:
                pass
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"qemu temp dir {path}")
    return removed


def _qemu_pids_using(path: Path) -> list[int]:
    pids = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().split(b"\x00")
        except OSError:
            continue
        if cmdline and b"qemu" in os.path.basename(cmdline[0]) and \
                any(str(path).encode() in arg for arg in cmdline):
            pids.append(int(proc_dir.name))
    return pids


class Qmp:
    """The few QMP calls snapshots need (JSON lines over the VM's QMP socket)."""

    def __init__(self, path: Path):
        self._path = path

    def __enter__(self) -> "Qmp":
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.settimeout(60)
        self._sock.connect(str(self._path))
        self._file = self._sock.makefile("rb")
        self._read()  # greeting
        self.call("qmp_capabilities")
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._sock.close()

    def _read(self) -> dict:
        while True:
            line = self._file.readline()
            if not line:
                raise RuntimeError("QMP closed")
            message = json.loads(line)
            if "event" not in message:
                return message

    def call(self, execute: str, arguments: dict | None = None) -> dict:
        request: dict = {"execute": execute}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(reply["error"].get("desc", "QMP error"))
        return reply.get("return") or {}


#: Saved states are ~80 MB each: keep the most recently used few.
_SNAPSHOTS_KEPT = 6


# -- helpers -----------------------------------------------------------------------------

def _tail(path: Path, lines: int) -> list[str]:
    try:
        data = path.read_bytes()[-16384:]
    except OSError:
        return []
    text = data.decode(errors="replace").replace("\r", "")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return kept[-lines:]


_TELLING = re.compile(r"portability-init:|Kernel panic|not syncing|Unable to|error|failed",
                      re.IGNORECASE)
_STACK = re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+|^</?(TASK|IRQ)>|^Call Trace:|^RIP:|^R[A-Z0-9]{2}:")
_STAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")


def console_summary(lines: list[str], tail: int = 4, telling: int = 4) -> list[str]:
    """What explains a failed boot: the last lines that say why (panic, init errors), then
    the last few lines, without kernel timestamps and without repeats."""
    clean = [_STAMP.sub("", line) for line in lines]
    clean = [line for line in clean if not _STACK.search(line)]
    why = [line for line in clean if _TELLING.search(line)][-telling:]
    picked = why + [line for line in clean[-tail:] if line not in why]
    return [line for line in dict.fromkeys(picked) if line]


def _drive_path(path: Path | None) -> str:
    assert path is not None
    return str(path).replace(",", ",,")  # QEMU option syntax escapes commas by doubling


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "", text)[:40] or "session"


TARGET = QemuTarget
