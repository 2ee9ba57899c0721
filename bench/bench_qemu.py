#!/usr/bin/env python3
"""kind: qemu — boot and per-command figures per kernel, against anchors measured in the same run.

For each kernel (host rootfs over 9p, TCG unless --accel):
  * cold boot to first command: QemuTarget.start() + one ``sh -c true`` (median of --boots);
  * the bare channel round trip (agent ping), ``sh -c true`` and argv ``/bin/true`` medians;
  * the virtme-ng-style anchor: one boot per command (start + command + poweroff), and the
    ratio of that to one command over the persistent channel;
  * with --qga: the raw qemu-guest-agent channel on the same VM (guest-ping; guest-exec +
    guest-exec-status polling for ``sh -c true``), the agent's ratio against it. qemu-ga is
    taken from Debian's package with a private apt config (nothing installed on the host).

  * with --snapshot: cold boot + save, then restores from the saved state (tiny ext4 image).

Usage: python3 bench/bench_qemu.py [--kernels 5.10 6.1 6.12] [--boots 3] [-n 100] [--qga] [--snapshot]
Goals (issue 4): boot to first command <= 3 s under TCG; ``sh -c true`` <= 40 ms; ping <= 2 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portability import kernels  # noqa: E402
from portability.paths import cache_dir  # noqa: E402
from portability.targets.qemu import QemuSpec, QemuTarget  # noqa: E402

QGA_PORT = "org.qemu.guest_agent.0"


def median_ms(fn, n: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


class QgaTarget(QemuTarget):
    """The same VM plus a second virtio-serial port for qemu-guest-agent."""

    def qemu_argv(self, *args, **kwargs):
        argv = super().qemu_argv(*args, **kwargs)
        return argv + ["-chardev", f"socket,id=qga,path={self.run_dir / 'qga.sock'},server=on,wait=off",
                       "-device", f"virtserialport,chardev=qga,name={QGA_PORT}"]


class Qga:
    """A minimal client of QEMU's guest agent protocol (JSON lines over the port's socket)."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        try:
            self.sock.connect(str(path))
            self.file = self.sock.makefile("rb")
            self.call("guest-sync", {"id": 4242})
        except BaseException:
            self.sock.close()
            raise

    def call(self, execute: str, arguments: dict | None = None):
        message = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        self.sock.sendall(json.dumps(message).encode() + b"\n")
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("qemu-ga closed the channel")
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            reply = json.loads(line)
            if "error" in reply:
                raise RuntimeError(reply["error"])
            if "return" in reply:
                return reply["return"]

    def exec_sh(self, script: str) -> tuple[int, bytes]:
        pid = self.call("guest-exec", {"path": "/bin/sh", "arg": ["-c", script],
                                       "capture-output": True})["pid"]
        while True:
            status = self.call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                return status.get("exitcode", -1), base64.b64decode(status.get("out-data", ""))
            time.sleep(0.001)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def qemu_ga_binary() -> Path | None:
    """qemu-ga from Debian's bookworm package, unpacked once into the cache (not installed)."""
    root = cache_dir("bench", "qemu-ga")
    binary = root / "usr" / "sbin" / "qemu-ga"
    if binary.exists():
        return binary
    apt_dir = cache_dir("kernels") / "apt"
    env = kernels._private_apt(apt_dir)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        got = subprocess.run(["apt-get", "-q", "download", "qemu-guest-agent/bookworm"], env=env,
                             cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob("*.deb"))
        if got.returncode != 0 or not debs:
            print(f"qemu-ga: download failed: {got.stderr.strip()[:200]}")
            return None
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    return binary if binary.exists() else None


def bench_kernel(kernel: str, args) -> dict:
    spec = dict(kernel=kernel, accel=args.accel, cpus=args.cpus)
    boots, one_shot = [], []
    target = None
    for i in range(args.boots):
        t = QgaTarget(QemuSpec(name=f"bench-{kernel}", **spec), session="bench", base_dir=Path.cwd())
        started = time.perf_counter()
        try:
            t.start()
            t.exec("true")
            ready = time.perf_counter() - started
        except Exception:
            t.stop()
            raise
        boots.append(ready)
        if i < args.boots - 1:
            t.stop()
            one_shot.append(time.perf_counter() - started)  # virtme-ng style: boot, run, power off
        else:
            target = t
    assert target is not None
    result = {"kernel": kernel, "guest": target.guest_kernel, "boot_s": statistics.median(boots),
              "boot_min_s": min(boots), "boot_max_s": max(boots)}
    try:
        result["ping_ms"] = median_ms(target.ping, args.n * 2)
        result["sh_true_ms"] = median_ms(lambda: target.exec("true"), args.n)
        result["argv_true_ms"] = median_ms(lambda: target.exec(["/bin/true"]), args.n)
        result["python_ms"] = median_ms(lambda: target.exec(["python3", "-c", "pass"]), 5)
        if args.qga:
            result.update(bench_qga(target, args.n))
    finally:
        stop_started = time.perf_counter()
        target.stop()
        stop_s = time.perf_counter() - stop_started
    if not one_shot:  # a single boot: boot + stop is the one-shot figure
        one_shot = [boots[-1] + stop_s]
    result["stop_s"] = stop_s
    result["one_boot_per_command_s"] = statistics.median(one_shot)
    return result


def bench_qga(target: QemuTarget, n: int) -> dict:
    binary = qemu_ga_binary()
    if binary is None:
        return {}
    port = target.exec("for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = "
                       f"{QGA_PORT} ] && echo /dev/${{p##*/}}; done").stdout.strip()
    # Started through our agent, detached; it serves the second port until poweroff.
    started = target.exec(f"setsid {binary} -m virtio-serial -p {port} -t /tmp >/dev/null 2>&1 "
                          "</dev/null & echo ok")
    if "ok" not in started.stdout:
        return {}
    time.sleep(1.0)
    qga = Qga(target.run_dir / "qga.sock")
    try:
        rc, _ = qga.exec_sh("true")
        assert rc == 0
        return {"qga_ping_ms": median_ms(lambda: qga.call("guest-ping"), n * 2),
                "qga_sh_true_ms": median_ms(lambda: qga.exec_sh("true"), n)}
    finally:
        qga.close()


def tiny_image(directory: Path) -> Path:
    """A 16 MiB ext4 root holding only a static busybox (snapshots need a disk-image root)."""
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
    image = directory / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(image), "16M"], check=True)
    return image


def bench_snapshot(kernel: str, args) -> dict:
    """Cold boot + save once, then --boots restores: start() to first command."""
    with tempfile.TemporaryDirectory(prefix="portability-bench-snap-") as tmp:
        image = tiny_image(Path(tmp))
        spec = QemuSpec(name=f"snap-{kernel}", kernel=kernel, accel=args.accel, rootfs=str(image),
                        snapshot=True, memory="512M")
        times, cold = [], None
        for i in range(args.boots + 1):
            t = QemuTarget(spec, session="bench", base_dir=Path.cwd())
            started = time.perf_counter()
            try:
                t.start()
                t.exec("true")
                elapsed = time.perf_counter() - started
                if t.restored:
                    times.append(elapsed)
                else:
                    cold = elapsed
            finally:
                t.stop()
    return {"kernel": kernel, "cold_and_save_s": cold,
            "restore_s": statistics.median(times) if times else None,
            "restore_max_s": max(times) if times else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", default=list(kernels.DEFAULT_SERIES))
    parser.add_argument("--boots", type=int, default=3, help="cold boots per kernel")
    parser.add_argument("-n", type=int, default=100, help="commands per latency figure")
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    parser.add_argument("--cpus", type=int, default=1)
    parser.add_argument("--qga", action="store_true", help="also measure qemu-guest-agent")
    parser.add_argument("--snapshot", action="store_true",
                        help="also time snapshot restores (tiny ext4 image rootfs)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    args = parser.parse_args()

    local = median_ms(lambda: subprocess.run(["sh", "-c", "true"]), 50)
    print(f"anchor: host subprocess `sh -c true` {local:.2f} ms; load {os.getloadavg()[0]:.2f}")
    rows = []
    for kernel in args.kernels:
        row = bench_kernel(kernel, args)
        rows.append(row)
        line = (f"{kernel:5} {row['guest']:24} boot→first cmd {row['boot_s']:.2f} s "
                f"(min {row['boot_min_s']:.2f}, max {row['boot_max_s']:.2f})  "
                f"ping {row['ping_ms']:.2f} ms  sh -c true {row['sh_true_ms']:.1f} ms  "
                f"/bin/true {row['argv_true_ms']:.1f} ms  python3 -c pass {row['python_ms']:.0f} ms")
        print(line)
        ratio = row["one_boot_per_command_s"] * 1000 / row["sh_true_ms"]
        print(f"      one boot per command (virtme-ng style) {row['one_boot_per_command_s']:.2f} s "
              f"= {ratio:.0f}x one command over the persistent channel")
        if "qga_sh_true_ms" in row:
            print(f"      qemu-guest-agent: ping {row['qga_ping_ms']:.2f} ms "
                  f"(agent {row['qga_ping_ms'] / row['ping_ms']:.1f}x faster), sh -c true "
                  f"{row['qga_sh_true_ms']:.1f} ms (agent {row['qga_sh_true_ms'] / row['sh_true_ms']:.2f}x)")
        sys.stdout.flush()
    snapshots = []
    if args.snapshot:
        for kernel in args.kernels:
            snap = bench_snapshot(kernel, args)
            snapshots.append(snap)
            if snap["restore_s"] is None:
                print(f"{kernel:5} snapshot: no start was restored from the saved state")
                continue
            cold = snap["cold_and_save_s"]
            cold_text = f"{cold:.2f} s" if cold is not None else "- (state saved by an earlier run)"
            print(f"{kernel:5} snapshot: cold boot + save {cold_text}, "
                  f"restore to first command {snap['restore_s']:.2f} s "
                  f"(max {snap['restore_max_s']:.2f}; goal <= 0.5 s)")
            sys.stdout.flush()
    goals = all(r["boot_s"] <= 3.0 and r["sh_true_ms"] <= 40 and r["ping_ms"] <= 2 for r in rows)
    print(f"goals (boot <= 3 s, sh -c true <= 40 ms, ping <= 2 ms): {'met' if goals else 'NOT met'} "
          f"on every kernel; load {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"anchor_local_sh_ms": local, "kernels": rows,
                                               "snapshots": snapshots},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
