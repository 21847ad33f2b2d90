"""CAR-PPO at train eps 0.5: which knob makes it collapse? InvertedPendulum-v5, 50k steps, seed 0.

    .venv/bin/python benchmarks/diagnostics/car_ppo_eps.py [VARIANT ...]

One process per variant (16 in parallel at most); prints natural and MAD-0.5 returns (5
episodes) and the training return per 5k steps; writes $OUT/diag.json (default /tmp).
The "coupled" variants restore the clip on pi(a|s_adv) / pi_old(a|s).
"""

import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

VARIANTS = {
    # name: (loss name, params, train eps, coupled?)
    "vanilla": ("vanilla", {}, 0.5, False),
    "car": ("car", {}, 0.5, False),
    "car-coupled": ("car", {}, 0.5, True),
    "car-kl0": ("car", {"kl_coef": 0.0}, 0.5, False),
    "car-kl0-coupled": ("car", {"kl_coef": 0.0}, 0.5, True),
    "car-lam1e6": ("car", {"lam": 1e6}, 0.5, False),
    "car-eps0.1": ("car", {}, 0.1, False),
    "car-eps0.01": ("car", {}, 0.01, False),
    "car-eps0.01-kl0": ("car", {"kl_coef": 0.0}, 0.01, False),
    "car-ibp": ("car", {"solver": "ibp"}, 0.5, False),
    "car-ibp-eps0.1": ("car", {"solver": "ibp"}, 0.1, False),
    "car-w05": ("car", {"warmup": 0.5, "ramp": 0.3}, 0.5, False),
    "car-pgd1": ("car", {"pgd_steps": 1}, 0.5, False),
    "sa": ("sa", {"solver": "ibp"}, 0.5, False),
    "sa-eps0.1": ("sa", {"solver": "ibp"}, 0.1, False),
    "radial": ("radial", {"solver": "ibp"}, 0.5, False),
}


def run(name: str) -> dict:
    import torch
    torch.set_num_threads(1)
    import certrl.losses.car as car
    from certrl.algos import PPO, PPOConfig
    from certrl.attacks import make_attack
    from certrl.evaluate import evaluate
    from certrl.losses import make_loss
    from certrl.losses.ppo_utils import clipped_surrogate
    loss_name, params, eps, coupled = VARIANTS[name]
    if coupled:  # the pre-fix form: clip on pi(a|s_adv) / pi_old(a|s)
        def coupled_surrogate(logp_adv, logp, old, adv, clip):
            return clipped_surrogate(logp_adv, old, adv, clip)
        car.adversarial_surrogate = coupled_surrogate
    t0 = time.time()
    try:
        loss = make_loss("ppo", loss_name, pgd_steps=params.pop("pgd_steps", 3), **params)
        algo = PPO(PPOConfig.for_env("InvertedPendulum-v5", total_steps=50_000, seed=0,
                                     threat={"eps": eps}), robust_loss=loss).learn()
        ag = algo.agent
        nat = evaluate(ag, episodes=5, seed=1000).mean
        atk = make_attack("pgd", ag.forward, ag.threat_model, eps=0.5, steps=10,
                          action_kind="continuous")
        mad = evaluate(ag, episodes=5, seed=1000, attack=atk).mean
        eps_curve = []
        for s in range(5000, 50001, 5000):
            rr = [e["return"] for e in algo.episodes if s - 5000 < e["step"] <= s]
            eps_curve.append(round(sum(rr) / max(1, len(rr))))
        row = {"name": name, "natural": nat, "mad0.5": mad, "train_curve": eps_curve,
               "log_std": float(ag.nets["policy"].log_std.detach().mean()),
               "wall": time.time() - t0,
               "logs": {k: round(float(v), 4) for k, v in algo.logs.items()}}
    except Exception as e:  # noqa: BLE001 - report and go on with the other variants
        row = {"name": name, "error": repr(e)}
    print(json.dumps(row), flush=True)
    return row


if __name__ == "__main__":
    names = sys.argv[1:] or list(VARIANTS)
    with mp.get_context("spawn").Pool(min(16, len(names)), maxtasksperchild=1) as p:
        rows = p.map(run, names)
    out = os.environ.get("OUT", "/tmp")
    Path(out, "diag.json").write_text(json.dumps(rows, indent=1))
