"""Per-state certificates of a policy network over an observation perturbation ball.

For a batch of network inputs x (B, *shape) and a radius eps, ``certify_states``
answers, per state b:

* greedy action a* = argmax_a f(x_b)_a (discrete) and whether it is certified:
  min_{j != a*} LB[f_{a*}(x') - f_j(x')] > 0 over the ball (margin spec, the
  C matrix of ``bounds.margin_lower``);
* the margin lower bounds themselves, the certified radius (largest eps at which
  the action was *verified*, found by bracketing and bisection), per-output
  bounds [LB_a, UB_a], value bounds V = max_a Q: [max_a LB_a, max_a UB_a] and
  the worst value the attacker can reach: min_{a in A_eps} Q(x, a) with
  A_eps = {a : UB_a >= max_j LB_j}, a superset of the actions an eps-attack can
  make the agent play;
* continuous policies (f = action mean mu): per-dimension [LB, UB] of mu over
  the ball and the certified max deviation max_k max(UB_k - mu_k, mu_k - LB_k).

Methods and the kind of certificate they give:

==============  ===============  ===================================================
method          kind             what is certified
==============  ===============  ===================================================
ibp, crown,     sound            the base network's action, every x' in the ball
crown-ibp,
alpha-crown
lipschitz       sound            same, closed form for 1-Lipschitz (l_inf) networks
                                 built from ``bounds.lipschitz`` layers only
exact           sound            same, by MILP (small ReLU MLPs only); exact radius
smoothing       probabilistic    the *smoothed* policy's action (Cohen et al.), an
                                 l2 certificate; l_inf eps is converted to the l2
                                 radius eps * sqrt(d) explicitly
==============  ===============  ===================================================
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

import bounds
from bounds.smoothing import linf_to_l2
from certrl.certify.methods import (
    METHODS,
    BoundPropagation,
    CertifyOptions,
    CertMethod,
    ExactConfig,
    RadiusConfig,
    Smoothing,
    SmoothingConfig,
    check_exact,
    count_relus,
    is_lipschitz_net,
    lipschitz_constant,
    method_names,
    state_method,
)
from certrl.device import module_device, resolve_device
from certrl.threat import ThreatModel, check_eps, parse_norm

INF = float("inf")
BOUND_METHODS = tuple(n for n, m in METHODS.items() if isinstance(m, BoundPropagation))
STATE_METHODS = method_names("state")
KIND = {n: METHODS[n].kind for n in STATE_METHODS}

__all__ = [
    "BOUND_METHODS", "KIND", "STATE_METHODS", "CertifyOptions", "ExactConfig", "RadiusConfig",
    "SmoothingConfig", "StateCertificates", "certified_radius", "certify_states",
    "check_eps_list", "check_exact", "check_method", "count_relus", "in_reward_units",
    "is_lipschitz_net",
    "lipschitz_constant", "validate",
]


@dataclass
class StateCertificates:
    """Per-state certificates at one eps with one method (arrays over the batch)."""

    method: str
    eps: float
    norm: float
    certificate_kind: str
    action: np.ndarray | None  # (B,) greedy action (discrete) / None
    certified: np.ndarray | None  # (B,) bool / None (continuous without a tolerance)
    margin_lower: np.ndarray | None  # (B, K) lower bounds of f_a* - f_j (+inf at a*)
    min_margin_lower: np.ndarray | None  # (B,)
    radius: np.ndarray | None  # (B,) certified radius in the threat norm
    output_lower: np.ndarray | None  # (B, K) bounds of each output (Q / logit / mean)
    output_upper: np.ndarray | None
    output: np.ndarray  # (B, K) clean outputs
    value_lower: np.ndarray | None = None  # (B,) LB of V = max_a Q over the ball
    value_upper: np.ndarray | None = None
    worst_action: np.ndarray | None = None  # (B,) lowest clean-Q action in A_eps
    worst_value: np.ndarray | None = None  # (B,) its clean Q
    max_deviation: np.ndarray | None = None  # (B,) continuous: max_k max(UB-mu, mu-LB)
    deviation: np.ndarray | None = None  # (B, d) per-dimension deviation
    time_s: float = 0.0  # wall time for the whole batch (incl. radius search)
    radius_time_s: float = 0.0
    extra: dict = field(default_factory=dict)  # method-specific per-state arrays / settings

    @property
    def batch_size(self) -> int:
        return int(self.output.shape[0])

    def state_row(self, b: int) -> dict:
        """JSON-able per-state fields of state ``b``."""
        def pick(a, cast=float):
            if a is None:
                return None
            v = a[b]
            if isinstance(v, np.ndarray):
                return [cast(t) for t in v.tolist()]
            return cast(v)
        row = {
            "method": self.method, "eps": self.eps, "certificate_kind": self.certificate_kind,
            "action": pick(self.action, int),
            "certified": pick(self.certified, bool),
            "margin_lower": pick(self.min_margin_lower),
            "margin_lower_all": pick(self.margin_lower),
            "radius": pick(self.radius),
            "output": pick(self.output),
            "q_lower": pick(self.output_lower), "q_upper": pick(self.output_upper),
            "value_lower": pick(self.value_lower), "value_upper": pick(self.value_upper),
            "worst_action": pick(self.worst_action, int), "worst_value": pick(self.worst_value),
            "max_deviation": pick(self.max_deviation), "deviation": pick(self.deviation),
            "time_s": self.time_s / max(1, self.batch_size),
        }
        for k, v in self.extra.items():
            if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == self.batch_size:
                if v.dtype == object:  # strings; None / lists (e.g. points) kept as is
                    row[k] = v[b] if v[b] is None or isinstance(v[b], list) else str(v[b])
                elif v.dtype == bool:
                    row[k] = pick(v, bool)
                elif np.issubdtype(v.dtype, np.integer):
                    row[k] = pick(v, int)
                else:
                    row[k] = pick(v)
            elif not isinstance(v, np.ndarray):
                row[k] = v
        return row


Q_FIELDS = ("output", "output_lower", "output_upper", "margin_lower", "min_margin_lower",
            "value_lower", "value_upper", "worst_value")  # in the network's Q units


def in_reward_units(cert: StateCertificates, reward_scale: float) -> StateCertificates:
    """A copy of a discrete (Q-value) certificate with every Q quantity divided by
    ``reward_scale``: a network trained on rewards r * s has Q ~ s * Q_true, so the
    reported bounds become bounds of Q_true (s > 0 keeps every sign, hence every
    certificate, unchanged). Radii, actions and flags are unchanged; the scale used
    is recorded in ``extra["reward_scale"]``."""
    s = float(reward_scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"reward_scale must be positive and finite; got {reward_scale!r}")
    new = replace(cert, extra={**cert.extra, "reward_scale": s})
    if s != 1.0:
        for name in Q_FIELDS:
            v = getattr(cert, name)
            if v is not None:
                setattr(new, name, np.asarray(v, dtype=np.float64) / s)
    return new


# ----------------------------------------------------------------- checking
def check_method(method: str) -> str:
    """Return ``method`` if it is a registered state-certificate method, else ValueError."""
    return state_method(method).name


def check_eps_list(eps) -> list[float]:
    """One radius or a non-empty list of them, each checked by ``threat.check_eps``."""
    eps_list = list(eps) if isinstance(eps, (list, tuple, np.ndarray)) else [eps]
    if not eps_list:
        raise ValueError("need at least one eps")
    return [check_eps(e) for e in eps_list]


def validate(net: nn.Module, in_shape: tuple[int, ...], method: str, norm: float,
             kind: str, options: CertifyOptions | ExactConfig | None = None) -> None:
    """Raise ValueError if ``method`` cannot certify ``net`` under this threat model."""
    if isinstance(options, ExactConfig):
        options = CertifyOptions(exact=options)
    state_method(method).check(net, tuple(in_shape), parse_norm(norm), kind,
                               options or CertifyOptions())


def _as_input(x, device: torch.device) -> torch.Tensor:
    """``x`` as a float tensor on ``device`` (the network's)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=device)
    x = x.to(device)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.dim() < 2:
        raise ValueError(f"observations must be a batch (B, *shape); got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("observations contain NaN or inf values")
    return x.detach()


def _forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """f(x) (B, K), with a clear error when x does not fit the network."""
    with torch.no_grad():
        try:
            out = net(x)
        except RuntimeError as err:
            raise ValueError(f"observation batch shape {tuple(x.shape)} does not fit the "
                             f"network: {err}") from None
    if out.dim() != 2:
        raise ValueError(f"the network must output (B, K); got {tuple(out.shape)}")
    return out.detach()


# ----------------------------------------------------------- radius search
@dataclass
class RadiusVerifier:
    """Is the label of each state certified at a per-state eps? (one method, one net)."""

    method: CertMethod
    net: object  # what ``method.prepare`` returned (parsed once)
    x: torch.Tensor
    labels: torch.Tensor
    threat: ThreatModel
    options: CertifyOptions
    base: bounds.LpBall | None = None  # the validated radius-0 ball of every state
    targets: object = None  # ``method.targets``: labels, or per-state data built once

    refuted: np.ndarray | None = None  # smallest radius with a counterexample (inf: none)
    counterexamples: dict = field(default_factory=dict)  # state -> the point found there

    def __post_init__(self) -> None:
        self.base = self.threat.ball(self.x, torch.zeros(self.x.shape[0], dtype=self.x.dtype,
                                                          device=self.x.device))
        self.targets = self.method.targets(self.net, self.x, self.labels, self.options)
        self.refuted = np.full(self.x.shape[0], INF)

    def ball(self, idx: np.ndarray, eps: np.ndarray) -> bounds.LpBall:
        """The balls of states ``idx`` at radii ``eps``: the validated base ball's fields,
        re-validated only in the new radii (finite, >= 0)."""
        eps = np.asarray(eps, dtype=np.float64)
        if not np.isfinite(eps).all() or (eps < 0).any():
            raise ValueError(f"radius search produced an invalid radius: {eps}")
        e = torch.as_tensor(eps, dtype=self.x.dtype, device=self.x.device)
        b, n = self.base, self.x.shape[0]

        def rows(t):  # domain bounds stored per state are cut to idx; shared ones kept
            return t[idx] if t is not None and t.dim() == b.center.dim() and t.shape[0] == n \
                and n > 1 else t
        e = e.reshape(len(idx), *([1] * (self.x.dim() - 1)))
        if self.threat.scale is not None:  # radius in units of the per-dimension scale
            e = e * self.threat.scale_tensor(self.x)
        if len(idx) == n and (n == 1 or bool((idx == np.arange(n)).all())):
            return bounds.LpBall.trusted(b.center, e, b.norm, b.lower, b.upper)
        return bounds.LpBall.trusted(b.center[idx], e, b.norm, rows(b.lower), rows(b.upper))

    def __call__(self, idx: np.ndarray, eps: np.ndarray) -> np.ndarray:
        """(len(idx),) bool: state idx[i] certified at radius eps[i]."""
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        ball = self.ball(idx, eps)
        ml, info = self.method.margins(self.net, ball, self.targets[idx], self.options)
        self.note_counterexamples(idx, eps, info.get("counterexample"))
        return (ml > 0).all(dim=1).cpu().numpy()

    def note_counterexamples(self, idx: np.ndarray, eps, points) -> None:
        """Keep, per state, the smallest radius at which the method found a point of the
        ball that changes the action (a complete method's falsified answer)."""
        if points is None:
            return
        eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (len(idx),))
        for i, p in enumerate(points):
            if p is not None and eps[i] < self.refuted[idx[i]]:
                self.refuted[idx[i]] = eps[i]
                self.counterexamples[int(idx[i])] = p


def _bracket(check, B: int, start: float, cfg: RadiusConfig):
    """Doubling from ``start`` while verified, halving while not: (lo, hi, capped)."""
    lo, hi = np.zeros(B), np.full(B, np.nan)
    ok0 = check(np.arange(B), np.full(B, start))
    lo[ok0], hi[~ok0] = start, start
    up, cur = np.flatnonzero(ok0), start
    for _ in range(cfg.max_doublings):
        if up.size == 0 or cur * 2 > cfg.max_eps:
            break
        cur *= 2
        ok = check(up, np.full(up.size, cur))
        lo[up[ok]], hi[up[~ok]] = cur, cur
        up = up[ok]
    capped = np.zeros(B, dtype=bool)
    capped[up] = True
    down, cur = np.flatnonzero(~ok0), start
    for _ in range(cfg.max_halvings):
        if down.size == 0:
            break
        cur /= 2
        ok = check(down, np.full(down.size, cur))
        lo[down[ok]], hi[down[~ok]] = cur, cur
        down = down[~ok]
    return lo, hi, capped


def _bisect(check, lo: np.ndarray, hi: np.ndarray, cfg: RadiusConfig) -> np.ndarray:
    """Bisect each bracket [lo, hi] (lo verified, hi refused) until it is within rtol."""
    # states never verified keep lo = 0, hi = smallest eps tried: no bisection
    act = np.flatnonzero((lo > 0) & np.isfinite(hi))
    for _ in range(cfg.max_iter):
        act = act[(hi[act] - lo[act]) > cfg.rtol * hi[act]]
        if act.size == 0:
            break
        mid = (lo[act] + hi[act]) / 2
        ok = check(act, mid)
        lo[act[ok]] = mid[ok]
        hi[act[~ok]] = mid[~ok]
    return lo


def _search(check, B: int, start: float, cfg: RadiusConfig) -> tuple[np.ndarray, np.ndarray]:
    if not start > 0:
        raise ValueError(f"radius search needs init > 0; got {start}")
    lo, hi, capped = _bracket(check, B, start, cfg)
    return _bisect(check, lo, hi, cfg), capped


def certified_radius(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, method: str,
                     threat: ThreatModel | None = None, options: CertifyOptions | None = None,
                     init: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Largest verified eps per state: r_b with action ``labels[b]`` certified at r_b.

    Bracketing: starting from ``options.radius.init`` (else ``init``), double
    while verified (lo = last verified) or halve while not (hi = last refused);
    then bisect [lo, hi] until (hi - lo) <= rtol * hi or ``max_iter`` steps.
    Every value returned was itself verified by ``method`` under ``threat``
    (0 = not verified at any eps tried); the network is parsed once.
    Returns (radius (B,), capped (B,) bool: still verified at ``max_eps``).
    """
    m, options = state_method(method), options or CertifyOptions()
    threat = threat or ThreatModel()
    lab = torch.as_tensor(labels, device=x.device).long().reshape(-1)
    check = RadiusVerifier(m, m.prepare(net, options), x, lab, threat, options)
    cfg = options.radius
    return _search(check, x.shape[0], float(cfg.init if cfg.init is not None else init), cfg)


def _closed_form_radius(check: RadiusVerifier, guess: np.ndarray) -> np.ndarray:
    """A closed-form radius shrunk until re-verified (rounding), 0 where it is not."""
    r = guess * (1 - 1e-6)
    idx = np.arange(len(r))
    for _ in range(3):
        ok = check(idx, r)
        if ok[r > 0].all():
            break
        r = np.where(ok, r, r * 0.999)
    return np.where(check(idx, r), r, 0.0)


def _radius(check: RadiusVerifier, out64, results: list[StateCertificates]):
    """Certified radius per state (bisection or closed form) and the capped flags."""
    m, cfg = check.method, check.options.radius
    guess = m.radius_guess(check.net, out64, check.labels)
    if guess is not None:  # a plain-ball radius: the scaled set at r fits in r * max(scale)
        guess = guess / check.threat.max_shift(1.0, INF)
        r, capped = _closed_form_radius(check, guess), np.zeros(len(guess), dtype=bool)
    else:
        init = cfg.init or max(max(res.eps for res in results), 1e-3)
        r, capped = _search(check, check.x.shape[0], float(init), cfg)
    # every grid eps verified also counts: radius >= largest certified grid eps
    for res in results:
        r = np.where(res.certified, np.maximum(r, res.eps), r)
    return r, capped


# -------------------------------------------------------------- main entry
def certify_states(net: nn.Module, x, eps: float | list[float], method: str = "crown", *,
                   kind: str = "discrete", threat: ThreatModel | None = None,
                   options: CertifyOptions | None = None,
                   device: str | torch.device | None = None) -> list[StateCertificates]:
    """Certify every state of the batch ``x`` at each eps of ``eps`` with ``method``.

    Args:
        net: the acting network as an ``nn.Sequential`` (``agent.bounded_form()``),
            network input -> Q-values / logits (discrete) or action mean (continuous).
        x: (B, *in_shape) network inputs (preprocessed observations).
        eps: one radius or a list (a grid), in the threat norm; checked here once.
        method: a registered state method (``certrl.certify.methods``).
        kind: "discrete" (argmax certificate) or "continuous" (action-mean bounds).
        threat: norm and domain clip [lower, upper] (its eps is not used; default
            l_inf, unbounded).
        options: how to certify (:class:`CertifyOptions`: backend, radius search,
            smoothing / exact settings, seed, deviation_tol, q_values).
        device: move ``net`` there first (in place; ``certrl.device.resolve_device``;
            None: where it is). ``x`` goes to the network's device.
    Returns:
        One :class:`StateCertificates` per eps (the radius is computed once).
    """
    m = state_method(method)
    eps_list = check_eps_list(eps)
    threat, options = threat or ThreatModel(), options or CertifyOptions()
    if device is not None:
        net.to(resolve_device(device))
    x = _as_input(x, module_device(net))
    out = _forward(net.eval(), x)
    m.check(net, tuple(x.shape[1:]), threat.norm, kind, options)
    if isinstance(m, Smoothing):
        return _smoothing(m, net, x, out.double(), eps_list, threat, options)
    if kind == "continuous":
        return _continuous(m, net, x, out.double(), eps_list, threat, options)
    check = RadiusVerifier(m, m.prepare(net, options), x, out.argmax(dim=1), threat, options)
    results = [_discrete_at(check, out.double(), e) for e in eps_list]
    if options.radius.enabled:
        t0 = time.perf_counter()
        r, capped = _radius(check, out.double(), results)
        dt = time.perf_counter() - t0
        upper = _radius_upper(check, results)
        for res in results:
            res.radius = r.copy()
            res.extra["radius_capped"] = capped.copy()
            if upper is not None:
                res.extra["radius_upper"], res.extra["radius_counterexample"] = upper
            res.radius_time_s = dt
            res.time_s += dt / len(results)
    return results


def _radius_upper(check: RadiusVerifier, results: list[StateCertificates]):
    """(radius_upper (B,), counterexample per state) when the method refutes (a complete
    method): the smallest radius where a point changing the action was found, at the
    grid eps or during the search (inf and None where none was found); else None."""
    if not any("counterexample" in res.extra for res in results):
        return None
    for res in results:
        check.note_counterexamples(np.arange(check.x.shape[0]), res.eps,
                                   res.extra.get("counterexample"))
    points = np.empty(check.x.shape[0], dtype=object)
    for b in range(len(points)):
        points[b] = check.counterexamples.get(b)
    return check.refuted.copy(), points


def _discrete_at(check: RadiusVerifier, out64: torch.Tensor, e: float) -> StateCertificates:
    """Action certificate (margins) and, if asked, output / value bounds at one eps."""
    t0 = time.perf_counter()
    m, opts = check.method, check.options
    ball = check.threat.ball(check.x, e)
    ml, info = m.margins(check.net, ball, check.labels, opts)
    lo_q = hi_q = None
    if opts.q_values:
        lo_q, hi_q = m.output_bounds(check.net, ball, out64, opts)
    res = StateCertificates(
        method=m.name, eps=e, norm=check.threat.norm, certificate_kind=m.kind,
        action=check.labels.cpu().numpy(), certified=(ml > 0).all(dim=1).cpu().numpy(),
        margin_lower=ml.cpu().numpy(), min_margin_lower=ml.min(dim=1).values.cpu().numpy(),
        radius=None, output_lower=lo_q, output_upper=hi_q, output=out64.cpu().numpy(),
        extra=dict(info))
    if lo_q is not None:
        _value_fields(res)
    res.time_s = time.perf_counter() - t0
    if m.output_note:
        res.extra["bounds_method"] = m.output_note
    return res


def _value_fields(res: StateCertificates) -> None:
    """V = max_a Q in [max_a LB, max_a UB]; worst reachable action / value (clean Q)."""
    lb, ub, q = res.output_lower, res.output_upper, res.output
    res.value_lower = lb.max(axis=1)
    res.value_upper = ub.max(axis=1)
    possible = ub >= lb.max(axis=1, keepdims=True)
    possible[np.arange(len(q)), res.action] = True
    masked = np.where(possible, q, np.inf)
    res.worst_action = masked.argmin(axis=1)
    res.worst_value = masked.min(axis=1)
    res.extra["possible_actions"] = possible.sum(axis=1).astype(np.int64)


def _continuous(m: CertMethod, net, x, out64, eps_list, threat: ThreatModel,
                options: CertifyOptions) -> list[StateCertificates]:
    """Per-dimension action-mean bounds and max deviation at each eps."""
    results, mu, tol = [], out64.cpu().numpy(), options.deviation_tol
    bnet = m.prepare(net, options)
    for e in eps_list:
        t0 = time.perf_counter()
        lb, ub = m.output_bounds(bnet, threat.ball(x, e), out64, options)
        dev = np.maximum(ub - mu, mu - lb).clip(min=0.0)
        mdev = dev.max(axis=1)
        results.append(StateCertificates(
            method=m.name, eps=e, norm=threat.norm, certificate_kind=m.kind,
            action=None, certified=None if tol is None else mdev <= float(tol),
            margin_lower=None, min_margin_lower=None, radius=None, output_lower=lb,
            output_upper=ub, output=mu, max_deviation=mdev, deviation=dev,
            time_s=time.perf_counter() - t0,
            extra={} if tol is None else {"deviation_tol": float(tol)}))
    return results


def _smoothing(m: Smoothing, net, x, out64, eps_list, threat: ThreatModel,
               options: CertifyOptions) -> list[StateCertificates]:
    """Cohen et al. CERTIFY; certified at eps iff radius_l2 > eps (l2) or eps * sqrt(d)."""
    t0 = time.perf_counter()
    c = m.certify(net, x, options)
    dt = time.perf_counter() - t0
    d = int(x[0].numel())
    linf = threat.norm == INF
    r2, pred = c.radius_l2.cpu().numpy(), c.prediction.cpu().numpy()
    # the threat set at radius e lies in the l2 ball of radius e * k (k = sqrt(d) for a
    # plain l_inf ball, ||scale||_2 for a scaled one, max(scale) for a scaled l2 ball)
    k = threat.max_shift(1.0, 2.0, d)
    # largest threat-norm radius covered by ||delta||_2 < R (strict): shrink a hair
    r = np.where(pred >= 0, r2 / k * (1 - 1e-9), 0.0)
    common = {"policy": "smoothed", "bound_type": "l2", "bound": c.bound, "n0": c.n0,
              "n": c.n, "alpha": c.alpha, "sigma": c.sigma, "input_dim": d,
              "conversion": _l2_conversion(threat, linf),
              "radius_l2": r2, "pA_lower": c.pA_lower.cpu().numpy(),
              "base_action": out64.argmax(dim=1).cpu().numpy(), "abstain": pred < 0}
    results = []
    for e in eps_list:
        e2 = linf_to_l2(e, d) if linf and threat.scale is None else threat.max_shift(e, 2.0, d)
        results.append(StateCertificates(
            method=m.name, eps=e, norm=threat.norm, certificate_kind=m.kind,
            action=pred, certified=(pred >= 0) & (r2 > e2), margin_lower=None,
            min_margin_lower=None, radius=r, output_lower=None, output_upper=None,
            output=out64.cpu().numpy(), time_s=dt / len(eps_list),
            extra={**common, "eps_l2": e2}))
    return results


def _l2_conversion(threat: ThreatModel, linf: bool) -> str:
    """How the threat-norm eps became the smoothing certificate's l2 radius (in words)."""
    if threat.scale is not None:
        return ("eps_l2 = eps * ||scale||_2 (scaled l_inf box inside the l2 ball)" if linf
                else "eps_l2 = eps * max(scale) (scaled l2 ellipsoid inside the l2 ball)")
    return ("eps_l2 = eps * sqrt(d) (l_inf ball inside the l2 ball)" if linf
            else "none (l2 threat model)")
