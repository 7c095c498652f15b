#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine (for CI and local tests of launcher=slurm).
#
#   sudo scripts/slurm/start-local-cluster.sh      # idempotent; prints "ready" or the logs and fails
#   sudo scripts/slurm/stop-local-cluster.sh [--purge]
#
# Runs munged, MariaDB (bound to 127.0.0.1, only for accounting), slurmdbd, slurmctld and slurmd as
# plain daemons (no systemd needed, works in containers). Accounting through slurmdbd is what makes
# `sacct` work; submitit polls job states with sacct.
#
# Debian 12 packages (apt-get install -y --no-install-recommends ...):
#   slurmctld slurmd slurm-client slurmdbd munge mariadb-server
#
# Environment (all optional):
#   PAPERZOO_SLURM_CLUSTER  cluster name                      (default: paperzoo)
#   PAPERZOO_SLURM_CPUS     CPUs of the node                  (default: max(2, nproc))
#   PAPERZOO_SLURM_MEM_MB   RealMemory of the node in MB      (default: min(8000, 90% of RAM))
#   PAPERZOO_SLURM_WAIT     seconds to wait for a working node (default: 60)
#
# Choices that matter for tests:
#   * SlurmUser=root, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups needed.
#   * SlurmdParameters=config_overrides: the node advertises the configured CPUs/memory, so the
#     node never drains on a small CI machine and two-task jobs run on a 1-2 core box.
#   * JobRequeue=1 and AuthInfo=cred_expire=10: a requeued job (submitit's checkpoint on USR2 /
#     time limit) may start again after ~10 s instead of the default 120 s.
#   * MinJobAge/KillWait short so finished or cancelled jobs clear quickly.
set -euo pipefail

CLUSTER=${PAPERZOO_SLURM_CLUSTER:-paperzoo}
WAIT=${PAPERZOO_SLURM_WAIT:-60}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MYSQL_SOCK=/run/mysqld/mysqld.sock
T0=$SECONDS

log() { printf '[slurm-local %3ss] %s\n' "$((SECONDS - T0))" "$*"; }
die() { printf '[slurm-local] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $EUID -ne 0 ]]; then
  die "must run as root (it writes /etc/slurm and starts daemons)"
fi

missing=()
for bin in munged munge unmunge mariadbd mariadb mariadb-admin slurmdbd slurmctld slurmd sinfo srun sbatch sacct sacctmgr scontrol; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if ((${#missing[@]})); then
  die "missing ${missing[*]}; install with: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
fi

# ------------------------------------------------------------------------------------ helpers

pid_alive() {  # pid_alive PIDFILE
  [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      return 1
    fi
    sleep 0.5
  done
}

dump_logs() {
  local f
  for f in "$LOG_DIR"/mariadb.log "$LOG_DIR"/slurmdbd.log "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log /var/log/munge/munged.log; do
    [[ -f $f ]] || continue
    echo "----- tail of $f -----" >&2
    tail -n 40 "$f" >&2 || true
  done
  echo "----- sinfo -----" >&2
  sinfo -N -l >&2 2>&1 || true
  scontrol show node >&2 2>&1 || true
}

fail() { echo "[slurm-local] ERROR: $*" >&2; dump_logs; exit 1; }

install_file() {  # install_file MODE OWNER DEST < content ; returns 0 when DEST changed
  local mode=$1 owner=$2 dest=$3 tmp
  tmp=$(mktemp "$dest.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  if [[ -f $dest ]] && cmp -s "$tmp" "$dest"; then
    rm -f "$tmp"
    return 1
  fi
  mv -f "$tmp" "$dest"
  return 0
}

stop_pidfile() {  # stop_pidfile PIDFILE
  local pid
  pid_alive "$1" || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------------------------------ host name

NODE=$(hostname -s)
[[ -n $NODE ]] || die "hostname -s is empty"
if ! getent hosts "$NODE" >/dev/null; then
  log "making $NODE resolvable via /etc/hosts"
  echo "127.0.0.1 $NODE" >>/etc/hosts
fi
getent hosts localhost >/dev/null || echo "127.0.0.1 localhost" >>/etc/hosts

NPROC=$(nproc)
CPUS=${PAPERZOO_SLURM_CPUS:-$((NPROC > 2 ? NPROC : 2))}
MEM_TOTAL_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
MEM_DEFAULT=$((MEM_TOTAL_MB * 9 / 10))
((MEM_DEFAULT > 8000)) && MEM_DEFAULT=8000
((MEM_DEFAULT < 500)) && MEM_DEFAULT=500
MEM=${PAPERZOO_SLURM_MEM_MB:-$MEM_DEFAULT}

mkdir -p "$CONF_DIR" "$LOG_DIR" "$RUN_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"

# ------------------------------------------------------------------------------------ munge

mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
chown munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile=/etc/munge/munge.key --force
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged
  wait_for 15 munged sh -c 'munge -n | unmunge' || fail "munged did not come up"
fi

# ------------------------------------------------------------------------------------ MariaDB

mkdir -p /run/mysqld
chown mysql:mysql /run/mysqld
if ! mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; then
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >"$LOG_DIR/mariadb-install.log" 2>&1 \
      || { cat "$LOG_DIR/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  log "starting MariaDB (127.0.0.1 only, accounting database)"
  touch "$LOG_DIR/mariadb.log"; chown mysql:mysql "$LOG_DIR/mariadb.log"
  setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket="$MYSQL_SOCK" \
    --pid-file=/run/mysqld/mysqld.pid --bind-address=127.0.0.1 --log-error="$LOG_DIR/mariadb.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --skip-name-resolve \
    </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadb mariadb-admin --socket="$MYSQL_SOCK" ping || fail "MariaDB did not come up"
fi
# slurmdbd runs as root and logs in as the MariaDB root user through the unix socket
# (unix_socket authentication, no password anywhere).
mariadb --socket="$MYSQL_SOCK" -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db" \
  || fail "cannot create the accounting database"

# ------------------------------------------------------------------------------------ configs

changed=0
install_file 0644 root:root "$CONF_DIR/slurm.conf" <<EOF && changed=1 || true
# Written by scripts/slurm/start-local-cluster.sh: a one-node test cluster. Local edits are overwritten.
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
StateSaveLocation=$CTLD_SPOOL
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# quick turnaround for tests
KillWait=5
MinJobAge=30
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
# accounting: sacct (and submitit's state polling) go through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

install_file 0600 root:root "$CONF_DIR/slurmdbd.conf" <<EOF && changed=1 || true
# Written by scripts/slurm/start-local-cluster.sh.
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=$RUN_DIR/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF

if ((changed)); then
  log "configuration (re)written: restarting SLURM daemons that are running"
  stop_pidfile "$RUN_DIR/slurmd.pid"
  stop_pidfile "$RUN_DIR/slurmctld.pid"
  stop_pidfile "$RUN_DIR/slurmdbd.pid"
fi

# ------------------------------------------------------------------------------------ slurmdbd

if ! pid_alive "$RUN_DIR/slurmdbd.pid"; then
  log "starting slurmdbd"
  slurmdbd || fail "slurmdbd failed to start"
fi
wait_for 60 slurmdbd sacctmgr -n -P show cluster || fail "slurmdbd does not answer (sacctmgr show cluster)"
if ! sacctmgr -n -P show cluster format=Cluster | grep -qx "$CLUSTER"; then
  log "registering cluster $CLUSTER in the accounting database"
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed"
fi

# ------------------------------------------------------------------------------------ slurmctld, slurmd

if ! pid_alive "$RUN_DIR/slurmctld.pid"; then
  log "starting slurmctld"
  slurmctld || fail "slurmctld failed to start"
fi
wait_for 30 slurmctld scontrol ping || fail "slurmctld does not answer (scontrol ping)"
if ! pid_alive "$RUN_DIR/slurmd.pid"; then
  log "starting slurmd ($NODE: CPUs=$CPUS RealMemory=$MEM)"
  slurmd || fail "slurmd failed to start"
fi

node_ready() {
  local state
  state=$(sinfo -h -n "$NODE" -o '%t' 2>/dev/null | head -n1)
  case $state in
    idle | mix | alloc) return 0 ;;
    down* | drain* | drng* | fail*)
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
      return 1 ;;
    *) return 1 ;;
  esac
}

end=$((T0 + WAIT))
((end < SECONDS + 15)) && end=$((SECONDS + 15))
until node_ready; do
  ((SECONDS < end)) || fail "node $NODE is not idle after ${WAIT}s (state: $(sinfo -h -n "$NODE" -o '%t %E' 2>/dev/null))"
  sleep 0.5
done
log "node $NODE is $(sinfo -h -n "$NODE" -o '%t')"

until out=$(timeout 20 srun -N1 -n2 -t 1 hostname 2>&1) && [[ $(grep -c . <<<"$out") -eq 2 ]]; do
  ((SECONDS < end)) || fail "srun -n2 hostname does not work: $out"
  sleep 1
done
log "srun -n2 hostname ok; local SLURM cluster '$CLUSTER' ready in $((SECONDS - T0))s"
