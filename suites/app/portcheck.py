#!/usr/bin/env python3
"""portcheck — the small application the bundled suite tests on every target.

It claims to "run identically everywhere". Two of its features quietly depend on where
it runs:
  * `stash` keeps a payload in an anonymous memory file sealed against execution
    (memfd_create with MFD_NOEXEC_SEAL): the kernel accepts that flag since Linux 6.3.
  * `config FILE` reads TOML with tomllib, in the standard library since Python 3.11.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys

__version__ = "1.4.0"

_MFD_ALLOW_SEALING = 0x0002
_MFD_NOEXEC_SEAL = 0x0008  # Linux 6.3
_F_GET_SEALS = 1034
_F_SEAL_EXEC = 0x0020


def cmd_version(args: list[str]) -> int:
    print(f"portcheck {__version__}")
    return 0


def cmd_checksum(args: list[str]) -> int:
    for path in args:
        with open(path, "rb") as f:
            print(f"{hashlib.sha256(f.read()).hexdigest()}  {os.path.basename(path)}")
    return 0


def cmd_stash(args: list[str]) -> int:
    """Copy stdin into a sealed, never-executable memory file and report its size and seals."""
    import fcntl

    try:
        fd = os.memfd_create("portcheck-stash", _MFD_NOEXEC_SEAL | _MFD_ALLOW_SEALING)
    except OSError as exc:
        print(f"portcheck: stash: cannot create a no-exec memory file: {exc.strerror} "
              f"({errno.errorcode.get(exc.errno, exc.errno)})", file=sys.stderr)
        return 1
    data = sys.stdin.buffer.read()
    os.write(fd, data)
    seals = fcntl.fcntl(fd, _F_GET_SEALS)
    print(f"stashed {len(data)} bytes; exec sealed: {'yes' if seals & _F_SEAL_EXEC else 'no'}")
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
    "stash": cmd_stash,
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
