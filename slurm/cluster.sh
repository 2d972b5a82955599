#!/usr/bin/env bash
# A real single-node SLURM cluster (with accounting) on this machine, for tests and CI.
#
#   bash slurm/cluster.sh start|stop|status
#
# start: installs the Debian packages if missing, writes the configs, and starts
#   munged -> mariadbd -> slurmdbd -> (sacctmgr add cluster) -> slurmctld -> slurmd,
#   then waits until the node is idle and sacct answers. A second start is a no-op.
# stop: ends the daemons this script started (by pid file), in reverse order.
# status: prints what is running; exits 0 when the whole cluster is up, 3 otherwise.
#
# Everything (configs, state, pid files, logs, the database) lives under $SLURM_ROOT;
# /etc/slurm/slurm.conf and slurmdbd.conf are symlinks into it, so sbatch/srun/sacct
# work without SLURM_CONF. Must run as root. slurm/cluster2.sh (2 nodes) sources this
# file for the shared parts; only one of the two clusters runs at a time.
#
# Environment: DMLR_SLURM_TIMEOUT_S (default 90) bounds each wait.
set -Eeuo pipefail

readonly SLURM_ROOT=/var/lib/dmlrunner-slurm
readonly ETC=$SLURM_ROOT/etc
readonly RUN=$SLURM_ROOT/run
readonly LOG=$SLURM_ROOT/log
readonly DB_DIR=$SLURM_ROOT/db
readonly MYSQL_RUN=$RUN/mysql            # owned by mysql: mariadbd writes pid + socket here
readonly DB_PORT=3307                    # not 3306: never collide with a system MariaDB
readonly ACTIVE_FILE=$RUN/active-cluster # name of the cluster whose slurmctld we started
readonly TIMEOUT_S=${DMLR_SLURM_TIMEOUT_S:-90}
readonly PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
readonly SELF_NAME=${SELF_NAME:-cluster.sh}
# fd 9 holds $SLURM_ROOT/lock during start/stop; every daemon is started with 9>&- so
# it does not inherit the lock and block the next start/stop forever.

# ---------------------------------------------------------------- helpers

log() { printf '%s: %s\n' "$SELF_NAME" "$*" >&2; }

die() {
  log "ERROR: $*"
  log "logs: $LOG (slurmctld.log, slurmd-*.log, slurmdbd.log, mariadbd.log, munged.log)"
  exit 1
}

on_error() {
  log "ERROR: command failed (line $1): $2"
  log "logs: $LOG"
}

require_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (the daemons and namespaces need it)"
}

# Print the pid in pid file $1 if that process is alive and its name is $2.
# The name check guards against a stale pid file whose pid was reused.
live_pid() {
  local file=$1 comm=$2 pid
  [[ -r $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid && -r /proc/$pid/comm ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
  echo "$pid"
}

# Wait until the command "$@" succeeds, at most TIMEOUT_S; $1 names what we wait for.
wait_for() {
  local what=$1
  shift
  local deadline=$((SECONDS + TIMEOUT_S))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${TIMEOUT_S}s waiting for $what"
    sleep 0.5
  done
}

# True while process $1 exists and is not a zombie. Exited daemons were reparented to
# PID 1, which here reaps them only every few seconds: don't wait for that.
running() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $stat != Z* ]]
}

# SIGTERM the process in pid file $1 (named $2), wait for it, SIGKILL if it lingers.
stop_pidfile() {
  local file=$1 comm=$2 pid i
  if pid=$(live_pid "$file" "$comm"); then
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "$comm did not exit in 15s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$file"
}

# ---------------------------------------------------------------- packages

install_packages() {
  local missing=() pkg policy_made=0
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  log "installing ${missing[*]} (apt-get, ~30 s)"
  # Keep the packages' postinst from starting system services: we start our own daemons.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy_made=1
  fi
  local rc=0
  {
    apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  } >>"$LOG/apt.log" 2>&1 || rc=$?
  ((policy_made)) && rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || die "apt-get install failed (rc $rc); see $LOG/apt.log"
}

# ---------------------------------------------------------------- shared daemons

make_dirs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$SLURM_ROOT/state" "$SLURM_ROOT/spool" "$SLURM_ROOT/munge"
  chmod 700 "$ETC"
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munged() {
  if live_pid "$RUN/munged.pid" munged >/dev/null; then return 0; fi
  if munge_works; then
    log "munged already running (not started by us): using it"
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
  fi
  # Clients (slurm's auth/munge) use the default socket, so it stays in /run/munge.
  mkdir -p /run/munge
  chown munge:munge /run/munge
  log "starting munged"
  munged --force --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" \
    --seed-file="$SLURM_ROOT/munge/munged.seed" </dev/null >>"$LOG/munged.log" 2>&1 9>&-
  wait_for "munged (munge -n | unmunge)" munge_works
}

db_password() {
  # Random once, kept (mode 600) so restarts reuse the existing database user.
  local file=$ETC/db.pass
  if [[ ! -s $file ]]; then
    (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$file")
  fi
  cat "$file"
}

mysql_root() { mariadb --no-defaults --socket="$MYSQL_RUN/mysqld.sock" -uroot "$@"; }

start_mariadbd() {
  if live_pid "$MYSQL_RUN/mariadbd.pid" mariadbd >/dev/null; then return 0; fi
  mkdir -p "$MYSQL_RUN" "$DB_DIR"
  chown mysql:mysql "$MYSQL_RUN" "$DB_DIR" # the mysql user exists only after the install
  if [[ ! -d $DB_DIR/mysql ]]; then
    log "initialising the accounting database in $DB_DIR"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
      --auth-root-authentication-method=socket --skip-test-db >>"$LOG/mariadbd.log" 2>&1 ||
      die "mariadb-install-db failed; see $LOG/mariadbd.log"
  fi
  touch "$LOG/mariadbd.log"
  chown mysql:mysql "$LOG/mariadbd.log"
  log "starting mariadbd (127.0.0.1:$DB_PORT)"
  # --no-defaults: ignore Debian's /etc/mysql so a system MariaDB's config can't interfere.
  setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
    --socket="$MYSQL_RUN/mysqld.sock" --pid-file="$MYSQL_RUN/mariadbd.pid" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --log-error="$LOG/mariadbd.log" --innodb-lock-wait-timeout=900 \
    --innodb-buffer-pool-size=256M \
    </dev/null >>"$LOG/mariadbd.log" 2>&1 9>&- &
  wait_for "mariadbd" mysql_root -e 'SELECT 1'
  local pass
  pass=$(db_password) # hex digits only, so safe inside the SQL string
  mysql_root --batch <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

write_slurmdbd_conf() {
  local pass
  pass=$(db_password)
  (
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by slurm/$SELF_NAME; rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
EOF
  )
  link_etc slurmdbd.conf
}

# Point /etc/slurm/$1 at $ETC/$1 (the daemons and every client read /etc/slurm).
link_etc() {
  local name=$1 dest=/etc/slurm/$1
  mkdir -p /etc/slurm
  if [[ -e $dest && ! -L $dest ]]; then
    die "$dest exists and was not written by this script; move it away first"
  fi
  ln -sfn "$ETC/$name" "$dest"
}

start_slurmdbd() {
  if live_pid "$RUN/slurmdbd.pid" slurmdbd >/dev/null; then return 0; fi
  log "starting slurmdbd"
  slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 9>&- ||
    die "slurmdbd failed to start; see $LOG/slurmdbd.log"
  wait_for "slurmdbd (sacctmgr list cluster)" sacctmgr -n -P list cluster
}

# Register cluster $1 in the accounting database (slurmctld needs it before it starts).
add_cluster() {
  local name=$1
  if sacctmgr -n -P list cluster format=cluster | grep -qx "$name"; then return 0; fi
  log "sacctmgr add cluster $name"
  sacctmgr -i add cluster "$name" >>"$LOG/sacctmgr.log" 2>&1 ||
    die "sacctmgr add cluster $name failed; see $LOG/sacctmgr.log"
}

# The hardware line of `slurmd -C` (CPUs, Boards, Sockets..., RealMemory), so the node
# never claims more than the machine has (slurmctld would drain it).
node_hardware() {
  slurmd -C | head -n1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' '
}

# The part of slurm.conf both clusters share.
# $1: cluster name, $2: SlurmctldHost value, $3: address of slurmdbd (AccountingStorageHost).
common_slurm_conf() {
  cat <<EOF
# Written by slurm/$SELF_NAME; rewritten on every start.
ClusterName=$1
SlurmctldHost=$2
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays a requeued job's restart (cred_expire + 1 s): 121 s by default.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldParameters=preempt_send_user_signal
StateSaveLocation=$SLURM_ROOT/state/$1
SlurmdSpoolDir=$SLURM_ROOT/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$3
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
# Fast tests: finished jobs leave squeue after 10 s (sacct keeps them), scancel escalates
# to SIGKILL after 5 s, batch jobs may be requeued, and the scheduler runs every second.
MinJobAge=10
KillWait=5
JobRequeue=1
MessageTimeout=10
InactiveLimit=0
SchedulerParameters=sched_interval=1,bf_interval=1
EOF
}

write_single_slurm_conf() {
  local hw
  hw=$(node_hardware)
  {
    common_slurm_conf local localhost localhost
    echo "NodeName=localhost NodeAddr=127.0.0.1 $hw State=UNKNOWN"
    echo "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
  } >"$ETC/slurm-local.conf"
  cp "$ETC/slurm-local.conf" "$ETC/slurm.conf"
  link_etc slurm.conf
}

start_slurmctld() {
  if live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null; then return 0; fi
  log "starting slurmctld ($1)"
  mkdir -p "$SLURM_ROOT/state/$1"
  echo "$1" >"$ACTIVE_FILE"
  slurmctld </dev/null >>"$LOG/slurmctld.log" 2>&1 9>&- ||
    die "slurmctld failed to start; see $LOG/slurmctld.log"
  wait_for "slurmctld (scontrol ping)" ctld_up
}

ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }

# Node $1 is up when it responds and is neither down nor drained.
node_up() {
  local state
  state=$(sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1)
  [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}

# Wait for node $1; resume it once if slurmctld still has it down from a previous run.
wait_node() {
  local node=$1 deadline=$((SECONDS + TIMEOUT_S)) resumed=0 state
  until node_up "$node"; do
    state=$(sinfo -h -N -n "$node" -o '%T' 2>/dev/null | head -n1) || true
    if ((!resumed)) && [[ $state =~ ^(down|drained|draining) ]]; then
      scontrol update nodename="$node" state=resume 2>/dev/null || true
      resumed=1
    fi
    ((SECONDS < deadline)) || die "timed out after ${TIMEOUT_S}s waiting for node $node (state '$state'); see $LOG/slurmd-$node.log"
    sleep 0.5
  done
}

sacct_works() { sacct -n -X -S now-1minutes -o JobID >/dev/null 2>&1; }

# The cluster (name) whose slurmctld is running, or nothing.
running_cluster() {
  live_pid "$RUN/slurmctld.pid" slurmctld >/dev/null || return 0
  cat "$ACTIVE_FILE" 2>/dev/null || echo unknown
}

# Refuse to start cluster $1 while the other one runs: they share ports and /etc/slurm.
refuse_if_other_running() {
  local want=$1 other
  other=$(running_cluster)
  [[ -z $other || $other == "$want" ]] && return 0
  local script=cluster.sh
  [[ $other == local2 ]] && script=cluster2.sh
  die "the '$other' cluster (slurm/$script) is running; stop it first: bash slurm/$script stop"
}

# Needs slurm.conf written: sacctmgr finds slurmdbd through it.
start_shared_daemons() {
  start_munged
  start_mariadbd
  write_slurmdbd_conf
  start_slurmdbd
}

# Cancel every job so no job step outlives the daemons (slurmstepd would linger).
cancel_all_jobs() {
  ctld_up || return 0
  local ids i
  ids=$(squeue -h -o '%A' 2>/dev/null || true)
  [[ -z $ids ]] && return 0
  log "cancelling jobs: ${ids//$'\n'/ }"
  # shellcheck disable=SC2086  # ids are numeric job ids from squeue
  scancel $ids 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    [[ -z $(squeue -h -o '%A' 2>/dev/null) ]] && return 0
    sleep 0.5
  done
  log "some jobs did not finish within 20s; stopping anyway"
}

stop_shared_daemons() {
  stop_pidfile "$RUN/slurmdbd.pid" slurmdbd
  stop_pidfile "$MYSQL_RUN/mariadbd.pid" mariadbd
  stop_pidfile "$RUN/munged.pid" munged
}

# Print "name: running (pid N)" or "name: stopped"; return 1 when stopped.
show_daemon() {
  local label=$1 file=$2 comm=$3 pid
  if pid=$(live_pid "$file" "$comm"); then
    printf '%-22s running (pid %s)\n' "$label" "$pid"
  else
    printf '%-22s stopped\n' "$label"
    return 1
  fi
}

show_shared_status() {
  local ok=0
  if live_pid "$RUN/munged.pid" munged >/dev/null; then
    show_daemon munged "$RUN/munged.pid" munged
  elif munge_works; then
    printf '%-22s running (not started by us)\n' munged
  else
    show_daemon munged "$RUN/munged.pid" munged || ok=1
  fi
  show_daemon mariadbd "$MYSQL_RUN/mariadbd.pid" mariadbd || ok=1
  show_daemon slurmdbd "$RUN/slurmdbd.pid" slurmdbd || ok=1
  local ctld_label=slurmctld
  [[ -n $(running_cluster) ]] && ctld_label="slurmctld ($(running_cluster))"
  show_daemon "$ctld_label" "$RUN/slurmctld.pid" slurmctld || ok=1
  return $ok
}

# ---------------------------------------------------------------- single-node cluster

single_is_up() {
  [[ $(running_cluster) == local ]] &&
    live_pid "$RUN/slurmd-localhost.pid" slurmd >/dev/null &&
    live_pid "$RUN/slurmdbd.pid" slurmdbd >/dev/null &&
    node_up localhost && sacct_works
}

start_single() {
  require_root
  make_dirs
  exec 9>"$SLURM_ROOT/lock"
  flock -w "$TIMEOUT_S" 9 || die "another start/stop holds $SLURM_ROOT/lock"
  refuse_if_other_running local
  if single_is_up; then
    log "already running (logs: $LOG)"
    return 0
  fi
  local t0=$SECONDS
  install_packages
  write_single_slurm_conf # sacctmgr (used to wait for slurmdbd) needs slurm.conf
  start_shared_daemons
  add_cluster local
  start_slurmctld local
  if ! live_pid "$RUN/slurmd-localhost.pid" slurmd >/dev/null; then
    log "starting slurmd (localhost)"
    mkdir -p "$SLURM_ROOT/spool/localhost"
    slurmd -N localhost </dev/null >>"$LOG/slurmd-localhost.log" 2>&1 9>&- ||
      die "slurmd failed to start; see $LOG/slurmd-localhost.log"
  fi
  wait_node localhost
  wait_for "sacct" sacct_works
  log "up in $((SECONDS - t0))s: node localhost, partition debug (logs: $LOG)"
}

stop_single() {
  require_root
  mkdir -p "$SLURM_ROOT"
  exec 9>"$SLURM_ROOT/lock"
  flock -w "$TIMEOUT_S" 9 || die "another start/stop holds $SLURM_ROOT/lock"
  if [[ $(running_cluster) == local2 ]]; then
    log "the 2-node cluster (slurm/cluster2.sh) is running, not this one: left alone"
    return 0
  fi
  cancel_all_jobs
  stop_pidfile "$RUN/slurmd-localhost.pid" slurmd
  stop_pidfile "$RUN/slurmctld.pid" slurmctld
  rm -f "$ACTIVE_FILE"
  stop_shared_daemons
  log "stopped"
}

status_single() {
  local ok=0
  show_shared_status || ok=1
  show_daemon "slurmd (localhost)" "$RUN/slurmd-localhost.pid" slurmd || ok=1
  [[ $(running_cluster) == local2 ]] && echo "note: the 2-node cluster runs: bash slurm/cluster2.sh status"
  if ctld_up; then sinfo -N -o '%N %P %T %C' || true; fi
  echo "logs: $LOG"
  return $((ok ? 3 : 0))
}

main() {
  trap 'on_error $LINENO "$BASH_COMMAND"' ERR
  case ${1:-} in
    start) start_single ;;
    stop) stop_single ;;
    status) status_single || exit $? ;;
    *)
      echo "usage: bash slurm/cluster.sh start|stop|status" >&2
      exit 2
      ;;
  esac
}

# Sourced by cluster2.sh for the functions above; run main only when executed.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
