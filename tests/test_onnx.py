"""ONNX import (bounds.from_onnx, certrl.onnx_agent.agent_from_onnx) and export
(certrl export onnx): hand-built graphs against onnx's own reference evaluator, exported
agents re-imported to the same outputs and the same bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX import/export needs the onnx package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import bounds  # noqa: E402
from bounds.onnx_io import OnnxImportError, from_onnx  # noqa: E402
from certrl.agent import Agent  # noqa: E402
from certrl.cli import main  # noqa: E402
from certrl.envs import RunningMeanStd  # noqa: E402
from certrl.nets import build_network  # noqa: E402
from certrl.onnx_agent import agent_from_onnx, export_onnx, exported_module  # noqa: E402
from certrl.threat import ThreatModel  # noqa: E402
from tests.conftest import FROZEN  # noqa: E402

RNG = np.random.default_rng(0)


def init(name, shape=None, value=None):
    arr = np.asarray(value if value is not None else RNG.normal(size=shape), dtype=np.float32)
    return numpy_helper.from_array(arr, name)


def model(nodes, inits, in_shape, out_dim, batch="B"):
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, out_dim])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def assert_matches_reference(m, x, atol=1e-5):
    """from_onnx(m)(x) equals onnx's reference evaluator on x."""
    want = ReferenceEvaluator(m).run(None, {"X": x})[0]
    net = from_onnx(m)
    with torch.no_grad():
        got = net(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-5)
    return net


def mlp_graph():
    """Every elementwise / affine op on a 5-input MLP: Sub, Div, MatMul+Add, Relu, Gemm
    (transB, alpha, beta), Mul by a negative constant, Sub(c, x), Tanh, Sigmoid,
    Identity, a Constant node and a positive Mul."""
    nodes = [
        helper.make_node("Sub", ["X", "m"], ["a"]),
        helper.make_node("Div", ["a", "s"], ["b"]),
        helper.make_node("MatMul", ["b", "W1"], ["c"]),
        helper.make_node("Add", ["c", "b1"], ["d"]),
        helper.make_node("Relu", ["d"], ["e"]),
        helper.make_node("Gemm", ["e", "W2", "b2"], ["f"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Mul", ["f", "neg"], ["g"]),
        helper.make_node("Constant", [], ["k"], value=init("kv", value=[0.3] * 6)),
        helper.make_node("Sub", ["k", "g"], ["h"]),
        helper.make_node("Tanh", ["h"], ["i"]),
        helper.make_node("Identity", ["i"], ["j"]),
        helper.make_node("Gemm", ["j", "W3"], ["l"]),
        helper.make_node("Sigmoid", ["l"], ["n"]),
        helper.make_node("Mul", ["n", "two"], ["Y"]),
    ]
    inits = [init("m", (5,)), init("s", value=np.abs(RNG.normal(size=5)) + 0.5),
             init("W1", (5, 8)), init("b1", (8,)), init("W2", (6, 8)), init("b2", (6,)),
             init("neg", value=-np.abs(RNG.normal(size=6)) - 0.1), init("W3", (6, 3)),
             init("two", value=2.0)]
    return model(nodes, inits, (5,), 3)


def cnn_graph(batch="B"):
    """Conv (padding, stride) + Add of a per-channel constant + Relu, the dynamic-batch
    flatten pattern (Shape, Gather, Unsqueeze, Concat, Reshape), Gemm, then Flatten."""
    nodes = [
        helper.make_node("Conv", ["X", "K", "kb"], ["a"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Add", ["a", "cb"], ["b"]),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("Shape", ["c"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["tgt"], axis=0),
        helper.make_node("Reshape", ["c", "tgt"], ["d"]),
        helper.make_node("Gemm", ["d", "W", "wb"], ["e"], transB=1),
        helper.make_node("Flatten", ["e"], ["Y"], axis=1),
    ]
    inits = [init("K", (4, 2, 3, 3)), init("kb", (4,)), init("cb", (4, 1, 1)),
             numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "ax0"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1"),
             init("W", (3, 4 * 4 * 4)), init("wb", (3,))]
    return model(nodes, inits, (2, 8, 8), 3, batch=batch)


def test_from_onnx_each_op_matches_reference_evaluator():
    x = RNG.normal(size=(6, 5)).astype(np.float32)
    net = assert_matches_reference(mlp_graph(), x)
    assert any(isinstance(m, torch.nn.Sigmoid) for m in net)  # auto_LiRPA-only layer kept
    x = RNG.normal(size=(3, 2, 8, 8)).astype(np.float32)
    for batch in ("B", 1):
        m = cnn_graph(batch)
        net = assert_matches_reference(m, x[:1] if batch == 1 else x)
        assert bounds.unsupported_layers(net) == []  # native engine parses it
    ref = ReferenceEvaluator(m)  # a graph exported with batch 1 still runs on any batch
    want = np.concatenate([ref.run(None, {"X": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        np.testing.assert_allclose(net(torch.as_tensor(x)).numpy(), want, atol=1e-5)


def test_from_onnx_native_bounds_are_sound_by_sampling():
    net = from_onnx(cnn_graph())
    x = torch.as_tensor(RNG.normal(size=(2, 2, 8, 8)), dtype=torch.float32)
    ball = bounds.LpBall(x, 0.05)
    lb, ub = bounds.compute(net, ball, method="crown")
    with torch.no_grad():
        for _ in range(50):
            y = net(x + (torch.rand_like(x) * 2 - 1) * 0.05)
            assert (y >= lb - 1e-5).all() and (y <= ub + 1e-5).all()


def test_unsupported_op_and_non_chain_raise_clear_errors(tmp_path):
    soft = model([helper.make_node("Gemm", ["X", "W"], ["a"]),
                  helper.make_node("Softmax", ["a"], ["Y"])], [init("W", (4, 3))], (4,), 3)
    with pytest.raises(OnnxImportError, match="'Softmax'.*not supported"):
        from_onnx(soft)
    residual = model([helper.make_node("Gemm", ["X", "W"], ["a"]),
                      helper.make_node("Relu", ["a"], ["b"]),
                      helper.make_node("Add", ["a", "b"], ["Y"])], [init("W", (4, 4))], (4,), 4)
    with pytest.raises(OnnxImportError, match="chains only"):
        from_onnx(residual)
    neg_in = model([helper.make_node("Sub", ["c", "X"], ["Y"])], [init("c", (4,))], (4,), 4)
    with pytest.raises(OnnxImportError, match="constant - x"):
        from_onnx(neg_in)
    with pytest.raises(FileNotFoundError):
        from_onnx(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(OnnxImportError):
        from_onnx(tmp_path / "bad.onnx")


def test_export_reimports_to_same_outputs_and_bounds(frozen_cartpole, tmp_path):
    agent = frozen_cartpole
    path = export_onnx(agent, tmp_path / "net.onnx")
    net = from_onnx(path)
    form = agent.bounded_form()
    x = torch.as_tensor(RNG.normal(size=(32, 4)) * 0.2, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), form(x), atol=1e-5, rtol=0)
    ball = bounds.LpBall(x, 0.01)
    for method in ("ibp", "crown"):
        for a, b in zip(bounds.compute(net, ball, method=method),
                        bounds.compute(form, ball, method=method)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["certrl.env_id"] == "CartPole-v1"


def normalize_agent() -> Agent:
    """A CartPole categorical policy with running mean/std preprocessing (in memory)."""
    torch.manual_seed(0)
    net = build_network({"type": "categorical_policy", "n_out": 2, "body": {
        "kind": "mlp", "in_dim": 4, "hidden": [16, 16], "activation": "tanh"}})
    rms = RunningMeanStd((4,))
    rms.update(RNG.normal(loc=[0.5, -1, 2, 0], scale=[1, 2, 0.5, 3], size=(200, 4)))
    rms.freeze()
    return Agent({"policy": net}, env_id="CartPole-v1", algo="ppo", obs_shape=(4,),
                 action_space={"kind": "discrete", "n": 2}, preprocessing={"kind": "normalize"},
                 threat_model=ThreatModel(space="running-mean/std normalized observation"),
                 obs_rms=rms)


def test_raw_export_folds_normalization_and_imports_back(tmp_path):
    agent = normalize_agent()
    obs = RNG.normal(loc=[0.5, -1, 2, 0], scale=[1, 2, 0.5, 3], size=(20, 4)).astype(np.float32)
    with torch.no_grad():
        want = agent.forward(agent.preprocess(obs))
    raw = export_onnx(agent, tmp_path / "raw.onnx", input="raw")
    net = from_onnx(raw)
    with torch.no_grad():
        torch.testing.assert_close(net(torch.as_tensor(obs)), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(exported_module(agent, "raw")(torch.as_tensor(obs)), want,
                                   atol=1e-5, rtol=1e-5)
    back = agent_from_onnx(raw, "CartPole-v1", kind="policy")  # classic: norm stays in the net
    assert back.nets["policy"].spec["body"]["activation"] == "tanh"
    assert "input_norm" in back.nets["policy"].spec["body"]
    np.testing.assert_array_equal(back.predict(obs), agent.predict(obs))
    net_in = from_onnx(export_onnx(agent, tmp_path / "net.onnx", input="network"))
    with torch.no_grad():
        torch.testing.assert_close(net_in(agent.preprocess(obs)), want, atol=1e-5, rtol=1e-5)


def test_agent_from_onnx_round_trip_saves_and_acts_alike(frozen_cartpole, tmp_path):
    path = export_onnx(frozen_cartpole, tmp_path / "q.onnx")
    agent = agent_from_onnx(path, "CartPole-v1", kind="q")
    assert agent.algo == "dqn" and agent.preprocessing == {"kind": "identity"}
    agent.save(tmp_path / "agent.pt")
    again = Agent.load(tmp_path / "agent.pt")
    obs = (RNG.normal(size=(50, 4)) * 0.3).astype(np.float32)
    with torch.no_grad():
        q0 = frozen_cartpole.forward(frozen_cartpole.preprocess(obs))
        torch.testing.assert_close(again.forward(again.preprocess(obs)), q0, atol=1e-5,
                                   rtol=0)
    with pytest.raises(ValueError, match="kind"):
        agent_from_onnx(path, "CartPole-v1", kind="value")
    with pytest.raises(ValueError, match="observations of shape"):
        agent_from_onnx(path, "Acrobot-v1", kind="q")  # 6-dim observations
    three = model([helper.make_node("Gemm", ["X", "W"], ["Y"])], [init("W", (4, 3))], (4,), 3)
    onnx.save(three, str(tmp_path / "three.onnx"))
    with pytest.raises(ValueError, match="3 outputs .* 2 actions"):
        agent_from_onnx(tmp_path / "three.onnx", "CartPole-v1", kind="q")


def test_cli_export_onnx(frozen_cartpole, tmp_path, keep_threads):
    out = tmp_path / "net.onnx"
    assert main(["export", "onnx", str(FROZEN), "--out", str(out)]) == 0
    assert out.is_file() and from_onnx(out) is not None
    assert main(["export", "onnx", str(FROZEN), "--out", str(out)]) == 2  # exists
    assert main(["export", "onnx", str(FROZEN), "--out", str(out), "--force"]) == 0
    bad = tmp_path / "sortnet.onnx"
    assert main(["export", "onnx", "cartpole-dqn-sortnet", "--out", str(bad)]) == 2
    assert not bad.exists() and not list(tmp_path.glob("*.tmp"))


def test_nature_cnn_dueling_export_maps_back_onto_a_cnn_spec(tmp_path):
    """A Nature dueling Q-network (its bounded form: CNN, stacked streams, folded head)
    exported and read back fits the cnn spec with fc = 2 x 512 and computes the same Q."""
    from certrl.onnx_agent import copy_weights, network_spec

    torch.manual_seed(0)
    q = build_network({"type": "q", "n_out": 6, "dueling": True, "stream_hidden": 512,
                       "body": {"kind": "cnn", "in_shape": [4, 84, 84], "fc": 0}})
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(q.bounded_form(), (torch.zeros(1, 4, 84, 84),), str(path), dynamo=False,
                      input_names=["X"], output_names=["Y"], opset_version=13)
    layers = list(from_onnx(path))
    spec = network_spec(layers, (4, 84, 84), {"kind": "discrete", "n": 6}, "q", None, 0.0)
    assert spec["body"] == {"kind": "cnn", "in_shape": [4, 84, 84], "fc": 1024}
    back = build_network(spec)
    copy_weights(layers, back)
    x = torch.rand(3, 4, 84, 84)
    with torch.no_grad():
        torch.testing.assert_close(back(x), q(x), atol=1e-5, rtol=1e-5)


def test_clipped_normalization_is_refused_not_dropped(tmp_path):
    """VecNormalize clip_obs: a raw-input ONNX / VNN-LIB box cannot express the clip."""
    from certrl.onnx_agent import export_onnx
    from certrl.vnnlib import input_box

    agent = normalize_agent()
    agent.obs_rms.clip = 1.5
    with pytest.raises(ValueError, match="clip"):
        export_onnx(agent, tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    with pytest.raises(ValueError, match="clip"):
        input_box(agent, torch.zeros(1, 4), 0.01)
    export_onnx(agent, tmp_path / "b.onnx", input="network")  # the network input is fine
    assert (tmp_path / "b.onnx").exists()
