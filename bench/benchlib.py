"""What the bench scripts share: the server to measure, and its CPU clock.

Imported by scripts in this folder (which put the checkout on ``sys.path``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from lrt.couch import Server
from lrt.server import LocalServer, free_port

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def bench_server(tmp: Path, use_configured: bool = True) -> Iterator[Tuple[Server, Optional[LocalServer], Dict[str, str]]]:
    """(admin server, the local server or None, environment for child processes).

    With ``LRT_COUCH_URL`` set (and ``use_configured``) the configured server is
    measured; otherwise a fresh local server is started in ``tmp`` and stopped
    afterwards.  The environment reaches the same server (credentials in the
    environment only, never in argument vectors) and the checkout's code.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), LRT_CONFIG="/nonexistent/lrt-config.yaml")
    local: Optional[LocalServer] = None
    if use_configured and os.environ.get("LRT_COUCH_URL"):
        from lrt.settings import resolve

        st = resolve(use_local=False)
        server = st.server()
        if st.password is not None:
            env["LRT_COUCH_PASSWORD"] = st.password
    else:
        local = LocalServer.start(base=tmp / "couch", port=free_port())
        server = Server(local.url, local.user, local.password)
        env.update(LRT_COUCH_URL=local.url, LRT_COUCH_USER=local.user, LRT_COUCH_PASSWORD=local.password)
    try:
        yield server, local, env
    finally:
        server.close()
        if local is not None:
            local.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (from /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
