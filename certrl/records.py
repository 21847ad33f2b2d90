"""Results files: JSON lines, one reader, locked appends, ``--out`` checks.

* ``read_rows``: the project's one JSON lines reader (see its rules).
* ``append_rows_atomic`` / ``UnitLog``: appends under an exclusive ``fcntl.flock``
  on the results file, so concurrent writers lose nothing and repeat no unit.
* ``check_writable`` / ``check_out``: refuse a bad ``--out`` before any work.
* ``write_jsonl``: a whole file written atomically (temp file + rename).
* ``agent_fields``: the identifying fields of every result row.
* Row types (``EpisodeRow``, ``StateRow``, ``CertEpisodeRow``, ``GwcRow``,
  ``TrajectoryBoundRow``; ``row_from_json`` picks one): typed result rows with
  ``to_json`` / ``from_json``. Keys a type does not declare are kept, in order,
  in ``extra`` and written back unchanged (rows of newer versions and
  method-specific fields survive a round trip); a declared key missing from a
  row (older files) reads as None. ``to_json`` writes declared fields in
  declaration order, then ``extra``: the same keys and values as before the
  types existed (JSON objects are unordered), so old files still read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from certrl.agent import Agent
from certrl.device import device_label
from certrl.envs import env_version
from certrl.identity import agent_identity
from certrl.io import library_versions, umask

# certify methods whose episode rows are GwcRow (the registry, certrl.certify.methods, sits
# above this module; tests check that this list matches its GWC methods)
GWC_METHODS = ("gwc-ibp", "gwc-crown", "gwc")


def clean(v):
    """JSON-safe values: non-finite floats become strings ('inf', 'nan')."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return clean(v.item())
    return v


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text, or bytes such as a figure) through a temp file in the same
    folder, fsync, rename: readers never see a partial file; on error nothing is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~umask())
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically (``write_atomic``)."""
    return write_atomic(path, text)


def write_jsonl(path: str | os.PathLike, records: Iterable[Row | dict]) -> Path:
    """Write ``records`` one JSON object per line, atomically (``write_text_atomic``)."""
    lines = [json.dumps(clean(as_json(r)), sort_keys=False) for r in records]
    return write_text_atomic(path, "\n".join(lines) + ("\n" if lines else ""))


# ------------------------------------------------------------------ reading
def _parse_complete(path: Path, data: bytes, first_lineno: int = 1
                    ) -> tuple[list[dict], int, int]:
    """Rows of the newline-terminated lines of ``data``.

    Returns (rows, bytes used, lines used); an unterminated tail is left unused.
    ValueError ``path:line: what is wrong`` for a line that is not a JSON object,
    and one naming the file for binary or non-UTF-8 data.
    """
    zero = data.find(b"\0")
    if zero >= 0:
        raise ValueError(f"{path} is a binary file (a NUL byte at offset {zero}), "
                         "not a JSON lines results file")
    used = data.rfind(b"\n") + 1
    rows = []
    lines = data[:used].split(b"\n")[:-1]
    for i, raw in enumerate(lines, first_lineno):
        row = _parse_line(path, i, raw)
        if row is not None:
            rows.append(row)
    return rows, used, len(lines)


def _parse_line(path: Path, lineno: int, raw: bytes) -> dict | None:
    """One line as a JSON object (None for a blank line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}:{lineno}: not UTF-8 text; {path} is not a JSON lines "
                         "results file") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not a JSON line ({e})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                         f"{type(row).__name__}")
    return row


def _warn_tail(path: Path, lineno: int, tail: bytes) -> None:
    if tail.strip():
        warnings.warn(f"{path}:{lineno}: skipped an unterminated last line (an interrupted "
                      "write, not a result)", stacklevel=3)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Every row of a JSON lines results file: the one reader of the project.

    Blank lines are skipped; an unterminated last line (a writer interrupted
    mid-line, or still writing) is skipped with a warning; a line that is not a
    JSON object raises ``ValueError("path:line: what is wrong")``; a binary or
    non-UTF-8 file raises a ValueError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a results file")
    data = path.read_bytes()
    rows, used, nlines = _parse_complete(path, data)
    _warn_tail(path, nlines + 1, data[used:])
    return rows


def read_results(path: str | os.PathLike) -> list[Row]:
    """``read_rows`` as typed rows (``row_from_json``; rows of no result type are ``Row``)."""
    return [row_from_json(d) for d in read_rows(path)]


# ------------------------------------------------------------------ appending
@contextmanager
def locked(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """The results file opened for appending and reading, under an exclusive flock.

    Creates the file (and its folder) if absent. Retries when the path was
    replaced between open and lock, so the lock always guards the file that the
    path names. Every writer of results files takes this lock around its tail
    repair and append.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        f = open(path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if _names_same_file(f, path):
                break
        except BaseException:
            f.close()
            raise
        f.close()
    try:
        yield f
    finally:
        f.close()  # releases the lock


def _names_same_file(f: BinaryIO, path: Path) -> bool:
    try:
        return os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _drop_partial_tail(f: BinaryIO) -> None:
    """Truncate a trailing line that has no newline (left by a crash mid-write).

    ``f`` is the results file opened read/write (``locked`` gives one).
    """
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        step = min(65536, pos)
        f.seek(pos - step)
        chunk = f.read(step)
        i = chunk.rfind(b"\n")
        if i >= 0:
            f.truncate(pos - step + i + 1)
            return
        pos -= step
    f.truncate(0)


def _encode(rows: list[Row | dict]) -> bytes:
    return "".join(json.dumps(clean(as_json(r))) + "\n" for r in rows).encode()


def _write(f: BinaryIO, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def append_rows_atomic(path: str | os.PathLike, rows: list[Row | dict]) -> None:
    """Append rows to ``path`` in one write under the file lock, then fsync.

    Lines are only ever appended whole: a crash can at worst leave an
    unterminated last line, which is dropped (under the lock) before the next
    append and skipped by ``read_rows``. Cost is linear in what is written.
    """
    data = _encode(rows)
    with locked(path) as f:
        _drop_partial_tail(f)
        _write(f, data)


def reset_file(path: str | os.PathLike) -> None:
    """Empty ``path`` under the lock (``--force``: overwrite on purpose)."""
    with locked(path) as f:
        f.truncate(0)


class UnitLog:
    """The finished units of one results file, read incrementally under its lock.

    ``key_of(row)`` names the unit a row finishes (None for other rows); it may
    raise ValueError to refuse the file (rows of another kind or settings).
    Runners call ``refresh`` before each unit and skip finished ones, and
    ``commit`` after computing one: under the lock it re-reads what other
    processes appended and writes the unit only if nobody finished it meanwhile.
    So several processes on one file lose nothing and repeat no unit.
    """

    def __init__(self, path: str | os.PathLike, key_of: Callable[[dict], str | None]):
        self.path = Path(path)
        self.key_of = key_of
        self.done: set[str] = set()
        self._inode: int | None = None
        self._offset = 0
        self._lines = 0
        self._head = b""  # the file's first bytes (up to 4 KiB), to notice a rewrite

    def refresh(self) -> set[str]:
        """Units finished in the file now (reads only what was appended since last time)."""
        if self.path.exists():
            with locked(self.path) as f:
                self._scan(f)
        return self.done

    def commit(self, key: str, rows: list[Row | dict]) -> bool:
        """Append ``rows`` (which finish unit ``key``); False, writing nothing, if the
        unit was finished by another process meanwhile."""
        data = _encode(rows)
        with locked(self.path) as f:
            self._scan(f)
            if key in self.done:
                return False
            _drop_partial_tail(f)
            _write(f, data)
            self._scan(f)
        return True

    def _scan(self, f: BinaryIO) -> None:
        if not self._same_file(f):  # replaced, emptied or rewritten: read it all again
            self.done.clear()
            self._inode, self._offset, self._lines = os.fstat(f.fileno()).st_ino, 0, 0
        f.seek(self._offset)
        data = f.read()
        rows, used, nlines = _parse_complete(self.path, data, self._lines + 1)
        for row in rows:
            key = self.key_of(row)
            if key is not None:
                self.done.add(key)
        if self._offset == 0:
            self._head = data[:min(used, 4096)]
        self._offset += used
        self._lines += nlines
        _warn_tail(self.path, self._lines + 1, data[used:])

    def _same_file(self, f: BinaryIO) -> bool:
        """Whether ``f`` is the file read so far: same inode, not shorter, same first bytes."""
        st = os.fstat(f.fileno())
        if st.st_ino != self._inode or st.st_size < self._offset:
            return False
        f.seek(0)
        return f.read(len(self._head)) == self._head


# ------------------------------------------------------------- --out checks
def check_writable(path: str | os.PathLike) -> Path:
    """``path`` as a Path if a file can be written there, else a one-line ValueError.

    Refuses a folder, a non-regular file, a path below a regular file and a
    place where files cannot be created or the file cannot be opened for
    writing. Writes nothing (a probe file is created and removed at once).
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a folder; give a file path")
    if p.exists() and not p.is_file():
        raise ValueError(f"{p} is not a regular file")
    try:
        if p.exists():
            with open(p, "ab"):
                pass
        else:
            _probe_folder(p, _nearest_existing(p))
    except OSError as e:
        raise ValueError(f"cannot write {p}: {e.strerror or e}") from None
    return p


def _nearest_existing(p: Path) -> Path:
    """The closest existing ancestor of ``p``; ValueError if it is not a folder."""
    for anc in [p.parent, *p.parent.parents]:
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                raise ValueError(f"cannot write {p}: {anc} is a file, not a folder")
            return anc
    return Path(".")


def _probe_folder(p: Path, folder: Path) -> None:
    """Create and remove a probe file in ``folder`` (OSError if files cannot be made)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(13, f"no permission to create files in {folder}")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def check_out(path: str | os.PathLike, kind: str, force: bool = False) -> Path:
    """Check a results ``--out`` before any work: writable, and (unless ``force``) either
    absent, empty, or a results file of the same kind (rows with ``source == kind``).

    One-line ValueError otherwise; writes nothing. Settings are checked unit by
    unit by the runner (same settings resume, others are refused).
    """
    p = check_writable(path)
    if force or not p.exists():
        return p
    first = _first_row(p)
    if first is None:
        return p
    src = first.get("source")
    if src != kind:
        what = f"{src} results" if isinstance(src, str) else "no certrl results"
        raise ValueError(f"{p} holds {what}, not {kind} results: use another --out, or "
                         "--force to overwrite it")
    return p


def _first_row(p: Path) -> dict | None:
    """The first row of ``p`` (None if it has none yet); ValueError if it is no results file."""
    refuse = "use another --out, or --force to overwrite it"
    with open(p, "rb") as f:
        if b"\0" in f.read(8192):
            raise ValueError(f"{p} is a binary file, not a JSON lines results file: {refuse}")
        f.seek(0)
        lineno = 0
        while True:
            lineno += 1
            line = f.readline(1 << 24)
            if not line.endswith(b"\n"):  # end of file: no row, or an interrupted first write
                if not line.strip() or line.lstrip().startswith(b"{"):
                    return None
                raise ValueError(f"{p} is not a JSON lines results file: {refuse}")
            row = _parse_line(p, lineno, line[:-1])
            if row is not None:
                return row


def scale_words(scale) -> str:
    """The per-dimension eps scale in words: every entry (3 significant digits) up to 8
    entries, else its length, range and a short hash (so two scales never read alike)."""
    v = [float(x) for x in scale]
    if len(v) <= 8:
        return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"
    h = hashlib.sha1(json.dumps(v).encode()).hexdigest()[:8]
    return f"({len(v)} entries in [{min(v):.3g}, {max(v):.3g}], sha1 {h})"


def eps_space_words(tm) -> str:
    """The space eps is measured in, with the threat model's per-dimension scale when it
    has one: results under different scales never share a table column, and every
    caption prints the scale."""
    scale = getattr(tm, "scale", None)
    if scale is None:
        return tm.space
    return f"{tm.space}, eps scaled per input dimension by {scale_words(scale)}"


def agent_fields(agent: Agent, checkpoint: str | None = None) -> dict:
    """The fields every result row about ``agent`` carries.

    ``agent_id`` is the sha256 identity (``certrl.identity.agent_identity``);
    ``agent_label`` (and the older ``checkpoint``) is the path or shipped name the
    user gave, a label only; ``run_group`` is the training run's group (a hash of
    its config without the seed) or None. ``versions`` also names the device the agent's
    networks computed on (``versions["device"]``: "cpu" or "cuda:N (GPU name)").
    """
    tm = agent.threat_model
    return {
        "agent_id": agent_identity(agent), "agent_label": checkpoint,
        "run_group": (agent.metadata or {}).get("run_group"),
        "env_id": agent.env_id, "env_version": env_version(agent.env_id),
        "algo": agent.algo, "loss": agent.loss_name, "seed": agent.seed,
        "norm": tm.to_dict()["norm"], "eps_space": eps_space_words(tm),
        "checkpoint": checkpoint, "config": agent.config,
        "versions": {**library_versions(), "device": device_label(agent.device)},
        "train_versions": getattr(agent, "versions", None),
    }


# ------------------------------------------------------------------ row types
def _key(f) -> str:
    """The JSON key of a dataclass field (``return_`` is written ``return``)."""
    return f.metadata.get("json", f.name)


_DECLARED: dict[type, dict[str, str]] = {}


def _json_field(name: str):
    return field(default=None, metadata={"json": name})


@dataclass(kw_only=True)
class Row:
    """A JSON lines row: declared fields (subclasses) plus ``extra``, every other key in order.

    ``OPTIONAL`` names fields written only when not None (keys some rows of the
    type lack); every other declared field is always written (null for None).
    A row read by ``from_json`` also leaves out the declared keys its source
    lacked, so reading and writing back gives the same keys and values.
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    extra: dict[str, Any] = field(default_factory=dict)
    absent: frozenset[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def declared(cls) -> dict[str, str]:
        """JSON key -> field name of the declared fields, in order."""
        if cls not in _DECLARED:
            _DECLARED[cls] = {_key(f): f.name for f in fields(cls)
                              if f.name not in ("extra", "absent")}
        return _DECLARED[cls]

    def to_json(self) -> dict:
        """The row as a JSON object (declared fields, then ``extra``)."""
        out = {}
        for key, name in self.declared().items():
            v = getattr(self, name)
            if v is None and self._omitted(key, name):
                continue
            out[key] = v
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    def _omitted(self, key: str, name: str) -> bool:
        """Whether a None field is left out: absent from the row read, or optional."""
        return key in self.absent if self.absent is not None else name in self.OPTIONAL

    @classmethod
    def from_json(cls, d: dict) -> Row:
        """A row of this type from a JSON object (unknown keys kept in ``extra``)."""
        declared = cls.declared()
        kw = {name: d.get(key) for key, name in declared.items()}
        return cls(**kw, extra={k: v for k, v in d.items() if k not in declared},
                   absent=frozenset(k for k in declared if k not in d))

    def get(self, key: str, default=None):
        """The value of JSON key ``key`` (declared field or ``extra``; ``default`` for None)."""
        name = self.declared().get(key)
        v = getattr(self, name) if name is not None else self.extra.get(key)
        return default if v is None else v


@dataclass(kw_only=True)
class AgentKey(Row):
    """The identifying fields every result row carries (``agent_fields``; see docs/results.md)."""

    agent_id: str | None = None
    agent_label: str | None = None
    run_group: str | None = None
    env_id: str | None = None
    env_version: str | None = None
    algo: str | None = None
    loss: str | None = None
    seed: int | None = None
    norm: str | None = None
    eps_space: str | None = None
    checkpoint: str | None = None
    source: str | None = None  # "evaluate", "attack" or "certify"
    record: str | None = None  # "episode", "batch", "state" or "trajectory_bound"


@dataclass(kw_only=True)
class UnitRow(AgentKey):
    """A row that finishes a unit: the identity block in full, settings and unit key."""

    config: dict | None = None
    versions: dict | None = None
    train_versions: dict | None = None
    settings: dict | None = None
    settings_hash: str | None = None
    eval_seed: int | None = None
    unit: str | None = None
    eps: float | None = None
    episode: Any = None  # episode index; "obs" (given observations) or "all" (certify)
    episode_seed: int | None = None


@dataclass(kw_only=True)
class EpisodeRow(UnitRow):
    """One evaluate / attack episode (``source`` "evaluate" or "attack", record "episode")."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"action_changes"})
    ATTACK_ONLY: ClassVar[frozenset[str]] = frozenset({"step_size", "objective", "threat_model"})
    deterministic: bool | None = None
    attack: str | None = None
    attack_steps: int | None = None
    step_size: float | None = None  # attack rows only (ATTACK_ONLY)
    objective: str | None = None  # attack rows only
    threat_model: dict | None = None  # attack rows only
    return_: float | None = _json_field("return")
    length: int | None = None
    truncated: bool | None = None
    action_changes: int | None = None  # discrete agent under attack only

    def _omitted(self, key: str, name: str) -> bool:
        if self.absent is None and name in self.ATTACK_ONLY:
            return self.source != "attack"
        return super()._omitted(key, name)


@dataclass(kw_only=True)
class CertifyRow(UnitRow):
    """Fields of every certify unit row."""

    method: str | None = None
    threat_model: dict | None = None
    certificate_kind: str | None = None  # "sound", "probabilistic" or "heuristic"
    time_s: float | None = None


@dataclass(kw_only=True)
class CertEpisodeRow(CertifyRow):
    """A state certificate method over one episode (record "episode") or given
    observations (record "batch"): ``certrl.certify.trajectory.episode_summary``."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({
        "truncated", "mean_radius", "min_radius", "mean_max_deviation", "max_max_deviation",
        "mean_worst_value", "smoothed_agrees", "n0", "n", "alpha", "sigma", "bound",
        "bound_type", "eps_l2", "conversion", "input_dim", "policy", "reward_scale"})
    return_: float | None = _json_field("return")
    steps: int | None = None
    length: int | None = None
    truncated: bool | None = None
    certified_steps: int | None = None
    certified_fraction: float | None = None
    certified_trajectory: bool | None = None
    mean_radius: float | None = None
    min_radius: float | None = None
    mean_max_deviation: float | None = None
    max_max_deviation: float | None = None
    mean_worst_value: float | None = None  # in true reward units (Q / reward_scale)
    reward_scale: float | None = None  # DQN: reported Q values were divided by it
    smoothed_agrees: float | None = None
    # randomized smoothing (method "smoothing") only
    n0: int | None = None
    n: int | None = None
    alpha: float | None = None
    sigma: float | None = None
    bound: str | None = None
    bound_type: str | None = None
    eps_l2: float | None = None
    conversion: str | None = None
    input_dim: int | None = None
    policy: str | None = None


# Deliberate parallel (duplicates lists it): the row dataclasses are lists of optional
# typed fields of one shape.
@dataclass(kw_only=True)
class GwcRow(CertifyRow):
    """Greedy worst case (method "gwc-ibp", "gwc-crown" or "gwc", record "episode"): a
    heuristic, never a certificate; ``gwc_bounds`` names the bound method."""

    note: str | None = None
    gwc_return: float | None = None
    gwc_bounds: str | None = None
    steps: int | None = None
    length: int | None = None
    truncated: bool | None = None
    gwc_changed_fraction: float | None = None


@dataclass(kw_only=True)
class TrajectoryBoundRow(CertifyRow):
    """Policy smoothing / S-DQN return bounds (record "trajectory_bound", episode "all")."""

    policy: str | None = None
    bound_type: str | None = None
    horizon: int | None = None
    input_dim: int | None = None
    conversion: str | None = None
    policy_smoothing: dict | None = None
    sdqn_median: dict | None = None
    certified_return: float | None = None
    median_return_bound: float | None = None
    smoothed_returns: list[float] | None = None
    n: int | None = None
    alpha: float | None = None
    bound: str | None = None


@dataclass(kw_only=True)
class StateRow(AgentKey):
    """One certified state (record "state"): ``StateCertificates.state_row`` plus its place.

    Carries the lean identity (no config / versions / settings: those are in
    the unit's episode row). Method-specific per-state values go to ``extra``.
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"radius_capped", "reward_scale"})
    method: str | None = None
    settings_hash: str | None = None
    eval_seed: int | None = None
    episode: Any = None
    episode_seed: int | None = None
    step: int | None = None
    eps: float | None = None
    certificate_kind: str | None = None
    action: Any = None  # int (discrete) or list (continuous)
    certified: bool | None = None
    margin_lower: float | None = None
    margin_lower_all: list[float] | None = None
    radius: float | None = None
    radius_capped: bool | None = None  # the radius search stopped at its upper end
    output: list[float] | None = None
    q_lower: list[float] | None = None
    q_upper: list[float] | None = None
    value_lower: float | None = None
    value_upper: float | None = None
    worst_action: int | None = None
    worst_value: float | None = None
    max_deviation: float | None = None
    deviation: list[float] | None = None
    time_s: float | None = None
    reward_scale: float | None = None  # DQN: output / q_* / value_* / margins divided by it


def row_type(d: dict) -> type[Row]:
    """The row type of a JSON object, by its ``source``, ``record`` and ``method``."""
    source, record = d.get("source"), d.get("record")
    if record == "episode" and (source in ("evaluate", "attack")
                                or (source is None and "attack" in d)):  # older files
        return EpisodeRow
    if source != "certify":
        return Row
    if record == "state":
        return StateRow
    if record == "trajectory_bound":
        return TrajectoryBoundRow
    if record == "episode" and d.get("method") in GWC_METHODS:
        return GwcRow
    if record in ("episode", "batch"):
        return CertEpisodeRow
    return Row


def row_from_json(d: dict | Row) -> Row:
    """The typed row of a JSON object (a ``Row`` of everything in ``extra`` when it is no
    result row: train logs, agent listings); a Row is returned as is."""
    if isinstance(d, Row):
        return d
    return row_type(d).from_json(d)


def as_json(r: Row | dict) -> dict:
    """A row as a JSON object (dicts pass through)."""
    return r.to_json() if isinstance(r, Row) else r
