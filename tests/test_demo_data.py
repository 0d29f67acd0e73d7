"""The demo production (crbatch.demo_data) runs convert and build in-process, through their own
command lines: a stage's failure is one line naming the demo step and the file, with the stage's exit code."""

from __future__ import annotations

import importlib.util

import pytest

from crbatch.cli import main
from crbatch.demo_data import DEMO_SAMPLES, make_datasets
from crbatch.errors import CrbatchError

needs_root = pytest.mark.skipif(importlib.util.find_spec("ROOT") is None, reason="PyROOT (synth extra) absent")


@needs_root
def test_a_failing_conversion_names_the_file_and_keeps_its_exit_code(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for stem, *_ in DEMO_SAMPLES:  # present, so kept: no generation
        (inputs / f"{stem}.root").write_bytes(b"not a ROOT file")
    first = inputs / f"{DEMO_SAMPLES[0][0]}.root"
    expected = main(["-q", "convert", "divert", str(first), "--type", "sig", "--mH", "125", "--mS", "55",
                     "--output-dir", str(tmp_path / "alone")])  # fmt: skip
    assert expected != 0
    with pytest.raises(CrbatchError) as e:
        make_datasets(tmp_path)
    assert str(e.value).startswith(f"demo datasets: converting {first} failed")
    assert int(e.value.code) == expected
    assert not (tmp_path / "datasets").exists()
