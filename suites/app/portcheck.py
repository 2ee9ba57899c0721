#!/usr/bin/env python3
"""portcheck — the small application the bundled suite tests on every target.

It claims to "run identically everywhere". Two of its features quietly depend on where
it runs:
  * `protect PATH` uses fchmodat2(2) with AT_SYMLINK_NOFOLLOW so it never follows a
    symlink planted in a shared directory; the syscall exists since Linux 6.6.
  * `config FILE` reads TOML with tomllib, in the standard library since Python 3.11.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform
import sys

__version__ = "1.4.0"

_SYS_FCHMODAT2 = {"x86_64": 452, "aarch64": 452}
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100


def cmd_version(args: list[str]) -> int:
    print(f"portcheck {__version__}")
    return 0


def cmd_checksum(args: list[str]) -> int:
    for path in args:
        with open(path, "rb") as f:
            print(f"{hashlib.sha256(f.read()).hexdigest()}  {os.path.basename(path)}")
    return 0


def cmd_protect(args: list[str]) -> int:
    """chmod 0600 without following symlinks."""
    path = args[0]
    libc = ctypes.CDLL(None, use_errno=True)
    number = _SYS_FCHMODAT2.get(platform.machine())
    if number is None:
        print(f"portcheck: unsupported architecture {platform.machine()}", file=sys.stderr)
        return 2
    rc = libc.syscall(number, _AT_FDCWD, path.encode(), 0o600, _AT_SYMLINK_NOFOLLOW)
    if rc != 0:
        err = ctypes.get_errno()
        print(f"portcheck: protect {path}: {os.strerror(err)} ({errno.errorcode.get(err, err)})",
              file=sys.stderr)
        return 1
    return 0


def cmd_config(args: list[str]) -> int:
    """Print a TOML config file as JSON."""
    try:
        import tomllib
    except ImportError:
        print("portcheck: config: tomllib is not available on this Python", file=sys.stderr)
        return 1
    with open(args[0], "rb") as f:
        print(json.dumps(tomllib.load(f), sort_keys=True))
    return 0


def cmd_list(args: list[str]) -> int:
    """List a directory in a stable order."""
    for name in sorted(os.listdir(args[0])):
        print(name)
    return 0


def cmd_wordcount(args: list[str]) -> int:
    text = sys.stdin.read()
    print(len(text.split()))
    return 0


COMMANDS = {
    "version": cmd_version,
    "checksum": cmd_checksum,
    "protect": cmd_protect,
    "config": cmd_config,
    "list": cmd_list,
    "wordcount": cmd_wordcount,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: portcheck {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
