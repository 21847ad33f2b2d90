import math

import pytest
import torch

from certrl import ThreatModel
from certrl.threat import SPACE_PIXELS, check_eps, default_threat_model, parse_norm


def test_defaults_and_round_trip():
    tm = ThreatModel(norm="l2", eps=0.1, space="x", lower=0, upper=1)
    assert tm.norm == 2.0 and tm.budget == "per-step"
    d = tm.to_dict()
    assert d["norm"] == "2"
    assert ThreatModel.from_dict(d) == tm
    assert ThreatModel().norm == math.inf


@pytest.mark.parametrize("eps", [-0.1, float("nan"), float("inf"), "abc"])
def test_bad_eps(eps):
    with pytest.raises(ValueError):
        ThreatModel(eps=eps)
    with pytest.raises(ValueError):
        check_eps(eps)


def test_bad_fields():
    with pytest.raises(ValueError):
        ThreatModel(norm=3)
    with pytest.raises(ValueError):
        ThreatModel(budget="forever")
    with pytest.raises(ValueError):
        ThreatModel(lower=1, upper=0)
    with pytest.raises(ValueError):
        ThreatModel.from_dict({"eps": 0.1, "colour": "red"})
    assert parse_norm("linf") == math.inf


def test_ball_clips_to_domain():
    tm = default_threat_model("atari", eps=0.1)
    assert tm.space == SPACE_PIXELS and (tm.lower, tm.upper) == (0.0, 1.0)
    x = torch.tensor([[0.0, 0.5, 1.0]])
    ball = tm.ball(x)
    lo, hi = ball.box()
    assert torch.allclose(lo, torch.tensor([[0.0, 0.4, 0.9]]))
    assert torch.allclose(hi, torch.tensor([[0.1, 0.6, 1.0]]))
    assert float(tm.ball(x, eps=0.2).eps) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        tm.ball(x, eps=-1)
    assert tm.with_eps(0.3).eps == 0.3 and tm.eps == 0.1
    assert default_threat_model("mujoco").lower is None
