"""Every `python -m bench.*` command's --help explains each flag with its default, once."""

from __future__ import annotations

import re

import pytest

from tests.bench.helpers import REPO, main_in_process

COMMANDS = (
    "run",
    "report",
    "check",
    "perf",
    "perf.overhead",
    "perf.scale",
    "perf.replicates",
    "perf.step_ab",
    "perf.gpu_check",
)


def flag_blocks(help_text: str) -> dict[str, str]:
    """Each option's help, its first line and continuation lines joined, by its last spelling."""
    blocks: dict[str, str] = {}
    current = None
    for line in help_text.splitlines():
        m = re.match(r"\s{2}(-[-\w]+(?:, -[-\w]+)*)", line)
        if m:
            current = m.group(1).split(", ")[-1]
            blocks[current] = line.strip()
        elif current and line.startswith(" " * 6):
            blocks[current] += " " + line.strip()
        else:
            current = None
    blocks.pop("--help", None)
    return blocks


@pytest.mark.parametrize("command", COMMANDS)
def test_help_gives_every_flag_one_default(command, capfd, monkeypatch):
    # each command's main in this process (test_run.py runs `python -m bench.run --help` for real)
    module = "bench.perf.__main__" if command == "perf" else f"bench.{command}"
    code, out, err = main_in_process(module, ["--help"], capfd, monkeypatch, REPO)
    assert code == 0, err
    blocks = flag_blocks(out)
    assert len(blocks) >= 4, out
    for flag, text in blocks.items():
        assert text.count("(default") == 1, f"bench.{command} {flag}: {text!r}"
