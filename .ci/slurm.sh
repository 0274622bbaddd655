#!/usr/bin/env bash
# A single-node Slurm on this machine, for the tests marked `slurm` (`.ci/run` starts and stops it).
#
#   .ci/slurm.sh start   install Debian's slurmctld slurmd slurm-client munge if missing, write
#                        /etc/slurm/slurm.conf for this node, start munged, slurmctld and slurmd,
#                        and wait until the node takes jobs
#   .ci/slurm.sh stop    cancel every job, then stop the daemons by their PID files
#
# Both are idempotent. Made for a root container without systemd, cgroups or accounting (so
# `sacct` does not work: poll `squeue`). Daemons are stopped by the PID in their PID file, and
# only when /proc/PID/exe is that daemon: never by process name.
#
# Environment:
#   SLURM_MAX_ARRAY_SIZE  the cluster's MaxArraySize (default 1001, Slurm's); a small one makes
#                         datatrove split a stage into several arrays
#   SLURM_PARTITIONS      the partitions, all on this node (default: "cpu gpu", the names README's
#                         cluster commands use; the first is the default one)
set -euo pipefail

ACTION=${1:-}
PARTITIONS=${SLURM_PARTITIONS:-cpu gpu}
MAX_ARRAY_SIZE=${SLURM_MAX_ARRAY_SIZE:-1001}
CONF=/etc/slurm/slurm.conf
STATE=/var/lib/slurm/slurmctld
SPOOL=/var/lib/slurm/slurmd
LOGS=/var/log/slurm
MUNGED_PID=/run/munge/munged.pid
SLURMCTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

say() { echo "slurm.sh: $*"; }
die() { echo "slurm.sh: error: $*" >&2; exit 1; }

# alive PIDFILE EXE: print the PID the file names when that process is alive and runs EXE
# (a stale file's number may since belong to another process). Debian's /usr/sbin/slurmctld is a
# link to slurmctld-wlm: compare the resolved paths.
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$(readlink -f "$2")" ] || return 1
  echo "$pid"
}

# until_true SECONDS COMMAND...: retry COMMAND every 0.2 s for at most SECONDS.
until_true() {
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  say "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # their postinst scripts try to start the services; without an init system that is refused, harmlessly
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

start_munged() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge /var/lib/munge
  install -d -o munge -g munge -m 0755 /run/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
  alive "$MUNGED_PID" /usr/sbin/munged >/dev/null && return 0
  rm -f "$MUNGED_PID" /run/munge/munge.socket.2*
  runuser -u munge -- /usr/sbin/munged || die "munged did not start; see /var/log/munge/munged.log"
  until_true 10 bash -c 'munge -n | unmunge' || die "munged does not answer; see /var/log/munge/munged.log"
}

# The node's CPUs, sockets, cores, threads and memory as slurmd measures them (`slurmd -C`).
write_conf() {
  local node hardware memory
  node=$(hostname -s)
  hardware=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=[0-9]*//' -e 's/ UpTime=.*//')
  memory=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  memory=$((memory * 9 / 10))  # what slurmd finds later may be a little less: it would mark the node invalid
  mkdir -p /etc/slurm
  cat >"$CONF.new" <<EOF
# Written by .ci/slurm.sh: one node, no cgroups, no accounting, no mail.
ClusterName=local
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
# a requeued job waits this long (Slurm's default: 120 s) for its revoked credential to expire
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmUser=slurm
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$SLURMCTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=5,sched_interval=5
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
MaxArraySize=$MAX_ARRAY_SIZE
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 $hardware RealMemory=$memory State=UNKNOWN
EOF
  local default=YES partition
  for partition in $PARTITIONS; do
    echo "PartitionName=$partition Nodes=ALL Default=$default MaxTime=INFINITE State=UP" >>"$CONF.new"
    default=NO
  done
  if cmp -s "$CONF.new" "$CONF"; then
    rm "$CONF.new"
    return 0
  fi
  mv "$CONF.new" "$CONF" && chmod 0644 "$CONF"
  # other settings under running daemons: restart them (a node or partition change needs it)
  if alive "$SLURMCTLD_PID" /usr/sbin/slurmctld >/dev/null || alive "$SLURMD_PID" /usr/sbin/slurmd >/dev/null; then
    say "slurm.conf changed: restarting slurmctld and slurmd"
    stop_daemon slurmd "$SLURMD_PID" /usr/sbin/slurmd
    stop_daemon slurmctld "$SLURMCTLD_PID" /usr/sbin/slurmctld
  fi
}

start_slurm() {
  install -d -o slurm -g slurm -m 0755 "$STATE" "$LOGS"
  install -d -m 0755 "$SPOOL"
  if ! alive "$SLURMCTLD_PID" /usr/sbin/slurmctld >/dev/null; then
    rm -f "$SLURMCTLD_PID"
    # -c: no state from an earlier cluster (its jobs, its name): every start begins empty
    /usr/sbin/slurmctld -c || die "slurmctld did not start: $(tail -2 "$LOGS/slurmctld.log")"
    until_true 30 bash -c 'scontrol ping | grep -q "is UP"' \
      || die "slurmctld does not answer; see $LOGS/slurmctld.log"
  fi
  if ! alive "$SLURMD_PID" /usr/sbin/slurmd >/dev/null; then
    rm -f "$SLURMD_PID"
    /usr/sbin/slurmd || die "slurmd did not start: $(tail -2 "$LOGS/slurmd.log")"
    until_true 10 test -s "$SLURMD_PID" || die "slurmd wrote no PID file; see $LOGS/slurmd.log"
  fi
}

wait_idle() {
  local node state end=$((SECONDS + 30))
  node=$(hostname -s)
  while :; do
    state=$(sinfo -h -N -n "$node" -o %T 2>/dev/null | head -1)
    case $state in
      idle | mixed | allocated | completing) return 0 ;;
      inval*) die "node $node is invalid: $(sinfo -h -N -n "$node" -o %E); see $LOGS/slurmd.log" ;;
      *down* | *drain* | *fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    [ "$SECONDS" -lt "$end" ] || die "node $node is '$state' after 30 s; see $LOGS/slurmd.log"
    sleep 0.3
  done
}

# stop_daemon NAME PIDFILE EXE: SIGTERM the PID the file names (when it is EXE), SIGKILL after 10 s.
stop_daemon() {
  local pid
  if pid=$(alive "$2" "$3"); then
    kill -TERM "$pid" 2>/dev/null || true
    until_true 10 bash -c "[ ! -d /proc/$pid ]" || { say "$1 ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
    say "stopped $1 (pid $pid)"
  fi
  rm -f "$2"
}

cancel_jobs() {
  alive "$SLURMCTLD_PID" /usr/sbin/slurmctld >/dev/null || return 0
  [ -n "$(squeue -h -o %A 2>/dev/null)" ] || return 0
  scancel $(squeue -h -o %A | sort -u) 2>/dev/null || true
  until_true 20 bash -c '[ -z "$(squeue -h -o %A)" ]' || say "jobs still listed after 20 s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
}

case $ACTION in
  start)
    [ "$(id -u)" = 0 ] || die "start needs root (it installs packages and starts daemons)"
    begin=$SECONDS
    install_packages
    start_munged
    write_conf
    start_slurm
    wait_idle
    say "up in $((SECONDS - begin)) s: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | head -1), MaxArraySize=$MAX_ARRAY_SIZE"
    ;;
  stop)
    cancel_jobs
    stop_daemon slurmd "$SLURMD_PID" /usr/sbin/slurmd
    stop_daemon slurmctld "$SLURMCTLD_PID" /usr/sbin/slurmctld
    stop_daemon munged "$MUNGED_PID" /usr/sbin/munged
    say "stopped"
    ;;
  *) die "usage: .ci/slurm.sh start|stop" ;;
esac
