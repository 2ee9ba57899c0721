"""The `portability` command: targets, facts, clean, and the subcommands other modules register."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from portability.errors import PortabilityError

#: Modules that add subcommands through ``register(subparsers)``.
COMMAND_MODULES = (
    "portability.images",
    "portability.kernels",
    "portability.report.commands",
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PortabilityError as exc:
        print(f"portability: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portability", description=__doc__)
    parser.add_argument("--targets-file", metavar="PATH",
                        help="targets.yaml to read (default: ./targets.yaml)")
    sub = parser.add_subparsers(metavar="COMMAND")

    targets = sub.add_parser("targets", help="what targets.yaml declares")
    targets_sub = targets.add_subparsers(metavar="ACTION")
    listing = targets_sub.add_parser("list", help="list targets and whether each engine is reachable")
    listing.add_argument("--no-check", action="store_true", help="do not probe the engines")
    listing.set_defaults(func=cmd_targets_list)

    facts = sub.add_parser("facts", help="start a target, print its facts, remove it")
    facts.add_argument("name")
    facts.add_argument("--json", action="store_true", help="print JSON")
    facts.set_defaults(func=cmd_facts)

    clean = sub.add_parser("clean", help="remove what crashed runs left behind")
    clean.set_defaults(func=cmd_clean)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def load_config(args):
    from portability.config import default_config, find_targets_file, load

    path = find_targets_file(args.targets_file, Path.cwd(), None)
    return load(path) if path else default_config(Path.cwd())


def cmd_targets_list(args) -> int:
    from portability.targets import target_class

    config = load_config(args)

    def check(name):
        spec = config.targets[name]
        if args.no_check:
            return ""
        try:
            reason = target_class(spec.kind).check_engine(spec, config.base_dir)
        except Exception as exc:  # noqa: BLE001 — report, never crash the listing
            reason = f"{type(exc).__name__}: {exc}"
        return "ok" if reason is None else f"unavailable: {reason}"

    names = list(config.targets)
    with ThreadPoolExecutor(max_workers=8) as pool:
        states = list(pool.map(check, names))
    width = max(len(n) for n in names) if names else 4
    groups = {n: [g for g, members in config.groups.items() if n in members] for n in names}
    for name, state in zip(names, states):
        spec = config.targets[name]
        detail = _spec_summary(spec)
        in_groups = f"  groups: {','.join(groups[name])}" if groups[name] else ""
        print(f"{name:<{width}}  {spec.kind:<9}  {detail}{in_groups}  {state}".rstrip())
    return 0


def _spec_summary(spec) -> str:
    for key in ("image", "build", "kernel", "host", "box", "vagrantfile_dir"):
        value = getattr(spec, key, None)
        if value:
            return f"{key}={value}"
    return ""


def cmd_facts(args) -> int:
    from portability.pool import TargetPool
    from portability.session import new_session_id

    config = load_config(args)
    if args.name not in config.targets:
        config.select(args.name)  # raises the usual "unknown target" error with the list
    pool = TargetPool({args.name: config.targets[args.name]}, session=new_session_id(),
                      base_dir=config.base_dir)
    try:
        pool.acquire(args.name)
        facts = pool.states[args.name].facts.as_dict()
    finally:
        pool.close()
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:<20} {value}")
    return 0


def cmd_clean(args) -> int:
    """Containers, Vagrant machines and temp dirs of sessions whose process is gone."""
    removed: list[str] = []
    engine_urls: list[str | None] = [None]
    try:
        config = load_config(args)
        engine_urls += [getattr(s, "engine_url", None) for s in config.targets.values()
                        if s.kind == "container"]
    except PortabilityError:
        pass  # cleaning must work even when targets.yaml is broken
    from portability.targets import KIND_MODULES

    for kind, module_name in KIND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 — a kind whose engine library is missing has nothing to clean
            continue
        cleaner = getattr(module, "clean_stale", None)
        if cleaner is None:
            continue
        try:
            removed += cleaner(engine_urls) if kind == "container" else cleaner()
        except Exception as exc:  # noqa: BLE001
            print(f"portability: clean {kind}: {exc}", file=sys.stderr)
    removed += _clean_temp_dirs()
    for line in removed:
        print(f"removed {line}")
    print(f"{len(removed)} leftover(s) removed")
    return 0


def _clean_temp_dirs() -> list[str]:
    removed = []
    for path in Path(tempfile.gettempdir()).glob("portability-*"):
        parts = path.name.split("-")
        # portability-<YYYYmmddHHMMSS>-<pid>-<hex>-...
        if len(parts) < 4 or not parts[2].isdigit() or not path.is_dir():
            continue
        if _pid_alive(int(parts[2])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(f"temp dir {path}")
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(main())
