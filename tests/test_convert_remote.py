"""`crbatch convert divert root://...`: the ntuple read in place over XRootD, as the local file."""

from __future__ import annotations

import time

import h5py
import hdf5plugin  # noqa: F401  (the shards' codec)
import pytest
from xrootd_helpers import UNREACHABLE

from crbatch import storage
from crbatch.cli import main
from crbatch.errors import ExitCode


def _tables(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...].tobytes() for k in f}, dict(f.attrs)


def test_remote_convert_equals_local(remote_dir, synth_file, tmp_path):
    src = synth_file("sig", 300, 5, mH=125, mS=55)
    url = remote_dir / "in dir" / src.name  # a blank in the URL's path
    storage.put(src, url)
    args = ["--type", "sig", "--mH", "125", "--mS", "55"]
    assert main(["convert", "divert", str(src), *args, "--out", str(tmp_path / "local.h5")]) == 0
    assert main(["convert", "divert", str(url), *args, "--out", str(tmp_path / "remote.h5")]) == 0
    local, la = _tables(tmp_path / "local.h5")
    remote, ra = _tables(tmp_path / "remote.h5")
    assert local.keys() == remote.keys() and local == remote  # byte for byte
    assert ra["source_path"] == str(url) and ra["source_size"] == src.stat().st_size == la["source_size"]
    assert ra["cutflow"] == la["cutflow"]
    # The same file from another replica is the same shard: skipped, not refused.
    other = remote_dir / "replica2" / src.name
    storage.put(src, other)
    mtime = (tmp_path / "remote.h5").stat().st_mtime_ns
    assert main(["convert", "divert", str(other), *args, "--out", str(tmp_path / "remote.h5")]) == 0
    assert (tmp_path / "remote.h5").stat().st_mtime_ns == mtime


def test_missing_remote_file_exits_10(remote_dir, tmp_path):
    out = tmp_path / "x.h5"
    rc = main(["convert", "divert", str(remote_dir / "nope.root"), "--type", "qcd", "--out", str(out)])
    assert rc == ExitCode.INPUT_MISSING
    assert not out.exists()


def test_unreachable_server_exits_20_after_bounded_retries(tmp_path, caplog):
    out = tmp_path / "x.h5"
    t0 = time.monotonic()
    rc = main(["convert", "divert", f"{UNREACHABLE}//data/x.root", "--type", "qcd", "--out", str(out),
               "--set", "retries=2", "--set", "retry_wait=0.1"])  # fmt: skip
    assert rc == ExitCode.TRANSIENT
    assert time.monotonic() - t0 < 60
    assert caplog.text.count("converting again") == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-1"])
def test_retries_validated(value, tmp_path):
    rc = main(["convert", "divert", "x.root", "--type", "qcd", "--out", str(tmp_path / "x.h5"), "--set",
               f"retries={value}"])  # fmt: skip
    assert rc == ExitCode.CONFIG


def test_truncated_remote_file_exits_11_at_once(remote_dir, synth_file, tmp_path):
    """A file cut short on the storage is a bad input (11, no retries), not a network error: the server
    answers, the file is shorter than its own index (it used to be retried as exit 20, ~70 s)."""
    src = synth_file("qcd", 300, 31)
    url = remote_dir / "cut.root"
    storage.put_bytes(src.read_bytes()[:5000], url)
    out = tmp_path / "x.h5"
    t0 = time.monotonic()
    rc = main(["convert", "divert", str(url), "--type", "qcd", "--out", str(out), "--set", "retry_wait=5"])
    assert rc == ExitCode.INPUT_CORRUPT
    assert time.monotonic() - t0 < 5  # no retry
    assert not out.exists()
