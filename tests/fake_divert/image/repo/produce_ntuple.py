#!/usr/bin/env python3
"""Fake DiVertAnalysis produce_ntuple.py for the image test (standard library only, like a release's
Python): needs the release and the build set up, then copies a prepared ntuple to
submit_dir/data-trees/<input name>.root and prints its argv and models for the test to check."""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

p = argparse.ArgumentParser()
for opt in ("-c", "-t", "-a", "--inputDS", "--nevents"):
    p.add_argument(opt)
p.add_argument("--nopileup", action="store_true")
args = p.parse_args()
if os.environ.get("FAKE_RELEASE_SETUP") != "1" or not os.environ.get("FAKE_DIVERT_DATA"):
    sys.exit("produce_ntuple.py: the release and the build are not set up")
models = os.environ.get("CRBATCH_NN_MODELS_DIR")
manifest = json.loads((Path(models) / "models.json").read_text()) if models else None
print("FAKE-RUN " + json.dumps({"argv": sys.argv[1:], "models": manifest}), flush=True)
out = Path("submit_dir", "data-trees", Path(args.inputDS).name + ".root")
out.parent.mkdir(parents=True)
shutil.copyfile(Path(os.environ["FAKE_DIVERT_DATA"], "ntuple.root"), out)
