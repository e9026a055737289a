#!/bin/bash
# A single-node Slurm "cluster" on 127.0.0.1 for lrt's integration tests.
#
#   scripts/testbed-slurm.sh [VENV]        (called by `make testbed` / `make test`)
#
# Installs munge + slurmctld + slurmd + slurm-client from Debian when missing,
# writes a slurm.conf for one node on loopback, starts munged, slurmctld and
# `slurmd -N localhost` directly (no systemd) when they are not running, and
# waits until `sinfo` shows the node idle.  Idempotent and quick when all is up;
# a changed config restarts the daemons.  Needs root (Debian/Ubuntu).
# Stop with scripts/stop-slurm.sh.
#
# Knobs: LRT_SLURM_TOP (state/log/pid dir, default /tmp/lrt-testbed/slurm),
#        LRT_SLURM_CPUS (CPUs advertised; default 4: more than nproc is allowed,
#        so a few one-cpu pilots run side by side on a small CI machine),
#        LRT_SLURM_SKIP=1 (do nothing: e.g. on a machine with a real Slurm).
set -euo pipefail
[ "${LRT_SLURM_SKIP:-0}" = 1 ] && { echo "testbed-slurm: skipped (LRT_SLURM_SKIP=1)"; exit 0; }
TOP=${LRT_SLURM_TOP:-/tmp/lrt-testbed/slurm}
ETC=/etc/slurm
NODE=localhost
T0=$(date +%s)
say() { echo "testbed-slurm: $*"; }

if [ "$(id -u)" != 0 ]; then
    if command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; then
        say "not root; using the Slurm that is already there"; exit 0
    fi
    say "not root and no working Slurm: the Slurm tests will be skipped"; exit 0
fi

alive() {  # alive PIDFILE COMM
    local pid; pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# ------------------------------------------------------------------ packages
missing=()
command -v munged >/dev/null || missing+=(munge)
command -v slurmctld >/dev/null || missing+=(slurmctld)
command -v slurmd >/dev/null || missing+=(slurmd)
command -v sbatch >/dev/null || missing+=(slurm-client)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # keep the packages' init scripts from starting daemons (no systemd here)
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
    fi
    # other installers (other testbed scripts) may hold the dpkg lock: wait for it
    apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    say "installed ${missing[*]}"
fi

# ------------------------------------------------------------------ munge
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid munged; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 1 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    say "munged started"
fi
munge -n </dev/null | unmunge >/dev/null

# ------------------------------------------------------------------ slurm.conf
mkdir -p "$TOP"/{state,spool,log,run} "$ETC"
NPROC=$(nproc)
CPUS=${LRT_SLURM_CPUS:-4}
OVERRIDE=""
[ "$CPUS" -gt "$NPROC" ] && OVERRIDE="SlurmdParameters=config_overrides"
MEM=$(( $(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p') * 8 / 10 ))
CONF="# written by lrt scripts/testbed-slurm.sh -- a one-node test cluster on loopback
ClusterName=lrttest
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation=$TOP/state
SlurmdSpoolDir=$TOP/spool/%n
SlurmctldPidFile=$TOP/run/slurmctld.pid
SlurmdPidFile=$TOP/run/slurmd.pid
SlurmctldLogFile=$TOP/log/slurmctld.log
SlurmdLogFile=$TOP/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MessageTimeout=10
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
$OVERRIDE
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
changed=0
if [ ! -f "$ETC/slurm.conf" ] || [ "$(cat "$ETC/slurm.conf")" != "$CONF" ]; then
    printf '%s\n' "$CONF" > "$ETC/slurm.conf"
    changed=1
fi

# ------------------------------------------------------------------ daemons
if [ $changed = 1 ]; then
    for d in slurmd slurmctld; do
        alive "$TOP/run/$d.pid" $d && kill "$(cat "$TOP/run/$d.pid")"
    done
    for _ in $(seq 1 100); do
        alive "$TOP/run/slurmd.pid" slurmd || alive "$TOP/run/slurmctld.pid" slurmctld || break
        sleep 0.1
    done
fi
if ! alive "$TOP/run/slurmctld.pid" slurmctld; then
    slurmctld -i          # daemonises; -i: ignore unreadable state on a fresh directory
    for _ in $(seq 1 100); do alive "$TOP/run/slurmctld.pid" slurmctld && break; sleep 0.1; done
    say "slurmctld started"
fi
if ! alive "$TOP/run/slurmd.pid" slurmd; then
    slurmd -N "$NODE"
    for _ in $(seq 1 100); do alive "$TOP/run/slurmd.pid" slurmd && break; sleep 0.1; done
    say "slurmd started"
fi

# ------------------------------------------------------------------ ready?
state=""
for _ in $(seq 1 300); do
    state=$(sinfo -h -N -n "$NODE" -o %T 2>/dev/null || true)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*|inval*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
done
case "$state" in
    idle|mixed|allocated|completing) say "ready: node $NODE $state ($(( $(date +%s) - T0 )) s)" ;;
    *) say "node $NODE not ready (state '$state'); logs in $TOP/log" >&2
       tail -n 20 "$TOP"/log/slurm*.log >&2 || true
       exit 1 ;;
esac
