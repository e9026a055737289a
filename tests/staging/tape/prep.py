#!/usr/bin/python3
"""XRootD prepare program for the staging tests' tape emulator.

Run by XRootD's libXrdOfsPrepGPI (``ofs.preplib ... -run prep.py``) as
``prep.py [gpi options] -- REQID ACTION [PATH ...]``; ACTION is stage/prep,
query, evict or cancel.  "stage" starts a detached recall per file that copies
TAPE/<path> to DISK/<path> after a delay (default $STAGE_DELAY seconds;
TAPE/<path>.delay overrides it, TAPE/<path>.fail makes the recall fail with its
text).  "query" prints the JSON reply gfal2's xrootd plug-in reads for
bring_online_poll.  Environment (inherited from xrootd): TAPE DISK STATE STAGE_DELAY.
"""
import json
import os
import shutil
import subprocess
import sys
import time

TAPE, DISK, STATE = os.environ["TAPE"], os.environ["DISK"], os.environ["STATE"]


def key(path):
    return os.path.join(STATE, path.strip("/").replace("/", "_"))


def recall(path, delay):
    time.sleep(delay)
    src, dst = TAPE + path, DISK + path
    if os.path.exists(src + ".fail"):
        shutil.copyfile(src + ".fail", key(path) + ".err")
    elif os.path.exists(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst + ".part")
        os.rename(dst + ".part", dst)


def main(argv):
    if argv[:1] == ["__recall"]:
        return recall(argv[1], float(argv[2]))
    args = argv[argv.index("--") + 1:] if "--" in argv else argv
    reqid, action, paths = args[0], args[1], [p.split("?")[0] for p in args[2:]]
    os.makedirs(STATE, exist_ok=True)
    if action in ("stage", "prep"):
        for p in paths:
            k = key(p)
            # the request id goes in last: a concurrent "query" that sees it must also see the
            # request time and no stale error (gfal2 fails the poll "timestamp missing" otherwise)
            with open(k + ".time.tmp", "w") as fh:
                fh.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            os.replace(k + ".time.tmp", k + ".time")
            if os.path.exists(k + ".err"):
                os.unlink(k + ".err")
            with open(k + ".req", "a") as fh:
                fh.write(reqid + "\n")
            delay = float(os.environ.get("STAGE_DELAY", "3"))
            if os.path.exists(TAPE + p + ".delay"):
                delay = float(open(TAPE + p + ".delay").read().strip())
            # xrootd kills this program's process group when it returns: detach
            subprocess.Popen([sys.executable, __file__, "__recall", p, str(delay)],
                             start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif action == "query":
        out = []
        for p in paths:
            k = key(p)
            reqs = []
            for _ in range(20):  # "stage" runs asynchronously: let it record the request
                try:
                    reqs = open(k + ".req").read().split()
                except OSError:
                    reqs = []
                if reqid in reqs:
                    break
                time.sleep(0.1)
            err = open(k + ".err").read().replace('"', "").strip() if os.path.exists(k + ".err") else ""
            rtime = open(k + ".time").read().strip() if os.path.exists(k + ".time") else ""
            out.append({"path": p, "path_exists": os.path.exists(TAPE + p) or os.path.exists(DISK + p),
                        "on_tape": os.path.exists(TAPE + p), "online": os.path.exists(DISK + p),
                        "requested": bool(reqs), "has_reqid": reqid in reqs, "req_time": rtime,
                        "error_text": err})
        print(json.dumps({"request_id": reqid, "responses": out}))
    elif action == "evict":
        for p in paths:
            if os.path.exists(TAPE + p) and os.path.exists(DISK + p):
                os.unlink(DISK + p)
            for ext in (".req", ".time", ".err"):
                if os.path.exists(key(p) + ext):
                    os.unlink(key(p) + ext)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) or 0)
