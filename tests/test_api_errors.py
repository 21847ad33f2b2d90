"""Bad input to the Python API gives a ValueError that names the problem, never a raw
torch error (issue 9, "Python API")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bounds
import certrl


def _mlp(din: int = 4, dout: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(din, 8), nn.ReLU(), nn.Linear(8, dout))


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 2))


# ---------------------------------------------------------------- LpBall eps
@pytest.mark.parametrize("shape", [(2, 1, 4), (3, 1, 4)])
def test_eps_that_does_not_broadcast_to_the_center(shape):
    # (2, 1, 4) broadcasts *with* a (2, 4) center but not *to* it: the ball would be 3-D
    with pytest.raises(ValueError, match="does not broadcast to center shape"):
        bounds.LpBall(torch.zeros(2, 4), torch.full(shape, 0.1))


def test_domain_bound_that_does_not_broadcast_to_the_center():
    with pytest.raises(ValueError, match="lower bound of shape .* does not broadcast"):
        bounds.LpBall(torch.zeros(2, 4), 0.1, lower=-torch.ones(2, 1, 4))


@pytest.mark.parametrize("eps", ["0.1", "abc", None, np.array(["0.1"])])
def test_non_numeric_eps(eps):
    with pytest.raises(ValueError, match="eps must be a number"):
        bounds.LpBall(torch.zeros(1, 4), eps)


def test_eps_overflowing_the_center_dtype_states_the_value():
    with pytest.raises(ValueError, match=r"1e\+39") as info:
        bounds.LpBall(torch.zeros(1, 4), 1e39)
    assert "tensor(" not in str(info.value) and "float32" in str(info.value)
    with pytest.raises(ValueError, match="finite") as info:
        bounds.LpBall(torch.zeros(5, 4), torch.full((5, 1), float("inf")))
    assert "tensor(" not in str(info.value)


# ---------------------------------------------------------------- input width / dtype
@pytest.mark.parametrize("backend", ["native", "lirpa", "auto"])
@pytest.mark.parametrize("call", ["compute", "margin_lower"])
def test_input_width_mismatch_says_expected_and_got(backend, call):
    net = _mlp(din=4)
    ball = bounds.LpBall(torch.zeros(2, 5), 0.1)
    with pytest.raises(ValueError, match=r"expects input .*4.*got.*\(5,\)"):
        if call == "compute":
            bounds.compute(net, ball, backend=backend)
        else:
            bounds.margin_lower(net, ball, [0, 1], backend=backend)


def test_conv_input_channels_mismatch():
    net = _cnn()
    with pytest.raises(ValueError, match=r"expects input .*2 channels.*got.*\(3, 7, 7\)"):
        bounds.margin_lower(net, bounds.LpBall(torch.zeros(1, 3, 7, 7), 0.1), [0])
    with pytest.raises(ValueError, match=r"expects input"):
        bounds.margin_lower(net, bounds.LpBall(torch.zeros(1, 98), 0.1), [0])


def test_bounded_form_net_width_mismatch():
    agent = certrl.load("cartpole-dqn-vanilla")
    with pytest.raises(ValueError, match=r"expects input .*4.*got.*\(6,\)"):
        bounds.margin_lower(agent.net, bounds.LpBall(torch.zeros(1, 6), 0.01), [0])


@pytest.mark.parametrize("ball_dtype,net_dtype", [(torch.float64, torch.float32),
                                                  (torch.float32, torch.float64)])
@pytest.mark.parametrize("call", ["compute", "margin_lower"])
def test_dtype_mismatch_names_both_dtypes(ball_dtype, net_dtype, call):
    net = _mlp().to(net_dtype)
    ball = bounds.LpBall(torch.zeros(2, 4, dtype=ball_dtype), 0.1)
    with pytest.raises(ValueError, match="float64.*float32|float32.*float64"):
        if call == "compute":
            bounds.compute(net, ball, method="ibp")
        else:
            bounds.margin_lower(net, ball, [0, 1])


# ---------------------------------------------------------------- labels / alpha
@pytest.mark.parametrize("labels", [[0.5, 1.7], [0.0, 1.0], torch.tensor([0.0, 1.0]),
                                    np.array([0.0, 2.0]), [True, False]])
def test_float_labels_are_refused(labels):
    ball = bounds.LpBall(torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="labels must be integer"):
        bounds.margin_lower(_mlp(), ball, labels)
    # integer labels of any integer dtype still work; out-of-range ones are refused
    a = bounds.margin_lower(_mlp(), ball, [0, 2])
    torch.testing.assert_close(a, bounds.margin_lower(_mlp(), ball, np.array([0, 2], np.int32)))
    torch.testing.assert_close(a, bounds.margin_lower(_mlp(), ball, torch.tensor([0, 2]).byte()))
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            bounds.margin_lower(_mlp(), ball, bad)


@pytest.mark.parametrize("method", ["alpha-crown", "crown"])
@pytest.mark.parametrize("value", [-1, 2.5, "3"])
def test_bad_alpha_iterations(method, value):
    ball = bounds.LpBall(torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="alpha_iterations"):
        bounds.compute(_mlp(), ball, method=method, alpha_iterations=value)
    with pytest.raises(ValueError, match="alpha_iterations"):
        bounds.margin_lower(_mlp(), ball, [0, 1], method=method, alpha_iterations=value)


# ---------------------------------------------------------------- auto backend
class _Sort(nn.Module):
    def forward(self, x):
        return torch.sort(x, dim=1).values


def test_auto_backend_unsupported_layer_is_quiet(capsys):
    net = nn.Sequential(nn.Linear(4, 8), _Sort(), nn.Linear(8, 3))
    ball = bounds.LpBall(torch.zeros(2, 4), 0.1)
    with pytest.raises(bounds.UnsupportedLayerError, match="_Sort") as info:
        bounds.compute(net, ball, backend="auto")
    assert "TopK" in str(info.value)  # the operation auto_LiRPA cannot bound
    with pytest.raises(bounds.UnsupportedLayerError):
        bounds.margin_lower(net, ball, [0, 1], backend="lirpa")
    out = capsys.readouterr()
    assert out.out == ""
    assert "ERROR" not in out.err and "Unsupported operations" not in out.err


# ---------------------------------------------------------------- Agent.predict
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_predict_refuses_non_finite_observations(bad):
    agent = certrl.load("cartpole-dqn-vanilla")
    obs = np.zeros(4, dtype=np.float32)
    obs[2] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        agent.predict(obs)
    batch = np.zeros((3, 4))
    batch[1, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        agent.preprocess(batch)
    assert agent.predict(np.zeros((3, 4), dtype=np.float32)).shape == (3,)
