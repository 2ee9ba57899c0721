"""kind: container — one container per target per session, on the Docker Engine API (docker-py).

Podman works through its Docker-compatible socket (``engine_url: unix:///run/podman/podman.sock``).

The container's PID 1 is the project's static agent in ``init`` mode (it only reaps and
waits), copied in through the archive API before the container starts, so any image
works, even one without a shell. Commands go through one persistent ``agent serve`` exec
stream: one round trip per command instead of one ``docker exec`` per command.
Where the agent cannot be used (no C compiler on this machine to build it, or an engine of
another architecture), each command is its own ``docker exec`` — slower, same semantics.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from portability.agent import REMOTE_PATH, AgentUnavailable, agent_binary
from portability.agent.channel import AgentChannel, ChannelClosed
from portability.errors import TargetLost, TargetUnavailable
from portability.targets import archive
from portability.targets.base import Command, Result, Spec, Target

#: Images of this namespace are built locally (portability/images.py) and never pulled.
LOCAL_NAMESPACE = "portability/"

#: PID 1 when the agent cannot be used: keeps the container alive, ends promptly on SIGTERM.
_SHELL_INIT = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]


@dataclass(frozen=True, kw_only=True)
class ContainerSpec(Spec):
    kind: str = "container"
    #: Image to run; required unless ``build`` is given.
    image: str | None = None
    #: A build context directory, or a Dockerfile path (its directory is the context).
    build: str | None = None
    #: Docker Engine URL; default DOCKER_HOST, else the local socket. Podman: its compat socket.
    engine_url: str | None = None
    #: User commands run as (the container's PID 1 stays root so it can reap).
    user: str | None = None
    network: str = "none"
    privileged: bool = False

    def validate(self) -> str | None:
        if not self.image and not self.build:
            return "needs `image:` (an image name) or `build:` (a context directory or Dockerfile)"
        if self.image and self.build:
            return "give either `image:` or `build:`, not both"
        return None


class _DockerStream:
    """The Stream protocol over a hijacked ``docker exec`` socket (stdout/stderr multiplexed)."""

    def __init__(self, sock):
        self._holder = sock  # keeps docker-py's response (and the connection) alive
        self._sock = getattr(sock, "_sock", sock)
        self._buf = bytearray()
        self.stderr = bytearray()  # the agent's own diagnostics, for error messages

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            stream, payload = self._next_frame()
            if stream == 2:
                self.stderr += payload
            else:
                self._buf += payload
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _next_frame(self) -> tuple[int, bytes]:
        header = self._read(8)
        stream, size = struct.unpack(">BxxxL", header)
        return stream, self._read(size)

    def _read(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self._sock.recv(max(left, 65536) if left > 65536 else left)
            if not chunk:
                raise ChannelClosed("the container's exec stream ended")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self._sock.close()
        finally:
            close = getattr(self._holder, "close", None)
            if close:
                close()


class ContainerTarget(Target):
    kind = "container"
    Spec = ContainerSpec

    def __init__(self, spec: ContainerSpec, *, session: str, base_dir: Path):
        super().__init__(spec, session=session, base_dir=base_dir)
        self.spec: ContainerSpec = spec
        self._client = None
        self._container_id: str | None = None
        self._channel: AgentChannel | None = None
        self._use_agent = True
        self._image: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def check_engine(cls, spec: ContainerSpec, base_dir: Path) -> str | None:
        import docker

        try:
            client = _client(spec.engine_url, timeout=5)
            try:
                client.ping()
                if spec.image:
                    client.images.get(spec.image)
            finally:
                client.close()
        except docker.errors.ImageNotFound:
            return f"image {spec.image} is missing; {_missing_image_hint(spec.image)}"
        except docker.errors.DockerException as exc:
            return f"Docker Engine unreachable ({_first_line(exc)})"
        return None

    @property
    def workdir(self) -> str:
        return self.spec.workdir or "/srv/portability"

    @property
    def container_id(self) -> str | None:
        return self._container_id

    def start(self) -> None:
        from docker import errors as derr

        try:
            self._client = _client(self.spec.engine_url, timeout=120)
            info = self._client.api.version()
        except derr.DockerException as exc:
            where = self.spec.engine_url or os.environ.get("DOCKER_HOST") or "the local socket"
            raise TargetUnavailable(
                self.name, f"Docker Engine at {where} is unreachable ({_first_line(exc)}); "
                "start dockerd (or podman system service) or set engine_url") from None
        self._image = self._resolve_image(derr)
        self._use_agent = self._agent_usable(info)
        api = self._client.api
        try:
            host_config = api.create_host_config(
                network_mode=self.spec.network, privileged=self.spec.privileged)
            created = api.create_container(
                self._image,
                entrypoint=[REMOTE_PATH, "init"] if self._use_agent else _SHELL_INIT,
                command=[],
                labels=self.labels,
                host_config=host_config,
                environment=dict(self.spec.env) or None,
                name=None,
                user="0" if self._use_agent else self.spec.user,
            )
            self._container_id = created["Id"]
            if self._use_agent:
                api.put_archive(self._container_id, "/", _agent_tar())
            api.start(self._container_id)
        except derr.APIError as exc:
            raise TargetUnavailable(self.name, f"starting a container of {self._image} failed: "
                                    f"{_first_line(exc.explanation or exc)}") from None
        self._connect()
        setup = self.exec(["mkdir", "-p", self.workdir], cwd="/")
        if setup.rc != 0:
            raise TargetUnavailable(self.name, f"cannot create workdir {self.workdir}: "
                                    f"{setup.stderr.strip()}")

    def _resolve_image(self, derr) -> str:
        if self.spec.build:
            return self._build_image(derr)
        image = self.spec.image
        try:
            self._client.images.get(image)
            return image
        except derr.ImageNotFound:
            pass
        if image.startswith(LOCAL_NAMESPACE):
            # Built here by `portability images build`, never published: do not ask a registry.
            raise TargetUnavailable(self.name, f"image {image} is not present; "
                                    f"{_missing_image_hint(image)}")
        try:
            self._client.images.pull(image)
        except derr.DockerException as exc:
            raise TargetUnavailable(self.name, f"image {image} is not present and pulling it "
                                    f"failed ({_first_line(exc)}); build or pull it first") from None
        return image

    def _build_image(self, derr) -> str:
        path = Path(self.spec.build)
        if not path.is_absolute():
            path = self.base_dir / path
        context, dockerfile = (path.parent, path.name) if path.is_file() else (path, None)
        tag = f"portability-build/{self.name}:latest"
        try:
            self._client.images.build(path=str(context), dockerfile=dockerfile, tag=tag, rm=True,
                                      labels={"io.portability.target": self.name})
        except derr.BuildError as exc:
            last = [line.get("stream", "").strip() for line in exc.build_log if line.get("stream")]
            detail = last[-1] if last else _first_line(exc)
            raise TargetUnavailable(self.name, f"building {path} failed: {_first_line(exc)} "
                                    f"(last step: {detail})") from None
        except (derr.APIError, TypeError) as exc:
            raise TargetUnavailable(self.name, f"building {path} failed: {_first_line(exc)}") from None
        return tag

    def _agent_usable(self, version: Mapping) -> bool:
        if version.get("Arch") not in (None, _go_arch(os.uname().machine)):
            return False  # the agent is built for this machine's architecture
        try:
            agent_binary()
        except AgentUnavailable:
            return False
        return True

    def _connect(self) -> None:
        if not self._use_agent:
            return
        api = self._client.api
        exec_id = api.exec_create(self._container_id, [REMOTE_PATH, "serve"], stdin=True,
                                  stdout=True, stderr=True, user=self.spec.user or "")["Id"]
        stream = _DockerStream(api.exec_start(exec_id, socket=True))
        channel = AgentChannel(stream)
        try:
            channel.ping()
        except ChannelClosed:
            detail = stream.stderr.decode(errors="replace").strip() or "no output"
            channel.close()
            raise TargetUnavailable(self.name, f"the command agent did not start in the container "
                                    f"({detail})") from None
        self._channel = channel

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._container_id and self._client is not None:
            try:
                self._client.api.remove_container(self._container_id, force=True, v=True)
            except Exception:  # already gone, or the engine died: `portability clean` sweeps later
                pass
            self._container_id = None
        if self._client is not None:
            self._client.close()
            self._client = None

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
        if self._container_id is None:
            raise TargetLost(self.name, "the container is not running")
        if not self._use_agent:
            return self._exec_docker(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)
        if self._channel is None or self._channel.closed:
            self._reconnect()
        try:
            return self._channel.run(command, timeout=timeout, env=env,
                                     cwd=cwd or self.workdir, stdin=stdin)
        except ChannelClosed as exc:
            # Never re-run the command: it may have had effects. Either the container is
            # gone (TargetLost) or only the agent died: then this command failed like an ssh
            # command whose connection dropped (rc 255), and the next one reconnects.
            self._reconnect()
            return Result(command, 255, b"", f"portability: the exec stream broke during the "
                          f"command ({exc}); the target reconnected\n".encode())

    def _reconnect(self) -> None:
        """The stream broke: either the container is gone (lost) or only the agent died."""
        from docker import errors as derr

        try:
            state = self._client.api.inspect_container(self._container_id)["State"]
        except derr.DockerException as exc:
            raise TargetLost(self.name, f"the container vanished ({_first_line(exc)})") from None
        if not state.get("Running"):
            raise TargetLost(self.name, f"the container stopped (exit code {state.get('ExitCode')}"
                             f"{', OOM-killed' if state.get('OOMKilled') else ''})")
        try:
            self._connect()
        except TargetUnavailable as exc:
            raise TargetLost(self.name, exc.reason) from None

    def _exec_docker(self, command, *, timeout, env, cwd, stdin) -> Result:
        """One ``docker exec`` per command: the fallback when the agent is unavailable."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        # A shell changes directory and execs the command, so a missing program or directory
        # answers as it does through the agent (127 / 126 / 1), not with an engine error.
        argv = ["/bin/sh", "-c", 'cd "$1" || exit 1; shift; exec "$@"', "sh",
                cwd or self.workdir, *argv]
        if timeout is not None:
            # Without the agent, the engine has no per-exec kill; `timeout` exists in
            # coreutils and busybox images alike.
            argv = ["timeout", "-s", "KILL", str(max(1, round(timeout))), *argv]
        api = self._client.api
        started = time.perf_counter()
        exec_id = api.exec_create(self._container_id, argv, stdin=stdin is not None, stdout=True,
                                  stderr=True, environment=dict(env or {}) or None,
                                  workdir="/", user=self.spec.user or "")["Id"]
        stream = _DockerStream(api.exec_start(exec_id, socket=True))
        out, err = bytearray(), bytearray()
        try:
            if stdin:
                stream.send(stdin)
            stream._sock.shutdown(1)  # end of stdin
            while True:
                try:
                    kind, payload = stream._next_frame()
                except ChannelClosed:
                    break
                (err if kind == 2 else out).extend(payload)
        finally:
            stream.close()
        rc = api.exec_inspect(exec_id).get("ExitCode") or 0
        timed_out = timeout is not None and rc == 137
        return Result(command, 124 if timed_out else rc, bytes(out), bytes(err), timed_out,
                      time.perf_counter() - started)

    # -- files -----------------------------------------------------------------------------

    def put(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.exists():
            raise FileNotFoundError(str(local))
        remote = remote.rstrip("/") or "/"
        parent, name = os.path.split(remote)
        mk = self.exec(["mkdir", "-p", parent or "/"], cwd="/")
        if mk.rc != 0:
            raise OSError(f"{self.name}: cannot create {parent}: {mk.stderr.strip()}")
        self._client.api.put_archive(self._container_id, parent or "/", archive.pack(local, name))

    def get(self, remote: str, local: Path) -> None:
        from docker import errors as derr

        remote = remote.rstrip("/") or "/"
        try:
            chunks, _stat = self._client.api.get_archive(self._container_id, remote)
        except derr.NotFound:
            raise FileNotFoundError(f"{self.name}:{remote}") from None
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(chunk)
            spool.seek(0)
            archive.unpack(spool, os.path.basename(remote), Path(local))


def _client(engine_url: str | None, *, timeout: int):
    import docker

    if engine_url:
        return docker.DockerClient(base_url=engine_url, timeout=timeout)
    return docker.from_env(timeout=timeout)


def _agent_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(REMOTE_PATH.lstrip("/").split("/")[0])
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        data = agent_binary().read_bytes()
        info = tarfile.TarInfo(REMOTE_PATH.lstrip("/"))
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _go_arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


def _first_line(exc: object) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_image_hint(image: str) -> str:
    from portability.images import missing_image_hint

    return missing_image_hint(image) or f"build {image} first"




def clean_stale(engine_urls=(None,)) -> list[str]:
    """Remove containers left by sessions whose owning process is gone. Returns what was removed."""
    import docker

    from portability.session import SESSION_LABEL, TARGET_LABEL, labels_alive

    removed = []
    for url in dict.fromkeys(engine_urls):
        try:
            client = _client(url, timeout=30)
        except docker.errors.DockerException:
            continue
        try:
            for info in client.api.containers(all=True, filters={"label": SESSION_LABEL}):
                labels = info.get("Labels") or {}
                if labels_alive(labels):
                    continue
                client.api.remove_container(info["Id"], force=True, v=True)
                removed.append(f"container {info['Id'][:12]} (target {labels.get(TARGET_LABEL)}, "
                               f"session {labels.get(SESSION_LABEL)})")
        finally:
            client.close()
    return removed


TARGET = ContainerTarget
