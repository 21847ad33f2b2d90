"""Verification tables from result rows: rows -> table model -> Markdown / LaTeX / CSV.

    rows = load_rows(["certify.jsonl", "attack.jsonl"])
    tables = build_tables(rows)
    print(render(tables, "md"))
"""

from __future__ import annotations

import json
import os

from certrl.report.grouping import GroupSpec, parse_group
from certrl.report.model import AgentRow, Cell, Column, Table, bootstrap_ci, build_tables
from certrl.report.render import FORMATS, render, to_csv, to_latex, to_markdown


def load_rows(paths: list[str | os.PathLike]) -> list[dict]:
    """Rows of several JSON lines files; ValueError naming the file/line on bad input."""
    rows = []
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no results file {p}")
        with open(p) as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{i}: not a JSON line ({e})") from None
                if not isinstance(r, dict):
                    raise ValueError(f"{p}:{i}: expected a JSON object")
                rows.append(r)
    return rows


__all__ = ["AgentRow", "Cell", "Column", "FORMATS", "GroupSpec", "Table", "bootstrap_ci",
           "build_tables", "load_rows", "parse_group", "render", "to_csv", "to_latex",
           "to_markdown"]
