"""certrl plot: paper figures (PNG or vector PDF) from certify / evaluate / attack results."""

from __future__ import annotations

import argparse

from certrl.commands.common import eps_arg, positive_int
from certrl.commands.table import check_table_out
from certrl.report import load_rows, parse_group
from certrl.report.figures import KINDS, figure_format, save_figure

DESCRIPTION = """\
Draw one figure from JSON lines written by certrl certify, evaluate and attack
(format from --out: .png or .pdf; the same rows give the same bytes).

Kinds:
  certified-fraction  fraction of visited states whose certified radius (certify
                      state rows) is >= eps, vs eps (curve), and the fraction
                      certified at each eps certify was run with (markers)
  acr                 ACR (certified steps / steps) vs eps, per method
  attack              episode return under each attack vs eps; natural return as a black level
  iqm                 per table column at one eps (--eps, default the largest): seed
                      groups as IQM of per-seed means with 95% bootstrap CI over seeds,
                      single agents as their mean over episodes (no CI)

Series are the rows of certrl table (agent identities, run groups, --group), one per
(row, method or attack, norm, eps space, settings): different agents or threat models
never share a curve. A seed group's curve is the IQM over its seeds with the 95%
bootstrap CI as a band. Colours: Okabe-Ito (colour-blind safe), one per method."""


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="figure (png, pdf) from results files",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON lines files")
    p.add_argument("--kind", required=True, choices=KINDS, help="the figure (see above)")
    p.add_argument("--out", required=True, help="FIG.png or FIG.pdf; an existing file is "
                                                "refused unless --force")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.add_argument("--eps", type=eps_arg, default=None,
                   help="iqm: the eps of the columns shown (default: the largest)")
    p.add_argument("--eps-max", type=eps_arg, default=None,
                   help="certified-fraction: right end of the eps axis (default: the "
                        "largest eps certified)")
    p.add_argument("--dpi", type=positive_int, default=150,
                   help="PNG resolution (default 150; a PDF is vector)")
    p.add_argument("--group", action="append", default=[], metavar="LABEL=MEMBER,...",
                   type=_group_arg, help="declare a seed group, as in certrl table")
    p.add_argument("--by-agent", action="store_true",
                   help="one series per agent identity: do not merge agents by run_group")


def _group_arg(text: str):
    try:
        return parse_group(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    if args.kind not in KINDS:
        raise ValueError(f"unknown figure kind {args.kind!r}; choose one of {', '.join(KINDS)}")
    figure_format(args.out)
    out = check_table_out(args.out, args.force)
    rows = load_rows(args.results)
    path = save_figure(rows, args.kind, out, dpi=args.dpi, groups=args.group,
                       by_agent=args.by_agent, eps=args.eps, eps_max=args.eps_max)
    print(f"figure: {path}")
    return 0
