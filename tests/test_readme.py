"""The README's quick start stays true: its commands run and succeed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT


def quick_start_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.strip().splitlines():
            for part in line.split("&&"):
                words = shlex.split(part)
                if words[:3] == ["python", "-m", "planner"]:
                    commands.append(words)
    return commands


def test_quick_start_has_two_lines_install_and_test():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"## Quick start\n\n```sh\n(.*?)```", text, flags=re.S)
    assert first is not None
    lines = first.group(1).strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("pip install -e . && python -m planner solve ")
    assert lines[1] == 'pip install -e ".[test]" && python -m pytest'


def test_quick_start_planner_commands_succeed(tmp_path):
    commands = quick_start_commands()
    assert len(commands) >= 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for words in commands:
        argv = [sys.executable, "-m", "planner", *[_abs(w) for w in words[3:]]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert done.returncode == 0, (words, done.stderr)
        assert "Traceback" not in done.stderr
        if "--budget" in words:
            assert "fits" in done.stdout
        outdir = tmp_path / words[words.index("-o") + 1]
        assert (outdir / "plan.json").is_file()


def _abs(word: str) -> str:
    """Model paths in the README are relative to the repository root."""
    return str(ROOT / word) if word.startswith("benchmarks/") else word


def test_quick_start_figures_are_what_the_commands_print(tmp_path):
    """Each "prints head H B + tail T B = arena total A B" after a command block is that
    command's output, so the README's figures cannot drift from the code."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    claims = re.findall(r"```sh\n(python -m planner [^\n]*)\n```\s*\n\s*prints head "
                        r"([\d,]+) B \+ tail ([\d,]+) B = arena total ([\d,]+) B", section)
    assert len(claims) >= 2
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for line, head, tail, total in claims:
        words = shlex.split(line)
        argv = [sys.executable, "-m", "planner", *[_abs(w) for w in words[3:]]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env)
        assert done.returncode == 0, (words, done.stderr)
        for label, value in (("head", head), ("tail", tail), ("arena total", total)):
            assert re.search(rf"^{label}\s+{value} B", done.stdout, flags=re.M), \
                (line, label, value, done.stdout)
