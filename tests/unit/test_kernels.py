"""Pure parts of kind: qemu — kernel images, module ordering, the initramfs, the spec, messages."""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from portability import kernels
from portability.errors import TargetUnavailable
from portability.qemu import initramfs
from portability.targets.qemu import (QemuSpec, QemuTarget, _probe_bios, console_summary,
                                      parse_memory)

FAKE_ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 57 + b"Linux version 6.1.0-50-amd64 (debian-kernel@lists) #1" * 20


def bzimage(payload: bytes, *, version: str = "6.1.0-50-amd64 (x) #1", setup_sects: int = 1) -> bytes:
    """A minimal bzImage: boot header fields the extractor reads, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    version_at = 0x300
    struct.pack_into("<H", setup, 0x20E, version_at - 0x200)
    setup[version_at:version_at + len(version) + 1] = version.encode() + b"\x00"
    payload_offset = 16
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    return bytes(setup) + b"\x00" * payload_offset + payload + b"trailing"


def elf_with_sections(sections: dict[str, bytes]) -> bytes:
    """A little-endian ELF64 relocatable with the given sections (what a .ko is)."""
    names = [""] + list(sections) + [".shstrtab"]
    shstrtab = b"\x00"
    name_off = {"": 0}
    for name in names[1:]:
        name_off[name] = len(shstrtab)
        shstrtab += name.encode() + b"\x00"
    body = bytearray(64)
    offsets = {}
    for name, data in list(sections.items()) + [(".shstrtab", shstrtab)]:
        offsets[name] = len(body)
        body += data
    shoff = len(body)
    for name in names:
        data = sections.get(name, shstrtab if name == ".shstrtab" else b"")
        body += struct.pack("<IIQQQQIIQQ", name_off[name], 1 if name else 0, 0, 0,
                            offsets.get(name, 0), len(data), 0, 0, 1, 0)
    body[0:4] = b"\x7fELF"
    body[4], body[5], body[6] = 2, 1, 1
    struct.pack_into("<Q", body, 0x28, shoff)
    struct.pack_into("<H", body, 0x3A, 64)
    struct.pack_into("<H", body, 0x3C, len(names))
    struct.pack_into("<H", body, 0x3E, len(names) - 1)
    return bytes(body)


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes, tuple[int, int]]]:
    """name -> (mode, data, rdev) of a newc archive (what the kernel unpacks)."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701" and pos % 4 == 0
        fields = [int(data[pos + 6 + i * 8:pos + 14 + i * 8], 16) for i in range(13)]
        namesize, filesize, mode = fields[11], fields[6], fields[1]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        content = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (mode, content, (fields[9], fields[10]))


# -- kernels.py --------------------------------------------------------------------------

def test_series_and_codenames():
    assert kernels.series_of("5.10") == "5.10"
    assert kernels.series_of("trixie") == "6.12"
    assert kernels.series_of("4.19") is None
    assert kernels.series_of("/boot/vmlinuz") is None


def test_package_name_from_apt_cache_show():
    show = ("Package: linux-image-amd64\nVersion: 6.1.176-1\n"
            "Depends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)\nDescription: x\n")
    assert kernels._depends_package(show) == "linux-image-6.1.0-50-amd64"
    assert kernels._field(show, "Version") == "6.1.176-1"
    assert kernels._depends_package("Package: x\n") is None


@pytest.mark.parametrize("text, mirror", [
    ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n", "http://mirror.example/debian"),
    ("deb [signed-by=/k.gpg] http://m.example/debian/ bookworm main\n", "http://m.example/debian"),
    ("deb http://security.example/debian-security bookworm-security main\n", None),
    ("# deb http://old.example/debian bookworm main\n", None),
])
def test_mirror_from_sources(text, mirror):
    assert kernels.mirror_from_sources(text) == mirror


def test_extract_vmlinux_from_xz_bzimage_with_x86_filter():
    filters = [{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2}]
    payload = lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                            filters=filters)
    image = bzimage(payload + struct.pack("<I", len(FAKE_ELF)))  # the build appends the size
    assert kernels.extract_vmlinux(image) == FAKE_ELF
    assert kernels.image_release(image) == "6.1.0-50-amd64"


def test_extract_vmlinux_from_gzip_bzimage():
    image = bzimage(gzip.compress(FAKE_ELF), setup_sects=3)
    assert kernels.extract_vmlinux(image) == FAKE_ELF


def test_not_a_kernel_is_refused_with_a_reason():
    with pytest.raises(kernels.KernelUnavailable, match="HdrS"):
        kernels.extract_vmlinux(b"\x00" * 4096)
    with pytest.raises(kernels.KernelUnavailable, match="compression"):
        kernels.extract_vmlinux(bzimage(b"\x11\x22\x33\x44" * 10))
    with pytest.raises(kernels.KernelUnavailable, match="not an ELF"):
        kernels.extract_vmlinux(bzimage(gzip.compress(b"no elf here")))


def test_release_of_an_elf_vmlinux():
    assert kernels.image_release(FAKE_ELF) == "6.1.0-50-amd64"
    assert kernels.image_release(b"random bytes") is None


def test_unknown_series_fetch_is_refused_before_any_download():
    with pytest.raises(kernels.KernelUnavailable, match="unknown kernel series '4.19'"):
        kernels.fetch(["4.19"])


def test_cache_lookup_by_series_and_release(tmp_path, monkeypatch):
    monkeypatch.setenv("PORTABILITY_CACHE", str(tmp_path))
    release = tmp_path / "kernels" / "6.1.0-50-amd64"
    (release / "modules").mkdir(parents=True)
    (release / "vmlinux").write_bytes(FAKE_ELF)
    (release / "kernel.json").write_text('{"series": "6.1", "release": "6.1.0-50-amd64"}')
    (tmp_path / "kernels" / "6.1.json").write_text('{"release": "6.1.0-50-amd64"}')
    for name in ("6.1", "bookworm", "6.1.0-50-amd64"):
        kernel = kernels.cached(name)
        assert kernel is not None and kernel.image == release / "vmlinux", name
        assert kernel.modules == release / "modules"
    assert kernels.cached("6.12") is None
    assert [k.release for k in kernels.list_cached()] == ["6.1.0-50-amd64"]


# -- initramfs ---------------------------------------------------------------------------

def test_module_names_are_normalised():
    assert initramfs.module_name("9pnet_virtio.ko.xz") == "9pnet_virtio"
    assert initramfs.module_name("crc32c-intel.ko") == "crc32c_intel"
    assert initramfs.module_name("modules.order") is None


def test_load_order_puts_dependencies_first_and_skips_builtins():
    depends = {"9p": ["9pnet", "netfs"], "9pnet_virtio": ["9pnet", "virtio_ring"],
               "9pnet": [], "netfs": [], "overlay": [], "virtio_ring": []}
    order, missing = initramfs.load_order(
        ["virtio_pci", "9pnet_virtio", "9p", "overlay", "nosuch"], depends,
        available=depends.keys(), builtin={"virtio_pci", "virtio_ring"})
    assert order == ["9pnet", "9pnet_virtio", "netfs", "9p", "overlay"]
    assert missing == ["nosuch"]


def test_load_order_survives_a_dependency_cycle():
    order, missing = initramfs.load_order(["a"], {"a": ["b"], "b": ["a"]}, available={"a", "b"})
    assert sorted(order) == ["a", "b"] and not missing


def test_depends_read_from_modinfo_section():
    ko = elf_with_sections({".text": b"\x90" * 16,
                            ".modinfo": b"license=GPL\x00depends=9pnet,netfs\x00name=9p\x00"})
    assert initramfs.elf_section(ko, ".text") == b"\x90" * 16
    assert initramfs.module_depends(ko) == ["9pnet", "netfs"]
    assert initramfs.module_depends(elf_with_sections({".modinfo": b"depends=\x00"})) == []
    assert initramfs.elf_section(b"not an elf" * 10, ".modinfo") is None


def test_resolve_modules_from_a_tree(tmp_path):
    (tmp_path / "kernel" / "fs").mkdir(parents=True)
    (tmp_path / "kernel" / "fs" / "overlay.ko.xz").write_bytes(
        lzma.compress(elf_with_sections({".modinfo": b"depends=\x00"})))
    (tmp_path / "kernel" / "fs" / "9p.ko").write_bytes(
        elf_with_sections({".modinfo": b"depends=9pnet\x00"}))
    (tmp_path / "kernel" / "fs" / "9pnet.ko").write_bytes(
        elf_with_sections({".modinfo": b"depends=\x00"}))
    (tmp_path / "modules.builtin").write_text("kernel/drivers/virtio/virtio_pci.ko\n")
    found = initramfs.resolve_modules(tmp_path, ["virtio_pci", "9p", "overlay", "ext4"])
    assert found.order == ["9pnet", "9p", "overlay"]
    assert found.missing == ["ext4"]
    assert found.files["overlay"].startswith(b"\x7fELF")  # decompressed for busybox insmod


def test_cpio_archive_is_what_the_kernel_unpacks():
    archive = initramfs.Cpio()
    archive.directory("bin")
    archive.file("init", b"#!/bin/sh\n", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.char_device("dev/console", 5, 1)
    data = archive.finish()
    assert len(data) % 512 == 0
    entries = read_cpio(data)
    assert entries["init"][:2] == (0o100755, b"#!/bin/sh\n")
    assert entries["bin/sh"][0] & 0o170000 == 0o120000 and entries["bin/sh"][1] == b"busybox"
    assert entries["bin"][0] == 0o040755
    assert entries["dev/console"][0] & 0o170000 == 0o020000 and entries["dev/console"][2] == (5, 1)


def test_mode_modules_reach_the_root_and_the_port():
    for mode, wanted in initramfs.MODE_MODULES.items():
        assert {"virtio_pci", "virtio_console"} <= set(wanted), mode
    assert {"9p", "9pnet_virtio", "overlay"} <= set(initramfs.MODE_MODULES["host"])
    assert {"virtio_blk", "ext4", "crc32c_generic"} <= set(initramfs.MODE_MODULES["image"])


def test_init_script_finds_the_port_and_execs_the_agent():
    text = initramfs.INIT_SCRIPT.read_text()
    assert "/sys/class/virtio-ports/" in text
    assert 'exec switch_root /newroot /run/portability/agent serve "$DEV"' in text
    assert "readonly" not in text or "ro," in text
    assert "mount -t 9p -o ro," in text


# -- the qemu spec and target (no VM) ----------------------------------------------------

@pytest.mark.parametrize("value, mib", [("1G", 1024), ("512M", 512), (768, 768), ("768", 768),
                                        ("2GiB", 2048), ("1.5G", 1536)])
def test_parse_memory(value, mib):
    assert parse_memory(value) == mib


@pytest.mark.parametrize("value", ["lots", "12X", "32M", True, "-1G"])
def test_parse_memory_rejects(value):
    with pytest.raises(ValueError, match="memory"):
        parse_memory(value)


def test_spec_validation_names_the_key():
    assert "kernel:" in QemuSpec(name="q").validate()
    assert QemuSpec(name="q", kernel="6.1").validate() is None
    assert "memory" in QemuSpec(name="q", kernel="6.1", memory="lots").validate()
    assert "cpus" in QemuSpec(name="q", kernel="6.1", cpus=0).validate()
    assert "boot_timeout" in QemuSpec(name="q", kernel="6.1", boot_timeout=0).validate()
    assert "disk image" in QemuSpec(name="q", kernel="6.1", snapshot=True).validate()
    assert "image name" in QemuSpec(name="q", kernel="6.1", rootfs="container:").validate()
    assert QemuSpec(name="q", kernel="6.1", rootfs="container:debian:12").validate() is None
    assert QemuSpec(name="q", kernel="6.1", snapshot=True, rootfs="root.ext4").validate() is None


def test_missing_qemu_is_unavailable_with_install_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTABILITY_QEMU", str(tmp_path / "no-qemu"))
    target = QemuTarget(QemuSpec(name="q", kernel="6.1"), session="t", base_dir=tmp_path)
    with pytest.raises(TargetUnavailable, match="apt-get install qemu-system-x86"):
        target.start()
    target.stop()


def test_qemu_command_line_has_no_network_and_a_read_only_root(tmp_path):
    target = QemuTarget(QemuSpec(name="kernel 6.1!", kernel="6.1", memory="512M", cpus=2,
                                 cmdline="loglevel=7 foo=bar"),
                        session="t", base_dir=tmp_path)
    target._dir = tmp_path
    target.accel = "tcg"
    argv = target.qemu_argv("qemu", Path("/k/vmlinux"), Path("/i.cpio"), "host", None)
    joined = " ".join(argv)
    assert "-nodefaults" in argv and "-no-reboot" in argv
    assert not any(a in argv for a in ("-netdev", "-nic", "-net"))
    assert "readonly=on" in joined and "mount_tag=hostroot" in joined
    assert argv[argv.index("-m") + 1] == "512" and argv[argv.index("-smp") + 1] == "2"
    append = argv[argv.index("-append") + 1].split()
    assert "portability.root=host" in append and "loglevel=7" in append and "foo=bar" in append
    assert "portability.hostname=kernel-6-1" in append
    image = target.qemu_argv("qemu", Path("/k"), Path("/i"), "image", Path("/img,x.ext4"))
    assert "file=/img,,x.ext4,format=raw,if=virtio,readonly=on" in image


def test_snapshot_machines_get_a_qmp_socket(tmp_path):
    target = QemuTarget(QemuSpec(name="s", kernel="6.1", rootfs="r.img", snapshot=True),
                        session="t", base_dir=tmp_path)
    target._dir = tmp_path
    target.accel = "tcg"
    argv = target.qemu_argv("qemu", Path("/k"), Path("/i"), "image", Path("/r.img"))
    assert f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off" in argv


def test_probe_bios_reset_vector_writes_to_the_serial_port():
    bios = _probe_bios()
    assert len(bios) == 65536
    # mov dx, 0x3f8; mov al, 'K'; out dx, al at the reset vector (top 16 bytes)
    assert bios[0xFFF0:0xFFF6] == bytes([0xBA, 0xF8, 0x03, 0xB0, 0x4B, 0xEE])


def test_console_summary_keeps_the_reason_and_drops_stack_frames():
    console = [
        "[    1.30] Run /no-such-init as init process",
        "[    1.31] Kernel panic - not syncing: No working init found.",
        "[    1.32] Call Trace:",
        "[    1.33]  kernel_init+0x1a/0x130",
        "[    1.34]  </TASK>",
        "[    1.35] Kernel Offset: disabled",
    ]
    summary = console_summary(console)
    assert summary[0] == "Kernel panic - not syncing: No working init found."
    assert "Kernel Offset: disabled" in summary
    assert not any("+0x" in line or "TASK" in line for line in summary)
    assert console_summary([]) == []


def test_kernels_command_registers_fetch_and_list(tmp_path, monkeypatch, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    kernels.register(parser.add_subparsers())
    args = parser.parse_args(["kernels", "fetch", "5.10", "6.12", "--refresh"])
    assert args.series == ["5.10", "6.12"] and args.refresh and args.func is kernels._cmd_fetch
    monkeypatch.setenv("PORTABILITY_CACHE", str(tmp_path))
    args = parser.parse_args(["kernels", "list"])
    assert args.func(args) == 0
    assert "portability kernels fetch" in capsys.readouterr().out  # empty cache: says what to do
    release = tmp_path / "kernels" / "6.12.1-amd64"
    release.mkdir(parents=True)
    (release / "vmlinux").write_bytes(FAKE_ELF)
    (release / "kernel.json").write_text('{"series": "6.12", "release": "6.12.1-amd64", '
                                         '"version": "6.12.1-1"}')
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "6.12.1-amd64" in out and "6.12.1-1" in out
