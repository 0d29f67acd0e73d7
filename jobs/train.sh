#!/usr/bin/env bash
# Batch entry point: train (`crbatch train --run-dir RUN`), resuming the run's checkpoint if there is one.
#   jobs/train.sh PLAN_DIR [INDEX]
# On SIGTERM (HTCondor eviction, Slurm --signal=B:TERM@T, scancel --signal=TERM --batch) crbatch
# finishes the current step, writes a checkpoint and exits 85; this script passes 85 on:
#   HTCondor: checkpoint_exit_code = 85 restarts the job, which resumes from the checkpoint;
#   Slurm:    with CRBATCH_REQUEUE=slurm it requeues itself (`scontrol requeue`, at most
#             CRBATCH_MAX_REQUEUES times), and the requeued job resumes.
# CRBATCH_CHECKPOINT_EVERY=SECONDS also sends crbatch SIGTERM that often (HTCondor self-checkpointing:
# the checkpoint files are transferred at every exit 85).
# Exit codes: see jobs/common.sh (0 done, 85 checkpointed, 65 do not retry, others retry).
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
. "${CRBATCH_JOBS:-$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")}/common.sh"

# INDEX: the run of a campaign (train/<INDEX>.args); a Slurm array passes it as SLURM_ARRAY_TASK_ID.
index=${2:-}
if [ -z "$index" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then index=$SLURM_ARRAY_TASK_ID; fi
crb_setup train "${1:-}" "${index:-0}"
crb_status running
timer=""
every=${CRBATCH_CHECKPOINT_EVERY:-}
case "$every" in '' | *[!0-9]*) every="" ;; esac
if [ -n "$every" ]; then
  # The timer signals this shell, which passes SIGTERM on to crbatch like any other; killing the
  # timer also ends its sleep (no stray process outlives the job).
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$every" &
    sleeper=$!
    wait "$sleeper" && kill -TERM "$$"
  ) &
  timer=$!
fi
if crb_stage_in; then
  crb_exec "$CRB_TASK.args"
  if [ -n "$timer" ]; then kill "$timer" 2>/dev/null || true; fi
  crb_stage_out # root:// storage: the run directory (checkpoint, history) after every exit
fi
if [ -n "$timer" ]; then kill "$timer" 2>/dev/null || true; fi
if [ "$CRB_RC" = "$CRB_CHECKPOINT" ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "${CRBATCH_MAX_REQUEUES:-50}" ]; then
  crb_status checkpointed "$CRB_RC" "$CRB_RC"
  crb_publish
  crb_say "checkpoint written; log: $CRB_LOG"
  crb_requeue || true
  exit "$CRB_CHECKPOINT"
fi
crb_finish "$CRB_RC"
