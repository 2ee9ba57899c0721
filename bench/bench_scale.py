#!/usr/bin/env python3
"""Scale: 2,000 tests x 5 targets, and pytest-xdist against serial runs, in one run.

1. Plugin overhead per item: 2,000 empty tests x 5 targets (local + 4 containers) under the
   plugin, against the same 10,000 items as a plain `parametrize` without the plugin (the
   anchor). Overhead = (ours - anchor) / items; target start-up is included. Goal <= 1 ms.
   Also the time to write the JSON and HTML reports of that run (goal <= 2 s).
2. xdist: a 50-test suite whose tests run real commands, over N targets: `-n N` against each
   target alone (serial). Goal: wall time <= 1.3x the slowest single target.

Usage: python3 bench/bench_scale.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {
    "local": "{kind: local}",
    "d11": "{kind: container, image: 'portability/debian:11'}",
    "d12": "{kind: container, image: 'portability/debian:12'}",
    "d13": "{kind: container, image: 'portability/debian:13'}",
    "bb": "{kind: container, image: 'portability/busybox:latest'}",
}


def pytest_run(cwd: Path, *args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        sys.exit(f"pytest {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def scale(work: Path) -> None:
    n = 2000
    (work / "test_scale.py").write_text("".join(f"def test_{i}(target):\n    pass\n" for i in range(n)))
    (work / "anchor_scale.py").write_text("import pytest\n" + "".join(
        f"@pytest.mark.parametrize('t', range({len(TARGETS)}))\ndef test_{i}(t):\n    pass\n"
        for i in range(n)))
    items = n * len(TARGETS)
    anchor = pytest_run(work, "-p", "no:portability", "anchor_scale.py")
    ours = pytest_run(work, "--targets=all", "test_scale.py", "--portability-json=scale.json")
    report = json.loads((work / "scale.json").read_text())

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from portability.report.html import render_html
    from portability.report.json_report import write_atomic

    start = time.perf_counter()
    write_atomic(work / "again.json", report)
    json_s = time.perf_counter() - start
    start = time.perf_counter()
    (work / "scale.html").write_text(render_html(report))
    html_s = time.perf_counter() - start
    print(f"scale: {n} tests x {len(TARGETS)} targets = {items} items")
    print(f"  anchor (plain parametrize, no plugin)   {anchor:7.2f} s")
    print(f"  pytest-portability (incl. 4 containers) {ours:7.2f} s")
    print(f"  overhead per item = {(ours - anchor) / items * 1000:.3f} ms  (goal <= 1 ms)")
    print(f"  JSON report {json_s:.2f} s, HTML report {html_s:.2f} s "
          f"({(work / 'scale.html').stat().st_size / 1e6:.1f} MB)  (goal <= 2 s)")


def xdist(work: Path) -> None:
    # Each test waits 50 ms inside its target (a service answering, a VM's slow exec): the
    # work that spreading targets over workers overlaps.
    tests = "".join(
        f"def test_{i}(target):\n"
        f"    assert target.run('echo {i}; cat /etc/passwd >/dev/null; sleep 0.05').rc == 0\n"
        f"    assert target.run(['sh', '-c', 'test -d /tmp']).rc == 0\n"
        for i in range(50))
    (work / "test_fifty.py").write_text(tests)
    names = list(TARGETS)
    singles = {name: pytest_run(work, f"--targets={name}", "test_fifty.py") for name in names}
    serial = pytest_run(work, "--targets=all", "test_fifty.py")
    parallel = pytest_run(work, "--targets=all", "test_fifty.py", "-n", str(len(names)))
    cores = os.cpu_count() or 1
    per_core = pytest_run(work, "--targets=all", "test_fifty.py", "-n", str(cores))
    slowest = max(singles.values())
    print(f"xdist: 50 tests (50 ms in the target each) x {len(names)} targets, {cores} cores")
    for name, seconds in singles.items():
        print(f"  {name:<6} alone          {seconds:6.2f} s")
    print(f"  all, serial          {serial:6.2f} s  ({serial / slowest:.2f}x the slowest target)")
    print(f"  all, -n {cores} (cores)     {per_core:6.2f} s  ({per_core / slowest:.2f}x)")
    print(f"  all, -n {len(names)} (targets)   {parallel:6.2f} s  ({parallel / slowest:.2f}x; "
          "goal <= 1.3x)")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="portability-bench-") as tmp:
        work = Path(tmp)
        (work / "targets.yaml").write_text(
            "targets:\n" + "".join(f"  {k}: {v}\n" for k, v in TARGETS.items()))
        scale(work)
        xdist(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
