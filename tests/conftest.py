"""Shared fixtures: a real CouchDB-API server for the whole session.

By default the suite starts its own local server (pouchdb-server, see
lrt/server.py) on a free loopback port in a temporary folder and stops it at the
end.  To run against your site's Apache CouchDB instead, set::

    LRT_TEST_COUCH_URL=https://couch.example.org:6984
    LRT_TEST_COUCH_USER=admin LRT_TEST_COUCH_PASSWORD=...

The suite then creates and deletes its own uniquely named databases
(``lrt_test_<random>_...``) and touches nothing else.
"""
from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

from lrt import design
from lrt.couch import Database, Server
from lrt.server import LocalServer

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = secrets.token_hex(3)


class CouchInfo:
    """Where the test server is and how to reach it as admin."""

    def __init__(self, url: str, user: str, password: str, local: "LocalServer | None"):
        self.url, self.user, self.password, self.local = url, user, password, local

    def server(self, **kw) -> Server:
        return Server(self.url, self.user, self.password, **kw)

    def env(self, db: str) -> Dict[str, str]:
        """Environment for a subprocess (CLI, pilot) pointed at database ``db``."""
        env = dict(os.environ)
        env.update({"LRT_COUCH_URL": self.url, "LRT_COUCH_USER": self.user,
                    "LRT_COUCH_PASSWORD": self.password, "LRT_COUCH_DB": db,
                    "LRT_CONFIG": "/nonexistent/lrt-config.yaml", "PYTHONUNBUFFERED": "1"})
        return env


@pytest.fixture(scope="session")
def couch(tmp_path_factory) -> Iterator[CouchInfo]:
    url = os.environ.get("LRT_TEST_COUCH_URL")
    if url:
        yield CouchInfo(url, os.environ.get("LRT_TEST_COUCH_USER", ""),
                        os.environ.get("LRT_TEST_COUCH_PASSWORD", ""), None)
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
