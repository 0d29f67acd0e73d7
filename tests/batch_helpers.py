"""Helpers of the tests/test_batch_*.py files: pipelines on placeholder inputs and a fake crbatch."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from crbatch.batch.pipeline import load_pipeline
from crbatch.batch.plan import Plan, make_plan

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"

# A stand-in for crbatch in the job scripts' tests: it records its arguments (NUL-separated) and
# exits with the codes listed in $FAKE_DIR/codes.<command> (one line per call of the same arguments;
# the last line repeats). "sleep" waits for SIGTERM and exits 85, like a checkpointing training; it
# prints an ERROR line as crbatch's logger would when it fails.
FAKE_CRBATCH = r"""#!/usr/bin/env bash
set -u
d=$FAKE_DIR
key=$(printf '%s\0' "$@" | sha1sum | cut -c1-16)
n=$(( $(cat "$d/n.$key" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$d/n.$key"
printf '%s\0' "$@" > "$d/call.$1.$key.$n"
codes="$d/codes.$1"
code=0
if [ -f "$codes" ]; then
  code=$(sed -n "${n}p" "$codes"); [ -n "$code" ] || code=$(tail -n 1 "$codes")
fi
if [ "$code" = sleep ]; then
  trap 'echo TERM > "$d/term.$key"; exit 85' TERM
  touch "$d/started.$key"
  for _ in $(seq 600); do sleep 0.1; done
  exit 0
fi
if [ "$code" = kill9 ]; then kill -9 $$; fi
if [ "$code" != 0 ]; then echo "12:00:00 ERROR crbatch.fake: it failed with $code" >&2; fi
echo "fake crbatch $1 done"
exit "$code"
"""


def fake_crbatch(tmp: Path) -> tuple[Path, Path]:
    """(the fake crbatch executable, its state directory)."""
    d = tmp / "fake"
    d.mkdir(parents=True, exist_ok=True)
    exe = tmp / "fake-crbatch"
    exe.write_text(FAKE_CRBATCH)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return exe, d


def touch_inputs(directory: Path, names: list[str]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        p = directory / n
        p.write_bytes(b"")
        out.append(p)
    return out


def pipeline_yaml(path: Path, storage: Path, datasets: list[dict[str, Any]], **extra: Any) -> Path:
    doc: dict[str, Any] = {"name": "t", "storage": str(storage), "datasets": datasets}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def simple_plan(tmp: Path, names: list[str] | None = None, until: str = "analyze", **extra: Any) -> Plan:
    """A pipeline on placeholder files (nothing reads them unless a job runs): sig, qcd, bib, data."""
    names = names or ["a.root", "b.root"]
    files = touch_inputs(tmp / "in", names)
    sets = [
        {"name": "sig", "type": "sig", "mH": 125, "mS": 55, "files": [str(files[0])]},
        {"name": "qcd", "type": "qcd", "files": [str(f) for f in files[1:]]},
    ]
    y = pipeline_yaml(tmp / "pipeline.yaml", tmp / "storage", sets, **extra)
    return make_plan(load_pipeline(y), until)


def job_env(fake: Path, fake_dir: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CRBATCH"))}
    env.update({"CRBATCH": str(fake), "FAKE_DIR": str(fake_dir), "CRBATCH_JOBS": str(JOBS)})
    env.update(more)
    return env
