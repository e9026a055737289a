"""Fixtures of the UWS tests: a real `lrt serve` per test on its own database, CouchDB users
for the owners, a copy of the shipped tasks whose outputs go to the test's folder, and a
requests session that validates every XML answer against the IVOA UWS 1.1 schema."""
from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Iterator, Tuple

import pytest
import requests
from lxml import etree

from conftest import RUN_ID, new_db_name
from lrt import design
from pilot_helpers import ROOT
from web_process import WebProcess

SCHEMA_DIR = ROOT / "tests" / "data" / "uws"
_schema = None


def schema() -> etree.XMLSchema:
    global _schema
    if _schema is None:
        _schema = etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "UWS.xsd")))
    return _schema


class Checked(requests.Session):
    """A session whose every XML answer must be valid UWS 1.1 (the test fails otherwise)."""

    checked = 0

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
        resp = super().request(method, url, *args, **kwargs)
        if resp.headers.get("content-type", "").startswith("application/xml"):
            doc = etree.fromstring(resp.content)
            schema().assertValid(doc)
            Checked.checked += 1
            resp.raw = _Raw(resp.content)  # what was read is there again for a streaming reader
        return resp


class _Raw:
    def __init__(self, data: bytes):
        import io

        self._buf = io.BytesIO(data)

    def read(self, amt=None, decode_content=None):
        return self._buf.read(-1 if amt is None else amt)


def session(user: Tuple[str, str]) -> Checked:
    s = Checked()
    s.auth = user
    return s


@pytest.fixture(scope="module")
def users(couch) -> Iterator[dict]:
    """alice and bob in _users (deleted afterwards); admin is the suite's own account."""
    made = {}
    with couch.server() as s:
        udb = s.database("_users")
        udb.create()
        for name in ("alice", "bob"):
            full = f"lrt_test_{RUN_ID}_{name}_{secrets.token_hex(2)}"
            pw = secrets.token_urlsafe(12)
            udb.put({"_id": "org.couchdb.user:" + full, "name": full, "type": "user", "roles": [],
                     "password": pw})
            made[name] = (full, pw)
        made["admin"] = (couch.user, couch.password)
        yield made
        for name in ("alice", "bob"):
            doc_id = "org.couchdb.user:" + made[name][0]
            udb.delete_doc(doc_id, udb.get(doc_id)["_rev"])


@pytest.fixture
def tasks_dir(tmp_path) -> Path:
    """The shipped tasks, with outputs going to this test's folder (never /tmp/lrt-results)."""
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "sandboxes").symlink_to(ROOT / "tasks" / "sandboxes")
    (d / "fixtures").symlink_to(ROOT / "tasks" / "fixtures")
    out = (tmp_path / "results").as_uri()
    for f in (ROOT / "tasks").glob("*.yaml"):
        (d / f.name).write_text(f.read_text().replace("file:///tmp/lrt-results", out))
    return d


class Serve(WebProcess):
    """A real ``lrt serve`` process on a free loopback port (up once it asks for a login)."""

    def __init__(self, couch, dbname: str, tasks: Path, log: Path):
        super().__init__(couch, dbname, log, ["serve", "--tasks", str(tasks), "--max-wait", "30"],
                         "/uws/sleeper", status=401)


@pytest.fixture
def uws_db(server):
    db = server.database(new_db_name("uws"))
    db.create()
    design.install(db)
    yield db
    db.delete()


@pytest.fixture
def serve(couch, uws_db, tasks_dir, tmp_path) -> Iterator[Serve]:
    s = Serve(couch, uws_db.name, tasks_dir, tmp_path / "serve.log")
    yield s
    s.stop()
    shutil.rmtree(tmp_path / "results", ignore_errors=True)
