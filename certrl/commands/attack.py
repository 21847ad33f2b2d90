"""certrl attack: returns under an observation attack at one or several eps (resumable).

Gradient attacks (pgd, pgd-ref, fgsm, mad, random), value attacks (critic) and learned
attacks (rs, rs+mad: Robust Sarsa; sa-rl: the SA-RL optimal adversary; pa-ad: PA-AD), or
``worst``: several of them and, per episode seed, the lowest return. Learned attackers are
trained on first use (``certrl.adversaries.learned``) and their rows name them.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from tqdm import tqdm

from certrl.adversaries import LEARNED, RS_MAD_RATIO, VALUE_ATTACKS, value_attack
from certrl.adversaries.worst import WORST_DEFAULT, parse_worst_of, write_worst_rows
from certrl.agent import load
from certrl.attacks import ATTACKS, make_attack
from certrl.commands.common import (
    add_force,
    default_out,
    eps_arg,
    fmt,
    positive_int,
    set_threads,
    truncation_note,
)
from certrl.commands.evaluate import add_episode_flags, add_smoothing_flags, smoothed_from_args
from certrl.device import add_device_arg, configure_determinism, resolve_device
from certrl.evaluate import (
    EpisodeRun,
    apply_eps_scale,
    episode_rng_seed,
    run_episodes,
    run_rows,
    summarize_episodes,
)
from certrl.identity import agent_identity
from certrl.records import check_out, eps_space_words
from certrl.threat import parse_norm

ALL_ATTACKS = ATTACKS + VALUE_ATTACKS + ("worst",)
# PA-AD's MuJoCo command: --adv-ppo-lr-adam 3e-5 --adv-val-lr 3e-5 --adv-clip-eps 0.4
PPO_DEFAULTS = {"sa-rl": {}, "pa-ad": {"lr": 3e-5, "value_lr": 3e-5, "clip": 0.4}}
OBJECTIVES = {"critic": "value", "rs": "sarsa-q", "sa-rl": "adversary-policy",
              "pa-ad": "director+fgsm",
              "worst": "worst"}


@dataclass(frozen=True)
class AttackRun(EpisodeRun):
    """An attack request whose settings also name its attacker (learned attacks)."""

    extra_settings: tuple = ()

    def settings(self) -> dict:
        return {**super().settings(), **dict(self.extra_settings)}


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="attacked return (pgd, pgd-ref, fgsm, mad, random, "
                                      "critic, rs, rs+mad, sa-rl, pa-ad, worst)",
                       description="Attack an agent's observations at each step and report "
                                   "returns. eps is measured in the agent's threat-model space "
                                   "(network input: [0,1] pixels for Atari, normalized obs "
                                   "for MuJoCo). pgd: random start, best iterate (ours); "
                                   "pgd-ref: the references' PGD (10 steps of 0.1 eps, no "
                                   "random start); critic, rs, rs+mad: SA-PPO's attacks; "
                                   "sa-rl: a learned adversary policy, pa-ad: a learned "
                                   "director with an FGSM actor (trained on first use, "
                                   "saved under runs/attackers); worst: several attacks, the "
                                   "lowest return per episode. Writes one JSON line per "
                                   "episode; re-running with the same --out runs only the "
                                   "missing episodes.")
    p.add_argument("checkpoint", help="checkpoint file or shipped agent name")
    p.add_argument("--attack", choices=ALL_ATTACKS, default="pgd")
    p.add_argument("--eps", type=eps_arg, nargs="+", required=True,
                   help="one or more radii, e.g. --eps 0.01 0.05 or 3/255")
    p.add_argument("--steps", type=positive_int, default=10, help="attack iterations")
    p.add_argument("--step-size", type=float, default=None,
                   help="default 2.5 eps / steps (pgd, mad), 0.1 eps (pgd-ref), eps / steps "
                        "(critic, rs, rs+mad)")
    p.add_argument("--norm", default=None, help="inf or 2 (default: the agent's threat model)")
    p.add_argument("--objective", choices=("ce", "margin"), default="ce",
                   help="discrete agents: cross-entropy or Q-margin of the clean action")
    add_learned_args(p)
    add_smoothing_flags(p)
    add_episode_flags(p)
    p.add_argument("--out", default=None, help="JSON lines file (default results/...)")
    add_force(p)
    p.add_argument("--threads", type=int, default=1)
    add_device_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_learned_args(p: argparse.ArgumentParser) -> None:
    """Flags of the learned attacks and of ``worst``."""
    p.add_argument("--budget", type=positive_int, default=None,
                   help="training env steps of a learned attacker (default: the reference's, "
                        "rs 61440 = 30 x 2048, sa-rl and pa-ad 999424 = 488 x 2048)")
    p.add_argument("--attacker", default=None,
                   help="attacker checkpoint to load (or train into, if absent); default "
                        "runs/attackers/<agent id>-<kind>-<settings hash>.pt")
    p.add_argument("--attacker-seed", type=int, default=0, help="learned attacker's seed")
    p.add_argument("--rs-eps", type=float, default=0.02,
                   help="Robust Sarsa regularizer radius (SA-PPO --sarsa-eps, default 0.02)")
    p.add_argument("--rs-reg", type=float, default=0.1,
                   help="Robust Sarsa regularizer weight (SA-PPO --sarsa-reg, default 0.1)")
    p.add_argument("--rs-mad-ratio", type=float, default=RS_MAD_RATIO,
                   help="rs+mad: weight of the MAD term in [0, 1] (default 0.5)")
    p.add_argument("--worst-of", type=parse_worst_of, default=None,
                   help="worst: comma-separated attacks (default continuous: "
                        f"{','.join(WORST_DEFAULT['continuous'])}; discrete: "
                        f"{','.join(WORST_DEFAULT['discrete'])})")


def check_args(args: argparse.Namespace, kind: str) -> list[str]:
    """The attacks to run; ValueError for bad flag combinations."""
    if args.step_size is not None and not args.step_size > 0:
        raise ValueError(f"--step-size must be > 0; got {args.step_size}")
    if not 0.0 <= args.rs_mad_ratio <= 1.0:
        raise ValueError(f"--rs-mad-ratio must be in [0, 1]; got {args.rs_mad_ratio}")
    if args.attack != "worst" and args.worst_of is not None:
        raise ValueError("--worst-of goes with --attack worst")
    names = ([args.attack] if args.attack != "worst"
             else list(args.worst_of or WORST_DEFAULT[kind]))
    learned = [n for n in names if n in LEARNED]
    kinds = {"rs" if n == "rs+mad" else n for n in learned}
    if args.attacker is not None and (len(kinds) > 1 or (kinds & {"sa-rl", "pa-ad"} and
                                                         len(args.eps) > 1)):
        raise ValueError("--attacker names one attacker: give one learned attack kind (and "
                         "one eps for sa-rl / pa-ad), or leave --attacker out")
    return names


def run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    device = resolve_device(args.device)  # ValueError (exit 2) before anything is written
    configure_determinism(device)
    out = check_out(args.out or default_out("attack", args.checkpoint, args.attack), "attack",
                    args.force)
    agent = smoothed_from_args(apply_eps_scale(load(args.checkpoint, device), args.eps_scale),
                               args)
    tm = agent.threat_model
    if args.norm is not None:
        d = tm.to_dict()
        d["norm"] = parse_norm(args.norm)
        tm = type(tm).from_dict(d)
    names = check_args(args, agent.action_space_kind)
    if args.smoothed and any(n in LEARNED or n in VALUE_ATTACKS for n in names):
        raise ValueError("--smoothed attacks the smoothed agent with gradient attacks (pgd, "
                         "pgd-ref, fgsm, mad, random) only")
    learned = [n for n in names if n in LEARNED or n in VALUE_ATTACKS]
    if device.type != "cpu" and learned:  # their attacker / critic networks live on the CPU
        raise ValueError(f"attack {', '.join(learned)} runs on the CPU only for now; use "
                         "--device cpu (gradient attacks pgd, pgd-ref, fgsm, mad, random run "
                         f"on {device})")
    ctx = Context(agent, str(args.checkpoint), tm, args, out)
    fresh = args.force
    rows_of: dict[str, list] = {}
    for name in names:
        rows_of[name] = ctx.run_attack(name, fresh)
        fresh = False
    print(f"{agent.env_id} {agent.algo}/{agent.loss_name} seed {agent.seed}: "
          f"l_{tm.to_dict()['norm']}, {args.steps} steps, eps in {eps_space_words(tm)}, "
          f"{args.episodes} episodes")
    for name in names:
        report(name, rows_of[name])
    if args.attack == "worst":
        report("worst", ctx.worst(names, rows_of))
    print(f"results: {out}")
    return 0


def report(name: str, rows: list) -> None:
    """Mean +- std per eps of one attack's rows."""
    for eps, s in summarize_episodes(rows).items():
        extra = (f", actions changed {100 * s['action_change_rate']:.1f}%"
                 if "action_change_rate" in s else "")
        print(f"  {name:8s} eps {eps:.4g}: return {fmt(s['mean'])} +- {fmt(s['std'])}{extra}"
              f"{truncation_note(s)}")


class Context:
    """One attack command's agent, threat model, flags and results file."""

    def __init__(self, agent, label: str, tm, args: argparse.Namespace, out):
        self.agent, self.label, self.tm, self.args, self.out = agent, label, tm, args, out
        self.norm = tm.to_dict()["norm"]
        self.progress = not getattr(args, "no_progress", False)

    def objective(self, name: str) -> str:
        if name in ATTACKS:
            return "mad" if self.agent.action_space_kind == "continuous" else self.args.objective
        if name == "rs+mad":
            return f"sarsa-q+{self.args.rs_mad_ratio:g}*mad"
        return OBJECTIVES[name]

    def make_run(self, name: str, eps: tuple, extra: tuple = ()) -> AttackRun:
        a = self.args
        steps = 1 if name in ("fgsm", "random", "sa-rl") else a.steps  # pa-ad: actor noise box
        return AttackRun("attack", a.episodes, eps, name, self.norm, a.seed, a.max_steps, True,
                         steps, a.step_size, self.objective(name), extra)

    def worst(self, names: list[str], rows_of: dict[str, list]) -> list:
        """Write (or resume) the worst-of rows; they name the components' settings."""
        comps = tuple((n, rows_of[n][0].settings_hash if rows_of[n] else None) for n in names)
        run_ = self.make_run("worst", tuple(self.args.eps), (("worst_of", comps),))

        def fields(eps: float) -> dict:
            return {"eps": eps, "norm": self.norm, "attack": "worst",
                    "attack_steps": run_.attack_steps, "step_size": self.args.step_size,
                    "objective": "worst", "threat_model": self.tm.with_eps(eps).to_dict()}

        return write_worst_rows(self.agent, self.label, self.out, run_, rows_of, fields)

    def run_attack(self, name: str, fresh: bool) -> list:
        """Run (or resume) attack ``name`` at every eps; its episode rows."""
        if name in ("sa-rl", "pa-ad"):
            rows = []
            for eps in self.args.eps:
                rows += self.run_learned(name, (eps,), fresh)
                fresh = False
            return rows
        if name in LEARNED:
            return self.run_learned(name, tuple(self.args.eps), fresh)
        return self.episodes(self.make_run(name, tuple(self.args.eps)), name, None, {}, fresh)

    def run_learned(self, name: str, eps: tuple, fresh: bool) -> list:
        from certrl.adversaries.learned import obtain_rs, obtain_sarl
        from certrl.adversaries.ppo_lite import PPOLiteConfig
        from certrl.adversaries.sarsa import SarsaConfig

        a = self.args
        bar = TrainBar(name, self.progress)
        if name in ("sa-rl", "pa-ad"):
            cfg = PPOLiteConfig(seed=a.attacker_seed, **PPO_DEFAULTS[name],
                                **({"budget": a.budget} if a.budget else {}))
            payload, net = obtain_sarl(self.agent, self.label, self.tm, eps[0], cfg, True,
                                       a.attacker, bar.total(cfg.iterations), name, a.steps)
        else:
            cfg = SarsaConfig(seed=a.attacker_seed, sarsa_eps=a.rs_eps, sarsa_reg=a.rs_reg,
                              **({"budget": a.budget} if a.budget else {}))
            payload, net = obtain_rs(self.agent, self.label, cfg, a.attacker,
                                     bar.total(cfg.iterations))
        bar.close()
        info = {"attacker_id": payload["attacker_id"], "attacker_path": payload["path"],
                "attacker_budget": payload["settings"]["budget"],
                "attacker_seed": payload["settings"]["seed"],
                "attacker_train_cpu_s": payload["info"].get("train_cpu_s")}
        extra = (("attacker_id", payload["attacker_id"]),)
        if name == "rs+mad":
            extra += (("rs_mad_ratio", a.rs_mad_ratio),)
        return self.episodes(self.make_run(name, eps, extra), name, net, info, fresh)

    def episodes(self, run_: AttackRun, name: str, net, extra: dict, fresh: bool) -> list:
        a, agent, tm = self.args, self.agent, self.tm
        total = len(run_.eps) * a.episodes
        done = len(run_rows(self.out, run_, agent_identity(agent))) if \
            self.out.exists() and not fresh else 0
        bar = tqdm(total=total, initial=done, desc=name, unit="ep", disable=not self.progress,
                   leave=False)
        calls = [0]

        def attack_for(eps: float, episode: int):
            calls[0] += 1
            if calls[0] > len(run_.eps):  # the first calls are run_episodes' preflight
                bar.update(1)
            seed = episode_rng_seed(a.seed, episode)
            if name in ATTACKS:
                return make_attack(name, agent.forward, tm.with_eps(eps), eps, a.steps,
                                   a.step_size, seed, agent.action_space_kind, a.objective)
            return value_attack(name, agent, tm, eps, a.steps, a.step_size, seed, net,
                                a.rs_mad_ratio)

        def fields(eps: float) -> dict:
            return {"eps": eps, "norm": self.norm, "attack": name,
                    "attack_steps": run_.attack_steps, "step_size": a.step_size,
                    "objective": run_.objective, "threat_model": tm.with_eps(eps).to_dict(),
                    "extra": dict(extra)}

        try:
            return run_episodes(agent, self.label, run_, self.out, fields, attack_for,
                                fresh=fresh)
        finally:
            bar.close()


class TrainBar:
    """A tqdm bar over a learned attacker's training rounds (made on first report)."""

    def __init__(self, name: str, on: bool):
        self.name, self.on, self.bar, self.n = name, on, None, 0

    def total(self, n: int):
        self.n = n
        return self

    def __call__(self, it: int, info: dict) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.n, desc=f"train {self.name}", unit="round",
                            disable=not self.on, leave=False)
        self.bar.update(it - self.bar.n)
        shown = {k: round(v, 4) for k, v in info.items()
                 if k in ("td_loss", "reg_loss", "round_return", "value_loss")}
        self.bar.set_postfix(shown)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
