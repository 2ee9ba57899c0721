"""Target facts: one POSIX-sh probe run through the target's exec channel, parsed into a record.

The probe uses nothing beyond what busybox offers, so facts work in minimal images.
Parsing is a pure function so it is unit-tested on recorded probe outputs.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

PROBE = r"""
k() { printf '%s=%s\n' "$1" "$2"; }
k kernel_release "$(uname -r)"
k arch "$(uname -m)"
if [ -r /etc/os-release ]; then
  ( . /etc/os-release; k os_id "$ID"; k os_version_id "$VERSION_ID"; k os_pretty "$PRETTY_NAME" )
elif [ -r /usr/lib/os-release ]; then
  ( . /usr/lib/os-release; k os_id "$ID"; k os_version_id "$VERSION_ID"; k os_pretty "$PRETTY_NAME" )
fi
k boot_id "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
if command -v getconf >/dev/null 2>&1 && getconf GNU_LIBC_VERSION >/dev/null 2>&1; then
  k libc_line "$(getconf GNU_LIBC_VERSION)"
else
  for f in /lib/ld-musl-*.so.1 /lib/libc.musl-*.so.1; do
    [ -e "$f" ] && { k libc_line "musl $("$f" 2>&1 | sed -n 's/^Version //p')"; break; }
  done
  for f in /lib/x86_64-linux-gnu/libc.so.6 /lib64/libc.so.6 /lib/aarch64-linux-gnu/libc.so.6 /lib/libc.so.6; do
    [ -x "$f" ] && { k libc_line "$("$f" 2>/dev/null | head -n 1)"; break; }
  done
fi
for p in python3 python; do
  if command -v "$p" >/dev/null 2>&1; then
    k python "$("$p" -c 'import platform; print(platform.python_version())' 2>/dev/null)"
    break
  fi
done
[ -e /.dockerenv ] && k container_marker docker
[ -e /run/.containerenv ] && k container_marker podman
grep -q '^flags.* hypervisor' /proc/cpuinfo 2>/dev/null && k hypervisor 1
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then k cgroup 2
elif [ -d /sys/fs/cgroup ] && [ -n "$(ls /sys/fs/cgroup 2>/dev/null)" ]; then k cgroup 1
fi
k cpus "$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"
"""


@dataclass(frozen=True)
class Facts:
    kernel_release: str
    arch: str
    os_id: str | None
    os_version_id: str | None
    libc: str | None
    libc_version: str | None
    python: str | None
    virtualization: str
    shares_host_kernel: bool
    cgroup_version: int | None = None
    os_pretty: str | None = None
    boot_id: str | None = None
    cpus: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kernel_version(self) -> tuple[int, ...]:
        """The numeric prefix of the kernel release: "6.1.0-50-amd64" -> (6, 1, 0)."""
        return version_tuple(self.kernel_release)


def version_tuple(text: str | None) -> tuple[int, ...]:
    match = re.match(r"\d+(?:\.\d+)*", text or "")
    return tuple(int(x) for x in match.group(0).split(".")) if match else ()


#: What each kind is, as a test target. ssh targets are detected from the probe.
_KIND_VIRTUALIZATION = {"local": "none", "container": "container", "qemu": "vm", "vagrant": "vm"}


def parse_probe(output: str, *, kind: str, host_boot_id: str | None) -> Facts:
    """Facts from the probe's ``key=value`` lines. Pure: unit-tested on recorded outputs."""
    raw: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and key not in raw:
            raw[key] = value.strip()
    libc, libc_version = _parse_libc(raw.get("libc_line", ""))
    virtualization = _KIND_VIRTUALIZATION.get(kind)
    if virtualization is None:
        if raw.get("container_marker"):
            virtualization = "container"
        elif raw.get("hypervisor"):
            virtualization = "vm"
        else:
            virtualization = "none"
    boot_id = raw.get("boot_id") or None
    cgroup = raw.get("cgroup")
    cpus = raw.get("cpus")
    return Facts(
        kernel_release=raw.get("kernel_release", ""),
        arch=raw.get("arch", ""),
        os_id=raw.get("os_id") or None,
        os_version_id=raw.get("os_version_id") or None,
        libc=libc,
        libc_version=libc_version,
        python=raw.get("python") or None,
        virtualization=virtualization,
        # The same boot id means the same running kernel instance, whatever the engine.
        shares_host_kernel=bool(boot_id and host_boot_id and boot_id == host_boot_id),
        cgroup_version=int(cgroup) if cgroup and cgroup.isdigit() else None,
        os_pretty=raw.get("os_pretty") or None,
        boot_id=boot_id,
        cpus=int(cpus) if cpus and cpus.isdigit() else None,
    )


def _parse_libc(line: str) -> tuple[str | None, str | None]:
    text = line.strip()
    if not text:
        return None, None
    lowered = text.lower()
    version = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    if lowered.startswith("musl"):
        return "musl", version.group(1) if version else None
    if "glibc" in lowered or "gnu c library" in lowered:
        # "glibc 2.36" (getconf) or "GNU C Library (Debian GLIBC 2.36-9) stable release version 2.36."
        match = re.search(r"version (\d+\.\d+)", text) or re.search(r"glibc (\d+\.\d+)", lowered)
        return "glibc", match.group(1) if match else (version.group(1) if version else None)
    return None, None


def host_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


class _Runs(Protocol):
    kind: str

    def exec(self, command, *, timeout=None, env=None, cwd=None, stdin=None): ...


def probe(target: _Runs, timeout: float = 60.0) -> Facts:
    """Run the probe on a started target and parse it."""
    result = target.exec(["/bin/sh", "-c", PROBE], timeout=timeout, cwd="/")
    return parse_probe(result.stdout, kind=target.kind, host_boot_id=host_boot_id())
