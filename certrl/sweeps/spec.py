"""Sweep specs: parse a YAML spec and expand its grid into units (train runs and jobs).

A spec has ``train`` groups (each the grid env x algo x loss x train_eps x seeds, or a
fine-tune of another group's runs) and ``jobs`` (``certrl evaluate`` / ``certify`` /
``attack`` on every trained agent of the groups they name). Each unit is one ``certrl``
command line with its own folder under the sweep's OUT; see docs/sweeps.md.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from certrl.algos import ALGOS
from certrl.losses import LOSS_NAMES

JOB_COMMANDS = ("evaluate", "certify", "attack")
SPEC_KEYS = {"out", "max_retries", "train", "jobs"}
GROUP_KEYS = {"name", "env", "algo", "loss", "seeds", "train_eps", "steps", "set", "args",
              "init_from"}
JOB_KEYS = {"name", "command", "args", "groups"}
NO_EPS_LOSSES = ("vanilla", "noise")  # losses that train without --train-eps
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Unit:
    """One command of the sweep: ``certrl <argv>`` writing into ``OUT/<uid>``.

    ``kind`` is "train" or a job name; ``deps`` are the uids of the units that must
    finish first (a fine-tune's base run, a job's trained agent)."""

    uid: str
    kind: str
    argv: tuple[str, ...]
    deps: tuple[str, ...] = ()
    results: str | None = None  # the JSON lines file a job writes (relative to OUT)


@dataclass
class Spec:
    """A parsed sweep spec: train groups and jobs (validated dicts), out, max_retries."""

    train: list[dict]
    jobs: list[dict] = field(default_factory=list)
    out: str | None = None
    max_retries: int = 1


def _as_list(value, what: str) -> list:
    """A scalar or a list as a non-empty list."""
    items = value if isinstance(value, list) else [value]
    if not items or any(v is None or isinstance(v, (dict, list)) for v in items):
        raise ValueError(f"{what}: expected a value or a non-empty list of values")
    return items


def _check_keys(d, allowed: set, where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    if True in d or False in d:  # YAML 1.1 reads on: / yes: / no: as booleans
        raise ValueError(f"{where}: a key reads as a boolean (YAML takes on / off / yes / "
                         "no for true / false); a job's groups go under groups:")
    extra = sorted(set(d) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown keys {extra} (allowed: {sorted(allowed)})")


def _check_name(name, where: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"{where}: name must be letters, digits, '_', '.', '+', '-' "
                         f"(got {name!r})")
    return name


def _str_args(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or any(isinstance(v, (dict, list)) for v in value):
        raise ValueError(f"{where}: args must be a list of command-line words")
    return [str(v) for v in value]


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file (ValueError / FileNotFoundError on bad input)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sweep spec {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML: {e}") from None
    return parse_spec(data, str(p))


def parse_spec(data, where: str = "spec") -> Spec:
    """Validate a spec mapping (see docs/sweeps.md) into a Spec."""
    _check_keys(data, SPEC_KEYS, where)
    groups = data.get("train")
    if not isinstance(groups, list) or not groups:
        raise ValueError(f"{where}: 'train' must be a non-empty list of groups")
    names: dict[str, dict] = {}
    for i, g in enumerate(groups):
        _check_group(g, f"{where}: train[{i}]", names)
        names[g["name"]] = g
    jobs = data.get("jobs") or []
    if not isinstance(jobs, list):
        raise ValueError(f"{where}: 'jobs' must be a list")
    seen: dict[str, set] = {}  # job name -> the groups it runs on so far
    for i, j in enumerate(jobs):
        on = _check_job(j, f"{where}: jobs[{i}]", names, seen)
        seen.setdefault(j["name"], set()).update(on)
    retries = data.get("max_retries", 1)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"{where}: max_retries must be an integer >= 0")
    out = data.get("out")
    if out is not None and not isinstance(out, str):
        raise ValueError(f"{where}: out must be a path")
    return Spec(train=groups, jobs=jobs, out=out, max_retries=retries)


def _check_group(g, where: str, before: dict) -> None:
    """Validate one train group (``before``: the groups defined above it)."""
    _check_keys(g, GROUP_KEYS, where)
    name = _check_name(g.get("name"), where)
    if name in before or name == "train":
        raise ValueError(f"{where}: duplicate or reserved group name {name!r}")
    base = g.get("init_from")
    if base is not None:
        if base not in before:
            raise ValueError(f"{where}: init_from {base!r} is not a group defined above")
        if "env" in g or "algo" in g:
            raise ValueError(f"{where}: a fine-tune (init_from) takes env and algo from its "
                             "base runs; leave env and algo out")
    else:
        for key in ("env", "algo", "steps"):
            if key not in g:
                raise ValueError(f"{where}: {key} is required (or init_from a base group)")
        bad = [a for a in _as_list(g["algo"], f"{where}: algo") if a not in ALGOS]
        if bad:
            raise ValueError(f"{where}: unknown algo {bad} (choose from {sorted(ALGOS)})")
        _as_list(g["env"], f"{where}: env")
    losses = _as_list(g.get("loss", "vanilla"), f"{where}: loss")
    bad = [x for x in losses if x not in LOSS_NAMES]
    if bad:
        raise ValueError(f"{where}: unknown loss {bad} (choose from {list(LOSS_NAMES)})")
    if "train_eps" not in g and any(x not in NO_EPS_LOSSES for x in losses):
        raise ValueError(f"{where}: robust losses need train_eps")
    for e in _as_list(g.get("train_eps", 0.0), f"{where}: train_eps"):
        if not isinstance(e, (int, float)) or isinstance(e, bool) or e < 0:
            raise ValueError(f"{where}: train_eps must be numbers >= 0 (got {e!r})")
    _check_seeds(g, where, before.get(base))
    if "steps" in g and (not isinstance(g["steps"], int) or g["steps"] <= 0):
        raise ValueError(f"{where}: steps must be a positive integer")
    if not isinstance(g.get("set", {}), dict):
        raise ValueError(f"{where}: set must be a mapping KEY: VALUE")
    _str_args(g.get("args"), where)


def _check_seeds(g: dict, where: str, base: dict | None) -> None:
    if "seeds" not in g and base is None:
        raise ValueError(f"{where}: seeds is required")
    seeds = _as_list(g.get("seeds", base["seeds"] if base else None), f"{where}: seeds")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
        raise ValueError(f"{where}: seeds must be integers >= 0")
    if base is not None and not set(seeds) <= set(_as_list(base["seeds"], "seeds")):
        raise ValueError(f"{where}: seeds {seeds} are not all seeds of {base['name']!r}")


def _check_job(j, where: str, groups: dict, seen: dict) -> list:
    """Validate one job; its ``groups``. A name may repeat on other groups only (the
    same job folder name with other arguments, e.g. a certify method per network type)."""
    _check_keys(j, JOB_KEYS, where)
    name = _check_name(j.get("name"), where)
    if name == "train":
        raise ValueError(f"{where}: reserved job name {name!r}")
    if j.get("command") not in JOB_COMMANDS:
        raise ValueError(f"{where}: command must be one of {list(JOB_COMMANDS)}")
    args = _str_args(j.get("args"), where)
    reserved = {"--out", "--force", "--no-progress"} & set(args)
    if reserved:
        raise ValueError(f"{where}: the sweep sets {sorted(reserved)} itself")
    on = _as_list(j.get("groups", list(groups)), f"{where}: groups")
    bad = [x for x in on if x not in groups]
    if bad:
        raise ValueError(f"{where}: groups: unknown train groups {bad}")
    twice = sorted(seen.get(name, set()) & set(on))
    if twice:
        raise ValueError(f"{where}: job {name!r} already runs on groups {twice}")
    return on


def env_slug(env: str) -> str:
    """A folder name for an env id (ALE/Pong-v5 -> ALE-Pong-v5)."""
    return env.replace("/", "-")


def _run_tag(algo: str, loss: str, eps) -> str:
    return f"{algo}-{loss}" + ("" if eps is None else f"-eps{float(eps):g}")


def train_runs(spec: Spec) -> list[dict]:
    """Every train run of the grid, in spec order: dict(uid, group, env, algo, loss, eps,
    seed, base) -- base: the uid of the run it fine-tunes from (None: from scratch)."""
    runs: list[dict] = []
    by_group: dict[str, list[dict]] = {}
    for g in spec.train:
        losses = _as_list(g.get("loss", "vanilla"), "loss")
        epss = _as_list(g.get("train_eps", 0.0), "train_eps")
        mine = []
        for base in _bases(g, by_group):
            for loss, eps in itertools.product(losses, epss):
                e = None if loss in NO_EPS_LOSSES else eps
                uid = f"{env_slug(base['env'])}/{g['name']}/{_run_tag(base['algo'], loss, e)}" \
                      f"/seed{base['seed']}"
                if any(r["uid"] == uid for r in mine):  # vanilla: one run over the eps axis
                    continue
                mine.append({"uid": uid, "group": g["name"], "env": base["env"],
                             "algo": base["algo"], "loss": loss, "eps": e,
                             "seed": base["seed"], "base": base.get("uid")})
        by_group[g["name"]] = mine
        runs += mine
    return runs


def _bases(g: dict, by_group: dict) -> list[dict]:
    """The (env, algo, seed[, uid]) a group's runs start from: its own grid, or the runs of
    its init_from group with the group's seeds (one base run per env/algo/seed)."""
    if g.get("init_from") is None:
        return [{"env": e, "algo": a, "seed": s} for e in _as_list(g["env"], "env")
                for a in _as_list(g["algo"], "algo") for s in _as_list(g["seeds"], "seeds")]
    base = by_group[g["init_from"]]
    keys = [(r["env"], r["algo"], r["seed"]) for r in base]
    if len(keys) != len(set(keys)):
        raise ValueError(f"group {g['name']!r}: init_from {g['init_from']!r} has several runs "
                         "per env/algo/seed (several losses or eps): ambiguous base")
    seeds = set(_as_list(g.get("seeds", [r["seed"] for r in base]), "seeds"))
    return [r for r in base if r["seed"] in seeds]


def train_argv(g: dict, run: dict, out: Path) -> list[str]:
    """The ``certrl train`` words of one run (``out``: the sweep's OUT)."""
    tdir = out / run["uid"] / "train"
    if run["base"] is None:
        argv = ["train", "--env", run["env"], "--algo", run["algo"]]
    else:
        argv = ["train", "--init-from", str(out / run["base"] / "train")]
    if "steps" in g:
        argv += ["--steps", str(g["steps"])]
    argv += ["--seed", str(run["seed"]), "--out", str(tdir)]
    if run["loss"] != "vanilla":
        argv += ["--loss", run["loss"]]
    if run["eps"] is not None:
        argv += ["--train-eps", f"{float(run['eps']):g}"]
    for k, v in (g.get("set") or {}).items():
        argv += ["--set", f"{k}={v}"]
    return argv + _str_args(g.get("args"), "args")


def expand(spec: Spec, out: str | Path) -> list[Unit]:
    """All units of the spec under ``out`` (absolute paths in the command lines), train
    runs first, each before the units that depend on it."""
    out = Path(out).absolute()
    groups = {g["name"]: g for g in spec.train}
    runs = train_runs(spec)
    units = [Unit(r["uid"] + "/train", "train", tuple(train_argv(groups[r["group"]], r, out)),
                  () if r["base"] is None else (r["base"] + "/train",)) for r in runs]
    for j in spec.jobs:
        on = set(_as_list(j.get("groups", list(groups)), "groups"))
        for r in runs:
            if r["group"] not in on:
                continue
            uid = f"{r['uid']}/{j['name']}"
            results = f"{uid}/results.jsonl"
            argv = [j["command"], str(out / r["uid"] / "train"), *_str_args(j.get("args"),
                                                                            "args"),
                    "--out", str(out / results)]
            units.append(Unit(uid, j["name"], tuple(argv), (r["uid"] + "/train",), results))
    return units
