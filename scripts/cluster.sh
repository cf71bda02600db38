#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests and for trying hydra/launcher=slurm (as root):
#   scripts/cluster.sh start    install what is missing (Debian's slurmctld slurmd slurm-client munge), write the
#                               config, start munged, slurmctld and slurmd, wait until the node is idle
#   scripts/cluster.sh start --accounting
#                               the same with an accounting database (slurmdbd on a MariaDB of its own), so that
#                               sacct works as on most real clusters
#   scripts/cluster.sh stop     stop what `start` started, by the PIDs it kept (slurmd first)
#   scripts/cluster.sh status   the daemons, and sinfo
#   scripts/cluster.sh env      the line that points Slurm's commands at it: export SLURM_CONF=...
# Everything it writes is in $TASK1_CLUSTER_DIR (default /tmp/task1-cluster): slurm.conf, state, logs, PIDs.
# /etc/slurm is left alone; the daemons talk over 127.0.0.1.
set -euo pipefail

dir=${TASK1_CLUSTER_DIR:-/tmp/task1-cluster}
conf=$dir/slurm.conf
export SLURM_CONF=$conf

say() { echo "cluster: $*" >&2; }
alive() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install() {
  local want=(slurmctld slurmd slurm-client munge) missing=()
  [ "$accounting" = 1 ] && want+=(slurmdbd mariadb-server)
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return
  [ "$(id -u)" = 0 ] || { say "${missing[*]} not installed, and installing needs root (apt-get)"; exit 1; }
  say "installing ${missing[*]} (apt-get, about 30 s)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_conf() {
  local host node cpus mem
  host=$(hostname -s)
  node=$(slurmd -C | head -n1)  # NodeName=<host> CPUs=... RealMemory=...: what this machine has
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  # no cgroups in a container: processes are tracked by their parents, tasks are not bound
  cat >"$conf" <<EOF
ClusterName=task1
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# a requeued job waits cred_expire + 1 s before it runs again (default 120 s); a test cluster needs no such wait
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
$(if [ "$accounting" = 1 ]; then
    printf 'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=127.0.0.1\n'
  else echo "AccountingStorageType=accounting_storage/none"; fi)
ReturnToService=2
MailProg=/bin/true
# a small test cluster: pending jobs (a requeued one) are looked at every 2 s, not every 60 s; ended jobs stay
# in squeue for 10 minutes; a job's processes get 10 s after SIGTERM
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
MinJobAge=600
DefMemPerCPU=1000
KillWait=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd.daemon.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 $(sed 's/^NodeName=[^ ]* //; s/RealMemory=[0-9]*//' <<<"$node") RealMemory=$((mem * 9 / 10))
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=$host MaxTime=1 State=UP
EOF
  say "$conf: node $host, $cpus CPUs, $((mem * 9 / 10)) MB"
}

start_munge() {
  munge_ok && return
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  [ -f /etc/munge/munge.key ] || { mungekey --create --keyfile /etc/munge/munge.key; chown munge: /etc/munge/munge.key; }
  setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F >"$dir/log/munged.out" 2>&1 &
  echo $! >"$dir/munged.pid"
  for _ in $(seq 50); do munge_ok && return; sleep 0.1; done
  say "munged did not start: see $dir/log/munged.out"; exit 1
}

start_accounting() {
  # MariaDB of its own (its data in $dir/mysql, on 127.0.0.1 only), then slurmdbd on it
  if [ ! -d "$dir/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$dir/mysql" --auth-root-authentication-method=socket \
      >"$dir/log/mariadb-install.log" 2>&1
  fi
  mariadbd --user=root --datadir="$dir/mysql" --socket="$dir/mysql.sock" --bind-address=127.0.0.1 --port=3306 \
    --pid-file="$dir/mariadb.daemon.pid" --log-error="$dir/log/mariadb.log" >/dev/null 2>&1 &
  echo $! >"$dir/mariadbd.pid"
  for _ in $(seq 100); do mariadb --socket="$dir/mysql.sock" -e "select 1" >/dev/null 2>&1 && break; sleep 0.1; done
  mariadb --socket="$dir/mysql.sock" -e "create user if not exists 'slurm'@'localhost' identified by 'task1';
    create user if not exists 'slurm'@'127.0.0.1' identified by 'task1';
    grant all on slurm_acct_db.* to 'slurm'@'localhost'; grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';" \
    || { say "MariaDB did not start: see $dir/log/mariadb.log"; exit 1; }
  printf '%s\n' AuthType=auth/munge DbdHost=localhost DbdAddr=127.0.0.1 SlurmUser=root \
    StorageType=accounting_storage/mysql StorageHost=127.0.0.1 StoragePort=3306 StorageUser=slurm \
    StoragePass=task1 StorageLoc=slurm_acct_db "PidFile=$dir/slurmdbd.daemon.pid" "LogFile=$dir/log/slurmdbd.log" \
    >"$dir/slurmdbd.conf"
  chmod 600 "$dir/slurmdbd.conf"
  slurmdbd -D >"$dir/log/slurmdbd.out" 2>&1 &
  echo $! >"$dir/slurmdbd.pid"
  for _ in $(seq 100); do sacctmgr -n list cluster >/dev/null 2>&1 && return; sleep 0.2; done
  say "slurmdbd did not start: see $dir/log/slurmdbd.log"; exit 1
}

start() {
  install
  if alive slurmctld && alive slurmd && sinfo -h >/dev/null 2>&1; then
    if [ "$(grep -c accounting_storage/slurmdbd "$conf")" = "$accounting" ]; then say "already running ($conf)"; return; fi
    say "already running, $([ "$accounting" = 1 ] && echo without || echo with) accounting: stop it first"; exit 1
  fi
  [ "$(id -u)" = 0 ] || { say "starting the daemons needs root"; exit 1; }
  mkdir -p "$dir/log"
  write_conf
  start_munge
  if [ "$accounting" = 1 ]; then start_accounting; fi
  slurmctld -D -i >"$dir/log/slurmctld.out" 2>&1 &  # -i: start even if a killed instance left its state damaged
  echo $! >"$dir/slurmctld.pid"
  slurmd -D >"$dir/log/slurmd.out" 2>&1 &
  echo $! >"$dir/slurmd.pid"
  for _ in $(seq 150); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1)
    case "$state" in idle|mix|alloc)
      [ "$accounting" = 1 ] && { sacctmgr -i add cluster task1 >/dev/null 2>&1 || true; }
      say "up: node $(hostname -s) is $state$([ "$accounting" = 1 ] && echo ', with accounting')"; return ;;
    esac
    alive slurmctld && alive slurmd || break
    sleep 0.2
  done
  say "the cluster did not come up (node state '${state:-none}'): see $dir/log/"; tail -n 5 "$dir"/log/*.log >&2 || true
  stop; exit 1
}

stop() {
  for d in slurmd slurmctld slurmdbd mariadbd munged; do
    if alive "$d"; then
      pid=$(cat "$dir/$d.pid"); kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      say "stopped $d ($pid)"
    fi
    rm -f "$dir/$d.pid"
  done
}

status() {
  for d in munged mariadbd slurmdbd slurmctld slurmd; do
    if alive "$d"; then echo "$d: running ($(cat "$dir/$d.pid"))"; else echo "$d: not running"; fi
  done
  sinfo 2>&1 || true
}

accounting=0
[ "${2:-}" = --accounting ] && accounting=1
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) echo "usage: scripts/cluster.sh start|stop|status|env" >&2; exit 2 ;;
esac
