"""certrl table: paper-style verification tables from certify / evaluate / attack results."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from certrl.report import FORMATS, build_tables, load_rows, render


def add_parser(sub) -> None:
    p = sub.add_parser(
        "table", help="verification table (md, latex, csv) from results files",
        description="Render verification tables from JSON lines written by certrl certify, "
                    "evaluate and attack: rows = agents (env, algo, loss), one table per env; "
                    "columns Natural | <ATTACK>@eps | ACR@eps per method. One seed: mean +- "
                    "std over episodes; several seeds: IQM and 95%% bootstrap CI over seeds.")
    p.add_argument("results", nargs="+", help="JSON lines files")
    p.add_argument("--format", choices=FORMATS, default="md")
    p.add_argument("--out", default=None, help="write the table here (default: stdout)")


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.results)
    tables = build_tables(rows)
    if not tables:
        raise ValueError("no episode results found in " + ", ".join(map(str, args.results)))
    text = render(tables, args.format)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, out)
        print(f"table: {out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0
