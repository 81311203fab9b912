#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for trying the workflow's Slurm profile
# (docs/cluster.md).  Debian/Ubuntu, run as root, no systemd needed: the daemons are started
# directly and everything they write lives under one directory this script owns.
#
#   scripts/slurm/local-cluster.sh up       # install (once), configure, start, wait until the node is idle
#   scripts/slurm/local-cluster.sh status   # daemons, sinfo, recent jobs (sacct)
#   scripts/slurm/local-cluster.sh env      # print the export line for Slurm's client commands
#   scripts/slurm/local-cluster.sh down     # stop every daemon this script started
#   scripts/slurm/local-cluster.sh purge    # down, then delete the directory (state, logs, database)
#
# What runs (all as root, all on 127.0.0.1):
#   munged      authentication (its own key, socket and log under $DIR/munge)
#   mariadbd    the accounting database (port $EV_SLURM_DB_PORT, datadir $DIR/mysql)
#   slurmdbd    accounting daemon, so that `sacct` answers: the Snakemake SLURM executor
#               queries job states with sacct (squeue only when MinJobAge is long enough)
#               and guesses the account from sacct
#   slurmctld   the controller; select/cons_tres (CPUs, memory and GPUs are consumable)
#   slurmd      the one compute node: CPUs and RealMemory as `slurmd -C` reads them; GPUs
#               (nvidia-smi -L) declared as gres when there are any
# Process tracking is proctrack/cgroup (cgroup v1 freezer) when this machine has it, as on
# most production clusters (processes left behind by a job step are killed when the step
# ends), else proctrack/linuxproc; EV_SLURM_PROCTRACK=cgroup|linuxproc forces one.
#
# Clients need SLURM_CONF=$DIR/etc/slurm.conf (`eval "$(scripts/slurm/local-cluster.sh env)"`).
# The one file outside $DIR: /etc/slurm/slurm.conf, a symlink to it (only when the machine has no
# slurm.conf of its own), because `srun` inside a job runs without SLURM_CONF; `purge` removes it.
set -euo pipefail

DIR=${EV_SLURM_DIR:-/var/tmp/emotion-vectors-slurm}
DB_PORT=${EV_SLURM_DB_PORT:-3307}
CLUSTER=${EV_SLURM_CLUSTER:-evlocal}
PARTITION=${EV_SLURM_PARTITION:-local}
ACCOUNT=${EV_SLURM_ACCOUNT:-emotion}
HOST=$(hostname -s)
export SLURM_CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket.2

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
    local missing=()
    for bin in munged slurmctld slurmd slurmdbd sinfo sacct mariadbd; do
        command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages present (slurm $(dpkg-query -W -f '${Version}' slurmctld 2>/dev/null))"
        return
    fi
    log "installing slurm-wlm, munge, mariadb (missing: ${missing[*]})"
    [ "$(id -u)" = 0 ] || die "installing needs root"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client slurmdbd munge \
        mariadb-server mariadb-client >/dev/null
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

choose_proctrack() {
    local want=${EV_SLURM_PROCTRACK:-auto}
    if [ "$want" = auto ]; then
        if [ -d /sys/fs/cgroup/freezer ] && [ -w /sys/fs/cgroup/freezer ]; then want=cgroup; else want=linuxproc; fi
    fi
    echo "$want"
}

write_config() {
    mkdir -p "$DIR"/{etc,log,run,munge,state/ctld,state/d,mysql}
    chmod 0755 "$DIR"
    chmod 0700 "$DIR/munge"
    # The node as slurmd detects it: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105".
    local node cpus mem gres_line="" gres_node="" proctrack
    node=$(/usr/sbin/slurmd -C | head -1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    # leave 10% (at most 2 GiB) of the memory to the daemons and the Snakemake process
    local reserve=$(( mem / 10 )); [ "$reserve" -gt 2048 ] && reserve=2048
    mem=$(( mem - reserve ))
    local ngpu=0
    if command -v nvidia-smi >/dev/null 2>&1; then ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); fi
    if [ "$ngpu" -gt 0 ]; then
        gres_line="GresTypes=gpu"
        gres_node="Gres=gpu:$ngpu"
        : >"$DIR/etc/gres.conf"
        for ((i = 0; i < ngpu; i++)); do echo "NodeName=$HOST Name=gpu File=/dev/nvidia$i" >>"$DIR/etc/gres.conf"; done
    fi
    proctrack=$(choose_proctrack)
    cat >"$SLURM_CONF" <<EOF
# Written by scripts/slurm/local-cluster.sh: a one-node cluster on this machine.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
$gres_line
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
JobCompType=jobcomp/none
# sacct shows the job comment (the Snakemake plugin writes the rule and wildcards there)
AccountingStoreFlags=job_comment
# Finished jobs stay visible to squeue for 10 min (sacct has them for good).
MinJobAge=600
ReturnToService=2
SchedulerParameters=sched_interval=5
InactiveLimit=0
KillWait=10
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$proctrack" = cgroup ]; then
        cat >"$DIR/etc/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    else
        rm -f "$DIR/etc/cgroup.conf"
    fi
    cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdAddr=127.0.0.1
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm-local
StorageLoc=slurm_acct_db
EOF
    chmod 0600 "$DIR/etc/slurmdbd.conf"
    log "wrote $SLURM_CONF (node $HOST: CPUs=$cpus RealMemory=$mem GPUs=$ngpu, proctrack/$proctrack)"
}

start_munge() {
    if pid_alive "$DIR/run/munged.pid"; then log "munged running"; return; fi
    [ -f "$DIR/munge/munge.key" ] || mungekey --create --keyfile="$DIR/munge/munge.key" 2>/dev/null \
        || dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    chmod 0600 "$DIR/munge/munge.key"
    munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$DIR/run/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" --force
    for _ in $(seq 50); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
    munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null || die "munge does not work (see $DIR/log/munged.log)"
    log "munged started"
}

mysql_cmd() { mariadb --protocol=socket -S "$DIR/mysql/mysqld.sock" -u root "$@"; }

start_db() {
    if pid_alive "$DIR/run/mariadbd.pid"; then log "mariadbd running"; return; fi
    if [ ! -d "$DIR/mysql/data/mysql" ]; then
        mariadb-install-db --user=root --datadir="$DIR/mysql/data" --auth-root-authentication-method=socket \
            >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
    fi
    # innodb_lock_wait_timeout as the Slurm docs recommend; a small buffer pool is plenty here
    nohup mariadbd --user=root --datadir="$DIR/mysql/data" --socket="$DIR/mysql/mysqld.sock" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DIR/run/mariadbd.pid" \
        --log-error="$DIR/log/mariadbd.log" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
        >/dev/null 2>&1 &
    for _ in $(seq 100); do mysql_cmd -e 'select 1' >/dev/null 2>&1 && break; sleep 0.2; done
    mysql_cmd -e 'select 1' >/dev/null 2>&1 || die "mariadbd did not start (see $DIR/log/mariadbd.log)"
    mysql_cmd -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local';
                  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    log "mariadbd started (port $DB_PORT)"
}

start_slurmdbd() {
    if pid_alive "$DIR/run/slurmdbd.pid"; then log "slurmdbd running"; return; fi
    # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF
    /usr/sbin/slurmdbd 2>>"$DIR/log/slurmdbd.log" || die "slurmdbd failed (see $DIR/log/slurmdbd.log)"
    for _ in $(seq 100); do pid_alive "$DIR/run/slurmdbd.pid" && (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.2; done
    pid_alive "$DIR/run/slurmdbd.pid" || die "slurmdbd did not start (see $DIR/log/slurmdbd.log)"
    log "slurmdbd started"
}

register_cluster() {
    # Cluster, account and user in the accounting database (idempotent).
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" Description="emotion-vectors" Organization=local >/dev/null 2>&1 || true
    sacctmgr -i -Q add user "$(id -un)" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true
}

start_slurm() {
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        /usr/sbin/slurmctld 2>>"$DIR/log/slurmctld.log" || die "slurmctld failed (see $DIR/log/slurmctld.log)"
        log "slurmctld started"
    else
        log "slurmctld running"
    fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        /usr/sbin/slurmd 2>>"$DIR/log/slurmd.log" || die "slurmd failed (see $DIR/log/slurmd.log)"
        log "slurmd started"
    else
        log "slurmd running"
    fi
}

link_default_conf() {
    # Commands inside a job step (the jobstep plugin's `srun`) run with the SLURM_* variables
    # stripped, SLURM_CONF included, so they look at the default path.  Link it to ours unless
    # the machine has a slurm.conf of its own (then set EV_SLURM_DIR's config up there by hand).
    local default=/etc/slurm/slurm.conf
    if [ -L "$default" ] || [ ! -e "$default" ]; then
        mkdir -p /etc/slurm
        ln -sfn "$SLURM_CONF" "$default"
    elif [ "$(readlink -f "$default")" != "$(readlink -f "$SLURM_CONF")" ]; then
        log "warning: $default exists and is not ours: commands inside jobs will use it"
    fi
}

unlink_default_conf() {
    local default=/etc/slurm/slurm.conf
    if [ -L "$default" ] && [ "$(readlink "$default")" = "$SLURM_CONF" ]; then rm -f "$default"; fi
}

wait_idle() {
    local state=""
    for _ in $(seq 120); do
        state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null | head -1 || true)
        case "$state" in
            idle|mixed|allocated) log "node $HOST is $state"; return 0 ;;
            down*|drain*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    die "node $HOST not idle after 120 s (state: ${state:-none}); see $DIR/log/slurmd.log and slurmctld.log"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root (it starts the Slurm daemons)"
    install_packages
    write_config
    link_default_conf
    start_munge
    start_db
    start_slurmdbd
    register_cluster
    start_slurm
    register_cluster
    scontrol reconfigure >/dev/null 2>&1 || true  # a running controller rereads a rewritten slurm.conf
    wait_idle
    sinfo
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_pidfile() {
    local name=$1 file=$DIR/run/$1.pid
    if pid_alive "$file"; then
        local pid; pid=$(cat "$file")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        log "$name (pid $pid) stopped"
    fi
    rm -f "$file"
}

down() {
    if [ -f "$SLURM_CONF" ] && pid_alive "$DIR/run/slurmctld.pid"; then
        scancel --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pidfile slurmd
    stop_pidfile slurmctld
    stop_pidfile slurmdbd
    stop_pidfile mariadbd
    stop_pidfile munged
}

status() {
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid_alive "$DIR/run/$name.pid"; then echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"; else echo "$name: stopped"; fi
    done
    if pid_alive "$DIR/run/slurmctld.pid"; then
        sinfo
        sacct -X --starttime now-1days -o JobID,JobName%20,Partition,AllocCPUS,ReqMem,AllocTRES%40,State,Elapsed | tail -20
    fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    purge) down; unlink_default_conf; rm -rf "$DIR"; log "removed $DIR and the /etc/slurm/slurm.conf link" ;;
    status) status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    *) echo "usage: $0 up|down|status|env|purge" >&2; exit 2 ;;
esac
