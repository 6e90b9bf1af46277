#!/usr/bin/env bash
# CI services beside PostgreSQL and MariaDB: PgBouncer in front of the local PostgreSQL, and a
# one-node Slurm cluster on localhost. Runs as root on Debian, without stdin.
#
# Idempotent: a service that already works is left as it is, so running this again on a
# machine where they run (another CI step, a developer's box) changes nothing.
#
#   PgBouncer  127.0.0.1:${PGBOUNCER_PORT:-6432}, transaction pooling, every database of
#              the PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres)
#   Slurm      one node (this machine, its real CPUs and memory), partition "debug"
set -euo pipefail

PGBOUNCER_PORT="${PGBOUNCER_PORT:-6432}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "services: $*" >&2; }

# apt-get only what is missing; wait for another apt-get (a shared machine) instead of failing
need() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out waiting for $what"
      return 1
    fi
    sleep 1
  done
}

# ---- PgBouncer ---------------------------------------------------------------------------
pgbouncer_works() {
  # the `postgres` database exists on every server; PgBouncer passes any name through
  psql "postgresql://postgres@127.0.0.1:${PGBOUNCER_PORT}/postgres" -tAc "SELECT 1" 2>/dev/null | grep -qx 1
}

start_pgbouncer() {
  if pgbouncer_works; then
    log "pgbouncer already serves 127.0.0.1:${PGBOUNCER_PORT}"
    return 0
  fi
  need pgbouncer postgresql-client
  local conf=/etc/pgbouncer/tuner-ci.ini
  install -d -o postgres -g postgres /var/run/postgresql /var/log/postgresql
  # trust: PostgreSQL here trusts loopback; PgBouncer still wants every user in auth_file
  echo '"postgres" ""' >/etc/pgbouncer/tuner-ci-users.txt
  cat >"$conf" <<EOF
; written by .ci/services.sh
[databases]
; any database name is passed through to the local PostgreSQL (tests make their own)
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PGBOUNCER_PORT}
unix_socket_dir =
auth_type = trust
auth_file = /etc/pgbouncer/tuner-ci-users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 10
max_client_conn = 1000
max_db_connections = 0
ignore_startup_parameters = extra_float_digits,options
server_reset_query =
logfile = /var/log/postgresql/pgbouncer-tuner-ci.log
pidfile = /var/run/postgresql/pgbouncer-tuner-ci.pid
EOF
  chmod 644 "$conf" /etc/pgbouncer/tuner-ci-users.txt
  # the package's own instance, where its install started one, would hold the same port
  if [ -x /etc/init.d/pgbouncer ] && /etc/init.d/pgbouncer status >/dev/null 2>&1; then
    /etc/init.d/pgbouncer stop || true
  fi
  # a stale instance of ours (wrong config, half dead) goes first
  local pidfile=/var/run/postgresql/pgbouncer-tuner-ci.pid
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" && sleep 1
  fi
  rm -f "$pidfile"
  pgbouncer -d -u postgres "$conf"
  wait_until 30 "pgbouncer on 127.0.0.1:${PGBOUNCER_PORT}" pgbouncer_works
  log "pgbouncer serves 127.0.0.1:${PGBOUNCER_PORT} (transaction pooling)"
}

# ---- Slurm -------------------------------------------------------------------------------
slurm_idle() {
  sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 755 /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged
  wait_until 20 munged sh -c 'munge -n | unmunge'
}

write_slurm_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  # a little under the real memory: a node that claims more than it has is drained
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat >/etc/slurm/slurm.conf <<EOF
# written by .ci/services.sh: one node, this machine
ClusterName=tunerci
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=30
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_slurm() {
  if slurm_idle; then
    log "slurm already up: $(sinfo -h -N -o '%N %T %c CPUs' | head -1)"
    return 0
  fi
  need munge slurm-wlm
  start_munge
  [ -s /etc/slurm/slurm.conf ] && grep -q "written by .ci/services.sh" /etc/slurm/slurm.conf \
    || write_slurm_conf
  pgrep -x slurmctld >/dev/null || slurmctld
  wait_until 30 slurmctld scontrol ping
  pgrep -x slurmd >/dev/null || slurmd
  if ! wait_until 60 "the slurm node to come up" slurm_idle; then
    # a node left down or drained by an earlier run
    scontrol update nodename="$(hostname -s)" state=resume || true
    wait_until 30 "the slurm node to come up" slurm_idle || {
      sinfo -N -l >&2
      tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
      return 1
    }
  fi
  log "slurm up: $(sinfo -h -N -o '%N %T %c CPUs')"
}

start_pgbouncer
start_slurm
