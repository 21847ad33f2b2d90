"""Public entry points: ``bind`` (a network checked once) and the one-shot
``compute`` and ``margin_lower``."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from bounds import graph, interval, linear, spec
from bounds.flatten import flatten_modules
from bounds.perturbation import LpBall

METHODS = ("ibp", "crown", "crown-ibp", "alpha-crown")

# Floating-point allowance of margin_lower, relative to the output scale. The
# bounds are exact in real arithmetic, but the network itself runs in float32:
# a margin bound of 3e-7 on outputs near 8 (one float32 ulp is ~1e-6 there) was
# "certified" while PGD found a point where the float32 network flips (seen on a
# CartPole agent). 1e-5 relative covers the forward pass's rounding of small
# and medium nets with a wide margin; float64 networks get 1e-12.
ROUNDING_RTOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2,
                 torch.bfloat16: 1e-2}


def rounding_allowance(outputs: torch.Tensor) -> torch.Tensor:
    """(B, 1) slack subtracted from margin bounds: rtol(dtype) * (1 + max_k |f_k(x)|)."""
    rtol = ROUNDING_RTOL.get(outputs.dtype, 1e-5)
    return rtol * (1.0 + outputs.detach().abs().amax(dim=1, keepdim=True))
BACKENDS = ("native", "lirpa", "auto")


def _check_args(net: nn.Module, ball: LpBall, method: str, backend: str,
                alpha_iterations=20) -> None:
    """Validate the arguments (cheap: types, names, dtypes), in a fixed order."""
    if not isinstance(ball, LpBall):
        raise TypeError(f"ball must be a bounds.LpBall, got {type(ball).__name__}")
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _check_backend(backend)
    if (isinstance(alpha_iterations, bool) or not isinstance(alpha_iterations, numbers.Integral)
            or alpha_iterations < 0):
        raise ValueError(
            f"alpha_iterations must be an integer >= 0; got {alpha_iterations!r}"
        )
    _check_dtype(net, ball)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _check_dtype(net: nn.Module, ball: LpBall) -> None:
    """The ball and the network must share a floating dtype (no silent conversion: rounding
    a float64 ball to float32 could move it, and the bounds would cover another set)."""
    ref = next(net.parameters(), None)
    if ref is None:
        ref = next(net.buffers(), None)
    if ref is None or not ref.is_floating_point() or ref.dtype == ball.center.dtype:
        return
    want = str(ref.dtype).removeprefix("torch.")
    have = str(ball.center.dtype).removeprefix("torch.")
    raise ValueError(
        f"the ball is {have} but the network's parameters are {want}: build the ball from "
        f"x.to(torch.{want}) (or convert the network with net.to(torch.{have}))"
    )


def _lirpa(net, ball, method, C, alpha_iterations, bound_upper, missing):
    from bounds.lirpa import compute_lirpa

    try:
        return compute_lirpa(net, ball, method, C, alpha_iterations, bound_upper)
    except graph.UnsupportedLayerError as exc:
        if not missing:
            raise
        raise graph.UnsupportedLayerError(
            f'backend="auto": the native backend does not support layer(s) '
            f"{', '.join(missing)}, and {exc}"
        ) from None


def _check_labels(labels, device) -> torch.Tensor:
    """Labels as a flat long tensor; ValueError unless they are of an integer dtype."""
    t = torch.as_tensor(labels, device=device) if not isinstance(labels, torch.Tensor) else labels
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(
            f"labels must be integer action indices in [0, K); got dtype "
            f"{str(t.dtype).removeprefix('torch.')}"
        )
    return t.to(device).long().reshape(-1)


def _is_everything(idx, n: int) -> bool:
    """True when the index array ``idx`` is 0..n-1 in order (indexing would copy for
    nothing)."""
    return isinstance(idx, np.ndarray) and idx.shape == (n,) and (
        n == 0 or (idx[0] == 0 and idx[-1] == n - 1 and bool((np.diff(idx) == 1).all())))


class MarginProblem:
    """Margin bounds' per-state data at fixed centres x_b and labels: C (B, K-1, K) with
    rows e_label - e_j for j != label (the label's own, all-zero row is not bounded),
    the (B, K) label mask, and the (B, 1) rounding allowance
    rtol * (1 + max_k |f_k(x_b)|). The allowance is a property of the centre's own
    forward pass, so a problem is only ever applied to balls with the same centres
    (checked exactly on every use). Index it (``problem[idx]``) to follow a subset
    of states, as a radius search does."""

    def __init__(self, center: torch.Tensor, C: torch.Tensor, own: torch.Tensor,
                 allowance: torch.Tensor, others: torch.Tensor | None = None):
        self.center, self.C, self.own, self.allowance = center, C, own, allowance
        # (B, K-1) the actions j != label in order: the rows of C
        self.others = others if others is not None else (
            (~own).nonzero()[:, 1].reshape(own.shape[0], own.shape[1] - 1))

    def __getitem__(self, idx) -> MarginProblem:
        if _is_everything(idx, self.center.shape[0]):
            return self
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.center.device)
        return MarginProblem(self.center[idx], self.C[idx], self.own[idx], self.allowance[idx],
                             self.others[idx])

    def check_center(self, center: torch.Tensor) -> MarginProblem:
        """Self, if the ball's centres are exactly this problem's centres (else ValueError:
        the rounding allowance would belong to other points)."""
        if center.shape != self.center.shape or not torch.equal(center, self.center):
            raise ValueError("this MarginProblem was built for other centres than the ball's")
        return self



class BoundNetwork:
    """A network checked once, ready to bound many balls: ``bounds.bind(net, backend)``.

    The flat layer list, its per-input-shape parse (shapes, supported layers,
    input fit) and the "auto" backend choice are computed once and reused while
    the network holds the same module objects. The cached layers are the live
    modules, so in-place weight updates (training) are seen by the next call;
    replacing a module, or a network whose ``bounded_form()`` builds a fresh
    copy on every call, makes the next call parse again. Every bound equals the
    one-shot :func:`compute` / :func:`margin_lower` with the same arguments.
    """

    def __init__(self, net: nn.Module, backend: str = "native"):
        self.net = net
        self.backend = backend
        self._parsed: dict[tuple[int, ...], tuple[list[nn.Module], list[graph.Layer]]] = {}
        self._fits: dict[tuple[int, ...], list[nn.Module]] = {}
        self._auto: tuple[list[nn.Module], list[str]] | None = None
        self.last_backend: str | None = None  # the backend that bounded the latest call

    def compute(self, ball: LpBall, method: str = "crown", C: torch.Tensor | None = None,
                alpha_iterations: int = 20,
                bound_upper: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound bounds lb <= C f(x') <= ub over the ball; see :func:`compute`."""
        _check_args(self.net, ball, method, self.backend, alpha_iterations)
        backend, missing, modules = self._resolve()
        return self._bound(ball, method, C, backend, missing, alpha_iterations, bound_upper,
                           modules=modules)

    def margin_lower(self, ball: LpBall, labels, method: str = "crown",
                     alpha_iterations: int = 20) -> torch.Tensor:
        """(B, K) lower bounds of f_{label}(x') - f_j(x') (+inf at the label), less the
        floating-point allowance; see :func:`margin_lower`. ``labels`` may be a
        :class:`MarginProblem` of the ball's centres (from :meth:`margin_problem`):
        the spec and allowance are then reused instead of recomputed."""
        _check_args(self.net, ball, method, self.backend, alpha_iterations)
        backend, missing, modules = self._resolve()
        if isinstance(labels, MarginProblem):
            problem = labels.check_center(ball.center)
        else:
            problem = self.margin_problem(ball.center, labels)
        out = torch.full(problem.own.shape, float("inf"), dtype=ball.center.dtype,
                         device=ball.center.device)
        if problem.C.shape[1] == 0:  # a single output: its label is always the argmax
            return out
        lb, _ = self._bound(ball, method, problem.C.to(ball.center), backend, missing,
                            alpha_iterations, False, known_finite=True, modules=modules)
        lb = lb - problem.allowance.to(lb.dtype)
        return out.to(lb.dtype).scatter_(1, problem.others.to(lb.device), lb)

    def margin_problem(self, center: torch.Tensor, labels) -> MarginProblem:
        """The per-state part of margin bounds at ``center`` (B, *in_shape): the margin
        spec rows C = e_label - e_j (j != label), the label mask and the rounding allowance from the
        network's outputs at the centre, computed once for bounding many radii."""
        labels_t = _check_labels(labels, center.device)
        seq = _as_seq(self.net)
        if isinstance(seq, nn.Sequential):
            self._check_fit(flatten_modules(seq), tuple(center.shape[1:]))
        with torch.no_grad():
            center_out = seq(center).flatten(1)
            K = center_out.shape[1]
        if labels_t.shape[0] != center.shape[0]:
            raise ValueError(
                f"labels has {labels_t.shape[0]} entries but the ball has batch {center.shape[0]}"
            )
        C = spec.margin_spec(labels_t, K).to(center)  # validates the labels
        own = torch.nn.functional.one_hot(labels_t, K).bool()
        C = C[~own.to(C.device)].reshape(-1, K - 1, K)
        return MarginProblem(center, C, own, rounding_allowance(center_out))

    # ------------------------------------------------------------------ cached checks
    @property
    def resolved_backend(self) -> str:
        """The backend that bounds this network: "native" or "lirpa" ("auto" resolved)."""
        return self._resolve()[0]

    def _resolve(self) -> tuple[str, list[str], list[nn.Module] | None]:
        """The backend to use ("native" or "lirpa") and, for "auto" falling back to
        auto_LiRPA, the layers the native engine lacks (cached per module list); also
        recorded as ``last_backend``."""
        resolved = self._resolve_backend()
        self.last_backend = resolved[0]
        return resolved

    def _resolve_backend(self) -> tuple[str, list[str], list[nn.Module] | None]:
        if self.backend != "auto":
            return self.backend, [], None
        try:
            modules = flatten_modules(self.net)
        except Exception:  # bounded_form() failed: the same message as the one-shot form
            return "lirpa", graph.unsupported_layers(self.net), None
        if self._auto is None or not graph.same_modules(self._auto[0], modules):
            self._auto = (modules, graph.unsupported_among(modules))
        missing = self._auto[1]
        return ("lirpa" if missing else "native"), missing, modules

    def _check_fit(self, modules: list[nn.Module], in_shape: tuple[int, ...]) -> None:
        """``graph.check_input`` once per input shape and module list."""
        if graph.same_modules(self._fits.get(in_shape), modules):
            return
        graph.check_input(modules, in_shape)
        self._fits[in_shape] = modules

    def _layers(self, in_shape: tuple[int, ...],
                modules: list[nn.Module] | None = None) -> list[graph.Layer]:
        """The parsed layers for inputs of ``in_shape`` (parsed once per module list)."""
        modules = modules if modules is not None else flatten_modules(self.net)
        cached = self._parsed.get(in_shape)
        if cached is not None and graph.same_modules(cached[0], modules):
            return cached[1]
        layers = graph.parse_modules(modules, in_shape)
        self._parsed[in_shape] = (modules, layers)
        self._fits[in_shape] = modules
        return layers

    # ------------------------------------------------------------------ bounding
    def _bound(self, ball, method, C, backend, missing, alpha_iterations, bound_upper,
               known_finite=False, modules=None):
        """Bounds after the checks (backend resolved to "native" or "lirpa");
        ``known_finite``: C was built by ``spec.margin_spec`` (no NaN scan);
        ``modules``: this call's flat module list if already computed."""
        if backend == "lirpa":
            if C is not None:
                C = self._lirpa_spec(ball, C)
            return _lirpa(self.net, ball, method, C, alpha_iterations, bound_upper, missing)
        layers = self._layers(ball.in_shape, modules)
        if not layers:
            raise ValueError("network has no layers")
        out_dim = math.prod(layers[-1].out_shape)
        if len(layers[-1].out_shape) != 1:
            raise ValueError(
                f"the network output must be a flat vector (B, out_dim); got shape "
                f"{layers[-1].out_shape}: add nn.Flatten()"
            )
        if C is not None:
            C = spec.check_spec(C, ball.batch_size, out_dim, known_finite).to(ball.center)
        return _native(layers, ball, method, C, alpha_iterations, bound_upper)

    def _lirpa_spec(self, ball: LpBall, C: torch.Tensor) -> torch.Tensor:
        """``C`` checked against the network's output width (auto_LiRPA backend)."""
        seq = _as_seq(self.net)
        if isinstance(seq, nn.Sequential):
            self._check_fit(flatten_modules(seq), ball.in_shape)
        with torch.no_grad():
            out_dim = seq(ball.center[:1]).flatten(1).shape[1]
        return spec.check_spec(C, ball.batch_size, out_dim).to(ball.center)


def _native(layers, ball, method, C, alpha_iterations, bound_upper):
    """The native engine's bounds for one method on parsed layers. Without autograd, the
    gradient-free methods run under ``torch.inference_mode`` (less per-operation
    bookkeeping, same numbers); their bounds are returned as ordinary tensors."""
    if torch.is_grad_enabled() or method == "alpha-crown":  # alpha-CROWN needs autograd
        return _native_bounds(layers, ball, method, C, alpha_iterations, bound_upper)
    with torch.inference_mode():
        lb, ub = _native_bounds(layers, ball, method, C, alpha_iterations, bound_upper)
    return lb.clone(), (None if ub is None else ub.clone())


def _native_bounds(layers, ball, method, C, alpha_iterations, bound_upper):
    if method == "ibp":
        (lb, ub), _ = interval.ibp(layers, ball, C)
        return lb, (ub if bound_upper else None)
    if method == "crown-ibp":
        return linear.crown(layers, ball, C, intermediate="ibp", upper=bound_upper)
    if method == "crown":
        return linear.crown(layers, ball, C, intermediate="crown", upper=bound_upper)
    return linear.alpha_crown(layers, ball, C, iterations=alpha_iterations, upper=bound_upper)


def bind(net: nn.Module, backend: str = "native") -> BoundNetwork:
    """``net`` checked once for bounding many balls (see :class:`BoundNetwork`).

    ``bind(net, backend).compute(ball, method, C)`` equals
    ``compute(net, ball, method, C, backend)`` number for number, and likewise
    for ``margin_lower``; the per-network work (flattening, shape inference,
    support checks, the "auto" choice) is done once per input shape.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    _check_backend(backend)
    return BoundNetwork(net, backend)


def compute(
    net: nn.Module,
    ball: LpBall,
    method: str = "crown",
    C: torch.Tensor | None = None,
    backend: str = "native",
    alpha_iterations: int = 20,
    bound_upper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound bounds lb <= C f(x') <= ub for every x' in ``ball`` (clipped to its domain).

    Args:
        net: an ``nn.Sequential`` (or a module with ``bounded_form()``); with
            backend "lirpa" any graph auto_LiRPA can trace.
        ball: the perturbation set, a :class:`bounds.LpBall` with center (B, *in_shape).
        method: "ibp", "crown", "crown-ibp" or "alpha-crown".
        C: None (bound the outputs themselves) or a (B, m, out_dim) spec matrix.
        backend: "native", "lirpa" or "auto" (native when every layer is supported).
        alpha_iterations: optimization steps of alpha-CROWN.
        bound_upper: False skips the upper bound (about half the work of the
            linear methods); ub is then None.
    Returns:
        (lb, ub), each (B, m) with m = out_dim when C is None. Differentiable
        with respect to the network's parameters when autograd is enabled.
        The one-shot form of ``bind(net, backend).compute(...)``.
    """
    return BoundNetwork(net, backend).compute(ball, method, C, alpha_iterations, bound_upper)


def _as_seq(net: nn.Module) -> nn.Module:
    if hasattr(net, "bounded_form") and not isinstance(net, nn.Sequential):
        return net.bounded_form()
    return net


def margin_lower(
    net: nn.Module,
    ball: LpBall,
    labels,
    method: str = "crown",
    backend: str = "native",
    alpha_iterations: int = 20,
) -> torch.Tensor:
    """Lower bounds of the margins f_{label}(x') - f_j(x') over the ball.

    Returns a (B, K) tensor; entry [b, j] lower-bounds f_{label_b} - f_j over
    the ball, entry [b, label_b] is +inf. The label is certified iff every
    entry is > 0. The bound of the C-matrix spec e_label - e_j is lowered by a
    floating-point allowance (``rounding_allowance``: 1e-5 relative to the
    output scale for float32) so that "certified" also holds for the network
    as it actually computes, in finite precision. The one-shot form of
    ``bind(net, backend).margin_lower(...)``.
    """
    return BoundNetwork(net, backend).margin_lower(ball, labels, method, alpha_iterations)


def certified(margins: torch.Tensor) -> torch.Tensor:
    """(B,) bool: every margin lower bound of ``margin_lower`` is > 0."""
    return (margins > 0).all(dim=1)


def preactivation_bounds(
    net: nn.Module, ball: LpBall, method: str = "crown"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Bounds of the input of every ReLU/Tanh layer, in order (native engine).

    ``method``: "ibp" or "crown" (intermediate bounds as used by CROWN-IBP / CROWN).
    """
    if method not in ("ibp", "crown"):
        raise ValueError("preactivation_bounds: method must be 'ibp' or 'crown'")
    layers = graph.parse(net, ball.in_shape)
    _, rest, act = linear.activation_bounds(layers, ball, method)
    return [act[k] for k in sorted(act)]
