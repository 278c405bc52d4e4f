#!/usr/bin/env bash
# A single-node Slurm cluster on this Debian machine, for testing the workflow's SLURM profile
# (tests/test_slurm.py). Run as root:
#
#   scripts/slurm_single_node.sh          # install (once), configure, start; wait for the node
#   scripts/slurm_single_node.sh stop     # stop the daemons this script started
#   scripts/slurm_single_node.sh status   # exit 0 when the node is up and schedulable
#
# Idempotent: a second start with the cluster already up and configured does nothing. There is
# no slurmdbd, so `sacct` does not work: profiles must query job states with `squeue`
# (workflow/profiles/slurm-test). No cgroups: processes are tracked through /proc
# (proctrack/linuxproc) and tasks are not confined (task/none), which also works in containers.
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGDIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
PARTITION=${SLURM_TEST_PARTITION:-debug}
WAIT_S=${SLURM_TEST_WAIT_S:-120}

die() { echo "slurm_single_node: $*" >&2; exit 1; }
say() { echo "slurm_single_node: $*" >&2; }

running() {  # running PIDFILE: the pid in the file names a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_pidfile() {  # stop_pidfile PIDFILE NAME: TERM the daemon, wait, then KILL
    local pid
    running "$1" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

node_state() {
    sinfo --noheader --nodes "$NODE" --format '%T' 2>/dev/null | head -n1 | tr -d '*~#' || true
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian or Ubuntu"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {  # prints "changed" when slurm.conf was (re)written
    local node_line memory new
    # `slurmd -C` reports this machine's CPUs, sockets, cores and memory as a NodeName line.
    node_line=$(slurmd -C | head -n1)
    [[ $node_line == NodeName=* ]] || die "slurmd -C gave no NodeName line: $node_line"
    # Keep 5% of the memory for the daemons, so that jobs asking for RealMemory still fit.
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    node_line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((memory * 95 / 100))/" <<<"$node_line")
    new=$(cat <<EOF
# Written by scripts/slurm_single_node.sh: one node, no accounting, no cgroups.
ClusterName=latentqa
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes: the executor reads job states from squeue.
MinJobAge=300
# Time between SIGTERM and SIGKILL on scancel or at the time limit: a checkpoint fits in it.
KillWait=60
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
$node_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    mkdir -p "$CONF_DIR"
    if [[ -f $CONF ]] && [[ $(cat "$CONF") == "$new" ]]; then
        return 0
    fi
    printf '%s\n' "$new" >"$CONF"
    echo changed
}

start_munge() {
    running "$MUNGE_PID" && return 0
    [[ -s /etc/munge/munge.key ]] || {
        say "creating the munge key"
        if command -v mungekey >/dev/null; then mungekey --create --force; else create-munge-key -f; fi
    }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file "$MUNGE_PID"
    for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.2; done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

start() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    install_packages
    NODE=$(hostname -s)
    mkdir -p "$STATE" "$SPOOL" "$LOGDIR"
    local changed
    changed=$(write_config)
    start_munge
    if [[ -n $changed ]] && { running "$CTLD_PID" || running "$SLURMD_PID"; }; then
        say "slurm.conf changed: restarting the Slurm daemons"
        stop_pidfile "$SLURMD_PID" slurmd
        stop_pidfile "$CTLD_PID" slurmctld
    fi
    if ! running "$CTLD_PID"; then
        say "starting slurmctld"
        slurmctld
    fi
    if ! running "$SLURMD_PID"; then
        say "starting slurmd"
        slurmd
    fi
    local state=""
    for _ in $(seq "$((WAIT_S * 2))"); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated | completing) break ;;
            down | drained | draining | fail | failing)
                # A node that was down under an old configuration: bring it back.
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle | mixed | allocated | completing) ;;
        *) die "node $NODE is '${state:-unknown}' after ${WAIT_S}s (see $LOGDIR/slurmctld.log, slurmd.log)" ;;
    esac
    say "node $NODE is $state in partition $PARTITION"
    sinfo
}

stop() {
    [[ $(id -u) == 0 ]] || die "must run as root"
    stop_pidfile "$SLURMD_PID" slurmd
    stop_pidfile "$CTLD_PID" slurmctld
    stop_pidfile "$MUNGE_PID" munged
}

status() {
    NODE=$(hostname -s)
    command -v sinfo >/dev/null || die "Slurm is not installed"
    local state
    state=$(node_state)
    echo "${state:-down}"
    case $state in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
