"""A token pool made by real pilots, and a real `lrt dashboard` process, for the web tests.

The pool (``make_pool``): tokens of type ``web`` run by a real ``lrt pilot``:
``OK`` tokens succeed (``done``), ``BOOM`` tokens fail with exit status 3
(``error``, PAYLOAD_FAILED), and one hostile token whose id, parameter, log and
attachment carry HTML/JS (``XSS``) fails with status 4 -- the same message
group.  Two tokens of type ``idle`` are never claimed (``todo``).
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from pilot_helpers import ROOT, make_tokens, poll, start_pilot, token
from web_process import WebProcess

#: markup that must come out as text wherever it is shown
XSS = '<script>window.__pwned=1</script>"><img src=x onerror="window.__pwned=2">'
XSS_ID = "xss-" + XSS
OK = [f"ok_{i:02d}" for i in range(6)]
BOOM = [f"boom_{i:02d}" for i in range(3)]
IDLE = ["idle_00", "idle_01"]

SAY_OK = ["sh", "-c", 'echo "hello from $LRT_TOKEN_ID"']
SAY_BOOM = ["sh", "-c", 'echo "working on $LRT_TOKEN_ID"; echo "boom: input corrupt" >&2; exit 3']
SAY_XSS = ["sh", "-c", 'printf "%s\\n" "$LRT_P_NOTE"; printf "%s\\n" "$LRT_P_NOTE" >&2; exit 4']


def pool_docs(tokenset: str = "web-tests") -> List[Dict[str, Any]]:
    docs = [token(i, SAY_OK, type="web", tokenset=tokenset) for i in OK]
    docs += [token(i, SAY_BOOM, type="web", tokenset=tokenset) for i in BOOM]
    att = base64.b64encode(("<html><body>" + XSS + "</body></html>").encode()).decode()
    docs.append(token(XSS_ID, SAY_XSS, type="web", tokenset=tokenset, payload={"note": XSS},
                      _attachments={"notes.html": {"content_type": "text/html", "data": att}}))
    docs += [token(i, ["true"], type="idle", tokenset="idle-set") for i in IDLE]
    return docs


def run_pilot(env: Dict[str, str], log: Path, token_type: str = "web") -> None:
    """One real pilot over the ``token_type`` tokens until it has nothing left to do."""
    p = start_pilot(env, "--type", token_type, "--idle-exit", "1", "--poll", "0.3", log=log)
    try:
        assert p.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if p.poll() is None:
            p.kill()


def make_pool(couch: Any, db: Any, tmp: Path, docs: Optional[List[Dict[str, Any]]] = None) -> None:
    make_tokens(db, docs if docs is not None else pool_docs())
    run_pilot(couch.env(db.name), tmp / "pilot.log")
    # on a cluster a view read may come from a copy the pilot's last writes have not reached:
    # wait until the failure groups count every token in error (documents are read by quorum)
    from lrt.queries.failures import error_groups

    docs = [r.get("doc") or {} for r in db.all_docs(include_docs=True)["rows"]]
    errors = sum(1 for d in docs if d.get("kind") == "token" and d.get("error")
                 and d.get("state") in ("error", "failed", "todo"))  # what lrt-web/errors counts
    poll(lambda: sum(g.count for g in error_groups(db)) == errors, timeout=60,
         what=f"{errors} tokens in the failure groups")


class Dashboard(WebProcess):
    """A real ``lrt dashboard`` process on a free loopback port."""

    def __init__(self, couch: Any, dbname: str, log: Path, *args: str):
        super().__init__(couch, dbname, log, ["dashboard", "--refresh", "1", *args], "/api/status")


def lrt_json(couch: Any, dbname: str, *args: str) -> Any:
    env = couch.env(dbname)
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "lrt.cli", *args, "--json"], cwd=str(ROOT), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def artefact_dir(tmp_path_factory: Any) -> Path:
    """Where screenshots go: $LRT_TEST_ARTEFACTS, else the session's pytest tmp dir."""
    d = os.environ.get("LRT_TEST_ARTEFACTS")
    p = Path(d) if d else tmp_path_factory.getbasetemp() / "artefacts"
    p.mkdir(parents=True, exist_ok=True)
    return p
