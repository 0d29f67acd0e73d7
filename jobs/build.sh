#!/usr/bin/env bash
# Batch entry point: build the training datasets from all shards (`crbatch build`).
#   jobs/build.sh PLAN_DIR
# Exit codes: see jobs/common.sh (0 done, 65 do not retry, others retry).
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "${CRBATCH_JOBS:-$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")}/common.sh"
crb_main build "${1:-}" 0
