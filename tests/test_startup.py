"""Import discipline: a command imports only what it uses (a grid job pays its start-up once per file).

Timings are in bench/startup.py; these tests check the cause instead — which modules a fresh
process has imported after running a command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crbatch import cli

REF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "reference" / "divert"

# Libraries no convert job and no `crbatch --help` needs: each costs 0.2–3 s to import.
HEAVY = ("keras", "tensorflow", "jax", "onnxruntime", "tf2onnx", "matplotlib", "mplhep", "scipy", "hist", "pandas")


def modules_after(argv: list[str]) -> set[str]:
    """Top-level modules imported by a fresh interpreter that ran ``crbatch.cli.main(argv)``."""
    code = (
        "import json, sys\n"
        "from crbatch.cli import main\n"
        "try:\n"
        f"    code = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print(json.dumps({'code': code, 'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n"
    )
    env = {**os.environ, "CRBATCH_NO_BAR": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] in (0, None), proc.stderr
    return set(out["modules"])


def test_help_imports_no_stage():
    mods = modules_after(["--help"])
    assert not mods & {*HEAVY, "numpy", "uproot", "awkward", "h5py", "pydantic", "yaml"}


@pytest.mark.skipif(not REF.is_dir(), reason="reference data (../shared/data/reference) absent")
def test_convert_job_imports_only_what_it_uses(tmp_path):
    mods = modules_after(["-q", "convert", "divert", str(REF / "short_divert_analysis_file.root"), "--type", "qcd",
                          "--out", str(tmp_path / "q.h5")])  # fmt: skip
    assert (tmp_path / "q.h5").is_file()
    assert {"uproot", "h5py"} <= mods
    assert not mods & set(HEAVY)


def _help_lines(p: argparse.ArgumentParser) -> dict[str, str | None]:
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help for a in sub._choices_actions}


def test_help_lines_are_the_commands_own():
    """`crbatch --help` lists every command with the help line its module registers."""
    assert _help_lines(cli.build_parser(only="")) == _help_lines(cli.build_parser())


@pytest.mark.parametrize("name", [*cli.COMMANDS, "exit-codes"])
def test_each_command_gets_its_full_parser(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    assert f"usage: crbatch {name}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "command"),
    [(["-vv", "convert", "divert", "x.root"], "convert"), (["--help"], ""), (["-q", "train"], "train"), ([], "")],
)
def test_command_of(argv, command):
    assert cli.command_of(argv) == command


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["convrt"])
    assert e.value.code == 2
    assert "invalid choice: 'convrt'" in capsys.readouterr().err
