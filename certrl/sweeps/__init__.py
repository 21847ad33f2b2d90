"""Sweeps: a YAML grid of ``certrl`` train runs and evaluate / certify / attack jobs, run
as Ray tasks (``certrl sweep``; docs/sweeps.md). ``spec``: parsing and grid expansion;
``units``: one unit's run, its completion marker and the skip logic; ``ray_run``: the
Ray tasks (Ray is optional and imported only there)."""

from certrl.sweeps.spec import Spec, Unit, expand, load_spec, parse_spec
from certrl.sweeps.units import is_done, plan, results_files, run_unit, table_args

__all__ = ["Spec", "Unit", "expand", "is_done", "load_spec", "parse_spec", "plan",
           "results_files", "run_unit", "table_args"]
