"""Empirical observation attacks (upper bounds on robustness), batched over states.

All attacks take network-input tensors x (B, *shape) and return x' inside the
threat model's set {x' : ||(x' - x) / s||_p <= eps} (p = inf or 2; s the
per-dimension ``ThreatModel.scale``, all ones without one), clipped to the
threat model's domain. With a scale every step and projection is taken in the
whitened coordinates u = (x' - x) / s, where the set is the plain eps-ball.

- ``fgsm``: one signed (l_inf) / normalized (l_2) gradient step of size eps.
- ``pgd``: random start in the ball, ``steps`` ascent steps of ``step_size``
  (default 2.5 eps / steps), projection after each; returns, per state, the
  iterate with the highest objective.
- ``pgd_ref``: the reference PGD of RADIAL-RL / CAR-DQN evaluations: no random
  start, 10 steps of 0.1 eps along sign(grad CE) at the greedy action, stop
  (per state) at the first iterate that changes the greedy action.
- objectives for discrete agents (Q-values or logits, a* = clean argmax):
  "ce" maximizes cross-entropy of softmax(out) at a*; "margin" minimizes
  out[a*] - max_{j != a*} out[j].
- ``mad`` (continuous agents): PGD maximizing ||mu(x') - mu(x)||^2 of the action
  mean (a KL between Gaussians with a shared diagonal std, up to per-dim scale).
- ``random_noise``: uniform in the (scaled) l_inf box or the (scaled) l_2 ball.

Projection onto ball intersected with box: project onto the ball (in whitened
coordinates), then clip; since the center lies in the box, clipping only moves
coordinates toward it, so the result stays in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from certrl.threat import ThreatModel, check_eps

Model = Callable[[torch.Tensor], torch.Tensor]
ATTACKS = ("pgd", "pgd-ref", "fgsm", "mad", "random")
REF_STEPS = 10  # RADIAL-RL / CAR-DQN evaluation: PGDAttack(steps=10, relative_step_size=0.1)
REF_RELATIVE_STEP = 0.1


def _flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample l_p norm, shaped (B, 1, ..., 1) for broadcasting."""
    n = torch.linalg.vector_norm(t.reshape(t.shape[0], -1), ord=p, dim=1)
    return n.reshape(-1, *([1] * (t.dim() - 1)))


def _check(threat: ThreatModel, eps: float | None) -> float:
    e = threat.eps if eps is None else check_eps(eps)
    if threat.norm not in (math.inf, 2.0):
        raise ValueError(f"attacks support the l_inf and l_2 norms; got l_{threat.norm:g}")
    return e


def _scale(threat: ThreatModel, x: torch.Tensor) -> torch.Tensor:
    """Per-dimension scale s shaped like one input (ones without a scale)."""
    return threat.scale_tensor(x)


def project(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel,
            eps: float | None = None) -> torch.Tensor:
    """Project ``x_adv`` onto the (scaled) eps-ball around ``x``, then clip to the domain.

    l_inf: clamp each coordinate to [x_i - eps s_i, x_i + eps s_i] (the exact projection);
    l_2: shrink the whitened u = (x_adv - x) / s to ||u||_2 <= eps (the exact projection
    when s = 1; a point of the ellipsoid otherwise).
    """
    e = _check(threat, eps)
    s = _scale(threat, x)
    d = x_adv - x
    if threat.norm == math.inf:
        r = e * s
        d = torch.maximum(torch.minimum(d, r), -r)
    else:
        u = d / s
        n = _flat_norm(u, 2.0)
        d = u * torch.clamp(e / n.clamp_min(1e-12), max=1.0) * s
    return threat.clip(x + d)


def random_noise(x: torch.Tensor, threat: ThreatModel, eps: float | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform noise in the (scaled) l_inf box / l_2 ball of radius eps, clipped to the
    domain (uniform in the whitened coordinates u = delta / s); drawn from ``generator``
    (a CPU generator: the same noise on every device) and moved to ``x``'s device."""
    e = _check(threat, eps)
    if threat.norm == math.inf:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        d = e * u
    else:
        g = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        g = g / _flat_norm(g, 2.0).clamp_min(1e-12)
        dim = x[0].numel()
        r = torch.rand((x.shape[0],), generator=generator,
                       dtype=x.dtype).to(x.device) ** (1.0 / dim)
        d = e * g * r.reshape(-1, *([1] * (x.dim() - 1)))
    return project(x + d * _scale(threat, x), x, threat, e)


def _objective(model: Model, x_adv: torch.Tensor, labels: torch.Tensor,
               objective: str) -> torch.Tensor:
    """Per-sample quantity the attacker maximizes (discrete agents)."""
    out = model(x_adv)
    if objective == "ce":
        return F.cross_entropy(out, labels, reduction="none")
    if objective == "margin":
        own = out.gather(1, labels[:, None]).squeeze(1)
        other = out.scatter(1, labels[:, None], float("-inf")).max(1).values
        return other - own
    raise ValueError(f"unknown objective {objective!r}; use 'ce' or 'margin'")


def _mad_objective(model: Model, x_adv: torch.Tensor, mu0: torch.Tensor) -> torch.Tensor:
    return ((model(x_adv) - mu0) ** 2).reshape(x_adv.shape[0], -1).sum(1)


def _ascent_dir(g: torch.Tensor, p: float, s: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Steepest-ascent step of unit whitened length, in input coordinates: s * sign(g)
    (l_inf) or s * (s g) / ||s g||_2 (l_2), for the gradient g in input coordinates."""
    if p == math.inf:
        return s * g.sign()
    gw = s * g
    return s * gw / _flat_norm(gw, 2.0).clamp_min(1e-12)


def _clean_labels(model: Model, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is not None:
        return labels
    with torch.no_grad():
        return model(x).argmax(1)


def fgsm(model: Model, x: torch.Tensor, threat: ThreatModel, eps: float | None = None,
         objective: str = "ce", labels: torch.Tensor | None = None) -> torch.Tensor:
    """x' = clip(x + eps * sign(grad)) (l_inf) or x + eps * grad / ||grad||_2 (l_2)."""
    e = _check(threat, eps)
    labels = _clean_labels(model, x, labels)
    xr = x.detach().clone().requires_grad_(True)
    loss = _objective(model, xr, labels, objective).sum()
    (g,) = torch.autograd.grad(loss, xr)
    step = e * _ascent_dir(g, threat.norm, _scale(threat, x))
    return project(x + step, x, threat, e).detach()


def pgd_maximize(obj: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 threat: ThreatModel, e: float, steps: int = 10, step_size: float | None = None,
                 random_start: bool = True,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """argmax of the per-sample objective ``obj`` (B,) over the ball B(x, e) by PGD; detached.

    x_{k+1} = Proj_{B(x, e) & domain}(x_k + alpha * dir(grad obj(x_k))), dir = sign (l_inf)
    or grad / ||grad||_2 (l_2), taken in the whitened coordinates of a scaled threat
    model (see ``_ascent_dir``); alpha = 2.5 e / steps unless ``step_size``; random start
    in the ball; returns the best iterate per sample. Only the input is differentiated.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    alpha = 2.5 * e / steps if step_size is None else float(step_size)
    x = x.detach()
    s = _scale(threat, x)
    x_adv = random_noise(x, threat, e, generator) if random_start else x.clone()
    with torch.no_grad():
        best, best_val = x_adv.clone(), obj(x_adv)
    for _ in range(steps):
        xr = x_adv.clone().requires_grad_(True)
        val = obj(xr)
        (g,) = torch.autograd.grad(val.sum(), xr)
        with torch.no_grad():
            better = val > best_val
            best[better], best_val[better] = x_adv[better], val[better]
            x_adv = project(x_adv + alpha * _ascent_dir(g, threat.norm, s), x, threat, e)
    with torch.no_grad():
        val = obj(x_adv)
        better = val > best_val
        best[better] = x_adv[better]
    return best.detach()


def pgd_minimize_ref(obj: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                     threat: ThreatModel, e: float, steps: int = 10,
                     step_size: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """SA-PPO's attack loop (its critic, Robust Sarsa and RS+MAD attacks), minimizing the
    per-sample objective ``obj`` (B,) over the ball B(x, e); detached.

    alpha = e / steps unless ``step_size``; x_0 = x + alpha * u with u uniform in the unit
    whitened l_inf box (l_2: in the unit whitened l_2 ball), projected;
    x_{k+1} = Proj_{B(x, e) & domain}(x_k - alpha * dir(grad obj(x_k))) for k < steps, dir as
    in ``pgd_maximize``; returns the last iterate x_steps (no best-iterate selection).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    alpha = e / steps if step_size is None else float(step_size)
    x = x.detach()
    s = _scale(threat, x)
    x_adv = project(random_noise(x, threat, alpha, generator), x, threat, e)
    for _ in range(steps):
        xr = x_adv.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(obj(xr).sum(), xr)
        with torch.no_grad():
            x_adv = project(x_adv - alpha * _ascent_dir(g, threat.norm, s), x, threat, e)
    return x_adv.detach()


def pgd(model: Model, x: torch.Tensor, threat: ThreatModel, eps: float | None = None,
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        objective: str = "ce", labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on the objective away from the clean greedy action."""
    e = _check(threat, eps)
    labels = _clean_labels(model, x, labels)
    return pgd_maximize(lambda z: _objective(model, z, labels, objective), x, threat, e, steps,
                     step_size, random_start, generator)


def pgd_ref(model: Model, x: torch.Tensor, threat: ThreatModel, eps: float | None = None,
            steps: int = REF_STEPS, step_size: float | None = None, objective: str = "ce",
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """The reference PGD of the RADIAL-RL / CAR-DQN evaluations (detached).

    a* = clean greedy action; x_0 = x (no random start); for k < ``steps``:
    x_{k+1} = Proj(x_k + alpha * dir(grad_x CE(f(x_k), a*))) with alpha = 0.1 eps (unless
    ``step_size``), dir = sign (l_inf; s * sign for a scaled threat) or the whitened l_2
    direction, Proj the (scaled) ball then the domain clip. A state stops at its first
    iterate whose greedy action differs from a* (the attack succeeded; AdvBox-style
    early return); a state never flipped returns its last iterate (its action is a*).
    """
    e = _check(threat, eps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    alpha = REF_RELATIVE_STEP * e if step_size is None else float(step_size)
    labels = _clean_labels(model, x, labels)
    x = x.detach()
    s, x_adv = _scale(threat, x), x.clone()
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        xr = x_adv.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_objective(model, xr, labels, objective).sum(), xr)
        with torch.no_grad():
            step = project(x_adv + alpha * _ascent_dir(g, threat.norm, s), x, threat, e)
            keep = done.reshape(-1, *([1] * (x.dim() - 1)))
            x_adv = torch.where(keep, x_adv, step)
            done |= model(x_adv).argmax(1) != labels
        if bool(done.all()):
            break
    return x_adv.detach()


def mad(model: Model, x: torch.Tensor, threat: ThreatModel, eps: float | None = None,
        steps: int = 10, step_size: float | None = None,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Maximal action difference: PGD maximizing ||mu(x') - mu(x)||^2 (random start)."""
    e = _check(threat, eps)
    with torch.no_grad():
        mu0 = model(x)
    return pgd_maximize(lambda z: _mad_objective(model, z, mu0), x, threat, e, steps, step_size,
                     True, generator)


def make_attack(name: str, model: Model, threat: ThreatModel, eps: float | None = None,
                steps: int = 10, step_size: float | None = None, seed: int = 0,
                action_kind: str = "discrete", objective: str = "ce",
                ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable x -> x' for the named attack ('pgd', 'pgd-ref', 'fgsm', 'mad', 'random').

    For continuous agents 'pgd' means MAD (there is no greedy action to push);
    'fgsm' and 'pgd-ref' are discrete-only, 'mad' continuous-only. 'pgd-ref' is
    ``pgd_ref`` (``steps`` steps, default 10, of ``step_size``, default 0.1 eps).
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; use one of {', '.join(ATTACKS)}")
    e = _check(threat, eps)
    gen = torch.Generator().manual_seed(int(seed))
    if name == "random":
        return lambda x: random_noise(x, threat, e, gen)
    if action_kind == "continuous":
        if name in ("fgsm", "pgd-ref"):
            raise ValueError(f"{name} needs a discrete agent; use mad (or pgd) for continuous "
                             "ones")
        return lambda x: mad(model, x, threat, e, steps, step_size, gen)
    if name == "mad":
        raise ValueError("mad attacks continuous agents; use pgd or fgsm for discrete ones")
    if name == "fgsm":
        return lambda x: fgsm(model, x, threat, e, objective)
    if name == "pgd-ref":
        return lambda x: pgd_ref(model, x, threat, e, steps, step_size, objective)
    return lambda x: pgd(model, x, threat, e, steps, step_size, True, objective, None, gen)
