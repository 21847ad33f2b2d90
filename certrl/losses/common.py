"""Shared pieces of the robust losses: typed solver config and the inner solvers.

The inner problem of every loss is a worst case over the threat model's ball
B(x, eps). Three solvers:

* ``ibp``: interval bound propagation (sound, cheap, differentiable).
* ``crown-ibp``: beta * CROWN-IBP + (1 - beta) * IBP bounds, beta annealed 1 -> 0
  with the eps ramp (ends on pure IBP, as in CROWN-IBP / SA-DQN).
* ``pgd``: projected gradient ascent on the loss's own inner objective (a lower
  bound of the worst case, not a certificate).

Bounds are taken through the native engine on an ``nn.Sequential`` that *shares*
the network's modules (``shared_form``), so gradients reach its parameters.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

import bounds
from certrl.attacks import pgd_maximize, project
from certrl.losses.base import RobustLoss
from certrl.losses.schedule import EpsSchedule
from certrl.threat import ThreatModel

SOLVERS = ("ibp", "crown-ibp", "pgd", "sgld")
# every loss accepts these unless it lists its own ``solvers``; "sgld" is PPO-only
BASE_SOLVERS = ("ibp", "crown-ibp", "pgd")


@dataclass
class SolverConfig:
    """Inner solver: kind in {"ibp", "crown-ibp", "pgd", "sgld"}; PGD / SGLD steps and the
    PGD step size (SGLD's step is eps / steps, as the references')."""

    kind: str = "ibp"
    pgd_steps: int = 10
    pgd_step_size: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOLVERS:
            raise ValueError(f"unknown solver {self.kind!r}; use one of {', '.join(SOLVERS)}")
        if int(self.pgd_steps) < 1:
            raise ValueError(f"pgd_steps must be >= 1; got {self.pgd_steps}")


FORMS = ("full", "advantage")


def shared_form(net: nn.Module, form: str = "full") -> nn.Sequential:
    """The network's ``shared_form()`` (parameters shared, differentiable bounds); a plain
    ``nn.Sequential`` is its own shared form. ``form="advantage"``: the centred advantage
    stream of a dueling Q-network (``QNetwork.advantage_form``)."""
    if form not in FORMS:
        raise ValueError(f"unknown bound form {form!r}; use one of {', '.join(FORMS)}")
    if form == "advantage":
        if not hasattr(net, "advantage_form"):
            raise ValueError(f"{type(net).__name__} has no advantage stream to bound")
        return net.advantage_form()
    if isinstance(net, nn.Sequential):
        return net
    if not hasattr(net, "shared_form"):
        raise ValueError(f"{type(net).__name__} has no bound-able form for robust training")
    return net.shared_form()


def annealed_kappa(kappa_end: float, fraction: float) -> float:
    """kappa_t = 1 - (1 - kappa_end) * fraction, fraction = eps_t / eps in [0, 1]
    (RADIAL's linear kappa, WocaR-DQN's TD weight)."""
    return 1.0 - (1.0 - float(kappa_end)) * float(fraction)


def output_bounds(net: nn.Module, x: Tensor, eps: float, threat: ThreatModel,
                  method: str = "ibp", beta: float = 0.0, C: Tensor | None = None,
                  bound: bounds.BoundNetwork | None = None) -> tuple[Tensor, Tensor]:
    """(lb, ub) of C f(x') (or f(x') if C is None) over B(x, eps); differentiable.

    method "ibp": IBP; "crown-ibp": beta * CROWN-IBP + (1 - beta) * IBP (a convex
    combination of two sound bounds is sound). eps = 0 returns f(x) twice. ``bound``:
    ``bounds.bind(shared_form(net))`` made once (``ScheduledLoss.bound_network``); the
    numbers are those of ``bounds.compute``.
    """
    bound = bounds.bind(shared_form(net)) if bound is None else bound
    if eps <= 0:
        out = bound.net(x)
        if C is not None:
            out = torch.einsum("bmk,bk->bm", C, out)
        return out, out
    ball = threat.ball(x, eps)
    lb, ub = bound.compute(ball, method="ibp", C=C)
    if method == "crown-ibp" and beta > 0:
        lc, uc = bound.compute(ball, method="crown-ibp", C=C)
        lb = beta * lc + (1 - beta) * lb
        ub = beta * uc + (1 - beta) * ub
    elif method not in ("ibp", "crown-ibp"):
        raise ValueError(f"output_bounds: method must be 'ibp' or 'crown-ibp'; got {method!r}")
    return lb, ub


def margin_lower_bounds(net: nn.Module, x: Tensor, labels: Tensor, eps: float,
                        threat: ThreatModel, method: str = "ibp", beta: float = 0.0,
                        bound: bounds.BoundNetwork | None = None) -> Tensor:
    """(B, K) lower bounds of f_label(x') - f_j(x') over the ball; +inf at j = label."""
    bound = bounds.bind(shared_form(net)) if bound is None else bound
    with torch.no_grad():
        k = bound.net(x[:1]).shape[1]
    C = bounds.margin_spec(labels, k).to(x)
    lb, _ = output_bounds(net, x, eps, threat, method, beta, C, bound)
    own = torch.nn.functional.one_hot(labels, k).bool()
    return lb.masked_fill(own, float("inf"))


def pgd_states(objective: Callable[[Tensor], Tensor], x: Tensor, threat: ThreatModel,
               eps: float, steps: int = 10, step_size: float | None = None) -> Tensor:
    """argmax of the per-sample ``objective`` over B(x, eps) by PGD (random start); detached.

    Parameter gradients are not touched (only the input is differentiated).
    """
    if eps <= 0:
        return x.detach()
    return pgd_maximize(objective, x.detach(), threat, eps, steps, step_size, True, None)


SGLD_BETA = 1e-5


def sgld_states(objective: Callable[[Tensor], Tensor], x: Tensor, threat: ThreatModel,
                eps: float, steps: int = 10, beta: float = SGLD_BETA) -> Tensor:
    """SA-PPO's SGLD maximizer of the batch-mean ``objective`` over B(x, eps); detached.

    alpha = eps / steps; x_0 = x + alpha s sign(n), n ~ N(0, I); for k = 0..steps-1:
    x_{k+1} = Proj(x_k + alpha s sign(grad mean obj(x_k) + c_k n_k)),
    c_k = sqrt(2 alpha beta) / (k + 2), n_k ~ N(0, I) (l_2: the normalized noisy gradient);
    returns the last iterate. s is the threat model's per-dimension scale; Proj the
    projection onto the ball and the domain. Only the input is differentiated.
    """
    x = x.detach()
    if eps <= 0:
        return x
    alpha, s = eps / int(steps), threat.scale_tensor(x)
    xa = project(x + alpha * s * torch.randn_like(x).sign(), x, threat, eps)
    for k in range(int(steps)):
        xr = xa.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(xr).mean(), xr)
        with torch.no_grad():
            noisy = g + math.sqrt(2 * alpha * beta) / (k + 2) * torch.randn_like(g)
            if threat.norm == math.inf:
                d = noisy.sign()
            else:
                d = noisy / noisy.flatten(1).norm(dim=1).clamp_min(1e-12).view(
                    -1, *([1] * (noisy.dim() - 1)))
            xa = project(xa + alpha * s * d, x, threat, eps)
    return xa.detach()


def input_adversary(loss: ScheduledLoss, objective: Callable[[Tensor], Tensor], x: Tensor,
                    threat: ThreatModel, eps: float) -> Tensor:
    """The loss's inner maximizer of ``objective`` (B,): SGLD (``solver.kind == "sgld"``)
    or PGD (anything else); detached."""
    sv = loss.cfg.solver
    if sv.kind == "sgld":
        return sgld_states(objective, x, threat, eps, sv.pgd_steps)
    return pgd_states(objective, x, threat, eps, sv.pgd_steps, sv.pgd_step_size)


def pgd_action_states(net: nn.Module, x: Tensor, labels: Tensor, threat: ThreatModel,
                      eps: float, steps: int = 10, step_size: float | None = None) -> Tensor:
    """PGD states minimizing the margin f_label - max_{j != label} f_j (the usual action attack)."""
    def obj(z: Tensor) -> Tensor:
        out = net(z)
        own = out.gather(1, labels[:, None]).squeeze(1)
        other = out.scatter(1, labels[:, None], float("-inf")).max(1).values
        return other - own
    return pgd_states(obj, x, threat, eps, steps, step_size)




# ------------------------------------------------------------------ base class


def build_config(cls: type, data: dict) -> Any:
    """Typed config ``cls`` from a plain dict (nested SolverConfig / EpsSchedule); no eval."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for k, v in data.items():
        h = hints.get(k)
        if h in (SolverConfig, EpsSchedule) and isinstance(v, dict):
            v = h(**v)
        kw[k] = v
    return cls(**kw)


class ScheduledLoss(RobustLoss):
    """A robust loss with a typed config holding ``solver`` and ``schedule``.

    eps(step) = schedule.eps(step, threat.eps) (the threat model's eps is the target);
    beta(step) = schedule.beta(step) for the CROWN-IBP solver.
    """

    algo: str = "dqn"
    config_cls: type = object
    solvers: tuple[str, ...] = BASE_SOLVERS
    # config fields added after runs existed -> the value meaning "as before": ``config()``
    # leaves them out at that value (the stored config and the run group stay unchanged)
    omit_at: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: Any = None):
        self.cfg = self.config_cls() if cfg is None else cfg
        if not isinstance(self.cfg, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}")
        if self.cfg.solver.kind not in self.solvers:
            raise ValueError(f"{self.name} ({self.algo}) supports the solvers "
                             f"{', '.join(self.solvers)}; got {self.cfg.solver.kind!r}")
        self._bound: dict[tuple[int, str], tuple[nn.Module, bounds.BoundNetwork]] = {}

    def setup(self, nets: dict[str, nn.Module], cfg: Any) -> None:
        """Fix the eps schedule's length to the run's ``total_steps``."""
        self.cfg.schedule.total_steps = int(cfg.total_steps)

    def bound_network(self, net: nn.Module, form: str = "full") -> bounds.BoundNetwork:
        """``bounds.bind(shared_form(net, form))``, made once per network and form: the
        bound network shares the live modules, so optimizer steps on ``net`` are seen (a
        target copy is another network and gets its own)."""
        key = (id(net), form)
        hit = self._bound.get(key)
        if hit is None or hit[0] is not net:
            hit = (net, bounds.bind(shared_form(net, form)))
            self._bound[key] = hit
        return hit[1]

    def eps_at(self, step: int, threat: ThreatModel) -> float:
        return self.cfg.schedule.eps(step, threat.eps)

    def beta_at(self, step: int) -> float:
        return self.cfg.schedule.beta(step)

    def bounds_of(self, net: nn.Module, x: Tensor, eps: float, threat: ThreatModel,
                  step: int, C: Tensor | None = None,
                  form: str = "full") -> tuple[Tensor, Tensor]:
        """(lb, ub) of the outputs (``form="advantage"``: of the centred advantage stream)
        over B(x, eps) with the configured bound solver."""
        method = "crown-ibp" if self.cfg.solver.kind == "crown-ibp" else "ibp"
        return output_bounds(net, x, eps, threat, method, self.beta_at(step), C,
                             self.bound_network(net, form))

    def margins_of(self, net: nn.Module, x: Tensor, labels: Tensor, eps: float,
                   threat: ThreatModel, step: int) -> Tensor:
        """(B, K) margin lower bounds (bounds) or margins at a PGD state (pgd); +inf at label."""
        if self.cfg.solver.kind == "pgd":
            xa = pgd_action_states(net, x, labels, threat, eps, self.cfg.solver.pgd_steps,
                                   self.cfg.solver.pgd_step_size)
            out = net(xa)
            m = out.gather(1, labels[:, None]) - out
            own = torch.nn.functional.one_hot(labels, out.shape[1]).bool()
            return m.masked_fill(own, float("inf"))
        method = "crown-ibp" if self.cfg.solver.kind == "crown-ibp" else "ibp"
        return margin_lower_bounds(net, x, labels, eps, threat, method, self.beta_at(step),
                                   self.bound_network(net))

    def config(self) -> dict:
        """JSON-able config; fields ``loss_from_config`` filled in for an older checkpoint
        (``legacy_fields``) are left out, so the stored config round-trips."""
        d = {"name": self.name, "algo": self.algo, **dataclasses.asdict(self.cfg)}
        for k in getattr(self, "legacy_fields", ()):
            d.pop(k, None)
        for k, v in self.omit_at.items():  # fields added later, at the value that keeps the
            if k in d and d[k] == v:       # old meaning: left out, so run groups stay as
                d.pop(k)                   # they were
        return d


def hinge_margin(margins: Tensor, c: float) -> Tensor:
    """Per-sample SA-DQN hinge -min(min_j margins_j, c) = max(-min_j margins_j, -c)."""
    return -torch.clamp(margins.min(dim=1).values, max=c)
