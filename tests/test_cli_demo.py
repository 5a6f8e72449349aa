"""The command-line entry point and the README's commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "cdt_fast", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "demo" in out and "usage: cdt-fast" in out


def test_demo_runs(capsys):
    from cdt_fast.cli import main

    assert main(["demo", "--tiny", "--frames", "5", "--size", "16"]) == 0
    assert "latent [1, 4, 2, 2, 2]" in capsys.readouterr().out


def test_bad_argument_is_one_line_error(capsys):
    from cdt_fast.cli import main

    assert main(["demo", "--tiny", "--frames", "4", "--size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "T = 1+4k" in err[0]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- test-command -->\n```\n(.+)\n```", readme)
    assert match, "README.md lacks the test command block"
    extracted = subprocess.run(
        ["awk", "/<!-- test-command -->/{getline; getline; print; exit}", str(ROOT / "README.md")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == match.group(1)
    assert "pytest" in extracted and "torch==2.13.0" in extracted
