#!/usr/bin/env bash
# A whole experiment grid from one command. Edit the #SBATCH defaults for your cluster.
#
#   sbatch slurm/grid.sh SPEC [--out DIR] [--set key=value]... [--retry-failed]
#   bash   slurm/grid.sh SPEC ...     # same, but checks on the login node: queues nothing when all is done
#
# Array mode (default): this job (or the bash call) validates every run, freezes the
# runs into DIR/manifests/<stamp>.json and submits itself as job arrays of exactly the
# pending runs, throttled to GRID_MAX_PARALLEL each: tasks of GRID_RUNS_PER_TASK runs, at
# most MaxArraySize (scontrol show config, or GRID_MAX_ARRAY_SIZE) tasks per array; task t
# of the array at offset o runs `srun python -m runner.grid --manifest M --task o+t`.
# Runs already queued or running are left alone; runs whose last job ended in TIMEOUT go
# in arrays of their own with that time limit x GRID_TIME_FACTOR (capped by the partition's
# MaxTime), OUT_OF_MEMORY with memory x GRID_MEM_FACTOR. Every submission appends one line
# to DIR/submissions.jsonl (python -m runner.status DIR reads it).
# Nothing pending: prints "nothing to do" and submits nothing.
#
# Packed mode: GRID_MODE=packed sbatch -n 8 slurm/grid.sh SPEC ...
# runs the pending runs inside this one allocation as `srun --exact -n GRID_TASKS_PER_RUN`
# steps, as many at once as the allocation holds.
#
# Several runs per GPU (either mode): GRID_RUNS_PER_GPU=K makes each step (array task, or
# packed srun step) train K runs at once in K processes (runner.grid --jobs K) that share the
# step's GPU and split its CPUs; for runs too small to fill a GPU. Needs GRID_TASKS_PER_RUN=1.
#
# Environment knobs (export them, or pass sbatch --export=ALL,NAME=value):
#   PYTHON                python with the runner installed (default: python; e.g. .venv/bin/python)
#   GRID_MODE             array (default) or packed
#   GRID_MAX_PARALLEL     array throttle, the %N of --array (default 16), per array
#   GRID_RUNS_PER_TASK    runs one array task trains one after another (default 1, or GRID_RUNS_PER_GPU;
#                         e.g. 10 for 2-minute runs)
#   GRID_RUNS_PER_GPU     runs trained at once in one step, sharing its GPU and CPUs (default 1)
#   GRID_MAX_ARRAY_SIZE   tasks per array (default: the cluster's MaxArraySize)
#   GRID_MAX_SUBMIT_JOBS  jobs (array tasks) you may have queued at once (default: MaxSubmitJobs of sacctmgr,
#                         and MaxJobCount); more runs than fit beside your queued jobs -> more runs per task
#   GRID_TIME_FACTOR      time limit multiplier for runs that timed out (default 2)
#   GRID_MEM_FACTOR       memory multiplier for runs out of memory (default 2)
#   GRID_MAX_ATTEMPTS     submissions of one run at most (default 5)
#   GRID_TASKS_PER_RUN    tasks (= GPUs) per run; each task is one DDP rank (default 1)
#   GRID_NODES_PER_RUN    nodes per run (default 1); GRID_TASKS_PER_RUN ranks spread over them,
#                         e.g. GRID_NODES_PER_RUN=2 GRID_TASKS_PER_RUN=8 for 2 nodes x 4 GPUs
#   GRID_GPUS_PER_TASK    GPUs per task in array mode (default 0: CPU-only; set 1 on GPU partitions)
#   GRID_SBATCH_ARGS      extra sbatch arguments for the array, e.g. "--partition=gpu --time=04:00:00"
#
# Logs: DIR/logs/<array job>_<index>.out (array), DIR/logs/<job>-run<index>.out (packed), appended to
# by a requeued task, so a log keeps every attempt;
# this job's own log in the submit directory (slurm-<job>.out). Results: DIR/runs/<run_id>/.

#SBATCH --job-name=dml-grid
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --signal=B:USR2@60
#SBATCH --requeue
##SBATCH --partition=gpu
##SBATCH --account=myproject
##SBATCH --qos=normal
##SBATCH --gpus-per-task=1

set -euo pipefail
PY=${PYTHON:-python}
MODE=${GRID_MODE:-array}

# USR2 comes 60 s before the time limit (#SBATCH --signal=B:USR2@60, to this shell only): requeue
# this job; the run resumes from its last epoch checkpoint. At most GRID_MAX_REQUEUE times.
requeue_on_usr2() {
  local id=$1
  trap "on_usr2 $id" USR2
}
on_usr2() {
  if (( ${SLURM_RESTART_COUNT:-0} < ${GRID_MAX_REQUEUE:-3} )); then
    echo "$(date +%T) USR2: time is nearly up, requeueing $1"
    scontrol requeue "$1"
  else
    echo "$(date +%T) USR2: requeued ${SLURM_RESTART_COUNT:-0} times already; rerun the grid to resume"
  fi
}

if [[ -n "${GRID_MANIFEST:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  # an array task: its runs one after another, each with as many ranks (srun tasks) as this allocation has
  TASK=$(( ${GRID_TASK_OFFSET:-0} + SLURM_ARRAY_TASK_ID ))
  echo "array task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (task $TASK of $GRID_MANIFEST) on $(hostname)," \
       "restart ${SLURM_RESTART_COUNT:-0}"
  requeue_on_usr2 "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
  srun --kill-on-bad-exit=1 "$PY" -u -m runner.grid --manifest "$GRID_MANIFEST" --task "$TASK" \
    --jobs "${GRID_RUNS_PER_GPU:-1}" &
  STEP=$!
  until wait "$STEP"; do   # wait returns early (>128) when a trapped signal arrives
    rc=$?
    kill -0 "$STEP" 2>/dev/null || exit "$rc"
  done
  exit 0
fi

if [[ $# -lt 1 ]]; then
  echo "usage: [sbatch|bash] slurm/grid.sh SPEC [--out DIR] [--set key=value]... [--retry-failed]" >&2
  exit 2
fi
ARGS=("$@")
OUT=results
for ((i = 1; i < $#; i++)); do
  case "${ARGS[i]}" in
    --out) OUT=${ARGS[i+1]:-results} ;;
    --out=*) OUT=${ARGS[i]#--out=} ;;
  esac
done
OUT=$(realpath -m "$OUT")   # absolute, and not created yet: a grid that fails its checks leaves nothing behind
STAMP=$(date +%Y%m%d-%H%M%S)-${SLURM_JOB_ID:-$$}
MANIFEST=$OUT/manifests/$STAMP.json
TPR=${GRID_TASKS_PER_RUN:-1}
NPR=${GRID_NODES_PER_RUN:-1}
RPG=${GRID_RUNS_PER_GPU:-1}
if ! [[ $RPG =~ ^[1-9][0-9]*$ ]]; then
  echo "GRID_RUNS_PER_GPU: got $RPG, expected a positive integer" >&2
  exit 2
fi
if (( RPG > 1 && TPR > 1 )); then
  echo "GRID_RUNS_PER_GPU: got $RPG, expected 1 with GRID_TASKS_PER_RUN=$TPR (a DDP run has its GPUs to itself)" >&2
  exit 2
fi
PENDING_ARGS=(--plan-arrays --runs-per-task "${GRID_RUNS_PER_TASK:-$RPG}" --max-array-size "${GRID_MAX_ARRAY_SIZE:-0}"
              --max-submit-jobs "${GRID_MAX_SUBMIT_JOBS:-0}"
              --time-factor "${GRID_TIME_FACTOR:-2}" --mem-factor "${GRID_MEM_FACTOR:-2}"
              --max-attempts "${GRID_MAX_ATTEMPTS:-5}" --tasks-per-run "$TPR")
for arg in ${GRID_SBATCH_ARGS:-}; do   # the partition whose MaxTime caps a longer --time
  [[ $arg == --partition=* ]] && PENDING_ARGS+=(--partition "${arg#--partition=}")
done
# array tasks get GRID_GPUS_PER_TASK GPUs per task; a packed step gets the allocation's (those visible here)
[[ $MODE == array ]] && PENDING_ARGS+=(--gpus-per-run "$(( ${GRID_GPUS_PER_TASK:-0} * TPR ))")
[[ $MODE == packed ]] && PENDING_ARGS=(--pending --tasks-per-run "$TPR")
# checks every run first (exit 2 and a line per problem: nothing is queued, nothing created), then freezes them
TODO=$("$PY" -m runner.grid "${ARGS[@]}" --write-manifest "$MANIFEST" "${PENDING_ARGS[@]}" \
       --max-parallel "${GRID_MAX_PARALLEL:-16}")
COMMAND="slurm/grid.sh $*"
if [[ -z "$TODO" ]]; then
  echo "nothing to do: every run of $1 is done in $OUT (see python -m runner.grid $1 --list)"
  rm -f "$MANIFEST"
  exit 0
fi
mkdir -p "$OUT/logs"

if [[ $MODE == array ]]; then
  if [[ -n "${SLURM_JOB_ID:-}" ]]; then
    SELF=$0                                   # sbatch ran a copy of this script; sbatch reads it again now
    unset $(compgen -e | grep '^SLURM_' | grep -v '^SLURM_CONF$') || true   # don't leak this job into the array
  else
    SELF=${BASH_SOURCE[0]}
  fi
  GPU_ARGS=()
  [[ ${GRID_GPUS_PER_TASK:-0} -gt 0 ]] && GPU_ARGS=(--gpus-per-task="$GRID_GPUS_PER_TASK")
  read -r -a EXTRA <<< "${GRID_SBATCH_ARGS:-}"
  SUBMITTED=()
  record() { "$PY" -m runner.grid --manifest "$MANIFEST" --record-submission "${SUBMITTED[@]}" --command "$COMMAND"; }
  # one line per array: OFFSET ARRAY [SBATCH ARGS...] (a longer --time for runs that timed out)
  while read -r OFFSET RANGE MORE; do
    read -r -a MORE_ARGS <<< "$MORE"
    if ! JOB=$(sbatch --parsable --array="$RANGE" --nodes="$NPR" --ntasks="$TPR" "${GPU_ARGS[@]}" "${EXTRA[@]}" \
               "${MORE_ARGS[@]}" --job-name="dml-$(basename "$1" .yaml)" --output="$OUT/logs/%A_%a.out" --open-mode=append \
               --export=ALL,GRID_MANIFEST="$MANIFEST",GRID_TASK_OFFSET="$OFFSET",GRID_RUNS_PER_GPU="$RPG",PYTHON="$PY" \
               "$SELF"); then
      (( ${#SUBMITTED[@]} )) && record   # what was queued before the refusal is still recorded
      echo "sbatch refused the array at offset $OFFSET; ${#SUBMITTED[@]} array(s) were submitted" >&2
      exit 1
    fi
    JOB=${JOB%%;*}
    SUBMITTED+=("$JOB:$OFFSET")
    echo "submitted array job $JOB --array=$RANGE ${MORE_ARGS[*]} ($MANIFEST)"
  done <<< "$TODO"
  record
  exit 0
fi

if [[ $MODE != packed ]]; then
  echo "GRID_MODE: got $MODE, expected array or packed" >&2
  exit 2
fi
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "packed mode runs inside an allocation: GRID_MODE=packed sbatch -n N slurm/grid.sh ..." >&2
  exit 2
fi
# packed: srun steps of TPR tasks, as many at once as the allocation's tasks allow; each step
# trains RPG runs (GRID_RUNS_PER_GPU) at once on its GPU
SLOTS=$(( ${SLURM_NTASKS:-1} / TPR ))
(( SLOTS >= 1 )) || { echo "allocation has ${SLURM_NTASKS:-1} tasks, a run needs $TPR" >&2; exit 2; }
requeue_on_usr2 "$SLURM_JOB_ID"   # the requeued job writes a new manifest and resumes what is left
IFS=, read -r -a INDICES <<< "$TODO"
"$PY" -m runner.grid --manifest "$MANIFEST" --record-submission "$SLURM_JOB_ID=$TODO" --command "$COMMAND" --kind packed
echo "packed: ${#INDICES[@]} runs, $SLOTS step(s) at a time, $TPR task(s) each, $RPG run(s) per step ($MANIFEST)"
FAILED=0
running=0
STEPS=0
for ((first = 0; first < ${#INDICES[@]}; first += RPG)); do
  if (( running >= SLOTS )); then
    wait -n || FAILED=$((FAILED + 1))
    running=$((running - 1))
  fi
  GROUP=("${INDICES[@]:first:RPG}")
  RUN_ARGS=()
  for idx in "${GROUP[@]}"; do RUN_ARGS+=(--run-index "$idx"); done
  NAME=$(IFS=-; echo "${GROUP[*]}")   # one run: <job>-run3.out; several: <job>-run3-4-5.out
  srun --exact -N "$NPR" -n "$TPR" --kill-on-bad-exit=1 --output="$OUT/logs/${SLURM_JOB_ID}-run${NAME}.out" --open-mode=append \
    "$PY" -u -m runner.grid --manifest "$MANIFEST" "${RUN_ARGS[@]}" --jobs "${#GROUP[@]}" &
  running=$((running + 1))
  STEPS=$((STEPS + 1))
done
while (( running > 0 )); do
  wait -n || FAILED=$((FAILED + 1))
  running=$((running - 1))
done
echo "packed: done, $FAILED of $STEPS steps failed"
[[ $FAILED -eq 0 ]]
