"""Helpers of the tests of cluster behaviour (tests/test_cluster.py, tests/test_deps.py,
tests/staging): :class:`QuorumProxy`, which makes any server answer chosen writes with a
cluster's 202; and, for a real cluster, a database of its own, pilots spread over the
nodes in ``LRT_TEST_COUCH_NODES``, and the check that no copy keeps a conflict."""
from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest
import requests

from conftest import new_db_name
from lrt import design
from pilot_helpers import poll, start_pilot


@contextmanager
def cluster_db(couch: Any, tag: str) -> Iterator[Any]:
    """A new database with lrt's design documents, deleted afterwards; the test is
    skipped unless ``LRT_TEST_COUCH_NODES`` lists at least two nodes."""
    if len(couch.nodes) < 2:
        pytest.skip("set LRT_TEST_COUCH_NODES to the URLs of the cluster's nodes")
    admin = couch.server()
    db = admin.database(new_db_name(tag))
    db.create()
    try:
        design.install(db)
        yield db
    finally:
        db.delete()
        admin.close()


def pilots_on_every_node(couch: Any, db: Any, count: int, logs: Path, *args: str) -> List[subprocess.Popen]:
    """``count`` pilots on ``db``, connected to the nodes in turn, each with ``args``
    (``{i}`` in an argument is the pilot's number) and its log in ``logs/pilot<i>.log``."""
    nodes = couch.nodes
    return [start_pilot(couch.env(db.name, nodes[i % len(nodes)]), *(a.format(i=i) for a in args),
                        log=logs / f"pilot{i}.log")
            for i in range(count)]


def no_conflict_on_any_node(couch: Any, db: Any, timeout: float = 60.0) -> None:
    """Wait until the ``lrt/conflicts`` view is empty on every node (each node serves a
    view from its own copies, which see a removed revision a moment apart)."""
    views = [couch.server(u).database(db.name) for u in couch.nodes]
    poll(lambda: all(v.view("lrt", "conflicts", limit=1)["rows"] == [] for v in views),
         timeout=timeout, what="no conflicted document on any node")


def is_claim(docs: List[dict]) -> bool:
    return any(d.get("state") == "locked" and d.get("lease") for d in docs)


def is_creation(docs: List[dict]) -> bool:
    return any(d.get("kind") == "token" and "_rev" not in d for d in docs)


class QuorumProxy:
    """Forwards every request to ``upstream``; a ``_bulk_docs`` that claims a token
    (writes a ``locked`` document; ``match`` says which writes) is answered 202 with
    ``"accepted": true``, after ``on_claim(docs)`` ran (the test adds there what other
    copies would hold).  With ``on_update``, an update handler's write (``_update/NAME/ID``
    answered 201, NAME in ``handlers``) is answered 202 after ``on_update(id, new_rev)``
    ran."""

    def __init__(self, upstream: str, on_claim: Optional[Callable[[List[dict]], None]] = None,
                 match: Callable[[List[dict]], bool] = is_claim,
                 on_update: Optional[Callable[[str, str], None]] = None, handlers: Sequence[str] = ()):
        self.upstream = upstream.rstrip("/")
        self.on_claim = on_claim
        self.match = match
        self.on_update = on_update
        self.handlers = set(handlers)
        self.rewritten = 0
        proxy = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = requests.request(self.command, proxy.upstream + self.path, data=body, headers=hdrs,
                                     timeout=60)
                status, out = r.status_code, r.content
                if (self.command == "POST" and self.path.split("?")[0].endswith("/_bulk_docs")
                        and status == 201 and body):
                    docs = json.loads(body).get("docs", [])
                    if proxy.match(docs):
                        if proxy.on_claim:
                            proxy.on_claim(docs)
                        rows = [dict(row, accepted=True) for row in r.json()]
                        status, out = 202, json.dumps(rows).encode()
                        proxy.rewritten += 1
                parts = self.path.split("?")[0].split("/")
                if (proxy.on_update is not None and self.command == "PUT" and status == 201
                        and "_update" in parts and len(parts) > parts.index("_update") + 2
                        and parts[parts.index("_update") + 1] in proxy.handlers):
                    proxy.on_update(urllib.parse.unquote(parts[parts.index("_update") + 2]),
                                    r.headers["X-Couch-Update-NewRev"])
                    status = 202
                    proxy.rewritten += 1
                self.send_response(status)
                for k in ("Content-Type", "Date", "Set-Cookie", "X-Couch-Update-NewRev"):
                    if k in r.headers:
                        self.send_header(k, r.headers[k])
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
