"""Two real processes writing one results file lose nothing and repeat no unit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from certrl.records import read_rows
from tests.conftest import SHIPPED, has_shipped

pytestmark = has_shipped
ROOT = Path(__file__).resolve().parents[1]

# Each process imports certrl, waits until both are ready (so their work overlaps however
# slow the imports), then runs the given certrl commands one after the other.
DRIVER = """
import json, sys, time
from pathlib import Path
from certrl.cli import main
me, other, commands = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
Path(me).touch()
t0 = time.time()
while not Path(other).exists() and time.time() - t0 < 120:
    time.sleep(0.01)
for argv in commands:
    rc = main(argv)
    if rc:
        sys.exit(rc)
"""


def _run_together(tmp_path, commands_a: list[list[str]], commands_b: list[list[str]]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ready = [str(tmp_path / "ready-a"), str(tmp_path / "ready-b")]
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, me, other, json.dumps(cmds)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for me, other, cmds in ((*ready, commands_a), (*ready[::-1], commands_b))]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def test_two_processes_share_certify_and_attack_files(tmp_path):
    cert, atk = tmp_path / "c.jsonl", tmp_path / "a.jsonl"
    certify = ["certify", SHIPPED, "--eps", "0.005", "0.01", "--method", "ibp", "crown",
               "--episodes", "4", "--max-steps", "20", "--no-radius", "--no-progress",
               "--out", str(cert)]
    attack = ["attack", SHIPPED, "--attack", "pgd", "--steps", "3", "--episodes", "3",
              "--max-steps", "20", "--out", str(atk)]
    # same certify command twice; attacks with overlapping eps lists
    _run_together(tmp_path, [certify, [*attack, "--eps", "0.01", "0.05"]],
                  [certify, [*attack, "--eps", "0.05", "0.1"]])

    rows = read_rows(cert)
    units = Counter(r["unit"] for r in rows if r["record"] == "episode")
    assert len(units) == 4 * 2 * 2 and set(units.values()) == {1}
    states = Counter((r["episode"], r["eps"], r["method"], r["step"])
                     for r in rows if r["record"] == "state")
    assert len(states) == 16 * 20 and set(states.values()) == {1}

    units = Counter((r["eps"], r["episode"]) for r in read_rows(atk))
    assert set(units) == {(e, i) for e in (0.01, 0.05, 0.1) for i in range(3)}
    assert set(units.values()) == {1}
