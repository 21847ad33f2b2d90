"""Verdicts and the comparison rules of ``certrl audit``.

A recorded value ``a`` and a re-computed one ``b`` agree when:

* booleans, integers and strings: ``a == b``;
* floats: |a - b| <= atol + rtol * |b| (both infinite of the same sign, or both
  NaN, also agree); the tolerances are chosen per field by the caller
  (``Tol``): exact for returns, float32 rounding of the network outputs for Q
  values and margins, the radius search's own resolution for radii;
* lists: same length and every entry agrees.

JSON writes non-finite floats as the strings "inf" / "-inf" / "nan"; they are
read back as floats before comparing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

OK, MISMATCH, SKIP = "OK", "MISMATCH", "NOT REPLAYABLE"


@dataclass
class Verdict:
    """The outcome of one check: ``status`` (OK / MISMATCH / NOT REPLAYABLE), where
    (``file:line`` or an agent), what was checked and the details."""

    status: str
    where: str
    what: str
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True for an OK verdict."""
        return self.status == OK

    def line(self) -> str:
        """The verdict as one printed line."""
        text = f"{self.status:<8} {self.where}  {self.what}"
        return text + (": " + "; ".join(self.details) if self.details else "")


@dataclass(frozen=True)
class Tol:
    """|a - b| <= atol + rtol * |b|."""

    atol: float = 0.0
    rtol: float = 0.0


EXACT = Tol()


def as_float(v) -> float | None:
    """A JSON number or "inf" / "-inf" / "nan" string as a float (None if neither)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("inf", "-inf", "nan", "Infinity", "-Infinity", "NaN"):
        return float(v.replace("Infinity", "inf").replace("NaN", "nan"))
    return None


def floats_agree(a: float, b: float, tol: Tol) -> bool:
    """|a - b| <= atol + rtol |b|; equal infinities and two NaNs agree."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= tol.atol + tol.rtol * abs(b)


def agree(a, b, tol: Tol = EXACT) -> bool:
    """Whether recorded ``a`` and re-computed ``b`` agree (rules in the module doc)."""
    if isinstance(b, bool) or isinstance(a, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(
            agree(x, y, tol) for x, y in zip(a, b))
    if isinstance(b, float) or (isinstance(a, float) and isinstance(b, int)):
        fa = as_float(a)
        return fa is not None and floats_agree(fa, float(b), tol)
    if isinstance(b, int):
        return isinstance(a, int) and a == b
    return a == b


def short(v) -> str:
    """A compact rendering of a value for a verdict line."""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        inner = ", ".join(short(x) for x in list(v)[:6])
        return f"[{inner}{', ...' if len(v) > 6 else ''}]"
    return repr(v)


def compare_fields(recorded: dict, fresh: dict, tols: dict[str, Tol],
                   default: Tol = EXACT) -> list[str]:
    """One message per key of ``fresh`` whose recorded value does not agree.

    ``recorded`` maps keys to the row's values (a missing key reads as None)."""
    out = []
    for key, b in fresh.items():
        a = recorded.get(key)
        tol = tols.get(key, default)
        if not agree(a, b, tol):
            extra = f" (tol {tol.atol:.3g} + {tol.rtol:.3g}*|x|)" if tol != EXACT else ""
            out.append(f"{key}: recorded {short(a)}, re-run {short(b)}{extra}")
    return out
