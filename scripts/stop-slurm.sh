#!/bin/bash
# Stop the test cluster that scripts/testbed-slurm.sh started, by the PIDs in its
# pid files (munged is left running: other things may use it).  PURGE=1 also
# removes its state and logs.
TOP=${LRT_SLURM_TOP:-/tmp/lrt-testbed/slurm}
stop() {  # stop PIDFILE COMM
    local pid; pid=$(cat "$1" 2>/dev/null) || return 0
    if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
        kill "$pid"
        for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && kill -9 "$pid"
        echo "stopped $2 ($pid)"
    fi
    rm -f "$1"
}
stop "$TOP/run/slurmd.pid" slurmd
stop "$TOP/run/slurmctld.pid" slurmctld
[ "${PURGE:-0}" = 1 ] && rm -rf "$TOP"
true
