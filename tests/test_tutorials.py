"""Every tutorial runs top to bottom in fast mode, and its exercise checks pass.

Each `tutorials/NN_name.py` is run as its own process (`python tutorials/NN_name.py` with
`MINILLM_TUTORIAL_FAST=1`), from a scratch directory so that no tutorial depends on the
working directory. A tutorial ends by calling `check_exercises()`, whose assertions check
the reference answers, so a library change that breaks a tutorial fails here.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
SCRIPTS = sorted(TUTORIALS.glob("[0-9]*.py"))


def test_there_are_tutorials():
    assert SCRIPTS, f"no tutorials found in {TUTORIALS}"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_tutorial_runs_in_fast_mode(script, tmp_path):
    env = dict(os.environ, MINILLM_TUTORIAL_FAST="1", MPLBACKEND="Agg")
    env.pop("MINILLM_TUTORIAL_FIGURES", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"{script.name} exited with code {proc.returncode}\n"
                    f"--- stderr ---\n{proc.stderr[-6000:]}\n--- stdout (end) ---\n{proc.stdout[-2000:]}")
    assert "check_exercises()" in script.read_text(), f"{script.name} does not check its exercises"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_tutorial_is_jupytext_percent_and_listed(script):
    text = script.read_text()
    assert re.search(r"^# %% \[markdown\]", text, re.M), f"{script.name} has no markdown cell"
    assert re.search(r"^# %%$", text, re.M), f"{script.name} has no code cell"
    readme = (TUTORIALS / "README.md").read_text()
    assert script.name in readme, f"tutorials/README.md does not list {script.name}"
