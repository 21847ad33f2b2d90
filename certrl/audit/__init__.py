"""``certrl audit``: re-verify a results table against its checkpoints (docs/audit.md).

For each agent id in the rows: find its checkpoint (label as path or shipped
name, or ``--agent ID=PATH``) and check its identity hash; check every row's
threat model and descriptive fields; re-certify a random sample of state rows
with the recorded method, eps and settings; re-run a random sample of episode
rows (evaluate, attack, GWC, policy smoothing) and compare returns exactly.
"""

from certrl.audit.runner import AuditOptions, AuditReport, audit
from certrl.audit.verdict import MISMATCH, OK, SKIP, Verdict

__all__ = ["MISMATCH", "OK", "SKIP", "AuditOptions", "AuditReport", "Verdict", "audit"]
