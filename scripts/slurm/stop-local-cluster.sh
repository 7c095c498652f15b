#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by start-local-cluster.sh.
#
#   sudo scripts/slurm/stop-local-cluster.sh           # stop daemons, keep state (jobs, accounting)
#   sudo scripts/slurm/stop-local-cluster.sh --purge   # also delete controller/node state, the
#                                                      # accounting database and the logs
set -euo pipefail

PURGE=0
case "${1:-}" in
  --purge) PURGE=1 ;;
  "") ;;
  *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac
if [[ $EUID -ne 0 ]]; then
  echo "[slurm-local] ERROR: must run as root" >&2
  exit 1
fi

RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
MYSQL_SOCK=/run/mysqld/mysqld.sock

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  local name=$1 pidfile=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$pidfile"
    return 0
  fi
  echo "[slurm-local] stopping $name (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 80); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.25
  done
  echo "[slurm-local] $name did not stop in 20 s; killing it" >&2
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

if command -v scancel >/dev/null 2>&1 && [[ -s $RUN_DIR/slurmctld.pid ]] && kill -0 "$(cat "$RUN_DIR/slurmctld.pid")" 2>/dev/null; then
  # end running jobs so that their processes do not outlive slurmd
  scancel --full --quiet --state=RUNNING,PENDING,SUSPENDED "--user=$(id -un)" 2>/dev/null || true
  scancel --full --quiet --state=RUNNING,PENDING,SUSPENDED 2>/dev/null || true
fi
stop_pidfile slurmd "$RUN_DIR/slurmd.pid"
stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid"
stop_pidfile slurmdbd "$RUN_DIR/slurmdbd.pid"

if command -v mariadb-admin >/dev/null 2>&1 && mariadb-admin --socket="$MYSQL_SOCK" ping >/dev/null 2>&1; then
  if ((PURGE)); then
    mariadb --socket="$MYSQL_SOCK" -uroot -e "DROP DATABASE IF EXISTS slurm_acct_db" || true
  fi
  echo "[slurm-local] stopping MariaDB"
  mariadb-admin --socket="$MYSQL_SOCK" shutdown || stop_pidfile mariadb /run/mysqld/mysqld.pid
fi

# munged: only when it is the one we started (pid file written by munged itself)
stop_pidfile munged /run/munge/munged.pid

if ((PURGE)); then
  echo "[slurm-local] purging state"
  rm -rf /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
fi
echo "[slurm-local] stopped"
