#!/usr/bin/env bash
# start_local_slurm.sh - a real single-node SLURM cluster on localhost for this
# project's tests and CI (e.g. running the workflow with
# `snakemake --executor slurm`). Installs what is missing with apt (munge
# slurm-client slurmctld slurmd [slurmdbd mariadb-server]) and starts munged,
# [MariaDB + slurmdbd accounting], slurmctld and slurmd, with fake GPUs as
# gres/gpu so `gpu=1` jobs schedule and get CUDA_VISIBLE_DEVICES, and an
# account ($SLURM_LOCAL_ACCOUNT) for root/$USER. Idempotent: anything already
# running is left alone; prints 'SLURM ready' once `sinfo` shows the node idle
# (measured on a 2-core VM: ~5 s from an empty state dir plus ~10 s of apt the
# first time, ~3 s for a restart, <1 s when already running).
# Needs root, Debian 12 packages, no systemd. Stop with stop_local_slurm.sh.
#
# Environment knobs (all optional):
#   SLURM_LOCAL_STATE       state dir: pid files, logs, spool, DB  [/var/lib/slurm-local]
#   SLURM_LOCAL_ACCOUNTING  1 = MariaDB + slurmdbd (sacct/sacctmgr work, plugin
#                           defaults work); 0 = accounting_storage/none       [1]
#   SLURM_LOCAL_GPUS        number of fake GPUs (gres/gpu) on the node; 0=none [2]
#   SLURM_LOCAL_ACCOUNT     account created in slurmdbd for root/$USER   [testacct]
#   SLURM_LOCAL_PARTITION   partition name                               [debug]
#   SLURM_LOCAL_NODE        node/controller name; 'localhost' makes the setup
#                           independent of the machine's hostname    [localhost]
#   SLURM_LOCAL_MEM_MB      RealMemory of the node  [85% of what slurmd -C sees]
#   SLURM_LOCAL_CPUS        CPUs the node advertises [what slurmd -C sees]. More
#                           than the machine has (with SlurmdParameters=
#                           config_overrides) gives the node a GPU-node shape, so
#                           a real profile's cpus/mem requests schedule unchanged
#                           (the tests use 8 CPUs, 128 GB); nothing is enforced.
#   SLURM_LOCAL_TIMEOUT     seconds to wait for each daemon / the idle node  [60]
#
# Traps seen with Snakemake 9.27 + snakemake-executor-plugin-slurm 2.8.0 on
# Slurm 22.05:
# - Without accounting the plugin's default `sacct` status check makes
#   Snakemake wait forever: keep SLURM_LOCAL_ACCOUNTING=1, or use
#   `slurm-status-command: squeue` (MinJobAge=300 is set below for that).
# - Give a real account (`slurm_account: testacct`) or expect account-guessing
#   warnings.
# - `slurm_extra` may not carry --gres/--qos: use the gpu/gres resources and
#   --slurm-qos.
# - Each job costs ~6-8 s of SLURM overhead, each DAG level ~14 s of status
#   polling; `slurm-init-seconds-before-status-checks` shortens the first wait.
# - No cgroups here: memory limits are not enforced, `runtime` is (TIMEOUT).
# - Wrap the whole Snakemake call in `timeout -k` in CI; prefer `timeout -s INT`:
#   on SIGINT Snakemake scancels its jobs and unlocks, on SIGTERM it waits for
#   running jobs (and SIGKILL then leaves jobs and a stale .snakemake/locks).
# - With the default `sacct` status check a job killed by `scancel` is never
#   seen as failed (sacct says 'CANCELLED by 0', the plugin expects
#   'CANCELLED'): Snakemake waits forever. `slurm-status-command: squeue`
#   reports CANCELLED, and `--retries` then resubmits.
set -euo pipefail

STATE=${SLURM_LOCAL_STATE:-/var/lib/slurm-local}
ACCOUNTING=${SLURM_LOCAL_ACCOUNTING:-1}
NGPUS=${SLURM_LOCAL_GPUS:-2}
ACCOUNT=${SLURM_LOCAL_ACCOUNT:-testacct}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
NODE=${SLURM_LOCAL_NODE:-localhost}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}
CLUSTER=localcluster
CONF_DIR=/etc/slurm
RUN=$STATE/run
LOG=$STATE/log
T_START=$(date +%s.%N)

log() { echo "[start_local_slurm $(date +%H:%M:%S)] $*"; }
die() { echo "[start_local_slurm] ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
# alive NAME PIDFILE: pid file exists, process alive, and its comm is NAME
alive() { local p; p=$(cat "$2" 2>/dev/null) || return 1
          [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$1" ] \
            && [ "$(awk '{print $3}' /proc/"$p"/stat 2>/dev/null)" != Z ]; }
wait_for() { # wait_for DESCRIPTION CMD... : poll CMD until it succeeds
  local what=$1; shift; local t0; t0=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    [ $(( $(date +%s) - t0 )) -ge "$TIMEOUT" ] && die "timed out waiting for $what"
    sleep 0.2
  done; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- packages
PKGS="munge slurm-client slurmctld slurmd"
[ "$ACCOUNTING" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=()
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  t0=$(date +%s.%N); log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"/tmp/slurm-local-apt.log" 2>&1 \
    || { tail -20 /tmp/slurm-local-apt.log; die "apt-get install failed"; }
  log "apt install took $(elapsed "$t0")s"
fi

# srun listens on the address its hostname resolves to: keep that on loopback
case "$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR==1{print $1}')" in
  127.*) ;; *) log "WARNING: hostname $(hostname) does not resolve to 127.x;" \
               "add '127.0.0.1 $(hostname)' to /etc/hosts to keep srun traffic on loopback";;
esac

mkdir -p "$RUN" "$LOG" "$STATE/spool/ctld" "$STATE/spool/d" "$STATE/fakegpu" "$CONF_DIR"
chmod 755 "$STATE" "$RUN"

# ---------------------------------------------------------------- config
read -r -a HW <<<"$(slurmd -C | head -1)"   # NodeName=x CPUs=2 ... RealMemory=N
declare -A hw; for kv in "${HW[@]}"; do hw[${kv%%=*}]=${kv#*=}; done
MEM=${SLURM_LOCAL_MEM_MB:-$(( hw[RealMemory] * 85 / 100 ))}
if [ -n "${SLURM_LOCAL_CPUS:-}" ] && [ "$SLURM_LOCAL_CPUS" != "${hw[CPUs]}" ]; then
  # an advertised shape, not the hardware's: slurmd must take the config's word
  NODE_SHAPE="CPUs=$SLURM_LOCAL_CPUS Sockets=1 CoresPerSocket=$SLURM_LOCAL_CPUS ThreadsPerCore=1"
  SLURMD_PARAMS="SlurmdParameters=config_overrides"
else
  NODE_SHAPE="CPUs=${hw[CPUs]} Sockets=${hw[SocketsPerBoard]} CoresPerSocket=${hw[CoresPerSocket]} ThreadsPerCore=${hw[ThreadsPerCore]}"
  SLURMD_PARAMS=""
fi
GRES_NODE=""; GRES_TYPES=""
if [ "$NGPUS" -gt 0 ]; then
  GRES_NODE="Gres=gpu:$NGPUS"; GRES_TYPES="GresTypes=gpu"
  for i in $(seq 0 $((NGPUS - 1))); do   # char devices (NVIDIA major 195) so
    f=$STATE/fakegpu/nvidia$i           # slurmd sets CUDA_VISIBLE_DEVICES
    [ -e "$f" ] || mknod "$f" c 195 "$i" 2>/dev/null || { touch "$f"
      log "WARNING: mknod failed; gpus still schedulable, but no CUDA_VISIBLE_DEVICES"; }
  done
fi
if [ "$ACCOUNTING" = 1 ]; then
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
# keep sbatch --comment (the plugin's rule name) in sacct
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_CONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

write_conf() { # write_conf FILE MODE: stdin -> FILE, return 0 if it changed
  local tmp; tmp=$(mktemp); cat >"$tmp"; chmod "$2" "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  if [ -e "$1" ] && ! grep -q '^# managed by start_local_slurm.sh' "$1" \
     && [ ! -e "$1.pre-slurm-local" ]; then cp -p "$1" "$1.pre-slurm-local"; fi
  mv "$tmp" "$1"; return 0; }

CHANGED=0
if write_conf "$CONF_DIR/slurm.conf" 644 <<EOF; then CHANGED=1; fi
# managed by start_local_slurm.sh (state in $STATE)
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
CommunicationParameters=NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
# no cgroups in the container: track processes via /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
$ACCT_CONF
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
ReturnToService=2
# keep finished jobs visible to squeue for 5 min (plugin's squeue status mode)
MinJobAge=300
$SLURMD_PARAMS
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$GRES_TYPES
NodeName=$NODE NodeAddr=127.0.0.1 $NODE_SHAPE RealMemory=$MEM $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
if [ "$NGPUS" -gt 0 ]; then
  if write_conf "$CONF_DIR/gres.conf" 644 <<EOF; then CHANGED=1; fi
# managed by start_local_slurm.sh
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/fakegpu/nvidia[0-$((NGPUS - 1))]
EOF
else
  rm -f "$CONF_DIR/gres.conf"
fi

# ---------------------------------------------------------------- munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running"
else
  [ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
  runuser -u munge -- munged
  wait_for munged sh -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$RUN/munged.pid"      # marks it as started by us
  log "munged started (pid $(cat "$RUN/munged.pid"))"
fi

# ---------------------------------------------------------------- accounting
if [ "$ACCOUNTING" = 1 ]; then
  DB=$STATE/mysql; SOCK=$RUN/mysqld/mysqld.sock
  mkdir -p "$RUN/mysqld"; chown mysql:mysql "$RUN/mysqld"
  if [ ! -d "$DB/mysql" ]; then
    t0=$(date +%s.%N)
    mkdir -p "$DB"; chown mysql:mysql "$DB"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB" \
      --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || { tail "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
    log "initialised MariaDB datadir in $(elapsed "$t0")s"
  fi
  if alive mariadbd "$RUN/mysqld/mariadbd.pid"; then
    log "mariadbd already running"
  else
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --basedir=/usr --datadir="$DB" \
      --socket="$SOCK" --pid-file="$RUN/mysqld/mariadbd.pid" --skip-networking \
      --log-error="$DB/mariadb.err" --innodb-buffer-pool-size=128M \
      --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for mariadbd mariadb-admin --socket="$SOCK" ping
    wait_for mariadbd-pidfile alive mariadbd "$RUN/mysqld/mariadbd.pid"
    log "mariadbd started (pid $(cat "$RUN/mysqld/mariadbd.pid"))"
  fi
  mariadb --socket="$SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  write_conf "$CONF_DIR/slurmdbd.conf" 600 <<EOF || true
# managed by start_local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
  if alive slurmdbd "$RUN/slurmdbd.pid"; then
    log "slurmdbd already running"
  else
    # libmariadb honours MYSQL_UNIX_PORT for host=localhost (socket connection)
    MYSQL_UNIX_PORT=$SOCK slurmdbd
    wait_for slurmdbd sacctmgr -n list cluster
    log "slurmdbd started (pid $(cat "$RUN/slurmdbd.pid"))"
  fi
  [ -n "$(sacctmgr -n -P list cluster "$CLUSTER" format=cluster)" ] \
    || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  [ -n "$(sacctmgr -n -P list account "$ACCOUNT" format=account)" ] \
    || sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=local Organization=local >/dev/null
  for u in root ${SUDO_USER:-} $(id -un); do
    [ -n "$(sacctmgr -n -P list assoc user="$u" account="$ACCOUNT" format=user)" ] \
      || sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null
  done
fi

# ---------------------------------------------------------------- slurmctld / slurmd
if [ "$CHANGED" = 1 ]; then   # config changed: restart our own daemons
  for d in slurmd slurmctld; do
    if alive $d "$RUN/$d.pid"; then
      pid=$(cat "$RUN/$d.pid"); log "config changed, restarting $d (pid $pid)"; kill "$pid"
      for _ in $(seq 300); do   # wait on the pid itself: the pid file goes early
        if [ ! -d /proc/"$pid" ] \
           || [ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" = Z ]; then break; fi
        sleep 0.1; done
    fi
  done
fi
if alive slurmctld "$RUN/slurmctld.pid"; then
  log "slurmctld already running"
else
  slurmctld
  wait_for slurmctld sh -c 'scontrol ping | grep -q UP'
  log "slurmctld started (pid $(cat "$RUN/slurmctld.pid"))"
fi
if alive slurmd "$RUN/slurmd.pid"; then
  log "slurmd already running"
else
  slurmd -N "$NODE"
  wait_for slurmd alive slurmd "$RUN/slurmd.pid"
  log "slurmd started (pid $(cat "$RUN/slurmd.pid"))"
fi

# ---------------------------------------------------------------- ready?
state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1; }
t0=$(date +%s)
until [ "$(state)" = idle ] || [ "$(state)" = mixed ] || [ "$(state)" = allocated ]; do
  case "$(state)" in drain*|down*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true;; esac
  [ $(( $(date +%s) - t0 )) -ge "$TIMEOUT" ] && { sinfo; die "node $NODE not idle"; }
  sleep 0.2
done
sinfo -o '%P %a %D %T %N %G'
echo "SLURM ready (node $NODE, accounting=$ACCOUNTING, gpus=$NGPUS, start took $(elapsed "$T_START")s)"
