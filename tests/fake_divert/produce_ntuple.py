#!/usr/bin/env python3
"""A stand-in for DiVertAnalysis's ``produce_ntuple.py``, for tests of ``crbatch convert xaod``.

It takes the real script's options (``-c -t -a --nopileup --inputDS --nevents``) and, like it,
writes ``submit_dir/data-trees/<input name>.root`` in the current directory — a synthetic
DiVertAnalysis ntuple made with crbatch's generator (PyROOT). Behaviour switches (environment):

- ``FAKE_DIVERT_RECORD=FILE``: append one JSON line per call: argv, cwd, pid, the models dir named by
  ``$CRBATCH_NN_MODELS_DIR`` (its files and manifest) and ``FAKE_DIVERT_SETUP`` (set by setup.sh);
- ``FAKE_DIVERT_MODE``: ``ok`` (default) | ``fail`` (exit 3 after some output) | ``crash``
  (SIGSEGV itself) | ``no-output`` (exit 0, write nothing) | ``wrong-name`` (write elsewhere) |
  ``corrupt`` (write garbage) | ``no-tree`` (a ROOT file without the tree) | ``hang`` (sleep);
- ``FAKE_DIVERT_EVENTS``: events when ``--nevents`` is absent (default 50).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import zlib
from pathlib import Path

# DiVertAnalysis's sample types → the generator's.
TYPES = {"signal": "sig", "qcd": "qcd", "bib": "bib", "data": "data"}


def _record(args: argparse.Namespace) -> None:
    path = os.environ.get("FAKE_DIVERT_RECORD")
    if not path:
        return
    models_dir = os.environ.get("CRBATCH_NN_MODELS_DIR")
    models = None
    if models_dir:
        d = Path(models_dir)
        models = {"dir": models_dir, "files": sorted(p.name for p in d.iterdir()),
                  "manifest": json.loads((d / "models.json").read_text())}  # fmt: skip
    rec = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "models": models, "setup": os.environ.get("FAKE_DIVERT_SETUP"),
           "campaign": args.campaign, "type": args.type}  # fmt: skip
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(prog="produce_ntuple.py")
    p.add_argument("-c", "--campaign", required=True)
    p.add_argument("-t", "--type", required=True, choices=sorted(TYPES))
    p.add_argument("-a", "--analysis", required=True, choices=["cr", "sr"])
    p.add_argument("--nopileup", action="store_true")
    p.add_argument("--inputDS", required=True)
    p.add_argument("--nevents", type=int)
    args = p.parse_args()
    _record(args)
    mode = os.environ.get("FAKE_DIVERT_MODE", "ok")
    print(f"fake DiVertAnalysis: {args.inputDS} campaign={args.campaign} type={args.type} mode={mode}", flush=True)
    src = Path(args.inputDS)
    if not src.is_file():
        print(f"ERROR: cannot open {src}", file=sys.stderr)
        return 1
    out = Path("submit_dir", "data-trees", src.name + ".root")
    out.parent.mkdir(parents=True)
    if mode == "fail":
        print("EventLoop: something went badly wrong", file=sys.stderr, flush=True)
        return 3
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "hang":
        time.sleep(600)
    if mode == "no-output":
        return 0
    if mode == "corrupt":
        out.write_bytes(b"root" + b"\0" * 100)
        return 0
    if mode == "wrong-name":
        out = out.with_name("renamed.root")
    if mode == "no-tree":
        import uproot

        with uproot.recreate(out) as f:
            f["other"] = {"x": [1, 2, 3]}
        return 0
    from crbatch.synth.divert import write_divert

    typ = TYPES[args.type]
    masses = {"mH": 125.0, "mS": 55.0} if typ == "sig" else {}
    events = args.nevents or int(os.environ.get("FAKE_DIVERT_EVENTS", "50"))
    write_divert(out, typ, events, seed=zlib.crc32(src.name.encode()) % 1000, **masses)
    print(f"fake DiVertAnalysis: wrote {out} ({events} events)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
