"""Verification tables from result rows: rows -> table model -> Markdown / LaTeX / CSV.

    rows = load_rows(["certify.jsonl", "attack.jsonl"])
    tables = build_tables(rows)
    print(render(tables, "md"))
"""

from __future__ import annotations

import os

from certrl.records import read_rows
from certrl.report.grouping import GroupSpec, parse_group
from certrl.report.model import AgentRow, Cell, Column, Table, bootstrap_ci, build_tables
from certrl.report.render import FORMATS, render, to_csv, to_latex, to_markdown


def load_rows(paths: list[str | os.PathLike]) -> list[dict]:
    """Rows of several JSON lines files (``certrl.records.read_rows``: an unterminated last
    line is skipped with a warning; ValueError naming file:line on a malformed row)."""
    rows = []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"no results file {p}")
        rows += read_rows(p)
    return rows


__all__ = ["AgentRow", "Cell", "Column", "FORMATS", "GroupSpec", "Table", "bootstrap_ci",
           "build_tables", "load_rows", "parse_group", "render", "to_csv", "to_latex",
           "to_markdown"]
