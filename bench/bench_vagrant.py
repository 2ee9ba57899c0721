#!/usr/bin/env python3
"""Vagrant target: `up`-to-first-command time, and per-command latency against `vagrant ssh -c`.

One VM (CPU is shared): the test box portability/debian12-tcg on vagrant-libvirt (TCG), as
built by .ci/setup.d/60-ssh-vagrant.sh. Anchor, measured on the same VM in the same run:
`vagrant ssh -c true`, the per-command path of Vagrant's own CLI (and of tools built on it).

Usage: python3 bench/bench_vagrant.py [--box portability/debian12-tcg] [--provider libvirt] [-n 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from portability import facts  # noqa: E402
from portability.targets.vagrant import VagrantSpec, VagrantTarget  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", default="portability/debian12-tcg")
    parser.add_argument("--provider", default="libvirt")
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()

    marks: dict[str, float] = {}
    started = time.monotonic()

    def progress(line: str) -> None:
        if "Starting domain" in line or "Booting VM" in line:
            marks.setdefault("VM starting", time.monotonic() - started)
        if "booted and ready" in line:
            marks.setdefault("vagrant up: SSH ready", time.monotonic() - started)

    target = VagrantTarget(VagrantSpec(name="bench", box=args.box, provider=args.provider),
                           session=f"bench-vagrant-{os.getpid()}", base_dir=ROOT)
    target.progress = progress
    rows: dict[str, float] = {}
    try:
        target.start()
        marks["connected (agent running)"] = time.monotonic() - started
        first = target.exec(["true"])
        marks["first command done"] = time.monotonic() - started
        assert first.rc == 0
        kernel = facts.probe(target).kernel_release
        samples = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            target.exec(["true"])
            samples.append(time.perf_counter() - t0)
        rows["portability vagrant target"] = statistics.median(samples) * 1000
        cli = []
        env = target._env()  # the target's own vagrant environment (os.environ included)
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run(["vagrant", "ssh", "-c", "true"], cwd=target.session_dir, env=env,
                           capture_output=True, check=True, timeout=120)
            cli.append(time.perf_counter() - t0)
        rows["vagrant ssh -c (anchor)"] = statistics.median(cli) * 1000
    finally:
        t0 = time.monotonic()
        target.stop()
        marks["destroy"] = time.monotonic() - t0

    print(f"vagrant {args.provider}, box {args.box}, guest kernel {kernel}")
    for label, value in marks.items():
        print(f"  {label:<28} {value:7.1f} s")
    width = max(map(len, rows))
    for label, value in rows.items():
        print(f"  {label:<{width}}  {value:10.3f} ms per command")
    print(f"ratio: vagrant ssh -c / portability = "
          f"{rows['vagrant ssh -c (anchor)'] / rows['portability vagrant target']:.0f}x; "
          f"up-to-first-command {marks['first command done']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
