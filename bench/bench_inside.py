#!/usr/bin/env python3
"""Inside mode: a 500-test unit suite run inside 3 targets vs running pytest in each by hand.

  * ours:    pytest --targets=d11,d12,d13 (every test inside each target; containers started,
             project and pytest shipped, results streamed back and turned into a matrix —
             all inside the measured time)
  * by hand: `docker exec CONTAINER sh -c 'cd project && python3 -m pytest -q'` in each target,
             one after the other, with the containers already running and the project and
             pytest already copied in (outside the measured time). Also shown: the three by-hand
             runs started at once (the strictest anchor).

Usage: python3 bench/bench_inside.py [--images portability/debian:11,portability/debian:12,portability/debian:13]
Goal (issue 7): ours <= 1.2x the by-hand wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

TESTS = 500


def write_suite(directory: Path) -> None:
    (directory / "calc").mkdir(parents=True)
    (directory / "calc" / "__init__.py").write_text(textwrap.dedent("""
        import json

        def checksum(n):
            data = json.dumps({"n": n, "items": list(range(n % 50))})
            return sum(data.encode()) % 997
        """))
    (directory / "conftest.py").write_text("")
    (directory / "tests").mkdir()
    per_file = 50
    for f in range(TESTS // per_file):
        body = ["import pytest\nfrom calc import checksum\n\npytestmark = pytest.mark.inside\n"]
        for i in range(per_file):
            n = f * per_file + i
            body.append(f"\ndef test_{n:03d}():\n    assert 0 <= checksum({n}) < 997\n")
        (directory / "tests" / f"test_part{f:02d}.py").write_text("".join(body))


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images",
                        default="portability/debian:11,portability/debian:12,portability/debian:13")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median is kept")
    args = parser.parse_args()
    images = args.images.split(",")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from portability.inside import pytest_bundle

    client = docker.from_env()
    containers = []
    with tempfile.TemporaryDirectory(prefix="portability-bench-") as tmp:
        work = Path(tmp)
        write_suite(work / "project")
        names = [f"t{i}" for i in range(1, len(images) + 1)]
        (work / "project" / "targets.yaml").write_text(
            "targets:\n" + "".join(f"  {name}: {{kind: container, image: '{image}'}}\n"
                                   for name, image in zip(names, images)))
        try:
            # The by-hand setting: containers running, project and pytest copied in.
            by_hand = []
            for image in images:
                c = client.containers.run(image, ["sleep", "infinity"], detach=True,
                                          network_mode="none", labels={"bench": "inside"})
                containers.append(c)
                version = c.exec_run(["python3", "-c", "import platform;"
                                      "print(platform.python_version())"]).output.decode().strip()
                bundle, _ = pytest_bundle(version, image)
                subprocess.run(["docker", "cp", str(work / "project"), f"{c.id}:/project"],
                               check=True)
                subprocess.run(["docker", "cp", str(bundle), f"{c.id}:/site"], check=True)
                by_hand.append(["docker", "exec", "-e", "PYTHONPATH=/site", "-w", "/project",
                                c.id, "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "tests"])
            ours_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--targets=" + ",".join(names), "tests"]
            ours, sequential, parallel = [], [], []
            for _ in range(args.repeat):
                ours.append(timed(ours_cmd, work / "project"))
                start = time.perf_counter()
                for cmd in by_hand:
                    timed(cmd, work)
                sequential.append(time.perf_counter() - start)
                start = time.perf_counter()
                with ThreadPoolExecutor(len(by_hand)) as pool:
                    list(pool.map(lambda cmd: timed(cmd, work), by_hand))
                parallel.append(time.perf_counter() - start)
        finally:
            for c in containers:
                c.remove(force=True)
            client.close()

    def median(values):
        return sorted(values)[len(values) // 2]

    ours_s, seq_s, par_s = median(ours), median(sequential), median(parallel)
    print(f"{TESTS} tests x {len(images)} targets ({', '.join(images)}), "
          f"median of {args.repeat} runs")
    print(f"  pytest-portability --inside (incl. container start/stop, shipping)  {ours_s:7.2f} s")
    print(f"  by hand: docker exec ... pytest, one target after the other      {seq_s:7.2f} s")
    print(f"  by hand: the three docker exec ... pytest at once                {par_s:7.2f} s")
    print(f"ratio ours/by-hand = {ours_s / seq_s:.2f}x  (goal <= 1.2x); "
          f"vs all-at-once by hand = {ours_s / par_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
