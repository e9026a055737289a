"""Shared fixtures: a real CouchDB-API server for the whole session.

By default the suite starts its own local server (pouchdb-server, see
lrt/server.py) on a free loopback port in a temporary folder and stops it at the
end.  To run against your site's Apache CouchDB instead, set::

    LRT_TEST_COUCH_URL=https://couch.example.org:6984
    LRT_TEST_COUCH_USER=admin LRT_TEST_COUCH_PASSWORD=...

The suite then creates and deletes its own uniquely named databases
(``lrt_test_<random>_...``) and throwaway users (``lrt_test_<random>_user_N``
in ``_users``, for the tests of refused logins: it never fails a login on the
account it was given, which Apache CouchDB would lock), and touches nothing
else.  For a cluster, list every node's URL in ``LRT_TEST_COUCH_NODES``
(comma-separated; the same credentials): tests marked ``cluster`` spread their
pilots over the nodes; they are skipped when ``/_membership`` lists one node.
See docs/couchdb.md.
"""
from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from lrt import design
from lrt.couch import CouchError, Database, Server
from lrt.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = secrets.token_hex(3)
#: the suite's own settings (an external server's admin password), read once and removed from
#: the environment: no process a test starts (pilot, CLI, batch job, payload) inherits them
TEST_ENV = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("LRT_TEST_COUCH_")}

# A suite started in the background by a non-interactive shell (`pytest ... &`, nohup)
# inherits SIGINT ignored, and so would every process it starts: the tests that stop a
# command with SIGINT, as Ctrl-C would, then wait for nothing.  Ctrl-C means stop here.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class CouchInfo:
    """Where the test server is and how to reach it as admin."""

    def __init__(self, url: str, user: str, password: str, local: "LocalServer | None",
                 nodes: "List[str] | None" = None):
        self.url, self.user, self.password, self.local = url, user, password, local
        #: every node's URL (``LRT_TEST_COUCH_NODES``); just ``url`` if not given
        self.nodes = nodes or [url]
        self._members: "int | None" = None

    def server(self, url: "str | None" = None, **kw) -> Server:
        return Server(url or self.url, self.user, self.password, **kw)

    @property
    def is_cluster(self) -> bool:
        """True if ``/_membership`` lists more than one node (Apache CouchDB cluster)."""
        if self._members is None:
            with self.server() as s:
                try:
                    self._members = len(s.json("GET", "/_membership").get("cluster_nodes") or [])
                except CouchError:  # the local stand-in has no /_membership
                    self._members = 1
        return self._members > 1

    def env(self, db: str, url: "str | None" = None) -> Dict[str, str]:
        """Environment for a subprocess (CLI, pilot) pointed at database ``db``
        (on node ``url``).  The suite's own settings (``LRT_TEST_COUCH_*``, which hold
        the admin password of an external server) are not passed on (see TEST_ENV)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LRT_TEST_COUCH_")}
        env.update({"LRT_COUCH_URL": url or self.url, "LRT_COUCH_USER": self.user,
                    "LRT_COUCH_PASSWORD": self.password, "LRT_COUCH_DB": db,
                    "LRT_CONFIG": "/nonexistent/lrt-config.yaml", "PYTHONUNBUFFERED": "1"})
        return env


@pytest.fixture(scope="session")
def couch(tmp_path_factory) -> Iterator[CouchInfo]:
    url = TEST_ENV.get("LRT_TEST_COUCH_URL")
    if url:
        nodes = [u.strip() for u in TEST_ENV.get("LRT_TEST_COUCH_NODES", "").split(",") if u.strip()]
        yield CouchInfo(url, TEST_ENV.get("LRT_TEST_COUCH_USER", ""),
                        TEST_ENV.get("LRT_TEST_COUCH_PASSWORD", ""), None, nodes)
        return
    base = tmp_path_factory.mktemp("couch")
    from lrt.server import free_port

    srv = LocalServer.start(base=base, port=free_port())
    try:
        yield CouchInfo(srv.url, srv.user, srv.password, srv)
    finally:
        srv.stop()


_counter = [0]


def new_db_name(tag: str = "t") -> str:
    _counter[0] += 1
    return f"lrt_test_{RUN_ID}_{tag}_{_counter[0]}".lower()


@pytest.fixture(autouse=True)
def _cluster_only(request):
    """Skip tests marked ``cluster`` unless the server is a multi-node cluster."""
    if request.node.get_closest_marker("cluster") is not None:
        if not request.getfixturevalue("couch").is_cluster:
            pytest.skip("needs a CouchDB cluster (/_membership with more than one node)")


@pytest.fixture
def throwaway_user(couch) -> Iterator[Tuple[str, str]]:
    """(name, password) of a user created for one test in ``_users`` and deleted after it.

    Tests of refused logins fail logins on this account only: Apache CouchDB locks an
    account after repeated failed logins (``[chttpd_auth_lockout]``, on by default),
    and the account the suite was given must never be locked.
    """
    _counter[0] += 1
    name = f"lrt_test_{RUN_ID}_user_{_counter[0]}"
    password = secrets.token_urlsafe(18)
    with couch.server() as s:
        users = s.database("_users")
        users.create()  # present on any configured CouchDB; exist_ok
        doc = {"_id": "org.couchdb.user:" + name, "name": name, "type": "user", "roles": [],
               "password": password}
        users.put(doc)
        try:
            yield name, password
        finally:
            rev = users.get(doc["_id"])["_rev"]  # a node may have rewritten it (password hashing)
            users.delete_doc(doc["_id"], rev)


@pytest.fixture
def server(couch) -> Iterator[Server]:
    s = couch.server()
    yield s
    s.close()


@pytest.fixture
def empty_db(server) -> Iterator[Database]:
    """A fresh, uniquely named database without design documents; deleted afterwards."""
    db = server.database(new_db_name())
    db.create()
    try:
        yield db
    finally:
        db.delete()


@pytest.fixture
def db(empty_db) -> Database:
    """A fresh database with lrt's design documents installed."""
    design.install(empty_db)
    return empty_db


@pytest.fixture
def lrt_cmd():
    """The argv prefix that runs the CLI of the code under test."""
    return [sys.executable, "-m", "lrt.cli"]
