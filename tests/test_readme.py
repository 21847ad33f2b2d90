"""README.md's code runs as written: every ```python block is executed (in a scratch
folder, in order, sharing one namespace per block), and every `certrl COMMAND` line of a
```bash block names a command whose --help works."""

import re
import shlex
from pathlib import Path

import pytest

from certrl.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(blocks("python")) >= 3


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, tmp_path, monkeypatch):
    code = blocks("python")[index]
    if "stable_baselines3" in code:
        pytest.importorskip("stable_baselines3", reason="optional extra: pip install "
                            "'certrl[sb3]'")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})


def certrl_commands() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("certrl "):
                out.append(shlex.split(line)[1])
    return out


@pytest.mark.parametrize("command", sorted(set(certrl_commands())))
def test_shell_commands_exist(command, capsys):
    assert main([command, "--help"]) == 0  # an unknown command exits 2
    assert f"certrl {command}" in capsys.readouterr().out
