#!/usr/bin/env bash
# A real 2-node SLURM cluster (with accounting) on this one machine, for multi-node tests.
#
#   bash slurm/cluster2.sh start|stop|status
#   bash slurm/cluster2.sh kill-node node2   # power loss: the node and all it runs die at once
#                                            # (`start` brings it back; SLURM returns it to service)
#
# slurmctld, slurmdbd, mariadbd and munged run in the root namespace (as in cluster.sh).
# Each node (node1, node2) is a slurmd in its own network + UTS + mount + PID namespace,
# attached to the bridge dmlrbr0 (10.77.0.1/24); node1 is 10.77.0.11, node2 10.77.0.12.
# The namespaces have no default route, so nothing a job runs can leave the machine.
# Inside a node only /etc/hosts (names of the nodes), /tmp/ray (Ray's fixed session dir)
# and /proc differ from the root namespace: the rest of the filesystem is shared.
#
# stop ends the daemons by pid file and removes the namespaces, veths and the bridge.
# Only one of cluster.sh / cluster2.sh runs at a time (same ports, same /etc/slurm):
# start refuses while the other one runs. Shared helpers come from cluster.sh.
set -Eeuo pipefail

SELF_NAME=cluster2.sh # used by log() in cluster.sh
# shellcheck source-path=SCRIPTDIR source=cluster.sh
source "$(dirname "${BASH_SOURCE[0]}")/cluster.sh"

readonly CLUSTER=local2
readonly BRIDGE=dmlrbr0
readonly BRIDGE_ADDR=10.77.0.1
readonly NODES=(node1 node2)
readonly NODES_DIR=$SLURM_ROOT/nodes

# node1 -> 10.77.0.11, node2 -> 10.77.0.12
node_addr() { echo "10.77.0.1${1#node}"; }
node_netns() { echo "dmlr-$1"; }  # also the name of the host side of its veth

# PID 1 of each node's PID namespace. It runs slurmd in the foreground, forwards SIGTERM
# to it, and, being PID 1, reaps job processes that get reparented (so none escape
# proctrack/linuxproc and leave a job stuck in COMPLETING). When it exits the kernel
# kills whatever is left in the namespace. Arguments: node name, hosts file, Ray dir.
read -r -d '' NODE_INIT <<'EOF' || true
mount --bind "$2" /etc/hosts || exit 1
mount --bind "$3" /tmp/ray || exit 1
hostname "$1" || exit 1
slurmd -D -N "$1" &
slurmd_pid=$!
trap 'kill -TERM "$slurmd_pid" 2>/dev/null' TERM
while kill -0 "$slurmd_pid" 2>/dev/null; do wait "$slurmd_pid"; done
EOF

# ---------------------------------------------------------------- network

setup_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($BRIDGE_ADDR/24)"
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$BRIDGE_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

# Network namespace + veth + /etc/hosts for node $1; each step is skipped when done.
setup_node_net() {
  local node=$1 ns addr
  ns=$(node_netns "$node")
  addr=$(node_addr "$node")
  if [[ ! -e /run/netns/$ns ]]; then
    log "creating network namespace $ns ($addr)"
    ip netns add "$ns"
  fi
  if ! ip link show "$ns" >/dev/null 2>&1; then
    ip link add "$ns" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$ns" master "$BRIDGE"
  ip link set "$ns" up
  # No default route on purpose: nodes reach only the bridge.
  ip -n "$ns" addr replace "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  mkdir -p "$NODES_DIR/$node/tmp-ray" "$SLURM_ROOT/spool/$node" /tmp/ray
  write_node_hosts >"$NODES_DIR/$node/hosts"
}

# /etc/hosts inside every node: the controller under the machine's name, and the nodes.
write_node_hosts() {
  local node
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
  printf '%s\t%s\n' "$BRIDGE_ADDR" "$(hostname -s)"
  for node in "${NODES[@]}"; do
    printf '%s\t%s\n' "$(node_addr "$node")" "$node"
  done
}

teardown_network() {
  local node ns
  for node in "${NODES[@]}"; do
    ns=$(node_netns "$node")
    # Deleting the namespace also deletes its veth pair.
    if [[ -e /run/netns/$ns ]]; then
      log "removing network namespace $ns"
      ip netns del "$ns"
    fi
    ip link del "$ns" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "removing bridge $BRIDGE"
    ip link del "$BRIDGE"
  fi
}

# ---------------------------------------------------------------- config and nodes

write_cluster2_slurm_conf() {
  local hw node
  hw=$(node_hardware)
  {
    # slurmctld checks that SlurmctldHost names this machine; the nodes reach it on the
    # bridge, and srun/sbatch in the root namespace then talk to it there as well.
    common_slurm_conf "$CLUSTER" "$(hostname -s)($BRIDGE_ADDR)" "$BRIDGE_ADDR"
    # Job ids distinct from the single-node cluster's, so slurm-%j.out files can't collide.
    echo "FirstJobId=100000"
    # A node whose slurmd stops answering is DOWN after 15 s (default 300 s) and its jobs
    # are requeued (NODE_FAIL) or killed: the node-failure test waits for this.
    echo "SlurmdTimeout=15"
    for node in "${NODES[@]}"; do
      echo "NodeName=$node NodeAddr=$(node_addr "$node") $hw State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
  } >"$ETC/slurm-$CLUSTER.conf"
  cp "$ETC/slurm-$CLUSTER.conf" "$ETC/slurm.conf"
  link_etc slurm.conf
}

# Host pid of the `unshare` that holds node $1's namespaces (its child is the node's PID 1).
node_pid() { live_pid "$RUN/node-$1.pid" unshare; }

start_node() {
  local node=$1 ns
  ns=$(node_netns "$node")
  if node_pid "$node" >/dev/null; then return 0; fi
  log "starting slurmd on $node ($(node_addr "$node"))"
  # `ip netns exec` would remount /sys without the cgroup tree, and slurmd then fails
  # ("Unable to initialize cgroup plugin"): enter only the network namespace instead.
  # --kill-child: if unshare dies, the node's PID 1 and so the whole node die with it.
  setsid nsenter --net="/run/netns/$ns" \
    unshare --uts --mount --propagation private --pid --fork --kill-child --mount-proc \
    bash -c "$NODE_INIT" node-init "$node" "$NODES_DIR/$node/hosts" "$NODES_DIR/$node/tmp-ray" \
    </dev/null >>"$LOG/node-$node.log" 2>&1 9>&- &
  # setsid and nsenter exec (no fork) here, so $! becomes the unshare process.
  echo $! >"$RUN/node-$node.pid"
}

stop_node() {
  local node=$1 pid init i
  if pid=$(node_pid "$node"); then
    init=$(pgrep -P "$pid" | head -n1) || true
    log "stopping $node (unshare pid $pid, node init pid ${init:-none})"
    [[ -n $init ]] && kill -TERM "$init" 2>/dev/null
    for ((i = 0; i < 150; i++)); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "$node did not stop in 15s; killing its PID namespace"
      [[ -n $init ]] && kill -KILL "$init" 2>/dev/null
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$RUN/node-$node.pid" "$RUN/slurmd-$node.pid"
}

# SIGKILL to the node's PID 1: the kernel kills every process of the node (slurmd, job
# steps, Ray) at once, as when a machine loses power. Its network namespace stays.
kill_node() {
  local node=$1 pid init
  [[ " ${NODES[*]} " == *" $node "* ]] || die "kill-node: got '$node', expected one of ${NODES[*]}"
  pid=$(node_pid "$node") || die "$node is not running"
  init=$(pgrep -P "$pid" | head -n1) || true
  log "killing $node (unshare pid $pid, node init pid ${init:-none})"
  [[ -n $init ]] && kill -KILL "$init" 2>/dev/null
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$RUN/node-$node.pid" "$RUN/slurmd-$node.pid"
}

# ---------------------------------------------------------------- commands

cluster2_is_up() {
  local node
  [[ $(running_cluster) == "$CLUSTER" ]] || return 1
  live_pid "$RUN/slurmdbd.pid" slurmdbd >/dev/null || return 1
  for node in "${NODES[@]}"; do
    node_pid "$node" >/dev/null && node_up "$node" || return 1
  done
  sacct_works
}

start_cluster2() {
  require_root
  make_dirs
  exec 9>"$SLURM_ROOT/lock"
  flock -w "$TIMEOUT_S" 9 || die "another start/stop holds $SLURM_ROOT/lock"
  refuse_if_other_running "$CLUSTER"
  if cluster2_is_up; then
    log "already running (logs: $LOG)"
    return 0
  fi
  local t0=$SECONDS node
  install_packages
  setup_bridge
  for node in "${NODES[@]}"; do setup_node_net "$node"; done
  write_cluster2_slurm_conf
  start_shared_daemons
  add_cluster "$CLUSTER"
  start_slurmctld "$CLUSTER"
  for node in "${NODES[@]}"; do start_node "$node"; done
  for node in "${NODES[@]}"; do wait_node "$node"; done
  wait_for "sacct" sacct_works
  log "up in $((SECONDS - t0))s: nodes ${NODES[*]} at $(node_addr node1), $(node_addr node2); partition debug (logs: $LOG)"
}

stop_cluster2() {
  require_root
  mkdir -p "$SLURM_ROOT"
  exec 9>"$SLURM_ROOT/lock"
  flock -w "$TIMEOUT_S" 9 || die "another start/stop holds $SLURM_ROOT/lock"
  local node
  if [[ $(running_cluster) == local ]]; then
    log "the single-node cluster (slurm/cluster.sh) is running: its daemons are left alone"
  else
    cancel_all_jobs
  fi
  for node in "${NODES[@]}"; do stop_node "$node"; done
  if [[ $(running_cluster) != local ]]; then
    stop_pidfile "$RUN/slurmctld.pid" slurmctld
    rm -f "$ACTIVE_FILE"
    stop_shared_daemons
  fi
  teardown_network
  log "stopped"
}

status_cluster2() {
  local ok=0 node pid
  show_shared_status || ok=1
  for node in "${NODES[@]}"; do
    if pid=$(node_pid "$node"); then
      printf '%-22s running (unshare pid %s, %s)\n' "$node" "$pid" "$(node_addr "$node")"
    else
      printf '%-22s stopped\n' "$node"
      ok=1
    fi
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    printf '%-22s up (%s/24)\n' "bridge $BRIDGE" "$BRIDGE_ADDR"
  else
    printf '%-22s absent\n' "bridge $BRIDGE"
    ok=1
  fi
  if ctld_up; then sinfo -N -o '%N %P %T %C' || true; fi
  echo "logs: $LOG"
  return $((ok ? 3 : 0))
}

main2() {
  trap 'on_error $LINENO "$BASH_COMMAND"' ERR
  case ${1:-} in
    start) start_cluster2 ;;
    stop) stop_cluster2 ;;
    status) status_cluster2 || exit $? ;;
    kill-node) require_root && kill_node "${2:-}" ;;
    *)
      echo "usage: bash slurm/cluster2.sh start|stop|status|kill-node NODE" >&2
      exit 2
      ;;
  esac
}

main2 "$@"
