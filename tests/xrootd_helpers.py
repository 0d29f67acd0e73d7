"""The XRootD server of the grid-storage tests (started by .ci/xrootd-up.sh), or a clean skip.

The server's URL: ``$CRBATCH_XROOTD_URL``, else the ``url`` file .ci/xrootd-up.sh writes into
``$CRBATCH_XROOTD_DIR`` (default /var/spool/crbatch-xrootd). Traffic goes to 127.0.0.1 only.
The XRootD client's timeouts and crbatch's storage retries are shortened for the tests, so an
unreachable server fails in seconds.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before the XRootD library is loaded (it reads them once); subprocesses inherit them.
for _k, _v in {"XRD_CONNECTIONWINDOW": "2", "XRD_CONNECTIONRETRY": "1", "XRD_REQUESTTIMEOUT": "30",
               "CRBATCH_XRD_RETRIES": "1", "CRBATCH_XRD_RETRY_WAIT": "0.2"}.items():  # fmt: skip
    os.environ.setdefault(_k, _v)

# The XRootD client crashes when loaded after TensorFlow (crbatch.storage refuses that order), and test
# modules import TensorFlow at collection: load it now (this plugin loads before any test module), after
# the settings above, which it reads only when loaded.
with contextlib.suppress(ImportError):
    import XRootD.client  # noqa: F401

UNREACHABLE = "root://127.0.0.1:1"  # nothing listens on port 1 here


def server_url() -> str | None:
    url = os.environ.get("CRBATCH_XROOTD_URL")
    if not url:
        f = Path(os.environ.get("CRBATCH_XROOTD_DIR", "/var/spool/crbatch-xrootd")) / "url"
        with contextlib.suppress(OSError):
            url = f.read_text().strip()
    if not url or not url.startswith("root://127.0.0.1"):
        return None
    try:
        from XRootD import client
    except ImportError:
        return None
    st, _ = client.FileSystem(url).ping(timeout=5)
    return url if st.ok else None


@pytest.fixture(scope="session")
def xrootd() -> str:
    url = server_url()
    if url is None:
        pytest.skip("no XRootD server answers (.ci/xrootd-up.sh starts one; needs the grid extra)")
    return url


@pytest.fixture
def remote_dir(xrootd: str) -> Iterator:
    """A fresh directory on the test server (a RemotePath), removed afterwards."""
    from crbatch import storage

    d = storage.location(f"{xrootd}//crbatch-tests/{uuid.uuid4().hex[:12]}")
    d.mkdir(parents=True, exist_ok=True)
    yield d
    remove_tree(d)


def remove_tree(d) -> None:
    with contextlib.suppress(Exception):
        for e in list(d.iterdir()):
            if e.is_dir():
                remove_tree(e)
            else:
                e.unlink(missing_ok=True)
        d.rmdir()
