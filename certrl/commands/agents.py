"""certrl agents: list the agents shipped inside the package."""

from __future__ import annotations

import argparse
import json

from certrl.agent import AGENTS_DIR, shipped_agents
from certrl.records import check_writable, write_jsonl


def add_parser(sub) -> None:
    p = sub.add_parser("agents", help="list shipped agents (load them by name)",
                       description="List the agents shipped in certrl/agents/.")
    p.add_argument("--out", default=None, help="also write them as JSON lines")


def run(args: argparse.Namespace) -> int:
    if args.out:
        check_writable(args.out)
    rows = []
    for name in shipped_agents():
        side = AGENTS_DIR / f"{name}.json"
        info = json.loads(side.read_text()) if side.exists() else {}
        rows.append({"record": "agent", "name": name, **info})
    if not rows:
        print("no shipped agents")
    for r in rows:
        ret = r.get("eval_return_mean")
        ret_s = f"return {ret:.1f}" if isinstance(ret, (int, float)) else ""
        print(f"{r['name']:32s} {r.get('env_id', '?'):16s} {r.get('algo', '?'):4s} "
              f"{r.get('loss', '?'):10s} {ret_s}")
    if args.out:
        write_jsonl(args.out, rows)
    return 0
