"""Report writing at scale: a synthetic 2,000 tests x 5 targets run.

Times build_report (analysis included), the JSON write, render_html + its write, and the
terminal matrix, and prints them against an anchor measured in the same run (json.dumps of
the finished report, the cheapest possible serialisation). Goal (issue 6): JSON and HTML
written in <= 2 s.

    python3 bench/bench_reports.py [--tests 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portability.analysis import Cell, TargetInfo  # noqa: E402
from portability.report.html import render_html  # noqa: E402
from portability.report.json_report import build_report, write_atomic, write_text_atomic  # noqa: E402
from portability.report.terminal import render_matrix  # noqa: E402

FACTS = dict(kernel_release="6.1.0-50-amd64", arch="x86_64", os_id="debian", os_version_id="12",
             libc="glibc", libc_version="2.36", python="3.11.2", virtualization="none",
             shares_host_kernel=True, cgroup_version=2)


def synthetic(n_tests: int) -> tuple[list[TargetInfo], list[Cell], dict]:
    targets = [TargetInfo("local", "local", "ready", facts=FACTS, ready_s=0.0)]
    for name, version, libc, py in (("debian-11", "11", "2.31", "3.9.2"), ("debian-12", "12", "2.36", "3.11.2"),
                                    ("debian-13", "13", "2.41", "3.13.5"), ("busybox", None, None, None)):
        targets.append(TargetInfo(name, "container", "ready", ready_s=0.7, facts=dict(
            FACTS, os_id="debian" if version else "busybox", os_version_id=version,
            libc="glibc" if libc else "musl", libc_version=libc, python=py, virtualization="container")))
    cells, observations = [], {}
    for i in range(n_tests):
        test_id = f"suites/test_generated_{i // 100:02d}.py::test_behaviour_{i:05d}[param-{i % 7}]"
        for t in targets:
            outcome, message, reruns = "passed", None, ()
            if i % 10 == 3 and t.name == "debian-11":
                outcome, message = "failed", f"AssertionError: case {i} needs glibc >= 2.34"
            elif i % 25 == 7 and t.kind == "container":
                outcome, message = "failed", "PermissionError: no init in a container"
            elif i % 40 == 11 and t.name == "busybox":
                outcome, message = "skipped", "needs python"
            elif i == 5 and t.name == "local":
                reruns = ("failed",)
            cells.append(Cell(test_id, t.name, outcome, duration_s=0.0021, message=message, reruns=reruns))
        if i % 50 == 0:
            observations[test_id] = {"version": {t.name: "1.0" if t.name != "debian-11" else "0.9"
                                                 for t in targets}}
    return targets, cells, observations


def timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    targets, cells, observations = synthetic(args.tests)

    with tempfile.TemporaryDirectory(prefix="bench-reports-") as tmp:
        out = Path(tmp)
        t_build, report = timed(lambda: build_report(
            session="bench", created="2026-11-30T00:00:00+00:00", targets=targets, cells=cells,
            observations=observations), args.repeat)
        t_anchor, _ = timed(lambda: json.dumps(report), args.repeat)
        t_json, _ = timed(lambda: write_atomic(out / "report.json", report), args.repeat)
        t_render, page = timed(lambda: render_html(report), args.repeat)
        t_html_write, _ = timed(lambda: write_text_atomic(out / "report.html", page), args.repeat)
        t_matrix, _ = timed(lambda: render_matrix(report, width=140, verbose=True), args.repeat)
        json_size = (out / "report.json").stat().st_size
        html_size = (out / "report.html").stat().st_size

    s = report["summary"]
    print(f"synthetic run: {s['tests']} tests x {s['targets']} targets = {len(cells)} cells; "
          f"{s['divergent']} divergent {s['by_verdict']}")
    print(f"best of {args.repeat}; anchor = json.dumps of the report: {t_anchor * 1000:.1f} ms")
    rows = [
        ("build_report (rows, verdicts, attribution)", t_build),
        ("write JSON (atomic, fsync)", t_json),
        ("render_html", t_render),
        ("write HTML (atomic, fsync)", t_html_write),
        ("render_matrix (-v, every row)", t_matrix),
    ]
    for label, seconds in rows:
        print(f"  {label:<44} {seconds * 1000:8.1f} ms  {seconds / t_anchor:6.1f}x anchor")
    total = t_build + t_json + t_render + t_html_write
    print(f"  {'JSON + HTML written (build+json+html)':<44} {total * 1000:8.1f} ms  "
          f"{total / t_anchor:6.1f}x anchor   goal <= 2000 ms: {'met' if total <= 2.0 else 'NOT met'}")
    print(f"  sizes: JSON {json_size / 1e6:.2f} MB, HTML {html_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
