"""``certrl`` command line: one subcommand per module in ``certrl.commands``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Modules that are not (yet) present are skipped, so the CLI works while parts of
the toolkit are missing.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("train", "evaluate", "attack", "agents", "certify", "table", "demo")


def _load_commands() -> dict:
    mods = {}
    for name in COMMANDS:
        modname = f"certrl.commands.{name}"
        try:
            mods[name] = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:  # a real missing dependency inside the module
                raise
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="certrl",
        description="Certify, train, attack and tabulate robust deep-RL policies.",
    )
    from certrl import __version__

    parser.add_argument("--version", action="version", version=f"certrl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = _load_commands()
    for mod in mods.values():
        mod.add_parser(sub)
    return parser, mods


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``certrl`` console script; returns the exit code."""
    from certrl.io import CheckpointError

    parser, mods = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message printed)
        return int(e.code or 0)
    args.argv = ["certrl", *(sys.argv[1:] if argv is None else argv)]
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(mods[args.command].run(args) or 0)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"certrl {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"certrl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
