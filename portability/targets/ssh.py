"""kind: ssh — a remote test server reached with paramiko.

One SSH connection per target per process (TCP_NODELAY: without it the server's delayed ACK
costs ~40 ms per round trip), keepalives, and one reconnect attempt on a dropped connection
before the target counts as lost. Files go through SFTP.

Commands go through the project's static agent: it is uploaded once to
``~/.cache/portability/`` on the server (when the server's ``uname -m`` matches this
machine's) and started with ``agent serve`` on ONE exec channel. Each command is still a
fresh process, but it costs one round trip on an open channel instead of a new channel, a
login shell and the user's ``~/.bashrc`` (which on many servers alone costs ~100 ms).
Where the agent cannot run (another architecture, a ``noexec`` home, no compiler here),
every command is its own exec channel: slower, same semantics.

Host keys are verified against known_hosts by default; an unknown or changed key refuses
the target with a one-line message that says how to accept it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from portability.agent.channel import AgentChannel, ChannelClosed
from portability.errors import TargetLost, TargetUnavailable
from portability.targets import archive
from portability.targets.base import Command, Result, Spec, Target

HostKeyPolicy = Literal["verify", "accept-new", "insecure"]
#: Where the agent binary is cached on the server (relative to the login user's home).
REMOTE_AGENT_DIR = ".cache/portability"
#: After a command exits, how long stray background holders of its pipes may keep them open.
_GRACE_S = 0.2
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, kw_only=True)
class SshSpec(Spec):
    kind: str = "ssh"
    #: Host name or address, or a ``Host`` alias of ``ssh_config``.
    host: str | None = None
    port: int | None = None
    user: str | None = None
    #: Private key file (default: ssh-agent keys and ~/.ssh/id_*).
    identity_file: str | None = None
    #: An OpenSSH client config (default ~/.ssh/config when it exists): HostName, Port, User,
    #: IdentityFile, ProxyJump, ProxyCommand of ``host`` apply unless given here.
    ssh_config: str | None = None
    #: NAME of an environment variable holding the password (never the password itself).
    password_env: str | None = None
    #: known_hosts file the server's key is checked against (default ~/.ssh/known_hosts).
    known_hosts: str | None = None
    host_key_policy: HostKeyPolicy = "verify"
    connect_timeout: float = 10.0
    #: Run every command through ``sudo -n`` (the login user needs passwordless sudo).
    sudo: bool = False

    def validate(self) -> str | None:
        if not self.host:
            return "needs `host:` (a host name or address, or a Host alias of `ssh_config:`)"
        if self.port is not None and not 0 < self.port < 65536:
            return f"`port:` must be between 1 and 65535, got {self.port}"
        if self.password_env is not None and not _ENV_NAME.fullmatch(self.password_env):
            # Never echo the value: it may be a password written in the wrong place.
            return ("`password_env:` must be the NAME of an environment variable holding the "
                    "password (e.g. SSH_PASSWORD), never the password itself")
        if self.connect_timeout <= 0:
            return "`connect_timeout:` must be a positive number of seconds"
        return None


@dataclass
class Endpoint:
    """Where and how to connect, after ssh_config and the spec's own keys are merged."""

    alias: str
    hostname: str
    port: int = 22
    user: str = ""
    key_files: list[str] = field(default_factory=list)
    proxy_jump: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    #: UserKnownHostsFile of the ssh_config entry, if any.
    known_hosts: str | None = None

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


class _HostKeyRefused(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fingerprint(key) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _HostKeyPolicy:
    """paramiko's MissingHostKeyPolicy for our three policies plus a session pin (Vagrant)."""

    def __init__(self, mode: str, known_hosts: Path, endpoint: Endpoint, pinned: dict):
        self.mode = mode
        self.known_hosts = known_hosts
        self.endpoint = endpoint
        self.pinned = pinned  # mode "session": {known_hosts_name: key}, shared across reconnects

    def missing_host_key(self, client, hostname, key) -> None:
        if self.mode == "insecure":
            return
        if self.mode == "session":
            known = self.pinned.setdefault(hostname, key)
            if known.asbytes() != key.asbytes():
                raise _HostKeyRefused(f"the host key of {hostname} changed during the session "
                                      f"({key.get_name()} {fingerprint(key)})")
            return
        if self.mode == "accept-new":
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            with open(self.known_hosts, "a", encoding="ascii") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
            return
        host, port = self.endpoint.hostname, self.endpoint.port
        raise _HostKeyRefused(
            f"the host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in "
            f"{self.known_hosts}; if this is the right server, set `host_key_policy: accept-new` "
            f"on the target or run `ssh-keyscan -p {port} {host} >> {self.known_hosts}`")


class _ChannelStream:
    """The agent channel's Stream protocol over a paramiko Channel."""

    def __init__(self, chan):
        self._chan = chan
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        try:
            self._chan.sendall(data)
        except Exception as exc:  # paramiko raises OSError or SSHException on a dead transport
            raise ChannelClosed(str(exc) or "the SSH channel is closed") from exc

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            try:
                chunk = self._chan.recv(max(65536, n - len(self._buf)))
            except socket.timeout:
                raise ChannelClosed("no answer from the agent in time") from None
            except Exception as exc:
                raise ChannelClosed(str(exc) or "the SSH channel broke") from exc
            if not chunk:
                raise ChannelClosed("the SSH channel ended")
            self._buf += chunk

    def recv_exact(self, n: int) -> bytes:
        self._fill(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def skip_past(self, marker: bytes, limit: int = 1 << 20) -> None:
        """Drop what a login shell printed (~/.bashrc noise) before the agent speaks."""
        while True:
            at = self._buf.find(marker)
            if at >= 0:
                del self._buf[:at + len(marker)]
                return
            if len(self._buf) > limit:
                raise ChannelClosed("no start marker from the agent")
            self._fill(len(self._buf) + 1)

    def close(self) -> None:
        try:
            self._chan.close()
        except Exception:
            pass


class SshConnection:
    """One paramiko connection (plus its ProxyJump hops) with the agent or the exec fallback.

    Shared by the ssh and vagrant kinds. Not thread-safe beyond what the pool guarantees
    (one call at a time per target).
    """

    def __init__(self, name: str, endpoint: Endpoint, *, host_key_mode: str, known_hosts: Path,
                 password: str | None, timeout: float, sudo: bool, config=None):
        self.name = name
        self.endpoint = endpoint
        self.host_key_mode = host_key_mode
        self.known_hosts = known_hosts
        self._password = password
        self.timeout = timeout
        self.sudo = sudo
        self._config = config  # paramiko.SSHConfig for resolving ProxyJump hop aliases
        self._pinned: dict = {}
        self._clients: list = []  # jump hops first, the target last
        self._sftp = None
        self._sftp_error: str | None = None
        self._agent: AgentChannel | None = None
        self.agent_path: str | None = None
        self.mode = "none"  # "agent" | "exec"
        self.home: str | None = None
        self.arch: str | None = None
        self.agent_problem: str | None = None

    # -- connecting ------------------------------------------------------------------------

    @property
    def client(self):
        return self._clients[-1] if self._clients else None

    def alive(self) -> bool:
        client = self.client
        transport = client.get_transport() if client is not None else None
        return bool(transport and transport.is_active())

    def connect(self) -> None:
        """Connect, authenticate and start the agent. Raises TargetUnavailable."""
        self.close()
        try:
            sock = None
            hops = [resolve_endpoint(hop, self._config, user=None, port=None)
                    for hop in self.endpoint.proxy_jump]
            # Each hop tunnels to the next one, the last hop to the target.
            for hop_ep, next_ep in zip(hops, hops[1:] + [self.endpoint]):
                self._clients.append(self._open(hop_ep, sock, password=None))
                sock = self._tunnel(self._clients[-1], next_ep)
            if sock is None and self.endpoint.proxy_command:
                sock = self._proxy_command(self.endpoint)
            self._clients.append(self._open(self.endpoint, sock, password=self._password))
            self._start_agent()
        except TargetUnavailable:
            self.close()
            raise
        except ChannelClosed as exc:
            # The login worked but the server refuses sessions (e.g. MaxSessions 0).
            self.close()
            raise TargetUnavailable(self.name, f"SSH to {self.endpoint.label}: {exc}") from None

    def _proxy_command(self, ep: Endpoint):
        import paramiko

        try:
            return paramiko.ProxyCommand(ep.proxy_command)
        except (OSError, ValueError) as exc:  # a missing program; unbalanced quotes
            raise TargetUnavailable(self.name, f"the ProxyCommand of {ep.alias} "
                                    f"({ep.proxy_command}) cannot run: {_first_line(exc)}") from None

    def _tunnel(self, hop_client, dest: Endpoint):
        try:
            return hop_client.get_transport().open_channel(
                "direct-tcpip", (dest.hostname, dest.port), ("127.0.0.1", 0),
                timeout=self.timeout)
        except Exception as exc:
            raise TargetUnavailable(self.name, f"the jump host could not reach {dest.hostname}:"
                                    f"{dest.port} ({_first_line(exc)})") from None

    def _open(self, ep: Endpoint, sock, *, password: str | None):
        import paramiko

        if sock is None:
            try:
                sock = socket.create_connection((ep.hostname, ep.port), timeout=self.timeout)
            except OSError as exc:
                reason = exc.strerror or _first_line(exc)
                raise TargetUnavailable(self.name, f"cannot connect to {ep.hostname}:{ep.port} "
                                        f"({reason}); is sshd running there?") from None
            _tune_socket(sock)
        client = paramiko.SSHClient()
        if self.host_key_mode in ("verify", "accept-new"):
            if self.known_hosts.exists():
                try:
                    client.load_host_keys(str(self.known_hosts))
                except Exception as exc:
                    raise TargetUnavailable(self.name, f"cannot read known_hosts "
                                            f"{self.known_hosts}: {_first_line(exc)}") from None
        client.set_missing_host_key_policy(
            _HostKeyPolicy(self.host_key_mode, self.known_hosts, ep, self._pinned))
        key_files = [str(Path(k).expanduser()) for k in ep.key_files]
        missing = [k for k in key_files if not Path(k).is_file()]
        if missing:
            raise TargetUnavailable(self.name, f"identity file {missing[0]} does not exist")
        try:
            client.connect(
                ep.hostname, port=ep.port, username=ep.user, password=password,
                key_filename=key_files or None, timeout=self.timeout, sock=sock,
                allow_agent=not key_files, look_for_keys=not key_files,
                banner_timeout=self.timeout, auth_timeout=self.timeout,
            )
        except _HostKeyRefused as exc:
            client.close()
            raise TargetUnavailable(self.name, exc.reason) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = ep.known_hosts_name
            raise TargetUnavailable(
                self.name, f"the host key of {name} CHANGED: the server offers "
                f"{exc.key.get_name()} {fingerprint(exc.key)}, {self.known_hosts} has "
                f"{fingerprint(exc.expected_key)}; if the server was reinstalled, run "
                f"`ssh-keygen -R '{name}' -f {self.known_hosts}` and accept the new key") from None
        except paramiko.AuthenticationException:
            client.close()
            how = ("the key " + ", ".join(key_files)) if key_files else "ssh-agent/~/.ssh keys"
            if password is not None:
                how += " and the password"
            raise TargetUnavailable(self.name, f"authentication as {ep.label} failed (tried "
                                    f"{how}); check `user:`, `identity_file:` or "
                                    "`password_env:`") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise TargetUnavailable(self.name, f"SSH to {ep.label} failed: "
                                    f"{_first_line(exc)}") from None
        transport = client.get_transport()
        transport.set_keepalive(15)
        return client

    # -- the agent -------------------------------------------------------------------------

    def _start_agent(self) -> None:
        probe = self.run_exec('uname -m; printf "%s\\n" "$HOME"', timeout=self.timeout,
                              raw=True)
        lines = probe.stdout.splitlines()
        if probe.rc != 0 or len(lines) < 2:
            raise TargetUnavailable(self.name, f"the server does not run a POSIX shell command "
                                    f"(`uname -m` exited {probe.rc}: {probe.stderr.strip()[:200]})")
        self.arch, self.home = lines[-2].strip(), lines[-1].strip()
        self.agent_problem = None
        try:
            self._start_agent_channel()
        except _AgentNotUsable as exc:
            self.agent_problem = str(exc)
            self.mode = "exec"
        else:
            self.mode = "agent"

    def _start_agent_channel(self) -> None:
        from portability.agent import AgentUnavailable, agent_binary

        if self.arch != os.uname().machine:
            raise _AgentNotUsable(f"the server is {self.arch}, the agent is built for "
                                  f"{os.uname().machine}")
        try:
            binary = agent_binary()
        except AgentUnavailable as exc:
            raise _AgentNotUsable(str(exc)) from None
        remote = f"{self.home.rstrip('/')}/{REMOTE_AGENT_DIR}/{binary.name}"
        try:
            self._upload_agent(binary, remote)
        except OSError as exc:
            raise _AgentNotUsable(f"cannot upload the agent to {remote}: {_first_line(exc)}") from None
        marker = f"PORTABILITY-AGENT-{secrets.token_hex(8)}"
        command = f"printf '%s\\n' {marker}; exec {'sudo -n ' if self.sudo else ''}" \
                  f"{shlex.quote(remote)} serve"
        chan = None
        try:
            chan = self.client.get_transport().open_session(timeout=self.timeout)
            chan.settimeout(self.timeout)
            chan.exec_command(command)
        except Exception as exc:
            if chan is not None:
                chan.close()  # a restart keeps the connection: no half-open channel on it
            raise ChannelClosed(f"cannot open an SSH channel ({_first_line(exc)})") from exc
        stream = _ChannelStream(chan)
        agent = AgentChannel(stream)
        try:
            stream.skip_past(marker.encode() + b"\n")
            agent.ping()
        except ChannelClosed as exc:
            detail = _drain_stderr(chan) or str(exc)
            agent.close()
            raise _AgentNotUsable(f"the agent did not start ({detail})") from None
        chan.settimeout(None)
        self._agent, self.agent_path = agent, remote

    def _upload_agent(self, binary: Path, remote: str) -> None:
        try:
            sftp = self.sftp()
        except OSError:
            return self._upload_agent_by_exec(binary, remote)
        size = binary.stat().st_size
        try:
            if sftp.stat(remote).st_size == size:
                return
        except OSError:
            pass
        sftp_makedirs(sftp, os.path.dirname(remote))
        partial = f"{remote}.{secrets.token_hex(4)}.partial"
        sftp.put(str(binary), partial)
        sftp.chmod(partial, 0o755)
        try:
            sftp.posix_rename(partial, remote)  # atomic even when xdist workers race here
        except OSError:
            # No posix-rename extension: plain rename, which refuses an existing target
            # (another worker won the race with the same binary).
            try:
                sftp.rename(partial, remote)
            except OSError:
                sftp.remove(partial)
                sftp.stat(remote)

    def _upload_agent_by_exec(self, binary: Path, remote: str) -> None:
        """No working SFTP (a login shell that prints breaks it): stream the file to `cat`."""
        size = binary.stat().st_size
        quoted = shlex.quote(remote)
        have = self.run_exec(f"wc -c < {quoted} 2>/dev/null", timeout=self.timeout, raw=True)
        if have.rc == 0 and have.stdout.strip().splitlines()[-1:] == [str(size)]:
            return
        partial = shlex.quote(f"{remote}.{secrets.token_hex(4)}.partial")
        done = self.run_exec(f"mkdir -p {shlex.quote(os.path.dirname(remote))} && cat > {partial}"
                             f" && chmod 755 {partial} && mv -f {partial} {quoted}",
                             timeout=max(self.timeout, 120), raw=True, stdin=binary.read_bytes())
        if done.rc != 0:
            raise OSError(done.stderr.strip()[:200] or f"exit {done.rc}")

    def restart_agent(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        self._start_agent_channel()

    # -- commands --------------------------------------------------------------------------

    def run(self, command: Command, *, timeout, env, cwd, stdin) -> Result:
        """One command; ChannelClosed when the connection or the agent went away."""
        if self.mode == "agent":
            return self._agent.run(command, timeout=timeout, env=env or None, cwd=cwd,
                                   stdin=stdin)
        return self.run_exec(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)

    def run_exec(self, command: Command, *, timeout=None, env=None, cwd=None, stdin=None,
                 raw: bool = False) -> Result:
        """One exec channel per command (the fallback, and the probe before the agent).

        The command line prints its shell's PID first (sshd makes that shell a process
        group leader), so a timeout can kill the whole tree, not only the channel.
        """
        body = []
        if cwd:
            body.append(f"cd -- {shlex.quote(cwd)} || exit 1")
        for key, value in (env or {}).items():
            body.append(f"export {key}={shlex.quote(value)}")
        if isinstance(command, str):
            body.append(command if raw else f"/bin/sh -c {shlex.quote(command)}")
        else:
            body.append(shlex.join(command))
        script = "; ".join(body)
        if self.sudo and not raw:
            script = f"sudo -n /bin/sh -c {shlex.quote(script)}"  # sudo drops exported env
        # `; exit $?` keeps the login shell from exec'ing the last command: the shell then
        # reports a signal death as 128+N (a bare exec'd process gives paramiko no status).
        # Both markers also cut off what the login shell printed before the command ran
        # (banners, ~/.bashrc echoes): only output after them belongs to the command.
        line = (f"printf '%s\\n' {_OUT_MARK.decode()}; "
                "printf 'PORTABILITY_PID=%s\\n' \"$$\" >&2; " + script + "; exit $?")
        started = time.perf_counter()
        try:
            chan = self.client.get_transport().open_session(timeout=self.timeout)
            chan.exec_command(line)
        except Exception as exc:
            raise ChannelClosed(f"cannot open an SSH channel ({_first_line(exc)})") from exc
        feeder = None
        if stdin:
            feeder = threading.Thread(target=_feed, args=(chan, stdin), daemon=True)
            feeder.start()
        else:
            chan.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        exited_at = None
        timed_out = False
        while True:
            wait = 0.05
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            try:
                select.select([chan], [], [], wait)
            except (OSError, ValueError):
                pass
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            if chan.eof_received and chan.exit_status_ready():
                break
            if chan.closed or not self.alive():
                if chan.exit_status_ready():
                    break
                raise ChannelClosed("the SSH connection dropped during the command")
            now = time.monotonic()
            if chan.exit_status_ready():
                exited_at = exited_at or now
                if now - exited_at > _GRACE_S:
                    break  # a background process holds the pipes: stop waiting
            elif deadline is not None and now >= deadline:
                timed_out = True
                break
        # Output that arrived between the last drain and the end-of-stream check.
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        pid = _take_pid(err)
        _cut_through(out, _OUT_MARK + b"\n")
        if timed_out:
            chan.close()
            if pid:
                # The command's process group is its login shell's, which is not always
                # $$ (a shell that did not exec the command line): read it from /proc.
                # No `--`: dash's kill builtin rejects it.
                kill = (f"set -- $(sed 's/.*) //' /proc/{pid}/stat 2>/dev/null); "
                        f"kill -9 -${{3:-{pid}}} 2>/dev/null || kill -9 {pid}")
                self.run_exec(f"sudo -n sh -c {shlex.quote(kill)}" if self.sudo else kill,
                              timeout=self.timeout, raw=True)
            return Result(command, 124, bytes(out), bytes(err), True,
                          time.perf_counter() - started)
        rc = chan.recv_exit_status()
        chan.close()
        if feeder is not None:
            feeder.join(timeout=1)
        if rc < 0:
            rc = 255  # the server sent no exit status (e.g. it killed the session)
        return Result(command, rc, bytes(out), bytes(err), False, time.perf_counter() - started)

    # -- files -----------------------------------------------------------------------------

    def sftp(self):
        if self._sftp is None:
            if self._sftp_error:
                raise OSError(self._sftp_error)  # do not retry a broken SFTP per file
            try:
                self._sftp = self.client.open_sftp()
            except Exception as exc:
                self._sftp_error = f"the server offers no working SFTP ({_first_line(exc)})"
                raise OSError(self._sftp_error) from None
        return self._sftp

    def close(self) -> None:
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        self._sftp_error = None
        for client in reversed(self._clients):
            try:
                client.close()
            except Exception:
                pass
        self._clients = []
        self.mode = "none"


class _AgentNotUsable(Exception):
    pass


class SshTarget(Target):
    kind = "ssh"
    Spec = SshSpec

    def __init__(self, spec: SshSpec, *, session: str, base_dir: Path,
                 _host_key_mode: str | None = None):
        super().__init__(spec, session=session, base_dir=base_dir)
        self.spec: SshSpec = spec
        #: "session" (used by the vagrant kind): trust the first key seen, for this session only.
        self._host_key_mode = _host_key_mode or spec.host_key_policy
        self._conn: SshConnection | None = None
        self._workdir: str | None = None
        self._own_workdir = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def check_engine(cls, spec: SshSpec, base_dir: Path) -> str | None:
        """Whether the server (or the first ProxyJump hop) accepts TCP; no login is tried."""
        if spec.password_env and spec.password_env not in os.environ:
            return f"environment variable {spec.password_env} (password_env) is not set"
        try:
            config = load_ssh_config(spec.ssh_config, base_dir, spec.name)
            endpoint = resolve_endpoint(spec.host or "", config, user=spec.user, port=spec.port)
            if endpoint.proxy_command:
                return None  # reachable only through the command; nothing cheap to check
            if endpoint.proxy_jump:
                endpoint = resolve_endpoint(endpoint.proxy_jump[0], config, user=None, port=None)
            with socket.create_connection((endpoint.hostname, endpoint.port),
                                          timeout=min(spec.connect_timeout, 5)):
                pass
        except TargetUnavailable as exc:
            return exc.reason
        except OSError as exc:
            return f"{spec.host}: cannot connect ({exc.strerror or _first_line(exc)})"
        return None

    @property
    def workdir(self) -> str:
        if self._workdir is None:
            raise RuntimeError(f"ssh target {self.name} not started")
        return self._workdir

    @property
    def connection(self) -> SshConnection | None:
        return self._conn

    @property
    def exec_mode(self) -> str:
        """"agent" (one persistent channel) or "exec" (a channel per command)."""
        return self._conn.mode if self._conn else "none"

    def start(self) -> None:
        spec = self.spec
        password = None
        if spec.password_env:
            password = os.environ.get(spec.password_env)
            if password is None:
                raise TargetUnavailable(self.name, f"`password_env: {spec.password_env}` names "
                                        "an environment variable that is not set; export it")
        config = load_ssh_config(spec.ssh_config, self.base_dir, self.name)
        endpoint = resolve_endpoint(spec.host, config, user=spec.user, port=spec.port,
                                    identity_file=spec.identity_file, base_dir=self.base_dir)
        # known_hosts: the spec's, else the ssh_config entry's UserKnownHostsFile, else OpenSSH's.
        chosen = spec.known_hosts or endpoint.known_hosts
        known = Path(chosen).expanduser() if chosen else Path.home() / ".ssh" / "known_hosts"
        if not known.is_absolute():
            known = self.base_dir / known
        self._conn = SshConnection(self.name, endpoint, host_key_mode=self._host_key_mode,
                                   known_hosts=known, password=password,
                                   timeout=spec.connect_timeout, sudo=spec.sudo, config=config)
        self._conn.connect()
        self._make_workdir()

    def _make_workdir(self) -> None:
        if self.spec.workdir:
            self._workdir = self.spec.workdir
            made = self._run(["mkdir", "-p", self._workdir], cwd="/")
        else:
            prefix = f"portability-{self.session}-{self.name}-XXXXXX"
            made = self._run(f"mktemp -d /tmp/{shlex.quote(prefix)} 2>/dev/null || "
                             f"mktemp -d \"$HOME\"/{shlex.quote(prefix)}", cwd="/")
            self._workdir = made.stdout.strip() or None
            self._own_workdir = True
        if made.rc != 0 or not self._workdir:
            raise TargetUnavailable(self.name, f"cannot create the workdir on the server: "
                                    f"{made.stderr.strip()[:200] or f'exit {made.rc}'}")

    def stop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if self._own_workdir and self._workdir and conn.alive():
                conn.run(["rm", "-rf", "--", self._workdir], timeout=60, env=None, cwd="/",
                         stdin=None)
        except Exception:  # noqa: BLE001 — stop never raises; the server may be gone
            pass
        finally:
            conn.close()
            self._own_workdir = False

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
        return self._run(command, timeout=timeout, env=env, cwd=cwd or self.workdir, stdin=stdin)

    def _run(self, command, *, timeout=None, env=None, cwd=None, stdin=None) -> Result:
        conn = self._conn
        if conn is None:
            raise TargetLost(self.name, "the target is not started")
        merged = {**self.spec.env, **(env or {})}
        if not conn.alive():
            # Dropped between commands: nothing was sent, so reconnecting and running is safe.
            self._reconnect("the connection dropped")
        try:
            return conn.run(command, timeout=timeout, env=merged, cwd=cwd, stdin=stdin)
        except ChannelClosed as exc:
            # Never re-run a command that may have started: it fails like an ssh command whose
            # connection dropped (rc 255), and the target carries on reconnected.
            self._reconnect(str(exc))
            return Result(command, 255, b"", f"portability: the SSH connection broke during "
                          f"the command ({exc}); the target reconnected\n".encode())

    def _reconnect(self, why: str) -> None:
        """One attempt: the agent again if only it died, else a new connection."""
        conn = self._conn
        if conn is None:
            raise TargetLost(self.name, f"{why}; the target was stopped")
        try:
            if conn.alive() and conn.mode == "agent":
                conn.restart_agent()
            else:
                conn.connect()
        except (TargetUnavailable, _AgentNotUsable, ChannelClosed, OSError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            raise TargetLost(self.name, f"{why}; reconnecting failed: {reason}") from None

    # -- files -----------------------------------------------------------------------------

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        sftp = None if self.spec.sudo else self._sftp()
        if sftp is None:
            return _put_tar(self, local, remote)
        remote = remote.rstrip("/") or "/"
        sftp_makedirs(sftp, os.path.dirname(remote) or "/")
        if local.is_dir():
            _sftp_put_tree(sftp, local, remote)
        else:
            sftp.put(str(local), remote)
            sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))

    def get(self, remote: str, local: Path) -> None:
        local = Path(local)
        sftp = None if self.spec.sudo else self._sftp()
        if sftp is None:
            return _get_tar(self, remote, local)
        try:
            attrs = sftp.stat(remote)
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.name}:{remote}") from None
        local.parent.mkdir(parents=True, exist_ok=True)
        if stat.S_ISDIR(attrs.st_mode):
            _sftp_get_tree(sftp, remote, local)
        else:
            sftp.get(remote, str(local))
            os.chmod(local, stat.S_IMODE(attrs.st_mode))

    def _sftp(self):
        """The SFTP client, or None when the server has no working SFTP (files then go
        through tar on the command channel)."""
        if self._conn is None:
            raise TargetLost(self.name, "the target is not started")
        if not self._conn.alive():
            self._reconnect("the connection dropped")
        try:
            return self._conn.sftp()
        except OSError:
            return None


# -- ssh_config ----------------------------------------------------------------------------------

def load_ssh_config(path: str | None, base_dir: Path, target: str):
    """The paramiko SSHConfig of ``path`` (or ~/.ssh/config when it exists), else None."""
    import paramiko

    if path:
        file = Path(path).expanduser()
        if not file.is_absolute():
            file = base_dir / file
        if not file.is_file():
            raise TargetUnavailable(target, f"`ssh_config: {path}`: no such file {file}")
    else:
        file = Path.home() / ".ssh" / "config"
        if not file.is_file():
            return None
    try:
        return paramiko.SSHConfig.from_path(str(file))
    except Exception as exc:
        raise TargetUnavailable(target, f"cannot parse ssh config {file}: {_first_line(exc)}") from None


def resolve_endpoint(host: str, config, *, user: str | None, port: int | None,
                     identity_file: str | None = None, base_dir: Path | None = None) -> Endpoint:
    """Merge ``[user@]host[:port]`` and the spec's keys over the config's ``Host`` entry;
    explicit values win, like OpenSSH command-line options over its config file."""
    if "@" in host:
        at_user, host = host.rsplit("@", 1)
        user = user or at_user
    if host.count(":") == 1 and port is None:
        host, _, text = host.partition(":")
        port = int(text) if text.isdigit() else None
    found = config.lookup(host) if config is not None else {}
    if identity_file:
        path = Path(identity_file).expanduser()
        keys = [str(path if path.is_absolute() or base_dir is None else base_dir / path)]
    else:
        keys = [k for k in found.get("identityfile", []) if Path(k).expanduser().is_file()]
    jump = found.get("proxyjump")
    return Endpoint(
        alias=host,
        hostname=found.get("hostname", host),
        port=port or int(found.get("port", 22)),
        user=user or found.get("user") or _local_user(),
        key_files=keys,
        proxy_jump=[] if not jump or jump == "none" else [h.strip() for h in jump.split(",")],
        proxy_command=None if found.get("proxycommand") in (None, "none") else found["proxycommand"],
        # OpenSSH allows several files here; the first is the one keys are checked against.
        known_hosts=next(iter(found.get("userknownhostsfile", "").split()), None),
    )


# -- helpers -----------------------------------------------------------------------------------

def _tune_socket(sock: socket.socket) -> None:
    # Without TCP_NODELAY, each small request waits for the server's delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)


def _feed(chan, data: bytes) -> None:
    try:
        chan.sendall(data)
        chan.shutdown_write()
    except Exception:  # the command exited without reading all of its stdin
        pass


_PID_LINE = re.compile(rb"PORTABILITY_PID=(\d+)\n")
_OUT_MARK = b"PORTABILITY_OUTPUT_STARTS"


def _take_pid(err: bytearray) -> int | None:
    """The command shell's PID from its first stderr line; drops that line and the noise
    before it."""
    match = _PID_LINE.search(err)
    if not match:
        return None
    pid = int(match.group(1))
    del err[:match.end()]
    return pid


def _cut_through(buf: bytearray, marker: bytes) -> None:
    at = buf.find(marker)
    if at >= 0:
        del buf[:at + len(marker)]


def _drain_stderr(chan) -> str:
    data = b""
    try:
        while chan.recv_stderr_ready():
            data += chan.recv_stderr(65536)
    except Exception:
        pass
    return data.decode(errors="replace").strip()[:300]


def sftp_makedirs(sftp, path: str) -> None:
    if path in ("", "/"):
        return
    try:
        if stat.S_ISDIR(sftp.stat(path).st_mode):
            return
    except OSError:
        pass
    sftp_makedirs(sftp, os.path.dirname(path.rstrip("/")))
    try:
        sftp.mkdir(path)
    except OSError:
        if not stat.S_ISDIR(sftp.stat(path).st_mode):
            raise


def _sftp_put_tree(sftp, local: Path, remote: str) -> None:
    sftp_makedirs(sftp, remote)
    for entry in sorted(local.iterdir()):
        dest = f"{remote}/{entry.name}"
        if entry.is_symlink():
            try:
                sftp.remove(dest)
            except OSError:
                pass
            sftp.symlink(os.readlink(entry), dest)
        elif entry.is_dir():
            _sftp_put_tree(sftp, entry, dest)
        else:
            sftp.put(str(entry), dest)
            sftp.chmod(dest, stat.S_IMODE(entry.stat().st_mode))


def _sftp_get_tree(sftp, remote: str, local: Path) -> None:
    local.mkdir(parents=True, exist_ok=True)
    for attrs in sftp.listdir_attr(remote):
        src = f"{remote.rstrip('/')}/{attrs.filename}"
        dest = local / attrs.filename
        if stat.S_ISLNK(attrs.st_mode):
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            dest.symlink_to(sftp.readlink(src))
        elif stat.S_ISDIR(attrs.st_mode):
            _sftp_get_tree(sftp, src, dest)
        else:
            sftp.get(src, str(dest))
            os.chmod(dest, stat.S_IMODE(attrs.st_mode))


def _put_tar(target: Target, local: Path, remote: str) -> None:
    """With ``sudo:`` files go through tar on the (root) command channel: SFTP runs as the
    login user and could not write where root's commands expect them."""
    remote = remote.rstrip("/") or "/"
    parent, name = os.path.split(remote)
    done = target.exec(f"mkdir -p {shlex.quote(parent or '/')} && tar -x -f - -C "
                       f"{shlex.quote(parent or '/')}", stdin=archive.pack(local, name), cwd="/")
    if done.rc != 0:
        raise OSError(f"{target.name}: putting {remote} failed: {done.stderr.strip()[:200]}")


def _get_tar(target: Target, remote: str, local: Path) -> None:
    import io

    parent, name = os.path.split(remote.rstrip("/"))
    done = target.exec(["tar", "-c", "-f", "-", "-C", parent or "/", name], cwd="/")
    if done.rc != 0:
        if "No such file" in done.stderr:
            raise FileNotFoundError(f"{target.name}:{remote}")
        raise OSError(f"{target.name}: getting {remote} failed: {done.stderr.strip()[:200]}")
    archive.unpack(io.BytesIO(done.stdout_bytes), name, local)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


TARGET = SshTarget
