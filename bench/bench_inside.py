#!/usr/bin/env python3
"""Inside mode: a 500-test unit suite run inside 3 targets vs running pytest in each by hand.

  * ours:    pytest --targets=d11,d12,d13 (every test inside each target; containers started,
             project and pytest shipped, results streamed back and turned into a matrix —
             all inside the measured time)
  * by hand: per target what a person types: `docker run -d IMAGE sleep infinity`,
             `docker cp` the project and a pytest for that Python in, `docker exec … python3 -m
             pytest -q`, `docker rm -f` — one target after the other. Also shown: the three
             procedures at once, and the bare `docker exec … pytest` runs alone (containers up,
             files in: the floor no tool can beat).

Usage: python3 bench/bench_inside.py [--images portability/debian:11,portability/debian:12,portability/debian:13]
Goal (issue 7): ours <= 1.2x the by-hand wall time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

TESTS = 500
#: This run's by-hand containers (and only them) are removed at the end, on every exit path.
LABEL = f"io.portability.session=bench-inside-{os.getpid()}"


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


def by_hand(image: str, work: Path, bundle: Path) -> list[list[str]]:
    """What a person does to run the suite inside one image: start, copy in, run, remove."""
    name = f"bench-inside-{os.getpid()}-{image.replace('/', '-').replace(':', '-')}"
    return [
        ["docker", "run", "-d", "--name", name, "--network", "none", "--label", LABEL,
         image, "sleep", "infinity"],
        ["docker", "cp", str(work / "project"), f"{name}:/project"],
        ["docker", "cp", str(bundle), f"{name}:/site"],
        ["docker", "exec", "-e", "PYTHONPATH=/site", "-w", "/project", name,
         "python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        ["docker", "rm", "-f", name],
    ]


def run_all(commands: list[list[str]], work: Path) -> float:
    start = time.perf_counter()
    for cmd in commands:
        timed(cmd, work)
    return time.perf_counter() - start


def _has_plugin(name: str) -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == name for ep in entry_points(group="pytest11"))


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
    with tempfile.TemporaryDirectory(prefix="portability-bench-") as tmp:
        work = Path(tmp)
        write_suite(work / "project")
        names = [f"t{i}" for i in range(1, len(images) + 1)]
        (work / "project" / "targets.yaml").write_text(
            "targets:\n" + "".join(f"  {name}: {{kind: container, image: '{image}'}}\n"
                                   for name, image in zip(names, images)))
        procedures = []
        for image in images:
            version = client.containers.run(
                image, ["python3", "-c", "import platform; print(platform.python_version())"],
                remove=True, network_mode="none").decode().strip()
            bundle, _ = pytest_bundle(version, image)  # cached: outside the measured time
            procedures.append(by_hand(image, work, bundle))
        # Third-party plugins installed on this machine that have nothing to do with either
        # side (hypothesis imports itself in its terminal summary: ~0.9 s) stay out, as they
        # are absent from the containers' pytest.
        unrelated = [arg for name in ("hypothesispytest",) if _has_plugin(name)
                     for arg in ("-p", f"no:{name}")]
        ours_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *unrelated,
                    "--targets=" + ",".join(names), "tests"]
        ours, sequential, parallel, exec_only = [], [], [], []
        try:
            for _ in range(args.repeat):
                ours.append(timed(ours_cmd, work / "project"))
                sequential.append(sum(run_all(p, work) for p in procedures))
                start = time.perf_counter()
                with ThreadPoolExecutor(len(procedures)) as pool:
                    list(pool.map(lambda p: run_all(p, work), procedures))
                parallel.append(time.perf_counter() - start)
                # the pytest runs alone (containers up, files in): the floor of any tool
                total = 0.0
                for p in procedures:
                    for cmd in p[:3]:
                        timed(cmd, work)
                    total += run_all([p[3]], work)
                    timed(p[4], work)
                exec_only.append(total)
        finally:
            for c in client.containers.list(all=True, filters={"label": LABEL}):
                c.remove(force=True)
            client.close()

    def median(values):
        return sorted(values)[len(values) // 2]

    ours_s, seq_s, par_s, exec_s = median(ours), median(sequential), median(parallel), \
        median(exec_only)
    print(f"{TESTS} tests x {len(images)} targets ({', '.join(images)}), "
          f"median of {args.repeat} runs{'; ours with ' + ' '.join(unrelated) if unrelated else ''}")
    print(f"  pytest-portability (start, ship, run inside, stream back, matrix, remove) {ours_s:6.2f} s")
    print(f"  by hand, one target after the other (docker run, cp, exec pytest, rm)   {seq_s:6.2f} s")
    print(f"  by hand, the three targets at once                                    {par_s:6.2f} s")
    print(f"  only the three `docker exec ... pytest` runs, one after the other     {exec_s:6.2f} s")
    print(f"ratio ours/by-hand = {ours_s / seq_s:.2f}x  (goal <= 1.2x); "
          f"vs all-at-once by hand = {ours_s / par_s:.2f}x; vs exec-only = {ours_s / exec_s:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
