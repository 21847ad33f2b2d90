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
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

import bounds
from bounds import lipschitz as _lip
from bounds import smoothing as _smooth
from certrl.threat import parse_norm

INF = float("inf")
BOUND_METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")
STATE_METHODS = (*BOUND_METHODS, "lipschitz", "exact", "smoothing")
KIND = {**{m: "sound" for m in BOUND_METHODS}, "lipschitz": "sound", "exact": "sound",
        "smoothing": "probabilistic"}
_LIP_LAYERS = (_lip.SortNetLayer, _lip.LinfDistLayer, _lip.ScalarBias, nn.Flatten, nn.Identity)


@dataclass
class SmoothingConfig:
    """Cohen et al. CERTIFY settings: noise std, selection / estimation samples, level."""

    sigma: float = 0.1
    n0: int = 100
    n: int = 1000
    alpha: float = 0.001
    batch_size: int = 20000


@dataclass
class ExactConfig:
    """MILP settings: per-MILP time limit (s) and the largest network accepted.

    ``max_relus`` caps the *total* number of ReLU neurons of the network, so a
    too-large net is refused before any work (and no unstable-ReLU error can
    happen midway).
    """

    time_limit: float = 30.0
    max_relus: int = 200
    preact: str = "crown"


@dataclass
class RadiusConfig:
    """Certified-radius search: bracket by doubling/halving from ``init``, then bisect.

    The search stops when (hi - lo) <= rtol * hi or after ``max_iter`` bisection
    steps; the reported radius is ``lo``, an eps at which the action *was*
    verified (0 if none above ``init * 2**-max_halvings``). ``max_eps`` caps the
    doubling (radius then reported as the last verified eps, ``radius_capped``).
    """

    enabled: bool = True
    init: float | None = None
    rtol: float = 0.01
    max_iter: int = 12
    max_halvings: int = 12
    max_doublings: int = 20
    max_eps: float = 1e4


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
                if v.dtype == object:
                    row[k] = pick(v, str)
                elif v.dtype == bool:
                    row[k] = pick(v, bool)
                elif np.issubdtype(v.dtype, np.integer):
                    row[k] = pick(v, int)
                else:
                    row[k] = pick(v)
            elif not isinstance(v, np.ndarray):
                row[k] = v
        return row


# ----------------------------------------------------------------- checking
def _as_input(x, shape_hint: tuple[int, ...] | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if x.dim() < 2:
        raise ValueError(f"observations must be a batch (B, *shape); got shape {tuple(x.shape)}")
    if shape_hint is not None and tuple(x.shape[1:]) != tuple(shape_hint):
        raise ValueError(f"observation batch shape {tuple(x.shape)} does not match the "
                         f"network input (B, {', '.join(map(str, shape_hint))})")
    if not torch.isfinite(x).all():
        raise ValueError("observations contain NaN or inf values")
    return x.detach()


def check_method(method: str) -> str:
    """Return ``method`` if it is a state-certificate method, else ValueError."""
    if method not in STATE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(STATE_METHODS)}")
    return method


def is_lipschitz_net(net: nn.Module) -> bool:
    """True iff every leaf layer is a ``bounds.lipschitz`` 1-Lipschitz (l_inf) layer,
    or the module declares its constant (``lipschitz_linf``, e.g. certrl's lipschitz_q)."""
    return lipschitz_constant(net) is not None


def lipschitz_constant(net: nn.Module) -> float | None:
    """L with |f_k(x) - f_k(x')| <= L ||x - x'||_inf for every output k, or None.

    A module with a ``lipschitz_linf`` attribute (e.g. ``certrl.nets.LipschitzQNetwork``,
    Q = scale * SortNet MLP) gives it; a Sequential made only of SortNet / l_inf-dist
    layers (plus ScalarBias, Flatten, Identity) has L = 1; anything else: None.
    """
    declared = getattr(net, "lipschitz_linf", None)
    if declared is not None and not isinstance(net, _lip.LipschitzMLP):
        L = float(declared)
        return L if (L > 0 and math.isfinite(L)) else None
    leaves = _lip._modules(net)
    ok = bool(leaves) and all(isinstance(m, _LIP_LAYERS) for m in leaves) and any(
        isinstance(m, (_lip.SortNetLayer, _lip.LinfDistLayer)) for m in leaves)
    return 1.0 if ok else None


def count_relus(net: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Number of ReLU neurons of ``net`` at input shape ``in_shape``."""
    n = 0
    z = torch.zeros(1, *in_shape)
    with torch.no_grad():
        for m in _lip._modules(net):
            z = m(z)
            if isinstance(m, nn.ReLU):
                n += z[0].numel()
    return n


def check_exact(net: nn.Module, in_shape: tuple[int, ...], cfg: ExactConfig) -> None:
    """Raise ValueError unless ``net`` is a ReLU MLP small enough for MILP."""
    allowed = (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity, bounds.Normalize)
    bad = [type(m).__name__ for m in _lip._modules(net) if not isinstance(m, allowed)]
    if bad:
        raise ValueError(f"exact (MILP) handles ReLU MLPs only (Linear/ReLU/Flatten/Normalize); "
                         f"this network has {', '.join(sorted(set(bad)))}; use crown or "
                         "alpha-crown instead")
    n = count_relus(net, in_shape)
    if n > cfg.max_relus:
        raise ValueError(f"exact (MILP): network too large for an exact answer ({n} ReLU "
                         f"neurons > max_relus={cfg.max_relus}); use alpha-crown or crown, or "
                         "raise max_relus")


def validate(net: nn.Module, in_shape: tuple[int, ...], method: str, norm: float,
             kind: str, exact: ExactConfig | None = None) -> None:
    """Raise ValueError if ``method`` cannot certify ``net`` under this threat model."""
    check_method(method)
    if kind not in ("discrete", "continuous"):
        raise ValueError(f"action kind must be 'discrete' or 'continuous'; got {kind!r}")
    if method in BOUND_METHODS and lipschitz_constant(net) is not None \
            and not isinstance(net, nn.Sequential):
        raise ValueError(f"{method} cannot bound this SortNet / l_inf-dist network; use "
                         "--method lipschitz (closed form, sound)")
    if method == "lipschitz":
        if not is_lipschitz_net(net):
            names = sorted({type(m).__name__ for m in _lip._modules(net)
                            if not isinstance(m, _LIP_LAYERS)})
            raise ValueError("the lipschitz certificate needs a network made only of "
                             "bounds.lipschitz layers (SortNetLayer / LinfDistLayer, "
                             f"ScalarBias, Flatten); this one has {', '.join(names) or 'none'}; "
                             "use crown (or ibp / alpha-crown) instead")
        if norm != INF:
            raise ValueError("the lipschitz certificate is for the l_inf norm")
    if method == "exact":
        if norm != INF:
            raise ValueError("exact (MILP) certificates are for the l_inf norm")
        if kind != "discrete":
            raise ValueError("exact (MILP) certifies discrete actions only")
        check_exact(net, in_shape, exact or ExactConfig())
    if method == "smoothing":
        if kind != "discrete":
            raise ValueError("smoothing certifies discrete (argmax) actions only")
        if norm not in (INF, 2.0):
            raise ValueError("smoothing certificates cover the l2 norm (and l_inf by conversion)")


# ----------------------------------------------------------- verification
def _eps_tensor(eps, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype).reshape(-1)
    if e.numel() == 1:
        e = e.expand(x.shape[0])
    return e.reshape(x.shape[0], *([1] * (x.dim() - 1)))


def _margins(net, x, eps, labels, method, norm, lower, upper, backend, alpha_iterations,
             exact: ExactConfig) -> tuple[torch.Tensor, dict]:
    """(B, K) margin lower bounds f_label - f_j over the ball (eps scalar or per state)."""
    if method in BOUND_METHODS:
        ball = bounds.LpBall(x, _eps_tensor(eps, x), norm=norm, lower=lower, upper=upper)
        with torch.no_grad():
            ml = bounds.margin_lower(net, ball, labels, method=method, backend=backend,
                                     alpha_iterations=alpha_iterations)
        return ml.detach().double(), {}
    if method == "lipschitz":
        L = lipschitz_constant(net)
        with torch.no_grad():
            out = net(x).double()
        e = _eps_tensor(eps, x).reshape(-1, 1).double()
        c = _lip.lipschitz_margin_certificate(out, 0.0, L, labels)
        ml = c.margin_lower - 2.0 * L * e
        atol = 8.0 * torch.finfo(out.dtype).eps * (1.0 + float(out.abs().max()))
        # subtract the rounding tolerance so "> 0" means certified with margin to spare
        return (ml - atol).masked_fill(torch.isinf(c.margin_lower), INF), {}
    if method == "exact":
        e = _eps_tensor(eps, x)
        res = bounds.milp_margin(net, x, e, labels, lower=lower, upper=upper,
                                 time_limit=exact.time_limit, max_relus=exact.max_relus,
                                 preact=exact.preact)
        status = ["optimal" if all(s in ("optimal", "label") for s in row) else
                  ("time_limit" if any(s == "time_limit" for s in row) else "error")
                  for row in res.status]
        # same float32 rounding allowance as bounds.margin_lower (MILP is exact in reals
        # up to the solver's 1e-6 tolerance; the network runs in float32)
        with torch.no_grad():
            slack = bounds.api.rounding_allowance(net(x).flatten(1)).double() + 1e-6
        return res.values.double() - slack, {"milp_status": np.array(status, dtype=object)}
    raise ValueError(f"no margin computation for method {method!r}")


def _verified(net, x, eps, labels, **kw) -> torch.Tensor:
    ml, _ = _margins(net, x, eps, labels, **kw)
    return (ml > 0).all(dim=1)


def certified_radius(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, method: str,
                     norm: float = INF, lower=None, upper=None, backend: str = "auto",
                     alpha_iterations: int = 20, exact: ExactConfig | None = None,
                     cfg: RadiusConfig | None = None, init: float = 0.01,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Largest verified eps per state: r_b with action ``labels[b]`` certified at r_b.

    Bracketing: starting from ``init``, double while verified (lo = last
    verified) or halve while not (hi = last refused); then bisect
    [lo, hi] until (hi - lo) <= rtol * hi or ``max_iter`` steps. Every value
    returned was itself verified by ``method`` (0 = not verified at any eps tried).
    Returns (radius (B,), capped (B,) bool: still verified at ``max_eps``).
    """
    cfg = cfg or RadiusConfig()
    exact = exact or ExactConfig()
    kw = dict(method=method, norm=norm, lower=lower, upper=upper, backend=backend,
              alpha_iterations=alpha_iterations, exact=exact)
    B = x.shape[0]
    lab = torch.as_tensor(labels).long().reshape(-1)
    lo = np.zeros(B)
    hi = np.full(B, np.nan)
    start = float(cfg.init if cfg.init is not None else init)
    if not start > 0:
        raise ValueError(f"radius search needs init > 0; got {start}")

    def check(idx: np.ndarray, e: np.ndarray) -> np.ndarray:
        if idx.size == 0:
            return np.zeros(0, dtype=bool)
        ok = _verified(net, x[idx], torch.as_tensor(e, dtype=x.dtype), lab[idx], **kw)
        return ok.cpu().numpy()

    ok0 = check(np.arange(B), np.full(B, start))
    lo[ok0] = start
    hi[~ok0] = start
    # double the verified ones, halve the refused ones
    up = np.flatnonzero(ok0)
    cur = start
    for _ in range(cfg.max_doublings):
        if up.size == 0 or cur * 2 > cfg.max_eps:
            break
        cur *= 2
        ok = check(up, np.full(up.size, cur))
        lo[up[ok]] = cur
        hi[up[~ok]] = cur
        up = up[ok]
    capped = np.zeros(B, dtype=bool)
    capped[up] = True
    down = np.flatnonzero(~ok0)
    cur = start
    for _ in range(cfg.max_halvings):
        if down.size == 0:
            break
        cur /= 2
        ok = check(down, np.full(down.size, cur))
        lo[down[ok]] = cur
        hi[down[~ok]] = cur
        down = down[~ok]
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
    return lo, capped


# -------------------------------------------------------------- main entry
def certify_states(net: nn.Module, x, eps: float | list[float], method: str = "crown", *,
                   kind: str = "discrete", norm: float = INF, lower=None, upper=None,
                   backend: str = "auto", radius: RadiusConfig | bool | None = True,
                   smoothing: SmoothingConfig | None = None, exact: ExactConfig | None = None,
                   alpha_iterations: int = 20, generator: torch.Generator | int | None = 0,
                   deviation_tol: float | None = None, q_values: bool = True,
                   ) -> list[StateCertificates]:
    """Certify every state of the batch ``x`` at each eps of ``eps`` with ``method``.

    Args:
        net: the acting network as an ``nn.Sequential`` (``agent.bounded_form()``),
            network input -> Q-values / logits (discrete) or action mean (continuous).
        x: (B, *in_shape) network inputs (preprocessed observations).
        eps: one radius or a list (a grid); measured in the threat norm ``norm``.
        method: ibp, crown, crown-ibp, alpha-crown, lipschitz, exact or smoothing.
        kind: "discrete" (argmax certificate) or "continuous" (action-mean bounds).
        norm, lower, upper: the threat model's norm and input domain clip.
        radius: a :class:`RadiusConfig`, True (defaults) or False/None (skip).
        smoothing, exact: method settings; generator: smoothing noise seed.
        deviation_tol: continuous only: certified iff max deviation <= tol.
        q_values: also bound each output (per-action Q bounds, value bounds).
    Returns:
        One :class:`StateCertificates` per eps (the radius is computed once).
    """
    check_method(method)
    eps_list = [eps] if not isinstance(eps, (list, tuple, np.ndarray)) else list(eps)
    if not eps_list:
        raise ValueError("need at least one eps")
    for e in eps_list:
        e = float(e)
        if math.isnan(e) or math.isinf(e) or e < 0:
            raise ValueError(f"eps must be finite and >= 0; got {e}")
    net = net.eval()
    x = _as_input(x, None)
    with torch.no_grad():
        try:
            out = net(x)
        except RuntimeError as err:
            raise ValueError(f"observation batch shape {tuple(x.shape)} does not fit the "
                             f"network: {err}") from None
    if out.dim() != 2:
        raise ValueError(f"the network must output (B, K); got {tuple(out.shape)}")
    norm = parse_norm(norm)
    exact = exact or ExactConfig()
    validate(net, tuple(x.shape[1:]), method, norm, kind, exact)
    rcfg = RadiusConfig() if radius is True else (radius or RadiusConfig(enabled=False))
    out64 = out.detach().double()
    if method == "smoothing":
        return _smoothing(net, x, out64, eps_list, norm, smoothing or SmoothingConfig(),
                          generator)
    if kind == "continuous":
        return _continuous(net, x, out64, eps_list, method, norm, lower, upper, backend,
                           alpha_iterations, deviation_tol)
    labels = out.argmax(dim=1)
    kw = dict(method=method, norm=norm, lower=lower, upper=upper, backend=backend,
              alpha_iterations=alpha_iterations, exact=exact)
    results = []
    for e in eps_list:
        t0 = time.perf_counter()
        ml, info = _margins(net, x, float(e), labels, **kw)
        cert = (ml > 0).all(dim=1).cpu().numpy()
        lo_q = hi_q = None
        if q_values:
            lo_q, hi_q = _output_bounds(net, x, out64, float(e), method, norm, lower, upper,
                                        backend, alpha_iterations)
        res = StateCertificates(
            method=method, eps=float(e), norm=norm, certificate_kind=KIND[method],
            action=labels.cpu().numpy(), certified=cert, margin_lower=ml.cpu().numpy(),
            min_margin_lower=ml.min(dim=1).values.cpu().numpy(), radius=None,
            output_lower=lo_q, output_upper=hi_q, output=out64.cpu().numpy(),
            extra=dict(info),
        )
        if lo_q is not None:
            _value_fields(res)
        res.time_s = time.perf_counter() - t0
        if method == "exact":
            res.extra["bounds_method"] = "crown (per-output bounds)"
        results.append(res)
    if rcfg.enabled:
        t0 = time.perf_counter()
        if method == "lipschitz":
            r = _lipschitz_radius(net, x, out64, labels, kw)
            capped = np.zeros(len(r), dtype=bool)
        else:
            init = rcfg.init or max(float(max(eps_list)), 1e-3)
            r, capped = certified_radius(net, x, labels, cfg=rcfg, init=init, **kw)
        # every grid eps verified also counts: radius >= largest certified grid eps
        for res in results:
            r = np.where(res.certified, np.maximum(r, res.eps), r)
        dt = time.perf_counter() - t0
        for res in results:
            res.radius = r.copy()
            res.extra["radius_capped"] = capped.copy()
            res.radius_time_s = dt
            res.time_s += dt / len(results)
    return results


def _lipschitz_radius(net, x, out64, labels, kw) -> np.ndarray:
    """Closed form (f_a* - f_(2)) / (2 L), shrunk until re-verified (rounding)."""
    c = _lip.certified_radius(out64, lipschitz_constant(net), labels).cpu().numpy()
    r = np.maximum(c, 0.0) * (1 - 1e-6)
    for _ in range(3):
        ok = _verified(net, x, torch.as_tensor(r, dtype=x.dtype), labels, **kw).cpu().numpy()
        if ok[r > 0].all():
            break
        r = np.where(ok, r, r * 0.999)
    ok = _verified(net, x, torch.as_tensor(r, dtype=x.dtype), labels, **kw).cpu().numpy()
    return np.where(ok, r, 0.0)


def _output_bounds(net, x, out64, e, method, norm, lower, upper, backend, alpha_iterations):
    """Per-output [LB, UB] over the ball (exact uses CROWN bounds for this part)."""
    if method == "lipschitz":
        o = out64.cpu().numpy()
        L = lipschitz_constant(net)
        return o - L * e, o + L * e
    m = "crown" if method == "exact" else method
    ball = bounds.LpBall(x, e, norm=norm, lower=lower, upper=upper)
    with torch.no_grad():
        lb, ub = bounds.compute(net, ball, method=m, backend=backend,
                                alpha_iterations=alpha_iterations)
    return lb.double().cpu().numpy(), ub.double().cpu().numpy()


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


def _continuous(net, x, out64, eps_list, method, norm, lower, upper, backend,
                alpha_iterations, tol) -> list[StateCertificates]:
    results = []
    mu = out64.cpu().numpy()
    for e in eps_list:
        t0 = time.perf_counter()
        lb, ub = _output_bounds(net, x, out64, float(e), method, norm, lower, upper, backend,
                                alpha_iterations)
        dev = np.maximum(ub - mu, mu - lb).clip(min=0.0)
        mdev = dev.max(axis=1)
        results.append(StateCertificates(
            method=method, eps=float(e), norm=norm, certificate_kind=KIND[method],
            action=None, certified=None if tol is None else mdev <= float(tol),
            margin_lower=None, min_margin_lower=None, radius=None, output_lower=lb,
            output_upper=ub, output=mu, max_deviation=mdev, deviation=dev,
            time_s=time.perf_counter() - t0,
            extra={} if tol is None else {"deviation_tol": float(tol)}))
    return results


def _smoothing(net, x, out64, eps_list, norm, cfg: SmoothingConfig,
               generator) -> list[StateCertificates]:
    """Cohen et al. CERTIFY; certified at eps iff radius_l2 > eps (l2) or eps * sqrt(d)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        c = _smooth.certify(net, x, cfg.sigma, cfg.n0, cfg.n, cfg.alpha, generator=generator,
                            batch_size=cfg.batch_size)
    dt = time.perf_counter() - t0
    d = int(x[0].numel())
    scale = math.sqrt(d) if norm == INF else 1.0
    r2 = c.radius_l2.cpu().numpy()
    pred = c.prediction.cpu().numpy()
    base = out64.argmax(dim=1).cpu().numpy()
    # largest threat-norm radius covered by ||delta||_2 < R (strict): shrink a hair
    r = np.where(pred >= 0, r2 / scale * (1 - 1e-9), 0.0)
    results = []
    for e in eps_list:
        e2 = _smooth.linf_to_l2(e, d) if norm == INF else float(e)
        cert = (pred >= 0) & (r2 > e2)
        results.append(StateCertificates(
            method="smoothing", eps=float(e), norm=norm, certificate_kind="probabilistic",
            action=pred, certified=cert, margin_lower=None, min_margin_lower=None, radius=r,
            output_lower=None, output_upper=None, output=out64.cpu().numpy(),
            time_s=dt / len(eps_list),
            extra={"policy": "smoothed", "bound_type": "l2", "bound": c.bound,
                   "n0": c.n0, "n": c.n, "alpha": c.alpha, "sigma": c.sigma, "input_dim": d,
                   "eps_l2": e2,
                   "conversion": ("eps_l2 = eps * sqrt(d) (l_inf ball inside the l2 ball)"
                                  if norm == INF else "none (l2 threat model)"),
                   "radius_l2": r2, "pA_lower": c.pA_lower.cpu().numpy(),
                   "base_action": base, "abstain": pred < 0},
        ))
    return results
