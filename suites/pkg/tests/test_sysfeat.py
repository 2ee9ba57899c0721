"""sysfeat's own unit tests: they import the application and call it directly, so they run
inside each target (pytestmark below) with the target's kernel, libc and Python."""

from __future__ import annotations

import os
import sys

import pytest

import sysfeat

# Inside each target; sysfeat is a Python package, so targets without Python (busybox) are
# out of its scope: an expected skip there, not an error.
pytestmark = [pytest.mark.inside, pytest.mark.only_on(python=">=3.8")]


@pytest.mark.parametrize("text, expected", [
    ("6.1.0-18-amd64", (6, 1, 0)),
    ("5.10.0", (5, 10, 0)),
    ("6.18.44-fc", (6, 18, 44)),
])
def test_parse_version(text, expected):
    assert sysfeat.parse_version(text) == expected


def test_python_tag():
    assert sysfeat.python_tag().startswith("py3")


def test_load_settings():
    """Userland-dependent: tomllib is in the stdlib from Python 3.11."""
    settings = sysfeat.load_settings('name = "demo"\n[limits]\nfiles = 8\n')
    assert settings == {"name": "demo", "limits": {"files": 8}}


def test_sealed_buffer():
    """Kernel-dependent: MFD_NOEXEC_SEAL exists from Linux 6.3."""
    fd = sysfeat.sealed_buffer(b"payload")
    try:
        assert os.read(fd, 16) == b"payload"
    finally:
        os.close(fd)


@pytest.mark.skipif(sys.platform != "linux", reason="memfd is Linux-only")
def test_memfd_plain():
    fd = os.memfd_create("plain")
    os.close(fd)
