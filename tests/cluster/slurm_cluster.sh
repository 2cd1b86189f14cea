#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for okd's integration tests (tests/cluster/).
#
#   bash tests/cluster/slurm_cluster.sh start    # install (Debian packages) if needed, start, wait until the node is idle
#   bash tests/cluster/slurm_cluster.sh stop     # stop exactly the daemons `start` started (their pid files)
#   bash tests/cluster/slurm_cluster.sh status   # exit 0 when the cluster answers
#   bash tests/cluster/slurm_cluster.sh env      # the line to source: export SLURM_CONF=...
#
# Needs root (it installs packages and runs the daemons as root). Everything it writes lives in
# $OKD_SLURM_STATE (default /tmp/okd-slurm): configs, munge key and socket, MariaDB data, spool, logs.
# Nothing in /etc is changed; clients find the cluster through SLURM_CONF (printed by `env`).
#
# The cluster: munged on its own socket; MariaDB on 127.0.0.1 (slurmdbd stores the accounting that
# submitit reads through `sacct`); slurmdbd, slurmctld and slurmd on their own ports. No systemd and no
# cgroups (proctrack/linuxproc, task/none). One node with this machine's CPUs and memory, two partitions:
# `batch` (default) and `urgent`, whose jobs preempt `batch` jobs by requeueing them (PreemptMode=REQUEUE).
# Starting twice is harmless: `start` leaves a running cluster as it is.
set -euo pipefail

STATE=${OKD_SLURM_STATE:-/tmp/okd-slurm}
CTLD_PORT=${OKD_SLURM_CTLD_PORT:-16817}
SLURMD_PORT=${OKD_SLURM_SLURMD_PORT:-16818}
DBD_PORT=${OKD_SLURM_DBD_PORT:-16819}
DB_PORT=${OKD_SLURM_DB_PORT:-16306}
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
# every daemon we start, in start order: name, pid file
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

say() { echo "slurm_cluster: $*" >&2; }
die() { say "$*"; exit "${2:-1}"; }

pidfile() {
  case $1 in
    munged) echo "$STATE/munge/munged.pid" ;;
    mariadbd) echo "$STATE/mysql/mariadbd.pid" ;;
    *) echo "$STATE/$1.pid" ;;
  esac
}

# the pid in a daemon's pid file, if that process is alive and is that daemon
running_pid() {
  local file pid
  file=$(pidfile "$1")
  [[ -s $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$1" || return 1
  echo "$pid"
}

install_packages() {
  local missing=()
  for cmd in slurmctld slurmd slurmdbd sbatch munged mariadbd; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them" 3
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  # daemons must not start from the packages' scripts: this script starts its own
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } >"$STATE/apt.log" 2>&1 ||
    { rm -f /usr/sbin/policy-rc.d; die "apt-get could not install ${PACKAGES[*]} (see $STATE/apt.log)" 3; }
  rm -f /usr/sbin/policy-rc.d
}

write_configs() {
  local host node cpus mem
  host=$(hostname -s)
  # the node as slurmd sees it (CPUs, sockets, cores, memory); memory rounded down for the OS
  node=$(slurmd -C | head -n 1)
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$((mem * 9 / 10))
  mkdir -p "$STATE"/{ctld,slurmd,log}
  cat >"$STATE/slurm.conf" <<EOF
# written by tests/cluster/slurm_cluster.sh
ClusterName=okd
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# the munge socket for talking to slurmdbd (AuthInfo covers the rest)
AccountingStoragePass=$STATE/munge/munge.sock
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
ReturnToService=2
MpiDefault=none
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=batch Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
  cat >"$STATE/slurmdbd.conf" <<EOF
# written by tests/cluster/slurm_cluster.sh
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.sock
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=okd
StorageLoc=okd_slurm_acct
EOF
  chmod 600 "$STATE/slurmdbd.conf"
}

wait_for() {  # wait_for <seconds> <description> <command...>
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    timeout 10 "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  die "$what did not come up within ${limit}s (logs in $STATE/log and $STATE/mysql)"
}

start_munge() {
  running_pid munged >/dev/null && return 0
  mkdir -p "$STATE/munge" && chmod 755 "$STATE/munge"  # clients need to reach the socket
  [[ -s $STATE/munge/munge.key ]] || { dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none; }
  chmod 400 "$STATE/munge/munge.key"
  munged --force --socket="$STATE/munge/munge.sock" --key-file="$STATE/munge/munge.key" \
    --pid-file="$(pidfile munged)" --seed-file="$STATE/munge/munged.seed" --log-file="$STATE/log/munged.log"
  wait_for 10 munged bash -c "munge -S '$STATE/munge/munge.sock' -n | unmunge -S '$STATE/munge/munge.sock'"
}

start_mariadb() {
  running_pid mariadbd >/dev/null && return 0
  local data=$STATE/mysql
  mkdir -p "$data"
  if [[ ! -d $data/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$data" --user=root --auth-root-authentication-method=socket \
      >"$STATE/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $STATE/log/mariadb-install.log)"
  fi
  setsid mariadbd --no-defaults --datadir="$data" --socket="$data/mysqld.sock" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --pid-file="$(pidfile mariadbd)" --log-error="$STATE/log/mariadb.log" --user=root \
    --innodb-buffer-pool-size=32M --skip-log-bin </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadbd mariadb --no-defaults --socket="$data/mysqld.sock" -e "SELECT 1"
  mariadb --no-defaults --socket="$data/mysqld.sock" <<'SQL'
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'okd';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'okd';
GRANT ALL ON okd_slurm_acct.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON okd_slurm_acct.* TO 'slurm'@'localhost';
SQL
}

start_slurm() {
  export SLURM_CONF=$STATE/slurm.conf
  if ! running_pid slurmdbd >/dev/null; then
    slurmdbd
    wait_for 60 slurmdbd sacctmgr -i list cluster
  fi
  # the cluster must exist in the database before slurmctld registers with it
  sacctmgr -i list cluster format=cluster -n | grep -qw okd || sacctmgr -i add cluster okd >/dev/null
  if ! running_pid slurmctld >/dev/null; then
    slurmctld
    wait_for 60 slurmctld scontrol ping
  fi
  if ! running_pid slurmd >/dev/null; then
    slurmd
  fi
  wait_for 60 "the node (slurmd)" bash -c "sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'"
}

start() {
  [[ $(id -u) == 0 ]] || die "must run as root (it installs Debian packages and starts daemons as root)" 3
  mkdir -p "$STATE/log"
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_slurm
  say "up: $(sinfo -h -o '%P %D %c %m' | tr '\n' ';') (export SLURM_CONF=$STATE/slurm.conf)"
}

stop() {
  local pid any=0
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name=${DAEMONS[i]}
    pid=$(running_pid "$name") || continue
    any=1
    kill -TERM "$pid" 2>/dev/null || true
    for ((t = 0; t < 120; t++)); do
      [[ -d /proc/$pid ]] || break
      sleep 0.25
    done
    if [[ -d /proc/$pid ]]; then
      say "$name ($pid) did not stop after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  ((any)) && say "stopped" || say "nothing of ours was running"
}

status() {
  for name in "${DAEMONS[@]}"; do
    running_pid "$name" >/dev/null || { say "$name is not running"; return 1; }
  done
  SLURM_CONF=$STATE/slurm.conf scontrol ping >/dev/null 2>&1 || { say "slurmctld does not answer"; return 1; }
  say "running (SLURM_CONF=$STATE/slurm.conf)"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$STATE/slurm.conf" ;;
  *) die "usage: $0 start|stop|status|env" 2 ;;
esac
