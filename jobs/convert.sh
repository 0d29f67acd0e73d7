#!/usr/bin/env bash
# Batch entry point: convert one input file to its shard (`crbatch convert divert ... --out SHARD`).
#   jobs/convert.sh PLAN_DIR [INDEX]
# INDEX defaults to $CRBATCH_INDEX_OFFSET + $SLURM_ARRAY_TASK_ID (Slurm job arrays).
# PLAN_DIR is what `crbatch submit` wrote; the task's arguments are read from PLAN_DIR/convert/INDEX.args.
# Exit codes: see jobs/common.sh (0 done, 65 do not retry, others retry).
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "${CRBATCH_JOBS:-$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")}/common.sh"
index=${2:-}
if [ -z "$index" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  offset=${CRBATCH_INDEX_OFFSET:-0}
  case "$offset$SLURM_ARRAY_TASK_ID" in *[!0-9]*) crb_fail_early "bad CRBATCH_INDEX_OFFSET or SLURM_ARRAY_TASK_ID" ;; esac
  index=$((10#$offset + 10#$SLURM_ARRAY_TASK_ID))
fi
crb_main convert "${1:-}" "$index"
