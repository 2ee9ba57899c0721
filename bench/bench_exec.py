#!/usr/bin/env python3
"""Per-command latency: our local and container targets against their anchors, in one run.

Anchors measured in the same run, on the same machine and the same container:
  * raw ``subprocess.run`` (for the local target),
  * testinfra's local backend and its docker backend (one ``docker exec`` CLI per command),
  * docker-py ``exec_run`` (one API exec per command).

Usage: python3 bench/bench_exec.py [-n 300] [--image portability/debian:12]
Goals (issue 2): container <= 3 ms and <= 0.05x testinfra docker; local <= 1.2x subprocess.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker  # noqa: E402
import testinfra  # noqa: E402

from portability.targets.container import ContainerSpec, ContainerTarget  # noqa: E402
from portability.targets.local import LocalSpec, LocalTarget  # noqa: E402


def median_ms(fn, n: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="commands per measurement")
    parser.add_argument("--image", default="portability/debian:12")
    args = parser.parse_args()
    n = args.n

    local = LocalTarget(LocalSpec(name="local"), session="bench", base_dir=Path.cwd())
    local.start()
    container = ContainerTarget(ContainerSpec(name="bench", image=args.image),
                                session="bench", base_dir=Path.cwd())
    container.start()
    client = docker.from_env()
    try:
        cid = container.container_id
        ti_local = testinfra.get_host("local://")
        ti_docker = testinfra.get_host(f"docker://{cid}")
        raw_container = client.containers.get(cid)
        rows = {
            "local: subprocess.run (anchor)": median_ms(
                lambda: subprocess.run(["true"], capture_output=True), n),
            "local: portability": median_ms(lambda: local.exec(["true"]), n),
            "local: testinfra local backend": median_ms(lambda: ti_local.run("true"), n),
            "container: portability": median_ms(lambda: container.exec(["true"]), n),
            "container: docker-py exec_run": median_ms(lambda: raw_container.exec_run(["true"]),
                                                       max(20, n // 5)),
            "container: testinfra docker backend (anchor)": median_ms(
                lambda: ti_docker.run("true"), max(20, n // 5)),
        }
    finally:
        container.stop()
        local.stop()
        client.close()

    width = max(map(len, rows))
    print(f"per-command median, `true`, n={n} ({args.image})")
    for label, value in rows.items():
        print(f"  {label:<{width}}  {value:8.3f} ms")
    local_ratio = rows["local: portability"] / rows["local: subprocess.run (anchor)"]
    ct = rows["container: portability"]
    ct_ratio = ct / rows["container: testinfra docker backend (anchor)"]
    print(f"local / subprocess            = {local_ratio:.2f}x   (goal <= 1.2x)")
    print(f"container / testinfra docker  = {ct_ratio:.3f}x  (goal <= 0.05x); "
          f"container median {ct:.2f} ms (goal <= 3 ms)")
    print(f"container / docker-py exec_run = {ct / rows['container: docker-py exec_run']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
