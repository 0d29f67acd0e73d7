"""crbatch.storage on a real XRootD server: Path-like access, atomic uploads, remote completeness."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from xrootd_helpers import UNREACHABLE

from crbatch import schema, storage
from crbatch.errors import ExitCode


def test_location_keeps_urls_whole():
    r = storage.location("root://host:1094//eos/atlas/x/file.root")
    assert isinstance(r, storage.RemotePath)
    assert str(r) == "root://host:1094//eos/atlas/x/file.root"
    assert (r.name, r.stem, r.suffix) == ("file.root", "file", ".root")
    assert str(r.parent / "y" / "z.h5") == "root://host:1094//eos/atlas/x/y/z.h5"
    assert storage.basename("root://h//a/b.root") == "b.root"
    assert isinstance(storage.location("/data/x.root"), Path)
    with pytest.raises(storage.CrbatchError) as e:
        storage.location("root://host/relative")
    assert e.value.code == ExitCode.CONFIG


def test_xrootd_after_tensorflow_is_a_clear_error_not_a_crash():
    """The PyPI XRootD client segfaults when loaded after TensorFlow: crbatch.storage refuses with one line."""
    pytest.importorskip("XRootD.client")
    pytest.importorskip("tensorflow")
    code = textwrap.dedent("""
        import sys
        import tensorflow  # noqa: F401
        from crbatch import storage
        from crbatch.errors import CrbatchError
        try:
            storage.location("root://127.0.0.1:1//x/y.h5").exists()
        except CrbatchError as e:
            print("ERR", int(e.code), e)
            sys.exit(0)
        sys.exit(7)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert f"ERR {int(ExitCode.INTERNAL)}" in r.stdout and "after TensorFlow" in r.stdout


def test_remote_path_reads_writes_lists(remote_dir):
    f = remote_dir / "a" / "b.txt"
    f.write_text("hello")
    assert f.read_text() == "hello" and f.is_file() and not f.is_dir()
    assert (remote_dir / "a").is_dir()
    assert [p.name for p in remote_dir.iterdir()] == ["a"]
    (remote_dir / "a" / "c.json").write_text("{}")
    assert [p.name for p in (remote_dir / "a").glob("*.json")] == ["c.json"]
    assert storage.walk_files(remote_dir) == ["a/b.txt", "a/c.json"]
    missing = remote_dir / "nope.txt"
    assert not missing.exists() and not missing.is_file()
    with pytest.raises(FileNotFoundError):
        missing.read_text()
    f.write_text("replaced")  # atomic replacement
    assert f.read_text() == "replaced"
    assert storage.walk_files(remote_dir) == ["a/b.txt", "a/c.json"]  # no temporary left


def test_upload_tree_puts_marks_last_and_removes_extra(remote_dir, tmp_path):
    src = tmp_path / "src"
    (src / "epochs").mkdir(parents=True)
    (src / "epochs" / "001.keras").write_bytes(b"w1")
    (src / "history.json").write_text('{"epoch": [0]}')
    (remote_dir / "stale.txt").write_text("old")
    (remote_dir / "history.json").write_text('{"epoch": []}')
    order = []
    real = storage.put

    def spy(s, d):
        order.append(d.name)
        real(s, d)

    storage.put = spy
    try:
        n = storage.upload_tree(src, remote_dir, last=("history.json",), delete_extra=True)
    finally:
        storage.put = real
    assert n == 2 and order == ["001.keras", "history.json"]
    assert storage.walk_files(remote_dir) == ["epochs/001.keras", "history.json"]
    back = tmp_path / "back"
    assert storage.download_tree(remote_dir, back) == 2
    assert (back / "epochs" / "001.keras").read_bytes() == b"w1"
    assert storage.download_tree(remote_dir, back) == 0  # same sizes: kept


_SLOW_UPLOAD = textwrap.dedent("""
    import sys, time
    from crbatch import storage
    def chunks():
        for i in range(600):
            yield b"x" * 65536
            time.sleep(0.05)
    storage._upload(chunks(), storage.location(sys.argv[1]))
""")


def test_killed_upload_leaves_nothing_complete(remote_dir):
    """kill -9 in the middle of an upload: the final name never appears; a rerun completes it."""
    final = remote_dir / "shard.h5"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_UPLOAD, str(final)])
    try:
        for _ in range(200):
            tmps = [p for p in remote_dir.iterdir() if p.name.endswith(schema.TMP_MARK)]
            if tmps and tmps[0].size() > 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the upload's temporary file never appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not final.exists()
    assert storage.walk_files(remote_dir) == []  # temporaries are hidden from listings
    assert not storage.is_complete(final, "shard")
    data = b"complete" * 1000
    storage.put_bytes(data, final)
    assert final.read_bytes() == data


def test_remote_completeness_reads_the_file_in_place(remote_dir, tmp_path):
    import h5py

    local = tmp_path / "x.h5"
    with h5py.File(local, "w") as f:
        f["jets"] = np.arange(1000)
        for k, v in {schema.A_PRODUCER: "crbatch", schema.A_SCHEMA: schema.SCHEMA_VERSION,
                     schema.A_KIND: "shard"}.items():  # fmt: skip
            f.attrs[k] = v
        schema.mark_complete(f)  # content checksums, then the completion mark
        offset = f["jets"].id.get_offset()
    storage.put(local, remote_dir / "x.h5")
    assert storage.is_complete(remote_dir / "x.h5", "shard")
    # A damaged byte in the data is found remotely too (the content checksums are verified in place).
    bad = bytearray(local.read_bytes())
    bad[offset + 100] ^= 0xFF
    storage.put_bytes(bytes(bad), remote_dir / "bad.h5")
    with pytest.raises(schema.NotAcceptedError, match="checksum"):
        storage.check_complete(remote_dir / "bad.h5", "shard")
    assert not storage.is_complete(remote_dir / "x.h5", "dataset")
    assert storage.check_complete(remote_dir / "x.h5")[schema.A_KIND] == "shard"
    cut = tmp_path / "cut.h5"
    cut.write_bytes(local.read_bytes()[:1500])
    storage.put(cut, remote_dir / "cut.h5")
    with pytest.raises(schema.UnreadableError, match=str(remote_dir / "cut.h5")):
        storage.check_complete(remote_dir / "cut.h5")
    assert not storage.is_complete(remote_dir / "missing.h5")


def test_unreachable_server_is_transient_after_bounded_retries():
    t0 = time.monotonic()
    with pytest.raises(storage.StorageUnavailable) as e:
        storage.location(f"{UNREACHABLE}//x/y.h5").exists()
    assert e.value.code == ExitCode.TRANSIENT
    assert "after 2 attempt(s)" in str(e.value)
    assert time.monotonic() - t0 < 30
