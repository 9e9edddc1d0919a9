#!/usr/bin/env bash
# Stop the one-node SLURM cluster of start-local-slurm.sh: cancel every job, then stop
# slurmd, slurmctld and munged. Safe to run when (some of) them are not running.
set -euo pipefail

log() { echo "stop-local-slurm: $*" >&2; }

stop_daemon() { # stop_daemon NAME PIDFILE
	[[ -s $2 ]] || return 0
	local pid
	pid=$(cat "$2")
	if kill -0 "${pid}" 2>/dev/null; then
		log "stopping $1 (pid ${pid})"
		kill "${pid}" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "${pid}" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "${pid}" 2>/dev/null; then
			log "$1 did not stop within 10 s; killing it"
			kill -9 "${pid}" 2>/dev/null || true
		fi
	fi
	rm -f "$2"
}

if command -v squeue >/dev/null && squeue -h -o %i >/dev/null 2>&1; then
	jobs=$(squeue -h -o %i)
	if [[ -n ${jobs} ]]; then
		log "cancelling job(s) $(tr '\n' ' ' <<<"${jobs}")"
		# shellcheck disable=SC2086 # one argument per job id
		scancel ${jobs} || true
		for _ in $(seq 100); do
			[[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
			sleep 0.1
		done
	fi
fi

stop_daemon slurmd /run/slurmd.pid
stop_daemon slurmctld /run/slurmctld.pid
stop_daemon munged /run/munge/munged.pid
log "stopped"
