"""Results files: JSON lines, one reader, locked appends, ``--out`` checks.

* ``read_rows``: the project's one JSON lines reader (see its rules).
* ``append_rows_atomic`` / ``UnitLog``: appends under an exclusive ``fcntl.flock``
  on the results file, so concurrent writers lose nothing and repeat no unit.
* ``check_writable`` / ``check_out``: refuse a bad ``--out`` before any work.
* ``write_jsonl``: a whole file written atomically (temp file + rename).
* ``agent_fields``: the identifying fields of every result row.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from certrl.agent import Agent
from certrl.envs import env_version
from certrl.identity import agent_identity
from certrl.io import _umask, library_versions


def _clean(v):
    """JSON-safe values: non-finite floats become strings ('inf', 'nan')."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        return _clean(v.item())
    return v


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` through a temp file, fsync, rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write ``records`` one JSON object per line, atomically (``write_text_atomic``)."""
    lines = [json.dumps(_clean(r), sort_keys=False) for r in records]
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


read_jsonl = read_rows  # the former name of the same reader


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


def _encode(rows: list[dict]) -> bytes:
    return "".join(json.dumps(_clean(r)) + "\n" for r in rows).encode()


def _write(f: BinaryIO, data: bytes) -> None:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def append_rows_atomic(path: str | os.PathLike, rows: list[dict]) -> None:
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

    def commit(self, key: str, rows: list[dict]) -> bool:
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


def agent_fields(agent: Agent, checkpoint: str | None = None) -> dict:
    """The fields every result row about ``agent`` carries.

    ``agent_id`` is the sha256 identity (``certrl.identity.agent_identity``);
    ``agent_label`` (and the older ``checkpoint``) is the path or shipped name the
    user gave, a label only; ``run_group`` is the training run's group (a hash of
    its config without the seed) or None.
    """
    tm = agent.threat_model
    return {
        "agent_id": agent_identity(agent), "agent_label": checkpoint,
        "run_group": (agent.metadata or {}).get("run_group"),
        "env_id": agent.env_id, "env_version": env_version(agent.env_id),
        "algo": agent.algo, "loss": agent.loss_name, "seed": agent.seed,
        "norm": tm.to_dict()["norm"], "eps_space": tm.space,
        "checkpoint": checkpoint, "config": agent.config,
        "versions": library_versions(),
        "train_versions": getattr(agent, "versions", None),
    }
