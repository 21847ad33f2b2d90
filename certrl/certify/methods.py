"""The certificate methods, one class each, and the registry every caller reads.

A method knows its name, the kind of statement it gives (``sound``,
``probabilistic`` or ``heuristic``), its table labels (plain and LaTeX), the
norms and action kinds it supports, the settings that change its numbers, and
how to bound the margins f_label(x') - f_j(x') over a ball (``margins``).
Adding a method = one class here plus one line in ``METHODS``; the CLI help,
the runner (``certrl.certify.run``), ``certify_states`` and the tables
(``certrl.report``) read the registry.

State methods certify one state at a time (``level = "state"``); trajectory
methods (policy smoothing, GWC) are run by ``certrl.certify.run`` over whole
episodes and have no margins.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

import bounds
from bounds.api import rounding_allowance
from bounds.graph import flatten_modules
from bounds.lipschitz import (
    LinfDistLayer,
    LipschitzMLP,
    ScalarBias,
    SortNetLayer,
    lipschitz_margin_certificate,
    margin_radius,
)
from bounds.smoothing import certify as smoothing_certify
from certrl.device import module_device

INF = math.inf
ALL_NORMS = frozenset({INF, 2.0, 1.0})
ACTION_KINDS = frozenset({"discrete", "continuous"})
LIPSCHITZ_LAYERS = (SortNetLayer, LinfDistLayer, ScalarBias, nn.Flatten, nn.Identity)


# ------------------------------------------------------------------ settings
# Deliberate parallel (duplicates lists it): the typed settings dataclasses below share one shape.
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
class BabConfig:
    """Branch and bound (``bounds.verify``) settings: wall-time limit per state and
    per query (s; past it the answer is "unknown", counted as not certified) and the
    number of domains bounded per batched CROWN call."""

    timeout_s: float = 10.0
    batch: int = 512


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
class CertifyOptions:
    """How to certify (the threat model says against what).

    backend / alpha_iterations: bound-propagation settings (``bounds``);
    radius: the radius search (``enabled=False`` skips it); smoothing, exact:
    method settings; seed: smoothing noise seed (int, a ``torch.Generator`` or
    None); deviation_tol: continuous policies are certified iff the max
    deviation is <= tol; q_values: also bound each output (discrete).
    """

    backend: str = "auto"
    alpha_iterations: int = 20
    radius: RadiusConfig = field(default_factory=RadiusConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)
    bab: BabConfig = field(default_factory=BabConfig)
    seed: torch.Generator | int | None = 0
    deviation_tol: float | None = None
    q_values: bool = True

    def __post_init__(self) -> None:
        if self.radius is True or self.radius is None or self.radius is False:
            self.radius = RadiusConfig(enabled=bool(self.radius))


# ------------------------------------------------------------ network checks
def lipschitz_constant(net: nn.Module) -> float | None:
    """L with |f_k(x) - f_k(x')| <= L ||x - x'||_inf for every output k, or None.

    A module with a ``lipschitz_linf`` attribute (e.g. ``certrl.nets.LipschitzQNetwork``,
    Q = scale * SortNet MLP) gives it; a Sequential made only of SortNet / l_inf-dist
    layers (plus ScalarBias, Flatten, Identity) has L = 1; anything else: None.
    """
    declared = getattr(net, "lipschitz_linf", None)
    if declared is not None and not isinstance(net, LipschitzMLP):
        L = float(declared)
        return L if (L > 0 and math.isfinite(L)) else None
    leaves = flatten_modules(net) if isinstance(net, nn.Sequential) else [net]
    ok = bool(leaves) and all(isinstance(m, LIPSCHITZ_LAYERS) for m in leaves) and any(
        isinstance(m, (SortNetLayer, LinfDistLayer)) for m in leaves)
    return 1.0 if ok else None


def is_lipschitz_net(net: nn.Module) -> bool:
    """True iff every leaf layer is a ``bounds.lipschitz`` 1-Lipschitz (l_inf) layer,
    or the module declares its constant (``lipschitz_linf``, e.g. certrl's lipschitz_q)."""
    return lipschitz_constant(net) is not None


def leaf_layers(net: nn.Module) -> list[nn.Module]:
    """Leaf layers of a (nested) Sequential in order; any other module is one leaf."""
    return flatten_modules(net) if isinstance(net, nn.Sequential) else [net]


def count_relus(net: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Number of ReLU neurons of ``net`` at input shape ``in_shape``."""
    n = 0
    z = torch.zeros(1, *in_shape, device=module_device(net))
    with torch.no_grad():
        for m in leaf_layers(net):
            z = m(z)
            if isinstance(m, nn.ReLU):
                n += z[0].numel()
    return n


def check_exact(net: nn.Module, in_shape: tuple[int, ...], cfg: ExactConfig) -> None:
    """Raise ValueError unless ``net`` is a ReLU MLP small enough for MILP."""
    allowed = (nn.Linear, nn.ReLU, nn.Flatten, nn.Identity, bounds.Normalize)
    bad = [type(m).__name__ for m in leaf_layers(net) if not isinstance(m, allowed)]
    if bad:
        raise ValueError(f"exact (MILP) handles ReLU MLPs only (Linear/ReLU/Flatten/Normalize); "
                         f"this network has {', '.join(sorted(set(bad)))}; use crown or "
                         "alpha-crown instead")
    n = count_relus(net, in_shape)
    if n > cfg.max_relus:
        raise ValueError(f"exact (MILP): network too large for an exact answer ({n} ReLU "
                         f"neurons > max_relus={cfg.max_relus}); use alpha-crown or crown, or "
                         "raise max_relus")


def per_state_eps(ball: bounds.LpBall) -> torch.Tensor:
    """max_i eps_{b,i} per state as a (B, 1) float64 column (the ball lies inside the
    ball of that scalar radius, so bounds derived from it stay sound)."""
    e = torch.as_tensor(ball.eps, dtype=torch.float64, device=ball.center.device)
    if e.numel() == 1:
        return e.reshape(1, 1).expand(ball.batch_size, 1)
    return e.expand(ball.center.shape).reshape(ball.batch_size, -1).amax(dim=1, keepdim=True)


def _norm_words(norms: frozenset) -> str:
    return ", ".join("l_inf" if p == INF else f"l{int(p)}" for p in sorted(norms))


# ------------------------------------------------------------------ methods
class CertMethod:
    """One certificate method; subclasses set the class attributes and ``margins``."""

    name: str = ""
    kind: str = "sound"  # "sound", "probabilistic" or "heuristic"
    label: str = ""  # plain-text table label
    latex: str = ""  # LaTeX table label
    norms: frozenset = ALL_NORMS
    actions: frozenset = ACTION_KINDS
    level: str = "state"  # "state" (per-state certificate) or "trajectory"
    radius_search: bool = True  # the radius is found by bracketing + bisection
    output_note: str | None = None  # how the per-output bounds were found, if not by it
    episode_fields: tuple[str, ...] = ()  # scalar extras copied to the episode row

    def __repr__(self) -> str:
        return f"<certificate method {self.name} ({self.kind})>"

    def check(self, net: nn.Module, in_shape: tuple[int, ...], norm: float,
              action_kind: str, options: CertifyOptions) -> None:
        """Raise ValueError if this method cannot certify ``net`` under ``norm``."""
        if action_kind not in ACTION_KINDS:
            raise ValueError(f"action kind must be 'discrete' or 'continuous'; got "
                             f"{action_kind!r}")
        if norm not in self.norms:
            raise ValueError(f"{self.name} certificates are for the {_norm_words(self.norms)} "
                             f"norm{'s' if len(self.norms) > 1 else ''}; got "
                             f"{_norm_words(frozenset({norm}))}")
        if action_kind not in self.actions:
            raise ValueError(f"{self.name} certifies {' / '.join(sorted(self.actions))} "
                             f"actions only")
        self.check_net(net, in_shape, options)

    def check_net(self, net: nn.Module, in_shape: tuple[int, ...],
                  options: CertifyOptions) -> None:
        """Method-specific network checks (none by default)."""

    def settings(self, options) -> dict:
        """The settings that change this method's numbers (JSON-able); ``options`` is a
        :class:`CertifyOptions` or a ``certrl.certify.CertifySettings`` (same fields)."""
        return {"radius": asdict(options.radius)} if self.radius_search else {}

    def prepare(self, net: nn.Module, options: CertifyOptions):
        """What ``margins`` / ``output_bounds`` take as ``net`` (parsed once per batch)."""
        return net

    def targets(self, net, x: torch.Tensor, labels: torch.Tensor,
                options: CertifyOptions):
        """What ``margins`` takes as ``labels`` for the states ``x`` over many radii
        (indexable by state); by default the labels themselves."""
        return labels

    def margins(self, net, ball: bounds.LpBall, labels: torch.Tensor,
                options: CertifyOptions) -> tuple[torch.Tensor, dict]:
        """((B, K) float64 lower bounds of f_label - f_j over the ball, +inf at the
        label; a dict of per-state extras). Certified iff every entry is > 0."""
        raise ValueError(f"{self.name} gives no margin bounds ({self.kind} certificate)")

    def output_bounds(self, net, ball: bounds.LpBall, out64: torch.Tensor,
                      options: CertifyOptions) -> tuple[np.ndarray, np.ndarray]:
        """Per-output [LB, UB] over the ball, as float64 arrays (B, K)."""
        raise ValueError(f"{self.name} gives no output bounds")

    def radius_guess(self, net, out64: torch.Tensor, labels: torch.Tensor) -> np.ndarray | None:
        """A closed-form radius per state (to be re-verified), or None: bisect."""
        return None


class BoundPropagation(CertMethod):
    """A ``bounds`` linear-relaxation / interval method (sound, any norm)."""

    def check_net(self, net, in_shape, options) -> None:
        if lipschitz_constant(net) is not None and not isinstance(net, nn.Sequential):
            raise ValueError(f"{self.name} cannot bound this SortNet / l_inf-dist network; "
                             "use --method lipschitz (closed form, sound)")

    def settings(self, options) -> dict:
        return {**super().settings(options), "backend": options.backend}

    def prepare(self, net: nn.Module, options: CertifyOptions) -> bounds.BoundNetwork:
        """The network bound once (``bounds.bind``): parsed and checked once, reused
        for every ball of the radius search."""
        return bounds.bind(net, backend=options.backend)

    def targets(self, net, x, labels, options):
        """The states' :class:`bounds.MarginProblem` (spec, label mask, rounding
        allowance from f(x)), computed once for the whole radius search."""
        if not isinstance(net, bounds.BoundNetwork):
            return labels
        return net.margin_problem(x, labels)

    def margins(self, net, ball, labels, options):
        bound = net if isinstance(net, bounds.BoundNetwork) else bounds.bind(net, options.backend)
        with torch.no_grad():
            ml = bound.margin_lower(ball, labels, method=self.name,
                                    alpha_iterations=options.alpha_iterations)
        return ml.detach().double(), {"bound_backend": bound.last_backend}

    def output_bounds(self, net, ball, out64, options):
        bound = net if isinstance(net, bounds.BoundNetwork) else bounds.bind(net, options.backend)
        with torch.no_grad():
            lb, ub = bound.compute(ball, method=self.name,
                                   alpha_iterations=options.alpha_iterations)
        return lb.double().cpu().numpy(), ub.double().cpu().numpy()


class IBP(BoundPropagation):
    name, label, latex = "ibp", "IBP", "IBP"


class IBPReference(BoundPropagation):
    """RADIAL-DQN's action certification (``eval_action_cert_rate``): a* is certified iff
    LB Q_a* > max_{j != a*} UB Q_j with separate per-action IBP bounds, i.e. margin lower
    bounds LB_a* - UB_j. Sound, and never tighter than ``ibp`` (which bounds each margin
    Q_a* - Q_j through the network at once, as SA-DQN does)."""

    name, label, latex = "ibp-ref", "IBP-ref", "IBP-ref"

    def margins(self, net, ball, labels, options):
        bound = net if isinstance(net, bounds.BoundNetwork) else bounds.bind(net, options.backend)
        if isinstance(labels, bounds.MarginProblem):
            problem = labels.check_center(ball.center)
        else:
            problem = bound.margin_problem(ball.center, labels)
        with torch.no_grad():
            lb, ub = bound.compute(ball, method="ibp")
        lb, ub = lb.detach().double(), ub.detach().double()
        own = problem.own.to(lb.device)
        lb_label = lb.masked_select(own).reshape(-1, 1)
        ml = lb_label - ub - problem.allowance.to(lb)
        return ml.masked_fill(own, math.inf), {"bound_backend": bound.last_backend}

    def output_bounds(self, net, ball, out64, options):
        return METHODS["ibp"].output_bounds(net, ball, out64, options)


class CrownIBP(BoundPropagation):
    name, label, latex = "crown-ibp", "CROWN-IBP", "CROWN-IBP"


class Crown(BoundPropagation):
    name, label, latex = "crown", "CROWN", "CROWN"


class AlphaCrown(BoundPropagation):
    name, label, latex = "alpha-crown", "alpha-CROWN", r"$\alpha$-CROWN"

    def settings(self, options) -> dict:
        return {**super().settings(options), "alpha_iterations": options.alpha_iterations}


class Lipschitz(CertMethod):
    """Closed form for L-Lipschitz (l_inf) networks: margin_j >= f_a - f_j - 2 L eps."""

    name, label, latex = "lipschitz", "Lipschitz", "Lipschitz"
    norms = frozenset({INF})

    def check_net(self, net, in_shape, options) -> None:
        if not is_lipschitz_net(net):
            names = sorted({type(m).__name__ for m in leaf_layers(net)
                            if not isinstance(m, LIPSCHITZ_LAYERS)})
            raise ValueError("the lipschitz certificate needs a network made only of "
                             "bounds.lipschitz layers (SortNetLayer / LinfDistLayer, "
                             f"ScalarBias, Flatten); this one has {', '.join(names) or 'none'}; "
                             "use crown (or ibp / alpha-crown) instead")

    def margins(self, net, ball, labels, options):
        L = lipschitz_constant(net)
        with torch.no_grad():
            out = net(ball.center).double()
        c = lipschitz_margin_certificate(out, 0.0, L, labels)
        ml = c.margin_lower - 2.0 * L * per_state_eps(ball)
        atol = 8.0 * torch.finfo(out.dtype).eps * (1.0 + float(out.abs().max()))
        # subtract the rounding tolerance so "> 0" means certified with margin to spare
        return (ml - atol).masked_fill(torch.isinf(c.margin_lower), INF), {}

    def radius_guess(self, net, out64, labels):
        """(f_a* - f_(2)) / (2 L)."""
        r = margin_radius(out64, lipschitz_constant(net), labels).cpu().numpy()
        return np.maximum(r, 0.0)

    def output_bounds(self, net, ball, out64, options):
        o = out64.cpu().numpy()
        e = per_state_eps(ball).cpu().numpy()
        L = lipschitz_constant(net)
        return o - L * e, o + L * e


class Exact(CertMethod):
    """MILP (HiGHS through cvxpy): the exact margins of a small ReLU MLP."""

    name, label, latex = "exact", "MILP", "MILP"
    norms = frozenset({INF})
    output_note = "crown (per-output bounds)"
    actions = frozenset({"discrete"})

    def check_net(self, net, in_shape, options) -> None:
        check_exact(net, in_shape, options.exact)

    def settings(self, options) -> dict:
        return {**super().settings(options), "exact": asdict(options.exact)}

    def margins(self, net, ball, labels, options):
        cfg, x = options.exact, ball.center
        res = bounds.milp_margin(net, x, ball.eps, labels, lower=ball.lower, upper=ball.upper,
                                 time_limit=cfg.time_limit, max_relus=cfg.max_relus,
                                 preact=cfg.preact)
        status = ["optimal" if all(s in ("optimal", "label") for s in row) else
                  ("time_limit" if any(s == "time_limit" for s in row) else "error")
                  for row in res.status]
        # same float32 rounding allowance as bounds.margin_lower (MILP is exact in reals
        # up to the solver's 1e-6 tolerance; the network runs in float32)
        with torch.no_grad():
            slack = rounding_allowance(net(x).flatten(1)).double() + 1e-6
        return res.values.double() - slack, {"milp_status": np.array(status, dtype=object)}

    def output_bounds(self, net, ball, out64, options):
        """CROWN bounds (the per-output part of an exact row is not exact)."""
        return METHODS["crown"].output_bounds(net, ball, out64, options)


def ball_row(ball: bounds.LpBall, b: int) -> bounds.LpBall:
    """State ``b``'s ball (batch 1) of a batched ball: per-state eps / domain rows are cut,
    shared ones kept."""
    n, dim = ball.batch_size, ball.center.dim()

    def row(t):
        return t[b:b + 1] if torch.is_tensor(t) and t.dim() == dim and t.shape[0] == n \
            and n > 1 else t
    return bounds.LpBall.trusted(ball.center[b:b + 1], row(ball.eps), ball.norm,
                                 row(ball.lower), row(ball.upper))


class BranchAndBound(CertMethod):
    """Complete verification (``bounds.verify``: branch and bound with batched CROWN and
    PGD) of the greedy action: Q_a*(x') - Q_j(x') > 0 for every j and every x' in the
    l_inf ball. "verified" is exact up to the float32 rounding allowance; a timeout gives
    "unknown" (not certified); "falsified" carries a counterexample checked by a forward
    pass, so the certified radius is bracketed by [radius, radius_upper]."""

    name, label, latex = "bab", "BaB", "BaB"
    kind = "exact"
    norms = frozenset({INF})
    actions = frozenset({"discrete"})
    output_note = "crown (per-output bounds)"

    def check_net(self, net, in_shape, options) -> None:
        z = torch.zeros(1, *in_shape, device=module_device(net))
        bounds.bind(net, "native").compute(bounds.LpBall(z, 0.0), "ibp")  # native parses it

    def settings(self, options) -> dict:
        return {**super().settings(options), "bab": asdict(options.bab)}

    def prepare(self, net: nn.Module, options: CertifyOptions) -> bounds.BoundNetwork:
        """The network bound once with the native engine (which ``verify`` uses)."""
        return bounds.bind(net, backend="native")

    def targets(self, net, x, labels, options):
        """The states' :class:`bounds.MarginProblem`, built once."""
        return BoundPropagation.targets(self, net, x, labels, options)

    def margins(self, net, ball, labels, options):
        """CROWN's margin bounds, then ``bounds.verify`` on each state CROWN leaves open:
        verified -> every margin entry is raised to the proven lower bound of the minimum
        margin (> 0); otherwise CROWN's entries stay (one of them <= 0)."""
        ml, _ = METHODS["crown"].margins(net, ball, labels, options)
        B, K = ml.shape
        status = np.full(B, "verified", dtype=object)
        upper = np.full(B, math.inf)  # objective at a counterexample (>= the exact min)
        cex, domains = np.full(B, None, dtype=object), np.zeros(B, dtype=np.int64)
        plain = net.net if isinstance(net, bounds.BoundNetwork) else net
        for b in np.flatnonzero((ml <= 0).any(dim=1).cpu().numpy()):
            lab = int(torch.isinf(ml[b]).nonzero()[0])
            eye = torch.eye(K, dtype=ball.center.dtype, device=ball.center.device)
            C = (eye[lab] - eye)[torch.arange(K, device=eye.device) != lab]
            res = bounds.verify(plain, ball_row(ball, b), C,
                                timeout_s=options.bab.timeout_s, batch=options.bab.batch)
            status[b], domains[b] = res.status, res.stats.get("domains", 0)
            if res.status == "verified":
                ml[b] = torch.where(torch.isinf(ml[b]), ml[b], ml[b].clamp_min(res.lower))
            elif res.status == "falsified":
                upper[b], cex[b] = res.value, res.counterexample.flatten().tolist()
        return ml, {"bab_status": status, "bab_domains": domains,
                    "bab_counterexample_margin": upper, "counterexample": cex}

    def output_bounds(self, net, ball, out64, options):
        """CROWN bounds (the per-output part of a BaB row is not exact)."""
        return METHODS["crown"].output_bounds(net, ball, out64, options)


class Smoothing(CertMethod):
    """Randomized smoothing (Cohen et al.): a probabilistic certificate of the
    *smoothed* policy's argmax, for the l2 norm (l_inf by eps * sqrt(d))."""

    name, label, latex = "smoothing", "smoothing", "RS"
    kind = "probabilistic"
    norms = frozenset({INF, 2.0})
    actions = frozenset({"discrete"})
    radius_search = False
    episode_fields = ("n0", "n", "alpha", "sigma", "bound", "bound_type", "eps_l2",
                      "conversion", "input_dim", "policy")

    def settings(self, options) -> dict:
        s = asdict(options.smoothing)
        s.pop("batch_size")
        return {"smoothing": s}

    def certify(self, net: nn.Module, x: torch.Tensor, options: CertifyOptions):
        """``bounds.smoothing.certify`` at the configured sigma / n0 / n / alpha: per
        state the smoothed prediction (-1 = abstain), pA lower bound, l2 radius."""
        cfg = options.smoothing
        with torch.no_grad():
            return smoothing_certify(net, x, cfg.sigma, cfg.n0, cfg.n, cfg.alpha,
                                     generator=options.seed, batch_size=cfg.batch_size)


class TrajectoryMethod(CertMethod):
    """A method run over whole episodes by ``certrl.certify.run`` (no margins)."""

    level = "trajectory"
    actions = frozenset({"discrete"})
    radius_search = False


class PolicySmoothing(TrajectoryMethod):
    """Kumar et al.: a certified lower bound of the smoothed policy's expected return."""

    name, label, latex = "policy-smoothing", "PS", "PS"
    kind = "probabilistic"
    norms = frozenset({INF, 2.0})

    def settings(self, options) -> dict:
        """Noise, level, smoothed episodes and return floor (a ``CertifySettings``)."""
        s = options.smoothing
        return {"smoothing": {"sigma": s.sigma, "alpha": s.alpha,
                              "episodes": options.ps_episodes,
                              "return_min": options.ps_return_min}}


class GreedyWorstCase(TrajectoryMethod):
    """RADIAL's greedy worst case: at every step play argmin_{a in A_eps} Q(x, a) with
    A_eps = {a : UB_a >= max_j LB_j} over the eps ball (bounds by ``bounds_method``, or
    by the ``gwc_method`` setting for the plain ``gwc``). Not a certificate: a heuristic
    estimate of the attacked return (the worst-case agent it plays need not be
    realizable by any one attack)."""

    name, label, latex = "gwc", "GWC", "GWC"
    kind = "heuristic"
    bounds_method: str | None = None  # None: the ``gwc_method`` setting (default ibp)

    def bounds_for(self, options) -> str:
        """The bound method that picks the worst actions."""
        return self.bounds_method or getattr(options, "gwc_method", "ibp")

    def settings(self, options) -> dict:
        """The bound method that picks the worst actions (a ``CertifySettings``)."""
        return {"gwc_bounds": self.bounds_for(options)}


class GreedyWorstCaseIBP(GreedyWorstCase):
    """GWC with IBP bounds (RADIAL-DQN's and CAR-DQN's evaluation)."""

    name, label, latex = "gwc-ibp", "GWC (IBP, heuristic)", "GWC (IBP, heuristic)"
    bounds_method = "ibp"


class GreedyWorstCaseCrown(GreedyWorstCase):
    """GWC with CROWN bounds (tighter, so fewer actions look reachable)."""

    name, label, latex = "gwc-crown", "GWC (CROWN, heuristic)", "GWC (CROWN, heuristic)"
    bounds_method = "crown"


# ------------------------------------------------------------------ registry
METHODS: dict[str, CertMethod] = {m.name: m for m in (
    IBP(), IBPReference(), CrownIBP(), Crown(), AlphaCrown(), Lipschitz(), Exact(),
    BranchAndBound(), Smoothing(),
    PolicySmoothing(), GreedyWorstCaseIBP(), GreedyWorstCaseCrown(),
    GreedyWorstCase())}


GWC_METHODS = tuple(n for n, m in METHODS.items() if isinstance(m, GreedyWorstCase))


def method_names(level: str | None = None) -> tuple[str, ...]:
    """Names of the registered methods (of one ``level``: "state" / "trajectory")."""
    return tuple(n for n, m in METHODS.items() if level is None or m.level == level)


def get_method(name: str) -> CertMethod:
    """The registered method called ``name``; ValueError listing the known names."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; choose from "
                         f"{', '.join(method_names())}") from None


def state_method(name: str) -> CertMethod:
    """``get_method`` restricted to per-state methods."""
    m = get_method(name)
    if m.level != "state":
        raise ValueError(f"{name} certifies whole episodes, not single states; state "
                         f"methods: {', '.join(method_names('state'))}")
    return m
