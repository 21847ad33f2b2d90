"""certrl audit: re-verify results files against their checkpoints (docs/audit.md)."""

from __future__ import annotations

import argparse

from certrl.audit import AuditOptions, audit
from certrl.commands.common import set_threads
from certrl.device import add_device_arg, configure_determinism, resolve_device

DESCRIPTION = """\
Re-verify the rows of certrl results files (certify, evaluate, attack), e.g. the
files a table was rendered from.

For each agent_id in the rows: load its checkpoint (the row's agent_label as a path
or shipped name, or --agent ID=PATH) and check that its identity hash (weights,
preprocessing, action space, threat model) is the recorded one. Check every row's
threat model, norm, eps space and descriptive fields against that agent, unit keys
and settings hashes, and every certify episode row against its state rows. Then
re-certify a random sample of state rows with the recorded method, eps and settings
(sound methods within float tolerance, smoothing with its recorded noise seed) and
re-run a random sample of episode rows (evaluate, attack, GWC, policy smoothing)
and compare their returns exactly.

Prints one verdict line per agent, per re-run row and per row failing a check, a
line per kind of row that cannot be re-run and per request with missing episodes
(GAP), and a one-line summary. Exit status: 0 all checked rows reproduced, 1 a
mismatch (with --strict also a row that cannot be re-run, or a gap), 2 a usage
error (unreadable file, no results, a checkpoint that cannot be loaded)."""


def add_parser(sub) -> None:
    """Register ``certrl audit`` and its options."""
    p = sub.add_parser("audit", help="re-verify results files against their checkpoints",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="JSON lines results files")
    p.add_argument("--sample", type=int, default=20, metavar="N",
                   help="re-run N random state rows and N random episode rows (default 20)")
    p.add_argument("--all", action="store_true", help="re-run every re-runnable row")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sample")
    p.add_argument("--agent", action="append", default=[], metavar="ID=PATH",
                   help="checkpoint of an agent (ID: >= 6 hex characters of its agent_id, "
                        "or its label) when the label no longer names it; repeatable")
    p.add_argument("--strict", action="store_true",
                   help="also fail on rows that cannot be re-run and on missing episodes")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--threads", type=int, default=1)
    add_device_arg(p)


def run(args: argparse.Namespace) -> int:
    """Run the audit; 0 if every check passed, 1 on a mismatch."""
    if args.sample < 0:
        raise ValueError(f"--sample must be >= 0; got {args.sample}")
    set_threads(args.threads)
    device = resolve_device(args.device)
    configure_determinism(device)
    opts = AuditOptions(sample=None if args.all else args.sample, seed=args.seed,
                        agents=list(args.agent), progress=not args.no_progress,
                        strict=args.strict, device=str(device))
    report = audit(args.results, opts)
    print(report.summary())
    return 0 if report.passed else 1
