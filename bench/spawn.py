"""What starting one payload costs, per way of keeping it from outliving a SIGKILLed pilot.

    python3 bench/spawn.py [--n 300] [--rounds 3] [--command true] [--pilot-cpus 1]

For each mode, ``--n`` payloads are started and waited for one after another
through :class:`lrt.pilot.run.Payload` (work dir, log files, waiter thread:
what a pilot does per token), the modes alternating per round:

* ``watchdog``: the default; one watchdog process per pilot learns each payload's
  process group over a pipe (its CPU is counted from /proc);
* ``setpriv``: the payload exec'd through ``setpriv --pdeathsig KILL --``;
* ``preexec``: ``PR_SET_PDEATHSIG`` set by a ``preexec_fn`` (Python forks instead of vforking);
* ``none``: no protection at all (the floor).

Printed per mode and round: parent CPU ms/payload (this process, all threads),
child CPU ms/payload (the reaped payloads, plus ``setpriv``'s exec), watchdog CPU
ms/payload, and wall ms/payload.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from benchlib import add_affinity_arg, apply_affinity, cpu_seconds  # noqa: E402
from lrt.pilot import run  # noqa: E402

MODES = ("watchdog", "setpriv", "preexec", "none")


def configure(mode: str) -> None:
    run._WATCHDOG_OK = mode == "watchdog"
    run._SETPRIV_CHECKED = mode != "setpriv"  # setpriv: looked up again; else none
    run._SETPRIV = None
    run._libc = None if mode == "none" else _LIBC


_LIBC = run._libc


def one_round(mode: str, n: int, argv: List[str], tmp: Path) -> Dict[str, float]:
    configure(mode)
    env = dict(os.environ, LRT_CLAIM_ID="bench")
    # warm: starts the watchdog, checks setpriv, fills the PATH cache
    wd = tmp / "w"
    wd.mkdir()
    p = run.Payload(argv, wd, env)
    p.wait(30)
    run.remove_workdir(wd)
    dog = run._WATCHDOG.proc.pid if mode == "watchdog" and run._WATCHDOG and run._WATCHDOG.proc else None
    d0 = cpu_seconds(dog) if dog else 0.0
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, w0 = time.process_time(), time.monotonic()
    for i in range(n):
        wd = tmp / f"p{i}"
        wd.mkdir()
        p = run.Payload(argv, wd, env)
        p.wait(30)
        run.remove_workdir(wd)
    t1, w1 = time.process_time(), time.monotonic()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    d1 = cpu_seconds(dog) if dog else 0.0
    child = (c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime)
    return {"parent": (t1 - t0) / n * 1e3, "child": child / n * 1e3, "watchdog": (d1 - d0) / n * 1e3,
            "wall": (w1 - w0) / n * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--command", default="true", help="the payload (split on spaces)")
    ap.add_argument("--modes", default=",".join(MODES))
    add_affinity_arg(ap)
    a = ap.parse_args()
    apply_affinity(a.pilot_cpus)
    argv = a.command.split()
    modes = [m for m in a.modes.split(",") if m]
    if "setpriv" in modes and shutil.which("setpriv") is None:
        modes.remove("setpriv")
    res: Dict[str, List[Dict[str, float]]] = {m: [] for m in modes}
    print(f"load average {os.getloadavg()[0]:.1f}; {a.n} payloads {argv} per mode and round", flush=True)
    with tempfile.TemporaryDirectory() as td:
        for r in range(a.rounds):
            for m in (modes if r % 2 == 0 else modes[::-1]):
                rt = Path(td) / f"{m}-{r}"
                rt.mkdir()
                f = one_round(m, a.n, argv, rt)
                res[m].append(f)
                print(f"  round {r + 1} {m:9s} parent {f['parent']:.2f}  child {f['child']:.2f}  "
                      f"watchdog {f['watchdog']:.2f}  wall {f['wall']:.2f} ms/payload", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; medians over {a.rounds} rounds, ms per payload:")
    print("| mode | parent CPU | child CPU | watchdog CPU | total CPU | wall |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in modes:
        med = {k: statistics.median(f[k] for f in res[m]) for k in ("parent", "child", "watchdog", "wall")}
        tot = med["parent"] + med["child"] + med["watchdog"]
        print(f"| {m} | {med['parent']:.2f} | {med['child']:.2f} | {med['watchdog']:.2f} | {tot:.2f} | "
              f"{med['wall']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
