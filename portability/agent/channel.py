"""Host side of the agent protocol (the wire format is described in agent.c).

A channel talks to one agent over any byte stream: a docker exec socket, an SSH
channel, a unix socket bound to a VM's virtio-serial port, or a local pipe pair.
Kinds adapt their stream to the tiny ``Stream`` protocol below.
"""

from __future__ import annotations

import struct
import threading
import time
from typing import Mapping, Protocol

from portability.targets.base import Command, Result

_HEAD = struct.Struct("<cI")
_U32 = struct.Struct("<I")
_TAIL = struct.Struct("<iI")


class ChannelClosed(Exception):
    """The stream ended: the agent (or the target under it) is gone."""


class Stream(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv_exact(self, n: int) -> bytes:
        """Exactly n bytes, or raise ChannelClosed."""
        ...

    def close(self) -> None: ...


def encode_request(
    command: Command,
    *,
    timeout: float | None,
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdin: bytes | None,
) -> bytes:
    """The bytes of one 'R' frame."""
    shell = isinstance(command, str)
    argv = [command] if shell else list(command)
    if not argv:
        raise ValueError("empty command")
    timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
    parts = [struct.pack("<iBI", timeout_ms, 1 if shell else 0, len(argv))]
    for arg in argv:
        b = arg.encode() if isinstance(arg, str) else bytes(arg)
        parts += [_U32.pack(len(b)), b]
    env_items = [f"{k}={v}".encode() for k, v in (env or {}).items()]
    parts.append(_U32.pack(len(env_items)))
    for item in env_items:
        parts += [_U32.pack(len(item)), item]
    cwd_b = (cwd or "").encode()
    data = stdin or b""
    parts += [_U32.pack(len(cwd_b)), cwd_b, _U32.pack(len(data)), data]
    payload = b"".join(parts)
    return _HEAD.pack(b"R", len(payload)) + payload


class AgentChannel:
    """One command at a time over one stream; thread-safe."""

    def __init__(self, stream: Stream):
        self._stream = stream
        self._lock = threading.Lock()
        self.closed = False

    def ping(self) -> str:
        """Round trip to the agent; returns its banner ("portability-agent 1 <kernel>")."""
        with self._lock:
            self._send(_HEAD.pack(b"P", 0))
            kind, payload = self._read_frame()
            if kind != b"H":
                raise ChannelClosed(f"unexpected {kind!r} frame in answer to a ping")
            return payload.decode(errors="replace")

    def run(
        self,
        command: Command,
        *,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
    ) -> Result:
        frame = encode_request(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin)
        started = time.perf_counter()
        out: list[bytes] = []
        err: list[bytes] = []
        with self._lock:
            self._send(frame)
            while True:
                kind, payload = self._read_frame()
                if kind == b"O":
                    out.append(payload)
                elif kind == b"E":
                    err.append(payload)
                elif kind == b"X":
                    rc, flags = _TAIL.unpack(payload)
                    break
                else:
                    self.closed = True
                    raise ChannelClosed(f"unexpected {kind!r} frame from the agent")
        return Result(
            command=command,
            rc=rc,
            stdout_bytes=b"".join(out),
            stderr_bytes=b"".join(err),
            timed_out=bool(flags & 1),
            duration_s=time.perf_counter() - started,
        )

    def quit(self) -> None:
        """Ask the agent to exit (a VM's agent powers the VM off)."""
        if self.closed:
            return
        try:
            with self._lock:
                self._send(_HEAD.pack(b"Q", 0))
        except (ChannelClosed, OSError):
            pass

    def close(self) -> None:
        self.closed = True
        try:
            self._stream.close()
        except OSError:
            pass

    def _send(self, data: bytes) -> None:
        if self.closed:
            raise ChannelClosed("the channel is closed")
        try:
            self._stream.send(data)
        except OSError as exc:
            self.closed = True
            raise ChannelClosed(str(exc)) from exc

    def _read_frame(self) -> tuple[bytes, bytes]:
        try:
            kind, length = _HEAD.unpack(self._stream.recv_exact(5))
            payload = self._stream.recv_exact(length) if length else b""
        except (ChannelClosed, OSError) as exc:
            self.closed = True
            raise ChannelClosed(str(exc) or "the agent's stream ended") from exc
        return kind, payload


class PipeStream:
    """A Stream over a subprocess's stdin/stdout (local agent, `ssh host agent serve`)."""

    def __init__(self, writer, reader):
        self._writer = writer
        self._reader = reader

    def send(self, data: bytes) -> None:
        self._writer.write(data)
        self._writer.flush()

    def recv_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            data = self._reader.read(n)
            if not data:
                raise ChannelClosed("the agent's stream ended")
            chunks.append(data)
            n -= len(data)
        return b"".join(chunks)

    def close(self) -> None:
        for f in (self._writer, self._reader):
            try:
                f.close()
            except OSError:
                pass


class SocketStream:
    """A Stream over a connected socket (unix socket of a VM's virtio-serial port, SSH channel)."""

    def __init__(self, sock):
        self._sock = sock
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise ChannelClosed("the agent's stream ended")
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def close(self) -> None:
        self._sock.close()
