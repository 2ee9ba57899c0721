"""Kernels for kind: qemu — fetched from Debian's archive, cached, made bootable fast.

``portability kernels fetch 5.10 6.1 6.12`` downloads the generic ``linux-image-*-amd64``
package of the Debian release that ships each series (bullseye, bookworm, trixie) through a
private apt configuration (no root needed, the host's apt state is untouched), unpacks it
with ``dpkg -x`` and keeps, under ``cache_dir("kernels")/<release>/``:

* ``vmlinuz`` — the bzImage as shipped, and ``vmlinux`` — the uncompressed ELF kernel taken
  out of it: QEMU boots an ELF kernel through its PVH entry point, which skips the in-guest
  decompression that costs ~2.8 s per boot under TCG;
* ``modules/`` — only the modules a VM needs to reach its root filesystem and command port
  (virtio, 9p, overlay, ext4 and their dependencies), decompressed, since the initramfs has
  busybox ``insmod`` and no kmod;
* ``kernel.json`` — what was fetched (series, release, package, version, suite).

``<series>.json`` next to them points a series ("6.1") at the release directory it resolved to.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from portability.errors import PortabilityError
from portability.paths import cache_dir

#: Kernel series -> the Debian release whose generic amd64 kernel is that series.
SERIES: dict[str, str] = {"5.10": "bullseye", "6.1": "bookworm", "6.12": "trixie"}
DEFAULT_SERIES: tuple[str, ...] = ("5.10", "6.1", "6.12")
_FALLBACK_MIRROR = "http://deb.debian.org/debian"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class KernelUnavailable(PortabilityError):
    """A kernel cannot be fetched or read."""


@dataclass(frozen=True)
class Kernel:
    """One bootable kernel: what QEMU gets as ``-kernel`` and the modules for its initramfs."""

    #: The path QEMU boots (an ELF vmlinux when one could be made, else the bzImage).
    image: Path
    #: ``uname -r`` of the kernel, when known.
    release: str | None
    #: Directory holding ``*.ko`` files (searched recursively) and ``modules.builtin``, or None.
    modules: Path | None
    series: str | None = None
    package: str | None = None
    version: str | None = None
    suite: str | None = None


# -- the cache ---------------------------------------------------------------------------

def kernels_dir() -> Path:
    return cache_dir("kernels")


def cached(name: str) -> Kernel | None:
    """The cached kernel for a series ("6.1"), codename ("bookworm") or release, if present."""
    root = kernels_dir()
    series = series_of(name)
    if series is not None:
        pointer = root / f"{series}.json"
        try:
            release = json.loads(pointer.read_text())["release"]
        except (OSError, ValueError, KeyError):
            return None
        return _load(root / release)
    if "/" not in name and (root / name / "kernel.json").is_file():
        return _load(root / name)
    return None


def list_cached() -> list[Kernel]:
    kernels = [_load(d) for d in sorted(kernels_dir().iterdir())
               if d.is_dir() and (d / "kernel.json").is_file()]
    return [k for k in kernels if k is not None]


def _load(directory: Path) -> Kernel | None:
    try:
        meta = json.loads((directory / "kernel.json").read_text())
    except (OSError, ValueError):
        return None
    image = directory / "vmlinux"
    if not image.is_file():
        image = directory / "vmlinuz"
        if not image.is_file():
            return None
    modules = directory / "modules"
    return Kernel(image=image, release=meta.get("release"),
                  modules=modules if modules.is_dir() else None, series=meta.get("series"),
                  package=meta.get("package"), version=meta.get("version"), suite=meta.get("suite"))


def series_of(name: str) -> str | None:
    """"5.10" -> "5.10"; "bullseye" -> "5.10"; anything else -> None."""
    if name in SERIES:
        return name
    for series, suite in SERIES.items():
        if name == suite:
            return series
    return None


def ensure(name: str, *, progress: Callable[[str], None] | None = None) -> Kernel:
    """The cached kernel for ``name``, fetching it first when it is not cached yet."""
    kernel = cached(name)
    if kernel is not None:
        return kernel
    if series_of(name) is None:
        known = ", ".join(f"{s} ({c})" for s, c in SERIES.items())
        raise KernelUnavailable(f"kernel {name!r} is neither a file nor a known Debian kernel "
                                f"series; use a path to a vmlinuz/vmlinux or one of: {known}")
    return fetch([name], progress=progress)[0]


# -- fetching ----------------------------------------------------------------------------

def fetch(names: Iterable[str], *, progress: Callable[[str], None] | None = None,
          refresh: bool = False) -> list[Kernel]:
    """Download, unpack and cache the kernels of these series; returns them in order."""
    say = progress or (lambda message: None)
    wanted = []
    for name in names:
        series = series_of(name)
        if series is None:
            known = ", ".join(SERIES)
            raise KernelUnavailable(f"unknown kernel series {name!r}; known: {known}")
        wanted.append(series)
    result: dict[str, Kernel] = {}
    todo = []
    for series in wanted:
        kernel = None if refresh else cached(series)
        if kernel is not None:
            result[series] = kernel
        elif series not in todo:
            todo.append(series)
    if todo:
        for tool in ("apt-get", "apt-cache", "dpkg"):
            if shutil.which(tool) is None:
                raise KernelUnavailable(f"fetching kernels needs {tool} (a Debian/Ubuntu host); "
                                        "give `kernel:` as a path to a vmlinuz/vmlinux instead")
        root = kernels_dir()
        with _lock(root):
            env = _private_apt(root / "apt")
            say("updating the private package index")
            _run(["apt-get", "-q", "-o", "DPkg::Lock::Timeout=600", "update"], env,
                 f"updating the package index from {debian_mirror()} (offline?)")
            for series in todo:
                result[series] = _fetch_one(series, root, env, say)
    return [result[s] for s in wanted]


def _fetch_one(series: str, root: Path, env: dict[str, str], say) -> Kernel:
    suite = SERIES[series]
    show = _run(["apt-cache", "show", f"linux-image-amd64/{suite}"], env,
                f"looking up linux-image-amd64 in {suite}")
    package = _depends_package(show)
    if package is None:
        raise KernelUnavailable(f"cannot tell which kernel package linux-image-amd64/{suite} "
                                "depends on")
    info = _run(["apt-cache", "show", f"{package}/{suite}"], env, f"looking up {package}")
    version = _field(info, "Version")
    release = package.removeprefix("linux-image-")
    say(f"{series}: downloading {package} {version or ''}".rstrip())
    with tempfile.TemporaryDirectory(prefix="portability-kernel-", dir=root) as tmp:
        tmp_path = Path(tmp)
        _run(["apt-get", "-q", "download", f"{package}/{suite}"], env,
             f"downloading {package}", cwd=tmp_path)
        debs = list(tmp_path.glob("*.deb"))
        if not debs:
            raise KernelUnavailable(f"apt-get download {package} produced no .deb")
        say(f"{series}: unpacking {debs[0].name}")
        tree = tmp_path / "tree"
        _run(["dpkg", "-x", str(debs[0]), str(tree)], env, f"unpacking {debs[0].name}")
        out = tmp_path / "out"
        out.mkdir()
        vmlinuz = next((p for p in (tree / "boot").glob("vmlinuz-*")), None)
        if vmlinuz is None:
            raise KernelUnavailable(f"{package} has no /boot/vmlinuz-*")
        shutil.copy2(vmlinuz, out / "vmlinuz")
        say(f"{series}: extracting the ELF vmlinux")
        try:
            (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        except KernelUnavailable as exc:
            say(f"{series}: {exc}; will boot the bzImage (slower)")
        config = next((p for p in (tree / "boot").glob("config-*")), None)
        if config is not None:
            shutil.copy2(config, out / "config")
        # trixie ships modules under /usr/lib (merged /usr), older releases under /lib.
        trees = [tree / "lib" / "modules", tree / "usr" / "lib" / "modules"]
        mod_root = next((t / release for t in trees if (t / release).is_dir()), None)
        if mod_root is None:
            mod_root = next((c for t in trees if t.is_dir() for c in t.iterdir()), None)
        if mod_root is not None:
            from portability.qemu.initramfs import ALL_BOOT_MODULES, copy_modules

            copy_modules(mod_root, out / "modules", ALL_BOOT_MODULES)
        meta = {"series": series, "suite": suite, "package": package, "version": version,
                "release": release}
        (out / "kernel.json").write_text(json.dumps(meta, indent=2) + "\n")
        final = root / release
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    pointer = root / f"{series}.json"
    tmp_pointer = pointer.with_suffix(".json.tmp")
    tmp_pointer.write_text(json.dumps({"release": release}) + "\n")
    tmp_pointer.replace(pointer)
    kernel = _load(root / release)
    assert kernel is not None
    say(f"{series}: ready ({release})")
    return kernel


def _depends_package(show_output: str) -> str | None:
    depends = _field(show_output, "Depends")
    if not depends:
        return None
    for item in depends.split(","):
        name = item.strip().split()[0] if item.strip() else ""
        if name.startswith("linux-image-"):
            return name
    return None


def _field(text: str, name: str) -> str | None:
    """The first ``Name: value`` of an apt-cache record."""
    match = re.search(rf"^{re.escape(name)}:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def debian_mirror() -> str:
    """The host's Debian mirror (so local mirrors and proxies keep working), else the default."""
    configured = os.environ.get("PORTABILITY_DEBIAN_MIRROR")
    if configured:
        return configured.rstrip("/")
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        found = mirror_from_sources(text)
        if found:
            return found
    return _FALLBACK_MIRROR


def mirror_from_sources(text: str) -> str | None:
    """The first Debian main-archive URI in a sources.list or deb822 .sources text."""
    for line in text.splitlines():
        line = line.strip()
        uris: list[str] = []
        if line.startswith("deb "):
            uris = [w for w in re.sub(r"\[[^]]*\]", "", line).split()[1:2]]
        elif line.lower().startswith("uris:"):
            uris = line.split(":", 1)[1].split()
        for uri in uris:
            uri = uri.rstrip("/")
            if uri.endswith("/debian") and uri.startswith(("http://", "https://", "file:")):
                return uri
    return None


def _private_apt(base: Path) -> dict[str, str]:
    """An APT_CONFIG of our own: sources, lists and cache under ``base``."""
    for sub in ("lists/partial", "cache/archives/partial", "etc"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    signed = f"[signed-by={_KEYRING}] " if Path(_KEYRING).exists() else ""
    (base / "etc" / "sources.list").write_text("".join(
        f"deb {signed}{mirror} {suite} main\n" for suite in SERIES.values()))
    (base / "apt.conf").write_text(
        f'Dir::Etc::SourceList "{base}/etc/sources.list";\n'
        'Dir::Etc::SourceParts "/dev/null";\n'
        'Dir::Etc::Preferences "/dev/null";\n'
        'Dir::Etc::PreferencesParts "/dev/null";\n'
        f'Dir::State::Lists "{base}/lists";\n'
        f'Dir::Cache "{base}/cache";\n'
        'Acquire::Languages "none";\n'
        'APT::Architecture "amd64";\n'
        'APT::Architectures { "amd64"; };\n'
        # As a normal user apt cannot switch to its _apt sandbox user: stay who we are.
        + ("" if os.geteuid() == 0 else f'APT::Sandbox::User "{_user_name()}";\n')
    )
    (base / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ)
    env["APT_CONFIG"] = str(base / "apt.conf")
    env["TMPDIR"] = str(base / "tmp")  # apt-key's temp files; /tmp may not be writable
    env["LC_ALL"] = "C"
    return env


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _run(argv: list[str], env: dict[str, str], what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelUnavailable(f"{what} failed: {exc}") from None
    # apt reports unreachable mirrors as "Err:" (stdout) and "W: Failed to fetch" (stderr)
    # and may still exit 0.
    lines = proc.stderr.splitlines() + proc.stdout.splitlines()
    problems = [line.strip() for line in lines
                if line.startswith(("E:", "Err:", "W: Failed to fetch"))]
    if proc.returncode != 0 or problems:
        detail = (problems or proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[0]
        raise KernelUnavailable(f"{what} failed: {detail}")
    return proc.stdout


class _lock:
    """One fetch at a time per cache (several sessions may fetch the same kernel)."""

    def __init__(self, root: Path):
        self._path = root / ".lock"

    def __enter__(self):
        import fcntl

        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self._fd)
        return False


# -- kernel images -----------------------------------------------------------------------

_ELF_MAGIC = b"\x7fELF"


def is_elf(data: bytes) -> bool:
    return data[:4] == _ELF_MAGIC


def bzimage_payload(data: bytes) -> bytes:
    """The compressed kernel inside a bzImage (boot protocol >= 2.08 header fields)."""
    if len(data) < 0x250 or data[0x202:0x206] != b"HdrS":
        raise KernelUnavailable("not a bzImage (no HdrS boot header)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        raise KernelUnavailable(f"boot protocol {version:#x} predates payload fields")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start:start + length]
    if len(payload) != length:
        raise KernelUnavailable("bzImage payload runs past the end of the file")
    return payload


def extract_vmlinux(data: bytes) -> bytes:
    """bzImage -> the ELF vmlinux it carries (xz, zstd, gzip, lzma, lz4 payloads)."""
    payload = bzimage_payload(data)
    if payload.startswith(b"\xfd7zXZ\x00"):
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    elif payload.startswith(b"\x5d\x00\x00"):
        out = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        out = _tool_decompress(["zstd", "-dcq"], payload, "zstd")
    elif payload.startswith(b"\x02\x21\x4c\x18"):
        out = _tool_decompress(["lz4", "-dcq"], payload, "lz4")
    else:
        raise KernelUnavailable(f"unknown bzImage compression (magic {payload[:4].hex()})")
    if not is_elf(out):
        raise KernelUnavailable("the decompressed bzImage payload is not an ELF file")
    return out


def _tool_decompress(argv: list[str], payload: bytes, package: str) -> bytes:
    if shutil.which(argv[0]) is None:
        raise KernelUnavailable(f"decompressing this kernel needs {argv[0]} (apt-get install {package})")
    # The kernel build appends the uncompressed size (4 bytes) after the frame; the tools
    # reject that trailer, so try without it first.
    for data in (payload[:-4], payload):
        proc = subprocess.run(argv, input=data, capture_output=True)
        if proc.stdout and is_elf(proc.stdout):
            return proc.stdout
    raise KernelUnavailable(f"{argv[0]} could not decompress the kernel payload")


def image_release(data: bytes) -> str | None:
    """``uname -r`` of a bzImage (header's version string) or an ELF vmlinux ("Linux version X")."""
    if len(data) > 0x210 and data[0x202:0x206] == b"HdrS":
        pointer = struct.unpack_from("<H", data, 0x20E)[0]
        if pointer:
            start = pointer + 0x200
            text = data[start:start + 256].split(b"\x00", 1)[0].decode(errors="replace")
            if text.split():
                return text.split()[0]
    match = re.search(rb"Linux version (\S+) \(", data)
    return match.group(1).decode(errors="replace") if match else None


def kernel_from_path(path: Path) -> Kernel:
    """A user-supplied kernel file, with modules found next to it or under /lib/modules."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KernelUnavailable(f"cannot read kernel {path}: {exc.strerror}") from None
    release = image_release(data)
    image = path
    if not is_elf(data) and data[0x202:0x206] == b"HdrS":
        image = _cached_vmlinux(path, data) or path
    modules = None
    if release:
        for candidate in (path.parent.parent / "lib" / "modules" / release,
                          path.parent.parent / "usr" / "lib" / "modules" / release,
                          path.parent / "modules", Path("/lib/modules") / release):
            if candidate.is_dir():
                modules = candidate
                break
    return Kernel(image=image, release=release, modules=modules)


def _cached_vmlinux(path: Path, data: bytes) -> Path | None:
    """Extract (once, cached by content) the ELF vmlinux of a user's bzImage."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest()[:16]
    target = cache_dir("kernels", "extracted") / f"vmlinux-{digest}"
    if target.exists():
        return target
    try:
        elf = extract_vmlinux(data)
    except KernelUnavailable:
        return None  # QEMU can still boot the bzImage itself, only slower
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        tmp.write_bytes(elf)
        tmp.replace(target)
    except OSError:  # a full or read-only cache: boot the bzImage instead
        tmp.unlink(missing_ok=True)
        return None
    return target


# -- the `portability kernels` command ---------------------------------------------------

def register(subparsers) -> None:
    kernels = subparsers.add_parser("kernels", help="Debian kernels for qemu targets")
    sub = kernels.add_subparsers(metavar="ACTION")
    fetch_p = sub.add_parser("fetch", help="download and cache kernels (default: "
                             + " ".join(DEFAULT_SERIES) + ")")
    fetch_p.add_argument("series", nargs="*", help="kernel series: " + ", ".join(SERIES))
    fetch_p.add_argument("--refresh", action="store_true",
                         help="fetch again even when cached (picks up point releases)")
    fetch_p.set_defaults(func=_cmd_fetch)
    list_p = sub.add_parser("list", help="list cached kernels")
    list_p.add_argument("--json", action="store_true", help="print JSON")
    list_p.set_defaults(func=_cmd_list)
    kernels.set_defaults(func=_cmd_list)


def _cmd_fetch(args: argparse.Namespace) -> int:
    names = args.series or list(DEFAULT_SERIES)
    kernels = fetch(names, progress=lambda m: print(m, flush=True), refresh=args.refresh)
    for kernel in kernels:
        print(f"{kernel.series}\t{kernel.release}\t{kernel.image}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    kernels = list_cached()
    if getattr(args, "json", False):
        print(json.dumps([{k: str(v) if isinstance(v, Path) else v for k, v in asdict(x).items()}
                          for x in kernels], indent=2))
        return 0
    if not kernels:
        print(f"no kernels cached in {kernels_dir()}; run: portability kernels fetch")
        return 0
    print(f"{'series':8} {'release':28} {'package version':24} image")
    for k in kernels:
        print(f"{k.series or '-':8} {k.release or '-':28} {k.version or '-':24} {k.image}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python3 -m portability.kernels fetch|list`` (the same as ``portability kernels``)."""
    import sys

    parser = argparse.ArgumentParser(prog="python3 -m portability.kernels")
    register(parser.add_subparsers(metavar="COMMAND"))
    args = parser.parse_args(["kernels", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except PortabilityError as exc:
        print(f"portability: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
