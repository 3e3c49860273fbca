#!/usr/bin/env bash
# A real single-node Slurm on localhost (Debian's slurm-wlm: slurmctld + slurmd, no systemd), for
# the Slurm test and for trying the sbatch scripts on one machine (BUILD-NOTES §10).
#   launch/slurm-local.sh start DIR   writes DIR/slurm.conf, starts both daemons, waits for the node
#   launch/slurm-local.sh stop DIR    cancels jobs, shuts the daemons down
# Then: export SLURM_CONF=DIR/slurm.conf; sbatch ...
# The node declares 8 CPUs whatever the machine has, so multi-task jobs schedule on 2 cores.
set -euo pipefail
cmd=${1:?usage: slurm-local.sh start|stop DIR}; dir=$(realpath -m "${2:?usage: slurm-local.sh start|stop DIR}")
export SLURM_CONF=$dir/slurm.conf
for b in slurmctld slurmd sbatch scontrol sinfo; do
  command -v $b > /dev/null || { echo "slurm-local: $b not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 1; }
done

stop() {
  [ -f "$SLURM_CONF" ] || return 0
  scancel --full --quiet --user="$(id -un)" 2> /dev/null || true
  scontrol shutdown 2> /dev/null || true
  for f in "$dir/slurmctld.pid" "$dir/slurmd.pid"; do
    [ -f "$f" ] || continue
    p=$(cat "$f"); for _ in $(seq 50); do kill -0 "$p" 2> /dev/null || break; sleep 0.2; done
    kill -9 "$p" 2> /dev/null || true
  done
}

case $cmd in
start)
  stop
  rm -rf "$dir/state" "$dir/spool" "$dir/log"; mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  h=$(hostname -s); mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  cat > "$SLURM_CONF" <<CONF
ClusterName=local
SlurmctldHost=$h(127.0.0.1)
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=pmix
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=600
MailProg=/bin/true
AuthInfo=cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=10
SlurmdParameters=config_overrides
NodeName=$h NodeAddr=127.0.0.1 CPUs=8 RealMemory=${mem:-4000} State=UNKNOWN
PartitionName=debug Nodes=$h Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 100); do
    sinfo -h -o %T 2> /dev/null | grep -q idle && { echo "slurm-local: node $h idle (SLURM_CONF=$SLURM_CONF)"; exit 0; }
    sleep 0.2
  done
  echo "slurm-local: the node did not come up" >&2; sinfo -R >&2 || true
  tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  exit 1 ;;
stop) stop; echo "slurm-local: stopped" ;;
*) echo "usage: slurm-local.sh start|stop DIR" >&2; exit 2 ;;
esac
