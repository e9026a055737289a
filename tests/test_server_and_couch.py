"""The HTTP layer and the local server against a real CouchDB-API server."""
import logging

import pytest

from lrt import couch as c
from lrt import design
from lrt.couch import Server
from pilot_helpers import poll


def test_docs_revs_and_conflict(empty_db):
    doc = {"_id": "a", "x": 1}
    rev1 = empty_db.put(doc)
    assert rev1.startswith("1-")
    stale = dict(doc, _rev=rev1)
    doc["x"] = 2
    empty_db.put(doc)
    with pytest.raises(c.Conflict):
        empty_db.put(stale)
    assert empty_db.get("a")["x"] == 2
    with pytest.raises(c.NotFound):
        empty_db.get("missing")
    assert empty_db.get_or_none("missing") is None


def test_bulk_docs_matched_by_id(empty_db):
    docs = [{"_id": f"d{i:04d}", "i": i} for i in range(500)]
    res = empty_db.bulk_docs(docs)
    assert sorted(res.ok) == [d["_id"] for d in docs]
    # second time: every one is a conflict, none is reported as a success
    res2 = empty_db.bulk_docs([{"_id": d["_id"], "i": -1} for d in docs])
    assert sorted(res2.conflicts) == [d["_id"] for d in docs]
    assert empty_db.get("d0042")["i"] == 42
    with pytest.raises(ValueError):
        empty_db.bulk_docs([{"_id": "x"}, {"_id": "x"}])


def test_iter_view_pages_without_skip(empty_db):
    design.install(empty_db)
    empty_db.bulk_docs([{"_id": f"t{i:03d}", "kind": "token", "type": "p", "state": "todo",
                         "created": i} for i in range(57)])
    # on a cluster every page may be read from another copy of each shard, and a copy the
    # writes have not reached yet lacks rows: wait until paging returns them all
    want = [f"t{i:03d}" for i in range(57)]
    poll(lambda: [r["id"] for r in empty_db.iter_view("lrt", "tokens", page_size=10, startkey=["todo", "p"],
                                                      endkey=["todo", "p", {}])] == want,
         timeout=60, what="every token, in order, once, over pages of 10")
    poll(lambda: [r["id"] for r in empty_db.iter_view("lrt-claim", "todo", page_size=7, startkey=["p"],
                                                      endkey=["p", {}], limit=20)] == want[:20],
         timeout=60, what="the first 20 tokens of the claim queue over pages of 7")


def test_attachments_stream(empty_db, tmp_path):
    rev = empty_db.put({"_id": "att"})
    src = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 4096
    src.write_bytes(payload)
    with open(src, "rb") as fh:
        empty_db.put_attachment("att", rev, "blob.bin", fh)
    out = tmp_path / "out.bin"
    with open(out, "wb") as fh:
        empty_db.get_attachment("att", "blob.bin", dest=fh)
    assert out.read_bytes() == payload


def test_design_install_is_idempotent_and_versioned(empty_db):
    first = design.install(empty_db)
    assert set(first.values()) == {"installed"}
    again = design.install(empty_db)
    assert set(again.values()) == {"unchanged"}
    ddoc = empty_db.get("_design/lrt")
    assert ddoc["lrt_version"] and len(ddoc["lrt_hash"]) == 64
    # an older install gets upgraded in place
    ddoc["lrt_hash"] = "old"
    ddoc["views"]["tokens"]["map"] = "function (doc) {}"
    empty_db.put(ddoc)
    assert design.install(empty_db)["lrt"] == "upgraded"
    assert "emit" in empty_db.get("_design/lrt")["views"]["tokens"]["map"]


def test_wrong_password_is_clear_and_secret_free(couch, empty_db, throwaway_user, caplog):
    secret = "Sup3r-S3cret-pw"
    bad = Server(couch.url, throwaway_user[0], secret, retries=3)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(c.AuthError) as ei:
        bad.database(empty_db.name).get("x")
    msg = str(ei.value)
    assert "refused" in msg and "LRT_COUCH_PASSWORD" in msg
    assert secret not in msg and secret not in repr(bad) and secret not in caplog.text
    assert bad.requests_sent == 1  # auth failures are never retried


def test_credentials_in_url_are_split_off(couch):
    url = couch.url.replace("://", f"://{couch.user}:{couch.password}@")
    s = Server(url)
    assert couch.password not in s.url and couch.password not in repr(s)
    assert "_admin" in s.session_info()["userCtx"]["roles"]


def test_connection_errors_are_retried_then_raised():
    from lrt.server import free_port

    s = Server(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    with pytest.raises(c.CouchConnectionError):
        s.info()
    assert s.requests_sent == 3


def test_local_server_state_is_private(couch):
    if couch.local is None:
        pytest.skip("external server")
    import os
    import stat
    from pathlib import Path

    for f in ("state.json", "config.json"):
        mode = stat.S_IMODE(os.stat(Path(couch.local.base) / f).st_mode)
        assert mode == 0o600, (f, oct(mode))
    assert couch.password not in repr(couch.local)


def test_cookie_auth_logs_in_once_and_sends_no_password(couch, empty_db):
    s = Server(couch.url, couch.user, couch.password, cookie_auth=True)
    db = s.database(empty_db.name)
    db.put({"_id": "a"})
    assert s.auth_mode == "cookie"
    hdrs = s._headers({})  # what every later request carries: the cookie, not the password
    assert "Authorization" not in hdrs and hdrs["Cookie"].startswith("AuthSession=")
    assert "_admin" in s.session_info()["userCtx"]["roles"]
    # an admin-only request works on the cookie alone
    assert empty_db.name in s.all_dbs()
    s.database(c.quote_id("lrt_cookie_probe")).create()
    s.database("lrt_cookie_probe").delete()


def test_cookie_auth_logs_in_again_when_the_cookie_is_refused(couch, empty_db, throwaway_user):
    user, password = throwaway_user
    empty_db.set_security(members={"names": [user], "roles": []})
    empty_db.put({"_id": "a"})
    s = Server(couch.url, user, password, cookie_auth=True)
    db = s.database(empty_db.name)
    assert db.get("a")["_id"] == "a"
    assert s.auth_mode == "cookie"
    # an expired or revoked session: the server no longer knows this cookie
    s._cookie = "bm9ib2R5OjAwMDAwMDAwOmJhZA"
    sent = s.requests_sent
    assert db.get("a")["_id"] == "a"
    assert s.auth_mode == "cookie" and s.requests_sent - sent == 3  # refused, login, resend


def test_cookie_auth_with_a_wrong_password_fails_at_once(couch, empty_db, throwaway_user, caplog):
    secret = "Wr0ng-Pa55word"
    s = Server(couch.url, throwaway_user[0], secret, cookie_auth=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(c.AuthError) as ei:
        s.database(empty_db.name).get("x")
    assert s.requests_sent == 1
    assert secret not in str(ei.value) and secret not in caplog.text


def _held_port():
    """A port another process would own: bound but not listening, so a check that only
    connects finds it free and the server's own bind fails -- the race, made certain."""
    import socket

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_local_server_moves_to_a_fresh_port_when_its_port_is_taken_at_bind(tmp_path):
    from lrt.server import LocalServer

    sock, port = _held_port()
    try:
        srv = LocalServer.start(base=tmp_path / "s", port=port)
        try:
            assert srv.port != port and srv.ready()
            assert LocalServer.load(tmp_path / "s").port == srv.port
        finally:
            srv.stop()
    finally:
        sock.close()


def test_local_server_that_cannot_start_says_why_in_one_line(tmp_path, lrt_cmd):
    import os
    import subprocess
    from pathlib import Path

    from lrt.server import LocalServer, ServerSetupError, node_dir

    sock, port = _held_port()
    try:
        with pytest.raises(ServerSetupError) as exc:
            LocalServer.start(base=tmp_path / "s", port=port, strict_port=True)
        msg = str(exc.value)
        assert msg == f"port {port} on 127.0.0.1 is in use by another process"
        # the command says the same, in one line, without pouchdb-server's stack trace
        root = Path(__file__).resolve().parent.parent
        env = {"PATH": os.environ["PATH"], "LRT_HOME": str(tmp_path / "home"),
               "PYTHONPATH": str(root), "HOME": str(tmp_path)}
        (tmp_path / "home").mkdir()
        (tmp_path / "home" / "node").symlink_to(node_dir())  # the installed server, not a new npm install
        r = subprocess.run(lrt_cmd + ["server", "start", "--port", str(port)], env=env, capture_output=True,
                           text=True, timeout=120, cwd=root)
        assert r.returncode == 1
        assert r.stderr.strip().splitlines() == [f"lrt: error: port {port} on 127.0.0.1 is in use by another process"]
    finally:
        sock.close()


def test_a_failed_start_is_one_line_from_the_servers_output():
    from lrt.server import _reason

    trace = ("/x/pouchdb-server/lib/index.js:285\n    stopTailingLog();\n    ^\n\n"
             "TypeError: stopTailingLog is not a function\n    at Server.<anonymous> (/x/index.js:285:5)\n"
             "    at emitErrorNT (node:net:1944:8)\n\nNode.js v20.20.2\n")
    assert _reason(trace) == "TypeError: stopTailingLog is not a function"
    assert _reason("") == "no output"
