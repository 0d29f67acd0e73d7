# shellcheck shell=bash
# Shared by jobs/*.sh (sourced, never run): find crbatch, read one task of a plan directory written
# by `crbatch submit`, run it with signals forwarded, write the job's status file on the shared
# storage, and map crbatch's exit code onto what the scheduler acts on.
#
# A task's arguments are read from NUL-separated files (`mapfile -d ''`), so any file name reaches
# crbatch as one argument and no input-derived text is ever evaluated by the shell.
#
# Exit codes the scheduler sees (docs/batch.md; crbatch/batch/codes.py is the same table):
#   crbatch 0                    -> 0   success (also: output already complete)
#   crbatch 2 3 10 11 12 13 14 15 -> 65 do not retry (bad command line/config/input, unwritable output, training diverged): RETRY ... UNLESS-EXIT 65
#   crbatch 85                   -> 85  checkpoint written on SIGTERM: restart / requeue to continue
#   crbatch 1 20 21              -> same: retry (internal error, transient I/O, interrupted)
#   crbatch 16                   -> 16  output locked by another live process: retry, after
#                                       CRBATCH_LOCKED_WAIT seconds (default 120) spent here
#   crbatch killed by a signal   -> 20  retry
#   this script cannot start     -> 65  (no crbatch, no plan): retrying cannot help
#
# Environment:
#   CRBATCH          the crbatch executable (default: `crbatch` on PATH, else `python3 -m crbatch`)
#   CRBATCH_PYTHON   a Python with crbatch installed (used when CRBATCH is unset and crbatch is not on PATH)
#   CRBATCH_REQUEUE  "slurm": requeue this job after a retryable failure or a checkpoint (needs --requeue)
#   CRBATCH_RETRIES  with CRBATCH_REQUEUE: failures requeued at most this often (default 0)
#   CRBATCH_LOCKED_WAIT  seconds to wait before exiting 16, so that the scheduler's retries are spaced
#                    (default 120; the local backend sets 0 and does not retry 16)
#   CRBATCH_SANDBOX  root:// storage: where the job's sandbox is made (default: HTCondor's scratch
#                    directory, else $TMPDIR, else /tmp); CRBATCH_KEEP_SANDBOX=1 keeps it
#   CRBATCH_TRANSFERRED  set by HTCondor submit files of root:// pipelines: the task's plan files were
#                    transferred into the job's directory (flat); they are put back in a plan directory
#
# With root:// storage (the third line of PLAN_DIR/paths) a job has no shared file system: it works in a
# sandbox (plan/ and storage/, see crbatch/batch/staging.py), stages its inputs in and its outputs out
# with `crbatch storage`, and uploads its status file, error lines and log to the storage.

export HDF5_USE_FILE_LOCKING=FALSE # shared file systems (Lustre, GPFS, EOS fuse) often lack POSIX locks
export PYTHONUNBUFFERED=1          # the job log shows progress as it happens

readonly CRB_DO_NOT_RETRY=65 CRB_CHECKPOINT=85 CRB_KILLED=20 CRB_LOCKED=16

crb_say() { printf '[crbatch job %s] %s\n' "$(date '+%F %T')" "$*" >&2; }

# crb_map_exit RC: the scheduler's exit code for crbatch's exit code RC (see the table above).
crb_map_exit() {
  case "$1" in
    0) echo 0 ;;
    85) echo "$CRB_CHECKPOINT" ;;
    2 | 3 | 10 | 11 | 12 | 13 | 14 | 15) echo "$CRB_DO_NOT_RETRY" ;;
    *) if [ "$1" -gt 128 ]; then echo "$CRB_KILLED"; else echo "$1"; fi ;;
  esac
}

# crb_find: the crbatch command in the array CRB.
crb_find() {
  if [ -n "${CRBATCH:-}" ]; then
    command -v -- "$CRBATCH" >/dev/null 2>&1 || return 1
    CRB=("$CRBATCH")
  elif command -v crbatch >/dev/null 2>&1; then
    CRB=(crbatch)
  elif [ -n "${CRBATCH_PYTHON:-}" ]; then
    CRB=("$CRBATCH_PYTHON" -m crbatch)
  elif python3 -c 'import crbatch' >/dev/null 2>&1; then
    CRB=(python3 -m crbatch)
  else
    return 1
  fi
}

# crb_fail_early MESSAGE: a failure before the task could start; nothing to retry.
crb_fail_early() {
  crb_say "cannot start: $*"
  exit "$CRB_DO_NOT_RETRY"
}

# crb_scheduler_id: who runs this job, for the status file.
crb_scheduler_id() {
  if [ -n "${SLURM_JOB_ID:-}" ]; then
    if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
      echo "slurm:${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    else
      echo "slurm:$SLURM_JOB_ID"
    fi
  elif [ -n "${_CONDOR_JOB_AD:-}" ] && [ -r "$_CONDOR_JOB_AD" ]; then
    local c p
    c=$(sed -n 's/^ClusterId = \([0-9]*\)$/\1/p' "$_CONDOR_JOB_AD")
    p=$(sed -n 's/^ProcId = \([0-9]*\)$/\1/p' "$_CONDOR_JOB_AD")
    echo "condor:${c:-?}.${p:-?}"
  else
    echo "${CRBATCH_SCHEDULER:-local}:$$"
  fi
}

# crb_assemble_plan: HTCondor transferred this task's plan files into the job's directory, flat; put
# them back where the commands name them (a plan directory beside them).
crb_assemble_plan() {
  local d="$PWD/.crbatch-plan" f
  mkdir -p -- "$d/$CRB_STAGE" || crb_fail_early "cannot create $d"
  CRB_ASSEMBLED=$d
  trap 'crb_cleanup' EXIT
  shopt -s nullglob
  for f in "$CRB_INDEX".*; do mv -f -- "$f" "$d/$CRB_STAGE/" || crb_fail_early "cannot move $f into $d"; done
  for f in paths plan.json *.yaml; do # plan.json: the report job's only
    if [ -e "$f" ]; then mv -f -- "$f" "$d/" || crb_fail_early "cannot move $f into $d"; fi
  done
  shopt -u nullglob
  CRB_PLAN=$d
}

# crb_sandbox: root:// storage: a fresh work directory with the plan as plan/ (removed at exit).
crb_sandbox() {
  local base=${CRBATCH_SANDBOX:-${_CONDOR_SCRATCH_DIR:-${TMPDIR:-/tmp}}} plan
  CRB_WORK=$(mktemp -d -- "$base/crbatch.$CRB_JOB.XXXXXX") || crb_fail_early "cannot create a sandbox in $base"
  trap 'crb_cleanup' EXIT
  plan=$(cd -- "$CRB_PLAN" && pwd) || crb_fail_early "cannot read $CRB_PLAN"
  ln -s -- "$plan" "$CRB_WORK/plan"
  mkdir -p -- "$CRB_WORK/.status" "$CRB_WORK/.log"
}

crb_cleanup() { # nothing new is left in the job's directory, so HTCondor transfers nothing back
  if [ "${CRBATCH_KEEP_SANDBOX:-0}" != 1 ]; then
    if [ -n "${CRB_WORK:-}" ]; then rm -rf -- "$CRB_WORK"; fi
    if [ -n "${CRB_ASSEMBLED:-}" ]; then rm -rf -- "$CRB_ASSEMBLED"; fi
  fi
}

# crb_storage ARGS...: `crbatch storage ARGS...`, its output into the job's log (root:// storage).
crb_storage() {
  "${CRB[@]}" -q storage "$@" >>"$CRB_LOG" 2>&1 </dev/null
}

# crb_setup STAGE PLAN_DIR INDEX: read the task (job id, status and log locations) and find crbatch.
crb_setup() {
  CRB_STAGE=$1 CRB_PLAN=$2 CRB_INDEX=$3
  [ -n "$CRB_PLAN" ] || crb_fail_early "usage: $CRB_STAGE.sh PLAN_DIR [INDEX]"
  case "$CRB_INDEX" in '' | *[!0-9]*) crb_fail_early "INDEX must be a number, got '$CRB_INDEX'" ;; esac
  if [ -n "${CRBATCH_TRANSFERRED:-}" ] && [ -r "$CRB_INDEX.args" ]; then crb_assemble_plan; fi
  CRB_TASK="$CRB_PLAN/$CRB_STAGE/$CRB_INDEX"
  [ -r "$CRB_TASK.args" ] || crb_fail_early "no task $CRB_TASK.args (plan directory not visible on this node?)"
  IFS= read -r CRB_JOB <"$CRB_TASK.job" || true
  # Job ids are made of safe characters by crbatch; refuse anything else rather than build paths from it.
  [[ "$CRB_JOB" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || crb_fail_early "bad job id in $CRB_TASK.job"
  local -a paths
  mapfile -d '' -t paths <"$CRB_PLAN/paths"
  [ "${#paths[@]}" -ge 2 ] || crb_fail_early "bad $CRB_PLAN/paths"
  CRB_STATUS_DIR=${paths[0]} CRB_LOG_DIR=${paths[1]} CRB_REMOTE=""
  case "${paths[2]:-}" in root://* | xroot://* | roots://*) CRB_REMOTE=${paths[2]} ;; esac
  crb_find || crb_fail_early "crbatch not found: set CRBATCH (or CRBATCH_PYTHON), or put crbatch on PATH"
  if [ -n "$CRB_REMOTE" ]; then
    # Status, errors and log are written in the sandbox and uploaded (crb_publish); URLs are recorded.
    CRB_STATUS_URL="$CRB_STATUS_DIR/$CRB_JOB.status" CRB_ERR_URL="$CRB_STATUS_DIR/$CRB_JOB.err"
    CRB_LOG_URL="$CRB_LOG_DIR/$CRB_JOB.log"
    crb_sandbox
    CRB_STATUS_DIR="$CRB_WORK/.status" CRB_LOG_DIR="$CRB_WORK/.log"
  else
    mkdir -p -- "$CRB_STATUS_DIR" "$CRB_LOG_DIR" || crb_fail_early "cannot create $CRB_STATUS_DIR or $CRB_LOG_DIR"
  fi
  CRB_STATUS="$CRB_STATUS_DIR/$CRB_JOB.status"
  CRB_ERR="$CRB_STATUS_DIR/$CRB_JOB.err"
  CRB_LOG="$CRB_LOG_DIR/$CRB_JOB.log"
  if [ -n "$CRB_REMOTE" ]; then
    crb_storage get --optional "$CRB_STATUS_URL" "$CRB_STATUS" || crb_say "cannot read $CRB_STATUS_URL (storage down?)"
  fi
  CRB_SCHED=$(crb_scheduler_id)
  CRB_HOST=${HOSTNAME:-$(uname -n)}
  CRB_START=$(date +%s)
  CRB_START_S=${EPOCHREALTIME:-$CRB_START} # sub-second, for benchmarks (bench/pipeline.py)
  # Attempts count every start; failures only those of this scheduler job (for Slurm requeues).
  CRB_ATTEMPT=$(($(crb_status_get attempt 0) + 1))
  CRB_FAILURES=0
  if [ "$(crb_status_get scheduler '')" = "$CRB_SCHED" ]; then CRB_FAILURES=$(crb_status_get failures 0); fi
  CRB_LOG_OFFSET=$(stat -c %s -- "$CRB_LOG" 2>/dev/null || echo 0)
  trap 'crb_forward TERM' TERM HUP
  trap 'crb_forward INT' INT
}

# crb_status_get KEY DEFAULT: a value of the previous status file.
crb_status_get() {
  local v
  v=$(sed -n "s/^$1=//p" "$CRB_STATUS" 2>/dev/null | head -1)
  case "$v" in '' | *[!0-9a-zA-Z:._-]*) echo "$2" ;; *) echo "$v" ;; esac
}

# crb_status STATE [EXIT SCHEDULER_EXIT]: write the status file atomically (temporary name + rename).
crb_status() {
  local tmp="$CRB_STATUS_DIR/.$CRB_JOB.status.$$"
  {
    echo "job=$CRB_JOB"
    echo "stage=$CRB_STAGE"
    echo "state=$1"
    echo "attempt=$CRB_ATTEMPT"
    echo "failures=$CRB_FAILURES"
    echo "host=$CRB_HOST"
    echo "scheduler=$CRB_SCHED"
    echo "start=$CRB_START"
    echo "start_s=$CRB_START_S"
    if [ $# -ge 3 ]; then
      echo "end=$(date +%s)"
      echo "end_s=${EPOCHREALTIME:-}"
      echo "exit=$2"
      echo "scheduler_exit=$3"
    fi
    echo "log=${CRB_LOG_URL:-$CRB_LOG}"
  } >"$tmp" && mv -f -- "$tmp" "$CRB_STATUS"
  if [ -n "$CRB_REMOTE" ] && [ $# -lt 3 ]; then # the end's status goes up with the log (crb_publish)
    crb_storage put "$CRB_STATUS" "$CRB_STATUS_URL" || crb_say "cannot upload $CRB_STATUS_URL (storage down?)"
  fi
}

# crb_publish: root:// storage: upload this attempt's log (appended), the error lines and the status file.
crb_publish() {
  [ -n "$CRB_REMOTE" ] || return 0
  local -a ops=(put --append "$CRB_LOG" "$CRB_LOG_URL")
  if [ -s "$CRB_ERR" ]; then ops+=("$CRB_ERR" "$CRB_ERR_URL"); else ops+=(--rm "$CRB_ERR_URL"); fi
  if [ -s "$CRB_STATUS" ]; then ops+=("$CRB_STATUS" "$CRB_STATUS_URL"); fi
  "${CRB[@]}" -q storage "${ops[@]}" </dev/null || crb_say "cannot upload the job's status and log to $CRB_REMOTE"
}

# crb_stage_in: root:// storage: copy the task's inputs into the sandbox; 1 (CRB_RC set) when that failed.
crb_stage_in() {
  [ -n "$CRB_REMOTE" ] || return 0
  crb_run_argv storage stage-in plan "$CRB_STAGE" "$CRB_INDEX"
  [ "$CRB_RC" = 0 ] || { crb_say "stage-in failed (crbatch exit $CRB_RC)"; return 1; }
}

# crb_stage_out: root:// storage: copy the task's outputs to the storage (after a failure: only those the
# plan marks to keep, e.g. the shards of a bundle that were completed); a failed upload makes CRB_RC 20.
crb_stage_out() {
  [ -n "$CRB_REMOTE" ] || return 0
  local rc=$CRB_RC
  crb_run_argv storage stage-out plan "$CRB_STAGE" "$CRB_INDEX" --rc "$rc"
  if [ "$CRB_RC" != 0 ]; then
    crb_say "stage-out failed (crbatch exit $CRB_RC)"
    if [ "$rc" = 0 ] || [ "$rc" = "$CRB_CHECKPOINT" ]; then CRB_RC=20; else CRB_RC=$rc; fi
  else
    CRB_RC=$rc
  fi
}

# crb_errors: the error lines of this attempt's log into the .err file (atomically), or remove it.
crb_errors() {
  local tmp="$CRB_STATUS_DIR/.$CRB_JOB.err.$$"
  tail -c +"$((CRB_LOG_OFFSET + 1))" -- "$CRB_LOG" 2>/dev/null |
    grep -E ' (ERROR|CRITICAL) |^Traceback|^[A-Za-z.]*Error: ' | tail -n 20 >"$tmp" || true
  if [ ! -s "$tmp" ]; then # no recognised error line: the end of the log says most
    tail -c +"$((CRB_LOG_OFFSET + 1))" -- "$CRB_LOG" 2>/dev/null | tail -n 20 >"$tmp" || true
  fi
  mv -f -- "$tmp" "$CRB_ERR"
}

CRB_CHILD="" CRB_SIGNALLED=0
crb_forward() {
  CRB_SIGNALLED=1
  if [ -n "$CRB_CHILD" ]; then
    crb_say "SIG$1 received: passing it to crbatch (pid $CRB_CHILD)"
    kill "-$1" "$CRB_CHILD" 2>/dev/null || true
  fi
}

# crb_exec ARGS_FILE: run crbatch with the NUL-separated arguments in ARGS_FILE, its output appended
# to the job's log; sets CRB_RC. crbatch runs in the background so that a trapped SIGTERM is passed on
# at once (bash defers traps while a foreground child runs).
crb_exec() {
  local -a args
  mapfile -d '' -t args <"$1"
  crb_run_argv "${args[@]}"
}

# crb_run_argv ARGS...: run crbatch ARGS like crb_exec (in the sandbox with root:// storage).
crb_run_argv() {
  printf '===== %s: job %s attempt %s on %s (%s): crbatch %s\n' "$(date '+%F %T')" "$CRB_JOB" \
    "$CRB_ATTEMPT" "$CRB_HOST" "$CRB_SCHED" "${1:-}${2:+ $2}" >>"$CRB_LOG"
  if [ -n "$CRB_REMOTE" ]; then
    (cd -- "$CRB_WORK" && exec "${CRB[@]}" "$@") >>"$CRB_LOG" 2>&1 </dev/null &
  else
    "${CRB[@]}" "$@" >>"$CRB_LOG" 2>&1 </dev/null &
  fi
  CRB_CHILD=$!
  while :; do
    CRB_SIGNALLED=0
    CRB_RC=0
    wait "$CRB_CHILD" || CRB_RC=$?
    # A trapped signal interrupts `wait` (status > 128) while crbatch still runs: wait again.
    if [ "$CRB_SIGNALLED" = 1 ] && [ "$CRB_RC" -gt 128 ] && kill -0 "$CRB_CHILD" 2>/dev/null; then continue; fi
    break
  done
  CRB_CHILD=""
}

# crb_requeue: ask Slurm to run this job again (it must have been submitted with --requeue).
crb_requeue() {
  if [ "${CRBATCH_REQUEUE:-}" = slurm ] && [ -n "${SLURM_JOB_ID:-}" ] && command -v scontrol >/dev/null; then
    if scontrol requeue "$SLURM_JOB_ID" >>"$CRB_LOG" 2>&1; then
      crb_say "requeued Slurm job $SLURM_JOB_ID"
      return 0
    fi
    crb_say "scontrol requeue $SLURM_JOB_ID failed (submitted without --requeue?)"
  fi
  return 1
}

# crb_finish RC: record the outcome of crbatch's exit code RC and exit with the scheduler's code.
crb_finish() {
  local rc=$1 code state
  code=$(crb_map_exit "$rc")
  case "$code" in
    0) state="done" ;;
    "$CRB_CHECKPOINT") state=checkpointed ;;
    *) state=failed CRB_FAILURES=$((CRB_FAILURES + 1)) ;;
  esac
  if [ "$code" = 0 ]; then rm -f -- "$CRB_ERR"; else crb_errors; fi
  crb_status "$state" "$rc" "$code"
  crb_publish
  crb_say "job $CRB_JOB: $state (crbatch exit $rc, job exit $code); log: ${CRB_LOG_URL:-$CRB_LOG}"
  if [ "$code" = "$CRB_LOCKED" ]; then
    local wait=${CRBATCH_LOCKED_WAIT:-120}
    case "$wait" in '' | *[!0-9]*) wait=120 ;; esac
    if [ "$wait" -gt 0 ]; then
      crb_say "another process writes this job's output: waiting ${wait} s before exiting, so that a retry comes later"
      sleep "$wait" &
      wait $! || true # in the background: a SIGTERM (eviction) ends the wait at once
    fi
  fi
  if [ "$state" = failed ]; then
    sed 's/^/  | /' -- "$CRB_ERR" >&2 || true
    if [ "$code" != "$CRB_DO_NOT_RETRY" ] && [ "$CRB_FAILURES" -le "${CRBATCH_RETRIES:-0}" ] && crb_requeue; then
      exit "$code"
    fi
  fi
  exit "$code"
}

# crb_main STAGE PLAN_DIR INDEX: the whole job for stages that run one crbatch command.
crb_main() {
  crb_setup "$@"
  crb_status running
  if crb_stage_in; then
    crb_exec "$CRB_TASK.args"
    crb_stage_out
  fi
  crb_finish "$CRB_RC"
}
