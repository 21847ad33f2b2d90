"""certrl table: paper-style verification tables from certify / evaluate / attack results."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from certrl.commands.common import eps_arg
from certrl.records import check_writable, write_text_atomic
from certrl.report import (
    AXES,
    FLOATS,
    FORMATS,
    KINDS,
    Layout,
    Style,
    build_tables,
    load_rows,
    parse_group,
    render,
    select,
    transpose,
)

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
results never share a column; headers name the norm (PGD l2 @0.05). Kinds: natural
(return without attack; from certify's rollouts when no evaluate rows), attack
(attacked return), acr (certified fraction of the steps), radius (mean certified
radius), deviation (continuous actions, e.g. PPO: mean certified bound on the largest
action change; lower is better), gwc (greedy worst case, a heuristic), ps (policy
smoothing). --columns / --methods / --attacks / --eps select and order them;
--transpose eps|methods moves eps or the method to the rows.

LaTeX: a booktabs tabular in a table (or table*) float with caption and label; cells
IQM [CI] or mean +- std in compact form, CI rounded outwards; best per column bold.
CSV: one line per cell with every number at full precision.

Truncated episodes (cut by --max-steps) are left out of return cells and counted
(mark: dagger k; n/a when none is complete); ACR cells keep them (mark: double
dagger k)."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "table", help="verification table (md, latex, csv) from results files",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        fromfile_prefix_chars="@")
    p.add_argument("results", nargs="+",
                   help="JSON lines files; @FILE reads arguments from FILE, one per line "
                        "(certrl sweep writes OUT/table.args)")
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
    add_layout_args(p)


def add_layout_args(p: argparse.ArgumentParser) -> None:
    """--columns / --methods / --attacks / --eps / --transpose and the LaTeX float flags."""
    g = p.add_argument_group("layout")
    kinds = [k for k in KINDS if k != "metric"]  # metric: benchmark tables only
    g.add_argument("--columns", nargs="+", choices=kinds, default=[], metavar="KIND",
                   help="column kinds to show, in this order: " + ", ".join(kinds))
    g.add_argument("--methods", nargs="+", default=[], metavar="METHOD",
                   help="certificate methods to show (acr / radius / deviation / gwc / ps "
                        "columns), in this order")
    g.add_argument("--attacks", nargs="+", default=[], metavar="ATTACK",
                   help="attacks to show, in this order")
    g.add_argument("--eps", nargs="+", type=eps_arg, default=[], metavar="EPS",
                   help="eps to show (also 1/255), in this order")
    g.add_argument("--transpose", choices=AXES, default=None,
                   help="put eps (or the certificate methods) on the rows: one sub-row per "
                        "eps (method) under each agent (md and latex; csv is long anyway)")
    g.add_argument("--float", dest="float_env", choices=FLOATS, default="table",
                   help="LaTeX float: table (one column), table* (both columns of a "
                        "two-column paper; quote it in a shell) or none (bare tabular)")
    g.add_argument("--caption", default=None,
                   help="caption text (LaTeX source for --format latex), replacing the "
                        "generated one")
    g.add_argument("--label", default=None,
                   help="LaTeX label (suffixed with -<env> when there are several tables)")
    g.add_argument("--resize", action="store_true",
                   help="LaTeX: scale the tabular to the line width (\\resizebox; needs "
                        "graphicx)")


def layout_of(args: argparse.Namespace) -> Layout:
    """The Layout the flags ask for (transposition only for md / latex)."""
    return Layout(tuple(args.columns), tuple(args.methods), tuple(args.attacks),
                  tuple(args.eps), args.transpose if args.format != "csv" else None)


def style_of(args: argparse.Namespace) -> Style:
    return Style(float_env=args.float_env, caption=args.caption, label=args.label,
                 resize=args.resize)


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
    layout = layout_of(args)
    tables = select(tables, layout)
    if layout.transpose:
        tables = transpose(tables, layout.transpose)
    text = render(tables, args.format, style_of(args))
    if out is None:
        print(text, end="" if text.endswith("\n") else "\n")
        return 0
    write_text_atomic(out, text)
    print(f"table: {out}")
    return 0
