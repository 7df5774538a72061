#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, from Debian's packages, for trying and testing the
# job scripts without a real cluster.
#
#   apt-get install -y slurm-wlm munge          # once, as root
#   scripts/slurm/local_cluster.sh start [DIR]  # as root; prints the SLURM_CONF line to export
#   export SLURM_CONF=DIR/slurm.conf            # then sbatch / squeue / scontrol as usual
#   scripts/slurm/local_cluster.sh stop [DIR]
#
# Everything lives in DIR (default /tmp/capl-slurm): slurm.conf, munge key and socket, spool and
# state folders, daemon logs and PID files. Nothing under /etc is changed and no systemd is
# needed. One node with this machine's CPUs and memory (`slurmd -C`), one partition `debug`;
# proctrack/linuxproc and task/none (no cgroups), no accounting. Finished jobs stay visible to
# `scontrol show job` for an hour (MinJobAge), which is how the tests read their exit codes.
# Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818).
# `stop` ends the three daemons by the PIDs recorded in DIR.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop|status [DIR]" >&2
    exit 2
}

ACTION="${1:-}"
DIR="${2:-/tmp/capl-slurm}"
[[ -n "${ACTION}" ]] || usage
CTLD_PORT="${SLURMCTLD_PORT:-6817}"
D_PORT="${SLURMD_PORT:-6818}"

fail() {
    echo "local_cluster.sh: error: $*" >&2
    exit 1
}

pid_of() {  # the PID recorded in DIR/$1.pid if that process is alive
    local file="${DIR}/$1.pid" pid
    [[ -f "${file}" ]] || return 1
    pid="$(tr -dc 0-9 <"${file}")"
    [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null && echo "${pid}"
}

stop_daemon() {  # stop_daemon NAME: SIGTERM by PID, wait up to 10 s, then SIGKILL
    local pid
    pid="$(pid_of "$1")" || { rm -f "${DIR}/$1.pid"; return 0; }
    kill "${pid}" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "${pid}" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "${pid}" 2>/dev/null && kill -9 "${pid}" 2>/dev/null || true
    rm -f "${DIR}/$1.pid"
}

write_conf() {
    local host node
    host="$(hostname -s)"
    # slurmd -C prints this machine's node line (CPUs, sockets, cores, memory); a node configured
    # with more than it has would be drained at once
    node="$(slurmd -C | head -n 1)"
    cat >"${DIR}/slurm.conf" <<EOF
# Written by scripts/slurm/local_cluster.sh: a single-node test cluster.
ClusterName=capl-local
SlurmctldHost=${host}
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${D_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${DIR}/munge/munge.socket.2
StateSaveLocation=${DIR}/state
SlurmdSpoolDir=${DIR}/spool
SlurmctldPidFile=${DIR}/slurmctld.pid
SlurmdPidFile=${DIR}/slurmd.pid
SlurmctldLogFile=${DIR}/log/slurmctld.log
SlurmdLogFile=${DIR}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=3600
MailProg=/bin/true
SchedulerType=sched/backfill
${node}
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    [[ "$(id -u)" -eq 0 ]] || fail "run as root (munged, slurmctld and slurmd run as root here)"
    local bin
    for bin in munged slurmctld slurmd sinfo; do
        command -v "${bin}" >/dev/null || fail "${bin} not found: apt-get install -y slurm-wlm munge"
    done
    if pid_of slurmctld >/dev/null || pid_of slurmd >/dev/null; then
        fail "a cluster from ${DIR} is already running: $0 stop ${DIR}"
    fi
    mkdir -p "${DIR}"/{munge,state,spool,log}
    chmod 0700 "${DIR}/munge"
    if [[ ! -f "${DIR}/munge/munge.key" ]]; then
        dd if=/dev/urandom of="${DIR}/munge/munge.key" bs=1024 count=1 status=none
        chmod 0600 "${DIR}/munge/munge.key"
    fi
    write_conf
    export SLURM_CONF="${DIR}/slurm.conf"

    munged --force --key-file="${DIR}/munge/munge.key" --socket="${DIR}/munge/munge.socket.2" \
        --pid-file="${DIR}/munged.pid" --log-file="${DIR}/log/munged.log" \
        --seed-file="${DIR}/munge/munged.seed" ||
        fail "munged did not start; see ${DIR}/log/munged.log"
    slurmctld -f "${SLURM_CONF}" || fail "slurmctld did not start; see ${DIR}/log/slurmctld.log"
    slurmd -f "${SLURM_CONF}" || fail "slurmd did not start; see ${DIR}/log/slurmd.log"

    local state=""
    for _ in $(seq 60); do
        state="$(sinfo -h -N -o %T 2>/dev/null | head -n 1 || true)"
        [[ "${state}" == idle* ]] && break
        sleep 0.5
    done
    if [[ "${state}" != idle* ]]; then
        tail -n 5 "${DIR}/log/slurmctld.log" "${DIR}/log/slurmd.log" >&2 || true
        "$0" stop "${DIR}" || true
        fail "the node did not become idle (state '${state:-none}'); logs in ${DIR}/log"
    fi
    echo "SLURM is up: export SLURM_CONF=${SLURM_CONF}"
}

case "${ACTION}" in
    start) start ;;
    stop)
        stop_daemon slurmd
        stop_daemon slurmctld
        stop_daemon munged
        ;;
    status)
        for name in munged slurmctld slurmd; do
            if pid="$(pid_of "${name}")"; then echo "${name}: running (pid ${pid})"; else echo "${name}: stopped"; fi
        done
        ;;
    *) usage ;;
esac
