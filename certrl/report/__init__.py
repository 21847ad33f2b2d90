"""Verification tables from result rows: rows -> table model -> Markdown / LaTeX / CSV.

    rows = load_rows(["certify.jsonl", "attack.jsonl"])
    tables = build_tables(rows)
    tables = select(tables, Layout(methods=("ibp", "crown"), eps=(0.01,)))
    print(render(tables, "latex", Style(float_env="table*", resize=True)))

The benchmarks build the same model from per-seed values (``value_table``): one
aggregation (IQM + percentile bootstrap over seeds) and one renderer for every table.
"""

from __future__ import annotations

import os

from certrl.records import read_rows
from certrl.report.grouping import GroupSpec, parse_group
from certrl.report.layout import AXES, KINDS, Layout, select, transpose
from certrl.report.model import (
    AgentRow,
    Cell,
    Column,
    Table,
    bootstrap_ci,
    build_tables,
    iqm,
    mark_best,
    value_table,
)
from certrl.report.render import FLOATS, FORMATS, Style, render, to_csv, to_latex, to_markdown


def load_rows(paths: list[str | os.PathLike]) -> list[dict]:
    """Rows of several JSON lines files (``certrl.records.read_rows``: an unterminated last
    line is skipped with a warning; ValueError naming file:line on a malformed row)."""
    rows = []
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"no results file {p}")
        rows += read_rows(p)
    return rows


__all__ = ["AXES", "AgentRow", "Cell", "Column", "FLOATS", "FORMATS", "GroupSpec", "KINDS",
           "Layout", "Style", "Table", "bootstrap_ci", "build_tables", "iqm", "load_rows",
           "mark_best", "parse_group", "render", "select", "to_csv", "to_latex", "to_markdown",
           "transpose", "value_table"]
