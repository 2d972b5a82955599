#!/bin/bash
# Ray Tune search inside one SLURM allocation: a Ray head on the first node, one Ray worker
# per other node (all started with srun), then `python -m runner.tune` against that cluster.
#
#   sbatch slurm/tune.sh jobs/lfw_tune.yaml --num-samples 200 [--out results] [runner.tune options]
#   sbatch --nodes=4 --gpus-per-node=4 slurm/tune.sh jobs/lfw_tune.yaml --num-samples 200
#   bash slurm/tune.sh --address HOST:PORT jobs/x.yaml ...   # join a running cluster, start nothing
#
# Token authentication (RAY_AUTH_MODE=token) with a fresh token in OUT/tune/.ray_auth_token
# (shared file system, mode 600); dashboards are off; ports derive from the job id so two
# jobs sharing a node do not collide. On exit only this job's Ray processes are ended.
#SBATCH --job-name=dmlr-tune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --output=slurm-tune-%j.out
set -euo pipefail

PY=${DMLR_PYTHON:-python}
OUT=results
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[$i]} == --out ]] && OUT=${args[$((i + 1))]}
  [[ ${args[$i]} == --out=* ]] && OUT=${args[$i]#--out=}
  if [[ ${args[$i]} == --address || ${args[$i]} == --address=* ]]; then
    exec "$PY" -u -m runner.tune "$@"   # an existing cluster: its owner set auth up
  fi
done

: "${SLURM_JOB_ID:?run this with sbatch (or pass --address HOST:PORT)}"
mkdir -p "$OUT/tune"
# one line in $OUT/submissions.jsonl: this job, the command, git rev and diff (runner.status reads it)
"$PY" -m runner.status "$OUT" --record-job "$SLURM_JOB_ID" --command "slurm/tune.sh $*" \
  || echo "warning: the submission record could not be written" >&2
TOKEN="$OUT/tune/.ray_auth_token"
(umask 077 && "$PY" -c "import secrets; print(secrets.token_hex(32))" > "$TOKEN")
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$(realpath "$TOKEN")
export RAY_CHDIR_TO_TRIAL_DIR=0 RAY_USAGE_STATS_ENABLED=0

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname -i | awk '{print $1}')
PORT=$((20000 + SLURM_JOB_ID % 20000))
CPUS=${SLURM_CPUS_PER_TASK:-$(nproc)}
GPUS=${SLURM_GPUS_ON_NODE:-0}
# Ray's temp dir per job and node: sessions of two jobs on one node stay apart, and so do the
# nodes of one job where /tmp is shared (every node of a job uses the head's session name)
RAY_TMP=/tmp/ray-$SLURM_JOB_ID
START=(--num-cpus="$CPUS" --num-gpus="$GPUS"
       --node-manager-port=$((PORT + 1)) --object-manager-port=$((PORT + 2))
       --min-worker-port=$((PORT + 100)) --max-worker-port=$((PORT + 999)) --block)

# Never `ray stop`: it ends every Ray on the node, other users' and other jobs' too. SIGTERM
# to our srun steps reaches our `ray start --block` processes, which stop their own children.
cleanup() {
  local rc=$?
  set +e
  if [[ ${#PIDS[@]} -gt 0 ]]; then
    kill -TERM "${PIDS[@]}" 2>/dev/null
    for _ in $(seq 1 30); do
      kill -0 "${PIDS[@]}" 2>/dev/null || break
      sleep 1
    done
    kill -KILL "${PIDS[@]}" 2>/dev/null
    wait 2>/dev/null
  fi
  echo "ray stopped"
  exit $rc
}
PIDS=()
trap cleanup EXIT

echo "ray head on $HEAD ($HEAD_IP:$PORT), ${#NODES[@]} node(s), $CPUS CPUs and $GPUS GPUs per node"
srun --overlap --nodes=1 --ntasks=1 -w "$HEAD" \
  "$PY" -m ray.scripts.scripts start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
  --ray-client-server-port=$((PORT + 3)) --include-dashboard=false --temp-dir="$RAY_TMP-$HEAD" "${START[@]}" &
PIDS+=($!)
for node in "${NODES[@]:1}"; do
  sleep 5
  srun --overlap --nodes=1 --ntasks=1 -w "$node" \
    "$PY" -m ray.scripts.scripts start --address="$HEAD_IP:$PORT" --temp-dir="$RAY_TMP-$node" "${START[@]}" &
  PIDS+=($!)
done

# wait until every node has joined (bounded)
for _ in $(seq 1 60); do
  n=$("$PY" -c "import ray; ray.init(address='$HEAD_IP:$PORT', logging_level='ERROR'); \
print(sum(x['Alive'] for x in ray.nodes()))" 2>/dev/null || echo 0)
  [[ $n -ge ${#NODES[@]} ]] && break
  sleep 2
done
echo "ray cluster up: $n node(s)"

"$PY" -u -m runner.tune "$@" --address "$HEAD_IP:$PORT"
