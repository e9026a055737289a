"""Retry policy of the HTTP layer against a real (tiny) HTTP server on loopback.

The server answers a scripted sequence of statuses, so the test sees exactly
which answers the client retries: 5xx and 429 yes (honouring Retry-After),
409/401/403/404 never.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lrt import couch as c


class Scripted:
    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.seen = []
        handler = self._handler()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                outer.seen.append((self.command, self.path))
                status = outer.statuses.pop(0) if outer.statuses else 200
                body = json.dumps({"ok": True} if status < 400 else
                                  {"error": "e%d" % status, "reason": "scripted"}).encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _answer

        return H

    def __enter__(self):
        self.thread.start()
        host, port = self.httpd.server_address
        return self, f"http://{host}:{port}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_5xx_and_429_are_retried_until_success():
    with Scripted([503, 500, 429]) as (srv, url):
        s = c.Server(url, backoff=0.001, retries=5)
        assert s.json("GET", "/db/doc") == {"ok": True}
        assert len(srv.seen) == 4


def test_persistent_5xx_becomes_server_error():
    with Scripted([502] * 10) as (srv, url):
        s = c.Server(url, backoff=0.001, retries=2)
        with pytest.raises(c.ServerError) as ei:
            s.json("PUT", "/db/doc", json_body={"a": 1})
        assert ei.value.status == 502 and len(srv.seen) == 3


@pytest.mark.parametrize("status,exc", [(409, c.Conflict), (401, c.Unauthorized),
                                        (403, c.Forbidden), (404, c.NotFound), (400, c.BadRequest)])
def test_client_errors_are_never_retried(status, exc):
    with Scripted([status, 200]) as (srv, url):
        s = c.Server(url, backoff=0.001, retries=5)
        with pytest.raises(exc) as ei:
            s.json("PUT", "/db/doc", json_body={"a": 1})
        assert len(srv.seen) == 1 and ei.value.status == status


def test_streamed_bodies_are_not_replayed(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(b"x" * 1000)
    with Scripted([503, 200]) as (srv, url):
        s = c.Server(url, backoff=0.001, retries=5)
        with open(f, "rb") as fh, pytest.raises(c.ServerError):
            s.request("PUT", "/db/doc/att", data=fh)
        assert len(srv.seen) == 1


def test_cookie_auth_falls_back_to_basic_when_cookies_do_not_get_through():
    """A proxy that drops cookies: the session cookie never arrives back, so every
    cookie request is anonymous (401); the client must go on with basic auth."""
    import base64

    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self, status, body, cookie=False):
            data = json.dumps(body).encode()
            self.send_response(status)
            if cookie:
                self.send_header("Set-Cookie", "AuthSession=abc; Path=/; HttpOnly")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            auth = self.headers.get("Authorization") or ""
            seen.append((self.command, self.path, auth.startswith("Basic ")))
            if auth == "Basic " + base64.b64encode(b"u:p").decode():
                return self._reply(200, {"ok": True})
            return self._reply(401, {"error": "unauthorized", "reason": "login first"})

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}")
            seen.append((self.command, self.path, False))
            if self.path == "/_session" and body == {"name": "u", "password": "p"}:
                return self._reply(200, {"ok": True, "name": "u"}, cookie=True)
            return self._reply(401, {"error": "unauthorized"})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        host, port = httpd.server_address
        s = c.Server(f"http://{host}:{port}", "u", "p", cookie_auth=True, retries=0)
        assert s.json("GET", "/db/x") == {"ok": True}
        assert s.auth_mode == "basic"
        assert s.json("GET", "/db/y") == {"ok": True}
        # login, refused with the cookie, login again, refused again, then basic (and basic after)
        assert [x[:2] for x in seen[:5]] == [("POST", "/_session"), ("GET", "/db/x"), ("POST", "/_session"),
                                             ("GET", "/db/x"), ("GET", "/db/x")]
        assert seen[4][2] and seen[5][2]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _one_shot_server(handler_cls):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address
    return httpd, f"http://{host}:{port}"


def test_file_uploads_are_streamed_with_their_length_and_downloads_stream_back(tmp_path):
    """Attachments through the http.client transport: a file body is sent with its
    Content-Length (not chunked), and a download arrives in chunks; the connection is
    reused afterwards."""
    got = {}
    blob = bytes(range(256)) * 4096  # 1 MiB

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_PUT(self):
            got["length"] = self.headers.get("Content-Length")
            got["chunked"] = self.headers.get("Transfer-Encoding")
            got["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            got["port"] = self.client_address[1]
            body = b'{"ok":true,"rev":"2-x"}'
            self.send_response(201)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            got["get_port"] = self.client_address[1]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

    httpd, url = _one_shot_server(H)
    try:
        f = tmp_path / "blob"
        f.write_bytes(blob)
        db = c.Server(url, retries=0).database("db")
        with open(f, "rb") as fh:
            fh.read(10)  # what is left of the file is sent
            assert db.put_attachment("d", "1-x", "a", fh) == "2-x"
        assert got["length"] == str(len(blob) - 10) and got["chunked"] is None and got["body"] == blob[10:]
        ctype, length, chunks = db.open_attachment("d", "a", chunk_size=1 << 16)
        parts = list(chunks)
        assert (ctype, length) == ("application/octet-stream", len(blob)) and b"".join(parts) == blob
        assert len(parts) > 1 and all(len(p) <= 1 << 16 for p in parts)
        assert got["get_port"] == got["port"]  # one keep-alive connection for both
        assert db.get_attachment("d", "a") == blob
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_download_cut_short_raises_a_connection_error():
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)  # then the connection closes

    httpd, url = _one_shot_server(H)
    try:
        db = c.Server(url, retries=0).database("db")
        with pytest.raises(c.CouchConnectionError) as ei:
            db.get_attachment("d", "a")
        assert "GET /db/d/a" in str(ei.value)
    finally:
        httpd.shutdown()
        httpd.server_close()
