"""The initramfs of a qemu target: busybox, the kernel modules to reach the root, /init, the agent.

The host has no kmod (no depmod/modinfo), and the initramfs has only busybox ``insmod``, so
module dependencies are read here from each module's ELF ``.modinfo`` section and the
initramfs carries a dependency-ordered list (``/modules/order``) for /init to load.

Built once per (kernel, rootfs mode, inputs) and cached: a build is ~0.1 s, but a cached
file is free, and QEMU only reads it.
"""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import struct
import subprocess
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from portability.paths import cache_dir

INIT_SCRIPT = Path(__file__).with_name("init.sh")

#: Modules (and, through their dependencies, everything else) each root mode needs.
#: crc32c_generic is listed because ext4/jbd2 ask the crypto API for crc32c, which cannot
#: load a module by itself without modprobe.
MODE_MODULES: dict[str, tuple[str, ...]] = {
    "host": ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay"),
    "image": ("virtio_pci", "virtio_console", "virtio_blk", "crc32c_generic", "ext4", "overlay"),
    "none": ("virtio_pci", "virtio_console"),
}
ALL_BOOT_MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for ms in MODE_MODULES.values() for m in ms))

_KO_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class InitramfsError(Exception):
    """The initramfs cannot be built (no static busybox, unreadable module)."""


# -- modules -----------------------------------------------------------------------------

def module_name(filename: str) -> str | None:
    """"9pnet_virtio.ko.xz" -> "9pnet_virtio"; "crc32c-intel.ko" -> "crc32c_intel"."""
    for suffix in _KO_SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    return None


def index_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every module file under ``root``."""
    index: dict[str, Path] = {}
    for dirpath, _dirs, files in os.walk(root):
        for filename in files:
            name = module_name(filename)
            if name and name not in index:
                index[name] = Path(dirpath) / filename
    return index


def builtin_modules(root: Path) -> set[str]:
    """Names in ``modules.builtin`` (paths like kernel/fs/9p/9p.ko)."""
    try:
        text = (root / "modules.builtin").read_text()
    except OSError:
        return set()
    names = set()
    for line in text.split():
        name = module_name(line.rsplit("/", 1)[-1])
        if name:
            names.add(name)
    return names


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    if path.name.endswith(".zst"):
        proc = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True)
        if proc.returncode != 0:
            raise InitramfsError(f"cannot decompress {path} (zstd missing?)")
        return proc.stdout
    return data


def elf_section(data: bytes, wanted: str) -> bytes | None:
    """The contents of one section of a little-endian ELF64 file (a .ko), or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not shoff or shstrndx >= shnum:
        return None

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = data[str_off:str_off + str_size]
    for i in range(shnum):
        name_off, offset, size = header(i)
        end = names.find(b"\x00", name_off)
        if names[name_off:end].decode(errors="replace") == wanted:
            return data[offset:offset + size]
    return None


def module_depends(data: bytes) -> list[str]:
    """The ``depends=`` list of a module's .modinfo section."""
    info = elf_section(data, ".modinfo") or b""
    for entry in info.split(b"\x00"):
        if entry.startswith(b"depends="):
            value = entry[len(b"depends="):].decode(errors="replace")
            return [d.replace("-", "_") for d in value.split(",") if d]
    return []


def load_order(roots: Iterable[str], depends: Mapping[str, list[str]],
               available: Iterable[str], builtin: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Dependency-ordered modules to insmod for ``roots`` and the roots that exist nowhere.

    Pure: ``depends`` maps module -> its dependencies, ``available`` are loadable modules,
    ``builtin`` are compiled into the kernel (nothing to load).
    """
    available = set(available)
    builtin = set(builtin)
    order: list[str] = []
    missing: list[str] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen or name in builtin or name in stack:
            return
        if name not in available:
            if name not in missing:
                missing.append(name)
            return
        for dep in depends.get(name, []):
            visit(dep, stack + (name,))
        seen.add(name)
        order.append(name)

    for root in roots:
        visit(root, ())
    return order, missing


@dataclass(frozen=True)
class ModuleSet:
    order: list[str]
    files: dict[str, bytes]  # name -> decompressed .ko
    missing: list[str]


def resolve_modules(root: Path | None, wanted: Iterable[str]) -> ModuleSet:
    if root is None or not root.is_dir():
        return ModuleSet([], {}, list(wanted))
    index = index_modules(root)
    builtin = builtin_modules(root)
    contents: dict[str, bytes] = {}
    depends: dict[str, list[str]] = {}
    pending = [w for w in wanted]
    while pending:
        name = pending.pop()
        if name in contents or name in builtin or name not in index:
            continue
        contents[name] = read_module(index[name])
        depends[name] = module_depends(contents[name])
        pending.extend(depends[name])
    order, missing = load_order(wanted, depends, contents.keys(), builtin)
    return ModuleSet(order, {n: contents[n] for n in order}, missing)


def copy_modules(src_root: Path, dest: Path, wanted: Iterable[str]) -> ModuleSet:
    """Keep only what boot needs of a kernel's module tree: decompressed .ko files, flat."""
    modules = resolve_modules(src_root, wanted)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in modules.files.items():
        (dest / f"{name}.ko").write_bytes(data)
    for extra in ("modules.builtin", "modules.order"):
        if (src_root / extra).is_file():
            shutil.copy2(src_root / extra, dest / extra)
    return modules


# -- cpio --------------------------------------------------------------------------------

class Cpio:
    """A ``newc`` cpio archive built in memory (the kernel's initramfs format)."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\x00"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self._buf.write(encoded)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\x00" * (-self._buf.tell() % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, 0o040000 | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120000 | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf.write(b"\x00" * (-self._buf.tell() % 512))
        return self._buf.getvalue()


# -- busybox -----------------------------------------------------------------------------

_BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/initramfs-tools/bin/busybox")


def static_busybox() -> Path:
    """A statically linked busybox from this host (Debian: busybox-static)."""
    found = os.environ.get("PORTABILITY_BUSYBOX")
    for candidate in ([found] if found else []) + list(_BUSYBOX_CANDIDATES):
        path = Path(candidate)
        if path.is_file() and _is_static(path):
            return path
    raise InitramfsError("no static busybox on this host; install busybox-static "
                         "(apt-get install busybox-static) or set PORTABILITY_BUSYBOX")


def _is_static(path: Path) -> bool:
    """An ELF without a PT_INTERP program header runs without a dynamic loader."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            phoff = struct.unpack_from("<Q", head, 0x20)[0]
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def busybox_applets(busybox: Path) -> list[str]:
    proc = subprocess.run([str(busybox), "--list"], capture_output=True, text=True)
    applets = proc.stdout.split() if proc.returncode == 0 else []
    # /init relies on these; older busyboxes without --list still have them.
    return sorted(set(applets) | {"sh", "mount", "insmod", "cat", "mkdir", "cp", "usleep",
                                  "switch_root", "poweroff", "hostname", "chmod", "sleep",
                                  "sync", "tar"})


# -- the initramfs -----------------------------------------------------------------------

def build(*, mode: str, modules_root: Path | None, agent: Path, busybox: Path | None = None,
          label: str = "custom") -> Path:
    """The cached initramfs for a root mode ("host", "image", "none"); built when missing."""
    if mode not in MODE_MODULES:
        raise ValueError(f"unknown root mode {mode!r}")
    busybox = busybox or static_busybox()
    modules = resolve_modules(modules_root, MODE_MODULES[mode])
    init = INIT_SCRIPT.read_bytes()
    agent_bytes = agent.read_bytes()
    digest = hashlib.sha256()
    for part in (mode.encode(), init, agent_bytes, _file_id(busybox)):
        digest.update(hashlib.sha256(part).digest())
    for name in modules.order:
        digest.update(name.encode() + hashlib.sha256(modules.files[name]).digest())
    safe_label = "".join(c if c.isalnum() or c in ".-_+" else "_" for c in label)
    target = cache_dir("qemu", "initramfs") / f"{safe_label}-{mode}-{digest.hexdigest()[:16]}.cpio"
    if target.exists():
        return target
    # Left uncompressed (~4 MB): QEMU loads it from the host's page cache, and the guest
    # then unpacks it without spending emulated CPU on decompression.
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "run", "tmp", "lower", "rw", "newroot", "modules", "root"):
        archive.directory(d)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.file("init", init, 0o755)
    archive.file("agent", agent_bytes, 0o755)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in busybox_applets(busybox):
        if applet != "busybox" and "/" not in applet:
            archive.symlink(f"bin/{applet}", "busybox")
    archive.file("modules/order", "".join(f"{m}\n" for m in modules.order).encode())
    for name in modules.order:
        archive.file(f"modules/{name}.ko", modules.files[name])
    data = archive.finish()
    # Unique per process and thread: targets of one session build in parallel.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def _file_id(path: Path) -> bytes:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()
