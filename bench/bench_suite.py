#!/usr/bin/env python3
"""A 50-test testinfra-style suite over local + two containers: pytest-portability vs testinfra.

Both runs execute the very same test file (it only uses the `host` fixture):
  * ours:      pytest --targets=local,c1,c2      (containers started by the plugin, inside
                                                    the measured time)
  * testinfra: pytest --hosts=local://,docker://A,docker://B -p no:portability
               (containers started beforehand, outside the measured time)

Usage: python3 bench/bench_suite.py [--images portability/debian:11,portability/debian:12]
Goal (issue 2): ours <= 0.35x testinfra's wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import docker

TESTS = 50


def write_suite(directory: Path) -> None:
    tests = []
    for i in range(TESTS):
        tests.append(textwrap.dedent(f"""
            def test_{i:02d}(host):
                assert host.run("echo {i}").stdout == "{i}\\n"
                assert host.file("/etc/passwd").exists
                assert host.run("test -d /tmp").rc == 0
            """))
    (directory / "test_fifty.py").write_text("".join(tests))


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="portability/debian:11,portability/debian:12")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is kept")
    args = parser.parse_args()
    images = args.images.split(",")

    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="portability-bench-") as tmp:
        work = Path(tmp)
        write_suite(work)
        (work / "targets.yaml").write_text(
            "targets:\n  local: {kind: local}\n"
            + "".join(f"  c{i}: {{kind: container, image: '{image}'}}\n"
                      for i, image in enumerate(images, 1)))
        containers = [client.containers.run(image, ["sleep", "infinity"], detach=True,
                                            network_mode="none", labels={"bench": "suite"})
                      for image in images]
        try:
            hosts = ",".join(["local://"] + [f"docker://{c.id}" for c in containers])
            ours_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--targets=" + ",".join(["local"] + [f"c{i}" for i in range(1, len(images) + 1)])]
            theirs_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-p", "no:portability", f"--hosts={hosts}"]
            ours, theirs = [], []
            for _ in range(args.repeat):
                ours.append(timed(ours_cmd, work))
                theirs.append(timed(theirs_cmd, work))
        finally:
            for c in containers:
                c.remove(force=True)
            client.close()
    ours_s, theirs_s = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
    items = TESTS * (len(images) + 1)
    print(f"{TESTS} tests x {len(images) + 1} targets = {items} items, 3 commands each "
          f"(median of {args.repeat} runs)")
    print(f"  pytest-portability (incl. container start/stop)  {ours_s:7.2f} s")
    print(f"  testinfra --hosts (containers pre-started)       {theirs_s:7.2f} s")
    print(f"ratio ours/testinfra = {ours_s / theirs_s:.2f}x  (goal <= 0.35x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
