"""``certrl`` command line: one subcommand per module in ``certrl.commands``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from certrl.commands import (
    agents,
    attack,
    audit,
    certify,
    demo,
    evaluate,
    export,
    import_policy,
    plot,
    sweep,
    table,
    train,
)
from certrl.io import CERTRL_VERSION, CheckpointError

COMMANDS = {"train": train, "evaluate": evaluate, "attack": attack, "agents": agents,
            "certify": certify, "table": table, "demo": demo, "plot": plot,
            "export": export,
            "import": import_policy, "audit": audit, "sweep": sweep}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="certrl",
        description="Certify, train, attack and tabulate robust deep-RL policies.",
    )
    parser.add_argument("--version", action="version", version=f"certrl {CERTRL_VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMANDS.values():
        mod.add_parser(sub)
    return parser, dict(COMMANDS)


def _about_out(e: OSError, args: argparse.Namespace) -> bool:
    """Whether ``e`` concerns the command's ``--out`` path (the file, a folder above it, or
    a file inside an ``--out`` folder): a user error, not a bug."""
    out = getattr(args, "out", None)
    if not out or e.filename is None:
        return False
    f = Path(os.fsdecode(e.filename)).absolute()
    o = Path(out).absolute()
    return f == o or f in o.parents or o in f.parents


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured)
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``certrl`` console script; returns the exit code."""
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
    except BrokenPipeError:  # stdout closed early (certrl ... | head): stop quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as a shell reports it
    except OSError as e:
        if not _about_out(e, args):
            raise
        print(f"certrl {args.command}: error: cannot write {os.fsdecode(e.filename)}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"certrl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
