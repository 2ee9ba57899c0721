"""sysfeat: a small application whose features depend on the kernel or on the Python version.

The bundled suite's example of an application with its own unit tests (suites/pkg/tests),
run inside each target by pytest-portability's inside mode:

    pytest suites/pkg --targets=local,debian-11,debian-12 --inside
"""

from __future__ import annotations

import os
import sys

#: memfd_create(2) flag added in Linux 6.3: a memfd that can never be made executable.
MFD_NOEXEC_SEAL = 0x0008


def parse_version(text: str) -> tuple[int, ...]:
    """"6.1.0-18-amd64" -> (6, 1, 0)."""
    parts = []
    for piece in text.split("-")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def load_settings(text: str) -> dict:
    """Settings from TOML text. Uses the stdlib's tomllib (Python 3.11+)."""
    import tomllib  # a userland feature: ModuleNotFoundError before Python 3.11

    return tomllib.loads(text)


def sealed_buffer(data: bytes) -> int:
    """An in-memory file holding ``data`` that can never be made executable; returns its fd.

    Needs memfd_create(MFD_NOEXEC_SEAL) — a kernel feature (Linux 6.3+): older kernels
    reject the flag with EINVAL.
    """
    fd = os.memfd_create("sysfeat", os.MFD_CLOEXEC | MFD_NOEXEC_SEAL)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def python_tag() -> str:
    return f"py{sys.version_info[0]}{sys.version_info[1]}"
