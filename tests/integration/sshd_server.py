"""A private OpenSSH server for the tests: 127.0.0.1:<free port>, its own config, host key and
authorized keys under a temp dir. The system's /etc/ssh is never read or touched.

    with SshServer.start() as server:
        server.port, server.client_key, server.known_hosts, server.host_key_line
        server.kill_connections()   # drop every open session, keep listening
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sshd_available() -> bool:
    return os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)


@dataclass
class SshServer:
    dir: Path
    port: int
    proc: subprocess.Popen
    client_key: Path
    known_hosts: Path
    host_key_line: str

    @classmethod
    def start(cls, *, password_auth: bool = False, users: tuple[str, ...] = ("root",),
              extra_config: str = "") -> "SshServer":
        if not sshd_available():
            raise RuntimeError(f"no sshd at {SSHD} (apt-get install openssh-server)")
        # sshd checks ownership/modes of its files; a root-owned 0755 dir satisfies it.
        tmp = Path(tempfile.mkdtemp(prefix="portability-sshd-"))
        tmp.chmod(0o755)
        _keygen(tmp / "host_ed25519", "portability-test-host")
        _keygen(tmp / "client_ed25519", "portability-test-client")
        keys = tmp / "authorized_keys"
        keys.mkdir()
        pub = (tmp / "client_ed25519.pub").read_text()
        for user in users:
            (keys / user).write_text(pub)
            (keys / user).chmod(0o644)
        port = free_port()
        # extra_config first: sshd keeps the first value it reads for a keyword.
        (tmp / "sshd_config").write_text(f"""\
{extra_config}
Port {port}
ListenAddress 127.0.0.1
HostKey {tmp}/host_ed25519
PidFile {tmp}/sshd.pid
AuthorizedKeysFile {keys}/%u
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication {'yes' if password_auth else 'no'}
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
MaxStartups 50
MaxSessions 50
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
        # Debian's sshd refuses to start without its privilege separation directory.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = open(tmp / "sshd.log", "wb")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        host_pub = (tmp / "host_ed25519.pub").read_text().split()
        host_key_line = f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}"
        known = tmp / "known_hosts"
        known.write_text(host_key_line + "\n")
        server = cls(tmp, port, proc, tmp / "client_ed25519", known, host_key_line)
        try:
            server._wait_listening()
        except Exception:
            server.stop()
            raise
        return server

    def _wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}: {self.log()[-500:]}")

    def log(self) -> str:
        try:
            return (self.dir / "sshd.log").read_text(errors="replace")
        except OSError:
            return ""

    def descendants(self) -> list[int]:
        """PIDs of every process below the listening sshd (its per-connection children)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                found.append(child)
                todo.append(child)
        return found

    def kill_connections(self) -> int:
        """Kill every session's sshd process (connections drop); the server keeps listening."""
        pids = self.descendants()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        """Stop the server and every session it serves, and remove its files."""
        pids = self.descendants()
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SshServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
