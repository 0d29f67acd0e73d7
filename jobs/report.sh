#!/usr/bin/env bash
# Batch entry point: the pipeline's status report (`crbatch status PLAN_DIR --out .../status.md --check`),
# HTCondor's FINAL node and Slurm's last job: it runs whatever happened before it.
#   jobs/report.sh PLAN_DIR
# Exits 0 when every job of the pipeline is done, 20 otherwise (so a DAG with failures fails).
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "${CRBATCH_JOBS:-$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")}/common.sh"

crb_setup report "${1:-}" 0
crb_exec "$CRB_TASK.args"
crb_stage_out # root:// storage: status.md and status.json
crb_publish
tail -n 40 -- "$CRB_LOG" >&2 || true
code=$(crb_map_exit "$CRB_RC")
crb_say "report: crbatch exit $CRB_RC, job exit $code; log: $CRB_LOG"
exit "$code"
