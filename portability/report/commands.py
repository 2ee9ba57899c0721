"""`portability merge | report | gate | baseline update | matrix` subcommands (argparse).

Exit codes: 0 success, 1 the gate failed, 2 a usage error (the CLI prints the one-line
PortabilityError message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from portability.errors import ConfigError


def register(subparsers) -> None:
    """Add the report subcommands to the `portability` CLI; each sets ``func(args) -> int``."""
    merge = subparsers.add_parser("merge", help="merge CI shard reports into one report")
    merge.add_argument("shards", nargs="+", metavar="SHARD", help="shard JSON reports")
    merge.add_argument("-o", "--output", required=True, metavar="OUT", help="merged JSON report")
    merge.add_argument("--html", metavar="PATH", help="also write the HTML report")
    merge.set_defaults(func=cmd_merge)

    report = subparsers.add_parser("report", help="render a JSON report as HTML (or the terminal matrix)")
    report.add_argument("report", metavar="REPORT", help="a JSON report")
    report.add_argument("-o", "--output", metavar="OUT", help="HTML file to write "
                        "(without it, print the terminal matrix)")
    report.add_argument("-v", "--verbose", action="store_true", help="terminal: every row")
    report.set_defaults(func=cmd_report)

    gate = subparsers.add_parser("gate", help="exit 1 when a report has undeclared divergences "
                                 "(or, with --baseline, new divergences or regressions)")
    gate.add_argument("report", metavar="REPORT")
    gate.add_argument("--baseline", metavar="FILE", help="a previous report / baseline")
    gate.set_defaults(func=cmd_gate)

    baseline = subparsers.add_parser("baseline", help="baseline files for the release gate")
    baseline_sub = baseline.add_subparsers(metavar="ACTION")
    update = baseline_sub.add_parser("update", help="write a baseline from a report")
    update.add_argument("report", metavar="REPORT")
    update.add_argument("-o", "--output", required=True, metavar="BASELINE")
    update.set_defaults(func=cmd_baseline_update)
    baseline.set_defaults(func=lambda args: _usage(baseline))

    matrix = subparsers.add_parser("matrix", help="print a CI job matrix of the targets")
    matrix.add_argument("--format", choices=("github", "gitlab", "json"), default="github")
    matrix.add_argument("--targets", metavar="EXPR", help="selection expression (default: all)")
    matrix.add_argument("--by", choices=("target", "group"), default="target",
                        help="one job per target (default) or per group")
    matrix.add_argument("--runner", default="ubuntu-latest", metavar="LABEL",
                        help="runner label for targets that do not name one (default: %(default)s)")
    # SUPPRESS keeps the top-level `portability --targets-file` value when not repeated here.
    matrix.add_argument("--targets-file", metavar="PATH", default=argparse.SUPPRESS,
                        help="targets.yaml to read (default: ./targets.yaml)")
    matrix.set_defaults(func=cmd_matrix)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_merge(args) -> int:
    from portability.report.json_report import load_report, write_atomic, write_text_atomic
    from portability.report.merge import merge

    shards = [(path, load_report(path)) for path in args.shards]
    report = merge(shards)
    write_atomic(Path(args.output), report)
    if args.html:
        from portability.report.html import render_html

        write_text_atomic(Path(args.html), render_html(report))
    s = report["summary"]
    print(f"merged {len(shards)} shard(s) into {args.output}: {s['tests']} tests on "
          f"{s['targets']} targets: {s['consistent']} consistent, {s['divergent']} divergent")
    return 0


def cmd_report(args) -> int:
    from portability.report.json_report import load_report, write_text_atomic

    report = load_report(args.report)
    if args.output:
        from portability.report.html import render_html

        write_text_atomic(Path(args.output), render_html(report))
        print(f"wrote {args.output}")
        return 0
    from portability.report.terminal import render_matrix

    import shutil

    color = sys.stdout.isatty()
    for line in render_matrix(report, width=shutil.get_terminal_size().columns, color=color,
                              verbose=args.verbose):
        print(line)
    return 0


def cmd_gate(args) -> int:
    from portability.analysis import gate
    from portability.report.json_report import load_report

    report = load_report(args.report)
    baseline = load_report(args.baseline) if args.baseline else None
    result = gate(report, baseline)
    for line in result.lines():
        print(line)
    return 0 if result.ok else 1


def cmd_baseline_update(args) -> int:
    from portability.report.json_report import load_report, write_atomic

    report = load_report(args.report)
    baseline = dict(report)
    baseline["baseline_of"] = {"file": str(args.report), "session": report.get("session"),
                               "created": report.get("created")}
    write_atomic(Path(args.output), baseline)
    s = report["summary"]
    print(f"wrote baseline {args.output} from {args.report}: {s['tests']} tests, "
          f"{s['divergent']} known divergence(s)")
    return 0


def matrix_entries(config, names: list[str], *, by: str, default_runner: str) -> list[dict[str, Any]]:
    """One CI job per target (or per group): what `pytest --targets=` gets and where it runs."""
    def runner(name: str) -> str:
        return getattr(config.targets[name], "runner", None) or default_runner

    if by == "group":
        entries = []
        covered: set[str] = set()
        for group, members in config.groups.items():
            chosen = [m for m in members if m in names]
            # Overlapping groups would run a target in two shards; the first group wins.
            if not chosen or covered.intersection(chosen):
                continue
            runners = sorted({runner(m) for m in chosen})
            if len(runners) > 1:
                raise ConfigError(f"group {group!r} mixes runner labels {', '.join(runners)}; "
                                  "use --by target or split the group")
            entries.append({"name": group, "targets": group, "runner": runners[0]})
            covered.update(chosen)
        for name in names:  # targets in no group still get a job
            if name not in covered:
                entries.append({"name": name, "targets": name, "runner": runner(name)})
        return entries
    return [{"name": n, "targets": n, "kind": config.targets[n].kind, "runner": runner(n)}
            for n in names]


def cmd_matrix(args) -> int:
    from portability.config import default_config, find_targets_file, load

    path = find_targets_file(getattr(args, "targets_file", None), Path.cwd(), None)
    config = load(path) if path else default_config(Path.cwd())
    names = config.select(args.targets or "all") if (args.targets or path) else config.select(None)
    entries = matrix_entries(config, names, by=args.by, default_runner=args.runner)
    if args.format == "json":
        print(json.dumps(entries, indent=1))
    elif args.format == "github":
        # strategy.matrix: `matrix: ${{ fromJSON(needs.plan.outputs.matrix) }}`; each entry
        # has `targets` for `pytest --targets=${{ matrix.targets }}` and `runner` for runs-on.
        print(json.dumps({"include": entries}))
    else:
        import yaml

        jobs = [{"PORTABILITY_TARGETS": e["targets"], "PORTABILITY_RUNNER": e["runner"]}
                for e in entries]
        print(yaml.safe_dump({"parallel": {"matrix": jobs}}, sort_keys=False).rstrip())
    return 0
