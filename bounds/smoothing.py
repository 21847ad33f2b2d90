"""Gaussian randomized smoothing: probabilistic l2 certificates.

Two certificates, both for the smoothed model built from a base model ``f``
mapping a batch (N, *shape) to scores (N, K):

* **argmax certificate** (Cohen, Rosenfeld & Kolter 2019, PREDICT / CERTIFY).
  The base classifier is h(x) = argmax_k f(x)_k and the smoothed classifier is
  g(x) = argmax_k P[h(x + N(0, sigma^2 I)) = k]. If pA_lower is a lower
  confidence bound on P[h(x + noise) = cA] and pA_lower > 1/2, then
  g(x + delta) = cA for every ||delta||_2 < R = sigma * PhiInv(pA_lower).
* **smoothed-value certificate** (CROP LoAct, Wu et al. 2022). With Q clamped
  to [V_lo, V_hi], the smoothed value Q~(x)_a = E[clamp(Q(x + noise))_a]
  satisfies PhiInv((Q~(x + delta)_a - V_lo) / (V_hi - V_lo)) being
  (1/sigma)-Lipschitz in delta (l2), which gives per-action value bounds under
  any l2 perturbation of size r and a radius within which argmax_a Q~ cannot
  change.

Both are *probabilistic*: they hold with probability >= 1 - alpha over the
sampling noise. Noise is drawn fresh for every state and every sample from an
explicit ``torch.Generator`` (or an int seed).

l_inf threat models are handled by the explicit, lossy conversion
||delta||_inf <= eps  =>  ||delta||_2 <= eps * sqrt(d)  (see ``linf_to_l2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import beta as _beta
from scipy.stats import binom as _binom
from scipy.stats import norm as _norm

__all__ = [
    "SmoothingPrediction",
    "SmoothingCertificate",
    "SmoothedValueCertificate",
    "LinfCheck",
    "clopper_pearson_lower",
    "predict",
    "certify",
    "certify_value",
    "smoothed_value_bounds",
    "linf_to_l2",
    "certified_linf",
]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
GeneratorLike = torch.Generator | int | None


# ----------------------------------------------------------------- statistics
def clopper_pearson_lower(successes, trials, alpha: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower confidence bound at level 1 - alpha.

    For k successes out of n Bernoulli(p) trials returns p_lo with
    P[p >= p_lo] >= 1 - alpha, i.e. the alpha-quantile of Beta(k, n - k + 1)
    (0 when k = 0). Vectorized over ``successes`` / ``trials``.
    """
    _check_alpha(alpha)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("clopper_pearson_lower: need 0 <= successes <= trials")
    with np.errstate(invalid="ignore"):
        lo = _beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k > 0, lo, 0.0)


def binom_two_sided_pvalue_half(k: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Two-sided exact binomial test p-value of H0: p = 1/2 (as scipy.binomtest)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    small = np.minimum(k, n - k)
    p = 2.0 * _binom.cdf(small, n, 0.5)
    p = np.where(n > 0, np.minimum(p, 1.0), 1.0)
    return p


def _check_alpha(alpha: float) -> None:
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")


def _check_common(x: torch.Tensor, sigma: float, batch_size: int, alpha: float,
                  **samples: int) -> torch.Tensor:
    """x as a float batch after checking it, sigma, batch_size, alpha and every sample
    count in ``samples`` (>= 1); ValueError naming the first bad one."""
    _check_alpha(alpha)
    for name, v in samples.items():
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1; got {v}")
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (B, *shape); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf values")
    if not (math.isfinite(float(sigma)) and float(sigma) > 0):
        raise ValueError(f"sigma must be positive and finite; got {sigma}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    return x


def _as_generator(generator: GeneratorLike, device) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)):
        g = torch.Generator(device=device)
        g.manual_seed(int(generator))
        return g
    raise TypeError(f"generator must be a torch.Generator, an int seed or None; got {generator!r}")


# ------------------------------------------------------------------- sampling
@torch.no_grad()
def _noisy_outputs(
    f: ScoreFn,
    x: torch.Tensor,
    sigma: float,
    num: int,
    generator: torch.Generator | None,
    batch_size: int,
    reduce: Callable[[torch.Tensor, torch.Tensor], None],
) -> None:
    """Evaluate f at num noisy copies of every state, fresh noise for each copy.

    Samples are laid out state-major (state 0's num copies, then state 1's, ...)
    and processed in chunks of ``batch_size``; ``reduce(states, outputs)`` gets
    the state index of every row of each chunk.
    """
    B = x.shape[0]
    total = B * num
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        states = torch.arange(start, stop, device=x.device) // num
        xs = x[states]
        noise = torch.randn(xs.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = f(xs + sigma * noise)
        if out.dim() != 2 or out.shape[0] != xs.shape[0]:
            raise ValueError(
                f"f must map (N, *shape) to scores (N, K); got output shape {tuple(out.shape)}"
            )
        reduce(states, out)


def _class_counts(f, x, sigma, num, generator, batch_size) -> torch.Tensor:
    holder: dict[str, torch.Tensor] = {}

    def reduce(states: torch.Tensor, out: torch.Tensor) -> None:
        if "c" not in holder:
            holder["c"] = torch.zeros(x.shape[0], out.shape[1], dtype=torch.long, device=x.device)
        pred = out.argmax(dim=1)
        holder["c"].index_put_((states, pred), torch.ones_like(pred), accumulate=True)

    _noisy_outputs(f, x, sigma, num, generator, batch_size, reduce)
    return holder["c"]


# ------------------------------------------------------------- argmax (Cohen)
@dataclass
class SmoothingPrediction:
    """Result of Cohen et al. PREDICT (per state).

    ``prediction`` is the smoothed class, or -1 (abstain) when the two-sided
    binomial test of the top two counts has p-value > alpha. PREDICT returns a
    wrong (non-abstaining) answer with probability at most alpha.
    """

    prediction: torch.Tensor  # (B,) long, -1 = abstain
    counts: torch.Tensor  # (B, K) long
    pvalue: torch.Tensor  # (B,) float64
    n: int
    alpha: float
    sigma: float
    kind: str = "probabilistic"


@dataclass
class SmoothingCertificate:
    """Result of Cohen et al. CERTIFY (per state).

    With probability >= 1 - alpha over the sampling, for every state b with
    ``prediction[b] != -1`` the smoothed classifier satisfies
    g(x_b + delta) = prediction[b] for all ||delta||_2 < radius_l2[b]
    (radius_l2 = sigma * PhiInv(pA_lower); 0 when abstaining).
    """

    prediction: torch.Tensor  # (B,) long, -1 = abstain
    pA_lower: torch.Tensor  # (B,) float64, Clopper-Pearson lower bound
    radius_l2: torch.Tensor  # (B,) float64
    counts: torch.Tensor  # (B, K) long, from the n estimation samples
    counts_selection: torch.Tensor  # (B, K) long, from the n0 selection samples
    n0: int
    n: int
    alpha: float
    sigma: float
    input_dim: int
    kind: str = "probabilistic"
    bound: str = "clopper-pearson (one-sided)"

    def certified_linf(self, eps: float) -> LinfCheck:
        """Certified at l_inf eps? (radius_l2 > eps * sqrt(d), see ``certified_linf``)."""
        return certified_linf(self, eps)


def predict(
    f: ScoreFn,
    x: torch.Tensor,
    sigma: float,
    n: int,
    alpha: float,
    generator: GeneratorLike = None,
    batch_size: int = 1000,
) -> SmoothingPrediction:
    """Cohen et al. PREDICT for a batch of states.

    Draws n Gaussian samples x_b + N(0, sigma^2 I) per state (fresh noise for
    each state), counts argmax_k f(.)_k, and returns the top class cA unless the
    two-sided binomial test of nA vs nB (top two counts, H0: p = 1/2) has
    p-value > alpha, in which case it abstains (-1).
    """
    x = _check_common(x, sigma, batch_size, alpha, n=n)
    gen = _as_generator(generator, x.device)
    counts = _class_counts(f, x, float(sigma), int(n), gen, int(batch_size))
    top2 = counts.topk(min(2, counts.shape[1]), dim=1)
    nA = top2.values[:, 0].cpu().numpy()
    nB = top2.values[:, 1].cpu().numpy() if counts.shape[1] > 1 else np.zeros_like(nA)
    pval = binom_two_sided_pvalue_half(nA, nA + nB)
    pred = top2.indices[:, 0].clone()
    pred[torch.as_tensor(pval > alpha, device=pred.device)] = -1
    return SmoothingPrediction(
        prediction=pred,
        counts=counts,
        pvalue=torch.as_tensor(pval, dtype=torch.float64),
        n=int(n),
        alpha=float(alpha),
        sigma=float(sigma),
    )


# Deliberate parallel (duplicates lists it): CERTIFY takes PREDICT's arguments (and n0).
def certify(
    f: ScoreFn,
    x: torch.Tensor,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    generator: GeneratorLike = None,
    batch_size: int = 1000,
) -> SmoothingCertificate:
    """Cohen et al. CERTIFY for a batch of states (l2 radius, probabilistic).

    n0 noisy samples per state select cA = the most frequent base class; n fresh
    samples count nA = #{h(x + noise) = cA}; pA_lower is the one-sided
    Clopper-Pearson lower bound of P[h(x + noise) = cA] at level 1 - alpha.
    Abstain (-1, radius 0) unless pA_lower > 1/2; otherwise the l2 radius is
    R = sigma * PhiInv(pA_lower).
    """
    x = _check_common(x, sigma, batch_size, alpha, n0=n0, n=n)
    gen = _as_generator(generator, x.device)
    c0 = _class_counts(f, x, float(sigma), int(n0), gen, int(batch_size))
    cA = c0.argmax(dim=1)
    counts = _class_counts(f, x, float(sigma), int(n), gen, int(batch_size))
    nA = counts.gather(1, cA[:, None])[:, 0].cpu().numpy()
    pA = clopper_pearson_lower(nA, np.full_like(nA, int(n)), alpha)
    ok = pA > 0.5
    radius = np.where(ok, float(sigma) * _norm.ppf(np.where(ok, pA, 0.75)), 0.0)
    pred = cA.clone()
    pred[torch.as_tensor(~ok, device=pred.device)] = -1
    return SmoothingCertificate(
        prediction=pred,
        pA_lower=torch.as_tensor(pA, dtype=torch.float64),
        radius_l2=torch.as_tensor(radius, dtype=torch.float64),
        counts=counts,
        counts_selection=c0,
        n0=int(n0),
        n=int(n),
        alpha=float(alpha),
        sigma=float(sigma),
        input_dim=int(x[0].numel()),
    )


# ------------------------------------------------------ smoothed value (CROP)
@dataclass
class SmoothedValueCertificate:
    """Smoothed-Q certificate (CROP LoAct) per state.

    Q~(x)_a = E[clamp(Q(x + N(0, sigma^2 I))_a, V_lo, V_hi)] is estimated by the
    mean of m noisy copies, ``q_smooth``. With probability >= 1 - alpha over the
    sampling, for every state b, action a and every ||delta||_2 <= r:
    ``smoothed_value_bounds(self, r)`` lower/upper-bound Q~(x_b + delta)_a, and
    for ||delta||_2 < radius_l2[b] the smoothed greedy action
    argmax_a Q~(x_b + delta)_a equals prediction[b] (-1 = abstain, radius 0).

    ``alpha_per_bound`` is the level of each one-sided Hoeffding bound: alpha /
    (2K) when ``simultaneous`` (all 2K bounds hold together with probability
    >= 1 - alpha, by the union bound), alpha otherwise (the CROP paper's
    per-bound statement).
    """

    prediction: torch.Tensor  # (B,) long, -1 = abstain
    top_action: torch.Tensor  # (B,) long, argmax of q_smooth
    runner_up: torch.Tensor  # (B,) long, second largest of q_smooth (-1 if K = 1)
    q_smooth: torch.Tensor  # (B, K) float64, empirical mean of clamped Q
    q_lower: torch.Tensor  # (B, K) float64, q_smooth - D clipped to [V_lo, V_hi]
    q_upper: torch.Tensor  # (B, K) float64, q_smooth + D clipped to [V_lo, V_hi]
    radius_l2: torch.Tensor  # (B,) float64
    hoeffding_margin: float  # D
    m: int
    alpha: float
    alpha_per_bound: float
    simultaneous: bool
    sigma: float
    v_lo: float
    v_hi: float
    input_dim: int
    kind: str = "probabilistic"
    bound: str = field(default="hoeffding")

    def bounds_at(self, r: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-action bounds of Q~(x + delta) valid for every ||delta||_2 <= r."""
        return smoothed_value_bounds(self, r)

    def certified_linf(self, eps: float) -> LinfCheck:
        """Certified at l_inf eps? (radius_l2 > eps * sqrt(d), see ``certified_linf``)."""
        return certified_linf(self, eps)


def _smoothed_mean(q_fn, x, sigma: float, m: int, gen, batch_size: int, v_lo: float,
                   v_hi: float) -> torch.Tensor:
    """(B, K) float64 mean over m noisy copies per state of Q clamped to [V_lo, V_hi] (cpu)."""
    sums: dict[str, torch.Tensor] = {}

    def reduce(states: torch.Tensor, out: torch.Tensor) -> None:
        out = out.to(torch.float64).clamp(v_lo, v_hi)
        if "s" not in sums:
            sums["s"] = torch.zeros(x.shape[0], out.shape[1], dtype=torch.float64, device=x.device)
        sums["s"].index_add_(0, states, out)

    _noisy_outputs(q_fn, x, sigma, m, gen, batch_size, reduce)
    return (sums["s"] / m).cpu()


def _value_radius(q: torch.Tensor, D: float, v_lo: float, v_hi: float, sigma: float):
    """Top action a1, runner-up a2 (-1 if K = 1), certified mask and l2 radius
    sigma / 2 [PhiInv((Q1 - D - V_lo) / w) - PhiInv((Q2 + D - V_lo) / w)], w = V_hi - V_lo."""
    width = v_hi - v_lo
    order = q.argsort(dim=1, descending=True, stable=True)
    a1 = order[:, 0]
    if q.shape[1] == 1:  # a single action is trivially certified at every radius
        ones = np.ones(q.shape[0], dtype=bool)
        return a1, torch.full_like(a1, -1), ones, np.full(q.shape[0], np.inf)
    a2 = order[:, 1]
    p1 = ((q.gather(1, a1[:, None])[:, 0] - D - v_lo) / width).clamp(0.0, 1.0).numpy()
    p2 = ((q.gather(1, a2[:, None])[:, 0] + D - v_lo) / width).clamp(0.0, 1.0).numpy()
    with np.errstate(invalid="ignore"):
        r = sigma / 2.0 * (_norm.ppf(p1) - _norm.ppf(p2))
    ok = np.isfinite(r) & (r > 0)
    return a1, a2, ok, np.where(ok, r, 0.0)


def certify_value(
    q_fn: ScoreFn,
    x: torch.Tensor,
    sigma: float,
    m: int,
    alpha: float,
    v_lo: float,
    v_hi: float,
    generator: GeneratorLike = None,
    batch_size: int = 1000,
    simultaneous: bool = True,
) -> SmoothedValueCertificate:
    """Smoothed-value certificate (CROP LoAct) for a batch of states.

    Q is clamped to [V_lo, V_hi] and averaged over m noisy copies per state
    (fresh noise for every state). Hoeffding margin
    D = (V_hi - V_lo) * sqrt(ln(1 / alpha') / (2 m)) with alpha' = alpha / (2K)
    if ``simultaneous`` else alpha. With a1, a2 the top two actions of the
    smoothed Q, the l2 radius is
    R = sigma / 2 * [PhiInv((Q1 - D - V_lo) / (V_hi - V_lo))
                     - PhiInv((Q2 + D - V_lo) / (V_hi - V_lo))],
    abstaining (-1, R = 0) when R is not positive.
    """
    x = _check_common(x, sigma, batch_size, alpha, m=m)
    v_lo, v_hi = float(v_lo), float(v_hi)
    if not (math.isfinite(v_lo) and math.isfinite(v_hi) and v_hi > v_lo):
        raise ValueError(f"need finite V_lo < V_hi; got [{v_lo}, {v_hi}]")
    q = _smoothed_mean(q_fn, x, float(sigma), int(m), _as_generator(generator, x.device),
                       int(batch_size), v_lo, v_hi)
    K = q.shape[1]
    a_eff = float(alpha) / (2 * K) if simultaneous else float(alpha)
    D = (v_hi - v_lo) * math.sqrt(math.log(1.0 / a_eff) / (2.0 * int(m)))
    q_lo = (q - D).clamp(v_lo, v_hi)
    q_hi = (q + D).clamp(v_lo, v_hi)
    a1, a2, ok, radius = _value_radius(q, D, v_lo, v_hi, float(sigma))
    pred = a1.clone()
    pred[torch.as_tensor(~ok)] = -1
    return SmoothedValueCertificate(
        prediction=pred,
        top_action=a1,
        runner_up=a2,
        q_smooth=q,
        q_lower=q_lo,
        q_upper=q_hi,
        radius_l2=torch.as_tensor(radius, dtype=torch.float64),
        hoeffding_margin=D,
        m=int(m),
        alpha=float(alpha),
        alpha_per_bound=a_eff,
        simultaneous=bool(simultaneous),
        sigma=float(sigma),
        v_lo=v_lo,
        v_hi=v_hi,
        input_dim=int(x[0].numel()),
    )


def smoothed_value_bounds(
    cert: SmoothedValueCertificate, r: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of the smoothed Q under any l2 perturbation of size <= r.

    For every action a and ||delta||_2 <= r (with the certificate's confidence):
    V_lo + (V_hi - V_lo) Phi(PhiInv(p_lo_a) - r / sigma) <= Q~(x + delta)_a
    <= V_lo + (V_hi - V_lo) Phi(PhiInv(p_hi_a) + r / sigma),
    where p_lo = (Q~ - D - V_lo) / (V_hi - V_lo) and p_hi = (Q~ + D - V_lo) /
    (V_hi - V_lo), both clipped to [0, 1]. Returns (lower, upper), each (B, K).
    """
    r = float(r)
    if not (r >= 0 and math.isfinite(r)):
        raise ValueError(f"r must be finite and >= 0; got {r}")
    width = cert.v_hi - cert.v_lo
    p_lo = ((cert.q_lower - cert.v_lo) / width).clamp(0.0, 1.0).numpy()
    p_hi = ((cert.q_upper - cert.v_lo) / width).clamp(0.0, 1.0).numpy()
    lo = cert.v_lo + width * _norm.cdf(_norm.ppf(p_lo) - r / cert.sigma)
    hi = cert.v_lo + width * _norm.cdf(_norm.ppf(p_hi) + r / cert.sigma)
    return torch.as_tensor(lo, dtype=torch.float64), torch.as_tensor(hi, dtype=torch.float64)


# --------------------------------------------------------- l_inf <-> l2 bridge
def linf_to_l2(eps: float, dim: int) -> float:
    """l2 radius of a ball containing the l_inf ball of radius eps in R^dim.

    ||delta||_inf <= eps implies ||delta||_2 <= eps * sqrt(dim) (tight at the
    corners), so an l2 certificate of radius >= eps * sqrt(dim) covers it.
    """
    eps = float(eps)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be finite and >= 0; got {eps}")
    if int(dim) < 1:
        raise ValueError(f"dim must be >= 1; got {dim}")
    return eps * math.sqrt(int(dim))


@dataclass
class LinfCheck:
    """An l2 smoothing certificate read at an l_inf radius, conversion explicit.

    certified[b] is True iff the state was not abstained on and
    radius_l2[b] > eps_l2_equiv = eps_linf * sqrt(dim).
    """

    certified: torch.Tensor  # (B,) bool
    prediction: torch.Tensor  # (B,) long
    radius_l2: torch.Tensor  # (B,) float64
    eps_linf: float
    eps_l2_equiv: float
    dim: int
    conversion: str = "||d||_inf <= eps  =>  ||d||_2 <= eps * sqrt(dim)"
    kind: str = "probabilistic"


def certified_linf(cert, eps: float, dim: int | None = None) -> LinfCheck:
    """Is the smoothed prediction certified against every ||delta||_inf <= eps?

    Works for ``SmoothingCertificate`` and ``SmoothedValueCertificate``. The
    l_inf ball is enclosed in the l2 ball of radius eps * sqrt(dim) (dim = input
    dimension by default) and a state counts as certified iff it was not
    abstained on and its l2 radius exceeds that (the l2 guarantee holds for
    ||delta||_2 < R, hence the strict inequality).
    """
    d = int(cert.input_dim if dim is None else dim)
    e2 = linf_to_l2(eps, d)
    ok = (cert.prediction >= 0) & (cert.radius_l2 > e2)
    return LinfCheck(
        certified=ok,
        prediction=cert.prediction,
        radius_l2=cert.radius_l2,
        eps_linf=float(eps),
        eps_l2_equiv=e2,
        dim=d,
    )
