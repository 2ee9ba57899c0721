"""`portability merge | report | baseline update | matrix` subcommands (argparse)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add the report subcommands to the `portability` CLI; each sets ``func(args) -> int``."""
    raise NotImplementedError
