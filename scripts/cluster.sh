#!/usr/bin/env bash
# A two-node SLURM cluster on this machine, for the cluster tests and for trying hydra/launcher=slurm (as root):
#   scripts/cluster.sh start    install what is missing (Debian's slurmctld slurmd slurm-client munge), write the
#                               config, start munged, slurmctld and one slurmd per node (n1 and n2, both on this
#                               machine, ports 17001-17002), wait until both nodes are idle
#   scripts/cluster.sh start --accounting
#                               the same with an accounting database (slurmdbd on a MariaDB of its own), so that
#                               sacct works as on most real clusters
#   scripts/cluster.sh stop     stop what `start` started, by the PIDs it kept (the slurmds first)
#   scripts/cluster.sh status   the daemons, and sinfo
#   scripts/cluster.sh env      the line that points Slurm's commands at it: export SLURM_CONF=...
#   scripts/cluster.sh lose n1  a node lost: its slurmd and its jobs' processes killed (SIGKILL, no handler
#                               runs), the node marked down; SLURM requeues its jobs onto the other node
#   scripts/cluster.sh restore n1   the lost node back: its slurmd started again, the node resumed
# Everything it writes is in $TASK1_CLUSTER_DIR (default /tmp/task1-cluster): slurm.conf, state, logs, PIDs. It
# runs as root and kills the PIDs it keeps there, so that folder must be the user's own and writable by no one
# else, and a PID is killed only if its process is the daemon its file names. /etc/slurm is left alone; the
# daemons talk over 127.0.0.1. The node names resolve to 127.0.0.1 (a line in /etc/hosts while the cluster runs),
# as a cluster's node names do: Lightning's DDP takes its rank 0's address from the job's node list.
set -euo pipefail

dir=${TASK1_CLUSTER_DIR:-/tmp/task1-cluster}
conf=$dir/slurm.conf
export SLURM_CONF=$conf
NODES=(n1 n2)
HOSTS_LINE="127.0.0.1 ${NODES[*]}  # task1 test cluster in $dir (scripts/cluster.sh)"

say() { echo "cluster: $*" >&2; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

safe_dir() {
  # root writes here and kills the PIDs it reads here: the folder must be ours, and no one else's to write in
  [ -e "$dir" ] || [ -L "$dir" ] || { mkdir -p -m 755 "$dir"; return; }
  local owner mode
  read -r owner mode < <(stat -c '%u %a' "$dir")
  if [ -L "$dir" ] || [ ! -d "$dir" ] || [ "$owner" != "$(id -u)" ] || (( 8#$mode & 8#022 )); then
    say "$dir is not a folder of $(id -un)'s that only $(id -un) can write (owner $(stat -c %U "$dir"), mode" \
      "$mode$([ -L "$dir" ] && echo ', a link')): remove it, or set TASK1_CLUSTER_DIR to a folder of your own"
    exit 1
  fi
}

# the PID kept for daemon $1 (slurmd-n1 is a slurmd), if that process is alive and really is that daemon
pid_of() {
  local pid exe
  [ -f "$dir/$1.pid" ] || return 1
  pid=$(cat "$dir/$1.pid")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  # its command name, and its program (Debian's is /usr/sbin/slurmd-wlm behind the slurmd alternative)
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${1%%-*}" ] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ "$(basename "$exe")" == "${1%%-*}"* ]] || return 1
  echo "$pid"
}
alive() { pid_of "$1" >/dev/null; }

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
  mkdir -p "$dir/state" "$dir/spool/n1" "$dir/spool/n2" "$dir/log"
  # no cgroups in a container: processes are tracked by their parents, tasks are not bound
  cat >"$conf" <<EOF
ClusterName=task1
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmctldPort=6817
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
# in squeue for 10 minutes; a job's processes get 10 s after SIGTERM; a node silent for 30 s is down
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
MinJobAge=600
DefMemPerCPU=1000
KillWait=10
SlurmdTimeout=30
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.daemon.pid
SlurmdPidFile=$dir/slurmd-%n.daemon.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# two nodes, a slurmd each, both on this machine: each offers all of its CPUs (they share them) and half its memory
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=[17001-17002] $(sed 's/^NodeName=[^ ]* //; s/RealMemory=[0-9]*//' <<<"$node") RealMemory=$((mem * 9 / 20))
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=n[1-2] MaxTime=1 State=UP
EOF
  say "$conf: nodes ${NODES[*]} on $host, $cpus CPUs and $((mem * 9 / 20)) MB each"
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

name_nodes() {
  grep -qxF "$HOSTS_LINE" /etc/hosts || echo "$HOSTS_LINE" >>/etc/hosts
}

unname_nodes() {
  # rewritten in place: /etc/hosts may be a mount point, which a rename cannot replace
  grep -qxF "$HOSTS_LINE" /etc/hosts || return 0
  local kept
  kept=$(grep -vxF "$HOSTS_LINE" /etc/hosts)
  printf '%s\n' "$kept" >/etc/hosts
}

start_slurmd() {
  slurmd -D -N "$1" >"$dir/log/slurmd-$1.out" 2>&1 &
  echo $! >"$dir/slurmd-$1.pid"
}

all_up() { alive slurmctld && alive slurmd-n1 && alive slurmd-n2; }

start() {
  install
  if all_up && sinfo -h >/dev/null 2>&1; then
    [ "$(id -u)" != 0 ] || name_nodes
    if [ "$(grep -c accounting_storage/slurmdbd "$conf")" = "$accounting" ]; then say "already running ($conf)"; return; fi
    say "already running, $([ "$accounting" = 1 ] && echo without || echo with) accounting: stop it first"; exit 1
  fi
  [ "$(id -u)" = 0 ] || { say "starting the daemons needs root"; exit 1; }
  stop  # what is left of an earlier start: a daemon that died, or the one-node cluster of before
  mkdir -p "$dir/log"
  write_conf
  name_nodes
  start_munge
  if [ "$accounting" = 1 ]; then start_accounting; fi
  slurmctld -D -i >"$dir/log/slurmctld.out" 2>&1 &  # -i: start even if a killed instance left its state damaged
  echo $! >"$dir/slurmctld.pid"
  for n in "${NODES[@]}"; do start_slurmd "$n"; done
  local states=""
  for _ in $(seq 150); do
    if [ "$(sinfo -h -N -t idle,mix,alloc -o %N 2>/dev/null | sort -u | wc -l)" = "${#NODES[@]}" ]; then
      states=$(sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ')
      [ "$accounting" = 1 ] && { sacctmgr -i add cluster task1 >/dev/null 2>&1 || true; }
      say "up: nodes ${NODES[*]} are ${states% }$([ "$accounting" = 1 ] && echo ', with accounting')"; return
    fi
    states=$(sinfo -h -N -o %t 2>/dev/null | sort -u | tr '\n' ' ')
    all_up || break
    sleep 0.2
  done
  say "the cluster did not come up (node states '${states% }'): see $dir/log/"; tail -n 5 "$dir"/log/*.log >&2 || true
  stop; exit 1
}

stop_daemon() {
  local pid
  if pid=$(pid_of "$1"); then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped $1 ($pid)"
  elif [ -f "$dir/$1.pid" ]; then
    say "$1: $dir/$1.pid names no live $1 (left alone)"
  fi
  rm -f "$dir/$1.pid"
}

stop() {
  # slurmd: the one-node cluster of before
  for d in slurmd-n1 slurmd-n2 slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon "$d"; done
  [ "$(id -u)" != 0 ] || unname_nodes
}

status() {
  for d in munged mariadbd slurmdbd slurmctld slurmd-n1 slurmd-n2; do
    if alive "$d"; then echo "$d: running ($(pid_of "$d"))"; else echo "$d: not running"; fi
  done
  sinfo 2>&1 || true
}

node() { [[ " ${NODES[*]} " == *" ${1:-} "* ]] || { say "no node '${1:-}': the nodes are ${NODES[*]}"; exit 2; }; }

lose() {
  # as a machine that dies: its slurmd and every process of the jobs it runs, at once, with no handler run
  local n=$1 pid jobs p j
  jobs=$(squeue -h -w "$n" -t running,completing -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if pid=$(pid_of "slurmd-$n"); then kill -9 "$pid"; fi
  for p in /proc/[0-9]*; do
    for j in $jobs; do
      if { tr '\0' '\n' <"$p/environ" | grep -qx "SLURM_JOB_ID=$j"; } 2>/dev/null \
        || { tr '\0' ' ' <"$p/cmdline" | grep -q "^slurmstepd: \[$j\."; } 2>/dev/null; then
        kill -9 "${p#/proc/}" 2>/dev/null || true
      fi
    done
  done
  rm -f "$dir/slurmd-$n.pid"
  scontrol update nodename="$n" state=down reason="lost"
  say "lost $n (its jobs: ${jobs:-none}): marked down"
}

restore() {
  alive "slurmd-$1" || start_slurmd "$1"
  for _ in $(seq 100); do
    scontrol update nodename="$1" state=resume 2>/dev/null || true
    case "$(sinfo -h -n "$1" -o %t)" in idle|mix|alloc) say "restored $1"; return ;; esac
    sleep 0.2
  done
  say "$1 did not come back: $(sinfo -h -n "$1" -o '%t %E')"; exit 1
}

accounting=0
[ "${2:-}" = --accounting ] && accounting=1
case "${1:-}" in
  start) safe_dir; start ;;
  stop) safe_dir; stop ;;
  status) safe_dir; status ;;
  env) echo "export SLURM_CONF=$conf" ;;
  lose) safe_dir; node "${2:-}"; lose "$2" ;;
  restore) safe_dir; node "${2:-}"; restore "$2" ;;
  *) echo "usage: scripts/cluster.sh start [--accounting] | stop | status | env | lose <node> | restore <node>" >&2
     exit 2 ;;
esac
