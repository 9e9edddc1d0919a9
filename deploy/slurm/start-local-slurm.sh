#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this (Debian/Ubuntu) machine, for CI and the tests.
#
#   sudo deploy/slurm/start-local-slurm.sh     # install (apt) if needed, configure, start
#   sudo deploy/slurm/stop-local-slurm.sh      # cancel every job, stop the daemons
#
# Idempotent: a second run keeps running daemons (restarting them only when the generated
# slurm.conf changed) and just waits for the node to be idle. No systemd is needed: munged,
# slurmctld and slurmd are started directly, which also works in containers. The node is
# this machine as `slurmd -C` reports it, in one partition `debug` (the default one), with
# cores and memory as consumable resources; SLURM runs as root. Not for production: no
# accounting database, no cgroups, no job containment beyond process tracking via /proc.
#
# Environment: SLURM_START_TIMEOUT (seconds to wait for the node, default 60).
set -euo pipefail

timeout_s=${SLURM_START_TIMEOUT:-60}
conf_dir=/etc/slurm
log_dir=/var/log/slurm
state_dir=/var/lib/slurm

log() { echo "start-local-slurm: $*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (it installs packages and starts daemons)"

# --- install ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
	! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
	command -v apt-get >/dev/null || die "apt-get not found: install slurmctld, slurmd, slurm-client and munge yourself"
	export DEBIAN_FRONTEND=noninteractive
	packages=(slurmctld slurmd slurm-client munge)
	log "installing ${packages[*]}"
	if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
		log "apt-get install failed; updating the package lists and retrying"
		apt-get update
		apt-get install -y --no-install-recommends "${packages[@]}"
	fi
fi

# --- munge -----------------------------------------------------------------------------
running() { # running PIDFILE: the process named in PIDFILE is alive
	[[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

if [[ ! -s /etc/munge/munge.key ]]; then
	log "creating /etc/munge/munge.key"
	mkdir -p /etc/munge
	dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown -R munge:munge /etc/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0711 /var/lib/munge
chmod 0700 /var/log/munge
if ! running /run/munge/munged.pid; then
	log "starting munged"
	runuser -u munge -- /usr/sbin/munged --force
fi
for _ in $(seq 50); do
	[[ -S /run/munge/munge.socket.2 ]] && break
	sleep 0.1
done
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

# --- slurm.conf ------------------------------------------------------------------------
host=$(hostname -s)
# `slurmd -C` prints "NodeName=host CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=..
# ThreadsPerCore=.. RealMemory=MB"; leave 5 % of the memory (at least 256 MB) to the system
node_line=$(slurmd -C | head -n 1)
real_memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"${node_line}")
[[ -n ${real_memory} ]] || die "cannot read RealMemory from 'slurmd -C': ${node_line}"
reserve=$((real_memory / 20 > 256 ? real_memory / 20 : 256))
memory=$((real_memory - reserve))
node_line=${node_line/RealMemory=${real_memory}/RealMemory=${memory}}
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"${node_line}")
def_mem_per_cpu=$((memory / cpus))

mkdir -p "${conf_dir}" "${log_dir}" "${state_dir}/slurmctld" "${state_dir}/slurmd"
new_conf=$(mktemp)
trap 'rm -f "${new_conf}"' EXIT
cat >"${new_conf}" <<EOF
# Written by deploy/slurm/start-local-slurm.sh: a one-node cluster on ${host}.
ClusterName=local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no systemd, no cgroups: track job processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# cores and memory are consumable: two 1-core jobs share a 2-core node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${def_mem_per_cpu}
SchedulerType=sched/backfill
ReturnToService=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${state_dir}/slurmctld
SlurmdSpoolDir=${state_dir}/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${log_dir}/slurmctld.log
SlurmdLogFile=${log_dir}/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=5
Waittime=0
${node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF

changed=0
if ! cmp -s "${new_conf}" "${conf_dir}/slurm.conf"; then
	changed=1
	install -m 0644 "${new_conf}" "${conf_dir}/slurm.conf"
	log "wrote ${conf_dir}/slurm.conf (${node_line})"
fi

# --- daemons ---------------------------------------------------------------------------
stop_daemon() { # stop_daemon NAME PIDFILE
	running "$2" || return 0
	log "stopping $1 (the configuration changed)"
	local pid
	pid=$(cat "$2")
	kill "${pid}" 2>/dev/null || true
	for _ in $(seq 100); do
		kill -0 "${pid}" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -9 "${pid}" 2>/dev/null || true
}
if [[ ${changed} -eq 1 ]]; then
	stop_daemon slurmd /run/slurmd.pid
	stop_daemon slurmctld /run/slurmctld.pid
fi
if ! running /run/slurmctld.pid; then
	log "starting slurmctld"
	# -c: a clean start, forgetting jobs and node states of an earlier run
	slurmctld -c
fi
if ! running /run/slurmd.pid; then
	log "starting slurmd"
	slurmd -N "${host}"
fi

# --- wait for the node ---------------------------------------------------------------
deadline=$((SECONDS + timeout_s))
state=""
while ((SECONDS < deadline)); do
	state=$(sinfo -h -N -n "${host}" -o %T 2>/dev/null | head -n 1 || true)
	case ${state} in
	idle | mixed | allocated | completing)
		log "node ${host} is ${state}; partition debug ready (started in ${SECONDS} s)"
		sinfo
		exit 0
		;;
	down* | drain*)
		scontrol update NodeName="${host}" State=RESUME 2>/dev/null || true
		;;
	esac
	sleep 0.5
done
die "node ${host} not idle after ${timeout_s} s (state '${state:-no answer}'); see ${log_dir}/slurmctld.log and ${log_dir}/slurmd.log"
