"""The hook through which robust (certified or adversarial) losses enter training.

A loss is passed *beside* the algorithm config: ``DQN(cfg, robust_loss=loss)`` /
``PPO(cfg, robust_loss=loss)``. At each gradient step the algorithm builds a
``TrainContext`` (the batch, the networks, the threat model, the step and the algorithm
settings the losses read) and calls the hooks; each hook *returns* its value and its logs
(nothing is kept on the loss between hooks). The term ``__call__`` returns is *added* to
the TD / PPO loss (so it carries its own weight, e.g. kappa).

DQN batch (all network-input tensors, B rows)::

    obs (B, *shape), actions (B,) long, rewards (B,), next_obs, dones (B,) float,
    td_target (B,) detached y = r + gamma (1 - done) Q_target(s', a'),
    q (B,) Q(s, a) of the taken action (with grad)

DQN nets: {"q": online net, "target": target net} (+ ``extra_networks()``).

PPO batch (a minibatch)::

    obs, actions, logprobs (old), advantages, returns, values (old),
    mean (policy mean for Gaussian policies, logits for categorical ones; with grad)

PPO nets: {"policy": ..., "value": ...} (+ ``extra_networks()``).

Call order per run: ``setup(nets, cfg)`` once when the algorithm is built (before
``extra_networks()``); per DQN gradient step ``td_target`` -> ``modify_td_loss`` ->
``__call__``; per PPO minibatch ``modify_policy_loss`` -> ``__call__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from certrl.threat import ThreatModel

Logs = dict[str, float]


@dataclass
class TrainContext:
    """What a loss hook sees at one gradient step.

    ``gamma`` is the discount of both algorithms; ``huber_delta`` is DQN's Huber
    threshold and ``clip_coef`` PPO's surrogate clip (None for the other algorithm).
    """

    batch: dict[str, Tensor]
    nets: dict[str, nn.Module]
    threat: ThreatModel
    step: int
    gamma: float
    huber_delta: float | None = None
    clip_coef: float | None = None


class RobustLoss:
    """Base class: override ``__call__``; the default adds nothing.

    Subclasses may also override:
      * ``setup(nets, cfg)``: called once by the algorithm with its networks
        ({"q"} or {"policy", "value"}) and its config, before ``extra_networks``
        (e.g. to build a worst-case Q network of the same spec).
      * ``extra_networks()``: extra trainable nets (e.g. WocaR's worst-case Q);
        the algorithm adds their parameters to its optimizer and passes them in
        ``ctx.nets``; they are saved with the agent under their dict keys.
      * ``jointly_optimized()``: the extra nets the algorithm's optimizer updates
        (default all of them; a loss with its own optimizer returns fewer).
      * ``td_target(ctx)`` (DQN): a replacement for the detached TD target y (B,),
        or None to keep the double-DQN target (WocaR's worst-case-aware target).
      * ``modify_td_loss(td_loss_per_sample, ctx) -> (loss, logs)``: replace the
        per-sample TD loss before reduction (RADIAL's kappa, CAR's softmax weights);
        default: the mean.
      * ``modify_policy_loss(pg_loss, ctx) -> (loss, logs)`` (PPO): replace the scalar
        clipped-surrogate loss (RADIAL-PPO's kappa, CAR-PPO's worst-case surrogate);
        default: unchanged.
      * ``eps_at(step, threat)``: the eps used at a step (schedules); default threat.eps.
      * ``state_dict()`` / ``load_state_dict(d)``: non-trainable state the loss keeps
        between updates (WocaR's lagged worst-case net); saved in the training
        state so that ``--resume`` restores it. Default: nothing.
    """

    name: str = "vanilla"

    def __call__(self, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """Return (extra loss term, scalar logs)."""
        q = ctx.batch.get("q", ctx.batch.get("mean"))
        return q.new_zeros(()), {}

    def setup(self, nets: dict[str, nn.Module], cfg: Any) -> None:
        """Called once with the algorithm's networks and config; default: nothing."""

    def extra_networks(self) -> dict[str, nn.Module]:
        """Extra trainable networks the loss owns (saved with the agent); default none."""
        return {}

    def jointly_optimized(self) -> dict[str, nn.Module]:
        """The extra networks whose parameters go into the algorithm's own optimizer
        (one Adam step on main loss + this loss); default all of ``extra_networks``.
        A loss that trains a network with its own optimizer leaves it out."""
        return self.extra_networks()

    def td_target(self, ctx: TrainContext) -> Tensor | None:
        """A replacement TD target y (B,), detached; default None (keep DQN's)."""
        return None

    def modify_td_loss(self, td_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """Reduce the per-sample TD loss (B,) to a scalar; default the mean."""
        return td_loss.mean(), {}

    def modify_policy_loss(self, pg_loss: Tensor, ctx: TrainContext) -> tuple[Tensor, Logs]:
        """Replace PPO's scalar clipped-surrogate loss; default unchanged."""
        return pg_loss, {}

    def eps_at(self, step: int, threat: ThreatModel) -> float:
        """The eps the loss trains for at ``step``; default the threat model's."""
        return threat.eps

    def state_dict(self) -> dict:
        """Non-trainable state to checkpoint for resuming; default empty."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned; default: nothing to restore."""

    def config(self) -> dict:
        """JSON-able description saved in the checkpoint's training config."""
        return {"name": self.name}
