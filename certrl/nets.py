"""Networks for DQN and PPO, built from JSON-able specs, with bounded forms.

Every network maps the *network input* (preprocessed observation: [0,1]
pixels for Atari, normalized obs for MuJoCo, raw obs for classic control) to
Q-values, logits, an action mean or a value. ``bounded_form()`` returns an
``nn.Sequential`` of layers the ``bounds`` engine supports (Linear, Conv2d,
ReLU, Tanh, Flatten, Identity, ``bounds.Normalize``) computing the same
function. A dueling head Q = V + A - mean(A) is linear in the two streams, so
it folds into one Linear layer.

Spec examples::

    {"type": "q", "body": {"kind": "mlp", "in_dim": 4, "hidden": [64, 64],
     "activation": "relu"}, "n_out": 2, "dueling": false}
    {"type": "q", "body": {"kind": "cnn", "in_shape": [4, 84, 84]}, "n_out": 6,
     "dueling": true}
    {"type": "gaussian_policy", "body": {...}, "n_out": 3, "log_std_init": 0.0}
    {"type": "categorical_policy", "body": {...}, "n_out": 2}
    {"type": "value", "body": {...}}

A body may carry ``"input_norm": {"mean": [...], "std": [...]}`` which puts a
``bounds.Normalize`` layer first (kept in the bounded form).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bounds.layers import Normalize

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}
BOUNDABLE = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Tanh, nn.Flatten, nn.Identity, Normalize)


def _init(layer: nn.Module, gain: float | None) -> nn.Module:
    """Orthogonal init with ``gain`` and zero bias (CleanRL's PPO init); None = torch default."""
    if gain is not None:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return layer


def build_body(body: dict, gain: float | None = None) -> tuple[nn.Sequential, int]:
    """Feature extractor from a body spec; returns (module, feature size)."""
    kind = body.get("kind")
    layers: list[nn.Module] = []
    if body.get("input_norm") is not None:
        norm = body["input_norm"]
        layers.append(Normalize(norm["mean"], norm["std"]))
    if kind == "mlp":
        act = body.get("activation", "relu")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; use one of {sorted(ACTIVATIONS)}")
        size = int(body["in_dim"])
        for h in body.get("hidden", [64, 64]):
            layers += [_init(nn.Linear(size, int(h)), gain), ACTIVATIONS[act]()]
            size = int(h)
        return nn.Sequential(*layers), size
    if kind == "cnn":
        c, hgt, wid = (int(v) for v in body["in_shape"])
        g = None if gain is None else math.sqrt(2)
        layers += [
            _init(nn.Conv2d(c, 32, 8, stride=4), g), nn.ReLU(),
            _init(nn.Conv2d(32, 64, 4, stride=2), g), nn.ReLU(),
            _init(nn.Conv2d(64, 64, 3, stride=1), g), nn.ReLU(),
            nn.Flatten(),
        ]
        with torch.no_grad():
            size = nn.Sequential(*layers)(torch.zeros(1, c, hgt, wid)).shape[1]
        if body.get("fc", 512):
            layers += [_init(nn.Linear(size, int(body.get("fc", 512))), g), nn.ReLU()]
            size = int(body.get("fc", 512))
        return nn.Sequential(*layers), size
    raise ValueError(f"unknown body kind {kind!r}; use 'mlp' or 'cnn'")


class DerivedLinear(nn.Linear):
    """An ``nn.Linear`` whose weight and bias are computed, on every access, from live layers.

    ``fold(sources) -> (W, b)``; gradients of W and b reach the source layers, so a bound
    computed through it trains them. Used for the dueling head of ``shared_form``.
    """

    def __init__(self, sources: list[nn.Linear], fold) -> None:
        nn.Module.__init__(self)  # no own weight / bias parameters
        self.sources = nn.ModuleList(sources)
        self.fold = fold
        w, _ = fold(list(self.sources))
        self.out_features, self.in_features = int(w.shape[0]), int(w.shape[1])

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.fold(list(self.sources))[0]

    @property
    def bias(self) -> torch.Tensor:  # type: ignore[override]
        return self.fold(list(self.sources))[1]


def _fold_linear_streams(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q = V + A - mean(A) with linear streams: W = W_a - mean_rows(W_a) + w_v, likewise b."""
    v, a = layers
    return (a.weight - a.weight.mean(0, keepdim=True) + v.weight,
            a.bias - a.bias.mean() + v.bias)


def _stack_first(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layers of the two hidden streams as one Linear, output [h_v | h_a]."""
    v, a = layers
    return torch.cat([v.weight, a.weight], 0), torch.cat([v.bias, a.bias], 0)


def _fold_hidden_streams(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q = V + A - mean(A) from the features [h_v | h_a] (second layers of the streams)."""
    v, a = layers
    n, h = a.weight.shape
    w = torch.cat([v.weight.expand(n, h), a.weight - a.weight.mean(0, keepdim=True)], 1)
    return w, a.bias - a.bias.mean() + v.bias


def _center_rows(layers: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor]:
    """A - mean_a A folded into the advantage layer: W - mean_rows(W), b - mean(b)."""
    (a,) = layers
    return a.weight - a.weight.mean(0, keepdim=True), a.bias - a.bias.mean()


class _SpecNet(nn.Module):
    """Base: keeps its spec so checkpoints can rebuild it."""

    spec: dict

    def bounded_form(self) -> nn.Sequential:  # pragma: no cover - abstract
        raise NotImplementedError

    def shared_form(self) -> nn.Sequential:
        """``nn.Sequential`` computing this network that *shares* its parameters.

        Bounds through it are differentiable in the network's weights (robust
        training); ``bounded_form`` is the detached copy certificates use.
        """
        return nn.Sequential(*self.body, self.head)


class _BodyHeadNet(_SpecNet):
    """Base of the networks that are a body then one Linear head: f(x) = head(body(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def bounded_form(self) -> nn.Sequential:
        return nn.Sequential(*[copy.deepcopy(m) for m in self.body], copy.deepcopy(self.head))


class QNetwork(_SpecNet):
    """Q(s, .) = head(body(x)); with ``dueling``, Q = V + A - mean_a A.

    Dueling streams are single Linear layers on the body features, or, with
    ``stream_hidden`` = h > 0, Linear(h)-ReLU-Linear streams (Nature dueling:
    cnn body with fc=0 and stream_hidden=512).
    """

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.body, feat = build_body(spec["body"])
        n = int(spec["n_out"])
        self.n_out = n
        self.dueling = bool(spec.get("dueling", False))
        sh = int(spec.get("stream_hidden", 0))
        if self.dueling:
            def stream(k: int) -> nn.Sequential:
                if sh:
                    return nn.Sequential(nn.Linear(feat, sh), nn.ReLU(), nn.Linear(sh, k))
                return nn.Sequential(nn.Linear(feat, k))
            self.value_stream = stream(1)
            self.adv_stream = stream(n)
        else:
            self.head = nn.Linear(feat, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        if not self.dueling:
            return self.head(z)
        v, a = self.value_stream(z), self.adv_stream(z)
        return v + a - a.mean(dim=1, keepdim=True)

    def bounded_form(self) -> nn.Sequential:
        layers = [copy.deepcopy(m) for m in self.body]
        if not self.dueling:
            return nn.Sequential(*layers, copy.deepcopy(self.head))
        with torch.no_grad():
            vs, ad = self.value_stream, self.adv_stream
            n = self.n_out
            if len(vs) == 1:  # linear streams: Q = (W_a - mean W_a + w_v) z + (...)
                wv, bv = vs[0].weight, vs[0].bias
                wa, ba = ad[0].weight, ad[0].bias
                fold = nn.Linear(wa.shape[1], n)
                fold.weight.copy_(wa - wa.mean(0, keepdim=True) + wv)
                fold.bias.copy_(ba - ba.mean() + bv)
                return nn.Sequential(*layers, fold)
            # hidden streams: stack first layers, then fold [V | A] into one Linear
            h = vs[0].out_features
            first = nn.Linear(vs[0].in_features, 2 * h)
            first.weight.copy_(torch.cat([vs[0].weight, ad[0].weight], 0))
            first.bias.copy_(torch.cat([vs[0].bias, ad[0].bias], 0))
            wv, bv, wa, ba = vs[2].weight, vs[2].bias, ad[2].weight, ad[2].bias
            fold = nn.Linear(2 * h, n)
            fold.weight.copy_(torch.cat([wv.expand(n, h), wa - wa.mean(0, keepdim=True)], 1))
            fold.bias.copy_(ba - ba.mean() + bv)
            return nn.Sequential(*layers, first, nn.ReLU(), fold)

    def shared_form(self) -> nn.Sequential:
        """Body + head sharing this network's modules; a dueling head folds into
        ``DerivedLinear`` layers computed from the live streams (linear in V and A)."""
        if not self.dueling:
            return nn.Sequential(*self.body, self.head)
        vs, ad = self.value_stream, self.adv_stream
        if len(vs) == 1:
            return nn.Sequential(*self.body, DerivedLinear([vs[0], ad[0]], _fold_linear_streams))
        return nn.Sequential(*self.body, DerivedLinear([vs[0], ad[0]], _stack_first), nn.ReLU(),
                             DerivedLinear([vs[2], ad[2]], _fold_hidden_streams))

    def advantage_form(self) -> nn.Sequential:
        """The centred advantage A(x) - mean_a A(x) of a dueling network as an
        ``nn.Sequential`` sharing this network's modules (the mean folds into the last
        advantage layer, as RADIAL-DQN's reference re-centres it); ValueError if not dueling."""
        if not self.dueling:
            raise ValueError("advantage_form needs a dueling Q-network (spec 'dueling': true)")
        ad = self.adv_stream
        return nn.Sequential(*self.body, *ad[:-1], DerivedLinear([ad[-1]], _center_rows))

    def value(self, x: torch.Tensor) -> torch.Tensor:
        """V(x) (B, 1) of a dueling network: Q(x, a) = V(x) + A(x, a) - mean_a A(x)."""
        if not self.dueling:
            raise ValueError("value needs a dueling Q-network (spec 'dueling': true)")
        return self.value_stream(self.body(x))


class CategoricalPolicy(_BodyHeadNet):
    """Logits of a categorical policy: Linear head (init gain 0.01) on the body."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.body, feat = build_body(spec["body"], gain=math.sqrt(2))
        self.head = _init(nn.Linear(feat, int(spec["n_out"])), 0.01)

    def distribution(self, x: torch.Tensor) -> torch.distributions.Distribution:
        return torch.distributions.Categorical(logits=self.forward(x))


class GaussianPolicy(_BodyHeadNet):
    """Diagonal Gaussian policy: mean = MLP(x) (tanh hidden), state-independent log std."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.body, feat = build_body(spec["body"], gain=math.sqrt(2))
        n = int(spec["n_out"])
        self.head = _init(nn.Linear(feat, n), 0.01)
        self.log_std = nn.Parameter(torch.full((n,), float(spec.get("log_std_init", 0.0))))

    def distribution(self, x: torch.Tensor) -> torch.distributions.Distribution:
        mean = self.forward(x)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))


class ValueNetwork(_BodyHeadNet):
    """State value V(x): Linear head (init gain 1) on the body; output (B, 1)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = copy.deepcopy(spec)
        self.body, feat = build_body(spec["body"], gain=math.sqrt(2))
        self.head = _init(nn.Linear(feat, 1), 1.0)


class LipschitzQNetwork(_SpecNet):
    """Q(s, .) = scale * f(x) with f a ``bounds.lipschitz.LipschitzMLP`` (SortNet / l_inf-dist).

    Every f_k is 1-Lipschitz from l_inf, so every Q-value is ``scale``-Lipschitz and the
    greedy action is certified at eps iff Q_(1) - Q_(2) > 2 * scale * eps: the radius is
    ``bounds.margin_radius(q, net.lipschitz_linf)``. Spec::

        {"type": "lipschitz_q", "in_dim": 4, "n_out": 2, "hidden": 128, "depth": 3,
         "kind": "sortnet", "scale": 10.0}
    """

    def __init__(self, spec: dict):
        super().__init__()
        from bounds.lipschitz import LipschitzMLP

        self.spec = copy.deepcopy(spec)
        self.n_out = int(spec["n_out"])
        self.scale = float(spec.get("scale", 1.0))
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"lipschitz_q scale must be positive and finite; got {self.scale}")
        self.mlp = LipschitzMLP(int(spec["in_dim"]), self.n_out,
                                hidden=int(spec.get("hidden", 128)),
                                depth=int(spec.get("depth", 3)), kind=spec.get("kind", "sortnet"),
                                theta_std=float(spec.get("theta_std", 1.0)))

    @property
    def lipschitz_linf(self) -> float:
        """Lipschitz constant of every Q-value w.r.t. ||.||_inf of the network input."""
        return self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.mlp(x)

    def bounded_form(self) -> nn.Sequential:
        raise ValueError(
            "a SortNet / l_inf-dist Q-network (lipschitz_q) has no ReLU bounded form; certify it "
            "in closed form: bounds.lipschitz.lipschitz_margin_certificate(q_values, eps, "
            f"lipschitz={self.scale:g}) (radius = margin / (2 * {self.scale:g}))")

    def shared_form(self) -> nn.Sequential:
        raise ValueError("a SortNet / l_inf-dist Q-network (lipschitz_q) has no bound-able "
                         "form for robust training; use the sortnet loss")


NETWORKS = {
    "q": QNetwork,
    "lipschitz_q": LipschitzQNetwork,
    "categorical_policy": CategoricalPolicy,
    "gaussian_policy": GaussianPolicy,
    "value": ValueNetwork,
}


def build_network(spec: dict) -> nn.Module:
    """Rebuild a network (fresh weights) from its spec; ValueError on a bad spec."""
    if not isinstance(spec, dict) or spec.get("type") not in NETWORKS:
        got = spec.get("type") if isinstance(spec, dict) else spec
        raise ValueError(f"unknown network type {got!r}; use one of {sorted(NETWORKS)}")
    try:
        return NETWORKS[spec["type"]](spec)
    except (KeyError, TypeError) as e:
        raise ValueError(f"bad network spec {spec!r}: {e}") from e


def body_spec(obs_shape: tuple[int, ...], hidden=(64, 64), activation: str = "relu",
              cnn_fc: int = 512) -> dict:
    """Default body for an observation shape: CNN for (C, 84, 84) images, MLP otherwise."""
    if len(obs_shape) == 3:
        return {"kind": "cnn", "in_shape": list(obs_shape), "fc": cnn_fc}
    if len(obs_shape) != 1:
        raise ValueError(f"unsupported observation shape {obs_shape}")
    return {"kind": "mlp", "in_dim": int(obs_shape[0]), "hidden": [int(h) for h in hidden],
            "activation": activation}
