#!/usr/bin/env bash
# Batch entry point: the training's report and the deployable model in one command
# (`crbatch analyze --export-dir`, when the pipeline enables the export): the exported epoch is the
# one the report evaluated.
#   jobs/analyze.sh PLAN_DIR
# Exit codes: see jobs/common.sh (0 done, 65 do not retry, others retry).
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "${CRBATCH_JOBS:-$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")}/common.sh"

crb_setup analyze "${1:-}" 0
crb_status running
if crb_stage_in; then
  crb_exec "$CRB_TASK.args"
  crb_stage_out
fi
crb_finish "$CRB_RC"
