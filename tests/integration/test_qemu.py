"""kind: qemu against real QEMU (TCG): boots Debian kernels with the host's root filesystem.

VMs boot one at a time (2 shared cores): one 6.12 VM serves the whole exec contract; the
other tests each boot what they are about. Kernels come from the cache that
`portability kernels fetch` (run by .ci/setup.d/50-qemu.sh) fills.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require
from exec_contract import check_exec_contract
from portability import facts, kernels
from portability.errors import TargetLost, TargetUnavailable
from portability.targets.local import LocalSpec, LocalTarget
from portability.targets.qemu import QemuSpec, QemuTarget, probe_accel, qemu_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: Unique per test process, so leftover checks never see another run's VMs.
SESSION = f"test-qemu-{os.getpid()}"

#: fchmodat2 (syscall 452, Linux 6.6): ENOENT for a missing path where it exists, ENOSYS before.
FCHMODAT2 = (
    "import ctypes, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "r = libc.syscall(452, -100, b'/nonexistent-portability', 0o644, 0)\n"
    "sys.exit(38 if r == -1 and ctypes.get_errno() == 38 else 0)\n"
)


def need_kernel(series: str) -> None:
    require(qemu_binary() is not None, "qemu-system-x86_64 is not installed")
    require(kernels.cached(series) is not None,
            f"kernel {series} is not cached (run `portability kernels fetch {series}`)")


def vm(name: str = "vm", **options) -> QemuTarget:
    options.setdefault("accel", "tcg")
    return QemuTarget(QemuSpec(name=name, **options), session=SESSION, base_dir=REPO)


def leftovers(target_dir: Path | None, pid: int | None) -> list[str]:
    found = []
    if target_dir is not None and target_dir.exists():
        found.append(f"temp dir {target_dir}")
    if pid is not None and Path(f"/proc/{pid}").exists():
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state != "Z":
            found.append(f"qemu pid {pid}")
    return found


@pytest.fixture(scope="module")
def vm612():
    need_kernel("6.12")
    # accel: auto — KVM only when it really runs guest code here, else TCG; never a hang.
    target = vm("kernel-6.12", kernel="6.12", accel="auto",
                env={"PORTABILITY_SPEC_ENV": "from-spec"})
    target.start()
    assert target.accel in ("kvm", "tcg")
    yield target
    run_dir, pid = target.run_dir, target.pid
    target.stop()
    assert not leftovers(run_dir, pid)


def test_exec_contract(vm612, tmp_path):
    check_exec_contract(vm612, tmp_path)


def test_facts_show_the_guest_kernel_and_the_host_userland(vm612):
    guest = facts.probe(vm612)
    local = LocalTarget(LocalSpec(name="local"), session=SESSION, base_dir=REPO)
    local.start()
    try:
        host = facts.probe(local)
    finally:
        local.stop()
    assert guest.kernel_release == kernels.cached("6.12").release
    assert guest.kernel_release != host.kernel_release
    assert guest.shares_host_kernel is False and guest.virtualization == "vm"
    assert guest.boot_id and guest.boot_id != host.boot_id
    userland = ("os_id", "os_version_id", "libc", "libc_version", "python", "arch")
    assert {k: getattr(guest, k) for k in userland} == {k: getattr(host, k) for k in userland}


def test_kernel_dependent_syscall_exists_on_6_12(vm612):
    result = vm612.exec(["python3", "-c", FCHMODAT2])
    assert result.rc == 0, result.stderr


def test_spec_env_ping_and_isolation(vm612, tmp_path):
    assert vm612.exec("echo $PORTABILITY_SPEC_ENV").stdout == "from-spec\n"
    assert vm612.exec("echo $PORTABILITY_SPEC_ENV", env={"PORTABILITY_SPEC_ENV": "x"}).stdout == "x\n"
    assert vm612.ping().split()[-1] == kernels.cached("6.12").release
    # Writes land in the guest's tmpfs overlay, never on the host's files.
    marker = tmp_path / "host-file.txt"
    marker.write_text("host\n")
    written = vm612.exec(f"echo guest > {marker} && cat {marker}")
    assert written.stdout == "guest\n"
    assert marker.read_text() == "host\n"
    # No network device at all: only loopback.
    devices = vm612.exec("cat /proc/net/dev").stdout.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]


def test_put_single_file_and_get_missing(vm612, tmp_path):
    src = tmp_path / "one.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    vm612.put(src, "/opt/deep/new/dir/one.bin")
    assert vm612.exec(["sha256sum", "/opt/deep/new/dir/one.bin"]).stdout.split()[0] == \
        hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(FileNotFoundError):
        vm612.get("/no/such/file", tmp_path / "x")


def test_copy_entries_land_in_the_workdir(tmp_path):
    need_kernel("6.12")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "run.sh").write_text("echo app-ran\n")
    target = QemuTarget(QemuSpec(name="copy", kernel="6.12", accel="tcg", copy=("app",),
                                 workdir="/srv/app-test"),
                        session=SESSION, base_dir=tmp_path)
    try:
        target.start()
        target.install_copies()
        assert target.exec("sh app/run.sh").stdout == "app-ran\n"
        assert target.exec(["pwd"]).stdout == "/srv/app-test\n"
    finally:
        target.stop()


def test_boot_5_10_facts_and_missing_syscall():
    need_kernel("5.10")
    target = vm("kernel-5.10", kernel="5.10")
    try:
        target.start()
        found = facts.probe(target)
        assert found.kernel_version[:2] == (5, 10)
        assert found.shares_host_kernel is False
        result = target.exec(["python3", "-c", FCHMODAT2])
        assert result.rc == 38  # ENOSYS: fchmodat2 arrived in 6.6
    finally:
        run_dir, pid = target.run_dir, target.pid
        target.stop()
    assert not leftovers(run_dir, pid)


def test_garbage_kernel_is_unavailable_with_qemu_message(tmp_path):
    require(qemu_binary() is not None, "qemu-system-x86_64 is not installed")
    garbage = tmp_path / "vmlinuz-garbage"
    garbage.write_bytes(os.urandom(4096))
    target = vm("garbage", kernel=str(garbage), boot_timeout=60)
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    message = str(info.value)
    assert "\n" not in message and "garbage" in message
    assert "qemu:" in message  # QEMU's own complaint about the kernel file
    assert target.run_dir is None and target.pid is None
    target.stop()


def test_kernel_panic_is_unavailable_with_console_tail():
    need_kernel("6.12")
    session = f"{SESSION}-panic"
    target = QemuTarget(QemuSpec(name="panics", kernel="6.12", accel="tcg",
                                 cmdline="rdinit=/no-such-init loglevel=4"),
                        session=session, base_dir=REPO)
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    message = str(info.value)
    assert "console:" in message and "Kernel panic" in message, message
    assert "\n" not in message
    assert target.run_dir is None and not list(Path("/tmp").glob(f"portability-{session}-q-*"))


def test_unreadable_root_image_is_unavailable_with_init_message(tmp_path):
    need_kernel("6.1")
    image = tmp_path / "root.img"
    image.write_bytes(b"\0" * (4 << 20))
    target = vm("badroot", kernel="6.1", rootfs=str(image))
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    assert "portability-init: mounting the root image" in str(info.value)


def test_unknown_kernel_series_and_missing_file_are_unavailable(tmp_path):
    require(qemu_binary() is not None, "qemu-system-x86_64 is not installed")
    for kernel, fragment in (("4.19", "known Debian kernel series"),
                             ("kernels/vmlinuz-none", "does not exist")):
        target = QemuTarget(QemuSpec(name="k", kernel=kernel), session="t", base_dir=tmp_path)
        with pytest.raises(TargetUnavailable) as info:
            target.start()
        target.stop()
        assert fragment in str(info.value)


def test_tcg_probe_runs_guest_code():
    require(qemu_binary() is not None, "qemu-system-x86_64 is not installed")
    # The same tiny firmware decides `accel: auto`; under TCG it must always answer.
    assert probe_accel(qemu_binary(), "tcg", timeout=30) is True


def test_killed_qemu_is_lost_not_hung():
    need_kernel("6.12")
    target = vm("killed", kernel="6.12")
    try:
        target.start()
        os.kill(target.pid, signal.SIGKILL)
        with pytest.raises(TargetLost):
            target.exec(["true"], timeout=30)
    finally:
        run_dir = target.run_dir
        target.stop()
    assert not leftovers(run_dir, None)


OWNER = """
import sys, time
from pathlib import Path
from portability.targets.qemu import QemuSpec, QemuTarget
t = QemuTarget(QemuSpec(name="owned", kernel="6.12", accel="tcg"), session="test-owner",
               base_dir=Path("."))
t.start()
print(t.pid, t.run_dir, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_owner_killed_leaves_no_vm_behind(sig):
    need_kernel("6.12")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
    try:
        ready, _, _ = select.select([owner.stdout], [], [], 180)
        line = owner.stdout.readline() if ready else ""
        assert line, f"the owner did not start a VM: {owner.stderr.read() if owner.poll() is not None else 'timeout'}"
        pid_text, run_dir_text = line.split()
        pid, run_dir = int(pid_text), Path(run_dir_text)
        assert leftovers(None, pid), "the VM should be running"
        owner.send_signal(sig)
        owner.wait(60)
        deadline = time.monotonic() + 30
        while leftovers(run_dir, pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not leftovers(run_dir, pid)
        guardians = [p for p in Path("/proc").iterdir() if p.name.isdigit() and
                     run_dir_text.encode() in _cmdline(p)]
        assert not guardians
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_plugin_matrix_splits_along_the_kernel(tmp_path):
    """End to end: pytest --targets=local,kernel-5.10 runs one test on both; the report puts
    the divergence on the kernel and no VM is left behind."""
    need_kernel("5.10")
    (tmp_path / "targets.yaml").write_text(
        "targets:\n"
        "  local: {kind: local}\n"
        '  kernel-5.10: {kind: qemu, kernel: "5.10", accel: tcg}\n'
    )
    (tmp_path / "test_kernel.py").write_text(
        f"FCHMODAT2 = {FCHMODAT2!r}\n"
        "def test_fchmodat2(target):\n"
        "    result = target.run(['python3', '-c', FCHMODAT2])\n"
        "    assert result.rc == 0, 'fchmodat2 is missing (ENOSYS)'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_ADDOPTS", None)  # CI's -q would cancel the -v this test reads
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v",
                           "--targets=local,kernel-5.10", "--portability-json=report.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "test_fchmodat2[local] PASSED" in out, out
    assert "test_fchmodat2[kernel-5.10] FAILED" in out, out
    report = json.loads((tmp_path / "report.json").read_text())
    vm_facts = report["targets"]["kernel-5.10"]["facts"]
    assert vm_facts["kernel_release"].startswith("5.10.") and vm_facts["shares_host_kernel"] is False
    (test,) = report["tests"]
    assert test["verdict"] == "divergent" and test["attribution"]["verdict"] == "kernel"
    # Other sessions may run VMs meanwhile: look only for this run's.
    session = "".join(c for c in report["session"] if c.isalnum() or c == "-")[:40]
    left = list(Path("/tmp").glob(f"portability-{session}-q-*"))
    assert not left, f"VM temp dirs left behind: {left}"


def tiny_image(directory: Path) -> Path:
    """A 16 MiB ext4 root with only a static busybox: an image rootfs without debootstrap."""
    from portability.qemu.initramfs import busybox_applets, static_busybox

    root = directory / "root"
    for sub in ("bin", "etc", "tmp", "proc", "sys", "dev", "run"):
        (root / sub).mkdir(parents=True)
    busybox = static_busybox()
    (root / "bin" / "busybox").write_bytes(busybox.read_bytes())
    (root / "bin" / "busybox").chmod(0o755)
    for applet in busybox_applets(busybox):
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "os-release").write_text("ID=tiny\nVERSION_ID=1\n")
    image = directory / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image), "16M"], check=True)
    return image


def test_image_rootfs_and_snapshot_restore(tmp_path):
    need_kernel("6.1")
    image = tiny_image(tmp_path)
    spec = dict(kernel="6.1", rootfs=str(image), snapshot=True, memory="256M")
    first = vm("snap", **spec)
    try:
        first.start()
        assert not first.restored
        found = facts.probe(first)
        assert found.os_id == "tiny" and found.kernel_version[:2] == (6, 1)
        # Writes go to the overlay; the image is attached read-only and never changes.
        assert first.exec("echo x > /etc/written && cat /etc/written").stdout == "x\n"
    finally:
        first.stop()
    second = vm("snap", **spec)
    try:
        second.start()
        assert second.restored  # resumed from the state saved by the first start
        assert second.exec("cat /etc/written 2>/dev/null || echo clean").stdout == "clean\n"
        guest_time = int(second.exec("date +%s").stdout)
        assert abs(guest_time - time.time()) < 30  # the clock was set after the restore
        check_exit_codes_quickly(second)
    finally:
        run_dir, pid = second.run_dir, second.pid
        second.stop()
    assert not leftovers(run_dir, pid)


def check_exit_codes_quickly(target) -> None:
    assert target.exec("exit 7").rc == 7
    assert target.exec(["cat"], stdin=b"in").stdout_bytes == b"in"


def test_uncached_kernel_offline_is_unavailable_with_a_hint(tmp_path, monkeypatch):
    require(qemu_binary() is not None, "qemu-system-x86_64 is not installed")
    monkeypatch.setenv("PORTABILITY_CACHE", str(tmp_path / "cache"))  # nothing cached here
    monkeypatch.setenv("PORTABILITY_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")  # refuses
    target = vm("offline", kernel="6.1")
    with pytest.raises(TargetUnavailable) as info:
        target.start()
    target.stop()
    message = str(info.value)
    assert "offline?" in message and "portability kernels fetch 6.1" in message
    assert "\n" not in message


def test_kernel_given_as_a_bzimage_path_boots(tmp_path):
    """A vmlinuz path: its ELF vmlinux is extracted (cached) and its modules found beside it."""
    need_kernel("6.1")
    cached = kernels.cached("6.1")
    vmlinuz = cached.image.parent / "vmlinuz"
    target = QemuTarget(QemuSpec(name="by-path", kernel=str(vmlinuz), accel="tcg"),
                        session=SESSION, base_dir=tmp_path)
    try:
        target.start()
        assert target.exec(["uname", "-r"]).stdout.strip() == cached.release
    finally:
        target.stop()


def test_clean_stale_removes_only_dead_sessions_vms(tmp_path):
    """`portability clean`: a VM dir whose owner process is gone loses its qemu and its dir."""
    import shutil
    import tempfile

    from portability.session import current_owner
    from portability.targets.qemu import clean_stale

    dead_owner = subprocess.run([sys.executable, "-c",
                                 "from portability.session import current_owner; print(current_owner())"],
                                capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.strip()
    dead = Path(tempfile.mkdtemp(prefix=f"portability-{SESSION}dead-q-"))
    live = Path(tempfile.mkdtemp(prefix=f"portability-{SESSION}live-q-"))
    (dead / "owner").write_text(f"{dead_owner}\nvm\n")
    (live / "owner").write_text(f"{current_owner()}\nvm\n")
    # A process named like qemu whose command line names the dead VM's dir (a shell that
    # waits on its stdin: no child process to leak).
    fake_qemu = tmp_path / "qemu-system-fake"
    shutil.copy("/bin/sh", fake_qemu)
    orphan = subprocess.Popen([str(fake_qemu), "-c", "read x", str(dead / "agent.sock")],
                              stdin=subprocess.PIPE)
    try:
        time.sleep(0.2)
        removed = clean_stale()
        assert any(str(dead) in line for line in removed)
        assert not dead.exists() and live.exists()
        assert orphan.wait(10) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
        shutil.rmtree(live, ignore_errors=True)
        shutil.rmtree(dead, ignore_errors=True)


def test_container_image_rootfs_other_userland_on_other_kernel(docker_client):
    """rootfs: container:IMAGE — Debian 11's userland booted on the 6.12 kernel."""
    from portability import images

    need_kernel("6.12")
    require(images.exists("portability/debian:11", client=docker_client),
            "image portability/debian:11 is missing (run `portability images build --all`)")
    target = vm("deb11-on-6.12", kernel="6.12", rootfs="container:portability/debian:11")
    try:
        target.start()
        found = facts.probe(target)
        assert (found.os_id, found.os_version_id, found.libc_version) == ("debian", "11", "2.31")
        assert found.kernel_version[:2] == (6, 12) and found.shares_host_kernel is False
        assert target.exec("test -e /.dockerenv || echo no-marker").stdout == "no-marker\n"
    finally:
        target.stop()
    # The export's helper container is gone again.
    assert not docker_client.api.containers(all=True, filters={"label": f"io.portability.session={SESSION}"})
