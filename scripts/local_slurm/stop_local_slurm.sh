#!/usr/bin/env bash
# stop_local_slurm.sh - stop the local single-node SLURM cluster that
# start_local_slurm.sh (beside this file) started for the project's tests/CI,
# and only those daemons: each is found through its pid file under
# $SLURM_LOCAL_STATE/run and signalled only if that pid is alive and has the
# expected process name (a daemon that was already running before the start
# script, e.g. a system munged, has no pid file there and is left alone).
# Jobs still queued/running are cancelled first so no slurmstepd is left over.
#
# Usage: stop_local_slurm.sh [--purge]   (--purge also deletes the state dir:
#        job state, MariaDB data, logs; the next start is then from scratch)
# Environment: SLURM_LOCAL_STATE  state dir, as for the start script
#                                 [/var/lib/slurm-local]
set -uo pipefail
STATE=${SLURM_LOCAL_STATE:-/var/lib/slurm-local}
RUN=$STATE/run

log() { echo "[stop_local_slurm] $*"; }
gone() { [ ! -d /proc/"$1" ] || [ "$(awk '{print $3}' /proc/"$1"/stat 2>/dev/null)" = Z ]; }
alive() { local p; p=$(cat "$2" 2>/dev/null) || return 1
          [ -n "$p" ] && [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$1" ]; }

# cancel jobs still queued/running on our cluster so no slurmstepd is left over
if alive slurmctld "$RUN/slurmctld.pid"; then
  mapfile -t jobs < <(squeue -h -o %i 2>/dev/null)
  if [ "${#jobs[@]}" -gt 0 ]; then
    log "cancelling jobs: ${jobs[*]}"; scancel "${jobs[@]}" 2>/dev/null
    for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi

stop() { # stop NAME PIDFILE
  local name=$1 pf=$2 pid
  if ! alive "$name" "$pf"; then rm -f "$pf"; return; fi
  pid=$(cat "$pf"); local t0=$SECONDS
  kill -TERM "$pid"
  for _ in $(seq 300); do gone "$pid" && break; sleep 0.1; done
  if ! gone "$pid"; then log "$name did not exit in 30s, SIGKILL"; kill -KILL "$pid"; fi
  log "stopped $name (pid $pid) in $((SECONDS - t0))s"
  rm -f "$pf"
}
stop slurmd    "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop slurmdbd  "$RUN/slurmdbd.pid"
stop mariadbd  "$RUN/mysqld/mariadbd.pid"
stop munged    "$RUN/munged.pid"

if [ "${1:-}" = "--purge" ]; then
  case "$STATE" in /|"") log "refusing to purge '$STATE'";; *) rm -rf "$STATE"; log "purged $STATE";; esac
fi
log "stopped"
