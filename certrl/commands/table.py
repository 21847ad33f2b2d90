"""certrl table: paper-style verification tables from certify / evaluate / attack results."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from certrl.records import check_writable, write_text_atomic
from certrl.report import FORMATS, build_tables, load_rows, parse_group, render

DESCRIPTION = """\
Render verification tables from JSON lines written by certrl certify, evaluate and
attack; one table per env.

Rows: one row per agent identity (agent_id: hash of weights, preprocessing, action
space and threat model), labelled with the agent label and an 8-hex id prefix; its
cells are mean +- std over that agent's episodes. Agents merge into one row of seeds
only when the results say so: the same run_group (written by certrl train for runs
that differ only in the seed) or a --group you declare; such a row shows the IQM of
the per-seed means with a 95% bootstrap CI over seeds, and a cell with fewer seeds
than the group is marked n=k/m. Two different agents with the same seed in one
group are an error. Rows of older files without agent_id are shown one per
(checkpoint, seed), labelled legacy.

Columns: keyed by kind, attack or method, norm, eps and eps space: l_2 and l_inf
results never share a column; headers name the norm (PGD l2 @0.05).

Truncated episodes (cut by --max-steps) are left out of return cells and counted
(mark: dagger k; n/a when none is complete); ACR cells keep them (mark: double
dagger k)."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "table", help="verification table (md, latex, csv) from results files",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON lines files")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--out", default=None,
                   help="write the table here (default: stdout); an existing file is "
                        "refused unless --force")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--group", action="append", default=[], metavar="LABEL=MEMBER,...",
                   type=_group_arg,
                   help="declare a seed group shown as one row LABEL; each MEMBER is an "
                        "agent label (checkpoint path or shipped name, as given to the "
                        "command) or >= 6 hex chars of an agent_id; repeatable")
    p.add_argument("--by-agent", action="store_true",
                   help="one row per agent identity: do not merge agents by run_group")


def _group_arg(text: str):
    try:
        return parse_group(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_table_out(path: str | os.PathLike, force: bool) -> Path:
    """--out as a Path: writable, and new unless ``force``; one-line ValueError otherwise."""
    out = check_writable(path)
    if out.exists() and not force:
        raise ValueError(f"{out} exists: use another --out, or --force to overwrite it")
    return out


def run(args: argparse.Namespace) -> int:
    out = check_table_out(args.out, args.force) if args.out else None
    rows = load_rows(args.results)
    tables = build_tables(rows, groups=args.group, by_agent=args.by_agent)
    if not tables:
        raise ValueError("no episode results found in " + ", ".join(map(str, args.results)))
    text = render(tables, args.format)
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    write_text_atomic(out, text)
    print(f"table: {out}")
    return 0
