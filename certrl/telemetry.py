"""Training telemetry: scalar metrics to a CSV (always) and TensorBoard (optional).

``MetricsLogger.log(step, {name: value})`` appends one row to ``metrics.csv`` and, with
a TensorBoard folder, writes each value as a scalar tagged with its column name.
``TrainTelemetry.observe(algo)`` (called by ``Algorithm.learn`` after every unit of
training) logs one row per ``every`` env steps: the algorithm's ``train_metrics()``
(update losses, robust-loss terms, train eps, exploration rate), training returns of the
episodes finished in the interval, steps/s of the interval and, every ``eval_every``
steps, a greedy natural evaluation and the action certification rate (ACR, CROWN) at
the agent's eps on the evaluation episodes' states.

Resume: rows and TensorBoard events after the resumed step are dropped (a killed run
logged past its last checkpoint; the resumed run logs those steps again), so each step
appears once. Evaluation uses its own env and restores every global RNG, so telemetry
never changes training.
"""

from __future__ import annotations

import csv
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

# columns every metrics.csv starts with (then the other metric names in first-seen order);
# a column name is also its TensorBoard tag
BASE_COLUMNS = ("step", "time/wall_s", "time/steps_per_s", "train/episodes", "train/return",
                "train/interval_episodes", "train/exploration_rate", "train/eps")
EVAL_EPISODES = 3
EVAL_SEED = 2_000_000  # evaluation episodes' env seeds: EVAL_SEED + i


def _number(v) -> float | None:
    """``v`` as a float, None when it is not a number (bool counts as a number)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def summary_writer_class() -> type:
    """torch's ``SummaryWriter``; ValueError when the optional tensorboard package is
    missing (check it before writing anything)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        raise ValueError("--tensorboard needs the tensorboard package "
                         "(pip install -e .[tensorboard])") from None
    return SummaryWriter


class MetricsLogger:
    """CSV rows (``path``) plus optional TensorBoard scalars (``tensorboard`` folder).

    ``resume_step``: resuming at this step: the existing rows up to it are kept, later
    ones dropped, and TensorBoard events after it purged (SummaryWriter ``purge_step``);
    None: a new run (the file is started afresh).
    The header is ``BASE_COLUMNS`` plus every metric name seen, in first-seen order;
    a new name rewrites the file once with the widened header (old rows: empty cells).
    """

    def __init__(self, path: str | os.PathLike, tensorboard: str | os.PathLike | None = None,
                 resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.columns: list[str] = list(BASE_COLUMNS)
        self.rows: list[dict] = []
        self.last_step: int | None = None  # step of the last row kept on resume
        if resume_step is not None and self.path.exists():
            self._read(resume_step)
        self._rewrite()
        self.writer = None
        if tensorboard is not None:
            SummaryWriter = summary_writer_class()
            self.writer = SummaryWriter(str(tensorboard), purge_step=None if resume_step
                                        is None else resume_step + 1)

    def _read(self, resume_step: int) -> None:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            for c in reader.fieldnames or []:
                if c not in self.columns:
                    self.columns.append(c)
            for row in reader:
                step = _number(row.get("step"))
                if step is not None and step <= resume_step:
                    self.rows.append(row)
                    self.last_step = int(step)

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, restval="")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float | None]) -> None:
        """Append the row ``{step, **metrics}`` (None -> empty cell) and write scalars."""
        row = {"step": int(step)}
        row.update({k: "" if v is None else v for k, v in metrics.items()})
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        if self.writer is not None:
            for k, v in metrics.items():
                if v is not None and _number(v) is not None:
                    self.writer.add_scalar(k, float(v), int(step))

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV is written row by row)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@contextmanager
def preserved_rngs() -> Iterator[None]:
    """Run a block without changing torch's, numpy's or python's global RNG state."""
    t, n, p = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(t)
        np.random.set_state(n)
        random.setstate(p)


def evaluate_for_log(agent, episodes: int, eps: float) -> dict[str, float | None]:
    """Greedy natural return over ``episodes`` episodes (env seeds EVAL_SEED + i) and,
    for a discrete agent with eps > 0, the ACR: per episode the fraction of steps whose
    greedy action CROWN certifies on the agent's threat ball at ``eps``, mean over
    episodes (None otherwise)."""
    from certrl.certify.methods import CertifyOptions
    from certrl.certify.state import certify_states
    from certrl.rollout import acting, play

    states: dict[int, list[torch.Tensor]] = {}
    modes = {k: n.training for k, n in agent.nets.items()}
    try:
        with preserved_rngs(), torch.no_grad():
            ends = play(agent, list(range(episodes)), EVAL_SEED, lambda i: acting(agent),
                        on_step=lambda i, s: states.setdefault(i, []).append(s.x))
    finally:
        for k, n in agent.nets.items():
            n.train(modes[k])
    out: dict[str, float | None] = {"eval/return": float(np.mean([e.ret for e in ends])),
                                    "eval/acr": None}
    if eps > 0 and agent.action_space_kind == "discrete" and states:
        opts = CertifyOptions(radius=False, q_values=False)
        rates = []
        with preserved_rngs():
            net = agent.bounded_form()
            for xs in states.values():
                res = certify_states(net, torch.cat(xs), eps, "crown",
                                     threat=agent.threat_model, options=opts)[0]
                rates.append(float(np.mean(res.certified)))
        out["eval/acr"] = float(np.mean(rates))
    return out


class TrainTelemetry:
    """What ``certrl train`` logs, and when: see the module docstring.

    ``every``: env steps between rows (a row at the first unit of training at or past
    each multiple); ``eval_every``: env steps between evaluations (0: none; rounded to
    a logging point); ``eval_episodes``: episodes per evaluation.
    """

    def __init__(self, logger: MetricsLogger, every: int, start_step: int = 0,
                 eval_every: int = 0,
                 eval_episodes: int = EVAL_EPISODES) -> None:
        if every < 1 or eval_every < 0 or eval_episodes < 1:
            raise ValueError("telemetry: every >= 1, eval_every >= 0, eval_episodes >= 1")
        self.logger, self.every = logger, int(every)
        self.eval_every, self.eval_episodes = int(eval_every), int(eval_episodes)
        self.next_log = (start_step // self.every + 1) * self.every
        self.next_eval = (start_step // self.eval_every + 1) * self.eval_every \
            if self.eval_every else None
        # steps/s counts from here; train/return covers episodes ended after the last row
        self.last_step = start_step
        self.last_logged = logger.last_step if logger.last_step is not None else start_step
        self.t0 = self.t_last = time.perf_counter()

    def observe(self, algo) -> None:
        """After a unit of training: log a row if a logging point was passed."""
        if algo.global_step >= self.next_log:
            self.log_now(algo)
            while self.next_log <= algo.global_step:
                self.next_log += self.every

    def log_now(self, algo) -> None:
        """Log a row for the current step (train metrics, returns, speed, evaluation)."""
        now = time.perf_counter()
        steps = algo.global_step - self.last_step
        new = []
        for e in reversed(algo.episodes):  # the episodes ended since the last row
            if e["step"] <= self.last_logged:
                break
            new.append(e)
        new.reverse()
        row: dict[str, float | None] = {
            "time/wall_s": now - self.t0,
            "time/steps_per_s": steps / max(now - self.t_last, 1e-9),
            "train/episodes": len(algo.episodes),
            "train/return": float(np.mean([e["return"] for e in new])) if new else None,
            "train/interval_episodes": len(new)}
        row.update(algo.train_metrics())
        if self.next_eval is not None and algo.global_step >= self.next_eval:
            row.update(evaluate_for_log(algo.agent_obj, self.eval_episodes,
                                        algo.agent_obj.threat_model.eps))
            while self.next_eval <= algo.global_step:
                self.next_eval += self.eval_every
        self.logger.log(algo.global_step, row)
        self.last_step = self.last_logged = algo.global_step
        self.t_last = time.perf_counter()

    def finish(self, algo) -> None:
        """A last row at the final step (unless it was just logged), then close."""
        if algo.global_step > self.last_logged:
            self.log_now(algo)
        self.logger.close()
